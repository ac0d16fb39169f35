#include "admin/admin_server.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <thread>

namespace tidepool::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
constexpr auto kToken = asio::as_tuple(asio::use_awaitable);
constexpr auto kReadTimeout = std::chrono::seconds(10);
constexpr size_t kMaxRequestBody = 64 * 1024;

struct AdminServer::Impl {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  std::map<std::string, Handler> routes;
  std::thread thread;
  int port = 0;

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
      const std::string target(req.target());
      const std::string path = target.substr(0, target.find('?'));
      auto it = routes.find(path);
      if (req.method() != http::verb::get) {
        res.result(http::status::method_not_allowed);
        res.set(http::field::content_type, "application/json");
        res.body() = R"({"error":{"code":405,"message":"only GET is served here"}})";
      } else if (it == routes.end()) {
        res.result(http::status::not_found);
        res.set(http::field::content_type, "application/json");
        res.body() = R"({"error":{"code":404,"message":"no such path"}})";
      } else {
        Response r = it->second();
        res.result(static_cast<http::status>(r.status));
        res.set(http::field::content_type, r.content_type);
        res.body() = std::move(r.body);
      }
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
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("admin listen address \"" + listen + "\" is not HOST:PORT");
  }
  auto impl = std::make_unique<Impl>();
  impl->routes = std::move(routes);
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
  tcp::endpoint endpoint(address, static_cast<uint16_t>(port));
  impl->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(endpoint, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::Unavailable("cannot listen on " + listen + ": " + ec.message());
  impl->port = impl->acceptor.local_endpoint().port();
  asio::co_spawn(impl->io, impl->Accept(), asio::detached);
  impl->thread = std::thread([io = &impl->io] { io->run(); });
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
