// What the web tier accepts and the pipeline workers serve must agree: the ids of
// conversations and messages, and the size of a user's message (docs/api.md, docs/apps.md).
#pragma once

#include <algorithm>
#include <cstddef>
#include <string_view>

namespace tidepool {

constexpr size_t kMaxMessageTextBytes = 32 * 1024;
constexpr size_t kMaxIdBytes = 128;

// 1-128 of A-Z a-z 0-9 . _ : -
inline bool IsValidId(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdBytes) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
  });
}

}  // namespace tidepool
