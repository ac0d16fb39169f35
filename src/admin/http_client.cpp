#include "admin/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

namespace tidepool::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr size_t kMaxReplyBody = 64 * 1024 * 1024;

namespace {

// One exchange on a connected stream (plain or TLS).
template <typename Stream>
Result<HttpReply> Exchange(Stream& stream, const HttpCall& call, const std::string& host) {
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
  for (const auto& [name, value] : call.headers) req.set(name, value);
  req.body() = call.body;
  req.prepare_payload();
  beast::error_code ec;
  http::write(stream, req, ec);
  if (ec) return Status::Unavailable("request to " + call.endpoint + " failed: " + ec.message());

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxReplyBody);
  http::read(stream, buffer, parser, ec);
  if (ec) return Status::Unavailable("reply from " + call.endpoint + " failed: " + ec.message());
  const auto& res = parser.get();
  return HttpReply{static_cast<int>(res.result_int()), std::string(res[http::field::content_type]),
                   res.body()};
}

}  // namespace

Result<HttpReply> HttpFetch(const HttpCall& call) {
  const auto colon = call.endpoint.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("address \"" + call.endpoint + "\" is not HOST:PORT");
  }
  const std::string host = call.endpoint.substr(0, colon);
  const std::string port = call.endpoint.substr(colon + 1);
  asio::io_context io;
  tcp::resolver resolver(io);
  beast::error_code ec;
  const auto endpoints = resolver.resolve(host, port, ec);
  if (ec) return Status::Unavailable("cannot resolve " + call.endpoint + ": " + ec.message());
  if (!call.tls) {
    beast::tcp_stream stream(io);
    stream.expires_after(call.timeout);
    stream.connect(endpoints, ec);
    if (ec) return Status::Unavailable("cannot connect to " + call.endpoint + ": " + ec.message());
    auto reply = Exchange(stream, call, host);
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    return reply;
  }
  asio::ssl::context tls(asio::ssl::context::tls_client);
  tls.set_verify_mode(asio::ssl::verify_peer);
  if (call.ca_file.empty()) {
    tls.set_default_verify_paths(ec);
  } else {
    tls.load_verify_file(call.ca_file, ec);
  }
  if (ec) {
    return Status::FailedPrecondition("cannot load the trusted certificates" +
                                      (call.ca_file.empty() ? "" : " of " + call.ca_file) + ": " +
                                      ec.message());
  }
  tls.set_verify_callback(asio::ssl::host_name_verification(host));
  beast::ssl_stream<beast::tcp_stream> stream(io, tls);
  // SNI: servers with several names pick their certificate by it.
  if (!SSL_set_tlsext_host_name(stream.native_handle(), host.c_str())) {
    return Status::Internal("cannot set the TLS server name " + host);
  }
  beast::get_lowest_layer(stream).expires_after(call.timeout);
  beast::get_lowest_layer(stream).connect(endpoints, ec);
  if (ec) return Status::Unavailable("cannot connect to " + call.endpoint + ": " + ec.message());
  stream.handshake(asio::ssl::stream_base::client, ec);
  if (ec) {
    return Status::Unavailable("TLS handshake with " + call.endpoint + " failed: " + ec.message());
  }
  auto reply = Exchange(stream, call, host);
  stream.shutdown(ec);  // a peer that just closes is common and harmless here
  return reply;
}

}  // namespace tidepool::admin
