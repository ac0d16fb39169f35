#include "broker/names.h"

namespace tidepool::broker {
namespace {

constexpr size_t kMinIdLength = 3;
constexpr size_t kMaxIdLength = 255;

std::string_view KindName(ResourceKind kind) {
  switch (kind) {
    case ResourceKind::kTopic:
      return "topic";
    case ResourceKind::kSubscription:
      return "subscription";
    case ResourceKind::kSnapshot:
      return "snapshot";
  }
  return "resource";
}

std::string_view Collection(ResourceKind kind) {
  switch (kind) {
    case ResourceKind::kTopic:
      return "topics";
    case ResourceKind::kSubscription:
      return "subscriptions";
    case ResourceKind::kSnapshot:
      return "snapshots";
  }
  return "";
}

bool IsLetter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

Status ValidateId(std::string_view id, std::string_view what, std::string_view full) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("invalid " + std::string(what) + " name \"" + std::string(full) +
                                   "\": " + why);
  };
  if (id.size() < kMinIdLength || id.size() > kMaxIdLength) {
    return bad("the id must be 3 to 255 characters long");
  }
  if (!IsLetter(id[0])) return bad("the id must start with a letter");
  if (id.starts_with("goog")) return bad("the id must not start with \"goog\"");
  for (char c : id) {
    if (!(IsLetter(c) || IsDigit(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '+' ||
          c == '%')) {
      return bad(std::string("character '") + c +
                 "' is not allowed (letters, digits and - _ . ~ + % are)");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> ParseProjectName(std::string_view name) {
  constexpr std::string_view kPrefix = "projects/";
  if (!name.starts_with(kPrefix) || name.size() == kPrefix.size() ||
      name.find('/', kPrefix.size()) != std::string_view::npos) {
    return Status::InvalidArgument("invalid project name \"" + std::string(name) +
                                   "\": expected projects/{project}");
  }
  return std::string(name.substr(kPrefix.size()));
}

Result<ResourceName> ParseResourceName(std::string_view name, ResourceKind kind) {
  const std::string_view what = KindName(kind);
  const std::string expected = "expected projects/{project}/" + std::string(Collection(kind)) +
                               "/{" + std::string(what) + "}";
  constexpr std::string_view kPrefix = "projects/";
  if (!name.starts_with(kPrefix)) {
    return Status::InvalidArgument("invalid " + std::string(what) + " name \"" + std::string(name) +
                                   "\": " + expected);
  }
  const size_t slash = name.find('/', kPrefix.size());
  if (slash == std::string_view::npos || slash == kPrefix.size()) {
    return Status::InvalidArgument("invalid " + std::string(what) + " name \"" + std::string(name) +
                                   "\": " + expected);
  }
  ResourceName out;
  out.project = std::string(name.substr(kPrefix.size(), slash - kPrefix.size()));
  std::string_view rest = name.substr(slash + 1);
  const std::string collection = std::string(Collection(kind)) + "/";
  if (!rest.starts_with(collection)) {
    return Status::InvalidArgument("invalid " + std::string(what) + " name \"" + std::string(name) +
                                   "\": " + expected);
  }
  rest.remove_prefix(collection.size());
  TP_RETURN_IF_ERROR(ValidateId(rest, what, name));
  out.id = std::string(rest);
  return out;
}

}  // namespace tidepool::broker
