#include "web/latency_window.h"

#include <gtest/gtest.h>

namespace tidepool::web {
namespace {

using Clock = LatencyWindow::Clock;

TEST(LatencyWindowTest, EmptyWindowReportsZero) {
  LatencyWindow w;
  EXPECT_EQ(w.Count(), 0u);
  EXPECT_EQ(w.Quantile(0.5), 0);
}

TEST(LatencyWindowTest, QuantilesAreWithinTheBucketWidth) {
  LatencyWindow w;
  const auto now = Clock::now();
  // 1..1000 ms, once each: p50 = 500, p99 = 990, p100 = 1000.
  for (int ms = 1; ms <= 1000; ++ms) w.Record(ms, now);
  EXPECT_EQ(w.Count(now), 1000u);
  EXPECT_NEAR(w.Quantile(0.5, now), 500, 500 * 0.026);
  EXPECT_NEAR(w.Quantile(0.99, now), 990, 990 * 0.026);
  EXPECT_NEAR(w.Quantile(1.0, now), 1000, 1000 * 0.026);
  EXPECT_NEAR(w.Quantile(0.001, now), 1, 0.026);
}

TEST(LatencyWindowTest, ATailIsSeenByP99ButNotByP50) {
  LatencyWindow w;
  const auto now = Clock::now();
  for (int i = 0; i < 980; ++i) w.Record(0.2, now);
  for (int i = 0; i < 20; ++i) w.Record(250, now);
  EXPECT_NEAR(w.Quantile(0.5, now), 0.2, 0.2 * 0.026);
  EXPECT_NEAR(w.Quantile(0.99, now), 250, 250 * 0.026);
}

TEST(LatencyWindowTest, OldSecondsLeaveTheWindow) {
  LatencyWindow w;
  const auto start = Clock::now();
  for (int i = 0; i < 100; ++i) w.Record(800, start);
  const auto later = start + std::chrono::seconds(3);
  for (int i = 0; i < 100; ++i) w.Record(2, later);
  EXPECT_EQ(w.Count(later), 200u);
  EXPECT_NEAR(w.Quantile(0.99, later), 800, 800 * 0.026);
  // Past the window of the first batch only the second counts.
  const auto after = start + std::chrono::seconds(LatencyWindow::kWindowSeconds + 1);
  EXPECT_EQ(w.Count(after), 100u);
  EXPECT_NEAR(w.Quantile(0.99, after), 2, 2 * 0.026);
  // A second slot reused after a full turn starts from zero.
  const auto turn = start + std::chrono::seconds(LatencyWindow::kWindowSeconds * 3);
  w.Record(40, turn);
  EXPECT_EQ(w.Count(turn), 1u);
  EXPECT_NEAR(w.Quantile(0.5, turn), 40, 40 * 0.026);
}

TEST(LatencyWindowTest, ExtremesAreClampedNotLost) {
  LatencyWindow w;
  const auto now = Clock::now();
  w.Record(0, now);
  w.Record(-1, now);
  w.Record(1e9, now);
  EXPECT_EQ(w.Count(now), 3u);
  EXPECT_LE(w.Quantile(0.5, now), 0.01);
  EXPECT_GE(w.Quantile(1.0, now), 500'000);
}

}  // namespace
}  // namespace tidepool::web
