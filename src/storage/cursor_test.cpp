#include "storage/cursor.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <random>

#include "storage/fault_env.h"
#include "storage/test_util.h"

namespace tidepool::storage {
namespace {

TEST(CursorStateTest, InOrderAcksAdvanceTheFloor) {
  CursorState s;
  s.Ack(Seq(0), Seq(1));
  s.Ack(Seq(1), Seq(5));
  EXPECT_EQ(s.floor(), Seq(5));
  EXPECT_TRUE(s.acked_ranges().empty());
  EXPECT_TRUE(s.IsAcked(Seq(4)));
  EXPECT_FALSE(s.IsAcked(Seq(5)));
}

TEST(CursorStateTest, OutOfOrderAcksAreSparseRangesUntilTheGapCloses) {
  CursorState s;
  s.Ack(Seq(5), Seq(6));
  s.Ack(Seq(7), Seq(9));
  s.Ack(Seq(2), Seq(3));
  EXPECT_EQ(s.floor(), Seq(0));
  EXPECT_EQ(s.acked_ranges().size(), 3u);
  s.Ack(Seq(6), Seq(7));  // joins [5,6) and [7,9)
  EXPECT_EQ(s.acked_ranges().size(), 2u);
  EXPECT_TRUE(s.IsAcked(Seq(8)));
  EXPECT_FALSE(s.IsAcked(Seq(4)));
  s.Ack(Seq(0), Seq(2));  // floor reaches [2,3)
  EXPECT_EQ(s.floor(), Seq(3));
  s.Ack(Seq(3), Seq(5));
  EXPECT_EQ(s.floor(), Seq(9));
  EXPECT_TRUE(s.acked_ranges().empty());
}

TEST(CursorStateTest, AckBelowFloorAndDuplicateAcksAreNoOps) {
  CursorState s;
  s.Ack(Seq(0), Seq(10));
  s.Ack(Seq(3), Seq(4));
  s.Ack(Seq(12), Seq(13));
  s.Ack(Seq(12), Seq(13));
  EXPECT_EQ(s.floor(), Seq(10));
  EXPECT_EQ(s.acked_ranges().size(), 1u);
}

TEST(CursorStateTest, RandomAcksMatchASetModel) {
  std::mt19937 rng(3);
  CursorState s;
  std::vector<bool> model(500, false);
  for (int i = 0; i < 2000; ++i) {
    uint64_t lo = rng() % 500;
    uint64_t hi = std::min<uint64_t>(500, lo + 1 + rng() % 4);
    s.Ack(Seq(lo), Seq(hi));
    for (uint64_t k = lo; k < hi; ++k) model[k] = true;
    uint64_t floor = 0;
    while (floor < 500 && model[floor]) ++floor;
    ASSERT_EQ(s.floor(), Seq(floor));
    for (uint64_t k = 0; k < 500; k += 7) ASSERT_EQ(s.IsAcked(Seq(k)), model[k]) << k;
    // Ranges are disjoint, non-adjacent and above the floor.
    uint64_t prev_hi = floor;
    bool first = true;
    for (const auto& [rlo, rhi] : s.acked_ranges()) {
      ASSERT_LT(rlo, rhi);
      if (first) {
        ASSERT_GT(rlo, prev_hi);
      } else {
        ASSERT_GT(rlo, prev_hi);
      }
      first = false;
      prev_hi = rhi;
    }
  }
}

TEST(CursorStateTest, DeliveryStateIsDroppedOnAck) {
  CursorState s;
  s.SetDelivery(Seq(4), {2, 1000});
  EXPECT_EQ(s.delivery(Seq(4))->attempts, 2u);
  s.Ack(Seq(4), Seq(5));
  EXPECT_FALSE(s.delivery(Seq(4)).has_value());
  s.SetDelivery(Seq(4), {3, 2000});  // already acked: ignored
  EXPECT_FALSE(s.delivery(Seq(4)).has_value());
}

TEST(CursorStateTest, ResetReplacesEverything) {
  CursorState s;
  s.Ack(Seq(0), Seq(50));
  s.SetDelivery(Seq(60), {1, 5});
  s.Reset(Seq(10), {{Seq(20), Seq(30)}});
  EXPECT_EQ(s.floor(), Seq(10));
  EXPECT_FALSE(s.IsAcked(Seq(15)));
  EXPECT_TRUE(s.IsAcked(Seq(25)));
  EXPECT_TRUE(s.deliveries().empty());
}

class CursorTest : public ::testing::Test {
 protected:
  CursorTest() : env_(DefaultEnv()) {}
  std::unique_ptr<Cursor> Open(CursorOptions o = {}) {
    auto c = Cursor::Open(&env_, dir_.sub("sub"), o, &flusher_);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(*c) : nullptr;
  }
  testing::TempDir dir_;
  FaultInjectionEnv env_;
  Flusher flusher_;
};

TEST_F(CursorTest, StatePersistsAcrossReopen) {
  {
    auto c = Open();
    CursorBatch b;
    b.Ack(Seq(0), Seq(3));
    b.Ack(Seq(7));
    b.SetDelivery(Seq(3), {2, 123456});
    ASSERT_TRUE(c->Commit(std::move(b)).ok());
    EXPECT_EQ(c->floor(), Seq(3));
  }
  auto c = Open();
  CursorState s = c->state();
  EXPECT_EQ(s.floor(), Seq(3));
  EXPECT_TRUE(s.IsAcked(Seq(7)));
  EXPECT_EQ(s.delivery(Seq(3)), (Delivery{2, 123456}));
  EXPECT_GT(c->recovery_report().wal_frames_replayed, 0u);
}

TEST_F(CursorTest, CompactionFoldsTheWalIntoACheckpoint) {
  CursorOptions o;
  o.compact_bytes = 1024;
  CursorState expected;
  {
    auto c = Open(o);
    for (uint64_t i = 0; i < 300; ++i) {
      CursorBatch b;
      const uint64_t seq = (i * 7) % 300;  // out of order
      b.Ack(Seq(seq));
      expected.Ack(Seq(seq), Seq(seq + 1));
      ASSERT_TRUE(c->Commit(std::move(b)).ok());
    }
    EXPECT_GT(c->generation(), 1u);
    EXPECT_EQ(c->state(), expected);
  }
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_.sub("sub"))) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 2u);  // one checkpoint, one WAL
  auto c = Open(o);
  EXPECT_EQ(c->state(), expected);
  EXPECT_EQ(c->state().floor(), Seq(300));
}

TEST_F(CursorTest, TornWalTailIsTruncated) {
  {
    auto c = Open();
    CursorBatch b;
    b.Ack(Seq(0), Seq(10));
    ASSERT_TRUE(c->Commit(std::move(b)).ok());
  }
  std::string wal;
  for (const auto& e : std::filesystem::directory_iterator(dir_.sub("sub"))) {
    if (e.path().filename().string().starts_with("wal-")) wal = e.path();
  }
  ASSERT_FALSE(wal.empty());
  const auto good = std::filesystem::file_size(wal);
  {
    std::ofstream f(wal, std::ios::app | std::ios::binary);
    f << "\x01\x02\x03 torn";
  }
  auto c = Open();
  EXPECT_EQ(c->floor(), Seq(10));
  EXPECT_GT(c->recovery_report().torn_bytes_truncated, 0u);
  EXPECT_EQ(std::filesystem::file_size(wal), good);
}

TEST_F(CursorTest, CorruptCheckpointFallsBackToTheWalWhenStillPresent) {
  // A checkpoint written by an interrupted compaction with bad bytes: the older generation
  // and its WAL are used instead.
  {
    auto c = Open();
    CursorBatch b;
    b.Ack(Seq(0), Seq(4));
    ASSERT_TRUE(c->Commit(std::move(b)).ok());
  }
  std::ofstream(dir_.sub("sub/checkpoint-00000000000000000009")) << "garbage";
  auto c = Open();
  EXPECT_EQ(c->floor(), Seq(4));
  EXPECT_FALSE(c->recovery_report().corruption.empty());
}

TEST_F(CursorTest, FsyncFailureMakesTheCursorReadOnly) {
  auto c = Open();
  env_.FailSyncs(true);
  CursorBatch b;
  b.Ack(Seq(0));
  Status s = c->Commit(std::move(b));
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  env_.FailSyncs(false);
  CursorBatch b2;
  b2.Ack(Seq(1));
  EXPECT_FALSE(c->Commit(std::move(b2)).ok());
  EXPECT_EQ(c->floor(), Seq(0));  // never applied
}

TEST_F(CursorTest, WrittenBehindBatchesAreDurableOnlyAfterASync) {
  auto commit_lazy = [](Cursor* c, uint64_t seq) {
    std::promise<Status> done;
    CursorBatch b;
    b.Ack(Seq(seq));
    c->CommitAsync(
        std::move(b), [&](Status s) { done.set_value(s); }, /*durable=*/false);
    return done.get_future().get();
  };
  {
    auto c = Open();
    ASSERT_TRUE(commit_lazy(c.get(), 0).ok());
    EXPECT_EQ(c->floor(), Seq(1));  // applied at once
    env_.CrashAfterOps(0);          // the machine stops before anything else reaches the disk
  }
  ASSERT_TRUE(env_.PowerLoss(FaultInjectionEnv::PowerLossMode::kDropUnsynced).ok());
  {
    auto c = Open();
    EXPECT_EQ(c->floor(), Seq(0)) << "never synced: lost to the power loss";
    ASSERT_TRUE(commit_lazy(c.get(), 0).ok());
    ASSERT_TRUE(commit_lazy(c.get(), 1).ok());
    c->SyncIfDirty();
    CursorBatch durable;
    durable.Ack(Seq(5));
    ASSERT_TRUE(c->Commit(std::move(durable)).ok());  // syncs everything before it too
    env_.CrashAfterOps(0);
  }
  ASSERT_TRUE(env_.PowerLoss(FaultInjectionEnv::PowerLossMode::kDropUnsynced).ok());
  auto c = Open();
  EXPECT_EQ(c->floor(), Seq(2));
  EXPECT_TRUE(c->state().IsAcked(Seq(5)));
}

TEST_F(CursorTest, SeekResetIsDurable) {
  {
    auto c = Open();
    CursorBatch b;
    b.Ack(Seq(0), Seq(100));
    b.Reset(Seq(40), {{Seq(50), Seq(60)}});
    ASSERT_TRUE(c->Commit(std::move(b)).ok());
  }
  auto c = Open();
  EXPECT_EQ(c->floor(), Seq(40));
  EXPECT_TRUE(c->state().IsAcked(Seq(55)));
  EXPECT_FALSE(c->state().IsAcked(Seq(45)));
}

}  // namespace
}  // namespace tidepool::storage
