#include "storage/frame.h"

#include <gtest/gtest.h>

#include "storage/coding.h"
#include "storage/crc32c.h"

namespace tidepool::storage {
namespace {

TEST(FrameTest, RoundTrip) {
  std::string buf;
  AppendFrame(&buf, FrameType::kRecord, "payload");
  AppendFrame2(&buf, FrameType::kGroup, "ab", "cd");
  Frame a = ParseFrame(buf, 0);
  ASSERT_EQ(a.status, FrameStatus::kOk);
  EXPECT_EQ(a.type, FrameType::kRecord);
  EXPECT_EQ(a.payload, "payload");
  EXPECT_EQ(a.size, kFrameHeaderSize + 7);
  Frame b = ParseFrame(buf, a.size);
  ASSERT_EQ(b.status, FrameStatus::kOk);
  EXPECT_EQ(b.type, FrameType::kGroup);
  EXPECT_EQ(b.payload, "abcd");
  EXPECT_EQ(a.size + b.size, buf.size());
}

TEST(FrameTest, EmptyPayload) {
  std::string buf;
  AppendFrame(&buf, FrameType::kRecord, "");
  Frame f = ParseFrame(buf, 0);
  ASSERT_EQ(f.status, FrameStatus::kOk);
  EXPECT_TRUE(f.payload.empty());
}

TEST(FrameTest, TruncatedHeader) {
  std::string buf;
  AppendFrame(&buf, FrameType::kRecord, "payload");
  for (size_t n = 0; n < kFrameHeaderSize; ++n) {
    EXPECT_EQ(ParseFrame(std::string_view(buf).substr(0, n), 0).status, FrameStatus::kTruncated);
  }
}

TEST(FrameTest, TruncatedPayload) {
  std::string buf;
  AppendFrame(&buf, FrameType::kRecord, "payload");
  EXPECT_EQ(ParseFrame(std::string_view(buf).substr(0, buf.size() - 1), 0).status,
            FrameStatus::kTruncated);
}

TEST(FrameTest, ChecksumMismatchOnFlippedPayloadBit) {
  std::string buf;
  AppendFrame(&buf, FrameType::kRecord, "payload");
  buf[kFrameHeaderSize + 3] ^= 0x10;
  EXPECT_EQ(ParseFrame(buf, 0).status, FrameStatus::kBadChecksum);
}

TEST(FrameTest, ChecksumCoversType) {
  std::string buf;
  AppendFrame(&buf, FrameType::kRecord, "payload");
  buf[8] = static_cast<char>(FrameType::kGroup);
  EXPECT_EQ(ParseFrame(buf, 0).status, FrameStatus::kBadChecksum);
}

TEST(FrameTest, UnknownVersionIsRejectedEvenWithValidChecksum) {
  std::string buf;
  AppendFrame(&buf, FrameType::kRecord, "payload");
  buf[9] = 2;
  // Recompute the checksum so that only the version is wrong.
  std::string covered = buf.substr(8, 2) + buf.substr(kFrameHeaderSize);
  EncodeFixed32(buf.data(), crc32c::Mask(crc32c::Value(covered)));
  EXPECT_EQ(ParseFrame(buf, 0).status, FrameStatus::kBadVersion);
}

TEST(FrameTest, LengthAboveLimitIsRejected) {
  std::string buf(kFrameHeaderSize, '\0');
  EncodeFixed32(buf.data() + 4, kMaxFramePayload + 1);
  EXPECT_EQ(ParseFrame(buf, 0).status, FrameStatus::kBadLength);
}

TEST(FrameTest, AllZeroHeaderIsNotAFrame) {
  std::string buf(64, '\0');
  EXPECT_NE(ParseFrame(buf, 0).status, FrameStatus::kOk);
}

}  // namespace
}  // namespace tidepool::storage
