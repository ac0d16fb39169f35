// AdminServer: a small HTTP/1.1 server (Boost.Beast on coroutines) for operators, the CLI and
// the autoscaler: health, Prometheus metrics, backlog, and the pools API. Loopback by default;
// bound to any other address it requires a bearer token on every route but /healthz.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tidepool::admin {

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query
  std::map<std::string, std::string> query{};
  std::string body{};
  std::string content_type{};
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// A JSON error body {"error":{"code":STATUS,"message":...}} with its HTTP status.
Response ErrorResponse(int http_status, const std::string& message);
// The HTTP status for a tidepool Status (INVALID_ARGUMENT → 400, NOT_FOUND → 404, ...), with
// the message in the JSON error body.
Response ErrorResponse(const Status& status);

// "a%20b+c" → "a b c".
std::string PercentDecode(std::string_view in);
// "a=1&b=x%20y" → {a: 1, b: "x y"}; a key without "=" maps to "".
std::map<std::string, std::string> ParseQuery(std::string_view query);

using Handler = std::function<Response()>;
using RequestHandler = std::function<Response(const Request&)>;

struct AdminOptions {
  std::string listen = "127.0.0.1:8086";
  // Exact GET paths.
  std::map<std::string, Handler> routes{};
  // Any method, any path starting with the prefix (the longest matching prefix wins).
  std::map<std::string, RequestHandler> prefix_routes{};
  // Required as "Authorization: Bearer TOKEN" when set. Start refuses a non-loopback address
  // without one.
  std::string bearer_token{};
};

class AdminServer {
 public:
  static Result<std::unique_ptr<AdminServer>> Start(AdminOptions options);
  // Serves `routes` (exact GET paths) on `listen` ("HOST:PORT"; port 0 picks one).
  static Result<std::unique_ptr<AdminServer>> Start(const std::string& listen,
                                                    std::map<std::string, Handler> routes);
  ~AdminServer();
  int port() const;
  void Stop();

  struct Impl;

 private:
  explicit AdminServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::admin
