// The conversation store (DESIGN.md, "store"): conversations, their messages and replies, for
// the web tier. One interface, two engines: SQLite (embedded default: one file in the data
// dir, WAL) and PostgreSQL (shared by many web instances). Both apply the same versioned
// schema migrations at open.
//
// Guarantees the web tier builds on (docs/api.md):
// - AddUserMessage is idempotent per (conversation, idempotency key): a retried POST gets the
//   message stored the first time, never a second one.
// - AddReply stores at most one reply per request (the user message it answers), whichever
//   web instance sees the final event first; the others learn it already exists.
// - A user message is written before it is published, and marked published once the publish is
//   confirmed; Unpublished lists what a crash left in between, for the web tier to publish.
//   With PostUserMessageAsync the publish may start once the message is written and while its
//   commit runs: a commit that fails then leaves a request published for a message not stored
//   (its reply is not stored either: AddReply finds no user message).
//
// Thread-safety: every method may be called from any thread; calls block (disk or network), so
// the web tier runs them off its I/O threads. PostUserMessageAsync and AddReplyAsync do not
// block when WritesInBackground().
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace tidepool::store {

// Input limits (larger input is INVALID_ARGUMENT). Ids, app names and idempotency keys are
// non-empty (keys may be empty: no key), at most kMaxIdBytes; all text is UTF-8 without NUL
// bytes (PostgreSQL stores neither invalid UTF-8 nor NUL in text).
inline constexpr size_t kMaxIdBytes = 256;
inline constexpr size_t kMaxTextBytes = 64 * 1024;
inline constexpr size_t kMaxCardsJsonBytes = 256 * 1024;

struct Conversation {
  std::string id;
  std::string app;
  int64_t created_micros = 0;
};

enum class Role { kUser, kAssistant, kError };
std::string_view RoleName(Role role);  // "user", "assistant", "error"

// The schema version this build writes (migrations.h lists the migrations).
inline constexpr int kSchemaVersion = 2;

struct StoredMessage {
  std::string id;  // user: the message id; reply: "REQUEST_ID/reply"
  std::string conversation_id;
  Role role = Role::kUser;
  std::string text;
  std::string request_id;  // replies: the user message they answer; user: == id
  std::string cards_json;  // replies: the final event's cards (JSON object), else ""
  int64_t created_micros = 0;
  int64_t seq = 0;         // order within the conversation, assigned by the store
  bool published = false;  // user messages: the request is durably published
};

struct AddResult {
  StoredMessage message;  // as stored (the earlier one when the key was seen before)
  bool created = false;   // false: the idempotency key matched an earlier message
};

// What PostUserMessage returns: the message as AddUserMessage stores it, and the history that
// ends with it.
struct PostedMessage {
  AddResult added;
  std::vector<StoredMessage> history;  // the latest history_limit messages, in seq order
};

// How PostUserMessageAsync reports; each runs at most once.
struct PostCallbacks {
  // The message is written in a transaction that is about to commit: what the commit makes
  // durable unless it fails; the message and the history are the callback's to keep. Runs
  // before `done`, only when the write itself succeeded, on the store's writing thread, which
  // waits for it: it must not block, and is best kept short (hand the work to another thread).
  std::function<void(PostedMessage)> written;
  // The write is committed (durable), or failed.
  std::function<void(Result<AddResult>)> done;
};

class Store {
 public:
  virtual ~Store() = default;

  // ALREADY_EXISTS when the id is taken. created_micros is assigned when 0.
  virtual Status CreateConversation(const Conversation& conversation) = 0;
  virtual Result<std::optional<Conversation>> GetConversation(const std::string& id) = 0;

  // Stores a user message (role kUser; seq and created_micros assigned when 0). With a
  // non-empty `idempotency_key`, a second call with the same (conversation, key) returns the
  // first message with created = false and stores nothing. NOT_FOUND for an unknown
  // conversation; ALREADY_EXISTS when the message id (or a seq given by the caller) is taken.
  // request_id is the id (filled in when empty).
  virtual Result<AddResult> AddUserMessage(const StoredMessage& message,
                                           const std::string& idempotency_key) = 0;
  // What a POST of a message does: AddUserMessage into a conversation of `app`, then History
  // (history_limit > 0). NOT_FOUND when the conversation is unknown or belongs to another app.
  // The default makes the three calls; an engine may do them in one transaction.
  virtual Result<PostedMessage> PostUserMessage(const std::string& app,
                                                const StoredMessage& message,
                                                const std::string& idempotency_key,
                                                int history_limit);
  // PostUserMessage reporting through callbacks. An engine that writes on a thread of its own
  // (WritesInBackground) returns at once and calls them from that thread, `written` before the
  // commit's fsync; PostgreSQL blocks the caller and calls `written` before its COMMIT; the
  // default blocks the caller, calls PostUserMessage and then both.
  virtual void PostUserMessageAsync(const std::string& app, const StoredMessage& message,
                                    const std::string& idempotency_key, int history_limit,
                                    PostCallbacks callbacks);
  virtual bool WritesInBackground() const { return false; }
  // NOT_FOUND when no user message has that id; marking a message twice is fine.
  Status MarkPublished(const std::string& message_id);
  // Marks many in one write: the web tier gathers the marks of concurrent POSTs. Ids that name
  // no user message are skipped; returns how many were marked. An engine may hold the write
  // back a little to commit it with others (SQLite: up to 50 ms): an unmarked message only
  // costs a second publish by the sweeper.
  virtual Result<int64_t> MarkAllPublished(const std::vector<std::string>& message_ids) = 0;
  // User messages not marked published, oldest first, created before `before_micros`.
  // Like History, at most `limit` (> 0) messages.
  virtual Result<std::vector<StoredMessage>> Unpublished(int64_t before_micros, int limit) = 0;

  // Stores the reply (kAssistant or kError) to `reply.request_id` unless one exists: true when
  // this call stored it. The id is "REQUEST_ID/reply" (filled in when empty); seq and
  // created_micros are assigned when 0. NOT_FOUND when the conversation, or the user message
  // `request_id` in it, is unknown.
  virtual Result<bool> AddReply(const StoredMessage& reply) = 0;
  // AddReply reporting through `done`, which runs exactly once. An engine that writes on a
  // thread of its own (WritesInBackground) returns at once, may hold the write back a little
  // to commit it with others (SQLite: up to 50 ms), and calls `done` from that thread once the
  // reply is durable or failed; the default blocks the caller and calls AddReply.
  virtual void AddReplyAsync(const StoredMessage& reply, std::function<void(Result<bool>)> done);

  // The conversation's messages in order (seq ascending); at most `limit`, the latest ones.
  // INVALID_ARGUMENT when limit <= 0; NOT_FOUND for an unknown conversation.
  virtual Result<std::vector<StoredMessage>> History(const std::string& conversation_id,
                                                     int limit) = 0;

  // Whether the engine answers (readiness).
  virtual Status Ping() = 0;
  // The highest schema migration applied (kSchemaVersion once a store is open).
  virtual Result<int> SchemaVersion() = 0;
  virtual std::string engine() const = 0;  // "sqlite", "postgresql"
};

// Creates the file and its directory when missing.
Result<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path);

struct PostgresOptions {
  std::string conninfo;  // libpq connection string or URI
  int pool_size = 8;     // connections kept open
  int statement_timeout_ms = 5'000;
  int connect_timeout_seconds = 5;
  // How long a call waits for a free connection when all pool_size are in use (UNAVAILABLE).
  int pool_wait_timeout_ms = 10'000;
};
Result<std::unique_ptr<Store>> OpenPostgresStore(const PostgresOptions& options);

// "sqlite:PATH" or "postgresql://..." / "postgres://..." (the URI goes to libpq as is).
Result<std::unique_ptr<Store>> OpenStore(const std::string& url);

}  // namespace tidepool::store
