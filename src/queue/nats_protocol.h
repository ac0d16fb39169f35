// The pure parts of the nats backend, kept apart so that they are unit-tested without a
// server: how Pub/Sub names map to JetStream names, how attributes travel in NATS headers, and
// what a JetStream ack subject says about the delivery it acknowledges. docs/queue-nats.md
// describes the mapping.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tidepool::queue::internal::nats {

// Header that carries the message's ordering key, and the prefix of the headers that carry its
// attributes ("Tp-A-" + PercentEncode(key): PercentEncode(value)).
inline constexpr char kOrderingKeyHeader[] = "Tp-Ordering-Key";
inline constexpr char kAttributeHeaderPrefix[] = "Tp-A-";
// JetStream's deduplication header.
inline constexpr char kMsgIdHeader[] = "Nats-Msg-Id";

// Keeps [A-Za-z0-9-], writes every other byte as "_XX" (upper-case hex): the result is a valid
// NATS subject token, stream, consumer and KV key name, and distinct inputs stay distinct.
std::string EscapeToken(std::string_view s);

// Keeps printable ASCII other than '%' and ':', writes every other byte as "%XX"; the inverse
// turns "%XX" back into the byte (anything malformed is kept as is).
std::string PercentEncode(std::string_view s);
std::string PercentDecode(std::string_view s);

struct TopicNames {
  std::string stream;   // PREFIX_E(project)__E(topic)
  std::string subject;  // PREFIX.E(project).E(topic)
};
// REQUIRES: prefix is letters, digits and '-'. Names longer than JetStream accepts in a file
// store are shortened to a prefix plus a hash of the whole.
TopicNames NamesForTopic(std::string_view prefix, std::string_view project,
                         std::string_view topic_id);
// The durable consumer of a subscription, on its topic's stream: E(project)__E(subscription).
std::string ConsumerName(std::string_view project, std::string_view subscription_id);
// The subscription directory: a KV bucket, keyed by E(project).E(subscription).
std::string DirectoryBucket(std::string_view prefix);
std::string DirectoryKey(std::string_view project, std::string_view subscription_id);

// "$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<nanos>.<pending>", or
// the newer form with a domain and an account hash after "$JS.ACK." (and a trailing token).
struct AckSubject {
  std::string stream;
  std::string consumer;
  uint64_t delivered = 0;  // delivery attempt, 1 on the first delivery
  uint64_t stream_sequence = 0;
  uint64_t consumer_sequence = 0;  // one per delivery: identifies this lease
  int64_t timestamp_nanos = 0;     // when the message was stored
  uint64_t pending = 0;
};
std::optional<AckSubject> ParseAckSubject(std::string_view subject);

}  // namespace tidepool::queue::internal::nats
