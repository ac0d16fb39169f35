#include "storage/crc32c.h"

#include <gtest/gtest.h>

#include <boost/crc.hpp>
#include <random>
#include <string>

namespace tidepool::storage::crc32c {
namespace {

using BoostCrc32c = boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true>;

uint32_t Oracle(const std::string& s) {
  BoostCrc32c crc;
  crc.process_bytes(s.data(), s.size());
  return crc.checksum();
}

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 (iSCSI), appendix B.4.
  EXPECT_EQ(Value(std::string(32, '\0')), 0x8a9136aau);
  EXPECT_EQ(Value(std::string(32, '\xff')), 0x62a8ab43u);
  EXPECT_EQ(Value("123456789"), 0xe3069283u);
}

TEST(Crc32cTest, MatchesBoostOracleOnRandomDataOfEveryLengthUpTo300) {
  std::mt19937 rng(7);
  for (size_t len = 0; len <= 300; ++len) {
    std::string s(len, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    ASSERT_EQ(Value(s), Oracle(s)) << "length " << len;
    ASSERT_EQ(ExtendPortable(0, s.data(), s.size()), Oracle(s)) << "length " << len;
  }
}

TEST(Crc32cTest, ExtendEqualsWholeValue) {
  std::string s = "hello tidepool, a durable broker";
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    EXPECT_EQ(Extend(Value(s.data(), cut), s.data() + cut, s.size() - cut), Value(s));
  }
}

TEST(Crc32cTest, MaskRoundTripsAndChangesValue) {
  uint32_t crc = Value("foo");
  EXPECT_NE(Mask(crc), crc);
  EXPECT_NE(Mask(Mask(crc)), crc);
  EXPECT_EQ(Unmask(Mask(crc)), crc);
  EXPECT_EQ(Unmask(Unmask(Mask(Mask(crc)))), crc);
}

}  // namespace
}  // namespace tidepool::storage::crc32c
