#include "pool/supervisor.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/array.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <tuple>

#include "common/cpu_list.h"
#include "common/thread_name.h"
#include "pool/log_ring.h"
#include "pool/probe.h"
#include "pool/process.h"

extern char** environ;

namespace tidepool::pool {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using WallClock = std::chrono::system_clock;
using std::chrono::milliseconds;

// Reading one pipe yields to other work after this many bytes, so a chatty child cannot
// starve the rest of the pool.
constexpr size_t kReadBudgetPerWakeup = 64 * 1024;
constexpr size_t kReadChunkBytes = 8 * 1024;
constexpr int kPercentTotal = 100;
constexpr int kInstanceSuffixHexDigits = 4;

std::string Seconds(Clock::duration duration) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1fs",
                std::chrono::duration_cast<std::chrono::duration<double>>(duration).count());
  return text;
}

std::string Rfc3339(WallClock::time_point at) {
  std::time_t seconds = WallClock::to_time_t(at);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// The secret's value, without its trailing newline. The error names the file, never a value.
Result<std::string> ReadSecret(const std::string& name, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status::NotFound("secret " + name + ": cannot read file " + path + ": " +
                            std::strerror(errno));
  }
  std::stringstream text;
  text << in.rdbuf();
  std::string value = text.str();
  if (!value.empty() && value.back() == '\n') value.pop_back();
  if (!value.empty() && value.back() == '\r') value.pop_back();
  return value;
}

enum class Stream { kStdout = 0, kStderr = 1, kStatus = 2 };
constexpr int kStreamCount = 3;

// One process of an instance. Shared with the handlers of its asynchronous operations, which
// check `exited` (under the supervisor's lock) before touching anything.
struct Run {
  explicit Run(asio::io_context& io)
      : pidfd(io),
        pipes{asio::posix::stream_descriptor(io), asio::posix::stream_descriptor(io),
              asio::posix::stream_descriptor(io)},
        ready_timer(io),
        kill_timer(io),
        probe_timer(io) {}

  std::string instance_id;
  std::string log_prefix;  // "POOL/rREV/INSTANCE "
  pid_t pid = -1;
  asio::posix::stream_descriptor pidfd;
  std::array<asio::posix::stream_descriptor, kStreamCount> pipes;
  std::array<LineSplitter, kStreamCount> lines;
  std::array<bool, kStreamCount> open{};
  asio::steady_timer ready_timer;
  asio::steady_timer kill_timer;
  asio::steady_timer probe_timer;
  Clock::time_point started{};
  std::vector<std::string> env;
  int port = 0;
  std::unique_ptr<MemoryCgroup> cgroup;
  int64_t memory_limit_bytes = 0;
  // Set while its last output is read after exit: a late "pulling" must not make it available.
  bool exiting = false;
  bool exited = false;
  bool term_sent = false;
  bool liveness_kill = false;
  int probe_failures = 0;
  int inflight = -1;
  bool pulling = false;
};

struct Instance {
  explicit Instance(asio::io_context& io) : restart_timer(io) {}

  std::string id;
  int revision = 0;
  uint64_t sequence = 0;  // creation order: higher is newer
  InstanceState state = InstanceState::kStarting;
  bool draining = false;
  std::shared_ptr<Run> run;
  std::optional<WallClock::time_point> started_at;
  int restarts = 0;
  std::optional<ExitInfo> last_exit;
  milliseconds backoff{0};  // the last restart delay; 0 before the first
  std::deque<Clock::time_point> crash_times;
  bool crash_looping = false;
  asio::steady_timer restart_timer;
};

struct Revision {
  int number = 0;
  std::string digest;
  WallClock::time_point created;
  RevisionSpec spec;
};

}  // namespace

const char* InstanceStateName(InstanceState state) {
  switch (state) {
    case InstanceState::kStarting:
      return "starting";
    case InstanceState::kRunning:
      return "running";
    case InstanceState::kDraining:
      return "draining";
    case InstanceState::kBackoff:
      return "backoff";
    case InstanceState::kCrashLoop:
      return "crash-loop";
    case InstanceState::kStopped:
      return "stopped";
    case InstanceState::kFailed:
      return "failed";
  }
  return "unknown";
}

struct Supervisor::Impl {
  explicit Impl(SupervisorOptions opts)
      : options(std::move(opts)),
        work(asio::make_work_guard(io)),
        log(PoolLogOptions{.ring_lines = options.log_ring_lines,
                           .file_max_bytes = options.log_file_max_bytes,
                           .files_kept = options.log_files_kept,
                           .sink = options.log_sink}),
        rng(std::random_device{}()) {}

  // ---- logging (REQUIRES: mu held)

  void Event(const std::string& text) { log.Append(spec->name + "/supervisor " + text); }
  void InstanceEvent(const Instance& instance, const std::string& text) {
    Event(instance.id + " " + text);
  }

  // ---- lookups (REQUIRES: mu held)

  Instance* Owner(const Run& run) {
    auto it = instances.find(run.instance_id);
    if (it == instances.end() || it->second->run.get() != &run) return nullptr;
    return it->second.get();
  }

  // The revision with the largest share, the newest on a tie.
  int CurrentRevision() const {
    int best = 0;
    int best_percent = -1;
    for (const auto& [revision, percent] : split) {
      if (percent >= best_percent) {
        best = revision;
        best_percent = percent;
      }
    }
    return best;
  }

  // Per-revision instance counts: percent * desired, rounded by largest remainder so they
  // sum to desired.
  std::map<int, int> Targets() const {
    std::map<int, int> targets;
    std::vector<std::pair<int, int>> remainders;  // (remainder, revision)
    int assigned = 0;
    for (const auto& [revision, percent] : split) {
      int product = percent * desired;
      targets[revision] = product / kPercentTotal;
      assigned += product / kPercentTotal;
      remainders.emplace_back(product % kPercentTotal, revision);
    }
    std::sort(remainders.rbegin(), remainders.rend());
    for (size_t i = 0; assigned < desired && i < remainders.size(); ++i, ++assigned) {
      ++targets[remainders[i].second];
    }
    return targets;
  }

  std::string NewInstanceId(int revision) {
    std::uniform_int_distribution<int> digit(0, 15);
    while (true) {
      std::string id = spec->name + "-r" + std::to_string(revision) + "-";
      for (int i = 0; i < kInstanceSuffixHexDigits; ++i) id += "0123456789abcdef"[digit(rng)];
      if (!instances.contains(id)) return id;
    }
  }

  // ---- starting processes (REQUIRES: mu held)

  void StartInstance(int revision) {
    auto instance = std::make_unique<Instance>(io);
    instance->id = NewInstanceId(revision);
    instance->revision = revision;
    instance->sequence = next_sequence++;
    Instance& ref = *instance;
    instances.emplace(ref.id, std::move(instance));
    Spawn(ref);
  }

  MemoryCgroupRoot* CgroupRoot() {
    if (!cgroup_checked) {
      cgroup_checked = true;
      auto root =
          MemoryCgroupRoot::Create("tidepool-" + spec->name + "-" + std::to_string(::getpid()));
      if (root.ok()) {
        cgroup_root = std::move(root).value();
      } else {
        memory_limit_warning = "memory limits are not enforced: " + root.status().message();
        Event("warning: " + memory_limit_warning);
      }
    }
    return cgroup_root.get();
  }

  Result<std::vector<std::string>> InstanceEnv(const Instance& instance, const Revision& revision,
                                               int port) {
    std::map<std::string, std::string> env;
    for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
      std::string text(*entry);
      auto equals = text.find('=');
      if (equals != std::string::npos) env[text.substr(0, equals)] = text.substr(equals + 1);
    }
    for (const auto& [name, value] : options.base_env) env[name] = value;
    for (const auto& [name, value] : revision.spec.env) env[name] = value;
    for (const auto& [name, path] : revision.spec.secrets) {
      TP_ASSIGN_OR_RETURN(env[name], ReadSecret(name, path));
    }
    // The contract variables come last: a spec cannot break them.
    env["TIDEPOOL_POOL"] = spec->name;
    env["TIDEPOOL_REVISION"] = std::to_string(revision.number);
    env["TIDEPOOL_INSTANCE"] = instance.id;
    env["TIDEPOOL_SUBSCRIPTION"] = spec->subscription;
    env["TIDEPOOL_GRACE_PERIOD_SECONDS"] = std::to_string(
        std::chrono::duration_cast<std::chrono::seconds>(spec->grace_period).count());
    env["TIDEPOOL_STATUS_FD"] = std::to_string(kStatusFd);
    if (port != 0) env["PORT"] = std::to_string(port);
    std::vector<std::string> entries;
    entries.reserve(env.size());
    for (const auto& [name, value] : env) entries.push_back(name + "=" + value);
    return entries;
  }

  Status TrySpawn(Instance& instance) {
    const Revision& revision = revisions.at(instance.revision);
    int port = 0;
    if (spec->liveness && !spec->liveness->http_path.empty()) {
      TP_ASSIGN_OR_RETURN(port, PickFreeLoopbackPort());
    }
    TP_ASSIGN_OR_RETURN(std::vector<std::string> env, InstanceEnv(instance, revision, port));
    std::unique_ptr<MemoryCgroup> cgroup;
    int64_t limit = revision.spec.memory_limit_bytes;
    if (limit > 0 && CgroupRoot() != nullptr) {
      auto child =
          cgroup_root->CreateChild(instance.id + "-" + std::to_string(instance.restarts), limit);
      if (child.ok()) {
        cgroup = std::move(child).value();
      } else {
        InstanceEvent(instance,
                      "warning: runs without its memory limit: " + child.status().message());
      }
    }
    SpawnOptions spawn{.argv = {},
                       .env = env,
                       .working_dir = revision.spec.working_dir,
                       .capture_output = true,
                       .status_pipe = true,
                       .cgroup_procs_fd = cgroup ? cgroup->procs_fd() : -1,
                       .nice = revision.spec.nice,
                       .cpus = {}};
    if (!revision.spec.cpus.empty()) {
      TP_ASSIGN_OR_RETURN(spawn.cpus, ParseCpuList(revision.spec.cpus));
    }
    spawn.argv.push_back(revision.spec.command);
    spawn.argv.insert(spawn.argv.end(), revision.spec.args.begin(), revision.spec.args.end());
    TP_ASSIGN_OR_RETURN(SpawnedProcess process, SpawnProcess(spawn));

    auto run = std::make_shared<Run>(io);
    run->instance_id = instance.id;
    run->log_prefix =
        spec->name + "/r" + std::to_string(instance.revision) + "/" + instance.id + " ";
    run->pid = process.pid;
    run->pidfd.assign(process.pidfd.Release());
    UniqueFd* reads[kStreamCount] = {&process.stdout_read, &process.stderr_read,
                                     &process.status_read};
    for (int s = 0; s < kStreamCount; ++s) {
      run->pipes[s].assign(reads[s]->Release());
      run->open[s] = true;
    }
    run->started = Clock::now();
    run->env = std::move(env);
    run->port = port;
    run->cgroup = std::move(cgroup);
    run->memory_limit_bytes = run->cgroup ? limit : 0;
    instance.run = run;
    instance.state = InstanceState::kStarting;
    instance.started_at = WallClock::now();
    InstanceEvent(instance, "started pid " + std::to_string(run->pid) + " (revision " +
                                std::to_string(instance.revision) + ")");
    Watch(run);
    return Status::Ok();
  }

  void Spawn(Instance& instance) {
    Status started = TrySpawn(instance);
    if (started.ok()) return;
    InstanceEvent(instance, "failed to start: " + started.message());
    instance.last_exit = ExitInfo{.start_error = started.message(), .at = WallClock::now()};
    AfterEnd(instance, /*failed=*/true, /*forced_restart=*/false, Clock::duration::zero());
  }

  // ---- watching a process (handlers take mu)

  void Watch(const std::shared_ptr<Run>& run) {
    run->pidfd.async_wait(asio::posix::descriptor_base::wait_read,
                          [this, run](boost::system::error_code ec) {
                            if (ec) return;
                            std::lock_guard lock(mu);
                            OnExit(run);
                          });
    for (int s = 0; s < kStreamCount; ++s) ArmRead(run, static_cast<Stream>(s));
    run->ready_timer.expires_after(options.ready_after);
    run->ready_timer.async_wait([this, run](boost::system::error_code ec) {
      if (ec) return;
      std::lock_guard lock(mu);
      if (run->exited) return;
      if (Instance* instance = Owner(*run)) MarkAvailable(*instance);
    });
    if (spec->liveness) ScheduleProbe(run, spec->liveness->initial_delay);
  }

  void ArmRead(const std::shared_ptr<Run>& run, Stream stream) {
    auto& pipe = run->pipes[static_cast<int>(stream)];
    pipe.async_wait(asio::posix::descriptor_base::wait_read,
                    [this, run, stream](boost::system::error_code ec) {
                      if (ec) return;
                      std::lock_guard lock(mu);
                      if (run->exited) return;
                      if (ReadPipe(*run, stream, kReadBudgetPerWakeup)) ArmRead(run, stream);
                    });
  }

  // Reads what is there, up to `budget` bytes. Returns whether the pipe is still open.
  bool ReadPipe(Run& run, Stream stream, size_t budget) {
    int index = static_cast<int>(stream);
    if (!run.open[index]) return false;
    int fd = run.pipes[index].native_handle();
    std::array<char, kReadChunkBytes> buffer;
    auto emit = [this, &run, stream](std::string_view line) { OnLine(run, stream, line); };
    size_t consumed = 0;
    while (consumed < budget) {
      ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n > 0) {
        run.lines[index].Feed(std::string_view(buffer.data(), static_cast<size_t>(n)), emit);
        consumed += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      run.lines[index].Flush(emit);
      run.open[index] = false;
      return false;
    }
    return true;
  }

  void OnLine(Run& run, Stream stream, std::string_view line) {
    switch (stream) {
      case Stream::kStdout:
        log.Append(run.log_prefix + std::string(line));
        return;
      case Stream::kStderr:
        log.Append(run.log_prefix + "stderr: " + std::string(line));
        return;
      case Stream::kStatus:
        OnStatusLine(run, line);
        return;
    }
  }

  void OnStatusLine(Run& run, std::string_view line) {
    constexpr std::string_view kInflight = "inflight ";
    if (line == "pulling") {
      run.pulling = true;
      Instance* instance = Owner(run);
      if (instance != nullptr && !run.exiting) MarkAvailable(*instance);
    } else if (line == "draining") {
      run.pulling = false;
    } else if (line.starts_with(kInflight)) {
      std::string count(line.substr(kInflight.size()));
      char* end = nullptr;
      long value = std::strtol(count.c_str(), &end, 10);
      if (end != count.c_str() && value >= 0) run.inflight = static_cast<int>(value);
    }
  }

  void MarkAvailable(Instance& instance) {
    if (instance.state != InstanceState::kStarting || instance.draining) return;
    instance.state = InstanceState::kRunning;
    Reconcile();
  }

  void OnExit(const std::shared_ptr<Run>& run) {
    if (run->exited) return;
    run->exiting = true;
    // The leader is a zombie until reaped, so its process group id cannot have been reused:
    // whatever it left behind in the group goes with it.
    ::kill(-run->pid, SIGKILL);
    ExitStatus status = ReapProcess(run->pid);
    for (int s = 0; s < kStreamCount; ++s) {
      ReadPipe(*run, static_cast<Stream>(s), std::numeric_limits<size_t>::max());
      auto emit = [this, &run, s](std::string_view line) {
        OnLine(*run, static_cast<Stream>(s), line);
      };
      run->lines[s].Flush(emit);
    }
    run->exited = true;
    boost::system::error_code ignored;
    run->pidfd.close(ignored);
    for (auto& pipe : run->pipes) pipe.close(ignored);
    run->ready_timer.cancel();
    run->kill_timer.cancel();
    run->probe_timer.cancel();
    bool oom = run->cgroup && run->cgroup->OomKills() > 0;
    if (run->cgroup) cgroup_root->Remove(std::move(run->cgroup));
    Clock::duration ran = Clock::now() - run->started;

    Instance* instance = Owner(*run);
    if (instance == nullptr) return;
    instance->run.reset();
    instance->last_exit =
        ExitInfo{.code = status.code, .signal = status.signal, .oom = oom, .at = WallClock::now()};
    if (oom) {
      ++oom_kills_total;
      InstanceEvent(*instance, "OOM-killed (memory limit " +
                                   std::to_string(run->memory_limit_bytes) + " bytes) after " +
                                   Seconds(ran));
    } else {
      InstanceEvent(*instance, "exited with " + DescribeExit(status) + " after " + Seconds(ran));
    }
    if (instance->draining || stopping) {
      InstanceEvent(*instance, "drained");
      std::string id = instance->id;
      instances.erase(id);
      cv.notify_all();
      Reconcile();
      return;
    }
    bool failed = oom || status.code != 0 || status.signal != 0;
    AfterEnd(*instance, failed, run->liveness_kill, ran);
    Reconcile();
  }

  // An instance's process ended (or could not start): restart it per policy, or leave it.
  void AfterEnd(Instance& instance, bool failed, bool forced_restart, Clock::duration ran) {
    const RestartSpec& restart = spec->restart;
    bool again = forced_restart || restart.policy == RestartPolicy::kAlways ||
                 (restart.policy == RestartPolicy::kOnFailure && failed);
    if (!again || stopping) {
      instance.state = failed ? InstanceState::kFailed : InstanceState::kStopped;
      InstanceEvent(instance, failed ? "failed; not restarted (restart policy never)"
                                     : "stopped; not restarted (exited 0)");
      return;
    }
    Clock::time_point now = Clock::now();
    if (ran >= restart.reset_after) {
      instance.backoff = milliseconds(0);
      instance.crash_times.clear();
      instance.crash_looping = false;
    }
    if (failed || forced_restart) {
      instance.crash_times.push_back(now);
      while (!instance.crash_times.empty() &&
             now - instance.crash_times.front() > restart.crash_loop_window) {
        instance.crash_times.pop_front();
      }
      if (!instance.crash_looping &&
          static_cast<int>(instance.crash_times.size()) >= restart.crash_loop_restarts) {
        instance.crash_looping = true;
        InstanceEvent(instance, "crash-loop: " + std::to_string(instance.crash_times.size()) +
                                    " crashes within " + Seconds(restart.crash_loop_window) +
                                    "; restarting every " + Seconds(restart.max_backoff));
      }
    }
    milliseconds delay = instance.backoff == milliseconds(0)
                             ? restart.initial_backoff
                             : std::min(instance.backoff * 2, restart.max_backoff);
    if (instance.crash_looping) delay = restart.max_backoff;
    instance.backoff = delay;
    instance.state = instance.crash_looping ? InstanceState::kCrashLoop : InstanceState::kBackoff;
    InstanceEvent(instance, "restart in " + Seconds(delay));
    instance.restart_timer.expires_after(delay);
    instance.restart_timer.async_wait([this, id = instance.id](boost::system::error_code ec) {
      if (ec) return;
      std::lock_guard lock(mu);
      auto it = instances.find(id);
      if (it == instances.end() || stopping) return;
      Instance& waiting = *it->second;
      if (waiting.draining || waiting.run != nullptr) return;
      ++waiting.restarts;
      ++restarts_total;
      Spawn(waiting);
    });
  }

  // ---- stopping processes (REQUIRES: mu held)

  // SIGTERM to the process group; SIGKILL when it outlives the grace period.
  void Terminate(const std::shared_ptr<Run>& run) {
    if (run->term_sent) return;
    run->term_sent = true;
    ::kill(-run->pid, SIGTERM);
    milliseconds grace = spec->grace_period;
    run->kill_timer.expires_after(grace);
    run->kill_timer.async_wait([this, run, grace](boost::system::error_code ec) {
      if (ec) return;
      std::lock_guard lock(mu);
      if (run->exited) return;
      ::kill(-run->pid, SIGKILL);
      if (Instance* instance = Owner(*run)) {
        InstanceEvent(*instance, "killed after grace period " + Seconds(grace) + " (SIGKILL)");
      }
    });
  }

  void BeginDrain(Instance& instance) {
    instance.draining = true;
    instance.restart_timer.cancel();
    if (instance.run == nullptr) {
      InstanceEvent(instance, "removed (no process running)");
      std::string id = instance.id;
      instances.erase(id);
      cv.notify_all();
      return;
    }
    instance.state = InstanceState::kDraining;
    InstanceEvent(instance, "draining: SIGTERM, grace period " + Seconds(spec->grace_period));
    Terminate(instance.run);
  }

  // ---- liveness (handlers take mu)

  void ScheduleProbe(const std::shared_ptr<Run>& run, milliseconds delay) {
    run->probe_timer.expires_after(delay);
    run->probe_timer.async_wait([this, run](boost::system::error_code ec) {
      if (ec) return;
      std::lock_guard lock(mu);
      if (run->exited || run->term_sent || !spec->liveness) return;
      const LivenessSpec& liveness = *spec->liveness;
      auto done = [this, run](bool healthy, std::string detail) {
        std::lock_guard done_lock(mu);
        OnProbeResult(run, healthy, detail);
      };
      if (!liveness.http_path.empty()) {
        StartHttpProbe(io, run->port, liveness.http_path, liveness.timeout, std::move(done));
      } else {
        StartExecProbe(io, liveness.exec, run->env, liveness.timeout, std::move(done));
      }
    });
  }

  void OnProbeResult(const std::shared_ptr<Run>& run, bool healthy, const std::string& detail) {
    if (run->exited || run->term_sent || !spec->liveness) return;
    Instance* instance = Owner(*run);
    if (instance == nullptr) return;
    const LivenessSpec& liveness = *spec->liveness;
    if (healthy) {
      run->probe_failures = 0;
    } else {
      ++run->probe_failures;
      InstanceEvent(*instance, "liveness probe failed (" + std::to_string(run->probe_failures) +
                                   "/" + std::to_string(liveness.failure_threshold) +
                                   "): " + detail);
      if (run->probe_failures >= liveness.failure_threshold) {
        ++liveness_failures_total;
        InstanceEvent(*instance, "liveness failure: restarting");
        run->liveness_kill = true;
        Terminate(run);
        return;
      }
    }
    ScheduleProbe(run, liveness.period);
  }

  // ---- the control loop (REQUIRES: mu held)

  // Brings instances toward the split's targets: drains the excess (instances without a
  // running process or not yet available first, then idle, unknown, least busy, newest),
  // never taking available instances below desired - max_unavailable; starts the missing,
  // at most max_surge beyond desired.
  void Reconcile() {
    if (stopping || !spec) return;
    std::map<int, int> targets = Targets();
    int max_surge = std::max(spec->rollout.max_surge, 0);
    int max_unavailable = std::max(spec->rollout.max_unavailable, 0);
    // Both zero could never make progress; one new instance at a time then.
    if (max_surge == 0 && max_unavailable == 0) max_surge = 1;

    std::map<int, std::vector<Instance*>> active;
    int total_active = 0;
    int total_available = 0;
    for (auto& [id, instance] : instances) {
      if (instance->draining) continue;
      active[instance->revision].push_back(instance.get());
      ++total_active;
      if (instance->state == InstanceState::kRunning) ++total_available;
    }
    const int min_available = desired - max_unavailable;

    std::vector<Instance*> victims;
    for (auto& [revision, members] : active) {
      int target = targets.contains(revision) ? targets[revision] : 0;
      int excess = static_cast<int>(members.size()) - target;
      if (excess <= 0) continue;
      std::sort(members.begin(), members.end(),
                [](const Instance* a, const Instance* b) { return VictimKey(*a) < VictimKey(*b); });
      for (Instance* member : members) {
        if (excess == 0) break;
        if (member->state == InstanceState::kRunning) {
          if (total_available - 1 < min_available) break;
          --total_available;
        }
        victims.push_back(member);
        --excess;
        --total_active;
      }
    }
    for (Instance* victim : victims) BeginDrain(*victim);

    for (auto it = targets.rbegin(); it != targets.rend(); ++it) {
      auto [revision, target] = *it;
      int have = static_cast<int>(active[revision].size());
      while (have < target && total_active < desired + max_surge) {
        StartInstance(revision);
        ++have;
        ++total_active;
      }
    }
  }

  // Smaller drains first.
  static std::tuple<int, int, int, int64_t> VictimKey(const Instance& instance) {
    constexpr int kNoProcess = 0;
    constexpr int kNotAvailable = 1;
    constexpr int kAvailable = 2;
    constexpr int kIdle = 0;
    constexpr int kUnknownLoad = 1;
    constexpr int kBusy = 2;
    if (instance.run == nullptr)
      return {kNoProcess, 0, 0, -static_cast<int64_t>(instance.sequence)};
    int inflight = instance.run->inflight;
    int load = inflight == 0 ? kIdle : (inflight < 0 ? kUnknownLoad : kBusy);
    int stage = instance.state == InstanceState::kRunning ? kAvailable : kNotAvailable;
    return {stage, load, std::max(inflight, 0), -static_cast<int64_t>(instance.sequence)};
  }

  Status CheckRunning() const {
    if (stopping) return Status::FailedPrecondition("the supervisor is stopped");
    if (!spec) return Status::FailedPrecondition("no pool deployed yet");
    return Status::Ok();
  }

  SupervisorOptions options;
  // Declared before everything holding I/O objects, so it is destroyed after them.
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::thread thread;
  PoolLog log;

  mutable std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::optional<PoolSpec> spec;
  std::map<int, Revision> revisions;
  std::map<int, int> split;
  int desired = 0;
  std::map<std::string, std::unique_ptr<Instance>> instances;
  uint64_t next_sequence = 0;
  uint64_t restarts_total = 0;
  uint64_t oom_kills_total = 0;
  uint64_t liveness_failures_total = 0;
  bool cgroup_checked = false;
  std::unique_ptr<MemoryCgroupRoot> cgroup_root;
  std::string memory_limit_warning;
  std::mt19937_64 rng;
};

Supervisor::Supervisor(SupervisorOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

Supervisor::~Supervisor() {
  Stop();
  // Instances' cgroups are gone with the instances; the pool's group goes last.
  impl_->cgroup_root.reset();
}

void Supervisor::Start() {
  std::lock_guard lock(impl_->mu);
  if (impl_->thread.joinable() || impl_->stopping) return;
  impl_->thread = std::thread([impl = impl_.get()] {
    SetCurrentThreadName("pool-supervise");
    impl->io.run();
  });
}

void Supervisor::Stop() {
  {
    std::unique_lock lock(impl_->mu);
    if (!impl_->stopping) {
      impl_->stopping = true;
      if (impl_->spec) {
        impl_->Event("stopping: draining " + std::to_string(impl_->instances.size()) +
                     " instance(s)");
      }
      std::vector<Instance*> all;
      for (auto& [id, instance] : impl_->instances) all.push_back(instance.get());
      for (Instance* instance : all) impl_->BeginDrain(*instance);
    }
    // Exits are only noticed by the event loop.
    if (!impl_->thread.joinable()) {
      impl_->thread = std::thread([impl = impl_.get()] {
        SetCurrentThreadName("pool-supervise");
        impl->io.run();
      });
    }
    impl_->cv.wait(lock, [this] { return impl_->instances.empty(); });
  }
  // With no instance left, the loop runs out of work once pending probes end.
  impl_->work.reset();
  if (impl_->thread.joinable() && impl_->thread.get_id() != std::this_thread::get_id()) {
    impl_->thread.join();
  }
}

Result<int> Supervisor::Deploy(const PoolSpec& new_spec) {
  std::lock_guard lock(impl_->mu);
  Impl& s = *impl_;
  if (s.stopping) return Status::FailedPrecondition("the supervisor is stopped");
  if (new_spec.name.empty()) return Status::InvalidArgument("pool name is empty");
  if (new_spec.revision.command.empty()) {
    return Status::InvalidArgument("pool " + new_spec.name + ": command is empty");
  }
  if (new_spec.instances < 0) {
    return Status::InvalidArgument("pool " + new_spec.name + ": instances < 0");
  }
  if (s.spec && s.spec->name != new_spec.name) {
    return Status::InvalidArgument("this supervisor runs pool " + s.spec->name + ", not " +
                                   new_spec.name);
  }
  bool first = !s.spec;
  if (first && !s.options.log_dir.empty()) {
    std::error_code ignored;
    std::filesystem::create_directories(s.options.log_dir, ignored);
    s.log.SetFile(s.options.log_dir + "/" + new_spec.name + ".log");
  }
  s.spec = new_spec;

  std::string digest = RevisionDigest(new_spec.revision);
  int current = s.CurrentRevision();
  int chosen = 0;
  if (current != 0 && s.revisions.at(current).digest == digest) {
    chosen = current;  // unchanged: the split stays as it is
  } else {
    for (const auto& [number, revision] : s.revisions) {
      if (revision.digest == digest) chosen = number;
    }
    if (chosen == 0) {
      chosen = s.revisions.empty() ? 1 : s.revisions.rbegin()->first + 1;
      s.revisions[chosen] = Revision{.number = chosen,
                                     .digest = digest,
                                     .created = WallClock::now(),
                                     .spec = new_spec.revision};
      s.Event("revision " + std::to_string(chosen) + " created (digest " + digest + ")");
    } else {
      s.Event("revision " + std::to_string(chosen) + " deployed again");
    }
    s.split = {{chosen, kPercentTotal}};
  }
  if (new_spec.autoscaling) {
    const AutoscalingSpec& autoscaling = *new_spec.autoscaling;
    s.desired = first ? autoscaling.min_instances
                      : std::clamp(s.desired, autoscaling.min_instances,
                                   std::max(autoscaling.min_instances, autoscaling.max_instances));
  } else {
    s.desired = new_spec.instances;
  }
  s.Reconcile();
  return chosen;
}

Status Supervisor::Scale(int desired) {
  std::lock_guard lock(impl_->mu);
  TP_RETURN_IF_ERROR(impl_->CheckRunning());
  if (desired < 0) return Status::InvalidArgument("desired instances < 0");
  if (desired != impl_->desired) {
    impl_->Event("scale " + std::to_string(impl_->desired) + " -> " + std::to_string(desired));
  }
  impl_->desired = desired;
  impl_->Reconcile();
  return Status::Ok();
}

Status Supervisor::SetSplit(const std::map<int, int>& split) {
  std::lock_guard lock(impl_->mu);
  TP_RETURN_IF_ERROR(impl_->CheckRunning());
  int total = 0;
  std::string text;
  for (const auto& [revision, percent] : split) {
    if (!impl_->revisions.contains(revision)) {
      return Status::NotFound("no revision " + std::to_string(revision));
    }
    if (percent < 0 || percent > kPercentTotal) {
      return Status::InvalidArgument("percent out of range for revision " +
                                     std::to_string(revision));
    }
    total += percent;
    text += " r" + std::to_string(revision) + "=" + std::to_string(percent) + "%";
  }
  if (total != kPercentTotal) {
    return Status::InvalidArgument("split percents sum to " + std::to_string(total) + ", not 100");
  }
  std::map<int, int> nonzero;
  for (const auto& [revision, percent] : split) {
    if (percent > 0) nonzero[revision] = percent;
  }
  impl_->split = std::move(nonzero);
  impl_->Event("split" + text);
  impl_->Reconcile();
  return Status::Ok();
}

Status Supervisor::Rollback(std::optional<int> revision) {
  std::lock_guard lock(impl_->mu);
  TP_RETURN_IF_ERROR(impl_->CheckRunning());
  int target = 0;
  if (revision) {
    if (!impl_->revisions.contains(*revision)) {
      return Status::NotFound("no revision " + std::to_string(*revision));
    }
    target = *revision;
  } else {
    int current = impl_->CurrentRevision();
    auto it = impl_->revisions.lower_bound(current);
    if (it == impl_->revisions.begin()) {
      return Status::FailedPrecondition("no revision before " + std::to_string(current));
    }
    target = std::prev(it)->first;
  }
  impl_->split = {{target, kPercentTotal}};
  impl_->Event("rollback to revision " + std::to_string(target));
  impl_->Reconcile();
  return Status::Ok();
}

PoolStatus Supervisor::GetStatus() const {
  std::lock_guard lock(impl_->mu);
  const Impl& s = *impl_;
  PoolStatus status;
  if (s.spec) status.pool = s.spec->name;
  status.desired = s.desired;
  status.split = s.split;
  for (const auto& [number, revision] : s.revisions) {
    RevisionStatus entry{.number = number,
                         .digest = revision.digest,
                         .created = revision.created,
                         .command = revision.spec.command,
                         .args = revision.spec.args,
                         .env_keys = {},
                         .secret_keys = {},
                         .memory_limit_bytes = revision.spec.memory_limit_bytes};
    for (const auto& [name, value] : revision.spec.env) entry.env_keys.push_back(name);
    for (const auto& [name, path] : revision.spec.secrets) entry.secret_keys.push_back(name);
    status.revisions.push_back(std::move(entry));
  }
  for (const auto& [id, instance] : s.instances) {
    InstanceStatus entry{.id = id,
                         .revision = instance->revision,
                         .pid = instance->run ? instance->run->pid : 0,
                         .state = instance->state,
                         .inflight = instance->run ? instance->run->inflight : -1,
                         .pulling = instance->run ? instance->run->pulling : false,
                         .restarts = instance->restarts,
                         .last_exit = instance->last_exit,
                         .started_at = instance->started_at};
    if (instance->state == InstanceState::kRunning) ++status.available;
    status.instances.push_back(std::move(entry));
  }
  status.restarts_total = s.restarts_total;
  status.oom_kills_total = s.oom_kills_total;
  status.liveness_failures_total = s.liveness_failures_total;
  status.memory_limit_warning = s.memory_limit_warning;
  return status;
}

std::vector<std::string> Supervisor::Logs(size_t max_lines) const {
  return impl_->log.Tail(max_lines);
}

uint64_t Supervisor::FollowLogs(std::function<void(const std::string&)> follower) {
  return impl_->log.Follow(std::move(follower));
}

void Supervisor::Unfollow(uint64_t id) {
  impl_->log.Unfollow(id);
}

boost::json::object ToJson(const PoolStatus& status) {
  namespace json = boost::json;
  json::object out;
  out["pool"] = status.pool;
  out["desired"] = status.desired;
  out["available"] = status.available;
  json::object split;
  for (const auto& [revision, percent] : status.split) split[std::to_string(revision)] = percent;
  out["split"] = std::move(split);
  json::array revisions;
  for (const auto& revision : status.revisions) {
    json::object entry;
    entry["number"] = revision.number;
    entry["digest"] = revision.digest;
    entry["created"] = Rfc3339(revision.created);
    entry["command"] = revision.command;
    entry["args"] = json::array(revision.args.begin(), revision.args.end());
    entry["env_keys"] = json::array(revision.env_keys.begin(), revision.env_keys.end());
    entry["secret_keys"] = json::array(revision.secret_keys.begin(), revision.secret_keys.end());
    entry["memory_limit_bytes"] = revision.memory_limit_bytes;
    revisions.push_back(std::move(entry));
  }
  out["revisions"] = std::move(revisions);
  json::array instances;
  for (const auto& instance : status.instances) {
    json::object entry;
    entry["id"] = instance.id;
    entry["revision"] = instance.revision;
    entry["pid"] = instance.pid;
    entry["state"] = InstanceStateName(instance.state);
    entry["inflight"] = instance.inflight;
    entry["pulling"] = instance.pulling;
    entry["restarts"] = instance.restarts;
    if (instance.started_at) entry["started_at"] = Rfc3339(*instance.started_at);
    if (instance.last_exit) {
      json::object exit;
      exit["code"] = instance.last_exit->code;
      exit["signal"] = instance.last_exit->signal;
      exit["oom"] = instance.last_exit->oom;
      if (!instance.last_exit->start_error.empty()) {
        exit["start_error"] = instance.last_exit->start_error;
      }
      exit["at"] = Rfc3339(instance.last_exit->at);
      entry["last_exit"] = std::move(exit);
    }
    instances.push_back(std::move(entry));
  }
  out["instances"] = std::move(instances);
  json::object counters;
  counters["restarts_total"] = status.restarts_total;
  counters["oom_kills_total"] = status.oom_kills_total;
  counters["liveness_failures_total"] = status.liveness_failures_total;
  out["counters"] = std::move(counters);
  if (!status.memory_limit_warning.empty()) {
    out["memory_limit_warning"] = status.memory_limit_warning;
  }
  return out;
}

}  // namespace tidepool::pool
