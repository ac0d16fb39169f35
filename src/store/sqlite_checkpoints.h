// When the SQLite store checkpoints its WAL, and who does it: a pure function of the WAL's
// size and of how much of it the last checkpoint copied, so that the policy is tested apart
// from any disk (sqlite_store_test.cpp).
//
// Every checkpoint writes each page it copies into the database file and fsyncs twice; run
// after every commit, it rewrites the same hot pages over and over. So the background
// checkpointer runs once kCheckpointPages have been appended since the last checkpoint, not on
// every commit once the WAL is that big.
//
// A WAL starts over from its beginning only when a write begins after a checkpoint copied all
// of it. Under a steady stream of writes a background checkpoint always finishes behind the
// next commit, so once the WAL holds kWriterCheckpointPages the writer copies the rest itself
// after its commit, as SQLite would, but only when the background has left little to copy
// (kWriterCheckpointRest): a larger copy would hold up every write queued behind it. Until then
// the background keeps checkpointing. Past kMaxWalPages the writer checkpoints whatever is
// left, so that the WAL stays bounded even when the background cannot keep up.
#pragma once

namespace tidepool::store::internal {

inline constexpr int kCheckpointPages = 1'000;
inline constexpr int kWriterCheckpointPages = 4'000;
inline constexpr int kWriterCheckpointRest = 256;
inline constexpr int kMaxWalPages = 16'000;

enum class CheckpointAction { kNone, kBackground, kWriter };

// After a commit: `wal_pages`, the frames in the WAL; `checkpointed`, the frames the last
// checkpoint had copied (more than wal_pages when the WAL has started over since).
constexpr CheckpointAction AfterCommitAction(int wal_pages, int checkpointed) {
  const int copied = checkpointed > wal_pages ? 0 : checkpointed;
  const int behind = wal_pages - copied;
  if (wal_pages >= kWriterCheckpointPages &&
      (behind <= kWriterCheckpointRest || wal_pages >= kMaxWalPages)) {
    return CheckpointAction::kWriter;
  }
  if (behind >= kCheckpointPages || wal_pages >= kWriterCheckpointPages) {
    return CheckpointAction::kBackground;
  }
  return CheckpointAction::kNone;
}

}  // namespace tidepool::store::internal
