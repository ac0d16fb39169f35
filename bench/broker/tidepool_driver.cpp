// The tidepool side of broker_vs_nats: the Pub/Sub v1 gRPC API, driven the way the official
// client libraries drive it (batched, pipelined Publish calls; StreamingPull with flow control
// and acks sent on the stream).

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "driver.h"
#include "google/pubsub/v1/pubsub.grpc.pb.h"

namespace broker_bench {
namespace {

namespace v1 = google::pubsub::v1;

constexpr char kProject[] = "projects/bench";
// Long enough that nothing is redelivered during a run: every delivery is acked once.
constexpr int kAckDeadlineSeconds = 60;
constexpr auto kAdminTimeout = std::chrono::seconds(10);
// How long the latency run waits for the last messages after the publisher stops.
constexpr double kDrainSeconds = 10;

// Each channel gets a TCP connection of its own, as separate client processes would: gRPC
// otherwise shares one subchannel between channels to the same target.
std::shared_ptr<grpc::Channel> NewChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

void SetAdminDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + kAdminTimeout);
}

void Check(const grpc::Status& s, const std::string& what) {
  if (!s.ok()) {
    throw std::runtime_error("tidepool: " + what + ": " + std::to_string(s.error_code()) + " " +
                             s.error_message());
  }
}

struct Names {
  std::string topic;
  std::string subscription;
};

// Creates topic `id` and, when asked, subscription `id` on it.
Names CreateTopicAndSubscription(const std::string& target, const std::string& id,
                                 bool with_subscription) {
  auto channel = NewChannel(target);
  Names names{std::string(kProject) + "/topics/" + id,
              std::string(kProject) + "/subscriptions/" + id};
  {
    auto stub = v1::Publisher::NewStub(channel);
    grpc::ClientContext ctx;
    SetAdminDeadline(&ctx);
    ctx.set_wait_for_ready(true);  // the broker may still be starting
    v1::Topic req, resp;
    req.set_name(names.topic);
    Check(stub->CreateTopic(&ctx, req, &resp), "CreateTopic " + names.topic);
  }
  if (with_subscription) {
    auto stub = v1::Subscriber::NewStub(channel);
    grpc::ClientContext ctx;
    SetAdminDeadline(&ctx);
    v1::Subscription req, resp;
    req.set_name(names.subscription);
    req.set_topic(names.topic);
    req.set_ack_deadline_seconds(kAckDeadlineSeconds);
    Check(stub->CreateSubscription(&ctx, req, &resp), "CreateSubscription " + names.subscription);
  }
  return names;
}

v1::PublishRequest BatchRequest(const std::string& topic, int batch, size_t message_bytes) {
  v1::PublishRequest req;
  req.set_topic(topic);
  const std::string payload = MakePayload(message_bytes, 0);
  for (int i = 0; i < batch; ++i) req.add_messages()->set_data(payload);
  return req;
}

// What all pipelined publishers of one run share.
struct PipelineState {
  int64_t deadline_ns = 0;
  uint64_t message_limit = 0;  // 0: publish until the deadline
  int batch = 0;
  std::atomic<uint64_t> claimed{0};
  std::atomic<uint64_t> acked{0};
  std::atomic<uint64_t> failed_calls{0};
  std::atomic<int64_t> last_completion_ns{0};
  std::mutex mu;
  std::condition_variable idle;
  int outstanding = 0;  // calls in flight, guarded by mu
  std::string first_error;

  // Whether another request may start: before the deadline, or while the limit allows.
  bool Claim() {
    if (message_limit > 0) {
      return claimed.fetch_add(static_cast<uint64_t>(batch)) + static_cast<uint64_t>(batch) <=
             message_limit;
    }
    return NowNanos() < deadline_ns;
  }
};

// One publisher: its own connection and `inflight` Publish calls, each re-issued from its own
// completion until the state says stop.
class PipelinedPublisher {
 public:
  PipelinedPublisher(const std::string& target, v1::PublishRequest request, int inflight,
                     PipelineState* state)
      : stub_(v1::Publisher::NewStub(NewChannel(target))),
        request_(std::move(request)),
        calls_(static_cast<size_t>(inflight)),
        state_(state) {}

  void Start() {
    for (auto& call : calls_) {
      if (!state_->Claim()) break;
      {
        std::lock_guard lock(state_->mu);
        ++state_->outstanding;
      }
      Issue(&call);
    }
  }

 private:
  struct Call {
    std::unique_ptr<grpc::ClientContext> ctx;
    v1::PublishResponse response;
  };

  void Issue(Call* call) {
    call->ctx = std::make_unique<grpc::ClientContext>();
    call->response.Clear();
    stub_->async()->Publish(call->ctx.get(), &request_, &call->response,
                            [this, call](grpc::Status s) { OnDone(call, s); });
  }

  void OnDone(Call* call, const grpc::Status& s) {
    if (s.ok()) {
      state_->acked.fetch_add(static_cast<uint64_t>(call->response.message_ids_size()));
    } else if (state_->failed_calls.fetch_add(1) == 0) {
      std::lock_guard lock(state_->mu);
      state_->first_error = std::to_string(s.error_code()) + " " + s.error_message();
    }
    if (state_->Claim()) {
      Issue(call);
      return;
    }
    state_->last_completion_ns.store(NowNanos());
    std::lock_guard lock(state_->mu);
    if (--state_->outstanding == 0) state_->idle.notify_all();
  }

  std::unique_ptr<v1::Publisher::Stub> stub_;
  const v1::PublishRequest request_;  // read-only, shared by this publisher's calls
  std::vector<Call> calls_;
  PipelineState* const state_;
};

Result PublishPipelinedTo(const std::string& target, const std::string& topic, const Workload& w,
                          uint64_t message_limit) {
  PipelineState state;
  state.batch = w.batch;
  state.message_limit = message_limit;
  std::vector<std::unique_ptr<PipelinedPublisher>> publishers;
  for (int i = 0; i < w.publishers; ++i) {
    publishers.push_back(std::make_unique<PipelinedPublisher>(
        target, BatchRequest(topic, w.batch, w.message_bytes), w.inflight, &state));
  }
  const int64_t start = NowNanos();
  state.deadline_ns = start + SecondsToNanos(w.duration_seconds);
  for (auto& p : publishers) p->Start();
  {
    std::unique_lock lock(state.mu);
    state.idle.wait(lock, [&] { return state.outstanding == 0; });
  }
  Result r;
  r.messages = state.acked.load();
  r.seconds = static_cast<double>(state.last_completion_ns.load() - start) / 1e9;
  r.errors = state.failed_calls.load();
  r.first_error = state.first_error;
  r.note = std::to_string(w.publishers) + " publishers x " + std::to_string(w.inflight) +
           " async Publish RPCs in flight x " + std::to_string(w.batch) + " msgs";
  return r;
}

// The stream's first request: the subscription, its deadline and its flow control.
v1::StreamingPullRequest OpenRequest(const std::string& subscription, int64_t max_outstanding) {
  v1::StreamingPullRequest req;
  req.set_subscription(subscription);
  req.set_stream_ack_deadline_seconds(kAckDeadlineSeconds);
  req.set_max_outstanding_messages(max_outstanding);
  return req;
}

class TidepoolDriver final : public Driver {
 public:
  explicit TidepoolDriver(std::string target) : target_(std::move(target)) {}

  Result PublishPipelined(const Workload& w) override {
    const Names names = CreateTopicAndSubscription(target_, "publish-" + w.run_id, true);
    return PublishPipelinedTo(target_, names.topic, w, 0);
  }

  Result PublishSync(const Workload& w) override {
    const Names names = CreateTopicAndSubscription(target_, "publish-sync-" + w.run_id, true);
    std::atomic<uint64_t> acked{0};
    std::atomic<uint64_t> errors{0};
    std::vector<std::thread> threads;
    const int64_t start = NowNanos();
    const int64_t deadline = start + SecondsToNanos(w.duration_seconds);
    for (int i = 0; i < w.publishers; ++i) {
      threads.emplace_back([&] {
        auto stub = v1::Publisher::NewStub(NewChannel(target_));
        const v1::PublishRequest req = BatchRequest(names.topic, 1, w.message_bytes);
        while (NowNanos() < deadline) {
          grpc::ClientContext ctx;
          v1::PublishResponse resp;
          if (stub->Publish(&ctx, req, &resp).ok()) {
            acked.fetch_add(static_cast<uint64_t>(resp.message_ids_size()));
          } else {
            errors.fetch_add(1);
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    Result r;
    r.messages = acked.load();
    r.seconds = static_cast<double>(NowNanos() - start) / 1e9;
    r.errors = errors.load();
    r.note = std::to_string(w.publishers) + " publishers x blocking Publish of 1 msg";
    return r;
  }

  Result Consume(const Workload& w) override {
    const Names names = CreateTopicAndSubscription(target_, "consume-" + w.run_id, true);
    Workload preload = w;
    preload.batch = std::min<int>(w.batch, static_cast<int>(w.preload_messages));
    const Result loaded = PublishPipelinedTo(target_, names.topic, preload, w.preload_messages);
    if (loaded.messages == 0)
      throw std::runtime_error("tidepool: preload failed: " + loaded.first_error);

    auto stub = v1::Subscriber::NewStub(NewChannel(target_));
    grpc::ClientContext ctx;
    const int64_t start = NowNanos();
    auto stream = stub->StreamingPull(&ctx);
    if (!stream->Write(OpenRequest(names.subscription, w.max_outstanding_messages))) {
      throw std::runtime_error("tidepool: cannot open the StreamingPull stream");
    }
    uint64_t received = 0;
    uint64_t bad_payloads = 0;
    v1::StreamingPullResponse resp;
    v1::StreamingPullRequest acks;
    while (received < loaded.messages && stream->Read(&resp)) {
      for (const auto& m : resp.received_messages()) {
        ++received;
        if (m.message().data().size() != w.message_bytes) ++bad_payloads;
        acks.add_ack_ids(m.ack_id());
        if (acks.ack_ids_size() >= w.ack_batch) {
          stream->Write(acks);
          acks.Clear();
        }
      }
      if (acks.ack_ids_size() > 0) {
        stream->Write(acks);
        acks.Clear();
      }
    }
    // Closing our side and waiting for the server to end the call means it has read (and so
    // applied) every ack sent before.
    stream->WritesDone();
    const grpc::Status s = stream->Finish();
    Result r;
    r.messages = received;
    r.seconds = static_cast<double>(NowNanos() - start) / 1e9;
    r.errors = bad_payloads + (received < loaded.messages ? 1 : 0);
    if (received < loaded.messages) r.first_error = "stream ended early: " + s.error_message();
    r.note = "preloaded " + std::to_string(loaded.messages) +
             "; 1 StreamingPull, max_outstanding_messages=" +
             std::to_string(w.max_outstanding_messages) +
             ", acks on the stream in batches of <=" + std::to_string(w.ack_batch);
    return r;
  }

  Result Latency(const Workload& w) override {
    const Names names = CreateTopicAndSubscription(target_, "latency-" + w.run_id, true);
    auto pub_stub = v1::Publisher::NewStub(NewChannel(target_));
    auto sub_stub = v1::Subscriber::NewStub(NewChannel(target_));

    const int64_t interval_ns = static_cast<int64_t>(1e9 / w.rate_per_second);
    const auto total =
        static_cast<uint64_t>((w.warmup_seconds + w.latency_seconds) * w.rate_per_second);
    std::vector<int64_t> latencies;
    std::vector<int64_t> sent_times;
    latencies.reserve(static_cast<size_t>(w.latency_seconds * w.rate_per_second) + 16);
    sent_times.reserve(latencies.capacity());
    std::atomic<int64_t> record_from{INT64_MAX};
    std::atomic<uint64_t> received{0};

    // The consumer: one StreamingPull, each message acked (one ack request per response).
    grpc::ClientContext stream_ctx;
    auto stream = sub_stub->StreamingPull(&stream_ctx);
    if (!stream->Write(OpenRequest(names.subscription, w.max_outstanding_messages))) {
      throw std::runtime_error("tidepool: cannot open the StreamingPull stream");
    }
    std::promise<void> stream_ready;
    std::thread consumer([&] {
      v1::StreamingPullResponse resp;
      v1::StreamingPullRequest acks;
      bool first = true;
      while (stream->Read(&resp)) {
        const int64_t now = NowNanos();
        if (first) {
          stream_ready.set_value();  // the subscription-properties response: the stream is up
          first = false;
        }
        for (const auto& m : resp.received_messages()) {
          const int64_t sent =
              PayloadSendTime(m.message().data().data(), m.message().data().size());
          if (sent >= record_from.load(std::memory_order_relaxed)) {
            latencies.push_back(now - sent);
            sent_times.push_back(sent);
          }
          acks.add_ack_ids(m.ack_id());
        }
        if (acks.ack_ids_size() > 0) {
          stream->Write(acks);
          acks.Clear();
        }
        received.fetch_add(static_cast<uint64_t>(resp.received_messages_size()));
      }
      if (first) stream_ready.set_value();
    });
    if (stream_ready.get_future().wait_for(kAdminTimeout) != std::future_status::ready) {
      stream_ctx.TryCancel();
      consumer.join();
      throw std::runtime_error("tidepool: the StreamingPull stream did not start");
    }

    // The publisher: one message per Publish, started on schedule whatever is in flight.
    struct PublishCall {
      grpc::ClientContext ctx;
      v1::PublishRequest req;
      v1::PublishResponse resp;
      int64_t sent_ns = 0;
    };
    std::mutex ack_mu;
    std::vector<int64_t> ack_latencies;
    ack_latencies.reserve(latencies.capacity());
    std::atomic<uint64_t> acked{0};
    std::atomic<uint64_t> failed{0};
    std::atomic<uint64_t> completed{0};
    const int64_t start = NowNanos();
    record_from.store(start + SecondsToNanos(w.warmup_seconds));
    int64_t next = start;
    for (uint64_t i = 0; i < total; ++i, next += interval_ns) {
      const int64_t wait = next - NowNanos();
      if (wait > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(wait));
      auto* call = new PublishCall;
      call->req.set_topic(names.topic);
      call->sent_ns = NowNanos();
      call->req.add_messages()->set_data(MakePayload(w.message_bytes, call->sent_ns));
      pub_stub->async()->Publish(&call->ctx, &call->req, &call->resp, [&, call](grpc::Status s) {
        if (s.ok() && call->sent_ns >= record_from.load(std::memory_order_relaxed)) {
          std::lock_guard lock(ack_mu);
          ack_latencies.push_back(NowNanos() - call->sent_ns);
        }
        (s.ok() ? acked : failed).fetch_add(1);
        delete call;
        completed.fetch_add(1);
      });
    }
    const int64_t publish_end = NowNanos();
    const int64_t drain_deadline = publish_end + SecondsToNanos(kDrainSeconds);
    while ((completed.load() < total || received.load() < acked.load()) &&
           NowNanos() < drain_deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    stream_ctx.TryCancel();
    consumer.join();
    stream->Finish();
    while (completed.load() < total) std::this_thread::sleep_for(std::chrono::milliseconds(1));

    Result r;
    r.messages = received.load();
    r.seconds = static_cast<double>(publish_end - start) / 1e9;
    r.errors =
        failed.load() + (received.load() < acked.load() ? acked.load() - received.load() : 0);
    r.latencies_ns = std::move(latencies);
    r.latency_sent_ns = std::move(sent_times);
    r.ack_latencies_ns = std::move(ack_latencies);
    r.note = "1 msg per async Publish, paced; published " + std::to_string(acked.load()) +
             " (acked), received " + std::to_string(received.load()) +
             "; 1 StreamingPull, acks on the stream per response";
    return r;
  }

 private:
  std::string target_;
};

}  // namespace

std::unique_ptr<Driver> MakeTidepoolDriver(std::string target) {
  return std::make_unique<TidepoolDriver>(std::move(target));
}

}  // namespace broker_bench
