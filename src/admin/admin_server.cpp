#include "admin/admin_server.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <string_view>
#include <thread>

#include "common/thread_name.h"

namespace tidepool::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
constexpr auto kToken = asio::as_tuple(asio::use_awaitable);
constexpr auto kReadTimeout = std::chrono::seconds(10);
constexpr size_t kMaxRequestBody = 1024 * 1024;

namespace {

// Compares without stopping at the first difference, so response time says nothing about how
// much of a guessed token was right.
bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % (b.empty() ? 1 : b.size())];
  return diff == 0 && !b.empty();
}

int HttpStatusOf(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return 200;
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return 400;
    case StatusCode::kUnauthenticated:
      return 401;
    case StatusCode::kPermissionDenied:
      return 403;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kAlreadyExists:
    case StatusCode::kFailedPrecondition:
      return 409;
    case StatusCode::kResourceExhausted:
      return 429;
    case StatusCode::kUnimplemented:
      return 501;
    case StatusCode::kUnavailable:
      return 503;
    case StatusCode::kDeadlineExceeded:
      return 504;
    case StatusCode::kCorruption:
    case StatusCode::kIOError:
    case StatusCode::kInternal:
      return 500;
  }
  return 500;
}

bool IsLoopback(const asio::ip::address& a) {
  return a.is_loopback();
}

}  // namespace

namespace {
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string PercentDecode(std::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out += ' ';
    } else if (in[i] == '%' && i + 2 < in.size() && HexValue(in[i + 1]) >= 0 &&
               HexValue(in[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(in[i + 1]) * 16 + HexValue(in[i + 2]));
      i += 2;
    } else {
      out += in[i];
    }
  }
  return out;
}

std::map<std::string, std::string> ParseQuery(std::string_view query) {
  std::map<std::string, std::string> out;
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const auto eq = pair.find('=');
    if (eq == std::string_view::npos) {
      out[PercentDecode(pair)] = "";
    } else {
      out[PercentDecode(pair.substr(0, eq))] = PercentDecode(pair.substr(eq + 1));
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return out;
}

Response ErrorResponse(int http_status, const std::string& message) {
  boost::json::object error{{"code", http_status}, {"message", message}};
  return Response{http_status, "application/json",
                  boost::json::serialize(boost::json::object{{"error", error}}) + "\n"};
}

Response ErrorResponse(const Status& status) {
  return ErrorResponse(HttpStatusOf(status.code()), status.ToString());
}

struct AdminServer::Impl {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  AdminOptions options;
  std::thread thread;
  int port = 0;

  Response Route(const http::request<http::string_body>& req) {
    const std::string target(req.target());
    const auto question = target.find('?');
    Request r;
    r.method = std::string(req.method_string());
    r.path = target.substr(0, question);
    if (question != std::string::npos) r.query = ParseQuery(target.substr(question + 1));
    r.body = req.body();
    r.content_type = std::string(req[http::field::content_type]);
    if (!options.bearer_token.empty() && r.path != "/healthz") {
      const std::string expected = "Bearer " + options.bearer_token;
      if (!ConstantTimeEquals(std::string(req[http::field::authorization]), expected)) {
        return ErrorResponse(401, "missing or wrong bearer token (Authorization: Bearer ...)");
      }
    }
    if (auto it = options.routes.find(r.path); it != options.routes.end()) {
      if (req.method() != http::verb::get) return ErrorResponse(405, "only GET is served here");
      return it->second();
    }
    // The longest prefix that matches: map order puts it last among the matches.
    const RequestHandler* handler = nullptr;
    for (const auto& [prefix, h] : options.prefix_routes) {
      if (r.path.compare(0, prefix.size(), prefix) == 0) handler = &h;
    }
    if (handler == nullptr) return ErrorResponse(404, "no such path: " + r.path);
    return (*handler)(r);
  }

  asio::awaitable<void> Session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    for (;;) {
      stream.expires_after(kReadTimeout);
      http::request_parser<http::string_body> parser;
      parser.body_limit(kMaxRequestBody);
      auto [ec, n] = co_await http::async_read(stream, buffer, parser, kToken);
      if (ec) co_return;
      const auto& req = parser.get();
      http::response<http::string_body> res;
      res.version(req.version());
      res.keep_alive(req.keep_alive());
      res.set(http::field::server, "tidepool");
      Response r = Route(req);
      res.result(static_cast<http::status>(r.status));
      res.set(http::field::content_type, r.content_type);
      res.body() = std::move(r.body);
      res.prepare_payload();
      auto [wec, wn] = co_await http::async_write(stream, res, kToken);
      if (wec || !res.keep_alive()) co_return;
    }
  }

  asio::awaitable<void> Accept() {
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(kToken);
      if (ec) co_return;
      asio::co_spawn(io, Session(std::move(socket)), asio::detached);
    }
  }
};

AdminServer::AdminServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AdminServer::~AdminServer() {
  Stop();
}

Result<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& listen,
                                                        std::map<std::string, Handler> routes) {
  AdminOptions options;
  options.listen = listen;
  options.routes = std::move(routes);
  return Start(std::move(options));
}

Result<std::unique_ptr<AdminServer>> AdminServer::Start(AdminOptions options) {
  const std::string listen = options.listen;
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("admin listen address \"" + listen + "\" is not HOST:PORT");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  boost::system::error_code ec;
  auto address = asio::ip::make_address(listen.substr(0, colon), ec);
  if (ec)
    return Status::InvalidArgument("admin listen address \"" + listen + "\": " + ec.message());
  int port = 0;
  try {
    port = std::stoi(listen.substr(colon + 1));
  } catch (const std::exception&) {
    return Status::InvalidArgument("admin listen address \"" + listen + "\" has no valid port");
  }
  if (!IsLoopback(address) && impl->options.bearer_token.empty()) {
    return Status::InvalidArgument("admin address " + listen +
                                   " is not loopback: set a bearer token to serve it there");
  }
  tcp::endpoint endpoint(address, static_cast<uint16_t>(port));
  impl->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(endpoint, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::Unavailable("cannot listen on " + listen + ": " + ec.message());
  impl->port = impl->acceptor.local_endpoint().port();
  asio::co_spawn(impl->io, impl->Accept(), asio::detached);
  impl->thread = std::thread([io = &impl->io] {
    SetCurrentThreadName("admin");
    io->run();
  });
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl)));
}

int AdminServer::port() const {
  return impl_->port;
}

void AdminServer::Stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  impl_->io.stop();
  impl_->thread.join();
}

}  // namespace tidepool::admin
