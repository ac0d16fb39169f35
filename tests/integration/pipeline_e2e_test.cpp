// `tidepool worker --app` as a real process against a real `tidepool broker` and `tidepool
// llm-sim`: a worker killed with SIGKILL mid-stream still yields exactly one final reply,
// duplicated requests yield one reply each, an unusable request reaches the dead-letter topic,
// and SIGTERM drains.
#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <future>
#include <map>
#include <set>
#include <thread>

#include "queue/queue.h"
#include "storage/test_util.h"
#include "test_process.h"

namespace tidepool {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;
using testing::ChildProcess;
using Clock = std::chrono::steady_clock;

constexpr char kEvents[] = "tidepool-events";
constexpr char kEventsSub[] = "test-events";
constexpr char kRequests[] = "scent-advisor-requests";
constexpr char kWorkers[] = "scent-advisor-workers";
constexpr char kDeadLetter[] = "scent-advisor-dead-letter";
constexpr char kDeadSub[] = "test-dead-letters";

class PipelineE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    port_ = testing::FreePort();
    admin_port_ = testing::FreePort();
    sim_port_ = testing::FreePort();
    broker_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{TIDEPOOL_BIN, "broker", "--data-dir", dir_.sub("broker"),
                                 "--listen", "127.0.0.1:" + std::to_string(port_), "--admin-listen",
                                 "127.0.0.1:" + std::to_string(admin_port_)});
    // 60 tokens at 30/s after 300 ms: the copy step streams for about two seconds.
    sim_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        TIDEPOOL_BIN, "llm-sim", "--listen", "127.0.0.1:" + std::to_string(sim_port_), "--ttft-ms",
        "300", "--tokens-per-second", "30", "--output-tokens", "60", "--threads", "1"});
    ASSERT_TRUE(testing::WaitForPort(port_, 20s));
    ASSERT_TRUE(testing::WaitForPort(admin_port_, 20s));
    ASSERT_TRUE(testing::WaitForPort(sim_port_, 20s));
    queue::QueueOptions qo;
    qo.backend = "pubsub";
    qo.endpoint = "127.0.0.1:" + std::to_string(port_);
    qo.admin_endpoint = "127.0.0.1:" + std::to_string(admin_port_);  // backlog reads
    auto q = queue::OpenQueue(qo);
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    queue_ = std::move(*q);
    // The test's own subscriptions exist before anything is published.
    for (const char* topic : {kEvents, kRequests, kDeadLetter}) {
      ASSERT_TRUE(queue_->EnsureTopic(topic).ok());
    }
    queue::SubscriptionSpec events{.name = kEventsSub, .topic = kEvents};
    events.enable_message_ordering = true;
    ASSERT_TRUE(queue_->EnsureSubscription(events).ok());
    ASSERT_TRUE(queue_->EnsureSubscription({.name = kDeadSub, .topic = kDeadLetter}).ok());
  }

  void StartWorker() {
    worker_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{TIDEPOOL_BIN, "worker", "--app",
                                 std::string(TIDEPOOL_SOURCE_DIR) + "/apps/scent-advisor/app.yaml",
                                 "--llm-base-url",
                                 "http://127.0.0.1:" + std::to_string(sim_port_) + "/v1",
                                 "--ledger", dir_.sub("ledger.db"), "--ack-deadline", "10"},
        std::vector<std::pair<std::string, std::string>>{
            {"PUBSUB_EMULATOR_HOST", "127.0.0.1:" + std::to_string(port_)},
            {"TIDEPOOL_GRACE_PERIOD_SECONDS", "5"}});
    // Pulling once its subscription exists.
    const auto end = Clock::now() + 20s;
    while (Clock::now() < end && !queue_->GetBacklog(kWorkers).ok()) {
      std::this_thread::sleep_for(50ms);
    }
  }

  void PublishRequest(const std::string& conversation, const std::string& message_id,
                      const std::string& text) {
    json::object data{
        {"conversation_id", conversation}, {"message_id", message_id}, {"text", text}};
    std::promise<Status> done;
    queue_->Publish(kRequests, {queue::Message{.data = json::serialize(data)}},
                    [&](Result<std::vector<std::string>> ids) { done.set_value(ids.status()); });
    ASSERT_TRUE(done.get_future().get().ok());
  }

  // Pulls what is there (up to `wait`), acks it, returns it.
  std::vector<queue::Delivery> PullSome(const std::string& subscription,
                                        std::chrono::milliseconds wait) {
    std::promise<Result<std::vector<queue::Delivery>>> got;
    queue_->Pull(subscription, 500, wait,
                 [&](Result<std::vector<queue::Delivery>> r) { got.set_value(std::move(r)); });
    auto r = got.get_future().get();
    if (!r.ok() || r->empty()) return {};
    std::vector<std::string> ids;
    for (const auto& d : *r) ids.push_back(d.ack_id);
    std::promise<void> acked;
    queue_->Ack(subscription, ids, [&](queue::AckOutcome) { acked.set_value(); });
    acked.get_future().wait();
    return std::move(r).value();
  }

  // Collects events until `done` says so or `timeout` passes.
  template <typename Pred>
  bool CollectEvents(Pred done, std::chrono::seconds timeout) {
    const auto end = Clock::now() + timeout;
    while (Clock::now() < end) {
      for (const auto& d : PullSome(kEventsSub, 500ms)) {
        events_.push_back(json::parse(d.message.data).as_object());
      }
      if (done()) return true;
    }
    return done();
  }

  size_t Count(const std::string& type, const std::string& request_id = "") const {
    size_t n = 0;
    for (const auto& e : events_) {
      if (e.at("type").as_string() != type) continue;
      if (!request_id.empty() && e.at("request_id").as_string() != request_id) continue;
      ++n;
    }
    return n;
  }

  storage::testing::TempDir dir_;
  int port_ = 0;
  int admin_port_ = 0;
  int sim_port_ = 0;
  std::unique_ptr<ChildProcess> broker_;
  std::unique_ptr<ChildProcess> sim_;
  std::unique_ptr<ChildProcess> worker_;
  std::unique_ptr<queue::Queue> queue_;
  std::vector<json::object> events_;
};

TEST_F(PipelineE2ETest, AWorkerKilledMidStreamStillYieldsExactlyOneFinal) {
  StartWorker();
  PublishRequest("c-1", "m-1", "Something fresh and citrusy for summer at the office, under $90");
  ASSERT_TRUE(CollectEvents([&] { return Count("token", "m-1") > 0; }, 60s)) << "no token streamed";
  ASSERT_EQ(Count("final", "m-1"), 0u) << "the reply finished before the kill; nothing tested";
  worker_->Signal(SIGKILL);
  ASSERT_TRUE(worker_->Wait(10s).has_value());
  StartWorker();
  // Redelivered once its 10 s lease has run out, run again, answered.
  ASSERT_TRUE(CollectEvents([&] { return Count("final", "m-1") > 0; }, 90s))
      << "no final after the restart";
  // Anything late (a duplicate would come right after) has time to show up.
  CollectEvents([] { return false; }, 3s);
  EXPECT_EQ(Count("final", "m-1"), 1u);
  EXPECT_EQ(Count("error", "m-1"), 0u);
  std::string seen;
  for (const auto& e : events_) {
    seen +=
        std::string(e.at("type").as_string()) + "@" + std::string(e.at("run").as_string()) + " ";
  }
  EXPECT_GE(Count("started", "m-1"), 2u) << "the request ran twice, once per worker: " << seen;
}

TEST_F(PipelineE2ETest, DuplicatedRequestsGetOneReplyEach) {
  StartWorker();
  constexpr int kRequestsCount = 30;
  for (int i = 0; i < kRequestsCount; ++i) {
    const std::string id = "m-" + std::to_string(i);
    PublishRequest("c-" + std::to_string(i), id, "A warm woody scent for winter evenings");
    if (i % 3 == 0) PublishRequest("c-" + std::to_string(i), id, "A warm woody scent");
  }
  ASSERT_TRUE(CollectEvents([&] { return Count("final") >= kRequestsCount; }, 120s))
      << Count("final") << " finals";
  CollectEvents([] { return false; }, 3s);
  std::map<std::string, int> finals;
  for (const auto& e : events_) {
    if (e.at("type").as_string() == "final") ++finals[std::string(e.at("request_id").as_string())];
  }
  EXPECT_EQ(finals.size(), static_cast<size_t>(kRequestsCount));
  for (const auto& [id, n] : finals) EXPECT_EQ(n, 1) << id;
  // Events of one request arrive in their order (the conversation is the ordering key).
  std::map<std::string, int64_t> last_seq;  // by run: a redelivered request runs again
  for (const auto& e : events_) {
    const std::string id =
        std::string(e.at("request_id").as_string()) + "/" + std::string(e.at("run").as_string());
    const int64_t seq = e.at("seq").as_int64();
    EXPECT_GT(seq, last_seq[id]) << "event " << seq << " of " << id << " out of order";
    last_seq[id] = seq;
  }
}

TEST_F(PipelineE2ETest, AnUnusableRequestGoesToTheDeadLetterTopicAndSigtermDrains) {
  StartWorker();
  std::promise<Status> done;
  queue_->Publish(kRequests, {queue::Message{.data = "this is not a request"}},
                  [&](Result<std::vector<std::string>> ids) { done.set_value(ids.status()); });
  ASSERT_TRUE(done.get_future().get().ok());
  std::vector<queue::Delivery> dead;
  const auto end = Clock::now() + 30s;
  while (dead.empty() && Clock::now() < end) dead = PullSome(kDeadSub, 500ms);
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].message.data, "this is not a request");
  worker_->Signal(SIGTERM);
  auto status = worker_->Wait(15s);
  ASSERT_TRUE(status.has_value()) << "the worker did not drain within its grace period";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status;
}

}  // namespace
}  // namespace tidepool
