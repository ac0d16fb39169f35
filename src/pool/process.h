// Child processes for the pool supervisor: spawning with pipes and a status fd, reaping, and
// memory cgroups (v2, else the v1 memory controller).
//
// Thread-safety: the free functions are thread-safe. MemoryCgroupRoot and MemoryCgroup are not;
// the supervisor uses them under its own lock.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tidepool::pool {

// Owns one file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release();
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// The fd number on which a child finds the status pipe (TIDEPOOL_STATUS_FD).
inline constexpr int kStatusFd = 3;

struct SpawnOptions {
  // argv[0] is looked up in the PATH of `env` (else of this process) unless it holds a '/'.
  std::vector<std::string> argv{};
  // The complete environment of the child, "NAME=value" entries.
  std::vector<std::string> env{};
  std::string working_dir{};
  // true: stdout and stderr go to pipes (SpawnedProcess::stdout_read/stderr_read);
  // false: to /dev/null.
  bool capture_output = true;
  // true: the write end of a pipe is the child's fd kStatusFd.
  bool status_pipe = false;
  // When valid: an open `cgroup.procs` of the cgroup the child joins before exec.
  int cgroup_procs_fd = -1;
  // The child's niceness (0-19) when not 0.
  int nice = 0;
  // The CPUs the child may run on; empty: those of the parent.
  std::vector<int> cpus{};
};

struct SpawnedProcess {
  pid_t pid = -1;  // also the child's process group and session id (setsid)
  UniqueFd pidfd{};
  // Read ends, non-blocking and close-on-exec; invalid when not requested.
  UniqueFd stdout_read{};
  UniqueFd stderr_read{};
  UniqueFd status_read{};
};

// Starts a child in its own session (so signals can go to its whole process group), stdin
// /dev/null, signal dispositions and mask reset. Fails, with the child already reaped, when
// the program cannot be executed or the cgroup cannot be joined.
Result<SpawnedProcess> SpawnProcess(const SpawnOptions& options);

struct ExitStatus {
  int code = -1;   // exit code, or -1 when killed by a signal
  int signal = 0;  // the terminating signal, or 0
};

// Reaps `pid`. REQUIRES: the child has exited (its pidfd is readable), so this does not block.
ExitStatus ReapProcess(pid_t pid);

// "code 1", "signal 9 (Killed)".
std::string DescribeExit(const ExitStatus& status);

// A loopback TCP port that was free a moment ago (bound to port 0, then released).
Result<int> PickFreeLoopbackPort();

class MemoryCgroup;

// A cgroup under this process's own memory cgroup that holds the per-instance groups of one
// supervisor. Removed (best effort) on destruction.
class MemoryCgroupRoot {
 public:
  // Finds a writable memory cgroup: a cgroup2 mount whose controllers include memory, else the
  // v1 memory controller; creates `name` below this process's group. The error says why none
  // is usable.
  static Result<std::unique_ptr<MemoryCgroupRoot>> Create(const std::string& name);
  ~MemoryCgroupRoot();
  MemoryCgroupRoot(const MemoryCgroupRoot&) = delete;
  MemoryCgroupRoot& operator=(const MemoryCgroupRoot&) = delete;

  // A new child group with the limit set, swap limited to the same where the kernel allows.
  Result<std::unique_ptr<MemoryCgroup>> CreateChild(const std::string& name, int64_t limit_bytes);

  // Removes a child group once its processes are gone. The kernel may still count an exited
  // process for a moment; such a group is retried later and at destruction.
  void Remove(std::unique_ptr<MemoryCgroup> group);

  int version() const { return version_; }
  const std::string& path() const { return path_; }

 private:
  MemoryCgroupRoot(int version, std::string path) : version_(version), path_(std::move(path)) {}
  void RetryPending();

  int version_;
  std::string path_;
  std::vector<std::string> pending_removal_;
};

class MemoryCgroup {
 public:
  MemoryCgroup(int version, std::string path, UniqueFd procs)
      : version_(version), path_(std::move(path)), procs_(std::move(procs)) {}
  // Removes the group (best effort: it fails while a process is still inside).
  ~MemoryCgroup();
  // Closes the group's files and returns its path without removing it.
  std::string Detach();
  MemoryCgroup(const MemoryCgroup&) = delete;
  MemoryCgroup& operator=(const MemoryCgroup&) = delete;

  int procs_fd() const { return procs_.get(); }
  // How many processes of this group the kernel's OOM killer has killed.
  uint64_t OomKills() const;

 private:
  int version_;
  std::string path_;
  UniqueFd procs_;
};

}  // namespace tidepool::pool
