// The embedded backend: the Queue interface straight over an in-process broker::Broker.
//
// Every callback runs on the queue's BackendThread. A stream pulls from its Subscription with
// its own broker::Consumer, whose outstanding counts the broker keeps current (acks, nacks and
// expired leases free credit), and is woken by the subscription's listeners, never by polling.
//
// Terminate without a dead-letter topic acknowledges the messages: they are dropped, as the
// contract in queue.h says.
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <optional>
#include <unordered_map>

#include "broker/broker.h"
#include "queue/backends.h"

namespace tidepool::queue::internal {
namespace {

namespace asio = boost::asio;
using broker::ResourceKind;

// Most messages a single Pull call leases, and about how many bytes.
constexpr int kMaxPullMessages = static_cast<int>(broker::kMaxMessagesPerPublish);
constexpr size_t kMaxPullBytes = broker::kMaxPublishRequestBytes;
// Most messages a stream hands to its DeliveryHandler at once; more go in the next batch.
constexpr size_t kMaxMessagesPerDelivery = 1000;

Delivery ToDelivery(broker::ReceivedMessage r) {
  Delivery d;
  d.ack_id = std::move(r.ack_id);
  d.message_id = r.message.message_id();
  d.publish_time_micros = r.message.publish_time_micros;
  d.message = std::move(r.message.message);
  d.delivery_attempt = r.delivery_attempt;
  return d;
}

AckOutcome ToOutcome(broker::AckResult r, const std::string& subscription) {
  return AckOutcome{Named(r.status, subscription), std::move(r.invalid_ack_ids)};
}

int ClampSeconds(std::chrono::seconds s, int min) {
  return static_cast<int>(std::clamp<int64_t>(s.count(), min, kMaxLease.count()));
}

struct Target {
  std::string path;
  std::shared_ptr<broker::Subscription> sub;
};

class EmbeddedQueue;

// The state of one stream, shared with the subscription listener and the work posted to the
// backend thread so that either may outlive the MessageStream object.
class StreamState : public std::enable_shared_from_this<StreamState> {
 public:
  StreamState(EmbeddedQueue* queue, Target target, FlowControl flow, int lease_seconds,
              DeliveryHandler on_messages, StreamErrorHandler on_error);

  void Start();
  void StopPulling();
  void Close();
  int64_t outstanding_messages() const;
  // The app settled `ack_ids`: they stop counting for flow control. A nack with a delay keeps
  // the broker's lease (and its count in the consumer) until the delay is over, so such ids
  // are remembered as released until then.
  void Settled(const std::vector<std::string>& ack_ids, std::chrono::seconds delay);
  // Wraps a settle callback so that Close can wait for it.
  AckCallback Track(AckCallback done);
  const Target& target() const { return target_; }

 private:
  void SchedulePump();
  void Pump();  // on the backend thread only
  bool Fits(int64_t messages, int64_t bytes, size_t size) const;
  void GiveBackHeld();  // on the backend thread only

  EmbeddedQueue* const queue_;
  const Target target_;
  const FlowControl flow_;
  const int lease_seconds_;
  const DeliveryHandler on_messages_;
  const StreamErrorHandler on_error_;
  const std::shared_ptr<broker::Consumer> consumer_ = std::make_shared<broker::Consumer>();

  struct Released {
    int64_t bytes = 0;
    int64_t until_micros = 0;  // broker clock
  };

  mutable std::mutex mu_;
  std::condition_variable settled_cv_;
  std::unordered_map<std::string, int64_t> delivered_;  // handed out, not settled: id → bytes
  std::unordered_map<std::string, Released> released_;
  std::atomic<int64_t> held_messages_{0};
  bool pump_scheduled_ = false;
  bool stopped_ = false;
  bool close_started_ = false;
  int64_t settling_ = 0;
  uint64_t listener_ = 0;
  std::atomic<bool> closed_{false};  // no handler runs once set

  // Backend thread only. A message Subscription::Pull leased beyond the byte budget (its byte
  // limit is approximate: the last message may overshoot it); delivered first once it fits.
  std::optional<Delivery> held_;
};

class EmbeddedStream final : public MessageStream {
 public:
  EmbeddedStream(EmbeddedQueue* queue, std::shared_ptr<StreamState> state)
      : queue_(queue), state_(std::move(state)) {}
  ~EmbeddedStream() override { Close(); }

  void StopPulling() override { state_->StopPulling(); }
  void Ack(std::vector<std::string> ack_ids, AckCallback done) override;
  void Nack(std::vector<std::string> ack_ids, std::chrono::seconds delay,
            AckCallback done) override;
  void ExtendLease(std::vector<std::string> ack_ids, std::chrono::seconds lease,
                   AckCallback done) override;
  void Terminate(std::vector<Delivery> deliveries, AckCallback done) override;
  int64_t outstanding_messages() const override { return state_->outstanding_messages(); }
  void Close() override { state_->Close(); }

 private:
  EmbeddedQueue* const queue_;
  const std::shared_ptr<StreamState> state_;
};

class EmbeddedQueue final : public Queue {
 public:
  EmbeddedQueue(broker::Broker* broker, std::string project)
      : broker_(broker), project_(std::move(project)) {}

  Status EnsureTopic(const std::string& topic) override {
    TP_ASSIGN_OR_RETURN(std::string path, ResolveName(project_, topic, ResourceKind::kTopic));
    auto created = broker_->CreateTopic(broker::TopicConfig{.name = path});
    if (created.ok() || created.status().code() == StatusCode::kAlreadyExists) return Status::Ok();
    return Named(created.status(), path);
  }

  Status EnsureSubscription(const SubscriptionSpec& spec) override {
    TP_ASSIGN_OR_RETURN(std::string path,
                        ResolveName(project_, spec.name, ResourceKind::kSubscription));
    TP_ASSIGN_OR_RETURN(std::string topic, ResolveName(project_, spec.topic, ResourceKind::kTopic));
    broker::SubscriptionConfig config;
    config.name = path;
    config.topic = topic;
    config.ack_deadline_seconds = spec.ack_deadline_seconds;
    config.enable_message_ordering = spec.enable_message_ordering;
    config.enable_exactly_once_delivery = spec.enable_exactly_once_delivery;
    config.filter = spec.filter;
    if (!spec.dead_letter_topic.empty()) {
      TP_ASSIGN_OR_RETURN(std::string dead,
                          ResolveName(project_, spec.dead_letter_topic, ResourceKind::kTopic));
      config.dead_letter_policy = broker::DeadLetterPolicy{
          .dead_letter_topic = dead, .max_delivery_attempts = spec.max_delivery_attempts};
    }
    if (spec.min_backoff.count() != 0 || spec.max_backoff.count() != 0) {
      config.retry_policy = broker::RetryPolicy{
          .minimum_backoff_micros = spec.min_backoff.count() * broker::kMicrosPerSecond,
          .maximum_backoff_micros = spec.max_backoff.count() * broker::kMicrosPerSecond};
    }
    if (spec.message_retention.count() > 0) {
      config.message_retention_micros = spec.message_retention.count() * broker::kMicrosPerSecond;
    }
    if (spec.expiration_ttl.count() > 0) {
      config.expiration_ttl_micros = spec.expiration_ttl.count() * broker::kMicrosPerSecond;
    }
    auto created = broker_->CreateSubscription(std::move(config));
    if (created.ok() || created.status().code() == StatusCode::kAlreadyExists) return Status::Ok();
    return Named(created.status(), path);
  }

  Status DeleteSubscription(const std::string& subscription) override {
    TP_ASSIGN_OR_RETURN(std::string path,
                        ResolveName(project_, subscription, ResourceKind::kSubscription));
    Status deleted = broker_->DeleteSubscription(path);
    if (deleted.ok() || deleted.code() == StatusCode::kNotFound) return Status::Ok();
    return Named(deleted, path);
  }

  void Publish(const std::string& topic, std::vector<Message> messages,
               PublishCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto path = ResolveName(project_, topic, ResourceKind::kTopic);
    if (!path.ok()) {
      cb(path.status());
      return;
    }
    broker_->Publish(*path, std::move(messages),
                     [cb, path = *path](Result<std::vector<std::string>> ids) {
                       if (!ids.ok()) {
                         cb(Named(ids.status(), path));
                         return;
                       }
                       cb(std::move(ids));
                     });
  }

  Result<std::unique_ptr<MessageStream>> Subscribe(const std::string& subscription,
                                                   StreamOptions options,
                                                   DeliveryHandler on_messages,
                                                   StreamErrorHandler on_error) override {
    TP_ASSIGN_OR_RETURN(Target target, Find(subscription));
    int lease = options.stream_ack_deadline_seconds;
    if (lease <= 0) lease = target.sub->config().ack_deadline_seconds;
    lease = std::min<int>(lease, static_cast<int>(kMaxLease.count()));
    auto state = std::make_shared<StreamState>(this, std::move(target), options.flow, lease,
                                               std::move(on_messages), std::move(on_error));
    state->Start();
    return std::unique_ptr<MessageStream>(new EmbeddedStream(this, std::move(state)));
  }

  void Pull(const std::string& subscription, int max_messages, std::chrono::milliseconds max_wait,
            PullCallback done) override;

  void Ack(const std::string& subscription, std::vector<std::string> ack_ids,
           AckCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto target = Find(subscription);
    if (!target.ok()) return cb(AckOutcome{target.status()});
    AckOn(*target, std::move(ack_ids), std::move(cb));
  }

  void Nack(const std::string& subscription, std::vector<std::string> ack_ids,
            std::chrono::seconds delay, AckCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto target = Find(subscription);
    if (!target.ok()) return cb(AckOutcome{target.status()});
    ModifyOn(*target, std::move(ack_ids), ClampSeconds(delay, 0), std::move(cb));
  }

  void ExtendLease(const std::string& subscription, std::vector<std::string> ack_ids,
                   std::chrono::seconds lease, AckCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto target = Find(subscription);
    if (!target.ok()) return cb(AckOutcome{target.status()});
    // A lease of 0 would be a nack: the shortest extension is a second.
    ModifyOn(*target, std::move(ack_ids), ClampSeconds(lease, 1), std::move(cb));
  }

  void Terminate(const std::string& subscription, std::vector<Delivery> deliveries,
                 AckCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto target = Find(subscription);
    if (!target.ok()) return cb(AckOutcome{target.status()});
    TerminateOn(*target, std::move(deliveries), std::move(cb));
  }

  Result<Backlog> GetBacklog(const std::string& subscription) override {
    TP_ASSIGN_OR_RETURN(Target target, Find(subscription));
    const broker::Backlog b = target.sub->GetBacklog(broker_->env()->NowMicros());
    return Backlog{.undelivered_messages = b.undelivered_messages,
                   .oldest_unacked_age_micros = b.oldest_unacked_age_micros,
                   .leased_messages = b.leased_messages};
  }

  std::string backend() const override { return "embedded"; }

  // ---- shared with the streams; `cb` must come from Wrap.
  AckCallback Wrap(AckCallback done) { return thread_.Wrap(std::move(done)); }
  BackendThread& thread() { return thread_; }
  int64_t NowMicros() const { return broker_->env()->NowMicros(); }

  Result<Target> Find(const std::string& subscription) {
    TP_ASSIGN_OR_RETURN(std::string path,
                        ResolveName(project_, subscription, ResourceKind::kSubscription));
    auto sub = broker_->FindSubscription(path);
    if (!sub.ok()) return Named(sub.status(), path);
    return Target{path, std::move(*sub)};
  }

  static void AckOn(const Target& target, std::vector<std::string> ack_ids, AckCallback cb) {
    if (ack_ids.empty()) return cb(AckOutcome{});
    target.sub->Acknowledge(ack_ids, [cb = std::move(cb), path = target.path](broker::AckResult r) {
      cb(ToOutcome(std::move(r), path));
    });
  }

  static void ModifyOn(const Target& target, std::vector<std::string> ack_ids, int seconds,
                       AckCallback cb) {
    if (ack_ids.empty()) return cb(AckOutcome{});
    target.sub->ModifyAckDeadline(ack_ids, seconds,
                                  [cb = std::move(cb), path = target.path](broker::AckResult r) {
                                    cb(ToOutcome(std::move(r), path));
                                  });
  }

  // Publishes to the dead-letter topic first and acknowledges only once that is durable, so
  // a failure leaves the messages to be redelivered rather than lost.
  void TerminateOn(const Target& target, std::vector<Delivery> deliveries, AckCallback cb) {
    std::vector<std::string> ids;
    ids.reserve(deliveries.size());
    for (const auto& d : deliveries) ids.push_back(d.ack_id);
    const broker::SubscriptionConfig config = target.sub->config();
    if (!config.dead_letter_policy || deliveries.empty()) {
      AckOn(target, std::move(ids), std::move(cb));
      return;
    }
    std::vector<Message> dead;
    dead.reserve(deliveries.size());
    for (const auto& d : deliveries) dead.push_back(DeadLetterMessage(d, target.path));
    const std::string dead_topic = config.dead_letter_policy->dead_letter_topic;
    broker_->Publish(dead_topic, std::move(dead),
                     [target, ids = std::move(ids), cb = std::move(cb),
                      dead_topic](Result<std::vector<std::string>> published) mutable {
                       if (!published.ok()) {
                         cb(AckOutcome{published.status().WithContext(
                             target.path + ": dead-letter topic " + dead_topic)});
                         return;
                       }
                       AckOn(target, std::move(ids), std::move(cb));
                     });
  }

 private:
  broker::Broker* const broker_;
  const std::string project_;
  // Last: destroyed first, after waiting for every callback still to run.
  BackendThread thread_;
};

// ---- Pull: one batch, waiting for the subscription's listener up to max_wait.

class PullOp : public std::enable_shared_from_this<PullOp> {
 public:
  PullOp(asio::io_context& io, Target target, int max_messages, PullCallback done)
      : io_(io),
        target_(std::move(target)),
        max_messages_(static_cast<size_t>(max_messages)),
        done_(std::move(done)),
        timer_(io) {}

  // On the backend thread: every step of the op runs there.
  void Start(std::chrono::milliseconds max_wait) {
    if (TryPull()) return;
    std::weak_ptr<PullOp> weak = weak_from_this();
    listener_ = target_.sub->AddListener([weak] {
      auto self = weak.lock();
      if (!self) return;
      // Under mu_ and only while unfinished: a listener may run after RemoveListener, and
      // once the op finished the queue (and its thread) may be gone.
      std::lock_guard lock(self->mu_);
      if (!self->finished_) asio::post(self->io_, [self] { self->TryPull(); });
    });
    timer_.expires_after(max_wait);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (!ec) self->Finish(std::vector<Delivery>{});
    });
    // A message may have arrived between the first try and the listener.
    asio::post(io_, [self = shared_from_this()] { self->TryPull(); });
  }

 private:
  bool TryPull() {
    {
      std::lock_guard lock(mu_);
      if (finished_) return true;
    }
    auto got = target_.sub->Pull(max_messages_, kMaxPullBytes,
                                 target_.sub->config().ack_deadline_seconds, nullptr);
    if (!got.ok()) {
      Finish(Named(got.status(), target_.path));
      return true;
    }
    if (got->empty()) return false;
    std::vector<Delivery> out;
    out.reserve(got->size());
    for (auto& r : *got) out.push_back(ToDelivery(std::move(r)));
    Finish(std::move(out));
    return true;
  }

  void Finish(Result<std::vector<Delivery>> result) {
    {
      std::lock_guard lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    if (listener_ != 0) target_.sub->RemoveListener(listener_);
    timer_.cancel();
    done_(std::move(result));
  }

  asio::io_context& io_;
  const Target target_;
  const size_t max_messages_;
  PullCallback done_;
  asio::steady_timer timer_;
  uint64_t listener_ = 0;
  std::mutex mu_;
  bool finished_ = false;
};

void EmbeddedQueue::Pull(const std::string& subscription, int max_messages,
                         std::chrono::milliseconds max_wait, PullCallback done) {
  auto cb = thread_.Wrap(std::move(done));
  auto target = Find(subscription);
  if (!target.ok()) return cb(target.status());
  if (max_messages <= 0) {
    return cb(Status::InvalidArgument("pull from " + target->path +
                                      ": max_messages must be positive, got " +
                                      std::to_string(max_messages)));
  }
  auto op = std::make_shared<PullOp>(thread_.io(), std::move(*target),
                                     std::min(max_messages, kMaxPullMessages), std::move(cb));
  thread_.Post([op, max_wait] { op->Start(max_wait); });
}

// ---- streams

StreamState::StreamState(EmbeddedQueue* queue, Target target, FlowControl flow, int lease_seconds,
                         DeliveryHandler on_messages, StreamErrorHandler on_error)
    : queue_(queue),
      target_(std::move(target)),
      flow_(flow),
      lease_seconds_(lease_seconds),
      on_messages_(std::move(on_messages)),
      on_error_(std::move(on_error)) {}

void StreamState::Start() {
  std::weak_ptr<StreamState> weak = weak_from_this();
  const uint64_t id = target_.sub->AddListener([weak] {
    if (auto self = weak.lock()) self->SchedulePump();
  });
  {
    std::lock_guard lock(mu_);
    listener_ = id;
  }
  SchedulePump();
}

void StreamState::SchedulePump() {
  // Posts under mu_: a listener may run after RemoveListener (the subscription calls copies),
  // and once StopPulling has set stopped_ nothing may reach the thread, which Close's caller
  // may destroy with the queue.
  std::lock_guard lock(mu_);
  if (stopped_ || pump_scheduled_) return;
  pump_scheduled_ = true;
  queue_->thread().Post([self = shared_from_this()] { self->Pump(); });
}

bool StreamState::Fits(int64_t messages, int64_t bytes, size_t size) const {
  if (flow_.max_outstanding_messages > 0 && messages >= flow_.max_outstanding_messages)
    return false;
  // A message bigger than the whole budget still goes out when nothing is outstanding.
  if (flow_.max_outstanding_bytes > 0 && messages > 0 &&
      bytes + static_cast<int64_t>(size) > flow_.max_outstanding_bytes)
    return false;
  return true;
}

void StreamState::Pump() {
  {
    std::lock_guard lock(mu_);
    pump_scheduled_ = false;
    if (stopped_) return;
  }
  // The consumer counts every lease of this stream: the held message and those nacked with a
  // delay included.
  const size_t held_bytes = held_ ? held_->size() : 0;
  int64_t released_messages = 0;
  int64_t released_bytes = 0;
  {
    std::lock_guard lock(mu_);
    const int64_t now = queue_->NowMicros();
    std::erase_if(released_, [now](const auto& entry) { return entry.second.until_micros <= now; });
    for (const auto& [id, r] : released_) {
      ++released_messages;
      released_bytes += r.bytes;
    }
  }
  int64_t messages = std::max<int64_t>(
      0, consumer_->outstanding_messages.load() - (held_ ? 1 : 0) - released_messages);
  int64_t bytes = std::max<int64_t>(
      0, consumer_->outstanding_bytes.load() - static_cast<int64_t>(held_bytes) - released_bytes);

  std::vector<Delivery> batch;
  if (held_) {
    if (!Fits(messages, bytes, held_bytes)) return;  // woken again when credit frees
    batch.push_back(std::move(*held_));
    held_.reset();
    held_messages_.store(0);
    ++messages;
    bytes += static_cast<int64_t>(held_bytes);
  }

  bool more = false;
  Status failed;
  if (Fits(messages, bytes, 0)) {
    size_t want_messages = kMaxMessagesPerDelivery - batch.size();
    if (flow_.max_outstanding_messages > 0) {
      want_messages = std::min<size_t>(
          want_messages, static_cast<size_t>(flow_.max_outstanding_messages - messages));
    }
    size_t want_bytes = kMaxPullBytes;
    if (flow_.max_outstanding_bytes > 0) {
      want_bytes = static_cast<size_t>(std::max<int64_t>(1, flow_.max_outstanding_bytes - bytes));
    }
    auto got = target_.sub->Pull(want_messages, want_bytes, lease_seconds_, consumer_);
    if (!got.ok()) {
      failed = Named(got.status(), target_.path);
    } else {
      more = !got->empty();
      for (auto& r : *got) {
        Delivery d = ToDelivery(std::move(r));
        const size_t size = d.size();
        if (!Fits(messages, bytes, size)) {
          // Only the last message of a Pull can overshoot its byte limit.
          held_ = std::move(d);
          held_messages_.store(1);
          more = false;
          continue;
        }
        ++messages;
        bytes += static_cast<int64_t>(size);
        batch.push_back(std::move(d));
      }
    }
  }

  if (!batch.empty()) {
    {
      // Before the handler runs: it may settle them at once.
      std::lock_guard lock(mu_);
      for (const auto& d : batch) delivered_[d.ack_id] = static_cast<int64_t>(d.size());
    }
    if (!closed_.load() && on_messages_) on_messages_(std::move(batch));
  }
  if (!failed.ok()) {
    StopPulling();
    if (!closed_.load() && on_error_) on_error_(failed);
    return;
  }
  // There may be more to deliver than one Pull returned; the listener covers later arrivals.
  if (more) SchedulePump();
}

void StreamState::GiveBackHeld() {
  if (!held_) return;
  EmbeddedQueue::ModifyOn(target_, {held_->ack_id}, 0, [](AckOutcome) {});
  held_.reset();
  held_messages_.store(0);
}

int64_t StreamState::outstanding_messages() const {
  std::lock_guard lock(mu_);
  return std::max<int64_t>(0, consumer_->outstanding_messages.load() - held_messages_.load() -
                                  static_cast<int64_t>(released_.size()));
}

void StreamState::Settled(const std::vector<std::string>& ack_ids, std::chrono::seconds delay) {
  bool released = false;
  {
    std::lock_guard lock(mu_);
    const int64_t until = queue_->NowMicros() + delay.count() * broker::kMicrosPerSecond;
    for (const auto& id : ack_ids) {
      auto it = delivered_.find(id);
      if (it == delivered_.end()) continue;
      if (delay.count() > 0) {
        released_[id] = Released{.bytes = it->second, .until_micros = until};
        released = true;
      }
      delivered_.erase(it);
    }
  }
  // The broker frees acks and immediate nacks itself (and notifies); delayed nacks only here.
  if (released) SchedulePump();
}

void StreamState::StopPulling() {
  uint64_t listener = 0;
  {
    std::lock_guard lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    listener = listener_;
  }
  if (listener != 0) target_.sub->RemoveListener(listener);
  // The held message was never handed out: let another subscriber have it at once.
  if (queue_->thread().InThread()) {
    GiveBackHeld();
  } else {
    queue_->thread().Post([self = shared_from_this()] { self->GiveBackHeld(); });
  }
}

AckCallback StreamState::Track(AckCallback done) {
  {
    std::lock_guard lock(mu_);
    ++settling_;
  }
  return [self = shared_from_this(), done = std::move(done)](AckOutcome outcome) {
    if (done) done(std::move(outcome));
    std::lock_guard lock(self->mu_);
    if (--self->settling_ == 0) self->settled_cv_.notify_all();
  };
}

void StreamState::Close() {
  {
    std::lock_guard lock(mu_);
    if (close_started_) return;
    close_started_ = true;
  }
  StopPulling();
  // From a callback the settle calls cannot complete while we wait on their thread.
  if (!queue_->thread().InThread()) {
    std::unique_lock lock(mu_);
    settled_cv_.wait(lock, [this] { return settling_ == 0; });
  }
  closed_.store(true);
  // A delivery or error callback already running finishes before Close returns.
  queue_->thread().Barrier();
}

void EmbeddedStream::Ack(std::vector<std::string> ack_ids, AckCallback done) {
  state_->Settled(ack_ids, std::chrono::seconds(0));
  EmbeddedQueue::AckOn(state_->target(), std::move(ack_ids),
                       queue_->Wrap(state_->Track(std::move(done))));
}

void EmbeddedStream::Nack(std::vector<std::string> ack_ids, std::chrono::seconds delay,
                          AckCallback done) {
  const int seconds = ClampSeconds(delay, 0);
  state_->Settled(ack_ids, std::chrono::seconds(seconds));
  EmbeddedQueue::ModifyOn(state_->target(), std::move(ack_ids), seconds,
                          queue_->Wrap(state_->Track(std::move(done))));
}

void EmbeddedStream::ExtendLease(std::vector<std::string> ack_ids, std::chrono::seconds lease,
                                 AckCallback done) {
  EmbeddedQueue::ModifyOn(state_->target(), std::move(ack_ids), ClampSeconds(lease, 1),
                          queue_->Wrap(state_->Track(std::move(done))));
}

void EmbeddedStream::Terminate(std::vector<Delivery> deliveries, AckCallback done) {
  std::vector<std::string> ids;
  for (const auto& d : deliveries) ids.push_back(d.ack_id);
  state_->Settled(ids, std::chrono::seconds(0));
  queue_->TerminateOn(state_->target(), std::move(deliveries),
                      queue_->Wrap(state_->Track(std::move(done))));
}

}  // namespace

Result<std::unique_ptr<Queue>> OpenEmbeddedQueue(const QueueOptions& options) {
  if (options.broker == nullptr) {
    return Status::InvalidArgument("queue backend \"embedded\" needs QueueOptions::broker");
  }
  return std::unique_ptr<Queue>(new EmbeddedQueue(options.broker, options.project));
}

}  // namespace tidepool::queue::internal
