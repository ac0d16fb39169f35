// Records of the crash test describe themselves, so that a reader can tell an intact record
// from a damaged one without knowing what was written: "round thread index length" then
// `length` filler bytes derived from those numbers.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace tidepool::crashtest {

inline char FillerByte(uint64_t round, uint64_t thread, uint64_t index, uint64_t i) {
  uint64_t x = (round * 1000003u) ^ (thread * 7919u) ^ (index * 104729u) ^ (i * 2654435761u);
  x ^= x >> 13;
  return static_cast<char>('a' + x % 26);
}

inline std::string MakeRecord(uint64_t round, uint64_t thread, uint64_t index) {
  const uint64_t length = (index * 2654435761u + thread * 97u) % 700;
  char head[96];
  std::snprintf(head, sizeof(head), "%llu %llu %llu %llu|", static_cast<unsigned long long>(round),
                static_cast<unsigned long long>(thread), static_cast<unsigned long long>(index),
                static_cast<unsigned long long>(length));
  std::string r = head;
  for (uint64_t i = 0; i < length; ++i) r.push_back(FillerByte(round, thread, index, i));
  return r;
}

struct RecordId {
  uint64_t round = 0, thread = 0, index = 0;
  auto operator<=>(const RecordId&) const = default;
};

// Parses and checks a record; false if it is not exactly what MakeRecord produced.
inline bool CheckRecord(const std::string& r, RecordId* id) {
  unsigned long long round = 0, thread = 0, index = 0, length = 0;
  if (std::sscanf(r.c_str(), "%llu %llu %llu %llu|", &round, &thread, &index, &length) != 4) {
    return false;
  }
  *id = {round, thread, index};
  return r == MakeRecord(round, thread, index);
}

}  // namespace tidepool::crashtest
