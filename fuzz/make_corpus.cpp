// Writes the seed corpus of the fuzz targets with the real frame encoders, so that it can be
// regenerated after a format change:
//
//   ninja -C build-fuzz make_corpus && build-fuzz/fuzz/make_corpus fuzz/corpus
//
// Each file is one small, meaningful case (docs/storage-format.md, "Recovery" and "Cursor").
// The output is deterministic: fixed nonces, timestamps and record bytes.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "storage/coding.h"
#include "storage/crc32c.h"
#include "storage/frame.h"
#include "storage/log_format.h"
#include "storage/segment_scan.h"

namespace tidepool::storage {
namespace {

constexpr uint64_t kNonce = 0x6e6f6e63652d3031ull;
constexpr uint64_t kOtherNonce = 0x6f746865722d3032ull;
constexpr int64_t kCreatedMicros = 1'700'000'000'000'000;
constexpr size_t kMaxCorpusFileBytes = 8 << 10;

// Builds a segment the way Log writes one: a header, then groups of record frames.
class SegmentWriter {
 public:
  explicit SegmentWriter(uint64_t base, uint64_t nonce = kNonce) : next_seq_(base), nonce_(nonce) {
    AppendFrame(&data_, FrameType::kSegmentHeader,
                EncodeSegmentHeader({base, kCreatedMicros, nonce}));
  }

  // Appends one group of `records`; returns the offset of its GROUP frame.
  size_t Group(const std::vector<std::string>& records) {
    return GroupAt(next_seq_, records, nonce_);
  }

  // Appends a group whose records start at `first_seq` (a gap, or a repeat) and carry `nonce`.
  size_t GroupAt(uint64_t first_seq, const std::vector<std::string>& records, uint64_t nonce) {
    const size_t start = data_.size();
    std::string body;
    uint64_t seq = first_seq;
    for (const std::string& record : records) {
      std::string prefix;
      PutFixed64(&prefix, seq++);
      PutFixed64(&prefix, static_cast<uint64_t>(timestamp_));
      AppendFrame2(&body, FrameType::kRecord, prefix, record);
      timestamp_ += 1000;
    }
    AppendFrame(&data_, FrameType::kGroup,
                EncodeGroupHeader(first_seq, static_cast<uint32_t>(records.size()),
                                  static_cast<uint32_t>(body.size()), nonce));
    data_ += body;
    next_seq_ = seq;
    return start;
  }

  std::string& data() { return data_; }

 private:
  std::string data_;
  uint64_t next_seq_;
  uint64_t nonce_;
  int64_t timestamp_ = kCreatedMicros + 1000;
};

std::vector<std::string> Records(int count, size_t bytes) {
  std::vector<std::string> records;
  for (int i = 0; i < count; ++i) {
    records.push_back(std::string(bytes, static_cast<char>('a' + i % 26)));
  }
  return records;
}

// Rewrites the frame at `offset` with another version byte and a checksum that matches it: a
// frame that is intact but of a format this build does not know.
void SetFrameVersion(std::string* data, size_t offset, uint8_t version) {
  char* h = data->data() + offset;
  h[9] = static_cast<char>(version);
  const uint32_t length = DecodeFixed32(h + 4);
  const uint32_t crc = crc32c::Extend(crc32c::Extend(0, h + 8, 2), h + kFrameHeaderSize, length);
  EncodeFixed32(h, crc32c::Mask(crc));
}

std::vector<std::pair<std::string, std::string>> SegmentCases() {
  std::vector<std::pair<std::string, std::string>> cases;
  cases.emplace_back("empty", "");
  {
    SegmentWriter w(0);
    cases.emplace_back("header_only", w.data());
    cases.emplace_back("header_torn", w.data().substr(0, kSegmentHeaderFrameSize / 2));
  }
  {
    SegmentWriter w(0);
    w.Group(Records(1, 8));
    w.Group(Records(3, 16));
    w.Group(Records(2, 4));
    cases.emplace_back("clean_three_groups", w.data());
    cases.emplace_back("torn_tail_in_record", w.data().substr(0, w.data().size() - 5));
    cases.emplace_back("zero_filled_tail", w.data() + std::string(64, '\0'));

    std::string bad_header = w.data();
    bad_header[kFrameHeaderSize + 3] ^= 0x01;  // the magic: the header fails its checksum
    cases.emplace_back("bad_header_with_groups", bad_header);
  }
  {
    SegmentWriter w(4096);
    w.Group(Records(2, 8));
    w.Group(Records(1, 8));
    cases.emplace_back("clean_base_4096", w.data());
  }
  {
    SegmentWriter w(0);
    w.Group(Records(2, 8));
    const size_t last = w.Group(Records(2, 8));
    cases.emplace_back("torn_tail_in_group_frame", w.data().substr(0, last + kGroupFrameSize - 7));
  }
  {
    // A group whose frames are all valid but fewer than its count: torn, dropped whole.
    SegmentWriter w(0);
    w.Group(Records(2, 8));
    const size_t last = w.Group(Records(3, 8));
    const size_t first_record = last + kGroupFrameSize;
    cases.emplace_back("torn_tail_short_group",
                       w.data().substr(0, first_record + 2 * RecordFrameSize(8)));
  }
  {
    SegmentWriter w(0);
    w.Group(Records(2, 8));
    const size_t middle = w.Group(Records(2, 8));
    w.Group(Records(2, 8));
    std::string data = w.data();
    data[middle + kGroupFrameSize + kFrameHeaderSize + kRecordPrefixSize] ^= 0x20;
    cases.emplace_back("bad_crc_mid_file", data);
  }
  {
    // Mid-file: a group of another segment (stale bytes), then this segment's next group.
    SegmentWriter w(0);
    w.Group(Records(2, 8));
    w.GroupAt(2, Records(2, 8), kOtherNonce);
    w.GroupAt(2, Records(1, 8), kNonce);
    cases.emplace_back("foreign_group_mid_file", w.data());
  }
  {
    // A valid group out of sequence, then the sequence resumes further on.
    SegmentWriter w(0);
    w.Group(Records(2, 8));
    w.GroupAt(7, Records(1, 8), kNonce);
    w.GroupAt(9, Records(2, 8), kNonce);
    cases.emplace_back("sequence_gap", w.data());
  }
  {
    SegmentWriter w(0);
    w.Group(Records(1, 8));
    const size_t middle = w.Group(Records(1, 8));
    w.Group(Records(1, 8));
    std::string data = w.data();
    SetFrameVersion(&data, middle + kGroupFrameSize, kFormatVersion + 1);
    cases.emplace_back("unknown_version_mid_file", data);
  }
  {
    // Enough bytes for several index entries at small intervals.
    SegmentWriter w(100);
    w.Group(Records(12, 96));
    w.Group(Records(8, 40));
    cases.emplace_back("large_groups", w.data());
  }
  return cases;
}

// Cursor WAL frames, encoded as docs/storage-format.md ("Cursor") describes them.
std::string AckFrame(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  std::string payload;
  PutFixed32(&payload, static_cast<uint32_t>(ranges.size()));
  for (const auto& [lo, hi] : ranges) {
    PutFixed64(&payload, lo);
    PutFixed64(&payload, hi);
  }
  std::string frame;
  AppendFrame(&frame, FrameType::kCursorAck, payload);
  return frame;
}

struct DeliveryItem {
  uint64_t seq;
  uint32_t attempts;
  int64_t lease_deadline;
};

std::string DeliveryFrame(const std::vector<DeliveryItem>& items) {
  std::string payload;
  PutFixed32(&payload, static_cast<uint32_t>(items.size()));
  for (const DeliveryItem& d : items) {
    PutFixed64(&payload, d.seq);
    PutFixed32(&payload, d.attempts);
    PutFixed64(&payload, static_cast<uint64_t>(d.lease_deadline));
  }
  std::string frame;
  AppendFrame(&frame, FrameType::kCursorDelivery, payload);
  return frame;
}

std::string ResetFrame(uint64_t floor, const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  std::string payload;
  PutFixed64(&payload, floor);
  PutFixed32(&payload, static_cast<uint32_t>(ranges.size()));
  for (const auto& [lo, hi] : ranges) {
    PutFixed64(&payload, lo);
    PutFixed64(&payload, hi);
  }
  std::string frame;
  AppendFrame(&frame, FrameType::kCursorReset, payload);
  return frame;
}

std::vector<std::pair<std::string, std::string>> CursorCases() {
  constexpr int64_t kLease = kCreatedMicros + 10'000'000;
  std::vector<std::pair<std::string, std::string>> cases;
  cases.emplace_back("empty", "");
  cases.emplace_back("acks_in_order", AckFrame({{0, 1}}) + AckFrame({{1, 3}, {3, 4}}));
  // Out of order: ranges above the floor, then the gap closes and the floor jumps past them.
  cases.emplace_back("acks_out_of_order",
                     AckFrame({{5, 7}, {9, 10}}) + AckFrame({{7, 9}}) + AckFrame({{0, 5}}));
  const std::string deliveries =
      DeliveryFrame({{0, 1, kLease}, {1, 1, kLease}, {2, 1, kLease}}) + AckFrame({{1, 2}}) +
      DeliveryFrame({{0, 2, kLease + 1000}, {1, 3, kLease}}) + AckFrame({{0, 1}});
  cases.emplace_back("deliveries_and_acks", deliveries);
  const std::string reset = AckFrame({{0, 10}, {20, 30}}) + DeliveryFrame({{12, 1, kLease}}) +
                            ResetFrame(5, {{8, 12}, {12, 13}, {40, 50}}) + AckFrame({{5, 8}});
  cases.emplace_back("reset_with_ranges", reset);
  cases.emplace_back("torn_tail", reset.substr(0, reset.size() - 9));
  std::string corrupt = deliveries;
  corrupt[kFrameHeaderSize + 6] ^= 0x40;  // inside the first frame's payload
  cases.emplace_back("bad_crc_first_frame", corrupt);
  std::string checkpoint;
  AppendFrame(&checkpoint, FrameType::kCursorCheckpoint, std::string(24, '\0'));
  cases.emplace_back("checkpoint_frame_in_wal", checkpoint + AckFrame({{0, 2}}));
  return cases;
}

bool WriteCases(const std::filesystem::path& dir,
                const std::vector<std::pair<std::string, std::string>>& cases) {
  std::filesystem::create_directories(dir);
  for (const auto& [name, bytes] : cases) {
    if (bytes.size() > kMaxCorpusFileBytes) {
      std::fprintf(stderr, "make_corpus: %s is %zu bytes, above the %zu-byte limit\n", name.c_str(),
                   bytes.size(), kMaxCorpusFileBytes);
      return false;
    }
    std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "make_corpus: cannot write %s\n", (dir / name).c_str());
      return false;
    }
  }
  return true;
}

}  // namespace
}  // namespace tidepool::storage

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr,
                 "usage: %s CORPUS_DIR   (writes CORPUS_DIR/segment_scan, .../cursor_frames)\n",
                 argv[0]);
    return 2;
  }
  const std::filesystem::path root = argv[1];
  using tidepool::storage::CursorCases;
  using tidepool::storage::SegmentCases;
  using tidepool::storage::WriteCases;
  if (!WriteCases(root / "segment_scan", SegmentCases()) ||
      !WriteCases(root / "cursor_frames", CursorCases())) {
    return 1;
  }
  return 0;
}
