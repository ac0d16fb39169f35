#include "pubsub/convert.h"

namespace tidepool::pubsub {

using broker::kMicrosPerSecond;

grpc::Status ToGrpc(const Status& s) {
  using grpc::StatusCode;
  StatusCode code = StatusCode::UNKNOWN;
  switch (s.code()) {
    case tidepool::StatusCode::kOk:
      return grpc::Status::OK;
    case tidepool::StatusCode::kInvalidArgument:
      code = StatusCode::INVALID_ARGUMENT;
      break;
    case tidepool::StatusCode::kNotFound:
      code = StatusCode::NOT_FOUND;
      break;
    case tidepool::StatusCode::kAlreadyExists:
      code = StatusCode::ALREADY_EXISTS;
      break;
    case tidepool::StatusCode::kFailedPrecondition:
      code = StatusCode::FAILED_PRECONDITION;
      break;
    case tidepool::StatusCode::kOutOfRange:
      code = StatusCode::OUT_OF_RANGE;
      break;
    case tidepool::StatusCode::kResourceExhausted:
      code = StatusCode::RESOURCE_EXHAUSTED;
      break;
    case tidepool::StatusCode::kUnavailable:
      code = StatusCode::UNAVAILABLE;
      break;
    case tidepool::StatusCode::kCorruption:
      code = StatusCode::DATA_LOSS;
      break;
    case tidepool::StatusCode::kIOError:
      code = StatusCode::UNAVAILABLE;
      break;
    case tidepool::StatusCode::kInternal:
      code = StatusCode::INTERNAL;
      break;
    case tidepool::StatusCode::kUnimplemented:
      code = StatusCode::UNIMPLEMENTED;
      break;
    case tidepool::StatusCode::kPermissionDenied:
      code = StatusCode::PERMISSION_DENIED;
      break;
    case tidepool::StatusCode::kUnauthenticated:
      code = StatusCode::UNAUTHENTICATED;
      break;
    case tidepool::StatusCode::kDeadlineExceeded:
      code = StatusCode::DEADLINE_EXCEEDED;
      break;
  }
  return grpc::Status(code, s.message());
}

int64_t DurationMicros(const google::protobuf::Duration& d) {
  return d.seconds() * kMicrosPerSecond + d.nanos() / 1000;
}

google::protobuf::Duration ToDuration(int64_t micros) {
  google::protobuf::Duration d;
  d.set_seconds(micros / kMicrosPerSecond);
  d.set_nanos(static_cast<int32_t>((micros % kMicrosPerSecond) * 1000));
  return d;
}

int64_t TimestampMicros(const google::protobuf::Timestamp& t) {
  return t.seconds() * kMicrosPerSecond + t.nanos() / 1000;
}

google::protobuf::Timestamp ToTimestamp(int64_t micros) {
  google::protobuf::Timestamp t;
  t.set_seconds(micros / kMicrosPerSecond);
  t.set_nanos(static_cast<int32_t>((micros % kMicrosPerSecond) * 1000));
  return t;
}

broker::TopicConfig FromProto(const v1::Topic& t) {
  broker::TopicConfig c;
  c.name = t.name();
  c.labels.insert(t.labels().begin(), t.labels().end());
  if (t.has_message_retention_duration()) {
    c.message_retention_micros = DurationMicros(t.message_retention_duration());
  }
  c.kms_key_name = t.kms_key_name();
  return c;
}

v1::Topic ToProto(const broker::TopicConfig& c) {
  v1::Topic t;
  t.set_name(c.name);
  t.mutable_labels()->insert(c.labels.begin(), c.labels.end());
  if (c.message_retention_micros > 0) {
    *t.mutable_message_retention_duration() = ToDuration(c.message_retention_micros);
  }
  t.set_kms_key_name(c.kms_key_name);
  t.set_state(v1::Topic::ACTIVE);
  return t;
}

broker::SubscriptionConfig FromProto(const v1::Subscription& s) {
  broker::SubscriptionConfig c;
  c.name = s.name();
  c.topic = s.topic();
  c.ack_deadline_seconds =
      s.ack_deadline_seconds() == 0 ? broker::kDefaultAckDeadlineSeconds : s.ack_deadline_seconds();
  c.retain_acked_messages = s.retain_acked_messages();
  c.message_retention_micros = s.has_message_retention_duration()
                                   ? DurationMicros(s.message_retention_duration())
                                   : broker::kDefaultMessageRetention;
  c.labels.insert(s.labels().begin(), s.labels().end());
  c.enable_message_ordering = s.enable_message_ordering();
  if (s.has_expiration_policy()) {
    // A policy without a ttl means "never expire".
    c.expiration_ttl_micros =
        s.expiration_policy().has_ttl() ? DurationMicros(s.expiration_policy().ttl()) : 0;
  }
  c.filter = s.filter();
  if (s.has_dead_letter_policy() && !s.dead_letter_policy().dead_letter_topic().empty()) {
    const int attempts = s.dead_letter_policy().max_delivery_attempts();
    c.dead_letter_policy =
        broker::DeadLetterPolicy{s.dead_letter_policy().dead_letter_topic(),
                                 attempts == 0 ? broker::kDefaultMaxDeliveryAttempts : attempts};
  }
  if (s.has_retry_policy()) {
    broker::RetryPolicy r;
    if (s.retry_policy().has_minimum_backoff()) {
      r.minimum_backoff_micros = DurationMicros(s.retry_policy().minimum_backoff());
    }
    if (s.retry_policy().has_maximum_backoff()) {
      r.maximum_backoff_micros = DurationMicros(s.retry_policy().maximum_backoff());
    }
    c.retry_policy = r;
  }
  c.detached = s.detached();
  c.enable_exactly_once_delivery = s.enable_exactly_once_delivery();
  c.push_endpoint = s.push_config().push_endpoint();
  c.push_attributes.insert(s.push_config().attributes().begin(),
                           s.push_config().attributes().end());
  return c;
}

v1::Subscription ToProto(const broker::SubscriptionConfig& c, int64_t topic_retention_micros) {
  v1::Subscription s;
  s.set_name(c.name);
  s.set_topic(c.topic);
  s.set_ack_deadline_seconds(c.ack_deadline_seconds);
  s.set_retain_acked_messages(c.retain_acked_messages);
  *s.mutable_message_retention_duration() = ToDuration(c.message_retention_micros);
  s.mutable_labels()->insert(c.labels.begin(), c.labels.end());
  s.set_enable_message_ordering(c.enable_message_ordering);
  auto* expiration = s.mutable_expiration_policy();
  if (c.expiration_ttl_micros > 0) *expiration->mutable_ttl() = ToDuration(c.expiration_ttl_micros);
  s.set_filter(c.filter);
  if (c.dead_letter_policy) {
    s.mutable_dead_letter_policy()->set_dead_letter_topic(c.dead_letter_policy->dead_letter_topic);
    s.mutable_dead_letter_policy()->set_max_delivery_attempts(
        c.dead_letter_policy->max_delivery_attempts);
  }
  if (c.retry_policy) {
    *s.mutable_retry_policy()->mutable_minimum_backoff() =
        ToDuration(c.retry_policy->minimum_backoff_micros);
    *s.mutable_retry_policy()->mutable_maximum_backoff() =
        ToDuration(c.retry_policy->maximum_backoff_micros);
  }
  s.set_detached(c.detached);
  s.set_enable_exactly_once_delivery(c.enable_exactly_once_delivery);
  if (!c.push_endpoint.empty() || !c.push_attributes.empty()) {
    s.mutable_push_config()->set_push_endpoint(c.push_endpoint);
    s.mutable_push_config()->mutable_attributes()->insert(c.push_attributes.begin(),
                                                          c.push_attributes.end());
  }
  if (topic_retention_micros > 0) {
    *s.mutable_topic_message_retention_duration() = ToDuration(topic_retention_micros);
  }
  s.set_state(v1::Subscription::ACTIVE);
  return s;
}

v1::Snapshot ToProto(const broker::SnapshotConfig& c) {
  v1::Snapshot s;
  s.set_name(c.name);
  s.set_topic(c.topic);
  *s.mutable_expire_time() = ToTimestamp(c.expire_time_micros);
  s.mutable_labels()->insert(c.labels.begin(), c.labels.end());
  return s;
}

broker::Message FromProto(const v1::PubsubMessage& m) {
  broker::Message out;
  out.data = m.data();
  out.attributes.insert(m.attributes().begin(), m.attributes().end());
  out.ordering_key = m.ordering_key();
  return out;
}

void ToProto(const broker::ReceivedMessage& r, v1::ReceivedMessage* out) {
  out->set_ack_id(r.ack_id);
  out->set_delivery_attempt(r.delivery_attempt);
  auto* m = out->mutable_message();
  m->set_data(r.message.message.data);
  m->mutable_attributes()->insert(r.message.message.attributes.begin(),
                                  r.message.message.attributes.end());
  m->set_message_id(r.message.message_id());
  *m->mutable_publish_time() = ToTimestamp(r.message.publish_time_micros);
  m->set_ordering_key(r.message.message.ordering_key);
}

std::vector<std::string> MaskPaths(const google::protobuf::FieldMask& mask) {
  std::vector<std::string> out(mask.paths().begin(), mask.paths().end());
  return out;
}

}  // namespace tidepool::pubsub
