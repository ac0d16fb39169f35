#include "common/cpu_list.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace tidepool
