// PoolManager: the pools of one `tidepool up` / `tidepool pool` process. It owns a Supervisor
// per pool, runs the autoscaler loop (backlog read straight from the queue every
// poll_interval, no metrics pipeline in between), and serves the pools admin API
// (docs/pools.md, "Operating pools") and Prometheus metrics.
//
// Thread-safety: every method is thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/json/object.hpp>

#include "admin/admin_server.h"
#include "common/status.h"
#include "pool/autoscaler.h"
#include "pool/spec.h"
#include "pool/supervisor.h"

namespace tidepool::queue {
class Queue;
}

namespace tidepool::pool {

struct ManagerOptions {
  // Backlog source for the autoscaler (not owned; outlives the manager). Null: autoscaled
  // pools see no metrics and keep their count.
  queue::Queue* queue = nullptr;
  // Template for every pool's supervisor (log dir, base env, ring sizes, log sink).
  SupervisorOptions supervisor{};
  // Scaling decisions kept per pool for describe.
  size_t decision_history = 50;
  // Log lines kept per pool for the logs API (with sequence numbers for --follow).
  size_t log_lines = 10'000;
  // How often the autoscaler loop wakes to see which pools are due.
  std::chrono::milliseconds loop_tick{100};
  // Where pools deployed through the API are kept (NAME.yaml, the spec as deployed), so that a
  // restart runs them again; empty: not kept.
  std::string state_dir{};
};

struct DeployResult {
  std::string name;
  int revision = 0;
  bool new_revision = false;
  bool new_pool = false;
};

struct LogLine {
  uint64_t seq = 0;
  std::string text;
};

struct LogsPage {
  std::vector<LogLine> lines;
  uint64_t next = 0;  // pass as `after` to get what follows
};

class PoolManager {
 public:
  explicit PoolManager(ManagerOptions options);
  ~PoolManager();  // Stop()
  PoolManager(const PoolManager&) = delete;
  PoolManager& operator=(const PoolManager&) = delete;

  // Starts the autoscaler loop.
  void Start();
  // Drains every pool (in parallel) and stops the loop. Idempotent.
  void Stop();

  // Creates the pool or updates it (a new revision when the revision spec changed). Turns
  // autoscaling back on when the spec has it.
  Result<DeployResult> Deploy(const PoolSpec& spec);
  // A fixed count; turns autoscaling off for the pool until the next deploy that has it.
  Status Scale(const std::string& pool, int instances);
  Status SetSplit(const std::string& pool, const std::map<int, int>& split);
  Result<int> Rollback(const std::string& pool, std::optional<int> revision);

  // Deploys the pools kept in state_dir (those deployed through the API before a restart).
  // Returns the names deployed; a file that no longer parses is reported and skipped.
  Result<std::vector<std::string>> RestoreSaved();

  std::vector<std::string> PoolNames() const;
  Result<PoolStatus> GetStatus(const std::string& pool) const;
  boost::json::object ListJson() const;
  Result<boost::json::object> DescribeJson(const std::string& pool) const;
  std::vector<Decision> Decisions(const std::string& pool) const;
  // The newest `lines` lines when after == 0, else the lines after sequence number `after`.
  Result<LogsPage> Logs(const std::string& pool, size_t lines, uint64_t after) const;
  std::string MetricsText() const;

  // Admin API routes: prefix "/v1/pools" (list, describe, deploy, :scale, :updateSplit,
  // :rollback, /logs).
  admin::RequestHandler ApiHandler();

 private:
  struct Pool;
  void Loop();
  void EvaluatePool(Pool& pool, ScalerClock::time_point now);
  Result<std::shared_ptr<Pool>> Find(const std::string& name) const;
  admin::Response Handle(const admin::Request& request);
  Status SaveSpec(const std::string& name, const std::string& yaml) const;

  const ManagerOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Pool>> pools_;
  bool stopping_ = false;
  std::condition_variable cv_;
  std::thread loop_;
};

}  // namespace tidepool::pool
