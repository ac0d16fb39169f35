#include "pubsub/server.h"

#include <grpcpp/grpcpp.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "common/cpu_list.h"
#include "common/thread_name.h"
#include "google/pubsub/v1/pubsub.grpc.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "pubsub/convert.h"

namespace tidepool::pubsub {
namespace {

namespace asio = boost::asio;
using broker::Broker;

constexpr size_t kMaxMessagesPerResponse = 1000;
constexpr size_t kMaxBytesPerResponse = 10u << 20;
// A waiting Pull answers this long before the client's deadline, so that the answer arrives.
constexpr auto kPullDeadlineMargin = std::chrono::milliseconds(100);
constexpr int kMinStreamAckDeadline = 10;
constexpr int kMaxStreamAckDeadline = 600;

// The error the real service returns for ack ids that failed under exactly-once delivery: the
// request fails and an ErrorInfo in the status details says which ids and why.
grpc::Status ExactlyOnceFailure(const std::vector<std::string>& invalid) {
  google::rpc::ErrorInfo info;
  info.set_reason("EXACTLY_ONCE_ACKID_FAILURE");
  info.set_domain("pubsub.googleapis.com");
  for (const auto& id : invalid)
    (*info.mutable_metadata())[id] = "PERMANENT_FAILURE_INVALID_ACK_ID";
  google::rpc::Status status;
  status.set_code(grpc::StatusCode::INVALID_ARGUMENT);
  status.set_message("some ack ids are expired, stale or unknown (exactly-once delivery)");
  status.add_details()->PackFrom(info);
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, status.message(),
                      status.SerializeAsString());
}

}  // namespace

class StreamingPullReactorBase {
 public:
  virtual ~StreamingPullReactorBase() = default;
  virtual void End(grpc::Status status) = 0;
};

struct PubsubServer::Impl {
  Broker* broker = nullptr;
  ServerOptions options;
  asio::thread_pool pool;
  std::vector<std::shared_ptr<grpc::Service>> services;  // must outlive `server`
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  explicit Impl(int threads) : pool(static_cast<size_t>(threads)) {
    NameThreads(pool, static_cast<size_t>(threads), "pubsub");
  }

  // Open StreamingPull streams, to end them at shutdown.
  std::mutex streams_mu;
  std::set<std::shared_ptr<StreamingPullReactorBase>> streams;
  bool shutting_down = false;

  template <typename F>
  grpc::ServerUnaryReactor* RunAsync(grpc::CallbackServerContext* ctx, F&& work) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    asio::post(pool,
               [reactor, work = std::forward<F>(work)]() mutable { reactor->Finish(work()); });
    return reactor;
  }
};

namespace {

using Impl = PubsubServer::Impl;

class PublisherService final : public v1::Publisher::CallbackService {
 public:
  explicit PublisherService(Impl* impl) : impl_(impl) {}

  grpc::ServerUnaryReactor* CreateTopic(grpc::CallbackServerContext* ctx, const v1::Topic* req,
                                        v1::Topic* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->CreateTopic(FromProto(*req));
      if (r.ok()) *resp = ToProto(*r);
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* UpdateTopic(grpc::CallbackServerContext* ctx,
                                        const v1::UpdateTopicRequest* req,
                                        v1::Topic* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->UpdateTopic(FromProto(req->topic()), MaskPaths(req->update_mask()));
      if (r.ok()) *resp = ToProto(*r);
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* Publish(grpc::CallbackServerContext* ctx, const v1::PublishRequest* req,
                                    v1::PublishResponse* resp) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    std::vector<broker::Message> messages;
    messages.reserve(static_cast<size_t>(req->messages_size()));
    for (const auto& m : req->messages()) messages.push_back(FromProto(m));
    impl_->broker->Publish(req->topic(), std::move(messages),
                           [reactor, resp](Result<std::vector<std::string>> r) {
                             if (r.ok()) {
                               for (auto& id : *r) resp->add_message_ids(std::move(id));
                             }
                             reactor->Finish(ToGrpc(r.status()));
                           });
    return reactor;
  }

  grpc::ServerUnaryReactor* GetTopic(grpc::CallbackServerContext* ctx,
                                     const v1::GetTopicRequest* req, v1::Topic* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->GetTopic(req->topic());
      if (r.ok()) *resp = ToProto(*r);
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* ListTopics(grpc::CallbackServerContext* ctx,
                                       const v1::ListTopicsRequest* req,
                                       v1::ListTopicsResponse* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->ListTopics(req->project(), req->page_size(), req->page_token());
      if (r.ok()) {
        for (const auto& t : r->items) *resp->add_topics() = ToProto(t);
        resp->set_next_page_token(r->next_page_token);
      }
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* ListTopicSubscriptions(
      grpc::CallbackServerContext* ctx, const v1::ListTopicSubscriptionsRequest* req,
      v1::ListTopicSubscriptionsResponse* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r =
          impl_->broker->ListTopicSubscriptions(req->topic(), req->page_size(), req->page_token());
      if (r.ok()) {
        for (const auto& s : r->items) resp->add_subscriptions(s);
        resp->set_next_page_token(r->next_page_token);
      }
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* ListTopicSnapshots(grpc::CallbackServerContext* ctx,
                                               const v1::ListTopicSnapshotsRequest* req,
                                               v1::ListTopicSnapshotsResponse* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->ListTopicSnapshots(req->topic(), req->page_size(), req->page_token());
      if (r.ok()) {
        for (const auto& s : r->items) resp->add_snapshots(s);
        resp->set_next_page_token(r->next_page_token);
      }
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* DeleteTopic(grpc::CallbackServerContext* ctx,
                                        const v1::DeleteTopicRequest* req,
                                        google::protobuf::Empty*) override {
    return impl_->RunAsync(
        ctx, [this, req] { return ToGrpc(impl_->broker->DeleteTopic(req->topic())); });
  }

  grpc::ServerUnaryReactor* DetachSubscription(grpc::CallbackServerContext* ctx,
                                               const v1::DetachSubscriptionRequest* req,
                                               v1::DetachSubscriptionResponse*) override {
    return impl_->RunAsync(ctx, [this, req] {
      return ToGrpc(impl_->broker->DetachSubscription(req->subscription()));
    });
  }

 private:
  Impl* impl_;
};

// One StreamingPull stream: reads acks and deadline changes, writes messages as they become
// available within the stream's flow control. Owned by a shared_ptr so that work posted to
// the executor can outlive OnDone safely.
class StreamingPullReactor final
    : public grpc::ServerBidiReactor<v1::StreamingPullRequest, v1::StreamingPullResponse>,
      public StreamingPullReactorBase,
      public std::enable_shared_from_this<StreamingPullReactor> {
 public:
  explicit StreamingPullReactor(Impl* impl) : impl_(impl), lifetime_(impl->pool.get_executor()) {}

  void Begin() {
    self_ = shared_from_this();
    StartRead(&request_);
  }

  void End(grpc::Status status) override {
    std::lock_guard lock(mu_);
    FinishLocked(std::move(status));
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      End(grpc::Status::OK);  // the client closed its side
      return;
    }
    grpc::Status s = HandleRequest(request_);
    if (!s.ok()) {
      End(std::move(s));
      return;
    }
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mu_);
    writing_ = false;
    // A stream ended while its write was in flight finishes now, whether or not the write got
    // through: a client that cancels mid-write fails the write, and the Finish must still be
    // called or the call never completes and the server's Shutdown waits for it forever.
    if (pending_finish_) {
      auto status = std::move(*pending_finish_);
      pending_finish_.reset();
      Finish(std::move(status));
      return;
    }
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    SchedulePumpLocked();
  }

  void OnCancel() override { End(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled")); }

  void OnDone() override {
    std::shared_ptr<broker::Subscription> sub;
    {
      std::lock_guard lock(mu_);
      done_ = true;
      sub = sub_;
    }
    if (sub && listener_ != 0) sub->RemoveListener(listener_);
    lifetime_.cancel();
    {
      std::lock_guard lock(impl_->streams_mu);
      impl_->streams.erase(self_);
    }
    self_.reset();  // may delete this
  }

 private:
  grpc::Status HandleRequest(const v1::StreamingPullRequest& req) {
    if (!sub_) {
      grpc::Status s = Setup(req);
      if (!s.ok()) return s;
    } else if (req.stream_ack_deadline_seconds() != 0) {
      // The client may change the stream's deadline at any time (the Node client does when it
      // learns the subscription has exactly-once delivery); later deliveries use it.
      const int deadline = req.stream_ack_deadline_seconds();
      if (deadline < kMinStreamAckDeadline || deadline > kMaxStreamAckDeadline) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "stream_ack_deadline_seconds must be between 10 and 600, got " +
                                std::to_string(deadline));
      }
      std::lock_guard lock(mu_);
      lease_seconds_ = deadline;
    }
    if (req.modify_deadline_seconds_size() != req.modify_deadline_ack_ids_size()) {
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          "modify_deadline_seconds and modify_deadline_ack_ids must have the same length");
    }
    if (req.ack_ids_size() > 0) {
      std::vector<std::string> ids(req.ack_ids().begin(), req.ack_ids().end());
      std::weak_ptr<StreamingPullReactor> weak = shared_from_this();
      sub_->Acknowledge(ids, [weak, ids](broker::AckResult r) {
        auto self = weak.lock();
        if (!self || !self->exactly_once_) return;
        v1::StreamingPullResponse resp;
        auto* c = resp.mutable_acknowledge_confirmation();
        std::set<std::string> invalid(r.invalid_ack_ids.begin(), r.invalid_ack_ids.end());
        for (const auto& id : ids) {
          if (invalid.contains(id)) {
            c->add_invalid_ack_ids(id);
          } else if (!r.status.ok()) {
            c->add_temporary_failed_ack_ids(id);
          } else {
            c->add_ack_ids(id);
          }
        }
        self->Enqueue(std::move(resp));
      });
    }
    // Deadline changes arrive grouped by value.
    std::map<int, std::vector<std::string>> by_seconds;
    for (int i = 0; i < req.modify_deadline_seconds_size(); ++i) {
      by_seconds[req.modify_deadline_seconds(i)].push_back(req.modify_deadline_ack_ids(i));
    }
    for (auto& [seconds, ids] : by_seconds) {
      std::weak_ptr<StreamingPullReactor> weak = shared_from_this();
      sub_->ModifyAckDeadline(ids, seconds, [weak, ids](broker::AckResult r) {
        auto self = weak.lock();
        if (!self || !self->exactly_once_) return;
        v1::StreamingPullResponse resp;
        auto* c = resp.mutable_modify_ack_deadline_confirmation();
        std::set<std::string> invalid(r.invalid_ack_ids.begin(), r.invalid_ack_ids.end());
        for (const auto& id : ids) {
          if (invalid.contains(id)) {
            c->add_invalid_ack_ids(id);
          } else if (!r.status.ok()) {
            c->add_temporary_failed_ack_ids(id);
          } else {
            c->add_ack_ids(id);
          }
        }
        self->Enqueue(std::move(resp));
      });
    }
    return grpc::Status::OK;
  }

  grpc::Status Setup(const v1::StreamingPullRequest& req) {
    if (req.subscription().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "the first StreamingPull request must name the subscription");
    }
    const int deadline = req.stream_ack_deadline_seconds();
    if (deadline < kMinStreamAckDeadline || deadline > kMaxStreamAckDeadline) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "stream_ack_deadline_seconds must be between 10 and 600, got " +
                              std::to_string(deadline));
    }
    if (req.max_outstanding_messages() < 0 || req.max_outstanding_bytes() < 0) {
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          "max_outstanding_messages and max_outstanding_bytes must not be negative");
    }
    auto sub = impl_->broker->FindSubscription(req.subscription());
    if (!sub.ok()) return ToGrpc(sub.status());
    const broker::SubscriptionConfig config = (*sub)->config();
    std::lock_guard lock(mu_);
    sub_ = *sub;
    lease_seconds_ = deadline;
    max_messages_ = req.max_outstanding_messages();
    max_bytes_ = req.max_outstanding_bytes();
    exactly_once_ = config.enable_exactly_once_delivery;
    v1::StreamingPullResponse props;
    props.mutable_subscription_properties()->set_exactly_once_delivery_enabled(exactly_once_);
    props.mutable_subscription_properties()->set_message_ordering_enabled(
        config.enable_message_ordering);
    outbox_.push_back(std::move(props));
    std::weak_ptr<StreamingPullReactor> weak = shared_from_this();
    listener_ = sub_->AddListener([weak] {
      if (auto self = weak.lock()) self->SchedulePump();
    });
    lifetime_.expires_after(std::chrono::microseconds(impl_->options.stream_lifetime_micros));
    lifetime_.async_wait([weak](const boost::system::error_code& ec) {
      if (ec) return;
      if (auto self = weak.lock()) {
        self->End(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                               "the server ends streams periodically; reopen the stream"));
      }
    });
    SchedulePumpLocked();
    return grpc::Status::OK;
  }

  void Enqueue(v1::StreamingPullResponse resp) {
    std::lock_guard lock(mu_);
    outbox_.push_back(std::move(resp));
    SchedulePumpLocked();
  }

  void SchedulePump() {
    std::lock_guard lock(mu_);
    SchedulePumpLocked();
  }

  void SchedulePumpLocked() {
    if (done_ || finished_ || pump_scheduled_) return;
    pump_scheduled_ = true;
    asio::post(impl_->pool, [self = shared_from_this()] { self->Pump(); });
  }

  // Writes the next response: queued confirmations first, then messages within flow control.
  void Pump() {
    std::shared_ptr<broker::Subscription> sub;
    int lease_seconds = 0;
    size_t want_messages = 0;
    size_t want_bytes = 0;
    {
      std::lock_guard lock(mu_);
      pump_scheduled_ = false;
      if (done_ || finished_ || writing_ || pulling_ || !sub_) return;
      if (!outbox_.empty()) {
        WriteLocked(std::move(outbox_.front()));
        outbox_.pop_front();
        return;
      }
      const int64_t out_msgs = consumer_->outstanding_messages.load();
      const int64_t out_bytes = consumer_->outstanding_bytes.load();
      if (max_messages_ > 0 && out_msgs >= max_messages_) return;
      if (max_bytes_ > 0 && out_bytes >= max_bytes_) return;
      want_messages = kMaxMessagesPerResponse;
      if (max_messages_ > 0)
        want_messages =
            std::min<size_t>(want_messages, static_cast<size_t>(max_messages_ - out_msgs));
      want_bytes = kMaxBytesPerResponse;
      if (max_bytes_ > 0)
        want_bytes = std::min<size_t>(want_bytes, static_cast<size_t>(max_bytes_ - out_bytes));
      pulling_ = true;
      sub = sub_;
      lease_seconds = lease_seconds_;
    }
    auto got = sub->Pull(want_messages, want_bytes, lease_seconds, consumer_);
    std::unique_lock lock(mu_);
    pulling_ = false;
    if (!got.ok()) {
      FinishLocked(ToGrpc(got.status()));
      return;
    }
    if (got->empty()) {
      if (!outbox_.empty()) SchedulePumpLocked();
      return;
    }
    if (done_ || finished_) {
      // The stream ended while pulling: give the messages back at once. Not under mu_: giving
      // them back wakes the subscription's listeners, this stream's own among them (until
      // OnDone removes it), and its SchedulePump takes mu_. Under mu_ that deadlocked a broker
      // when a draining worker's stream ended in the middle of a pull.
      std::vector<std::string> ids;
      for (const auto& m : *got) ids.push_back(m.ack_id);
      lock.unlock();
      sub->ModifyAckDeadline(ids, 0, [](broker::AckResult) {});
      return;
    }
    v1::StreamingPullResponse resp;
    for (const auto& m : *got) ToProto(m, resp.add_received_messages());
    WriteLocked(std::move(resp));
  }

  void WriteLocked(v1::StreamingPullResponse resp) {
    writing_ = true;
    write_ = std::move(resp);
    StartWrite(&write_);
  }

  void FinishLocked(grpc::Status status) {
    if (finished_ || done_) return;
    finished_ = true;
    if (writing_) {
      pending_finish_ = std::move(status);  // Finish after the write completes
      return;
    }
    Finish(std::move(status));
  }

  Impl* const impl_;
  asio::steady_timer lifetime_;
  std::shared_ptr<StreamingPullReactor> self_;
  v1::StreamingPullRequest request_;  // read target, used by the gRPC read path only

  std::mutex mu_;
  std::shared_ptr<broker::Subscription> sub_;
  std::shared_ptr<broker::Consumer> consumer_ = std::make_shared<broker::Consumer>();
  uint64_t listener_ = 0;
  int lease_seconds_ = broker::kDefaultAckDeadlineSeconds;
  int64_t max_messages_ = 0;
  int64_t max_bytes_ = 0;
  std::atomic<bool> exactly_once_{false};
  std::deque<v1::StreamingPullResponse> outbox_;
  v1::StreamingPullResponse write_;
  bool writing_ = false;
  bool pulling_ = false;
  bool pump_scheduled_ = false;
  bool finished_ = false;
  bool done_ = false;
  std::optional<grpc::Status> pending_finish_;
};

// A unary Pull that may wait for messages (return_immediately = false).
class PullCall : public std::enable_shared_from_this<PullCall> {
 public:
  PullCall(Impl* impl, grpc::CallbackServerContext* ctx, grpc::ServerUnaryReactor* reactor,
           std::shared_ptr<broker::Subscription> sub, size_t max_messages, bool wait,
           v1::PullResponse* resp)
      : impl_(impl),
        ctx_(ctx),
        reactor_(reactor),
        sub_(std::move(sub)),
        max_messages_(max_messages),
        wait_(wait),
        resp_(resp),
        timer_(impl->pool.get_executor()) {}

  void Start() {
    if (TryPull() || !wait_) {
      Complete(grpc::Status::OK);
      return;
    }
    std::weak_ptr<PullCall> weak = shared_from_this();
    listener_ = sub_->AddListener([weak] {
      if (auto self = weak.lock()) {
        asio::post(self->impl_->pool, [self] {
          if (self->TryPull()) self->Complete(grpc::Status::OK);
        });
      }
    });
    // Never past the client's deadline: a call the client gave up on must not take messages
    // (they would sit leased to nobody until their deadline).
    auto wait = std::chrono::microseconds(impl_->options.pull_wait_micros);
    const auto deadline = ctx_->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
          deadline - std::chrono::system_clock::now() - kPullDeadlineMargin);
      wait = std::clamp(left, std::chrono::microseconds(0), wait);
    }
    timer_.expires_after(wait);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (!ec) self->Complete(grpc::Status::OK);
    });
    // A message may have arrived between the first try and the listener.
    asio::post(impl_->pool, [self = shared_from_this()] {
      if (self->TryPull()) self->Complete(grpc::Status::OK);
    });
  }

 private:
  bool TryPull() {
    std::lock_guard lock(mu_);
    if (done_) return false;
    if (ctx_->IsCancelled()) return true;  // answer (nothing) at once: the client is gone
    auto got = sub_->Pull(max_messages_, kMaxBytesPerResponse, sub_->config().ack_deadline_seconds,
                          nullptr);
    if (!got.ok()) {
      error_ = ToGrpc(got.status());
      return true;
    }
    for (const auto& m : *got) ToProto(m, resp_->add_received_messages());
    return !got->empty();
  }

  void Complete(grpc::Status status) {
    {
      std::lock_guard lock(mu_);
      if (done_) return;
      done_ = true;
    }
    if (listener_ != 0) sub_->RemoveListener(listener_);
    timer_.cancel();
    reactor_->Finish(error_.ok() ? status : error_);
  }

  Impl* const impl_;
  grpc::CallbackServerContext* const ctx_;
  grpc::ServerUnaryReactor* const reactor_;
  std::shared_ptr<broker::Subscription> sub_;
  const size_t max_messages_;
  const bool wait_;
  v1::PullResponse* const resp_;
  asio::steady_timer timer_;
  std::mutex mu_;
  bool done_ = false;
  grpc::Status error_;
  uint64_t listener_ = 0;
};

class SubscriberService final : public v1::Subscriber::CallbackService {
 public:
  explicit SubscriberService(Impl* impl) : impl_(impl) {}

  grpc::ServerUnaryReactor* CreateSubscription(grpc::CallbackServerContext* ctx,
                                               const v1::Subscription* req,
                                               v1::Subscription* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->CreateSubscription(FromProto(*req));
      if (r.ok()) *resp = ToProto(*r, TopicRetention(r->topic));
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* GetSubscription(grpc::CallbackServerContext* ctx,
                                            const v1::GetSubscriptionRequest* req,
                                            v1::Subscription* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->GetSubscription(req->subscription());
      if (r.ok()) *resp = ToProto(*r, TopicRetention(r->topic));
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* UpdateSubscription(grpc::CallbackServerContext* ctx,
                                               const v1::UpdateSubscriptionRequest* req,
                                               v1::Subscription* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->UpdateSubscription(FromProto(req->subscription()),
                                                 MaskPaths(req->update_mask()));
      if (r.ok()) *resp = ToProto(*r, TopicRetention(r->topic));
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* ListSubscriptions(grpc::CallbackServerContext* ctx,
                                              const v1::ListSubscriptionsRequest* req,
                                              v1::ListSubscriptionsResponse* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r =
          impl_->broker->ListSubscriptions(req->project(), req->page_size(), req->page_token());
      if (r.ok()) {
        for (const auto& s : r->items)
          *resp->add_subscriptions() = ToProto(s, TopicRetention(s.topic));
        resp->set_next_page_token(r->next_page_token);
      }
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* DeleteSubscription(grpc::CallbackServerContext* ctx,
                                               const v1::DeleteSubscriptionRequest* req,
                                               google::protobuf::Empty*) override {
    return impl_->RunAsync(ctx, [this, req] {
      return ToGrpc(impl_->broker->DeleteSubscription(req->subscription()));
    });
  }

  grpc::ServerUnaryReactor* ModifyAckDeadline(grpc::CallbackServerContext* ctx,
                                              const v1::ModifyAckDeadlineRequest* req,
                                              google::protobuf::Empty*) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    auto sub = impl_->broker->FindSubscription(req->subscription());
    if (!sub.ok()) {
      reactor->Finish(ToGrpc(sub.status()));
      return reactor;
    }
    if (req->ack_ids_size() == 0) {
      reactor->Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "ack_ids must not be empty"));
      return reactor;
    }
    std::vector<std::string> ids(req->ack_ids().begin(), req->ack_ids().end());
    (*sub)->ModifyAckDeadline(ids, req->ack_deadline_seconds(), [reactor](broker::AckResult r) {
      if (!r.status.ok()) {
        reactor->Finish(ToGrpc(r.status));
      } else if (!r.invalid_ack_ids.empty()) {
        reactor->Finish(ExactlyOnceFailure(r.invalid_ack_ids));
      } else {
        reactor->Finish(grpc::Status::OK);
      }
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* Acknowledge(grpc::CallbackServerContext* ctx,
                                        const v1::AcknowledgeRequest* req,
                                        google::protobuf::Empty*) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    auto sub = impl_->broker->FindSubscription(req->subscription());
    if (!sub.ok()) {
      reactor->Finish(ToGrpc(sub.status()));
      return reactor;
    }
    if (req->ack_ids_size() == 0) {
      reactor->Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "ack_ids must not be empty"));
      return reactor;
    }
    std::vector<std::string> ids(req->ack_ids().begin(), req->ack_ids().end());
    (*sub)->Acknowledge(ids, [reactor](broker::AckResult r) {
      if (!r.status.ok()) {
        reactor->Finish(ToGrpc(r.status));
      } else if (!r.invalid_ack_ids.empty()) {
        reactor->Finish(ExactlyOnceFailure(r.invalid_ack_ids));
      } else {
        reactor->Finish(grpc::Status::OK);
      }
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* ctx, const v1::PullRequest* req,
                                 v1::PullResponse* resp) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    if (req->max_messages() <= 0) {
      reactor->Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "max_messages must be positive"));
      return reactor;
    }
    auto sub = impl_->broker->FindSubscription(req->subscription());
    if (!sub.ok()) {
      reactor->Finish(ToGrpc(sub.status()));
      return reactor;
    }
    auto call = std::make_shared<PullCall>(impl_, ctx, reactor, *sub,
                                           static_cast<size_t>(req->max_messages()),
                                           !req->return_immediately(), resp);
    asio::post(impl_->pool, [call] { call->Start(); });
    return reactor;
  }

  grpc::ServerBidiReactor<v1::StreamingPullRequest, v1::StreamingPullResponse>* StreamingPull(
      grpc::CallbackServerContext*) override {
    auto reactor = std::make_shared<StreamingPullReactor>(impl_);
    {
      std::lock_guard lock(impl_->streams_mu);
      impl_->streams.insert(reactor);
      if (impl_->shutting_down) {
        reactor->Begin();
        reactor->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
        return reactor.get();
      }
    }
    reactor->Begin();
    return reactor.get();
  }

  grpc::ServerUnaryReactor* ModifyPushConfig(grpc::CallbackServerContext* ctx,
                                             const v1::ModifyPushConfigRequest* req,
                                             google::protobuf::Empty*) override {
    return impl_->RunAsync(ctx, [this, req] {
      auto current = impl_->broker->GetSubscription(req->subscription());
      if (!current.ok()) return ToGrpc(current.status());
      broker::SubscriptionConfig c = *current;
      c.push_endpoint = req->push_config().push_endpoint();
      c.push_attributes.clear();
      c.push_attributes.insert(req->push_config().attributes().begin(),
                               req->push_config().attributes().end());
      return ToGrpc(impl_->broker->UpdateSubscription(c, {"push_config"}).status());
    });
  }

  grpc::ServerUnaryReactor* GetSnapshot(grpc::CallbackServerContext* ctx,
                                        const v1::GetSnapshotRequest* req,
                                        v1::Snapshot* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->GetSnapshot(req->snapshot());
      if (r.ok()) *resp = ToProto(*r);
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* ListSnapshots(grpc::CallbackServerContext* ctx,
                                          const v1::ListSnapshotsRequest* req,
                                          v1::ListSnapshotsResponse* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      auto r = impl_->broker->ListSnapshots(req->project(), req->page_size(), req->page_token());
      if (r.ok()) {
        for (const auto& s : r->items) *resp->add_snapshots() = ToProto(s);
        resp->set_next_page_token(r->next_page_token);
      }
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* CreateSnapshot(grpc::CallbackServerContext* ctx,
                                           const v1::CreateSnapshotRequest* req,
                                           v1::Snapshot* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      broker::Labels labels(req->labels().begin(), req->labels().end());
      auto r = impl_->broker->CreateSnapshot(req->name(), req->subscription(), labels);
      if (r.ok()) *resp = ToProto(*r);
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* UpdateSnapshot(grpc::CallbackServerContext* ctx,
                                           const v1::UpdateSnapshotRequest* req,
                                           v1::Snapshot* resp) override {
    return impl_->RunAsync(ctx, [this, req, resp] {
      broker::SnapshotConfig c;
      c.name = req->snapshot().name();
      c.labels.insert(req->snapshot().labels().begin(), req->snapshot().labels().end());
      c.expire_time_micros = TimestampMicros(req->snapshot().expire_time());
      auto r = impl_->broker->UpdateSnapshot(c, MaskPaths(req->update_mask()));
      if (r.ok()) *resp = ToProto(*r);
      return ToGrpc(r.status());
    });
  }

  grpc::ServerUnaryReactor* DeleteSnapshot(grpc::CallbackServerContext* ctx,
                                           const v1::DeleteSnapshotRequest* req,
                                           google::protobuf::Empty*) override {
    return impl_->RunAsync(
        ctx, [this, req] { return ToGrpc(impl_->broker->DeleteSnapshot(req->snapshot())); });
  }

  grpc::ServerUnaryReactor* Seek(grpc::CallbackServerContext* ctx, const v1::SeekRequest* req,
                                 v1::SeekResponse*) override {
    return impl_->RunAsync(ctx, [this, req] {
      switch (req->target_case()) {
        case v1::SeekRequest::kTime:
          return ToGrpc(
              impl_->broker->SeekToTime(req->subscription(), TimestampMicros(req->time())));
        case v1::SeekRequest::kSnapshot:
          return ToGrpc(impl_->broker->SeekToSnapshot(req->subscription(), req->snapshot()));
        default:
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "seek needs a time or a snapshot");
      }
    });
  }

 private:
  int64_t TopicRetention(const std::string& topic) {
    auto t = impl_->broker->GetTopic(topic);
    return t.ok() ? t->message_retention_micros : 0;
  }

  Impl* impl_;
};

}  // namespace

PubsubServer::PubsubServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PubsubServer::~PubsubServer() {
  Shutdown(0);
}

namespace {

// Checks the bearer token of every call before it reaches a service.
class TokenCheck : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenCheck(std::function<bool(const std::string&)> authorize)
      : authorize_(std::move(authorize)) {}
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext*, OutputMetadata* consumed,
                       OutputMetadata*) override {
    std::string token;
    if (auto it = metadata.find("authorization"); it != metadata.end()) {
      const std::string value(it->second.data(), it->second.size());
      if (value.starts_with("Bearer ")) token = value.substr(7);
      consumed->emplace("authorization", value);
    }
    if (token.empty()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "this endpoint needs \"authorization: Bearer TOKEN\"");
    }
    if (!authorize_(token)) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the access token was not accepted");
    }
    return grpc::Status::OK;
  }

 private:
  std::function<bool(const std::string&)> authorize_;
};

Result<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const ServerOptions& options) {
  if (options.tls_cert_file.empty() && options.tls_key_file.empty()) {
    if (options.authorize) {
      return Status::InvalidArgument("a token check needs TLS (tls_cert_file and tls_key_file)");
    }
    return grpc::InsecureServerCredentials();
  }
  auto read = [](const std::string& path, const char* what) -> Result<std::string> {
    std::ifstream in(path);
    if (!in) return Status::NotFound(std::string("cannot read the TLS ") + what + " " + path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  };
  TP_ASSIGN_OR_RETURN(std::string cert, read(options.tls_cert_file, "certificate"));
  TP_ASSIGN_OR_RETURN(std::string key, read(options.tls_key_file, "key"));
  grpc::SslServerCredentialsOptions tls;
  tls.pem_key_cert_pairs.push_back({key, cert});
  auto credentials = grpc::SslServerCredentials(tls);
  if (options.authorize) {
    credentials->SetAuthMetadataProcessor(std::make_shared<TokenCheck>(options.authorize));
  }
  return credentials;
}

}  // namespace

Result<std::unique_ptr<PubsubServer>> PubsubServer::Start(broker::Broker* broker,
                                                          ServerOptions options) {
  if (options.nice == 0) return StartOnThisThread(broker, std::move(options));
  // From a thread of its own at that priority: the threads started on the way inherit it.
  Result<std::unique_ptr<PubsubServer>> started = Status::Internal("the server did not start");
  std::thread([&] {
    Status lowered = LowerCurrentThreadPriority(options.nice);
    started = lowered.ok() ? StartOnThisThread(broker, std::move(options)) : lowered;
  }).join();
  return started;
}

Result<std::unique_ptr<PubsubServer>> PubsubServer::StartOnThisThread(broker::Broker* broker,
                                                                      ServerOptions options) {
  TP_ASSIGN_OR_RETURN(auto credentials, ServerCredentials(options));
  auto impl = std::make_unique<Impl>(std::max(1, options.executor_threads));
  impl->broker = broker;
  impl->options = options;
  auto publisher = std::make_shared<PublisherService>(impl.get());
  auto subscriber = std::make_shared<SubscriberService>(impl.get());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &impl->port);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.SetMaxSendMessageSize(options.max_receive_message_bytes);
  builder.RegisterService(publisher.get());
  builder.RegisterService(subscriber.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    return Status::Unavailable("cannot listen on " + options.listen);
  }
  impl->services = {std::move(publisher), std::move(subscriber)};
  return std::unique_ptr<PubsubServer>(new PubsubServer(std::move(impl)));
}

int PubsubServer::port() const {
  return impl_->port;
}

void PubsubServer::Shutdown(int64_t grace_micros) {
  if (!impl_ || !impl_->server) return;
  std::vector<std::shared_ptr<StreamingPullReactorBase>> streams;
  {
    std::lock_guard lock(impl_->streams_mu);
    impl_->shutting_down = true;
    streams.assign(impl_->streams.begin(), impl_->streams.end());
  }
  for (const auto& s : streams) {
    s->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
  }
  impl_->server->Shutdown(std::chrono::system_clock::now() +
                          std::chrono::microseconds(grace_micros));
  impl_->pool.join();
  impl_->server.reset();
}

}  // namespace tidepool::pubsub
