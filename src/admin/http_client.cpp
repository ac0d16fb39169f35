#include "admin/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace tidepool::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr size_t kMaxReplyBody = 64 * 1024 * 1024;

Result<HttpReply> HttpFetch(const HttpCall& call) {
  const auto colon = call.endpoint.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("address \"" + call.endpoint + "\" is not HOST:PORT");
  }
  const std::string host = call.endpoint.substr(0, colon);
  const std::string port = call.endpoint.substr(colon + 1);
  asio::io_context io;
  tcp::resolver resolver(io);
  beast::tcp_stream stream(io);
  beast::error_code ec;
  const auto endpoints = resolver.resolve(host, port, ec);
  if (ec) return Status::Unavailable("cannot resolve " + call.endpoint + ": " + ec.message());
  stream.expires_after(call.timeout);
  stream.connect(endpoints, ec);
  if (ec) return Status::Unavailable("cannot connect to " + call.endpoint + ": " + ec.message());

  const auto verb = http::string_to_verb(call.method);
  if (verb == http::verb::unknown) {
    return Status::InvalidArgument("unknown HTTP method " + call.method);
  }
  http::request<http::string_body> req{verb, call.target, 11};
  req.set(http::field::host, host);
  req.set(http::field::user_agent, "tidepool");
  if (!call.bearer_token.empty())
    req.set(http::field::authorization, "Bearer " + call.bearer_token);
  if (!call.content_type.empty()) req.set(http::field::content_type, call.content_type);
  req.body() = call.body;
  req.prepare_payload();
  http::write(stream, req, ec);
  if (ec) return Status::Unavailable("request to " + call.endpoint + " failed: " + ec.message());

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxReplyBody);
  http::read(stream, buffer, parser, ec);
  if (ec) return Status::Unavailable("reply from " + call.endpoint + " failed: " + ec.message());
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  const auto& res = parser.get();
  return HttpReply{static_cast<int>(res.result_int()), std::string(res[http::field::content_type]),
                   res.body()};
}

}  // namespace tidepool::admin
