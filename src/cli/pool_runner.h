// Running worker pools inside a tidepool process: reading the pools of a config file, the
// manager with its admin routes, and the environment its instances get.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "admin/admin_server.h"
#include "common/status.h"
#include "pool/manager.h"

namespace tidepool::queue {
class Queue;
}

namespace tidepool::cli {

struct PoolRunnerOptions {
  std::string config_path;  // empty: no pools at start (they can be deployed later)
  std::string config_text;  // the file's text when already read (else it is read here)
  queue::Queue* queue = nullptr;
  std::string data_dir;  // logs go to DATA_DIR/logs
  // The queue the instances reach, as variables of their environment (queue::QueueEnvOf).
  std::map<std::string, std::string> queue_env;
  bool echo_logs = true;  // instance log lines to stderr too
};

// Starts a manager with the pools of the config file deployed. Errors name the file and line.
Result<std::unique_ptr<pool::PoolManager>> StartPools(const PoolRunnerOptions& options);

}  // namespace tidepool::cli
