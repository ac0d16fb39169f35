#include "common/units.h"

#include <charconv>
#include <cmath>
#include <string>

namespace tidepool {

using std::chrono::milliseconds;

namespace {

// Durations and sizes are computed in double; beyond 2^53 they stop being exact.
constexpr double kMaxExactDouble = 9007199254740992.0;

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

// Parses a non-negative decimal ("12", "1.5") at the start of `text`, advancing it.
bool ConsumeNumber(std::string_view& text, double& out) {
  size_t end = 0;
  while (end < text.size() && IsDigit(text[end])) ++end;
  size_t int_digits = end;
  if (end < text.size() && text[end] == '.') {
    ++end;
    while (end < text.size() && IsDigit(text[end])) ++end;
  }
  if (int_digits == 0 && end <= 1) return false;  // "" or "."
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + end, out);
  if (ec != std::errc() || ptr != text.data() + end) return false;
  text.remove_prefix(end);
  return true;
}

std::string Quoted(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  out.append(text);
  out += '"';
  return out;
}
}  // namespace

Result<milliseconds> ParseDuration(std::string_view text) {
  const std::string quoted = Quoted(text);
  const std::string bad = "invalid duration " + quoted +
                          " (expected e.g. \"30s\", \"500ms\", \"2m\", \"1h\" or seconds)";
  std::string_view rest = text;
  double number = 0;
  if (!ConsumeNumber(rest, number)) return Status::InvalidArgument(bad);
  if (rest.empty()) {
    double ms = number * 1000.0;
    if (ms > kMaxExactDouble) return Status::InvalidArgument("duration " + quoted + " is too long");
    return milliseconds{std::llround(ms)};
  }
  double total_ms = 0;
  while (true) {
    size_t unit_end = 0;
    while (unit_end < rest.size() && !IsDigit(rest[unit_end]) && rest[unit_end] != '.') ++unit_end;
    std::string_view unit = rest.substr(0, unit_end);
    rest.remove_prefix(unit_end);
    double scale_ms = 0;
    if (unit == "ms") {
      scale_ms = 1;
    } else if (unit == "s") {
      scale_ms = 1'000;
    } else if (unit == "m") {
      scale_ms = 60'000;
    } else if (unit == "h") {
      scale_ms = 3'600'000;
    } else {
      return Status::InvalidArgument(bad);
    }
    total_ms += number * scale_ms;
    if (total_ms > kMaxExactDouble) {
      return Status::InvalidArgument("duration " + quoted + " is too long");
    }
    if (rest.empty()) break;
    if (!ConsumeNumber(rest, number)) return Status::InvalidArgument(bad);
    if (rest.empty()) return Status::InvalidArgument(bad);  // "1m30": a number with no unit
  }
  return milliseconds{std::llround(total_ms)};
}

Result<int64_t> ParseByteSize(std::string_view text) {
  const std::string quoted = Quoted(text);
  const std::string bad = "invalid size " + quoted +
                          " (expected e.g. \"256Mi\", \"1Gi\", \"500M\" or a number of bytes)";
  struct Suffix {
    std::string_view name;
    double bytes;
  };
  static constexpr double kKi = 1024.0;
  static constexpr Suffix kSuffixes[] = {
      {"", 1},
      {"k", 1e3},
      {"K", 1e3},
      {"M", 1e6},
      {"G", 1e9},
      {"T", 1e12},
      {"Ki", kKi},
      {"Mi", kKi * kKi},
      {"Gi", kKi * kKi * kKi},
      {"Ti", kKi * kKi * kKi * kKi},
  };
  std::string_view rest = text;
  double number = 0;
  if (!ConsumeNumber(rest, number)) return Status::InvalidArgument(bad);
  for (const Suffix& suffix : kSuffixes) {
    if (rest != suffix.name) continue;
    double bytes = number * suffix.bytes;
    if (bytes > kMaxExactDouble) return Status::InvalidArgument("size " + quoted + " is too large");
    return static_cast<int64_t>(std::llround(bytes));
  }
  return Status::InvalidArgument(bad);
}

}  // namespace tidepool
