#include "pool/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "linux/close_range.h"

namespace tidepool::pool {
namespace {

constexpr int kExitCodeExecFailed = 127;

std::string ErrnoText(int err) {
  return std::strerror(err);
}

Status ErrnoStatus(const std::string& what, int err) {
  return Status::IOError(what + ": " + ErrnoText(err));
}

// The PATH to search: the child's own, else ours.
std::string SearchPath(const std::vector<std::string>& env) {
  for (const auto& entry : env) {
    if (entry.rfind("PATH=", 0) == 0) return entry.substr(5);
  }
  const char* ours = ::getenv("PATH");
  return ours != nullptr ? ours : "/usr/local/bin:/usr/bin:/bin";
}

// Resolved before fork: the child may only call async-signal-safe functions.
Result<std::string> ResolveProgram(const std::string& program,
                                   const std::vector<std::string>& env) {
  if (program.empty()) return Status::InvalidArgument("empty command");
  if (program.find('/') != std::string::npos) return program;
  std::stringstream dirs(SearchPath(env));
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    // Built by appends: GCC 12 at -O3 warns (-Wrestrict, a false positive) on `dir + "/"`
    // after `dir = "."`, which -Werror turns into an error.
    std::string candidate = dir.empty() ? std::string(".") : dir;
    candidate.append("/").append(program);
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return Status::NotFound("command not found in PATH: " + program);
}

Result<std::pair<UniqueFd, UniqueFd>> MakePipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoStatus("pipe2", errno);
  return std::pair<UniqueFd, UniqueFd>{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

void SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// In the child: places `from` at `to`, clearing close-on-exec. Async-signal-safe.
bool PlaceFd(int from, int to) {
  if (from == to) return ::fcntl(to, F_SETFD, 0) == 0;
  return ::dup2(from, to) == to;
}

[[noreturn]] void ChildFail(int error_pipe, int err) {
  [[maybe_unused]] ssize_t n = ::write(error_pipe, &err, sizeof(err));
  ::_exit(kExitCodeExecFailed);
}

std::string ReadFileText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

bool WriteFileText(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  return ok;
}

bool HasToken(const std::string& list, const std::string& token, char separator) {
  std::stringstream items(list);
  std::string item;
  while (std::getline(items, item, separator)) {
    if (item == token) return true;
  }
  return false;
}

// Whitespace-separated words, as in cgroup.controllers.
bool HasWord(const std::string& text, const std::string& word) {
  std::stringstream words(text);
  std::string item;
  while (words >> item) {
    if (item == word) return true;
  }
  return false;
}

struct Mount {
  std::string root;
  std::string mount_point;
};

// Finds the mount of `fstype` ("cgroup2", or "cgroup" with `super_option` among its options).
std::optional<Mount> FindCgroupMount(const std::string& fstype, const std::string& super_option) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    auto dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::stringstream head(line.substr(0, dash));
    std::stringstream tail(line.substr(dash + 3));
    std::string id, parent, devno, root, mount_point;
    head >> id >> parent >> devno >> root >> mount_point;
    std::string type, source, options;
    tail >> type >> source >> options;
    if (type != fstype) continue;
    if (!super_option.empty() && !HasToken(options, super_option, ',')) continue;
    return Mount{root, mount_point};
  }
  return std::nullopt;
}

// Our group in the hierarchy with `controller` ("" for the cgroup2 unified hierarchy).
std::optional<std::string> OwnCgroupPath(const std::string& controller) {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    auto first = line.find(':');
    auto second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    std::string controllers = line.substr(first + 1, second - first - 1);
    bool match = controller.empty() ? (line.substr(0, first) == "0" && controllers.empty())
                                    : HasToken(controllers, controller, ',');
    if (match) return line.substr(second + 1);
  }
  return std::nullopt;
}

std::string JoinMountPath(const Mount& mount, const std::string& cgroup_path) {
  std::string relative = cgroup_path;
  if (mount.root != "/" && relative.rfind(mount.root, 0) == 0) {
    relative = relative.substr(mount.root.size());
  }
  if (relative == "/") relative.clear();
  return mount.mount_point + relative;
}

Result<std::string> CreateDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoStatus("mkdir " + path, errno);
  }
  return path;
}

Result<std::string> FindV2MemoryBase() {
  auto mount = FindCgroupMount("cgroup2", "");
  if (!mount) return Status::NotFound("no cgroup2 mount");
  auto own = OwnCgroupPath("");
  if (!own) return Status::NotFound("no cgroup2 entry in /proc/self/cgroup");
  std::string base = JoinMountPath(*mount, *own);
  if (!HasWord(ReadFileText(base + "/cgroup.controllers"), "memory")) {
    return Status::NotFound("cgroup2 at " + base + " has no memory controller");
  }
  std::string subtree = ReadFileText(base + "/cgroup.subtree_control");
  if (!HasWord(subtree, "memory") && !WriteFileText(base + "/cgroup.subtree_control", "+memory")) {
    return Status::FailedPrecondition("cannot enable the memory controller below " + base);
  }
  return base;
}

Result<std::string> FindV1MemoryBase() {
  auto mount = FindCgroupMount("cgroup", "memory");
  if (!mount) return Status::NotFound("no cgroup v1 memory mount");
  auto own = OwnCgroupPath("memory");
  if (!own) return Status::NotFound("no memory entry in /proc/self/cgroup");
  return JoinMountPath(*mount, *own);
}

uint64_t ReadKeyedCounter(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string name;
  uint64_t value = 0;
  while (in >> name >> value) {
    if (name == key) return value;
  }
  return 0;
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) Reset(other.Release());
  return *this;
}

int UniqueFd::Release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Result<SpawnedProcess> SpawnProcess(const SpawnOptions& options) {
  if (options.argv.empty()) return Status::InvalidArgument("empty argv");
  TP_ASSIGN_OR_RETURN(std::string program, ResolveProgram(options.argv[0], options.env));

  // Everything the child needs is built here: after fork it may not allocate.
  std::vector<char*> argv;
  for (const auto& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& entry : options.env) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);

  UniqueFd dev_null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!dev_null.valid()) return ErrnoStatus("open /dev/null", errno);
  SpawnedProcess spawned;
  UniqueFd out_write, err_write, status_write;
  if (options.capture_output) {
    TP_ASSIGN_OR_RETURN(auto out, MakePipe());
    TP_ASSIGN_OR_RETURN(auto err, MakePipe());
    spawned.stdout_read = std::move(out.first);
    out_write = std::move(out.second);
    spawned.stderr_read = std::move(err.first);
    err_write = std::move(err.second);
  }
  if (options.status_pipe) {
    TP_ASSIGN_OR_RETURN(auto status, MakePipe());
    spawned.status_read = std::move(status.first);
    status_write = std::move(status.second);
  }
  // Carries errno from the child when exec fails; closed by a successful exec.
  TP_ASSIGN_OR_RETURN(auto error_pipe, MakePipe());

  const char* working_dir = options.working_dir.empty() ? nullptr : options.working_dir.c_str();
  int out_fd = options.capture_output ? out_write.get() : dev_null.get();
  int err_fd = options.capture_output ? err_write.get() : dev_null.get();
  int status_fd = status_write.get();
  int error_fd = error_pipe.second.get();
  int cgroup_fd = options.cgroup_procs_fd;
  const int niceness = options.nice;
  cpu_set_t cpu_set;
  CPU_ZERO(&cpu_set);
  for (int cpu : options.cpus) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) {
      return Status::InvalidArgument("CPU " + std::to_string(cpu) + " is out of range");
    }
    CPU_SET(cpu, &cpu_set);
  }
  const bool pin = !options.cpus.empty();

  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) return ErrnoStatus("fork", errno);
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig = 1; sig < NSIG; ++sig) {
      struct sigaction action {};
      action.sa_handler = SIG_DFL;
      sigaction(sig, &action, nullptr);
    }
    if (::setsid() < 0) ChildFail(error_fd, errno);
    // A supervisor that dies without draining (SIGKILL, crash) must not leave its instances
    // pulling behind it: the next supervisor would start a second set. SIGTERM lets them
    // drain. (The signal is tied to the forking thread; the supervisor forks from threads that
    // live as long as it does.)
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) ChildFail(error_fd, errno);
    if (::getppid() != parent) ::raise(SIGTERM);
    if (cgroup_fd >= 0 && ::write(cgroup_fd, "0", 1) != 1) ChildFail(error_fd, errno);
    if (niceness != 0 && ::setpriority(PRIO_PROCESS, 0, niceness) != 0) {
      ChildFail(error_fd, errno);
    }
    if (pin && ::sched_setaffinity(0, sizeof(cpu_set), &cpu_set) != 0) ChildFail(error_fd, errno);
    if (working_dir != nullptr && ::chdir(working_dir) != 0) ChildFail(error_fd, errno);
    // Targets are placed in increasing order; every source is >= 3 (0-2 are open in the
    // parent), so a later source can only be overwritten by placing fd 3, which comes last.
    if (!PlaceFd(dev_null.get(), STDIN_FILENO) || !PlaceFd(out_fd, STDOUT_FILENO) ||
        !PlaceFd(err_fd, STDERR_FILENO)) {
      ChildFail(error_fd, errno);
    }
    if (status_fd >= 0 && !PlaceFd(status_fd, kStatusFd)) ChildFail(error_fd, errno);
    // Descriptors leaked by other parts of the process without O_CLOEXEC stay out of the child.
    int first_unused = status_fd >= 0 ? kStatusFd + 1 : kStatusFd;
    ::syscall(SYS_close_range, first_unused, ~0U, CLOSE_RANGE_CLOEXEC);
    ::execve(program.c_str(), argv.data(), envp.data());
    ChildFail(error_fd, errno);
  }

  error_pipe.second.Reset();
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(error_pipe.first.get(), &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
    int ignored;
    ::waitpid(pid, &ignored, 0);
    return Status::FailedPrecondition("cannot start " + options.argv[0] + ": " +
                                      ErrnoText(child_errno));
  }

  spawned.pid = pid;
  spawned.pidfd.Reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!spawned.pidfd.valid()) {
    int err = errno;
    ::kill(-pid, SIGKILL);
    int ignored;
    ::waitpid(pid, &ignored, 0);
    return ErrnoStatus("pidfd_open", err);
  }
  for (auto* fd : {&spawned.stdout_read, &spawned.stderr_read, &spawned.status_read}) {
    if (fd->valid()) SetNonBlocking(fd->get());
  }
  return spawned;
}

ExitStatus ReapProcess(pid_t pid) {
  int raw = 0;
  pid_t reaped;
  do {
    reaped = ::waitpid(pid, &raw, 0);
  } while (reaped < 0 && errno == EINTR);
  ExitStatus status;
  if (reaped != pid) return status;
  if (WIFEXITED(raw)) status.code = WEXITSTATUS(raw);
  if (WIFSIGNALED(raw)) status.signal = WTERMSIG(raw);
  return status;
}

std::string DescribeExit(const ExitStatus& status) {
  if (status.signal != 0) {
    const char* name = ::strsignal(status.signal);
    return "signal " + std::to_string(status.signal) + " (" + (name ? name : "?") + ")";
  }
  return "code " + std::to_string(status.code);
}

Result<int> PickFreeLoopbackPort() {
  UniqueFd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock.valid()) return ErrnoStatus("socket", errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus("bind 127.0.0.1:0", errno);
  }
  socklen_t len = sizeof(addr);
  if (::getsockname(sock.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return ErrnoStatus("getsockname", errno);
  }
  return static_cast<int>(ntohs(addr.sin_port));
}

Result<std::unique_ptr<MemoryCgroupRoot>> MemoryCgroupRoot::Create(const std::string& name) {
  constexpr int kV1 = 1;
  constexpr int kV2 = 2;
  auto v2 = FindV2MemoryBase();
  if (v2.ok()) {
    auto dir = CreateDir(*v2 + "/" + name);
    if (dir.ok()) return std::unique_ptr<MemoryCgroupRoot>(new MemoryCgroupRoot(kV2, *dir));
  }
  auto v1 = FindV1MemoryBase();
  if (!v1.ok()) {
    return Status::Unavailable("no writable memory cgroup (v2: " + v2.status().message() +
                               "; v1: " + v1.status().message() + ")");
  }
  auto dir = CreateDir(*v1 + "/" + name);
  if (!dir.ok()) return Status::Unavailable("no writable memory cgroup: " + dir.status().message());
  return std::unique_ptr<MemoryCgroupRoot>(new MemoryCgroupRoot(kV1, *dir));
}

MemoryCgroupRoot::~MemoryCgroupRoot() {
  constexpr int kAttempts = 50;
  constexpr auto kPause = std::chrono::milliseconds(10);
  for (int attempt = 0; attempt < kAttempts && !pending_removal_.empty(); ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(kPause);
    RetryPending();
  }
  ::rmdir(path_.c_str());
}

void MemoryCgroupRoot::RetryPending() {
  std::erase_if(pending_removal_, [](const std::string& dir) {
    return ::rmdir(dir.c_str()) == 0 || errno == ENOENT;
  });
}

void MemoryCgroupRoot::Remove(std::unique_ptr<MemoryCgroup> group) {
  if (group == nullptr) return;
  std::string dir = group->Detach();
  if (::rmdir(dir.c_str()) != 0 && errno != ENOENT) pending_removal_.push_back(dir);
  RetryPending();
}

Result<std::unique_ptr<MemoryCgroup>> MemoryCgroupRoot::CreateChild(const std::string& name,
                                                                    int64_t limit_bytes) {
  TP_ASSIGN_OR_RETURN(std::string dir, CreateDir(path_ + "/" + name));
  std::string limit = std::to_string(limit_bytes);
  bool limited = version_ == 2 ? WriteFileText(dir + "/memory.max", limit)
                               : WriteFileText(dir + "/memory.limit_in_bytes", limit);
  if (!limited) {
    int err = errno;
    ::rmdir(dir.c_str());
    return ErrnoStatus("cannot set the memory limit of cgroup " + dir, err);
  }
  // Without a swap limit the instance would swap instead of being OOM-killed. Absent when the
  // kernel has no swap accounting: then there is nothing to limit.
  if (version_ == 2) {
    WriteFileText(dir + "/memory.swap.max", "0");
  } else {
    WriteFileText(dir + "/memory.memsw.limit_in_bytes", limit);
  }
  UniqueFd procs(::open((dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC));
  if (!procs.valid()) {
    int err = errno;
    ::rmdir(dir.c_str());
    return ErrnoStatus("open " + dir + "/cgroup.procs", err);
  }
  return std::make_unique<MemoryCgroup>(version_, dir, std::move(procs));
}

MemoryCgroup::~MemoryCgroup() {
  procs_.Reset();
  if (!path_.empty()) ::rmdir(path_.c_str());
}

std::string MemoryCgroup::Detach() {
  procs_.Reset();
  return std::exchange(path_, std::string());
}

uint64_t MemoryCgroup::OomKills() const {
  return version_ == 2 ? ReadKeyedCounter(path_ + "/memory.events", "oom_kill")
                       : ReadKeyedCounter(path_ + "/memory.oom_control", "oom_kill");
}

}  // namespace tidepool::pool
