// Settings of `tidepool up` and `tidepool broker`: every key has a default; a YAML file
// (tidepool.yaml, `--config`), environment variables TIDEPOOL_<SECTION>_<KEY> and flags override
// it, in that order. docs/config.md lists every key.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/status.h"

namespace tidepool::cli {

struct UpConfig {
  std::string data_dir = "tidepool-data";
  // broker: the Pub/Sub API and the admin endpoint (pools API, backlog, metrics).
  std::string broker_listen = "127.0.0.1:8085";
  std::string admin_listen = "127.0.0.1:8086";
  int64_t stream_lifetime_seconds = 30 * 60;
  // Zeros kept ahead of each topic log's end (storage::LogOptions::reserve_bytes).
  int64_t log_reserve_bytes = 256 << 10;
  // queue (`up`): "embedded" (the broker above, in this process) or "nats" (a NATS JetStream
  // server or cluster; then `up` runs no broker and no Pub/Sub API).
  std::string queue_backend = "embedded";
  std::string nats_url;       // "nats://HOST:PORT[,nats://HOST:PORT...]"
  int64_t nats_replicas = 1;  // of each stream and consumer, 1-5 (3 in a cluster)
  std::string nats_prefix = "tidepool";
  // store: "" = sqlite:DATA_DIR/web/conversations.db; or postgresql://...
  std::string store_url;
  // web
  std::string web_listen = "127.0.0.1:8080";
  double rate_limit = 5;  // POSTs per second per client address; 0 = off
  std::string cors_origin;
  std::string ui_dir;         // "" = the UI built into the binary
  std::string api_keys_file;  // lines "APP KEY": API keys required on those apps
  // llm: an OpenAI-compatible endpoint; none = run `tidepool llm-sim` in-process.
  std::string llm_base_url;
  std::string llm_api_key_env;
  std::string llm_api_key_file;
  int64_t llm_max_concurrency = 0;  // per worker; 0 = the worker's default
  std::string llm_sim_listen = "127.0.0.1:8090";
  // apps: spec files (empty = apps/*/app.yaml) and the pool each app runs in.
  bool apps_enabled = true;
  std::vector<std::string> app_files;
  int64_t app_min_instances = 1;
  int64_t app_max_instances = 4;
  int64_t app_backlog_target = 200;  // undelivered requests per instance
  // CPU priority of the app workers, of llm-sim and of the embedded broker's gRPC server,
  // which serves the workers (nice, 0-19): below the web tier, so that inference load on the
  // same machine does not slow the UI down (DESIGN.md, promise 3).
  int64_t app_nice = 10;
  // The CPUs the app workers and llm-sim may run on: "auto" (every CPU but the first, which the
  // web tier then has to itself, on machines with at least 2), "all", or a CPU list ("1-3").
  std::string app_cpus = "auto";
  // pools: further pools (docs/pools.md), declared in the config file's `pools` section.
  std::string config_path;  // "" = no config file
  std::string config_text;  // the file's text, for pool::ParsePools
  bool print_config = false;
};

enum class ConfigCommand { kUp, kBroker };

// Defaults, then the config file (`up` only: --config FILE or TIDEPOOL_CONFIG), then the
// environment, then `args`. INVALID_ARGUMENT naming the file and line, the variable or the flag
// for an unknown key or a bad value.
Result<UpConfig> LoadUpConfig(ConfigCommand command, const Args& args);

// The CPUs `apps.cpus` names on this machine; empty: no pinning ("all", or "auto" on a machine
// that lets this process run on fewer than 2 CPUs).
std::vector<int> AppCpus(const UpConfig& config);

// The effective settings as a tidepool.yaml (without pools), for --print-config.
std::string ConfigYaml(const UpConfig& config);

// The flags of a command, one per line, for usage messages.
std::string ConfigFlagsHelp(ConfigCommand command);

// The API keys of a file of lines "APP KEY" ('#' starts a comment), by app. Errors name the
// file and line, never a key.
Result<std::map<std::string, std::vector<std::string>>> LoadApiKeys(const std::string& path);

}  // namespace tidepool::cli
