// Cursor: the durable ack state of one subscription (docs/storage-format.md, "Cursor").
//
// CursorState is the plain in-memory value; Cursor persists it as checkpoint + write-ahead
// log through the same group commit as the topic logs.
//
// Thread-safety: Cursor methods may be called from any thread; completions run on a flusher
// thread and must not block. CursorState is a value type with no locking of its own.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "storage/env.h"
#include "storage/flusher.h"
#include "storage/log.h"
#include "storage/log_format.h"

namespace tidepool::storage {

// Delivery state of a delivered, unacknowledged record.
struct Delivery {
  uint32_t attempts = 0;       // 1 + nacks + expiries, as Pub/Sub counts delivery_attempt
  int64_t lease_deadline = 0;  // µs since epoch; redeliverable after it
  bool operator==(const Delivery&) const = default;
};

class CursorState {
 public:
  // Every sequence below floor() is acknowledged.
  Seq floor() const { return Seq(floor_); }
  bool IsAcked(Seq seq) const;
  // Acknowledges [lo, hi).
  void Ack(Seq lo, Seq hi);
  // Sets the delivery state of `seq`; ignored when it is already acknowledged.
  void SetDelivery(Seq seq, Delivery d);
  // Replaces the acked state (a seek): floor plus ranges above it; clears delivery state.
  void Reset(Seq floor, const std::vector<std::pair<Seq, Seq>>& acked);
  std::optional<Delivery> delivery(Seq seq) const;

  // Sorted, disjoint, non-adjacent ranges [lo, hi) above the floor.
  const std::map<uint64_t, uint64_t>& acked_ranges() const { return ranges_; }
  const std::map<uint64_t, Delivery>& deliveries() const { return deliveries_; }
  bool operator==(const CursorState&) const = default;

 private:
  uint64_t floor_ = 0;
  std::map<uint64_t, uint64_t> ranges_;
  std::map<uint64_t, Delivery> deliveries_;
};

// A batch of cursor operations, committed atomically (one group) and applied in order.
class CursorBatch {
 public:
  void Ack(Seq seq) { Ack(seq, seq + 1); }
  void Ack(Seq lo, Seq hi);
  void SetDelivery(Seq seq, Delivery d);
  void Reset(Seq floor, const std::vector<std::pair<Seq, Seq>>& acked);
  bool empty() const { return frames_.empty() && acks_.empty() && deliveries_.empty(); }
  const std::string& frames() const { return frames_; }

 private:
  void FlushAcks();
  void FlushDeliveries();
  std::string frames_;
  std::vector<std::pair<uint64_t, uint64_t>> acks_;
  std::vector<std::pair<uint64_t, Delivery>> deliveries_;
  friend class Cursor;
};

// Applies the frames of a batch or a WAL to `state`. Returns false on a frame it does not know.
bool ApplyCursorFrame(FrameType type, std::string_view payload, CursorState* state);

struct CursorOptions {
  uint64_t compact_bytes = 4u << 20;  // WAL size that triggers a checkpoint
  bool strict_recovery = false;
};

struct CursorRecoveryReport {
  uint64_t generation = 0;
  uint64_t wal_frames_replayed = 0;
  uint64_t torn_bytes_truncated = 0;
  std::vector<std::string> corruption;
};

class Cursor final : public Committable {
 public:
  static Result<std::unique_ptr<Cursor>> Open(Env* env, std::string dir, CursorOptions options,
                                              Flusher* flusher);
  ~Cursor() override;
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;

  // Writes `batch`, applies it, then calls `done`. With `durable` (the default) `done` runs
  // after the fdatasync that covers it. Without, the batch is written behind: it reaches the
  // disk with the next durable commit, the next SyncIfDirty() or the close, and a power loss
  // before that may lose it (a process crash does not) — for state whose loss only causes a
  // redelivery, this saves an fsync per commit.
  void CommitAsync(CursorBatch batch, std::function<void(Status)> done, bool durable = true);
  Status Commit(CursorBatch batch);
  // Makes written-behind batches durable soon (the broker calls it periodically).
  void SyncIfDirty();

  // The state as written (a copy); written-behind batches are included.
  CursorState state() const;
  Seq floor() const;
  const CursorRecoveryReport& recovery_report() const { return recovery_; }
  Status health() const;
  uint64_t generation() const;

  void CommitPending() override;

 private:
  struct Pending {
    CursorBatch batch;
    std::function<void(Status)> done;
    bool durable = true;
  };
  Cursor(Env* env, std::string dir, CursorOptions options, Flusher* flusher);
  Status Recover();
  Status ReplayWal(const std::string& path, bool is_last);
  Status Compact();

  Env* const env_;
  const std::string dir_;
  const CursorOptions options_;
  Flusher* const flusher_;
  CursorRecoveryReport recovery_;

  mutable std::mutex mu_;
  CursorState state_;
  Status failed_;
  uint64_t generation_ = 0;

  std::mutex pending_mu_;
  std::deque<Pending> pending_;
  bool closing_ = false;
  bool sync_requested_ = false;

  // Flusher-thread only.
  std::unique_ptr<WritableFile> wal_;
  bool dirty_ = false;  // written-behind bytes not yet fsync'd
  std::string buffer_;
};

}  // namespace tidepool::storage
