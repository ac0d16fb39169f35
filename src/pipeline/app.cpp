#include "pipeline/app.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <boost/json/parse.hpp>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/units.h"

namespace tidepool::pipeline {

namespace json = boost::json;

namespace {

constexpr size_t kMaxNameLength = 63;
constexpr int kMaxRetries = 10;
// Names the step context already uses; a step id may not shadow them.
const std::set<std::string> kReservedIds = {"app",     "conversation_id", "request_id",
                                            "message", "history",         "attempt"};

bool IsName(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  if (name.front() < 'a' || name.front() > 'z' || name.back() == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

bool IsStepId(const std::string& id) {
  if (id.empty() || id.size() > kMaxNameLength) return false;
  if (!((id.front() >= 'a' && id.front() <= 'z') || id.front() == '_')) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// An unquoted YAML scalar as JSON: a number, true, false, null, or else the string.
json::value PlainScalar(const std::string& text) {
  if (text == "true") return true;
  if (text == "false") return false;
  if (text == "null" || text == "~") return nullptr;
  char* end = nullptr;
  errno = 0;
  const long long whole = std::strtoll(text.c_str(), &end, 10);
  if (!text.empty() && *end == '\0' && errno == 0) return static_cast<int64_t>(whole);
  const double number = std::strtod(text.c_str(), &end);
  if (!text.empty() && *end == '\0' && std::isfinite(number)) return number;
  return json::value(text);
}

// Collects problems as "ORIGIN:LINE: key: message".
class Problems {
 public:
  explicit Problems(std::string origin) : origin_(std::move(origin)) {}
  void Add(const YAML::Node& node, const std::string& key, const std::string& message) {
    std::string where = origin_;
    if (node.IsDefined() && node.Mark().line >= 0) {
      where += ":" + std::to_string(node.Mark().line + 1);
    }
    lines_.push_back(where + ": " + key + ": " + message);
  }
  bool empty() const { return lines_.empty(); }
  Status ToStatus() const {
    std::string text;
    for (const auto& line : lines_) {
      if (!text.empty()) text += "\n";
      text += line;
    }
    return Status::InvalidArgument(text);
  }

 private:
  std::string origin_;
  std::vector<std::string> lines_;
};

void CheckKeys(const YAML::Node& map, const std::set<std::string>& allowed, const std::string& path,
               Problems& problems) {
  for (const auto& entry : map) {
    const std::string key = entry.first.Scalar();
    if (!allowed.contains(key)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      problems.Add(entry.first, path.empty() ? key : path + "." + key,
                   "unknown key (expected one of: " + list + ")");
    }
  }
}

std::optional<std::string> ScalarAt(const YAML::Node& map, const std::string& key,
                                    const std::string& path, Problems& problems) {
  const YAML::Node node = map[key];
  if (!node.IsDefined() || node.IsNull()) return std::nullopt;
  if (!node.IsScalar()) {
    problems.Add(node, path + key, "expected a single value");
    return std::nullopt;
  }
  return node.Scalar();
}

std::optional<bool> BoolAt(const YAML::Node& map, const std::string& key, const std::string& path,
                           Problems& problems) {
  auto text = ScalarAt(map, key, path, problems);
  if (!text) return std::nullopt;
  if (*text == "true") return true;
  if (*text == "false") return false;
  problems.Add(map[key], path + key, "expected true or false, got \"" + *text + "\"");
  return std::nullopt;
}

std::optional<int64_t> IntAt(const YAML::Node& map, const std::string& key, const std::string& path,
                             int64_t min, int64_t max, Problems& problems) {
  auto text = ScalarAt(map, key, path, problems);
  if (!text) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text->c_str(), &end, 10);
  if (text->empty() || *end != '\0' || errno != 0 || value < min || value > max) {
    problems.Add(map[key], path + key,
                 "expected a whole number from " + std::to_string(min) + " to " +
                     std::to_string(max) + ", got \"" + *text + "\"");
    return std::nullopt;
  }
  return value;
}

std::optional<double> DoubleAt(const YAML::Node& map, const std::string& key,
                               const std::string& path, double min, double max,
                               Problems& problems) {
  auto text = ScalarAt(map, key, path, problems);
  if (!text) return std::nullopt;
  char* end = nullptr;
  const double value = std::strtod(text->c_str(), &end);
  if (text->empty() || *end != '\0' || !(value >= min && value <= max)) {
    problems.Add(map[key], path + key,
                 "expected a number from " + std::to_string(min) + " to " + std::to_string(max) +
                     ", got \"" + *text + "\"");
    return std::nullopt;
  }
  return value;
}

std::optional<std::chrono::milliseconds> DurationAt(const YAML::Node& map, const std::string& key,
                                                    const std::string& path, Problems& problems) {
  auto text = ScalarAt(map, key, path, problems);
  if (!text) return std::nullopt;
  auto parsed = ParseDuration(*text);
  if (!parsed.ok()) {
    problems.Add(map[key], path + key, parsed.status().message());
    return std::nullopt;
  }
  if (parsed->count() <= 0) {
    problems.Add(map[key], path + key, "must be greater than 0");
    return std::nullopt;
  }
  return *parsed;
}

std::optional<Template> TemplateAt(const YAML::Node& map, const std::string& key,
                                   const std::string& path, Problems& problems) {
  auto text = ScalarAt(map, key, path, problems);
  if (!text) return std::nullopt;
  auto parsed = Template::Parse(*text);
  if (!parsed.ok()) {
    problems.Add(map[key], path + key, parsed.status().message());
    return std::nullopt;
  }
  return std::move(parsed).value();
}

void ParseModel(const YAML::Node& node, const std::string& path, ModelSettings& model,
                Problems& problems) {
  if (!node.IsDefined() || node.IsNull()) return;
  if (!node.IsMap()) {
    problems.Add(node, path, "expected a mapping {name, temperature, max_tokens}");
    return;
  }
  CheckKeys(node, {"name", "temperature", "max_tokens"}, path, problems);
  const std::string prefix = path + ".";
  if (auto name = ScalarAt(node, "name", prefix, problems)) model.name = *name;
  if (auto t = DoubleAt(node, "temperature", prefix, 0, 2, problems)) model.temperature = *t;
  if (auto m = IntAt(node, "max_tokens", prefix, 1, 1'000'000, problems)) {
    model.max_tokens = static_cast<int>(*m);
  }
}

void ParseStep(const YAML::Node& node, size_t index, const AppSpec& app, StepSpec& step,
               Problems& problems) {
  const std::string at = "steps[" + std::to_string(index) + "]";
  if (!node.IsMap()) {
    problems.Add(node, at, "expected a mapping with id and kind");
    return;
  }
  const std::string p = at + ".";
  auto id = ScalarAt(node, "id", p, problems);
  if (!id) {
    problems.Add(node, p + "id", "required");
  } else if (!IsStepId(*id)) {
    problems.Add(node["id"], p + "id",
                 "\"" + *id + "\" must be 1-63 of a-z, 0-9 and _, starting with a letter or _");
  } else if (kReservedIds.contains(*id)) {
    problems.Add(node["id"], p + "id", "\"" + *id + "\" is a reserved name of the step context");
  } else {
    step.id = *id;
  }
  auto kind = ScalarAt(node, "kind", p, problems);
  const std::set<std::string> common = {"id", "kind", "when", "final", "timeout", "retries"};
  auto with = [&](std::set<std::string> extra) {
    extra.insert(common.begin(), common.end());
    return extra;
  };
  if (!kind) {
    problems.Add(node, p + "kind", "required (llm, tool or template)");
    return;
  }
  if (*kind == "llm") {
    step.kind = StepKind::kLlm;
    CheckKeys(node, with({"system", "user", "history", "model", "response_format", "stream"}), at,
              problems);
  } else if (*kind == "tool") {
    step.kind = StepKind::kTool;
    CheckKeys(node, with({"tool", "http", "data", "args", "emit"}), at, problems);
  } else if (*kind == "template") {
    step.kind = StepKind::kTemplate;
    CheckKeys(node, with({"text"}), at, problems);
  } else {
    problems.Add(node["kind"], p + "kind",
                 "\"" + *kind + "\" is not a step kind (expected llm, tool or template)");
    return;
  }

  if (auto when = ScalarAt(node, "when", p, problems)) {
    auto parsed = Condition::Parse(*when);
    if (parsed.ok()) {
      step.when = std::move(parsed).value();
    } else {
      problems.Add(node["when"], p + "when", parsed.status().message());
    }
  }
  if (auto final = BoolAt(node, "final", p, problems)) step.final = *final;
  step.timeout = DurationAt(node, "timeout", p, problems).value_or(app.step_timeout);
  if (auto retries = IntAt(node, "retries", p, 0, kMaxRetries, problems)) {
    step.retries = static_cast<int>(*retries);
  }

  auto file_key = [&](const std::string& key, const std::string& value, const YAML::Node& at_node,
                      bool json_only) -> std::string {
    if (!app.files.contains(value)) {
      problems.Add(at_node, p + key, "\"" + value + "\" is not a key of files:");
      return "";
    }
    if (json_only && !app.json_files.contains(value)) {
      problems.Add(at_node, p + key, "files." + value + " must be a .json file");
      return "";
    }
    return value;
  };

  switch (step.kind) {
    case StepKind::kLlm: {
      step.system = TemplateAt(node, "system", p, problems);
      if (auto user = TemplateAt(node, "user", p, problems)) {
        step.user = std::move(*user);
      } else {
        step.user = Template::Parse("{{ message }}").value();
      }
      if (auto history = ScalarAt(node, "history", p, problems)) {
        if (*history == "full" || *history == "all") {
          step.history = {.all = true, .last = 0};
        } else if (*history == "none") {
          step.history = {.all = false, .last = 0};
        } else if (auto n = IntAt(node, "history", p, 0, 10'000, problems)) {
          step.history = {.all = false, .last = static_cast<int>(*n)};
        }
      }
      step.model = app.model;
      ParseModel(node["model"], p + "model", step.model, problems);
      const YAML::Node format = node["response_format"];
      if (format.IsDefined() && !format.IsNull()) {
        if (!format.IsMap() || !format["json_schema"].IsDefined()) {
          problems.Add(format, p + "response_format",
                       "expected {json_schema: FILE_KEY} naming a .json file of files:");
        } else {
          CheckKeys(format, {"json_schema"}, p + "response_format", problems);
          if (auto key = ScalarAt(format, "json_schema", p + "response_format.", problems)) {
            step.json_schema_file =
                file_key("response_format.json_schema", *key, format["json_schema"], true);
          }
        }
      }
      if (auto stream = BoolAt(node, "stream", p, problems)) step.stream = *stream;
      if (step.stream && !step.json_schema_file.empty()) {
        problems.Add(node["stream"], p + "stream",
                     "structured output (response_format) is not streamed to the user");
      }
      break;
    }
    case StepKind::kTool: {
      auto tool = ScalarAt(node, "tool", p, problems);
      const YAML::Node http = node["http"];
      if (tool && http.IsDefined()) {
        problems.Add(node, at, "a tool step has either tool: or http:, not both");
      } else if (tool) {
        step.tool = *tool;
      } else if (http.IsDefined() && http.IsMap()) {
        CheckKeys(http, {"url", "headers"}, p + "http", problems);
        HttpToolSpec spec;
        if (auto url = ScalarAt(http, "url", p + "http.", problems)) spec.url = *url;
        if (!spec.url.starts_with("http://") && !spec.url.starts_with("https://")) {
          problems.Add(http, p + "http.url", "required: an http:// or https:// URL");
        }
        const YAML::Node headers = http["headers"];
        if (headers.IsDefined() && headers.IsMap()) {
          for (const auto& h : headers) {
            spec.headers.emplace_back(h.first.Scalar(), h.second.Scalar());
          }
        } else if (headers.IsDefined()) {
          problems.Add(headers, p + "http.headers", "expected a mapping NAME: VALUE");
        }
        step.http = std::move(spec);
      } else {
        problems.Add(node, p + "tool", "required: tool: NAME (a registered tool) or http: {url}");
      }
      if (auto data = ScalarAt(node, "data", p, problems)) {
        step.data_file = file_key("data", *data, node["data"], false);
      }
      const YAML::Node args = node["args"];
      if (args.IsDefined() && args.IsScalar()) {
        step.args_all = TemplateAt(node, "args", p, problems);
      } else if (args.IsDefined() && args.IsMap()) {
        for (const auto& entry : args) {
          const std::string key = entry.first.Scalar();
          if (!entry.second.IsScalar()) {
            problems.Add(entry.second, p + "args." + key,
                         "expected a value or a template (write lists and objects as JSON in "
                         "a template)");
            continue;
          }
          // A value without a hole is a constant; an unquoted YAML number, true, false or
          // null keeps its JSON type.
          const std::string& value = entry.second.Scalar();
          if (value.find("{{") == std::string::npos) {
            step.arg_constants.emplace(
                key, entry.second.Tag() == "?" ? PlainScalar(value) : json::value(value));
            continue;
          }
          auto parsed = Template::Parse(value);
          if (!parsed.ok()) {
            problems.Add(entry.second, p + "args." + key, parsed.status().message());
            continue;
          }
          step.args.emplace(key, std::move(parsed).value());
        }
      } else if (args.IsDefined() && !args.IsNull()) {
        problems.Add(args, p + "args", "expected a mapping or a template");
      }
      if (auto emit = ScalarAt(node, "emit", p, problems)) step.emit = *emit;
      break;
    }
    case StepKind::kTemplate: {
      if (auto text = TemplateAt(node, "text", p, problems)) {
        step.text = std::move(*text);
      } else {
        problems.Add(node, p + "text", "required");
      }
      break;
    }
  }
}

Result<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot read " + path + ": " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

Result<AppSpec> ParseApp(const std::string& yaml_text, const std::string& origin,
                         const std::string& dir) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument(origin + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (!root.IsMap()) return Status::InvalidArgument(origin + ": expected a mapping (an app spec)");
  Problems problems(origin);
  CheckKeys(root,
            {"app", "title", "description", "greeting", "examples", "requests", "events", "model",
             "step_timeout", "files", "steps"},
            "", problems);
  AppSpec app;
  app.dir = dir;
  if (auto name = ScalarAt(root, "app", "", problems)) {
    if (IsName(*name)) {
      app.name = *name;
    } else {
      problems.Add(root["app"], "app",
                   "\"" + *name + "\" must be 1-63 of a-z, 0-9 and -, starting with a letter");
    }
  } else {
    problems.Add(root, "app", "required: the app's name");
  }
  app.title = ScalarAt(root, "title", "", problems).value_or(app.name);
  app.description = ScalarAt(root, "description", "", problems).value_or("");
  app.greeting = ScalarAt(root, "greeting", "", problems).value_or("");
  if (const YAML::Node examples = root["examples"]; examples.IsDefined()) {
    if (examples.IsSequence()) {
      for (const auto& e : examples) app.examples.push_back(e.Scalar());
    } else {
      problems.Add(examples, "examples", "expected a list of example prompts");
    }
  }
  app.request_topic = app.name + "-requests";
  app.request_subscription = app.name + "-workers";
  app.dead_letter_topic = app.name + "-dead-letter";
  if (const YAML::Node requests = root["requests"]; requests.IsDefined()) {
    CheckKeys(requests, {"topic", "subscription", "dead_letter_topic", "max_delivery_attempts"},
              "requests", problems);
    if (auto v = ScalarAt(requests, "topic", "requests.", problems)) app.request_topic = *v;
    if (auto v = ScalarAt(requests, "subscription", "requests.", problems)) {
      app.request_subscription = *v;
    }
    if (auto v = ScalarAt(requests, "dead_letter_topic", "requests.", problems)) {
      app.dead_letter_topic = *v;
    }
    if (auto v = IntAt(requests, "max_delivery_attempts", "requests.", 5, 100, problems)) {
      app.max_delivery_attempts = static_cast<int>(*v);
    }
  }
  if (const YAML::Node events = root["events"]; events.IsDefined()) {
    CheckKeys(events, {"topic", "token_batch"}, "events", problems);
    if (auto v = ScalarAt(events, "topic", "events.", problems)) app.events_topic = *v;
    if (auto v = DurationAt(events, "token_batch", "events.", problems)) app.token_batch = *v;
  }
  app.model.name = "tidepool-sim";
  ParseModel(root["model"], "model", app.model, problems);
  if (auto v = DurationAt(root, "step_timeout", "", problems)) app.step_timeout = *v;

  if (const YAML::Node files = root["files"]; files.IsDefined()) {
    if (!files.IsMap()) {
      problems.Add(files, "files", "expected a mapping KEY: PATH");
    } else {
      for (const auto& entry : files) {
        const std::string key = entry.first.Scalar();
        const std::string relative = entry.second.Scalar();
        std::filesystem::path path(relative);
        if (path.is_relative()) path = std::filesystem::path(dir) / path;
        auto text = ReadWholeFile(path.string());
        if (!text.ok()) {
          problems.Add(entry.second, "files." + key, text.status().message());
          continue;
        }
        app.files[key] = path.string();
        if (path.extension() == ".json") {
          boost::system::error_code ec;
          json::value parsed = json::parse(*text, ec);
          if (ec) {
            problems.Add(entry.second, "files." + key,
                         path.string() + " is not valid JSON: " + ec.message());
            continue;
          }
          app.json_files[key] = std::move(parsed);
        }
      }
    }
  }

  const YAML::Node steps = root["steps"];
  if (!steps.IsDefined() || !steps.IsSequence() || steps.size() == 0) {
    problems.Add(steps.IsDefined() ? steps : root, "steps", "required: a non-empty list of steps");
  } else {
    std::set<std::string> seen;
    for (size_t i = 0; i < steps.size(); ++i) {
      StepSpec step;
      ParseStep(steps[i], i, app, step, problems);
      if (!step.id.empty() && !seen.insert(step.id).second) {
        problems.Add(steps[i]["id"], "steps[" + std::to_string(i) + "].id",
                     "\"" + step.id + "\" is used by an earlier step");
      }
      app.steps.push_back(std::move(step));
    }
  }
  if (!problems.empty()) return problems.ToStatus();
  return app;
}

Result<AppSpec> LoadApp(const std::string& path) {
  TP_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path));
  std::filesystem::path p(path);
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::absolute(p, ec).parent_path();
  return ParseApp(text, path, dir.string());
}

}  // namespace tidepool::pipeline
