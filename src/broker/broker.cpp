#include "broker/broker.h"

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <ctime>
#include <set>

#include "broker/names.h"
#include "common/thread_name.h"
#include "storage/retention.h"

namespace tidepool::broker {
namespace json = boost::json;

namespace {

constexpr char kCatalogFile[] = "catalog.json";
constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr size_t kMaxAttributes = 100;
constexpr size_t kMaxAttributeKeyBytes = 256;
constexpr size_t kMaxAttributeValueBytes = 1024;
constexpr size_t kMaxOrderingKeyBytes = 1024;

// ---- catalog encoding

json::object LabelsToJson(const Labels& labels) {
  json::object o;
  for (const auto& [k, v] : labels) o[k] = v;
  return o;
}

Labels LabelsFromJson(const json::value& v) {
  Labels out;
  if (!v.is_object()) return out;
  for (const auto& [k, val] : v.as_object()) {
    if (val.is_string()) out[std::string(k)] = std::string(val.as_string());
  }
  return out;
}

std::string Str(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  return it != o.end() && it->value().is_string() ? std::string(it->value().as_string()) : "";
}

int64_t Int(const json::object& o, std::string_view key, int64_t def = 0) {
  auto it = o.find(key);
  if (it == o.end()) return def;
  if (it->value().is_int64()) return it->value().as_int64();
  if (it->value().is_uint64()) return static_cast<int64_t>(it->value().as_uint64());
  return def;
}

bool Bool(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  return it != o.end() && it->value().is_bool() && it->value().as_bool();
}

json::object TopicToJson(const TopicConfig& c, uint64_t id) {
  json::object o;
  o["name"] = c.name;
  o["id"] = id;
  o["labels"] = LabelsToJson(c.labels);
  o["message_retention_micros"] = c.message_retention_micros;
  o["kms_key_name"] = c.kms_key_name;
  return o;
}

TopicConfig TopicFromJson(const json::object& o) {
  TopicConfig c;
  c.name = Str(o, "name");
  c.labels = LabelsFromJson(o.contains("labels") ? o.at("labels") : json::value());
  c.message_retention_micros = Int(o, "message_retention_micros");
  c.kms_key_name = Str(o, "kms_key_name");
  return c;
}

json::object SubscriptionToJson(const SubscriptionConfig& c, uint64_t id, uint64_t epoch) {
  json::object o;
  o["name"] = c.name;
  o["id"] = id;
  o["epoch"] = epoch;
  o["topic"] = c.topic;
  o["ack_deadline_seconds"] = c.ack_deadline_seconds;
  o["retain_acked_messages"] = c.retain_acked_messages;
  o["message_retention_micros"] = c.message_retention_micros;
  o["labels"] = LabelsToJson(c.labels);
  o["enable_message_ordering"] = c.enable_message_ordering;
  o["expiration_ttl_micros"] = c.expiration_ttl_micros;
  o["filter"] = c.filter;
  if (c.dead_letter_policy) {
    o["dead_letter_topic"] = c.dead_letter_policy->dead_letter_topic;
    o["max_delivery_attempts"] = c.dead_letter_policy->max_delivery_attempts;
  }
  if (c.retry_policy) {
    o["minimum_backoff_micros"] = c.retry_policy->minimum_backoff_micros;
    o["maximum_backoff_micros"] = c.retry_policy->maximum_backoff_micros;
  }
  o["detached"] = c.detached;
  o["enable_exactly_once_delivery"] = c.enable_exactly_once_delivery;
  o["push_endpoint"] = c.push_endpoint;
  o["push_attributes"] = LabelsToJson(c.push_attributes);
  return o;
}

SubscriptionConfig SubscriptionFromJson(const json::object& o) {
  SubscriptionConfig c;
  c.name = Str(o, "name");
  c.topic = Str(o, "topic");
  c.ack_deadline_seconds =
      static_cast<int>(Int(o, "ack_deadline_seconds", kDefaultAckDeadlineSeconds));
  c.retain_acked_messages = Bool(o, "retain_acked_messages");
  c.message_retention_micros = Int(o, "message_retention_micros", kDefaultMessageRetention);
  c.labels = LabelsFromJson(o.contains("labels") ? o.at("labels") : json::value());
  c.enable_message_ordering = Bool(o, "enable_message_ordering");
  c.expiration_ttl_micros = Int(o, "expiration_ttl_micros", kDefaultExpirationTtl);
  c.filter = Str(o, "filter");
  if (o.contains("dead_letter_topic")) {
    c.dead_letter_policy = DeadLetterPolicy{
        Str(o, "dead_letter_topic"),
        static_cast<int>(Int(o, "max_delivery_attempts", kDefaultMaxDeliveryAttempts))};
  }
  if (o.contains("minimum_backoff_micros")) {
    c.retry_policy = RetryPolicy{Int(o, "minimum_backoff_micros", kDefaultMinBackoff),
                                 Int(o, "maximum_backoff_micros", kDefaultMaxBackoff)};
  }
  c.detached = Bool(o, "detached");
  c.enable_exactly_once_delivery = Bool(o, "enable_exactly_once_delivery");
  c.push_endpoint = Str(o, "push_endpoint");
  c.push_attributes =
      LabelsFromJson(o.contains("push_attributes") ? o.at("push_attributes") : json::value());
  return c;
}

json::object SnapshotToJson(const SnapshotConfig& c) {
  json::object o;
  o["name"] = c.name;
  o["topic"] = c.topic;
  o["expire_time_micros"] = c.expire_time_micros;
  o["labels"] = LabelsToJson(c.labels);
  o["floor"] = c.floor;
  json::array ranges;
  for (const auto& [lo, hi] : c.acked_ranges) ranges.push_back(json::array{lo, hi});
  o["acked_ranges"] = std::move(ranges);
  return o;
}

SnapshotConfig SnapshotFromJson(const json::object& o) {
  SnapshotConfig c;
  c.name = Str(o, "name");
  c.topic = Str(o, "topic");
  c.expire_time_micros = Int(o, "expire_time_micros");
  c.labels = LabelsFromJson(o.contains("labels") ? o.at("labels") : json::value());
  c.floor = static_cast<uint64_t>(Int(o, "floor"));
  if (o.contains("acked_ranges") && o.at("acked_ranges").is_array()) {
    for (const auto& r : o.at("acked_ranges").as_array()) {
      if (!r.is_array() || r.as_array().size() != 2) continue;
      c.acked_ranges.emplace_back(r.as_array()[0].to_number<uint64_t>(),
                                  r.as_array()[1].to_number<uint64_t>());
    }
  }
  return c;
}

// ---- paging over sorted maps: the token is the last name of the previous page.

template <typename Out, typename Map, typename Select>
Result<Page<Out>> PageOf(const Map& map, const std::string& prefix, int page_size,
                         const std::string& token, Select&& select) {
  if (page_size < 0) return Status::InvalidArgument("page_size must not be negative");
  if (!token.empty() && !token.starts_with(prefix)) {
    return Status::InvalidArgument("page_token does not belong to this listing");
  }
  const size_t limit =
      static_cast<size_t>(page_size == 0 ? kDefaultPageSize : std::min(page_size, kMaxPageSize));
  Page<Out> page;
  std::string last;
  for (auto it = token.empty() ? map.lower_bound(prefix) : map.upper_bound(token);
       it != map.end() && it->first.starts_with(prefix); ++it) {
    std::optional<Out> item = select(it->second);
    if (!item) continue;
    if (page.items.size() == limit) {
      page.next_page_token = last;  // more follow
      break;
    }
    page.items.push_back(std::move(*item));
    last = it->first;
  }
  return page;
}

// "2026-11-28T13:45:07.123456+00:00", as the real service writes publish times in attributes.
std::string Rfc3339(int64_t micros) {
  const time_t seconds = static_cast<time_t>(micros / kMicrosPerSecond);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06lld+00:00", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long long>(micros % kMicrosPerSecond));
  return buf;
}

Status ValidateMessages(const std::vector<Message>& messages) {
  if (messages.empty()) return Status::InvalidArgument("the publish request has no messages");
  if (messages.size() > kMaxMessagesPerPublish) {
    return Status::InvalidArgument(
        "a publish request may hold at most 1000 messages, this one has " +
        std::to_string(messages.size()));
  }
  size_t total = 0;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    const std::string which = "message " + std::to_string(i);
    if (m.data.empty() && m.attributes.empty()) {
      return Status::InvalidArgument(which + " has neither data nor attributes");
    }
    if (m.attributes.size() > kMaxAttributes) {
      return Status::InvalidArgument(which + " has " + std::to_string(m.attributes.size()) +
                                     " attributes; the limit is 100");
    }
    for (const auto& [k, v] : m.attributes) {
      if (k.empty()) return Status::InvalidArgument(which + " has an attribute with an empty key");
      if (k.size() > kMaxAttributeKeyBytes) {
        return Status::InvalidArgument(which + ": attribute key longer than 256 bytes");
      }
      if (k.starts_with("goog")) {
        return Status::InvalidArgument(which + ": attribute key \"" + k +
                                       "\" must not start with \"goog\"");
      }
      if (v.size() > kMaxAttributeValueBytes) {
        return Status::InvalidArgument(which + ": value of attribute \"" + k +
                                       "\" is longer than 1024 bytes");
      }
    }
    if (m.ordering_key.size() > kMaxOrderingKeyBytes) {
      return Status::InvalidArgument(which + ": ordering key longer than 1024 bytes");
    }
    const size_t size = MessageSize(m);
    if (size > kMaxMessageBytes) {
      return Status::InvalidArgument(which + " is " + std::to_string(size) +
                                     " bytes; the limit is 10000000");
    }
    total += size;
  }
  if (total > kMaxPublishRequestBytes) {
    return Status::InvalidArgument("the publish request is " + std::to_string(total) +
                                   " bytes; the limit is 10000000");
  }
  return Status::Ok();
}

}  // namespace

// ---- lifecycle

Broker::Broker(BrokerOptions options)
    : options_(std::move(options)),
      env_(options_.env != nullptr ? options_.env : storage::DefaultEnv()),
      flusher_(std::make_unique<storage::Flusher>(options_.flusher_threads)) {}

Broker::~Broker() {
  {
    std::lock_guard lock(tk_mu_);
    stopping_ = true;
  }
  tk_cv_.notify_all();
  if (timekeeper_.joinable()) timekeeper_.join();
  // Subscriptions and topics close their cursors and logs (committing what is queued) before
  // the flusher goes away.
  subs_.clear();
  topics_.clear();
  flusher_.reset();
}

Result<std::unique_ptr<Broker>> Broker::Open(BrokerOptions options) {
  if (options.data_dir.empty()) return Status::InvalidArgument("the broker needs a data_dir");
  std::unique_ptr<Broker> b(new Broker(std::move(options)));
  TP_RETURN_IF_ERROR(b->Load());
  if (b->options_.run_timekeeper)
    b->timekeeper_ = std::thread([p = b.get()] {
      SetCurrentThreadName("broker-timer");
      p->RunTimekeeper();
    });
  return b;
}

std::string Broker::TopicDir(uint64_t id) const {
  return storage::JoinPath(options_.data_dir, "topics/" + std::to_string(id));
}

std::string Broker::SubscriptionDir(uint64_t id) const {
  return storage::JoinPath(options_.data_dir, "subscriptions/" + std::to_string(id));
}

Result<std::shared_ptr<Topic>> Broker::OpenTopic(const TopicConfig& config, uint64_t id) {
  TP_ASSIGN_OR_RETURN(auto log,
                      storage::Log::Open(env_, TopicDir(id), options_.log, flusher_.get()));
  return std::make_shared<Topic>(config, std::move(log));
}

Result<std::shared_ptr<Subscription>> Broker::OpenSubscription(const SubscriptionConfig& config,
                                                               uint64_t id, uint64_t epoch) {
  TP_ASSIGN_OR_RETURN(Filter filter, Filter::Parse(config.filter));
  TP_ASSIGN_OR_RETURN(auto cursor, storage::Cursor::Open(env_, SubscriptionDir(id), options_.cursor,
                                                         flusher_.get()));
  return std::make_shared<Subscription>(config, std::move(filter), epoch, std::move(cursor), env_);
}

Status Broker::Load() {
  TP_RETURN_IF_ERROR(env_->CreateDirs(options_.data_dir));
  TP_RETURN_IF_ERROR(env_->CreateDirs(storage::JoinPath(options_.data_dir, "topics")));
  TP_RETURN_IF_ERROR(env_->CreateDirs(storage::JoinPath(options_.data_dir, "subscriptions")));
  const std::string path = storage::JoinPath(options_.data_dir, kCatalogFile);
  std::unique_lock lock(mu_);
  if (env_->FileExists(path)) {
    TP_ASSIGN_OR_RETURN(std::string text, env_->ReadFileToString(path));
    boost::system::error_code ec;
    json::value root = json::parse(text, ec);
    if (ec || !root.is_object()) {
      return Status::Corruption(path + " is not a valid catalog: " + ec.message());
    }
    const json::object& o = root.as_object();
    next_id_ = static_cast<uint64_t>(Int(o, "next_id", 1));
    if (o.contains("topics")) {
      for (const auto& t : o.at("topics").as_array()) {
        const auto& to = t.as_object();
        TopicConfig c = TopicFromJson(to);
        const auto id = static_cast<uint64_t>(Int(to, "id"));
        TP_ASSIGN_OR_RETURN(auto topic, OpenTopic(c, id));
        topics_[c.name] = TopicEntry{id, topic};
      }
    }
    if (o.contains("subscriptions")) {
      for (const auto& s : o.at("subscriptions").as_array()) {
        const auto& so = s.as_object();
        SubscriptionConfig c = SubscriptionFromJson(so);
        const auto id = static_cast<uint64_t>(Int(so, "id"));
        const auto epoch = static_cast<uint64_t>(Int(so, "epoch"));
        TP_ASSIGN_OR_RETURN(auto sub, OpenSubscription(c, id, epoch));
        std::shared_ptr<Topic> topic;
        auto it = topics_.find(c.topic);
        if (it != topics_.end() && !c.detached) topic = it->second.topic;
        TP_RETURN_IF_ERROR(sub->Attach(topic));
        if (topic) topic->AddSubscription(sub);
        subs_[c.name] = SubscriptionEntry{c, id, epoch, sub};
      }
    }
    if (o.contains("snapshots")) {
      for (const auto& s : o.at("snapshots").as_array()) {
        SnapshotConfig c = SnapshotFromJson(s.as_object());
        snapshots_[c.name] = c;
      }
    }
  }
  // Directories no catalog entry names are leftovers of a crash mid-create or mid-delete.
  std::set<std::string> live_topics, live_subs;
  for (const auto& [n, e] : topics_) live_topics.insert(std::to_string(e.id));
  for (const auto& [n, e] : subs_) live_subs.insert(std::to_string(e.id));
  for (const auto& [dir, live] : {std::pair{std::string("topics"), &live_topics},
                                  std::pair{std::string("subscriptions"), &live_subs}}) {
    const std::string parent = storage::JoinPath(options_.data_dir, dir);
    TP_ASSIGN_OR_RETURN(auto names, env_->ListDir(parent));
    for (const auto& name : names) {
      if (!live->contains(name))
        TP_RETURN_IF_ERROR(env_->RemoveDirRecursive(storage::JoinPath(parent, name)));
    }
  }
  return Status::Ok();
}

Status Broker::SaveCatalog() {
  json::object root;
  root["format"] = 1;
  root["next_id"] = next_id_;
  json::array topics, subs, snaps;
  for (const auto& [name, e] : topics_) topics.push_back(TopicToJson(e.topic->config(), e.id));
  for (const auto& [name, e] : subs_) subs.push_back(SubscriptionToJson(e.config, e.id, e.epoch));
  for (const auto& [name, s] : snapshots_) snaps.push_back(SnapshotToJson(s));
  root["topics"] = std::move(topics);
  root["subscriptions"] = std::move(subs);
  root["snapshots"] = std::move(snaps);
  const std::string text = json::serialize(root);
  Status s = env_->WriteFileAtomic(storage::JoinPath(options_.data_dir, kCatalogFile),
                                   std::as_bytes(std::span(text)));
  return s.WithContext("save catalog");
}

// ---- topics

Result<TopicConfig> Broker::CreateTopic(TopicConfig config) {
  TP_RETURN_IF_ERROR(ParseResourceName(config.name, ResourceKind::kTopic).status());
  if (config.message_retention_micros != 0 &&
      (config.message_retention_micros < kMinMessageRetention ||
       config.message_retention_micros > kMaxTopicMessageRetention)) {
    return Status::InvalidArgument(
        "message_retention_duration must be between 10 minutes and 31 days");
  }
  std::unique_lock lock(mu_);
  if (topics_.contains(config.name)) {
    return Status::AlreadyExists("topic already exists: " + config.name);
  }
  const uint64_t id = next_id_++;
  TP_ASSIGN_OR_RETURN(auto topic, OpenTopic(config, id));
  topics_[config.name] = TopicEntry{id, topic};
  Status s = SaveCatalog();
  if (!s.ok()) {
    topics_.erase(config.name);
    return s;
  }
  return config;
}

Result<TopicConfig> Broker::GetTopic(const std::string& name) {
  TP_RETURN_IF_ERROR(ParseResourceName(name, ResourceKind::kTopic).status());
  std::shared_lock lock(mu_);
  auto it = topics_.find(name);
  if (it == topics_.end()) return Status::NotFound("topic not found: " + name);
  return it->second.topic->config();
}

Result<TopicConfig> Broker::UpdateTopic(const TopicConfig& config,
                                        const std::vector<std::string>& paths) {
  TP_RETURN_IF_ERROR(ParseResourceName(config.name, ResourceKind::kTopic).status());
  if (paths.empty()) return Status::InvalidArgument("update_mask must name at least one field");
  std::unique_lock lock(mu_);
  auto it = topics_.find(config.name);
  if (it == topics_.end()) return Status::NotFound("topic not found: " + config.name);
  TopicConfig updated = it->second.topic->config();
  for (const auto& p : paths) {
    if (p == "labels") {
      updated.labels = config.labels;
    } else if (p == "message_retention_duration") {
      if (config.message_retention_micros != 0 &&
          (config.message_retention_micros < kMinMessageRetention ||
           config.message_retention_micros > kMaxTopicMessageRetention)) {
        return Status::InvalidArgument(
            "message_retention_duration must be between 10 minutes and 31 days");
      }
      updated.message_retention_micros = config.message_retention_micros;
    } else if (p == "kms_key_name") {
      updated.kms_key_name = config.kms_key_name;
    } else {
      return Status::InvalidArgument("cannot update topic field \"" + p + "\"");
    }
  }
  const TopicConfig before = it->second.topic->config();
  it->second.topic->set_config(updated);
  Status s = SaveCatalog();
  if (!s.ok()) {
    it->second.topic->set_config(before);
    return s;
  }
  return updated;
}

Result<Page<TopicConfig>> Broker::ListTopics(const std::string& project, int page_size,
                                             const std::string& page_token) {
  TP_ASSIGN_OR_RETURN(std::string p, ParseProjectName(project));
  std::shared_lock lock(mu_);
  return PageOf<TopicConfig>(
      topics_, "projects/" + p + "/topics/", page_size, page_token,
      [](const TopicEntry& e) -> std::optional<TopicConfig> { return e.topic->config(); });
}

Result<Page<std::string>> Broker::ListTopicSubscriptions(const std::string& topic, int page_size,
                                                         const std::string& page_token) {
  TP_ASSIGN_OR_RETURN(ResourceName rn, ParseResourceName(topic, ResourceKind::kTopic));
  std::shared_lock lock(mu_);
  if (!topics_.contains(topic)) return Status::NotFound("topic not found: " + topic);
  return PageOf<std::string>(subs_, "projects/" + rn.project + "/subscriptions/", page_size,
                             page_token,
                             [&](const SubscriptionEntry& e) -> std::optional<std::string> {
                               if (e.config.topic != topic) return std::nullopt;
                               return e.config.name;
                             });
}

Result<Page<std::string>> Broker::ListTopicSnapshots(const std::string& topic, int page_size,
                                                     const std::string& page_token) {
  TP_ASSIGN_OR_RETURN(ResourceName rn, ParseResourceName(topic, ResourceKind::kTopic));
  std::shared_lock lock(mu_);
  if (!topics_.contains(topic)) return Status::NotFound("topic not found: " + topic);
  return PageOf<std::string>(snapshots_, "projects/" + rn.project + "/snapshots/", page_size,
                             page_token,
                             [&](const SnapshotConfig& s) -> std::optional<std::string> {
                               if (s.topic != topic) return std::nullopt;
                               return s.name;
                             });
}

Status Broker::DeleteTopic(const std::string& name) {
  TP_RETURN_IF_ERROR(ParseResourceName(name, ResourceKind::kTopic).status());
  TopicEntry entry;
  {
    std::unique_lock lock(mu_);
    auto it = topics_.find(name);
    if (it == topics_.end()) return Status::NotFound("topic not found: " + name);
    entry = it->second;
    topics_.erase(it);
    // Subscriptions outlive their topic, as in Pub/Sub: they point to _deleted-topic_.
    for (auto& [sname, se] : subs_) {
      if (se.config.topic == name) {
        se.config.topic = std::string(kDeletedTopic);
        se.sub->UpdateConfig(se.config);
        se.sub->Detach();
      }
    }
    TP_RETURN_IF_ERROR(SaveCatalog());
  }
  const std::string dir = TopicDir(entry.id);
  entry.topic.reset();  // closes the log once no puller holds it any more
  return env_->RemoveDirRecursive(dir);
}

void Broker::Publish(const std::string& topic, std::vector<Message> messages,
                     std::function<void(Result<std::vector<std::string>>)> done) {
  auto name = ParseResourceName(topic, ResourceKind::kTopic);
  if (!name.ok()) {
    done(name.status());
    return;
  }
  Status valid = ValidateMessages(messages);
  if (!valid.ok()) {
    done(valid);
    return;
  }
  std::shared_ptr<Topic> t;
  {
    std::shared_lock lock(mu_);
    auto it = topics_.find(topic);
    if (it == topics_.end()) {
      done(Status::NotFound("topic not found: " + topic));
      return;
    }
    t = it->second.topic;
  }
  t->Publish(messages, std::move(done));
}

// ---- subscriptions

Status Broker::ValidateSubscription(const SubscriptionConfig& c) const {
  TP_RETURN_IF_ERROR(ParseResourceName(c.name, ResourceKind::kSubscription).status());
  if (c.ack_deadline_seconds < kMinAckDeadlineSeconds ||
      c.ack_deadline_seconds > kMaxAckDeadlineSeconds) {
    return Status::InvalidArgument("ack_deadline_seconds must be between 10 and 600, got " +
                                   std::to_string(c.ack_deadline_seconds));
  }
  if (c.message_retention_micros < kMinMessageRetention ||
      c.message_retention_micros > kMaxMessageRetention) {
    return Status::InvalidArgument(
        "message_retention_duration must be between 10 minutes and 7 days");
  }
  if (c.expiration_ttl_micros != 0 && (c.expiration_ttl_micros < kMinExpirationTtl ||
                                       c.expiration_ttl_micros < c.message_retention_micros)) {
    return Status::InvalidArgument(
        "expiration_policy.ttl must be at least 1 day and at least message_retention_duration");
  }
  if (c.dead_letter_policy) {
    TP_RETURN_IF_ERROR(
        ParseResourceName(c.dead_letter_policy->dead_letter_topic, ResourceKind::kTopic)
            .status()
            .WithContext("dead_letter_policy.dead_letter_topic"));
    const int n = c.dead_letter_policy->max_delivery_attempts;
    if (n < kMinMaxDeliveryAttempts || n > kMaxMaxDeliveryAttempts) {
      return Status::InvalidArgument(
          "dead_letter_policy.max_delivery_attempts must be between 5 and 100, got " +
          std::to_string(n));
    }
  }
  if (c.retry_policy) {
    const auto& r = *c.retry_policy;
    if (r.minimum_backoff_micros < 0 || r.minimum_backoff_micros > kMaxBackoff ||
        r.maximum_backoff_micros < 0 || r.maximum_backoff_micros > kMaxBackoff) {
      return Status::InvalidArgument("retry_policy backoffs must be between 0 and 600 seconds");
    }
    if (r.minimum_backoff_micros > r.maximum_backoff_micros) {
      return Status::InvalidArgument(
          "retry_policy.minimum_backoff must not exceed maximum_backoff");
    }
  }
  TP_RETURN_IF_ERROR(Filter::Parse(c.filter).status());
  return Status::Ok();
}

Result<SubscriptionConfig> Broker::CreateSubscription(SubscriptionConfig config) {
  TP_RETURN_IF_ERROR(ParseResourceName(config.topic, ResourceKind::kTopic).status());
  TP_RETURN_IF_ERROR(ValidateSubscription(config));
  std::unique_lock lock(mu_);
  if (subs_.contains(config.name)) {
    return Status::AlreadyExists("subscription already exists: " + config.name);
  }
  auto tit = topics_.find(config.topic);
  if (tit == topics_.end()) return Status::NotFound("topic not found: " + config.topic);
  const uint64_t id = next_id_++;
  TP_ASSIGN_OR_RETURN(auto sub, OpenSubscription(config, id, 0));
  // A new subscription receives what is published from now on.
  const uint64_t start = tit->second.topic->log().next_seq().value;
  TP_RETURN_IF_ERROR(sub->Reset(start, {}, 0));
  TP_RETURN_IF_ERROR(sub->Attach(tit->second.topic));
  subs_[config.name] = SubscriptionEntry{config, id, 0, sub};
  Status s = SaveCatalog();
  if (!s.ok()) {
    subs_.erase(config.name);
    return s;
  }
  tit->second.topic->AddSubscription(sub);
  return config;
}

Result<SubscriptionConfig> Broker::GetSubscription(const std::string& name) {
  TP_RETURN_IF_ERROR(ParseResourceName(name, ResourceKind::kSubscription).status());
  std::shared_lock lock(mu_);
  auto it = subs_.find(name);
  if (it == subs_.end()) return Status::NotFound("subscription not found: " + name);
  return it->second.config;
}

Result<std::shared_ptr<Subscription>> Broker::FindSubscription(const std::string& name) {
  std::shared_lock lock(mu_);
  auto it = subs_.find(name);
  if (it == subs_.end()) {
    TP_RETURN_IF_ERROR(ParseResourceName(name, ResourceKind::kSubscription).status());
    return Status::NotFound("subscription not found: " + name);
  }
  return it->second.sub;
}

Result<SubscriptionConfig> Broker::UpdateSubscription(const SubscriptionConfig& config,
                                                      const std::vector<std::string>& paths) {
  TP_RETURN_IF_ERROR(ParseResourceName(config.name, ResourceKind::kSubscription).status());
  if (paths.empty()) return Status::InvalidArgument("update_mask must name at least one field");
  std::unique_lock lock(mu_);
  auto it = subs_.find(config.name);
  if (it == subs_.end()) return Status::NotFound("subscription not found: " + config.name);
  SubscriptionConfig updated = it->second.config;
  for (const auto& p : paths) {
    if (p == "ack_deadline_seconds") {
      updated.ack_deadline_seconds = config.ack_deadline_seconds;
    } else if (p == "retain_acked_messages") {
      updated.retain_acked_messages = config.retain_acked_messages;
    } else if (p == "message_retention_duration") {
      updated.message_retention_micros = config.message_retention_micros;
    } else if (p == "labels") {
      updated.labels = config.labels;
    } else if (p == "expiration_policy") {
      updated.expiration_ttl_micros = config.expiration_ttl_micros;
    } else if (p == "dead_letter_policy") {
      updated.dead_letter_policy = config.dead_letter_policy;
    } else if (p == "retry_policy") {
      updated.retry_policy = config.retry_policy;
    } else if (p == "push_config") {
      updated.push_endpoint = config.push_endpoint;
      updated.push_attributes = config.push_attributes;
    } else if (p == "enable_exactly_once_delivery") {
      updated.enable_exactly_once_delivery = config.enable_exactly_once_delivery;
    } else if (p == "filter" || p == "enable_message_ordering" || p == "topic" || p == "name") {
      return Status::InvalidArgument("subscription field \"" + p + "\" cannot be changed");
    } else {
      return Status::InvalidArgument("cannot update subscription field \"" + p + "\"");
    }
  }
  TP_RETURN_IF_ERROR(ValidateSubscription(updated));
  const SubscriptionConfig before = it->second.config;
  it->second.config = updated;
  Status s = SaveCatalog();
  if (!s.ok()) {
    it->second.config = before;
    return s;
  }
  it->second.sub->UpdateConfig(updated);
  return updated;
}

Result<Page<SubscriptionConfig>> Broker::ListSubscriptions(const std::string& project,
                                                           int page_size,
                                                           const std::string& page_token) {
  TP_ASSIGN_OR_RETURN(std::string p, ParseProjectName(project));
  std::shared_lock lock(mu_);
  return PageOf<SubscriptionConfig>(
      subs_, "projects/" + p + "/subscriptions/", page_size, page_token,
      [](const SubscriptionEntry& e) -> std::optional<SubscriptionConfig> { return e.config; });
}

Status Broker::DeleteSubscription(const std::string& name) {
  TP_RETURN_IF_ERROR(ParseResourceName(name, ResourceKind::kSubscription).status());
  SubscriptionEntry entry;
  {
    std::unique_lock lock(mu_);
    auto it = subs_.find(name);
    if (it == subs_.end()) return Status::NotFound("subscription not found: " + name);
    entry = it->second;
    subs_.erase(it);
    TP_RETURN_IF_ERROR(SaveCatalog());
  }
  if (auto topic = entry.sub->topic()) topic->RemoveSubscription(entry.sub.get());
  entry.sub->Detach();
  entry.sub.reset();
  return env_->RemoveDirRecursive(SubscriptionDir(entry.id));
}

Status Broker::DetachSubscription(const std::string& name) {
  TP_RETURN_IF_ERROR(ParseResourceName(name, ResourceKind::kSubscription).status());
  std::unique_lock lock(mu_);
  auto it = subs_.find(name);
  if (it == subs_.end()) return Status::NotFound("subscription not found: " + name);
  it->second.config.detached = true;
  TP_RETURN_IF_ERROR(SaveCatalog());
  if (auto topic = it->second.sub->topic()) topic->RemoveSubscription(it->second.sub.get());
  it->second.sub->UpdateConfig(it->second.config);
  it->second.sub->Detach();
  return Status::Ok();
}

// ---- snapshots and seek

Result<SnapshotConfig> Broker::CreateSnapshot(const std::string& name,
                                              const std::string& subscription,
                                              const Labels& labels) {
  TP_RETURN_IF_ERROR(ParseResourceName(name, ResourceKind::kSnapshot).status());
  TP_RETURN_IF_ERROR(ParseResourceName(subscription, ResourceKind::kSubscription).status());
  std::unique_lock lock(mu_);
  if (snapshots_.contains(name)) return Status::AlreadyExists("snapshot already exists: " + name);
  auto it = subs_.find(subscription);
  if (it == subs_.end()) return Status::NotFound("subscription not found: " + subscription);
  auto topic = it->second.sub->topic();
  if (!topic) {
    return Status::FailedPrecondition("subscription " + subscription + " has no topic to snapshot");
  }
  const int64_t now = env_->NowMicros();
  storage::CursorState state = it->second.sub->AckState();
  SnapshotConfig snap;
  snap.name = name;
  snap.topic = it->second.config.topic;
  snap.labels = labels;
  snap.floor = state.floor().value;
  for (const auto& [lo, hi] : state.acked_ranges()) snap.acked_ranges.emplace_back(lo, hi);
  // Pub/Sub: a snapshot lives until 7 days after its oldest unacknowledged message.
  int64_t oldest = now;
  auto first = topic->Read(snap.floor, 1, 1);
  if (first.ok() && !first->empty()) oldest = (*first)[0].publish_time_micros;
  snap.expire_time_micros = oldest + kSnapshotLifetime;
  snapshots_[name] = snap;
  Status s = SaveCatalog();
  if (!s.ok()) {
    snapshots_.erase(name);
    return s;
  }
  return snap;
}

Result<SnapshotConfig> Broker::GetSnapshot(const std::string& name) {
  TP_RETURN_IF_ERROR(ParseResourceName(name, ResourceKind::kSnapshot).status());
  std::shared_lock lock(mu_);
  auto it = snapshots_.find(name);
  if (it == snapshots_.end()) return Status::NotFound("snapshot not found: " + name);
  return it->second;
}

Result<SnapshotConfig> Broker::UpdateSnapshot(const SnapshotConfig& config,
                                              const std::vector<std::string>& paths) {
  TP_RETURN_IF_ERROR(ParseResourceName(config.name, ResourceKind::kSnapshot).status());
  if (paths.empty()) return Status::InvalidArgument("update_mask must name at least one field");
  std::unique_lock lock(mu_);
  auto it = snapshots_.find(config.name);
  if (it == snapshots_.end()) return Status::NotFound("snapshot not found: " + config.name);
  SnapshotConfig updated = it->second;
  for (const auto& p : paths) {
    if (p == "labels") {
      updated.labels = config.labels;
    } else if (p == "expire_time") {
      updated.expire_time_micros = config.expire_time_micros;
    } else {
      return Status::InvalidArgument("cannot update snapshot field \"" + p + "\"");
    }
  }
  const SnapshotConfig before = it->second;
  it->second = updated;
  Status s = SaveCatalog();
  if (!s.ok()) {
    it->second = before;
    return s;
  }
  return updated;
}

Result<Page<SnapshotConfig>> Broker::ListSnapshots(const std::string& project, int page_size,
                                                   const std::string& page_token) {
  TP_ASSIGN_OR_RETURN(std::string p, ParseProjectName(project));
  std::shared_lock lock(mu_);
  return PageOf<SnapshotConfig>(
      snapshots_, "projects/" + p + "/snapshots/", page_size, page_token,
      [](const SnapshotConfig& s) -> std::optional<SnapshotConfig> { return s; });
}

Status Broker::DeleteSnapshot(const std::string& name) {
  TP_RETURN_IF_ERROR(ParseResourceName(name, ResourceKind::kSnapshot).status());
  std::unique_lock lock(mu_);
  if (!snapshots_.erase(name)) return Status::NotFound("snapshot not found: " + name);
  return SaveCatalog();
}

Status Broker::SeekToTime(const std::string& subscription, int64_t time_micros) {
  TP_RETURN_IF_ERROR(ParseResourceName(subscription, ResourceKind::kSubscription).status());
  std::unique_lock lock(mu_);
  auto it = subs_.find(subscription);
  if (it == subs_.end()) return Status::NotFound("subscription not found: " + subscription);
  auto topic = it->second.sub->topic();
  if (!topic) return Status::FailedPrecondition("subscription " + subscription + " has no topic");
  TP_ASSIGN_OR_RETURN(storage::Seq floor, topic->log().SeekTime(time_micros));
  // Before the time: acknowledged; from it on: unacknowledged (what retention still holds).
  const uint64_t epoch = it->second.epoch + 1;
  it->second.epoch = epoch;
  TP_RETURN_IF_ERROR(SaveCatalog());
  return it->second.sub->Reset(std::max(floor.value, topic->log().first_seq().value), {}, epoch);
}

Status Broker::SeekToSnapshot(const std::string& subscription, const std::string& snapshot) {
  TP_RETURN_IF_ERROR(ParseResourceName(subscription, ResourceKind::kSubscription).status());
  TP_RETURN_IF_ERROR(ParseResourceName(snapshot, ResourceKind::kSnapshot).status());
  std::unique_lock lock(mu_);
  auto it = subs_.find(subscription);
  if (it == subs_.end()) return Status::NotFound("subscription not found: " + subscription);
  auto sit = snapshots_.find(snapshot);
  if (sit == snapshots_.end()) return Status::NotFound("snapshot not found: " + snapshot);
  if (sit->second.topic != it->second.config.topic) {
    return Status::FailedPrecondition("snapshot " + snapshot + " is of topic " + sit->second.topic +
                                      ", but subscription " + subscription + " reads " +
                                      it->second.config.topic);
  }
  const uint64_t epoch = it->second.epoch + 1;
  it->second.epoch = epoch;
  TP_RETURN_IF_ERROR(SaveCatalog());
  return it->second.sub->Reset(sit->second.floor, sit->second.acked_ranges, epoch);
}

// ---- operations

std::vector<SubscriptionBacklog> Broker::Backlogs() {
  std::vector<std::pair<SubscriptionConfig, std::shared_ptr<Subscription>>> subs;
  {
    std::shared_lock lock(mu_);
    for (const auto& [name, e] : subs_) subs.emplace_back(e.config, e.sub);
  }
  const int64_t now = env_->NowMicros();
  std::vector<SubscriptionBacklog> out;
  out.reserve(subs.size());
  for (const auto& [config, sub] : subs) {
    out.push_back(SubscriptionBacklog{config.name, config.topic, sub->GetBacklog(now)});
  }
  return out;
}

void Broker::ForwardDeadLetter(const std::shared_ptr<Subscription>& sub, const DeadLetter& d) {
  const SubscriptionConfig config = sub->config();
  auto topic = sub->topic();
  if (!topic || !config.dead_letter_policy) {
    sub->FinishDeadLetter(d.seq, Status::FailedPrecondition("no dead-letter policy"));
    return;
  }
  auto msgs = topic->Read(d.seq, 1, 1);
  if (!msgs.ok() || msgs->empty() || (*msgs)[0].seq != d.seq) {
    sub->FinishDeadLetter(d.seq, Status::Ok());  // the message is gone: nothing to forward
    return;
  }
  Message m = (*msgs)[0].message;
  // The attributes the real service adds to a dead-lettered message.
  auto sname = ParseResourceName(config.name, ResourceKind::kSubscription);
  m.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] = std::to_string(d.attempts);
  m.attributes["CloudPubSubDeadLetterSourceSubscription"] = sname.ok() ? sname->id : config.name;
  m.attributes["CloudPubSubDeadLetterSourceSubscriptionProject"] = sname.ok() ? sname->project : "";
  m.attributes["CloudPubSubDeadLetterSourceTopicPublishTime"] =
      Rfc3339((*msgs)[0].publish_time_micros);
  std::weak_ptr<Subscription> weak = sub;
  const uint64_t seq = d.seq;
  Publish(config.dead_letter_policy->dead_letter_topic, {std::move(m)},
          [weak, seq](Result<std::vector<std::string>> r) {
            if (auto s = weak.lock()) s->FinishDeadLetter(seq, r.status());
          });
}

void Broker::Tick() {
  std::vector<std::shared_ptr<Subscription>> subs;
  {
    std::shared_lock lock(mu_);
    for (const auto& [name, e] : subs_) subs.push_back(e.sub);
  }
  const int64_t now = env_->NowMicros();
  for (const auto& sub : subs) {
    for (const auto& d : sub->Tick(now)) ForwardDeadLetter(sub, d);
    // Delivery state and plain acks are written behind; one fsync per tick bounds what a
    // power loss can take back (redeliveries only).
    sub->SyncCursor();
  }
}

void Broker::Maintain() {
  const int64_t now = env_->NowMicros();
  // Expired subscriptions and snapshots.
  std::vector<std::string> expired_subs;
  {
    std::unique_lock lock(mu_);
    bool changed = false;
    for (auto it = snapshots_.begin(); it != snapshots_.end();) {
      if (it->second.expire_time_micros > 0 && it->second.expire_time_micros < now) {
        it = snapshots_.erase(it);
        changed = true;
      } else {
        ++it;
      }
    }
    if (changed) (void)SaveCatalog();
    for (const auto& [name, e] : subs_) {
      if (e.config.expiration_ttl_micros > 0 &&
          now - e.sub->last_activity() > e.config.expiration_ttl_micros) {
        expired_subs.push_back(name);
      }
    }
  }
  for (const auto& name : expired_subs) (void)DeleteSubscription(name);

  // Retention: whole segments nobody needs any more.
  struct Work {
    std::shared_ptr<Topic> topic;
    storage::RetentionPolicy policy;
  };
  std::vector<Work> work;
  {
    std::shared_lock lock(mu_);
    for (const auto& [name, e] : topics_) {
      Work w{e.topic, {}};
      w.policy.topic_retention_micros = e.topic->config().message_retention_micros;
      for (const auto& sub : e.topic->subscriptions()) {
        const SubscriptionConfig c = sub->config();
        const uint64_t floor = c.retain_acked_messages ? 0 : sub->DurableState().floor().value;
        w.policy.needs.push_back({storage::Seq(floor), c.message_retention_micros});
      }
      for (const auto& [sname, snap] : snapshots_) {
        if (snap.topic == name) w.policy.needs.push_back({storage::Seq(snap.floor), 0});
      }
      work.push_back(std::move(w));
    }
  }
  for (auto& w : work) {
    storage::Log& log = w.topic->log();
    log.Maintain();
    const storage::Seq keep = storage::PlanRetention(log.Segments(), w.policy, now);
    (void)log.RemoveSegmentsBefore(keep);
  }
}

void Broker::RunTimekeeper() {
  int64_t last_maintenance = env_->NowMicros();
  std::unique_lock lock(tk_mu_);
  while (!stopping_) {
    tk_cv_.wait_for(lock, std::chrono::microseconds(options_.tick_interval_micros));
    if (stopping_) break;
    lock.unlock();
    Tick();
    const int64_t now = env_->NowMicros();
    if (now - last_maintenance >= options_.maintenance_interval_micros) {
      Maintain();
      last_maintenance = now;
    }
    lock.lock();
  }
}

}  // namespace tidepool::broker
