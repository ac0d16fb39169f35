// Durations and sizes as written in config files.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "common/status.h"

namespace tidepool {

// "30s", "500ms", "2m", "1h", "1m30s", "1.5s", or a bare number of seconds ("30").
Result<std::chrono::milliseconds> ParseDuration(std::string_view text);
// "256Mi", "1Gi", "500M", "64k", or a bare number of bytes. Binary suffixes Ki Mi Gi Ti;
// decimal suffixes k (or K) M G T.
Result<int64_t> ParseByteSize(std::string_view text);

}  // namespace tidepool
