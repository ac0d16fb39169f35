// The store suite (store_test.cpp) on the PostgreSQL engine against a real server started once
// for the whole binary (test_postgres_server.h), and what only PostgreSQL has: connection
// errors that keep the password out, statement_timeout, the pool, reconnecting after the
// server restarts, postgresql:// URLs.
//
// Without the PostgreSQL server programs this binary fails (it does not skip): CI installs them.
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "store/store.h"
#include "store/store_test.h"
#include "store/test_postgres_server.h"

namespace tidepool::store::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr int kTestPoolSize = 4;

TestPostgresServer* g_server = nullptr;

class PostgresEnvironment final : public ::testing::Environment {
 public:
  void SetUp() override {
    auto started = TestPostgresServer::Start();
    ASSERT_TRUE(started.ok()) << "the PostgreSQL store tests need a real PostgreSQL server: "
                              << started.status().ToString();
    server_ = std::move(started).value();
    g_server = server_.get();
  }
  void TearDown() override {
    g_server = nullptr;
    if (server_) {
      const Status stopped = server_->Stop();
      EXPECT_TRUE(stopped.ok()) << stopped.ToString();
    }
    server_.reset();
  }

 private:
  std::unique_ptr<TestPostgresServer> server_;
};

[[maybe_unused]] auto* const g_environment =
    ::testing::AddGlobalTestEnvironment(new PostgresEnvironment);

// A statement on its own connection, outside any store (test code: plain PQexec).
class RawConnection {
 public:
  explicit RawConnection(const std::string& conninfo) : conn_(PQconnectdb(conninfo.c_str())) {}
  ~RawConnection() { PQfinish(conn_); }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return PQstatus(conn_) == CONNECTION_OK; }
  std::string error() const { return PQerrorMessage(conn_); }

  Result<std::vector<std::vector<std::string>>> Query(const std::string& sql) {
    PGresult* result = PQexec(conn_, sql.c_str());
    const ExecStatusType status = PQresultStatus(result);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
      Status error = Status::Internal(PQresultErrorMessage(result));
      PQclear(result);
      return error;
    }
    std::vector<std::vector<std::string>> rows;
    for (int r = 0; r < PQntuples(result); ++r) {
      auto& row = rows.emplace_back();
      for (int c = 0; c < PQnfields(result); ++c) row.emplace_back(PQgetvalue(result, r, c));
    }
    PQclear(result);
    return rows;
  }

 private:
  PGconn* conn_;
};

class PostgresBackend final : public StoreBackend {
 public:
  PostgresBackend() {
    if (g_server == nullptr) {
      database_ = Status::FailedPrecondition("no PostgreSQL server");
      return;
    }
    database_ = g_server->CreateDatabase();
  }

  PostgresOptions Options() const {
    PostgresOptions options;
    options.conninfo = g_server->Conninfo(database_.ok() ? *database_ : "");
    options.pool_size = kTestPoolSize;
    return options;
  }

  Result<std::unique_ptr<Store>> Open() override {
    TP_RETURN_IF_ERROR(database_.status());
    return OpenPostgresStore(Options());
  }

  Result<std::vector<std::vector<std::string>>> Query(const std::string& sql) override {
    TP_RETURN_IF_ERROR(database_.status());
    RawConnection conn(Options().conninfo);
    if (!conn.connected()) return Status::Unavailable(conn.error());
    return conn.Query(sql);
  }

 private:
  Result<std::string> database_ = Status::Internal("no database yet");
};

INSTANTIATE_TEST_SUITE_P(Postgres, StoreTest,
                         ::testing::Values(BackendParam{
                             "postgresql", [] { return std::make_unique<PostgresBackend>(); }}),
                         BackendName);

class PostgresStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(g_server, nullptr);
    auto opened = backend_.Open();
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    store_ = std::move(opened).value();
    ASSERT_TRUE(store_->CreateConversation(Conversation{"c1", "app", 0}).ok());
  }

  Result<AddResult> Add(Store& store, const std::string& id) {
    StoredMessage message;
    message.id = id;
    message.conversation_id = "c1";
    message.text = "hi";
    return store.AddUserMessage(message, "");
  }

  PostgresBackend backend_;
  std::unique_ptr<Store> store_;
};

constexpr char kSecret[] = "sup3r-secret-pw";

void ExpectNoSecret(const Status& status) {
  EXPECT_EQ(status.message().find(kSecret), std::string::npos) << status.ToString();
  EXPECT_EQ(status.message().find("sup3r"), std::string::npos) << status.ToString();
}

TEST(PostgresStoreErrorsTest, AnUnreachableServerIsUnavailableAndTheMessageHasNoPassword) {
  const std::string port = std::to_string(g_server->port() + 1);  // nothing listens there
  PostgresOptions keywords;
  keywords.conninfo = "host=127.0.0.1 port=" + port + " dbname=chat user=web password=" + kSecret;
  keywords.connect_timeout_seconds = 2;
  auto opened = OpenPostgresStore(keywords);
  EXPECT_EQ(opened.status().code(), StatusCode::kUnavailable) << opened.status().ToString();
  EXPECT_EQ(opened.status().message().rfind("postgresql: ", 0), 0u) << "names the engine";
  ExpectNoSecret(opened.status());

  auto by_uri =
      OpenStore(std::string("postgresql://web:") + kSecret + "@127.0.0.1:" + port + "/chat");
  EXPECT_EQ(by_uri.status().code(), StatusCode::kUnavailable) << by_uri.status().ToString();
  ExpectNoSecret(by_uri.status());
}

TEST(PostgresStoreErrorsTest, AWrongPasswordIsUnavailableAndTheMessageHasNoPassword) {
  PostgresOptions options;
  options.conninfo = "host=127.0.0.1 port=" + std::to_string(g_server->port()) +
                     " dbname=postgres user=tidepool password=" + kSecret;
  auto opened = OpenPostgresStore(options);
  EXPECT_EQ(opened.status().code(), StatusCode::kUnavailable) << opened.status().ToString();
  EXPECT_NE(opened.status().message().find("authentication"), std::string::npos)
      << opened.status().ToString();
  ExpectNoSecret(opened.status());
}

TEST(PostgresStoreErrorsTest, AConnectionStringThatDoesNotParseIsInvalidAndNotRepeated) {
  for (const std::string& conninfo :
       {std::string("host=127.0.0.1 password=") + kSecret + " sup3r-trailing",
        std::string("postgresql://web:") + kSecret + "%zz@127.0.0.1/chat",
        std::string("host=127.0.0.1 password='") + kSecret}) {
    PostgresOptions options;
    options.conninfo = conninfo;
    auto opened = OpenPostgresStore(options);
    EXPECT_EQ(opened.status().code(), StatusCode::kInvalidArgument) << opened.status().ToString();
    ExpectNoSecret(opened.status());
  }
}

TEST(PostgresStoreErrorsTest, BadOptionsAreInvalid) {
  PostgresOptions options;
  options.conninfo = g_server->Conninfo("postgres");
  options.pool_size = 0;
  EXPECT_EQ(OpenPostgresStore(options).status().code(), StatusCode::kInvalidArgument);
  options.conninfo = "";
  options.pool_size = 1;
  EXPECT_EQ(OpenPostgresStore(options).status().code(), StatusCode::kInvalidArgument);
}

TEST(PostgresStoreErrorsTest, OpenStoreTakesPostgresUrls) {
  auto database = g_server->CreateDatabase();
  ASSERT_TRUE(database.ok()) << database.status().ToString();
  for (const std::string_view scheme : {"postgresql://", "postgres://"}) {
    std::string uri = g_server->Uri(*database);
    uri.replace(0, uri.find("://") + 3, scheme);
    auto store = OpenStore(uri);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    EXPECT_EQ((*store)->engine(), "postgresql");
    EXPECT_TRUE((*store)->Ping().ok());
  }
}

TEST_F(PostgresStoreTest, TheStatementTimeoutEndsAWriteBlockedOnALock) {
  PostgresOptions options = backend_.Options();
  options.statement_timeout_ms = 300;
  auto opened = OpenPostgresStore(options);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  Store& store = **opened;

  RawConnection holder(options.conninfo);
  ASSERT_TRUE(holder.connected()) << holder.error();
  ASSERT_TRUE(holder.Query("BEGIN").ok());
  ASSERT_TRUE(holder.Query("SELECT * FROM conversations WHERE id = 'c1' FOR UPDATE").ok());

  const auto start = steady_clock::now();
  auto blocked = Add(store, "m1");
  const auto waited = steady_clock::now() - start;
  EXPECT_EQ(blocked.status().code(), StatusCode::kDeadlineExceeded) << blocked.status().ToString();
  EXPECT_LT(waited, milliseconds(3'000));

  ASSERT_TRUE(holder.Query("ROLLBACK").ok());
  auto added = Add(store, "m2");  // the connection went back to the pool in working order
  ASSERT_TRUE(added.ok()) << added.status().ToString();
  EXPECT_EQ(added->message.seq, 1);  // nothing of the cancelled write remains
}

TEST_F(PostgresStoreTest, APoolOfOneServesManyThreads) {
  PostgresOptions options = backend_.Options();
  options.pool_size = 1;
  auto opened = OpenPostgresStore(options);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  Store& store = **opened;

  constexpr int kThreads = 6;
  constexpr int kEach = 5;
  std::atomic<int> failures = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kEach; ++k) {
        if (!Add(store, "m" + std::to_string(t) + "-" + std::to_string(k)).ok()) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  auto history = store.History("c1", 100);
  ASSERT_TRUE(history.ok());
  EXPECT_EQ(history->size(), static_cast<size_t>(kThreads * kEach));
}

TEST_F(PostgresStoreTest, WaitingLongerThanPoolWaitTimeoutForAConnectionIsUnavailable) {
  PostgresOptions options = backend_.Options();
  options.pool_size = 1;
  options.pool_wait_timeout_ms = 100;
  options.statement_timeout_ms = 2'000;
  auto opened = OpenPostgresStore(options);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  Store& store = **opened;

  // The pool's one connection waits on a row lock held elsewhere.
  RawConnection holder(options.conninfo);
  ASSERT_TRUE(holder.Query("BEGIN").ok());
  ASSERT_TRUE(holder.Query("SELECT * FROM conversations WHERE id = 'c1' FOR UPDATE").ok());
  auto blocked = std::async(std::launch::async, [&] { return Add(store, "m1"); });
  std::this_thread::sleep_for(milliseconds(300));

  const Status waited = store.Ping();
  EXPECT_EQ(waited.code(), StatusCode::kUnavailable) << waited.ToString();
  EXPECT_NE(waited.message().find("no free connection"), std::string::npos) << waited.ToString();

  ASSERT_TRUE(holder.Query("ROLLBACK").ok());
  auto added = blocked.get();
  EXPECT_TRUE(added.ok()) << added.status().ToString();
  EXPECT_TRUE(store.Ping().ok());
}

TEST_F(PostgresStoreTest, AStoppedServerIsUnavailableAndTheStoreReconnectsWhenItIsBack) {
  // Open every connection of the pool, so that each of them sees the server go.
  std::vector<std::thread> threads;
  for (int t = 0; t < kTestPoolSize; ++t) {
    threads.emplace_back([&, t] { (void)Add(*store_, "before-" + std::to_string(t)); });
  }
  for (auto& thread : threads) thread.join();

  ASSERT_TRUE(g_server->StopServer().ok());
  const Status down = store_->Ping();
  EXPECT_EQ(down.code(), StatusCode::kUnavailable) << down.ToString();
  EXPECT_EQ(down.message().rfind("postgresql: ", 0), 0u) << down.ToString();
  auto add_while_down = Add(*store_, "while-down");
  EXPECT_EQ(add_while_down.status().code(), StatusCode::kUnavailable);
  ASSERT_TRUE(g_server->StartServer().ok());

  // Every call succeeds once the server is back, on whichever pooled connection it gets.
  std::atomic<int> failures = 0;
  threads.clear();
  for (int t = 0; t < kTestPoolSize; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 3; ++k) {
        auto added = Add(*store_, "after-" + std::to_string(t) + "-" + std::to_string(k));
        if (!added.ok()) {
          ADD_FAILURE() << added.status().ToString();
          ++failures;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  auto history = store_->History("c1", 100);
  ASSERT_TRUE(history.ok()) << history.status().ToString();
  EXPECT_EQ(history->size(), static_cast<size_t>(kTestPoolSize * 4));
}

TEST_F(PostgresStoreTest, TheStoreReconnectsAfterAServerRestart) {
  std::vector<std::thread> threads;
  for (int t = 0; t < kTestPoolSize; ++t) {
    threads.emplace_back([&, t] { (void)Add(*store_, "before-" + std::to_string(t)); });
  }
  for (auto& thread : threads) thread.join();

  ASSERT_TRUE(g_server->StopServer().ok());
  ASSERT_TRUE(g_server->StartServer().ok());

  // No call fails: each pooled connection is found closed at checkout and replaced.
  for (int k = 0; k < 2 * kTestPoolSize; ++k) {
    auto added = Add(*store_, "after-" + std::to_string(k));
    EXPECT_TRUE(added.ok()) << added.status().ToString();
  }
}

}  // namespace
}  // namespace tidepool::store::testing
