#include "pool/spec.h"

#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <limits>
#include <set>
#include <utility>

#include "common/cpu_list.h"

namespace tidepool::pool {

using std::chrono::milliseconds;

namespace {

constexpr milliseconds kDefaultRatePeriod{15'000};
constexpr double kDefaultPercent = 100;
constexpr double kDefaultScaleUpInstances = 4;
constexpr milliseconds kDefaultScaleDownStabilization{300'000};

constexpr size_t kMaxNameLength = 63;  // a DNS label
// A limit below this is almost always a size written without its unit ("256").
constexpr int64_t kMinMemoryLimitBytes = int64_t{1} << 20;
constexpr int kMaxNice = 19;

// ---- Scalars

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

bool ParseWholeInt64(std::string_view text, int64_t& out) {
  if (text.empty()) return false;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && ptr == text.data() + text.size();
}

bool ParseWholeDouble(std::string_view text, double& out) {
  if (text.empty()) return false;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && ptr == text.data() + text.size() && std::isfinite(out);
}

// ---- Validation issues

struct Issue {
  std::string path;  // relative to the pool ("autoscaling.max")
  std::string message;
};

std::string Child(const std::string& path, std::string_view key) {
  if (path.empty()) return std::string(key);
  return path + "." + std::string(key);
}

std::string Index(const std::string& path, size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

bool IsDnsLabel(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  if (name.front() < 'a' || name.front() > 'z') return false;
  if (name.back() == '-') return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || IsDigit(c) || c == '-'; });
}

bool IsEnvName(const std::string& name) {
  if (name.empty() || IsDigit(name.front())) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || IsDigit(c) || c == '_';
  });
}

bool HasWhitespace(const std::string& s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
}

void ValidateRules(const ScalingRules& rules, const std::string& path, std::vector<Issue>& out) {
  if (rules.stabilization_window.count() < 0) {
    out.push_back({Child(path, "stabilization_window"), "must not be negative"});
  }
  if (rules.policies.empty() && rules.select != SelectPolicy::kDisabled) {
    out.push_back({Child(path, "policies"),
                   "needs at least one policy (use `select: disabled` to forbid scaling in "
                   "this direction)"});
  }
  for (size_t i = 0; i < rules.policies.size(); ++i) {
    const RatePolicy& policy = rules.policies[i];
    std::string item = Index(Child(path, "policies"), i);
    if (!(policy.value > 0)) {
      out.push_back({Child(item, "value"), "must be greater than 0"});
    } else if (policy.kind == PolicyKind::kInstances && std::floor(policy.value) != policy.value) {
      out.push_back({Child(item, "value"), "must be a whole number of instances"});
    }
    if (policy.period.count() <= 0) {
      out.push_back({Child(item, "period"), "must be greater than 0"});
    }
  }
}

void ValidateAutoscaling(const AutoscalingSpec& spec, std::vector<Issue>& out) {
  const std::string path = "autoscaling";
  if (spec.min_instances < 0) out.push_back({Child(path, "min"), "must not be negative"});
  if (spec.max_instances < 1) out.push_back({Child(path, "max"), "must be at least 1"});
  if (spec.min_instances > spec.max_instances) {
    out.push_back({Child(path, "min"), "must not exceed max (" +
                                           std::to_string(spec.min_instances) + " > " +
                                           std::to_string(spec.max_instances) + ")"});
  }
  if (spec.poll_interval.count() <= 0) {
    out.push_back({Child(path, "poll_interval"), "must be greater than 0"});
  }
  if (spec.triggers.empty()) {
    out.push_back({Child(path, "triggers"), "needs at least one trigger"});
  }
  for (size_t i = 0; i < spec.triggers.size(); ++i) {
    const Trigger& trigger = spec.triggers[i];
    std::string item = Index(Child(path, "triggers"), i);
    if (!(trigger.target > 0)) out.push_back({Child(item, "target"), "must be greater than 0"});
    if (!(trigger.activation >= 0)) {
      out.push_back({Child(item, "activation"), "must not be negative"});
    }
  }
  ValidateRules(spec.scale_up, Child(path, "scale_up"), out);
  ValidateRules(spec.scale_down, Child(path, "scale_down"), out);
}

void ValidateRestart(const RestartSpec& spec, std::vector<Issue>& out) {
  const std::string path = "restart";
  if (spec.initial_backoff.count() <= 0) {
    out.push_back({Child(path, "initial_backoff"), "must be greater than 0"});
  }
  if (spec.max_backoff < spec.initial_backoff) {
    out.push_back({Child(path, "max_backoff"), "must not be less than initial_backoff"});
  }
  if (spec.reset_after.count() <= 0) {
    out.push_back({Child(path, "reset_after"), "must be greater than 0"});
  }
  if (spec.crash_loop_restarts < 1) {
    out.push_back({Child(path, "crash_loop.restarts"), "must be at least 1"});
  }
  if (spec.crash_loop_window.count() <= 0) {
    out.push_back({Child(path, "crash_loop.window"), "must be greater than 0"});
  }
}

void ValidateLiveness(const LivenessSpec& spec, std::vector<Issue>& out) {
  const std::string path = "liveness";
  bool has_http = !spec.http_path.empty();
  bool has_exec = !spec.exec.empty();
  if (has_http == has_exec) {
    out.push_back({path, "needs exactly one of http_path and exec"});
  }
  if (has_http && spec.http_path.front() != '/') {
    out.push_back({Child(path, "http_path"), "must start with '/'"});
  }
  if (has_exec && spec.exec.front().empty()) {
    out.push_back({Index(Child(path, "exec"), 0), "the program must not be empty"});
  }
  if (spec.initial_delay.count() < 0) {
    out.push_back({Child(path, "initial_delay"), "must not be negative"});
  }
  if (spec.period.count() <= 0) out.push_back({Child(path, "period"), "must be greater than 0"});
  if (spec.timeout.count() <= 0) {
    out.push_back({Child(path, "timeout"), "must be greater than 0"});
  }
  if (spec.failure_threshold < 1) {
    out.push_back({Child(path, "failure_threshold"), "must be at least 1"});
  }
}

std::vector<Issue> CollectIssues(const PoolSpec& spec) {
  std::vector<Issue> out;
  if (spec.name.empty()) {
    out.push_back({"name", "is required"});
  } else if (!IsDnsLabel(spec.name)) {
    out.push_back(
        {"name", "\"" + spec.name +
                     "\" is not a valid name: use 1-63 lowercase letters, digits and '-', "
                     "starting with a letter and not ending with '-'"});
  }
  if (spec.subscription.empty()) {
    out.push_back({"subscription", "is required"});
  } else if (HasWhitespace(spec.subscription)) {
    out.push_back({"subscription", "must not contain whitespace"});
  }
  const RevisionSpec& revision = spec.revision;
  if (revision.command.empty()) out.push_back({"command", "is required"});
  for (const auto& [name, value] : revision.env) {
    if (!IsEnvName(name)) {
      out.push_back({Child("env", name), "is not a valid environment variable name"});
    }
  }
  for (const auto& [name, file] : revision.secrets) {
    std::string path = Child("secrets", name);
    if (!IsEnvName(name)) {
      out.push_back({path, "is not a valid environment variable name"});
    }
    if (file.empty()) out.push_back({path, "needs the path of the file holding the value"});
    if (revision.env.contains(name)) {
      out.push_back({path, "is also set in env; set it in one place"});
    }
  }
  if (revision.memory_limit_bytes < 0) {
    out.push_back({"memory_limit", "must not be negative"});
  } else if (revision.memory_limit_bytes > 0 &&
             revision.memory_limit_bytes < kMinMemoryLimitBytes) {
    out.push_back({"memory_limit", std::to_string(revision.memory_limit_bytes) +
                                       " bytes is below the 1Mi minimum (missing unit?)"});
  }
  if (revision.nice < 0 || revision.nice > kMaxNice) {
    out.push_back({"nice", std::to_string(revision.nice) + " is not in 0-19"});
  }
  if (!revision.cpus.empty()) {
    if (auto cpus = ParseCpuList(revision.cpus); !cpus.ok()) {
      out.push_back({"cpus", cpus.status().message()});
    }
  }
  if (spec.instances < 0) out.push_back({"instances", "must not be negative"});
  if (spec.grace_period.count() < 0) out.push_back({"grace_period", "must not be negative"});
  ValidateRestart(spec.restart, out);
  if (spec.liveness) ValidateLiveness(*spec.liveness, out);
  if (spec.rollout.max_surge < 0) {
    out.push_back({"rollout.max_surge", "must not be negative"});
  }
  if (spec.rollout.max_unavailable < 0) {
    out.push_back({"rollout.max_unavailable", "must not be negative"});
  }
  if (spec.rollout.max_surge + spec.rollout.max_unavailable < 1) {
    out.push_back({"rollout",
                   "max_surge + max_unavailable must be at least 1, or a rollout "
                   "could never make progress"});
  }
  if (spec.autoscaling) ValidateAutoscaling(*spec.autoscaling, out);
  return out;
}

// ---- YAML

struct Field {
  std::string_view key;
  std::function<void(const YAML::Node& value, const std::string& path)> parse;
};

// Reads YAML into specs, collecting every problem with the line it was found on. Paths are
// absolute ("pools[0].autoscaling.max"); `line_of_` remembers where each path was written
// so that Validate's issues (which carry only a path) can name a line too.
class Parser {
 public:
  explicit Parser(std::string origin) : origin_(std::move(origin)) {}

  bool failed() const { return !errors_.empty(); }
  size_t error_count() const { return errors_.size(); }

  Status ToStatus() const {
    std::string message;
    for (const std::string& error : errors_) {
      if (!message.empty()) message += '\n';
      message += error;
    }
    return Status::InvalidArgument(message);
  }

  void Fail(int line, const std::string& path, const std::string& what) {
    std::string error = origin_ + ":" + std::to_string(line) + ": ";
    if (!path.empty()) error += path + ": ";
    errors_.push_back(error + what);
  }
  void Fail(const YAML::Node& at, const std::string& path, const std::string& what) {
    Fail(LineOf(at), path, what);
  }

  // Reports Validate's issues for the pool at `prefix`, at the line of the nearest path that
  // was written in the file.
  void AddIssues(const std::vector<Issue>& issues, const std::string& prefix) {
    for (const Issue& issue : issues) {
      std::string path = prefix.empty() ? issue.path : Child(prefix, issue.path);
      Fail(NearestLine(path), path, issue.message);
    }
  }

  void ParsePool(const YAML::Node& node, const std::string& path, PoolSpec& out) {
    line_of_[path] = LineOf(node);
    if (!node.IsMap()) {
      Fail(node, path, "expected a mapping (a pool)");
      return;
    }
    RevisionSpec& revision = out.revision;
    Map(node, path,
        {
            {"name", [&](const auto& v, const auto& p) { String(v, p, out.name); }},
            {"subscription", [&](const auto& v, const auto& p) { String(v, p, out.subscription); }},
            {"command", [&](const auto& v, const auto& p) { String(v, p, revision.command); }},
            {"args", [&](const auto& v, const auto& p) { StringList(v, p, revision.args); }},
            {"env", [&](const auto& v, const auto& p) { StringMap(v, p, revision.env); }},
            {"secrets", [&](const auto& v, const auto& p) { StringMap(v, p, revision.secrets); }},
            {"memory_limit",
             [&](const auto& v, const auto& p) { Size(v, p, revision.memory_limit_bytes); }},
            {"working_dir",
             [&](const auto& v, const auto& p) { String(v, p, revision.working_dir); }},
            {"nice", [&](const auto& v, const auto& p) { Int(v, p, revision.nice); }},
            {"cpus", [&](const auto& v, const auto& p) { String(v, p, revision.cpus); }},
            {"instances", [&](const auto& v, const auto& p) { Int(v, p, out.instances); }},
            {"grace_period",
             [&](const auto& v, const auto& p) { Duration(v, p, out.grace_period); }},
            {"restart", [&](const auto& v, const auto& p) { Restart(v, p, out.restart); }},
            {"liveness",
             [&](const auto& v, const auto& p) { Liveness(v, p, out.liveness.emplace()); }},
            {"rollout", [&](const auto& v, const auto& p) { Rollout(v, p, out.rollout); }},
            {"autoscaling",
             [&](const auto& v, const auto& p) { Autoscaling(v, p, out.autoscaling.emplace()); }},
        });
  }

 private:
  static int LineOf(const YAML::Node& node) { return node.Mark().line + 1; }

  int NearestLine(std::string path) const {
    while (true) {
      if (auto it = line_of_.find(path); it != line_of_.end()) return it->second;
      if (path.empty()) return 1;
      size_t cut = path.find_last_of(".[");
      path = cut == std::string::npos ? "" : path.substr(0, cut);
    }
  }

  // A key written with no value (`env:`) is null; for a mapping or a list that means empty.
  static bool IsEmpty(const YAML::Node& node) { return node.IsNull(); }

  void Map(const YAML::Node& node, const std::string& path, std::initializer_list<Field> fields) {
    if (IsEmpty(node)) return;
    if (!node.IsMap()) {
      Fail(node, path, "expected a mapping");
      return;
    }
    std::set<std::string> seen;
    for (const auto& entry : node) {
      const YAML::Node& key_node = entry.first;
      if (!key_node.IsScalar()) {
        Fail(key_node, path, "keys must be strings");
        continue;
      }
      const std::string& key = key_node.Scalar();
      std::string key_path = Child(path, key);
      if (!seen.insert(key).second) {
        Fail(key_node, key_path, "duplicate key");
        continue;
      }
      auto field =
          std::find_if(fields.begin(), fields.end(), [&](const Field& f) { return f.key == key; });
      if (field == fields.end()) {
        std::string known;
        for (const Field& f : fields) {
          if (!known.empty()) known += ", ";
          known += f.key;
        }
        Fail(key_node, key_path, "unknown key (expected one of: " + known + ")");
        continue;
      }
      line_of_[key_path] = LineOf(key_node);
      field->parse(entry.second, key_path);
    }
  }

  bool Scalar(const YAML::Node& node, const std::string& path, const char* expected) {
    if (node.IsScalar()) return true;
    Fail(node, path, std::string("expected ") + expected);
    return false;
  }

  void String(const YAML::Node& node, const std::string& path, std::string& out) {
    if (Scalar(node, path, "a string")) out = node.Scalar();
  }

  void Int(const YAML::Node& node, const std::string& path, int& out) {
    if (!Scalar(node, path, "an integer")) return;
    int64_t value = 0;
    if (!ParseWholeInt64(node.Scalar(), value) || value < std::numeric_limits<int>::min() ||
        value > std::numeric_limits<int>::max()) {
      Fail(node, path, "expected an integer, got \"" + node.Scalar() + "\"");
      return;
    }
    out = static_cast<int>(value);
  }

  void Number(const YAML::Node& node, const std::string& path, double& out) {
    if (!Scalar(node, path, "a number")) return;
    if (!ParseWholeDouble(node.Scalar(), out)) {
      Fail(node, path, "expected a number, got \"" + node.Scalar() + "\"");
    }
  }

  void Duration(const YAML::Node& node, const std::string& path, milliseconds& out) {
    if (!Scalar(node, path, "a duration (\"30s\", \"500ms\", \"2m\")")) return;
    Result<milliseconds> parsed = ParseDuration(node.Scalar());
    if (!parsed.ok()) {
      Fail(node, path, parsed.status().message());
      return;
    }
    out = *parsed;
  }

  // A duration stored as seconds (the unit of the age trigger).
  void DurationSeconds(const YAML::Node& node, const std::string& path, double& out) {
    milliseconds ms{};
    size_t errors_before = errors_.size();
    Duration(node, path, ms);
    if (errors_.size() == errors_before) out = static_cast<double>(ms.count()) / 1000.0;
  }

  void Size(const YAML::Node& node, const std::string& path, int64_t& out) {
    if (!Scalar(node, path, "a size (\"256Mi\", \"1Gi\")")) return;
    Result<int64_t> parsed = ParseByteSize(node.Scalar());
    if (!parsed.ok()) {
      Fail(node, path, parsed.status().message());
      return;
    }
    out = *parsed;
  }

  void StringList(const YAML::Node& node, const std::string& path, std::vector<std::string>& out) {
    out.clear();
    if (IsEmpty(node)) return;
    if (!node.IsSequence()) {
      Fail(node, path, "expected a list of strings");
      return;
    }
    for (size_t i = 0; i < node.size(); ++i) {
      std::string item;
      String(node[i], Index(path, i), item);
      out.push_back(std::move(item));
    }
  }

  void StringMap(const YAML::Node& node, const std::string& path,
                 std::map<std::string, std::string>& out) {
    out.clear();
    if (IsEmpty(node)) return;
    if (!node.IsMap()) {
      Fail(node, path, "expected a mapping of names to strings");
      return;
    }
    for (const auto& entry : node) {
      if (!entry.first.IsScalar()) {
        Fail(entry.first, path, "keys must be strings");
        continue;
      }
      const std::string& key = entry.first.Scalar();
      std::string key_path = Child(path, key);
      line_of_[key_path] = LineOf(entry.first);
      if (out.contains(key)) {
        Fail(entry.first, key_path, "duplicate key");
        continue;
      }
      std::string value;
      if (!entry.second.IsNull()) String(entry.second, key_path, value);
      out.emplace(key, std::move(value));
    }
  }

  template <typename Enum>
  void Choice(const YAML::Node& node, const std::string& path,
              std::initializer_list<std::pair<std::string_view, Enum>> choices, Enum& out) {
    if (!Scalar(node, path, "a string")) return;
    std::string known;
    for (const auto& [name, value] : choices) {
      if (name == node.Scalar()) {
        out = value;
        return;
      }
      if (!known.empty()) known += ", ";
      known += name;
    }
    Fail(node, path, "\"" + node.Scalar() + "\" is not one of: " + known);
  }

  void Restart(const YAML::Node& node, const std::string& path, RestartSpec& out) {
    Map(node, path,
        {
            {"policy",
             [&](const auto& v, const auto& p) {
               Choice<RestartPolicy>(v, p,
                                     {{"on-failure", RestartPolicy::kOnFailure},
                                      {"always", RestartPolicy::kAlways},
                                      {"never", RestartPolicy::kNever}},
                                     out.policy);
             }},
            {"initial_backoff",
             [&](const auto& v, const auto& p) { Duration(v, p, out.initial_backoff); }},
            {"max_backoff", [&](const auto& v, const auto& p) { Duration(v, p, out.max_backoff); }},
            {"reset_after", [&](const auto& v, const auto& p) { Duration(v, p, out.reset_after); }},
            {"crash_loop",
             [&](const auto& v, const auto& p) {
               Map(v, p,
                   {
                       {"restarts", [&](const auto& v2,
                                        const auto& p2) { Int(v2, p2, out.crash_loop_restarts); }},
                       {"window", [&](const auto& v2,
                                      const auto& p2) { Duration(v2, p2, out.crash_loop_window); }},
                   });
             }},
        });
  }

  void Liveness(const YAML::Node& node, const std::string& path, LivenessSpec& out) {
    Map(node, path,
        {
            {"http_path", [&](const auto& v, const auto& p) { String(v, p, out.http_path); }},
            {"exec", [&](const auto& v, const auto& p) { StringList(v, p, out.exec); }},
            {"initial_delay",
             [&](const auto& v, const auto& p) { Duration(v, p, out.initial_delay); }},
            {"period", [&](const auto& v, const auto& p) { Duration(v, p, out.period); }},
            {"timeout", [&](const auto& v, const auto& p) { Duration(v, p, out.timeout); }},
            {"failure_threshold",
             [&](const auto& v, const auto& p) { Int(v, p, out.failure_threshold); }},
        });
  }

  void Rollout(const YAML::Node& node, const std::string& path, RolloutSpec& out) {
    Map(node, path,
        {
            {"max_surge", [&](const auto& v, const auto& p) { Int(v, p, out.max_surge); }},
            {"max_unavailable",
             [&](const auto& v, const auto& p) { Int(v, p, out.max_unavailable); }},
        });
  }

  void Autoscaling(const YAML::Node& node, const std::string& path, AutoscalingSpec& out) {
    Map(node, path,
        {
            {"min", [&](const auto& v, const auto& p) { Int(v, p, out.min_instances); }},
            {"max", [&](const auto& v, const auto& p) { Int(v, p, out.max_instances); }},
            {"poll_interval",
             [&](const auto& v, const auto& p) { Duration(v, p, out.poll_interval); }},
            {"triggers", [&](const auto& v, const auto& p) { Triggers(v, p, out.triggers); }},
            {"scale_up", [&](const auto& v, const auto& p) { Rules(v, p, out.scale_up); }},
            {"scale_down", [&](const auto& v, const auto& p) { Rules(v, p, out.scale_down); }},
        });
  }

  void Triggers(const YAML::Node& node, const std::string& path, std::vector<Trigger>& out) {
    out.clear();
    if (IsEmpty(node)) return;
    if (!node.IsSequence()) {
      Fail(node, path, "expected a list of triggers");
      return;
    }
    for (size_t i = 0; i < node.size(); ++i) {
      std::string item_path = Index(path, i);
      const YAML::Node& item = node[i];
      line_of_[item_path] = LineOf(item);
      if (!item.IsMap()) {
        Fail(item, item_path, "expected a mapping (a trigger)");
        continue;
      }
      Trigger trigger;
      bool has_target = false;
      // The type decides how target and activation read, so it is looked up first.
      if (YAML::Node type = item["type"]; !type) {
        Fail(item, item_path, "missing key `type` (backlog or oldest_unacked_age)");
      } else {
        Choice<TriggerKind>(type, Child(item_path, "type"),
                            {{"backlog", TriggerKind::kBacklog},
                             {"oldest_unacked_age", TriggerKind::kOldestUnackedAge}},
                            trigger.kind);
      }
      auto threshold = [&](const YAML::Node& v, const std::string& p, double& value) {
        if (trigger.kind == TriggerKind::kOldestUnackedAge) {
          DurationSeconds(v, p, value);
        } else {
          Number(v, p, value);
        }
      };
      Map(item, item_path,
          {
              {"type", [](const auto&, const auto&) {}},
              {"target",
               [&](const auto& v, const auto& p) {
                 has_target = true;
                 threshold(v, p, trigger.target);
               }},
              {"activation",
               [&](const auto& v, const auto& p) { threshold(v, p, trigger.activation); }},
          });
      if (!has_target) Fail(item, item_path, "missing key `target`");
      out.push_back(trigger);
    }
  }

  void Rules(const YAML::Node& node, const std::string& path, ScalingRules& out) {
    Map(node, path,
        {
            {"stabilization_window",
             [&](const auto& v, const auto& p) { Duration(v, p, out.stabilization_window); }},
            {"select",
             [&](const auto& v, const auto& p) {
               Choice<SelectPolicy>(v, p,
                                    {{"max", SelectPolicy::kMax},
                                     {"min", SelectPolicy::kMin},
                                     {"disabled", SelectPolicy::kDisabled}},
                                    out.select);
             }},
            {"policies", [&](const auto& v, const auto& p) { Policies(v, p, out.policies); }},
        });
  }

  void Policies(const YAML::Node& node, const std::string& path, std::vector<RatePolicy>& out) {
    // Written policies replace the defaults rather than adding to them, as in the HPA.
    out.clear();
    if (IsEmpty(node)) return;
    if (!node.IsSequence()) {
      Fail(node, path, "expected a list of policies");
      return;
    }
    for (size_t i = 0; i < node.size(); ++i) {
      std::string item_path = Index(path, i);
      const YAML::Node& item = node[i];
      line_of_[item_path] = LineOf(item);
      if (!item.IsMap()) {
        Fail(item, item_path, "expected a mapping (a policy)");
        continue;
      }
      RatePolicy policy;
      bool has_type = false;
      bool has_value = false;
      Map(item, item_path,
          {
              {"type",
               [&](const auto& v, const auto& p) {
                 has_type = true;
                 Choice<PolicyKind>(
                     v, p,
                     {{"instances", PolicyKind::kInstances}, {"percent", PolicyKind::kPercent}},
                     policy.kind);
               }},
              {"value",
               [&](const auto& v, const auto& p) {
                 has_value = true;
                 Number(v, p, policy.value);
               }},
              {"period", [&](const auto& v, const auto& p) { Duration(v, p, policy.period); }},
          });
      if (!has_type) Fail(item, item_path, "missing key `type` (instances or percent)");
      if (!has_value) Fail(item, item_path, "missing key `value`");
      out.push_back(policy);
    }
  }

  std::string origin_;
  std::vector<std::string> errors_;
  std::map<std::string, int> line_of_;
};

Result<YAML::Node> LoadYaml(const std::string& yaml_text, const std::string& origin) {
  try {
    return YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    // yaml-cpp reports syntax errors only by exception; this is the boundary where they
    // become values.
    return Status::InvalidArgument(origin + ":" + std::to_string(e.mark.line + 1) +
                                   ": invalid YAML: " + e.msg);
  }
}

// ---- Digest

void AppendField(std::string& out, std::string_view tag, std::string_view value) {
  // Length-prefixed, so that no choice of values can make two specs serialize alike.
  out.append(tag);
  out.push_back('=');
  out.append(std::to_string(value.size()));
  out.push_back(':');
  out.append(value);
  out.push_back('\n');
}

}  // namespace

ScalingRules DefaultScaleUpRules() {
  return ScalingRules{
      .stabilization_window = milliseconds{0},
      .policies = {{.kind = PolicyKind::kPercent,
                    .value = kDefaultPercent,
                    .period = kDefaultRatePeriod},
                   {.kind = PolicyKind::kInstances,
                    .value = kDefaultScaleUpInstances,
                    .period = kDefaultRatePeriod}},
      .select = SelectPolicy::kMax,
  };
}

ScalingRules DefaultScaleDownRules() {
  return ScalingRules{
      .stabilization_window = kDefaultScaleDownStabilization,
      .policies = {{.kind = PolicyKind::kPercent,
                    .value = kDefaultPercent,
                    .period = kDefaultRatePeriod}},
      .select = SelectPolicy::kMax,
  };
}

namespace {
// Built by appending: GCC 12's -Wrestrict misfires on `"\"" + std::string(text)` at -O3.
}  // namespace

Status Validate(const PoolSpec& spec) {
  std::vector<Issue> issues = CollectIssues(spec);
  if (issues.empty()) return Status::Ok();
  std::string message;
  for (const Issue& issue : issues) {
    if (!message.empty()) message += '\n';
    message += issue.path + ": " + issue.message;
  }
  return Status::InvalidArgument(message);
}

Result<PoolSpec> ParsePool(const std::string& yaml_text, const std::string& origin) {
  TP_ASSIGN_OR_RETURN(YAML::Node root, LoadYaml(yaml_text, origin));
  Parser parser(origin);
  PoolSpec spec;
  parser.ParsePool(root, "", spec);
  if (!parser.failed()) parser.AddIssues(CollectIssues(spec), "");
  if (parser.failed()) return parser.ToStatus();
  return spec;
}

Result<std::vector<PoolSpec>> ParsePools(const std::string& yaml_text, const std::string& origin) {
  TP_ASSIGN_OR_RETURN(YAML::Node root, LoadYaml(yaml_text, origin));
  std::vector<PoolSpec> specs;
  if (root.IsNull()) return specs;  // an empty file declares no pools
  Parser parser(origin);
  if (!root.IsMap()) {
    parser.Fail(root, "", "expected a mapping with a `pools` key");
    return parser.ToStatus();
  }
  const YAML::Node pools = root["pools"];
  if (!pools || pools.IsNull()) return specs;
  if (!pools.IsSequence()) {
    parser.Fail(pools, "pools", "expected a list of pools");
    return parser.ToStatus();
  }
  std::map<std::string, size_t> index_of_name;
  for (size_t i = 0; i < pools.size(); ++i) {
    std::string path = Index("pools", i);
    PoolSpec spec;
    size_t errors_before = parser.error_count();
    parser.ParsePool(pools[i], path, spec);
    // A value that failed to parse would also fail validation ("is required"); say it once.
    std::vector<Issue> issues;
    if (parser.error_count() == errors_before) issues = CollectIssues(spec);
    if (!spec.name.empty()) {
      auto [it, inserted] = index_of_name.emplace(spec.name, i);
      if (!inserted) {
        issues.push_back({"name", "\"" + spec.name + "\" is already the name of pools[" +
                                      std::to_string(it->second) + "]"});
      }
    }
    parser.AddIssues(issues, path);
    specs.push_back(std::move(spec));
  }
  if (parser.failed()) return parser.ToStatus();
  return specs;
}

std::string RevisionDigest(const RevisionSpec& spec) {
  std::string canonical = "tidepool.revision.v1\n";
  AppendField(canonical, "command", spec.command);
  AppendField(canonical, "args", std::to_string(spec.args.size()));
  for (const std::string& arg : spec.args) AppendField(canonical, "arg", arg);
  // std::map iterates in key order, which makes the serialization canonical.
  AppendField(canonical, "env", std::to_string(spec.env.size()));
  for (const auto& [name, value] : spec.env) {
    AppendField(canonical, "env.name", name);
    AppendField(canonical, "env.value", value);
  }
  // Secrets contribute their file paths: the values are read at each start and must never
  // reach anything that is logged or stored, digests included.
  AppendField(canonical, "secrets", std::to_string(spec.secrets.size()));
  for (const auto& [name, file] : spec.secrets) {
    AppendField(canonical, "secret.name", name);
    AppendField(canonical, "secret.file", file);
  }
  AppendField(canonical, "memory_limit_bytes", std::to_string(spec.memory_limit_bytes));
  AppendField(canonical, "working_dir", spec.working_dir);
  // Only when set: the digests of revisions from before the field existed stay the same.
  if (spec.nice != 0) AppendField(canonical, "nice", std::to_string(spec.nice));
  if (!spec.cpus.empty()) AppendField(canonical, "cpus", spec.cpus);

  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  if (EVP_Digest(canonical.data(), canonical.size(), digest, &digest_size, EVP_sha256(), nullptr) !=
      1) {
    // SHA-256 over a buffer in memory has no expected failure; this is a broken OpenSSL.
    std::abort();
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * digest_size);
  for (unsigned int i = 0; i < digest_size; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xf]);
  }
  return hex;
}

}  // namespace tidepool::pool
