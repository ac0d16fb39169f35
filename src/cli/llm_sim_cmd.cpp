// `tidepool llm-sim`: the OpenAI-compatible Chat Completions simulator (see docs/llm-sim.md).
#include <pthread.h>
#include <sys/resource.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli/commands.h"
#include "llm/sim/llm_sim.h"

namespace tidepool::cli {
namespace {

constexpr char kDefaultListen[] = "127.0.0.1:8090";

constexpr char kLlmSimUsage[] =
    "Usage: tidepool llm-sim [options]\n"
    "An OpenAI-compatible Chat Completions SIMULATOR (not a model) under /v1.\n"
    "  --listen HOST:PORT          default 127.0.0.1:8090 (env TIDEPOOL_LLM_SIM_LISTEN)\n"
    "  --ttft-ms N                 time to first token, fixed (default 0)\n"
    "  --ttft-uniform MIN,MAX      ... uniform in [MIN, MAX] ms\n"
    "  --ttft-lognormal MEDIAN,P99 ... lognormal with that median and 99th percentile (ms)\n"
    "  --tokens-per-second N       pacing per stream after the first token (0 = unpaced)\n"
    "  --output-tokens N|MIN,MAX   plain-text reply length in tokens (default 60)\n"
    "  --max-concurrency N         beyond N requests at once: 429 + Retry-After (0 = no limit)\n"
    "  --error-429 F --error-500 F --stall F --drop F\n"
    "                              fractions of requests that fail that way\n"
    "  --retry-after S             Retry-After of 429s (default 1)\n"
    "  --stall-seconds S           length of a stall (default 0 = until the client gives up)\n"
    "  --seed N                    seed of timing samples and error injection (default 1)\n"
    "  --threads N                 io threads (default: hardware threads)\n";

bool ParseDouble(const std::string& text, double* out) {
  char* end = nullptr;
  *out = std::strtod(text.c_str(), &end);
  return !text.empty() && *end == '\0';
}

bool ParseInt(const std::string& text, long long* out) {
  char* end = nullptr;
  *out = std::strtoll(text.c_str(), &end, 10);
  return !text.empty() && *end == '\0';
}

// "A,B" → two numbers.
bool ParsePair(const std::string& text, double* a, double* b) {
  const auto comma = text.find(',');
  if (comma == std::string::npos) return false;
  return ParseDouble(text.substr(0, comma), a) && ParseDouble(text.substr(comma + 1), b);
}

// Fills `o` from the flags; false after printing what is wrong.
bool ParseFlags(const Args& args, llm::sim::SimOptions* o) {
  o->listen = kDefaultListen;
  if (const char* env = std::getenv("TIDEPOOL_LLM_SIM_LISTEN")) o->listen = env;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "tidepool llm-sim: unknown option or missing value: '%s'\n\n%s",
                   flag.c_str(), kLlmSimUsage);
      return false;
    }
    const std::string& value = args[++i];
    double d = 0;
    double d2 = 0;
    long long n = 0;
    bool ok = true;
    if (flag == "--listen") {
      o->listen = value;
    } else if (flag == "--ttft-ms") {
      ok = ParseDouble(value, &d);
      o->ttft = llm::sim::TtftModel::Fixed(d);
    } else if (flag == "--ttft-uniform") {
      ok = ParsePair(value, &d, &d2);
      o->ttft = llm::sim::TtftModel::Uniform(d, d2);
    } else if (flag == "--ttft-lognormal") {
      ok = ParsePair(value, &d, &d2);
      o->ttft = llm::sim::TtftModel::Lognormal(d, d2);
    } else if (flag == "--tokens-per-second") {
      ok = ParseDouble(value, &o->tokens_per_second);
    } else if (flag == "--output-tokens") {
      if (value.find(',') != std::string::npos) {
        ok = ParsePair(value, &d, &d2);
        o->output_tokens_min = static_cast<int>(d);
        o->output_tokens_max = static_cast<int>(d2);
      } else {
        ok = ParseInt(value, &n);
        o->output_tokens_min = o->output_tokens_max = static_cast<int>(n);
      }
    } else if (flag == "--max-concurrency") {
      ok = ParseInt(value, &n);
      o->max_concurrency = static_cast<int>(n);
    } else if (flag == "--error-429") {
      ok = ParseDouble(value, &o->error_429_rate);
    } else if (flag == "--error-500") {
      ok = ParseDouble(value, &o->error_500_rate);
    } else if (flag == "--stall") {
      ok = ParseDouble(value, &o->stall_rate);
    } else if (flag == "--drop") {
      ok = ParseDouble(value, &o->drop_rate);
    } else if (flag == "--retry-after") {
      ok = ParseInt(value, &n);
      o->retry_after_seconds = static_cast<int>(n);
    } else if (flag == "--stall-seconds") {
      ok = ParseInt(value, &n);
      o->stall_seconds = static_cast<int>(n);
    } else if (flag == "--seed") {
      ok = ParseInt(value, &n);
      o->seed = static_cast<uint64_t>(n);
    } else if (flag == "--threads") {
      ok = ParseInt(value, &n);
      o->threads = static_cast<int>(n);
    } else {
      std::fprintf(stderr, "tidepool llm-sim: unknown option '%s'\n\n%s", flag.c_str(),
                   kLlmSimUsage);
      return false;
    }
    if (!ok) {
      std::fprintf(stderr, "tidepool llm-sim: bad value '%s' for %s\n", value.c_str(),
                   flag.c_str());
      return false;
    }
  }
  return true;
}

// Load tests hold thousands of connections; the default soft limit (often 1024) would refuse
// them long before the simulator runs out of anything else.
void RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);
}

}  // namespace

int RunLlmSim(const Args& args) {
  for (const std::string& arg : args) {
    if (arg == "help" || arg == "--help" || arg == "-h") {
      std::fputs(kLlmSimUsage, stdout);
      return 0;
    }
  }
  llm::sim::SimOptions options;
  if (!ParseFlags(args, &options)) return 2;
  // Block the stop signals before any thread starts, so only sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  RaiseOpenFileLimit();

  auto sim = llm::sim::LlmSim::Start(options);
  if (!sim.ok()) {
    std::fprintf(stderr, "tidepool llm-sim: %s\n", sim.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "tidepool llm-sim %s: SIMULATED OpenAI-compatible Chat Completions (not a real model) on "
      "%s (model \"%s\")\n",
      TIDEPOOL_VERSION, (*sim)->base_url().c_str(), llm::sim::kSimModelName);
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  (*sim)->Stop();
  const llm::sim::SimCounters c = (*sim)->counters();
  std::printf(
      "tidepool llm-sim: %s received, stopped (%llu requests, %llu completed, peak %llu in "
      "flight)\n",
      sig == SIGINT ? "SIGINT" : "SIGTERM", static_cast<unsigned long long>(c.requests),
      static_cast<unsigned long long>(c.completed),
      static_cast<unsigned long long>(c.peak_in_flight));
  return 0;
}

}  // namespace tidepool::cli
