#include "cli/up_apps.h"

#include <atomic>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <filesystem>

#include "broker/report.h"
#include "common/cpu_list.h"
#include "pipeline/runner.h"
#include "pool/spec.h"

namespace tidepool::cli {

namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

// The pool of an app: `tidepool worker --app FILE` instances scaled on the request backlog.
std::string AppPoolYaml(const pipeline::AppSpec& app, const std::string& spec_file,
                        const std::string& llm_url, const UpConfig& config) {
  std::error_code ec;
  const std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  const std::string file = fs::absolute(spec_file, ec).string();
  const std::string data = fs::absolute(config.data_dir, ec).string();
  auto quoted = [](const std::string& s) { return json::serialize(json::value(s)); };
  std::string env = "env:\n  TIDEPOOL_LLM_BASE_URL: " + quoted(llm_url) + "\n" +
                    "  TIDEPOOL_DATA_DIR: " + quoted(data) + "\n";
  if (!config.llm_api_key_env.empty()) {
    env += "  TIDEPOOL_LLM_API_KEY_ENV: " + quoted(config.llm_api_key_env) + "\n";
  }
  if (!config.llm_api_key_file.empty()) {
    env +=
        "  TIDEPOOL_LLM_API_KEY_FILE: " + quoted(fs::absolute(config.llm_api_key_file, ec)) + "\n";
  }
  std::string args = "args: [worker, --app, " + quoted(file);
  if (config.llm_max_concurrency > 0) {
    args += ", --llm-max-concurrency, " + quoted(std::to_string(config.llm_max_concurrency));
  }
  args += "]\n";
  const std::vector<int> app_cpus = AppCpus(config);
  const std::string cpus =
      app_cpus.empty() ? "" : "cpus: " + quoted(FormatCpuList(app_cpus)) + "\n";
  return "name: " + app.name + "\n" + "subscription: " + app.request_subscription + "\n" +
         "command: " + quoted(self) + "\n" + args + env + "grace_period: 30s\n" +
         "nice: " + std::to_string(config.app_nice) + "\n" + cpus + "autoscaling:\n" +
         "  min: " + std::to_string(config.app_min_instances) + "\n" +
         "  max: " + std::to_string(config.app_max_instances) + "\n" + "  triggers:\n" +
         "    - {type: backlog, target: " + std::to_string(config.app_backlog_target) + "}\n";
}

std::string DashboardJson(const BacklogSource& backlogs, pool::PoolManager* pools,
                          web::WebService* service) {
  json::array pool_list;
  json::array decisions;
  for (const std::string& name : pools->PoolNames()) {
    auto described = pools->DescribeJson(name);
    if (described.ok()) pool_list.push_back(std::move(described).value());
    for (const auto& d : pools->Decisions(name)) {
      const auto ago = std::chrono::duration<double>(pool::ScalerClock::now() - d.at).count();
      decisions.push_back(json::object{{"pool", name},
                                       {"seconds_ago", ago},
                                       {"from", d.current},
                                       {"to", d.desired},
                                       {"reason", d.reason}});
    }
  }
  json::array subscriptions;
  for (const auto& b : backlogs()) {
    const json::value row = json::parse(broker::BacklogJson({b}));
    for (const auto& s : row.at("subscriptions").as_array()) subscriptions.push_back(s);
  }
  json::object web;
  if (service != nullptr) {
    const web::WebStats s = service->stats();
    web = json::object{{"messages_accepted_total", s.messages_accepted},
                       {"messages_replayed_total", s.messages_replayed},
                       {"replies_stored_total", s.replies_stored},
                       {"events_received_total", s.events_received},
                       {"publish_failures_total", s.publish_failures},
                       {"rate_limited_total", s.rate_limited}};
    auto summary = [](const web::LatencySummary& l) {
      return json::object{{"p50", l.p50_ms},
                          {"p99", l.p99_ms},
                          {"count", l.count},
                          {"window_seconds", l.window_seconds}};
    };
    web["post_latency_ms"] = summary(service->PostLatency());
    web["post_store_ms"] = summary(service->PostStoreLatency());
    web["post_publish_ms"] = summary(service->PostPublishLatency());
  }
  return json::serialize(json::object{{"pools", std::move(pool_list)},
                                      {"subscriptions", std::move(subscriptions)},
                                      {"web", std::move(web)},
                                      {"decisions", std::move(decisions)}});
}

}  // namespace

Result<UpApps> StartUpApps(const UpConfig& config, BacklogSource backlogs, queue::Queue* queue,
                           pool::PoolManager* pools) {
  UpApps up;
  std::vector<std::string> files = config.app_files.empty() ? FindApps() : config.app_files;
  if (files.empty()) {
    return Status::InvalidArgument(
        "no apps found (apps/*/app.yaml); pass --app FILE, or --no-apps for broker and pools only");
  }
  up.llm_base_url = config.llm_base_url;
  if (up.llm_base_url.empty()) {
    llm::sim::SimOptions so;
    so.listen = config.llm_sim_listen;
    so.threads = 1;
    so.nice = static_cast<int>(config.app_nice);
    so.cpus = AppCpus(config);
    so.ttft = llm::sim::TtftModel::Lognormal(350, 1200);
    so.tokens_per_second = 40;
    so.output_tokens_min = 60;
    so.output_tokens_max = 140;
    TP_ASSIGN_OR_RETURN(up.sim, llm::sim::LlmSim::Start(so));
    up.llm_base_url = up.sim->base_url();
  }
  const std::vector<std::string> existing = pools->PoolNames();
  for (const std::string& file : files) {
    TP_ASSIGN_OR_RETURN(pipeline::AppSpec app, pipeline::LoadApp(file));
    if (std::find(existing.begin(), existing.end(), app.name) != existing.end()) continue;
    const std::string yaml = AppPoolYaml(app, file, up.llm_base_url, config);
    TP_ASSIGN_OR_RETURN(pool::PoolSpec spec, pool::ParsePool(yaml, "app " + app.name));
    TP_RETURN_IF_ERROR(pools->Deploy(spec).status());
    up.pool_names.push_back(app.name);
  }
  WebFlags web_flags;
  web_flags.listen = config.web_listen;
  web_flags.data_dir = config.data_dir;
  web_flags.store = config.store_url;
  web_flags.apps = files;
  web_flags.ui_dir = config.ui_dir;
  web_flags.api_keys_file = config.api_keys_file;
  web_flags.cors_origin = config.cors_origin;
  web_flags.rate_limit = config.rate_limit;
  // The hooks run once the service exists; it is reached through the shared slot.
  auto service_slot = std::make_shared<std::atomic<web::WebService*>>(nullptr);
  WebHooks hooks;
  hooks.extra_metrics = [backlogs, pools] {
    return broker::BacklogMetrics(backlogs()) + pools->MetricsText();
  };
  hooks.dashboard_json = [backlogs, pools, service_slot] {
    return DashboardJson(backlogs, pools, service_slot->load());
  };
  TP_ASSIGN_OR_RETURN(up.web, StartWeb(web_flags, *queue, std::move(hooks)));
  service_slot->store(up.web.service.get());
  return up;
}

}  // namespace tidepool::cli
