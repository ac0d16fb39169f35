#include "storage/retention.h"

#include <gtest/gtest.h>

namespace tidepool::storage {
namespace {

constexpr int64_t kHour = 3600ll * 1000 * 1000;

// Four segments of 100 records: [0,100) written at hour 1, [100,200) at 2, [200,300) at 3,
// and the active [300,350) at 4.
std::vector<SegmentInfo> FourSegments() {
  std::vector<SegmentInfo> s;
  for (int i = 0; i < 4; ++i) {
    SegmentInfo seg;
    seg.base = Seq(100 * i);
    seg.end = Seq(i == 3 ? 350 : 100 * (i + 1));
    seg.min_timestamp = kHour * (i + 1) - 1000;
    seg.max_timestamp = kHour * (i + 1);
    seg.active = i == 3;
    s.push_back(seg);
  }
  return s;
}

TEST(RetentionTest, NoReadersAndNoTopicRetentionDeletesAllSealed) {
  EXPECT_EQ(PlanRetention(FourSegments(), {}, 10 * kHour), Seq(300));
}

TEST(RetentionTest, NeverDeletesTheActiveSegment) {
  auto segs = FourSegments();
  RetentionPolicy p;
  p.needs.push_back({Seq(1000), 0});
  EXPECT_EQ(PlanRetention(segs, p, 100 * kHour), Seq(300));
}

TEST(RetentionTest, SlowestSubscriptionFloorPinsData) {
  RetentionPolicy p;
  p.needs.push_back({Seq(250), 0});
  p.needs.push_back({Seq(150), 0});  // still needs records 150.. in segment 1
  EXPECT_EQ(PlanRetention(FourSegments(), p, 10 * kHour), Seq(100));
}

TEST(RetentionTest, FloorExactlyAtSegmentEndFreesIt) {
  RetentionPolicy p;
  p.needs.push_back({Seq(200), 0});
  EXPECT_EQ(PlanRetention(FourSegments(), p, 10 * kHour), Seq(200));
}

TEST(RetentionTest, UnackedDataOlderThanSubscriptionRetentionIsDropped) {
  RetentionPolicy p;
  p.needs.push_back({Seq(0), 2 * kHour});  // nothing acked, keeps 2 hours
  // At hour 4.5 records written at hours 1 and 2 are older than 2 hours.
  EXPECT_EQ(PlanRetention(FourSegments(), p, 4 * kHour + kHour / 2), Seq(200));
}

TEST(RetentionTest, TopicRetentionKeepsAckedData) {
  RetentionPolicy p;
  p.topic_retention_micros = 2 * kHour;
  p.needs.push_back({Seq(300), 0});  // everything acked
  EXPECT_EQ(PlanRetention(FourSegments(), p, 4 * kHour), Seq(100));
}

TEST(RetentionTest, OnlyAPrefixIsDeleted) {
  // Segment 0 is needed by a snapshot, segment 1 is not: nothing can go, since the log must
  // stay a contiguous range.
  RetentionPolicy p;
  p.needs.push_back({Seq(50), 0});
  EXPECT_EQ(PlanRetention(FourSegments(), p, 10 * kHour), Seq(0));
}

TEST(RetentionTest, EmptySegmentListKeepsFromZero) {
  EXPECT_EQ(PlanRetention({}, {}, 0), Seq(0));
}

}  // namespace
}  // namespace tidepool::storage
