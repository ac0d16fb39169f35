// PubsubServer: the Google Cloud Pub/Sub v1 gRPC API (Publisher and Subscriber services) over
// a Broker, on gRPC's callback API, so that the official client libraries work against it
// unchanged (PUBSUB_EMULATOR_HOST).
//
// Handlers never block a gRPC thread on disk: publishes complete from the storage engine's
// group commit; admin calls, pulls and stream pumps run on a small executor.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "broker/broker.h"
#include "common/status.h"

namespace tidepool::pubsub {

struct ServerOptions {
  std::string listen = "127.0.0.1:8085";
  int executor_threads = 2;
  // The server ends each StreamingPull stream after this long (UNAVAILABLE); clients reopen.
  int64_t stream_lifetime_micros = 30ll * 60 * 1000 * 1000;
  // How long a Pull without return_immediately waits for a message before answering empty.
  int64_t pull_wait_micros = 5ll * 1000 * 1000;
  // Largest message a client may send (a 10 MB publish plus protobuf overhead).
  int max_receive_message_bytes = 12 * 1024 * 1024;
};

class PubsubServer {
 public:
  // Binds and starts serving. `broker` must outlive the server.
  static Result<std::unique_ptr<PubsubServer>> Start(broker::Broker* broker, ServerOptions options);
  ~PubsubServer();

  // The bound port (useful with "127.0.0.1:0").
  int port() const;
  // Stops accepting calls, ends open streams with UNAVAILABLE so clients reconnect elsewhere,
  // and waits up to grace_micros for in-flight calls.
  void Shutdown(int64_t grace_micros);

  struct Impl;

 private:
  explicit PubsubServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::pubsub
