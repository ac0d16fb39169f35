// llm_streams: the tidepool side of bench/run-llm-streams. One process, one llm::LlmClient,
// N streamed Chat Completions kept in flight against an OpenAI-compatible server (the script
// runs `tidepool llm-sim`): a closed loop of N users, each starting its next call as soon as
// the previous one ends. bench/llm/aiohttp_streams.py is the same loop in Python.
//
//   llm_streams --base-url URL [--streams N] [--seconds S] [--warmup S] [--ramp S]
//               [--threads T] [--ttft-ms MS] [--tokens-per-second R] [--output-tokens K]
//               [--drain S] [--server-pid PID]
//
// --streams N          concurrent users (default 10000)
// --seconds S          the measured window (default 60)
// --warmup S           from the start to the window (default 10); must cover the ramp and one
//                      call, so that every user is in its second call or later
// --ramp S             user i starts its first call at i × S / N (default: the ideal call
//                      time), so that calls arrive spread out as real users' do rather than in
//                      one wave every call time
// --threads T          threads running the client's io_context (default 1)
// --ttft-ms, --tokens-per-second, --output-tokens
//                      the server's settings (default 500, 50, 200); they give the ideal call
//                      time ttft + tokens / rate and the theoretical maximum N / that
// --drain S            after the window, how long calls in flight may take to end (default 10)
// --server-pid PID     also report that process's CPU time during the window (from /proc)
//
// A call is counted in the window when it ends inside it. It succeeds when Stream() returns
// OK with the whole reply (usage.completion_tokens == --output-tokens); anything else is an
// error. Time to first token: from starting the call to the first non-empty content delta.
// Prints one JSON line: completions/s, its fraction of the theoretical maximum, p50/p99 of time
// to first token and of the whole call, errors, this process's peak RSS (VmHWM) and CPU time
// in the window.

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include "llm/client.h"

namespace {

namespace asio = boost::asio;
namespace json = boost::json;
namespace llm = tidepool::llm;
using Clock = std::chrono::steady_clock;
using Micros = std::chrono::microseconds;

constexpr char kUsage[] =
    "usage: llm_streams --base-url URL [--streams N] [--seconds S] [--warmup S] [--ramp S]\n"
    "                   [--threads T] [--ttft-ms MS] [--tokens-per-second R]\n"
    "                   [--output-tokens K] [--drain S] [--server-pid PID]\n"
    "(see the header of bench/llm/streams.cpp)\n";
constexpr char kModel[] = "bench-model";

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "llm_streams: %s\n%s", what.c_str(), kUsage);
  std::exit(2);
}

std::map<std::string, std::string> ParseFlags(int argc, char** argv) {
  std::map<std::string, std::string> flags;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (!arg.starts_with("--") || i + 1 >= argc) Die("bad argument " + std::string(arg));
    flags[std::string(arg.substr(2))] = argv[++i];
  }
  return flags;
}

double NumberFlag(std::map<std::string, std::string>& flags, const std::string& key,
                  double fallback) {
  const auto found = flags.find(key);
  if (found == flags.end()) return fallback;
  const std::string text = found->second;
  flags.erase(found);
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 0) {
    Die("--" + key + ": not a non-negative number: " + text);
  }
  return value;
}

Clock::duration Seconds(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// A field of /proc/self/status, e.g. "VmHWM", in kB; -1 when absent.
int64_t ProcStatusKb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.starts_with(prefix)) return std::strtoll(line.c_str() + prefix.size(), nullptr, 10);
  }
  return -1;
}

double OwnCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// utime + stime of another process, from /proc/PID/stat; -1 when it cannot be read.
double ProcessCpuSeconds(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return -1;
  // Fields after the command name, which is in parentheses and may hold spaces.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  double ticks = 0;
  // Fields 3.. of proc(5): utime and stime are fields 14 and 15.
  for (int index = 3; index <= 15 && fields >> field; ++index) {
    if (index >= 14) ticks += std::strtod(field.c_str(), nullptr);
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// What one user saw of its calls that ended inside the window. Each user owns its own, so the
// client's threads never share one.
struct UserRecord {
  std::vector<uint32_t> ttft_us;
  std::vector<uint32_t> total_us;
  uint64_t completed = 0;
  uint64_t errors = 0;
  uint64_t errors_outside_window = 0;
  uint64_t completed_outside_window = 0;
  std::string first_error;
};

struct Run {
  llm::LlmClient* client = nullptr;
  llm::ChatRequest request;
  int64_t expected_tokens = 0;
  Clock::time_point start;
  Clock::time_point window_start;
  Clock::time_point window_end;
  Clock::duration ramp{};
  int streams = 0;
  std::vector<UserRecord> users;
  std::atomic<int> users_running{0};
  std::unique_ptr<asio::steady_timer> drain_timer;  // ends the run if calls outlive the drain
  long server_pid = 0;
  double cpu_at_window_start = 0, cpu_at_window_end = 0;
  double server_cpu_at_window_start = 0, server_cpu_at_window_end = 0;
};

asio::awaitable<void> User(Run* run, int index) {
  UserRecord& record = run->users[static_cast<size_t>(index)];
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_at(run->start + run->ramp * index / run->streams);
  co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  while (Clock::now() < run->window_end) {
    const auto call_start = Clock::now();
    Clock::time_point first_delta{};
    auto result = co_await run->client->Stream(run->request, [&](std::string_view delta) {
      if (first_delta == Clock::time_point{} && !delta.empty()) first_delta = Clock::now();
    });
    const auto call_end = Clock::now();
    const bool in_window = call_end >= run->window_start && call_end < run->window_end;
    std::string error;
    if (!result.ok()) {
      error = result.status().ToString();
    } else if (result->usage.completion_tokens != run->expected_tokens) {
      error = "incomplete reply: " + std::to_string(result->usage.completion_tokens) + " of " +
              std::to_string(run->expected_tokens) + " tokens";
    }
    if (!error.empty()) {
      if (record.first_error.empty()) record.first_error = error;
      (in_window ? record.errors : record.errors_outside_window) += 1;
      continue;
    }
    if (!in_window) {
      ++record.completed_outside_window;
      continue;
    }
    ++record.completed;
    record.ttft_us.push_back(static_cast<uint32_t>(
        std::chrono::duration_cast<Micros>(first_delta - call_start).count()));
    record.total_us.push_back(
        static_cast<uint32_t>(std::chrono::duration_cast<Micros>(call_end - call_start).count()));
  }
  // The timer is only touched on its strand: the client may run on several threads.
  if (run->users_running.fetch_sub(1) == 1) {
    asio::post(run->drain_timer->get_executor(), [run] { run->drain_timer->cancel(); });
  }
}

// Samples CPU times at the window's edges. It runs on the client's own loop, so it can sample
// late by that loop's queueing delay, small against the window (aiohttp_streams.py samples from
// a thread: its loop falls seconds behind).
asio::awaitable<void> WindowClock(Run* run) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_at(run->window_start);
  co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  run->cpu_at_window_start = OwnCpuSeconds();
  if (run->server_pid > 0) run->server_cpu_at_window_start = ProcessCpuSeconds(run->server_pid);
  timer.expires_at(run->window_end);
  co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  run->cpu_at_window_end = OwnCpuSeconds();
  if (run->server_pid > 0) run->server_cpu_at_window_end = ProcessCpuSeconds(run->server_pid);
}

double PercentileMs(std::vector<uint32_t>& values, double fraction) {
  if (values.empty()) return 0;
  const size_t rank = std::min(values.size() - 1,
                               static_cast<size_t>(fraction * static_cast<double>(values.size())));
  std::nth_element(values.begin(), values.begin() + static_cast<ptrdiff_t>(rank), values.end());
  return values[rank] / 1000.0;
}

// One JSON object on one line, numbers in plain decimal notation (Boost.JSON writes every
// double in exponent form).
class JsonLine {
 public:
  void Add(const char* key, std::string_view raw_value) {
    text_ += text_.empty() ? "{" : ",";
    text_ += '"';
    text_ += key;
    text_ += "\":";
    text_ += raw_value;
  }
  template <typename Integer>
  requires std::is_integral_v<Integer>
  void Add(const char* key, Integer value) { Add(key, std::to_string(value)); }
  void Add(const char* key, double value, int decimals) {
    char formatted[64];
    std::snprintf(formatted, sizeof(formatted), "%.*f", decimals, value);
    Add(key, std::string_view(formatted));
  }
  std::string Finish() { return text_ + "}"; }

 private:
  std::string text_;
};

}  // namespace

int main(int argc, char** argv) {
  auto flags = ParseFlags(argc, argv);
  const auto base_url = flags.find("base-url");
  if (base_url == flags.end()) Die("--base-url is required");
  llm::ProviderOptions options;
  options.base_url = base_url->second;
  flags.erase(base_url);
  const int streams = static_cast<int>(NumberFlag(flags, "streams", 10000));
  const double window_seconds = NumberFlag(flags, "seconds", 60);
  const double warmup_seconds = NumberFlag(flags, "warmup", 10);
  const int threads = std::max(1, static_cast<int>(NumberFlag(flags, "threads", 1)));
  const double ttft_ms = NumberFlag(flags, "ttft-ms", 500);
  const double tokens_per_second = NumberFlag(flags, "tokens-per-second", 50);
  const auto output_tokens = static_cast<int64_t>(NumberFlag(flags, "output-tokens", 200));
  const double ideal_call_seconds =
      ttft_ms / 1000 + (tokens_per_second > 0 ? output_tokens / tokens_per_second : 0);
  const double ramp_seconds = NumberFlag(flags, "ramp", ideal_call_seconds);
  const double drain_seconds = NumberFlag(flags, "drain", 10);
  const auto server_pid = static_cast<long>(NumberFlag(flags, "server-pid", 0));
  if (!flags.empty()) Die("unknown option --" + flags.begin()->first);
  if (streams < 1 || window_seconds <= 0) Die("--streams and --seconds must be positive");

  asio::io_context io(threads);
  auto client = llm::LlmClient::Create(io.get_executor(), options);
  if (!client.ok()) Die("cannot create the client: " + client.status().ToString());

  Run run;
  run.client = client->get();
  run.request.model = kModel;
  run.request.messages = {{"user", "Tell me about Santal 33 by Le Labo and Terre d'Hermes."}};
  run.expected_tokens = output_tokens;
  run.streams = streams;
  run.users.resize(static_cast<size_t>(streams));
  run.users_running = streams;
  run.server_pid = server_pid;
  run.ramp = Seconds(ramp_seconds);
  run.start = Clock::now();
  run.window_start = run.start + Seconds(warmup_seconds);
  run.window_end = run.window_start + Seconds(window_seconds);
  run.drain_timer = std::make_unique<asio::steady_timer>(asio::make_strand(io),
                                                         run.window_end + Seconds(drain_seconds));

  for (int i = 0; i < streams; ++i) asio::co_spawn(io, User(&run, i), asio::detached);
  asio::co_spawn(io, WindowClock(&run), asio::detached);
  bool drained = true;
  run.drain_timer->async_wait([&](boost::system::error_code ec) {
    if (ec) return;  // cancelled: every user finished
    drained = false;
    io.stop();
  });
  std::vector<std::thread> workers;
  for (int i = 1; i < threads; ++i) workers.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& worker : workers) worker.join();

  std::vector<uint32_t> ttft, total;
  uint64_t completed = 0, errors = 0, errors_outside = 0, completed_outside = 0;
  std::string first_error;
  for (const UserRecord& record : run.users) {
    ttft.insert(ttft.end(), record.ttft_us.begin(), record.ttft_us.end());
    total.insert(total.end(), record.total_us.begin(), record.total_us.end());
    completed += record.completed;
    errors += record.errors;
    errors_outside += record.errors_outside_window;
    completed_outside += record.completed_outside_window;
    if (first_error.empty()) first_error = record.first_error;
  }
  const llm::ClientStats stats = (*client)->stats();
  const double per_second = static_cast<double>(completed) / window_seconds;
  const double theoretical = streams / ideal_call_seconds;
  JsonLine out;
  out.Add("client", json::serialize(json::string("tidepool")));
  out.Add("streams", streams);
  out.Add("threads", threads);
  out.Add("window_s", window_seconds, 1);
  out.Add("warmup_s", warmup_seconds, 1);
  out.Add("ramp_s", ramp_seconds, 3);
  out.Add("completions", completed);
  out.Add("completions_per_s", per_second, 1);
  out.Add("theoretical_per_s", theoretical, 1);
  out.Add("fraction_of_max", per_second / theoretical, 4);
  out.Add("ttft_p50_ms", PercentileMs(ttft, 0.50), 1);
  out.Add("ttft_p99_ms", PercentileMs(ttft, 0.99), 1);
  out.Add("total_p50_ms", PercentileMs(total, 0.50), 1);
  out.Add("total_p99_ms", PercentileMs(total, 0.99), 1);
  out.Add("errors", errors);
  out.Add("errors_outside_window", errors_outside);
  out.Add("completions_outside_window", completed_outside);
  out.Add("first_error", json::serialize(json::string(first_error)));
  out.Add("peak_rss_mb", static_cast<double>(ProcStatusKb("VmHWM")) / 1024, 1);
  out.Add("cpu_s", run.cpu_at_window_end - run.cpu_at_window_start, 2);
  out.Add("connections_opened", stats.connections_opened);
  out.Add("peak_in_flight", stats.peak_in_flight);
  out.Add("drained", drained ? "true" : "false");
  if (server_pid > 0) {
    out.Add("server_cpu_s", run.server_cpu_at_window_end - run.server_cpu_at_window_start, 2);
  }
  std::puts(out.Finish().c_str());
  return errors == 0 && drained ? 0 : 1;
}
