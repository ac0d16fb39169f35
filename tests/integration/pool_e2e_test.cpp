// Worker pools end to end, with everything real: `tidepool up` (broker + pool supervisor) as a
// child process, pools deployed with `tidepool pools deploy`, instances running the example
// echo worker over gRPC, messages published through the pubsub queue backend.
//
// What must hold: every published message is processed (0 lost) while the pool scales
// 1 -> 4 -> 1 and while a new revision rolls out under load; scale-down and rollouts drain,
// never SIGKILL. Duplicates are counted and reported (at-least-once delivery allows them).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "admin/http_client.h"
#include "queue/queue.h"
#include "storage/test_util.h"
#include "test_process.h"

namespace tidepool {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;
using testing::ChildProcess;
using Clock = std::chrono::steady_clock;

// How long `tidepool up` may take to stop after SIGTERM: instances drain within their 20 s
// grace period, the broker ends its streams and commits.
constexpr auto kStopLimit = std::chrono::seconds(60);

constexpr char kTopic[] = "jobs";
constexpr char kSubscription[] = "jobs-workers";

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Processed messages as the echo workers recorded them: message id -> times handled.
std::map<std::string, int> ReadRecord(const std::string& path) {
  std::map<std::string, int> seen;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const auto space = line.find(' ');
    if (space == std::string::npos) continue;  // a line still being written
    seen[line.substr(space + 1)]++;            // keyed by data: unique per published message
  }
  return seen;
}

class PoolE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    port_ = testing::FreePort();
    admin_port_ = testing::FreePort();
    record_ = dir_.sub("record.txt");
    StartUp();
  }

  // Starts `tidepool up` on the fixture's data dir and ports, and the queue that talks to it.
  void StartUp() {
    up_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{TIDEPOOL_BIN, "up", "--no-apps", "--data-dir", dir_.sub("data"),
                                 "--broker-listen", "127.0.0.1:" + std::to_string(port_),
                                 "--admin-listen", "127.0.0.1:" + std::to_string(admin_port_)});
    ASSERT_TRUE(testing::WaitForPort(port_, 20s)) << "tidepool up did not listen";
    ASSERT_TRUE(testing::WaitForPort(admin_port_, 20s));
    queue::QueueOptions qo;
    qo.backend = "pubsub";
    qo.endpoint = "127.0.0.1:" + std::to_string(port_);
    qo.admin_endpoint = "127.0.0.1:" + std::to_string(admin_port_);
    auto q = queue::OpenQueue(qo);
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    queue_ = std::move(*q);
    ASSERT_TRUE(queue_->EnsureTopic(kTopic).ok());
    queue::SubscriptionSpec sub;
    sub.name = kSubscription;
    sub.topic = kTopic;
    sub.ack_deadline_seconds = 30;
    auto ensured = queue_->EnsureSubscription(sub);
    ASSERT_TRUE(ensured.ok()) << ensured.ToString();
  }

  void TearDown() override {
    if (!up_) return;
    queue_.reset();
    up_->Signal(SIGTERM);
    auto st = up_->Wait(kStopLimit);
    ASSERT_TRUE(st.has_value()) << "tidepool up did not stop within 60 s of SIGTERM";
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << "wait status " << *st;
  }

  std::string Admin() const { return "127.0.0.1:" + std::to_string(admin_port_); }

  // Runs `tidepool pools ARGS...` and returns its exit code.
  int Cli(const std::string& args) {
    const std::string cmd =
        std::string(TIDEPOOL_BIN) + " pools " + args + " --admin " + Admin() + " >/dev/null";
    return std::system(cmd.c_str()) >> 8;
  }

  void Deploy(const std::string& yaml) {
    const std::string path = dir_.sub("pool.yaml");
    std::ofstream(path) << yaml;
    ASSERT_EQ(Cli("deploy -f " + path), 0) << yaml;
  }

  json::value Describe(const std::string& pool) {
    auto reply = admin::HttpFetch({.endpoint = Admin(), .target = "/v1/pools/" + pool});
    if (!reply.ok() || reply->status != 200) return json::value();
    boost::system::error_code ec;
    return json::parse(reply->body, ec);
  }

  std::string PoolLogs(const std::string& pool) {
    auto reply = admin::HttpFetch(
        {.endpoint = Admin(), .target = "/v1/pools/" + pool + "/logs?lines=100000"});
    if (!reply.ok()) return "";
    std::string out;
    const json::value parsed = json::parse(reply->body);
    for (const auto& l : parsed.at("lines").as_array()) {
      out += std::string(l.at("text").as_string()) + "\n";
    }
    return out;
  }

  static int CountInstances(const json::value& d, const char* state, bool need_pulling = false,
                            int revision = 0) {
    if (!d.is_object()) return 0;
    int n = 0;
    for (const auto& i : d.at("instances").as_array()) {
      if (i.at("state").as_string() != state) continue;
      if (need_pulling && !i.at("pulling").as_bool()) continue;
      if (revision != 0 && i.at("revision").as_int64() != revision) continue;
      ++n;
    }
    return n;
  }

  template <typename Pred>
  bool WaitFor(Pred pred, std::chrono::milliseconds timeout) {
    const auto end = Clock::now() + timeout;
    while (Clock::now() < end) {
      if (pred()) return true;
      std::this_thread::sleep_for(50ms);
    }
    return pred();
  }

  // Publishes `count` messages with data "PREFIX-i", `per_second` (0: as fast as possible).
  // Returns the data of every message whose publish succeeded.
  std::set<std::string> Publish(const std::string& prefix, int count, int per_second = 0) {
    std::set<std::string> published;
    std::mutex mu;
    std::atomic<int> failures{0};
    {
      queue::Publisher publisher(*queue_, kTopic);
      const auto t0 = Clock::now();
      for (int i = 0; i < count; ++i) {
        if (per_second > 0) {
          std::this_thread::sleep_until(
              t0 + std::chrono::microseconds(int64_t{1'000'000} * i / per_second));
        }
        std::string data = prefix + "-" + std::to_string(i);
        publisher.Publish({.data = data}, [&, data](Result<std::string> id) {
          std::lock_guard lock(mu);
          if (id.ok()) {
            published.insert(data);
          } else {
            failures++;
          }
        });
      }
      publisher.Flush();
    }
    EXPECT_EQ(failures.load(), 0);
    return published;
  }

  storage::testing::TempDir dir_;
  int port_ = 0;
  int admin_port_ = 0;
  std::string record_;
  std::unique_ptr<ChildProcess> up_;
  std::unique_ptr<queue::Queue> queue_;
};

std::string EchoPool(const std::string& record, const std::string& extra_env,
                     const std::string& scaling) {
  return std::string("name: echo\n") + "command: " + ECHO_WORKER_BIN + "\n" +
         "subscription: " + kSubscription + "\n" + "grace_period: 20s\n" +
         "env:\n  ECHO_RECORD: " + record + "\n  ECHO_WORK_MS: \"5\"\n" +
         "  TIDEPOOL_MAX_OUTSTANDING_MESSAGES: \"8\"\n" + extra_env + scaling;
}

TEST_F(PoolE2ETest, TwentyThousandMessagesWhileScalingOneToFourToOne) {
  constexpr int kMessages = 20'000;
  Deploy(EchoPool(record_, "",
                  "autoscaling:\n"
                  "  min: 1\n  max: 4\n  poll_interval: 1s\n"
                  "  triggers:\n    - type: backlog\n      target: 500\n"
                  "  scale_up:\n    policies:\n      - {type: instances, value: 4, period: 1s}\n"
                  "  scale_down:\n    stabilization_window: 3s\n"
                  "    policies:\n      - {type: percent, value: 100, period: 1s}\n"));
  ASSERT_TRUE(WaitFor([&] { return CountInstances(Describe("echo"), "running", true) == 1; }, 30s))
      << json::serialize(Describe("echo"));

  // Watch the pool while the burst goes in: the scale-up decision, the new instances pulling.
  std::atomic<bool> watching{true};
  std::atomic<int> max_desired{0};
  std::atomic<double> decided_at{-1}, second_pulling_at{-1}, all_pulling_at{-1};
  const auto t0 = Clock::now();
  std::thread watcher([&] {
    while (watching) {
      const json::value d = Describe("echo");
      if (d.is_object()) {
        const int desired = static_cast<int>(d.at("desired").as_int64());
        if (desired > max_desired) max_desired = desired;
        if (desired > 1 && decided_at < 0) decided_at = SecondsSince(t0);
        const int pulling = CountInstances(d, "running", true);
        if (pulling >= 2 && second_pulling_at < 0) second_pulling_at = SecondsSince(t0);
        if (pulling >= 4 && all_pulling_at < 0) all_pulling_at = SecondsSince(t0);
      }
      std::this_thread::sleep_for(20ms);
    }
  });
  const std::set<std::string> published = Publish("burst", kMessages);
  const double published_at = SecondsSince(t0);
  ASSERT_EQ(published.size(), static_cast<size_t>(kMessages));

  const bool all_processed =
      WaitFor([&] { return ReadRecord(record_).size() >= static_cast<size_t>(kMessages); }, 180s);
  const double processed_at = SecondsSince(t0);
  const bool back_to_one = WaitFor(
      [&] {
        const json::value d = Describe("echo");
        return d.is_object() && d.at("desired").as_int64() == 1 &&
               CountInstances(d, "draining") == 0 && CountInstances(d, "running") == 1;
      },
      60s);
  watching = false;
  watcher.join();

  const auto seen = ReadRecord(record_);
  size_t duplicates = 0, lost = 0;
  for (const auto& [data, times] : seen) duplicates += static_cast<size_t>(times - 1);
  for (const auto& data : published) lost += seen.count(data) == 0;
  std::printf(
      "[ pool e2e ] %d messages: published in %.2f s, all processed at %.2f s; lost %zu, "
      "duplicates %zu; max desired %d\n"
      "[ scale reaction ] burst start -> scale-up decision %.2f s, -> 2nd instance pulling "
      "%.2f s, -> 4 instances pulling %.2f s (poll interval 1 s)\n",
      kMessages, published_at, processed_at, lost, duplicates, max_desired.load(),
      decided_at.load(), second_pulling_at.load(), all_pulling_at.load());
  EXPECT_TRUE(all_processed);
  EXPECT_EQ(lost, 0u);
  EXPECT_EQ(max_desired.load(), 4) << "the pool never reached 4 instances";
  EXPECT_TRUE(back_to_one) << json::serialize(Describe("echo"));
  const std::string logs = PoolLogs("echo");
  EXPECT_EQ(logs.find("SIGKILL"), std::string::npos) << "an instance was killed:\n" << logs;
}

TEST_F(PoolE2ETest, RollingUpdateUnderLoadLosesNothing) {
  Deploy(EchoPool(record_, "", "instances: 3\nrollout: {max_surge: 1, max_unavailable: 0}\n"));
  ASSERT_TRUE(WaitFor([&] { return CountInstances(Describe("echo"), "running", true) == 3; }, 30s));

  // A steady load over the whole rollout.
  std::set<std::string> published;
  std::thread load([&] { published = Publish("steady", 6'000, 1'000); });
  std::this_thread::sleep_for(1s);
  Deploy(EchoPool(record_, "  ECHO_REVISION_MARK: \"two\"\n",
                  "instances: 3\nrollout: {max_surge: 1, max_unavailable: 0}\n"));
  int min_available = 3;
  const bool rolled = WaitFor(
      [&] {
        const json::value d = Describe("echo");
        if (!d.is_object()) return false;
        min_available = std::min(min_available, CountInstances(d, "running"));
        return CountInstances(d, "running", true, 2) == 3 && CountInstances(d, "running") == 3 &&
               CountInstances(d, "draining") == 0;
      },
      60s);
  load.join();
  ASSERT_EQ(published.size(), 6'000u);
  // Half the workers' 60 s lease: a message an old instance was sent but never read must come
  // back at once (its stream is half-closed and read out, what arrives is nacked), not after
  // its lease runs out.
  ASSERT_TRUE(WaitFor([&] { return ReadRecord(record_).size() >= published.size(); }, 30s))
      << "messages sent to drained instances waited out their lease";
  const auto seen = ReadRecord(record_);
  size_t lost = 0, duplicates = 0;
  for (const auto& data : published) lost += seen.count(data) == 0;
  for (const auto& [data, times] : seen) duplicates += static_cast<size_t>(times - 1);
  std::printf(
      "[ rolling update ] 6000 messages at 1000/s during a rollout: lost %zu, "
      "duplicates %zu, fewest running instances seen %d\n",
      lost, duplicates, min_available);
  EXPECT_TRUE(rolled) << json::serialize(Describe("echo"));
  EXPECT_EQ(lost, 0u);
  EXPECT_GE(min_available, 3) << "max_unavailable 0 was not respected";
  const std::string logs = PoolLogs("echo");
  EXPECT_EQ(logs.find("SIGKILL"), std::string::npos) << logs;
}

TEST_F(PoolE2ETest, SplitAndRollbackThroughTheCli) {
  Deploy(EchoPool(record_, "", "instances: 2\n"));
  Deploy(EchoPool(record_, "  ECHO_REVISION_MARK: \"two\"\n", "instances: 2\n"));
  auto on = [&](int revision) {
    return CountInstances(Describe("echo"), "running", true, revision);
  };
  ASSERT_TRUE(WaitFor([&] { return on(2) == 2 && on(1) == 0; }, 30s))
      << json::serialize(Describe("echo"));

  ASSERT_EQ(Cli("update-split echo --to-revisions r1=50,r2=50"), 0);
  EXPECT_TRUE(WaitFor([&] { return on(1) == 1 && on(2) == 1; }, 30s))
      << json::serialize(Describe("echo"));
  EXPECT_NE(Cli("update-split echo --to-revisions 1=60,2=60"), 0) << "percents must sum to 100";
  EXPECT_NE(Cli("update-split echo --to-revisions 1=50,7=50"), 0) << "revision 7 does not exist";

  ASSERT_EQ(Cli("rollback echo --to-revision 1"), 0);
  EXPECT_TRUE(WaitFor([&] { return on(1) == 2 && on(2) == 0; }, 30s))
      << json::serialize(Describe("echo"));
  const json::value d = Describe("echo");
  ASSERT_TRUE(d.is_object());
  EXPECT_EQ(d.at("revisions").as_array().size(), 2u);
  for (const auto& r : d.at("revisions").as_array()) {
    EXPECT_EQ(r.at("percent").as_int64(), r.at("revision").as_int64() == 1 ? 100 : 0);
  }

  // Work published now is done by the rolled-back revision; nothing is lost on the way.
  const std::set<std::string> published = Publish("after-rollback", 500);
  ASSERT_TRUE(WaitFor([&] { return ReadRecord(record_).size() >= published.size(); }, 30s));
  EXPECT_EQ(PoolLogs("echo").find("SIGKILL"), std::string::npos);
}

TEST_F(PoolE2ETest, DeployedPoolsSurviveARestart) {
  Deploy(EchoPool(record_, "", "instances: 2\n"));
  ASSERT_TRUE(WaitFor([&] { return CountInstances(Describe("echo"), "running", true) == 2; }, 30s));
  queue_.reset();
  up_->Signal(SIGTERM);
  auto st = up_->Wait(kStopLimit);
  ASSERT_TRUE(st.has_value() && WIFEXITED(*st) && WEXITSTATUS(*st) == 0);
  StartUp();
  ASSERT_TRUE(WaitFor([&] { return CountInstances(Describe("echo"), "running", true) == 2; }, 30s))
      << "the deployed pool did not come back: " << json::serialize(Describe("echo"));
  const std::set<std::string> published = Publish("after-restart", 200);
  EXPECT_TRUE(WaitFor([&] { return ReadRecord(record_).size() >= published.size(); }, 30s));
}

// Thread name -> the niceness of each thread of that name, from /proc.
std::map<std::string, std::vector<int>> ThreadNiceness(pid_t pid) {
  std::map<std::string, std::vector<int>> out;
  const std::string task = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& entry : std::filesystem::directory_iterator(task)) {
    std::ifstream comm_file(entry.path() / "comm");
    std::ifstream stat_file(entry.path() / "stat");
    std::string comm;
    std::string stat;
    if (!std::getline(comm_file, comm) || !std::getline(stat_file, stat)) continue;  // exited
    // After the ")" that ends the name come stat(5)'s fields from 3 (state) on; nice is 19.
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));
    const std::vector<std::string> fields{std::istream_iterator<std::string>(rest), {}};
    if (fields.size() > 19 - 3) out[comm].push_back(std::stoi(fields[19 - 3]));
  }
  return out;
}

// Promise 3 inside the process: the broker's gRPC server, which serves the pools' instances,
// runs at the app workers' priority (apps.nice, 10 by default), below the rest of `up`.
TEST_F(PoolE2ETest, TheBrokersGrpcServerRunsAtTheAppWorkersPriority) {
  errno = 0;
  const int own = ::getpriority(PRIO_PROCESS, 0);
  ASSERT_EQ(errno, 0);
  const int lowered = std::max(own, 10);
  // The server has served calls: the fixture's queue made the topic and subscription.
  const auto threads = ThreadNiceness(up_->pid());
  for (const char* name : {"pubsub", "nexting_thread", "grpc_global_tim"}) {
    ASSERT_TRUE(threads.contains(name)) << "no thread named " << name;
    for (int nice : threads.at(name)) EXPECT_EQ(nice, lowered) << name;
  }
  for (const char* name : {"log-flush", "broker-timer", "pool-manager"}) {
    ASSERT_TRUE(threads.contains(name)) << "no thread named " << name;
    for (int nice : threads.at(name)) EXPECT_EQ(nice, own) << name;
  }
}

TEST_F(PoolE2ETest, CliReportsClearErrors) {
  EXPECT_NE(Cli("describe nosuchpool"), 0);
  EXPECT_NE(Cli("scale nosuchpool --instances 2"), 0);
  const std::string bad = dir_.sub("bad.yaml");
  std::ofstream(bad) << "name: x\ncommand: /bin/true\nsubscription: s\ninstances: many\n";
  EXPECT_NE(Cli("deploy -f " + bad), 0);
  auto reply = admin::HttpFetch({.method = "POST",
                                 .endpoint = Admin(),
                                 .target = "/v1/pools?origin=bad.yaml",
                                 .body = "name: x\ncommand: /bin/true\nsubscription: s\n"
                                         "instances: many\n"});
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->status, 400);
  EXPECT_NE(reply->body.find("bad.yaml:4"), std::string::npos) << reply->body;
  EXPECT_NE(reply->body.find("instances"), std::string::npos) << reply->body;
}

}  // namespace
}  // namespace tidepool
