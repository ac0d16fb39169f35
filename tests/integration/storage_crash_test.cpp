// Crash test: a child process appends under load and is killed with SIGKILL at random moments,
// 50 rounds on one data directory. After each kill the log is recovered and must hold every
// acknowledged record, intact and in order; nothing half-written may appear.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "crash_record.h"
#include "storage/log.h"
#include "storage/test_util.h"

namespace tidepool::storage {
namespace {

using crashtest::RecordId;

struct Child {
  pid_t pid = -1;
  int out_fd = -1;
};

Child Spawn(const std::string& dir, int round) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) std::abort();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipefd[1], 1);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    const std::string round_arg = std::to_string(round);
    ::execl(CRASH_WRITER_PATH, "crash_writer", dir.c_str(), round_arg.c_str(), nullptr);
    std::_Exit(127);
  }
  ::close(pipefd[1]);
  return {pid, pipefd[0]};
}

std::string DrainPipe(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

TEST(StorageCrashTest, EveryAcknowledgedRecordSurvivesSigkill) {
  testing::TempDir dir;
  const std::string log_dir = dir.sub("log");
  std::mt19937 rng(20261128);
  std::map<RecordId, uint64_t> acked;  // every acknowledgement ever, with its sequence
  uint64_t total_records = 0;
  constexpr int kRounds = 50;

  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    Child child = Spawn(log_dir, round);
    // Read acknowledgements while the child runs, so that it never blocks on a full pipe.
    std::string ack_text;
    std::thread reader([&] { ack_text = DrainPipe(child.out_fd); });
    // Let it run for a random 20..150 ms, then kill it wherever it is.
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 130));
    ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
    int status = 0;
    ::waitpid(child.pid, &status, 0);
    reader.join();
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer exited by itself with status " << status;
    std::istringstream lines(ack_text);
    unsigned long long r = 0, t = 0, i = 0, seq = 0;
    size_t acked_this_round = 0;
    while (lines >> r >> t >> i >> seq) {
      acked[RecordId{r, t, i}] = seq;
      ++acked_this_round;
    }

    Flusher flusher;
    auto log = Log::Open(DefaultEnv(), log_dir, LogOptions{}, &flusher);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    EXPECT_TRUE((*log)->recovery_report().corruption.empty());
    std::map<RecordId, uint64_t> present;
    std::map<std::pair<uint64_t, uint64_t>, uint64_t> last_index;  // per (round, thread)
    Seq next(0);
    for (;;) {
      auto batch = (*log)->Read(next, 4096, 8u << 20);
      ASSERT_TRUE(batch.ok()) << batch.status().ToString();
      if (batch->empty()) break;
      for (const auto& rec : *batch) {
        ASSERT_EQ(rec.seq, next) << "sequence numbers must be contiguous";
        next = rec.seq + 1;
        RecordId id;
        ASSERT_TRUE(crashtest::CheckRecord(rec.data, &id)) << "damaged record at " << rec.seq;
        ASSERT_TRUE(present.emplace(id, rec.seq.value).second) << "duplicate record";
        // One thread's appends are committed in the order it issued them.
        auto key = std::make_pair(id.round, id.thread);
        auto it = last_index.find(key);
        if (it != last_index.end()) {
          ASSERT_EQ(id.index, it->second + 1);
        }
        last_index[key] = id.index;
      }
    }
    for (const auto& [id, seq] : acked) {
      auto it = present.find(id);
      ASSERT_NE(it, present.end()) << "acknowledged record lost: round " << id.round << " thread "
                                   << id.thread << " index " << id.index;
      ASSERT_EQ(it->second, seq) << "acknowledged record moved";
    }
    total_records = present.size();
    std::printf("round %d: %zu acknowledged this round, %llu records in the log\n", round,
                acked_this_round, static_cast<unsigned long long>(total_records));
  }
  EXPECT_GT(acked.size(), 1000u) << "the writer did too little work for the test to mean much";
}

}  // namespace
}  // namespace tidepool::storage
