// Frames: crc32c | length | type | version | payload (docs/storage-format.md, "Frames").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "storage/log_format.h"

namespace tidepool::storage {

// Appends one frame holding `payload` to dst.
// REQUIRES: payload.size() <= kMaxFramePayload
void AppendFrame(std::string* dst, FrameType type, std::string_view payload);

// Appends one frame whose payload is `prefix` followed by `body`, without copying them into a
// temporary first (records: the seq/timestamp prefix, then the caller's bytes).
void AppendFrame2(std::string* dst, FrameType type, std::string_view prefix, std::string_view body);

enum class FrameStatus {
  kOk,
  kTruncated,  // fewer bytes left than the header or the payload needs
  kBadLength,  // length above kMaxFramePayload
  kBadChecksum,
  kBadVersion,  // a version this build does not know
};

struct Frame {
  FrameStatus status = FrameStatus::kTruncated;
  FrameType type{};
  std::string_view payload;  // points into the parsed buffer
  size_t size = 0;           // header + payload, when status is kOk
};

// Parses the frame starting at buf[pos]. Never reads outside buf.
Frame ParseFrame(std::string_view buf, size_t pos);

const char* FrameStatusName(FrameStatus s);

}  // namespace tidepool::storage
