// A blocking HTTP/1.1 client for small requests: tidepool's admin endpoints (the CLI, the
// pubsub queue backend's backlog reads; plain HTTP on loopback or a trusted network), and
// OAuth2 token endpoints (HTTPS, the peer's certificate and host name verified). One connection
// per call.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace tidepool::admin {

struct HttpCall {
  std::string method = "GET";
  std::string endpoint;  // "HOST:PORT"
  std::string target;    // "/v1/pools?x=y"
  std::string body{};
  std::string content_type{};
  std::string bearer_token{};
  std::vector<std::pair<std::string, std::string>> headers{};
  std::chrono::milliseconds timeout{10'000};
  // HTTPS: the server's certificate must chain to the system's roots, or to the PEM file
  // `ca_file` when set, and name the endpoint's host.
  bool tls = false;
  std::string ca_file{};
};

struct HttpReply {
  int status = 0;
  std::string content_type;
  std::string body;
};

// UNAVAILABLE when the endpoint cannot be reached or the exchange fails; any HTTP status is a
// successful call (the caller reads reply.status).
Result<HttpReply> HttpFetch(const HttpCall& call);

}  // namespace tidepool::admin
