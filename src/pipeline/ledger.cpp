#include "pipeline/ledger.h"

#include <sqlite3.h>

#include <chrono>
#include <filesystem>

#include "common/sqlite_page_cache.h"

namespace tidepool::pipeline {

Result<std::optional<LedgerEntry>> MemoryLedger::Lookup(const std::string& request_id) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(request_id);
  if (it == entries_.end()) return std::optional<LedgerEntry>();
  return std::optional<LedgerEntry>(it->second);
}

Status MemoryLedger::Put(const std::string& request_id, const LedgerEntry& entry) {
  std::lock_guard lock(mu_);
  entries_[request_id] = entry;
  return Status::Ok();
}

Result<ClaimResult> MemoryLedger::Claim(const std::string& request_id, const std::string& owner,
                                        int lease_seconds) {
  std::lock_guard lock(mu_);
  if (entries_.contains(request_id)) return ClaimResult::kDone;
  const auto now = std::chrono::steady_clock::now();
  auto it = claims_.find(request_id);
  if (it != claims_.end() && it->second.owner != owner && it->second.until > now) {
    return ClaimResult::kBusy;
  }
  claims_[request_id] = Held{.owner = owner, .until = now + std::chrono::seconds(lease_seconds)};
  return ClaimResult::kClaimed;
}

Status MemoryLedger::Release(const std::string& request_id, const std::string& owner) {
  std::lock_guard lock(mu_);
  auto it = claims_.find(request_id);
  if (it != claims_.end() && it->second.owner == owner) claims_.erase(it);
  return Status::Ok();
}

namespace {

constexpr int kBusyTimeoutMs = 10'000;
constexpr int kPruneEveryPuts = 1'000;

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct SqliteLedger::Impl {
  sqlite3* db = nullptr;
  sqlite3_stmt* lookup = nullptr;
  sqlite3_stmt* put = nullptr;
  sqlite3_stmt* prune = nullptr;
  sqlite3_stmt* claim_get = nullptr;
  sqlite3_stmt* claim_put = nullptr;
  sqlite3_stmt* claim_drop = nullptr;
  sqlite3_stmt* claims_prune = nullptr;
  int64_t keep_seconds = 0;
  int puts = 0;
  std::mutex mu;  // one connection; statements are not shared across threads

  Status Error(const std::string& what) const {
    return Status::IOError("ledger: " + what + ": " + sqlite3_errmsg(db));
  }

  ~Impl() {
    sqlite3_finalize(lookup);
    sqlite3_finalize(put);
    sqlite3_finalize(prune);
    sqlite3_finalize(claim_get);
    sqlite3_finalize(claim_put);
    sqlite3_finalize(claim_drop);
    sqlite3_finalize(claims_prune);
    if (db != nullptr) sqlite3_close(db);
  }
};

SqliteLedger::SqliteLedger(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SqliteLedger::~SqliteLedger() = default;

Result<std::unique_ptr<SqliteLedger>> SqliteLedger::Open(const std::string& path,
                                                         int64_t keep_seconds) {
  std::error_code ec;
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  auto impl = std::make_unique<Impl>();
  impl->keep_seconds = keep_seconds;
  InstallSqlitePageCache();  // before SQLite's first open in the process
  if (sqlite3_open_v2(path.c_str(), &impl->db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    return Status::IOError("ledger: cannot open " + path + ": " +
                           (impl->db ? sqlite3_errmsg(impl->db) : "out of memory"));
  }
  sqlite3_busy_timeout(impl->db, kBusyTimeoutMs);
  const char* setup =
      "PRAGMA journal_mode=WAL;"
      "PRAGMA synchronous=NORMAL;"
      "CREATE TABLE IF NOT EXISTS requests ("
      "  request_id TEXT PRIMARY KEY,"
      "  state INTEGER NOT NULL,"
      "  event TEXT NOT NULL,"
      "  updated INTEGER NOT NULL);"
      "CREATE INDEX IF NOT EXISTS requests_updated ON requests(updated);"
      "CREATE TABLE IF NOT EXISTS claims ("
      "  request_id TEXT PRIMARY KEY,"
      "  owner TEXT NOT NULL,"
      "  until INTEGER NOT NULL);";
  char* message = nullptr;
  if (sqlite3_exec(impl->db, setup, nullptr, nullptr, &message) != SQLITE_OK) {
    std::string text = message ? message : "unknown error";
    sqlite3_free(message);
    return Status::IOError("ledger: cannot set up " + path + ": " + text);
  }
  auto prepare = [&](const char* sql, sqlite3_stmt** out) {
    return sqlite3_prepare_v2(impl->db, sql, -1, out, nullptr) == SQLITE_OK;
  };
  if (!prepare("SELECT state, event FROM requests WHERE request_id = ?1", &impl->lookup) ||
      !prepare("INSERT INTO requests(request_id, state, event, updated) VALUES (?1, ?2, ?3, ?4) "
               "ON CONFLICT(request_id) DO UPDATE SET state = ?2, event = ?3, updated = ?4",
               &impl->put) ||
      !prepare("DELETE FROM requests WHERE updated < ?1", &impl->prune) ||
      !prepare("SELECT owner, until FROM claims WHERE request_id = ?1", &impl->claim_get) ||
      !prepare("INSERT INTO claims(request_id, owner, until) VALUES (?1, ?2, ?3) "
               "ON CONFLICT(request_id) DO UPDATE SET owner = ?2, until = ?3",
               &impl->claim_put) ||
      !prepare("DELETE FROM claims WHERE request_id = ?1 AND owner = ?2", &impl->claim_drop) ||
      !prepare("DELETE FROM claims WHERE until < ?1", &impl->claims_prune)) {
    return impl->Error("prepare");
  }
  return std::unique_ptr<SqliteLedger>(new SqliteLedger(std::move(impl)));
}

Result<std::optional<LedgerEntry>> SqliteLedger::Lookup(const std::string& request_id) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  sqlite3_reset(s.lookup);
  sqlite3_bind_text(s.lookup, 1, request_id.data(), static_cast<int>(request_id.size()),
                    SQLITE_TRANSIENT);
  const int rc = sqlite3_step(s.lookup);
  if (rc == SQLITE_DONE) return std::optional<LedgerEntry>();
  if (rc != SQLITE_ROW) return s.Error("lookup");
  LedgerEntry entry;
  entry.state = sqlite3_column_int(s.lookup, 0) == 1 ? LedgerEntry::State::kPublished
                                                     : LedgerEntry::State::kPending;
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(s.lookup, 1));
  entry.event.assign(text ? text : "", static_cast<size_t>(sqlite3_column_bytes(s.lookup, 1)));
  sqlite3_reset(s.lookup);
  return std::optional<LedgerEntry>(std::move(entry));
}

Status SqliteLedger::Put(const std::string& request_id, const LedgerEntry& entry) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  const int64_t now = NowSeconds();
  sqlite3_reset(s.put);
  sqlite3_bind_text(s.put, 1, request_id.data(), static_cast<int>(request_id.size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_int(s.put, 2, entry.state == LedgerEntry::State::kPublished ? 1 : 0);
  sqlite3_bind_text(s.put, 3, entry.event.data(), static_cast<int>(entry.event.size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_int64(s.put, 4, now);
  if (sqlite3_step(s.put) != SQLITE_DONE) {
    Status error = s.Error("put");
    sqlite3_reset(s.put);
    return error;
  }
  sqlite3_reset(s.put);
  if (++s.puts % kPruneEveryPuts == 0) {
    sqlite3_reset(s.prune);
    sqlite3_bind_int64(s.prune, 1, now - s.keep_seconds);
    sqlite3_step(s.prune);
    sqlite3_reset(s.prune);
    sqlite3_reset(s.claims_prune);
    sqlite3_bind_int64(s.claims_prune, 1, now - 3600);
    sqlite3_step(s.claims_prune);
    sqlite3_reset(s.claims_prune);
  }
  return Status::Ok();
}

Result<ClaimResult> SqliteLedger::Claim(const std::string& request_id, const std::string& owner,
                                        int lease_seconds) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  // One transaction holding the database's write lock: the check and the claim are atomic
  // across every process sharing the file.
  if (sqlite3_exec(s.db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return s.Error("claim");
  }
  auto finish = [&s](Result<ClaimResult> result) -> Result<ClaimResult> {
    const char* end = result.ok() ? "COMMIT" : "ROLLBACK";
    if (sqlite3_exec(s.db, end, nullptr, nullptr, nullptr) != SQLITE_OK && result.ok()) {
      sqlite3_exec(s.db, "ROLLBACK", nullptr, nullptr, nullptr);
      return s.Error("claim commit");
    }
    return result;
  };
  auto bind_id = [&request_id](sqlite3_stmt* st) {
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, request_id.data(), static_cast<int>(request_id.size()),
                      SQLITE_TRANSIENT);
  };
  bind_id(s.lookup);
  int rc = sqlite3_step(s.lookup);
  sqlite3_reset(s.lookup);
  if (rc == SQLITE_ROW) return finish(ClaimResult::kDone);
  if (rc != SQLITE_DONE) return finish(s.Error("claim lookup"));
  const int64_t now = NowSeconds();
  bind_id(s.claim_get);
  rc = sqlite3_step(s.claim_get);
  if (rc == SQLITE_ROW) {
    const auto* held = reinterpret_cast<const char*>(sqlite3_column_text(s.claim_get, 0));
    const int64_t until = sqlite3_column_int64(s.claim_get, 1);
    const bool other = held == nullptr || owner != held;
    sqlite3_reset(s.claim_get);
    if (other && until > now) return finish(ClaimResult::kBusy);
  } else {
    sqlite3_reset(s.claim_get);
    if (rc != SQLITE_DONE) return finish(s.Error("claim read"));
  }
  bind_id(s.claim_put);
  sqlite3_bind_text(s.claim_put, 2, owner.data(), static_cast<int>(owner.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(s.claim_put, 3, now + lease_seconds);
  rc = sqlite3_step(s.claim_put);
  sqlite3_reset(s.claim_put);
  if (rc != SQLITE_DONE) return finish(s.Error("claim write"));
  return finish(ClaimResult::kClaimed);
}

Status SqliteLedger::Release(const std::string& request_id, const std::string& owner) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  sqlite3_reset(s.claim_drop);
  sqlite3_bind_text(s.claim_drop, 1, request_id.data(), static_cast<int>(request_id.size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_text(s.claim_drop, 2, owner.data(), static_cast<int>(owner.size()),
                    SQLITE_TRANSIENT);
  const int rc = sqlite3_step(s.claim_drop);
  sqlite3_reset(s.claim_drop);
  return rc == SQLITE_DONE ? Status::Ok() : s.Error("release");
}

}  // namespace tidepool::pipeline
