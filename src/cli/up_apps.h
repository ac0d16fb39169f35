// The chat side of `tidepool up`: llm-sim (when no LLM endpoint is configured), a worker pool
// per app running `tidepool worker --app`, and the web tier with its dashboard.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "broker/broker.h"
#include "cli/up_config.h"
#include "cli/web_runner.h"
#include "common/status.h"
#include "llm/sim/llm_sim.h"
#include "pool/manager.h"
#include "queue/queue.h"

namespace tidepool::cli {

struct UpApps {
  std::unique_ptr<llm::sim::LlmSim> sim;
  std::string llm_base_url;
  RunningWeb web;
  std::vector<std::string> pool_names;  // the pools started for the apps
};

// The backlog of each subscription, for the dashboard and metrics.
using BacklogSource = std::function<std::vector<broker::SubscriptionBacklog>()>;

// Starts llm-sim (unless config.llm_base_url is set), deploys a pool per app to `pools` and
// starts the web tier on `queue`. The queue and pools outlive the result.
Result<UpApps> StartUpApps(const UpConfig& config, BacklogSource backlogs, queue::Queue* queue,
                           pool::PoolManager* pools);

}  // namespace tidepool::cli
