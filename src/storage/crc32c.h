// CRC-32C (Castagnoli), the checksum of every frame on disk (docs/storage-format.md).
//
// No Debian package ships a CRC-32C library with a hardware path (Boost.CRC computes it a
// byte at a time), so this uses the SSE4.2 crc32 instruction when the CPU has it and a
// slicing-by-8 table otherwise. Boost.CRC is the oracle in the tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tidepool::storage::crc32c {

// Returns the CRC-32C of data, continuing from the CRC `init` of preceding bytes.
uint32_t Extend(uint32_t init, const void* data, size_t n);
inline uint32_t Value(const void* data, size_t n) {
  return Extend(0, data, n);
}
inline uint32_t Value(std::string_view s) {
  return Extend(0, s.data(), s.size());
}

// A CRC stored next to the data it covers is masked, so that the CRC of a string containing
// embedded CRCs is not trivially related to them.
constexpr uint32_t kMaskDelta = 0xa282ead8u;
inline uint32_t Mask(uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + kMaskDelta;
}
inline uint32_t Unmask(uint32_t masked) {
  uint32_t rot = masked - kMaskDelta;
  return (rot >> 17) | (rot << 15);
}

// The table-driven path, whatever the CPU (tests compare both paths).
uint32_t ExtendPortable(uint32_t init, const void* data, size_t n);

// True when the hardware path is in use (reported by benchmarks).
bool HardwareAccelerated();

}  // namespace tidepool::storage::crc32c
