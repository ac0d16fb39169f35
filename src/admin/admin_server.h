// AdminServer: a small HTTP/1.1 server (Boost.Beast on coroutines) for operators and the
// autoscaler: GET /healthz, GET /metrics (Prometheus text), GET /v1/backlog (JSON). Loopback by
// default; routes are handlers registered before Start.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/status.h"

namespace tidepool::admin {

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

using Handler = std::function<Response()>;

class AdminServer {
 public:
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
