// LlmSim: an OpenAI-compatible Chat Completions SIMULATOR (`tidepool llm-sim`) for development,
// tests and load. It is not a model: replies are assembled deterministically from the prompt,
// and json_schema requests get a valid instance of the schema filled from the user's words.
// Every response's `model` field says "tidepool-llm-sim (simulated: <requested model>)".
//
// Routes (under /v1, like the real providers):
//   GET  /v1/models, GET /v1/models/{id}
//   POST /v1/chat/completions   (stream or not; response_format text | json_object | json_schema)
//   GET  /healthz
//
// Timing and failures come from SimOptions, and per request from these optional headers (so
// tests vary them without restarting):
//   X-Sim-Ttft-Ms: N                 time to first token, fixed, overriding the distribution
//   X-Sim-Tokens-Per-Second: N       per stream; 0 = no pacing
//   X-Sim-Output-Tokens: N | MIN,MAX plain-text output length (before max_tokens caps it)
//   X-Sim-Fail: 429|500|stall|drop   forces that failure for this request
//   X-Sim-Stall-Seconds: N           how long a stall lasts; 0 = until the client gives up
//   X-Sim-Retry-After: S             Retry-After of a 429
// A bad header value is a 400 naming the header. See docs/llm-sim.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tidepool::llm::sim {

// The name in /v1/models and in every response's `model` field.
inline constexpr char kSimModelName[] = "tidepool-llm-sim";

// Time to first token: a fixed delay, or a distribution sampled per request.
struct TtftModel {
  enum class Kind { kFixed, kUniform, kLognormal };
  Kind kind = Kind::kFixed;
  double fixed_ms = 0;
  double uniform_min_ms = 0;  // kUniform: [min, max]
  double uniform_max_ms = 0;
  double median_ms = 0;  // kLognormal: median and 99th percentile
  double p99_ms = 0;

  static TtftModel Fixed(double ms) { return {.kind = Kind::kFixed, .fixed_ms = ms}; }
  static TtftModel Uniform(double min_ms, double max_ms) {
    return {.kind = Kind::kUniform, .uniform_min_ms = min_ms, .uniform_max_ms = max_ms};
  }
  static TtftModel Lognormal(double median_ms, double p99_ms) {
    return {.kind = Kind::kLognormal, .median_ms = median_ms, .p99_ms = p99_ms};
  }
};

struct SimOptions {
  // "HOST:PORT"; port 0 picks a free one (read it back with port()). The CLI's default is
  // 127.0.0.1:8090.
  std::string listen = "127.0.0.1:0";
  // io_context threads; 0 = hardware threads.
  int threads = 0;
  // The niceness of those threads (0-19; Linux sets it per thread): `tidepool up` runs the
  // simulator below the web tier that shares its process.
  int nice = 0;
  // The CPUs those threads may run on (empty: any): `tidepool up` keeps them off the CPU it
  // leaves to the web tier. Both are applied before Start returns.
  std::vector<int> cpus{};

  TtftModel ttft{};
  // Pacing of tokens after the first, per stream; 0 = as fast as the socket takes them.
  double tokens_per_second = 0;
  // Plain-text output length in tokens (≈ words), uniform in [min, max]; max_tokens /
  // max_completion_tokens of a request caps it (finish_reason "length").
  int output_tokens_min = 60;
  int output_tokens_max = 60;

  // Requests (streaming or not) served at once; 0 = unlimited. Beyond it a request gets 429
  // with Retry-After (no queueing: that is what real providers do, and what clients must
  // handle).
  int max_concurrency = 0;

  // Error injection, each a fraction in [0, 1] of admitted requests, decided in this order.
  double error_429_rate = 0;  // 429 rate_limit_exceeded with Retry-After
  double error_500_rate = 0;  // 500 server_error
  double stall_rate = 0;      // stop sending mid-stream (or before a non-streamed reply)
  double drop_rate = 0;       // close the connection mid-stream (or before a non-streamed reply)
  int retry_after_seconds = 1;
  // How long a stall lasts; 0 = until the client gives up (or the server stops).
  int stall_seconds = 0;

  // Seeds timing samples and error injection. Content depends only on the prompt (and this
  // seed), so the same request gets the same reply.
  uint64_t seed = 1;
};

// Checks ranges (rates in [0, 1], min <= max, ...); INVALID_ARGUMENT naming the field.
Status ValidateOptions(const SimOptions& options);

// Monotonic counters; a consistent-enough snapshot (each field read atomically).
struct SimCounters {
  uint64_t requests = 0;              // chat completion requests received (incl. rejected ones)
  uint64_t completed = 0;             // replies sent in full
  uint64_t in_flight = 0;             // chat completions being served now
  uint64_t peak_in_flight = 0;        // highest in_flight seen
  uint64_t bad_requests = 0;          // 400s
  uint64_t rejected_concurrency = 0;  // 429s because max_concurrency was reached
  uint64_t injected_429 = 0;
  uint64_t injected_500 = 0;
  uint64_t injected_stall = 0;
  uint64_t injected_drop = 0;
};

// Thread-safety: every method may be called from any thread. Lifetime: the destructor stops the
// server; connections still open are closed.
class LlmSim {
 public:
  // Binds `options.listen` and starts serving on `options.threads` threads.
  // INVALID_ARGUMENT for bad options, UNAVAILABLE when the address cannot be bound.
  static Result<std::unique_ptr<LlmSim>> Start(SimOptions options);
  ~LlmSim();
  LlmSim(const LlmSim&) = delete;
  LlmSim& operator=(const LlmSim&) = delete;

  int port() const;
  // "http://HOST:PORT/v1" (a wildcard host is shown as 127.0.0.1): the base URL for clients.
  std::string base_url() const;
  SimCounters counters() const;
  // Stops accepting and closes every connection, mid-stream ones included. Idempotent.
  void Stop();

  struct Impl;

 private:
  explicit LlmSim(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::llm::sim
