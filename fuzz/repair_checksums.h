// Shared by the fuzz targets. libFuzzer cannot forge a CRC-32C, so each target also runs a
// copy of its input whose frame checksums were recomputed: mutations of lengths, counts and
// sequence numbers then reach the deep paths.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "storage/coding.h"
#include "storage/crc32c.h"
#include "storage/log_format.h"

namespace tidepool::storage {

// Walks the frames from offset 0 by their length fields and rewrites the checksum of each whole
// frame of the current version. A frame whose version byte is anything else keeps its stored
// checksum, so the fuzzer can still place a bad-checksum frame by flipping one byte.
inline std::string RepairChecksums(std::string_view data) {
  std::string out(data);
  size_t pos = 0;
  while (out.size() - pos >= kFrameHeaderSize) {
    char* h = out.data() + pos;
    const uint32_t length = DecodeFixed32(h + 4);
    if (length > kMaxFramePayload || out.size() - pos - kFrameHeaderSize < length) break;
    if (static_cast<uint8_t>(h[9]) == kFormatVersion) {
      const uint32_t crc =
          crc32c::Extend(crc32c::Extend(0, h + 8, 2), h + kFrameHeaderSize, length);
      EncodeFixed32(h, crc32c::Mask(crc));
    }
    pos += kFrameHeaderSize + length;
  }
  return out;
}

}  // namespace tidepool::storage
