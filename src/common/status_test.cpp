#include "common/status.h"

#include <gtest/gtest.h>

#include "common/strong_int.h"

namespace tidepool {
namespace {

Result<int> Half(int n) {
  if (n % 2 != 0) return Status::InvalidArgument("odd number " + std::to_string(n));
  return n / 2;
}

Result<int> Quarter(int n) {
  TP_ASSIGN_OR_RETURN(int h, Half(n));
  return Half(h);
}

TEST(StatusTest, OkStatusHasNoMessage) {
  Status s = Status::Ok();
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, ErrorCarriesCodeAndContext) {
  Status s = Status::IOError("disk gone").WithContext("segment 00000000000000000042.log");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_EQ(s.ToString(), "IO_ERROR: segment 00000000000000000042.log: disk gone");
}

TEST(StatusTest, AssignOrReturnPropagatesFirstError) {
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "odd number 3");
}

struct SeqTag {};
TEST(StrongIntTest, ArithmeticAndOrdering) {
  using Seq = StrongInt<SeqTag>;
  Seq a(5);
  Seq b = a + 3;
  EXPECT_LT(a, b);
  EXPECT_EQ(b - a, 3u);
  ++a;
  EXPECT_EQ(a.value, 6u);
}

}  // namespace
}  // namespace tidepool
