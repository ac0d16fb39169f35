// `tidepool pool`: the pool supervisor on its own, for worker machines whose broker runs
// elsewhere (a `tidepool broker`, or any Pub/Sub v1 endpoint).
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "admin/admin_server.h"
#include "cli/commands.h"
#include "cli/pool_runner.h"
#include "queue/queue.h"

namespace tidepool::cli {
namespace {

constexpr char kPoolUsage[] =
    "Usage: tidepool pool --config FILE [--endpoint HOST:PORT] [--project ID]\n"
    "                     [--broker-admin HOST:PORT] [--admin-listen HOST:PORT]\n"
    "                     [--admin-token TOKEN] [--data-dir DIR]\n"
    "\n"
    "Runs the worker pools of FILE against the Pub/Sub endpoint (default: PUBSUB_EMULATOR_HOST,\n"
    "else 127.0.0.1:8085). The autoscaler reads backlog from the admin address of a tidepool\n"
    "broker (--broker-admin, default 127.0.0.1:8086). The pools admin API (tidepool pools ...)\n"
    "listens on --admin-listen (default 127.0.0.1:8087; a non-loopback address needs\n"
    "--admin-token or TIDEPOOL_ADMIN_TOKEN). Logs go to DIR/logs (default ./tidepool-pool).\n";

struct PoolFlags {
  std::string config_path;
  std::string endpoint = "127.0.0.1:8085";
  std::string project = "tidepool";
  std::string broker_admin = "127.0.0.1:8086";
  std::string admin_listen = "127.0.0.1:8087";
  std::string admin_token;
  std::string data_dir = "tidepool-pool";
};

}  // namespace

int RunPool(const Args& args) {
  PoolFlags f;
  if (const char* env = std::getenv("PUBSUB_EMULATOR_HOST")) f.endpoint = env;
  if (const char* env = std::getenv("TIDEPOOL_CONFIG")) f.config_path = env;
  if (const char* env = std::getenv("TIDEPOOL_ADMIN_TOKEN")) f.admin_token = env;
  for (size_t i = 0; i < args.size(); ++i) {
    const bool has_value = i + 1 < args.size();
    const std::string& a = args[i];
    std::string* target = nullptr;
    if (a == "--config") target = &f.config_path;
    if (a == "--endpoint") target = &f.endpoint;
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

  queue::QueueOptions qo;
  qo.backend = "pubsub";
  qo.project = f.project;
  qo.endpoint = f.endpoint;
  qo.admin_endpoint = f.broker_admin;
  auto queue = queue::OpenQueue(qo);
  if (!queue.ok()) {
    std::fprintf(stderr, "tidepool pool: %s\n", queue.status().ToString().c_str());
    return 1;
  }
  PoolRunnerOptions po;
  po.config_path = f.config_path;
  po.queue = queue->get();
  po.data_dir = f.data_dir;
  po.pubsub_endpoint = f.endpoint;
  po.project = f.project;
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
              f.endpoint.c_str(), f.admin_listen.c_str());
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
