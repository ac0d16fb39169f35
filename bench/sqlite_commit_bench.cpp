// sqlite_commit_bench: the CPU a small SQLite commit costs, with SQLite's own page cache and
// with tidepool's wrapper around it (src/common/sqlite_page_cache.h), on a table laid out like
// the conversation store's messages (clustered by a random conversation id, a unique random
// message id). One process measures one page cache: SQLite takes its page cache once, before
// it starts. bench/run-sqlite-commit runs both, alternated, and prints the ratio; results in
// docs/benchmarks.md ("SQLite commits: the page cache walk").
//
//   sqlite_commit_bench --page-cache stock|wrapped [--dir DIR] [--rows N] [--commits N]
//                       [--cache-mib N] [--sync off|full]
//
// Prints one line: page_cache, rows, pages (the file's, before the measured commits), commits,
// cpu_us_per_commit, wall_us_per_commit.
#include <sqlite3.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>

#include "common/sqlite_page_cache.h"

namespace {

constexpr int kPreloadRowsPerTransaction = 5'000;
constexpr size_t kTextBytes = 300;   // a user message
constexpr size_t kCardsBytes = 900;  // a reply's cards, every other row

struct Options {
  std::string page_cache;
  std::string dir = "/tmp";
  long rows = 200'000;
  long commits = 20'000;
  long cache_mib = 64;  // the store writer's cache (sqlite_store.cpp)
  std::string sync = "off";
};

[[noreturn]] void Usage(const char* problem) {
  std::fprintf(stderr,
               "sqlite_commit_bench: %s\nusage: sqlite_commit_bench --page-cache stock|wrapped "
               "[--dir DIR] [--rows N] [--commits N] [--cache-mib N] [--sync off|full]\n",
               problem);
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (i + 1 >= argc) Usage("a flag without its value");
    const char* value = argv[++i];
    if (flag == "--page-cache") {
      options.page_cache = value;
    } else if (flag == "--dir") {
      options.dir = value;
    } else if (flag == "--rows") {
      options.rows = std::atol(value);
    } else if (flag == "--commits") {
      options.commits = std::atol(value);
    } else if (flag == "--cache-mib") {
      options.cache_mib = std::atol(value);
    } else if (flag == "--sync") {
      options.sync = value;
    } else {
      Usage("unknown flag");
    }
  }
  if (options.page_cache != "stock" && options.page_cache != "wrapped") {
    Usage("--page-cache is stock or wrapped");
  }
  if (options.sync != "off" && options.sync != "full") Usage("--sync is off or full");
  if (options.rows < 0 || options.commits <= 0 || options.cache_mib <= 0) {
    Usage("--rows, --commits and --cache-mib are positive");
  }
  return options;
}

void Check(sqlite3* db, int rc, const char* what) {
  if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW) return;
  std::fprintf(stderr, "sqlite_commit_bench: %s: %s\n", what, sqlite3_errmsg(db));
  std::exit(1);
}

void Exec(sqlite3* db, const std::string& sql) {
  Check(db, sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), sql.c_str());
}

double ThreadCpuMicros() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

class Inserter {
 public:
  Inserter(sqlite3* db, uint64_t seed) : db_(db), random_(seed) {
    Check(db_,
          sqlite3_prepare_v2(db_,
                             "INSERT INTO messages (conversation_id, seq, id, text, cards_json) "
                             "VALUES (?, 1, ?, ?, ?)",
                             -1, &stmt_, nullptr),
          "prepare");
  }
  ~Inserter() { sqlite3_finalize(stmt_); }
  Inserter(const Inserter&) = delete;
  Inserter& operator=(const Inserter&) = delete;

  void Insert() {
    const std::string conversation = Hex();
    const std::string id = Hex();
    const bool reply = (random_() & 1) != 0;
    sqlite3_bind_text(stmt_, 1, conversation.data(), static_cast<int>(conversation.size()),
                      SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt_, 2, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt_, 3, text_.data(), static_cast<int>(text_.size()), SQLITE_STATIC);
    sqlite3_bind_text(stmt_, 4, cards_.data(), reply ? static_cast<int>(cards_.size()) : 0,
                      SQLITE_STATIC);
    Check(db_, sqlite3_step(stmt_), "insert");
    sqlite3_reset(stmt_);
  }

 private:
  std::string Hex() {
    char buffer[33];
    std::snprintf(buffer, sizeof buffer, "%016llx%016llx",
                  static_cast<unsigned long long>(random_()),
                  static_cast<unsigned long long>(random_()));
    return buffer;
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  std::mt19937_64 random_;
  std::string text_ = std::string(kTextBytes, 't');
  std::string cards_ = std::string(kCardsBytes, 'c');
};

}  // namespace

int main(int argc, char** argv) {
  const Options options = Parse(argc, argv);
  if (options.page_cache == "wrapped" && !tidepool::InstallSqlitePageCache()) {
    std::fprintf(stderr, "sqlite_commit_bench: could not install the page cache\n");
    return 1;
  }
  const std::filesystem::path path = std::filesystem::path(options.dir) /
                                     ("sqlite-commit-bench-" + std::to_string(::getpid()) + ".db");
  sqlite3* db = nullptr;
  Check(db, sqlite3_open(path.c_str(), &db), "open");
  Exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = " + options.sync +
               "; PRAGMA cache_size = -" + std::to_string(options.cache_mib * 1024));
  Exec(db,
       "CREATE TABLE messages (conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, "
       "id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, cards_json TEXT NOT NULL, "
       "PRIMARY KEY (conversation_id, seq)) WITHOUT ROWID");
  {
    Inserter preload(db, 1);
    for (long done = 0; done < options.rows;) {
      Exec(db, "BEGIN");
      for (int i = 0; i < kPreloadRowsPerTransaction && done < options.rows; ++i, ++done) {
        preload.Insert();
      }
      Exec(db, "COMMIT");
    }
    Exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
  }
  long pages = 0;
  {
    sqlite3_stmt* count = nullptr;
    Check(db, sqlite3_prepare_v2(db, "PRAGMA page_count", -1, &count, nullptr), "page_count");
    if (sqlite3_step(count) == SQLITE_ROW)
      pages = static_cast<long>(sqlite3_column_int64(count, 0));
    sqlite3_finalize(count);
  }
  Inserter inserter(db, 2);  // other keys than the preload's
  const double cpu_start = ThreadCpuMicros();
  const auto wall_start = std::chrono::steady_clock::now();
  for (long i = 0; i < options.commits; ++i) {
    Exec(db, "BEGIN IMMEDIATE");
    inserter.Insert();
    Exec(db, "COMMIT");
  }
  const double cpu = ThreadCpuMicros() - cpu_start;
  const double wall =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - wall_start)
          .count();
  sqlite3_close(db);
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::filesystem::remove(path.string() + suffix);
  }
  std::printf(
      "page_cache=%s rows=%ld pages=%ld commits=%ld cache_mib=%ld sync=%s cpu_us_per_commit=%.1f "
      "wall_us_per_commit=%.1f\n",
      options.page_cache.c_str(), options.rows, pages, options.commits, options.cache_mib,
      options.sync.c_str(), cpu / static_cast<double>(options.commits),
      wall / static_cast<double>(options.commits));
  return 0;
}
