// libFuzzer target for cursor replay (src/storage/cursor.h): the input is read as a cursor WAL,
// a run of frames; every cursor frame is applied with ApplyCursorFrame, and after each one the
// CursorState must still be well formed (docs/storage-format.md, "Cursor") and must still
// acknowledge everything it acknowledged before (an ack is never undone, except by a reset).
//
// As in fuzz_segment_scan, the input is also replayed with its frame checksums recomputed, since
// libFuzzer cannot forge a CRC-32C.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "repair_checksums.h"
#include "storage/coding.h"
#include "storage/crc32c.h"
#include "storage/cursor.h"
#include "storage/frame.h"
#include "storage/log_format.h"

namespace tidepool::storage {
namespace {

[[noreturn]] void Violated(const char* what, int line) {
  std::fprintf(stderr, "fuzz_cursor_frames: invariant violated (line %d): %s\n", line, what);
  std::abort();
}

#define CURSOR_CHECK(cond)                               \
  do {                                                   \
    if (!(cond)) Violated(#cond, __LINE__); /* NOLINT */ \
  } while (0)

// The acked state as probe points that must stay acknowledged: floor - 1 and the ends of every
// range.
std::vector<uint64_t> AckedProbes(const CursorState& s) {
  std::vector<uint64_t> probes;
  if (s.floor().value > 0) probes.push_back(s.floor().value - 1);
  for (const auto& [lo, hi] : s.acked_ranges()) {
    probes.push_back(lo);
    probes.push_back(hi - 1);
  }
  return probes;
}

void CheckWellFormed(const CursorState& s) {
  const uint64_t floor = s.floor().value;
  if (floor > 0) CURSOR_CHECK(s.IsAcked(Seq(floor - 1)));
  CURSOR_CHECK(!s.IsAcked(Seq(floor)));  // else the floor would have advanced past it
  uint64_t prev_hi = floor;
  for (const auto& [lo, hi] : s.acked_ranges()) {
    CURSOR_CHECK(lo < hi);
    CURSOR_CHECK(lo > prev_hi);  // disjoint, not adjacent, and above the floor
    CURSOR_CHECK(s.IsAcked(Seq(lo)));
    CURSOR_CHECK(s.IsAcked(Seq(hi - 1)));
    CURSOR_CHECK(s.IsAcked(Seq(lo + (hi - lo) / 2)));
    CURSOR_CHECK(!s.IsAcked(Seq(lo - 1)));
    CURSOR_CHECK(!s.IsAcked(Seq(hi)));
    prev_hi = hi;
  }
  // Delivery state is kept only for what is still unacknowledged.
  for (const auto& [seq, delivery] : s.deliveries()) {
    CURSOR_CHECK(!s.IsAcked(Seq(seq)));
    CURSOR_CHECK(s.delivery(Seq(seq)) == delivery);
  }
}

// The ranges of an ACK frame, or of a RESET frame after its floor (the harness's own decoding,
// to check that what a frame acknowledges is acknowledged after it).
std::vector<std::pair<uint64_t, uint64_t>> RangesOf(FrameType type, std::string_view payload,
                                                    uint64_t* reset_floor) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  Decoder d(payload);
  if (type == FrameType::kCursorReset && !d.U64(reset_floor)) return ranges;
  uint32_t n = 0;
  if (!d.U32(&n)) return ranges;
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t lo = 0, hi = 0;
    if (!d.U64(&lo) || !d.U64(&hi)) break;
    ranges.emplace_back(lo, hi);
  }
  return ranges;
}

// The deliveries of a DELIVERY frame, in order.
std::vector<std::pair<uint64_t, Delivery>> DeliveriesOf(std::string_view payload) {
  std::vector<std::pair<uint64_t, Delivery>> deliveries;
  Decoder d(payload);
  uint32_t n = 0;
  if (!d.U32(&n)) return deliveries;
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t seq = 0;
    Delivery delivery;
    if (!d.U64(&seq) || !d.U32(&delivery.attempts) || !d.I64(&delivery.lease_deadline)) break;
    deliveries.emplace_back(seq, delivery);
  }
  return deliveries;
}

void Replay(std::string_view wal) {
  CursorState state;
  size_t pos = 0;
  while (pos < wal.size()) {
    const Frame f = ParseFrame(wal, pos);
    if (f.status != FrameStatus::kOk) {
      ++pos;  // resynchronise byte by byte, as replay does after damage
      continue;
    }
    pos += f.size;

    const CursorState before = state;
    const bool applied = ApplyCursorFrame(f.type, f.payload, &state);
    const bool known = f.type == FrameType::kCursorAck || f.type == FrameType::kCursorDelivery ||
                       f.type == FrameType::kCursorReset;
    if (!known) CURSOR_CHECK(!applied);
    CheckWellFormed(state);
    if (!applied) continue;

    // Operations set rather than add, so a WAL replayed twice (a crash during compaction)
    // yields the same state.
    CursorState twice = state;
    CURSOR_CHECK(ApplyCursorFrame(f.type, f.payload, &twice));
    CURSOR_CHECK(twice == state);

    if (f.type == FrameType::kCursorReset) {
      uint64_t floor = 0;
      const auto ranges = RangesOf(f.type, f.payload, &floor);
      CURSOR_CHECK(state.floor().value >= floor);
      CURSOR_CHECK(state.deliveries().empty());
      for (const auto& [lo, hi] : ranges) {
        if (lo < hi) CURSOR_CHECK(state.IsAcked(Seq(lo)) && state.IsAcked(Seq(hi - 1)));
      }
      continue;
    }
    // Acks and deliveries never take an acknowledgement back.
    CURSOR_CHECK(state.floor() >= before.floor());
    for (uint64_t seq : AckedProbes(before)) CURSOR_CHECK(state.IsAcked(Seq(seq)));
    if (f.type == FrameType::kCursorAck) {
      uint64_t unused = 0;
      for (const auto& [lo, hi] : RangesOf(f.type, f.payload, &unused)) {
        if (lo < hi) CURSOR_CHECK(state.IsAcked(Seq(lo)) && state.IsAcked(Seq(hi - 1)));
      }
    } else {
      CURSOR_CHECK(state.acked_ranges() == before.acked_ranges());
      CURSOR_CHECK(state.floor() == before.floor());
      // Setting, not adding: the last delivery of an unacknowledged sequence wins.
      const auto deliveries = DeliveriesOf(f.payload);
      for (size_t i = 0; i < deliveries.size(); ++i) {
        const auto& [seq, delivery] = deliveries[i];
        bool overridden = false;
        for (size_t j = i + 1; j < deliveries.size() && !overridden; ++j) {
          overridden = deliveries[j].first == seq;
        }
        if (overridden) continue;
        if (state.IsAcked(Seq(seq))) {
          CURSOR_CHECK(!state.delivery(Seq(seq)).has_value());
        } else {
          CURSOR_CHECK(state.delivery(Seq(seq)) == delivery);
        }
      }
    }
  }
}

}  // namespace
}  // namespace tidepool::storage

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  const std::string_view data(reinterpret_cast<const char*>(bytes), size);
  tidepool::storage::Replay(data);
  const std::string repaired = tidepool::storage::RepairChecksums(data);
  if (repaired != data) tidepool::storage::Replay(repaired);
  return 0;
}
