// Starting the web tier from flags: shared by `tidepool web` and `tidepool up`.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "pipeline/app.h"
#include "queue/queue.h"
#include "store/store.h"
#include "web/service.h"

namespace tidepool::cli {

struct WebFlags {
  std::string listen = "127.0.0.1:8080";
  std::string data_dir = "tidepool-data";
  std::string store;              // "" = sqlite:DATA_DIR/web/conversations.db
  std::vector<std::string> apps;  // spec files; empty = FindApps()
  std::string ui_dir;             // "" = the UI built into the binary
  std::string api_keys_file;      // lines "APP KEY": keys required on those apps' API
  // "auto": a subscription of this instance alone, named after the host and a random suffix,
  // for instances that cannot be told apart (Cloud Run); replies are then stored from the
  // shared kRepliesSubscription (web::WebOptions::replies_subscription).
  std::string events_subscription = "tidepool-events-web";
  std::string cors_origin;
  double rate_limit = 5;
};

struct WebHooks {
  std::function<std::string()> extra_metrics;
  std::function<std::string()> dashboard_json;
};

struct RunningWeb {
  std::unique_ptr<store::Store> store;  // declared first: outlives the service
  std::unique_ptr<web::WebService> service;
  std::vector<pipeline::AppSpec> specs;
  std::string app_names;          // "a, b"
  std::string store_description;  // "sqlite:PATH" or "postgresql (HOST)"
};

// apps/*/app.yaml under the working directory, else under the directory above the binary's.
std::vector<std::string> FindApps();

Result<RunningWeb> StartWeb(const WebFlags& flags, queue::Queue& queue, WebHooks hooks);

}  // namespace tidepool::cli
