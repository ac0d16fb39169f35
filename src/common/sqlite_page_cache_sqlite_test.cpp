// The wrapper installed under SQLite itself: every write pattern that moves, creates past the
// end, or drops pages (b-tree balances at random keys, savepoints rolled back after the file
// grew, deletes) leaves a database that passes SQLite's integrity check and holds exactly what
// was committed. Its own binary: the wrapper is installed once per process, before SQLite
// starts.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <set>
#include <string>

#include "common/sqlite_page_cache.h"

namespace tidepool {
namespace {

class Db {
 public:
  explicit Db(const std::string& path) {
    EXPECT_EQ(
        sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr),
        SQLITE_OK);
  }
  ~Db() { sqlite3_close(db_); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  void Exec(const std::string& sql) {
    char* error = nullptr;
    const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error);
    EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << (error != nullptr ? error : "");
    sqlite3_free(error);
  }
  std::string Text(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sql;
    std::string out;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      const auto* text = sqlite3_column_text(stmt, 0);
      out = text != nullptr ? reinterpret_cast<const char*>(text) : "";
    }
    sqlite3_finalize(stmt);
    return out;
  }
  void Insert(const std::string& key, size_t value_bytes) {
    sqlite3_stmt* stmt = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db_, "INSERT INTO kv (k, v) VALUES (?, ?)", -1, &stmt, nullptr),
              SQLITE_OK);
    const std::string value(value_bytes, 'v');
    sqlite3_bind_text(stmt, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt, 2, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
    EXPECT_EQ(sqlite3_step(stmt), SQLITE_DONE);
    sqlite3_finalize(stmt);
  }

 private:
  sqlite3* db_ = nullptr;
};

class SqlitePageCacheTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tidepool-pcache-" + std::to_string(::getpid()) + "-" + std::to_string(GetParam()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST(SqlitePageCacheInstall, InstallsBeforeSqliteStartsAndOnlyOnce) {
  ASSERT_TRUE(InstallSqlitePageCache());
  EXPECT_TRUE(InstallSqlitePageCache()) << "a second call reports the wrapper installed";
}

// GetParam(): the cache size in pages, small enough to evict under the test's writes or large
// enough to hold the whole database.
TEST_P(SqlitePageCacheTest, RandomWritesSavepointsAndDeletesKeepTheDatabaseIntact) {
  ASSERT_TRUE(InstallSqlitePageCache());
  Db db((dir_ / "t.db").string());
  db.Exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA cache_size = " +
          std::to_string(GetParam()));
  db.Exec("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID");
  std::mt19937_64 random(42);
  std::set<std::string> committed;
  for (int transaction = 0; transaction < 400; ++transaction) {
    db.Exec("BEGIN IMMEDIATE");
    std::set<std::string> kept = committed;
    for (int write = 0; write < 8; ++write) {
      db.Exec("SAVEPOINT one");
      std::set<std::string> added;
      // Large values at random keys: page splits, balances, overflow pages, a growing file.
      const int rows = static_cast<int>(random() % 12) + 1;
      for (int i = 0; i < rows; ++i) {
        const std::string key = std::to_string(random());
        if (kept.count(key) != 0 || added.count(key) != 0) continue;
        db.Insert(key, 200 + random() % 3000);
        added.insert(key);
      }
      if (random() % 3 == 0) {
        db.Exec("ROLLBACK TO one");
      } else {
        kept.insert(added.begin(), added.end());
      }
      db.Exec("RELEASE one");
    }
    if (transaction % 5 == 4 && !kept.empty()) {
      // Deletes free pages; the next transactions reuse them.
      const std::string first = *kept.begin();
      db.Exec("DELETE FROM kv WHERE k <= '" + first + "' OR k LIKE '%7'");
      for (auto it = kept.begin(); it != kept.end();) {
        it = (*it <= first || it->back() == '7') ? kept.erase(it) : std::next(it);
      }
    }
    if (random() % 10 == 0) {
      db.Exec("ROLLBACK");
      continue;
    }
    db.Exec("COMMIT");
    committed = std::move(kept);
  }
  EXPECT_EQ(db.Text("PRAGMA integrity_check"), "ok");
  EXPECT_EQ(db.Text("SELECT COUNT(*) FROM kv"), std::to_string(committed.size()));
  std::string expected_keys;
  for (const auto& key : committed) expected_keys += key + ",";
  EXPECT_EQ(db.Text("SELECT group_concat(k, ',') || ',' FROM (SELECT k FROM kv ORDER BY k)"),
            expected_keys);
  EXPECT_GT(std::stoll(db.Text("PRAGMA page_count")), 500);
}

INSTANTIATE_TEST_SUITE_P(CacheSizes, SqlitePageCacheTest, ::testing::Values(64, 100000));

}  // namespace
}  // namespace tidepool
