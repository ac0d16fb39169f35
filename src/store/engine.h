// What the two engines share: the checks of their input, and the steps of the two writes that
// must be race-free (AddUserMessage, AddReply), written once against WriteTransaction, which
// each engine implements in its SQL.
//
// Why the steps are race-free: every write that adds a message first locks its conversation's
// row (LockConversation) and holds the lock until its transaction ends. Writers to one
// conversation therefore run one after another, in every process: the idempotency-key lookup,
// the reply lookup and the seq taken from the conversation's next_seq counter all see every
// write committed before, and none can interleave. SQLite gets this from BEGIN IMMEDIATE (one
// writer per database); PostgreSQL from SELECT ... FOR UPDATE on the conversation under READ
// COMMITTED, where each statement after the lock is granted sees what the previous holder
// committed. The unique indexes (migrations.h) back each invariant up should a bug skip a step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "store/store.h"

namespace tidepool::store::internal {

int64_t NowMicros();

// INVALID_ARGUMENT unless `value` is a valid id (store.h, "Input limits"); `what` names it.
Status CheckId(std::string_view what, std::string_view value);
Status CheckLimit(int limit);
Result<Role> ParseRole(std::string_view name);

// The input checked and completed (created_micros, request_id and reply ids filled in).
Result<Conversation> PrepareConversation(const Conversation& conversation);
Result<StoredMessage> PrepareUserMessage(const StoredMessage& message,
                                         const std::string& idempotency_key);
Result<StoredMessage> PrepareReply(const StoredMessage& reply);

// An engine's write transaction, begun before the steps run and committed by the engine when
// they succeed (rolled back otherwise).
class WriteTransaction {
 public:
  virtual ~WriteTransaction() = default;
  // Locks the conversation until the transaction ends. Its next_seq; nullopt when unknown.
  virtual Result<std::optional<int64_t>> LockConversation(const std::string& id) = 0;
  virtual Result<std::optional<StoredMessage>> FindByIdempotencyKey(
      const std::string& conversation_id, const std::string& key) = 0;
  virtual Result<std::optional<StoredMessage>> FindMessage(const std::string& id) = 0;
  virtual Result<bool> ReplyExists(const std::string& request_id) = 0;
  // Inserts the message (key empty: none) and sets its conversation's next_seq.
  // ALREADY_EXISTS when a unique constraint refuses it.
  virtual Status Insert(const StoredMessage& message, const std::string& idempotency_key,
                        int64_t next_seq) = 0;
};

// REQUIRES: the message and the reply come from PrepareUserMessage and PrepareReply.
Result<AddResult> AddUserMessageSteps(WriteTransaction& tx, StoredMessage message,
                                      const std::string& idempotency_key);
Result<bool> AddReplySteps(WriteTransaction& tx, StoredMessage reply);

}  // namespace tidepool::store::internal
