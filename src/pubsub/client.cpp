#include "pubsub/client.h"

#include <grpcpp/grpcpp.h>

namespace tidepool::pubsub {

namespace v1 = ::google::pubsub::v1;

Status FromGrpc(const grpc::Status& s) {
  using C = grpc::StatusCode;
  switch (s.error_code()) {
    case C::OK:
      return Status::Ok();
    case C::INVALID_ARGUMENT:
      return Status::InvalidArgument(s.error_message());
    case C::NOT_FOUND:
      return Status::NotFound(s.error_message());
    case C::ALREADY_EXISTS:
      return Status::AlreadyExists(s.error_message());
    case C::FAILED_PRECONDITION:
      return Status::FailedPrecondition(s.error_message());
    case C::OUT_OF_RANGE:
      return Status::OutOfRange(s.error_message());
    case C::RESOURCE_EXHAUSTED:
      return Status::ResourceExhausted(s.error_message());
    case C::UNIMPLEMENTED:
      return Status::Unimplemented(s.error_message());
    case C::PERMISSION_DENIED:
      return Status::PermissionDenied(s.error_message());
    case C::UNAUTHENTICATED:
      return Status::Unauthenticated(s.error_message());
    case C::DEADLINE_EXCEEDED:
      return Status::DeadlineExceeded(s.error_message());
    case C::UNAVAILABLE:
    case C::CANCELLED:
    case C::ABORTED:
      return Status::Unavailable(s.error_message());
    case C::DATA_LOSS:
      return Status::Corruption(s.error_message());
    default:
      return Status::Internal(s.error_message());
  }
}

std::unique_ptr<PubsubClient> PubsubClient::Connect(const std::string& endpoint,
                                                    ClientOptions options) {
  grpc::ChannelArguments args;
  const int backoff_ms = static_cast<int>(options.max_reconnect_backoff.count());
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(backoff_ms, 100));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, std::min(backoff_ms, 100));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, backoff_ms);
  args.SetMaxReceiveMessageSize(12 * 1024 * 1024);
  args.SetMaxSendMessageSize(12 * 1024 * 1024);
  auto credentials = options.credentials ? options.credentials : grpc::InsecureChannelCredentials();
  auto channel = grpc::CreateCustomChannel(endpoint, credentials, args);
  return std::unique_ptr<PubsubClient>(new PubsubClient(std::move(channel), options));
}

PubsubClient::PubsubClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : options_(options),
      channel_(std::move(channel)),
      publisher_(v1::Publisher::NewStub(channel_)),
      subscriber_(v1::Subscriber::NewStub(channel_)) {}

void PubsubClient::Prepare(grpc::ClientContext* ctx) const {
  ctx->set_deadline(std::chrono::system_clock::now() + options_.call_timeout);
}

Status PubsubClient::CreateTopic(const std::string& topic) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::Topic req, resp;
  req.set_name(topic);
  return FromGrpc(publisher_->CreateTopic(&ctx, req, &resp));
}

Status PubsubClient::CreateSubscription(const v1::Subscription& subscription) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::Subscription resp;
  return FromGrpc(subscriber_->CreateSubscription(&ctx, subscription, &resp));
}

Status PubsubClient::DeleteSubscription(const std::string& subscription) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::DeleteSubscriptionRequest req;
  google::protobuf::Empty resp;
  req.set_subscription(subscription);
  return FromGrpc(subscriber_->DeleteSubscription(&ctx, req, &resp));
}

Status PubsubClient::DeleteTopic(const std::string& topic) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::DeleteTopicRequest req;
  google::protobuf::Empty resp;
  req.set_topic(topic);
  return FromGrpc(publisher_->DeleteTopic(&ctx, req, &resp));
}

Result<std::vector<std::string>> PubsubClient::Publish(
    const std::string& topic, const std::vector<broker::Message>& messages) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::PublishRequest req;
  v1::PublishResponse resp;
  req.set_topic(topic);
  for (const auto& m : messages) {
    auto* pm = req.add_messages();
    pm->set_data(m.data);
    pm->mutable_attributes()->insert(m.attributes.begin(), m.attributes.end());
    pm->set_ordering_key(m.ordering_key);
  }
  Status s = FromGrpc(publisher_->Publish(&ctx, req, &resp));
  if (!s.ok()) return s;
  return std::vector<std::string>(resp.message_ids().begin(), resp.message_ids().end());
}

Result<std::vector<v1::ReceivedMessage>> PubsubClient::Pull(const std::string& subscription,
                                                            int max_messages,
                                                            bool return_immediately) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::PullRequest req;
  v1::PullResponse resp;
  req.set_subscription(subscription);
  req.set_max_messages(max_messages);
  req.set_return_immediately(return_immediately);
  Status s = FromGrpc(subscriber_->Pull(&ctx, req, &resp));
  if (!s.ok()) return s;
  return std::vector<v1::ReceivedMessage>(resp.received_messages().begin(),
                                          resp.received_messages().end());
}

Status PubsubClient::Acknowledge(const std::string& subscription,
                                 const std::vector<std::string>& ack_ids) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::AcknowledgeRequest req;
  google::protobuf::Empty resp;
  req.set_subscription(subscription);
  for (const auto& id : ack_ids) req.add_ack_ids(id);
  return FromGrpc(subscriber_->Acknowledge(&ctx, req, &resp));
}

Status PubsubClient::ModifyAckDeadline(const std::string& subscription,
                                       const std::vector<std::string>& ack_ids, int seconds) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::ModifyAckDeadlineRequest req;
  google::protobuf::Empty resp;
  req.set_subscription(subscription);
  req.set_ack_deadline_seconds(seconds);
  for (const auto& id : ack_ids) req.add_ack_ids(id);
  return FromGrpc(subscriber_->ModifyAckDeadline(&ctx, req, &resp));
}

}  // namespace tidepool::pubsub
