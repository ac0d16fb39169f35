#include "store/engine.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include <boost/json/parse.hpp>

namespace tidepool::store::internal {
namespace {

// Well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF; and
// no NUL, which PostgreSQL text cannot hold.
bool IsStorableUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte == 0) return false;
    if (byte < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    unsigned char low = 0x80;   // allowed range of the second byte
    unsigned char high = 0xBF;  // (narrower for the cases that could be overlong or too large)
    if (byte >= 0xC2 && byte <= 0xDF) {
      length = 2;
    } else if (byte >= 0xE0 && byte <= 0xEF) {
      length = 3;
      if (byte == 0xE0) low = 0xA0;
      if (byte == 0xED) high = 0x9F;  // U+D800..U+DFFF are surrogates
    } else if (byte >= 0xF0 && byte <= 0xF4) {
      length = 4;
      if (byte == 0xF0) low = 0x90;
      if (byte == 0xF4) high = 0x8F;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    const auto second = static_cast<unsigned char>(text[i + 1]);
    if (second < low || second > high) return false;
    for (size_t k = 2; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if (next < 0x80 || next > 0xBF) return false;
    }
    i += length;
  }
  return true;
}

Status CheckText(std::string_view what, std::string_view value, size_t max_bytes) {
  if (value.size() > max_bytes) {
    return Status::InvalidArgument("store: " + std::string(what) + " is " +
                                   std::to_string(value.size()) + " bytes, more than " +
                                   std::to_string(max_bytes));
  }
  if (!IsStorableUtf8(value)) {
    return Status::InvalidArgument("store: " + std::string(what) +
                                   " is not UTF-8 text (or holds a NUL byte)");
  }
  return Status::Ok();
}

Status CheckCards(std::string_view cards_json) {
  if (cards_json.empty()) return Status::Ok();
  TP_RETURN_IF_ERROR(CheckText("cards_json", cards_json, kMaxCardsJsonBytes));
  boost::system::error_code ec;
  const boost::json::value cards = boost::json::parse(cards_json, ec);
  if (ec || !cards.is_object()) {
    return Status::InvalidArgument("store: cards_json is not a JSON object");
  }
  return Status::Ok();
}

Status CheckTimes(const StoredMessage& message) {
  if (message.created_micros < 0) {
    return Status::InvalidArgument("store: created_micros is negative");
  }
  if (message.seq < 0 || message.seq == std::numeric_limits<int64_t>::max()) {
    return Status::InvalidArgument("store: seq is out of range");
  }
  return Status::Ok();
}

}  // namespace

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status CheckId(std::string_view what, std::string_view value) {
  if (value.empty()) return Status::InvalidArgument("store: " + std::string(what) + " is empty");
  return CheckText(what, value, kMaxIdBytes);
}

Status CheckLimit(int limit) {
  if (limit <= 0) {
    return Status::InvalidArgument("store: limit must be positive, not " + std::to_string(limit));
  }
  return Status::Ok();
}

Result<Role> ParseRole(std::string_view name) {
  for (const Role role : {Role::kUser, Role::kAssistant, Role::kError}) {
    if (name == RoleName(role)) return role;
  }
  return Status::Corruption("store: unknown role '" + std::string(name) + "' in the database");
}

Result<Conversation> PrepareConversation(const Conversation& conversation) {
  TP_RETURN_IF_ERROR(CheckId("conversation id", conversation.id));
  TP_RETURN_IF_ERROR(CheckId("app", conversation.app));
  if (conversation.created_micros < 0) {
    return Status::InvalidArgument("store: created_micros is negative");
  }
  Conversation prepared = conversation;
  if (prepared.created_micros == 0) prepared.created_micros = NowMicros();
  return prepared;
}

Result<StoredMessage> PrepareUserMessage(const StoredMessage& message,
                                         const std::string& idempotency_key) {
  if (message.role != Role::kUser) {
    return Status::InvalidArgument("store: AddUserMessage takes role user, not " +
                                   std::string(RoleName(message.role)));
  }
  TP_RETURN_IF_ERROR(CheckId("message id", message.id));
  TP_RETURN_IF_ERROR(CheckId("conversation id", message.conversation_id));
  if (!message.request_id.empty() && message.request_id != message.id) {
    return Status::InvalidArgument("store: a user message's request_id is its id");
  }
  if (!idempotency_key.empty()) TP_RETURN_IF_ERROR(CheckId("idempotency key", idempotency_key));
  TP_RETURN_IF_ERROR(CheckText("text", message.text, kMaxTextBytes));
  if (!message.cards_json.empty()) {
    return Status::InvalidArgument("store: a user message has no cards_json");
  }
  TP_RETURN_IF_ERROR(CheckTimes(message));
  StoredMessage prepared = message;
  prepared.request_id = message.id;
  if (prepared.created_micros == 0) prepared.created_micros = NowMicros();
  return prepared;
}

Result<StoredMessage> PrepareReply(const StoredMessage& reply) {
  if (reply.role != Role::kAssistant && reply.role != Role::kError) {
    return Status::InvalidArgument("store: AddReply takes role assistant or error, not " +
                                   std::string(RoleName(reply.role)));
  }
  TP_RETURN_IF_ERROR(CheckId("conversation id", reply.conversation_id));
  TP_RETURN_IF_ERROR(CheckId("request id", reply.request_id));
  const std::string reply_id = reply.request_id + "/reply";
  if (!reply.id.empty() && reply.id != reply_id) {
    return Status::InvalidArgument("store: a reply's id is REQUEST_ID/reply");
  }
  TP_RETURN_IF_ERROR(CheckText("text", reply.text, kMaxTextBytes));
  TP_RETURN_IF_ERROR(CheckCards(reply.cards_json));
  TP_RETURN_IF_ERROR(CheckTimes(reply));
  StoredMessage prepared = reply;
  prepared.id = reply_id;
  if (prepared.created_micros == 0) prepared.created_micros = NowMicros();
  return prepared;
}

Result<AddResult> AddUserMessageSteps(WriteTransaction& tx, StoredMessage message,
                                      const std::string& idempotency_key) {
  TP_ASSIGN_OR_RETURN(const std::optional<int64_t> next_seq,
                      tx.LockConversation(message.conversation_id));
  if (!next_seq) return Status::NotFound("store: no conversation " + message.conversation_id);
  if (!idempotency_key.empty()) {
    TP_ASSIGN_OR_RETURN(std::optional<StoredMessage> earlier,
                        tx.FindByIdempotencyKey(message.conversation_id, idempotency_key));
    if (earlier) return AddResult{std::move(*earlier), false};
  }
  if (message.seq == 0) message.seq = *next_seq;
  TP_RETURN_IF_ERROR(tx.Insert(message, idempotency_key, std::max(*next_seq, message.seq + 1)));
  return AddResult{std::move(message), true};
}

Result<bool> AddReplySteps(WriteTransaction& tx, StoredMessage reply) {
  TP_ASSIGN_OR_RETURN(const std::optional<int64_t> next_seq,
                      tx.LockConversation(reply.conversation_id));
  if (!next_seq) return Status::NotFound("store: no conversation " + reply.conversation_id);
  TP_ASSIGN_OR_RETURN(const std::optional<StoredMessage> request, tx.FindMessage(reply.request_id));
  if (!request || request->role != Role::kUser ||
      request->conversation_id != reply.conversation_id) {
    return Status::NotFound("store: no user message " + reply.request_id + " in conversation " +
                            reply.conversation_id);
  }
  TP_ASSIGN_OR_RETURN(const bool replied, tx.ReplyExists(reply.request_id));
  if (replied) return false;
  if (reply.seq == 0) reply.seq = *next_seq;
  TP_RETURN_IF_ERROR(tx.Insert(reply, "", std::max(*next_seq, reply.seq + 1)));
  return true;
}

}  // namespace tidepool::store::internal
