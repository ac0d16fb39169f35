// Supervisor: runs the instances of ONE worker pool as child processes (any command).
//
// It keeps `desired` instances, split between revisions by percent; restarts crashed ones with
// exponential backoff (crash loops reported); drains on scale-down (SIGTERM to the process
// group, SIGKILL only after the grace period), idle instances first; rolls out new revisions
// within max_surge / max_unavailable; runs liveness probes; applies memory limits with cgroups;
// and keeps the instances' output in a ring and a rotated file (pool/log_ring.h).
//
// Child contract (docs/pools.md): env TIDEPOOL_POOL, TIDEPOOL_REVISION, TIDEPOOL_INSTANCE,
// TIDEPOOL_SUBSCRIPTION, TIDEPOOL_GRACE_PERIOD_SECONDS, TIDEPOOL_STATUS_FD=3 and PORT (when the
// liveness probe is HTTP). Optional status lines on fd 3: "pulling", "inflight N", "draining".
//
// Thread-safety: every method is thread-safe. The supervisor runs its own event loop thread;
// log followers and the log sink run on it and must not call back into the Supervisor.
// Children are reaped with waitpid on their pid only: nothing else in the process may reap
// them (no waitpid(-1), no SIGCHLD set to SIG_IGN).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/json/object.hpp>

#include "common/status.h"
#include "pool/spec.h"

namespace tidepool::pool {

struct SupervisorOptions {
  // Where POOL.log and its rotations go; empty: no log file.
  std::string log_dir{};
  // Added to every instance's environment (e.g. PUBSUB_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT).
  std::map<std::string, std::string> base_env{};
  size_t log_ring_lines = 10'000;
  int64_t log_file_max_bytes = 10 * 1024 * 1024;
  int log_files_kept = 5;
  // Also receives every log line (e.g. the stderr of `tidepool up`).
  std::function<void(const std::string& line)> log_sink{};
  // A started instance counts as available when it reports "pulling", or after running this
  // long without exiting.
  std::chrono::milliseconds ready_after{2'000};
};

enum class InstanceState {
  kStarting,
  kRunning,
  kDraining,
  kBackoff,
  kCrashLoop,
  kStopped,
  kFailed
};

// "starting", "running", "draining", "backoff", "crash-loop", "stopped", "failed".
const char* InstanceStateName(InstanceState state);

struct ExitInfo {
  int code = -1;   // -1 when killed by a signal or when the start failed
  int signal = 0;  // terminating signal, 0 if none
  bool oom = false;
  // Why the start failed (no process ran), e.g. an unreadable secret file.
  std::string start_error{};
  std::chrono::system_clock::time_point at{};
};

struct InstanceStatus {
  std::string id{};
  int revision = 0;
  int pid = 0;  // 0 when no process runs
  InstanceState state = InstanceState::kStarting;
  int inflight = -1;  // -1: the instance does not report it
  bool pulling = false;
  int restarts = 0;
  std::optional<ExitInfo> last_exit{};
  std::optional<std::chrono::system_clock::time_point> started_at{};
};

// What a revision runs. Secret names and env names only: never a value.
struct RevisionStatus {
  int number = 0;
  std::string digest{};
  std::chrono::system_clock::time_point created{};
  std::string command{};
  std::vector<std::string> args{};
  std::vector<std::string> env_keys{};
  std::vector<std::string> secret_keys{};
  int64_t memory_limit_bytes = 0;
};

struct PoolStatus {
  std::string pool{};
  int desired = 0;
  int available = 0;           // instances in state running
  std::map<int, int> split{};  // revision -> percent
  std::vector<RevisionStatus> revisions{};
  std::vector<InstanceStatus> instances{};  // by id; draining ones included
  uint64_t restarts_total = 0;
  uint64_t oom_kills_total = 0;
  uint64_t liveness_failures_total = 0;
  // Why memory limits are not applied, when a revision asks for one and they are not.
  std::string memory_limit_warning{};
};

boost::json::object ToJson(const PoolStatus& status);

class Supervisor {
 public:
  explicit Supervisor(SupervisorOptions options);
  // Stops (drains) whatever still runs.
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts the event loop thread. Deploy may come before or after.
  void Start();
  // Drains every instance (SIGTERM, SIGKILL only after the grace period) and returns when all
  // have exited; later calls to Deploy/Scale/SetSplit/Rollback fail. Idempotent.
  void Stop();

  // The first Deploy names the pool for good. A revision spec that differs (RevisionDigest)
  // from every existing revision makes a new revision that takes 100% of the split, rolled
  // out; an existing one is routed 100% when it is not the only one in the split already;
  // the rest of the spec (scaling, restart, liveness, grace, rollout) applies right away.
  // `desired` becomes spec.instances, or with autoscaling the current count clamped to
  // [min_instances, max_instances] (min_instances on the first deploy).
  // Returns the revision that now takes the traffic.
  Result<int> Deploy(const PoolSpec& spec);
  // REQUIRES desired >= 0. Instances above it are drained, idle ones first.
  Status Scale(int desired);
  // Revision -> percent; the percents sum to 100 and every revision exists. Rolled out.
  Status SetSplit(const std::map<int, int>& split);
  // Routes 100% to `revision`, by default to the one before the revision now holding the
  // largest share. Rolled out like a deploy.
  Status Rollback(std::optional<int> revision = std::nullopt);

  PoolStatus GetStatus() const;
  // The newest `max_lines` log lines, oldest first.
  std::vector<std::string> Logs(size_t max_lines) const;
  // Calls `follower` with every new log line until Unfollow(id). See the thread-safety note.
  uint64_t FollowLogs(std::function<void(const std::string&)> follower);
  void Unfollow(uint64_t id);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::pool
