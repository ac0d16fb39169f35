// Integration tests of the pool supervisor with real child processes: /bin/sh scripts written
// into a temporary directory (python3 for the HTTP liveness target and the memory hog).
#include "pool/supervisor.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "common/cpu_list.h"

namespace tidepool::pool {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kWaitTimeout = 15s;
constexpr auto kPollInterval = 20ms;

bool WaitFor(const std::function<bool()>& condition, Clock::duration timeout = kWaitTimeout) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(kPollInterval);
  }
  return condition();
}

int CountInstances(const PoolStatus& status, std::optional<InstanceState> state,
                   std::optional<int> revision = std::nullopt) {
  int count = 0;
  for (const auto& instance : status.instances) {
    if (state && instance.state != *state) continue;
    if (revision && instance.revision != *revision) continue;
    ++count;
  }
  return count;
}

bool Contains(const std::vector<std::string>& lines, const std::string& text) {
  for (const auto& line : lines) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

int CountContaining(const std::vector<std::string>& lines, const std::string& text) {
  int count = 0;
  for (const auto& line : lines) count += line.find(text) != std::string::npos ? 1 : 0;
  return count;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// A worker that reports "pulling", and on SIGTERM finishes its "work" and exits 0.
constexpr const char* kGracefulWorker = R"(
echo "started $TIDEPOOL_INSTANCE"
trap 'echo "term $TIDEPOOL_INSTANCE" >> "$DIR/events"; sleep 0.3; echo "done $TIDEPOOL_INSTANCE" >> "$DIR/events"; exit 0' TERM
echo pulling >&3
while :; do sleep 0.1; done
)";

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "supervisor_test.XXXXXX");
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    supervisor_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::string WriteScript(const std::string& name, const std::string& body) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << "#!/bin/sh\n" << body;
    ::chmod(path.c_str(), 0755);
    return path;
  }

  PoolSpec Spec(const std::string& name, const std::string& script, int instances) {
    PoolSpec spec;
    spec.name = name;
    spec.subscription = name + "-sub";
    spec.revision.command = "/bin/sh";
    spec.revision.args = {script};
    spec.revision.env = {{"DIR", dir_}};
    spec.instances = instances;
    spec.grace_period = 2s;
    spec.restart.initial_backoff = 100ms;
    spec.restart.max_backoff = 800ms;
    spec.restart.reset_after = 60s;
    spec.restart.crash_loop_restarts = 5;
    spec.restart.crash_loop_window = 60s;
    return spec;
  }

  SupervisorOptions Options() {
    SupervisorOptions options;
    options.log_dir = dir_ + "/logs";
    options.ready_after = 300ms;
    return options;
  }

  Supervisor& StartSupervisor(SupervisorOptions options) {
    supervisor_ = std::make_unique<Supervisor>(std::move(options));
    supervisor_->Start();
    return *supervisor_;
  }
  Supervisor& StartSupervisor() { return StartSupervisor(Options()); }

  std::string dir_;
  std::unique_ptr<Supervisor> supervisor_;
};

TEST_F(SupervisorTest, CrashLoopBackoffGrowsAndIsReported) {
  // Start times of each process, as the supervisor logs them.
  std::mutex mu;
  std::vector<Clock::time_point> starts;
  SupervisorOptions options = Options();
  options.log_sink = [&](const std::string& line) {
    if (line.find(" started pid ") == std::string::npos) return;
    std::lock_guard lock(mu);
    starts.push_back(Clock::now());
  };
  Supervisor& supervisor = StartSupervisor(std::move(options));
  PoolSpec spec = Spec("crashy", WriteScript("crash.sh", "echo boom >&2\nexit 1\n"), 1);
  spec.restart.initial_backoff = 100ms;
  spec.restart.max_backoff = 1600ms;
  spec.restart.crash_loop_restarts = 4;
  ASSERT_TRUE(supervisor.Deploy(spec).ok());

  ASSERT_TRUE(WaitFor(
      [&] { return CountInstances(supervisor.GetStatus(), InstanceState::kCrashLoop) == 1; }));
  // 4 crashes: delays 0.1, 0.2, 0.4, then the crash loop at max_backoff.
  auto logs = supervisor.Logs(1000);
  EXPECT_TRUE(Contains(logs, "restart in 0.1s"));
  EXPECT_TRUE(Contains(logs, "restart in 0.2s"));
  EXPECT_TRUE(Contains(logs, "restart in 0.4s"));
  EXPECT_TRUE(Contains(logs, "crash-loop: 4 crashes"));
  EXPECT_TRUE(Contains(logs, "restart in 1.6s"));
  EXPECT_TRUE(Contains(logs, "crashy/r1/crashy-r1-"));
  EXPECT_TRUE(Contains(logs, "stderr: boom"));
  EXPECT_TRUE(Contains(logs, "exited with code 1"));
  {
    std::lock_guard lock(mu);
    ASSERT_GE(starts.size(), 4u);
    // Each gap is at least its backoff: 100, 200, 400 ms.
    EXPECT_GE(starts[1] - starts[0], 100ms);
    EXPECT_GE(starts[2] - starts[1], 200ms);
    EXPECT_GE(starts[3] - starts[2], 400ms);
  }
  PoolStatus status = supervisor.GetStatus();
  EXPECT_GE(status.restarts_total, 3u);
  ASSERT_EQ(status.instances.size(), 1u);
  ASSERT_TRUE(status.instances[0].last_exit.has_value());
  EXPECT_EQ(status.instances[0].last_exit->code, 1);
  EXPECT_NE(boost::json::serialize(ToJson(status)).find("\"crash-loop\""), std::string::npos);
}

struct PolicyCase {
  RestartPolicy policy;
  int exit_code;
  bool restarted;
  InstanceState final_state;  // when not restarted
};

TEST_F(SupervisorTest, RestartPolicies) {
  const PolicyCase cases[] = {
      {RestartPolicy::kNever, 0, false, InstanceState::kStopped},
      {RestartPolicy::kNever, 1, false, InstanceState::kFailed},
      {RestartPolicy::kOnFailure, 0, false, InstanceState::kStopped},
      {RestartPolicy::kOnFailure, 1, true, InstanceState::kStopped},
      {RestartPolicy::kAlways, 0, true, InstanceState::kStopped},
      {RestartPolicy::kAlways, 1, true, InstanceState::kStopped},
  };
  // All cases run side by side, one supervisor each.
  std::vector<std::unique_ptr<Supervisor>> supervisors;
  for (size_t i = 0; i < std::size(cases); ++i) {
    auto supervisor = std::make_unique<Supervisor>(Options());
    supervisor->Start();
    std::string script =
        WriteScript("exit" + std::to_string(i) + ".sh",
                    "sleep 0.1\nexit " + std::to_string(cases[i].exit_code) + "\n");
    PoolSpec spec = Spec("policy" + std::to_string(i), script, 1);
    spec.restart.policy = cases[i].policy;
    ASSERT_TRUE(supervisor->Deploy(spec).ok());
    supervisors.push_back(std::move(supervisor));
  }
  for (size_t i = 0; i < std::size(cases); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    Supervisor& supervisor = *supervisors[i];
    if (cases[i].restarted) {
      EXPECT_TRUE(WaitFor([&] { return supervisor.GetStatus().restarts_total >= 2; }));
      continue;
    }
    ASSERT_TRUE(
        WaitFor([&] { return CountInstances(supervisor.GetStatus(), cases[i].final_state) == 1; }));
    // Stays put: no restart, and no replacement either.
    std::this_thread::sleep_for(400ms);
    PoolStatus status = supervisor.GetStatus();
    EXPECT_EQ(status.restarts_total, 0u);
    EXPECT_EQ(status.instances.size(), 1u);
    EXPECT_EQ(CountInstances(status, cases[i].final_state), 1);
  }
}

TEST_F(SupervisorTest, ScaleDownDrainsGracefully) {
  Supervisor& supervisor = StartSupervisor();
  ASSERT_TRUE(supervisor.Deploy(Spec("drain", WriteScript("w.sh", kGracefulWorker), 3)).ok());
  ASSERT_TRUE(WaitFor(
      [&] { return CountInstances(supervisor.GetStatus(), InstanceState::kRunning) == 3; }));
  ASSERT_TRUE(supervisor.Scale(1).ok());
  // Draining instances are reported until they exit.
  EXPECT_EQ(CountInstances(supervisor.GetStatus(), InstanceState::kDraining), 2);
  ASSERT_TRUE(WaitFor([&] { return supervisor.GetStatus().instances.size() == 1; }));
  auto events = ReadLines(dir_ + "/events");
  EXPECT_EQ(CountContaining(events, "term "), 2);
  EXPECT_EQ(CountContaining(events, "done "), 2);
  auto logs = supervisor.Logs(1000);
  EXPECT_EQ(CountContaining(logs, "exited with code 0"), 2);
  EXPECT_FALSE(Contains(logs, "killed after grace"));
  EXPECT_EQ(supervisor.GetStatus().restarts_total, 0u);
}

TEST_F(SupervisorTest, IgnoringSigtermIsKilledOnlyAfterGrace) {
  Supervisor& supervisor = StartSupervisor();
  PoolSpec spec = Spec("stubborn",
                       WriteScript("s.sh",
                                   "trap '' TERM\necho pulling >&3\n"
                                   "while :; do sleep 0.1; done\n"),
                       1);
  constexpr auto kGrace = 1500ms;
  spec.grace_period = kGrace;
  ASSERT_TRUE(supervisor.Deploy(spec).ok());
  ASSERT_TRUE(WaitFor(
      [&] { return CountInstances(supervisor.GetStatus(), InstanceState::kRunning) == 1; }));
  auto begin = Clock::now();
  ASSERT_TRUE(supervisor.Scale(0).ok());
  ASSERT_TRUE(WaitFor([&] { return supervisor.GetStatus().instances.empty(); }));
  EXPECT_GE(Clock::now() - begin, kGrace);
  auto logs = supervisor.Logs(1000);
  EXPECT_TRUE(Contains(logs, "killed after grace period 1.5s (SIGKILL)"));
  EXPECT_TRUE(Contains(logs, "exited with signal 9"));
}

TEST_F(SupervisorTest, ScaleDownPicksIdleInstanceFirst) {
  Supervisor& supervisor = StartSupervisor();
  // The first instance to claim the directory is busy (5 in flight); the other is idle.
  std::string script = WriteScript("idle.sh", R"(
if mkdir "$DIR/busy" 2>/dev/null; then n=5; else n=0; fi
echo pulling >&3
echo "inflight $n" >&3
trap 'exit 0' TERM
while :; do sleep 0.1; done
)");
  ASSERT_TRUE(supervisor.Deploy(Spec("idle", script, 2)).ok());
  std::string busy_id;
  ASSERT_TRUE(WaitFor([&] {
    PoolStatus status = supervisor.GetStatus();
    std::multiset<int> inflight;
    for (const auto& instance : status.instances) {
      inflight.insert(instance.inflight);
      if (instance.inflight == 5) busy_id = instance.id;
    }
    return inflight == std::multiset<int>{0, 5} &&
           CountInstances(status, InstanceState::kRunning) == 2;
  }));
  ASSERT_TRUE(supervisor.Scale(1).ok());
  ASSERT_TRUE(WaitFor([&] { return supervisor.GetStatus().instances.size() == 1; }));
  PoolStatus status = supervisor.GetStatus();
  EXPECT_EQ(status.instances[0].id, busy_id);
  EXPECT_TRUE(status.instances[0].pulling);
}

TEST_F(SupervisorTest, RollingUpdateKeepsAvailability) {
  Supervisor& supervisor = StartSupervisor();
  // Takes a moment to become ready, so the rollout has to wait for it.
  std::string script = WriteScript("roll.sh", R"(
trap 'echo "term $TIDEPOOL_INSTANCE" >> "$DIR/events"; exit 0' TERM
sleep 0.2
echo pulling >&3
while :; do sleep 0.1; done
)");
  constexpr int kDesired = 3;
  PoolSpec spec = Spec("roll", script, kDesired);
  spec.rollout = {.max_surge = 1, .max_unavailable = 0};
  ASSERT_EQ(supervisor.Deploy(spec).value(), 1);
  ASSERT_TRUE(WaitFor([&] {
    return CountInstances(supervisor.GetStatus(), InstanceState::kRunning, 1) == kDesired;
  }));
  // Unchanged revision: no new one.
  ASSERT_EQ(supervisor.Deploy(spec).value(), 1);

  spec.revision.env["VERSION"] = "2";
  ASSERT_EQ(supervisor.Deploy(spec).value(), 2);
  int min_available = kDesired;
  int max_instances = 0;
  ASSERT_TRUE(WaitFor([&] {
    PoolStatus status = supervisor.GetStatus();
    min_available = std::min(min_available, status.available);
    max_instances = std::max(max_instances, static_cast<int>(status.instances.size()));
    return status.instances.size() == kDesired &&
           CountInstances(status, InstanceState::kRunning, 2) == kDesired;
  }));
  EXPECT_GE(min_available, kDesired - spec.rollout.max_unavailable);
  // Surge of 1, plus the draining ones that are reported until they exit.
  EXPECT_LE(max_instances, kDesired + 2);
  EXPECT_EQ(CountContaining(ReadLines(dir_ + "/events"), "term roll-r1-"), kDesired);
  EXPECT_FALSE(Contains(supervisor.Logs(1000), "killed after grace"));
  PoolStatus status = supervisor.GetStatus();
  EXPECT_EQ(status.split, (std::map<int, int>{{2, 100}}));
  ASSERT_EQ(status.revisions.size(), 2u);
  EXPECT_NE(status.revisions[0].digest, status.revisions[1].digest);
}

TEST_F(SupervisorTest, SplitAndRollback) {
  Supervisor& supervisor = StartSupervisor();
  std::string script = WriteScript("split.sh", kGracefulWorker);
  PoolSpec spec = Spec("split", script, 4);
  spec.grace_period = 1s;
  spec.rollout = {.max_surge = 2, .max_unavailable = 1};
  ASSERT_EQ(supervisor.Deploy(spec).value(), 1);
  spec.revision.env["VERSION"] = "2";
  ASSERT_EQ(supervisor.Deploy(spec).value(), 2);

  auto settled = [&](int on_r1, int on_r2) {
    return WaitFor([&] {
      PoolStatus status = supervisor.GetStatus();
      return static_cast<int>(status.instances.size()) == on_r1 + on_r2 &&
             CountInstances(status, InstanceState::kRunning, 1) == on_r1 &&
             CountInstances(status, InstanceState::kRunning, 2) == on_r2;
    });
  };
  ASSERT_TRUE(settled(0, 4));
  ASSERT_TRUE(supervisor.SetSplit({{1, 50}, {2, 50}}).ok());
  ASSERT_TRUE(settled(2, 2));
  ASSERT_TRUE(supervisor.SetSplit({{1, 75}, {2, 25}}).ok());
  ASSERT_TRUE(settled(3, 1));
  // 3 instances at 50/50: the remainder goes to the newer revision.
  ASSERT_TRUE(supervisor.SetSplit({{1, 50}, {2, 50}}).ok());
  ASSERT_TRUE(supervisor.Scale(3).ok());
  ASSERT_TRUE(settled(1, 2));

  EXPECT_EQ(supervisor.SetSplit({{1, 50}, {2, 40}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(supervisor.SetSplit({{1, 50}, {7, 50}}).code(), StatusCode::kNotFound);

  // Back to all on r2, then roll back to the previous revision.
  ASSERT_TRUE(supervisor.SetSplit({{2, 100}}).ok());
  ASSERT_TRUE(settled(0, 3));
  ASSERT_TRUE(supervisor.Rollback().ok());
  ASSERT_TRUE(settled(3, 0));
  EXPECT_EQ(supervisor.GetStatus().split, (std::map<int, int>{{1, 100}}));
  EXPECT_EQ(supervisor.Rollback().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(supervisor.Rollback(2).ok());
  ASSERT_TRUE(settled(0, 3));
  EXPECT_EQ(supervisor.Rollback(9).code(), StatusCode::kNotFound);
  EXPECT_FALSE(Contains(supervisor.Logs(10000), "killed after grace"));
}

TEST_F(SupervisorTest, ExecLivenessFailureRestarts) {
  Supervisor& supervisor = StartSupervisor();
  std::string flag = dir_ + "/unhealthy";
  PoolSpec spec = Spec("live", WriteScript("l.sh", kGracefulWorker), 1);
  spec.liveness = LivenessSpec{.exec = {"/bin/sh", "-c", "test ! -e " + flag},
                               .initial_delay = 100ms,
                               .period = 100ms,
                               .timeout = 2s,
                               .failure_threshold = 2};
  ASSERT_TRUE(supervisor.Deploy(spec).ok());
  ASSERT_TRUE(WaitFor(
      [&] { return CountInstances(supervisor.GetStatus(), InstanceState::kRunning) == 1; }));
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(supervisor.GetStatus().liveness_failures_total, 0u);

  std::ofstream(flag) << "x";
  ASSERT_TRUE(WaitFor([&] { return supervisor.GetStatus().liveness_failures_total >= 1; }));
  std::filesystem::remove(flag);
  ASSERT_TRUE(WaitFor([&] {
    PoolStatus status = supervisor.GetStatus();
    return status.restarts_total >= 1 && CountInstances(status, InstanceState::kRunning) == 1;
  }));
  auto logs = supervisor.Logs(1000);
  EXPECT_TRUE(Contains(logs, "liveness probe failed (1/2): exit code 1"));
  EXPECT_TRUE(Contains(logs, "liveness failure: restarting"));
  // The worker was asked to stop, not killed.
  EXPECT_EQ(CountContaining(ReadLines(dir_ + "/events"), "done "), 1);
}

TEST_F(SupervisorTest, HttpLivenessFailureRestarts) {
  Supervisor& supervisor = StartSupervisor();
  std::string flag = dir_ + "/unhealthy";
  std::string script = WriteScript("http.sh", R"(exec python3 -c '
import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        healthy = self.path == "/healthz" and not os.path.exists(sys.argv[1])
        self.send_response(200 if healthy else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
os.write(3, b"pulling\n")
server.serve_forever()
' "$DIR/unhealthy"
)");
  PoolSpec spec = Spec("http", script, 1);
  spec.grace_period = 1s;
  // Generous: a loaded machine may take a while to start python and listen.
  constexpr auto kInitialDelay = 3s;
  spec.liveness = LivenessSpec{.http_path = "/healthz",
                               .initial_delay = kInitialDelay,
                               .period = 100ms,
                               .timeout = 1s,
                               .failure_threshold = 2};
  auto deployed = Clock::now();
  ASSERT_TRUE(supervisor.Deploy(spec).ok());
  // Listening: it said "pulling" once bound.
  ASSERT_TRUE(WaitFor([&] {
    PoolStatus status = supervisor.GetStatus();
    return status.instances.size() == 1 && status.instances[0].pulling;
  }));
  // Some healthy probes first.
  std::this_thread::sleep_until(deployed + kInitialDelay + 500ms);
  EXPECT_EQ(supervisor.GetStatus().liveness_failures_total, 0u);

  std::ofstream(flag) << "x";
  ASSERT_TRUE(WaitFor([&] { return supervisor.GetStatus().liveness_failures_total >= 1; }));
  std::filesystem::remove(flag);
  ASSERT_TRUE(WaitFor([&] {
    PoolStatus status = supervisor.GetStatus();
    return status.restarts_total >= 1 && CountInstances(status, InstanceState::kRunning) == 1;
  }));
  EXPECT_TRUE(Contains(supervisor.Logs(1000), "liveness probe failed (1/2): HTTP 503"));
}

TEST_F(SupervisorTest, EnvContractAndSecretsStayOutOfStatusAndLogs) {
  constexpr const char* kSecret = "s3cr3t-value-0451";
  std::string secret_file = dir_ + "/secret";
  std::ofstream(secret_file) << kSecret << "\n";
  SupervisorOptions options = Options();
  options.base_env = {{"PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"}};
  Supervisor& supervisor = StartSupervisor(std::move(options));
  std::string script = WriteScript("env.sh", R"sh(
env > "$DIR/env-$TIDEPOOL_INSTANCE"
echo "status fd: $(ls /proc/self/fd/3 >/dev/null && echo open)"
echo pulling >&3
trap 'exit 0' TERM
while :; do sleep 0.1; done
)sh");
  PoolSpec spec = Spec("envpool", script, 1);
  spec.revision.env["FOO"] = "bar";
  spec.revision.secrets = {{"API_KEY", secret_file}};
  spec.grace_period = 3s;
  // An HTTP liveness probe gives the instance a PORT; its first probe is far away.
  spec.liveness = LivenessSpec{.http_path = "/healthz", .initial_delay = 600s};
  ASSERT_TRUE(supervisor.Deploy(spec).ok());
  ASSERT_TRUE(WaitFor(
      [&] { return CountInstances(supervisor.GetStatus(), InstanceState::kRunning) == 1; }));
  PoolStatus status = supervisor.GetStatus();
  const std::string id = status.instances[0].id;
  EXPECT_EQ(id.rfind("envpool-r1-", 0), 0u);
  std::string env_file = dir_ + "/env-" + id;
  ASSERT_TRUE(
      WaitFor([&] { return ReadFile(env_file).find("TIDEPOOL_POOL") != std::string::npos; }));
  auto env = ReadLines(env_file);
  std::set<std::string> entries(env.begin(), env.end());
  EXPECT_TRUE(entries.contains("TIDEPOOL_POOL=envpool"));
  EXPECT_TRUE(entries.contains("TIDEPOOL_REVISION=1"));
  EXPECT_TRUE(entries.contains("TIDEPOOL_INSTANCE=" + id));
  EXPECT_TRUE(entries.contains("TIDEPOOL_SUBSCRIPTION=envpool-sub"));
  EXPECT_TRUE(entries.contains("TIDEPOOL_GRACE_PERIOD_SECONDS=3"));
  EXPECT_TRUE(entries.contains("TIDEPOOL_STATUS_FD=3"));
  EXPECT_TRUE(entries.contains("FOO=bar"));
  EXPECT_TRUE(entries.contains("PUBSUB_EMULATOR_HOST=127.0.0.1:8085"));
  EXPECT_TRUE(entries.contains(std::string("API_KEY=") + kSecret));
  EXPECT_TRUE(Contains(env, "PATH="));  // inherited from this process
  bool has_port = false;
  for (const auto& entry : env) {
    if (entry.rfind("PORT=", 0) == 0) has_port = std::stoi(entry.substr(5)) > 0;
  }
  EXPECT_TRUE(has_port);

  std::string json = boost::json::serialize(ToJson(status));
  EXPECT_EQ(json.find(kSecret), std::string::npos);
  EXPECT_NE(json.find("API_KEY"), std::string::npos);
  EXPECT_NE(json.find("\"FOO\""), std::string::npos);
  ASSERT_TRUE(WaitFor([&] { return Contains(supervisor.Logs(100), "status fd: open"); }));
  EXPECT_FALSE(Contains(supervisor.Logs(10000), kSecret));
  EXPECT_EQ(ReadFile(dir_ + "/logs/envpool.log").find(kSecret), std::string::npos);
}

TEST_F(SupervisorTest, InstancesRunAtTheNicenessOfTheirSpec) {
  Supervisor& supervisor = StartSupervisor();
  // Field 19 of /proc/self/stat is the niceness; the command name (field 2) has no spaces.
  std::string script = WriteScript("nice.sh", R"sh(
awk '{print $19}' /proc/$$/stat > "$DIR/nice-$TIDEPOOL_INSTANCE"
echo pulling >&3
trap 'exit 0' TERM
while :; do sleep 0.1; done
)sh");
  PoolSpec spec = Spec("nicepool", script, 1);
  spec.revision.nice = 10;
  ASSERT_TRUE(supervisor.Deploy(spec).ok());
  ASSERT_TRUE(WaitFor(
      [&] { return CountInstances(supervisor.GetStatus(), InstanceState::kRunning) == 1; }));
  const std::string file = dir_ + "/nice-" + supervisor.GetStatus().instances[0].id;
  ASSERT_TRUE(WaitFor([&] { return !ReadFile(file).empty(); }));
  EXPECT_EQ(ReadFile(file), "10\n");
}

TEST_F(SupervisorTest, InstancesRunOnTheCpusOfTheirSpec) {
  const std::vector<int> allowed = AllowedCpus();
  ASSERT_FALSE(allowed.empty());
  const std::string last = std::to_string(allowed.back());
  Supervisor& supervisor = StartSupervisor();
  std::string script = WriteScript("cpus.sh", R"sh(
grep Cpus_allowed_list /proc/$$/status | awk '{print $2}' > "$DIR/cpus-$TIDEPOOL_INSTANCE"
echo pulling >&3
trap 'exit 0' TERM
while :; do sleep 0.1; done
)sh");
  PoolSpec spec = Spec("cpupool", script, 1);
  spec.revision.cpus = last;
  ASSERT_TRUE(supervisor.Deploy(spec).ok());
  ASSERT_TRUE(WaitFor(
      [&] { return CountInstances(supervisor.GetStatus(), InstanceState::kRunning) == 1; }));
  const std::string file = dir_ + "/cpus-" + supervisor.GetStatus().instances[0].id;
  ASSERT_TRUE(WaitFor([&] { return !ReadFile(file).empty(); }));
  EXPECT_EQ(ReadFile(file), last + "\n");
}

TEST_F(SupervisorTest, UnreadableSecretFailsTheStartNamingTheFile) {
  Supervisor& supervisor = StartSupervisor();
  PoolSpec spec = Spec("nosecret", WriteScript("n.sh", "exit 0\n"), 1);
  std::string missing = dir_ + "/no-such-secret";
  spec.revision.secrets = {{"API_KEY", missing}};
  ASSERT_TRUE(supervisor.Deploy(spec).ok());
  ASSERT_TRUE(WaitFor([&] { return supervisor.GetStatus().restarts_total >= 1; }));
  EXPECT_TRUE(Contains(supervisor.Logs(100),
                       "failed to start: secret API_KEY: cannot read file " + missing));
  PoolStatus status = supervisor.GetStatus();
  ASSERT_EQ(status.instances.size(), 1u);
  ASSERT_TRUE(status.instances[0].last_exit.has_value());
  EXPECT_NE(status.instances[0].last_exit->start_error.find(missing), std::string::npos);
  EXPECT_EQ(status.instances[0].pid, 0);
}

TEST_F(SupervisorTest, OomKillCountsAsCrash) {
  Supervisor& supervisor = StartSupervisor();
  constexpr int64_t kLimit = 64 << 20;
  // Touches 512 MiB, far above the limit.
  PoolSpec spec =
      Spec("hog", WriteScript("hog.sh", "exec python3 -c \"b = b'x' * (512 << 20)\"\n"), 1);
  spec.revision.memory_limit_bytes = kLimit;
  ASSERT_TRUE(supervisor.Deploy(spec).ok());
  PoolStatus status = supervisor.GetStatus();
  if (!status.memory_limit_warning.empty()) {
    GTEST_SKIP() << "no writable memory cgroup here: " << status.memory_limit_warning;
  }
  ASSERT_TRUE(WaitFor([&] {
    PoolStatus now = supervisor.GetStatus();
    return now.oom_kills_total >= 1 && now.restarts_total >= 1;
  }));
  status = supervisor.GetStatus();
  ASSERT_EQ(status.instances.size(), 1u);
  EXPECT_TRUE(Contains(supervisor.Logs(100), "OOM-killed (memory limit 67108864 bytes)"));
  bool saw_oom_exit = false;
  ASSERT_TRUE(WaitFor([&] {
    PoolStatus now = supervisor.GetStatus();
    saw_oom_exit = now.instances[0].last_exit && now.instances[0].last_exit->oom;
    return saw_oom_exit;
  }));
}

TEST_F(SupervisorTest, LogRingRotationPartialAndLongLines) {
  SupervisorOptions options = Options();
  options.log_ring_lines = 50;
  options.log_file_max_bytes = 4096;
  options.log_files_kept = 2;
  std::vector<std::string> followed;
  std::mutex mu;
  Supervisor& supervisor = StartSupervisor(std::move(options));
  uint64_t follower = supervisor.FollowLogs([&](const std::string& line) {
    std::lock_guard lock(mu);
    followed.push_back(line);
  });
  std::string script = WriteScript("chatty.sh", R"(
i=0
while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done
head -c 40000 /dev/zero | tr '\0' 'a'
echo
printf 'partial-tail'
exit 0
)");
  PoolSpec spec = Spec("chatty", script, 1);
  ASSERT_TRUE(supervisor.Deploy(spec).ok());
  ASSERT_TRUE(WaitFor(
      [&] { return CountInstances(supervisor.GetStatus(), InstanceState::kStopped) == 1; }));
  supervisor.Unfollow(follower);

  auto ring = supervisor.Logs(1000);
  EXPECT_EQ(ring.size(), 50u);
  EXPECT_TRUE(Contains(ring, "partial-tail"));
  {
    std::lock_guard lock(mu);
    EXPECT_TRUE(Contains(followed, "chatty/r1/chatty-r1-"));
    EXPECT_TRUE(Contains(followed, " line 0"));
    EXPECT_TRUE(Contains(followed, " line 299"));
    // 40000 bytes: two full 16 KiB pieces and the rest.
    std::vector<size_t> long_pieces;
    for (const auto& line : followed) {
      auto a = line.find("aaaa");
      if (a != std::string::npos) long_pieces.push_back(line.size() - a);
    }
    EXPECT_EQ(long_pieces, (std::vector<size_t>{16384, 16384, 40000 - 2 * 16384}));
  }
  std::string base = dir_ + "/logs/chatty.log";
  EXPECT_TRUE(std::filesystem::exists(base));
  EXPECT_TRUE(std::filesystem::exists(base + ".1"));
  EXPECT_TRUE(std::filesystem::exists(base + ".2"));
  EXPECT_FALSE(std::filesystem::exists(base + ".3"));
  EXPECT_NE(ReadFile(base).find("partial-tail"), std::string::npos);
}

TEST_F(SupervisorTest, StopDrainsEverythingAndRefusesLaterCalls) {
  Supervisor& supervisor = StartSupervisor();
  ASSERT_TRUE(supervisor.Deploy(Spec("stop", WriteScript("w.sh", kGracefulWorker), 2)).ok());
  ASSERT_TRUE(WaitFor(
      [&] { return CountInstances(supervisor.GetStatus(), InstanceState::kRunning) == 2; }));
  supervisor.Stop();
  EXPECT_TRUE(supervisor.GetStatus().instances.empty());
  EXPECT_EQ(CountContaining(ReadLines(dir_ + "/events"), "done "), 2);
  EXPECT_EQ(supervisor.Scale(3).code(), StatusCode::kFailedPrecondition);
  EXPECT_FALSE(supervisor.Deploy(Spec("stop", "x", 1)).ok());
}

}  // namespace
}  // namespace tidepool::pool
