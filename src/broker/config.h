// Topic, subscription and snapshot settings, as the broker keeps them. The names, defaults and
// limits are those of the Pub/Sub v1 API (DESIGN.md, "Protocol facts").
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tidepool::broker {

constexpr int64_t kMicrosPerSecond = 1'000'000;
constexpr int64_t kMinute = 60 * kMicrosPerSecond;
constexpr int64_t kDay = 24 * 60 * kMinute;

constexpr int kDefaultAckDeadlineSeconds = 10;
constexpr int kMinAckDeadlineSeconds = 10;
constexpr int kMaxAckDeadlineSeconds = 600;
constexpr int64_t kDefaultMessageRetention = 7 * kDay;
constexpr int64_t kMinMessageRetention = 10 * kMinute;
constexpr int64_t kMaxMessageRetention = 7 * kDay;        // subscriptions
constexpr int64_t kMaxTopicMessageRetention = 31 * kDay;  // topics
constexpr int64_t kDefaultExpirationTtl = 31 * kDay;
constexpr int64_t kMinExpirationTtl = 1 * kDay;
constexpr int kDefaultMaxDeliveryAttempts = 5;
constexpr int kMinMaxDeliveryAttempts = 5;
constexpr int kMaxMaxDeliveryAttempts = 100;
constexpr int64_t kDefaultMinBackoff = 10 * kMicrosPerSecond;
constexpr int64_t kDefaultMaxBackoff = 600 * kMicrosPerSecond;
constexpr int64_t kMaxBackoff = 600 * kMicrosPerSecond;
constexpr size_t kMaxMessagesPerPublish = 1000;
constexpr size_t kMaxPublishRequestBytes = 10'000'000;
constexpr size_t kMaxMessageBytes = 10'000'000;
constexpr int64_t kSnapshotLifetime = 7 * kDay;

using Labels = std::map<std::string, std::string>;

struct TopicConfig {
  std::string name{};
  Labels labels{};
  int64_t message_retention_micros = 0;  // 0: not set
  std::string kms_key_name{};            // kept and returned, not used
};

struct RetryPolicy {
  int64_t minimum_backoff_micros = kDefaultMinBackoff;
  int64_t maximum_backoff_micros = kDefaultMaxBackoff;
};

struct DeadLetterPolicy {
  std::string dead_letter_topic{};
  int max_delivery_attempts = kDefaultMaxDeliveryAttempts;
};

struct SubscriptionConfig {
  std::string name{};
  std::string topic{};
  int ack_deadline_seconds = kDefaultAckDeadlineSeconds;
  bool retain_acked_messages = false;
  int64_t message_retention_micros = kDefaultMessageRetention;
  Labels labels{};
  bool enable_message_ordering = false;
  // Inactivity after which the subscription is deleted; 0: never.
  int64_t expiration_ttl_micros = kDefaultExpirationTtl;
  std::string filter{};
  std::optional<DeadLetterPolicy> dead_letter_policy{};
  std::optional<RetryPolicy> retry_policy{};
  bool detached = false;
  bool enable_exactly_once_delivery = false;
  std::string push_endpoint{};  // push is not served; kept so that a config round-trips
  std::map<std::string, std::string> push_attributes{};
};

struct SnapshotConfig {
  std::string name{};
  std::string topic{};
  int64_t expire_time_micros = 0;
  Labels labels{};
  // The acknowledgement state captured from the subscription.
  uint64_t floor = 0;
  std::vector<std::pair<uint64_t, uint64_t>> acked_ranges{};
};

}  // namespace tidepool::broker
