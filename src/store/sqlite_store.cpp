// The SQLite engine: one file, connections with their prepared statements — one for writes,
// kReaders for reads — each guarded by a mutex. Several processes may open the same file:
// writes take the database's write lock up front (BEGIN IMMEDIATE) and wait for it up to
// kBusyTimeout.
//
// Group commit (as in LevelDB): each commit is an fsync (synchronous=FULL), so writes that
// arrive while one is being committed queue up, and the first of them commits them all in one
// transaction, each inside its own savepoint (a write that fails is rolled back alone). Reads use
// their own connection and never wait for an fsync: WAL lets them see every committed write.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/sqlite_page_cache.h"
#include "common/thread_name.h"
#include "store/engine.h"
#include "store/migrations.h"
#include "store/sqlite_checkpoints.h"
#include "store/store.h"

namespace tidepool::store {
namespace {

using internal::NowMicros;

// How long a call waits for another process's write lock (UNAVAILABLE after).
constexpr std::chrono::milliseconds kBusyTimeout{5'000};
constexpr std::chrono::milliseconds kBusyRetryPause{10};
// Writes committed together at most: bounds the time the first of them waits for the last.
constexpr size_t kMaxGroup = 256;
// How long a write that may wait (marks of published messages) waits for other writes to
// commit with, before it commits on its own. Under load it rides along with the next group at
// once and costs no commit, no fsync and no wake-up of its own (at 1,000 POSTs/s the marks
// took 4 commits in 10).
constexpr std::chrono::milliseconds kDeferredWriteWait{50};
// Connections that read, so that concurrent reads (history, conversations) do not queue for one.
constexpr int kReaders = 4;

// The columns ReadMessage reads, in its order.
#define TP_MESSAGE_COLUMNS                                                         \
  "id, conversation_id, role, text, request_id, cards_json, created_micros, seq, " \
  "role = 'user' AND NOT EXISTS (SELECT 1 FROM unpublished WHERE unpublished.id = messages.id)"

Status SqliteError(sqlite3* db, int rc, std::string_view what) {
  std::string message = "sqlite: " + std::string(what) + ": " + sqlite3_errmsg(db);
  switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
      if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE) {
        return Status::AlreadyExists(std::move(message));
      }
      if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) return Status::NotFound(std::move(message));
      return Status::InvalidArgument(std::move(message));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
      return Status::Unavailable(std::move(message));
    case SQLITE_FULL:
      return Status::ResourceExhausted(std::move(message));
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return Status::Corruption(std::move(message));
    case SQLITE_IOERR:
      return Status::IOError(std::move(message));
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return Status::PermissionDenied(std::move(message));
    case SQLITE_TOOBIG:
      return Status::InvalidArgument(std::move(message));
    default:
      return Status::Internal(std::move(message));
  }
}

// A prepared statement, finalized with the object.
class Statement {
 public:
  Statement() = default;
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Status Prepare(sqlite3* db, std::string_view sql) {
    const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                      SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
    if (rc != SQLITE_OK) return SqliteError(db, rc, "prepare");
    return Status::Ok();
  }
  sqlite3_stmt* get() const { return stmt_; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

// One run of a prepared statement: binds its parameters in order, steps it, reads columns.
// The statement is reset and its bindings cleared when the run ends, so the next starts clean.
class Run {
 public:
  Run(sqlite3* db, const Statement& statement, std::string_view what)
      : db_(db), stmt_(statement.get()), what_(what) {}
  ~Run() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  Run& Text(std::string_view value) {
    // A null pointer would bind NULL, not an empty text.
    const char* data = value.data() != nullptr ? value.data() : "";
    return Check(
        sqlite3_bind_text(stmt_, ++index_, data, static_cast<int>(value.size()), SQLITE_TRANSIENT));
  }
  Run& TextOrNull(std::string_view value) {
    if (value.empty()) return Check(sqlite3_bind_null(stmt_, ++index_));
    return Text(value);
  }
  Run& Int(int64_t value) { return Check(sqlite3_bind_int64(stmt_, ++index_, value)); }

  // True when the statement produced a row, false when it is done.
  Result<bool> Step() {
    if (bind_rc_ != SQLITE_OK) return SqliteError(db_, bind_rc_, what_);
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, rc, what_);
  }
  // Runs a statement that returns no rows.
  Status Execute() { return Step().status(); }

  std::string ColumnText(int column) const {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    return std::string(text ? text : "", static_cast<size_t>(sqlite3_column_bytes(stmt_, column)));
  }
  int64_t ColumnInt(int column) const { return sqlite3_column_int64(stmt_, column); }
  int Changes() const { return sqlite3_changes(db_); }

 private:
  Run& Check(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
    return *this;
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  std::string_view what_;
  int index_ = 0;
  int bind_rc_ = SQLITE_OK;
};

// REQUIRES: the run's current row comes from a SELECT of TP_MESSAGE_COLUMNS.
Result<StoredMessage> ReadMessage(const Run& run) {
  StoredMessage message;
  message.id = run.ColumnText(0);
  message.conversation_id = run.ColumnText(1);
  TP_ASSIGN_OR_RETURN(message.role, internal::ParseRole(run.ColumnText(2)));
  message.text = run.ColumnText(3);
  message.request_id = run.ColumnText(4);
  message.cards_json = run.ColumnText(5);
  message.created_micros = run.ColumnInt(6);
  message.seq = run.ColumnInt(7);
  message.published = run.ColumnInt(8) != 0;
  return message;
}

// The statements of the store, prepared once at open.
struct Statements {
  Statement begin_immediate;
  Statement commit;
  Statement rollback;
  Statement savepoint;
  Statement release_savepoint;
  Statement rollback_to_savepoint;
  Statement insert_conversation;
  Statement get_conversation;
  Statement conversation_next_seq;
  Statement is_user_message;
  Statement insert_unpublished;
  Statement find_by_idempotency_key;
  Statement find_message;
  Statement reply_exists;
  Statement insert_message;
  Statement mark_published;
  Statement unpublished;
  Statement history;
  Statement schema_version;

  Status Prepare(sqlite3* db) {
    const std::pair<Statement*, std::string_view> all[] = {
        {&begin_immediate, "BEGIN IMMEDIATE"},
        {&commit, "COMMIT"},
        {&rollback, "ROLLBACK"},
        {&savepoint, "SAVEPOINT one_write"},
        {&release_savepoint, "RELEASE one_write"},
        {&rollback_to_savepoint, "ROLLBACK TO one_write"},
        {&insert_conversation,
         "INSERT INTO conversations (id, app, created_micros) VALUES (?, ?, ?) "
         "ON CONFLICT (id) DO NOTHING"},
        {&get_conversation, "SELECT id, app, created_micros FROM conversations WHERE id = ?"},
        {&conversation_next_seq,
         "SELECT COALESCE((SELECT MAX(seq) FROM messages WHERE conversation_id = ?1), 0) + 1 "
         "FROM conversations WHERE id = ?1"},
        {&is_user_message, "SELECT 1 FROM messages WHERE id = ? AND role = 'user'"},
        {&find_by_idempotency_key,
         "SELECT " TP_MESSAGE_COLUMNS " FROM messages WHERE conversation_id = ? AND "
         "idempotency_key = ?"},
        {&find_message, "SELECT " TP_MESSAGE_COLUMNS " FROM messages WHERE id = ?"},
        {&reply_exists, "SELECT 1 FROM messages WHERE request_id = ? AND role <> 'user'"},
        {&insert_message,
         "INSERT INTO messages (id, conversation_id, seq, role, text, request_id, cards_json, "
         "created_micros, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"},
        {&insert_unpublished, "INSERT INTO unpublished (id, created_micros) VALUES (?, ?)"},
        {&mark_published, "DELETE FROM unpublished WHERE id = ?"},
        {&unpublished,
         "SELECT " TP_MESSAGE_COLUMNS " FROM messages WHERE id IN (SELECT id FROM unpublished "
         "WHERE created_micros < ? ORDER BY created_micros, id LIMIT ?) "
         "ORDER BY created_micros, id"},
        {&history, "SELECT " TP_MESSAGE_COLUMNS
                   " FROM messages WHERE conversation_id = ? ORDER BY seq DESC LIMIT ?"},
        {&schema_version, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"},
    };
    for (const auto& [statement, sql] : all) TP_RETURN_IF_ERROR(statement->Prepare(db, sql));
    return Status::Ok();
  }
};

// A write transaction on the connection: BEGIN IMMEDIATE takes the database's write lock at
// once, so the reads that decide a write see everything committed by any process, and nothing
// commits in between. Rolled back unless committed.
// REQUIRES: the store's mutex is held for the transaction's life.
class SqliteTransaction final : public internal::WriteTransaction {
 public:
  SqliteTransaction(sqlite3* db, Statements& statements) : db_(db), s_(statements) {}
  ~SqliteTransaction() override {
    if (!sqlite3_get_autocommit(db_)) (void)Run(db_, s_.rollback, "rollback").Execute();
  }
  SqliteTransaction(const SqliteTransaction&) = delete;
  SqliteTransaction& operator=(const SqliteTransaction&) = delete;

  Status Begin() { return Run(db_, s_.begin_immediate, "begin").Execute(); }
  Status Commit() { return Run(db_, s_.commit, "commit").Execute(); }
  // One write of a group: its changes are kept (Release) or undone (Undo) on their own.
  Status Savepoint() { return Run(db_, s_.savepoint, "savepoint").Execute(); }
  Status Release() { return Run(db_, s_.release_savepoint, "release savepoint").Execute(); }
  Status Undo() {
    TP_RETURN_IF_ERROR(Run(db_, s_.rollback_to_savepoint, "rollback to savepoint").Execute());
    return Release();
  }

  Result<std::optional<int64_t>> LockConversation(const std::string& id) override {
    // The write lock taken by BEGIN IMMEDIATE already covers the conversation.
    Run run(db_, s_.conversation_next_seq, "read conversation");
    TP_ASSIGN_OR_RETURN(const bool found, run.Text(id).Step());
    if (!found) return std::optional<int64_t>();
    return std::optional<int64_t>(run.ColumnInt(0));
  }

  Result<std::optional<StoredMessage>> FindByIdempotencyKey(const std::string& conversation_id,
                                                            const std::string& key) override {
    Run run(db_, s_.find_by_idempotency_key, "find idempotency key");
    return FindOne(run.Text(conversation_id).Text(key));
  }

  Result<std::optional<StoredMessage>> FindMessage(const std::string& id) override {
    Run run(db_, s_.find_message, "find message");
    return FindOne(run.Text(id));
  }

  Result<bool> ReplyExists(const std::string& request_id) override {
    Run run(db_, s_.reply_exists, "find reply");
    return run.Text(request_id).Step();
  }

  Status Insert(const StoredMessage& message, const std::string& idempotency_key,
                int64_t next_seq) override {
    Run insert(db_, s_.insert_message, "add message");
    TP_RETURN_IF_ERROR(insert.Text(message.id)
                           .Text(message.conversation_id)
                           .Int(message.seq)
                           .Text(RoleName(message.role))
                           .Text(message.text)
                           .Text(message.request_id)
                           .Text(message.cards_json)
                           .Int(message.created_micros)
                           .TextOrNull(idempotency_key)
                           .Execute());
    // The next seq is read from the messages (LockConversation): nothing to advance.
    (void)next_seq;
    if (message.role != Role::kUser || message.published) return Status::Ok();
    Run unpublished(db_, s_.insert_unpublished, "add message");
    return unpublished.Text(message.id).Int(message.created_micros).Execute();
  }

 private:
  static Result<std::optional<StoredMessage>> FindOne(Run& run) {
    TP_ASSIGN_OR_RETURN(const bool found, run.Step());
    if (!found) return std::optional<StoredMessage>();
    TP_ASSIGN_OR_RETURN(StoredMessage message, ReadMessage(run));
    return std::optional<StoredMessage>(std::move(message));
  }

  sqlite3* db_;
  Statements& s_;
};

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};

class SqliteStore final : public Store {
 public:
  ~SqliteStore() override {
    {
      std::lock_guard lock(queue_mu_);
      writes_closed_ = true;
    }
    queue_cv_.notify_all();
    if (writer_.joinable()) writer_.join();
    {
      std::lock_guard lock(checkpoint_mu_);
      closing_ = true;
    }
    checkpoint_cv_.notify_all();
    if (checkpointer_.joinable()) checkpointer_.join();
  }

  static Result<std::unique_ptr<Store>> Open(const std::string& path) {
    const auto parent = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    if (ec) {
      return Status::Unavailable("sqlite: cannot create the directory " + parent.string() + ": " +
                                 ec.message());
    }
    auto store = std::unique_ptr<SqliteStore>(new SqliteStore);
    TP_RETURN_IF_ERROR(OpenConnection(path, SQLITE_OPEN_CREATE, "", &store->db_));
    sqlite3* db = store->db();
    TP_RETURN_IF_ERROR(store->Configure("configure " + path));
    TP_RETURN_IF_ERROR(store->Migrate());
    TP_RETURN_IF_ERROR(store->statements_.Prepare(db));
    // The reading connections, opened once the schema exists.
    for (int i = 0; i < kReaders; ++i) {
      auto reader = std::make_unique<Reader>();
      TP_RETURN_IF_ERROR(OpenConnection(path, 0, " for reading", &reader->db));
      TP_RETURN_IF_ERROR(reader->statements.Prepare(reader->db.get()));
      store->readers_.push_back(std::move(reader));
    }
    // Checkpoints on a connection of their own, in the background (see Checkpoints).
    TP_RETURN_IF_ERROR(OpenConnection(path, 0, " for checkpoints", &store->checkpoint_db_));
    sqlite3* checkpoint_db = store->checkpoint_db_.get();
    // A connection learns that the file is in WAL mode when it first reads it; until then a
    // checkpoint on it does nothing.
    const int read_rc = sqlite3_exec(checkpoint_db, "SELECT COUNT(*) FROM schema_migrations",
                                     nullptr, nullptr, nullptr);
    if (read_rc != SQLITE_OK) return SqliteError(checkpoint_db, read_rc, "open for checkpoints");
    SqliteStore* raw = store.get();
    sqlite3_wal_hook(db, &SqliteStore::AfterCommit, raw);
    store->checkpointer_ = std::thread([raw] {
      SetCurrentThreadName("store-ckpt");
      raw->Checkpoints();
    });
    store->writer_ = std::thread([raw] {
      SetCurrentThreadName("store-write");
      raw->WriteLoop();
    });
    return std::unique_ptr<Store>(std::move(store));
  }

  Status CreateConversation(const Conversation& conversation) override {
    TP_ASSIGN_OR_RETURN(const Conversation prepared, internal::PrepareConversation(conversation));
    return Write([&](SqliteTransaction&) -> Status {
      Run run(db(), statements_.insert_conversation, "create conversation");
      TP_RETURN_IF_ERROR(
          run.Text(prepared.id).Text(prepared.app).Int(prepared.created_micros).Execute());
      if (run.Changes() == 0) {
        return Status::AlreadyExists("store: conversation " + prepared.id + " exists");
      }
      return Status::Ok();
    });
  }

  Result<std::optional<Conversation>> GetConversation(const std::string& id) override {
    TP_RETURN_IF_ERROR(internal::CheckId("conversation id", id));
    Reading reading = Read();
    Run run(reading.db(), reading.statements().get_conversation, "get conversation");
    TP_ASSIGN_OR_RETURN(const bool found, run.Text(id).Step());
    if (!found) return std::optional<Conversation>();
    return std::optional<Conversation>(
        Conversation{run.ColumnText(0), run.ColumnText(1), run.ColumnInt(2)});
  }

  Result<AddResult> AddUserMessage(const StoredMessage& message,
                                   const std::string& idempotency_key) override {
    TP_ASSIGN_OR_RETURN(StoredMessage prepared,
                        internal::PrepareUserMessage(message, idempotency_key));
    return Write([&](SqliteTransaction& tx) {
      return internal::AddUserMessageSteps(tx, std::move(prepared), idempotency_key);
    });
  }

  // One write: the writer's page cache is never emptied by another connection's commit, so the
  // conversation check and the history read there find their pages in memory, where a reader
  // would read them from the file again after every commit.
  Result<PostedMessage> PostUserMessage(const std::string& app, const StoredMessage& message,
                                        const std::string& idempotency_key,
                                        int history_limit) override {
    TP_RETURN_IF_ERROR(internal::CheckLimit(history_limit));
    TP_ASSIGN_OR_RETURN(StoredMessage prepared,
                        internal::PrepareUserMessage(message, idempotency_key));
    return Write([&](SqliteTransaction& tx) {
      return PostSteps(tx, app, std::move(prepared), idempotency_key, history_limit);
    });
  }

  // The same write, queued without waiting: the writing thread calls `written` once the group
  // it is in is written and before that group's commit, so that the caller's publish and the
  // commit's fsync run side by side; then `done`.
  void PostUserMessageAsync(const std::string& app, const StoredMessage& message,
                            const std::string& idempotency_key, int history_limit,
                            PostCallbacks callbacks) override {
    Status limit = internal::CheckLimit(history_limit);
    Result<StoredMessage> prepared = internal::PrepareUserMessage(message, idempotency_key);
    if (!limit.ok() || !prepared.ok()) {
      if (callbacks.done) callbacks.done(!limit.ok() ? limit : prepared.status());
      return;
    }
    auto write = std::make_unique<PendingWrite>();
    auto result = std::make_shared<std::optional<Result<PostedMessage>>>();
    write->apply = [this, app, message = std::move(prepared).value(), idempotency_key,
                    history_limit, result](SqliteTransaction& tx) mutable -> Status {
      result->emplace(PostSteps(tx, app, std::move(message), idempotency_key, history_limit));
      return (*result)->status();
    };
    if (callbacks.written) {
      write->written = [result, written = std::move(callbacks.written)] {
        PostedMessage& posted = ***result;  // the history goes, `done` keeps what was added
        written(PostedMessage{.added = posted.added, .history = std::move(posted.history)});
      };
    }
    // An ok status means the steps ran and succeeded: `result` holds their PostedMessage.
    write->finish = [result, done = std::move(callbacks.done)](const Status& status) {
      if (!done) return;
      if (!status.ok()) {
        done(status);
        return;
      }
      done(std::move((**result)->added));
    };
    Enqueue(write.release());
  }

  bool WritesInBackground() const override { return true; }

  // May wait up to kDeferredWriteWait for other writes: a mark not yet committed costs at most
  // a second publish, by the sweeper, after a crash.
  Result<int64_t> MarkAllPublished(const std::vector<std::string>& message_ids) override {
    for (const auto& id : message_ids) TP_RETURN_IF_ERROR(internal::CheckId("message id", id));
    return Write(WriteWait::kMayWait, [&](SqliteTransaction&) -> Result<int64_t> {
      int64_t marked = 0;
      for (const auto& id : message_ids) {
        Run run(db(), statements_.mark_published, "mark published");
        TP_RETURN_IF_ERROR(run.Text(id).Execute());
        if (run.Changes() > 0) {
          ++marked;
          continue;
        }
        // Not waiting to be published: marked before, or no user message at all.
        Run known(db(), statements_.is_user_message, "mark published");
        TP_ASSIGN_OR_RETURN(const bool user_message, known.Text(id).Step());
        if (user_message) ++marked;
      }
      return marked;
    });
  }

  Result<std::vector<StoredMessage>> Unpublished(int64_t before_micros, int limit) override {
    TP_RETURN_IF_ERROR(internal::CheckLimit(limit));
    Reading reading = Read();
    Run run(reading.db(), reading.statements().unpublished, "list unpublished");
    run.Int(before_micros).Int(limit);
    return ReadMessages(run);
  }

  Result<bool> AddReply(const StoredMessage& reply) override {
    TP_ASSIGN_OR_RETURN(StoredMessage prepared, internal::PrepareReply(reply));
    return Write(
        [&](SqliteTransaction& tx) { return internal::AddReplySteps(tx, std::move(prepared)); });
  }

  // Queued without waiting and without a commit of its own: the reply waits up to
  // kDeferredWriteWait to share one with the POSTs or replies around it, so that under a stream
  // of replies the writing thread is free when a POST comes. `done` runs once it is committed.
  void AddReplyAsync(const StoredMessage& reply, std::function<void(Result<bool>)> done) override {
    Result<StoredMessage> prepared = internal::PrepareReply(reply);
    if (!prepared.ok()) {
      if (done) done(prepared.status());
      return;
    }
    auto write = std::make_unique<PendingWrite>();
    auto result = std::make_shared<std::optional<Result<bool>>>();
    write->apply = [message = std::move(prepared).value(),
                    result](SqliteTransaction& tx) mutable -> Status {
      result->emplace(internal::AddReplySteps(tx, std::move(message)));
      return (*result)->status();
    };
    // An ok status means the steps ran and succeeded: `result` holds whether this stored it.
    write->finish = [result, done = std::move(done)](const Status& status) {
      if (!done) return;
      if (!status.ok()) {
        done(status);
        return;
      }
      done(std::move(**result));
    };
    Enqueue(write.release(), WriteWait::kMayWait);
  }

  Result<std::vector<StoredMessage>> History(const std::string& conversation_id,
                                             int limit) override {
    TP_RETURN_IF_ERROR(internal::CheckId("conversation id", conversation_id));
    TP_RETURN_IF_ERROR(internal::CheckLimit(limit));
    Reading reading = Read();
    TP_ASSIGN_OR_RETURN(std::vector<StoredMessage> messages,
                        LatestMessages(reading.db(), reading.statements(), conversation_id, limit));
    if (messages.empty()) {
      Run run(reading.db(), reading.statements().conversation_next_seq, "read conversation");
      TP_ASSIGN_OR_RETURN(const bool found, run.Text(conversation_id).Step());
      if (!found) return Status::NotFound("store: no conversation " + conversation_id);
    }
    return messages;
  }

  Status Ping() override { return SchemaVersion().status(); }

  Result<int> SchemaVersion() override {
    Reading reading = Read();
    Run run(reading.db(), reading.statements().schema_version, "read schema version");
    TP_ASSIGN_OR_RETURN(const bool found, run.Step());
    if (!found) return Status::Internal("sqlite: no schema version");
    return static_cast<int>(run.ColumnInt(0));
  }

  std::string engine() const override { return "sqlite"; }

 private:
  SqliteStore() = default;

  sqlite3* db() const { return db_.get(); }

  // Opens `path` into `*out` with extended result codes and the busy timeout. NOMUTEX: the
  // store's own mutexes serialize every use of a connection. `purpose` goes into the error.
  static Status OpenConnection(const std::string& path, int extra_flags, std::string_view purpose,
                               std::unique_ptr<sqlite3, DbCloser>* out) {
    // Before SQLite's first open in the process: a commit then skips walking the page cache.
    InstallSqlitePageCache();
    sqlite3* db = nullptr;
    const int rc = sqlite3_open_v2(
        path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | extra_flags, nullptr);
    out->reset(db);
    if (rc != SQLITE_OK) {
      return Status::Unavailable("sqlite: cannot open " + path + std::string(purpose) + ": " +
                                 (db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, static_cast<int>(kBusyTimeout.count()));
    return Status::Ok();
  }

  // The conversation's latest `limit` messages, in seq order.
  static Result<std::vector<StoredMessage>> LatestMessages(sqlite3* db,
                                                           const Statements& statements,
                                                           const std::string& conversation_id,
                                                           int limit) {
    Run run(db, statements.history, "read history");
    run.Text(conversation_id).Int(limit);
    TP_ASSIGN_OR_RETURN(std::vector<StoredMessage> messages, ReadMessages(run));
    std::reverse(messages.begin(), messages.end());
    return messages;
  }

  // A reading connection with its statements; each is used by one thread at a time.
  struct Reader {
    std::mutex mu;
    std::unique_ptr<sqlite3, DbCloser> db;
    Statements statements;  // finalized before db is closed (declared after it)
  };

  // A reader, held until destroyed.
  class Reading {
   public:
    Reading(Reader& reader, std::unique_lock<std::mutex> lock)
        : reader_(&reader), lock_(std::move(lock)) {}
    sqlite3* db() const { return reader_->db.get(); }
    const Statements& statements() const { return reader_->statements; }

   private:
    Reader* reader_;
    std::unique_lock<std::mutex> lock_;
  };

  // A free reader if there is one (taking turns), else waits for one.
  Reading Read() {
    const size_t start = next_reader_.fetch_add(1, std::memory_order_relaxed);
    for (size_t i = 0; i < readers_.size(); ++i) {
      Reader& reader = *readers_[(start + i) % readers_.size()];
      std::unique_lock lock(reader.mu, std::try_to_lock);
      if (lock.owns_lock()) return Reading(reader, std::move(lock));
    }
    Reader& reader = *readers_[start % readers_.size()];
    return Reading(reader, std::unique_lock(reader.mu));
  }

  // PostUserMessage's steps, in a write transaction.
  Result<PostedMessage> PostSteps(SqliteTransaction& tx, const std::string& app,
                                  StoredMessage prepared, const std::string& idempotency_key,
                                  int history_limit) {
    {
      Run run(db(), statements_.get_conversation, "get conversation");
      TP_ASSIGN_OR_RETURN(const bool found, run.Text(prepared.conversation_id).Step());
      if (!found || run.ColumnText(1) != app) {
        return Status::NotFound("store: no conversation " + prepared.conversation_id + " in app " +
                                app);
      }
    }
    PostedMessage posted;
    const std::string conversation_id = prepared.conversation_id;
    TP_ASSIGN_OR_RETURN(posted.added,
                        internal::AddUserMessageSteps(tx, std::move(prepared), idempotency_key));
    TP_ASSIGN_OR_RETURN(posted.history,
                        LatestMessages(db(), statements_, conversation_id, history_limit));
    return posted;
  }

  // A write in the queue of the writing thread. A caller of Write waits on `cv` until `done`;
  // one of PostUserMessageAsync is owned by the queue and learns its status through `finish`.
  struct PendingWrite {
    std::function<Status(SqliteTransaction&)> apply;
    std::function<void()> written;              // optional: applied, before the commit
    std::function<void(const Status&)> finish;  // set: the queue owns the write
    Status status;
    bool done = false;
    std::condition_variable cv;
  };

  // Whether a write commits with the next group the writing thread can start, or may wait for
  // other writes to share a commit with (kDeferredWriteWait).
  enum class WriteWait { kNone, kMayWait };

  // Runs `steps` in a write transaction, committed (fsync'd) with the writes queued beside it;
  // returns once it is durable, or failed.
  template <typename Steps>
  auto Write(Steps&& steps) -> decltype(steps(std::declval<SqliteTransaction&>())) {
    return Write(WriteWait::kNone, std::forward<Steps>(steps));
  }
  template <typename Steps>
  auto Write(WriteWait wait, Steps&& steps) -> decltype(steps(std::declval<SqliteTransaction&>())) {
    using R = decltype(steps(std::declval<SqliteTransaction&>()));
    std::optional<R> result;
    PendingWrite write;
    write.apply = [&](SqliteTransaction& tx) -> Status {
      result.emplace(steps(tx));
      if constexpr (std::is_same_v<R, Status>) {
        return *result;
      } else {
        return result->status();
      }
    };
    std::unique_lock lock(queue_mu_);
    if (writes_closed_) return R(Status::Unavailable("sqlite: the store is closing"));
    QueueLocked(&write, wait);
    write.cv.wait(lock, [&] { return write.done; });
    lock.unlock();
    if (!write.status.ok() || !result) return R(write.status);
    return std::move(*result);
  }

  // REQUIRES: queue_mu_ held, writes not closed.
  void QueueLocked(PendingWrite* write, WriteWait wait) {
    if (wait == WriteWait::kNone) {
      queue_.push_back(write);
      queue_cv_.notify_one();
      return;
    }
    // The writing thread learns of it when it next looks at its queues; it is woken only when
    // it sleeps with no deadline (nothing deferred before this one), or when a group's worth
    // is waiting.
    if (deferred_.empty()) {
      deferred_since_ = std::chrono::steady_clock::now();
      queue_cv_.notify_one();
    }
    deferred_.push_back(write);
    if (deferred_.size() == kMaxGroup) queue_cv_.notify_one();
  }

  // Queues a write that the queue owns (finish set).
  void Enqueue(PendingWrite* write, WriteWait wait = WriteWait::kNone) {
    {
      std::lock_guard lock(queue_mu_);
      if (!writes_closed_) {
        QueueLocked(write, wait);
        return;
      }
    }
    std::unique_ptr<PendingWrite> owned(write);
    owned->finish(Status::Unavailable("sqlite: the store is closing"));
  }

  // The writing thread: every write queued while the last group committed goes into the next
  // one, one transaction and one fsync for all of them (up to kMaxGroup), with every deferred
  // write. A thread of its own, not the first caller in line, so that callers need not wait for
  // their turn on a thread.
  void WriteLoop() {
    std::unique_lock lock(queue_mu_);
    for (;;) {
      // Until a write that does not wait is queued, the store closes, the oldest deferred
      // write has waited long enough, or a group's worth of them waits.
      while (queue_.empty() && !writes_closed_ && deferred_.size() < kMaxGroup) {
        if (deferred_.empty()) {
          queue_cv_.wait(lock);
        } else if (queue_cv_.wait_until(lock, deferred_since_ + kDeferredWriteWait) ==
                   std::cv_status::timeout) {
          break;
        }
      }
      if (queue_.empty() && deferred_.empty()) return;  // closed, and nothing left to write
      const size_t n = std::min(queue_.size(), kMaxGroup);
      std::vector<PendingWrite*> group(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(n));
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(n));
      // Deferred writes left over are overdue: the next group takes them at once.
      const auto deferred = static_cast<ptrdiff_t>(std::min(deferred_.size(), kMaxGroup));
      group.insert(group.end(), deferred_.begin(), deferred_.begin() + deferred);
      deferred_.erase(deferred_.begin(), deferred_.begin() + deferred);
      lock.unlock();
      CommitGroup(group);
      std::vector<PendingWrite*> waiting;  // Write's callers; the queue owns the others
      for (PendingWrite* w : group) {
        if (!w->finish) {
          waiting.push_back(w);
          continue;
        }
        std::unique_ptr<PendingWrite> owned(w);
        owned->finish(owned->status);
      }
      lock.lock();
      for (PendingWrite* w : waiting) {
        w->done = true;
        w->cv.notify_one();
      }
    }
  }

  // Applies each write of `group` under a savepoint of one transaction, tells those that asked
  // that they are written, and commits. Sets every write's status.
  void CommitGroup(const std::vector<PendingWrite*>& group) {
    std::lock_guard db_lock(mu_);
    SqliteTransaction tx(db(), statements_);
    const Status began = tx.Begin();
    for (PendingWrite* w : group) {
      if (!began.ok()) {
        w->status = began;
        continue;
      }
      w->status = tx.Savepoint();
      if (!w->status.ok()) continue;
      w->status = w->apply(tx);
      Status kept = w->status.ok() ? tx.Release() : tx.Undo();
      if (!kept.ok()) w->status = kept;
    }
    if (!began.ok()) return;
    for (PendingWrite* w : group) {
      if (w->status.ok() && w->written) w->written();
    }
    // A failed commit undoes every write of the group: each learns it failed.
    const Status committed = tx.Commit();
    if (committed.ok()) return;
    for (PendingWrite* w : group) {
      if (w->status.ok()) w->status = committed;
    }
  }

  static Result<std::vector<StoredMessage>> ReadMessages(Run& run) {
    std::vector<StoredMessage> messages;
    for (;;) {
      TP_ASSIGN_OR_RETURN(const bool found, run.Step());
      if (!found) return messages;
      TP_ASSIGN_OR_RETURN(StoredMessage message, ReadMessage(run));
      messages.push_back(std::move(message));
    }
  }

  // The writer keeps its page cache (other connections' commits would empty it): up to 64 MiB,
  // so that a POST's write rarely reads a page from the file. It never checkpoints: Checkpoints
  // does, in the background.
  //
  // synchronous=FULL, not the NORMAL that WAL usually runs with: under NORMAL a commit is
  // not fsync'd and the last ones can be lost in a power cut, but the web tier answers 202
  // once AddUserMessage returns, promising the message is on disk (DESIGN.md, promise 1).
  //
  // Turning a new file to WAL needs the file to itself, and SQLite answers SQLITE_BUSY at once
  // (no busy handler) when another process opens the same new file at that moment: retried.
  Status Configure(std::string_view what) {
    const auto deadline = std::chrono::steady_clock::now() + kBusyTimeout;
    for (;;) {
      const int rc = sqlite3_exec(
          db(),
          "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; "
          "PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 0;",
          nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) return Status::Ok();
      if ((rc & 0xff) != SQLITE_BUSY || std::chrono::steady_clock::now() >= deadline) {
        return SqliteError(db(), rc, what);
      }
      std::this_thread::sleep_for(kBusyRetryPause);
    }
  }

  // SQLite checkpoints a WAL database from inside the commit that crosses 1,000 pages of WAL:
  // that commit, and every write queued behind it, waits while the WAL is copied into the
  // database file and that is fsync'd (the p99 of a POST under load: the store's share of it
  // reached 25-60 ms). Here the writer's commit hook wakes a thread that checkpoints PASSIVE on
  // a connection of its own while the writer goes on appending; when, and when the writer
  // checkpoints after all: sqlite_checkpoints.h.
  static int AfterCommit(void* store, sqlite3* db, const char*, int wal_pages) {
    auto* self = static_cast<SqliteStore*>(store);
    switch (internal::AfterCommitAction(wal_pages, self->checkpointed_.load())) {
      case internal::CheckpointAction::kWriter:
        self->CheckpointOn(db);
        break;
      case internal::CheckpointAction::kBackground: {
        {
          std::lock_guard lock(self->checkpoint_mu_);
          self->checkpoint_wanted_ = true;
        }
        self->checkpoint_cv_.notify_one();
        break;
      }
      case internal::CheckpointAction::kNone:
        break;
    }
    return SQLITE_OK;
  }

  void Checkpoints() {
    std::unique_lock lock(checkpoint_mu_);
    for (;;) {
      checkpoint_cv_.wait(lock, [this] { return closing_ || checkpoint_wanted_; });
      if (closing_) return;
      checkpoint_wanted_ = false;
      lock.unlock();
      CheckpointOn(checkpoint_db_.get());
      lock.lock();
      // Commits made while it ran asked again from the old count: dropped, as the next
      // commit asks from the new one if a checkpoint is still due (each asked a second,
      // near-empty checkpoint and its fsync before).
      checkpoint_wanted_ = false;
    }
  }

  // Copies what it can of the WAL into the database (PASSIVE: waits for no reader or writer)
  // and records how many frames the WAL's copied prefix now holds.
  void CheckpointOn(sqlite3* db) {
    int copied = 0;
    const int rc =
        sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, &copied);
    if (rc == SQLITE_OK) checkpointed_.store(copied);
  }

  Status ExecuteOne(std::string_view sql, std::string_view what) {
    Statement statement;
    TP_RETURN_IF_ERROR(statement.Prepare(db(), sql));
    return Run(db(), statement, what).Execute();
  }

  // Runs `body` inside BEGIN IMMEDIATE ... COMMIT: with the database's write lock, taken
  // first, so that a read in `body` cannot go stale before its write (SQLITE_BUSY_SNAPSHOT).
  template <typename Body>
  Status InWriteTransaction(std::string_view what, Body&& body) {
    TP_RETURN_IF_ERROR(ExecuteOne("BEGIN IMMEDIATE", what));
    Status status = body();
    if (status.ok()) status = ExecuteOne("COMMIT", what);
    if (!sqlite3_get_autocommit(db())) (void)ExecuteOne("ROLLBACK", what);
    return status;
  }

  // Applies the migrations not recorded yet (migrations.h), each in its own transaction.
  Status Migrate() {
    TP_RETURN_IF_ERROR(InWriteTransaction("create schema_migrations", [&]() -> Status {
      TP_RETURN_IF_ERROR(
          ExecuteOne("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     "  version INTEGER PRIMARY KEY,"
                     "  name TEXT NOT NULL,"
                     "  applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
                     "create schema_migrations"));
      Statement newest;
      TP_RETURN_IF_ERROR(
          newest.Prepare(db(), "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
      Run run(db(), newest, "read schema version");
      TP_ASSIGN_OR_RETURN(const bool found, run.Step());
      if (found && run.ColumnInt(0) > kSchemaVersion) {
        return Status::FailedPrecondition(
            "sqlite: the database has schema version " + std::to_string(run.ColumnInt(0)) +
            ", newer than this build's " + std::to_string(kSchemaVersion));
      }
      return Status::Ok();
    }));
    for (const Migration& migration : Migrations()) {
      const std::string what = "migration " + std::to_string(migration.version);
      TP_RETURN_IF_ERROR(InWriteTransaction(what, [&]() -> Status {
        Statement recorded;
        TP_RETURN_IF_ERROR(
            recorded.Prepare(db(), "SELECT 1 FROM schema_migrations WHERE version = ?"));
        Run check(db(), recorded, what);
        TP_ASSIGN_OR_RETURN(const bool done, check.Int(migration.version).Step());
        if (done) return Status::Ok();
        for (const std::string_view sql : migration.sqlite) {
          TP_RETURN_IF_ERROR(ExecuteOne(sql, what));
        }
        Statement record;
        TP_RETURN_IF_ERROR(
            record.Prepare(db(), "INSERT INTO schema_migrations (version, name) VALUES (?, ?)"));
        return Run(db(), record, what).Int(migration.version).Text(migration.name).Execute();
      }));
    }
    return Status::Ok();
  }

  std::mutex queue_mu_;  // the writing thread's queue
  std::condition_variable queue_cv_;
  std::deque<PendingWrite*> queue_;
  // Writes that may wait (WriteWait::kMayWait), and when the oldest of them was queued.
  std::vector<PendingWrite*> deferred_;
  std::chrono::steady_clock::time_point deferred_since_;
  bool writes_closed_ = false;
  std::mutex mu_;  // the writing connection: every statement on it runs under it
  std::unique_ptr<sqlite3, DbCloser> db_;
  Statements statements_;  // finalized before db_ is closed (declared after it)
  std::vector<std::unique_ptr<Reader>> readers_;
  std::atomic<size_t> next_reader_{0};
  std::unique_ptr<sqlite3, DbCloser> checkpoint_db_;  // used by checkpointer_ only
  std::mutex checkpoint_mu_;
  std::condition_variable checkpoint_cv_;
  bool checkpoint_wanted_ = false;
  // Frames of the WAL that the last checkpoint copied (see sqlite_checkpoints.h).
  std::atomic<int> checkpointed_{0};
  bool closing_ = false;
  std::thread checkpointer_;  // joined before the connections close (declared after them)
  std::thread writer_;        // likewise
};

}  // namespace

Result<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path) {
  return SqliteStore::Open(path);
}

}  // namespace tidepool::store
