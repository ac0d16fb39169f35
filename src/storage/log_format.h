// Constants of the on-disk format, and nothing else. The format is described in
// docs/storage-format.md; change both together.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tidepool::storage {

constexpr uint8_t kFormatVersion = 1;

// crc32c u32 | length u32 | type u8 | version u8
constexpr size_t kFrameHeaderSize = 10;
// A 10 MB message plus attributes and the broker's envelope fits with room to spare.
constexpr uint32_t kMaxFramePayload = (16u << 20) + (64u << 10);

enum class FrameType : uint8_t {
  kSegmentHeader = 1,
  kGroup = 2,
  kRecord = 3,
  kCursorCheckpoint = 16,
  kCursorAck = 17,
  kCursorDelivery = 18,
  kCursorReset = 19,
};

constexpr uint64_t kSegmentMagic = 0x4C4F4C5044495450ull;  // "TPIDPLOL"
constexpr uint64_t kIndexMagic = 0x5844494C50444954ull;    // "TIDPLIDX"

// SEGMENT_HEADER payload: magic u64 | base seq u64 | created i64 | nonce u64
constexpr size_t kSegmentHeaderPayloadSize = 32;
// GROUP payload: first seq u64 | count u32 | record bytes u32 | nonce u64
constexpr size_t kGroupPayloadSize = 24;
// RECORD payload prefix: seq u64 | timestamp i64
constexpr size_t kRecordPrefixSize = 16;
// Bytes a record of n data bytes takes in a segment.
constexpr size_t RecordFrameSize(size_t n) {
  return kFrameHeaderSize + kRecordPrefixSize + n;
}
constexpr size_t kGroupFrameSize = kFrameHeaderSize + kGroupPayloadSize;
constexpr size_t kSegmentHeaderFrameSize = kFrameHeaderSize + kSegmentHeaderPayloadSize;

// Index file: header fields, then entries, then a masked crc32c.
constexpr size_t kIndexHeaderSize = 8 + 1 + 7 + 8 + 8 + 8 + 8 + 8 + 4;
constexpr size_t kIndexEntrySize = 24;

constexpr char kSegmentSuffix[] = ".log";
constexpr char kIndexSuffix[] = ".index";
constexpr size_t kSegmentNameDigits = 20;

}  // namespace tidepool::storage
