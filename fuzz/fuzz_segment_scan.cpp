// libFuzzer target for the recovery scan (src/storage/segment_scan.h, docs/storage-format.md,
// "Recovery"): arbitrary bytes in, and the properties recovery relies on must hold, whatever the
// bytes. A violation prints which property failed and the segment bytes, then aborts.
//
// Every input is scanned twice: as is, and as a "repaired" copy whose frame checksums were
// recomputed. libFuzzer cannot forge a CRC-32C, so without the repaired copy it would only ever
// explore the frames of the seed corpus; with it, mutations of sequence numbers, counts, lengths
// and nonces reach the deep paths (resynchronisation, gaps, torn groups after damage).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "repair_checksums.h"
#include "storage/coding.h"
#include "storage/crc32c.h"
#include "storage/frame.h"
#include "storage/log_format.h"
#include "storage/segment_scan.h"

namespace tidepool::storage {
namespace {

// A property that failed on `data`: printed with the bytes, then the process aborts so that
// libFuzzer records the input as a crash.
[[noreturn]] void Violated(std::string_view data, const ScanOptions& options, const char* what,
                           int line) {
  std::fprintf(stderr,
               "fuzz_segment_scan: invariant violated (line %d): %s\n"
               "  options: expected_base=%llu index_interval_bytes=%u strict=%d sealed=%d\n"
               "  segment (%zu bytes):",
               line, what, static_cast<unsigned long long>(options.expected_base),
               options.index_interval_bytes, options.strict ? 1 : 0, options.sealed ? 1 : 0,
               data.size());
  constexpr size_t kMaxDumpBytes = 4096;
  for (size_t i = 0; i < data.size() && i < kMaxDumpBytes; ++i) {
    std::fprintf(stderr, "%s%02x", i % 32 == 0 ? "\n    " : "", static_cast<uint8_t>(data[i]));
  }
  std::fprintf(stderr, "\n");
  std::abort();
}

#define SCAN_CHECK(cond)                                                \
  do {                                                                  \
    if (!(cond)) Violated(data, options, #cond, __LINE__); /* NOLINT */ \
  } while (0)

// Offset of the base sequence inside a SEGMENT_HEADER frame: header, then the magic.
constexpr size_t kHeaderBaseOffset = kFrameHeaderSize + 8;

// The base sequence the header claims, read without validating anything: scanning with it as
// the expected base gets past the header check for any base the fuzzer writes there.
uint64_t ClaimedBase(std::string_view data) {
  if (data.size() < kHeaderBaseOffset + 8) return 0;
  return DecodeFixed64(data.data() + kHeaderBaseOffset);
}

// The (first) sequence number and timestamp of the GROUP or RECORD frame at `offset`, as an
// index entry would name it; false when no such frame is there.
bool EntryAt(std::string_view data, uint64_t offset, uint64_t* seq, int64_t* timestamp,
             bool* is_group) {
  Frame f = ParseFrame(data, offset);
  if (f.status != FrameStatus::kOk) return false;
  Decoder d(f.payload);
  if (f.type == FrameType::kGroup) {
    *is_group = true;
    return d.U64(seq);
  }
  *is_group = false;
  return f.type == FrameType::kRecord && d.U64(seq) && d.I64(timestamp);
}

// Properties of one scan result on its own.
void CheckScan(std::string_view data, const ScanOptions& options, const SegmentScan& scan) {
  const uint64_t base = options.expected_base;
  SCAN_CHECK(scan.valid_end <= data.size());
  SCAN_CHECK(scan.torn_bytes <= data.size() - scan.valid_end);
  SCAN_CHECK(scan.end_seq >= base);
  SCAN_CHECK(scan.status.ok() || scan.status.code() == StatusCode::kCorruption);

  if (!scan.header_valid) {
    // Nothing is trusted without a header: the caller deletes the file (or refuses to open).
    SCAN_CHECK(scan.valid_end == 0);
    SCAN_CHECK(scan.end_seq == base);
    SCAN_CHECK(scan.record_count == 0);
    SCAN_CHECK(scan.torn_bytes == 0);
    SCAN_CHECK(scan.index.empty());
    SCAN_CHECK(scan.damaged.empty());
    return;
  }
  SCAN_CHECK(scan.header.base_seq == base);
  SCAN_CHECK(scan.valid_end >= kSegmentHeaderFrameSize);

  // Damaged regions: in order, disjoint, after the header, inside the good prefix the caller
  // keeps (it truncates at valid_end and the reader skips the regions), and the sequence
  // numbers they lost in order and below end_seq (or new appends would reuse them).
  uint64_t lost = 0;
  uint64_t prev_end = kSegmentHeaderFrameSize;
  uint64_t prev_lost_end = base;
  for (const DamagedRegion& d : scan.damaged) {
    SCAN_CHECK(d.begin >= prev_end);
    SCAN_CHECK(d.begin < d.end);
    SCAN_CHECK(d.end <= data.size());
    SCAN_CHECK(d.lost_begin <= d.lost_end);
    SCAN_CHECK(d.lost_begin >= prev_lost_end);
    if (scan.status.ok()) {
      SCAN_CHECK(d.end <= scan.valid_end);
      SCAN_CHECK(d.lost_end <= scan.end_seq);
    }
    lost += d.lost_end - d.lost_begin;
    prev_end = d.end;
    prev_lost_end = d.lost_end;
  }
  if (options.strict) {
    // Strict mode stops at the first damage and describes only the good prefix before it.
    SCAN_CHECK(scan.damaged.size() <= 1);
    SCAN_CHECK(scan.damaged.empty() == scan.status.ok());
    SCAN_CHECK(scan.end_seq - base == scan.record_count);
  } else {
    SCAN_CHECK(scan.status.ok());
    // Every sequence number below end_seq is either a record or lost in a damaged region.
    SCAN_CHECK(scan.end_seq - base == scan.record_count + lost);
  }
  if (scan.status.ok()) {
    // Nothing between the good prefix and the end of the file but one torn group, then zeros
    // (reserved space, LogOptions::reserve_bytes).
    SCAN_CHECK(scan.valid_end + scan.torn_bytes + scan.zero_tail_bytes == data.size());
    const std::string_view zeros = data.substr(data.size() - scan.zero_tail_bytes);
    SCAN_CHECK(zeros.find_first_not_of('\0') == std::string_view::npos);
    // The torn part ends at its last non-zero byte: every trailing zero is counted as reserved.
    if (scan.torn_bytes > 0) SCAN_CHECK(data[scan.valid_end + scan.torn_bytes - 1] != '\0');
  }
  if (options.sealed) {
    // A sealed segment is never cut: damage at its end is reported, not truncated.
    SCAN_CHECK(scan.torn_bytes == 0);
    SCAN_CHECK(scan.zero_tail_bytes == 0);
    if (scan.status.ok()) SCAN_CHECK(scan.valid_end == data.size());
  }

  if (scan.record_count == 0) {
    SCAN_CHECK(scan.min_timestamp == 0 && scan.max_timestamp == 0);
    SCAN_CHECK(scan.index.empty());
  } else {
    SCAN_CHECK(scan.min_timestamp <= scan.max_timestamp);
    SCAN_CHECK(!scan.index.empty());  // the first record is always indexed
  }

  for (size_t i = 0; i < scan.index.size(); ++i) {
    const IndexEntry& e = scan.index[i];
    SCAN_CHECK(e.offset >= kSegmentHeaderFrameSize);
    SCAN_CHECK(e.offset < scan.valid_end);
    SCAN_CHECK(e.seq >= base && e.seq < scan.end_seq);
    SCAN_CHECK(e.timestamp >= scan.min_timestamp && e.timestamp <= scan.max_timestamp);
    if (i > 0) {
      const IndexEntry& prev = scan.index[i - 1];
      SCAN_CHECK(e.seq > prev.seq);
      SCAN_CHECK(e.offset > prev.offset);
      SCAN_CHECK(e.offset - prev.offset >= options.index_interval_bytes);
    }
    for (const DamagedRegion& d : scan.damaged) {
      SCAN_CHECK(e.offset < d.begin || e.offset >= d.end);
    }
    // The entry names the frame a read starts from: a GROUP or RECORD of that sequence.
    uint64_t seq = 0;
    int64_t timestamp = e.timestamp;
    bool is_group = false;
    SCAN_CHECK(EntryAt(data, e.offset, &seq, &timestamp, &is_group));
    SCAN_CHECK(seq == e.seq);
    SCAN_CHECK(is_group || timestamp == e.timestamp);
  }
}

bool SameDamage(const DamagedRegion& a, const DamagedRegion& b) {
  return a.begin == b.begin && a.end == b.end && a.lost_begin == b.lost_begin &&
         a.lost_end == b.lost_end;
}

bool SameIndex(const SegmentScan& a, const SegmentScan& b) {
  if (a.index.size() != b.index.size()) return false;
  for (size_t i = 0; i < a.index.size(); ++i) {
    if (a.index[i].seq != b.index[i].seq || a.index[i].offset != b.index[i].offset ||
        a.index[i].timestamp != b.index[i].timestamp) {
      return false;
    }
  }
  return true;
}

// Recovery cuts the file at valid_end and, when it found damage, seals the segment and starts
// the next one at end_seq. The next open must then find the same records in the prefix,
// nothing more to cut, and no sequence number at or above end_seq (they belong to the next
// segment); the damage it reports may only have grown to the end of the kept bytes.
void CheckIdempotent(std::string_view data, const ScanOptions& options, const SegmentScan& scan) {
  if (!scan.status.ok() || !scan.header_valid) return;
  const std::string_view kept = data.substr(0, scan.valid_end);
  ScanOptions reopen = options;
  reopen.sealed = options.sealed || !scan.damaged.empty();
  const SegmentScan again = ScanSegment(kept, reopen);
  CheckScan(kept, reopen, again);
  SCAN_CHECK(again.status.ok());
  SCAN_CHECK(again.header_valid);
  SCAN_CHECK(again.valid_end == scan.valid_end);
  SCAN_CHECK(again.torn_bytes == 0);
  SCAN_CHECK(again.end_seq <= scan.end_seq);
  SCAN_CHECK(again.record_count == scan.record_count);
  SCAN_CHECK(again.min_timestamp == scan.min_timestamp);
  SCAN_CHECK(again.max_timestamp == scan.max_timestamp);
  SCAN_CHECK(SameIndex(again, scan));
  SCAN_CHECK(again.damaged.size() == scan.damaged.size());
  for (size_t i = 0; i < scan.damaged.size(); ++i) {
    const bool last = i + 1 == scan.damaged.size();
    if (!last || scan.damaged[i].end != scan.valid_end) {
      SCAN_CHECK(SameDamage(again.damaged[i], scan.damaged[i]));
    } else {
      // The group the scan resynchronised to was torn and cut: the damage now runs to the end.
      SCAN_CHECK(again.damaged[i].begin == scan.damaged[i].begin);
      SCAN_CHECK(again.damaged[i].end == scan.valid_end);
      SCAN_CHECK(again.damaged[i].lost_begin == scan.damaged[i].lost_begin);
    }
  }
}

// Strict mode must agree with the default mode up to the first damage, and refuse to open
// exactly when the default mode skipped something.
void CheckStrictAgrees(std::string_view data, const ScanOptions& options,
                       const SegmentScan& lenient, const SegmentScan& strict) {
  SCAN_CHECK(strict.header_valid == lenient.header_valid);
  if (!lenient.status.ok()) {
    SCAN_CHECK(!strict.status.ok());
    return;
  }
  if (lenient.damaged.empty()) {
    SCAN_CHECK(strict.status.ok());
    SCAN_CHECK(strict.valid_end == lenient.valid_end);
    SCAN_CHECK(strict.torn_bytes == lenient.torn_bytes);
    SCAN_CHECK(strict.end_seq == lenient.end_seq);
    SCAN_CHECK(strict.record_count == lenient.record_count);
    SCAN_CHECK(SameIndex(strict, lenient));
    return;
  }
  SCAN_CHECK(!strict.status.ok());
  SCAN_CHECK(strict.damaged.size() == 1);
  SCAN_CHECK(SameDamage(strict.damaged[0], lenient.damaged[0]));
  SCAN_CHECK(strict.valid_end <= lenient.damaged[0].begin);
  SCAN_CHECK(strict.end_seq == lenient.damaged[0].lost_begin);
  SCAN_CHECK(strict.record_count <= lenient.record_count);
}

void ScanBothModes(std::string_view data, uint64_t base, uint32_t index_interval_bytes,
                   bool sealed) {
  ScanOptions options;
  options.expected_base = base;
  options.index_interval_bytes = index_interval_bytes;
  options.sealed = sealed;
  options.strict = false;
  const SegmentScan lenient = ScanSegment(data, options);
  CheckScan(data, options, lenient);
  CheckIdempotent(data, options, lenient);

  options.strict = true;
  const SegmentScan strict = ScanSegment(data, options);
  CheckScan(data, options, strict);
  CheckIdempotent(data, options, strict);
  CheckStrictAgrees(data, options, lenient, strict);
}

void ScanAllOptions(std::string_view data) {
  // Base 0 with every record indexed; then the base the header claims, with an interval the
  // first byte picks (1..256 bytes: small, so that large groups get several entries).
  ScanBothModes(data, 0, 1, /*sealed=*/false);
  const uint32_t interval = data.empty() ? 1 : 1u + static_cast<uint8_t>(data[0]);
  ScanBothModes(data, ClaimedBase(data), interval, /*sealed=*/false);
  ScanBothModes(data, ClaimedBase(data), interval, /*sealed=*/true);
}

}  // namespace
}  // namespace tidepool::storage

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  const std::string_view data(reinterpret_cast<const char*>(bytes), size);
  tidepool::storage::ScanAllOptions(data);
  const std::string repaired = tidepool::storage::RepairChecksums(data);
  if (repaired != data) tidepool::storage::ScanAllOptions(repaired);
  return 0;
}
