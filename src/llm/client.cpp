#include "llm/client.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <random>
#include <sstream>
#include <type_traits>

#include <openssl/ssl.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/json.hpp>

#include "llm/rate_limiter.h"
#include "llm/sse_parser.h"
#include "llm/stream_chunk.h"

namespace tidepool::llm {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr auto kToken = asio::as_tuple(asio::use_awaitable);

// Bytes read from a stream per read; also bounds how much one stream holds at a time.
constexpr size_t kReadChunk = 4096;
// A non-streamed reply (or an error body) larger than this is refused.
constexpr size_t kMaxReplyBody = 16 * 1024 * 1024;
// Error bodies are quoted in messages up to this length.
constexpr size_t kMaxQuotedError = 500;
// Resolved addresses are reused for this long: thousands of streams opening at once do one
// lookup, not thousands.
constexpr auto kResolveCacheTtl = std::chrono::seconds(60);
// Token estimate of a request: about four characters per token, a few tokens of framing per
// message, and this many completion tokens when the request sets no max_tokens.
constexpr double kCharsPerToken = 4.0;
constexpr double kTokensPerMessage = 4.0;
constexpr double kDefaultCompletionEstimate = 256.0;
constexpr char kRedacted[] = "[redacted]";

struct Endpoint {
  bool tls = false;
  std::string host;         // without brackets
  std::string port;         // numeric or service name
  std::string host_header;  // host[:port] as sent in Host
  std::string target;       // path of /chat/completions
};

Result<Endpoint> ParseBaseUrl(const std::string& url) {
  Endpoint endpoint;
  std::string_view rest = url;
  if (rest.starts_with("https://")) {
    endpoint.tls = true;
    rest.remove_prefix(8);
  } else if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else {
    return Status::InvalidArgument("base_url \"" + url + "\" must start with http:// or https://");
  }
  const size_t slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  std::string path(slash == std::string_view::npos ? "" : rest.substr(slash));
  while (!path.empty() && path.back() == '/') path.pop_back();
  std::string_view host = authority;
  std::string_view port;
  if (authority.starts_with('[')) {  // IPv6 literal
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return Status::InvalidArgument("base_url \"" + url + "\" has an unterminated IPv6 host");
    }
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':') {
      port = authority.substr(close + 2);
    }
  } else if (const size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty()) return Status::InvalidArgument("base_url \"" + url + "\" has no host");
  endpoint.host = std::string(host);
  endpoint.port = port.empty() ? (endpoint.tls ? "443" : "80") : std::string(port);
  endpoint.host_header = std::string(authority);
  endpoint.target = path + "/chat/completions";
  return endpoint;
}

bool IsIpLiteral(const std::string& host) {
  boost::system::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

std::string Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

double Uniform(double low, double high) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  if (high <= low) return low;
  return std::uniform_real_distribution<double>(low, high)(rng);
}

// Full jitter: uniform in [0, min(max, initial * 2^(retry-1))].
milliseconds Backoff(const ProviderOptions& options, int retry) {
  const double ceiling =
      std::min(static_cast<double>(options.max_backoff.count()),
               static_cast<double>(options.initial_backoff.count()) * std::ldexp(1.0, retry - 1));
  return milliseconds(static_cast<int64_t>(Uniform(0, ceiling)));
}

double EstimateTokens(const ChatRequest& request) {
  double chars = 0;
  for (const auto& message : request.messages) chars += static_cast<double>(message.content.size());
  const double prompt =
      chars / kCharsPerToken + kTokensPerMessage * static_cast<double>(request.messages.size());
  const double completion =
      request.max_tokens ? static_cast<double>(*request.max_tokens) : kDefaultCompletionEstimate;
  return prompt + completion;
}

// Pulls the server's own words out of an error body: {"error": {"message": ...}} (OpenAI and
// most compatibles), {"error": "..."} (Ollama) or the body itself.
std::string ServerErrorMessage(const std::string& body) {
  boost::system::error_code ec;
  const json::value parsed = json::parse(body, ec);
  if (!ec && parsed.is_object()) {
    const json::value* error = parsed.as_object().if_contains("error");
    if (error != nullptr && error->is_string()) return std::string(error->as_string());
    if (error != nullptr && error->is_object()) {
      if (const auto* message = error->as_object().if_contains("message");
          message != nullptr && message->is_string()) {
        return std::string(message->as_string());
      }
    }
  }
  std::string quoted = Trim(body);
  if (quoted.size() > kMaxQuotedError) {
    quoted.resize(kMaxQuotedError);
    quoted += "...";
  }
  return quoted;
}

bool IsRetryableHttpStatus(unsigned status) {
  switch (status) {
    case 408:
    case 429:
    case 500:
    case 502:
    case 503:
    case 504:
      return true;
    default:
      return false;
  }
}

StatusCode CodeForHttpStatus(unsigned status) {
  switch (status) {
    case 400:
    case 404:
    case 409:
    case 413:
    case 422:
      return StatusCode::kInvalidArgument;
    case 401:
      return StatusCode::kUnauthenticated;
    case 403:
      return StatusCode::kPermissionDenied;
    case 408:
    case 504:
      return StatusCode::kDeadlineExceeded;
    case 429:
      return StatusCode::kResourceExhausted;
    case 501:
      return StatusCode::kUnimplemented;
    default:
      return status >= 500 ? StatusCode::kUnavailable : StatusCode::kInternal;
  }
}

std::string StringOr(const json::object& object, std::string_view key) {
  const json::value* value = object.if_contains(key);
  return value != nullptr && value->is_string() ? std::string(value->as_string()) : std::string();
}

void ReadUsage(const json::value& value, Usage* usage) {
  if (!value.is_object()) return;
  const auto& object = value.as_object();
  auto number = [&](std::string_view key) -> int64_t {
    const json::value* field = object.if_contains(key);
    if (field == nullptr) return 0;
    if (field->is_int64()) return field->as_int64();
    if (field->is_uint64()) return static_cast<int64_t>(field->as_uint64());
    if (field->is_double()) return static_cast<int64_t>(field->as_double());
    return 0;
  };
  usage->prompt_tokens = number("prompt_tokens");
  usage->completion_tokens = number("completion_tokens");
  usage->total_tokens = number("total_tokens");
  if (usage->total_tokens == 0)
    usage->total_tokens = usage->prompt_tokens + usage->completion_tokens;
}

}  // namespace

// ---- public helpers

std::optional<milliseconds> ParseRetryAfter(std::string_view value,
                                            std::chrono::system_clock::time_point now) {
  const std::string text = Trim(value);
  if (text.empty()) return std::nullopt;
  double seconds = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), seconds);
  if (ec == std::errc() && end == text.data() + text.size()) {
    if (seconds < 0 || !std::isfinite(seconds)) return std::nullopt;
    return milliseconds(static_cast<int64_t>(seconds * 1000));
  }
  // An HTTP date (IMF-fixdate), e.g. "Wed, 21 Oct 2015 07:28:00 GMT".
  std::tm tm{};
  std::istringstream in(text);
  in.imbue(std::locale::classic());
  in >> std::get_time(&tm, "%a, %d %b %Y %H:%M:%S");
  if (in.fail()) return std::nullopt;
  const std::time_t when = timegm(&tm);
  if (when == static_cast<std::time_t>(-1)) return std::nullopt;
  const auto delta = std::chrono::system_clock::from_time_t(when) - now;
  return std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(delta));
}

Result<std::string> LoadApiKey(const std::string& env_name, const std::string& file) {
  if (!env_name.empty()) {
    const char* value = std::getenv(env_name.c_str());
    if (value == nullptr || Trim(value).empty()) {
      return Status::Unauthenticated("API key environment variable " + env_name + " is not set");
    }
    return Trim(value);
  }
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return Status::Unauthenticated("cannot read API key file " + file);
    std::ostringstream content;
    content << in.rdbuf();
    std::string key = Trim(content.str());
    if (key.empty()) return Status::Unauthenticated("API key file " + file + " is empty");
    return key;
  }
  return std::string();
}

std::string LlmClient::BuildRequestBody(const ChatRequest& request, bool stream) {
  json::object body;
  body["model"] = request.model;
  json::array messages;
  messages.reserve(request.messages.size());
  for (const auto& message : request.messages) {
    messages.push_back(json::object{{"role", message.role}, {"content", message.content}});
  }
  body["messages"] = std::move(messages);
  body["stream"] = stream;
  // Without include_usage a streamed reply carries no token counts.
  if (stream) body["stream_options"] = json::object{{"include_usage", true}};
  if (request.max_tokens) body["max_tokens"] = *request.max_tokens;
  if (request.temperature) body["temperature"] = *request.temperature;
  if (request.json_schema) {
    body["response_format"] =
        json::object{{"type", "json_schema"},
                     {"json_schema", json::object{{"name", request.json_schema->name},
                                                  {"schema", request.json_schema->schema},
                                                  {"strict", request.json_schema->strict}}}};
  } else if (request.json_object) {
    body["response_format"] = json::object{{"type", "json_object"}};
  }
  return json::serialize(body);
}

// ---- implementation

namespace {

// One keep-alive connection: plain or TLS. Owned by one attempt at a time, else by the pool.
struct Connection {
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
  beast::flat_buffer buffer;
  Clock::time_point idle_since;

  beast::tcp_stream& lowest() { return plain ? *plain : beast::get_lowest_layer(*secure); }
};

// Per-model admission state.
struct ModelState {
  ModelState(const asio::any_io_executor& executor, const ModelLimits& limits, milliseconds burst)
      : concurrency(executor, limits.max_concurrency),
        requests(limits.requests_per_minute, limits.requests_per_minute * BurstMinutes(burst)),
        tokens(limits.tokens_per_minute, limits.tokens_per_minute * BurstMinutes(burst)) {}
  static double BurstMinutes(milliseconds burst) {
    return std::chrono::duration<double, std::ratio<60>>(burst).count();
  }

  AsyncSemaphore concurrency;
  TokenBucket requests;
  TokenBucket tokens;
  std::mutex mu;
  Clock::time_point paused_until;  // guarded by mu: set from a 429's Retry-After
};

// What one attempt produced.
struct Attempt {
  Status status;
  bool retryable = false;
  std::optional<milliseconds> retry_after;
  bool delivered = false;   // content already handed to the caller
  bool stale_conn = false;  // a reused connection failed before any reply byte: try a fresh one
  bool reusable = false;    // the exchange ended cleanly on a keep-alive connection
  ChatResult result;
};

Attempt Failed(Status status, bool retryable) {
  Attempt attempt;
  attempt.status = std::move(status);
  attempt.retryable = retryable;
  return attempt;
}

bool IsConnectionLoss(const boost::system::error_code& ec) {
  return ec == asio::error::eof || ec == http::error::end_of_stream ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == asio::error::connection_aborted || ec == http::error::partial_message ||
         ec == asio::ssl::error::stream_truncated;
}

}  // namespace

struct LlmClient::Impl {
  Impl(asio::any_io_executor executor_in, ProviderOptions options_in, Endpoint endpoint_in,
       std::string api_key_in)
      : executor(std::move(executor_in)),
        options(std::move(options_in)),
        endpoint(std::move(endpoint_in)),
        api_key(std::move(api_key_in)),
        ssl_context(ssl::context::tls_client) {}

  asio::awaitable<Result<ChatResult>> Call(ChatRequest request, bool stream,
                                           DeltaCallback on_delta);
  // `request` is the whole HTTP request as sent (header and body).
  asio::awaitable<Attempt> RunAttempt(const std::string& request, bool stream,
                                      const DeltaCallback& on_delta, Clock::time_point call_start);
  template <typename AsyncStream>
  asio::awaitable<Attempt> Exchange(AsyncStream& stream, Connection& conn,
                                    const std::string& request, bool stream_mode,
                                    const DeltaCallback& on_delta, Clock::time_point call_start,
                                    Clock::time_point attempt_deadline, bool reused);
  // `*permanent` is set when retrying cannot help (the server's certificate is not trusted).
  asio::awaitable<Result<std::unique_ptr<Connection>>> Connect(Clock::time_point deadline,
                                                               bool* permanent);
  asio::awaitable<Result<tcp::resolver::results_type>> Resolve();
  std::unique_ptr<Connection> TakeIdle();
  void ReturnIdle(std::unique_ptr<Connection> conn);
  std::shared_ptr<ModelState> Model(const std::string& name);
  Status Redact(Status status) const;

  asio::any_io_executor executor;
  const ProviderOptions options;
  const Endpoint endpoint;
  const std::string api_key;
  ssl::context ssl_context;

  std::mutex pool_mu;
  std::vector<std::unique_ptr<Connection>> idle;  // most recently used last

  std::mutex resolve_mu;
  tcp::resolver::results_type resolved;
  Clock::time_point resolved_at;

  std::mutex models_mu;
  std::map<std::string, std::shared_ptr<ModelState>> models;

  struct Counters {
    std::atomic<uint64_t> calls{0}, succeeded{0}, failed{0}, attempts{0}, retries{0},
        rate_limited{0}, connections_opened{0}, connections_reused{0}, in_flight{0},
        peak_in_flight{0}, prompt_tokens{0}, completion_tokens{0};
  } counters;
};

Status LlmClient::Impl::Redact(Status status) const {
  if (api_key.empty() || status.message().find(api_key) == std::string::npos) return status;
  std::string message = status.message();
  for (size_t at = message.find(api_key); at != std::string::npos;
       at = message.find(api_key, at + sizeof(kRedacted) - 1)) {
    message.replace(at, api_key.size(), kRedacted);
  }
  return Status(status.code(), std::move(message));
}

std::shared_ptr<ModelState> LlmClient::Impl::Model(const std::string& name) {
  std::lock_guard lock(models_mu);
  auto& state = models[name];
  if (!state) {
    const auto found = options.model_limits.find(name);
    const ModelLimits& limits =
        found != options.model_limits.end() ? found->second : options.limits;
    state = std::make_shared<ModelState>(executor, limits, options.rate_burst);
  }
  return state;
}

std::unique_ptr<Connection> LlmClient::Impl::TakeIdle() {
  std::lock_guard lock(pool_mu);
  const auto now = Clock::now();
  while (!idle.empty()) {
    std::unique_ptr<Connection> conn = std::move(idle.back());
    idle.pop_back();
    if (now - conn->idle_since < options.idle_connection_ttl) return conn;
  }
  return nullptr;
}

void LlmClient::Impl::ReturnIdle(std::unique_ptr<Connection> conn) {
  conn->idle_since = Clock::now();
  conn->buffer.clear();
  std::lock_guard lock(pool_mu);
  if (idle.size() >= options.max_idle_connections) return;  // closed on destruction
  idle.push_back(std::move(conn));
}

asio::awaitable<Result<tcp::resolver::results_type>> LlmClient::Impl::Resolve() {
  {
    std::lock_guard lock(resolve_mu);
    if (!resolved.empty() && Clock::now() - resolved_at < kResolveCacheTtl) co_return resolved;
  }
  tcp::resolver resolver(executor);
  auto [ec, results] = co_await resolver.async_resolve(endpoint.host, endpoint.port, kToken);
  if (ec) {
    co_return Status::Unavailable("cannot resolve " + endpoint.host + ": " + ec.message());
  }
  std::lock_guard lock(resolve_mu);
  resolved = results;
  resolved_at = Clock::now();
  co_return results;
}

asio::awaitable<Result<std::unique_ptr<Connection>>> LlmClient::Impl::Connect(
    Clock::time_point deadline, bool* permanent) {
  auto resolved_or = co_await Resolve();
  if (!resolved_or.ok()) co_return resolved_or.status();
  auto conn = std::make_unique<Connection>();
  if (endpoint.tls) {
    conn->secure.emplace(executor, ssl_context);
  } else {
    conn->plain.emplace(executor);
  }
  const auto connect_deadline = std::min(deadline, Clock::now() + options.connect_timeout);
  conn->lowest().expires_at(connect_deadline);
  auto [ec, connected] = co_await conn->lowest().async_connect(*resolved_or, kToken);
  if (ec == beast::error::timeout) {
    co_return Status::DeadlineExceeded("connect to " + endpoint.host_header + " timed out after " +
                                       std::to_string(options.connect_timeout.count()) + " ms");
  }
  if (ec) {
    co_return Status::Unavailable("cannot connect to " + endpoint.host_header + ": " +
                                  ec.message());
  }
  conn->lowest().socket().set_option(tcp::no_delay(true), ec);
  // Exchange's synchronous write_some must return would_block rather than wait.
  conn->lowest().socket().non_blocking(true, ec);
  if (conn->secure) {
    SSL* handle = conn->secure->native_handle();
    // SNI is for names only (RFC 6066); an IP literal is verified against the IP SANs.
    if (!IsIpLiteral(endpoint.host)) SSL_set_tlsext_host_name(handle, endpoint.host.c_str());
    if (options.verify_tls) {
      conn->secure->set_verify_mode(ssl::verify_peer);
      conn->secure->set_verify_callback(ssl::host_name_verification(endpoint.host));
    } else {
      conn->secure->set_verify_mode(ssl::verify_none);
    }
    auto [hec] = co_await conn->secure->async_handshake(ssl::stream_base::client, kToken);
    if (hec == beast::error::timeout) {
      co_return Status::DeadlineExceeded("TLS handshake with " + endpoint.host_header +
                                         " timed out");
    }
    if (hec) {
      std::string reason = hec.message();
      if (const long verify = SSL_get_verify_result(handle); verify != X509_V_OK) {
        reason = std::string("certificate not trusted: ") + X509_verify_cert_error_string(verify);
        *permanent = true;
      }
      co_return Status::Unavailable("TLS handshake with " + endpoint.host_header +
                                    " failed: " + reason);
    }
  }
  counters.connections_opened.fetch_add(1, std::memory_order_relaxed);
  co_return conn;
}

asio::awaitable<Attempt> LlmClient::Impl::RunAttempt(const std::string& request, bool stream,
                                                     const DeltaCallback& on_delta,
                                                     Clock::time_point call_start) {
  const auto deadline = Clock::now() + options.total_timeout;
  // At most one extra try, on a fresh connection, when a pooled one turns out to be closed.
  for (int pass = 0;; ++pass) {
    std::unique_ptr<Connection> conn = pass == 0 ? TakeIdle() : nullptr;
    const bool reused = conn != nullptr;
    if (reused) {
      counters.connections_reused.fetch_add(1, std::memory_order_relaxed);
    } else {
      bool permanent = false;
      auto conn_or = co_await Connect(deadline, &permanent);
      if (!conn_or.ok()) {
        // Connect errors and connect timeouts are retried: nothing reached the server.
        co_return Failed(conn_or.status(), !permanent);
      }
      conn = std::move(conn_or).value();
    }
    // Not `?:` with a co_await in each arm: GCC 12 miscompiles that.
    Attempt attempt;
    if (conn->secure) {
      attempt = co_await Exchange(*conn->secure, *conn, request, stream, on_delta, call_start,
                                  deadline, reused);
    } else {
      attempt = co_await Exchange(*conn->plain, *conn, request, stream, on_delta, call_start,
                                  deadline, reused);
    }
    if (attempt.stale_conn && pass == 0) continue;
    if (attempt.reusable) ReturnIdle(std::move(conn));
    co_return attempt;
  }
}

namespace {

using ResponseParser = http::response_parser<http::buffer_body>;

// Puts into `data` (at most `size` bytes) all the body the connection has: what is already
// buffered, else what one read of the socket brings; the byte count, 0 when the body is done.
// The parser is driven here rather than by http::async_read_some, which stops after each
// chunk-size line and each piece of a chunk (a trip through the scheduler for every few dozen
// bytes of a stream whose server sends a chunk per token) or, made eager, keeps reading until
// the next chunk's size line has arrived, holding back the events it already parsed.
template <typename AsyncStream>
asio::awaitable<std::pair<boost::system::error_code, size_t>> ReadBodySome(
    AsyncStream& stream, beast::flat_buffer& buffer, ResponseParser& parser, char* data,
    size_t size) {
  auto& body = parser.get().body();
  body.data = data;
  body.size = size;
  for (;;) {
    while (buffer.size() > 0 && body.size > 0 && !parser.is_done()) {
      boost::system::error_code ec;
      const size_t used = parser.put(buffer.data(), ec);
      buffer.consume(used);
      // need_more: the rest of a chunk-size line is still on its way; need_buffer: `data` is full.
      if (ec == http::error::need_more || ec == http::error::need_buffer) break;
      if (ec) co_return std::pair{ec, size - body.size};
      if (used == 0) break;
    }
    const size_t delivered = size - body.size;
    if (delivered > 0 || parser.is_done()) {
      co_return std::pair{boost::system::error_code{}, delivered};
    }
    auto [ec, n] = co_await stream.async_read_some(buffer.prepare(kReadChunk), kToken);
    buffer.commit(n);
    if (ec == asio::error::eof) {
      // Complete if the body runs to the end of the connection, else partial_message.
      boost::system::error_code eof_ec;
      parser.put_eof(eof_ec);
      co_return std::pair{eof_ec, size_t{0}};
    }
    if (ec) co_return std::pair{ec, size_t{0}};
  }
}

// Reads the rest of the body into `*out`; an error, or body_limit for an oversized body.
template <typename AsyncStream>
asio::awaitable<boost::system::error_code> ReadBodyToString(AsyncStream& stream,
                                                            beast::flat_buffer& buffer,
                                                            ResponseParser& parser,
                                                            std::string* out) {
  std::array<char, kReadChunk> chunk;
  while (!parser.is_done()) {
    auto [ec, n] = co_await ReadBodySome(stream, buffer, parser, chunk.data(), chunk.size());
    out->append(chunk.data(), n);
    if (ec) co_return ec;
    if (out->size() > kMaxReplyBody) co_return http::error::body_limit;
  }
  co_return boost::system::error_code{};
}

// Fills `result` from a non-streamed Chat Completions reply.
Status ParseCompletion(const std::string& body, ChatResult* result) {
  boost::system::error_code ec;
  const json::value parsed = json::parse(body, ec);
  if (ec || !parsed.is_object()) {
    return Status::Internal("reply is not a JSON object: " + ServerErrorMessage(body));
  }
  const auto& object = parsed.as_object();
  result->model = StringOr(object, "model");
  if (const auto* usage = object.if_contains("usage")) ReadUsage(*usage, &result->usage);
  const json::value* choices = object.if_contains("choices");
  if (choices == nullptr || !choices->is_array() || choices->as_array().empty() ||
      !choices->as_array().front().is_object()) {
    return Status::Internal("reply has no choices");
  }
  const auto& choice = choices->as_array().front().as_object();
  result->finish_reason = StringOr(choice, "finish_reason");
  const json::value* message = choice.if_contains("message");
  if (message == nullptr || !message->is_object()) {
    return Status::Internal("reply's first choice has no message");
  }
  // content is null when a model answers only with tool calls.
  result->content = StringOr(message->as_object(), "content");
  return Status::Ok();
}

// State of one streamed reply while its events are applied.
struct StreamState {
  bool got_first = false;  // content or a finish reason arrived: the first-token clock stops
  bool done = false;       // [DONE] seen
  bool delivered = false;  // on_delta was called
  StreamChunk chunk;       // the event being applied, reused for its buffers
};

// Applies one SSE event of a streamed reply.
Status ApplyEvent(const SseEvent& event, const DeltaCallback& on_delta,
                  Clock::time_point call_start, StreamState* state, ChatResult* result) {
  if (event.data == "[DONE]") {
    state->done = true;
    state->got_first = true;
    return Status::Ok();
  }
  StreamChunk& chunk = state->chunk;
  if (!ParseStreamChunk(event.data, &chunk) || !chunk.is_object) {
    return Status::Internal("stream event is not a JSON object: " + ServerErrorMessage(event.data));
  }
  if (chunk.has_error) {
    return Status::Unavailable("server reported an error mid-stream: " +
                               ServerErrorMessage(event.data));
  }
  if (result->model.empty()) result->model = chunk.model;
  if (chunk.usage) result->usage = *chunk.usage;
  if (!chunk.has_choice) return Status::Ok();  // e.g. the final usage-only chunk
  if (!chunk.finish_reason.empty()) {
    result->finish_reason = chunk.finish_reason;
    state->got_first = true;
  }
  if (chunk.content.empty()) return Status::Ok();
  const std::string_view piece = chunk.content;
  if (!state->delivered) {
    result->time_to_first_token =
        std::chrono::duration_cast<milliseconds>(Clock::now() - call_start);
  }
  state->got_first = true;
  state->delivered = true;
  result->content.append(piece);
  if (on_delta) on_delta(piece);
  return Status::Ok();
}

}  // namespace

template <typename AsyncStream>
asio::awaitable<Attempt> LlmClient::Impl::Exchange(AsyncStream& stream, Connection& conn,
                                                   const std::string& request, bool stream_mode,
                                                   const DeltaCallback& on_delta,
                                                   Clock::time_point call_start,
                                                   Clock::time_point attempt_deadline,
                                                   bool reused) {
  auto& lowest = conn.lowest();
  const std::string& host = endpoint.host_header;
  // The per-read expiry is the nearer of the attempt's deadline and the phase's own; the
  // message names whichever one it was. It is built only when a timeout happens: a stream
  // re-arms on every read.
  const char* expiry_phase = nullptr;  // nullptr: the attempt's total timeout
  milliseconds expiry_limit{0};
  auto arm = [&](Clock::time_point phase_deadline, const char* phase, milliseconds limit) {
    if (attempt_deadline <= phase_deadline) {
      lowest.expires_at(attempt_deadline);
      expiry_phase = nullptr;
    } else {
      lowest.expires_at(phase_deadline);
      expiry_phase = phase;
      expiry_limit = limit;
    }
  };
  auto expiry_message = [&] {
    if (expiry_phase == nullptr) {
      return "total timeout of " + std::to_string(options.total_timeout.count()) +
             " ms exceeded waiting for " + host;
    }
    return std::string(expiry_phase) + " timeout of " + std::to_string(expiry_limit.count()) +
           " ms exceeded waiting for " + host;
  };
  const auto first_token_deadline =
      stream_mode ? Clock::now() + options.first_token_timeout : Clock::time_point::max();
  arm(first_token_deadline, "first-token", options.first_token_timeout);

  // On plain TCP the request is written at once when the socket takes it all, as it does a
  // few kilobytes on an idle connection: an async_write alone reports through the scheduler,
  // and with thousands of streams on one thread that is a whole turn of its queue before the
  // reply is even awaited. The socket is non-blocking (Connect). The rest, if any, and every
  // TLS request go the asynchronous way.
  size_t sent = 0;
  boost::system::error_code write_ec;
  if constexpr (std::is_same_v<AsyncStream, beast::tcp_stream>) {
    sent = stream.socket().write_some(asio::buffer(request), write_ec);
    if (write_ec == asio::error::would_block) write_ec = {};
  }
  if (!write_ec && sent < request.size()) {
    auto [async_ec, written] = co_await asio::async_write(
        stream, asio::buffer(request.data() + sent, request.size() - sent), kToken);
    write_ec = async_ec;
  }
  if (write_ec) {
    if (write_ec == beast::error::timeout) {
      co_return Failed(Status::DeadlineExceeded(expiry_message()), false);
    }
    Attempt attempt =
        Failed(Status::Unavailable("sending to " + host + " failed: " + write_ec.message()), true);
    attempt.stale_conn = reused && IsConnectionLoss(write_ec);
    co_return attempt;
  }

  ResponseParser parser;
  parser.body_limit(boost::none);  // streams are unbounded; other bodies are capped as read
  auto [header_ec, header_bytes] =
      co_await http::async_read_header(stream, conn.buffer, parser, kToken);
  if (header_ec) {
    if (header_ec == beast::error::timeout) {
      co_return Failed(Status::DeadlineExceeded(expiry_message()), false);
    }
    Attempt attempt = Failed(Status::Unavailable("connection to " + host +
                                                 " lost before a reply: " + header_ec.message()),
                             true);
    attempt.stale_conn = reused && IsConnectionLoss(header_ec) && header_bytes == 0;
    co_return attempt;
  }

  const unsigned status = parser.get().result_int();
  if (status < 200 || status >= 300) {
    std::string body;
    arm(Clock::time_point::max(), "", milliseconds(0));
    const auto body_ec = co_await ReadBodyToString(stream, conn.buffer, parser, &body);
    if (status == 429) counters.rate_limited.fetch_add(1, std::memory_order_relaxed);
    Attempt attempt =
        Failed(Status(CodeForHttpStatus(status), "HTTP " + std::to_string(status) + " from " +
                                                     host + ": " + ServerErrorMessage(body)),
               IsRetryableHttpStatus(status));
    if (const auto header = parser.get().find(http::field::retry_after);
        header != parser.get().end()) {
      attempt.retry_after = ParseRetryAfter(header->value());
    }
    attempt.reusable = !body_ec && parser.keep_alive();
    co_return attempt;
  }

  Attempt attempt;
  ChatResult& result = attempt.result;
  const bool is_event_stream =
      parser.get()[http::field::content_type].starts_with("text/event-stream");
  if (!stream_mode || !is_event_stream) {
    // A server may answer a stream request with a whole reply; it is then one delta.
    std::string body;
    arm(Clock::time_point::max(), "", milliseconds(0));
    const auto body_ec = co_await ReadBodyToString(stream, conn.buffer, parser, &body);
    if (body_ec == beast::error::timeout) {
      co_return Failed(Status::DeadlineExceeded(expiry_message()), false);
    }
    if (body_ec) {
      co_return Failed(Status::Unavailable("reply from " + host + " broken: " + body_ec.message()),
                       true);
    }
    attempt.status = ParseCompletion(body, &result);
    if (!attempt.status.ok()) co_return attempt;
    result.time_to_first_token =
        std::chrono::duration_cast<milliseconds>(Clock::now() - call_start);
    if (stream_mode && on_delta && !result.content.empty()) on_delta(result.content);
    attempt.reusable = parser.keep_alive();
    co_return attempt;
  }

  SseParser sse;
  std::vector<SseEvent> events;
  StreamState state;
  std::array<char, kReadChunk> chunk;
  auto fail = [&](Status failure, bool retryable_if_nothing_delivered) {
    attempt.status = std::move(failure);
    attempt.delivered = state.delivered;
    attempt.retryable = retryable_if_nothing_delivered && !state.delivered;
    return std::move(attempt);
  };
  while (!parser.is_done()) {
    if (state.got_first) {
      arm(Clock::now() + options.idle_timeout, "stream idle", options.idle_timeout);
    } else {
      arm(first_token_deadline, "first-token", options.first_token_timeout);
    }
    auto [ec, n] = co_await ReadBodySome(stream, conn.buffer, parser, chunk.data(), chunk.size());
    if (n > 0) {
      if (Status fed = sse.Feed(std::string_view(chunk.data(), n), &events); !fed.ok()) {
        co_return fail(Status::Internal(fed.message()), false);
      }
      for (const SseEvent& event : events) {
        if (Status applied = ApplyEvent(event, on_delta, call_start, &state, &result);
            !applied.ok()) {
          co_return fail(std::move(applied), false);
        }
      }
      events.clear();
    }
    if (ec == beast::error::timeout) {
      co_return fail(Status::DeadlineExceeded(expiry_message()), false);
    }
    if (ec) {
      co_return fail(Status::Unavailable("stream from " + host + " broken" +
                                         (state.delivered ? " after content was delivered" : "") +
                                         ": " + ec.message()),
                     true);
    }
  }
  if (!state.done && result.finish_reason.empty()) {
    co_return fail(Status::Unavailable("stream from " + host + " ended without [DONE]"), true);
  }
  attempt.delivered = state.delivered;
  attempt.reusable = parser.keep_alive();
  co_return attempt;
}

asio::awaitable<Result<ChatResult>> LlmClient::Impl::Call(ChatRequest request, bool stream,
                                                          DeltaCallback on_delta) {
  const auto call_start = Clock::now();
  counters.calls.fetch_add(1, std::memory_order_relaxed);
  if (request.model.empty() || request.messages.empty()) {
    counters.failed.fetch_add(1, std::memory_order_relaxed);
    co_return Status::InvalidArgument("a chat request needs a model and at least one message");
  }

  http::request<http::string_body> req{http::verb::post, endpoint.target, 11};
  req.set(http::field::host, endpoint.host_header);
  req.set(http::field::user_agent, "tidepool/" TIDEPOOL_VERSION);
  req.set(http::field::content_type, "application/json");
  req.set(http::field::accept, stream ? "text/event-stream" : "application/json");
  if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
  for (const auto& [name, value] : options.headers) req.set(name, value);
  for (const auto& [name, value] : request.headers) req.set(name, value);
  req.keep_alive(true);
  req.body() = LlmClient::BuildRequestBody(request, stream);
  req.prepare_payload();
  std::ostringstream wire_text;
  wire_text << req;
  const std::string wire = std::move(wire_text).str();

  const auto model = Model(request.model);
  const bool admitted = co_await model->concurrency.Acquire();
  if (!admitted) {
    counters.failed.fetch_add(1, std::memory_order_relaxed);
    co_return Status::Unavailable("cancelled while waiting for a concurrency slot");
  }
  const SemaphorePermit permit(&model->concurrency);
  const uint64_t in_flight = counters.in_flight.fetch_add(1, std::memory_order_relaxed) + 1;
  uint64_t peak = counters.peak_in_flight.load(std::memory_order_relaxed);
  while (in_flight > peak && !counters.peak_in_flight.compare_exchange_weak(
                                 peak, in_flight, std::memory_order_relaxed)) {
  }
  struct InFlight {
    std::atomic<uint64_t>* count;
    ~InFlight() { count->fetch_sub(1, std::memory_order_relaxed); }
  } const in_flight_guard{&counters.in_flight};

  const double estimate = EstimateTokens(request);
  asio::steady_timer timer(co_await asio::this_coro::executor);
  Attempt last;
  int attempts = 0;
  for (;;) {
    Clock::time_point paused_until;
    {
      std::lock_guard lock(model->mu);
      paused_until = model->paused_until;
    }
    if (paused_until > Clock::now()) {
      timer.expires_at(paused_until);
      auto [ec] = co_await timer.async_wait(kToken);
      if (ec) {
        last = Failed(Status::Unavailable("cancelled while paused by Retry-After"), false);
        break;
      }
    }
    bool granted = co_await model->requests.Take(1);
    if (granted) granted = co_await model->tokens.Take(estimate);
    if (!granted) {
      last = Failed(Status::Unavailable("cancelled while waiting for rate limits"), false);
      break;
    }
    ++attempts;
    counters.attempts.fetch_add(1, std::memory_order_relaxed);
    last = co_await RunAttempt(wire, stream, on_delta, call_start);
    last.result.attempts = attempts;
    if (last.status.ok()) {
      ChatResult& result = last.result;
      if (result.usage.total_tokens > 0) {
        model->tokens.Refund(estimate - static_cast<double>(result.usage.total_tokens));
      }
      result.total_time = std::chrono::duration_cast<milliseconds>(Clock::now() - call_start);
      counters.succeeded.fetch_add(1, std::memory_order_relaxed);
      counters.prompt_tokens.fetch_add(result.usage.prompt_tokens, std::memory_order_relaxed);
      counters.completion_tokens.fetch_add(result.usage.completion_tokens,
                                           std::memory_order_relaxed);
      co_return std::move(result);
    }
    // The provider bills nothing for a refused attempt; a partial stream keeps its estimate.
    if (!last.delivered) model->tokens.Refund(estimate);
    if (!last.retryable || last.delivered || attempts > options.max_retries) break;
    milliseconds delay = Backoff(options, attempts);
    if (last.retry_after) {
      const milliseconds honoured = std::min(*last.retry_after, options.max_retry_after);
      // Every call to this model waits it out, not just this one; the jitter spreads the
      // retries that wake together.
      {
        std::lock_guard lock(model->mu);
        model->paused_until = std::max(model->paused_until, Clock::now() + honoured);
      }
      delay = honoured + milliseconds(static_cast<int64_t>(
                             Uniform(0, static_cast<double>(options.initial_backoff.count()))));
    }
    counters.retries.fetch_add(1, std::memory_order_relaxed);
    timer.expires_after(delay);
    auto [wait_ec] = co_await timer.async_wait(kToken);
    if (wait_ec) break;
  }
  counters.failed.fetch_add(1, std::memory_order_relaxed);
  Status status = last.status;
  if (attempts > 1) {
    status = Status(status.code(),
                    status.message() + " (after " + std::to_string(attempts) + " attempts)");
  }
  co_return Redact(std::move(status));
}

// ---- LlmClient

LlmClient::LlmClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlmClient::~LlmClient() = default;

Result<std::unique_ptr<LlmClient>> LlmClient::Create(asio::any_io_executor executor,
                                                     ProviderOptions options) {
  TP_ASSIGN_OR_RETURN(Endpoint endpoint, ParseBaseUrl(options.base_url));
  TP_ASSIGN_OR_RETURN(std::string key, LoadApiKey(options.api_key_env, options.api_key_file));
  if (options.max_retries < 0) return Status::InvalidArgument("max_retries must be >= 0");
  auto impl = std::make_unique<Impl>(std::move(executor), std::move(options), std::move(endpoint),
                                     std::move(key));
  if (impl->endpoint.tls) {
    boost::system::error_code ec;
    impl->ssl_context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                                      ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                                      ssl::context::no_tlsv1_1,
                                  ec);
    if (!impl->options.ca_file.empty()) {
      impl->ssl_context.load_verify_file(impl->options.ca_file, ec);
      if (ec) {
        return Status::InvalidArgument("cannot load CA file " + impl->options.ca_file + ": " +
                                       ec.message());
      }
    } else {
      impl->ssl_context.set_default_verify_paths(ec);
      if (ec) return Status::Internal("cannot load the system CA store: " + ec.message());
    }
  }
  return std::unique_ptr<LlmClient>(new LlmClient(std::move(impl)));
}

asio::awaitable<Result<ChatResult>> LlmClient::Complete(ChatRequest request) {
  co_return co_await impl_->Call(std::move(request), false, nullptr);
}

asio::awaitable<Result<ChatResult>> LlmClient::Stream(ChatRequest request, DeltaCallback on_delta) {
  co_return co_await impl_->Call(std::move(request), true, std::move(on_delta));
}

ClientStats LlmClient::stats() const {
  const auto& c = impl_->counters;
  auto load = [](const std::atomic<uint64_t>& value) {
    return value.load(std::memory_order_relaxed);
  };
  return ClientStats{.calls = load(c.calls),
                     .succeeded = load(c.succeeded),
                     .failed = load(c.failed),
                     .attempts = load(c.attempts),
                     .retries = load(c.retries),
                     .rate_limited = load(c.rate_limited),
                     .connections_opened = load(c.connections_opened),
                     .connections_reused = load(c.connections_reused),
                     .in_flight = load(c.in_flight),
                     .peak_in_flight = load(c.peak_in_flight),
                     .prompt_tokens = load(c.prompt_tokens),
                     .completion_tokens = load(c.completion_tokens)};
}

}  // namespace tidepool::llm
