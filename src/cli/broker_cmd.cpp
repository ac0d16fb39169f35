#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "admin/admin_server.h"
#include "broker/broker.h"
#include "broker/report.h"
#include "cli/commands.h"
#include "cli/pool_runner.h"
#include "cli/up_apps.h"
#include "cli/up_config.h"
#include "pubsub/server.h"
#include "queue/queue.h"

namespace tidepool::cli {
namespace {

constexpr int64_t kShutdownGraceMicros = 10'000'000;

// The address a local client uses for a server listening on `listen` (a wildcard host
// becomes loopback) at `port`.
std::string LoopbackEndpoint(const std::string& listen, int port) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") host = "127.0.0.1";
  return host + ":" + std::to_string(port);
}

// Runs the broker and its Pub/Sub API until SIGINT or SIGTERM, then stops accepting, finishes
// in-flight calls, flushes and returns the exit code.
int ServeBroker(const char* cmd, const UpConfig& flags) {
  // Block the stop signals before any thread starts, so that every thread inherits the mask
  // and only sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  broker::BrokerOptions options;
  options.data_dir = flags.data_dir;
  auto b = broker::Broker::Open(options);
  if (!b.ok()) {
    std::fprintf(stderr, "tidepool %s: %s\n", cmd, b.status().ToString().c_str());
    return 1;
  }
  pubsub::ServerOptions server_options;
  server_options.listen = flags.broker_listen;
  server_options.stream_lifetime_micros = flags.stream_lifetime_seconds * 1'000'000;
  auto server = pubsub::PubsubServer::Start(b->get(), server_options);
  if (!server.ok()) {
    std::fprintf(stderr, "tidepool %s: %s\n", cmd, server.status().ToString().c_str());
    return 1;
  }
  broker::Broker* raw = b->get();

  // Pools (`up`): instances reach the broker over gRPC on loopback, like any Pub/Sub client;
  // the autoscaler reads backlog from the broker in-process.
  std::unique_ptr<queue::Queue> queue;
  std::unique_ptr<pool::PoolManager> pools;
  if (std::string(cmd) == "up") {
    queue::QueueOptions qo;
    qo.backend = "embedded";
    qo.broker = raw;
    auto q = queue::OpenQueue(qo);
    if (!q.ok()) {
      std::fprintf(stderr, "tidepool %s: %s\n", cmd, q.status().ToString().c_str());
      return 1;
    }
    queue = std::move(*q);
    PoolRunnerOptions po;
    po.config_path = flags.config_path;
    po.config_text = flags.config_text;
    po.queue = queue.get();
    po.data_dir = flags.data_dir;
    po.pubsub_endpoint = LoopbackEndpoint(flags.broker_listen, (*server)->port());
    auto started = StartPools(po);
    if (!started.ok()) {
      std::fprintf(stderr, "tidepool %s: %s\n", cmd, started.status().ToString().c_str());
      return 1;
    }
    pools = std::move(*started);
  }
  // The chat side (`up`): llm-sim, a worker pool per app, the web tier.
  std::optional<UpApps> apps;
  if (std::string(cmd) == "up" && flags.apps_enabled) {
    auto started = StartUpApps(flags, raw, queue.get(), pools.get());
    if (!started.ok()) {
      std::fprintf(stderr, "tidepool %s: %s\n", cmd, started.status().ToString().c_str());
      if (pools) pools->Stop();
      return started.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
    }
    apps = std::move(started).value();
  }
  pool::PoolManager* manager = pools.get();
  admin::AdminOptions admin_options;
  admin_options.listen = flags.admin_listen;
  admin_options.routes = {
      {"/healthz",
       [] {
         return admin::Response{200, "text/plain", "ok\n"};
       }},
      {"/v1/backlog",
       [raw] {
         return admin::Response{200, "application/json", broker::BacklogJson(raw->Backlogs())};
       }},
      {"/metrics", [raw, manager] {
         std::string text = broker::BacklogMetrics(raw->Backlogs());
         if (manager != nullptr) text += manager->MetricsText();
         return admin::Response{200, "text/plain; version=0.0.4", std::move(text)};
       }}};
  if (manager != nullptr) admin_options.prefix_routes["/v1/pools"] = manager->ApiHandler();
  auto admin = admin::AdminServer::Start(std::move(admin_options));
  if (!admin.ok()) {
    std::fprintf(stderr, "tidepool %s: admin endpoint: %s\n", cmd,
                 admin.status().ToString().c_str());
    return 1;
  }
  std::printf("tidepool %s %s: data dir %s, Pub/Sub API on %s (port %d), admin on http://%s\n", cmd,
              TIDEPOOL_VERSION, flags.data_dir.c_str(), flags.broker_listen.c_str(),
              (*server)->port(), flags.admin_listen.c_str());
  if (apps) {
    const std::string web =
        "http://" + LoopbackEndpoint(flags.web_listen, apps->web.service->port());
    std::printf("tidepool %s: chat   %s/ (apps: %s)\n", cmd, web.c_str(),
                apps->web.app_names.c_str());
    std::printf("tidepool %s: dashboard %s/dashboard\n", cmd, web.c_str());
    std::printf("tidepool %s: API    %s/v1/apps (docs/api.md)\n", cmd, web.c_str());
    std::printf("tidepool %s: LLM    %s%s\n", cmd, apps->llm_base_url.c_str(),
                apps->sim ? " (tidepool llm-sim: a simulator, not a model)" : "");
  }
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::printf("tidepool %s: %s received, draining\n", cmd, sig == SIGINT ? "SIGINT" : "SIGTERM");
  std::fflush(stdout);
  // The web tier stops taking messages first; then workers drain, while the broker still
  // takes their acks and nacks.
  if (apps) apps->web.service->Stop(std::chrono::seconds(5));
  if (pools) pools->Stop();
  apps.reset();
  (*admin)->Stop();
  pools.reset();
  queue.reset();
  (*server)->Shutdown(kShutdownGraceMicros);
  server->reset();
  b->reset();  // commits what is queued and closes every log and cursor
  std::printf("tidepool %s: stopped\n", cmd);
  return 0;
}

// Loads the settings of `cmd`; nullopt after saying what is wrong (or after --print-config).
std::optional<UpConfig> Settings(ConfigCommand command, const char* cmd, const Args& args,
                                 int* exit_code) {
  for (const auto& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::printf("Usage: tidepool %s [options]\n%s", cmd, ConfigFlagsHelp(command).c_str());
      *exit_code = 0;
      return std::nullopt;
    }
  }
  auto config = LoadUpConfig(command, args);
  if (!config.ok()) {
    std::fprintf(stderr, "tidepool %s: %s\n", cmd, config.status().message().c_str());
    *exit_code = 2;
    return std::nullopt;
  }
  if (config->print_config) {
    std::fputs(ConfigYaml(*config).c_str(), stdout);
    *exit_code = 0;
    return std::nullopt;
  }
  return std::move(config).value();
}

}  // namespace

int RunBroker(const Args& args) {
  int exit_code = 0;
  auto config = Settings(ConfigCommand::kBroker, "broker", args, &exit_code);
  if (!config) return exit_code;
  return ServeBroker("broker", *config);
}

int RunUp(const Args& args) {
  int exit_code = 0;
  auto config = Settings(ConfigCommand::kUp, "up", args, &exit_code);
  if (!config) return exit_code;
  return ServeBroker("up", *config);
}

}  // namespace tidepool::cli
