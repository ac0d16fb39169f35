// The store suite (store_test.cpp) on the SQLite engine, and what only SQLite has: the file and
// its directory, WAL, several processes sharing one file, sqlite: URLs.
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "store/migrations.h"
#include "store/sqlite_checkpoints.h"
#include "store/store.h"
#include "store/store_test.h"

namespace tidepool::store::testing {
namespace {

std::string MakeTempDir() {
  std::string path = (std::filesystem::temp_directory_path() / "tidepool-store-XXXXXX").string();
  if (::mkdtemp(path.data()) == nullptr) return "";
  return path;
}

class SqliteBackend final : public StoreBackend {
 public:
  SqliteBackend() : dir_(MakeTempDir()) {}
  ~SqliteBackend() override {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  // In a directory that does not exist yet: the store creates it.
  std::string path() const { return dir_ + "/data/store/conversations.db"; }

  Result<std::unique_ptr<Store>> Open() override {
    if (dir_.empty()) return Status::IOError("cannot make a temporary directory");
    return OpenSqliteStore(path());
  }

  Result<std::vector<std::vector<std::string>>> Query(const std::string& sql) override {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(path().c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
      sqlite3_close(db);
      return Status::IOError("cannot open " + path());
    }
    sqlite3_busy_timeout(db, 5'000);
    // As any writer of the file must, or SQLite ignores the schema's foreign keys.
    sqlite3_exec(db, "PRAGMA foreign_keys = ON", nullptr, nullptr, nullptr);
    sqlite3_stmt* stmt = nullptr;
    std::vector<std::vector<std::string>> rows;
    int rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr);
    while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      auto& row = rows.emplace_back();
      for (int c = 0; c < sqlite3_column_count(stmt); ++c) {
        const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, c));
        row.emplace_back(text != nullptr ? text : "");
      }
      rc = SQLITE_OK;
    }
    const std::string error = sqlite3_errmsg(db);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    if (rc != SQLITE_DONE) return Status::Internal("sqlite: " + error);
    return rows;
  }

 private:
  std::string dir_;
};

INSTANTIATE_TEST_SUITE_P(Sqlite, StoreTest,
                         ::testing::Values(BackendParam{
                             "sqlite", [] { return std::make_unique<SqliteBackend>(); }}),
                         BackendName);

TEST(SqliteStoreTest, OpenCreatesTheDirectoryAndTheFileInWalMode) {
  SqliteBackend backend;
  ASSERT_FALSE(std::filesystem::exists(backend.path()));
  auto store = backend.Open();
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_TRUE(std::filesystem::exists(backend.path()));
  auto mode = backend.Query("PRAGMA journal_mode");
  ASSERT_TRUE(mode.ok()) << mode.status().ToString();
  EXPECT_EQ(mode->at(0).at(0), "wal");
}

TEST(SqliteStoreTest, APathThatCannotBeOpenedIsUnavailable) {
  auto under_a_file = OpenSqliteStore("/dev/null/store/conversations.db");
  EXPECT_EQ(under_a_file.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(under_a_file.status().message().find("sqlite"), std::string::npos)
      << under_a_file.status().ToString();

  const std::string dir = MakeTempDir();
  auto a_directory = OpenSqliteStore(dir);
  EXPECT_EQ(a_directory.status().code(), StatusCode::kUnavailable)
      << a_directory.status().ToString();
  std::filesystem::remove_all(dir);
}

TEST(SqliteStoreTest, OpenStoreTakesSqliteUrls) {
  SqliteBackend backend;
  auto store = OpenStore("sqlite:" + backend.path());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->engine(), "sqlite");

  EXPECT_EQ(OpenStore("sqlite:").status().code(), StatusCode::kInvalidArgument);
  auto unknown = OpenStore("mysql://user:sup3r-secret@db.example/chat");
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("mysql"), std::string::npos);
  EXPECT_EQ(unknown.status().message().find("sup3r-secret"), std::string::npos)
      << unknown.status().ToString();
  EXPECT_EQ(OpenStore("").status().code(), StatusCode::kInvalidArgument);
}

TEST(SqliteStoreTest, RoleNames) {
  EXPECT_EQ(RoleName(Role::kUser), "user");
  EXPECT_EQ(RoleName(Role::kAssistant), "assistant");
  EXPECT_EQ(RoleName(Role::kError), "error");
}

// A file written by a build with schema version 1 opens with this build: migration 2 moves its
// rows into the new tables, and every kind of row reads back as before.
TEST(SqliteStoreTest, AVersionOneFileIsMigratedWithItsRows) {
  SqliteBackend backend;
  std::filesystem::create_directories(std::filesystem::path(backend.path()).parent_path());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(backend.path().c_str(), &db), SQLITE_OK);
  auto exec = [db](const std::string& sql) {
    char* error = nullptr;
    const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
    const std::string message = error != nullptr ? error : "";
    sqlite3_free(error);
    return rc == SQLITE_OK ? std::string() : message + " in: " + sql;
  };
  ASSERT_EQ(exec("PRAGMA journal_mode = WAL"), "");
  ASSERT_EQ(exec("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT "
                 "NULL, applied_at TEXT NOT NULL DEFAULT '2026-01-01T00:00:00Z')"),
            "");
  const Migration& v1 = Migrations()[0];
  ASSERT_EQ(v1.version, 1);
  for (const std::string_view sql : v1.sqlite) ASSERT_EQ(exec(std::string(sql)), "");
  ASSERT_EQ(exec("INSERT INTO schema_migrations (version, name) VALUES (1, 'v1')"), "");
  // c1: a published message with its reply, an unpublished one with an idempotency key; c2:
  // an error reply; c3: no messages, its next seq past a message deleted by hand.
  ASSERT_EQ(exec("INSERT INTO conversations VALUES ('c1', 'scent', 10, 4), ('c2', 'gift', 20, 3), "
                 "('c3', 'scent', 30, 5)"),
            "");
  ASSERT_EQ(exec("INSERT INTO messages (id, conversation_id, seq, role, text, request_id, "
                 "cards_json, created_micros, published, idempotency_key) VALUES "
                 "('m1', 'c1', 1, 'user', 'hi', 'm1', '', 100, 1, NULL), "
                 "('m1/reply', 'c1', 2, 'assistant', 'hello', 'm1', '{\"cards\":[]}', 110, 0, "
                 "NULL), "
                 "('m2', 'c1', 3, 'user', 'more', 'm2', '', 120, 0, 'key-2'), "
                 "('m3', 'c2', 1, 'user', 'gift?', 'm3', '', 200, 1, NULL), "
                 "('m3/reply', 'c2', 2, 'error', 'failed', 'm3', '', 210, 0, NULL)"),
            "");
  sqlite3_close(db);

  auto store = backend.Open();
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto version = (*store)->SchemaVersion();
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(*version, kSchemaVersion);

  auto c1 = (*store)->History("c1", 10);
  ASSERT_TRUE(c1.ok()) << c1.status().ToString();
  ASSERT_EQ(c1->size(), 3u);
  EXPECT_EQ((*c1)[0].id, "m1");
  EXPECT_TRUE((*c1)[0].published);
  EXPECT_EQ((*c1)[1].id, "m1/reply");
  EXPECT_EQ((*c1)[1].role, Role::kAssistant);
  EXPECT_EQ((*c1)[1].cards_json, "{\"cards\":[]}");
  EXPECT_EQ((*c1)[1].request_id, "m1");
  EXPECT_EQ((*c1)[2].id, "m2");
  EXPECT_FALSE((*c1)[2].published);
  EXPECT_EQ((*c1)[2].created_micros, 120);
  auto c2 = (*store)->History("c2", 10);
  ASSERT_TRUE(c2.ok());
  ASSERT_EQ(c2->size(), 2u);
  EXPECT_EQ((*c2)[1].role, Role::kError);
  auto conversation = (*store)->GetConversation("c2");
  ASSERT_TRUE(conversation.ok() && conversation->has_value());
  EXPECT_EQ((*conversation)->app, "gift");
  EXPECT_EQ((*conversation)->created_micros, 20);

  auto unpublished = (*store)->Unpublished(1'000, 10);
  ASSERT_TRUE(unpublished.ok());
  ASSERT_EQ(unpublished->size(), 1u);
  EXPECT_EQ((*unpublished)[0].id, "m2");

  // The idempotency key still answers with its message; replies stay one per request.
  auto replayed = (*store)->AddUserMessage(UserMessage("c1", "m9", "more"), "key-2");
  ASSERT_TRUE(replayed.ok()) << replayed.status().ToString();
  EXPECT_FALSE(replayed->created);
  EXPECT_EQ(replayed->message.id, "m2");
  auto stored = (*store)->AddReply(Reply("c1", "m1", "again"));
  ASSERT_TRUE(stored.ok());
  EXPECT_FALSE(*stored);

  // New messages continue each conversation's seq.
  auto added = (*store)->AddUserMessage(UserMessage("c1", "m4", "next"), "");
  ASSERT_TRUE(added.ok()) << added.status().ToString();
  EXPECT_EQ(added->message.seq, 4);
  ASSERT_TRUE((*store)->MarkPublished("m2").ok());
  auto none_left = (*store)->Unpublished(1'000, 10);
  ASSERT_TRUE(none_left.ok());
  EXPECT_TRUE(none_left->empty());
}

// The checkpoint policy under a steady stream of commits of 15 pages each, with a background
// checkpoint that ends 3 commits after it began and copies what the WAL held then. The
// background runs about once per kCheckpointPages appended (the first version ran after every
// commit once the WAL held 1,000 pages: 140 fsyncs a second under the saturated benchmark),
// the writer copies only small rests, and the WAL starts over before it grows much past
// kWriterCheckpointPages.
TEST(SqliteStoreTest, CheckpointPolicyCopiesEachPageOnceAndKeepsTheWalBounded) {
  using internal::AfterCommitAction;
  using internal::CheckpointAction;
  constexpr int kPagesPerCommit = 15;
  constexpr int kCommits = 20'000;
  int wal = 0;           // frames in the WAL
  int checkpointed = 0;  // frames the last checkpoint copied
  bool running = false;
  int target = 0, done_at = 0;
  int background = 0, writer = 0, restarts = 0, max_wal = 0, max_writer_copy = 0;
  for (int commit = 0; commit < kCommits; ++commit) {
    if (wal > 0 && checkpointed == wal) {  // a write begins after a complete checkpoint
      wal = 0;
      ++restarts;
    }
    wal += kPagesPerCommit;
    max_wal = std::max(max_wal, wal);
    if (running && commit >= done_at) {
      checkpointed = target;
      running = false;
    }
    switch (AfterCommitAction(wal, checkpointed)) {
      case CheckpointAction::kWriter:
        ++writer;
        max_writer_copy = std::max(max_writer_copy, wal - (checkpointed > wal ? 0 : checkpointed));
        checkpointed = wal;
        break;
      case CheckpointAction::kBackground:
        if (!running) {
          running = true;
          target = wal;
          done_at = commit + 3;
          ++background;
        }
        break;
      case CheckpointAction::kNone:
        break;
    }
  }
  const int appended = kCommits * kPagesPerCommit;
  EXPECT_LE(background, 2 * appended / internal::kCheckpointPages)
      << "background checkpoints ran far more often than once per 1,000 pages";
  EXPECT_GE(background, appended / internal::kWriterCheckpointPages);
  EXPECT_GT(restarts, 0);
  EXPECT_GE(writer, restarts);
  EXPECT_LE(max_writer_copy, internal::kWriterCheckpointRest);
  EXPECT_LE(max_wal, internal::kWriterCheckpointPages + 4 * internal::kWriterCheckpointRest);
  // No checkpoint at all below kCheckpointPages, and the writer never copies much.
  EXPECT_EQ(AfterCommitAction(999, 0), CheckpointAction::kNone);
  EXPECT_EQ(AfterCommitAction(1'000, 0), CheckpointAction::kBackground);
  EXPECT_EQ(AfterCommitAction(1'500, 1'000), CheckpointAction::kNone);
  EXPECT_EQ(AfterCommitAction(4'000, 3'000), CheckpointAction::kBackground);
  EXPECT_EQ(AfterCommitAction(4'000, 3'800), CheckpointAction::kWriter);
  EXPECT_EQ(AfterCommitAction(16'000, 0), CheckpointAction::kWriter);
  EXPECT_EQ(AfterCommitAction(30, 4'000), CheckpointAction::kNone);  // the WAL started over
}

// The writer does not checkpoint at 1,000 pages of WAL (the commit would wait for it): a
// background thread copies the WAL into the database file while the store stays open. And the
// WAL stays bounded under a steady stream of writes: past 4,000 pages the writer checkpoints
// what little is left, so that the WAL starts over.
TEST(SqliteStoreTest, TheWalIsCheckpointedInTheBackgroundAndStaysBounded) {
  SqliteBackend backend;
  auto store = backend.Open();
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  const std::string wal = backend.path() + "-wal";
  const uintmax_t empty = std::filesystem::file_size(backend.path());
  ASSERT_TRUE((*store)->CreateConversation(Conversation{"c1", "scent", 0}).ok());
  const std::string text(3'000, 'x');  // 8,000 messages: about 6,000 pages of 4 KiB
  for (int i = 0; i < 8'000; ++i) {
    ASSERT_TRUE(
        (*store)->AddUserMessage(UserMessage("c1", "m" + std::to_string(i), text), "").ok());
    if (i == 2'000) {
      // About 1,500 pages written: the background thread copies them soon.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (std::filesystem::file_size(backend.path()) < empty + 2'000'000 &&
             std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      EXPECT_GE(std::filesystem::file_size(backend.path()), empty + 2'000'000)
          << "the WAL was not copied into the database in the background";
    }
  }
  // A WAL file keeps the size it reached: 4,000 pages of 4 KiB + 24-byte frame headers, what
  // the background leaves for the writer (sqlite_checkpoints.h), and the last commit's pages.
  EXPECT_LE(std::filesystem::file_size(wal), 4'400u * (4'096 + 24) + 32)
      << "the WAL grew past the writer's checkpoint";
}

// Marks may wait for other writes to share a commit with: marks sent beside a stream of POSTs
// and marks sent alone are all committed, and are on disk for the next process to open the file.
TEST(SqliteStoreTest, MarksWaitingForACommitAreAllWritten) {
  constexpr int kMessages = 60;
  SqliteBackend backend;
  {
    auto store = backend.Open();
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    ASSERT_TRUE((*store)->CreateConversation(Conversation{"c1", "scent", 0}).ok());
    for (int i = 0; i < kMessages; ++i) {
      ASSERT_TRUE(
          (*store)->AddUserMessage(UserMessage("c1", "m" + std::to_string(i), "hi"), "").ok());
    }
    // Half the marks while another thread posts (they ride along), half alone after it.
    std::thread poster([&] {
      for (int i = 0; i < kMessages; ++i) {
        EXPECT_TRUE(
            (*store)->AddUserMessage(UserMessage("c1", "p" + std::to_string(i), "hi"), "").ok());
      }
    });
    for (int i = 0; i < kMessages / 2; ++i) {
      auto marked = (*store)->MarkAllPublished({"m" + std::to_string(i)});
      ASSERT_TRUE(marked.ok()) << marked.status().ToString();
      EXPECT_EQ(*marked, 1);
    }
    poster.join();
    for (int i = kMessages / 2; i < kMessages; ++i) {
      auto marked = (*store)->MarkAllPublished({"m" + std::to_string(i)});
      ASSERT_TRUE(marked.ok()) << marked.status().ToString();
      EXPECT_EQ(*marked, 1);
    }
  }
  auto left = backend.Query("SELECT id FROM unpublished WHERE id LIKE 'm%'");
  ASSERT_TRUE(left.ok()) << left.status().ToString();
  EXPECT_TRUE(left->empty()) << left->size() << " marks were not written";
  auto posts = backend.Query("SELECT COUNT(*) FROM unpublished WHERE id LIKE 'p%'");
  ASSERT_TRUE(posts.ok()) << posts.status().ToString();
  EXPECT_EQ(posts->at(0).at(0), std::to_string(kMessages));
}

// Two processes (two web instances on one machine) write one file at once: seqs stay
// consecutive, one idempotency key stores one message, one request gets one reply.
TEST(SqliteStoreTest, TwoProcessesShareOneFile) {
  constexpr int kMessagesEach = 40;
  SqliteBackend backend;
  {
    auto store = backend.Open();
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    ASSERT_TRUE((*store)->CreateConversation(Conversation{"c1", "app", 0}).ok());
    StoredMessage question;
    question.id = "q";
    question.conversation_id = "c1";
    ASSERT_TRUE((*store)->AddUserMessage(question, "").ok());
  }

  // Each process: its messages, then a message with the shared key and a reply to "q". Its
  // exit code: 1 = the keyed message created, 2 = the reply stored, 64 = a call failed.
  const auto write_all = [&](const std::string& name) -> int {
    auto store = backend.Open();
    if (!store.ok()) return 64;
    int outcome = 0;
    for (int i = 0; i < kMessagesEach; ++i) {
      StoredMessage message;
      message.id = name + "-" + std::to_string(i);
      message.conversation_id = "c1";
      message.text = "hi";
      if (!(*store)->AddUserMessage(message, "").ok()) return 64;
      if (i == kMessagesEach / 2) {
        StoredMessage keyed = message;
        keyed.id = name + "-keyed";
        auto added = (*store)->AddUserMessage(keyed, "shared-key");
        if (!added.ok()) return 64;
        if (added->created) outcome |= 1;
        StoredMessage reply;
        reply.conversation_id = "c1";
        reply.request_id = "q";
        reply.role = Role::kAssistant;
        reply.text = "from " + name;
        auto replied = (*store)->AddReply(reply);
        if (!replied.ok()) return 64;
        if (*replied) outcome |= 2;
      }
    }
    return outcome;
  };

  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(write_all("child"));
  const int parent_outcome = write_all("parent");
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  const int child_outcome = WEXITSTATUS(status);
  ASSERT_NE(parent_outcome & 64, 64);
  ASSERT_NE(child_outcome & 64, 64);
  EXPECT_EQ((parent_outcome & 1) + (child_outcome & 1), 1) << "one keyed message created";
  EXPECT_EQ((parent_outcome & 2) + (child_outcome & 2), 2) << "one reply stored";

  auto store = backend.Open();
  ASSERT_TRUE(store.ok());
  auto history = (*store)->History("c1", 1000);
  ASSERT_TRUE(history.ok()) << history.status().ToString();
  // q, 2 * kMessagesEach, one keyed message, one reply.
  ASSERT_EQ(history->size(), static_cast<size_t>(2 * kMessagesEach + 3));
  for (size_t i = 0; i < history->size(); ++i) {
    EXPECT_EQ((*history)[i].seq, static_cast<int64_t>(i + 1));
  }
}

}  // namespace
}  // namespace tidepool::store::testing
