// The UI files (ui/ of the source tree), built into the binary by src/web/embed_ui.cmake.
#pragma once

#include <span>
#include <string_view>

namespace tidepool::web {

struct UiAsset {
  std::string_view path;     // "/index.html"
  std::string_view content;  // the file's bytes
  std::string_view sha256;   // hex, for the ETag
};

std::span<const UiAsset> UiAssets();

}  // namespace tidepool::web
