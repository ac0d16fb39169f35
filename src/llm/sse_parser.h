// Incremental parser for Server-Sent Events (the WHATWG "event stream" format), as used by
// OpenAI-compatible streaming Chat Completions.
//
// Bytes arrive in arbitrary pieces (TCP segments, HTTP chunks); the parser keeps the partial
// line and the partial event between calls. Lines end in LF, CRLF or a lone CR, even when the
// CR and LF arrive in different pieces. Lines starting with ':' are comments (heartbeats) and
// are dropped. Several `data:` lines in one event are joined with '\n'. A blank line dispatches
// the event; an event with no data field is not dispatched (per the spec).
//
// Thread-safety: none; one parser per stream.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace tidepool::llm {

struct SseEvent {
  std::string event;  // the `event:` field; empty means "message"
  std::string data;   // `data:` lines joined with '\n'
  std::string id;     // the `id:` field, if any
};

class SseParser {
 public:
  // A line longer than this is an error: it bounds the memory one stream can pin.
  static constexpr size_t kDefaultMaxLine = 1024 * 1024;

  explicit SseParser(size_t max_line = kDefaultMaxLine) : max_line_(max_line) {}

  // Consumes `chunk` and appends every event it completes to `*events`.
  // Returns InvalidArgument if a line exceeds the limit; the parser is then unusable.
  Status Feed(std::string_view chunk, std::vector<SseEvent>* events);

 private:
  void ProcessLine(std::string_view line, std::vector<SseEvent>* events);

  size_t max_line_;
  std::string line_;      // the incomplete line carried over from the previous chunk
  bool skip_lf_ = false;  // the previous chunk ended in CR: a leading LF belongs to it
  bool has_data_ = false;
  SseEvent pending_;
};

}  // namespace tidepool::llm
