// A worker told to drain after its broker died (a machine's supervisor and broker killed
// together: the worker gets SIGTERM from its parent-death signal) cannot settle what it holds;
// nobody is left to SIGKILL it after its grace period, so it must end by itself.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "queue/queue.h"
#include "storage/test_util.h"
#include "test_process.h"

namespace tidepool {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;
using Clock = std::chrono::steady_clock;

TEST(WorkerDrainTest, AWorkerWhoseBrokerIsGoneEndsSoonAfterItsGracePeriod) {
  storage::testing::TempDir dir;
  const int broker_port = testing::FreePort();
  const int admin_port = testing::FreePort();
  const std::string endpoint = "127.0.0.1:" + std::to_string(broker_port);
  auto broker = std::make_unique<ChildProcess>(std::vector<std::string>{
      TIDEPOOL_BIN, "broker", "--data-dir", dir.sub("broker"), "--listen", endpoint,
      "--admin-listen", "127.0.0.1:" + std::to_string(admin_port)});
  ASSERT_TRUE(testing::WaitForPort(broker_port, 20s));
  auto q = queue::OpenQueue({.backend = "pubsub",
                             .endpoint = endpoint,
                             .admin_endpoint = "127.0.0.1:" + std::to_string(admin_port)});
  ASSERT_TRUE(q.ok());
  ASSERT_TRUE((*q)->EnsureTopic("jobs").ok());
  ASSERT_TRUE((*q)->EnsureSubscription({.name = "jobs-workers", .topic = "jobs"}).ok());
  std::promise<Result<std::vector<std::string>>> published;
  (*q)->Publish("jobs", {broker::Message{.data = "a"}, broker::Message{.data = "b"}},
                [&](Result<std::vector<std::string>> ids) { published.set_value(ids); });
  ASSERT_TRUE(published.get_future().get().ok());

  // Handlers that take ten minutes; a grace period of one second.
  ChildProcess worker({ECHO_WORKER_BIN}, {{"PUBSUB_EMULATOR_HOST", endpoint},
                                          {"TIDEPOOL_SUBSCRIPTION", "jobs-workers"},
                                          {"TIDEPOOL_GRACE_PERIOD_SECONDS", "1"},
                                          {"ECHO_WORK_MS", "600000"}});
  const auto leased_by = Clock::now() + 20s;
  bool leased = false;
  while (!leased && Clock::now() < leased_by) {
    auto backlog = (*q)->GetBacklog("jobs-workers");
    leased = backlog.ok() && backlog->leased_messages == 2;
    if (!leased) std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(leased) << "the worker never took the messages";
  q->reset();

  broker->Signal(SIGKILL);
  ASSERT_TRUE(broker->Wait(10s).has_value());
  worker.Signal(SIGTERM);
  // Grace period 1 s + 10 s of slack, and a margin for a loaded machine. Without the deadline
  // the worker waits out its nacks' 30 s call timeout against the dead broker (or longer).
  const auto status = worker.Wait(25s);
  ASSERT_TRUE(status.has_value()) << "the worker was still draining 25 s after SIGTERM";
}

}  // namespace
}  // namespace tidepool
