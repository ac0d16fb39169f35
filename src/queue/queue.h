// Queue: the one interface through which the web tier, the pipeline, the worker runtime and the
// pool supervisor publish, pull, acknowledge, extend leases and read backlog. Callers never know
// which backend runs underneath:
//
//   embedded  the in-process broker (src/broker), used by `tidepool up`
//   pubsub    any Pub/Sub v1 endpoint over gRPC: a remote `tidepool broker`, or Google Cloud
//             Pub/Sub
//   nats      NATS JetStream (docs/queue-nats.md): topic = stream, subscription = durable
//             pull consumer; Pull and streams send JetStream pull requests of their own (not
//             natsSubscription_Fetch), Nack(delay) is NAK with delay, ExtendLease is
//             in-progress, Terminate is TERM after a republish to the dead-letter topic
//
// Names: a topic or subscription is either a full Pub/Sub path ("projects/P/topics/T",
// "projects/P/subscriptions/S") or a short id ("T", "S") completed with the backend's project.
//
// Threading: every method may be called from any thread. Callbacks run on a backend thread,
// exactly once each, and must not block (post to your executor). A callback may run before the
// call that registered it returns.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "broker/message.h"
#include "common/status.h"

namespace tidepool::broker {
class Broker;
}

namespace tidepool::queue {

using broker::Message;  // data, attributes, ordering_key

// A leased message. The lease ends with Ack, Nack or Terminate, or when it expires.
struct Delivery {
  std::string ack_id;
  std::string message_id;
  int64_t publish_time_micros = 0;
  Message message{};
  // 1 on the first delivery; 0 when the backend cannot tell (Pub/Sub without a dead-letter
  // policy reports no attempts).
  int delivery_attempt = 0;
  // Bytes counted against flow control (data + attributes + ordering key).
  size_t size() const { return broker::MessageSize(message); }
};

struct Backlog {
  uint64_t undelivered_messages = 0;  // published and not yet acknowledged, leased included
  int64_t oldest_unacked_age_micros = 0;
  uint64_t leased_messages = 0;  // of undelivered_messages, those leased right now
};

// What a subscription must look like; EnsureSubscription creates it when absent and leaves an
// existing one as it is.
struct SubscriptionSpec {
  std::string name{};
  std::string topic{};
  int ack_deadline_seconds = 10;
  bool enable_message_ordering = false;
  bool enable_exactly_once_delivery = false;
  std::string dead_letter_topic{};  // empty: none
  int max_delivery_attempts = 5;
  // Redelivery backoff after a nack or an expired lease; zero min and max: no retry policy.
  std::chrono::seconds min_backoff{0};
  std::chrono::seconds max_backoff{0};
  std::string filter{};
  // Deleted after this long without a subscriber (Pub/Sub expiration_policy: at least 1 day and
  // at least message_retention; JetStream's InactiveThreshold); 0: the backend's default (31
  // days; never on NATS).
  std::chrono::seconds expiration_ttl{0};
  // How long unacknowledged messages are kept (Pub/Sub: 10 minutes to 7 days); 0: the
  // backend's default (7 days). On NATS the topic's stream decides (docs/queue-nats.md).
  std::chrono::seconds message_retention{0};
};

// Outcome of Ack / Nack / ExtendLease / Terminate.
struct AckOutcome {
  Status status;  // the whole call failed (nothing applied can be assumed)
  // With exactly-once delivery: the ids whose operation was refused (lease lost, expired or
  // stale). The message will be redelivered; its handler's work may be repeated.
  std::vector<std::string> failed_ack_ids{};
};

using PublishCallback = std::function<void(Result<std::vector<std::string>>)>;
using PullCallback = std::function<void(Result<std::vector<Delivery>>)>;
using AckCallback = std::function<void(AckOutcome)>;

struct FlowControl {
  int64_t max_outstanding_messages = 1000;
  int64_t max_outstanding_bytes = 100 << 20;
};

struct StreamOptions {
  FlowControl flow{};
  // The lease given to delivered messages; 0: the subscription's ack deadline.
  int stream_ack_deadline_seconds = 0;
};

// A streaming pull: messages arrive through the DeliveryHandler as long as the leases
// outstanding (delivered and not yet acked, nacked or terminated through this stream) stay
// below the flow-control limits. Server-ended streams (lifetime, UNAVAILABLE) are reopened by
// the backend without losing leases; the ErrorHandler runs only when the stream ends for good
// (NOT_FOUND subscription, PERMISSION_DENIED, ...).
class MessageStream {
 public:
  virtual ~MessageStream() = default;
  // Stops asking for messages at once. Leases already handed out stay valid; settle them
  // through this stream, then Close.
  virtual void StopPulling() = 0;
  virtual void Ack(std::vector<std::string> ack_ids, AckCallback done) = 0;
  // Redelivery after `delay` (0: at once; clamped to the backend's maximum, 600 s on Pub/Sub).
  virtual void Nack(std::vector<std::string> ack_ids, std::chrono::seconds delay,
                    AckCallback done) = 0;
  virtual void ExtendLease(std::vector<std::string> ack_ids, std::chrono::seconds lease,
                           AckCallback done) = 0;
  // Stop redelivering: to the subscription's dead-letter topic when it has one, else dropped.
  virtual void Terminate(std::vector<Delivery> deliveries, AckCallback done) = 0;
  // Outstanding leases of this stream, as counted for flow control.
  virtual int64_t outstanding_messages() const = 0;
  // Waits for the settle calls in flight, then ends the stream. Idempotent. Leases not settled
  // by then expire on the server and are redelivered.
  virtual void Close() = 0;
};

using DeliveryHandler = std::function<void(std::vector<Delivery>)>;
using StreamErrorHandler = std::function<void(Status)>;

class Queue {
 public:
  virtual ~Queue() = default;

  // ---- setup (idempotent)
  virtual Status EnsureTopic(const std::string& topic) = 0;
  virtual Status EnsureSubscription(const SubscriptionSpec& spec) = 0;
  // Deletes a subscription with what it holds; one that does not exist is no error. Its
  // streams must be closed first.
  virtual Status DeleteSubscription(const std::string& subscription) = 0;

  // ---- publish: the messages of one call are published together; `done` gets their ids
  // once the backend made them durable.
  virtual void Publish(const std::string& topic, std::vector<Message> messages,
                       PublishCallback done) = 0;

  // ---- pull
  virtual Result<std::unique_ptr<MessageStream>> Subscribe(const std::string& subscription,
                                                           StreamOptions options,
                                                           DeliveryHandler on_messages,
                                                           StreamErrorHandler on_error) = 0;
  // One batch: returns as soon as at least one message is there, or empty after max_wait.
  virtual void Pull(const std::string& subscription, int max_messages,
                    std::chrono::milliseconds max_wait, PullCallback done) = 0;

  // ---- settle leases obtained by Pull (a stream's leases go through the stream)
  virtual void Ack(const std::string& subscription, std::vector<std::string> ack_ids,
                   AckCallback done) = 0;
  virtual void Nack(const std::string& subscription, std::vector<std::string> ack_ids,
                    std::chrono::seconds delay, AckCallback done) = 0;
  virtual void ExtendLease(const std::string& subscription, std::vector<std::string> ack_ids,
                           std::chrono::seconds lease, AckCallback done) = 0;
  virtual void Terminate(const std::string& subscription, std::vector<Delivery> deliveries,
                         AckCallback done) = 0;

  // ---- backlog, for the autoscaler (read straight from the queue, no metrics pipeline)
  virtual Result<Backlog> GetBacklog(const std::string& subscription) = 0;

  // The backend's name: "embedded", "pubsub", "nats".
  virtual std::string backend() const = 0;
};

struct QueueOptions {
  std::string backend = "embedded";
  std::string project = "tidepool";
  // embedded: the broker to use (not owned; outlives the queue).
  broker::Broker* broker = nullptr;
  // pubsub: "HOST:PORT" of the Pub/Sub endpoint (PUBSUB_EMULATOR_HOST), and optionally the
  // admin address of a `tidepool broker` ("HOST:PORT") to read backlog from; without it
  // GetBacklog is UNIMPLEMENTED (Google Cloud Pub/Sub reports backlog through Cloud
  // Monitoring only).
  std::string endpoint{};
  std::string admin_endpoint{};
  std::chrono::milliseconds call_timeout{30'000};
  // pubsub: "" for plaintext without credentials (an emulator, a tidepool broker on a trusted
  // network), or "google": TLS and OAuth2 access tokens from Application Default Credentials
  // (the GOOGLE_APPLICATION_CREDENTIALS key file, else the metadata server), as Google Cloud
  // Pub/Sub (pubsub.googleapis.com:443) requires.
  std::string auth{};
  std::string tls_ca_file{};  // PEM roots to trust instead of the system's (a private CA)
  // nats: the servers of the JetStream cluster ("nats://HOST:PORT"; the client reconnects to
  // any of them), and the replicas of every stream, consumer and the subscription directory
  // (3 in a production cluster, 1 on a single server).
  std::vector<std::string> nats_servers{};
  int nats_replicas = 1;
  // Prefix of every stream, subject and bucket the backend creates: letters, digits and '-'.
  // Deployments (or tests) with different prefixes share a NATS account without meeting.
  std::string nats_prefix = "tidepool";
  // Most leases a consumer hands out at once across all its clients (JetStream MaxAckPending).
  int64_t nats_max_ack_pending = 20'000;
  // How long one second of ack deadline, lease, nack delay or backoff lasts on the NATS side.
  // Always 1 s in production; tests shrink it to run lease expiry in real time.
  std::chrono::milliseconds nats_second{1'000};
};

Result<std::unique_ptr<Queue>> OpenQueue(const QueueOptions& options);

// Completes a short topic / subscription id with `project`; full paths pass unchanged.
std::string TopicPath(const std::string& project, const std::string& topic);
std::string SubscriptionPath(const std::string& project, const std::string& subscription);

// Publisher: batches single-message publishes into Queue::Publish calls (like the official
// clients: a batch goes out at max_messages, max_bytes or max_delay, whichever comes first).
struct BatchingOptions {
  size_t max_messages = 100;
  size_t max_bytes = 1 << 20;
  // 0: no wait; a message goes out as soon as a batch may be in flight, and gathers with the
  // next ones while max_in_flight batches are.
  std::chrono::microseconds max_delay{1'000};
  // Batches in flight at once per topic (more messages wait in the next batch).
  int max_in_flight = 8;
};

class Publisher {
 public:
  Publisher(Queue& queue, std::string topic, BatchingOptions options = {});
  ~Publisher();  // flushes and waits for every callback
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;
  // `done` gets the message id once durable.
  void Publish(Message message, std::function<void(Result<std::string>)> done);
  void Flush();  // sends what is batched now and waits for every callback

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::queue
