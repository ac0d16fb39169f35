#include "web/http_server.h"

#include <array>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <condition_variable>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "admin/admin_server.h"
#include "common/thread_name.h"
#include "web/latency_window.h"

namespace tidepool::web {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
constexpr auto kToken = asio::as_tuple(asio::use_awaitable);

namespace {

constexpr std::array<double, 13> kLatencyBucketsMs = {0.5, 1,   2.5, 5,    10,   25,  50,
                                                      100, 250, 500, 1000, 2500, 5000};

std::vector<std::string> Split(std::string_view path) {
  std::vector<std::string> out;
  size_t start = 1;
  while (start <= path.size()) {
    const size_t slash = path.find('/', start);
    out.emplace_back(path.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return out;
}

struct RouteEntry {
  std::string method;
  std::string pattern;
  std::vector<std::string> segments;
  Handler handler;
  StreamHandler stream;

  bool Match(const std::vector<std::string>& parts,
             std::map<std::string, std::string>& params) const {
    if (parts.size() != segments.size()) return false;
    std::map<std::string, std::string> found;
    for (size_t i = 0; i < parts.size(); ++i) {
      const std::string& seg = segments[i];
      if (seg.size() > 2 && seg.front() == '{' && seg.back() == '}') {
        if (parts[i].empty()) return false;
        found[seg.substr(1, seg.size() - 2)] = parts[i];
      } else if (seg != parts[i]) {
        return false;
      }
    }
    params = std::move(found);
    return true;
  }
};

struct RouteStats {
  uint64_t count_by_class[6] = {0, 0, 0, 0, 0, 0};  // index = status / 100
  std::array<uint64_t, kLatencyBucketsMs.size()> buckets{};
  uint64_t total = 0;
  double sum_ms = 0;
  LatencyWindow recent;  // the last seconds, for the dashboard
};

std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

const std::string& HttpRequest::header(const std::string& name) const {
  static const std::string kEmpty;
  auto it = headers.find(name);
  return it == headers.end() ? kEmpty : it->second;
}

HttpResponse Json(int status, std::string body) {
  return HttpResponse{
      .status = status, .content_type = "application/json", .body = std::move(body)};
}

HttpResponse JsonError(int status, const std::string& message) {
  json::object error{{"code", status}, {"message", message}};
  return Json(status, json::serialize(json::object{{"error", std::move(error)}}));
}

HttpResponse JsonError(const Status& status) {
  const admin::Response r = admin::ErrorResponse(status);
  return Json(r.status, r.body);
}

bool IsValidUtf8(std::string_view text) {
  size_t i = 0;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int extra = 0;
    uint32_t cp = 0;
    if ((c & 0xE0) == 0xC0) {
      extra = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + static_cast<size_t>(extra) >= n) return false;  // truncated sequence
    for (int k = 1; k <= extra; ++k) {
      const unsigned char cc = s[i + static_cast<size_t>(k)];
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000))
      return false;  // overlong
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += static_cast<size_t>(extra) + 1;
  }
  return true;
}

// ---- SSE writer

namespace {

// Shared by a stream's writer and its wakers, which may outlive it.
struct WakeState {
  // `ex` is the connection's executor (its io_context: one thread).
  explicit WakeState(asio::any_io_executor ex) : executor(ex), timer(ex) {}
  asio::any_io_executor executor;
  asio::steady_timer timer;
  bool woken = false;
  bool done = false;
};

class SseWriterImpl final : public SseWriter {
 public:
  SseWriterImpl(beast::tcp_stream& stream, std::shared_ptr<WakeState> wake,
                const std::atomic<bool>& stopping)
      : stream_(stream), wake_(std::move(wake)), stopping_(stopping) {}
  ~SseWriterImpl() override { wake_->done = true; }

  asio::awaitable<bool> Send(const std::string& id, const std::string& event,
                             const std::string& data) override {
    std::string frame;
    frame.reserve(data.size() + id.size() + event.size() + 32);
    if (!id.empty()) frame += "id: " + id + "\n";
    if (!event.empty()) frame += "event: " + event + "\n";
    size_t start = 0;
    while (true) {
      const size_t nl = data.find('\n', start);
      frame += "data: ";
      frame.append(data, start, nl == std::string::npos ? std::string::npos : nl - start);
      frame += "\n";
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
    frame += "\n";
    const bool ok = co_await Write(std::move(frame));
    co_return ok;
  }

  asio::awaitable<bool> Comment(const std::string& text) override {
    std::string frame = ": " + text + "\n\n";
    const bool ok = co_await Write(std::move(frame));
    co_return ok;
  }

  asio::awaitable<void> Wait(std::chrono::milliseconds at_most) override {
    if (wake_->woken || stopping_.load()) {
      wake_->woken = false;
      co_return;
    }
    wake_->timer.expires_after(at_most);
    co_await wake_->timer.async_wait(kToken);
    wake_->woken = false;
  }

  std::function<void()> Waker() override {
    return [state = wake_] {
      asio::post(state->executor, [state] {
        if (state->done) return;
        state->woken = true;
        state->timer.cancel();
      });
    };
  }

  bool stopping() const override { return stopping_.load(); }

 private:
  asio::awaitable<bool> Write(std::string frame) {
    stream_.expires_after(std::chrono::seconds(30));  // a client that stops reading goes
    auto [ec, n] = co_await asio::async_write(stream_, asio::buffer(frame), kToken);
    stream_.expires_never();
    co_return !ec;
  }

  beast::tcp_stream& stream_;
  std::shared_ptr<WakeState> wake_;
  const std::atomic<bool>& stopping_;
};

// Writes the stream's response header before its first event, so that a handler can still
// refuse the request (with an ordinary response) until then.
class HeaderFirst final : public SseWriter {
 public:
  HeaderFirst(SseWriterImpl& inner, beast::tcp_stream& stream, const HttpServerOptions& options)
      : inner_(inner), stream_(stream), options_(options) {}

  asio::awaitable<bool> Header() {
    if (header_sent_) co_return true;
    header_sent_ = true;
    std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n";
    for (const auto& [k, v] : options_.headers) head += k + ": " + v + "\r\n";
    head += "\r\n";
    auto [ec, n] = co_await asio::async_write(stream_, asio::buffer(head), kToken);
    co_return !ec;
  }
  asio::awaitable<bool> Send(const std::string& id, const std::string& event,
                             const std::string& data) override {
    const bool ok = co_await Header();
    if (!ok) co_return false;
    const bool sent = co_await inner_.Send(id, event, data);
    co_return sent;
  }
  asio::awaitable<bool> Comment(const std::string& text) override {
    const bool ok = co_await Header();
    if (!ok) co_return false;
    const bool sent = co_await inner_.Comment(text);
    co_return sent;
  }
  asio::awaitable<void> Wait(std::chrono::milliseconds at_most) override {
    co_await inner_.Wait(at_most);
  }
  std::function<void()> Waker() override { return inner_.Waker(); }
  bool stopping() const override { return inner_.stopping(); }
  bool header_sent() const { return header_sent_; }

 private:
  SseWriterImpl& inner_;
  beast::tcp_stream& stream_;
  const HttpServerOptions& options_;
  bool header_sent_ = false;
};

}  // namespace

// ---- server

struct HttpServer::Impl {
  HttpServerOptions options;
  // One io_context per thread, each connection on one of them: a connection's handlers never
  // run concurrently, without strands.
  std::vector<std::unique_ptr<asio::io_context>> ios;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::optional<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;
  size_t next_io = 0;
  std::vector<RouteEntry> routes;
  std::vector<std::pair<std::string, Handler>> prefixes;
  Filter filter;
  int port = 0;

  std::atomic<bool> stopping{false};
  std::atomic<int64_t> connections{0};
  std::atomic<int64_t> streams{0};
  std::mutex mu;
  std::condition_variable cv;
  std::set<std::shared_ptr<WakeState>> wakers;  // open streams, woken at Stop
  std::set<beast::tcp_stream*> open;            // closed at Stop after the grace period
  std::map<std::string, RouteStats> stats;      // by "METHOD ROUTE"

  void Record(const std::string& key, int status, double ms) {
    std::lock_guard lock(mu);
    RouteStats& s = stats[key];
    s.count_by_class[std::clamp(status / 100, 0, 5)]++;
    s.total++;
    s.sum_ms += ms;
    for (size_t i = 0; i < kLatencyBucketsMs.size(); ++i) {
      if (ms <= kLatencyBucketsMs[i]) s.buckets[i]++;
    }
    s.recent.Record(ms);
  }

  asio::awaitable<void> Accept() {
    while (!stopping.load()) {
      // Connections go round-robin to the io_contexts; all of a connection's work (its
      // beast::tcp_stream, timers, wake-ups) runs on its one thread.
      tcp::socket socket(*ios[next_io++ % ios.size()]);
      auto [ec] = co_await acceptor->async_accept(socket, kToken);
      if (ec) {
        if (stopping.load() || ec == asio::error::operation_aborted) co_return;
        continue;
      }
      if (static_cast<size_t>(connections.load()) >= options.max_connections) {
        // Refused politely, at once: the client may retry.
        static const std::string kBusy =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: "
            "1\r\nConnection: close\r\nContent-Length: 75\r\n\r\n"
            "{\"error\":{\"code\":503,\"message\":\"too many connections; retry in a second\"}}";
        boost::system::error_code ignored;
        asio::write(socket, asio::buffer(kBusy), ignored);
        socket.close(ignored);
        continue;
      }
      ++connections;
      auto executor = socket.get_executor();
      asio::co_spawn(executor, Session(std::move(socket)), asio::detached);
    }
  }

  void Dispatch(HttpRequest& request, const RouteEntry** route_out, bool& method_mismatch) {
    const auto parts = Split(request.path);
    method_mismatch = false;
    for (const RouteEntry& route : routes) {
      std::map<std::string, std::string> params;
      if (!route.Match(parts, params)) continue;
      if (route.method != request.method) {
        method_mismatch = true;
        continue;
      }
      request.params = std::move(params);
      request.route = route.pattern;
      *route_out = &route;
      return;
    }
  }

  // Runs on the io_context of its socket.
  asio::awaitable<void> Session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    {
      std::lock_guard lock(mu);
      open.insert(&stream);
    }
    std::string remote;
    {
      boost::system::error_code ec;
      auto endpoint = stream.socket().remote_endpoint(ec);
      if (!ec) remote = endpoint.address().to_string();
    }
    beast::flat_buffer buffer;
    bool first = true;
    while (!stopping.load()) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(options.max_header_bytes));
      parser.body_limit(options.max_body_bytes);
      stream.expires_after(first ? options.header_timeout : options.idle_timeout);
      first = false;
      auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, kToken);
      if (hec) {
        if (hec == http::error::header_limit) {
          co_await WriteResponse(stream, JsonError(431, "request headers too large"), false);
        } else if (hec == http::error::body_limit) {  // a Content-Length over the limit
          co_await WriteResponse(
              stream,
              JsonError(413, "request body larger than " + std::to_string(options.max_body_bytes) +
                                 " bytes"),
              false);
        }
        break;
      }
      const auto started = Clock::now();
      stream.expires_after(options.body_timeout);
      auto [bec, bn] = co_await http::async_read(stream, buffer, parser, kToken);
      if (bec) {
        if (bec == http::error::body_limit) {
          co_await WriteResponse(
              stream,
              JsonError(413, "request body larger than " + std::to_string(options.max_body_bytes) +
                                 " bytes"),
              false);
        }
        break;
      }
      stream.expires_never();
      auto& raw = parser.get();
      HttpRequest request;
      request.method = std::string(raw.method_string());
      request.target = std::string(raw.target());
      const size_t question = request.target.find('?');
      request.path = admin::PercentDecode(request.target.substr(0, question));
      if (question != std::string::npos) {
        request.query = admin::ParseQuery(std::string_view(request.target).substr(question + 1));
      }
      for (const auto& field : raw) {
        std::string name(field.name_string());
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        request.headers[name] = std::string(field.value());
      }
      request.body = std::move(raw.body());
      request.remote_ip = remote;
      const bool keep_alive = raw.keep_alive();
      // HEAD is GET without the body: same routes, same status and headers.
      const bool head = request.method == "HEAD";
      if (head) request.method = "GET";

      const RouteEntry* route = nullptr;
      bool method_mismatch = false;
      Dispatch(request, &route, method_mismatch);
      HttpResponse response;
      std::string key;
      if (route == nullptr) {
        const Handler* prefix = nullptr;
        for (const auto& [p, h] : prefixes) {
          if (request.method == "GET" && request.path.starts_with(p)) {
            prefix = &h;
            request.route = p + "*";
          }
        }
        if (prefix != nullptr) {
          key = "GET " + request.route;
          response = co_await (*prefix)(request);
        } else if (request.method == "OPTIONS" && filter) {
          key = "OPTIONS *";
          response = filter(request);
          if (response.status == 0) response = HttpResponse{.status = 204};
        } else if (method_mismatch) {
          key = request.method + " (method not allowed)";
          response = JsonError(405, "method " + request.method + " not allowed on " + request.path);
        } else {
          key = request.method + " (no route)";
          response = JsonError(404, "no such resource: " + request.path);
        }
      } else {
        key = request.method + " " + route->pattern;
        HttpResponse refused;
        if (filter) refused = filter(request);
        if (refused.status != 0) {
          response = std::move(refused);
        } else if (route->stream && head) {
          response = JsonError(405, "HEAD is not supported on an event stream; use GET");
        } else if (route->stream) {
          HttpResponse refusal{.status = 0};
          co_await RunStream(stream, *route, request, refusal);
          if (refusal.status == 0) {
            Record(key, 200, 0);
            break;  // the stream owned the connection; it is closed now
          }
          response = std::move(refusal);
        } else {
          try {
            response = co_await route->handler(request);
          } catch (const std::exception& e) {
            response = JsonError(500, std::string("internal error: ") + e.what());
          }
        }
      }
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
      Record(key, response.status, ms);
      const bool again = keep_alive && !stopping.load();
      if (!co_await WriteResponse(stream, response, again, head) || !again) break;
    }
    // A lingering close: the client may still be sending (a body over the limit); closing with
    // unread input would reset the connection and could destroy the error response in flight.
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.expires_after(std::chrono::seconds(1));
    std::array<char, 16 * 1024> sink;
    size_t drained = 0;
    while (drained < (1u << 20)) {
      auto [ec, n] = co_await stream.async_read_some(asio::buffer(sink), kToken);
      if (ec) break;
      drained += n;
    }
    stream.close();
    {
      std::lock_guard lock(mu);
      open.erase(&stream);
    }
    --connections;
    cv.notify_all();
  }

  asio::awaitable<void> RunStream(beast::tcp_stream& stream, const RouteEntry& route,
                                  HttpRequest& request, HttpResponse& refusal) {
    // The handler decides first whether it refuses (no header written yet): it signals by
    // filling `refusal` before its first Send. The header goes out with the first write.
    auto wake = std::make_shared<WakeState>(stream.get_executor());
    {
      std::lock_guard lock(mu);
      wakers.insert(wake);
    }
    ++streams;
    SseWriterImpl writer(stream, wake, stopping);
    HeaderFirst first(writer, stream, options);
    try {
      co_await route.stream(request, first, refusal);
    } catch (const std::exception&) {
      // The client went away mid-write, or the handler failed: the stream ends either way.
    }
    if (refusal.status == 0 && !first.header_sent()) co_await first.Header();
    --streams;
    std::lock_guard lock(mu);
    wakers.erase(wake);
  }

  // `head`: the headers of the response only (its Content-Length says what GET would send).
  asio::awaitable<bool> WriteResponse(beast::tcp_stream& stream, const HttpResponse& r,
                                      bool keep_alive, bool head = false) {
    http::response<http::string_body> res{static_cast<http::status>(r.status), 11};
    res.set(http::field::server, "tidepool");
    if (!r.content_type.empty() && r.status != 204) {
      res.set(http::field::content_type, r.content_type);
    }
    for (const auto& [k, v] : options.headers) res.set(k, v);
    for (const auto& [k, v] : r.headers) res.set(k, v);
    res.keep_alive(keep_alive);
    if (r.status != 204) res.body() = r.body;
    res.prepare_payload();
    if (head) {
      res.body().clear();
      res.content_length(r.body.size());
    }
    stream.expires_after(options.body_timeout);
    auto [ec, n] = co_await http::async_write(stream, res, kToken);
    stream.expires_never();
    co_return !ec;
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() {
  Stop(std::chrono::milliseconds(0));
}

Result<std::unique_ptr<HttpServer>> HttpServer::Create(HttpServerOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

void HttpServer::Route(const std::string& method, const std::string& pattern, Handler handler) {
  impl_->routes.push_back(RouteEntry{.method = method,
                                     .pattern = pattern,
                                     .segments = Split(pattern),
                                     .handler = std::move(handler),
                                     .stream = nullptr});
}

void HttpServer::Stream(const std::string& method, const std::string& pattern,
                        StreamHandler handler) {
  impl_->routes.push_back(RouteEntry{.method = method,
                                     .pattern = pattern,
                                     .segments = Split(pattern),
                                     .handler = nullptr,
                                     .stream = std::move(handler)});
}

void HttpServer::Prefix(const std::string& prefix, Handler handler) {
  impl_->prefixes.emplace_back(prefix, std::move(handler));
}

void HttpServer::SetFilter(Filter filter) {
  impl_->filter = std::move(filter);
}

Status HttpServer::Start() {
  Impl& s = *impl_;
  const auto colon = s.options.listen.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("listen address \"" + s.options.listen + "\" is not HOST:PORT");
  }
  std::string host = s.options.listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string port = s.options.listen.substr(colon + 1);
  const int n = s.options.threads > 0
                    ? s.options.threads
                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 0; i < n; ++i) s.ios.push_back(std::make_unique<asio::io_context>(1));
  s.acceptor.emplace(*s.ios[0]);
  boost::system::error_code ec;
  tcp::resolver resolver(*s.ios[0]);
  auto endpoints = resolver.resolve(host, port, ec);
  if (ec || endpoints.empty()) {
    return Status::InvalidArgument("cannot resolve " + s.options.listen + ": " + ec.message());
  }
  const tcp::endpoint endpoint = *endpoints.begin();
  s.acceptor->open(endpoint.protocol(), ec);
  if (!ec) s.acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor->bind(endpoint, ec);
  if (!ec) s.acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::Unavailable("cannot listen on " + s.options.listen + ": " + ec.message());
  s.port = s.acceptor->local_endpoint().port();
  for (auto& io : s.ios) s.work.push_back(asio::make_work_guard(*io));
  asio::co_spawn(*s.ios[0], s.Accept(), asio::detached);
  for (auto& io : s.ios) {
    s.threads.emplace_back([ctx = io.get()] {
      SetCurrentThreadName("web-io");
      ctx->run();
    });
  }
  return Status::Ok();
}

void HttpServer::Stop(std::chrono::milliseconds grace) {
  Impl& s = *impl_;
  if (s.threads.empty()) return;
  if (!s.stopping.exchange(true)) {
    asio::post(*s.ios[0], [&s] {
      boost::system::error_code ignored;
      s.acceptor->close(ignored);
    });
    std::vector<std::shared_ptr<WakeState>> wakers;
    {
      std::lock_guard lock(s.mu);
      wakers.assign(s.wakers.begin(), s.wakers.end());
    }
    for (const auto& w : wakers) {
      asio::post(w->executor, [w] {
        w->woken = true;
        w->timer.cancel();
      });
    }
  }
  {
    std::unique_lock lock(s.mu);
    s.cv.wait_for(lock, grace, [&s] { return s.connections.load() == 0; });
    // Whatever is left (idle keep-alive connections, slow clients) is cut.
    for (beast::tcp_stream* stream : s.open) {
      asio::post(stream->get_executor(), [stream, &s] {
        std::lock_guard inner(s.mu);
        if (s.open.contains(stream)) stream->socket().close();
      });
    }
    s.cv.wait_for(lock, std::chrono::seconds(5), [&s] { return s.connections.load() == 0; });
  }
  s.work.clear();
  for (auto& io : s.ios) io->stop();
  for (auto& t : s.threads) t.join();
  s.threads.clear();
}

int HttpServer::port() const {
  return impl_->port;
}

asio::any_io_executor HttpServer::executor() {
  return impl_->ios.front()->get_executor();
}

LatencySummary HttpServer::RecentLatency(const std::string& route_key) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->stats.find(route_key);
  if (it == impl_->stats.end()) return {};
  return Summarize(it->second.recent);
}

LatencySummary Summarize(const LatencyWindow& window) {
  return LatencySummary{.count = window.Count(),
                        .p50_ms = window.Quantile(0.5),
                        .p99_ms = window.Quantile(0.99),
                        .window_seconds = LatencyWindow::kWindowSeconds};
}

std::string HttpServer::MetricsText() const {
  Impl& s = *impl_;
  std::ostringstream out;
  out << "# HELP tidepool_web_connections Open HTTP connections.\n"
      << "# TYPE tidepool_web_connections gauge\n"
      << "tidepool_web_connections " << s.connections.load() << "\n"
      << "# HELP tidepool_web_streams Open Server-Sent Events streams.\n"
      << "# TYPE tidepool_web_streams gauge\n"
      << "tidepool_web_streams " << s.streams.load() << "\n";
  std::lock_guard lock(s.mu);
  out << "# HELP tidepool_web_requests_total Requests by route and status class.\n"
      << "# TYPE tidepool_web_requests_total counter\n";
  for (const auto& [key, st] : s.stats) {
    for (int c = 1; c <= 5; ++c) {
      if (st.count_by_class[c] == 0) continue;
      out << "tidepool_web_requests_total{route=\"" << EscapeLabel(key) << "\",class=\"" << c
          << "xx\"} " << st.count_by_class[c] << "\n";
    }
  }
  out << "# HELP tidepool_web_request_duration_seconds Request latency by route (streams: "
         "until the stream begins).\n"
      << "# TYPE tidepool_web_request_duration_seconds histogram\n";
  for (const auto& [key, st] : s.stats) {
    const std::string label = "route=\"" + EscapeLabel(key) + "\"";
    for (size_t i = 0; i < kLatencyBucketsMs.size(); ++i) {
      out << "tidepool_web_request_duration_seconds_bucket{" << label << ",le=\""
          << kLatencyBucketsMs[i] / 1000.0 << "\"} " << st.buckets[i] << "\n";
    }
    out << "tidepool_web_request_duration_seconds_bucket{" << label << ",le=\"+Inf\"} " << st.total
        << "\n"
        << "tidepool_web_request_duration_seconds_sum{" << label << "} " << st.sum_ms / 1000.0
        << "\n"
        << "tidepool_web_request_duration_seconds_count{" << label << "} " << st.total << "\n";
  }
  return out.str();
}

}  // namespace tidepool::web
