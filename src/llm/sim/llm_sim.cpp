#include "llm/sim/llm_sim.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <cmath>
#include <ctime>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "common/cpu_list.h"
#include "common/thread_name.h"
#include "llm/sim/chat_request.h"
#include "llm/sim/reply_text.h"
#include "llm/sim/schema_fill.h"

namespace tidepool::llm::sim {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using namespace asio::experimental::awaitable_operators;

namespace {

constexpr auto kToken = asio::as_tuple(asio::use_awaitable);
// An idle keep-alive connection is closed after this long without a request.
constexpr auto kIdleReadTimeout = std::chrono::seconds(60);
constexpr size_t kMaxRequestBody = 8 * 1024 * 1024;
// A stall "until the client gives up" still ends some day, so a forgotten client cannot pin a
// connection for ever.
constexpr auto kStallForever = std::chrono::hours(24);
// Accept errors such as EMFILE are retried after this pause instead of ending the listener.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);
// z-score of the 99th percentile of a standard normal: sigma of the TTFT lognormal.
constexpr double kZ99 = 2.3263478740408408;
// Structured output is cut into tokens of about this many characters.
constexpr size_t kJsonCharsPerToken = 4;
// Tokens a chat message costs beyond its words (role, separators), as real tokenizers count.
constexpr int kTokensPerMessage = 3;

std::string ModelField(const std::string& requested) {
  return std::string(kSimModelName) + " (simulated: " + requested + ")";
}

std::string ErrorBody(const std::string& message, const char* type, const char* code,
                      const std::string& param = "") {
  json::object error{{"message", message},
                     {"type", type},
                     {"param", param.empty() ? json::value(nullptr) : json::value(param)},
                     {"code", code == nullptr ? json::value(nullptr) : json::value(code)}};
  return json::serialize(json::object{{"error", std::move(error)}}) + "\n";
}

uint64_t Mix(uint64_t a, uint64_t b) {
  // splitmix64 of the combination: nearby sequence numbers give unrelated streams.
  uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double SampleTtftMs(const TtftModel& m, std::mt19937_64& rng) {
  switch (m.kind) {
    case TtftModel::Kind::kFixed:
      return m.fixed_ms;
    case TtftModel::Kind::kUniform:
      return std::uniform_real_distribution<double>(m.uniform_min_ms, m.uniform_max_ms)(rng);
    case TtftModel::Kind::kLognormal: {
      const double mu = std::log(m.median_ms);
      const double sigma = (std::log(m.p99_ms) - mu) / kZ99;
      if (sigma <= 0) return m.median_ms;
      return std::lognormal_distribution<double>(mu, sigma)(rng);
    }
  }
  return 0;
}

// Splits `text` into tokens of about kJsonCharsPerToken characters, never inside a UTF-8
// sequence.
std::vector<std::string> CharTokens(const std::string& text) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < text.size()) {
    size_t end = std::min(text.size(), i + kJsonCharsPerToken);
    while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    out.push_back(text.substr(i, end - i));
    i = end;
  }
  return out;
}

// Appends `text` as a JSON string literal (quotes included).
void AppendJsonString(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += "\\u00";
          out += kHex[static_cast<unsigned char>(c) >> 4];
          out += kHex[static_cast<unsigned char>(c) & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

struct Plan {
  std::vector<std::string> tokens;
  std::string finish_reason = "stop";
  int prompt_tokens = 0;
  double ttft_ms = 0;
  double tokens_per_second = 0;
  ForcedFailure failure = ForcedFailure::kNone;
  int stall_seconds = 0;
  int retry_after_seconds = 0;
};

// Releases an admitted request's concurrency slot.
class InFlightSlot {
 public:
  explicit InFlightSlot(std::atomic<uint64_t>* counter) : counter_(counter) {}
  ~InFlightSlot() { counter_->fetch_sub(1); }
  InFlightSlot(const InFlightSlot&) = delete;
  InFlightSlot& operator=(const InFlightSlot&) = delete;

 private:
  std::atomic<uint64_t>* counter_;
};

}  // namespace

Status ValidateOptions(const SimOptions& o) {
  auto rate_ok = [](double r) { return r >= 0 && r <= 1; };
  if (o.threads < 0) return Status::InvalidArgument("threads: must be >= 0");
  const TtftModel& t = o.ttft;
  switch (t.kind) {
    case TtftModel::Kind::kFixed:
      if (!(t.fixed_ms >= 0)) return Status::InvalidArgument("ttft: must be >= 0 ms");
      break;
    case TtftModel::Kind::kUniform:
      if (!(t.uniform_min_ms >= 0 && t.uniform_min_ms <= t.uniform_max_ms)) {
        return Status::InvalidArgument("ttft uniform: need 0 <= MIN <= MAX");
      }
      break;
    case TtftModel::Kind::kLognormal:
      if (!(t.median_ms > 0 && t.p99_ms >= t.median_ms)) {
        return Status::InvalidArgument("ttft lognormal: need 0 < MEDIAN <= P99");
      }
      break;
  }
  if (!(o.tokens_per_second >= 0))
    return Status::InvalidArgument("tokens_per_second: must be >= 0");
  if (o.output_tokens_min < 0 || o.output_tokens_max < o.output_tokens_min) {
    return Status::InvalidArgument("output_tokens: need 0 <= MIN <= MAX");
  }
  if (o.max_concurrency < 0) return Status::InvalidArgument("max_concurrency: must be >= 0");
  if (!rate_ok(o.error_429_rate))
    return Status::InvalidArgument("error_429_rate: must be in [0, 1]");
  if (!rate_ok(o.error_500_rate))
    return Status::InvalidArgument("error_500_rate: must be in [0, 1]");
  if (!rate_ok(o.stall_rate)) return Status::InvalidArgument("stall_rate: must be in [0, 1]");
  if (!rate_ok(o.drop_rate)) return Status::InvalidArgument("drop_rate: must be in [0, 1]");
  if (o.error_429_rate + o.error_500_rate + o.stall_rate + o.drop_rate > 1 + 1e-9) {
    return Status::InvalidArgument("error rates: their sum must be <= 1");
  }
  if (o.retry_after_seconds < 0)
    return Status::InvalidArgument("retry_after_seconds: must be >= 0");
  if (o.stall_seconds < 0) return Status::InvalidArgument("stall_seconds: must be >= 0");
  return Status::Ok();
}

struct LlmSim::Impl {
  SimOptions options;
  std::string host;
  int port = 0;

  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> completed{0};
  std::atomic<uint64_t> in_flight{0};
  std::atomic<uint64_t> peak_in_flight{0};
  std::atomic<uint64_t> bad_requests{0};
  std::atomic<uint64_t> rejected_concurrency{0};
  std::atomic<uint64_t> injected_429{0};
  std::atomic<uint64_t> injected_500{0};
  std::atomic<uint64_t> injected_stall{0};
  std::atomic<uint64_t> injected_drop{0};
  std::atomic<uint64_t> sequence{0};

  // One io_context per thread, each run by its own thread; a connection stays on the shard it
  // was accepted onto. Its handlers never cross threads, and the shards share no scheduler
  // lock: 10k streams at 50 tokens/s are half a million timer wakeups and writes a second.
  // Declared after everything the coroutines touch: destroying a shard destroys its suspended
  // coroutine frames, whose destructors still update the counters above. Stop() destroys
  // them, and with them every connection's socket.
  std::vector<std::unique_ptr<asio::io_context>> shards;
  // Keeps each shard's run() going while it has no connection yet.
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> shard_work;
  std::optional<tcp::acceptor> acceptor;  // on shards[0]
  size_t next_shard = 0;                  // only the accept loop touches it
  std::vector<std::thread> threads;
  std::mutex stop_mu;

  explicit Impl(int shard_count) {
    for (int i = 0; i < shard_count; ++i) {
      // Hint 1: each context is run by exactly one thread.
      shards.push_back(std::make_unique<asio::io_context>(1));
      shard_work.push_back(asio::make_work_guard(*shards.back()));
    }
    acceptor.emplace(*shards.front());
  }

  // ---- responses

  static http::response<http::string_body> MakeResponse(unsigned version, bool keep_alive,
                                                        int status, std::string content_type,
                                                        std::string body) {
    http::response<http::string_body> res;
    res.version(version);
    res.keep_alive(keep_alive);
    res.result(static_cast<http::status>(status));
    res.set(http::field::server, kSimModelName);
    res.set(http::field::content_type, content_type);
    res.body() = std::move(body);
    res.prepare_payload();
    return res;
  }

  // Writes `res`; whether the connection stays open.
  static asio::awaitable<bool> Send(beast::tcp_stream& stream,
                                    http::response<http::string_body> res) {
    auto [ec, n] = co_await http::async_write(stream, res, kToken);
    co_return !ec && res.keep_alive();
  }

  std::string ModelsJson() const {
    json::array data;
    data.push_back(ModelObject(kSimModelName));
    return json::serialize(json::object{{"object", "list"}, {"data", std::move(data)}}) + "\n";
  }

  static json::object ModelObject(std::string_view id) {
    return {{"id", id}, {"object", "model"}, {"created", 0}, {"owned_by", "tidepool (simulator)"}};
  }

  // ---- planning a completion

  Plan MakePlan(const ChatRequest& req, std::mt19937_64& rng) const {
    Plan p;
    for (const PromptMessage& m : req.messages) {
      p.prompt_tokens += CountTokens(m.content) + kTokensPerMessage;
    }
    p.ttft_ms = req.ttft_ms ? *req.ttft_ms : SampleTtftMs(options.ttft, rng);
    p.tokens_per_second = req.tokens_per_second.value_or(options.tokens_per_second);
    p.stall_seconds = req.stall_seconds.value_or(options.stall_seconds);
    p.retry_after_seconds = req.retry_after_seconds.value_or(options.retry_after_seconds);
    p.failure = req.fail;
    if (p.failure == ForcedFailure::kNone) {
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      double edge = options.error_429_rate;
      if (u < edge) {
        p.failure = ForcedFailure::k429;
      } else if (u < (edge += options.error_500_rate)) {
        p.failure = ForcedFailure::k500;
      } else if (u < (edge += options.stall_rate)) {
        p.failure = ForcedFailure::kStall;
      } else if (u < (edge += options.drop_rate)) {
        p.failure = ForcedFailure::kDrop;
      }
    }

    // Content depends on the prompt and the seed only: the same request, the same reply.
    const uint64_t content_seed = Mix(HashMessages(req.messages), options.seed);
    const auto [min_tokens, max_tokens] =
        req.output_tokens.value_or(std::pair(options.output_tokens_min, options.output_tokens_max));
    const int length =
        min_tokens +
        static_cast<int>(content_seed % static_cast<uint64_t>(max_tokens - min_tokens + 1));
    switch (req.format) {
      case ResponseFormat::kText:
        p.tokens = GenerateReply(req.messages, length, content_seed);
        break;
      case ResponseFormat::kJsonObject: {
        std::string text;
        for (const std::string& t : GenerateReply(req.messages, length, content_seed)) text += t;
        p.tokens = CharTokens(json::serialize(json::object{{"response", text}}));
        break;
      }
      case ResponseFormat::kJsonSchema:
        p.tokens = CharTokens(json::serialize(FillSchema(req.schema, UserTexts(req))));
        break;
    }
    if (req.max_tokens && p.tokens.size() > static_cast<size_t>(*req.max_tokens)) {
      p.tokens.resize(static_cast<size_t>(*req.max_tokens));
      p.finish_reason = "length";
    }
    return p;
  }

  static Clock::duration Millis(double ms) {
    return std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double, std::milli>(ms));
  }

  // When token `i` (0-based) is due, counted from the first token.
  static Clock::duration TokenOffset(size_t i, double tokens_per_second) {
    if (tokens_per_second <= 0) return Clock::duration::zero();
    return std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(static_cast<double>(i) / tokens_per_second));
  }

  // Waits `duration`, or until the client closes the connection; false in the second case.
  static asio::awaitable<bool> WaitUnlessClientGone(beast::tcp_stream& stream,
                                                    asio::steady_timer& timer,
                                                    Clock::duration duration) {
    timer.expires_after(duration);
    char byte = 0;
    auto result = co_await (timer.async_wait(kToken) ||
                            stream.socket().async_read_some(asio::buffer(&byte, 1), kToken));
    co_return result.index() == 0;
  }

  // Writes `buffers` at once when the socket takes them all, as it does a few hundred bytes
  // unless the client stopped reading; the rest, if any, asynchronously. An async_write alone
  // always completes through the shard's queue, and with 10k streams in it every token would
  // wait a whole turn of the queue for its own write to be reported. The socket is
  // non-blocking (StartSession); whether the connection is still good. `buffers` is taken by
  // value: the coroutine starts after the caller's temporaries are gone.
  template <typename Buffers>
  static asio::awaitable<bool> WriteNow(beast::tcp_stream& stream, Buffers buffers) {
    boost::system::error_code ec;
    const size_t written = stream.socket().write_some(buffers, ec);
    if (ec && ec != asio::error::would_block) co_return false;
    if (written == beast::buffer_bytes(buffers)) co_return true;
    beast::buffers_suffix<Buffers> rest(buffers);
    rest.consume(written);
    auto [write_ec, n] = co_await asio::async_write(stream, rest, kToken);
    co_return !write_ec;
  }

  static asio::awaitable<void> SleepUntil(asio::steady_timer& timer, Clock::time_point when) {
    if (Clock::now() >= when) co_return;
    timer.expires_at(when);
    co_await timer.async_wait(kToken);
  }

  // ---- the completion itself

  asio::awaitable<bool> Completion(beast::tcp_stream& stream,
                                   const http::request<http::string_body>& req) {
    requests.fetch_add(1);
    const unsigned version = req.version();
    const bool keep_alive = req.keep_alive();
    std::map<std::string, std::string> headers;
    for (const auto& field : req) {
      const std::string name = Lower(field.name_string());
      if (name.rfind("x-sim-", 0) == 0) headers[name] = std::string(field.value());
    }
    Result<ChatRequest> parsed = ParseChatRequest(req.body(), headers);
    if (!parsed.ok()) {
      bad_requests.fetch_add(1);
      const std::string message = parsed.status().message();
      const std::string param = message.substr(0, message.find(':'));
      co_return co_await Send(stream, MakeResponse(version, keep_alive, 400, "application/json",
                                                   ErrorBody(message, "invalid_request_error",
                                                             "invalid_request", param)));
    }
    const ChatRequest& chat = *parsed;

    // Admission: over max_concurrency is a 429, like a provider's concurrency limit.
    const uint64_t before = in_flight.fetch_add(1);
    InFlightSlot slot(&in_flight);
    if (options.max_concurrency > 0 && before >= static_cast<uint64_t>(options.max_concurrency)) {
      rejected_concurrency.fetch_add(1);
      auto res = MakeResponse(
          version, keep_alive, 429, "application/json",
          ErrorBody("Simulated concurrency limit of " + std::to_string(options.max_concurrency) +
                        " requests reached; retry later.",
                    "requests", "rate_limit_exceeded"));
      res.set(http::field::retry_after, std::to_string(options.retry_after_seconds));
      co_return co_await Send(stream, std::move(res));
    }
    uint64_t peak = peak_in_flight.load();
    while (before + 1 > peak && !peak_in_flight.compare_exchange_weak(peak, before + 1)) {
    }

    std::mt19937_64 rng(Mix(options.seed, sequence.fetch_add(1)));
    const Plan plan = MakePlan(chat, rng);
    if (plan.failure == ForcedFailure::k429) {
      injected_429.fetch_add(1);
      auto res = MakeResponse(version, keep_alive, 429, "application/json",
                              ErrorBody("Rate limit reached (simulated); retry after " +
                                            std::to_string(plan.retry_after_seconds) + " s.",
                                        "requests", "rate_limit_exceeded"));
      res.set(http::field::retry_after, std::to_string(plan.retry_after_seconds));
      co_return co_await Send(stream, std::move(res));
    }
    if (plan.failure == ForcedFailure::k500) {
      injected_500.fetch_add(1);
      co_return co_await Send(
          stream, MakeResponse(version, keep_alive, 500, "application/json",
                               ErrorBody("The server had an error while processing your request "
                                         "(simulated).",
                                         "server_error", nullptr)));
    }
    const std::string id = "chatcmpl-sim-" + std::to_string(sequence.load()) + "-" +
                           std::to_string(rng() % 1'000'000'000);
    if (chat.stream) co_return co_await Stream(stream, chat, plan, id, version, keep_alive);
    co_return co_await Whole(stream, chat, plan, id, version, keep_alive);
  }

  json::object Usage(const Plan& plan) const {
    const int completion = static_cast<int>(plan.tokens.size());
    return {{"prompt_tokens", plan.prompt_tokens},
            {"completion_tokens", completion},
            {"total_tokens", plan.prompt_tokens + completion}};
  }

  // Stall and drop happen halfway through the output.
  static size_t FailurePoint(const Plan& plan) { return plan.tokens.size() / 2; }

  asio::awaitable<bool> Whole(beast::tcp_stream& stream, const ChatRequest& chat, const Plan& plan,
                              const std::string& id, unsigned version, bool keep_alive) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    const Clock::time_point start = Clock::now();
    const Clock::time_point first = start + Millis(plan.ttft_ms);
    const Clock::time_point done =
        first +
        TokenOffset(plan.tokens.empty() ? 0 : plan.tokens.size() - 1, plan.tokens_per_second);
    if (plan.failure == ForcedFailure::kDrop) {
      injected_drop.fetch_add(1);
      co_await SleepUntil(timer, first);
      co_return false;
    }
    if (plan.failure == ForcedFailure::kStall) {
      injected_stall.fetch_add(1);
      const bool forever = plan.stall_seconds == 0;
      const Clock::duration d = forever ? Clock::duration(kStallForever)
                                        : Clock::duration(std::chrono::seconds(plan.stall_seconds));
      if (!co_await WaitUnlessClientGone(stream, timer, d) || forever) co_return false;
    }
    co_await SleepUntil(timer, done);
    std::string content;
    for (const std::string& t : plan.tokens) content += t;
    json::object message{{"role", "assistant"}, {"content", content}, {"refusal", nullptr}};
    json::array choices;
    choices.push_back(json::object{{"index", 0},
                                   {"message", std::move(message)},
                                   {"logprobs", nullptr},
                                   {"finish_reason", plan.finish_reason}});
    json::object body{{"id", id},
                      {"object", "chat.completion"},
                      {"created", static_cast<int64_t>(std::time(nullptr))},
                      {"model", ModelField(chat.model)},
                      {"choices", std::move(choices)},
                      {"usage", Usage(plan)}};
    // Counted before the write, so a client that has the reply also sees it counted.
    completed.fetch_add(1);
    co_return co_await Send(stream, MakeResponse(version, keep_alive, 200, "application/json",
                                                 json::serialize(body) + "\n"));
  }

  asio::awaitable<bool> Stream(beast::tcp_stream& stream, const ChatRequest& chat, const Plan& plan,
                               const std::string& id, unsigned version, bool keep_alive) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    const Clock::time_point start = Clock::now();
    const Clock::time_point first = start + Millis(plan.ttft_ms);

    http::response<http::empty_body> head;
    head.version(version);
    head.keep_alive(keep_alive);
    head.result(http::status::ok);
    head.set(http::field::server, kSimModelName);
    head.set(http::field::content_type, "text/event-stream");
    head.set(http::field::cache_control, "no-cache");
    head.chunked(true);
    // Sent together with the first chunk: one write, not two.
    std::ostringstream head_text;
    head_text << head.base();
    const std::string head_bytes = std::move(head_text).str();

    // Every chunk shares this prefix; only the delta and finish_reason vary. Pre-serialized,
    // because 10k streams at 50 tokens/s make this the hot path.
    const std::string prefix =
        "data: {\"id\":\"" + id + "\",\"object\":\"chat.completion.chunk\",\"created\":" +
        std::to_string(std::time(nullptr)) +
        ",\"model\":" + json::serialize(json::string(ModelField(chat.model))) +
        ",\"choices\":[{\"index\":0,\"delta\":";
    const std::string_view usage_null = chat.include_usage ? ",\"usage\":null" : "";
    // Appends one event to `out`; a content delta is {"content":TOKEN}. Appending into one
    // buffer reused for every write keeps the per-token path free of allocations.
    auto append_event = [&](std::string& out, const std::string* token, std::string_view delta_json,
                            std::string_view finish_reason) {
      out += prefix;
      if (token != nullptr) {
        out += "{\"content\":";
        AppendJsonString(out, *token);
        out += '}';
      } else {
        out += delta_json;
      }
      out += ",\"logprobs\":null,\"finish_reason\":";
      if (finish_reason.empty()) {
        out += "null";
      } else {
        AppendJsonString(out, finish_reason);
      }
      out += "}]";
      out += usage_null;
      out += "}\n\n";
    };
    auto write_chunk = [&stream](const std::string& data) {
      return WriteNow(stream, http::make_chunk(asio::buffer(data)));
    };

    std::string batch;
    append_event(batch, nullptr, "{\"role\":\"assistant\",\"content\":\"\"}", "");
    if (!co_await WriteNow(stream, beast::buffers_cat(asio::buffer(head_bytes),
                                                      http::make_chunk(asio::buffer(batch))))) {
      co_return false;
    }
    const size_t failure_point = FailurePoint(plan);
    size_t next = 0;
    while (next < plan.tokens.size()) {
      if (next == failure_point && plan.failure == ForcedFailure::kDrop) {
        injected_drop.fetch_add(1);
        co_await SleepUntil(timer, first + TokenOffset(next, plan.tokens_per_second));
        co_return false;
      }
      if (next == failure_point && plan.failure == ForcedFailure::kStall) {
        injected_stall.fetch_add(1);
        const bool forever = plan.stall_seconds == 0;
        const Clock::duration d = forever
                                      ? Clock::duration(kStallForever)
                                      : Clock::duration(std::chrono::seconds(plan.stall_seconds));
        if (!co_await WaitUnlessClientGone(stream, timer, d) || forever) co_return false;
      }
      co_await SleepUntil(timer, first + TokenOffset(next, plan.tokens_per_second));
      // Every token already due goes out in one write: a slow loop catches up instead of
      // falling further behind.
      batch.clear();
      const Clock::time_point now = Clock::now();
      do {
        append_event(batch, &plan.tokens[next], "", "");
        ++next;
      } while (next < plan.tokens.size() && next != failure_point &&
               first + TokenOffset(next, plan.tokens_per_second) <= now);
      if (!co_await write_chunk(batch)) co_return false;
    }
    std::string tail;
    append_event(tail, nullptr, "{}", plan.finish_reason);
    if (chat.include_usage) {
      tail += "data: " +
              json::serialize(json::object{{"id", id},
                                           {"object", "chat.completion.chunk"},
                                           {"created", static_cast<int64_t>(std::time(nullptr))},
                                           {"model", ModelField(chat.model)},
                                           {"choices", json::array()},
                                           {"usage", Usage(plan)}}) +
              "\n\n";
    }
    tail += "data: [DONE]\n\n";
    completed.fetch_add(1);
    // The last events and the end of the body in one write, so that the client sees the
    // reply end as soon as it sees [DONE].
    if (!co_await WriteNow(stream, beast::buffers_cat(http::make_chunk(asio::buffer(tail)),
                                                      http::make_chunk_last()))) {
      co_return false;
    }
    co_return keep_alive;
  }

  // ---- routing and connections

  asio::awaitable<bool> Handle(beast::tcp_stream& stream,
                               const http::request<http::string_body>& req) {
    const std::string target(req.target());
    const std::string path = target.substr(0, target.find('?'));
    const unsigned version = req.version();
    const bool keep_alive = req.keep_alive();
    auto json_reply = [&](int status, std::string body) {
      return MakeResponse(version, keep_alive, status, "application/json", std::move(body));
    };
    auto not_allowed = [&](const char* allowed) {
      auto res =
          json_reply(405, ErrorBody("Method " + std::string(req.method_string()) +
                                        " is not allowed on " + path + " (use " + allowed + ").",
                                    "invalid_request_error", "method_not_allowed"));
      res.set(http::field::allow, allowed);
      return res;
    };
    if (path == "/v1/chat/completions") {
      if (req.method() != http::verb::post) co_return co_await Send(stream, not_allowed("POST"));
      co_return co_await Completion(stream, req);
    }
    if (path == "/healthz") {
      if (req.method() != http::verb::get) co_return co_await Send(stream, not_allowed("GET"));
      co_return co_await Send(stream, MakeResponse(version, keep_alive, 200, "text/plain", "ok\n"));
    }
    if (path == "/v1/models" || path.rfind("/v1/models/", 0) == 0) {
      if (req.method() != http::verb::get) co_return co_await Send(stream, not_allowed("GET"));
      if (path == "/v1/models") co_return co_await Send(stream, json_reply(200, ModelsJson()));
      // Any model id is served (simulated), so clients that check their model first work.
      const std::string model_id = path.substr(std::string_view("/v1/models/").size());
      co_return co_await Send(stream,
                              json_reply(200, json::serialize(ModelObject(model_id)) + "\n"));
    }
    co_return co_await Send(stream,
                            json_reply(404, ErrorBody("Unknown path " + path +
                                                          " (the simulator serves "
                                                          "/v1/chat/completions, "
                                                          "/v1/models and /healthz).",
                                                      "invalid_request_error", "unknown_url")));
  }

  asio::awaitable<void> Session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    for (;;) {
      stream.expires_after(kIdleReadTimeout);
      http::request_parser<http::string_body> parser;
      parser.body_limit(kMaxRequestBody);
      auto [ec, n] = co_await http::async_read(stream, buffer, parser, kToken);
      if (ec == http::error::body_limit) {
        auto res = MakeResponse(
            11, false, 413, "application/json",
            ErrorBody("Request body is larger than " + std::to_string(kMaxRequestBody) + " bytes.",
                      "invalid_request_error", "request_too_large"));
        co_await Send(stream, std::move(res));
        co_return;
      }
      if (ec) co_return;
      // Off while a reply is produced: a stream may legitimately take minutes.
      stream.expires_never();
      if (!co_await Handle(stream, parser.get())) co_return;
    }
  }

  void StartSession(tcp::socket socket) {
    boost::system::error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    // WriteNow's write_some must return would_block rather than wait.
    socket.non_blocking(true, ec);
    auto executor = socket.get_executor();
    asio::co_spawn(executor, Session(std::move(socket)), asio::detached);
  }

  asio::awaitable<void> Accept() {
    asio::steady_timer backoff(*shards.front());
    boost::system::error_code ec;
    // So that the backlog can be drained below without blocking.
    acceptor->non_blocking(true, ec);
    for (;;) {
      // Round robin: a new connection lives on the next shard.
      auto [accept_ec, socket] =
          co_await acceptor->async_accept(*shards[next_shard % shards.size()], kToken);
      if (accept_ec == asio::error::operation_aborted || !acceptor->is_open()) co_return;
      if (accept_ec) {
        backoff.expires_after(kAcceptRetryDelay);
        co_await backoff.async_wait(kToken);
        continue;
      }
      ++next_shard;
      StartSession(std::move(socket));
      // Take every connection already waiting as well. Each async_accept completes through
      // the shard's queue; with thousands of streams in it, one accept per turn of the queue
      // left connections in the backlog for seconds, and the kernel dropped new ones.
      for (;;) {
        tcp::socket next(*shards[next_shard % shards.size()]);
        acceptor->accept(next, ec);
        if (ec) break;  // would_block: the backlog is empty (other errors: the next async_accept)
        ++next_shard;
        StartSession(std::move(next));
      }
    }
  }
};

LlmSim::LlmSim(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

LlmSim::~LlmSim() {
  Stop();
}

Result<std::unique_ptr<LlmSim>> LlmSim::Start(SimOptions options) {
  TP_RETURN_IF_ERROR(ValidateOptions(options));
  const std::string listen = options.listen;
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("listen: \"" + listen + "\" is not HOST:PORT");
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) return Status::InvalidArgument("listen: \"" + listen + "\": " + ec.message());
  char* end = nullptr;
  const long port = std::strtol(listen.c_str() + colon + 1, &end, 10);
  if (colon + 1 == listen.size() || *end != '\0' || port < 0 || port > 65535) {
    return Status::InvalidArgument("listen: \"" + listen + "\" has no valid port");
  }
  const int threads = options.threads > 0
                          ? options.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  auto impl = std::make_unique<Impl>(threads);
  impl->options = std::move(options);
  impl->host = host;
  const tcp::endpoint endpoint(address, static_cast<uint16_t>(port));
  impl->acceptor->open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor->bind(endpoint, ec);
  if (!ec) impl->acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::Unavailable("cannot listen on " + listen + ": " + ec.message());
  impl->port = impl->acceptor->local_endpoint().port();
  asio::co_spawn(*impl->shards.front(), impl->Accept(), asio::detached);
  // Start returns once every thread runs with its priority and CPUs. Shared: a thread may
  // still be inside count_down when Start has returned.
  auto started = std::make_shared<std::latch>(static_cast<std::ptrdiff_t>(impl->shards.size()));
  for (const auto& shard : impl->shards) {
    // From impl->options: `options` was moved from above.
    impl->threads.emplace_back(
        [io = shard.get(), nice = impl->options.nice, cpus = impl->options.cpus, started] {
          // Best effort: a thread that cannot lower its priority or be pinned still serves.
          if (nice > 0) (void)LowerCurrentThreadPriority(nice);
          if (!cpus.empty()) (void)PinCurrentThread(cpus);
          SetCurrentThreadName("llm-sim");
          started->count_down();
          io->run();
        });
  }
  started->wait();
  return std::unique_ptr<LlmSim>(new LlmSim(std::move(impl)));
}

int LlmSim::port() const {
  return impl_->port;
}

std::string LlmSim::base_url() const {
  std::string host = impl_->host;
  if (host == "0.0.0.0" || host == "::") host = "127.0.0.1";
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return "http://" + host + ":" + std::to_string(impl_->port) + "/v1";
}

SimCounters LlmSim::counters() const {
  const Impl& i = *impl_;
  return {.requests = i.requests.load(),
          .completed = i.completed.load(),
          .in_flight = i.in_flight.load(),
          .peak_in_flight = i.peak_in_flight.load(),
          .bad_requests = i.bad_requests.load(),
          .rejected_concurrency = i.rejected_concurrency.load(),
          .injected_429 = i.injected_429.load(),
          .injected_500 = i.injected_500.load(),
          .injected_stall = i.injected_stall.load(),
          .injected_drop = i.injected_drop.load()};
}

void LlmSim::Stop() {
  if (!impl_) return;
  std::lock_guard<std::mutex> lock(impl_->stop_mu);
  if (impl_->threads.empty()) return;
  for (const auto& shard : impl_->shards) shard->stop();
  for (std::thread& t : impl_->threads) t.join();
  impl_->threads.clear();
  // Destroying the shards destroys the suspended coroutines, closing their sockets.
  impl_->acceptor.reset();
  impl_->shard_work.clear();
  impl_->shards.clear();
}

}  // namespace tidepool::llm::sim
