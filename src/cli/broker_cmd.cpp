#include <pthread.h>

#include <algorithm>
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
#include "queue/queue_env.h"

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

// The backlog of every subscription the pools read and of the web tier's events, read from a
// queue that is not the embedded broker (the dashboard and /v1/backlog on NATS).
std::vector<broker::SubscriptionBacklog> QueueBacklogs(queue::Queue* queue,
                                                       pool::PoolManager* pools) {
  std::vector<std::string> names;
  for (const std::string& pool : pools->PoolNames()) {
    auto described = pools->DescribeJson(pool);
    if (!described.ok()) continue;
    const auto* sub = described->if_contains("subscription");
    if (sub != nullptr && sub->is_string()) names.emplace_back(sub->as_string());
  }
  names.push_back(WebFlags{}.events_subscription);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  std::vector<broker::SubscriptionBacklog> out;
  for (const std::string& name : names) {
    auto b = queue->GetBacklog(name);
    if (!b.ok()) continue;  // not created yet
    out.push_back({.subscription = queue::SubscriptionPath("tidepool", name),
                   .topic = "",
                   .backlog = {.undelivered_messages = b->undelivered_messages,
                               .oldest_unacked_age_micros = b->oldest_unacked_age_micros,
                               .leased_messages = b->leased_messages}});
  }
  return out;
}

// Runs the broker and its Pub/Sub API (`broker`, and `up` on the embedded queue) with the pools
// and the chat side (`up`) until SIGINT or SIGTERM, then stops accepting, finishes in-flight
// calls, flushes and returns the exit code. `up` on NATS runs no broker.
int ServeBroker(const char* cmd, const UpConfig& flags) {
  // Block the stop signals before any thread starts, so that every thread inherits the mask
  // and only sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  const bool up = std::string(cmd) == "up";
  const bool on_nats = up && flags.queue_backend == "nats";

  std::unique_ptr<broker::Broker> b;
  std::unique_ptr<pubsub::PubsubServer> server;
  if (!on_nats) {
    broker::BrokerOptions options;
    options.data_dir = flags.data_dir;
    options.log.reserve_bytes = static_cast<uint64_t>(flags.log_reserve_bytes);
    auto opened = broker::Broker::Open(options);
    if (!opened.ok()) {
      std::fprintf(stderr, "tidepool %s: %s\n", cmd, opened.status().ToString().c_str());
      return 1;
    }
    b = std::move(opened).value();
    pubsub::ServerOptions server_options;
    server_options.listen = flags.broker_listen;
    server_options.stream_lifetime_micros = flags.stream_lifetime_seconds * 1'000'000;
    // `up`: the broker's gRPC server serves the app workers (their pulls, acks and events),
    // so it runs at their priority, below the web tier (promise 3).
    if (up) server_options.nice = static_cast<int>(flags.app_nice);
    auto started = pubsub::PubsubServer::Start(b.get(), server_options);
    if (!started.ok()) {
      std::fprintf(stderr, "tidepool %s: %s\n", cmd, started.status().ToString().c_str());
      return 1;
    }
    server = std::move(started).value();
  }
  broker::Broker* raw = b.get();  // nullptr on NATS

  // Pools (`up`): instances reach the queue the way `tidepool pool` hands it to them: the
  // embedded broker over gRPC on loopback like any Pub/Sub client, or the NATS servers. The
  // autoscaler reads backlog in-process.
  std::unique_ptr<queue::Queue> queue;
  std::unique_ptr<pool::PoolManager> pools;
  std::string queue_description;  // `up` on NATS: for the start-up line
  if (up) {
    queue::QueueOptions qo;
    queue::QueueOptions instances;
    if (on_nats) {
      qo.backend = "nats";
      qo.nats_servers = queue::ParseNatsUrls(flags.nats_url).value();
      qo.nats_replicas = static_cast<int>(flags.nats_replicas);
      qo.nats_prefix = flags.nats_prefix;
      instances = qo;
    } else {
      qo.backend = "embedded";
      qo.broker = raw;
      instances.backend = "pubsub";
      instances.endpoint = LoopbackEndpoint(flags.broker_listen, server->port());
    }
    queue_description = queue::DescribeQueue(qo);
    auto q = queue::OpenQueue(qo);
    if (!q.ok()) {
      std::fprintf(stderr, "tidepool %s: %s: %s\n", cmd, queue_description.c_str(),
                   q.status().ToString().c_str());
      return 1;
    }
    queue = std::move(*q);
    PoolRunnerOptions po;
    po.config_path = flags.config_path;
    po.config_text = flags.config_text;
    po.queue = queue.get();
    po.data_dir = flags.data_dir;
    po.queue_env = queue::QueueEnvOf(instances).value();
    auto started = StartPools(po);
    if (!started.ok()) {
      std::fprintf(stderr, "tidepool %s: %s\n", cmd, started.status().ToString().c_str());
      return 1;
    }
    pools = std::move(*started);
  }
  pool::PoolManager* manager = pools.get();
  queue::Queue* shared_queue = queue.get();
  BacklogSource backlogs = [raw, shared_queue, manager] {
    return raw != nullptr ? raw->Backlogs() : QueueBacklogs(shared_queue, manager);
  };
  // The chat side (`up`): llm-sim, a worker pool per app, the web tier.
  std::optional<UpApps> apps;
  if (up && flags.apps_enabled) {
    auto started = StartUpApps(flags, backlogs, queue.get(), pools.get());
    if (!started.ok()) {
      std::fprintf(stderr, "tidepool %s: %s\n", cmd, started.status().ToString().c_str());
      if (pools) pools->Stop();
      return started.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
    }
    apps = std::move(started).value();
  }
  admin::AdminOptions admin_options;
  admin_options.listen = flags.admin_listen;
  admin_options.routes = {
      {"/healthz",
       [] {
         return admin::Response{200, "text/plain", "ok\n"};
       }},
      {"/v1/backlog",
       [backlogs] {
         return admin::Response{200, "application/json", broker::BacklogJson(backlogs())};
       }},
      {"/metrics", [backlogs, manager] {
         std::string text = broker::BacklogMetrics(backlogs());
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
  if (server) {
    std::printf("tidepool %s %s: data dir %s, Pub/Sub API on %s (port %d), admin on http://%s\n",
                cmd, TIDEPOOL_VERSION, flags.data_dir.c_str(), flags.broker_listen.c_str(),
                server->port(), flags.admin_listen.c_str());
  } else {
    std::printf("tidepool %s %s: data dir %s, queue %s, admin on http://%s\n", cmd,
                TIDEPOOL_VERSION, flags.data_dir.c_str(), queue_description.c_str(),
                flags.admin_listen.c_str());
  }
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
  if (server) server->Shutdown(kShutdownGraceMicros);
  server.reset();
  b.reset();  // commits what is queued and closes every log and cursor
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
