// Reads one `data:` event of a streamed Chat Completions reply (a chat.completion.chunk) in a
// single pass, without building a JSON document: a client holding thousands of streams parses
// hundreds of thousands of these a second, and a DOM per event was a fifth of its CPU.
//
// Only what the client uses is kept: whether the event is an object, a non-null `error`, the
// `model`, the `usage` (when an object), and of the first choice (when `choices` is a non-empty
// array whose first element is an object) its `finish_reason` and `delta.content` (when
// strings). Everything else is validated as JSON and skipped.
//
// Thread-safety: none; a StreamChunk is reused by one stream, event after event, so that its
// strings keep their capacity.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "llm/client.h"

namespace tidepool::llm {

struct StreamChunk {
  bool is_object = false;  // the event is a JSON object
  bool has_error = false;  // it has an `error` member that is not null
  std::string model;       // `model` when a string, else empty
  std::optional<Usage> usage;
  bool has_choice = false;    // choices[0] exists and is an object
  std::string finish_reason;  // choices[0].finish_reason when a string, else empty
  std::string content;        // choices[0].delta.content when a string, else empty
};

// Fills `*chunk` from `data` (everything in it is replaced); false when `data` is not one valid
// JSON value.
bool ParseStreamChunk(std::string_view data, StreamChunk* chunk);

}  // namespace tidepool::llm
