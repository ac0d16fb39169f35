#include "storage/frame.h"

#include <cassert>

#include "storage/coding.h"
#include "storage/crc32c.h"

namespace tidepool::storage {

void AppendFrame(std::string* dst, FrameType type, std::string_view payload) {
  AppendFrame2(dst, type, payload, {});
}

void AppendFrame2(std::string* dst, FrameType type, std::string_view prefix,
                  std::string_view body) {
  const size_t length = prefix.size() + body.size();
  assert(length <= kMaxFramePayload);
  const size_t start = dst->size();
  dst->resize(start + kFrameHeaderSize);
  char* h = dst->data() + start;
  h[8] = static_cast<char>(type);
  h[9] = static_cast<char>(kFormatVersion);
  uint32_t crc = crc32c::Extend(0, h + 8, 2);
  crc = crc32c::Extend(crc, prefix.data(), prefix.size());
  crc = crc32c::Extend(crc, body.data(), body.size());
  EncodeFixed32(h, crc32c::Mask(crc));
  EncodeFixed32(h + 4, static_cast<uint32_t>(length));
  dst->append(prefix);
  dst->append(body);
}

Frame ParseFrame(std::string_view buf, size_t pos) {
  Frame f;
  if (pos > buf.size() || buf.size() - pos < kFrameHeaderSize) return f;  // kTruncated
  const char* h = buf.data() + pos;
  const uint32_t length = DecodeFixed32(h + 4);
  if (length > kMaxFramePayload) {
    f.status = FrameStatus::kBadLength;
    return f;
  }
  if (buf.size() - pos - kFrameHeaderSize < length) return f;  // kTruncated
  const uint32_t expected = crc32c::Unmask(DecodeFixed32(h));
  const uint32_t actual = crc32c::Extend(crc32c::Extend(0, h + 8, 2), h + kFrameHeaderSize, length);
  if (expected != actual) {
    f.status = FrameStatus::kBadChecksum;
    return f;
  }
  if (static_cast<uint8_t>(h[9]) != kFormatVersion) {
    f.status = FrameStatus::kBadVersion;
    return f;
  }
  f.status = FrameStatus::kOk;
  f.type = static_cast<FrameType>(static_cast<uint8_t>(h[8]));
  f.payload = std::string_view(h + kFrameHeaderSize, length);
  f.size = kFrameHeaderSize + length;
  return f;
}

const char* FrameStatusName(FrameStatus s) {
  switch (s) {
    case FrameStatus::kOk:
      return "ok";
    case FrameStatus::kTruncated:
      return "truncated frame";
    case FrameStatus::kBadLength:
      return "frame length out of range";
    case FrameStatus::kBadChecksum:
      return "checksum mismatch";
    case FrameStatus::kBadVersion:
      return "unknown format version";
  }
  return "unknown";
}

}  // namespace tidepool::storage
