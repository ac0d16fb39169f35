#include "cli/pool_runner.h"

#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>

#include "pool/spec.h"

namespace tidepool::cli {

Result<std::unique_ptr<pool::PoolManager>> StartPools(const PoolRunnerOptions& options) {
  std::vector<pool::PoolSpec> specs;
  if (!options.config_path.empty()) {
    std::string text = options.config_text;
    if (text.empty()) {
      std::ifstream in(options.config_path);
      if (!in) return Status::NotFound("cannot read config file " + options.config_path);
      std::stringstream read;
      read << in.rdbuf();
      text = read.str();
    }
    TP_ASSIGN_OR_RETURN(specs, pool::ParsePools(text, options.config_path));
  }
  pool::ManagerOptions m;
  m.queue = options.queue;
  m.supervisor.log_dir = options.data_dir.empty() ? "" : options.data_dir + "/logs";
  m.state_dir = options.data_dir.empty() ? "" : options.data_dir + "/pools";
  for (const auto& [name, value] : options.queue_env) m.supervisor.base_env[name] = value;
  if (options.echo_logs) {
    // One mutex so that lines from several pools' threads do not interleave mid-line.
    auto mu = std::make_shared<std::mutex>();
    m.supervisor.log_sink = [mu](const std::string& line) {
      std::lock_guard lock(*mu);
      std::fprintf(stderr, "%s\n", line.c_str());
    };
  }
  auto manager = std::make_unique<pool::PoolManager>(std::move(m));
  manager->Start();
  for (const auto& spec : specs) {
    auto deployed = manager->Deploy(spec);
    if (!deployed.ok()) {
      manager->Stop();
      return Status(deployed.status().code(), options.config_path + ": pool \"" + spec.name +
                                                  "\": " + deployed.status().message());
    }
  }
  // Pools deployed through the API after the config file was read win over the file's
  // version of the same pool: they are the operator's later word.
  auto restored = manager->RestoreSaved();
  if (!restored.ok()) {
    manager->Stop();
    return Status(restored.status().code(),
                  "restoring deployed pools: " + restored.status().message());
  }
  return manager;
}

}  // namespace tidepool::cli
