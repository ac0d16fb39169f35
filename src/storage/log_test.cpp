#include "storage/log.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "storage/fault_env.h"
#include "storage/frame.h"
#include "storage/test_util.h"

namespace tidepool::storage {
namespace {

class LogTest : public ::testing::Test {
 protected:
  LogTest() : env_(DefaultEnv()) {}

  std::unique_ptr<Log> OpenLog(LogOptions options = {}) {
    auto log = Log::Open(&env_, dir_.sub("topic"), options, &flusher_);
    EXPECT_TRUE(log.ok()) << log.status().ToString();
    return log.ok() ? std::move(*log) : nullptr;
  }

  std::vector<std::string> ReadAll(const Log& log) {
    std::vector<std::string> out;
    Seq next = log.first_seq();
    for (;;) {
      auto batch = log.Read(next, 100, 1 << 20);
      EXPECT_TRUE(batch.ok()) << batch.status().ToString();
      if (!batch.ok() || batch->empty()) break;
      for (auto& r : *batch) {
        EXPECT_EQ(r.seq, next);
        next = r.seq + 1;
        out.push_back(r.data);
      }
    }
    return out;
  }

  testing::TempDir dir_;
  FaultInjectionEnv env_;
  Flusher flusher_;
};

TEST_F(LogTest, AppendThenReadBack) {
  auto log = OpenLog();
  auto r1 = log->Append({"alpha", "beta"});
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(r1->first, Seq(0));
  EXPECT_EQ(r1->count, 2u);
  auto r2 = log->Append({"gamma"});
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->first, Seq(2));
  EXPECT_EQ(log->next_seq(), Seq(3));
  EXPECT_EQ(ReadAll(*log), (std::vector<std::string>{"alpha", "beta", "gamma"}));
  auto from_middle = log->Read(Seq(1), 10, 1 << 20);
  ASSERT_TRUE(from_middle.ok());
  ASSERT_EQ(from_middle->size(), 2u);
  EXPECT_EQ((*from_middle)[0].data, "beta");
}

TEST_F(LogTest, EmptyAndBinaryRecordsRoundTrip) {
  auto log = OpenLog();
  std::string binary("\0\x01\xff\0zz", 6);
  ASSERT_TRUE(log->Append({"", binary}).ok());
  EXPECT_EQ(ReadAll(*log), (std::vector<std::string>{"", binary}));
}

TEST_F(LogTest, EmptyAppendAndOversizedRecordAreRejected) {
  LogOptions o;
  o.max_record_bytes = 10;
  auto log = OpenLog(o);
  EXPECT_EQ(log->Append({}).status().code(), StatusCode::kInvalidArgument);
  auto big = log->Append({std::string(11, 'x')});
  EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find("11 bytes"), std::string::npos);
  EXPECT_EQ(log->next_seq(), Seq(0));
}

TEST_F(LogTest, ReadsStopAtMaxRecordsAndBytes) {
  auto log = OpenLog();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(log->Append({std::string(100, 'a' + i)}).ok());
  auto a = log->Read(Seq(0), 3, 1 << 20);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->size(), 3u);
  auto b = log->Read(Seq(0), 100, 250);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->size(), 3u);  // stops once 250 bytes are reached
  auto c = log->Read(Seq(0), 100, 1);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->size(), 1u);  // at least one record
  auto past = log->Read(Seq(10), 100, 1 << 20);
  ASSERT_TRUE(past.ok());
  EXPECT_TRUE(past->empty());
}

TEST_F(LogTest, ReopenRecoversEverythingAcknowledged) {
  {
    auto log = OpenLog();
    for (int i = 0; i < 100; ++i) ASSERT_TRUE(log->Append({"r" + std::to_string(i)}).ok());
  }
  auto log = OpenLog();
  EXPECT_EQ(log->next_seq(), Seq(100));
  auto all = ReadAll(*log);
  ASSERT_EQ(all.size(), 100u);
  EXPECT_EQ(all[42], "r42");
  auto r = log->Append({"after"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first, Seq(100));
}

TEST_F(LogTest, SegmentsRollBySizeAndReadAcrossThem) {
  LogOptions o;
  o.segment_max_bytes = 4096;
  o.index_interval_bytes = 256;
  {
    auto log = OpenLog(o);
    for (int i = 0; i < 200; ++i)
      ASSERT_TRUE(log->Append({std::string(100, 'x') + std::to_string(i)}).ok());
    auto segs = log->Segments();
    ASSERT_GT(segs.size(), 4u);
    for (size_t i = 1; i < segs.size(); ++i) EXPECT_EQ(segs[i].base, segs[i - 1].end);
    for (const auto& s : segs) EXPECT_LE(s.size_bytes, 4096u);
    EXPECT_TRUE(segs.back().active);
  }
  // Segment files are named by base sequence; sealed ones have an index.
  size_t logs = 0, indexes = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_.sub("topic"))) {
    if (e.path().extension() == ".log") ++logs;
    if (e.path().extension() == ".index") ++indexes;
  }
  EXPECT_EQ(indexes, logs - 1);
  auto log = OpenLog(o);
  EXPECT_EQ(log->recovery_report().segments_scanned, 1u);  // only the active one
  auto all = ReadAll(*log);
  ASSERT_EQ(all.size(), 200u);
  EXPECT_EQ(all[199], std::string(100, 'x') + "199");
  for (uint64_t s : {0u, 37u, 99u, 150u, 199u}) {
    auto one = log->Read(Seq(s), 1, 1);
    ASSERT_TRUE(one.ok());
    ASSERT_EQ(one->size(), 1u);
    EXPECT_EQ((*one)[0].seq, Seq(s));
  }
}

TEST_F(LogTest, SegmentsRollByAge) {
  LogOptions o;
  o.segment_max_age_micros = 1000;
  env_.SetTime(1'000'000);
  auto log = OpenLog(o);
  ASSERT_TRUE(log->Append({"a"}).ok());
  env_.AdvanceTime(500);
  ASSERT_TRUE(log->Append({"b"}).ok());
  EXPECT_EQ(log->Segments().size(), 1u);
  env_.AdvanceTime(600);
  ASSERT_TRUE(log->Append({"c"}).ok());
  EXPECT_EQ(log->Segments().size(), 2u);
  EXPECT_EQ(log->Segments()[1].base, Seq(2));
  // Maintain() rolls an idle old segment so that retention can delete it.
  env_.AdvanceTime(2000);
  log->Maintain();
  ASSERT_TRUE(log->Append({"d"}).ok());
  EXPECT_EQ(log->Segments().size(), 3u);
}

TEST_F(LogTest, MissingOrBadIndexIsRebuiltFromTheSegment) {
  LogOptions o;
  o.segment_max_bytes = 2048;
  {
    auto log = OpenLog(o);
    for (int i = 0; i < 60; ++i)
      ASSERT_TRUE(log->Append({std::string(64, 'a') + std::to_string(i)}).ok());
  }
  std::vector<std::filesystem::path> indexes;
  for (const auto& e : std::filesystem::directory_iterator(dir_.sub("topic"))) {
    if (e.path().extension() == ".index") indexes.push_back(e.path());
  }
  ASSERT_GE(indexes.size(), 2u);
  std::filesystem::remove(indexes[0]);
  {
    std::fstream f(indexes[1], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(40);
    f.put('\x7f');
  }
  auto log = OpenLog(o);
  EXPECT_EQ(log->recovery_report().segments_scanned, 3u);
  EXPECT_EQ(ReadAll(*log).size(), 60u);
}

TEST_F(LogTest, SeekByTime) {
  LogOptions o;
  o.segment_max_bytes = 1024;
  env_.SetTime(10'000);
  auto log = OpenLog(o);
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(log->Append({std::string(40, 'a')}).ok());
    env_.AdvanceTime(100);  // record i has timestamp 10'000 + 100 * i
  }
  EXPECT_EQ(*log->SeekTime(0), Seq(0));
  EXPECT_EQ(*log->SeekTime(10'000), Seq(0));
  EXPECT_EQ(*log->SeekTime(10'001), Seq(1));
  EXPECT_EQ(*log->SeekTime(10'000 + 100 * 33), Seq(33));
  EXPECT_EQ(*log->SeekTime(10'000 + 100 * 33 - 50), Seq(33));
  EXPECT_EQ(*log->SeekTime(1'000'000), Seq(50));
}

TEST_F(LogTest, TimestampsNeverGoBackwards) {
  env_.SetTime(5'000'000);
  auto log = OpenLog();
  auto a = log->Append({"a"});
  env_.SetTime(4'000'000);  // the wall clock stepped back
  auto b = log->Append({"b"});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_GE(b->timestamp, a->timestamp);
}

TEST_F(LogTest, ConcurrentAppendersGetDistinctOrderedSequences) {
  auto log = OpenLog();
  constexpr int kThreads = 8, kPer = 200;
  std::vector<std::thread> threads;
  std::mutex mu;
  std::vector<std::pair<uint64_t, std::string>> acked;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) {
        std::string payload = std::to_string(t) + ":" + std::to_string(i);
        auto r = log->Append({payload});
        ASSERT_TRUE(r.ok());
        std::lock_guard lock(mu);
        acked.emplace_back(r->first.value, payload);
      }
    });
  }
  for (auto& t : threads) t.join();
  auto all = ReadAll(*log);
  ASSERT_EQ(all.size(), static_cast<size_t>(kThreads * kPer));
  std::set<uint64_t> seen;
  for (const auto& [seq, payload] : acked) {
    EXPECT_TRUE(seen.insert(seq).second);
    EXPECT_EQ(all[seq], payload);
  }
}

TEST_F(LogTest, AsyncAppendsCompleteAfterTheirGroupIsDurable) {
  auto log = OpenLog();
  std::atomic<int> done{0};
  std::atomic<uint64_t> max_seen{0};
  for (int i = 0; i < 500; ++i) {
    log->AppendAsync({"m" + std::to_string(i)}, [&](Result<SeqRange> r) {
      ASSERT_TRUE(r.ok());
      // Completion implies the record is readable (committed).
      EXPECT_LT(r->first, log->next_seq());
      max_seen = std::max<uint64_t>(max_seen, r->first.value);
      ++done;
    });
  }
  while (done.load() < 500) std::this_thread::yield();
  EXPECT_EQ(max_seen.load(), 499u);
}

TEST_F(LogTest, MaxGroupBytesLimitsGroups) {
  LogOptions o;
  o.max_group_bytes = 1000;
  o.max_group_wait_micros = 2000;
  auto log = OpenLog(o);
  std::atomic<int> done{0};
  for (int i = 0; i < 50; ++i) {
    log->AppendAsync({std::string(200, 'z')}, [&](Result<SeqRange> r) {
      EXPECT_TRUE(r.ok());
      ++done;
    });
  }
  while (done.load() < 50) std::this_thread::yield();
  log.reset();
  // Walk the segment's frames: no group may hold more than 1000 bytes of records (4 of them).
  std::ifstream f(dir_.sub("topic/") + SegmentFileName(0), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), {});
  size_t groups = 0, records = 0;
  for (size_t pos = 0; pos < bytes.size();) {
    Frame fr = ParseFrame(bytes, pos);
    ASSERT_EQ(fr.status, FrameStatus::kOk);
    if (fr.type == FrameType::kGroup) {
      uint32_t count = 0;
      std::memcpy(&count, fr.payload.data() + 8, 4);
      EXPECT_LE(count, 4u);
      ++groups;
    } else if (fr.type == FrameType::kRecord) {
      ++records;
    }
    pos += fr.size;
  }
  EXPECT_EQ(records, 50u);
  EXPECT_GE(groups, 13u);
}

TEST_F(LogTest, FsyncFailureMakesTheLogReadOnly) {
  auto log = OpenLog();
  ASSERT_TRUE(log->Append({"durable"}).ok());
  env_.FailSyncs(true);
  auto r = log->Append({"lost"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kIOError);
  EXPECT_NE(r.status().message().find("read-only after a failed fdatasync"), std::string::npos);
  env_.FailSyncs(false);
  // Even though fsync works again, the log refuses writes: its state on disk is unknown.
  auto again = log->Append({"still refused"});
  EXPECT_FALSE(again.ok());
  EXPECT_FALSE(log->health().ok());
  // Reads of what was durable still work, and the unacknowledged record is not visible.
  EXPECT_EQ(ReadAll(*log), std::vector<std::string>{"durable"});
  log.reset();
  // A restart recovers the log from what is on disk.
  auto reopened = OpenLog();
  EXPECT_TRUE(reopened->health().ok());
  ASSERT_TRUE(reopened->Append({"after restart"}).ok());
}

TEST_F(LogTest, NoSpaceFailsTheGroupAndTheLogStaysWritable) {
  auto log = OpenLog();
  ASSERT_TRUE(log->Append({"first"}).ok());
  env_.SetSpaceLimit(20);
  auto r = log->Append({std::string(1000, 'x')});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("No space left"), std::string::npos);
  env_.SetSpaceLimit(INT64_MAX);
  auto ok = log->Append({"second"});
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->first, Seq(1));  // the failed append consumed no sequence number
  EXPECT_EQ(ReadAll(*log), (std::vector<std::string>{"first", "second"}));
  log.reset();
  EXPECT_EQ(ReadAll(*OpenLog()), (std::vector<std::string>{"first", "second"}));
}

TEST_F(LogTest, ShortWriteIsUndone) {
  auto log = OpenLog();
  ASSERT_TRUE(log->Append({"first"}).ok());
  env_.ShortWriteOnce(7);
  EXPECT_EQ(log->Append({"torn"}).status().code(), StatusCode::kIOError);
  ASSERT_TRUE(log->Append({"second"}).ok());
  log.reset();
  EXPECT_EQ(ReadAll(*OpenLog()), (std::vector<std::string>{"first", "second"}));
}

TEST_F(LogTest, ReadErrorIsReportedNotHidden) {
  auto log = OpenLog();
  ASSERT_TRUE(log->Append({"x"}).ok());
  log.reset();
  log = OpenLog();
  env_.FailReads(".log");
  auto r = log->Read(Seq(0), 10, 1 << 20);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kIOError);
}

TEST_F(LogTest, OpenFailsWithEioOnRead) {
  {
    auto log = OpenLog();
    ASSERT_TRUE(log->Append({"x"}).ok());
  }
  env_.FailReads(".log");
  auto log = Log::Open(&env_, dir_.sub("topic"), {}, &flusher_);
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), StatusCode::kIOError);
}

TEST_F(LogTest, RemoveSegmentsBeforeKeepsActiveAndNeededOnes) {
  LogOptions o;
  o.segment_max_bytes = 1024;
  auto log = OpenLog(o);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(log->Append({std::string(50, 'q')}).ok());
  auto segs = log->Segments();
  ASSERT_GT(segs.size(), 3u);
  // Keeping from the middle of segment 2 deletes segments 0 and 1 only.
  const Seq keep = segs[2].base + 1;
  auto removed = log->RemoveSegmentsBefore(keep);
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, 2u);
  EXPECT_EQ(log->first_seq(), segs[2].base);
  EXPECT_EQ(log->Read(Seq(0), 1, 1).status().code(), StatusCode::kOutOfRange);
  // Everything: all sealed segments go, the active one stays.
  ASSERT_TRUE(log->RemoveSegmentsBefore(Seq(1'000'000)).ok());
  EXPECT_EQ(log->Segments().size(), 1u);
  log.reset();
  auto reopened = OpenLog(o);
  EXPECT_EQ(reopened->first_seq(), segs.back().base);
  EXPECT_EQ(reopened->next_seq(), Seq(100));
}

TEST_F(LogTest, TornTailIsTruncatedOnReopen) {
  {
    auto log = OpenLog();
    ASSERT_TRUE(log->Append({"kept"}).ok());
  }
  const std::string seg = dir_.sub("topic/") + SegmentFileName(0);
  const auto good = std::filesystem::file_size(seg);
  {
    std::ofstream f(seg, std::ios::app | std::ios::binary);
    f << "partial garbage of a group that never finished";
  }
  auto log = OpenLog();
  EXPECT_GT(log->recovery_report().torn_bytes_truncated, 0u);
  EXPECT_EQ(std::filesystem::file_size(seg), good);
  EXPECT_EQ(ReadAll(*log), std::vector<std::string>{"kept"});
  ASSERT_TRUE(log->Append({"next"}).ok());
}

TEST_F(LogTest, MidFileCorruptionIsReportedAndStrictModeRefuses) {
  {
    auto log = OpenLog();
    ASSERT_TRUE(log->Append({"one"}).ok());
    ASSERT_TRUE(log->Append({"two-two-two"}).ok());
    ASSERT_TRUE(log->Append({"three"}).ok());
  }
  const std::string seg = dir_.sub("topic/") + SegmentFileName(0);
  std::string bytes;
  {
    std::ifstream f(seg, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  const auto at = bytes.find("two-two-two");
  ASSERT_NE(at, std::string::npos);
  {
    std::fstream f(seg, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(at));
    f.put('T');
  }
  LogOptions strict;
  strict.strict_recovery = true;
  auto refused = Log::Open(&env_, dir_.sub("topic"), strict, &flusher_);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kCorruption);
  EXPECT_NE(refused.status().message().find(SegmentFileName(0)), std::string::npos);

  auto log = OpenLog();
  ASSERT_EQ(log->recovery_report().corruption.size(), 1u);
  EXPECT_NE(log->recovery_report().corruption[0].find("records [1, 2) lost"), std::string::npos);
  EXPECT_EQ(log->next_seq(), Seq(3));
  auto all = log->Read(Seq(0), 10, 1 << 20);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].data, "one");
  EXPECT_EQ((*all)[1].seq, Seq(2));
  EXPECT_EQ((*all)[1].data, "three");
}

TEST_F(LogTest, DamageBeforeATornTailNeverLeadsToReusedSequences) {
  {
    auto log = OpenLog();
    ASSERT_TRUE(log->Append({"zero"}).ok());
    ASSERT_TRUE(log->Append({"one-one-one"}).ok());
    ASSERT_TRUE(log->Append({"two"}).ok());
  }
  const std::string seg = dir_.sub("topic/") + SegmentFileName(0);
  std::string bytes;
  {
    std::ifstream f(seg, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  // Bit rot in record 1, and the last group torn by a crash.
  bytes[bytes.find("one-one-one")] = 'O';
  bytes.resize(bytes.size() - 1);
  {
    std::ofstream f(seg, std::ios::binary | std::ios::trunc);
    f << bytes;
  }
  for (int open = 0; open < 3; ++open) {
    auto log = OpenLog();
    EXPECT_GE(log->next_seq(), Seq(2 + open)) << "open " << open;
    auto r = log->Append({"new"});
    ASSERT_TRUE(r.ok());
    EXPECT_GE(r->first, Seq(2 + open)) << "sequence 1 was acknowledged once: never again";
    EXPECT_FALSE(log->recovery_report().corruption.empty());
  }
}

TEST_F(LogTest, EmptySegmentLeftByACrashIsRemoved) {
  LogOptions o;
  o.segment_max_bytes = 512;
  {
    auto log = OpenLog(o);
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(log->Append({std::string(40, 'e')}).ok());
  }
  const Seq next = OpenLog(o)->next_seq();
  // A crash right after creating the next segment file, before its header was written.
  const std::string empty = dir_.sub("topic/") + SegmentFileName(next.value);
  std::ofstream(empty).close();
  auto log = OpenLog(o);
  EXPECT_EQ(log->recovery_report().empty_segments_removed, 1u);
  EXPECT_EQ(log->next_seq(), next);
  ASSERT_TRUE(log->Append({"resumes"}).ok());
  EXPECT_EQ(ReadAll(*log).size(), 21u);
}

std::string FileBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

bool AllZero(std::string_view bytes) {
  return bytes.find_first_not_of('\0') == std::string_view::npos;
}

TEST_F(LogTest, ReservedZerosFollowTheDataAndGoWhenTheLogCloses) {
  LogOptions o;
  o.reserve_bytes = 64 << 10;
  const std::string seg = dir_.sub("topic/") + SegmentFileName(0);
  uint64_t data_end = 0;
  {
    auto log = OpenLog(o);
    ASSERT_TRUE(log->Append({"one"}).ok());
    ASSERT_TRUE(log->Append({"two", "three"}).ok());
    data_end = log->Segments().back().size_bytes;
    const std::string bytes = FileBytes(seg);
    // The first group reserved 64 KiB past the header; the second landed inside them.
    EXPECT_EQ(bytes.size(), kSegmentHeaderFrameSize + (64u << 10));
    ASSERT_GT(bytes.size(), data_end);
    EXPECT_TRUE(AllZero(std::string_view(bytes).substr(data_end)));
    EXPECT_FALSE(AllZero(std::string_view(bytes).substr(data_end - 5, 5)));
  }
  EXPECT_EQ(std::filesystem::file_size(seg), data_end);
  auto log = OpenLog(o);
  EXPECT_EQ(log->recovery_report().torn_bytes_truncated, 0u);
  EXPECT_EQ(log->recovery_report().zero_tail_bytes_dropped, 0u);
  EXPECT_EQ(ReadAll(*log), (std::vector<std::string>{"one", "two", "three"}));
}

TEST_F(LogTest, ACrashLeavesReservedZerosThatRecoveryDropsAsNoDamage) {
  auto log = OpenLog();  // the default reserve
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(log->Append({"record " + std::to_string(i)}).ok());
  const uint64_t data_end = log->Segments().back().size_bytes;
  // The files as a crash would leave them, with the log still open.
  std::filesystem::copy(dir_.sub("topic"), dir_.sub("crashed"));
  const uint64_t crashed_size =
      std::filesystem::file_size(dir_.sub("crashed/") + SegmentFileName(0));
  ASSERT_GT(crashed_size, data_end);

  auto reopened = Log::Open(&env_, dir_.sub("crashed"), LogOptions{}, &flusher_);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  const RecoveryReport& report = (*reopened)->recovery_report();
  EXPECT_EQ(report.torn_bytes_truncated, 0u);
  EXPECT_EQ(report.zero_tail_bytes_dropped, crashed_size - data_end);
  EXPECT_TRUE(report.corruption.empty());
  EXPECT_EQ((*reopened)->next_seq(), Seq(50));
  ASSERT_TRUE((*reopened)->Append({"after"}).ok());
  auto last = (*reopened)->Read(Seq(49), 10, 1 << 20);
  ASSERT_TRUE(last.ok());
  ASSERT_EQ(last->size(), 2u);
  EXPECT_EQ((*last)[0].data, "record 49");
  EXPECT_EQ((*last)[1].data, "after");
}

TEST_F(LogTest, SealedSegmentsEndAtTheirLastGroupAndKeepTheirIndex) {
  LogOptions o;
  o.segment_max_bytes = 4096;
  o.reserve_bytes = 4096;  // groups of up to 256 bytes are written over zeros
  {
    auto log = OpenLog(o);
    for (int i = 0; i < 100; ++i) ASSERT_TRUE(log->Append({std::string(100, 'x')}).ok());
    auto segs = log->Segments();
    ASSERT_GT(segs.size(), 2u);
    for (const auto& s : segs) {
      const uint64_t on_disk =
          std::filesystem::file_size(dir_.sub("topic/") + SegmentFileName(s.base.value));
      if (s.active) {
        EXPECT_GE(on_disk, s.size_bytes);
        EXPECT_LE(on_disk, 4096u);  // reserving stops at the segment's size limit
      } else {
        EXPECT_EQ(on_disk, s.size_bytes) << "sealed segment " << s.base.value;
      }
    }
  }
  auto log = OpenLog(o);
  EXPECT_EQ(log->recovery_report().segments_scanned, 1u);  // sealed indexes still match
  EXPECT_EQ(ReadAll(*log).size(), 100u);
}

TEST_F(LogTest, LargeGroupsAreAppendedWithoutZerosAhead) {
  LogOptions o;
  o.reserve_bytes = 64 << 10;  // groups above 4 KiB: plain appends
  auto log = OpenLog(o);
  ASSERT_TRUE(log->Append({std::string(5000, 'L')}).ok());
  const std::string seg = dir_.sub("topic/") + SegmentFileName(0);
  EXPECT_EQ(std::filesystem::file_size(seg), log->Segments().back().size_bytes);
  ASSERT_TRUE(log->Append({"small"}).ok());  // a small one reserves again
  EXPECT_EQ(std::filesystem::file_size(seg),
            log->Segments().back().size_bytes - RecordFrameSize(5) - kGroupFrameSize + (64u << 10));
}

TEST_F(LogTest, WithoutReserveTheFileEndsAtTheData) {
  LogOptions o;
  o.reserve_bytes = 0;
  auto log = OpenLog(o);
  ASSERT_TRUE(log->Append({"plain"}).ok());
  EXPECT_EQ(std::filesystem::file_size(dir_.sub("topic/") + SegmentFileName(0)),
            log->Segments().back().size_bytes);
}

TEST(WritableFileTest, ReserveWritesZerosPastTheDataWithoutMovingIt) {
  testing::TempDir dir;
  const std::string path = dir.sub("f");
  auto file = DefaultEnv()->OpenAppendable(path);
  ASSERT_TRUE(file.ok());
  auto& f = **file;
  const std::string abc = "abc";
  ASSERT_TRUE(f.Append(std::as_bytes(std::span(abc))).ok());
  ASSERT_TRUE(f.Reserve(100).ok());
  EXPECT_EQ(f.Size(), 3u);
  EXPECT_EQ(f.Reserved(), 100u);
  EXPECT_EQ(std::filesystem::file_size(path), 103u);
  ASSERT_TRUE(f.Reserve(40).ok());  // already there: nothing written
  EXPECT_EQ(std::filesystem::file_size(path), 103u);
  ASSERT_TRUE(f.Append(std::as_bytes(std::span(abc))).ok());  // lands on the zeros
  EXPECT_EQ(f.Size(), 6u);
  EXPECT_EQ(f.Reserved(), 97u);
  EXPECT_EQ(std::filesystem::file_size(path), 103u);
  EXPECT_EQ(FileBytes(path).substr(0, 7), std::string("abcabc\0", 7));
  ASSERT_TRUE(f.Truncate(4).ok());  // the zeros go with a truncate
  EXPECT_EQ(f.Reserved(), 0u);
  EXPECT_EQ(std::filesystem::file_size(path), 4u);
  ASSERT_TRUE(f.Reserve(10).ok());
  ASSERT_TRUE(f.Close().ok());  // and with a close
  EXPECT_EQ(FileBytes(path), "abca");
}

TEST(FaultEnvTest, DataWrittenOverSyncedZerosIsLostUntilItIsSynced) {
  testing::TempDir dir;
  FaultInjectionEnv env(DefaultEnv());
  const std::string path = dir.sub("f");
  auto file = env.OpenAppendable(path);
  ASSERT_TRUE(file.ok());
  ASSERT_TRUE(env.SyncDir(dir.path()).ok());
  auto& f = **file;
  ASSERT_TRUE(f.Reserve(4096).ok());
  ASSERT_TRUE(f.Sync().ok());  // the zeros are durable
  const std::string data(1500, 'd');
  ASSERT_TRUE(f.Append(std::as_bytes(std::span(data))).ok());
  ASSERT_TRUE(env.PowerLoss(FaultInjectionEnv::PowerLossMode::kDropUnsynced).ok());
  std::string after = FileBytes(path);
  EXPECT_EQ(after.size(), 4096u);
  EXPECT_TRUE(AllZero(after));  // the write never reached the disk

  ASSERT_TRUE(f.Append(std::as_bytes(std::span(data))).ok());
  ASSERT_TRUE(f.Sync().ok());
  ASSERT_TRUE(f.Append(std::as_bytes(std::span(data))).ok());
  ASSERT_TRUE(env.PowerLoss(FaultInjectionEnv::PowerLossMode::kDropUnsynced).ok());
  after = FileBytes(path);
  // The synced append survives; the unsynced one, half on the synced zeros and half past
  // them, is gone: zeros again, and the file its synced size.
  ASSERT_EQ(after.size(), 4096u);
  EXPECT_EQ(after.substr(1500, 1500), data);
  EXPECT_TRUE(AllZero(std::string_view(after).substr(3000)));
}

}  // namespace
}  // namespace tidepool::storage
