// The PostgreSQL engine (libpq): a pool of pool_size connections, each with its
// statement_timeout; values always travel as parameters of PQexecParams, never in the SQL text.
//
// A connection is opened when a checkout first needs it, and again after it broke: a checkout
// drops a connection that the server has closed (seen without a round trip, by reading what is
// pending on its socket), and a lease returned broken or inside a transaction is closed.
// Nothing is retried here: a write whose outcome is unknown is UNAVAILABLE to the caller, who
// retries with the same idempotency key.
//
// Errors never repeat the connection string, and any text from libpq has the password (when
// the connection string holds one) cut out.
#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <boost/json/array.hpp>
#include <boost/json/serialize.hpp>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "store/engine.h"
#include "store/migrations.h"
#include "store/store.h"

namespace tidepool::store {
namespace {

namespace json = boost::json;

// Reads of an idle connection's socket at checkout before it counts as broken (Pool::Healthy).
constexpr int kMaxIdleReads = 4;

// Migrations may rewrite tables: their transactions get longer than queries do.
constexpr int kMigrationStatementTimeoutMs = 5 * 60 * 1000;

#define TP_MESSAGE_COLUMNS \
  "id, conversation_id, role, text, request_id, cards_json, created_micros, seq, published"

struct ConnectionCloser {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
using Connection = std::unique_ptr<PGconn, ConnectionCloser>;

struct ResultClearer {
  void operator()(PGresult* result) const { PQclear(result); }
};
using PgResult = std::unique_ptr<PGresult, ResultClearer>;

// Text from libpq made fit for an error message: one line, and without the password.
class Redactor {
 public:
  explicit Redactor(std::string password) : password_(std::move(password)) {}

  std::string Clean(std::string_view text) const {
    constexpr std::string_view kHidden = "***";
    std::string raw(text);
    if (!password_.empty()) {
      for (size_t at = raw.find(password_); at != std::string::npos;
           at = raw.find(password_, at + kHidden.size())) {
        raw.replace(at, password_.size(), kHidden);
      }
    }
    std::string line;
    bool space = false;
    for (const char c : raw) {
      if (c == '\n' || c == '\r' || c == '\t' || c == ' ') {
        space = !line.empty();
        continue;
      }
      if (space) line += ' ';
      space = false;
      line += c;
    }
    return line;
  }

 private:
  std::string password_;
};

// The values of one query's parameters, sent as text.
class Params {
 public:
  Params& Text(std::string_view value) {
    values_.emplace_back(std::string(value));
    return *this;
  }
  Params& TextOrNull(std::string_view value) {
    if (value.empty()) {
      values_.emplace_back(std::nullopt);
      return *this;
    }
    return Text(value);
  }
  Params& Int(int64_t value) { return Text(std::to_string(value)); }
  Params& Bool(bool value) { return Text(value ? "true" : "false"); }

  // REQUIRES: no parameter is added while the pointers are in use.
  std::vector<const char*> Pointers() const {
    std::vector<const char*> pointers;
    pointers.reserve(values_.size());
    for (const auto& value : values_) pointers.push_back(value ? value->c_str() : nullptr);
    return pointers;
  }

 private:
  std::vector<std::optional<std::string>> values_;
};

// The StatusCode for a SQLSTATE (PostgreSQL manual, appendix A).
StatusCode CodeForSqlState(std::string_view state) {
  if (state == "23505") return StatusCode::kAlreadyExists;     // unique_violation
  if (state == "23503") return StatusCode::kNotFound;          // foreign_key_violation
  if (state == "57014") return StatusCode::kDeadlineExceeded;  // query_canceled (timeout)
  if (state == "55P03") return StatusCode::kDeadlineExceeded;  // lock_not_available
  if (state == "42501") return StatusCode::kPermissionDenied;  // insufficient_privilege
  if (state == "40001" || state == "40P01") return StatusCode::kUnavailable;  // retry
  if (state.starts_with("57P")) return StatusCode::kUnavailable;  // shutdown, cannot connect now
  const std::string_view state_class = state.substr(0, 2);
  if (state_class == "08") return StatusCode::kUnavailable;  // connection exception
  if (state_class == "53") return StatusCode::kResourceExhausted;
  if (state_class == "22" || state_class == "23") return StatusCode::kInvalidArgument;
  if (state_class == "28") return StatusCode::kUnauthenticated;
  return StatusCode::kInternal;
}

Result<int64_t> ParseInt(const char* text) {
  const std::string_view view(text);
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(view.data(), view.data() + view.size(), value);
  if (ec != std::errc() || end != view.data() + view.size()) {
    return Status::Corruption("postgresql: '" + std::string(view) + "' is not an integer");
  }
  return value;
}

// REQUIRES: `result` comes from a SELECT of TP_MESSAGE_COLUMNS.
Result<StoredMessage> ReadMessage(const PGresult* result, int row) {
  const auto text = [&](int column) { return std::string(PQgetvalue(result, row, column)); };
  StoredMessage message;
  message.id = text(0);
  message.conversation_id = text(1);
  TP_ASSIGN_OR_RETURN(message.role, internal::ParseRole(text(2)));
  message.text = text(3);
  message.request_id = text(4);
  message.cards_json = text(5);
  TP_ASSIGN_OR_RETURN(message.created_micros, ParseInt(PQgetvalue(result, row, 6)));
  TP_ASSIGN_OR_RETURN(message.seq, ParseInt(PQgetvalue(result, row, 7)));
  message.published = text(8) == "t";
  return message;
}

Result<std::vector<StoredMessage>> ReadMessages(const PGresult* result) {
  std::vector<StoredMessage> messages;
  for (int row = 0; row < PQntuples(result); ++row) {
    TP_ASSIGN_OR_RETURN(StoredMessage message, ReadMessage(result, row));
    messages.push_back(std::move(message));
  }
  return messages;
}

Status ErrorOf(PGconn* connection, const PGresult* result, std::string_view what,
               const Redactor& redactor) {
  std::string message = "postgresql: " + std::string(what) + ": ";
  const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  if (state == nullptr) {
    // No answer from the server: the connection is gone (or libpq failed on our side).
    message += redactor.Clean(PQerrorMessage(connection));
    return Status(
        PQstatus(connection) == CONNECTION_OK ? StatusCode::kInternal : StatusCode::kUnavailable,
        std::move(message));
  }
  const char* primary = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
  message += redactor.Clean(primary != nullptr ? primary : PQresultErrorMessage(result));
  message += std::string(" (SQLSTATE ") + state + ")";
  return Status(CodeForSqlState(state), std::move(message));
}

// Runs one statement with its parameters. `what` names the operation in an error.
Result<PgResult> Execute(PGconn* connection, const Redactor& redactor, std::string_view what,
                         const char* sql, const Params& params) {
  const std::vector<const char*> values = params.Pointers();
  PgResult result(PQexecParams(connection, sql, static_cast<int>(values.size()),
                               /*paramTypes=*/nullptr, values.data(), /*paramLengths=*/nullptr,
                               /*paramFormats=*/nullptr, /*resultFormat=*/0));
  const ExecStatusType status = result ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return result;
  return ErrorOf(connection, result.get(), what, redactor);
}

class Pool;

// A connection checked out of the pool, returned to it when the lease ends.
class Lease {
 public:
  Lease(Pool* pool, Connection connection) : pool_(pool), connection_(std::move(connection)) {}
  Lease(Lease&& other) noexcept
      : pool_(std::exchange(other.pool_, nullptr)), connection_(std::move(other.connection_)) {}
  Lease& operator=(Lease&&) = delete;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  // Runs one statement. `what` names the operation in an error.
  Result<PgResult> Execute(std::string_view what, const char* sql, const Params& params = {});

 private:
  friend class Pool;
  Pool* pool_;
  Connection connection_;  // null until connected
};

class Pool {
 public:
  Pool(const PostgresOptions& options, std::string password)
      : options_(options), redactor_(std::move(password)) {
    for (int i = 0; i < options_.pool_size; ++i) idle_.emplace_back();
  }

  // Waits up to pool_wait_timeout_ms for a free connection; connects it when needed.
  Result<Lease> Checkout() {
    Connection connection;
    {
      std::unique_lock lock(mu_);
      if (!available_.wait_for(lock, std::chrono::milliseconds(options_.pool_wait_timeout_ms),
                               [&] { return !idle_.empty(); })) {
        return Status::Unavailable("postgresql: no free connection within " +
                                   std::to_string(options_.pool_wait_timeout_ms) + " ms (pool of " +
                                   std::to_string(options_.pool_size) + ")");
      }
      connection = std::move(idle_.back());
      idle_.pop_back();
    }
    Lease lease(this, std::move(connection));  // from here on, the slot returns on any error
    if (lease.connection_ && !Healthy(lease.connection_.get())) lease.connection_.reset();
    if (!lease.connection_) {
      TP_ASSIGN_OR_RETURN(lease.connection_, Connect());
    }
    return lease;
  }

  // A connection that broke or is left inside a transaction is closed; its slot reconnects on
  // a later checkout.
  void Return(Connection connection) {
    if (connection && (PQstatus(connection.get()) != CONNECTION_OK ||
                       PQtransactionStatus(connection.get()) != PQTRANS_IDLE)) {
      connection.reset();
    }
    {
      std::lock_guard lock(mu_);
      // Open connections are reused first (taken from the back).
      if (connection) {
        idle_.push_back(std::move(connection));
      } else {
        idle_.emplace_front();
      }
    }
    available_.notify_one();
  }

  const Redactor& redactor() const { return redactor_; }

 private:
  // Reads, without blocking, whatever the server sent while the connection sat idle. A server
  // that ended the session (restart, idle timeout) sent an error and closed the socket: the
  // first read takes the error, a later one the end of file, which turns it CONNECTION_BAD.
  static bool Healthy(PGconn* connection) {
    for (int reads = 0; reads < kMaxIdleReads; ++reads) {
      if (PQstatus(connection) != CONNECTION_OK) return false;
      pollfd readable{PQsocket(connection), POLLIN, 0};
      if (::poll(&readable, 1, /*timeout=*/0) <= 0) return true;  // nothing pending
      if (PQconsumeInput(connection) == 0) return false;
    }
    return false;  // the server keeps talking to an idle session: better replaced
  }

  Result<Connection> Connect() {
    const std::string connect_timeout = std::to_string(options_.connect_timeout_seconds);
    // Later keywords override earlier ones, the expanded connection string included: the
    // application name is a default; the connect timeout is the option's, and the client
    // encoding UTF-8 whatever the database's (text is checked to be UTF-8 on the way in).
    const char* keywords[] = {"application_name", "dbname", "connect_timeout", "client_encoding",
                              nullptr};
    const char* values[] = {"tidepool", options_.conninfo.c_str(), connect_timeout.c_str(), "UTF8",
                            nullptr};
    Connection connection(PQconnectdbParams(keywords, values, /*expand_dbname=*/1));
    if (!connection) return Status::Unavailable("postgresql: cannot connect: out of memory");
    if (PQstatus(connection.get()) != CONNECTION_OK) {
      return Status::Unavailable("postgresql: cannot connect: " +
                                 redactor_.Clean(PQerrorMessage(connection.get())));
    }
    // libpq prints notices to stderr by default: "relation ... already exists, skipping" at
    // every open, the server's goodbye on an idle connection. Errors that matter come back as
    // results; these are dropped.
    PQsetNoticeProcessor(
        connection.get(), [](void*, const char*) {}, nullptr);
    TP_RETURN_IF_ERROR(Execute(connection.get(), redactor_, "set statement_timeout",
                               "SELECT set_config('statement_timeout', $1, false)",
                               Params().Int(options_.statement_timeout_ms))
                           .status());
    return connection;
  }

  const PostgresOptions options_;
  const Redactor redactor_;
  std::mutex mu_;
  std::condition_variable available_;
  std::deque<Connection> idle_;  // null entries: slots without an open connection
};

Lease::~Lease() {
  if (pool_ != nullptr) pool_->Return(std::move(connection_));
}

Result<PgResult> Lease::Execute(std::string_view what, const char* sql, const Params& params) {
  return tidepool::store::Execute(connection_.get(), pool_->redactor(), what, sql, params);
}

// A transaction on a leased connection: rolled back unless committed. The conversation row
// lock (FOR UPDATE) serializes writers of one conversation across every pool and process;
// under READ COMMITTED each later statement sees what the previous lock holder committed.
class PgTransaction final : public internal::WriteTransaction {
 public:
  explicit PgTransaction(Lease& lease) : lease_(lease) {}
  ~PgTransaction() override {
    if (open_) (void)lease_.Execute("rollback", "ROLLBACK");
  }
  PgTransaction(const PgTransaction&) = delete;
  PgTransaction& operator=(const PgTransaction&) = delete;

  Status Begin() {
    // Named, not left to the server's default_transaction_isolation: under REPEATABLE READ a
    // writer that waited for the conversation's lock would fail instead of reading past it.
    TP_RETURN_IF_ERROR(lease_.Execute("begin", "BEGIN ISOLATION LEVEL READ COMMITTED").status());
    open_ = true;
    return Status::Ok();
  }
  Status Commit() {
    open_ = false;  // a failed COMMIT ends the transaction too (or the connection is gone)
    return lease_.Execute("commit", "COMMIT").status();
  }

  Result<std::optional<int64_t>> LockConversation(const std::string& id) override {
    TP_ASSIGN_OR_RETURN(
        const PgResult result,
        lease_.Execute("lock conversation",
                       "SELECT next_seq FROM conversations WHERE id = $1 FOR UPDATE",
                       Params().Text(id)));
    if (PQntuples(result.get()) == 0) return std::optional<int64_t>();
    TP_ASSIGN_OR_RETURN(const int64_t next_seq, ParseInt(PQgetvalue(result.get(), 0, 0)));
    return std::optional<int64_t>(next_seq);
  }

  Result<std::optional<StoredMessage>> FindByIdempotencyKey(const std::string& conversation_id,
                                                            const std::string& key) override {
    return FindOne("find idempotency key",
                   "SELECT " TP_MESSAGE_COLUMNS
                   " FROM messages WHERE conversation_id = $1 AND idempotency_key = $2",
                   Params().Text(conversation_id).Text(key));
  }

  Result<std::optional<StoredMessage>> FindMessage(const std::string& id) override {
    return FindOne("find message", "SELECT " TP_MESSAGE_COLUMNS " FROM messages WHERE id = $1",
                   Params().Text(id));
  }

  Result<bool> ReplyExists(const std::string& request_id) override {
    TP_ASSIGN_OR_RETURN(
        const PgResult result,
        lease_.Execute("find reply",
                       "SELECT 1 FROM messages WHERE request_id = $1 AND role <> 'user'",
                       Params().Text(request_id)));
    return PQntuples(result.get()) > 0;
  }

  Status Insert(const StoredMessage& message, const std::string& idempotency_key,
                int64_t next_seq) override {
    TP_RETURN_IF_ERROR(lease_
                           .Execute("add message",
                                    "INSERT INTO messages (id, conversation_id, seq, role, text, "
                                    "request_id, cards_json, created_micros, published, "
                                    "idempotency_key) "
                                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                                    Params()
                                        .Text(message.id)
                                        .Text(message.conversation_id)
                                        .Int(message.seq)
                                        .Text(RoleName(message.role))
                                        .Text(message.text)
                                        .Text(message.request_id)
                                        .Text(message.cards_json)
                                        .Int(message.created_micros)
                                        .Bool(message.published)
                                        .TextOrNull(idempotency_key))
                           .status());
    return lease_
        .Execute("advance seq", "UPDATE conversations SET next_seq = $2 WHERE id = $1",
                 Params().Text(message.conversation_id).Int(next_seq))
        .status();
  }

 private:
  Result<std::optional<StoredMessage>> FindOne(std::string_view what, const char* sql,
                                               const Params& params) {
    TP_ASSIGN_OR_RETURN(const PgResult result, lease_.Execute(what, sql, params));
    if (PQntuples(result.get()) == 0) return std::optional<StoredMessage>();
    TP_ASSIGN_OR_RETURN(StoredMessage message, ReadMessage(result.get(), 0));
    return std::optional<StoredMessage>(std::move(message));
  }

  Lease& lease_;
  bool open_ = false;
};

class PostgresStore final : public Store {
 public:
  PostgresStore(const PostgresOptions& options, std::string password)
      : pool_(options, std::move(password)) {}

  Status CreateConversation(const Conversation& conversation) override {
    TP_ASSIGN_OR_RETURN(const Conversation prepared, internal::PrepareConversation(conversation));
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    TP_ASSIGN_OR_RETURN(
        const PgResult result,
        lease.Execute("create conversation",
                      "INSERT INTO conversations (id, app, created_micros) "
                      "VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
                      Params().Text(prepared.id).Text(prepared.app).Int(prepared.created_micros)));
    if (std::string_view(PQcmdTuples(result.get())) == "0") {
      return Status::AlreadyExists("store: conversation " + prepared.id + " exists");
    }
    return Status::Ok();
  }

  Result<std::optional<Conversation>> GetConversation(const std::string& id) override {
    TP_RETURN_IF_ERROR(internal::CheckId("conversation id", id));
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    TP_ASSIGN_OR_RETURN(
        const PgResult result,
        lease.Execute("get conversation",
                      "SELECT id, app, created_micros FROM conversations WHERE id = $1",
                      Params().Text(id)));
    if (PQntuples(result.get()) == 0) return std::optional<Conversation>();
    Conversation found{PQgetvalue(result.get(), 0, 0), PQgetvalue(result.get(), 0, 1), 0};
    TP_ASSIGN_OR_RETURN(found.created_micros, ParseInt(PQgetvalue(result.get(), 0, 2)));
    return std::optional<Conversation>(std::move(found));
  }

  Result<AddResult> AddUserMessage(const StoredMessage& message,
                                   const std::string& idempotency_key) override {
    TP_ASSIGN_OR_RETURN(StoredMessage prepared,
                        internal::PrepareUserMessage(message, idempotency_key));
    return Write([&](PgTransaction& tx) {
      return internal::AddUserMessageSteps(tx, std::move(prepared), idempotency_key);
    });
  }

  Result<int64_t> MarkAllPublished(const std::vector<std::string>& message_ids) override {
    json::array ids;
    for (const auto& id : message_ids) {
      TP_RETURN_IF_ERROR(internal::CheckId("message id", id));
      ids.emplace_back(id);
    }
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    // One statement, one commit: the ids travel as a JSON array, which needs no quoting rules
    // of its own.
    TP_ASSIGN_OR_RETURN(
        const PgResult result,
        lease.Execute("mark published",
                      "UPDATE messages SET published = TRUE WHERE role = 'user' AND id = ANY("
                      "ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))",
                      Params().Text(json::serialize(ids))));
    return std::strtoll(PQcmdTuples(result.get()), nullptr, 10);
  }

  Result<std::vector<StoredMessage>> Unpublished(int64_t before_micros, int limit) override {
    TP_RETURN_IF_ERROR(internal::CheckLimit(limit));
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    TP_ASSIGN_OR_RETURN(const PgResult result,
                        lease.Execute("list unpublished",
                                      "SELECT " TP_MESSAGE_COLUMNS
                                      " FROM messages WHERE role = 'user' AND NOT published AND "
                                      "created_micros < $1 ORDER BY created_micros, id LIMIT $2",
                                      Params().Int(before_micros).Int(limit)));
    return ReadMessages(result.get());
  }

  Result<bool> AddReply(const StoredMessage& reply) override {
    TP_ASSIGN_OR_RETURN(StoredMessage prepared, internal::PrepareReply(reply));
    return Write(
        [&](PgTransaction& tx) { return internal::AddReplySteps(tx, std::move(prepared)); });
  }

  // What a POST does, in one transaction: the conversation's check, the message's steps and the
  // history read (which sees the message), then `written`, then COMMIT. The caller's publish
  // thus runs beside the commit's round trip and WAL flush, as with SQLite. Blocks the caller.
  void PostUserMessageAsync(const std::string& app, const StoredMessage& message,
                            const std::string& idempotency_key, int history_limit,
                            PostCallbacks callbacks) override {
    Result<AddResult> posted =
        Post(app, message, idempotency_key, history_limit, callbacks.written);
    if (callbacks.done) callbacks.done(std::move(posted));
  }

  Result<PostedMessage> PostUserMessage(const std::string& app, const StoredMessage& message,
                                        const std::string& idempotency_key,
                                        int history_limit) override {
    PostedMessage posted;
    TP_RETURN_IF_ERROR(
        Post(app, message, idempotency_key, history_limit, [&posted](PostedMessage written) {
          posted = std::move(written);
        }).status());
    return posted;
  }

  Result<std::vector<StoredMessage>> History(const std::string& conversation_id,
                                             int limit) override {
    TP_RETURN_IF_ERROR(internal::CheckId("conversation id", conversation_id));
    TP_RETURN_IF_ERROR(internal::CheckLimit(limit));
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    TP_ASSIGN_OR_RETURN(std::vector<StoredMessage> messages,
                        LatestMessages(lease, conversation_id, limit));
    if (messages.empty()) {
      TP_ASSIGN_OR_RETURN(
          const PgResult found,
          lease.Execute("read conversation", "SELECT 1 FROM conversations WHERE id = $1",
                        Params().Text(conversation_id)));
      if (PQntuples(found.get()) == 0) {
        return Status::NotFound("store: no conversation " + conversation_id);
      }
    }
    return messages;
  }

  Status Ping() override {
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    return lease.Execute("ping", "SELECT 1").status();
  }

  Result<int> SchemaVersion() override {
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    TP_ASSIGN_OR_RETURN(const PgResult result,
                        lease.Execute("read schema version",
                                      "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
    TP_ASSIGN_OR_RETURN(const int64_t version, ParseInt(PQgetvalue(result.get(), 0, 0)));
    return static_cast<int>(version);
  }

  std::string engine() const override { return "postgresql"; }

  // Applies the migrations not recorded yet (migrations.h), each in its own transaction that
  // holds the migration advisory lock, so that concurrent opens apply each exactly once.
  Status Migrate() {
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    TP_RETURN_IF_ERROR(InMigrationTransaction(lease, [&]() -> Status {
      TP_RETURN_IF_ERROR(lease
                             .Execute("create schema_migrations",
                                      "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                      "  version INTEGER PRIMARY KEY,"
                                      "  name TEXT NOT NULL,"
                                      "  applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
                             .status());
      TP_ASSIGN_OR_RETURN(const PgResult newest,
                          lease.Execute("read schema version",
                                        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
      TP_ASSIGN_OR_RETURN(const int64_t version, ParseInt(PQgetvalue(newest.get(), 0, 0)));
      if (version > kSchemaVersion) {
        return Status::FailedPrecondition("postgresql: the database has schema version " +
                                          std::to_string(version) + ", newer than this build's " +
                                          std::to_string(kSchemaVersion));
      }
      return Status::Ok();
    }));
    for (const Migration& migration : Migrations()) {
      const std::string what = "migration " + std::to_string(migration.version);
      TP_RETURN_IF_ERROR(InMigrationTransaction(lease, [&]() -> Status {
        TP_ASSIGN_OR_RETURN(
            const PgResult recorded,
            lease.Execute(what, "SELECT 1 FROM schema_migrations WHERE version = $1",
                          Params().Int(migration.version)));
        if (PQntuples(recorded.get()) > 0) return Status::Ok();
        for (const std::string_view sql : migration.postgresql) {
          TP_RETURN_IF_ERROR(lease.Execute(what, std::string(sql).c_str()).status());
        }
        return lease
            .Execute(what, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                     Params().Int(migration.version).Text(migration.name))
            .status();
      }));
    }
    return Status::Ok();
  }

 private:
  // The conversation's latest `limit` messages, in seq order.
  static Result<std::vector<StoredMessage>> LatestMessages(Lease& lease,
                                                           const std::string& conversation_id,
                                                           int limit) {
    TP_ASSIGN_OR_RETURN(
        const PgResult result,
        lease.Execute("read history",
                      "SELECT " TP_MESSAGE_COLUMNS " FROM messages WHERE conversation_id = $1 "
                      "ORDER BY seq DESC LIMIT $2",
                      Params().Text(conversation_id).Int(limit)));
    TP_ASSIGN_OR_RETURN(std::vector<StoredMessage> messages, ReadMessages(result.get()));
    std::reverse(messages.begin(), messages.end());
    return messages;
  }

  Result<AddResult> Post(const std::string& app, const StoredMessage& message,
                         const std::string& idempotency_key, int history_limit,
                         const std::function<void(PostedMessage)>& written) {
    TP_RETURN_IF_ERROR(internal::CheckLimit(history_limit));
    TP_ASSIGN_OR_RETURN(StoredMessage prepared,
                        internal::PrepareUserMessage(message, idempotency_key));
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    PgTransaction tx(lease);
    TP_RETURN_IF_ERROR(tx.Begin());
    TP_ASSIGN_OR_RETURN(
        const PgResult conversation,
        lease.Execute("get conversation", "SELECT app FROM conversations WHERE id = $1",
                      Params().Text(prepared.conversation_id)));
    if (PQntuples(conversation.get()) == 0 ||
        std::string_view(PQgetvalue(conversation.get(), 0, 0)) != app) {
      return Status::NotFound("store: no conversation " + prepared.conversation_id + " in app " +
                              app);
    }
    const std::string conversation_id = prepared.conversation_id;
    PostedMessage posted;
    TP_ASSIGN_OR_RETURN(posted.added,
                        internal::AddUserMessageSteps(tx, std::move(prepared), idempotency_key));
    TP_ASSIGN_OR_RETURN(posted.history, LatestMessages(lease, conversation_id, history_limit));
    const AddResult added = posted.added;
    if (written) written(std::move(posted));
    TP_RETURN_IF_ERROR(tx.Commit());
    return added;
  }

  // Runs `steps` in a write transaction; commits when they succeed.
  template <typename Steps>
  auto Write(Steps&& steps) -> decltype(steps(std::declval<PgTransaction&>())) {
    TP_ASSIGN_OR_RETURN(Lease lease, pool_.Checkout());
    PgTransaction tx(lease);
    TP_RETURN_IF_ERROR(tx.Begin());
    auto result = steps(tx);
    if (!result.ok()) return result;
    TP_RETURN_IF_ERROR(tx.Commit());
    return result;
  }

  template <typename Body>
  Status InMigrationTransaction(Lease& lease, Body&& body) {
    PgTransaction tx(lease);
    TP_RETURN_IF_ERROR(tx.Begin());
    TP_RETURN_IF_ERROR(lease
                           .Execute("migrate", "SELECT set_config('statement_timeout', $1, true)",
                                    Params().Int(kMigrationStatementTimeoutMs))
                           .status());
    TP_RETURN_IF_ERROR(lease
                           .Execute("take the migration lock",
                                    "SELECT pg_advisory_xact_lock($1::bigint)",
                                    Params().Int(kMigrationLockKey))
                           .status());
    TP_RETURN_IF_ERROR(body());
    return tx.Commit();
  }

  Pool pool_;
};

// The password in a connection string (keyword or URI), to keep it out of error messages.
Result<std::string> PasswordOf(const std::string& conninfo) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &error);
  if (options == nullptr) {
    if (error != nullptr) PQfreemem(error);
    // libpq's message quotes the part it could not parse, which may be the password.
    return Status::InvalidArgument(
        "postgresql: the connection string does not parse (not repeated here: it may hold a "
        "password)");
  }
  std::string password;
  for (const PQconninfoOption* option = options; option->keyword != nullptr; ++option) {
    if (std::string_view(option->keyword) == "password" && option->val != nullptr) {
      password = option->val;
    }
  }
  PQconninfoFree(options);
  return password;
}

}  // namespace

Result<std::unique_ptr<Store>> OpenPostgresStore(const PostgresOptions& options) {
  if (options.conninfo.empty()) {
    return Status::InvalidArgument("postgresql: empty connection string");
  }
  if (options.pool_size < 1 || options.statement_timeout_ms < 1 ||
      options.connect_timeout_seconds < 1 || options.pool_wait_timeout_ms < 0) {
    return Status::InvalidArgument(
        "postgresql: pool_size, statement_timeout_ms and connect_timeout_seconds must be "
        "positive, pool_wait_timeout_ms not negative");
  }
  TP_ASSIGN_OR_RETURN(std::string password, PasswordOf(options.conninfo));
  auto store = std::make_unique<PostgresStore>(options, std::move(password));
  TP_RETURN_IF_ERROR(store->Migrate());
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace tidepool::store
