// PubsubClient: the C++ client the rest of tidepool uses to reach a Pub/Sub v1 endpoint (a
// `tidepool broker`, or anything else that speaks the API). Unary calls with a deadline each,
// returning tidepool Results; streaming pull is used through stub() until the worker runtime
// wraps it.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/security/credentials.h>

#include "broker/message.h"
#include "common/status.h"
#include "google/pubsub/v1/pubsub.grpc.pb.h"

namespace tidepool::pubsub {

struct ClientOptions {
  std::chrono::milliseconds call_timeout{30'000};
  // Reconnect quickly after the endpoint was unreachable (a broker restarting nearby),
  // instead of gRPC's default backoff of seconds.
  std::chrono::milliseconds max_reconnect_backoff{1'000};
  // TLS and call credentials (pubsub/google_auth.h); null: plaintext, as to an emulator.
  std::shared_ptr<grpc::ChannelCredentials> credentials{};
};

class PubsubClient {
 public:
  // Connects lazily to `endpoint` ("HOST:PORT"; plaintext as PUBSUB_EMULATOR_HOST unless
  // options.credentials say otherwise).
  static std::unique_ptr<PubsubClient> Connect(const std::string& endpoint,
                                               ClientOptions options = {});

  Status CreateTopic(const std::string& topic);
  Status CreateSubscription(const google::pubsub::v1::Subscription& subscription);
  Status DeleteSubscription(const std::string& subscription);
  Status DeleteTopic(const std::string& topic);

  // Publishes atomically; the ids once the server made the messages durable.
  Result<std::vector<std::string>> Publish(const std::string& topic,
                                           const std::vector<broker::Message>& messages);
  Result<std::vector<google::pubsub::v1::ReceivedMessage>> Pull(const std::string& subscription,
                                                                int max_messages,
                                                                bool return_immediately);
  Status Acknowledge(const std::string& subscription, const std::vector<std::string>& ack_ids);
  Status ModifyAckDeadline(const std::string& subscription, const std::vector<std::string>& ack_ids,
                           int seconds);

  google::pubsub::v1::Publisher::Stub& publisher() { return *publisher_; }
  google::pubsub::v1::Subscriber::Stub& stub() { return *subscriber_; }

 private:
  PubsubClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options);
  void Prepare(grpc::ClientContext* ctx) const;

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<google::pubsub::v1::Publisher::Stub> publisher_;
  std::unique_ptr<google::pubsub::v1::Subscriber::Stub> subscriber_;
};

// The tidepool Status of a gRPC status (the inverse of ToGrpc).
Status FromGrpc(const grpc::Status& s);

}  // namespace tidepool::pubsub
