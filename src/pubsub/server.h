// PubsubServer: the Google Cloud Pub/Sub v1 gRPC API (Publisher and Subscriber services) over
// a Broker, on gRPC's callback API, so that the official client libraries work against it
// unchanged (PUBSUB_EMULATOR_HOST).
//
// Handlers never block a gRPC thread on disk: publishes complete from the storage engine's
// group commit; admin calls, pulls and stream pumps run on a small executor.
#pragma once

#include <cstdint>
#include <functional>
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
  // TLS: PEM files of the server's certificate chain and key; both empty: plaintext.
  std::string tls_cert_file{};
  std::string tls_key_file{};
  // With TLS: called with the bearer token of each call ("" when it has none); false answers
  // UNAUTHENTICATED. Unset: no token is needed.
  std::function<bool(const std::string& token)> authorize{};
  // CPU priority (niceness 0-19) of the threads that serve calls; 0 leaves them at the
  // caller's. `up` serves its own pool's instances here and runs them below the web tier.
  // gRPC's threads inherit the priority of the thread that starts them: this covers gRPC's
  // own threads (pollers, timers, executors) when this server is the process's first user of
  // gRPC, and this server's threads in any case.
  int nice = 0;
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
  static Result<std::unique_ptr<PubsubServer>> StartOnThisThread(broker::Broker* broker,
                                                                 ServerOptions options);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::pubsub
