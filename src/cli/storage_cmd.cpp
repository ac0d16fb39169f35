#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "storage/env.h"
#include "storage/flusher.h"
#include "storage/log.h"

namespace tidepool::cli {
namespace {

using storage::DefaultEnv;
using storage::Flusher;
using storage::Log;
using storage::LogOptions;

void PrintRecovery(const Log& log) {
  const auto& r = log.recovery_report();
  std::printf(
      "log %s: sequences [%llu, %llu), %zu segments (%zu scanned), %llu torn bytes cut, %llu "
      "reserved zero bytes dropped\n",
      log.dir().c_str(), static_cast<unsigned long long>(log.first_seq().value),
      static_cast<unsigned long long>(log.next_seq().value), r.segments, r.segments_scanned,
      static_cast<unsigned long long>(r.torn_bytes_truncated),
      static_cast<unsigned long long>(r.zero_tail_bytes_dropped));
  for (const auto& line : r.corruption) std::printf("  corruption: %s\n", line.c_str());
}

int Inspect(const std::string& dir, bool verify) {
  Flusher flusher;
  auto log = Log::Open(DefaultEnv(), dir, LogOptions{}, &flusher);
  if (!log.ok()) {
    std::fprintf(stderr, "tidepool storage: %s\n", log.status().ToString().c_str());
    return 1;
  }
  PrintRecovery(**log);
  for (const auto& s : (*log)->Segments()) {
    std::printf(
        "  %s  [%llu, %llu)  %llu bytes%s\n", storage::SegmentFileName(s.base.value).c_str(),
        static_cast<unsigned long long>(s.base.value), static_cast<unsigned long long>(s.end.value),
        static_cast<unsigned long long>(s.size_bytes), s.active ? "  (active)" : "");
  }
  if (!verify) return 0;
  uint64_t n = 0;
  storage::Seq next = (*log)->first_seq();
  for (;;) {
    auto batch = (*log)->Read(next, 4096, 8u << 20);
    if (!batch.ok()) {
      std::fprintf(stderr, "verify failed after %llu records: %s\n",
                   static_cast<unsigned long long>(n), batch.status().ToString().c_str());
      return 1;
    }
    if (batch->empty()) break;
    n += batch->size();
    next = batch->back().seq + 1;
  }
  std::printf("verified %llu records\n", static_cast<unsigned long long>(n));
  return 0;
}

}  // namespace

int RunStorage(const Args& args) {
  if (args.size() == 2 && (args[0] == "inspect" || args[0] == "verify")) {
    return Inspect(args[1], args[0] == "verify");
  }
  std::fprintf(stderr, "usage: tidepool storage inspect|verify DIR\n");
  return 2;
}

}  // namespace tidepool::cli
