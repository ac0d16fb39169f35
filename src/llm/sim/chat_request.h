// The simulator's reading of a Chat Completions request: the OpenAI body fields it honours and
// the X-Sim-* headers that vary timing and failures per request. Pure; thread-safe.
#pragma once

#include <boost/json/value.hpp>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "llm/sim/reply_text.h"

namespace tidepool::llm::sim {

enum class ForcedFailure { kNone, k429, k500, kStall, kDrop };
enum class ResponseFormat { kText, kJsonObject, kJsonSchema };

struct ChatRequest {
  std::string model;
  std::vector<PromptMessage> messages;
  bool stream = false;
  bool include_usage = false;
  std::optional<int64_t> max_tokens{};  // the smaller of max_tokens and max_completion_tokens
  ResponseFormat format = ResponseFormat::kText;
  boost::json::value schema{};  // kJsonSchema: response_format.json_schema.schema

  // From X-Sim-* headers; unset = the server's options.
  std::optional<double> ttft_ms{};
  std::optional<double> tokens_per_second{};
  std::optional<std::pair<int, int>> output_tokens{};
  ForcedFailure fail = ForcedFailure::kNone;
  std::optional<int> stall_seconds{};
  std::optional<int> retry_after_seconds{};
};

// Header names are lower-cased keys of `headers`. INVALID_ARGUMENT whose message starts with
// the offending field ("messages[1].role: ...", "X-Sim-Fail: ...").
Result<ChatRequest> ParseChatRequest(std::string_view body,
                                     const std::map<std::string, std::string>& headers);

// The user messages' texts, oldest first (what schema filling reads).
std::vector<std::string> UserTexts(const ChatRequest& request);

}  // namespace tidepool::llm::sim
