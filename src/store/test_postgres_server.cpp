#include "store/test_postgres_server.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace tidepool::store::testing {
namespace {

namespace fs = std::filesystem;

constexpr int kStartAttempts = 3;  // a free port can be taken before the server binds it
constexpr size_t kLogTailBytes = 2'000;

const char* const kRequiredPrograms[] = {"initdb", "pg_ctl", "postgres"};

bool HasServerPrograms(const fs::path& dir) {
  for (const char* program : kRequiredPrograms) {
    if (::access((dir / program).c_str(), X_OK) != 0) return false;
  }
  return true;
}

// $TIDEPOOL_POSTGRES_BINDIR, else the newest /usr/lib/postgresql/N/bin (Debian's layout).
Result<std::string> FindBinDir() {
  if (const char* configured = std::getenv("TIDEPOOL_POSTGRES_BINDIR")) {
    if (HasServerPrograms(configured)) return std::string(configured);
    return Status::FailedPrecondition(std::string("TIDEPOOL_POSTGRES_BINDIR=") + configured +
                                      " lacks initdb, pg_ctl or postgres");
  }
  std::string best;
  int best_version = -1;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    const std::string name = entry.path().filename().string();
    const int version = std::atoi(name.c_str());
    if (version > best_version && HasServerPrograms(entry.path() / "bin")) {
      best_version = version;
      best = (entry.path() / "bin").string();
    }
  }
  if (best.empty()) {
    return Status::FailedPrecondition(
        "the PostgreSQL server programs (initdb, pg_ctl, postgres) are not installed: looked in "
        "/usr/lib/postgresql/*/bin and $TIDEPOOL_POSTGRES_BINDIR. Install the Debian package "
        "postgresql (scripts/setup does).");
  }
  return best;
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t length = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string RandomPassword() {
  std::random_device random;
  std::ostringstream out;
  for (int i = 0; i < 4; ++i) out << std::hex << random();
  return out.str();
}

std::string LogTail(const std::string& path) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > kLogTailBytes) text = "..." + text.substr(text.size() - kLogTailBytes);
  return text;
}

std::vector<char*> Pointers(std::vector<std::string>& argv) {
  std::vector<char*> pointers;
  for (auto& arg : argv) pointers.push_back(arg.data());
  pointers.push_back(nullptr);
  return pointers;
}

}  // namespace

Result<std::unique_ptr<TestPostgresServer>> TestPostgresServer::Start() {
  auto server = std::unique_ptr<TestPostgresServer>(new TestPostgresServer);
  TP_ASSIGN_OR_RETURN(server->bin_dir_, FindBinDir());
  if (::geteuid() == 0) {
    const passwd* postgres = ::getpwnam("postgres");
    if (postgres == nullptr) {
      return Status::FailedPrecondition(
          "running as root, and PostgreSQL refuses to: there is no postgres user to run it as "
          "(the Debian package postgresql creates it)");
    }
    for (const char* candidate : {"/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"}) {
      if (::access(candidate, X_OK) == 0) {
        server->runuser_ = candidate;
        break;
      }
    }
    if (server->runuser_.empty()) {
      return Status::FailedPrecondition("running as root, and runuser is not installed");
    }
    server->as_postgres_user_ = true;
    server->postgres_uid_ = postgres->pw_uid;
    server->postgres_gid_ = postgres->pw_gid;
  }

  // /tmp, not $TMPDIR: the socket path must stay short (108 bytes).
  std::string dir = "/tmp/tidepool-pg-XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) {
    return Status::IOError("cannot make a temporary directory: " +
                           std::string(std::strerror(errno)));
  }
  server->dir_ = dir;
  TP_RETURN_IF_ERROR(server->StartWatchdog());
  server->password_ = RandomPassword();
  const std::string password_file = dir + "/password";
  {
    std::ofstream out(password_file);
    out << server->password_ << "\n";
  }
  if (server->as_postgres_user_ &&
      (::chown(dir.c_str(), server->postgres_uid_, server->postgres_gid_) != 0 ||
       ::chown(password_file.c_str(), server->postgres_uid_, server->postgres_gid_) != 0)) {
    return Status::IOError("cannot hand " + dir + " to the postgres user");
  }
  TP_RETURN_IF_ERROR(server->RunTool(
      "initdb",
      {"-D", dir + "/data", "-U", "tidepool", "--pwfile=" + password_file, "--auth-local=trust",
       "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"}));
  fs::remove(password_file);

  Status started;
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    server->port_ = FreePort();
    started = server->StartServer();
    if (started.ok()) break;
  }
  TP_RETURN_IF_ERROR(started);
  return server;
}

TestPostgresServer::~TestPostgresServer() {
  (void)Stop();
}

Status TestPostgresServer::StartServer() {
  const std::string options = "-c listen_addresses=127.0.0.1 -p " + std::to_string(port_) + " -k " +
                              dir_ +
                              " -c fsync=off -c full_page_writes=off -c synchronous_commit=off";
  TP_RETURN_IF_ERROR(RunTool("pg_ctl", {"-D", dir_ + "/data", "-l", dir_ + "/server.log", "-w",
                                        "-t", "60", "-o", options, "start"}));
  running_ = true;
  return Status::Ok();
}

Status TestPostgresServer::StopServer() {
  TP_RETURN_IF_ERROR(
      RunTool("pg_ctl", {"-D", dir_ + "/data", "-m", "fast", "-w", "-t", "60", "stop"}));
  running_ = false;
  return Status::Ok();
}

Status TestPostgresServer::Stop() {
  Status stopped;
  if (running_) stopped = StopServer();
  if (watchdog_fd_ >= 0) {
    // One byte: stopped here, nothing for the watchdog to do.
    (void)!::write(watchdog_fd_, "x", 1);
    ::close(watchdog_fd_);
    watchdog_fd_ = -1;
    int status = 0;
    ::waitpid(watchdog_pid_, &status, 0);
  }
  if (!dir_.empty()) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    dir_.clear();
  }
  return stopped;
}

Status TestPostgresServer::RunTool(const std::string& program,
                                   const std::vector<std::string>& args) {
  std::vector<std::string> argv;
  if (as_postgres_user_) argv = {runuser_, "-u", "postgres", "--"};
  argv.push_back(bin_dir_ + "/" + program);
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> pointers = Pointers(argv);
  const std::string log = dir_ + "/tools.log";
  const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return Status::IOError("cannot open " + log);

  const pid_t pid = ::fork();
  if (pid == 0) {
    // The child of a threaded process: only async-signal-safe calls until exec.
    if (::chdir(dir_.c_str()) != 0) ::_exit(126);  // the postgres user may not read our cwd
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execv(pointers[0], pointers.data());
    ::_exit(127);
  }
  ::close(log_fd);
  if (pid < 0) return Status::Internal("fork: " + std::string(std::strerror(errno)));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  return Status::Internal(program + " failed (wait status " + std::to_string(status) +
                          "); its output:\n" + LogTail(log) + "\nthe server log:\n" +
                          LogTail(dir_ + "/server.log"));
}

Status TestPostgresServer::StartWatchdog() {
  // Everything the watchdog runs is built before fork: after it, async-signal-safe calls only.
  std::vector<std::string> stop;
  if (as_postgres_user_) stop = {runuser_, "-u", "postgres", "--"};
  stop.insert(stop.end(),
              {bin_dir_ + "/pg_ctl", "-D", dir_ + "/data", "-m", "immediate", "-w", "stop"});
  std::vector<std::string> remove = {"/bin/rm", "-rf", dir_};
  std::vector<char*> stop_argv = Pointers(stop);
  std::vector<char*> remove_argv = Pointers(remove);
  const std::string dir = dir_;

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Status::Internal("pipe2 failed");
  const int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[1]);
    ::setsid();  // out of the test's process group: a Ctrl-C or group kill spares it
    // Let go of the test's stdout and stderr: ctest waits for them to close.
    for (const int fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}) ::dup2(null_fd, fd);
    char byte = 0;
    ssize_t n = 0;
    do {
      n = ::read(fds[0], &byte, 1);
    } while (n < 0 && errno == EINTR);
    if (n == 1) ::_exit(0);
    // End of file without the byte: the test process died without Stop().
    const pid_t stopper = ::fork();
    if (stopper == 0) {
      if (::chdir(dir.c_str()) != 0) ::_exit(126);
      ::execv(stop_argv[0], stop_argv.data());
      ::_exit(127);
    }
    if (stopper > 0) ::waitpid(stopper, nullptr, 0);
    if (::chdir("/") != 0) ::_exit(126);
    ::execv(remove_argv[0], remove_argv.data());
    ::_exit(127);
  }
  ::close(fds[0]);
  if (null_fd >= 0) ::close(null_fd);
  if (pid < 0) {
    ::close(fds[1]);
    return Status::Internal("fork: " + std::string(std::strerror(errno)));
  }
  watchdog_fd_ = fds[1];
  watchdog_pid_ = pid;
  return Status::Ok();
}

Result<std::string> TestPostgresServer::CreateDatabase() {
  const std::string name = "store_test_" + std::to_string(++databases_);
  PGconn* conn = PQconnectdb(Conninfo("postgres").c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    Status error = Status::Unavailable(std::string("cannot connect: ") + PQerrorMessage(conn));
    PQfinish(conn);
    return error;
  }
  char* quoted = PQescapeIdentifier(conn, name.c_str(), name.size());
  PGresult* result = PQexec(conn, ("CREATE DATABASE " + std::string(quoted)).c_str());
  PQfreemem(quoted);
  Status status;
  if (PQresultStatus(result) != PGRES_COMMAND_OK) {
    status = Status::Internal(std::string("CREATE DATABASE: ") + PQresultErrorMessage(result));
  }
  PQclear(result);
  PQfinish(conn);
  TP_RETURN_IF_ERROR(status);
  return name;
}

std::string TestPostgresServer::Conninfo(const std::string& database) const {
  return "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=" + database +
         " user=tidepool password=" + password_;
}

std::string TestPostgresServer::Uri(const std::string& database) const {
  return "postgresql://tidepool:" + password_ + "@127.0.0.1:" + std::to_string(port_) + "/" +
         database;
}

}  // namespace tidepool::store::testing
