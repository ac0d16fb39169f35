// Resource names of the Pub/Sub API, validated by the real service's rules:
// projects/{project}/topics/{id}, …/subscriptions/{id}, …/snapshots/{id}, where an id starts with
// a letter, is 3–255 characters of letters, digits and - _ . ~ + %, and does not start with
// "goog".
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace tidepool::broker {

enum class ResourceKind { kTopic, kSubscription, kSnapshot };

struct ResourceName {
  std::string project;
  std::string id;
};

// Parses and validates `name` as a resource of `kind`; INVALID_ARGUMENT names the problem.
Result<ResourceName> ParseResourceName(std::string_view name, ResourceKind kind);
// Validates "projects/{project}".
Result<std::string> ParseProjectName(std::string_view name);

// The topic every subscription of a deleted topic points to.
inline constexpr std::string_view kDeletedTopic = "_deleted-topic_";

}  // namespace tidepool::broker
