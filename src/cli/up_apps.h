// The chat side of `tidepool up`: llm-sim (when no LLM endpoint is configured), a worker pool
// per app running `tidepool worker --app`, and the web tier with its dashboard.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "broker/broker.h"
#include "cli/web_runner.h"
#include "common/status.h"
#include "llm/sim/llm_sim.h"
#include "pool/manager.h"
#include "queue/queue.h"

namespace tidepool::cli {

struct UpAppsOptions {
  std::vector<std::string> apps;  // spec files; empty: FindApps()
  std::string data_dir;
  std::string web_listen;
  std::string llm_base_url;  // empty: start llm-sim on llm_sim_listen
  std::string llm_sim_listen;
  broker::Broker* broker = nullptr;
  queue::Queue* queue = nullptr;
  pool::PoolManager* pools = nullptr;
};

struct UpApps {
  std::unique_ptr<llm::sim::LlmSim> sim;
  std::string llm_base_url;
  RunningWeb web;
  std::vector<std::string> pool_names;  // the pools started for the apps
};

Result<UpApps> StartUpApps(const UpAppsOptions& options);

}  // namespace tidepool::cli
