#include "broker/subscription.h"

#include <algorithm>
#include <charconv>
#include <future>

#include "broker/topic.h"

namespace tidepool::broker {
namespace {

constexpr size_t kReadBatch = 256;
constexpr size_t kReadBatchBytes = 4u << 20;

}  // namespace

Subscription::Subscription(SubscriptionConfig config, Filter filter, uint64_t epoch,
                           std::unique_ptr<storage::Cursor> cursor, storage::Env* env)
    : env_(env),
      cursor_(std::move(cursor)),
      last_activity_(env->NowMicros()),
      config_(std::move(config)),
      filter_(std::move(filter)),
      epoch_(epoch) {}

Subscription::~Subscription() = default;

std::string Subscription::FormatAckId(uint64_t epoch, uint64_t seq, uint32_t attempt) {
  return std::to_string(epoch) + "-" + std::to_string(seq) + "-" + std::to_string(attempt);
}

bool Subscription::ParseAckId(const std::string& s, AckId* out) {
  const char* p = s.data();
  const char* end = s.data() + s.size();
  auto num = [&](auto* v) {
    auto [next, ec] = std::from_chars(p, end, *v);
    if (ec != std::errc() || next == p) return false;
    p = next;
    return true;
  };
  auto dash = [&] {
    if (p == end || *p != '-') return false;
    ++p;
    return true;
  };
  return num(&out->epoch) && dash() && num(&out->seq) && dash() && num(&out->attempt) && p == end &&
         out->attempt > 0;
}

Status Subscription::ParseAckIds(const std::vector<std::string>& ids, bool exactly_once,
                                 std::vector<std::pair<std::string, AckId>>* parsed,
                                 std::vector<std::string>* invalid) {
  for (const auto& id : ids) {
    AckId a;
    if (ParseAckId(id, &a)) {
      parsed->emplace_back(id, a);
    } else if (exactly_once) {
      invalid->push_back(id);
    } else {
      return Status::InvalidArgument("invalid ack id \"" + id + "\"");
    }
  }
  return Status::Ok();
}

Status Subscription::Attach(std::shared_ptr<Topic> topic) {
  const int64_t now = env_->NowMicros();
  storage::CursorState durable = cursor_->state();
  std::lock_guard lock(mu_);
  topic_ = std::move(topic);
  acked_ = durable;
  read_pos_ = acked_.floor().value;
  leased_.clear();
  lease_deadlines_.clear();
  ready_.clear();
  delayed_.clear();
  attempts_.clear();
  keys_.clear();
  key_of_.clear();
  for (const auto& [seq, d] : durable.deliveries()) {
    attempts_[seq] = d.attempts;
    if (d.lease_deadline > now) {
      // Still leased (or backing off): honour it, so that the ack id a subscriber holds from
      // before the restart still works until its deadline.
      leased_[seq] = Lease{d.attempts, d.lease_deadline, {}, 0};
      lease_deadlines_.emplace(d.lease_deadline, seq);
    } else {
      ready_.insert(seq);
    }
  }
  if (config_.enable_message_ordering && topic_) {
    // Rebuild which key each tracked message holds; the lowest sequence of a key stays active.
    std::vector<uint64_t> tracked;
    for (const auto& [seq, n] : attempts_) tracked.push_back(seq);
    std::sort(tracked.begin(), tracked.end());
    for (uint64_t seq : tracked) {
      auto msgs = topic_->Read(seq, 1, 1);
      if (!msgs.ok() || msgs->empty() || (*msgs)[0].seq != seq) continue;
      const std::string& key = (*msgs)[0].message.ordering_key;
      if (key.empty()) continue;
      KeyState& ks = keys_[key];
      if (!ks.active) {
        ks.active = seq;
        key_of_[seq] = key;
      } else {
        // Two tracked messages of one key: only the first may be out; the other waits.
        leased_.erase(seq);
        ready_.erase(seq);
        attempts_.erase(seq);
        ks.waiting.push_back(seq);
      }
    }
  }
  return Status::Ok();
}

void Subscription::Detach() {
  {
    std::lock_guard lock(mu_);
    topic_.reset();
    leased_.clear();
    lease_deadlines_.clear();
    ready_.clear();
    delayed_.clear();
  }
  NotifyListeners();
}

bool Subscription::Expired(int64_t publish_time, int64_t now) const {
  return config_.message_retention_micros > 0 &&
         publish_time < now - config_.message_retention_micros;
}

void Subscription::Deliver(const StoredMessage& msg, int lease_seconds,
                           const std::shared_ptr<Consumer>& owner, int64_t now,
                           std::vector<ReceivedMessage>* out, storage::CursorBatch* batch) {
  const uint64_t seq = msg.seq;
  const uint32_t attempt = ++attempts_[seq];
  const int64_t deadline = now + static_cast<int64_t>(lease_seconds) * kMicrosPerSecond;
  const auto bytes = static_cast<int64_t>(MessageSize(msg.message));
  leased_[seq] = Lease{attempt, deadline, owner, bytes};
  lease_deadlines_.emplace(deadline, seq);
  if (owner) {
    owner->outstanding_messages.fetch_add(1);
    owner->outstanding_bytes.fetch_add(bytes);
  }
  batch->SetDelivery(storage::Seq(seq), storage::Delivery{attempt, deadline});
  out->push_back(ReceivedMessage{FormatAckId(epoch_, seq, attempt), msg,
                                 config_.dead_letter_policy ? static_cast<int>(attempt) : 0});
}

Result<std::vector<ReceivedMessage>> Subscription::Pull(size_t max_messages, size_t max_bytes,
                                                        int lease_seconds,
                                                        const std::shared_ptr<Consumer>& owner) {
  const int64_t now = env_->NowMicros();
  last_activity_.store(now);
  std::vector<ReceivedMessage> out;
  size_t out_bytes = 0;
  storage::CursorBatch batch;
  auto full = [&] {
    return out.size() >= max_messages || (!out.empty() && out_bytes >= max_bytes);
  };

  std::unique_lock lock(mu_);
  if (!topic_ || config_.detached) return out;
  std::shared_ptr<Topic> topic = topic_;

  // Redeliveries first: they are the oldest work.
  while (!ready_.empty() && !full()) {
    const uint64_t seq = *ready_.begin();
    ready_.erase(ready_.begin());
    if (acked_.IsAcked(storage::Seq(seq))) {
      ForgetTracking(seq);
      continue;
    }
    auto msgs = topic->Read(seq, 1, 1);
    if (!msgs.ok() || msgs->empty() || (*msgs)[0].seq != seq) {
      // Gone (retention or corruption): nothing left to deliver.
      MarkAcked(seq, &batch);
      continue;
    }
    const StoredMessage& msg = (*msgs)[0];
    if (Expired(msg.publish_time_micros, now)) {
      MarkAcked(seq, &batch);
      continue;
    }
    Deliver(msg, lease_seconds, owner, now, &out, &batch);
    out_bytes += MessageSize(msg.message);
  }

  // Then messages never delivered, in log order.
  while (!full()) {
    const uint64_t pos = read_pos_;
    if (pos >= topic->log().next_seq().value) break;
    lock.unlock();
    auto msgs =
        topic->Read(pos, std::max<size_t>(kReadBatch, max_messages - out.size()), kReadBatchBytes);
    lock.lock();
    if (!topic_ || topic_ != topic) break;
    if (read_pos_ != pos) continue;  // another puller moved on meanwhile: look again
    if (!msgs.ok()) {
      if (msgs.status().code() == StatusCode::kOutOfRange) {
        // Retention deleted what this subscription had not read: it is gone for everyone.
        const uint64_t first = topic->log().first_seq().value;
        acked_.Ack(storage::Seq(0), storage::Seq(first));
        batch.Ack(storage::Seq(0), storage::Seq(first));
        read_pos_ = std::max(read_pos_, first);
        continue;
      }
      lock.unlock();
      Persist(std::move(batch));
      return msgs.status();
    }
    if (msgs->empty()) break;
    for (const auto& msg : *msgs) {
      if (full()) break;
      read_pos_ = msg.seq + 1;
      const storage::Seq seq(msg.seq);
      if (acked_.IsAcked(seq) || attempts_.contains(msg.seq) || dead_lettering_.contains(msg.seq)) {
        continue;
      }
      if (Expired(msg.publish_time_micros, now) || !filter_.Matches(msg.message.attributes)) {
        MarkAcked(msg.seq, &batch);  // Pub/Sub acknowledges what a filter drops
        continue;
      }
      const std::string& key = msg.message.ordering_key;
      if (config_.enable_message_ordering && !key.empty()) {
        KeyState& ks = keys_[key];
        if (ks.active) {
          ks.waiting.push_back(msg.seq);
          continue;
        }
        ks.active = msg.seq;
        key_of_[msg.seq] = key;
      }
      Deliver(msg, lease_seconds, owner, now, &out, &batch);
      out_bytes += MessageSize(msg.message);
    }
  }
  lock.unlock();
  Persist(std::move(batch));
  return out;
}

void Subscription::Persist(storage::CursorBatch batch) {
  if (batch.empty()) return;
  // Delivery state and plain acks are written behind: losing them in a crash only means a
  // redelivery, which at-least-once delivery allows.
  cursor_->CommitAsync(
      std::move(batch), [](Status) {}, /*durable=*/false);
}

void Subscription::EndLease(uint64_t seq) {
  auto it = leased_.find(seq);
  if (it == leased_.end()) return;
  if (auto owner = it->second.owner.lock()) {
    owner->outstanding_messages.fetch_sub(1);
    owner->outstanding_bytes.fetch_sub(it->second.bytes);
  }
  leased_.erase(it);
}

void Subscription::ForgetTracking(uint64_t seq) {
  EndLease(seq);
  ready_.erase(seq);
  attempts_.erase(seq);
  for (auto it = delayed_.begin(); it != delayed_.end();) {
    it = it->second == seq ? delayed_.erase(it) : std::next(it);
  }
}

void Subscription::ReleaseKey(uint64_t seq) {
  auto kit = key_of_.find(seq);
  if (kit == key_of_.end()) return;
  auto ksit = keys_.find(kit->second);
  key_of_.erase(kit);
  if (ksit == keys_.end()) return;
  KeyState& ks = ksit->second;
  if (ks.active != seq) return;
  ks.active.reset();
  while (!ks.waiting.empty()) {
    const uint64_t next = ks.waiting.front();
    ks.waiting.pop_front();
    if (acked_.IsAcked(storage::Seq(next))) continue;
    ks.active = next;
    key_of_[next] = ksit->first;
    ready_.insert(next);
    return;
  }
  keys_.erase(ksit);
}

void Subscription::MarkAcked(uint64_t seq, storage::CursorBatch* batch) {
  ForgetTracking(seq);
  acked_.Ack(storage::Seq(seq), storage::Seq(seq + 1));
  batch->Ack(storage::Seq(seq));
  ReleaseKey(seq);
}

void Subscription::Acknowledge(const std::vector<std::string>& ack_ids,
                               std::function<void(AckResult)> done) {
  last_activity_.store(env_->NowMicros());
  const int64_t now = env_->NowMicros();
  AckResult result;
  storage::CursorBatch batch;
  bool exactly_once = false;
  {
    std::unique_lock lock(mu_);
    exactly_once = config_.enable_exactly_once_delivery;
    std::vector<std::pair<std::string, AckId>> parsed;
    Status valid = ParseAckIds(ack_ids, exactly_once, &parsed, &result.invalid_ack_ids);
    if (!valid.ok()) {
      lock.unlock();
      done(AckResult{valid, {}});
      return;
    }
    for (const auto& [id, a] : parsed) {
      if (a.epoch != epoch_) {
        if (exactly_once) result.invalid_ack_ids.push_back(id);
        continue;  // issued before a seek: the message was delivered anew since
      }
      const storage::Seq seq(a.seq);
      if (acked_.IsAcked(seq)) continue;  // acknowledging twice is harmless
      if (exactly_once) {
        auto it = leased_.find(a.seq);
        if (it == leased_.end() || it->second.attempt != a.attempt || it->second.deadline <= now) {
          result.invalid_ack_ids.push_back(id);
          continue;
        }
      }
      MarkAcked(a.seq, &batch);
    }
  }
  if (!exactly_once) {
    Persist(std::move(batch));
    done(std::move(result));
  } else if (batch.empty()) {
    done(std::move(result));
  } else {
    // Exactly-once: the acknowledgement is confirmed only once it is durable.
    cursor_->CommitAsync(std::move(batch),
                         [result = std::move(result), done = std::move(done)](Status s) mutable {
                           if (!s.ok()) result.status = Status::Unavailable(s.message());
                           done(std::move(result));
                         });
  }
  NotifyListeners();  // freed flow-control budget and released ordering keys
}

void Subscription::Requeue(uint64_t seq, uint32_t attempt, int64_t now, storage::CursorBatch* batch,
                           std::vector<DeadLetter>* dead) {
  EndLease(seq);
  if (config_.dead_letter_policy &&
      attempt >= static_cast<uint32_t>(config_.dead_letter_policy->max_delivery_attempts)) {
    dead_lettering_.insert(seq);
    dead->push_back(DeadLetter{seq, attempt});
    return;
  }
  int64_t backoff = 0;
  if (config_.retry_policy) {
    backoff = config_.retry_policy->minimum_backoff_micros;
    for (uint32_t i = 1; i < attempt && backoff < config_.retry_policy->maximum_backoff_micros;
         ++i) {
      backoff *= 2;
    }
    backoff = std::min(backoff, config_.retry_policy->maximum_backoff_micros);
  }
  if (backoff <= 0) {
    ready_.insert(seq);
  } else {
    delayed_.emplace(now + backoff, seq);
  }
  batch->SetDelivery(storage::Seq(seq), storage::Delivery{attempt, now + backoff});
}

void Subscription::ModifyAckDeadline(const std::vector<std::string>& ack_ids, int seconds,
                                     std::function<void(AckResult)> done) {
  if (seconds < 0 || seconds > kMaxAckDeadlineSeconds) {
    done(AckResult{Status::InvalidArgument("ack_deadline_seconds must be between 0 and 600, got " +
                                           std::to_string(seconds)),
                   {}});
    return;
  }
  const int64_t now = env_->NowMicros();
  last_activity_.store(now);
  AckResult result;
  storage::CursorBatch batch;
  bool exactly_once = false;
  {
    std::unique_lock lock(mu_);
    exactly_once = config_.enable_exactly_once_delivery;
    std::vector<std::pair<std::string, AckId>> parsed;
    Status valid = ParseAckIds(ack_ids, exactly_once, &parsed, &result.invalid_ack_ids);
    if (!valid.ok()) {
      lock.unlock();
      done(AckResult{valid, {}});
      return;
    }
    for (const auto& [id, a] : parsed) {
      auto it = leased_.find(a.seq);
      const bool current = a.epoch == epoch_ && it != leased_.end() &&
                           it->second.attempt == a.attempt && it->second.deadline > now;
      if (!current) {
        if (exactly_once) result.invalid_ack_ids.push_back(id);
        continue;
      }
      if (seconds == 0) {
        // Dead letters found by a nack are handed over at the next Tick.
        Requeue(a.seq, a.attempt, now, &batch, &pending_dead_);
      } else {
        const int64_t deadline = now + static_cast<int64_t>(seconds) * kMicrosPerSecond;
        it->second.deadline = deadline;
        lease_deadlines_.emplace(deadline, a.seq);
        batch.SetDelivery(storage::Seq(a.seq), storage::Delivery{a.attempt, deadline});
      }
    }
  }
  Persist(std::move(batch));
  done(std::move(result));
  if (seconds == 0) NotifyListeners();
}

std::vector<DeadLetter> Subscription::Tick(int64_t now) {
  std::vector<DeadLetter> dead;
  storage::CursorBatch batch;
  bool notify = false;
  {
    std::lock_guard lock(mu_);
    dead.swap(pending_dead_);
    while (!lease_deadlines_.empty() && lease_deadlines_.begin()->first <= now) {
      auto [deadline, seq] = *lease_deadlines_.begin();
      lease_deadlines_.erase(lease_deadlines_.begin());
      auto it = leased_.find(seq);
      if (it == leased_.end() || it->second.deadline != deadline) continue;  // stale entry
      Requeue(seq, it->second.attempt, now, &batch, &dead);
      notify = true;
    }
    while (!delayed_.empty() && delayed_.begin()->first <= now) {
      ready_.insert(delayed_.begin()->second);
      delayed_.erase(delayed_.begin());
      notify = true;
    }
  }
  Persist(std::move(batch));
  if (notify) NotifyListeners();
  return dead;
}

void Subscription::FinishDeadLetter(uint64_t seq, const Status& published) {
  storage::CursorBatch batch;
  {
    std::lock_guard lock(mu_);
    if (!dead_lettering_.erase(seq)) return;
    if (published.ok()) {
      MarkAcked(seq, &batch);
    } else {
      // The dead-letter topic is unavailable: keep the message and try again later.
      const int64_t retry_at = env_->NowMicros() + kDefaultMinBackoff;
      delayed_.emplace(retry_at, seq);
    }
  }
  Persist(std::move(batch));
  NotifyListeners();
}

Status Subscription::Reset(uint64_t floor, const std::vector<std::pair<uint64_t, uint64_t>>& acked,
                           uint64_t new_epoch) {
  std::vector<std::pair<storage::Seq, storage::Seq>> ranges;
  for (const auto& [lo, hi] : acked) ranges.emplace_back(storage::Seq(lo), storage::Seq(hi));
  storage::CursorBatch batch;
  batch.Reset(storage::Seq(floor), ranges);
  {
    std::lock_guard lock(mu_);
    for (auto& [seq, lease] : leased_) {
      if (auto owner = lease.owner.lock()) {
        owner->outstanding_messages.fetch_sub(1);
        owner->outstanding_bytes.fetch_sub(lease.bytes);
      }
    }
    leased_.clear();
    lease_deadlines_.clear();
    ready_.clear();
    delayed_.clear();
    attempts_.clear();
    keys_.clear();
    key_of_.clear();
    dead_lettering_.clear();
    acked_.Reset(storage::Seq(floor), ranges);
    read_pos_ = floor;
    epoch_ = new_epoch;
    oldest_cache_seq_ = UINT64_MAX;
  }
  Status s = cursor_->Commit(std::move(batch));
  NotifyListeners();
  return s;
}

storage::CursorState Subscription::DurableState() const {
  return cursor_->state();
}

void Subscription::SyncCursor() {
  cursor_->SyncIfDirty();
}

storage::CursorState Subscription::AckState() const {
  std::lock_guard lock(mu_);
  return acked_;
}

Backlog Subscription::GetBacklog(int64_t now) {
  std::unique_lock lock(mu_);
  Backlog b;
  b.leased_messages = leased_.size();
  if (!topic_) return b;
  const uint64_t next = topic_->log().next_seq().value;
  const uint64_t floor = acked_.floor().value;
  if (next <= floor) return b;
  uint64_t acked_above = 0;
  for (const auto& [lo, hi] : acked_.acked_ranges())
    acked_above += std::min(hi, next) - std::min(lo, next);
  b.undelivered_messages = next - floor - acked_above;
  if (oldest_cache_seq_ != floor) {
    std::shared_ptr<Topic> topic = topic_;
    lock.unlock();
    auto msgs = topic->Read(floor, 1, 1);
    lock.lock();
    if (msgs.ok() && !msgs->empty()) {
      oldest_cache_seq_ = floor;
      oldest_cache_time_ = (*msgs)[0].publish_time_micros;
    }
  }
  if (oldest_cache_seq_ == floor)
    b.oldest_unacked_age_micros = std::max<int64_t>(0, now - oldest_cache_time_);
  return b;
}

uint64_t Subscription::AddListener(std::function<void()> listener) {
  std::lock_guard lock(listeners_mu_);
  const uint64_t id = next_listener_++;
  listeners_.emplace(id, std::move(listener));
  return id;
}

void Subscription::RemoveListener(uint64_t id) {
  std::lock_guard lock(listeners_mu_);
  listeners_.erase(id);
}

void Subscription::NotifyListeners() {
  std::vector<std::function<void()>> copy;
  {
    std::lock_guard lock(listeners_mu_);
    copy.reserve(listeners_.size());
    for (const auto& [id, l] : listeners_) copy.push_back(l);
  }
  for (const auto& l : copy) l();
}

SubscriptionConfig Subscription::config() const {
  std::lock_guard lock(mu_);
  return config_;
}

void Subscription::UpdateConfig(const SubscriptionConfig& config) {
  std::lock_guard lock(mu_);
  config_ = config;
}

std::shared_ptr<Topic> Subscription::topic() const {
  std::lock_guard lock(mu_);
  return topic_;
}

uint64_t Subscription::epoch() const {
  std::lock_guard lock(mu_);
  return epoch_;
}

}  // namespace tidepool::broker
