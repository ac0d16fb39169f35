#include "pipeline/http_tool.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace tidepool::pipeline {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;

namespace {

constexpr size_t kMaxReplyBytes = 8 << 20;

struct Url {
  std::string host;
  std::string port = "80";
  std::string target = "/";
};

Result<Url> ParseHttpUrl(const std::string& url) {
  constexpr std::string_view kScheme = "http://";
  if (!url.starts_with(kScheme)) {
    return Status::InvalidArgument("http tool: only http:// URLs are supported, got " + url);
  }
  std::string rest = url.substr(kScheme.size());
  Url out;
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    out.target = rest.substr(slash);
    rest = rest.substr(0, slash);
  }
  const size_t colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']') == std::string::npos) {
    out.port = rest.substr(colon + 1);
    rest = rest.substr(0, colon);
  }
  if (rest.empty() || out.port.empty()) {
    return Status::InvalidArgument("http tool: no host in " + url);
  }
  out.host = rest;
  return out;
}

}  // namespace

asio::awaitable<Result<json::value>> HttpPostJson(const HttpToolSpec& spec, const json::value& args,
                                                  std::chrono::milliseconds timeout) {
  auto url = ParseHttpUrl(spec.url);
  if (!url.ok()) co_return url.status();
  auto executor = co_await asio::this_coro::executor;
  asio::ip::tcp::resolver resolver(executor);
  auto [resolve_ec, endpoints] =
      co_await resolver.async_resolve(url->host, url->port, asio::as_tuple(asio::use_awaitable));
  if (resolve_ec) {
    co_return Status::Unavailable("http tool: cannot resolve " + url->host + ": " +
                                  resolve_ec.message());
  }
  beast::tcp_stream stream(executor);
  stream.expires_after(timeout);
  auto [connect_ec, connected] =
      co_await stream.async_connect(endpoints, asio::as_tuple(asio::use_awaitable));
  if (connect_ec) {
    co_return Status::Unavailable("http tool: cannot connect to " + spec.url + ": " +
                                  connect_ec.message());
  }
  http::request<http::string_body> request(http::verb::post, url->target, 11);
  request.set(http::field::host, url->host);
  request.set(http::field::content_type, "application/json");
  request.set(http::field::user_agent, "tidepool-worker");
  for (const auto& [name, value] : spec.headers) request.set(name, value);
  request.body() = json::serialize(args);
  request.prepare_payload();
  auto [write_ec, written] =
      co_await http::async_write(stream, request, asio::as_tuple(asio::use_awaitable));
  if (write_ec) {
    co_return Status::Unavailable("http tool: " + spec.url + ": " + write_ec.message());
  }
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxReplyBytes);
  auto [read_ec, read] =
      co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
  if (read_ec) {
    if (read_ec == beast::error::timeout) {
      co_return Status::DeadlineExceeded("http tool: " + spec.url + ": no reply within " +
                                         std::to_string(timeout.count()) + " ms");
    }
    co_return Status::Unavailable("http tool: " + spec.url + ": " + read_ec.message());
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  const auto& response = parser.get();
  const unsigned status = response.result_int();
  const std::string context = "http tool: " + spec.url + " answered " + std::to_string(status);
  if (status == 429 || status >= 500) co_return Status::Unavailable(context);
  if (status >= 400) co_return Status::InvalidArgument(context + ": " + response.body());
  if (status < 200 || status >= 300) co_return Status::Unavailable(context);
  boost::system::error_code ec;
  json::value body = json::parse(response.body(), ec);
  if (ec) co_return Status::Internal(context + " with a body that is not JSON");
  co_return body;
}

}  // namespace tidepool::pipeline
