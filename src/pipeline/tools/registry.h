// Registered tools: deterministic C++ functions a `kind: tool` step calls by name
// (`tool: catalog_score`). A tool is created once per app step with the data file the step
// names (`data: catalog`), and then called with each request's arguments; calls may run
// concurrently and must not block for long (they run on the worker's event loop).
#pragma once

#include <boost/json/value.hpp>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tidepool::pipeline {

struct ToolConfig {
  std::string data_path;                          // the step's `data:` file; empty if none
  const boost::json::value* data_json = nullptr;  // that file parsed, when it is .json
};

class Tool {
 public:
  virtual ~Tool() = default;
  // INVALID_ARGUMENT for arguments the tool cannot use (the step fails: retrying will not help).
  virtual Result<boost::json::value> Call(const boost::json::value& args) const = 0;
};

using ToolFactory = std::function<Result<std::unique_ptr<Tool>>(const ToolConfig&)>;

class ToolRegistry {
 public:
  // The tools built into tidepool: catalog_score (docs/scent-advisor.md).
  static const ToolRegistry& Builtin();

  void Register(std::string name, ToolFactory factory);
  // NOT_FOUND naming the known tools when `name` is not registered.
  Result<std::unique_ptr<Tool>> Create(const std::string& name, const ToolConfig& config) const;
  std::vector<std::string> names() const;

 private:
  std::map<std::string, ToolFactory> factories_;
};

}  // namespace tidepool::pipeline
