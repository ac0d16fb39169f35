#include "queue/test_nats_server.h"

#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

namespace tidepool::queue::testing {
namespace {

constexpr char kDefaultBinary[] = "/usr/sbin/nats-server";
constexpr auto kReadyPatience = std::chrono::seconds(30);
constexpr auto kReadyPoll = std::chrono::milliseconds(100);
constexpr int64_t kProbeTimeoutMillis = 2'000;

std::string Binary() {
  const char* env = std::getenv("TIDEPOOL_NATS_SERVER");
  return env != nullptr && *env != '\0' ? env : kDefaultBinary;
}

// A port nobody listens on right now (the kernel's pick for an ephemeral bind).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

std::string Url(int port) {
  return "nats://127.0.0.1:" + std::to_string(port);
}

// Creates and deletes a stream with as many replicas as there are nodes: succeeds only once
// JetStream (and, in a cluster, its meta leader) is up.
bool ProbeJetStream(const std::vector<std::string>& urls) {
  natsOptions* opts = nullptr;
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  bool ok = false;
  std::vector<const char*> servers;
  for (const auto& u : urls) servers.push_back(u.c_str());
  if (natsOptions_Create(&opts) == NATS_OK &&
      natsOptions_SetServers(opts, servers.data(), static_cast<int>(servers.size())) == NATS_OK &&
      natsOptions_SetTimeout(opts, kProbeTimeoutMillis) == NATS_OK &&
      natsConnection_Connect(&nc, opts) == NATS_OK) {
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = kProbeTimeoutMillis;
    if (natsConnection_JetStream(&js, nc, &jo) == NATS_OK) {
      jsStreamConfig cfg;
      jsStreamConfig_Init(&cfg);
      cfg.Name = "tidepool_probe";
      const char* subjects[] = {"tidepool.probe"};
      cfg.Subjects = subjects;
      cfg.SubjectsLen = 1;
      cfg.Replicas = static_cast<int64_t>(urls.size());
      jsStreamInfo* si = nullptr;
      jsErrCode err = static_cast<jsErrCode>(0);
      ok = js_AddStream(&si, js, &cfg, nullptr, &err) == NATS_OK;
      jsStreamInfo_Destroy(si);
      if (ok) js_DeleteStream(js, "tidepool_probe", nullptr, &err);
      jsCtx_Destroy(js);
    }
  }
  natsConnection_Destroy(nc);
  natsOptions_Destroy(opts);
  return ok;
}

}  // namespace

Result<std::unique_ptr<NatsServers>> NatsServers::Start(int nodes) {
  const std::string binary = Binary();
  if (::access(binary.c_str(), X_OK) != 0) {
    return Status::FailedPrecondition("nats-server not found at " + binary +
                                      " (install Debian's nats-server or set "
                                      "TIDEPOOL_NATS_SERVER)");
  }
  std::unique_ptr<NatsServers> servers(new NatsServers());
  std::string tmpl = (std::filesystem::temp_directory_path() / "tidepool-nats-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) return Status::IOError("mkdtemp " + tmpl);
  servers->root_ = tmpl;
  for (int i = 0; i < nodes; ++i) {
    Node n;
    n.client_port = FreePort();
    n.cluster_port = nodes > 1 ? FreePort() : 0;
    n.store_dir = servers->root_ + "/n" + std::to_string(i);
    servers->nodes_.push_back(n);
  }
  for (int i = 0; i < nodes; ++i) TP_RETURN_IF_ERROR(servers->Spawn(i));
  TP_RETURN_IF_ERROR(servers->WaitReady());
  return servers;
}

NatsServers::~NatsServers() {
  for (int i = 0; i < size(); ++i) Kill(i);
  std::error_code ec;
  if (!root_.empty()) std::filesystem::remove_all(root_, ec);
}

std::vector<std::string> NatsServers::urls() const {
  std::vector<std::string> out;
  for (const auto& n : nodes_) out.push_back(Url(n.client_port));
  return out;
}

Status NatsServers::Spawn(int node) {
  Node& n = nodes_[static_cast<size_t>(node)];
  std::vector<std::string> args = {
      Binary(), "-a",  "127.0.0.1", "-p", std::to_string(n.client_port),
      "-js",    "-sd", n.store_dir, "-n", "n" + std::to_string(node)};
  if (size() > 1) {
    std::string routes;
    for (const auto& other : nodes_) {
      if (&other == &n) continue;
      if (!routes.empty()) routes += ",";
      routes += "nats://127.0.0.1:" + std::to_string(other.cluster_port);
    }
    args.insert(args.end(),
                {"--cluster_name", "tidepool", "--cluster",
                 "nats://127.0.0.1:" + std::to_string(n.cluster_port), "--routes", routes});
  }
  const std::string log = root_ + "/n" + std::to_string(node) + ".log";
  args.insert(args.end(), {"-l", log});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return Status::IOError("fork nats-server");
  if (pid == 0) {
    // A test process that dies (a crash, an abort) takes its servers with it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  n.pid = pid;
  return Status::Ok();
}

Status NatsServers::WaitReady() {
  const auto deadline = std::chrono::steady_clock::now() + kReadyPatience;
  while (std::chrono::steady_clock::now() < deadline) {
    for (const auto& n : nodes_) {
      int status = 0;
      if (n.pid > 0 && ::waitpid(n.pid, &status, WNOHANG) == n.pid) {
        return Status::Internal("nats-server exited at start (see " + root_ + "/*.log)");
      }
    }
    if (ProbeJetStream(urls())) return Status::Ok();
    std::this_thread::sleep_for(kReadyPoll);
  }
  return Status::DeadlineExceeded("nats-server JetStream not ready within 30 s (logs in " + root_ +
                                  ")");
}

void NatsServers::Kill(int node) {
  Node& n = nodes_[static_cast<size_t>(node)];
  if (n.pid <= 0) return;
  ::kill(n.pid, SIGKILL);
  int status = 0;
  ::waitpid(n.pid, &status, 0);
  n.pid = -1;
}

Status NatsServers::Restart(int node) {
  if (nodes_[static_cast<size_t>(node)].pid > 0) return Status::Ok();
  TP_RETURN_IF_ERROR(Spawn(node));
  return WaitReady();
}

}  // namespace tidepool::queue::testing
