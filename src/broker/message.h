// Messages as the broker stores them: one log record per message, holding the attributes,
// the ordering key and the data. The message id is the record's sequence number and the
// publish time is the record's timestamp, both assigned by the log.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "common/status.h"

namespace tidepool::broker {

struct Message {
  std::string data{};
  std::map<std::string, std::string> attributes{};
  std::string ordering_key{};
};

struct StoredMessage {
  uint64_t seq = 0;
  int64_t publish_time_micros = 0;
  Message message;
  std::string message_id() const { return std::to_string(seq); }
};

// Bytes a message counts for against the 10 MB limits (data + attribute keys and values +
// ordering key), as the real service counts them.
size_t MessageSize(const Message& m);

std::string EncodeMessage(const Message& m);
Result<Message> DecodeMessage(std::string_view record);

}  // namespace tidepool::broker
