// The recovery scan of one segment file (docs/storage-format.md, "Recovery"). Pure: it reads a
// byte string and decides; the caller truncates and reports. The fuzz target drives it directly.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace tidepool::storage {

struct SegmentHeader {
  uint64_t base_seq = 0;
  int64_t created_micros = 0;
  uint64_t nonce = 0;
};

struct IndexEntry {
  uint64_t seq = 0;
  uint64_t offset = 0;  // of a GROUP or RECORD frame whose (first) sequence is `seq`
  int64_t timestamp = 0;
};

// Bytes [begin, end) of a segment that failed validation and were skipped (default mode), with
// the sequence numbers [lost_begin, lost_end) they held.
struct DamagedRegion {
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t lost_begin = 0;
  uint64_t lost_end = 0;
  std::string reason;
};

struct SegmentScan {
  // A failed scan (strict mode and damage found, or damage that cannot be skipped) leaves the
  // other fields describing the good prefix only.
  Status status;
  bool header_valid = false;  // false: empty segment, or a header torn before it was durable
  SegmentHeader header;
  uint64_t valid_end = 0;  // end of the last complete group; the file is cut here
  uint64_t end_seq = 0;    // one past the last record
  uint64_t record_count = 0;
  int64_t min_timestamp = 0;  // of the records; 0 when there are none
  int64_t max_timestamp = 0;
  uint64_t torn_bytes = 0;  // bytes after valid_end that belong to a torn last group
  // Zero bytes at the very end of the last segment, after valid_end and any torn group: space
  // the writer had reserved ahead (LogOptions::reserve_bytes), not damage.
  uint64_t zero_tail_bytes = 0;
  std::vector<IndexEntry> index;
  std::vector<DamagedRegion> damaged;
};

struct ScanOptions {
  uint64_t expected_base = 0;  // from the file name
  uint32_t index_interval_bytes = 4096;
  bool strict = false;
  // The segment is not the last one: it was made durable whole before the next one was
  // created, so damage at its end is corruption, never a torn tail.
  bool sealed = false;
};

SegmentScan ScanSegment(std::string_view data, const ScanOptions& options);

// Encodes the SEGMENT_HEADER and GROUP payloads.
std::string EncodeSegmentHeader(const SegmentHeader& h);
std::string EncodeGroupHeader(uint64_t first_seq, uint32_t count, uint32_t record_bytes,
                              uint64_t nonce);

}  // namespace tidepool::storage
