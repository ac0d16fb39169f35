// A throwaway PostgreSQL server for tests: initdb into a temporary directory, then the server
// on a free loopback port (password authentication over TCP, as in production) with its unix
// socket in that directory. fsync is off: the tests are about the store, not PostgreSQL's disk.
//
// PostgreSQL refuses to run as root; as root (CI), initdb and pg_ctl run as the `postgres`
// user through runuser, in a directory handed to that user. A watchdog process stops the
// server and removes the directory if the test process dies before Stop() (a crash, a
// sanitizer abort, a kill by ctest's timeout), so that no server outlives its test.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tidepool::store::testing {

class TestPostgresServer {
 public:
  // initdb and start. FAILED_PRECONDITION naming what is missing when the PostgreSQL server
  // binaries (or, as root, the postgres user) cannot be found.
  static Result<std::unique_ptr<TestPostgresServer>> Start();
  ~TestPostgresServer();  // Stop()
  TestPostgresServer(const TestPostgresServer&) = delete;
  TestPostgresServer& operator=(const TestPostgresServer&) = delete;

  // Stops the server for good and removes its directory.
  Status Stop();
  // Stops the server (fast shutdown: sessions are ended) and starts it again on the same port;
  // between the two, clients cannot connect.
  Status StopServer();
  Status StartServer();

  // A new, empty database; returns its name.
  Result<std::string> CreateDatabase();

  // Connection strings for `database`, as the tidepool role with its password.
  std::string Conninfo(const std::string& database) const;
  std::string Uri(const std::string& database) const;
  int port() const { return port_; }

 private:
  TestPostgresServer() = default;

  // Runs a PostgreSQL program (as the postgres user when root); its output goes to the log.
  Status RunTool(const std::string& program, const std::vector<std::string>& args);
  Status StartWatchdog();

  std::string bin_dir_;
  std::string dir_;       // the temporary directory: data/, the socket, logs
  std::string password_;  // of the tidepool role
  int port_ = 0;
  bool as_postgres_user_ = false;
  uid_t postgres_uid_ = 0;
  gid_t postgres_gid_ = 0;
  std::string runuser_;
  bool running_ = false;
  int watchdog_fd_ = -1;  // the write end of the watchdog's pipe
  pid_t watchdog_pid_ = -1;
  int databases_ = 0;
};

}  // namespace tidepool::store::testing
