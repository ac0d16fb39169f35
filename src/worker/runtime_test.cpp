#include "worker/runtime.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "broker/broker.h"
#include "storage/test_util.h"

namespace tidepool::worker {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr char kTopic[] = "orders";
constexpr char kSub[] = "workers";
constexpr char kDeadLetterTopic[] = "orders-dead";
constexpr char kDeadLetterSub[] = "orders-dead-reader";
constexpr size_t kMaxPublishBatch = 1000;

// Polls `done` until it holds or `timeout` passes; true when it held.
template <typename Predicate>
bool WaitFor(Predicate done, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// Awaits `duration` on the handler's executor; false when cancelled.
asio::awaitable<bool> Sleep(std::chrono::milliseconds duration) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(duration);
  auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  co_return !ec;
}

// Runs Runtime::Run on a thread of its own.
class Running {
 public:
  Running(queue::Queue& queue, RuntimeOptions options, Handler handler)
      : runtime_(queue, std::move(options), std::move(handler)),
        result_(std::async(std::launch::async, [this] { return runtime_.Run(); })) {}
  ~Running() { (void)DrainAndWait(); }
  Runtime& runtime() { return runtime_; }
  Stats stats() const { return runtime_.stats(); }
  // Drains and returns Run's status (idempotent).
  Status DrainAndWait() {
    runtime_.Drain();
    return Result();
  }
  bool Returned(std::chrono::milliseconds within) {
    return result_.wait_for(within) == std::future_status::ready;
  }
  Status Result() {
    if (!result_status_) result_status_ = result_.get();
    return *result_status_;
  }

 private:
  Runtime runtime_;
  std::future<Status> result_;
  std::optional<Status> result_status_;
};

// ---------------------------------------------------------------------------------------------
// Pure parts.

TEST(NackDelayTest, DoublesFromMinUpToMax) {
  EXPECT_EQ(NackDelay(1, 1s, 60s), 1s);
  EXPECT_EQ(NackDelay(2, 1s, 60s), 2s);
  EXPECT_EQ(NackDelay(3, 1s, 60s), 4s);
  EXPECT_EQ(NackDelay(7, 1s, 60s), 60s);  // 64 clamped
  EXPECT_EQ(NackDelay(1000, 1s, 60s), 60s);
  EXPECT_EQ(NackDelay(0, 5s, 60s), 5s);  // no attempt count: as the first
}

TEST(PermanentTest, MarksAnErrorKeepingItsCode) {
  Status error = Permanent(Status::InvalidArgument("bad order"));
  EXPECT_TRUE(IsPermanent(error));
  EXPECT_EQ(error.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(error.message().find("bad order"), std::string::npos);
  EXPECT_TRUE(IsPermanent(Permanent(error)));
  EXPECT_EQ(Permanent(error).message(), error.message());
  EXPECT_FALSE(IsPermanent(Status::InvalidArgument("bad order")));
  EXPECT_FALSE(IsPermanent(Status::Ok()));
  EXPECT_FALSE(Permanent(Status::Ok()).ok());
}

TEST(WorkerEnvTest, RequiredVariablesAndDefaults) {
  std::map<std::string, std::string> vars;
  auto lookup = [&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
  // Without an emulator: Google Cloud Pub/Sub, which needs the project.
  auto missing = ParseWorkerEnv(lookup, {});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("GOOGLE_CLOUD_PROJECT"), std::string::npos);
  EXPECT_NE(missing.status().message().find("PUBSUB_EMULATOR_HOST"), std::string::npos);
  vars["GOOGLE_CLOUD_PROJECT"] = "shop-prod";
  vars["TIDEPOOL_SUBSCRIPTION"] = "chat-requests";
  auto cloud = ParseWorkerEnv(lookup, {});
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  EXPECT_EQ(cloud->queue.endpoint, "pubsub.googleapis.com:443");
  EXPECT_EQ(cloud->queue.auth, "google");
  vars["TIDEPOOL_PUBSUB_ENDPOINT"] = "europe-west1-pubsub.googleapis.com:443";
  EXPECT_EQ(ParseWorkerEnv(lookup, {})->queue.endpoint, "europe-west1-pubsub.googleapis.com:443");
  vars.erase("GOOGLE_CLOUD_PROJECT");
  vars.erase("TIDEPOOL_SUBSCRIPTION");

  vars["PUBSUB_EMULATOR_HOST"] = "127.0.0.1:8085";
  missing = ParseWorkerEnv(lookup, {});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("TIDEPOOL_SUBSCRIPTION"), std::string::npos);

  vars["TIDEPOOL_SUBSCRIPTION"] = "chat-requests";
  auto env = ParseWorkerEnv(lookup, {});
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ(env->queue.backend, "pubsub");
  EXPECT_EQ(env->queue.endpoint, "127.0.0.1:8085");
  EXPECT_EQ(env->queue.auth, "") << "an emulator is reached in plaintext";
  EXPECT_EQ(env->queue.project, "tidepool");
  EXPECT_EQ(env->options.subscription, "chat-requests");
  EXPECT_EQ(env->options.status_fd, -1);
  EXPECT_EQ(env->options.log_prefix, "[worker] ");

  vars["PUBSUB_PROJECT_ID"] = "p2";
  EXPECT_EQ(ParseWorkerEnv(lookup, {})->queue.project, "p2");
  vars["GOOGLE_CLOUD_PROJECT"] = "p1";  // wins over PUBSUB_PROJECT_ID
  EXPECT_EQ(ParseWorkerEnv(lookup, {})->queue.project, "p1");

  vars["TIDEPOOL_GRACE_PERIOD_SECONDS"] = "2.5";
  vars["TIDEPOOL_STATUS_FD"] = "7";
  vars["TIDEPOOL_POOL"] = "chat";
  vars["TIDEPOOL_REVISION"] = "r3";
  vars["TIDEPOOL_INSTANCE"] = "2";
  env = ParseWorkerEnv(lookup, {});
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(env->options.grace_period, 2500ms);
  EXPECT_EQ(env->options.status_fd, 7);
  EXPECT_EQ(env->options.log_prefix, "[chat/r3/2] ");

  vars["TIDEPOOL_GRACE_PERIOD_SECONDS"] = "soon";
  EXPECT_EQ(ParseWorkerEnv(lookup, {}).status().code(), StatusCode::kInvalidArgument);
  vars["TIDEPOOL_GRACE_PERIOD_SECONDS"] = "30";
  vars["TIDEPOOL_STATUS_FD"] = "-3";
  EXPECT_EQ(ParseWorkerEnv(lookup, {}).status().code(), StatusCode::kInvalidArgument);
  vars["TIDEPOOL_STATUS_FD"] = "7";

  // NATS JetStream wins over the Pub/Sub variables.
  vars["TIDEPOOL_NATS_URL"] = "nats://10.0.0.1:4222, nats://10.0.0.2:4222";
  vars["TIDEPOOL_NATS_REPLICAS"] = "3";
  env = ParseWorkerEnv(lookup, {});
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ(env->queue.backend, "nats");
  EXPECT_EQ(env->queue.nats_servers,
            (std::vector<std::string>{"nats://10.0.0.1:4222", "nats://10.0.0.2:4222"}));
  EXPECT_EQ(env->queue.nats_replicas, 3);
  vars["TIDEPOOL_NATS_URL"] = "10.0.0.1:4222";
  auto bad = ParseWorkerEnv(lookup, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("TIDEPOOL_NATS_URL"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// A test double of the queue, for what the real broker cannot be made to do on demand
// (refused acks, stream failures) or would only show slowly.

// What a FakeStream was asked to do; shared with the test, which outlives the stream.
struct StreamRecord {
  struct Nacked {
    std::vector<std::string> ack_ids;
    std::chrono::seconds delay;
  };
  std::mutex mu;
  std::vector<std::string> acks;
  std::vector<Nacked> nacks;
  std::vector<std::string> terminated;
  std::atomic<bool> refuse_acks{false};
  std::atomic<bool> stopped_pulling{false};
  std::atomic<bool> closed{false};
};

// Settles inline, before the call returns, as a backend may.
class FakeStream : public queue::MessageStream {
 public:
  explicit FakeStream(std::shared_ptr<StreamRecord> record) : record_(std::move(record)) {}
  void StopPulling() override { record_->stopped_pulling = true; }
  void Ack(std::vector<std::string> ack_ids, queue::AckCallback done) override {
    queue::AckOutcome outcome;
    {
      std::lock_guard lock(record_->mu);
      for (auto& id : ack_ids) {
        if (record_->refuse_acks) outcome.failed_ack_ids.push_back(id);
        record_->acks.push_back(std::move(id));
      }
    }
    done(std::move(outcome));
  }
  void Nack(std::vector<std::string> ack_ids, std::chrono::seconds delay,
            queue::AckCallback done) override {
    {
      std::lock_guard lock(record_->mu);
      record_->nacks.push_back({std::move(ack_ids), delay});
    }
    done({});
  }
  void ExtendLease(std::vector<std::string>, std::chrono::seconds,
                   queue::AckCallback done) override {
    done({});
  }
  void Terminate(std::vector<queue::Delivery> deliveries, queue::AckCallback done) override {
    {
      std::lock_guard lock(record_->mu);
      for (auto& d : deliveries) record_->terminated.push_back(d.ack_id);
    }
    done({});
  }
  int64_t outstanding_messages() const override { return 0; }
  void Close() override { record_->closed = true; }

 private:
  std::shared_ptr<StreamRecord> record_;
};

class FakeQueue : public queue::Queue {
 public:
  Status EnsureTopic(const std::string&) override { return Status::Ok(); }
  Status EnsureSubscription(const queue::SubscriptionSpec&) override { return Status::Ok(); }
  Status DeleteSubscription(const std::string&) override { return Status::Ok(); }
  void Publish(const std::string&, std::vector<queue::Message>,
               queue::PublishCallback done) override {
    done(Status::Internal("fake"));
  }
  Result<std::unique_ptr<queue::MessageStream>> Subscribe(
      const std::string&, queue::StreamOptions, queue::DeliveryHandler on_messages,
      queue::StreamErrorHandler on_error) override {
    if (subscribe_error) return *subscribe_error;
    auto s = std::make_unique<FakeStream>(record);
    std::lock_guard lock(mu);
    subscribed = true;
    deliver = std::move(on_messages);
    fail = std::move(on_error);
    return std::unique_ptr<queue::MessageStream>(std::move(s));
  }
  void Pull(const std::string&, int, std::chrono::milliseconds, queue::PullCallback done) override {
    done(Status::Internal("fake"));
  }
  void Ack(const std::string&, std::vector<std::string>, queue::AckCallback done) override {
    done({Status::Internal("fake")});
  }
  void Nack(const std::string&, std::vector<std::string>, std::chrono::seconds,
            queue::AckCallback done) override {
    done({Status::Internal("fake")});
  }
  void ExtendLease(const std::string&, std::vector<std::string>, std::chrono::seconds,
                   queue::AckCallback done) override {
    done({Status::Internal("fake")});
  }
  void Terminate(const std::string&, std::vector<queue::Delivery>,
                 queue::AckCallback done) override {
    done({Status::Internal("fake")});
  }
  Result<queue::Backlog> GetBacklog(const std::string&) override { return queue::Backlog{}; }
  std::string backend() const override { return "fake"; }

  bool Subscribed() {
    std::lock_guard lock(mu);
    return subscribed;
  }
  void Deliver(std::string ack_id, std::string message_id, int attempt = 0) {
    queue::Delivery d;
    d.ack_id = std::move(ack_id);
    d.message_id = std::move(message_id);
    d.message.data = "payload";
    d.delivery_attempt = attempt;
    std::vector<queue::Delivery> batch;
    batch.push_back(std::move(d));
    deliver(std::move(batch));
  }

  std::mutex mu;
  bool subscribed = false;
  std::shared_ptr<StreamRecord> record = std::make_shared<StreamRecord>();
  queue::DeliveryHandler deliver;
  queue::StreamErrorHandler fail;
  std::optional<Status> subscribe_error;
};

RuntimeOptions FakeOptions() {
  RuntimeOptions o;
  o.subscription = kSub;
  o.grace_period = 5s;
  return o;
}

TEST(RuntimeFakeTest, ThrowingHandlerIsNackedWithBackoffFromALocalCount) {
  FakeQueue queue;
  std::atomic<int> calls{0};
  Running running(queue, FakeOptions(), [&](const queue::Delivery&) -> asio::awaitable<Status> {
    ++calls;
    throw std::runtime_error("boom");
    co_return Status::Ok();
  });
  ASSERT_TRUE(WaitFor([&] { return queue.Subscribed(); }, 5s));
  // The backend reports no attempts (0): the runtime counts deliveries per message id.
  queue.Deliver("a1", "m1");
  ASSERT_TRUE(WaitFor([&] { return running.stats().nacked == 1; }, 5s));
  queue.Deliver("a2", "m1");
  ASSERT_TRUE(WaitFor([&] { return running.stats().nacked == 2; }, 5s));
  queue.Deliver("a3", "m1");
  queue.Deliver("b1", "m2");
  ASSERT_TRUE(WaitFor([&] { return running.stats().nacked == 4; }, 5s));
  EXPECT_EQ(calls, 4);
  std::map<std::string, std::chrono::seconds> delays;
  {
    std::lock_guard lock(queue.record->mu);
    for (const auto& n : queue.record->nacks) delays[n.ack_ids.at(0)] = n.delay;
    EXPECT_TRUE(queue.record->acks.empty());
  }
  EXPECT_EQ(delays["a1"], 1s);
  EXPECT_EQ(delays["a2"], 2s);
  EXPECT_EQ(delays["a3"], 4s);
  EXPECT_EQ(delays["b1"], 1s);
  EXPECT_TRUE(running.DrainAndWait().ok());
}

TEST(RuntimeFakeTest, BackendAttemptCountWinsOverTheLocalOne) {
  FakeQueue queue;
  Running running(queue, FakeOptions(), [&](const queue::Delivery&) -> asio::awaitable<Status> {
    co_return Status::Unavailable("try later");
  });
  ASSERT_TRUE(WaitFor([&] { return queue.Subscribed(); }, 5s));
  queue.Deliver("a1", "m1", /*attempt=*/4);
  ASSERT_TRUE(WaitFor([&] { return running.stats().nacked == 1; }, 5s));
  std::lock_guard lock(queue.record->mu);
  EXPECT_EQ(queue.record->nacks.at(0).delay, 8s);
}

TEST(RuntimeFakeTest, RefusedAckIsCountedAndNeverReportedAsAcked) {
  FakeQueue queue;
  Running running(queue, FakeOptions(), [&](const queue::Delivery&) -> asio::awaitable<Status> {
    co_return Status::Ok();
  });
  ASSERT_TRUE(WaitFor([&] { return queue.Subscribed(); }, 5s));
  queue.record->refuse_acks = true;  // exactly-once: the lease was lost
  queue.Deliver("a1", "m1");
  ASSERT_TRUE(WaitFor([&] { return running.stats().ack_failures == 1; }, 5s));
  queue.record->refuse_acks = false;
  queue.Deliver("a2", "m2");
  ASSERT_TRUE(WaitFor([&] { return running.stats().acked == 1; }, 5s));
  EXPECT_EQ(running.stats().ack_failures, 1u);
  EXPECT_EQ(running.stats().acked, 1u);
}

TEST(RuntimeFakeTest, PermanentErrorTerminates) {
  FakeQueue queue;
  Running running(queue, FakeOptions(), [&](const queue::Delivery&) -> asio::awaitable<Status> {
    co_return Permanent(Status::InvalidArgument("cannot parse"));
  });
  ASSERT_TRUE(WaitFor([&] { return queue.Subscribed(); }, 5s));
  queue.Deliver("a1", "m1");
  ASSERT_TRUE(WaitFor([&] { return running.stats().terminated == 1; }, 5s));
  std::lock_guard lock(queue.record->mu);
  EXPECT_EQ(queue.record->terminated, std::vector<std::string>{"a1"});
  EXPECT_TRUE(queue.record->nacks.empty());
}

TEST(RuntimeFakeTest, StreamFailureEndsRunWithItsStatusAndCancelsHandlers) {
  FakeQueue queue;
  std::atomic<bool> cancelled{false};
  Running running(queue, FakeOptions(), [&](const queue::Delivery&) -> asio::awaitable<Status> {
    if (!co_await Sleep(60s)) cancelled = true;
    co_return Status::Ok();
  });
  ASSERT_TRUE(WaitFor([&] { return queue.Subscribed(); }, 5s));
  queue.Deliver("a1", "m1");
  ASSERT_TRUE(WaitFor([&] { return running.stats().in_flight == 1; }, 5s));
  queue.fail(Status::NotFound("subscription deleted"));
  ASSERT_TRUE(running.Returned(5s));
  EXPECT_EQ(running.Result().code(), StatusCode::kNotFound);
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(running.stats().acked, 0u);
}

TEST(RuntimeFakeTest, SubscribeErrorIsReturned) {
  FakeQueue queue;
  queue.subscribe_error = Status::NotFound("no such subscription");
  Runtime runtime(queue, FakeOptions(), [](const queue::Delivery&) -> asio::awaitable<Status> {
    co_return Status::Ok();
  });
  EXPECT_EQ(runtime.Run().code(), StatusCode::kNotFound);
}

TEST(RuntimeFakeTest, DrainBeforeRunReturnsAtOnce) {
  FakeQueue queue;
  Runtime runtime(queue, FakeOptions(), [](const queue::Delivery&) -> asio::awaitable<Status> {
    co_return Status::Ok();
  });
  runtime.Drain();
  EXPECT_TRUE(runtime.Run().ok());
  EXPECT_FALSE(queue.Subscribed());
}

TEST(RuntimeFakeTest, DeliveriesAfterDrainAreGivenBackUnhandled) {
  FakeQueue queue;
  std::atomic<int> calls{0};
  RuntimeOptions options = FakeOptions();
  Runtime runtime(queue, options, [&](const queue::Delivery&) -> asio::awaitable<Status> {
    ++calls;
    co_await Sleep(300ms);
    co_return Status::Ok();
  });
  auto result = std::async(std::launch::async, [&] { return runtime.Run(); });
  ASSERT_TRUE(WaitFor([&] { return queue.Subscribed(); }, 5s));
  StreamRecord* stream = queue.record.get();
  queue.Deliver("a1", "m1");
  ASSERT_TRUE(WaitFor([&] { return runtime.stats().in_flight == 1; }, 5s));
  runtime.Drain();
  EXPECT_TRUE(stream->stopped_pulling);
  // A delivery racing the drain: not handled, nacked at once.
  queue.Deliver("a2", "m2");
  ASSERT_TRUE(result.get().ok());
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(stream->closed);
  std::lock_guard lock(stream->mu);
  EXPECT_EQ(stream->acks, std::vector<std::string>{"a1"});
  ASSERT_EQ(stream->nacks.size(), 1u);
  EXPECT_EQ(stream->nacks[0].ack_ids, std::vector<std::string>{"a2"});
  EXPECT_EQ(stream->nacks[0].delay, 0s);
}

// ---------------------------------------------------------------------------------------------
// Against the embedded backend over a real broker.

class RuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker::BrokerOptions o;
    o.data_dir = dir_.sub("data");
    auto b = broker::Broker::Open(o);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    broker_ = std::move(*b);
    auto q = queue::OpenQueue({.backend = "embedded", .broker = broker_.get()});
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    queue_ = std::move(*q);
    ASSERT_TRUE(queue_->EnsureTopic(kTopic).ok());
  }

  void CreateSubscription(queue::SubscriptionSpec spec = {}) {
    spec.name = kSub;
    spec.topic = kTopic;
    Status s = queue_->EnsureSubscription(spec);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  // Publishes and waits until durable; returns the message ids.
  std::vector<std::string> Publish(std::vector<queue::Message> messages) {
    std::vector<std::string> ids;
    for (size_t begin = 0; begin < messages.size(); begin += kMaxPublishBatch) {
      size_t end = std::min(messages.size(), begin + kMaxPublishBatch);
      std::vector<queue::Message> batch(messages.begin() + begin, messages.begin() + end);
      std::promise<Result<std::vector<std::string>>> done;
      queue_->Publish(kTopic, std::move(batch),
                      [&](Result<std::vector<std::string>> r) { done.set_value(std::move(r)); });
      auto r = done.get_future().get();
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (r.ok()) ids.insert(ids.end(), r->begin(), r->end());
    }
    return ids;
  }
  std::vector<std::string> PublishN(size_t n, std::map<std::string, std::string> attributes = {}) {
    std::vector<queue::Message> messages;
    for (size_t i = 0; i < n; ++i) messages.push_back({"m" + std::to_string(i), attributes, ""});
    return Publish(std::move(messages));
  }

  uint64_t Undelivered() {
    auto backlog = queue_->GetBacklog(kSub);
    EXPECT_TRUE(backlog.ok()) << backlog.status().ToString();
    return backlog.ok() ? backlog->undelivered_messages : UINT64_MAX;
  }

  RuntimeOptions Options() {
    RuntimeOptions o;
    o.subscription = kSub;
    o.grace_period = 5s;
    o.stream_ack_deadline_seconds = 10;
    return o;
  }

  storage::testing::TempDir dir_;
  std::unique_ptr<broker::Broker> broker_;
  std::unique_ptr<queue::Queue> queue_;
};

TEST_F(RuntimeTest, EveryMessageIsHandledAndAckedOnce) {
  CreateSubscription();
  constexpr size_t kMessages = 300;
  auto ids = PublishN(kMessages);
  std::mutex mu;
  std::map<std::string, int> handled;  // message id -> times
  Running running(*queue_, Options(), [&](const queue::Delivery& d) -> asio::awaitable<Status> {
    co_await Sleep(std::chrono::milliseconds(std::hash<std::string>{}(d.message_id) % 5));
    std::lock_guard lock(mu);
    ++handled[d.message_id];
    co_return Status::Ok();
  });
  ASSERT_TRUE(WaitFor([&] { return running.stats().acked == kMessages; }, 20s))
      << running.stats().acked;
  // The acks reached the broker: nothing is left to deliver.
  EXPECT_TRUE(WaitFor([&] { return Undelivered() == 0; }, 5s));
  Status s = running.DrainAndWait();
  EXPECT_TRUE(s.ok()) << s.ToString();
  std::lock_guard lock(mu);
  EXPECT_EQ(handled.size(), kMessages);
  for (const auto& id : ids) EXPECT_EQ(handled[id], 1) << id;
  Stats stats = running.stats();
  EXPECT_EQ(stats.received, kMessages);
  EXPECT_EQ(stats.nacked, 0u);
  EXPECT_EQ(stats.ack_failures, 0u);
  EXPECT_EQ(stats.in_flight, 0u);
}

TEST_F(RuntimeTest, FiveThousandHandlersInFlightOnOneThread) {
  CreateSubscription();
  constexpr int kHandlers = 5'000;
  PublishN(kHandlers);
  RuntimeOptions options = Options();
  options.threads = 1;
  options.flow.max_outstanding_messages = kHandlers;
  // One io thread: handlers never run concurrently, so plain state is safe among them.
  int live = 0;
  int peak = 0;
  std::optional<asio::steady_timer> release;  // every handler waits on it until all are in
  Running running(*queue_, options, [&](const queue::Delivery&) -> asio::awaitable<Status> {
    if (!release) {
      release.emplace(co_await asio::this_coro::executor);
      release->expires_after(30s);
    }
    peak = std::max(peak, ++live);
    if (live == kHandlers) {
      release->cancel();
    } else {
      co_await release->async_wait(asio::as_tuple(asio::use_awaitable));
    }
    --live;
    co_return Status::Ok();
  });
  // The timer belongs to the runtime's io_context: stop the runtime before it goes, on every
  // path out of this test.
  struct StopFirst {
    Running& running;
    std::optional<asio::steady_timer>& timer;
    ~StopFirst() {
      (void)running.DrainAndWait();
      timer.reset();
    }
  } stop_first{running, release};
  ASSERT_TRUE(WaitFor([&] { return running.stats().acked == kHandlers; }, 40s))
      << running.stats().acked << " acked, max in flight " << running.stats().max_in_flight;
  Status s = running.DrainAndWait();
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(peak, kHandlers);
  EXPECT_EQ(running.stats().max_in_flight, static_cast<uint64_t>(kHandlers));
}

TEST_F(RuntimeTest, FlowControlCapsHandlersInFlight) {
  CreateSubscription();
  constexpr int kLimit = 10;
  constexpr int kMessages = 80;
  PublishN(kMessages);
  RuntimeOptions options = Options();
  options.threads = 2;
  options.flow.max_outstanding_messages = kLimit;
  std::atomic<int> live{0};
  std::atomic<int> peak{0};
  Running running(*queue_, options, [&](const queue::Delivery&) -> asio::awaitable<Status> {
    int now = ++live;
    int seen = peak.load();
    while (now > seen && !peak.compare_exchange_weak(seen, now)) {
    }
    co_await Sleep(30ms);
    --live;
    co_return Status::Ok();
  });
  ASSERT_TRUE(WaitFor([&] { return running.stats().acked == kMessages; }, 20s));
  EXPECT_TRUE(running.DrainAndWait().ok());
  EXPECT_EQ(peak, kLimit);
  EXPECT_EQ(running.stats().max_in_flight, static_cast<uint64_t>(kLimit));
}

TEST_F(RuntimeTest, FailingHandlerIsRedeliveredWithIncreasingDelay) {
  // A dead-letter policy makes the broker report delivery attempts.
  ASSERT_TRUE(queue_->EnsureTopic(kDeadLetterTopic).ok());
  CreateSubscription({.dead_letter_topic = kDeadLetterTopic, .max_delivery_attempts = 5});
  PublishN(1);
  constexpr int kFailures = 2;
  std::mutex mu;
  std::vector<std::pair<int, Clock::time_point>> attempts;
  RuntimeOptions options = Options();
  options.min_nack_delay = 1s;
  options.max_nack_delay = 60s;
  Running running(*queue_, options, [&](const queue::Delivery& d) -> asio::awaitable<Status> {
    std::lock_guard lock(mu);
    attempts.emplace_back(d.delivery_attempt, Clock::now());
    if (static_cast<int>(attempts.size()) <= kFailures) co_return Status::Unavailable("flaky");
    co_return Status::Ok();
  });
  ASSERT_TRUE(WaitFor([&] { return running.stats().acked == 1; }, 15s));
  EXPECT_TRUE(running.DrainAndWait().ok());
  EXPECT_EQ(running.stats().nacked, static_cast<uint64_t>(kFailures));
  std::lock_guard lock(mu);
  ASSERT_EQ(attempts.size(), 3u);
  EXPECT_EQ(attempts[0].first, 1);
  EXPECT_EQ(attempts[1].first, 2);
  EXPECT_EQ(attempts[2].first, 3);
  auto first_gap = attempts[1].second - attempts[0].second;
  auto second_gap = attempts[2].second - attempts[1].second;
  constexpr auto kSlack = 150ms;  // timer and tick granularity
  EXPECT_GE(first_gap, 1s - kSlack);
  EXPECT_LT(first_gap, 2s - kSlack);
  EXPECT_GE(second_gap, 2s - kSlack);
}

TEST_F(RuntimeTest, PermanentErrorGoesToTheDeadLetterTopic) {
  ASSERT_TRUE(queue_->EnsureTopic(kDeadLetterTopic).ok());
  ASSERT_TRUE(queue_->EnsureSubscription({.name = kDeadLetterSub, .topic = kDeadLetterTopic}).ok());
  CreateSubscription({.dead_letter_topic = kDeadLetterTopic, .max_delivery_attempts = 5});
  Publish({{"poison", {{"kind", "bad"}}, ""}});
  std::atomic<int> calls{0};
  Running running(*queue_, Options(), [&](const queue::Delivery&) -> asio::awaitable<Status> {
    ++calls;
    co_return Permanent(Status::InvalidArgument("cannot parse"));
  });
  ASSERT_TRUE(WaitFor([&] { return running.stats().terminated == 1; }, 10s));
  std::promise<Result<std::vector<queue::Delivery>>> pulled;
  queue_->Pull(kDeadLetterSub, 10, 5s,
               [&](Result<std::vector<queue::Delivery>> r) { pulled.set_value(std::move(r)); });
  auto dead = pulled.get_future().get();
  ASSERT_TRUE(dead.ok()) << dead.status().ToString();
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].message.data, "poison");
  EXPECT_TRUE(running.DrainAndWait().ok());
  EXPECT_EQ(calls, 1);  // not retried
  EXPECT_EQ(running.stats().nacked, 0u);
}

TEST_F(RuntimeTest, LeaseExtensionOutlastsTheAckDeadline) {
  CreateSubscription({.ack_deadline_seconds = 10});
  PublishN(1);
  constexpr auto kWork = 13s;  // longer than the 10 s lease
  std::atomic<int> calls{0};
  RuntimeOptions options = Options();
  options.stream_ack_deadline_seconds = 10;
  Running running(*queue_, options, [&](const queue::Delivery&) -> asio::awaitable<Status> {
    ++calls;
    co_await Sleep(kWork);
    co_return Status::Ok();
  });
  ASSERT_TRUE(WaitFor([&] { return running.stats().acked == 1; }, 20s));
  EXPECT_TRUE(running.DrainAndWait().ok());
  EXPECT_EQ(calls, 1);  // an expired lease would have redelivered it meanwhile
  EXPECT_GE(running.stats().lease_extensions, 1u);
  EXPECT_EQ(running.stats().ack_failures, 0u);
  EXPECT_EQ(Undelivered(), 0u);
}

TEST_F(RuntimeTest, DrainStopsPullingFinishesQuickHandlersAndGivesBackSlowOnes) {
  CreateSubscription();
  // A 60 s lease: only a nack can bring the slow message back within this test.
  RuntimeOptions options = Options();
  options.stream_ack_deadline_seconds = 60;
  options.grace_period = 3s;  // handlers get 2 s (grace - max(grace/10, 1 s))
  Publish({{"quick", {{"work_ms", "400"}}, ""}, {"slow", {{"work_ms", "60000"}}, ""}});

  std::mutex mu;
  std::vector<std::string> first_seen;
  std::atomic<bool> slow_cancelled{false};
  auto first = std::make_unique<Running>(
      *queue_, options, [&](const queue::Delivery& d) -> asio::awaitable<Status> {
        {
          std::lock_guard lock(mu);
          first_seen.push_back(d.message.data);
        }
        auto work = std::chrono::milliseconds(std::stol(d.message.attributes.at("work_ms")));
        if (!co_await Sleep(work)) {
          slow_cancelled = true;
          co_return Status::Unavailable("cancelled");
        }
        co_return Status::Ok();
      });
  ASSERT_TRUE(WaitFor([&] { return first->stats().in_flight == 2; }, 5s));
  auto drain_started = Clock::now();
  first->runtime().Drain();
  Publish({{"late", {{"work_ms", "0"}}, ""}});
  ASSERT_TRUE(first->Returned(5s));
  auto drain_took = Clock::now() - drain_started;
  Status s = first->Result();
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_GE(drain_took, 1900ms);  // waited for the slow handler up to the budget
  EXPECT_LT(drain_took, 3s);      // and returned before the grace period ended
  EXPECT_TRUE(slow_cancelled);
  Stats stats = first->stats();
  EXPECT_EQ(stats.received, 2u);  // pulling stopped at once: "late" never came
  EXPECT_EQ(stats.acked, 1u);     // "quick" finished within the budget
  EXPECT_EQ(stats.nacked, 1u);    // "slow" given back
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(first_seen, (std::vector<std::string>{"quick", "slow"}));
  }

  // A second runtime gets "slow" at once (nack 0, not the 60 s lease expiry) and "late".
  std::vector<std::string> second_seen;
  auto second_started = Clock::now();
  Running second(*queue_, options, [&](const queue::Delivery& d) -> asio::awaitable<Status> {
    std::lock_guard lock(mu);
    second_seen.push_back(d.message.data);
    co_return Status::Ok();
  });
  ASSERT_TRUE(WaitFor([&] { return second.stats().acked == 2; }, 10s));
  EXPECT_LT(Clock::now() - second_started, 5s);
  EXPECT_TRUE(second.DrainAndWait().ok());
  std::lock_guard lock(mu);
  std::sort(second_seen.begin(), second_seen.end());
  EXPECT_EQ(second_seen, (std::vector<std::string>{"late", "slow"}));
}

TEST_F(RuntimeTest, StatusPipeReportsPullingInflightAndDraining) {
  CreateSubscription();
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  RuntimeOptions options = Options();
  options.status_fd = fds[1];
  constexpr int kMessages = 3;
  PublishN(kMessages);
  Running running(*queue_, options, [&](const queue::Delivery&) -> asio::awaitable<Status> {
    co_await Sleep(400ms);
    co_return Status::Ok();
  });
  ASSERT_TRUE(WaitFor([&] { return running.stats().acked == kMessages; }, 10s));
  EXPECT_TRUE(running.DrainAndWait().ok());
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) > 0;) text.append(buf, n);
  ::close(fds[0]);

  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_GE(lines.size(), 4u) << text;
  EXPECT_EQ(lines.front(), "pulling");
  EXPECT_EQ(lines.back(), "draining");
  EXPECT_EQ(lines[lines.size() - 2], "inflight 0") << text;
  EXPECT_NE(std::find(lines.begin(), lines.end(), "inflight 3"), lines.end()) << text;
  // Coalesced: a handful of lines for 3 messages over ~400 ms, never one per change.
  EXPECT_LE(lines.size(), 8u) << text;
  EXPECT_EQ(text.back(), '\n');
}

}  // namespace
}  // namespace tidepool::worker
