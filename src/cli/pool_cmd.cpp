// `tidepool pool`: the pool supervisor on its own, for worker machines whose broker runs
// elsewhere (a `tidepool broker`, or any Pub/Sub v1 endpoint).
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "admin/admin_server.h"
#include "cli/commands.h"
#include "cli/pool_runner.h"
#include "queue/queue.h"
#include "queue/queue_env.h"

namespace tidepool::cli {
namespace {

constexpr char kPoolUsage[] =
    "Usage: tidepool pool --config FILE [--endpoint HOST:PORT | --nats URL[,URL...]]\n"
    "                     [--nats-replicas N] [--project ID] [--broker-admin HOST:PORT]\n"
    "                     [--admin-listen HOST:PORT] [--admin-token TOKEN] [--data-dir DIR]\n"
    "\n"
    "Runs the worker pools of FILE against a queue, and hands the same queue to every instance\n"
    "(docs/workers.md):\n"
    "  --endpoint HOST:PORT   a Pub/Sub endpoint in plaintext, a tidepool broker (default:\n"
    "                         PUBSUB_EMULATOR_HOST, else 127.0.0.1:8085). The autoscaler reads\n"
    "                         backlog from the broker's admin address (--broker-admin, default\n"
    "                         127.0.0.1:8086).\n"
    "  --nats URL[,URL...]    NATS JetStream servers, nats://HOST:PORT (env TIDEPOOL_NATS_URL);\n"
    "                         backlog comes from the consumers. Only tidepool's own workers\n"
    "                         speak NATS.\n"
    "  --nats-replicas N      replicas of each stream and consumer, 1-5 (env\n"
    "                         TIDEPOOL_NATS_REPLICAS; default 1, 3 in a cluster)\n"
    "The pools admin API (tidepool pools ...) listens on --admin-listen (default 127.0.0.1:8087;\n"
    "a non-loopback address needs --admin-token or TIDEPOOL_ADMIN_TOKEN). Logs go to DIR/logs\n"
    "(default ./tidepool-pool).\n";

struct PoolFlags {
  std::string config_path;
  std::string endpoint;
  std::string nats;
  std::string nats_replicas;
  std::string project;
  std::string broker_admin = "127.0.0.1:8086";
  std::string admin_listen = "127.0.0.1:8087";
  std::string admin_token;
  std::string data_dir = "tidepool-pool";
};

// The queue of the pools and their instances: flags over the environment (queue/queue_env.h).
Result<queue::QueueOptions> PoolQueue(const PoolFlags& f) {
  if (!f.endpoint.empty() && !f.nats.empty()) {
    return Status::InvalidArgument("--endpoint and --nats name two queues: give one");
  }
  std::map<std::string, std::string> overrides;
  if (!f.endpoint.empty()) {
    overrides["PUBSUB_EMULATOR_HOST"] = f.endpoint;
    overrides["TIDEPOOL_NATS_URL"] = "";
  }
  if (!f.nats.empty()) overrides["TIDEPOOL_NATS_URL"] = f.nats;
  if (!f.nats_replicas.empty()) overrides["TIDEPOOL_NATS_REPLICAS"] = f.nats_replicas;
  auto qo = queue::QueueOptionsFromProcessEnv(overrides, {.emulator_endpoint = "127.0.0.1:8085"});
  if (!qo.ok()) return qo.status();
  if (!f.project.empty()) qo->project = f.project;
  if (qo->backend == "pubsub" && qo->auth.empty()) qo->admin_endpoint = f.broker_admin;
  return qo;
}

}  // namespace

int RunPool(const Args& args) {
  PoolFlags f;
  if (const char* env = std::getenv("TIDEPOOL_CONFIG")) f.config_path = env;
  if (const char* env = std::getenv("TIDEPOOL_ADMIN_TOKEN")) f.admin_token = env;
  for (size_t i = 0; i < args.size(); ++i) {
    const bool has_value = i + 1 < args.size();
    const std::string& a = args[i];
    std::string* target = nullptr;
    if (a == "--config") target = &f.config_path;
    if (a == "--endpoint") target = &f.endpoint;
    if (a == "--nats") target = &f.nats;
    if (a == "--nats-replicas") target = &f.nats_replicas;
    if (a == "--project") target = &f.project;
    if (a == "--broker-admin") target = &f.broker_admin;
    if (a == "--admin-listen") target = &f.admin_listen;
    if (a == "--admin-token") target = &f.admin_token;
    if (a == "--data-dir") target = &f.data_dir;
    if (a == "--help" || a == "help") {
      std::fputs(kPoolUsage, stdout);
      return 0;
    }
    if (target == nullptr || !has_value) {
      std::fprintf(stderr, "tidepool pool: unknown or incomplete option '%s'\n\n%s", a.c_str(),
                   kPoolUsage);
      return 2;
    }
    *target = args[++i];
  }
  if (f.config_path.empty()) {
    std::fprintf(stderr, "tidepool pool: --config FILE is required\n\n%s", kPoolUsage);
    return 2;
  }
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto qo = PoolQueue(f);
  if (!qo.ok()) {
    std::fprintf(stderr, "tidepool pool: %s\n", qo.status().message().c_str());
    return 2;
  }
  auto queue_env = queue::QueueEnvOf(*qo);
  if (!queue_env.ok()) {
    std::fprintf(stderr, "tidepool pool: %s\n", queue_env.status().message().c_str());
    return 2;
  }
  auto queue = queue::OpenQueue(*qo);
  if (!queue.ok()) {
    std::fprintf(stderr, "tidepool pool: %s: %s\n", queue::DescribeQueue(*qo).c_str(),
                 queue.status().ToString().c_str());
    return 1;
  }
  PoolRunnerOptions po;
  po.config_path = f.config_path;
  po.queue = queue->get();
  po.data_dir = f.data_dir;
  po.queue_env = std::move(queue_env).value();
  auto manager = StartPools(po);
  if (!manager.ok()) {
    std::fprintf(stderr, "tidepool pool: %s\n", manager.status().ToString().c_str());
    return 1;
  }
  pool::PoolManager* raw = manager->get();
  admin::AdminOptions ao;
  ao.listen = f.admin_listen;
  ao.bearer_token = f.admin_token;
  ao.routes = {{"/healthz",
                [] {
                  return admin::Response{200, "text/plain", "ok\n"};
                }},
               {"/metrics", [raw] {
                  return admin::Response{200, "text/plain; version=0.0.4", raw->MetricsText()};
                }}};
  ao.prefix_routes["/v1/pools"] = raw->ApiHandler();
  auto admin = admin::AdminServer::Start(std::move(ao));
  if (!admin.ok()) {
    std::fprintf(stderr, "tidepool pool: admin endpoint: %s\n", admin.status().ToString().c_str());
    (*manager)->Stop();
    return 1;
  }
  std::printf("tidepool pool %s: %zu pools from %s against %s, admin on http://%s\n",
              TIDEPOOL_VERSION, (*manager)->PoolNames().size(), f.config_path.c_str(),
              queue::DescribeQueue(*qo).c_str(), f.admin_listen.c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::printf("tidepool pool: %s received, draining\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  std::fflush(stdout);
  (*manager)->Stop();
  (*admin)->Stop();
  manager->reset();
  queue->reset();
  std::printf("tidepool pool: stopped\n");
  return 0;
}

}  // namespace tidepool::cli
