#include "common/cpu_list.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

namespace tidepool {
namespace {

TEST(CpuListTest, ParsesNumbersAndRangesSortedWithoutDuplicates) {
  EXPECT_EQ(*ParseCpuList("1"), (std::vector<int>{1}));
  EXPECT_EQ(*ParseCpuList("0-3"), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(*ParseCpuList("6,0-2,1"), (std::vector<int>{0, 1, 2, 6}));
  EXPECT_EQ(FormatCpuList({0, 1, 2, 5, 7, 8}), "0-2,5,7-8");
  EXPECT_EQ(FormatCpuList(*ParseCpuList("3,1-2")), "1-3");
  EXPECT_EQ(FormatCpuList({}), "");
}

TEST(CpuListTest, RefusesWhatIsNoCpuList) {
  for (const char* bad : {"", ",", "a", "1-", "-1", "3-1", "1,,2", "0x1", "1 ", "5000"}) {
    auto parsed = ParseCpuList(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("CPU list"), std::string::npos) << bad;
  }
}

TEST(CpuListTest, PinningAThreadChangesWhereItMayRun) {
  const std::vector<int> allowed = AllowedCpus();
  ASSERT_FALSE(allowed.empty());
  std::vector<int> seen;
  Status pinned;
  std::thread t([&] {
    pinned = PinCurrentThread({allowed.back()});
    seen = AllowedCpus();
  });
  t.join();
  ASSERT_TRUE(pinned.ok()) << pinned.ToString();
  EXPECT_EQ(seen, std::vector<int>{allowed.back()});
  EXPECT_EQ(AllowedCpus(), allowed) << "only the pinned thread changed";
  Status nowhere;
  std::thread u([&] { nowhere = PinCurrentThread({1023}); });
  u.join();
  EXPECT_EQ(nowhere.code(), StatusCode::kInvalidArgument);
}

TEST(CpuListTest, LoweringPriorityCoversTheThreadAndWhatItStartsOnly) {
  const int before = CurrentThreadNiceness();
  const int target = std::min(19, std::max(before, 0) + 3);
  Status lowered;
  int after = -100;
  int child = -100;
  Status raised;
  int after_raise = -100;
  std::thread t([&] {
    lowered = LowerCurrentThreadPriority(target);
    after = CurrentThreadNiceness();
    std::thread([&] { child = CurrentThreadNiceness(); }).join();
    // Asking for a higher priority than the thread has leaves it where it is.
    raised = LowerCurrentThreadPriority(0);
    after_raise = CurrentThreadNiceness();
  });
  t.join();
  ASSERT_TRUE(lowered.ok()) << lowered.ToString();
  EXPECT_EQ(after, target);
  EXPECT_EQ(child, target) << "a thread started by a lowered thread inherits its niceness";
  EXPECT_TRUE(raised.ok()) << raised.ToString();
  EXPECT_EQ(after_raise, target);
  EXPECT_EQ(CurrentThreadNiceness(), before) << "only the lowered thread changed";
  for (int bad : {-1, 20}) {
    Status s = LowerCurrentThreadPriority(bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("niceness " + std::to_string(bad)), std::string::npos) << bad;
  }
}

}  // namespace
}  // namespace tidepool
