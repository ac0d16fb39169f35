// Conversions between the Pub/Sub v1 protos and the broker's own types, and from the broker's
// Status to gRPC status codes. The broker knows nothing of protobuf; this file is the seam.
#pragma once

#include <grpcpp/support/status.h>

#include <string>
#include <vector>

#include "broker/config.h"
#include "broker/message.h"
#include "broker/subscription.h"
#include "common/status.h"
#include "google/pubsub/v1/pubsub.pb.h"

namespace tidepool::pubsub {

namespace v1 = ::google::pubsub::v1;

grpc::Status ToGrpc(const Status& s);

int64_t DurationMicros(const google::protobuf::Duration& d);
google::protobuf::Duration ToDuration(int64_t micros);
int64_t TimestampMicros(const google::protobuf::Timestamp& t);
google::protobuf::Timestamp ToTimestamp(int64_t micros);

broker::TopicConfig FromProto(const v1::Topic& t);
v1::Topic ToProto(const broker::TopicConfig& c);

// Applies the API's defaults for fields left unset (ack deadline 10 s, retention 7 days,
// expiration 31 days, 5 delivery attempts, 10 s / 600 s backoff).
broker::SubscriptionConfig FromProto(const v1::Subscription& s);
v1::Subscription ToProto(const broker::SubscriptionConfig& c, int64_t topic_retention_micros);

v1::Snapshot ToProto(const broker::SnapshotConfig& c);

broker::Message FromProto(const v1::PubsubMessage& m);
void ToProto(const broker::ReceivedMessage& r, v1::ReceivedMessage* out);

std::vector<std::string> MaskPaths(const google::protobuf::FieldMask& mask);

}  // namespace tidepool::pubsub
