// AppSpec: one chat app as data (docs/apps.md). An app is a YAML file naming its topics, model
// settings, data files and a list of steps of three kinds:
//
//   llm       a chat completion: system/user prompt templates over the conversation and the
//             earlier steps, optional structured output (json_schema from a file), streamed or not
//   tool      a registered C++ tool (`tool: catalog_score`) or an HTTP tool (`http: {url}`: the
//             arguments POSTed as JSON, the JSON reply is the output)
//   template  text rendered from a template (e.g. a follow-up question)
//
// Each step may have a `when:` condition (skipped when false), and `final: true` ends the run
// with that step's output as the reply. The last step that runs is final when none says so.
//
// LoadApp reads the file and its data files (paths relative to the spec) and checks everything
// it can before a message arrives: every error names FILE:LINE and the key.
#pragma once

#include <boost/json/value.hpp>
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/request_limits.h"
#include "common/status.h"
#include "pipeline/template.h"

namespace tidepool::pipeline {

enum class StepKind { kLlm, kTool, kTemplate };

struct ModelSettings {
  std::string name;  // the model name sent to the provider
  std::optional<double> temperature;
  std::optional<int> max_tokens;
};

// Which earlier turns an llm step sees: all, none, or the last N messages.
struct HistorySpec {
  bool all = true;
  int last = 0;  // when !all: how many of the latest messages (0 = none)
};

struct HttpToolSpec {
  std::string url;  // http://HOST:PORT/PATH or https://...
  std::vector<std::pair<std::string, std::string>> headers;
};

struct StepSpec {
  std::string id;
  StepKind kind = StepKind::kTemplate;
  std::optional<Condition> when;
  bool final = false;
  std::chrono::milliseconds timeout{0};  // 0: the app's default
  int retries = 0;                       // extra attempts after a failed one
  std::string emit;  // tool steps: publish the output as a `tool_result` event with this name

  // llm
  std::optional<Template> system;
  Template user;  // default "{{ message }}"
  HistorySpec history;
  ModelSettings model;           // filled from the app's `model:` where the step says nothing
  std::string json_schema_file;  // a key of `files:`; empty: plain text output
  bool stream = false;

  // tool
  std::string tool;                      // a registered tool, or empty for http
  std::optional<HttpToolSpec> http;      // an HTTP tool
  std::string data_file;                 // `data:`: a key of `files:` handed to the tool
  std::map<std::string, Template> args;  // values with holes (a single hole keeps its JSON)
  std::map<std::string, boost::json::value> arg_constants;  // values without
  std::optional<Template> args_all;  // `args: "{{ ... }}"`: the whole argument object

  // template
  Template text;
};

struct AppSpec {
  std::string name;  // [a-z][a-z0-9-]{0,62}
  std::string title;
  std::string description;
  std::string greeting;               // the first assistant line a chat page shows
  std::vector<std::string> examples;  // example prompts for the page

  std::string request_topic;         // default NAME-requests
  std::string request_subscription;  // default NAME-workers
  std::string dead_letter_topic;     // default NAME-dead-letter
  int max_delivery_attempts = 5;
  std::string events_topic = "tidepool-events";
  std::chrono::milliseconds token_batch{50};

  ModelSettings model;  // defaults for llm steps; name default "tidepool-sim"
  std::chrono::milliseconds step_timeout{60'000};

  std::string dir;                                       // the spec's directory
  std::map<std::string, std::string> files;              // key → absolute path
  std::map<std::string, boost::json::value> json_files;  // parsed .json files by key
  std::vector<StepSpec> steps;
};

// Parses a spec; `origin` names it in errors, `dir` resolves `files:` (which are read and, for
// .json files, parsed now). INVALID_ARGUMENT lists every problem, one per line.
Result<AppSpec> ParseApp(const std::string& yaml_text, const std::string& origin,
                         const std::string& dir);
// Reads and parses the file at `path`.
Result<AppSpec> LoadApp(const std::string& path);

// Request ids and conversation ids (common/request_limits.h).
using tidepool::IsValidId;

}  // namespace tidepool::pipeline
