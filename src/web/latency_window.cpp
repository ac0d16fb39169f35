#include "web/latency_window.h"

#include <algorithm>
#include <cmath>

namespace tidepool::web {
namespace {

constexpr double kMinMs = 0.01;
constexpr double kGrowth = 1.05;
// Buckets up to 10 minutes: kMinMs * kGrowth^kBuckets >= 600'000 ms.
const int kBuckets =
    static_cast<int>(std::ceil(std::log(600'000.0 / kMinMs) / std::log(kGrowth))) + 1;

int BucketOf(double ms) {
  if (!(ms > kMinMs)) return 0;  // also NaN
  const int b = static_cast<int>(std::log(ms / kMinMs) / std::log(kGrowth)) + 1;
  return std::min(b, kBuckets - 1);
}

// The geometric middle of bucket b: (lower, upper] = (kMinMs*g^(b-1), kMinMs*g^b].
double MiddleOf(int b) {
  if (b == 0) return kMinMs;
  return kMinMs * std::pow(kGrowth, b - 0.5);
}

}  // namespace

int64_t LatencyWindow::SecondOf(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

void LatencyWindow::Record(double ms, Clock::time_point now) {
  const int64_t second = SecondOf(now);
  Second& s = seconds_[static_cast<size_t>(second % kWindowSeconds)];
  if (s.second != second) {
    s.second = second;
    s.counts.assign(static_cast<size_t>(kBuckets), 0);
    s.total = 0;
  }
  s.counts[static_cast<size_t>(BucketOf(ms))]++;
  s.total++;
}

uint64_t LatencyWindow::Count(Clock::time_point now) const {
  const int64_t second = SecondOf(now);
  uint64_t total = 0;
  for (const Second& s : seconds_) {
    if (Live(s, second)) total += s.total;
  }
  return total;
}

double LatencyWindow::Quantile(double q, Clock::time_point now) const {
  const int64_t second = SecondOf(now);
  const uint64_t total = Count(now);
  if (total == 0) return 0;
  // The rank of the quantile, 1-based: the smallest latency with at least q of all at or
  // below it.
  const auto rank = static_cast<uint64_t>(std::max(1.0, std::ceil(q * static_cast<double>(total))));
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    for (const Second& s : seconds_) {
      if (Live(s, second)) seen += s.counts[static_cast<size_t>(b)];
    }
    if (seen >= rank) return MiddleOf(b);
  }
  return MiddleOf(kBuckets - 1);
}

}  // namespace tidepool::web
