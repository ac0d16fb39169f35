// Child of storage_crash_test: appends self-describing records from several threads with
// pipelined async appends, and reports each acknowledgement as "round thread index seq" on
// stdout (a pipe, so lines written before a SIGKILL still reach the parent). Runs until killed.
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "crash_record.h"
#include "storage/log.h"

using tidepool::storage::Log;
using tidepool::storage::SeqRange;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: crash_writer DIR ROUND\n");
    return 2;
  }
  const uint64_t round = std::strtoull(argv[2], nullptr, 10);
  tidepool::storage::Flusher flusher;
  tidepool::storage::LogOptions options;
  options.segment_max_bytes = 256u << 10;  // many segment rolls during the test
  auto log = Log::Open(tidepool::storage::DefaultEnv(), argv[1], options, &flusher);
  if (!log.ok()) {
    std::fprintf(stderr, "crash_writer: %s\n", log.status().ToString().c_str());
    return 1;
  }
  std::mutex out_mu;
  constexpr int kThreads = 4;
  constexpr int kWindow = 8;  // async appends in flight per thread
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mutex mu;
      std::condition_variable cv;
      int in_flight = 0;
      for (uint64_t i = 0;; ++i) {
        {
          std::unique_lock lock(mu);
          cv.wait(lock, [&] { return in_flight < kWindow; });
          ++in_flight;
        }
        (*log)->AppendAsync(
            {tidepool::crashtest::MakeRecord(round, t, i)},
            [&, t, i](tidepool::Result<SeqRange> r) {
              if (r.ok()) {
                char line[128];
                int n = std::snprintf(line, sizeof(line), "%llu %d %llu %llu\n",
                                      static_cast<unsigned long long>(round), t,
                                      static_cast<unsigned long long>(i),
                                      static_cast<unsigned long long>(r->first.value));
                std::lock_guard lock(out_mu);
                if (::write(1, line, static_cast<size_t>(n)) != n) std::_Exit(3);
              } else {
                std::fprintf(stderr, "append failed: %s\n", r.status().ToString().c_str());
                std::_Exit(4);
              }
              std::lock_guard lock(mu);
              --in_flight;
              cv.notify_one();
            });
      }
    });
  }
  for (auto& th : threads) th.join();
}
