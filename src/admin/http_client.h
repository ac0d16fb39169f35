// A blocking HTTP/1.1 client for small requests to tidepool's admin endpoints (the CLI, the
// pubsub queue backend's backlog reads). One connection per call; plain HTTP on loopback or a
// trusted network.
#pragma once

#include <chrono>
#include <string>

#include "common/status.h"

namespace tidepool::admin {

struct HttpCall {
  std::string method = "GET";
  std::string endpoint;  // "HOST:PORT"
  std::string target;    // "/v1/pools?x=y"
  std::string body{};
  std::string content_type{};
  std::string bearer_token{};
  std::chrono::milliseconds timeout{10'000};
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
