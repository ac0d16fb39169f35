// storage_bench: append throughput of the storage engine's group commit (src/storage/log.h)
// next to the disk's own write()+fdatasync() limit, on the same disk, in the same run.
// docs/benchmarks.md describes what each column means and holds the measured table.
//
// Every record counted as done was acknowledged by the Log, and the Log acknowledges only
// after the fdatasync of its group; the counting Env (counting_env.h) checks that no
// acknowledgement ever covers more bytes than a finished fdatasync has made durable.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <semaphore>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "counting_env.h"
#include "storage/flusher.h"
#include "storage/frame.h"
#include "storage/log.h"
#include "storage/log_format.h"

namespace tidepool::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr double kDefaultSeconds = 2.0;
// Outstanding publishes per pipelined appender, like a Pub/Sub publisher client's.
constexpr int kDefaultInflight = 8;
constexpr std::ptrdiff_t kMaxInflight = 1024;
constexpr double kBytesPerMB = 1e6;
constexpr int kBusyRetries = 5;
constexpr auto kBusyPause = std::chrono::seconds(15);
// Goals of the issue this benchmark answers.
constexpr double kGoalRatioLargeRecords = 0.70;
constexpr size_t kGoalLargeRecordBytes = 64u << 10;
constexpr double kGoalSmallRecordsPerSecond = 500'000;
constexpr size_t kGoalSmallRecordBytes = 100;
constexpr int kGoalSmallRecordAppenders = 64;

enum class Mode { kSync, kPipelined };

const char* ModeName(Mode mode) {
  return mode == Mode::kSync ? "sync" : "pipelined";
}

struct Flags {
  double seconds = kDefaultSeconds;
  std::string dir;  // empty: chosen by DefaultDataDir()
  int inflight = kDefaultInflight;
  int repeat = 1;
  // The raw loop writes only the payload of a group, not the frames the Log writes around it.
  bool raw_payload_only = false;
  // A row during which other processes used more than this share of the CPU is measured again,
  // up to kBusyRetries times (1: never).
  double max_other_cpu = 1.0;
  std::vector<size_t> record_sizes{100, 1024, 64u << 10};
  std::vector<int> appender_counts{1, 16, 64};
  std::vector<Mode> modes{Mode::kSync, Mode::kPipelined};
  storage::LogOptions log_options;
};

void Usage() {
  std::fprintf(stderr,
               "usage: storage_bench [--seconds S] [--repeat N] [--dir DIR] [--inflight N]\n"
               "                     [--sizes 100,1024,65536] [--appenders 1,16,64]\n"
               "                     [--modes sync,pipelined] [--max-group-bytes N]\n"
               "                     [--max-group-wait-us N] [--log-reserve BYTES]\n"
               "                     [--raw-bytes framed|payload]\n"
               "                     [--max-other-cpu PERCENT]\n");
}

template <typename T>
std::optional<std::vector<T>> ParseList(const std::string& text) {
  std::vector<T> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v <= 0) return std::nullopt;
    out.push_back(static_cast<T>(v));
  }
  if (out.empty()) return std::nullopt;
  return out;
}

std::optional<int64_t> ParseInt(const std::string& text) {
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < 0) return std::nullopt;
  return v;
}

// Accepts "--name value" and "--name=value".
std::optional<Flags> ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string name = argv[i];
    std::string value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::fprintf(stderr, "%s needs a value\n", name.c_str());
      return std::nullopt;
    }
    bool ok = true;
    if (name == "--seconds") {
      char* end = nullptr;
      flags.seconds = std::strtod(value.c_str(), &end);
      ok = *end == '\0' && flags.seconds > 0;
    } else if (name == "--repeat") {
      auto v = ParseInt(value);
      ok = v && *v >= 1;
      if (ok) flags.repeat = static_cast<int>(*v);
    } else if (name == "--max-other-cpu") {
      auto v = ParseInt(value);
      ok = v && *v <= 100;
      if (ok) flags.max_other_cpu = static_cast<double>(*v) / 100;
    } else if (name == "--raw-bytes") {
      ok = value == "framed" || value == "payload";
      flags.raw_payload_only = value == "payload";
    } else if (name == "--dir") {
      flags.dir = value;
      ok = !value.empty();
    } else if (name == "--inflight") {
      auto v = ParseInt(value);
      ok = v && *v >= 1 && *v <= kMaxInflight;
      if (ok) flags.inflight = static_cast<int>(*v);
    } else if (name == "--sizes") {
      auto v = ParseList<size_t>(value);
      ok = v.has_value();
      if (ok) flags.record_sizes = *v;
    } else if (name == "--appenders") {
      auto v = ParseList<int>(value);
      ok = v.has_value();
      if (ok) flags.appender_counts = *v;
    } else if (name == "--modes") {
      flags.modes.clear();
      std::stringstream in(value);
      std::string item;
      while (ok && std::getline(in, item, ',')) {
        if (item == "sync") {
          flags.modes.push_back(Mode::kSync);
        } else if (item == "pipelined") {
          flags.modes.push_back(Mode::kPipelined);
        } else {
          ok = false;
        }
      }
      ok = ok && !flags.modes.empty();
    } else if (name == "--max-group-bytes") {
      auto v = ParseInt(value);
      ok = v && *v > 0;
      if (ok) flags.log_options.max_group_bytes = static_cast<size_t>(*v);
    } else if (name == "--log-reserve") {
      auto v = ParseInt(value);
      ok = v && *v >= 0;
      if (ok) flags.log_options.reserve_bytes = static_cast<uint64_t>(*v);
    } else if (name == "--max-group-wait-us") {
      auto v = ParseInt(value);
      ok = v.has_value();
      if (ok) flags.log_options.max_group_wait_micros = *v;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", name.c_str());
      return std::nullopt;
    }
    if (!ok) {
      std::fprintf(stderr, "bad value for %s: %s\n", name.c_str(), value.c_str());
      return std::nullopt;
    }
  }
  return flags;
}

Status ErrnoStatus(const std::string& context) {
  return Status::IOError(context + ": " + std::strerror(errno));
}

// /tmp when it is on the same device as this binary (the build directory, on the disk being
// measured), else the directory of the binary: /tmp may be a tmpfs, which has no fdatasync
// cost to measure.
std::string DefaultDataDir() {
  std::error_code ec;
  const auto exe_dir = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
  if (ec) return "/tmp";
  struct stat tmp_stat {};
  struct stat exe_stat {};
  if (::stat("/tmp", &tmp_stat) == 0 && ::stat(exe_dir.c_str(), &exe_stat) == 0 &&
      tmp_stat.st_dev == exe_stat.st_dev) {
    return "/tmp";
  }
  return exe_dir.string();
}

// "device (fstype) mounted at point" for the mount holding `path`, from /proc/self/mounts.
std::string DescribeMount(const std::string& path) {
  std::error_code ec;
  const std::string real = std::filesystem::canonical(path, ec).string();
  std::ifstream mounts("/proc/self/mounts");
  std::string device;
  std::string point;
  std::string fstype;
  std::string rest;
  std::string best = "unknown";
  size_t best_len = 0;
  while (mounts >> device >> point >> fstype && std::getline(mounts, rest)) {
    const bool covers =
        real == point || point == "/" ||
        (real.starts_with(point) && real.size() > point.size() && real[point.size()] == '/');
    if (covers && point.size() >= best_len) {
      best_len = point.size();
      best = device + " (" + fstype + ") mounted at " + point;
    }
  }
  return best;
}

std::string CpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.starts_with("model name")) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

uint64_t NanosBetween(Clock::time_point from, Clock::time_point to) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count());
}

// CPU time of the whole machine and of this process: the machine is shared, so each row reports
// how much CPU others took (and the hypervisor stole) while it ran.
struct CpuSample {
  double busy_seconds = 0;   // all processes, all CPUs, excluding steal
  double steal_seconds = 0;  // taken by the hypervisor
  double own_seconds = 0;    // this process
  Clock::time_point when;

  static CpuSample Now() {
    CpuSample sample;
    sample.when = Clock::now();
    std::ifstream stat("/proc/stat");
    std::string cpu;
    uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
    if (stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal) {
      const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
      sample.busy_seconds = static_cast<double>(user + nice + system + irq + softirq) / tick;
      sample.steal_seconds = static_cast<double>(steal) / tick;
    }
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    auto seconds = [](const timeval& tv) {
      return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
    };
    sample.own_seconds = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    return sample;
  }
};

// Shares of the machine's CPU capacity between two samples.
struct CpuShares {
  double others = 0;  // used by other processes
  double steal = 0;   // stolen by the hypervisor
};

CpuShares SharesBetween(const CpuSample& from, const CpuSample& to) {
  const double capacity =
      SecondsBetween(from.when, to.when) * std::max(1u, std::thread::hardware_concurrency());
  const double others = (to.busy_seconds - from.busy_seconds) - (to.own_seconds - from.own_seconds);
  return CpuShares{.others = std::max(0.0, others) / capacity,
                   .steal = (to.steal_seconds - from.steal_seconds) / capacity};
}

// What one configuration of the Log achieved.
struct EngineRun {
  uint64_t records = 0;
  double seconds = 0;
  IoCounts io;
  uint64_t acks_ahead_of_fsync = 0;  // must stay 0

  double records_per_second() const { return static_cast<double>(records) / seconds; }
  EngineRun& operator+=(const EngineRun& other) {
    records += other.records;
    seconds += other.seconds;
    io += other.io;
    acks_ahead_of_fsync += other.acks_ahead_of_fsync;
    return *this;
  }
};

// State shared by the appenders of one run and the completions running on the flusher.
struct RunState {
  RunState(CountingEnv* env, size_t record_bytes)
      : env(env), record_frame_bytes(storage::RecordFrameSize(record_bytes)) {}

  // Checks an acknowledgement against the durability watermark: records [0, end) take
  // end * record_frame_bytes bytes of RECORD frames, all of which a finished fdatasync must
  // cover.
  void CheckDurable(const storage::SeqRange& range) {
    if (range.end().value * record_frame_bytes > env->durable_record_frame_bytes()) {
      acks_ahead_of_fsync.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void Fail(const Status& status) {
    std::lock_guard lock(error_mu);
    if (error.ok()) error = status;
    stop.store(true);
  }

  CountingEnv* const env;
  const uint64_t record_frame_bytes;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> acks_ahead_of_fsync{0};
  std::mutex error_mu;
  Status error;
};

struct alignas(64) Appender {
  explicit Appender(std::string payload) : payload(std::move(payload)) {}

  const std::string payload;
  std::atomic<uint64_t> acked{0};
  // Pipelined mode: free slots for outstanding appends. Released by the Log's completions, on
  // the flusher thread, between two commits; a semaphore's release takes no lock, so the
  // flusher never waits for an appender there. (A mutex and condition variable here measured
  // 7-14x more flusher time between commits: the woken appender and the flusher convoy on it.)
  std::counting_semaphore<kMaxInflight> slots{0};
};

void RunSyncAppender(storage::Log* log, RunState* state, Appender* appender) {
  while (!state->stop.load(std::memory_order_relaxed)) {
    auto result = log->Append({appender->payload});
    if (!result.ok()) {
      state->Fail(result.status());
      return;
    }
    state->CheckDurable(*result);
    appender->acked.fetch_add(1, std::memory_order_relaxed);
  }
}

void RunPipelinedAppender(storage::Log* log, RunState* state, Appender* appender, int inflight) {
  appender->slots.release(inflight);
  while (!state->stop.load(std::memory_order_relaxed)) {
    appender->slots.acquire();
    log->AppendAsync({appender->payload}, [state, appender](Result<storage::SeqRange> result) {
      if (result.ok()) {
        state->CheckDurable(*result);
        appender->acked.fetch_add(1, std::memory_order_relaxed);
      } else {
        state->Fail(result.status());
      }
      appender->slots.release();
    });
  }
  // Wait for the outstanding appends: they are counted, and their completions use `appender`.
  for (int i = 0; i < inflight; ++i) appender->slots.acquire();
}

Result<EngineRun> RunEngine(const Flags& flags, Mode mode, size_t record_bytes, int appenders,
                            const std::string& dir) {
  CountingEnv env(storage::DefaultEnv());
  storage::Flusher flusher(1);
  RunState state(&env, record_bytes);
  std::vector<std::unique_ptr<Appender>> appender_states;
  appender_states.reserve(static_cast<size_t>(appenders));
  for (int i = 0; i < appenders; ++i) {
    appender_states.push_back(
        std::make_unique<Appender>(RandomBytes(record_bytes, static_cast<uint64_t>(i) + 1)));
  }
  // Declared after everything its completions touch, so it is destroyed first.
  TP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Log> log,
                      storage::Log::Open(&env, dir, flags.log_options, &flusher));

  std::latch start(appenders + 1);
  std::vector<std::thread> threads;
  threads.reserve(appender_states.size());
  for (auto& appender : appender_states) {
    threads.emplace_back([&, appender = appender.get()] {
      start.arrive_and_wait();
      if (mode == Mode::kSync) {
        RunSyncAppender(log.get(), &state, appender);
      } else {
        RunPipelinedAppender(log.get(), &state, appender, flags.inflight);
      }
    });
  }
  const IoCounts io_before = env.counts();
  const auto t0 = Clock::now();
  start.arrive_and_wait();
  std::this_thread::sleep_for(std::chrono::duration<double>(flags.seconds));
  state.stop.store(true);
  for (auto& t : threads) t.join();
  const auto t1 = Clock::now();
  const IoCounts io = env.counts() - io_before;
  log.reset();
  // Completions run on the flusher's completion thread and may still be finishing (a
  // pipelined completion ends after it releases its appender's slot).
  flusher.WaitForCompletions();

  if (!state.error.ok()) return state.error;
  EngineRun run;
  for (const auto& appender : appender_states) run.records += appender->acked.load();
  run.seconds = SecondsBetween(t0, t1);
  run.io = io;
  run.acks_ahead_of_fsync = state.acks_ahead_of_fsync.load();
  return run;
}

// What the plain write()+fdatasync() loop achieved.
struct RawRun {
  uint64_t groups = 0;
  uint64_t records = 0;  // groups x records per group
  double seconds = 0;
  uint64_t write_nanos = 0;
  uint64_t sync_nanos = 0;

  double records_per_second() const { return static_cast<double>(records) / seconds; }
  RawRun& operator+=(const RawRun& other) {
    groups += other.groups;
    records += other.records;
    seconds += other.seconds;
    write_nanos += other.write_nanos;
    sync_nanos += other.sync_nanos;
    return *this;
  }
};

// Appends `group_bytes` (standing for `group_records` records) with one write() and makes them
// durable with one fdatasync(), over and over, for `seconds`: what an ideal group commit of that
// group size could reach on this disk.
Result<RawRun> RunRaw(const std::string& path, size_t group_bytes, size_t group_records,
                      double seconds) {
  const std::string group = RandomBytes(group_bytes, group_bytes);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("open " + path);
  RawRun run;
  Status status;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration<double>(seconds);
  while (status.ok() && Clock::now() < deadline) {
    const auto write_start = Clock::now();
    size_t done = 0;
    while (done < group.size()) {
      const ssize_t n = ::write(fd, group.data() + done, group.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = ErrnoStatus("write " + path);
        break;
      }
      done += static_cast<size_t>(n);
    }
    if (!status.ok()) break;
    const auto sync_start = Clock::now();
    run.write_nanos += NanosBetween(write_start, sync_start);
    if (::fdatasync(fd) != 0) {
      status = ErrnoStatus("fdatasync " + path);
      break;
    }
    run.sync_nanos += NanosBetween(sync_start, Clock::now());
    ++run.groups;
    run.records += group_records;
  }
  run.seconds = SecondsBetween(t0, Clock::now());
  ::close(fd);
  ::unlink(path.c_str());
  if (!status.ok()) return status;
  return run;
}

// Nanoseconds per record of what the flusher does to each record while it builds a group
// (AppendFrame2: CRC-32C of the payload and a copy into the group buffer), measured alone on
// this thread, groups of up to max_group_bytes.
double FramingNanosPerRecord(size_t record_bytes, size_t max_group_bytes) {
  constexpr auto kMeasureFor = std::chrono::milliseconds(200);
  const std::string record = RandomBytes(record_bytes, record_bytes);
  const size_t per_group =
      std::max<size_t>(1, max_group_bytes / storage::RecordFrameSize(record_bytes));
  const char prefix[storage::kRecordPrefixSize] = {};
  std::string group;
  group.reserve(per_group * storage::RecordFrameSize(record_bytes));
  uint64_t records = 0;
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < kMeasureFor) {
    group.clear();
    for (size_t i = 0; i < per_group; ++i) {
      storage::AppendFrame2(&group, storage::FrameType::kRecord,
                            std::string_view(prefix, sizeof(prefix)), record);
    }
    records += per_group;
  }
  return static_cast<double>(NanosBetween(t0, Clock::now())) / static_cast<double>(records);
}

// One line of the table: a configuration of the Log and the raw loop it is compared with,
// summed over the repeats.
struct Row {
  Mode mode;
  size_t record_bytes;
  int appenders;
  int inflight;              // appends outstanding at once, all appenders together
  size_t raw_group_records;  // records per write()+fdatasync() of the raw loop
  size_t raw_group_bytes;    // bytes per write() of the raw loop
  EngineRun engine;
  RawRun raw;
  std::vector<double> ratios;  // tidepool/raw of each repeat, sorted
  CpuShares cpu;               // while the row ran

  double records_per_second() const { return engine.records_per_second(); }
  double mb_per_second() const {
    return static_cast<double>(engine.records * record_bytes) / kBytesPerMB / engine.seconds;
  }
  double raw_records_per_second() const { return raw.records_per_second(); }
  double raw_mb_per_second() const {  // payload, as for the Log
    return static_cast<double>(raw.records * record_bytes) / kBytesPerMB / raw.seconds;
  }
  // The median of the repeats' ratios: one repeat that met a slow phase of the VM's disk on
  // one side only does not move it.
  double ratio() const {
    const size_t n = ratios.size();
    return n % 2 == 1 ? ratios[n / 2] : (ratios[n / 2 - 1] + ratios[n / 2]) / 2;
  }
  double fsyncs_per_record() const {
    return engine.records == 0
               ? 0
               : static_cast<double>(engine.io.file_syncs) / static_cast<double>(engine.records);
  }
};

// Runs the raw loop and the Log `flags.repeat` times each, alternating which goes first: the
// disk of a VM is slower for a while after a burst of writes, and alternating spreads that
// evenly over both.
Result<Row> MeasureRow(const Flags& flags, Mode mode, size_t record_bytes, int appenders,
                       const std::string& root, int* run_number) {
  Row row{};
  row.mode = mode;
  row.record_bytes = record_bytes;
  row.appenders = appenders;
  row.inflight = mode == Mode::kSync ? appenders : appenders * flags.inflight;
  // The largest group the Log could form: every append in flight, up to max_group_bytes.
  const size_t fits = flags.log_options.max_group_bytes / storage::RecordFrameSize(record_bytes);
  row.raw_group_records = std::min(static_cast<size_t>(row.inflight), std::max<size_t>(fits, 1));
  row.raw_group_bytes = flags.raw_payload_only
                            ? record_bytes * row.raw_group_records
                            : storage::kGroupFrameSize +
                                  storage::RecordFrameSize(record_bytes) * row.raw_group_records;
  const CpuSample cpu_start = CpuSample::Now();
  for (int r = 0; r < flags.repeat; ++r) {
    const std::string run_dir = storage::JoinPath(root, "run-" + std::to_string((*run_number)++));
    std::optional<EngineRun> engine;
    std::optional<RawRun> raw;
    for (int step = 0; step < 2; ++step) {
      if ((step == 0) == (r % 2 == 0)) {
        TP_ASSIGN_OR_RETURN(raw, RunRaw(run_dir + ".raw", row.raw_group_bytes,
                                        row.raw_group_records, flags.seconds));
      } else {
        auto result = RunEngine(flags, mode, record_bytes, appenders, run_dir);
        std::error_code ec;
        std::filesystem::remove_all(run_dir, ec);
        if (!result.ok()) return result.status();
        engine = *result;
      }
    }
    row.ratios.push_back(engine->records_per_second() / raw->records_per_second());
    row.engine += *engine;
    row.raw += *raw;
  }
  std::sort(row.ratios.begin(), row.ratios.end());
  row.cpu = SharesBetween(cpu_start, CpuSample::Now());
  return row;
}

std::string SizeName(size_t bytes) {
  if (bytes % (1u << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  if (bytes % (1u << 10) == 0) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " B";
}

// 1234567.8 -> "1,234,568"
std::string Grouped(double value) {
  const auto n = static_cast<uint64_t>(std::llround(value));
  std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string Fixed(double value, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, value);
  return buf;
}

double Micros(uint64_t nanos, uint64_t count) {
  return count == 0 ? 0 : static_cast<double>(nanos) / 1e3 / static_cast<double>(count);
}

// "64 x 100 B"
std::string RawGroupName(const Row& r) {
  return std::to_string(r.raw_group_records) + " x " + SizeName(r.record_bytes);
}

std::string RatioCell(const Flags& flags, const Row& r) {
  std::string cell = Fixed(r.ratio(), 2);
  if (flags.repeat > 1) {
    cell += " (" + Fixed(r.ratios.front(), 2) + "-" + Fixed(r.ratios.back(), 2) + ")";
  }
  return cell;
}

void PrintTables(const Flags& flags, const std::vector<Row>& rows) {
  std::printf(
      "\n| mode | record | appenders | in flight | records/s | MB/s | fsyncs/record "
      "| raw group | raw records/s | raw MB/s | tidepool/raw |\n"
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const Row& r : rows) {
    std::printf("| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s |\n", ModeName(r.mode),
                SizeName(r.record_bytes).c_str(), r.appenders, r.inflight,
                Grouped(r.records_per_second()).c_str(), Fixed(r.mb_per_second(), 1).c_str(),
                Fixed(r.fsyncs_per_record(), 4).c_str(), RawGroupName(r).c_str(),
                Grouped(r.raw_records_per_second()).c_str(),
                Fixed(r.raw_mb_per_second(), 1).c_str(), RatioCell(flags, r).c_str());
  }

  std::printf(
      "\nWhere the time goes. Log: mean records per fdatasync, mean time inside one write and "
      "one fdatasync, mean time from the end of an fdatasync to the next write (completing the "
      "group's appenders, building the next group, waiting for appends), and \"disk busy\", the "
      "share of the run the flusher spent inside write and fdatasync. Raw: the same for the raw "
      "loop. Other CPU and steal: share of the machine's CPU that other processes and kernel "
      "threads "
      "used, and that the hypervisor stole, while the row ran (the machine is shared).\n\n"
      "| mode | record | appenders | records/fdatasync | write µs | fdatasync µs | between µs "
      "| disk busy | raw write µs | raw fdatasync µs | dir fsyncs | acks ahead of fsync "
      "| other CPU | steal |\n"
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
      "| ---: |\n");
  for (const Row& r : rows) {
    const IoCounts& io = r.engine.io;
    const double busy =
        static_cast<double>(io.write_nanos + io.sync_nanos) / 1e9 / r.engine.seconds;
    const double per_sync = io.file_syncs == 0 ? 0
                                               : static_cast<double>(r.engine.records) /
                                                     static_cast<double>(io.file_syncs);
    std::printf("| %s | %s | %d | %s | %s | %s | %s | %s%% | %s | %s | %" PRIu64 " | %" PRIu64
                " | %s%% | %s%% |\n",
                ModeName(r.mode), SizeName(r.record_bytes).c_str(), r.appenders,
                Fixed(per_sync, 1).c_str(), Fixed(Micros(io.write_nanos, io.writes), 0).c_str(),
                Fixed(Micros(io.sync_nanos, io.file_syncs), 0).c_str(),
                Fixed(Micros(io.gap_nanos, io.gaps), 0).c_str(), Fixed(100 * busy, 0).c_str(),
                Fixed(Micros(r.raw.write_nanos, r.raw.groups), 0).c_str(),
                Fixed(Micros(r.raw.sync_nanos, r.raw.groups), 0).c_str(), io.dir_syncs,
                r.engine.acks_ahead_of_fsync, Fixed(100 * r.cpu.others, 0).c_str(),
                Fixed(100 * r.cpu.steal, 0).c_str());
  }
}

// Prints whether the goals are met, and returns false if an acknowledgement ever got
// ahead of an fdatasync (the one outcome that makes every figure meaningless).
bool PrintGoals(const std::vector<Row>& rows) {
  std::printf("\nGoals:\n");
  bool any_large = false;
  for (const Row& r : rows) {
    if (r.record_bytes != kGoalLargeRecordBytes) continue;
    any_large = true;
    std::printf("- >= %.0f%% of raw for %s records, %s, %d appenders: %.0f%% -> %s\n",
                100 * kGoalRatioLargeRecords, SizeName(r.record_bytes).c_str(), ModeName(r.mode),
                r.appenders, 100 * r.ratio(),
                r.ratio() >= kGoalRatioLargeRecords ? "met" : "NOT met");
  }
  if (!any_large) std::printf("- 64 KiB rows not run\n");
  bool any_small = false;
  for (const Row& r : rows) {
    if (r.record_bytes != kGoalSmallRecordBytes || r.appenders != kGoalSmallRecordAppenders) {
      continue;
    }
    any_small = true;
    std::printf("- >= %s records/s for %s records, %d appenders, %s: %s -> %s\n",
                Grouped(kGoalSmallRecordsPerSecond).c_str(), SizeName(r.record_bytes).c_str(),
                r.appenders, ModeName(r.mode), Grouped(r.records_per_second()).c_str(),
                r.records_per_second() >= kGoalSmallRecordsPerSecond ? "met" : "NOT met");
  }
  if (!any_small) std::printf("- 100 B x 64 appender rows not run\n");
  bool all_durable = true;
  for (const Row& r : rows) all_durable = all_durable && r.engine.acks_ahead_of_fsync == 0;
  std::printf("- every acknowledgement after its fdatasync: %s\n",
              all_durable ? "yes (checked on every ack)" : "NO: see the table above");
  return all_durable;
}

// On Ctrl-C or SIGTERM, removes the data directory (it can hold GBs) before exiting. The
// signals are blocked here, before any other thread exists, so every thread inherits the mask,
// and one thread takes them with sigwait: the removal does not run in a signal handler.
void RemoveOnSignal(const std::string& root) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals, root] {
    int signal = 0;
    if (sigwait(&signals, &signal) != 0) return;
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
    std::fprintf(stderr, "storage_bench: interrupted; removed %s\n", root.c_str());
    ::_exit(128 + signal);
  }).detach();
}

void PrintSetup(const Flags& flags, const std::string& root) {
  const auto& o = flags.log_options;
  std::printf("storage_bench: %u CPUs (%s); data dir %s on %s\n",
              std::thread::hardware_concurrency(), CpuModel().c_str(), root.c_str(),
              DescribeMount(root).c_str());
  std::printf(
      "%.1f s per measurement, %d repeat(s) of raw + Log per row (alternating which goes first); "
      "pipelined appenders keep %d appends in flight; one record per append\n"
      "records/s, MB/s (1e6 bytes of payload) and fsyncs/record over all repeats; tidepool/raw "
      "is the median of the repeats' ratios (min-max)\n",
      flags.seconds, flags.repeat, flags.inflight);
  if (flags.max_other_cpu < 1.0) {
    std::printf(
        "a row during which other processes used more than %.0f%% of the CPU is measured again "
        "(up to %d times; see \"other CPU\")\n",
        100 * flags.max_other_cpu, kBusyRetries);
  }
  std::printf("LogOptions: reserve_bytes=%" PRIu64
              " max_group_bytes=%zu max_group_wait_micros=%" PRId64 " segment_max_bytes=%" PRIu64
              " index_interval_bytes=%u; Flusher threads=1\n",
              o.reserve_bytes, o.max_group_bytes, o.max_group_wait_micros, o.segment_max_bytes,
              o.index_interval_bytes);
  std::printf(
      "raw: one file, one write() of a raw group then one fdatasync(), in a loop; raw group = "
      "the appends in flight (at most as many as fit in max_group_bytes) x %s\n",
      flags.raw_payload_only ? "the record size (payload only, no framing)"
                             : "the record's frame, plus a group frame: the bytes the Log writes");
  std::printf(
      "framing cost, measured alone on one thread (CRC-32C + copy into the group buffer, "
      "done by the flusher for each record between two fdatasyncs):");
  for (size_t record_bytes : flags.record_sizes) {
    const double nanos = FramingNanosPerRecord(record_bytes, o.max_group_bytes);
    std::printf(" %s: %s µs/record (%s GB/s);", SizeName(record_bytes).c_str(),
                Fixed(nanos / 1e3, 3).c_str(),
                Fixed(static_cast<double>(record_bytes) / nanos, 2).c_str());
  }
  std::printf("\n");
  std::fflush(stdout);
}

// Measures one row, again while others used more of the CPU than flags.max_other_cpu allows.
Result<Row> MeasureRowWhenQuiet(const Flags& flags, Mode mode, size_t record_bytes, int appenders,
                                const std::string& root, int* run_number) {
  auto row = MeasureRow(flags, mode, record_bytes, appenders, root, run_number);
  for (int retry = 1; row.ok() && row->cpu.others > flags.max_other_cpu && retry <= kBusyRetries;
       ++retry) {
    std::fprintf(stderr,
                 "%s %s x%d: other processes used %.0f%% of the CPU; measuring again in %lld s "
                 "(%d/%d)\n",
                 ModeName(mode), SizeName(record_bytes).c_str(), appenders, 100 * row->cpu.others,
                 static_cast<long long>(kBusyPause.count()), retry, kBusyRetries);
    std::this_thread::sleep_for(kBusyPause);
    row = MeasureRow(flags, mode, record_bytes, appenders, root, run_number);
  }
  return row;
}

// Every row, small records first: the large ones leave the VM's disk slow for a while.
Result<std::vector<Row>> MeasureAll(const Flags& flags, const std::string& root) {
  std::vector<Row> rows;
  int run_number = 0;
  for (size_t record_bytes : flags.record_sizes) {
    for (int appenders : flags.appender_counts) {
      for (Mode mode : flags.modes) {
        TP_ASSIGN_OR_RETURN(
            Row row, MeasureRowWhenQuiet(flags, mode, record_bytes, appenders, root, &run_number));
        std::fprintf(stderr, "%s %s x%d: %s records/s, raw %s, ratio %s\n", ModeName(mode),
                     SizeName(record_bytes).c_str(), appenders,
                     Grouped(row.records_per_second()).c_str(),
                     Grouped(row.raw_records_per_second()).c_str(), RatioCell(flags, row).c_str());
        rows.push_back(std::move(row));
      }
    }
  }
  return rows;
}

int Main(int argc, char** argv) {
  auto parsed = ParseFlags(argc, argv);
  if (!parsed) {
    Usage();
    return 2;
  }
  const Flags flags = *parsed;
  const std::string parent = flags.dir.empty() ? DefaultDataDir() : flags.dir;
  std::string root_template = storage::JoinPath(parent, "storage_bench-XXXXXX");
  if (::mkdtemp(root_template.data()) == nullptr) {
    std::fprintf(stderr, "cannot create a temp dir under %s: %s\n", parent.c_str(),
                 std::strerror(errno));
    return 1;
  }
  const std::string root = root_template;
  RemoveOnSignal(root);

  PrintSetup(flags, root);
  auto rows = MeasureAll(flags, root);
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
  if (!rows.ok()) {
    std::fprintf(stderr, "storage_bench: %s\n", rows.status().ToString().c_str());
    return 1;
  }
  PrintTables(flags, *rows);
  const bool durable = PrintGoals(*rows);
  return durable ? 0 : 1;
}

}  // namespace
}  // namespace tidepool::bench

int main(int argc, char** argv) {
  return tidepool::bench::Main(argc, argv);
}
