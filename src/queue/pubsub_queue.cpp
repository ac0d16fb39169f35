// The pubsub backend: the Queue interface over any Pub/Sub v1 endpoint (a `tidepool broker`, or
// Google Cloud Pub/Sub) through gRPC.
//
// Unary calls use the stub's callback API (no thread per call); streaming pull runs one
// grpc::ClientBidiReactor per stream attempt, reopened with backoff when the server ends it.
// Acks and deadline changes go through unary Acknowledge / ModifyAckDeadline, so that their
// outcomes (exactly-once failures included) reach the caller. Every user callback runs on the
// queue's BackendThread.
#include <grpcpp/grpcpp.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>

#include <unistd.h>

#include "broker/config.h"
#include "google/pubsub/v1/pubsub.grpc.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "pubsub/client.h"
#include "pubsub/convert.h"
#include "pubsub/google_auth.h"
#include "queue/backends.h"

namespace tidepool::queue::internal {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace v1 = ::google::pubsub::v1;
using broker::ResourceKind;

constexpr std::chrono::milliseconds kInitialReopenBackoff{100};
constexpr std::chrono::milliseconds kMaxReopenBackoff{10'000};
// After StopPulling the stream is half-closed and read to its end, so that messages the server
// already sent are nacked (redelivered at once) instead of waiting out their lease in a buffer
// nobody reads. A server that does not end the stream by then is cancelled.
constexpr std::chrono::milliseconds kHalfCloseWait{5'000};
// The bounds the API puts on stream_ack_deadline_seconds.
constexpr int kMinStreamAckDeadline = broker::kMinAckDeadlineSeconds;
constexpr int kMaxStreamAckDeadline = broker::kMaxAckDeadlineSeconds;
// A Pull is reissued while at least this much of its max_wait is left (the server may answer
// empty before the client's wait is over).
constexpr std::chrono::milliseconds kMinPullRetryWait{20};
// The call's deadline is this much after the caller's max_wait: a tidepool broker answers
// (empty) 100 ms before a call's deadline, so that the wait lasts max_wait and the answer
// still arrives.
constexpr std::chrono::milliseconds kPullDeadlineSlack{200};
constexpr int kMaxPullMessages = static_cast<int>(broker::kMaxMessagesPerPublish);
constexpr std::chrono::seconds kAdminTimeout{2};
constexpr int kHttpVersion11 = 11;
constexpr char kBacklogPath[] = "/v1/backlog";
constexpr char kExactlyOnceReason[] = "EXACTLY_ONCE_ACKID_FAILURE";

Status ToStatus(const grpc::Status& s, const std::string& name) {
  return Named(pubsub::FromGrpc(s), name);
}

// Codes after which reopening a stream cannot help.
bool EndsStreamForGood(grpc::StatusCode code) {
  using C = grpc::StatusCode;
  return code == C::NOT_FOUND || code == C::PERMISSION_DENIED || code == C::INVALID_ARGUMENT ||
         code == C::FAILED_PRECONDITION || code == C::UNIMPLEMENTED || code == C::UNAUTHENTICATED;
}

// The ack ids an exactly-once failure names (the ErrorInfo in the status details); false when
// the status carries none, i.e. the whole call failed.
bool ExactlyOnceFailures(const grpc::Status& s, std::vector<std::string>* failed) {
  if (s.error_details().empty()) return false;
  google::rpc::Status details;
  if (!details.ParseFromString(s.error_details())) return false;
  bool found = false;
  for (const auto& any : details.details()) {
    google::rpc::ErrorInfo info;
    if (!any.UnpackTo(&info) || info.reason() != kExactlyOnceReason) continue;
    found = true;
    // Permanent and transient failures alike: the lease is not confirmed either way, and the
    // message will be redelivered.
    for (const auto& [id, why] : info.metadata()) failed->push_back(id);
  }
  return found;
}

Delivery ToDelivery(const v1::ReceivedMessage& r) {
  Delivery d;
  d.ack_id = r.ack_id();
  d.message_id = r.message().message_id();
  d.publish_time_micros = pubsub::TimestampMicros(r.message().publish_time());
  d.message.data = r.message().data();
  d.message.attributes.insert(r.message().attributes().begin(), r.message().attributes().end());
  d.message.ordering_key = r.message().ordering_key();
  d.delivery_attempt = r.delivery_attempt();
  return d;
}

void ToProto(const Message& m, v1::PubsubMessage* out) {
  out->set_data(m.data);
  out->mutable_attributes()->insert(m.attributes.begin(), m.attributes.end());
  out->set_ordering_key(m.ordering_key);
}

int ClampSeconds(std::chrono::seconds s, int min) {
  return static_cast<int>(std::clamp<int64_t>(s.count(), min, kMaxLease.count()));
}

// One unary call on the callback API: the context, request and response live until the
// completion has run. The completion hands the call to the backend thread (PubsubQueue::Drop)
// to be destroyed there, never on the gRPC thread it runs on: a ClientContext holds the
// channel, and a channel whose last reference goes on a gRPC callback thread takes that
// thread's completion queue down from under it (gRPC 1.51 joins the thread with itself,
// fails, and frees the queue the thread is still reading: a double free).
template <typename Request, typename Response>
struct UnaryCall {
  grpc::ClientContext ctx;
  Request request;
  Response response;
};

class PubsubQueue;

class PullReactor;

// One stream's state, shared with its reactors and the work posted to the backend thread.
class StreamState : public std::enable_shared_from_this<StreamState> {
 public:
  StreamState(PubsubQueue* queue, std::string path, FlowControl flow, int lease_seconds,
              DeliveryHandler on_messages, StreamErrorHandler on_error);

  void Open();
  void StopPulling();
  void Close();
  int64_t outstanding_messages() {
    std::lock_guard lock(mu_);
    return static_cast<int64_t>(outstanding_.size());
  }
  // The ids leave flow control at once: their settle call is on its way.
  void Release(const std::vector<std::string>& ack_ids);
  AckCallback Track(AckCallback done);
  const std::string& path() const { return path_; }

  // From the reactor, on gRPC threads.
  void OnResponse(const v1::StreamingPullResponse& response);
  void OnStreamDone(PullReactor* reactor, const grpc::Status& status);

 private:
  void ScheduleDeliver();  // REQUIRES: mu_ held
  void Deliver();          // on the backend thread
  bool FitsLocked(size_t size) const;
  void GiveBack(std::vector<std::string> ack_ids);

  PubsubQueue* const queue_;
  const std::string path_;
  const FlowControl flow_;
  const int lease_seconds_;
  const DeliveryHandler on_messages_;
  const StreamErrorHandler on_error_;
  const std::string client_id_;

  std::mutex mu_;
  std::condition_variable cv_;
  PullReactor* reactor_ = nullptr;  // the open attempt; cleared by its OnDone
  bool stopped_ = false;
  bool close_started_ = false;
  bool deliver_scheduled_ = false;
  int64_t settling_ = 0;
  std::chrono::milliseconds backoff_ = kInitialReopenBackoff;
  std::deque<Delivery> pending_;  // received, waiting for flow-control credit
  std::unordered_map<std::string, int64_t> outstanding_;  // delivered: ack id → bytes
  int64_t outstanding_bytes_ = 0;
  std::atomic<bool> closed_{false};  // no handler runs once set
  // Backend thread only. Destroyed by Close, on that thread: a reactor may drop the last
  // reference to this state on a gRPC thread after Close has returned and the queue (with the
  // io_context the timer belongs to) is gone; the timer must not outlive that.
  std::optional<asio::steady_timer> reopen_timer_;
};

class PullReactor final
    : public grpc::ClientBidiReactor<v1::StreamingPullRequest, v1::StreamingPullResponse> {
 public:
  PullReactor(std::shared_ptr<StreamState> state, v1::StreamingPullRequest initial)
      : state_(std::move(state)), initial_(std::move(initial)) {}

  void Start(v1::Subscriber::Stub& stub) {
    stub.async()->StreamingPull(&ctx_, this);
    StartWrite(&initial_);
    StartRead(&response_);
    StartCall();
  }
  // REQUIRES: OnDone has not run (the state's mutex guarantees it).
  void Cancel() { ctx_.TryCancel(); }
  // Says the client sends nothing more; the server then ends the stream after what it is
  // writing, and the reads go on until it has. REQUIRES: OnDone has not run.
  void HalfClose() {
    {
      std::lock_guard lock(mu_);
      if (half_close_requested_) return;
      half_close_requested_ = true;
      if (!initial_written_) return;  // OnWriteDone issues it: never before the first write
    }
    StartWritesDone();
  }

  void OnWriteDone(bool ok) override {
    // A failed write ends the call: OnDone reports it.
    {
      std::lock_guard lock(mu_);
      initial_written_ = true;
      if (!ok || !half_close_requested_) return;
    }
    StartWritesDone();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream is over; OnDone follows
    state_->OnResponse(response_);
    response_.Clear();
    StartRead(&response_);
  }
  // The state deletes this reactor on the backend thread (see UnaryCall for why not here).
  void OnDone(const grpc::Status& status) override { state_->OnStreamDone(this, status); }

 private:
  const std::shared_ptr<StreamState> state_;
  grpc::ClientContext ctx_;
  v1::StreamingPullRequest initial_;
  v1::StreamingPullResponse response_;
  std::mutex mu_;
  bool initial_written_ = false;
  bool half_close_requested_ = false;
};

class PubsubStream final : public MessageStream {
 public:
  PubsubStream(PubsubQueue* queue, std::shared_ptr<StreamState> state)
      : queue_(queue), state_(std::move(state)) {}
  ~PubsubStream() override { Close(); }

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
  PubsubQueue* const queue_;
  const std::shared_ptr<StreamState> state_;
};

class PubsubQueue final : public Queue {
 public:
  PubsubQueue(const QueueOptions& options, pubsub::ClientOptions client_options)
      : options_(options),
        client_(pubsub::PubsubClient::Connect(options.endpoint, std::move(client_options))) {}

  Status EnsureTopic(const std::string& topic) override {
    TP_ASSIGN_OR_RETURN(std::string path,
                        ResolveName(options_.project, topic, ResourceKind::kTopic));
    grpc::ClientContext ctx;
    Prepare(ctx);
    v1::Topic request;
    v1::Topic response;
    request.set_name(path);
    Status s = ToStatus(client_->publisher().CreateTopic(&ctx, request, &response), path);
    if (s.ok() || s.code() == StatusCode::kAlreadyExists) return Status::Ok();
    return Named(s, path);
  }

  Status EnsureSubscription(const SubscriptionSpec& spec) override {
    TP_ASSIGN_OR_RETURN(std::string path,
                        ResolveName(options_.project, spec.name, ResourceKind::kSubscription));
    TP_ASSIGN_OR_RETURN(std::string topic,
                        ResolveName(options_.project, spec.topic, ResourceKind::kTopic));
    v1::Subscription sub;
    sub.set_name(path);
    sub.set_topic(topic);
    sub.set_ack_deadline_seconds(spec.ack_deadline_seconds);
    sub.set_enable_message_ordering(spec.enable_message_ordering);
    sub.set_enable_exactly_once_delivery(spec.enable_exactly_once_delivery);
    sub.set_filter(spec.filter);
    if (spec.message_retention.count() > 0) {
      sub.mutable_message_retention_duration()->set_seconds(spec.message_retention.count());
    }
    if (spec.expiration_ttl.count() > 0) {
      sub.mutable_expiration_policy()->mutable_ttl()->set_seconds(spec.expiration_ttl.count());
    }
    if (!spec.dead_letter_topic.empty()) {
      TP_ASSIGN_OR_RETURN(std::string dead, ResolveName(options_.project, spec.dead_letter_topic,
                                                        ResourceKind::kTopic));
      sub.mutable_dead_letter_policy()->set_dead_letter_topic(dead);
      sub.mutable_dead_letter_policy()->set_max_delivery_attempts(spec.max_delivery_attempts);
    }
    if (spec.min_backoff.count() != 0 || spec.max_backoff.count() != 0) {
      sub.mutable_retry_policy()->mutable_minimum_backoff()->set_seconds(spec.min_backoff.count());
      sub.mutable_retry_policy()->mutable_maximum_backoff()->set_seconds(spec.max_backoff.count());
    }
    grpc::ClientContext ctx;
    Prepare(ctx);
    v1::Subscription response;
    Status s = ToStatus(client_->stub().CreateSubscription(&ctx, sub, &response), path);
    if (s.ok() || s.code() == StatusCode::kAlreadyExists) return Status::Ok();
    return Named(s, path);
  }

  void Publish(const std::string& topic, std::vector<Message> messages,
               PublishCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto path = ResolveName(options_.project, topic, ResourceKind::kTopic);
    if (!path.ok()) return cb(path.status());
    PublishTo(*path, messages, std::move(cb));
  }

  Result<std::unique_ptr<MessageStream>> Subscribe(const std::string& subscription,
                                                   StreamOptions options,
                                                   DeliveryHandler on_messages,
                                                   StreamErrorHandler on_error) override {
    TP_ASSIGN_OR_RETURN(std::string path,
                        ResolveName(options_.project, subscription, ResourceKind::kSubscription));
    // Reading the subscription fails early on a missing one and gives the default lease. A
    // principal allowed only to consume may not read it: then the API's default deadline.
    int lease = options.stream_ack_deadline_seconds;
    auto config = GetSubscription(path);
    if (!config.ok() && config.status().code() == StatusCode::kNotFound) return config.status();
    if (lease <= 0) {
      lease = config.ok() ? config->ack_deadline_seconds() : broker::kDefaultAckDeadlineSeconds;
    }
    lease = std::clamp(lease, kMinStreamAckDeadline, kMaxStreamAckDeadline);
    auto state = std::make_shared<StreamState>(this, path, options.flow, lease,
                                               std::move(on_messages), std::move(on_error));
    state->Open();
    return std::unique_ptr<MessageStream>(new PubsubStream(this, std::move(state)));
  }

  void Pull(const std::string& subscription, int max_messages, std::chrono::milliseconds max_wait,
            PullCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto path = ResolveName(options_.project, subscription, ResourceKind::kSubscription);
    if (!path.ok()) return cb(path.status());
    if (max_messages <= 0) {
      return cb(Status::InvalidArgument("pull from " + *path +
                                        ": max_messages must be positive, got " +
                                        std::to_string(max_messages)));
    }
    PullUntil(*path, std::min(max_messages, kMaxPullMessages),
              std::chrono::steady_clock::now() + max_wait, std::move(cb));
  }

  void Ack(const std::string& subscription, std::vector<std::string> ack_ids,
           AckCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto path = ResolveName(options_.project, subscription, ResourceKind::kSubscription);
    if (!path.ok()) return cb(AckOutcome{path.status()});
    Settle(*path, std::move(ack_ids), std::nullopt, std::move(cb));
  }

  void Nack(const std::string& subscription, std::vector<std::string> ack_ids,
            std::chrono::seconds delay, AckCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto path = ResolveName(options_.project, subscription, ResourceKind::kSubscription);
    if (!path.ok()) return cb(AckOutcome{path.status()});
    Settle(*path, std::move(ack_ids), ClampSeconds(delay, 0), std::move(cb));
  }

  void ExtendLease(const std::string& subscription, std::vector<std::string> ack_ids,
                   std::chrono::seconds lease, AckCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto path = ResolveName(options_.project, subscription, ResourceKind::kSubscription);
    if (!path.ok()) return cb(AckOutcome{path.status()});
    // A deadline of 0 would be a nack: the shortest extension is a second.
    Settle(*path, std::move(ack_ids), ClampSeconds(lease, 1), std::move(cb));
  }

  void Terminate(const std::string& subscription, std::vector<Delivery> deliveries,
                 AckCallback done) override {
    auto cb = thread_.Wrap(std::move(done));
    auto path = ResolveName(options_.project, subscription, ResourceKind::kSubscription);
    if (!path.ok()) return cb(AckOutcome{path.status()});
    TerminateOn(*path, std::move(deliveries), std::move(cb));
  }

  Result<Backlog> GetBacklog(const std::string& subscription) override;

  Status DeleteSubscription(const std::string& subscription) override {
    TP_ASSIGN_OR_RETURN(std::string path,
                        ResolveName(options_.project, subscription, ResourceKind::kSubscription));
    Status deleted = client_->DeleteSubscription(path);
    if (deleted.ok() || deleted.code() == StatusCode::kNotFound) return Status::Ok();
    return Named(deleted, path);
  }

  std::string backend() const override { return "pubsub"; }

  // ---- shared with the streams; every `cb` comes from Wrap.
  BackendThread& thread() { return thread_; }
  v1::Subscriber::Stub& subscriber() { return client_->stub(); }
  AckCallback Wrap(AckCallback done) { return thread_.Wrap(std::move(done)); }

  struct PendingSettle {
    std::vector<std::string> ack_ids;
    AckCallback cb;
  };
  struct SettleQueue {
    int in_flight = 0;
    std::vector<PendingSettle> waiting;
  };

  // Acknowledge (no seconds) or ModifyAckDeadline. Settles coalesce: while
  // kMaxSettleCallsInFlight calls of the same kind are out, later ones wait and go together
  // in the next call, so a busy worker acks in batches (like the official clients) without an
  // idle one waiting on a timer. `cb` runs once with the outcome of its own ids.
  void Settle(const std::string& path, std::vector<std::string> ack_ids, std::optional<int> seconds,
              AckCallback cb) {
    if (ack_ids.empty()) return cb(AckOutcome{});
    const std::string key = path + (seconds ? "|" + std::to_string(*seconds) : "|ack");
    {
      std::lock_guard lock(settle_mu_);
      SettleQueue& q = settles_[key];
      if (q.in_flight >= kMaxSettleCallsInFlight) {
        q.waiting.push_back(PendingSettle{std::move(ack_ids), std::move(cb)});
        return;
      }
      q.in_flight++;
    }
    std::vector<PendingSettle> batch;
    batch.push_back(PendingSettle{std::move(ack_ids), std::move(cb)});
    SendSettles(key, path, seconds, std::move(batch));
  }

  // One call (split by SendSettle at kMaxAckIdsPerCall) for every settle of `batch`; when it
  // completes, whatever waited meanwhile goes out next, then each settle's callback runs with
  // its share of the outcome.
  void SendSettles(const std::string& key, const std::string& path, std::optional<int> seconds,
                   std::vector<PendingSettle> batch) {
    std::vector<std::string> ids;
    for (const auto& p : batch) ids.insert(ids.end(), p.ack_ids.begin(), p.ack_ids.end());
    auto shared = std::make_shared<std::vector<PendingSettle>>(std::move(batch));
    SendSettle(path, std::move(ids), seconds,
               [this, key, path, seconds, shared](AckOutcome outcome) {
                 std::vector<PendingSettle> next;
                 {
                   std::lock_guard lock(settle_mu_);
                   SettleQueue& q = settles_[key];
                   if (q.waiting.empty()) {
                     q.in_flight--;
                   } else {
                     next.swap(q.waiting);
                   }
                 }
                 // The next call goes out before any callback of this one runs: those
                 // callbacks may let the queue be closed and destroyed.
                 if (!next.empty()) SendSettles(key, path, seconds, std::move(next));
                 const std::set<std::string> failed(outcome.failed_ack_ids.begin(),
                                                    outcome.failed_ack_ids.end());
                 for (auto& p : *shared) {
                   AckOutcome own{.status = outcome.status};
                   for (const auto& id : p.ack_ids) {
                     if (failed.count(id) != 0) own.failed_ack_ids.push_back(id);
                   }
                   p.cb(std::move(own));
                 }
               });
  }

  // Acknowledge (no seconds) or ModifyAckDeadline, in calls of at most kMaxAckIdsPerCall ids;
  // `cb` runs once with the merged outcome.
  void SendSettle(const std::string& path, std::vector<std::string> ack_ids,
                  std::optional<int> seconds, AckCallback cb) {
    if (ack_ids.empty()) return cb(AckOutcome{});
    struct Merge {
      std::mutex mu;
      size_t remaining = 0;
      AckOutcome outcome;
      AckCallback cb;
    };
    auto merge = std::make_shared<Merge>();
    merge->remaining = (ack_ids.size() + kMaxAckIdsPerCall - 1) / kMaxAckIdsPerCall;
    merge->cb = std::move(cb);
    auto finish = [merge, path](const grpc::Status& s) {
      std::vector<std::string> failed;
      Status status;
      if (!s.ok() && !ExactlyOnceFailures(s, &failed)) status = ToStatus(s, path);
      std::unique_lock lock(merge->mu);
      auto& out = merge->outcome;
      if (out.status.ok() && !status.ok()) out.status = status;
      out.failed_ack_ids.insert(out.failed_ack_ids.end(), failed.begin(), failed.end());
      if (--merge->remaining > 0) return;
      AckOutcome result = std::move(out);
      lock.unlock();
      merge->cb(std::move(result));
    };
    for (size_t begin = 0; begin < ack_ids.size(); begin += kMaxAckIdsPerCall) {
      const size_t end = std::min(ack_ids.size(), begin + kMaxAckIdsPerCall);
      if (seconds) {
        auto call =
            std::make_shared<UnaryCall<v1::ModifyAckDeadlineRequest, google::protobuf::Empty>>();
        call->request.set_subscription(path);
        call->request.set_ack_deadline_seconds(*seconds);
        for (size_t i = begin; i < end; ++i) call->request.add_ack_ids(ack_ids[i]);
        Prepare(call->ctx);
        client_->stub().async()->ModifyAckDeadline(&call->ctx, &call->request, &call->response,
                                                   [this, call, finish](grpc::Status s) mutable {
                                                     Drop(std::move(call));
                                                     finish(s);
                                                   });
      } else {
        auto call = std::make_shared<UnaryCall<v1::AcknowledgeRequest, google::protobuf::Empty>>();
        call->request.set_subscription(path);
        for (size_t i = begin; i < end; ++i) call->request.add_ack_ids(ack_ids[i]);
        Prepare(call->ctx);
        client_->stub().async()->Acknowledge(&call->ctx, &call->request, &call->response,
                                             [this, call, finish](grpc::Status s) mutable {
                                               Drop(std::move(call));
                                               finish(s);
                                             });
      }
    }
  }

  // Reads the subscription's dead-letter topic, publishes there, then acknowledges: a failure
  // on the way leaves the messages to be redelivered rather than lost.
  void TerminateOn(const std::string& path, std::vector<Delivery> deliveries, AckCallback cb) {
    std::vector<std::string> ids;
    ids.reserve(deliveries.size());
    for (const auto& d : deliveries) ids.push_back(d.ack_id);
    if (deliveries.empty()) return cb(AckOutcome{});
    auto call = std::make_shared<UnaryCall<v1::GetSubscriptionRequest, v1::Subscription>>();
    call->request.set_subscription(path);
    Prepare(call->ctx);
    client_->stub().async()->GetSubscription(
        &call->ctx, &call->request, &call->response,
        [this, call, path, deliveries = std::move(deliveries), ids = std::move(ids),
         cb = std::move(cb)](grpc::Status s) mutable {
          const std::string dead_topic = call->response.dead_letter_policy().dead_letter_topic();
          Drop(std::move(call));
          if (!s.ok()) return cb(AckOutcome{ToStatus(s, path)});
          if (dead_topic.empty()) return Settle(path, std::move(ids), std::nullopt, std::move(cb));
          std::vector<Message> dead;
          dead.reserve(deliveries.size());
          for (const auto& d : deliveries) dead.push_back(DeadLetterMessage(d, path));
          PublishTo(dead_topic, dead,
                    [this, path, dead_topic, ids = std::move(ids),
                     cb = std::move(cb)](Result<std::vector<std::string>> published) mutable {
                      if (!published.ok()) {
                        return cb(AckOutcome{published.status().WithContext(
                            path + ": dead-letter topic " + dead_topic)});
                      }
                      Settle(path, std::move(ids), std::nullopt, std::move(cb));
                    });
        });
  }

 private:
  // Calls wait for the channel to connect (a broker restarting nearby) within call_timeout
  // instead of failing at once with UNAVAILABLE.
  void Prepare(grpc::ClientContext& ctx) const {
    ctx.set_deadline(std::chrono::system_clock::now() + options_.call_timeout);
    ctx.set_wait_for_ready(true);
  }

  Result<v1::Subscription> GetSubscription(const std::string& path) {
    grpc::ClientContext ctx;
    Prepare(ctx);
    v1::GetSubscriptionRequest request;
    request.set_subscription(path);
    v1::Subscription response;
    grpc::Status s = client_->stub().GetSubscription(&ctx, request, &response);
    if (!s.ok()) return ToStatus(s, path);
    return response;
  }

  void PublishTo(const std::string& path, const std::vector<Message>& messages,
                 std::function<void(Result<std::vector<std::string>>)> cb) {
    auto call = std::make_shared<UnaryCall<v1::PublishRequest, v1::PublishResponse>>();
    call->request.set_topic(path);
    for (const auto& m : messages) ToProto(m, call->request.add_messages());
    Prepare(call->ctx);
    client_->publisher().async()->Publish(
        &call->ctx, &call->request, &call->response,
        [this, call, path, cb = std::move(cb)](grpc::Status s) mutable {
          std::vector<std::string> ids(call->response.message_ids().begin(),
                                       call->response.message_ids().end());
          Drop(std::move(call));
          if (!s.ok()) return cb(ToStatus(s, path));
          cb(std::move(ids));
        });
  }

  void PullUntil(const std::string& path, int max_messages,
                 std::chrono::steady_clock::time_point deadline, PullCallback cb) {
    auto call = std::make_shared<UnaryCall<v1::PullRequest, v1::PullResponse>>();
    call->request.set_subscription(path);
    call->request.set_max_messages(max_messages);
    // Deprecated in the API but the only way to ask the server to wait for a message.
    call->request.set_return_immediately(false);
    call->ctx.set_wait_for_ready(true);
    call->ctx.set_deadline(std::chrono::system_clock::now() +
                           (deadline - std::chrono::steady_clock::now()) + kPullDeadlineSlack);
    client_->stub().async()->Pull(
        &call->ctx, &call->request, &call->response,
        [this, call, path, max_messages, deadline, cb = std::move(cb)](grpc::Status s) mutable {
          std::vector<Delivery> out;
          out.reserve(static_cast<size_t>(call->response.received_messages_size()));
          for (const auto& r : call->response.received_messages()) out.push_back(ToDelivery(r));
          Drop(std::move(call));
          if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
            return cb(std::vector<Delivery>{});
          }
          if (!s.ok()) return cb(ToStatus(s, path));
          if (out.empty() && deadline - std::chrono::steady_clock::now() > kMinPullRetryWait) {
            return PullUntil(path, max_messages, deadline, std::move(cb));
          }
          cb(std::move(out));
        });
  }

  // Hands a finished call to the backend thread to be destroyed there (see UnaryCall).
  // REQUIRES: the callback of the operation the call belongs to has not run yet, so that the
  // thread is still there; when it goes, its destructor drops what it did not run.
  template <typename Call>
  void Drop(std::shared_ptr<Call> call) {
    thread_.Post([done = std::move(call)] {});
  }

  const QueueOptions options_;
  const std::unique_ptr<pubsub::PubsubClient> client_;
  std::mutex settle_mu_;
  std::map<std::string, SettleQueue> settles_;  // by subscription and kind (ack, deadline)
  // Last: destroyed first, after waiting for every callback still to run.
  BackendThread thread_;
};

// ---- backlog from a `tidepool broker` admin endpoint

asio::awaitable<std::tuple<beast::error_code, std::string>> FetchBacklog(std::string host,
                                                                         std::string port) {
  constexpr auto kToken = asio::as_tuple(asio::use_awaitable);
  auto executor = co_await asio::this_coro::executor;
  asio::ip::tcp::resolver resolver(executor);
  auto [resolve_ec, endpoints] = co_await resolver.async_resolve(host, port, kToken);
  if (resolve_ec) co_return std::tuple{resolve_ec, std::string()};
  beast::tcp_stream stream(executor);
  stream.expires_after(kAdminTimeout);
  auto [connect_ec, endpoint] = co_await stream.async_connect(endpoints, kToken);
  if (connect_ec) co_return std::tuple{connect_ec, std::string()};
  http::request<http::empty_body> request{http::verb::get, kBacklogPath, kHttpVersion11};
  request.set(http::field::host, host);
  request.set(http::field::connection, "close");
  stream.expires_after(kAdminTimeout);
  auto [write_ec, written] = co_await http::async_write(stream, request, kToken);
  if (write_ec) co_return std::tuple{write_ec, std::string()};
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  stream.expires_after(kAdminTimeout);
  auto [read_ec, read] = co_await http::async_read(stream, buffer, response, kToken);
  if (read_ec) co_return std::tuple{read_ec, std::string()};
  if (response.result() != http::status::ok) {
    co_return std::tuple{beast::error_code(), "HTTP " + std::to_string(response.result_int())};
  }
  co_return std::tuple{beast::error_code(), std::move(response.body())};
}

Result<Backlog> PubsubQueue::GetBacklog(const std::string& subscription) {
  TP_ASSIGN_OR_RETURN(std::string path,
                      ResolveName(options_.project, subscription, ResourceKind::kSubscription));
  if (options_.admin_endpoint.empty()) {
    return Status::Unimplemented(
        "backlog of " + path +
        ": the pubsub backend reads backlog from a tidepool broker's admin endpoint and none is "
        "configured (QueueOptions::admin_endpoint); Google Cloud Pub/Sub reports it only "
        "through Cloud Monitoring");
  }
  const auto colon = options_.admin_endpoint.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("admin endpoint \"" + options_.admin_endpoint +
                                   "\" is not HOST:PORT");
  }
  asio::io_context io;
  std::tuple<beast::error_code, std::string> fetched;
  std::exception_ptr failure;
  asio::co_spawn(io,
                 FetchBacklog(options_.admin_endpoint.substr(0, colon),
                              options_.admin_endpoint.substr(colon + 1)),
                 [&](std::exception_ptr e, std::tuple<beast::error_code, std::string> r) {
                   failure = e;
                   fetched = std::move(r);
                 });
  io.run();
  const std::string where =
      "backlog of " + path + " from http://" + options_.admin_endpoint + kBacklogPath;
  if (failure) return Status::Unavailable(where + ": request failed");
  auto& [ec, body] = fetched;
  if (ec) return Status::Unavailable(where + ": " + ec.message());
  boost::system::error_code parse_ec;
  boost::json::value doc = boost::json::parse(body, parse_ec);
  if (parse_ec || !doc.is_object() || !doc.as_object().contains("subscriptions") ||
      !doc.as_object().at("subscriptions").is_array()) {
    return Status::Internal(where + ": unexpected answer: " + body.substr(0, 200));
  }
  for (const auto& entry : doc.as_object().at("subscriptions").as_array()) {
    if (!entry.is_object()) continue;
    const auto& o = entry.as_object();
    const auto* name = o.if_contains("subscription");
    if (name == nullptr || !name->is_string() || name->as_string() != path) continue;
    auto number = [&](const char* key) -> double {
      const auto* v = o.if_contains(key);
      if (v == nullptr || !v->is_number()) return 0;
      boost::system::error_code num_ec;
      const double d = v->to_number<double>(num_ec);
      return num_ec ? 0 : d;
    };
    return Backlog{.undelivered_messages = static_cast<uint64_t>(number("undelivered_messages")),
                   .oldest_unacked_age_micros = static_cast<int64_t>(
                       number("oldest_unacked_age_seconds") * broker::kMicrosPerSecond),
                   .leased_messages = static_cast<uint64_t>(number("leased_messages"))};
  }
  return Status::NotFound(where + ": subscription not found: " + path);
}

// ---- streams

std::string NewClientId() {
  static std::atomic<uint64_t> next{1};
  return "tidepool-queue-" + std::to_string(::getpid()) + "-" + std::to_string(next.fetch_add(1));
}

StreamState::StreamState(PubsubQueue* queue, std::string path, FlowControl flow, int lease_seconds,
                         DeliveryHandler on_messages, StreamErrorHandler on_error)
    : queue_(queue),
      path_(std::move(path)),
      flow_(flow),
      lease_seconds_(lease_seconds),
      on_messages_(std::move(on_messages)),
      on_error_(std::move(on_error)),
      client_id_(NewClientId()),
      reopen_timer_(std::in_place, queue->thread().io()) {}

void StreamState::Open() {
  v1::StreamingPullRequest initial;
  initial.set_subscription(path_);
  initial.set_stream_ack_deadline_seconds(lease_seconds_);
  initial.set_client_id(client_id_);
  initial.set_max_outstanding_messages(std::max<int64_t>(0, flow_.max_outstanding_messages));
  initial.set_max_outstanding_bytes(std::max<int64_t>(0, flow_.max_outstanding_bytes));
  PullReactor* reactor = nullptr;
  {
    std::lock_guard lock(mu_);
    if (stopped_ || reactor_ != nullptr) return;
    reactor = new PullReactor(shared_from_this(), std::move(initial));  // see OnStreamDone
    reactor_ = reactor;
  }
  // Not under mu_: a cancel before the call starts takes effect when it starts.
  reactor->Start(queue_->subscriber());
}

void StreamState::OnResponse(const v1::StreamingPullResponse& response) {
  std::vector<std::string> give_back;
  {
    std::lock_guard lock(mu_);
    backoff_ = kInitialReopenBackoff;  // the stream works: the next reopen is quick again
    for (const auto& r : response.received_messages()) {
      if (stopped_) {
        give_back.push_back(r.ack_id());
      } else {
        pending_.push_back(ToDelivery(r));
      }
    }
    if (!pending_.empty()) ScheduleDeliver();
  }
  GiveBack(std::move(give_back));
}

void StreamState::OnStreamDone(PullReactor* reactor, const grpc::Status& status) {
  std::lock_guard lock(mu_);
  // Everything that posts to the backend thread happens before reactor_ is cleared: Close waits
  // for that, and the queue (and its thread) may go right after Close.
  if (!stopped_) {
    if (EndsStreamForGood(status.error_code())) {
      stopped_ = true;
      queue_->thread().Post([self = shared_from_this(), error = ToStatus(status, path_)] {
        if (!self->closed_.load() && self->on_error_) self->on_error_(error);
      });
    } else {
      // Lifetime ends, UNAVAILABLE, INTERNAL, a server going away: reopen after the backoff.
      const auto delay = backoff_;
      backoff_ = std::min(backoff_ * 2, kMaxReopenBackoff);
      queue_->thread().Post([self = shared_from_this(), delay] {
        if (!self->reopen_timer_) return;  // closed
        self->reopen_timer_->expires_after(delay);
        self->reopen_timer_->async_wait([self](const boost::system::error_code& ec) {
          if (!ec) self->Open();
        });
      });
    }
  }
  // Its ClientContext holds the channel: deleted on the backend thread, or with the queue's
  // thread when that goes first (see UnaryCall).
  queue_->thread().Post([done = std::shared_ptr<PullReactor>(reactor)] {});
  if (reactor_ == reactor) reactor_ = nullptr;
  cv_.notify_all();
}

bool StreamState::FitsLocked(size_t size) const {
  const auto messages = static_cast<int64_t>(outstanding_.size());
  if (flow_.max_outstanding_messages > 0 && messages >= flow_.max_outstanding_messages)
    return false;
  // A message bigger than the whole budget still goes out when nothing is outstanding.
  if (flow_.max_outstanding_bytes > 0 && messages > 0 &&
      outstanding_bytes_ + static_cast<int64_t>(size) > flow_.max_outstanding_bytes)
    return false;
  return true;
}

void StreamState::ScheduleDeliver() {
  if (deliver_scheduled_ || pending_.empty()) return;
  deliver_scheduled_ = true;
  queue_->thread().Post([self = shared_from_this()] { self->Deliver(); });
}

void StreamState::Deliver() {
  std::vector<Delivery> batch;
  {
    std::lock_guard lock(mu_);
    deliver_scheduled_ = false;
    if (stopped_) return;
    while (!pending_.empty() && FitsLocked(pending_.front().size())) {
      Delivery& d = pending_.front();
      const auto size = static_cast<int64_t>(d.size());
      outstanding_[d.ack_id] = size;
      outstanding_bytes_ += size;
      batch.push_back(std::move(d));
      pending_.pop_front();
    }
  }
  if (!batch.empty() && !closed_.load() && on_messages_) on_messages_(std::move(batch));
}

void StreamState::Release(const std::vector<std::string>& ack_ids) {
  std::lock_guard lock(mu_);
  for (const auto& id : ack_ids) {
    auto it = outstanding_.find(id);
    if (it == outstanding_.end()) continue;
    outstanding_bytes_ -= it->second;
    outstanding_.erase(it);
  }
  ScheduleDeliver();
}

AckCallback StreamState::Track(AckCallback done) {
  {
    std::lock_guard lock(mu_);
    ++settling_;
  }
  return [self = shared_from_this(), done = std::move(done)](AckOutcome outcome) {
    if (done) done(std::move(outcome));
    std::lock_guard lock(self->mu_);
    if (--self->settling_ == 0) self->cv_.notify_all();
  };
}

void StreamState::GiveBack(std::vector<std::string> ack_ids) {
  if (ack_ids.empty()) return;
  // Never handed out: nack so that they are redelivered at once rather than after the lease.
  queue_->Settle(path_, std::move(ack_ids), 0, queue_->Wrap([](AckOutcome) {}));
}

void StreamState::StopPulling() {
  std::vector<std::string> give_back;
  PullReactor* closing = nullptr;
  {
    std::lock_guard lock(mu_);
    const bool first = !stopped_;
    stopped_ = true;
    if (reactor_ != nullptr && first) {
      reactor_->HalfClose();
      closing = reactor_;
    }
    for (const auto& d : pending_) give_back.push_back(d.ack_id);
    pending_.clear();
  }
  GiveBack(std::move(give_back));
  if (closing == nullptr) return;
  queue_->thread().Post([self = shared_from_this(), closing] {
    if (!self->reopen_timer_) return;  // closed
    self->reopen_timer_->expires_after(kHalfCloseWait);
    self->reopen_timer_->async_wait([self, closing](const boost::system::error_code& ec) {
      if (ec) return;
      std::lock_guard lock(self->mu_);
      if (self->reactor_ == closing) self->reactor_->Cancel();
    });
  });
}

void StreamState::Close() {
  {
    std::lock_guard lock(mu_);
    if (close_started_) return;
    close_started_ = true;
  }
  StopPulling();
  {
    std::unique_lock lock(mu_);
    // Messages still arriving are given back as they are read (OnResponse).
    if (!cv_.wait_for(lock, kHalfCloseWait, [this] { return reactor_ == nullptr; })) {
      reactor_->Cancel();
    }
    cv_.wait(lock, [this] { return reactor_ == nullptr; });
    // From a callback the settle calls cannot complete while we wait on their thread.
    if (!queue_->thread().InThread()) cv_.wait(lock, [this] { return settling_ == 0; });
  }
  closed_.store(true);
  if (queue_->thread().InThread()) {
    reopen_timer_.reset();  // cancels a pending wait
    return;
  }
  queue_->thread().Post([self = shared_from_this()] { self->reopen_timer_.reset(); });
  // Twice: the first lets the cancel run, the second the aborted wait it queued, so that no
  // work of this stream is left on the thread when Close returns.
  queue_->thread().Barrier();
  queue_->thread().Barrier();
}

void PubsubStream::Ack(std::vector<std::string> ack_ids, AckCallback done) {
  state_->Release(ack_ids);
  queue_->Settle(state_->path(), std::move(ack_ids), std::nullopt,
                 queue_->Wrap(state_->Track(std::move(done))));
}

void PubsubStream::Nack(std::vector<std::string> ack_ids, std::chrono::seconds delay,
                        AckCallback done) {
  state_->Release(ack_ids);
  queue_->Settle(state_->path(), std::move(ack_ids), ClampSeconds(delay, 0),
                 queue_->Wrap(state_->Track(std::move(done))));
}

void PubsubStream::ExtendLease(std::vector<std::string> ack_ids, std::chrono::seconds lease,
                               AckCallback done) {
  queue_->Settle(state_->path(), std::move(ack_ids), ClampSeconds(lease, 1),
                 queue_->Wrap(state_->Track(std::move(done))));
}

void PubsubStream::Terminate(std::vector<Delivery> deliveries, AckCallback done) {
  std::vector<std::string> ids;
  for (const auto& d : deliveries) ids.push_back(d.ack_id);
  state_->Release(ids);
  queue_->TerminateOn(state_->path(), std::move(deliveries),
                      queue_->Wrap(state_->Track(std::move(done))));
}

}  // namespace

Result<std::unique_ptr<Queue>> OpenPubsubQueue(const QueueOptions& options) {
  if (options.endpoint.empty()) {
    return Status::InvalidArgument(
        "queue backend \"pubsub\" needs QueueOptions::endpoint (HOST:PORT of a Pub/Sub "
        "endpoint)");
  }
  pubsub::ClientOptions client{.call_timeout = options.call_timeout};
  if (options.auth == "google") {
    TP_ASSIGN_OR_RETURN(auto fetcher,
                        pubsub::DefaultTokens(pubsub::kPubsubScope, options.tls_ca_file));
    auto tokens = std::make_shared<pubsub::TokenCache>(std::move(fetcher));
    TP_ASSIGN_OR_RETURN(client.credentials,
                        pubsub::TokenChannelCredentials(std::move(tokens), options.tls_ca_file));
  } else if (!options.auth.empty()) {
    return Status::InvalidArgument("queue auth \"" + options.auth +
                                   "\" is not known (\"\" or \"google\")");
  }
  return std::unique_ptr<Queue>(new PubsubQueue(options, std::move(client)));
}

}  // namespace tidepool::queue::internal
