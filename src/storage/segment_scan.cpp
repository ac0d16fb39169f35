#include "storage/segment_scan.h"

#include <algorithm>

#include "storage/coding.h"
#include "storage/frame.h"
#include "storage/log_format.h"

namespace tidepool::storage {
namespace {

struct GroupHeader {
  uint64_t first_seq = 0;
  uint32_t count = 0;
  uint32_t record_bytes = 0;
  uint64_t nonce = 0;
};

bool DecodeGroupHeader(const Frame& f, GroupHeader* g) {
  if (f.status != FrameStatus::kOk || f.type != FrameType::kGroup ||
      f.payload.size() != kGroupPayloadSize) {
    return false;
  }
  Decoder d(f.payload);
  return d.U64(&g->first_seq) && d.U32(&g->count) && d.U32(&g->record_bytes) && d.U64(&g->nonce);
}

bool DecodeHeader(const Frame& f, SegmentHeader* h) {
  if (f.status != FrameStatus::kOk || f.type != FrameType::kSegmentHeader ||
      f.payload.size() != kSegmentHeaderPayloadSize) {
    return false;
  }
  Decoder d(f.payload);
  uint64_t magic = 0;
  return d.U64(&magic) && magic == kSegmentMagic && d.U64(&h->base_seq) &&
         d.I64(&h->created_micros) && d.U64(&h->nonce);
}

// Looks for a valid GROUP frame of this segment at or after `from` whose first sequence is at
// least `min_seq`. Returns its offset, or npos.
size_t FindNextGroup(std::string_view data, size_t from, uint64_t nonce, uint64_t min_seq) {
  for (size_t p = from; p + kGroupFrameSize <= data.size(); ++p) {
    // Cheap filter before the checksum: the type and length of a group frame are fixed.
    if (static_cast<uint8_t>(data[p + 8]) != static_cast<uint8_t>(FrameType::kGroup)) continue;
    if (DecodeFixed32(data.data() + p + 4) != kGroupPayloadSize) continue;
    GroupHeader g;
    if (DecodeGroupHeader(ParseFrame(data, p), &g) && g.nonce == nonce && g.first_seq >= min_seq &&
        g.count > 0) {
      return p;
    }
  }
  return std::string_view::npos;
}

bool AnyValidGroup(std::string_view data) {
  for (size_t p = 0; p + kGroupFrameSize <= data.size(); ++p) {
    if (static_cast<uint8_t>(data[p + 8]) != static_cast<uint8_t>(FrameType::kGroup)) continue;
    GroupHeader g;
    if (DecodeGroupHeader(ParseFrame(data, p), &g)) return true;
  }
  return false;
}

}  // namespace

std::string EncodeSegmentHeader(const SegmentHeader& h) {
  std::string out;
  PutFixed64(&out, kSegmentMagic);
  PutFixed64(&out, h.base_seq);
  PutFixed64(&out, static_cast<uint64_t>(h.created_micros));
  PutFixed64(&out, h.nonce);
  return out;
}

std::string EncodeGroupHeader(uint64_t first_seq, uint32_t count, uint32_t record_bytes,
                              uint64_t nonce) {
  std::string out;
  PutFixed64(&out, first_seq);
  PutFixed32(&out, count);
  PutFixed32(&out, record_bytes);
  PutFixed64(&out, nonce);
  return out;
}

SegmentScan ScanSegment(std::string_view data, const ScanOptions& options) {
  SegmentScan scan;
  scan.end_seq = options.expected_base;
  if (data.empty()) return scan;

  Frame hf = ParseFrame(data, 0);
  if (!DecodeHeader(hf, &scan.header)) {
    // The header is written and made durable before any group; a valid group behind a bad
    // header means the header itself was damaged after the fact.
    if (AnyValidGroup(data)) {
      scan.status =
          Status::Corruption("segment header damaged (" + std::string(FrameStatusName(hf.status)) +
                             ") but the segment holds records");
    }
    return scan;
  }
  if (scan.header.base_seq != options.expected_base) {
    scan.status = Status::Corruption(
        "segment header names base sequence " + std::to_string(scan.header.base_seq) +
        ", the file name says " + std::to_string(options.expected_base));
    return scan;
  }
  scan.header_valid = true;
  scan.valid_end = hf.size;

  uint64_t expected_seq = options.expected_base;
  uint64_t last_index_offset = 0;
  bool have_index = false;
  size_t pos = hf.size;
  std::vector<IndexEntry> group_index;  // entries of the group being validated

  while (pos < data.size()) {
    const size_t group_start = pos;
    std::string reason;
    GroupHeader g;
    Frame gf = ParseFrame(data, pos);
    bool ok = DecodeGroupHeader(gf, &g);
    if (!ok) {
      reason =
          gf.status == FrameStatus::kOk ? "expected a group frame" : FrameStatusName(gf.status);
    } else if (g.nonce != scan.header.nonce) {
      ok = false;
      reason = "group frame of another segment";
    } else if (g.first_seq != expected_seq || g.count == 0 || g.count > UINT64_MAX - g.first_seq) {
      ok = false;
      reason = "group sequence " + std::to_string(g.first_seq) + " where " +
               std::to_string(expected_seq) + " was expected";
    }

    group_index.clear();
    int64_t gmin = 0, gmax = 0;
    if (ok) {
      pos += gf.size;
      const size_t records_start = pos;
      uint64_t last_entry = have_index ? last_index_offset : 0;
      bool have_entry = have_index;
      for (uint32_t i = 0; i < g.count && ok; ++i) {
        Frame rf = ParseFrame(data, pos);
        uint64_t seq = 0;
        int64_t ts = 0;
        if (rf.status != FrameStatus::kOk || rf.type != FrameType::kRecord ||
            rf.payload.size() < kRecordPrefixSize) {
          ok = false;
          reason = rf.status == FrameStatus::kOk ? "expected a record frame"
                                                 : FrameStatusName(rf.status);
          break;
        }
        Decoder d(rf.payload);
        (void)d.U64(&seq);
        (void)d.I64(&ts);
        if (seq != g.first_seq + i) {
          ok = false;
          reason = "record sequence " + std::to_string(seq) + " where " +
                   std::to_string(g.first_seq + i) + " was expected";
          break;
        }
        if (i == 0) {
          gmin = ts;
          gmax = ts;
        } else {
          gmin = std::min(gmin, ts);
          gmax = std::max(gmax, ts);
        }
        const uint64_t entry_offset = i == 0 ? group_start : pos;
        if (!have_entry || entry_offset - last_entry >= options.index_interval_bytes) {
          group_index.push_back({seq, entry_offset, ts});
          last_entry = entry_offset;
          have_entry = true;
        }
        pos += rf.size;
      }
      if (ok && pos - records_start != g.record_bytes) {
        ok = false;
        reason = "group length does not match its records";
      }
    }

    if (ok) {
      if (scan.record_count == 0) {
        scan.min_timestamp = gmin;
        scan.max_timestamp = gmax;
      } else {
        scan.min_timestamp = std::min(scan.min_timestamp, gmin);
        scan.max_timestamp = std::max(scan.max_timestamp, gmax);
      }
      scan.record_count += g.count;
      expected_seq = g.first_seq + g.count;
      scan.end_seq = expected_seq;
      scan.valid_end = pos;
      if (!group_index.empty()) {
        last_index_offset = group_index.back().offset;
        have_index = true;
        scan.index.insert(scan.index.end(), group_index.begin(), group_index.end());
      }
      continue;
    }

    // Damage at group_start. Is it the torn last group, or durable data gone bad?
    const size_t next = FindNextGroup(data, group_start + 1, scan.header.nonce, expected_seq);
    if (next == std::string_view::npos) {
      if (options.sealed) {
        // A sealed segment was durable as a whole before its successor existed: its end
        // cannot be torn. Keep the bytes and report them; the caller knows where the next
        // segment starts and so which sequence numbers were lost.
        scan.damaged.push_back(
            DamagedRegion{group_start, data.size(), expected_seq, expected_seq, reason});
        if (options.strict) {
          scan.status = Status::Corruption("corrupt data at offset " + std::to_string(group_start) +
                                           " (" + reason + ") in a sealed segment");
          return scan;
        }
        scan.valid_end = data.size();
        break;
      }
      size_t data_end = data.size();
      while (data_end > group_start && data[data_end - 1] == '\0') --data_end;
      scan.torn_bytes = data_end - group_start;
      scan.zero_tail_bytes = data.size() - data_end;
      break;
    }
    GroupHeader ng;
    DecodeGroupHeader(ParseFrame(data, next), &ng);
    scan.damaged.push_back(DamagedRegion{group_start, next, expected_seq, ng.first_seq, reason});
    if (options.strict) {
      scan.status =
          Status::Corruption("corrupt data at offset " + std::to_string(group_start) + " (" +
                             reason + "), followed by valid data at offset " +
                             std::to_string(next) + "; refusing to open in strict recovery mode");
      return scan;
    }
    // The damaged bytes were durable once: keep them (they are the evidence) and count their
    // sequence numbers as used, so that they are never handed out again.
    expected_seq = ng.first_seq;
    scan.end_seq = expected_seq;
    scan.valid_end = next;
    pos = next;
  }
  return scan;
}

}  // namespace tidepool::storage
