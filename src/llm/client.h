// LlmClient: an asynchronous OpenAI-compatible Chat Completions client (POST
// {base_url}/chat/completions) over HTTP/1.1 or HTTPS (OpenSSL), for any compatible server
// (OpenAI, vLLM, llama.cpp server, Ollama, Gemini's OpenAI endpoint, `tidepool llm-sim`).
//
// - Streaming (Server-Sent Events) and non-streaming calls; response_format json_schema /
//   json_object; usage accounting (streaming asks for stream_options.include_usage).
// - A keep-alive connection pool; a connection that broke mid-request is never reused.
// - Timeouts: connect (TCP + TLS handshake), first token (first SSE event carrying content or
//   the end of the stream), idle (between stream events), total (one attempt, connect to last
//   byte).
// - Retries with exponential backoff and full jitter on connection errors, 408, 429, 500, 502,
//   503, 504 and connections dropped before any token reached the caller, honouring
//   Retry-After (seconds or HTTP date, capped). Never after a token was delivered.
// - Admission per model: a concurrency limit and token buckets for requests/min and tokens/min;
//   callers wait (asynchronously) instead of failing. A 429 with Retry-After pauses the model's
//   new attempts for that long, so a pool backs off together.
// - The API key (from an env var or a secret file) is sent as `Authorization: Bearer` and is
//   never part of a log line or error message.
//
// Errors (Status codes): INVALID_ARGUMENT (400/404/413/422, bad request), UNAUTHENTICATED (401,
// missing key), PERMISSION_DENIED (403), RESOURCE_EXHAUSTED (429 after the last retry),
// UNAVAILABLE (connection errors, 5xx after the last retry, stream broken after tokens),
// DEADLINE_EXCEEDED (a timeout), INTERNAL (an unparseable reply).
//
// Thread-safety: every method may be called concurrently from coroutines on any thread of the
// client's execution context. Lifetime: the client must outlive every call in flight.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json/value.hpp>

#include "common/status.h"

namespace tidepool::llm {

// Admission limits of one model; 0 means unlimited.
struct ModelLimits {
  int max_concurrency = 0;         // calls in flight at once (including their retries)
  double requests_per_minute = 0;  // attempts sent per minute
  double tokens_per_minute = 0;    // prompt + completion tokens per minute (estimated, then
                                   // reconciled with the reported usage)
};

struct ProviderOptions {
  // e.g. "http://127.0.0.1:8090/v1" or "https://api.openai.com/v1"; requests go to
  // base_url + "/chat/completions".
  std::string base_url;
  // Where the API key comes from: the environment variable named here, else the file (its
  // content trimmed of surrounding whitespace). Neither set: no Authorization header.
  std::string api_key_env;
  std::string api_key_file;

  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds first_token_timeout{60'000};
  // Longest silence between two stream events once the first one arrived.
  std::chrono::milliseconds idle_timeout{60'000};
  // One attempt, from connecting to the last byte.
  std::chrono::milliseconds total_timeout{600'000};

  int max_retries = 4;  // attempts = 1 + max_retries
  std::chrono::milliseconds initial_backoff{500};
  std::chrono::milliseconds max_backoff{30'000};
  // A Retry-After longer than this is shortened to it.
  std::chrono::milliseconds max_retry_after{60'000};

  // Limits for every model, unless `model_limits` has an entry for it.
  ModelLimits limits;
  std::map<std::string, ModelLimits> model_limits;
  // How much a bucket holds, in time at its rate: the burst allowed after a quiet spell.
  std::chrono::milliseconds rate_burst{1'000};

  // Idle keep-alive connections kept for reuse; more are closed when returned.
  size_t max_idle_connections = 64;
  // Idle connections older than this are not reused (servers close them on their own timers).
  std::chrono::milliseconds idle_connection_ttl{30'000};

  bool verify_tls = true;
  std::string ca_file;  // PEM bundle to trust instead of the system store (tests, private CAs)

  // Extra request headers (e.g. "OpenAI-Organization", or X-Sim-* for llm-sim).
  std::vector<std::pair<std::string, std::string>> headers;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

struct ChatRequest {
  std::string model;
  std::vector<ChatMessage> messages;
  std::optional<int> max_tokens;
  std::optional<double> temperature;
  // response_format: json_schema when `json_schema` is set (strict), else json_object when
  // `json_object`, else plain text.
  struct JsonSchema {
    std::string name;
    boost::json::value schema;
    bool strict = true;
  };
  std::optional<JsonSchema> json_schema;
  bool json_object = false;
  // Per-request extra headers, after ProviderOptions::headers.
  std::vector<std::pair<std::string, std::string>> headers;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t total_tokens = 0;
};

struct ChatResult {
  std::string content;
  std::string finish_reason;  // "stop", "length", ...; empty if the server sent none
  Usage usage;                // zeros if the server reported none
  std::string model;          // as reported by the server
  int attempts = 0;           // HTTP attempts made, 1 when the first succeeded
  // From the call (admission waits included) to the first content delta; for a non-streamed
  // call, to the reply.
  std::chrono::milliseconds time_to_first_token{0};
  std::chrono::milliseconds total_time{0};
};

struct ClientStats {
  uint64_t calls = 0;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t attempts = 0;
  uint64_t retries = 0;
  uint64_t rate_limited = 0;  // 429 replies
  uint64_t connections_opened = 0;
  uint64_t connections_reused = 0;
  uint64_t in_flight = 0;  // calls admitted and not finished
  uint64_t peak_in_flight = 0;
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
};

using DeltaCallback = std::function<void(std::string_view delta)>;

class LlmClient {
 public:
  // Reads the API key now; a key source that is set but unreadable is an error.
  static Result<std::unique_ptr<LlmClient>> Create(boost::asio::any_io_executor executor,
                                                   ProviderOptions options);
  ~LlmClient();
  LlmClient(const LlmClient&) = delete;
  LlmClient& operator=(const LlmClient&) = delete;

  // A non-streamed call.
  boost::asio::awaitable<Result<ChatResult>> Complete(ChatRequest request);
  // A streamed call: `on_delta` gets each piece of content as it arrives, on the executor the
  // call runs on; the result's content is all of them concatenated. After the first delta a
  // failure is returned as is (no retry), so the caller decides what to do with what it shows.
  boost::asio::awaitable<Result<ChatResult>> Stream(ChatRequest request, DeltaCallback on_delta);

  ClientStats stats() const;

  // The request body sent for `request` (exposed for tests and debugging; holds no key).
  static std::string BuildRequestBody(const ChatRequest& request, bool stream);

  struct Impl;

 private:
  explicit LlmClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Parses a Retry-After value: delta-seconds or an HTTP date (relative to `now`).
std::optional<std::chrono::milliseconds> ParseRetryAfter(
    std::string_view value,
    std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

// Reads an API key from an env var or a file (trimmed). Empty when neither is configured.
Result<std::string> LoadApiKey(const std::string& env_name, const std::string& file);

}  // namespace tidepool::llm
