// LatencyWindow: latency percentiles over the last few seconds, for the dashboard's "now"
// (Prometheus histograms on /metrics are cumulative since start and coarse).
//
// Counts go into log-spaced buckets 5% wide (0.01 ms .. 10 min), one set per second; a
// quantile reads the seconds still inside the window. Its error is the bucket width: a
// reported value is within 2.5% of a latency that was recorded.
//
// Thread-safety: none; the caller serializes (the HTTP server records under its stats lock).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <vector>

namespace tidepool::web {

class LatencyWindow {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr int kWindowSeconds = 10;

  void Record(double ms, Clock::time_point now = Clock::now());
  // The q-quantile (0 < q <= 1) in milliseconds of what was recorded in the last
  // kWindowSeconds; 0 when nothing was.
  double Quantile(double q, Clock::time_point now = Clock::now()) const;
  // Latencies recorded in the last kWindowSeconds.
  uint64_t Count(Clock::time_point now = Clock::now()) const;

 private:
  struct Second {
    int64_t second = -1;
    std::vector<uint32_t> counts;  // per bucket; allocated on first use
    uint64_t total = 0;
  };
  static int64_t SecondOf(Clock::time_point t);
  bool Live(const Second& s, int64_t now) const {
    return s.second >= 0 && now - s.second < kWindowSeconds;
  }
  std::array<Second, kWindowSeconds> seconds_{};
};

}  // namespace tidepool::web
