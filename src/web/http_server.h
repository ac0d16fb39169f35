// HttpServer: the web tier's HTTP/1.1 server on Boost.Beast coroutines (DESIGN.md, "web").
//
// - Keep-alive; a header timeout and a body timeout per request against slow clients; request
//   header and body size limits (431 / 413); a connection limit (503 beyond it, then close).
// - Routes by method and path pattern ("/v1/apps/{app}/conversations/{id}"); 404 / 405 with a
//   JSON error otherwise. Handlers are coroutines returning a response, or streams (Server-Sent
//   Events) that write until the client goes away or the server stops.
// - Every error body is {"error": {"code": STATUS, "message": TEXT}}.
// - Request latency histograms per route for /metrics.
//
// Thread-safety: routes are added before Start; the rest may be called from any thread.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tidepool::web {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent
  std::string path;    // without the query, percent-decoded
  std::map<std::string, std::string> query;
  std::map<std::string, std::string> params;   // {name} segments of the route
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string remote_ip;
  std::string route;  // the pattern that matched

  // The header's value, or "" (name in lower case).
  const std::string& header(const std::string& name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body{};
  std::vector<std::pair<std::string, std::string>> headers{};
};

// {"error": {"code": STATUS, "message": MESSAGE}} with that status.
HttpResponse JsonError(int status, const std::string& message);
// The HTTP status for a Status (INVALID_ARGUMENT → 400, NOT_FOUND → 404, ...), its message.
HttpResponse JsonError(const Status& status);
HttpResponse Json(int status, std::string body);

// Writes Server-Sent Events to one client. Send returns false once the client is gone (then
// the stream handler should return).
class SseWriter {
 public:
  virtual ~SseWriter() = default;
  // One event: "id: ID\nevent: NAME\ndata: DATA\n\n" (id and event omitted when empty; DATA
  // split on newlines into several data lines).
  virtual boost::asio::awaitable<bool> Send(const std::string& id, const std::string& event,
                                            const std::string& data) = 0;
  // A comment line (": TEXT\n\n"), the heartbeat that keeps proxies from closing the stream.
  virtual boost::asio::awaitable<bool> Comment(const std::string& text) = 0;
  // Waits until Wake is called, `at_most` passes, or the server stops (whichever first).
  virtual boost::asio::awaitable<void> Wait(std::chrono::milliseconds at_most) = 0;
  // A thread-safe wake-up for Wait, valid after the stream ended too (then it does nothing).
  virtual std::function<void()> Waker() = 0;
  // True once the server is stopping: stream loops end.
  virtual bool stopping() const = 0;
};

using Handler = std::function<boost::asio::awaitable<HttpResponse>(HttpRequest&)>;
// A stream handler first returns a response when it refuses the request (status != 0 in
// `refusal`); otherwise it streams through the writer.
using StreamHandler =
    std::function<boost::asio::awaitable<void>(HttpRequest&, SseWriter&, HttpResponse& refusal)>;
// Runs before every handler: a response with status != 0 answers instead (auth, rate limits).
using Filter = std::function<HttpResponse(const HttpRequest&)>;

struct HttpServerOptions {
  std::string listen = "127.0.0.1:8080";
  int threads = 0;  // 0: hardware threads
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds body_timeout{30'000};
  std::chrono::milliseconds idle_timeout{60'000};  // between keep-alive requests
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 64 * 1024;
  size_t max_connections = 10'000;
  // Extra headers on every response (CORS is added by the caller's filter or responses).
  std::vector<std::pair<std::string, std::string>> headers;
};

// Latency of one route over the last seconds.
struct LatencySummary {
  uint64_t count = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  int window_seconds = 0;
};

class LatencyWindow;
// The summary of what `window` holds now.
LatencySummary Summarize(const LatencyWindow& window);

class HttpServer {
 public:
  static Result<std::unique_ptr<HttpServer>> Create(HttpServerOptions options);
  ~HttpServer();  // stops

  void Route(const std::string& method, const std::string& pattern, Handler handler);
  void Stream(const std::string& method, const std::string& pattern, StreamHandler handler);
  // Any path under `prefix` (GET): static files.
  void Prefix(const std::string& prefix, Handler handler);
  void SetFilter(Filter filter);

  // Binds and serves on its own threads. UNAVAILABLE when the address cannot be bound.
  Status Start();
  // Stops accepting, ends streams, waits up to `grace` for requests in flight, closes.
  void Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(5'000));

  int port() const;
  boost::asio::any_io_executor executor();
  // Prometheus text: tidepool_web_requests_total and latency histograms by route and status
  // class, connections open, streams open.
  std::string MetricsText() const;
  // Latency of requests to `route_key` ("METHOD PATTERN", as in the metrics' route label) in
  // the last 10 s.
  LatencySummary RecentLatency(const std::string& route_key) const;

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Whether `text` is valid UTF-8 (no overlongs, no surrogates, ≤ U+10FFFF).
bool IsValidUtf8(std::string_view text);

}  // namespace tidepool::web
