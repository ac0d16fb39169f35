// Subscription: the delivery state machine of one subscription — leases (ack deadlines),
// redelivery with retry backoff, dead-lettering, ordering keys, filters, exactly-once acks —
// over its topic's log and its own durable cursor.
//
// Thread-safety: all methods may be called from any thread. Listeners are called without any
// lock held and must not block (post to an executor).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/config.h"
#include "broker/filter.h"
#include "broker/message.h"
#include "common/status.h"
#include "storage/cursor.h"
#include "storage/log.h"

namespace tidepool::broker {

class Topic;

// Whoever holds leases (a streaming pull stream, a Pull call): the subscription keeps its
// outstanding counts current so that flow control can be enforced by the caller.
struct Consumer {
  std::atomic<int64_t> outstanding_messages{0};
  std::atomic<int64_t> outstanding_bytes{0};
};

struct ReceivedMessage {
  std::string ack_id;
  StoredMessage message;
  int delivery_attempt = 0;  // 0 unless the subscription has a dead-letter policy
};

// Per-ack-id outcome of Acknowledge / ModifyAckDeadline. Without exactly-once delivery every
// well-formed id succeeds.
struct AckResult {
  Status status;                             // INVALID_ARGUMENT for a malformed request
  std::vector<std::string> invalid_ack_ids;  // exactly-once: expired, stale or unknown
};

struct Backlog {
  uint64_t undelivered_messages = 0;  // published and not acknowledged
  int64_t oldest_unacked_age_micros = 0;
  uint64_t leased_messages = 0;
};

// A message that exhausted its delivery attempts and must go to the dead-letter topic.
struct DeadLetter {
  uint64_t seq = 0;
  uint32_t attempts = 0;
};

class Subscription {
 public:
  Subscription(SubscriptionConfig config, Filter filter, uint64_t epoch,
               std::unique_ptr<storage::Cursor> cursor, storage::Env* env);
  ~Subscription();

  // Rebuilds the in-memory state from the durable cursor. `topic` may be null (deleted).
  Status Attach(std::shared_ptr<Topic> topic);
  void Detach();  // the topic was deleted, or the subscription detached

  // Leases up to max_messages (and about max_bytes) available messages to `owner` for
  // lease_seconds. Never blocks on other pullers' work; returns what is there now.
  Result<std::vector<ReceivedMessage>> Pull(size_t max_messages, size_t max_bytes,
                                            int lease_seconds,
                                            const std::shared_ptr<Consumer>& owner);

  // `done` runs once: at once, or after the acks are durable when exactly-once is enabled.
  void Acknowledge(const std::vector<std::string>& ack_ids, std::function<void(AckResult)> done);
  // seconds == 0 is a nack.
  void ModifyAckDeadline(const std::vector<std::string>& ack_ids, int seconds,
                         std::function<void(AckResult)> done);

  // Expires leases and ends backoffs due at `now`; returns the messages to dead-letter.
  std::vector<DeadLetter> Tick(int64_t now);
  // A dead-lettered message reached the dead-letter topic (ok) or could not (retried later).
  void FinishDeadLetter(uint64_t seq, const Status& published);

  // Replaces the acknowledgement state (Seek) and forgets every lease. Durable on return.
  Status Reset(uint64_t floor, const std::vector<std::pair<uint64_t, uint64_t>>& acked,
               uint64_t new_epoch);
  // The acknowledgement state as written to the cursor, for retention.
  storage::CursorState DurableState() const;
  // Makes written-behind delivery state and plain acks durable soon.
  void SyncCursor();
  // The acknowledgement state as subscribers see it now (acks may not be durable yet), for
  // snapshots.
  storage::CursorState AckState() const;

  Backlog GetBacklog(int64_t now);

  uint64_t AddListener(std::function<void()> listener);
  void RemoveListener(uint64_t id);
  void NotifyListeners();

  SubscriptionConfig config() const;
  void UpdateConfig(const SubscriptionConfig& config);
  std::shared_ptr<Topic> topic() const;
  uint64_t epoch() const;
  int64_t last_activity() const { return last_activity_.load(); }

 private:
  struct Lease {
    uint32_t attempt = 0;
    int64_t deadline = 0;
    std::weak_ptr<Consumer> owner;
    int64_t bytes = 0;
  };
  struct KeyState {
    std::optional<uint64_t> active;  // leased, ready, backing off or being dead-lettered
    std::deque<uint64_t> waiting;    // later messages of the key, in publish order
  };
  struct AckId {
    uint64_t epoch = 0;
    uint64_t seq = 0;
    uint32_t attempt = 0;
  };

  static std::string FormatAckId(uint64_t epoch, uint64_t seq, uint32_t attempt);
  static bool ParseAckId(const std::string& s, AckId* out);
  // Parses every id before any is applied. Without exactly-once one malformed id fails the
  // whole request (nothing of it applied); with it, malformed ids go to `invalid`.
  static Status ParseAckIds(const std::vector<std::string>& ids, bool exactly_once,
                            std::vector<std::pair<std::string, AckId>>* parsed,
                            std::vector<std::string>* invalid);

  // REQUIRES: mu_ held.
  void EndLease(uint64_t seq);
  void ForgetTracking(uint64_t seq);
  void MarkAcked(uint64_t seq, storage::CursorBatch* batch);
  void ReleaseKey(uint64_t seq);
  // The message leaves its lease (nack or expiry): back off, redeliver, or dead-letter.
  void Requeue(uint64_t seq, uint32_t attempt, int64_t now, storage::CursorBatch* batch,
               std::vector<DeadLetter>* dead);
  bool Expired(int64_t publish_time, int64_t now) const;
  void Deliver(const StoredMessage& msg, int lease_seconds, const std::shared_ptr<Consumer>& owner,
               int64_t now, std::vector<ReceivedMessage>* out, storage::CursorBatch* batch);
  void Persist(storage::CursorBatch batch);

  storage::Env* const env_;
  const std::unique_ptr<storage::Cursor> cursor_;
  std::atomic<int64_t> last_activity_;

  mutable std::mutex mu_;
  SubscriptionConfig config_;
  Filter filter_;
  uint64_t epoch_;
  std::shared_ptr<Topic> topic_;
  storage::CursorState acked_;  // live; the durable copy in cursor_ may lag behind
  uint64_t read_pos_ = 0;       // first sequence never looked at
  std::map<uint64_t, Lease> leased_;
  std::multimap<int64_t, uint64_t> lease_deadlines_;  // may hold stale entries
  std::set<uint64_t> ready_;
  std::multimap<int64_t, uint64_t> delayed_;
  std::unordered_map<uint64_t, uint32_t> attempts_;  // deliveries so far, of tracked seqs
  std::unordered_map<std::string, KeyState> keys_;
  std::unordered_map<uint64_t, std::string> key_of_;  // ordering key of tracked seqs
  std::set<uint64_t> dead_lettering_;
  std::vector<DeadLetter> pending_dead_;  // found by nacks, handed out by Tick
  uint64_t oldest_cache_seq_ = UINT64_MAX;
  int64_t oldest_cache_time_ = 0;

  std::mutex listeners_mu_;
  uint64_t next_listener_ = 1;
  std::map<uint64_t, std::function<void()>> listeners_;
};

}  // namespace tidepool::broker
