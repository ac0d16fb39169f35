#include "cli/up_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <tuple>
#include <variant>

#include "common/cpu_list.h"
#include "common/units.h"
#include "queue/queue_env.h"

namespace tidepool::cli {
namespace {

enum class Kind { kString, kNumber, kCount, kSeconds, kBytes, kBool, kList };

using Member = std::variant<std::string UpConfig::*, double UpConfig::*, int64_t UpConfig::*,
                            bool UpConfig::*, std::vector<std::string> UpConfig::*>;

struct Setting {
  const char* section;  // "" for a top-level key
  const char* key;
  Kind kind;
  Member member;
  const char* up_flag;      // nullptr: no flag on `up`
  const char* broker_flag;  // nullptr: not a setting of `broker`
  const char* help;
  bool switch_value = false;  // kBool flags are switches that set this value
};

const std::vector<Setting>& Settings() {
  static const std::vector<Setting> settings = {
      {"", "data_dir", Kind::kString, &UpConfig::data_dir, "--data-dir", "--data-dir",
       "DIR: every file tidepool keeps"},
      {"broker", "listen", Kind::kString, &UpConfig::broker_listen, "--broker-listen", "--listen",
       "HOST:PORT: the Pub/Sub API"},
      {"broker", "admin_listen", Kind::kString, &UpConfig::admin_listen, "--admin-listen",
       "--admin-listen", "HOST:PORT: pools API, backlog, metrics"},
      {"broker", "stream_lifetime", Kind::kSeconds, &UpConfig::stream_lifetime_seconds,
       "--stream-lifetime", "--stream-lifetime", "DURATION: StreamingPull streams end after it"},
      {"broker", "log_reserve", Kind::kBytes, &UpConfig::log_reserve_bytes, "--log-reserve",
       "--log-reserve",
       "BYTES: zero-filled space kept ahead of each topic log's end, so that an fdatasync "
       "after an append writes no file size (0 = off)"},
      {"queue", "backend", Kind::kString, &UpConfig::queue_backend, "--queue", nullptr,
       "embedded (the broker in this process) or nats (NATS JetStream; no broker)"},
      {"queue", "nats_url", Kind::kString, &UpConfig::nats_url, "--nats", nullptr,
       "nats://HOST:PORT[,...]: the NATS servers, for queue.backend nats"},
      {"queue", "nats_replicas", Kind::kCount, &UpConfig::nats_replicas, nullptr, nullptr,
       "N: replicas of each stream and consumer, 1-5 (3 in a cluster)"},
      {"queue", "nats_prefix", Kind::kString, &UpConfig::nats_prefix, nullptr, nullptr,
       "NAME: prefix of every stream, subject and bucket (letters, digits, '-')"},
      {"store", "url", Kind::kString, &UpConfig::store_url, "--store", nullptr,
       "sqlite:PATH or postgresql://... (default sqlite:DATA_DIR/web/conversations.db)"},
      {"web", "listen", Kind::kString, &UpConfig::web_listen, "--listen", nullptr,
       "HOST:PORT: the chat API, UI and dashboard"},
      {"web", "rate_limit", Kind::kNumber, &UpConfig::rate_limit, "--rate-limit", nullptr,
       "N: POSTs per second per client address (0 = off)"},
      {"web", "cors_origin", Kind::kString, &UpConfig::cors_origin, "--cors-origin", nullptr,
       "\"*\" or one origin allowed to call the API"},
      {"web", "ui_dir", Kind::kString, &UpConfig::ui_dir, "--ui-dir", nullptr,
       "DIR: serve the UI from here instead of the built-in copy"},
      {"web", "api_keys_file", Kind::kString, &UpConfig::api_keys_file, "--api-keys-file", nullptr,
       "FILE: lines \"APP KEY\": API keys required on those apps"},
      {"llm", "base_url", Kind::kString, &UpConfig::llm_base_url, "--llm-base-url", nullptr,
       "URL: an OpenAI-compatible endpoint (none: run llm-sim)"},
      {"llm", "api_key_env", Kind::kString, &UpConfig::llm_api_key_env, nullptr, nullptr,
       "NAME: the environment variable holding the API key"},
      {"llm", "api_key_file", Kind::kString, &UpConfig::llm_api_key_file, nullptr, nullptr,
       "PATH: the file holding the API key"},
      {"llm", "max_concurrency", Kind::kCount, &UpConfig::llm_max_concurrency, nullptr, nullptr,
       "N: LLM calls at once per worker (0 = the worker's default)"},
      {"llm", "sim_listen", Kind::kString, &UpConfig::llm_sim_listen, "--llm-sim-listen", nullptr,
       "HOST:PORT: llm-sim, when no base_url is set"},
      {"apps", "enabled", Kind::kBool, &UpConfig::apps_enabled, "--no-apps", nullptr,
       "broker and pools only (false)", false},
      {"apps", "files", Kind::kList, &UpConfig::app_files, "--app", nullptr,
       "FILE: an app spec, repeatable (default apps/*/app.yaml)"},
      {"apps", "min_instances", Kind::kCount, &UpConfig::app_min_instances, nullptr, nullptr,
       "N: workers per app at least"},
      {"apps", "max_instances", Kind::kCount, &UpConfig::app_max_instances, nullptr, nullptr,
       "N: workers per app at most"},
      {"apps", "backlog_target", Kind::kCount, &UpConfig::app_backlog_target, nullptr, nullptr,
       "N: undelivered requests per worker the autoscaler aims at"},
      {"apps", "nice", Kind::kCount, &UpConfig::app_nice, nullptr, nullptr,
       "N: CPU priority (nice 0-19) of the app workers, llm-sim and the broker's gRPC server, "
       "below the web tier's"},
      {"apps", "cpus", Kind::kString, &UpConfig::app_cpus, nullptr, nullptr,
       "auto | all | CPU list: where the app workers and llm-sim run (auto: all CPUs but the "
       "first, which stays the web tier's)"},
  };
  return settings;
}

std::string DottedName(const Setting& s) {
  return *s.section ? std::string(s.section) + "." + s.key : std::string(s.key);
}

std::string EnvName(const Setting& s) {
  std::string name = "TIDEPOOL_";
  if (*s.section) name += std::string(s.section) + "_";
  name += s.key;
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

bool AppliesTo(const Setting& s, ConfigCommand command) {
  return command == ConfigCommand::kUp || s.broker_flag != nullptr;
}

// Sets `s` from one textual value; a message saying what is wrong when it is not valid.
std::optional<std::string> Assign(const Setting& s, const std::string& text, UpConfig* config) {
  switch (s.kind) {
    case Kind::kString:
      config->*std::get<std::string UpConfig::*>(s.member) = text;
      return std::nullopt;
    case Kind::kNumber: {
      char* end = nullptr;
      const double value = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0' || !std::isfinite(value) || value < 0) {
        return "'" + text + "' is not a number >= 0";
      }
      config->*std::get<double UpConfig::*>(s.member) = value;
      return std::nullopt;
    }
    case Kind::kCount: {
      char* end = nullptr;
      const long long value = std::strtoll(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || value < 0) return "'" + text + "' is not a count >= 0";
      config->*std::get<int64_t UpConfig::*>(s.member) = value;
      return std::nullopt;
    }
    case Kind::kSeconds: {
      auto d = ParseDuration(text);
      if (!d.ok() || d->count() < 1000) {
        return "'" + text + "' is not a duration of at least 1s (like 30s, 5m, 1h)";
      }
      config->*std::get<int64_t UpConfig::*>(s.member) = d->count() / 1000;
      return std::nullopt;
    }
    case Kind::kBytes: {
      auto bytes = ParseByteSize(text);
      if (!bytes.ok() || *bytes < 0 || *bytes > (int64_t{1} << 30)) {
        return "'" + text + "' is not a size from 0 to 1Gi (like 256Ki, 1Mi, 0)";
      }
      config->*std::get<int64_t UpConfig::*>(s.member) = *bytes;
      return std::nullopt;
    }
    case Kind::kBool: {
      bool value;
      if (text == "true" || text == "yes" || text == "on" || text == "1") {
        value = true;
      } else if (text == "false" || text == "no" || text == "off" || text == "0") {
        value = false;
      } else {
        return "'" + text + "' is not true or false";
      }
      config->*std::get<bool UpConfig::*>(s.member) = value;
      return std::nullopt;
    }
    case Kind::kList: {
      // From the environment: comma-separated.
      auto& list = config->*std::get<std::vector<std::string> UpConfig::*>(s.member);
      list.clear();
      std::stringstream in(text);
      std::string item;
      while (std::getline(in, item, ',')) {
        if (!item.empty()) list.push_back(item);
      }
      return std::nullopt;
    }
  }
  return "unsupported setting";
}

std::string KnownKeys(const std::string& section) {
  std::string known;
  for (const Setting& s : Settings()) {
    if (section != s.section) continue;
    if (!known.empty()) known += ", ";
    known += s.key;
  }
  return known;
}

Status ApplyFile(const std::string& path, const std::string& text, UpConfig* config) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    // yaml-cpp reports syntax errors only by exception: they become values here.
    return Status::InvalidArgument(path + ":" + std::to_string(e.mark.line + 1) +
                                   ": invalid YAML: " + e.msg);
  }
  if (root.IsNull()) return Status::Ok();
  auto where = [&](const YAML::Node& node) {
    return path + ":" + std::to_string(node.Mark().line + 1) + ": ";
  };
  if (!root.IsMap()) return Status::InvalidArgument(where(root) + "expected a mapping of sections");
  static const char* kSections[] = {"broker", "queue", "store", "web", "llm", "apps"};
  for (const auto& entry : root) {
    const std::string name = entry.first.as<std::string>();
    if (name == "pools") continue;  // pool specs: validated by pool::ParsePools
    const bool is_section =
        std::find(std::begin(kSections), std::end(kSections), name) != std::end(kSections);
    std::vector<std::tuple<std::string, YAML::Node, YAML::Node>> values;  // key, its node, value
    std::string section;
    if (is_section) {
      section = name;
      if (entry.second.IsNull()) continue;
      if (!entry.second.IsMap()) {
        return Status::InvalidArgument(where(entry.second) + name + ": expected a mapping");
      }
      for (const auto& item : entry.second) {
        values.emplace_back(item.first.as<std::string>(), item.first, item.second);
      }
    } else {
      values.emplace_back(name, entry.first, entry.second);
    }
    for (const auto& [key, key_node, node] : values) {
      const Setting* setting = nullptr;
      for (const Setting& s : Settings()) {
        if (section == s.section && key == s.key) setting = &s;
      }
      const std::string dotted = section.empty() ? key : section + "." + key;
      if (setting == nullptr) {
        return Status::InvalidArgument(
            where(key_node) + dotted + ": unknown key (known" +
            (section.empty() ? " at the top" : "") + ": " +
            (section.empty() ? "data_dir, broker, queue, store, web, llm, apps, pools"
                             : KnownKeys(section)) +
            ")");
      }
      if (setting->kind == Kind::kList) {
        if (!node.IsSequence()) {
          return Status::InvalidArgument(where(node) + dotted + ": expected a list");
        }
        auto& list = config->*std::get<std::vector<std::string> UpConfig::*>(setting->member);
        list.clear();
        for (const auto& item : node) {
          if (!item.IsScalar()) {
            return Status::InvalidArgument(where(item) + dotted + ": expected a list of strings");
          }
          list.push_back(item.as<std::string>());
        }
        continue;
      }
      if (!node.IsScalar()) {
        return Status::InvalidArgument(where(node) + dotted + ": expected a single value");
      }
      if (auto problem = Assign(*setting, node.as<std::string>(), config)) {
        return Status::InvalidArgument(where(node) + dotted + ": " + *problem);
      }
    }
  }
  return Status::Ok();
}

const char* FlagOf(const Setting& s, ConfigCommand command) {
  return command == ConfigCommand::kUp ? s.up_flag : s.broker_flag;
}

}  // namespace

Result<UpConfig> LoadUpConfig(ConfigCommand command, const Args& args) {
  UpConfig config;
  const bool up = command == ConfigCommand::kUp;
  // The config file first: the environment and flags override it.
  if (up) {
    if (const char* env = std::getenv("TIDEPOOL_CONFIG"); env != nullptr && *env != '\0') {
      config.config_path = env;
    }
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--config") config.config_path = args[i + 1];
    }
    if (!config.config_path.empty()) {
      std::ifstream in(config.config_path);
      if (!in) return Status::NotFound("cannot read config file " + config.config_path);
      std::stringstream text;
      text << in.rdbuf();
      config.config_text = text.str();
      TP_RETURN_IF_ERROR(ApplyFile(config.config_path, config.config_text, &config));
    }
  }
  for (const Setting& s : Settings()) {
    if (!AppliesTo(s, command)) continue;
    const std::string name = EnvName(s);
    const char* env = std::getenv(name.c_str());
    if (env == nullptr || *env == '\0') continue;
    if (auto problem = Assign(s, env, &config)) {
      return Status::InvalidArgument(name + " (" + DottedName(s) + "): " + *problem);
    }
  }
  bool listed_apps = false;  // the first --app replaces the file's and environment's list
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (up && flag == "--config" && i + 1 < args.size()) {
      ++i;
      continue;
    }
    if (up && flag == "--print-config") {
      config.print_config = true;
      continue;
    }
    const Setting* setting = nullptr;
    for (const Setting& s : Settings()) {
      const char* f = FlagOf(s, command);
      if (f != nullptr && flag == f) setting = &s;
    }
    if (setting == nullptr) {
      return Status::InvalidArgument("unknown option '" + flag + "' (known:\n" +
                                     ConfigFlagsHelp(command) + ")");
    }
    if (setting->kind == Kind::kBool) {
      config.*std::get<bool UpConfig::*>(setting->member) = setting->switch_value;
      continue;
    }
    if (i + 1 >= args.size()) return Status::InvalidArgument(flag + " needs a value");
    const std::string& value = args[++i];
    if (setting->kind == Kind::kList) {
      auto& list = config.*std::get<std::vector<std::string> UpConfig::*>(setting->member);
      if (!listed_apps) list.clear();
      listed_apps = true;
      list.push_back(value);
      continue;
    }
    if (auto problem = Assign(*setting, value, &config)) {
      return Status::InvalidArgument(flag + ": " + *problem);
    }
  }
  if (config.app_max_instances < 1) {
    return Status::InvalidArgument("apps.max_instances must be at least 1");
  }
  if (config.app_min_instances > config.app_max_instances) {
    return Status::InvalidArgument(
        "apps.min_instances (" + std::to_string(config.app_min_instances) +
        ") is above apps.max_instances (" + std::to_string(config.app_max_instances) + ")");
  }
  if (config.app_nice > 19) {
    return Status::InvalidArgument("apps.nice must be in 0-19, not " +
                                   std::to_string(config.app_nice));
  }
  if (config.app_backlog_target < 1) {
    return Status::InvalidArgument("apps.backlog_target must be at least 1");
  }
  if (config.app_cpus != "auto" && config.app_cpus != "all") {
    if (auto cpus = ParseCpuList(config.app_cpus); !cpus.ok()) {
      return Status::InvalidArgument("apps.cpus: " + cpus.status().message() +
                                     " (or auto, or all)");
    }
  }
  if (config.queue_backend != "embedded" && config.queue_backend != "nats") {
    return Status::InvalidArgument("queue.backend must be embedded or nats, not \"" +
                                   config.queue_backend + "\"");
  }
  if (config.queue_backend == "nats") {
    if (config.nats_url.empty()) {
      return Status::InvalidArgument(
          "queue.backend nats needs queue.nats_url (--nats, TIDEPOOL_QUEUE_NATS_URL)");
    }
    if (auto urls = queue::ParseNatsUrls(config.nats_url); !urls.ok()) {
      return Status::InvalidArgument("queue.nats_url: " + urls.status().message());
    }
  }
  if (config.nats_replicas < 1 || config.nats_replicas > queue::kMaxNatsReplicas) {
    return Status::InvalidArgument("queue.nats_replicas must be in 1-5, not " +
                                   std::to_string(config.nats_replicas));
  }
  if (Status prefix = queue::CheckNatsPrefix(config.nats_prefix); !prefix.ok()) {
    return Status::InvalidArgument("queue.nats_prefix: " + prefix.message());
  }
  return config;
}

std::vector<int> AppCpus(const UpConfig& config) {
  if (config.app_cpus == "all") return {};
  if (config.app_cpus == "auto") {
    std::vector<int> cpus = AllowedCpus();
    if (cpus.size() < 2) return {};
    cpus.erase(cpus.begin());
    return cpus;
  }
  auto cpus = ParseCpuList(config.app_cpus);  // checked by LoadUpConfig
  return cpus.ok() ? std::move(cpus).value() : std::vector<int>{};
}

std::string ConfigYaml(const UpConfig& config) {
  auto quoted = [](const std::string& s) { return boost::json::serialize(boost::json::value(s)); };
  std::string out;
  std::string section = "-";
  for (const Setting& s : Settings()) {
    if (section != s.section) {
      section = s.section;
      if (!section.empty()) out += section + ":\n";
    }
    out += section.empty() ? "" : "  ";
    out += std::string(s.key) + ": ";
    std::visit(
        [&](auto member) {
          const auto& value = config.*member;
          using T = std::decay_t<decltype(value)>;
          if constexpr (std::is_same_v<T, std::string>) {
            out += quoted(value);
          } else if constexpr (std::is_same_v<T, bool>) {
            out += value ? "true" : "false";
          } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            out += "[";
            for (size_t i = 0; i < value.size(); ++i) out += (i ? ", " : "") + quoted(value[i]);
            out += "]";
          } else if constexpr (std::is_same_v<T, double>) {
            std::ostringstream number;
            number << value;
            out += number.str();
          } else {
            out += std::to_string(value) + (s.kind == Kind::kSeconds ? "s" : "");
          }
        },
        s.member);
    out += "  # " + EnvName(s) + "\n";
  }
  return out;
}

std::string ConfigFlagsHelp(ConfigCommand command) {
  std::string out;
  if (command == ConfigCommand::kUp) {
    out += "  --config FILE               tidepool.yaml (env TIDEPOOL_CONFIG)\n";
    out += "  --print-config              print the effective settings and exit\n";
  }
  for (const Setting& s : Settings()) {
    const char* flag = FlagOf(s, command);
    if (flag == nullptr) continue;
    // "METAVAR: text" puts the metavariable beside the flag.
    std::string help = s.help;
    std::string line = "  " + std::string(flag);
    const size_t colon = help.find(": ");
    if (colon != std::string::npos && help.find(' ') > colon) {
      line += " " + help.substr(0, colon);
      help = help.substr(colon + 2);
    }
    line.resize(std::max<size_t>(line.size() + 1, 30), ' ');
    out += line + help + "\n" + std::string(30, ' ') + "(" + DottedName(s) + ", env " + EnvName(s) +
           ")\n";
  }
  return out;
}

Result<std::map<std::string, std::vector<std::string>>> LoadApiKeys(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound("cannot read the API keys file " + path);
  std::map<std::string, std::vector<std::string>> keys;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string app, key, extra;
    if (!(words >> app)) continue;  // blank or comment
    if (!(words >> key) || (words >> extra)) {
      return Status::InvalidArgument(
          path + ":" + std::to_string(number) +
          ": expected \"APP KEY\" (the key itself is not repeated here)");
    }
    if (key.size() < 16) {
      return Status::InvalidArgument(path + ":" + std::to_string(number) + ": the key for app " +
                                     app + " is shorter than 16 characters");
    }
    keys[app].push_back(key);
  }
  return keys;
}

}  // namespace tidepool::cli
