#include "queue/queue.h"

#include <ctime>
#include <future>

#include "common/thread_name.h"
#include "queue/backends.h"

namespace tidepool::queue {

namespace {

constexpr std::string_view kProjectsPrefix = "projects/";

std::string CompletePath(const std::string& project, const std::string& name,
                         std::string_view collection) {
  if (name.find('/') != std::string::npos) return name;
  return std::string(kProjectsPrefix) + project + "/" + std::string(collection) + "/" + name;
}

// RFC 3339 in UTC with microseconds, as the real service writes publish times into
// dead-letter attributes.
std::string Rfc3339Micros(int64_t micros) {
  constexpr int64_t kMicrosPerSecond = 1'000'000;
  const std::time_t seconds = static_cast<std::time_t>(micros / kMicrosPerSecond);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long long>(micros % kMicrosPerSecond));
  return buf;
}

}  // namespace

std::string TopicPath(const std::string& project, const std::string& topic) {
  return CompletePath(project, topic, "topics");
}

std::string SubscriptionPath(const std::string& project, const std::string& subscription) {
  return CompletePath(project, subscription, "subscriptions");
}

Result<std::unique_ptr<Queue>> OpenQueue(const QueueOptions& options) {
  if (options.project.empty()) {
    return Status::InvalidArgument("queue options: project must not be empty");
  }
  if (options.backend == "embedded") return internal::OpenEmbeddedQueue(options);
  if (options.backend == "pubsub") return internal::OpenPubsubQueue(options);
  if (options.backend == "nats") return internal::OpenNatsQueue(options);
  return Status::InvalidArgument("unknown queue backend \"" + options.backend +
                                 "\" (expected \"embedded\", \"pubsub\" or \"nats\")");
}

namespace internal {

Result<std::string> ResolveName(const std::string& project, const std::string& name,
                                broker::ResourceKind kind) {
  const bool topic = kind == broker::ResourceKind::kTopic;
  const char* what = topic ? "topic" : "subscription";
  const bool short_id = !name.empty() && name.find('/') == std::string::npos;
  if (!short_id && !name.starts_with(kProjectsPrefix)) {
    return Status::InvalidArgument(std::string("invalid ") + what + " name \"" + name +
                                   "\": expected a short id or projects/P/" +
                                   (topic ? "topics" : "subscriptions") + "/ID");
  }
  std::string path = topic ? TopicPath(project, name) : SubscriptionPath(project, name);
  auto parsed = broker::ParseResourceName(path, kind);
  if (!parsed.ok()) {
    return Status::InvalidArgument(std::string("invalid ") + what + " name \"" + name +
                                   "\": " + parsed.status().message());
  }
  return path;
}

Status Named(const Status& status, const std::string& name) {
  if (status.ok() || status.message().find(name) != std::string::npos) return status;
  return status.WithContext(name);
}

Message DeadLetterMessage(const Delivery& delivery, const std::string& subscription_path) {
  Message m = delivery.message;
  auto sub = broker::ParseResourceName(subscription_path, broker::ResourceKind::kSubscription);
  if (delivery.delivery_attempt > 0) {
    m.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] =
        std::to_string(delivery.delivery_attempt);
  }
  m.attributes["CloudPubSubDeadLetterSourceSubscription"] = sub.ok() ? sub->id : subscription_path;
  m.attributes["CloudPubSubDeadLetterSourceSubscriptionProject"] = sub.ok() ? sub->project : "";
  if (delivery.publish_time_micros > 0) {
    m.attributes["CloudPubSubDeadLetterSourceTopicPublishTime"] =
        Rfc3339Micros(delivery.publish_time_micros);
  }
  return m;
}

BackendThread::BackendThread()
    : work_(boost::asio::make_work_guard(io_)), thread_([this] {
        SetCurrentThreadName("queue");
        io_.run();
      }) {}

BackendThread::~BackendThread() {
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return pending_ == 0; });
  }
  work_.reset();
  io_.stop();
  thread_.join();
}

void BackendThread::Begin() {
  std::lock_guard lock(mu_);
  ++pending_;
}

void BackendThread::End() {
  std::lock_guard lock(mu_);
  if (--pending_ == 0) cv_.notify_all();
}

void BackendThread::Barrier() {
  if (InThread()) return;
  std::promise<void> ran;
  auto future = ran.get_future();
  Post([&ran] { ran.set_value(); });
  future.wait();
}

}  // namespace internal
}  // namespace tidepool::queue
