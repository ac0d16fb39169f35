// `tidepool web`: the web tier on its own, against a broker (docs/api.md).
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "cli/commands.h"
#include "cli/web_runner.h"
#include "queue/queue.h"
#include "queue/queue_env.h"
#include "store/store.h"
#include "web/service.h"

namespace tidepool::cli {
namespace {

constexpr char kWebUsage[] =
    "Usage: tidepool web [options]\n"
    "Serves the chat API, Server-Sent Events and the UI for the apps given.\n"
    "  --listen HOST:PORT          default 127.0.0.1:8080 (env TIDEPOOL_WEB_LISTEN)\n"
    "  --broker HOST:PORT          a tidepool broker or emulator, plaintext (env\n"
    "                              PUBSUB_EMULATOR_HOST; default 127.0.0.1:8085 unless\n"
    "                              GOOGLE_CLOUD_PROJECT is set: then Google Cloud Pub/Sub at\n"
    "                              TIDEPOOL_PUBSUB_ENDPOINT or pubsub.googleapis.com:443, TLS,\n"
    "                              Application Default Credentials)\n"
    "  --nats URL[,URL...]         NATS JetStream servers, nats://HOST:PORT, instead of a\n"
    "                              broker (env TIDEPOOL_NATS_URL)\n"
    "  --nats-replicas N           replicas of each stream and consumer, 1-5 (env\n"
    "                              TIDEPOOL_NATS_REPLICAS; default 1, 3 in a cluster)\n"
    "  --project ID                default tidepool (env GOOGLE_CLOUD_PROJECT)\n"
    "  --data-dir DIR              default ./tidepool-data (env TIDEPOOL_DATA_DIR)\n"
    "  --store URL                 sqlite:PATH or postgresql://... (env TIDEPOOL_STORE_URL;\n"
    "                              default sqlite:DATA_DIR/web/conversations.db)\n"
    "  --app FILE                  an app spec (repeatable; default: apps/*/app.yaml)\n"
    "  --ui-dir DIR                serve the UI from DIR (default: the built-in copy)\n"
    "  --api-keys-file FILE        lines \"APP KEY\": keys required on those apps' API\n"
    "                              (env TIDEPOOL_WEB_API_KEYS_FILE)\n"
    "  --events-subscription NAME  this instance's events subscription (default\n"
    "                              tidepool-events-web); auto: one made for this instance\n"
    "                              alone, deleted when it stops, for instances that cannot be\n"
    "                              told apart (Cloud Run); replies are then stored from the\n"
    "                              shared subscription tidepool-replies-web\n"
    "  --cors-origin ORIGIN        \"*\" or one origin allowed to call the API\n"
    "  --rate-limit N              POSTs per second per client address (default 5; 0 = off)\n";

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

}  // namespace

int RunWeb(const Args& args) {
  WebFlags flags;
  flags.listen = EnvOr("TIDEPOOL_WEB_LISTEN", "127.0.0.1:8080");
  flags.data_dir = EnvOr("TIDEPOOL_DATA_DIR", "tidepool-data");
  flags.store = EnvOr("TIDEPOOL_STORE_URL", EnvOr("TIDEPOOL_STORE", ""));
  flags.api_keys_file = EnvOr("TIDEPOOL_WEB_API_KEYS_FILE", "");
  // Flags that name the queue override the environment's variables of queue_env.h.
  std::map<std::string, std::string> queue_overrides;
  std::string project;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kWebUsage, stdout);
      return 0;
    }
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "tidepool web: unknown option or missing value: '%s'\n\n%s",
                   flag.c_str(), kWebUsage);
      return 2;
    }
    const std::string& value = args[++i];
    if (flag == "--listen") {
      flags.listen = value;
    } else if (flag == "--broker") {
      queue_overrides["PUBSUB_EMULATOR_HOST"] = value;
      if (!queue_overrides.contains("TIDEPOOL_NATS_URL")) queue_overrides["TIDEPOOL_NATS_URL"] = "";
    } else if (flag == "--nats") {
      queue_overrides["TIDEPOOL_NATS_URL"] = value;
    } else if (flag == "--nats-replicas") {
      queue_overrides["TIDEPOOL_NATS_REPLICAS"] = value;
    } else if (flag == "--project") {
      project = value;
    } else if (flag == "--data-dir") {
      flags.data_dir = value;
    } else if (flag == "--store") {
      flags.store = value;
    } else if (flag == "--app") {
      flags.apps.push_back(value);
    } else if (flag == "--ui-dir") {
      flags.ui_dir = value;
    } else if (flag == "--api-keys-file") {
      flags.api_keys_file = value;
    } else if (flag == "--events-subscription") {
      flags.events_subscription = value;
    } else if (flag == "--cors-origin") {
      flags.cors_origin = value;
    } else if (flag == "--rate-limit") {
      char* end = nullptr;
      flags.rate_limit = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || flags.rate_limit < 0) {
        std::fprintf(stderr, "tidepool web: --rate-limit: '%s' is not a number\n", value.c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr, "tidepool web: unknown option '%s'\n\n%s", flag.c_str(), kWebUsage);
      return 2;
    }
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto qo =
      queue::QueueOptionsFromProcessEnv(queue_overrides, {.emulator_endpoint = "127.0.0.1:8085"});
  if (!qo.ok()) {
    std::fprintf(stderr, "tidepool web: %s\n", qo.status().message().c_str());
    return 2;
  }
  if (!project.empty()) qo->project = project;
  const std::string described = queue::DescribeQueue(*qo);
  auto queue = queue::OpenQueue(*qo);
  if (!queue.ok()) {
    std::fprintf(stderr, "tidepool web: cannot open the queue (%s): %s\n", described.c_str(),
                 queue.status().ToString().c_str());
    return 1;
  }
  auto web = StartWeb(flags, **queue, {});
  if (!web.ok()) {
    std::fprintf(stderr, "tidepool web: %s\n", web.status().ToString().c_str());
    return web.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::printf("tidepool web %s: http://%s (apps: %s), queue %s, store %s\n", TIDEPOOL_VERSION,
              flags.listen.c_str(), web->app_names.c_str(), described.c_str(),
              web->store_description.c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "tidepool web: %s received, stopping\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM");
  web->service->Stop(std::chrono::seconds(10));
  return 0;
}

}  // namespace tidepool::cli
