#include "storage/segment_scan.h"

#include <gtest/gtest.h>

#include <cstring>

#include "storage/frame.h"
#include "storage/log_format.h"

namespace tidepool::storage {
namespace {

// Writes segments the way Log does, so the scan can be tested on exact bytes.
class SegmentBuilder {
 public:
  explicit SegmentBuilder(uint64_t base, uint64_t nonce = 0x1234) : next_(base), nonce_(nonce) {
    AppendFrame(&data_, FrameType::kSegmentHeader, EncodeSegmentHeader({base, 1000, nonce}));
  }
  // Appends a group; returns the offset of its GROUP frame.
  size_t Group(const std::vector<std::string>& records, int64_t ts = 2000) {
    const size_t start = data_.size();
    std::string body;
    for (const auto& r : records) {
      char prefix[16];
      std::memcpy(prefix, &next_, 8);
      std::memcpy(prefix + 8, &ts, 8);
      AppendFrame2(&body, FrameType::kRecord, std::string_view(prefix, 16), r);
      ++next_;
    }
    AppendFrame(&data_, FrameType::kGroup,
                EncodeGroupHeader(next_ - records.size(), static_cast<uint32_t>(records.size()),
                                  static_cast<uint32_t>(body.size()), nonce_));
    data_ += body;
    return start;
  }
  std::string& data() { return data_; }

 private:
  std::string data_;
  uint64_t next_;
  uint64_t nonce_;
};

SegmentScan Scan(std::string_view data, uint64_t base = 0, bool strict = false,
                 bool sealed = false) {
  ScanOptions o;
  o.expected_base = base;
  o.strict = strict;
  o.sealed = sealed;
  o.index_interval_bytes = 64;
  return ScanSegment(data, o);
}

TEST(SegmentScanTest, CleanSegment) {
  SegmentBuilder b(100);
  b.Group({"a", "b"});
  b.Group({"c"}, 3000);
  SegmentScan s = Scan(b.data(), 100);
  ASSERT_TRUE(s.status.ok()) << s.status.ToString();
  EXPECT_TRUE(s.header_valid);
  EXPECT_EQ(s.end_seq, 103u);
  EXPECT_EQ(s.record_count, 3u);
  EXPECT_EQ(s.valid_end, b.data().size());
  EXPECT_EQ(s.torn_bytes, 0u);
  EXPECT_EQ(s.min_timestamp, 2000);
  EXPECT_EQ(s.max_timestamp, 3000);
  ASSERT_FALSE(s.index.empty());
  EXPECT_EQ(s.index.front().seq, 100u);
}

TEST(SegmentScanTest, EmptySegmentFileIsEmpty) {
  SegmentScan s = Scan("", 7);
  EXPECT_TRUE(s.status.ok());
  EXPECT_FALSE(s.header_valid);
  EXPECT_EQ(s.end_seq, 7u);
}

TEST(SegmentScanTest, SegmentWithHeaderOnlyHasNoRecords) {
  SegmentBuilder b(7);
  SegmentScan s = Scan(b.data(), 7);
  EXPECT_TRUE(s.status.ok());
  EXPECT_TRUE(s.header_valid);
  EXPECT_EQ(s.record_count, 0u);
  EXPECT_EQ(s.end_seq, 7u);
}

TEST(SegmentScanTest, TornHeaderIsAnEmptySegment) {
  SegmentBuilder b(0);
  for (size_t n = 1; n < kSegmentHeaderFrameSize; ++n) {
    SegmentScan s = Scan(std::string_view(b.data()).substr(0, n));
    EXPECT_TRUE(s.status.ok()) << n;
    EXPECT_FALSE(s.header_valid) << n;
  }
}

TEST(SegmentScanTest, DamagedHeaderBeforeRecordsIsCorruption) {
  SegmentBuilder b(0);
  b.Group({"a"});
  b.data()[12] ^= 1;
  SegmentScan s = Scan(b.data());
  EXPECT_EQ(s.status.code(), StatusCode::kCorruption);
}

TEST(SegmentScanTest, HeaderOfAnotherBaseIsCorruption) {
  SegmentBuilder b(5);
  SegmentScan s = Scan(b.data(), 6);
  EXPECT_EQ(s.status.code(), StatusCode::kCorruption);
}

TEST(SegmentScanTest, TruncatedTrailingRecordIsIgnored) {
  SegmentBuilder b(0);
  b.Group({"first"});
  const size_t good = b.data().size();
  b.Group({"second", "third"});
  // Every cut inside the last group: header torn, payload torn, between records.
  for (size_t cut = good + 1; cut < b.data().size(); ++cut) {
    SegmentScan s = Scan(std::string_view(b.data()).substr(0, cut));
    ASSERT_TRUE(s.status.ok()) << cut;
    EXPECT_EQ(s.valid_end, good) << cut;
    EXPECT_EQ(s.end_seq, 1u) << cut;
    // Zero bytes at the cut (a length's high bytes) cannot be told from reserved zeros; both
    // are cut off alike.
    EXPECT_EQ(s.torn_bytes + s.zero_tail_bytes, cut - good) << cut;
    EXPECT_TRUE(s.damaged.empty()) << cut;
  }
}

TEST(SegmentScanTest, TornGroupWithSomeValidRecordsIsDroppedWhole) {
  SegmentBuilder b(0);
  b.Group({"first"});
  const size_t good = b.data().size();
  b.Group({"second", "third"});
  // The last record's bytes never reached the disk, but were extended with zeros.
  std::string data = b.data();
  std::memset(data.data() + data.size() - 3, 0, 3);
  SegmentScan s = Scan(data);
  ASSERT_TRUE(s.status.ok());
  EXPECT_EQ(s.valid_end, good);
  EXPECT_EQ(s.record_count, 1u);
}

TEST(SegmentScanTest, ZeroFilledTailIsReservedSpaceNotATornGroup) {
  SegmentBuilder b(0);
  b.Group({"first"});
  const size_t good = b.data().size();
  b.data().append(8192, '\0');
  SegmentScan s = Scan(b.data());
  ASSERT_TRUE(s.status.ok());
  EXPECT_EQ(s.valid_end, good);
  EXPECT_EQ(s.end_seq, 1u);
  EXPECT_EQ(s.torn_bytes, 0u);
  EXPECT_EQ(s.zero_tail_bytes, 8192u);
  EXPECT_TRUE(s.damaged.empty());
}

TEST(SegmentScanTest, TornGroupInReservedSpaceIsTornUpToItsLastByte) {
  SegmentBuilder b(0);
  b.Group({"first"});
  const size_t good = b.data().size();
  b.Group({"second", "third"});
  // A crash after part of the group overwrote the reserved zeros: 7 bytes made it.
  std::string data = b.data().substr(0, good + 7);
  data[good + 6] = 'x';  // whatever the 7th byte was, it is not zero now
  data.append(4096, '\0');
  SegmentScan s = Scan(data);
  ASSERT_TRUE(s.status.ok());
  EXPECT_EQ(s.valid_end, good);
  EXPECT_EQ(s.end_seq, 1u);
  EXPECT_EQ(s.torn_bytes, 7u);
  EXPECT_EQ(s.zero_tail_bytes, 4096u);
}

TEST(SegmentScanTest, ZerosAtTheEndOfASealedSegmentAreDamage) {
  // Sealing drops reserved space durably before the next segment exists, so zeros there are
  // not a reserved tail.
  SegmentBuilder b(0);
  b.Group({"first"});
  const size_t good = b.data().size();
  b.data().append(512, '\0');
  SegmentScan s = Scan(b.data(), 0, /*strict=*/false, /*sealed=*/true);
  ASSERT_TRUE(s.status.ok());
  ASSERT_EQ(s.damaged.size(), 1u);
  EXPECT_EQ(s.damaged[0].begin, good);
  EXPECT_EQ(s.zero_tail_bytes, 0u);
}

TEST(SegmentScanTest, ChecksumMismatchMidFileIsReportedAndSkipped) {
  SegmentBuilder b(0);
  b.Group({"one"});
  const size_t damaged_group = b.Group({"two", "three"});
  const size_t next_group = b.Group({"four"});
  b.data()[damaged_group + kGroupFrameSize + kFrameHeaderSize + 2] ^= 0x40;  // in record "two"
  SegmentScan s = Scan(b.data());
  ASSERT_TRUE(s.status.ok()) << s.status.ToString();
  ASSERT_EQ(s.damaged.size(), 1u);
  EXPECT_EQ(s.damaged[0].begin, damaged_group);
  EXPECT_EQ(s.damaged[0].end, next_group);
  EXPECT_EQ(s.damaged[0].lost_begin, 1u);
  EXPECT_EQ(s.damaged[0].lost_end, 3u);
  EXPECT_EQ(s.end_seq, 4u);
  EXPECT_EQ(s.record_count, 2u);
  EXPECT_EQ(s.valid_end, b.data().size());
}

TEST(SegmentScanTest, ChecksumMismatchMidFileRefusedInStrictMode) {
  SegmentBuilder b(0);
  const size_t damaged_group = b.Group({"one"});
  b.Group({"two"});
  b.data()[damaged_group + 3] ^= 1;  // the group frame's checksum
  SegmentScan s = Scan(b.data(), 0, /*strict=*/true);
  EXPECT_EQ(s.status.code(), StatusCode::kCorruption);
  EXPECT_NE(s.status.message().find("offset " + std::to_string(damaged_group)), std::string::npos);
}

TEST(SegmentScanTest, DamageInLastGroupIsTornEvenInStrictMode) {
  SegmentBuilder b(0);
  b.Group({"one"});
  const size_t last = b.Group({"two", "three"});
  b.data()[last + kGroupFrameSize + 1] ^= 1;
  SegmentScan s = Scan(b.data(), 0, /*strict=*/true);
  ASSERT_TRUE(s.status.ok());
  EXPECT_EQ(s.valid_end, last);
  EXPECT_EQ(s.end_seq, 1u);
}

TEST(SegmentScanTest, RecordHoldingACopiedGroupFrameIsNotMistakenForOne) {
  // A publisher sends bytes that are a valid group frame of some other segment: without this
  // segment's nonce it must not turn a torn tail into "mid-file corruption".
  std::string fake;
  AppendFrame(&fake, FrameType::kGroup, EncodeGroupHeader(5, 1, 10, /*nonce=*/0x9999));
  SegmentBuilder b(0, /*nonce=*/0x1234);
  b.Group({"one"});
  const size_t last = b.Group({"two", fake});
  b.data()[last + 2] ^= 1;
  SegmentScan s = Scan(b.data(), 0, /*strict=*/true);
  ASSERT_TRUE(s.status.ok()) << s.status.ToString();
  EXPECT_EQ(s.valid_end, last);
  EXPECT_TRUE(s.damaged.empty());
}

TEST(SegmentScanTest, GroupLengthMismatchIsDamage) {
  SegmentBuilder b(0);
  b.Group({"one"});
  const size_t good = b.data().size();
  // A group claiming more record bytes than its records hold.
  std::string body;
  char prefix[16] = {};
  uint64_t seq = 1;
  std::memcpy(prefix, &seq, 8);
  AppendFrame2(&body, FrameType::kRecord, std::string_view(prefix, 16), "x");
  AppendFrame(&b.data(), FrameType::kGroup,
              EncodeGroupHeader(1, 1, static_cast<uint32_t>(body.size() + 5), 0x1234));
  b.data() += body;
  SegmentScan s = Scan(b.data());
  EXPECT_EQ(s.valid_end, good);
}

TEST(SegmentScanTest, IndexEntriesPointAtFramesOfTheirSequence) {
  SegmentBuilder b(10);
  for (int i = 0; i < 20; ++i) b.Group({std::string(50, 'a' + i), "x"});
  SegmentScan s = Scan(b.data(), 10);
  ASSERT_TRUE(s.status.ok());
  ASSERT_GT(s.index.size(), 5u);
  for (const auto& e : s.index) {
    Frame f = ParseFrame(b.data(), e.offset);
    ASSERT_EQ(f.status, FrameStatus::kOk);
    uint64_t seq = 0;
    if (f.type == FrameType::kGroup) {
      std::memcpy(&seq, f.payload.data(), 8);
    } else {
      ASSERT_EQ(f.type, FrameType::kRecord);
      std::memcpy(&seq, f.payload.data(), 8);
    }
    EXPECT_EQ(seq, e.seq);
  }
}

// Found by fuzz_segment_scan: a durable damaged group, then a torn last group. The damaged
// bytes must stay and their sequence numbers must count as used, or the next append would
// reuse a sequence number that was acknowledged before the crash.
TEST(SegmentScanTest, DamageThenTornGroupNeverReusesSequences) {
  SegmentBuilder b(0);
  b.Group({"zero"});
  const size_t damaged = b.Group({"one"});
  const size_t torn = b.Group({"two"});
  b.data()[damaged + kGroupFrameSize + kFrameHeaderSize + 1] ^= 1;
  const std::string full = b.data();
  SegmentScan s = Scan(std::string_view(full).substr(0, full.size() - 2));
  ASSERT_TRUE(s.status.ok()) << s.status.ToString();
  ASSERT_EQ(s.damaged.size(), 1u);
  EXPECT_EQ(s.damaged[0].lost_begin, 1u);
  EXPECT_EQ(s.damaged[0].lost_end, 2u);
  EXPECT_EQ(s.valid_end, torn);  // the damaged group stays in the file
  EXPECT_EQ(s.end_seq, 2u);      // 1 is used up; 2 was never acknowledged
  // Recovery is stable: scanning what was kept, as a sealed segment, loses nothing more.
  SegmentScan again =
      Scan(std::string_view(full).substr(0, s.valid_end), 0, false, /*sealed=*/true);
  ASSERT_EQ(again.damaged.size(), 1u);
  EXPECT_EQ(again.valid_end, torn);
  EXPECT_EQ(again.torn_bytes, 0u);
}

TEST(SegmentScanTest, AdjacentDamagedGroupsReportDisjointLosses) {
  SegmentBuilder b(0);
  b.Group({"zero"});
  const size_t d1 = b.Group({"one"});
  const size_t d2 = b.Group({"two"});
  b.Group({"three"});
  b.data()[d1 + kGroupFrameSize + kFrameHeaderSize + 1] ^= 1;
  b.data()[d2 + kGroupFrameSize + kFrameHeaderSize + 1] ^= 1;
  SegmentScan s = Scan(b.data());
  ASSERT_TRUE(s.status.ok());
  ASSERT_EQ(s.damaged.size(), 2u);
  EXPECT_EQ(s.damaged[0].lost_begin, 1u);
  EXPECT_EQ(s.damaged[0].lost_end, 2u);
  EXPECT_EQ(s.damaged[1].lost_begin, 2u);
  EXPECT_EQ(s.damaged[1].lost_end, 3u);
  EXPECT_EQ(s.end_seq, 4u);
  EXPECT_EQ(s.record_count, 2u);
}

TEST(SegmentScanTest, SequenceOverflowIsDamage) {
  SegmentBuilder b(0);
  b.Group({"zero"});
  const size_t good = b.data().size();
  std::string body;
  char prefix[16] = {};
  const uint64_t huge = UINT64_MAX;
  std::memcpy(prefix, &huge, 8);
  AppendFrame2(&body, FrameType::kRecord, std::string_view(prefix, 16), "x");
  AppendFrame(&b.data(), FrameType::kGroup,
              EncodeGroupHeader(UINT64_MAX, 2, static_cast<uint32_t>(body.size()), 0x1234));
  b.data() += body;
  SegmentScan s = Scan(b.data());
  EXPECT_EQ(s.valid_end, good);
  EXPECT_EQ(s.end_seq, 1u);
}

TEST(SegmentScanTest, DamageAtTheEndOfASealedSegmentIsCorruptionNotATornTail) {
  SegmentBuilder b(0);
  b.Group({"zero"});
  const size_t last = b.Group({"one"});
  b.data()[last + 3] ^= 1;
  SegmentScan s = Scan(b.data(), 0, false, /*sealed=*/true);
  ASSERT_TRUE(s.status.ok());
  EXPECT_EQ(s.torn_bytes, 0u);
  EXPECT_EQ(s.valid_end, b.data().size());
  ASSERT_EQ(s.damaged.size(), 1u);
  EXPECT_EQ(s.damaged[0].begin, last);
  EXPECT_EQ(Scan(b.data(), 0, /*strict=*/true, /*sealed=*/true).status.code(),
            StatusCode::kCorruption);
}

}  // namespace
}  // namespace tidepool::storage
