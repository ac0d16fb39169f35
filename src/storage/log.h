// Log: the durable, segmented, append-only record log of one topic
// (docs/storage-format.md).
//
// Appends are queued and committed in groups by a Flusher thread: one write and one fdatasync
// per group. An appender learns its sequence numbers only after its group is durable. Reads
// return committed records only.
//
// Thread-safety: every method may be called from any thread. Completions run on the flusher's
// completion thread and must not block — in particular not on another append (a blocking
// Append from a completion deadlocks): post to your own executor if there is real work to do.
// Lifetime: the Flusher must outlive the Log. Destroying the Log commits what is queued.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/strong_int.h"
#include "storage/env.h"
#include "storage/flusher.h"
#include "storage/segment_scan.h"

namespace tidepool::storage {

using Seq = StrongInt<struct SeqTag>;

// Sequence numbers [first, first + count) of one committed append.
struct SeqRange {
  Seq first;
  uint64_t count = 0;
  int64_t timestamp = 0;  // µs since epoch, shared by the records of one group
  Seq end() const { return first + count; }
};

struct LogRecord {
  Seq seq;
  int64_t timestamp = 0;
  std::string data;
};

struct LogOptions {
  uint64_t segment_max_bytes = 64ull << 20;
  int64_t segment_max_age_micros = 3600ll * 1000 * 1000;  // 0: never roll by age
  uint32_t index_interval_bytes = 4096;
  // A group is closed when it reaches this many bytes (a larger single record is a group of
  // its own).
  size_t max_group_bytes = 4u << 20;
  // How long the leader may wait for more appends before writing a group smaller than
  // max_group_bytes. 0: write what is queued at once (more appends queue during the fsync).
  int64_t max_group_wait_micros = 0;
  // Zero-filled space kept ahead of the active segment's end (WritableFile::Reserve), written
  // this many bytes at a time: a small group's fdatasync then writes its data and no file
  // size (on ext4, no inode or journal write). Groups above 1/16 of it are appended as they
  // are. Dropped when the segment is sealed or the log closes; recovery drops what a crash
  // left. 0: append to the end of the file.
  uint64_t reserve_bytes = 256u << 10;
  // Refuse to open when a segment has corruption before its last group.
  bool strict_recovery = false;
  // A single record may not exceed this.
  size_t max_record_bytes = 16u << 20;
};

struct SegmentInfo {
  Seq base;
  Seq end;  // one past the last committed record
  uint64_t size_bytes = 0;
  int64_t created_micros = 0;
  int64_t min_timestamp = 0;
  int64_t max_timestamp = 0;
  bool active = false;
};

// What Open found and did.
struct RecoveryReport {
  size_t segments = 0;
  size_t segments_scanned = 0;        // the rest were trusted from their index checkpoint
  uint64_t torn_bytes_truncated = 0;  // a crash in the middle of the last group
  uint64_t zero_tail_bytes_dropped =
      0;  // reserved space left by a crash (LogOptions::reserve_bytes)
  size_t empty_segments_removed = 0;
  std::vector<std::string> corruption;  // one line per damaged region that was skipped
};

using AppendCallback = std::function<void(Result<SeqRange>)>;

class Log final : public Committable {
 public:
  // Opens (creating if needed) the log in `dir` and recovers it.
  static Result<std::unique_ptr<Log>> Open(Env* env, std::string dir, LogOptions options,
                                           Flusher* flusher);
  ~Log() override;
  Log(const Log&) = delete;
  Log& operator=(const Log&) = delete;

  // Queues `records` as one atomic append: they get consecutive sequence numbers and become
  // durable together. `done` runs once, after the fdatasync of their group, or with the error.
  void AppendAsync(std::vector<std::string> records, AppendCallback done);
  // Blocking form of AppendAsync.
  Result<SeqRange> Append(std::vector<std::string> records);

  // Committed records from `from` on, at most max_records and about max_bytes (at least one
  // record when any is there). OUT_OF_RANGE when `from` was deleted by retention. Records lost
  // to mid-file corruption (RecoveryReport::corruption) are skipped.
  Result<std::vector<LogRecord>> Read(Seq from, size_t max_records, size_t max_bytes) const;

  // The first committed sequence whose timestamp is at or after `micros` (next_seq() if none).
  Result<Seq> SeekTime(int64_t micros) const;

  Seq first_seq() const;  // oldest record still stored
  Seq next_seq() const;   // one past the newest committed record
  std::vector<SegmentInfo> Segments() const;
  const RecoveryReport& recovery_report() const { return recovery_; }
  // Non-ok once a failed fsync (or an unrecoverable write error) made the log read-only.
  Status health() const;

  // Deletes sealed segments whose records are all below `keep_from`; never the active one.
  // Returns how many were deleted.
  Result<size_t> RemoveSegmentsBefore(Seq keep_from);
  // Seals the active segment at the next commit (if it holds records) and starts a new one.
  void RequestRoll();
  // Rolls the active segment if it is older than segment_max_age_micros (periodic upkeep).
  void Maintain();

  const std::string& dir() const { return dir_; }

  void CommitPending() override;

 private:
  struct Segment;
  struct PendingAppend {
    std::vector<std::string> records;
    AppendCallback done;
    size_t bytes = 0;
  };

  Log(Env* env, std::string dir, LogOptions options, Flusher* flusher);
  Status Recover();
  Status OpenSegmentForRead(Segment* seg);
  Status StartNewSegment(uint64_t base_seq);
  Status SealActive();
  Status WriteIndexFile(const Segment& seg);
  void FailPending(const Status& status, std::deque<PendingAppend>* appends);
  // Makes the log read-only with `status` and fails `batch` and everything queued.
  void EnterFailedState(Status status, std::deque<PendingAppend>* batch);
  // Reads the committed records of one segment in [from, ...) into out.
  Status ReadSegment(const std::shared_ptr<Segment>& seg, uint64_t from, size_t max_records,
                     size_t max_bytes, std::vector<LogRecord>* out, size_t* out_bytes) const;
  std::shared_ptr<Segment> FindSegment(uint64_t seq) const;  // REQUIRES: mu_ held

  Env* const env_;
  const std::string dir_;
  const LogOptions options_;
  Flusher* const flusher_;
  RecoveryReport recovery_;

  // Segment list, committed positions and health. Readers hold it briefly; never across I/O.
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Segment>> segments_;  // by base sequence
  uint64_t first_seq_ = 0;
  uint64_t next_seq_ = 0;  // committed
  Status failed_;

  // Appends waiting for the group leader.
  std::mutex pending_mu_;
  std::condition_variable pending_cv_;
  std::deque<PendingAppend> pending_;
  size_t pending_bytes_ = 0;
  bool closing_ = false;
  std::atomic<bool> roll_requested_{false};

  // Owned by the flusher thread running CommitPending (never two at once).
  std::unique_ptr<WritableFile> writer_;
  uint64_t dirty_seq_ = 0;      // next sequence to assign
  int64_t last_timestamp_ = 0;  // timestamps never go backwards
  uint64_t last_index_offset_ = 0;
  std::string group_buffer_;
};

std::string SegmentFileName(uint64_t base_seq);

}  // namespace tidepool::storage
