#include "pipeline/tools/registry.h"

#include "pipeline/tools/scent_scoring.h"

namespace tidepool::pipeline {

namespace {

class CatalogScoreTool final : public Tool {
 public:
  explicit CatalogScoreTool(tools::Catalog catalog) : catalog_(std::move(catalog)) {}
  Result<boost::json::value> Call(const boost::json::value& args) const override {
    return tools::ScoreToolJson(catalog_, args);
  }

 private:
  tools::Catalog catalog_;
};

ToolRegistry MakeBuiltin() {
  ToolRegistry registry;
  registry.Register("catalog_score", [](const ToolConfig& config) -> Result<std::unique_ptr<Tool>> {
    if (config.data_path.empty()) {
      return Status::InvalidArgument("catalog_score needs `data:` naming the catalog file");
    }
    TP_ASSIGN_OR_RETURN(tools::Catalog catalog, tools::LoadCatalogFile(config.data_path));
    return std::unique_ptr<Tool>(new CatalogScoreTool(std::move(catalog)));
  });
  return registry;
}

}  // namespace

const ToolRegistry& ToolRegistry::Builtin() {
  static const ToolRegistry builtin = MakeBuiltin();
  return builtin;
}

void ToolRegistry::Register(std::string name, ToolFactory factory) {
  factories_[std::move(name)] = std::move(factory);
}

Result<std::unique_ptr<Tool>> ToolRegistry::Create(const std::string& name,
                                                   const ToolConfig& config) const {
  auto it = factories_.find(name);
  if (it == factories_.end()) {
    std::string known;
    for (const auto& n : names()) known += (known.empty() ? "" : ", ") + n;
    return Status::NotFound("no tool named \"" + name + "\" (registered: " + known + ")");
  }
  return it->second(config);
}

std::vector<std::string> ToolRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [name, factory] : factories_) out.push_back(name);
  return out;
}

}  // namespace tidepool::pipeline
