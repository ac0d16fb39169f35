#include "llm/sse_parser.h"

#include <cstring>

namespace tidepool::llm {

namespace {

// Where the line starting at `pos` ends (its CR or LF), or npos. Two vectorised scans instead
// of find_first_of, which tests every byte against the set one by one.
size_t FindLineEnd(std::string_view text, size_t pos) {
  const char* begin = text.data() + pos;
  const size_t size = text.size() - pos;
  const void* lf = std::memchr(begin, '\n', size);
  const size_t lf_offset = lf == nullptr ? size : static_cast<const char*>(lf) - begin;
  const void* cr = std::memchr(begin, '\r', lf_offset);
  if (cr != nullptr) return pos + static_cast<size_t>(static_cast<const char*>(cr) - begin);
  return lf == nullptr ? std::string_view::npos : pos + lf_offset;
}

}  // namespace

Status SseParser::Feed(std::string_view chunk, std::vector<SseEvent>* events) {
  size_t pos = 0;
  if (skip_lf_ && !chunk.empty()) {
    if (chunk.front() == '\n') pos = 1;
    skip_lf_ = false;
  }
  while (pos < chunk.size()) {
    const size_t end = FindLineEnd(chunk, pos);
    if (end == std::string_view::npos) {
      line_.append(chunk.substr(pos));
      if (line_.size() > max_line_) {
        return Status::InvalidArgument("event-stream line longer than " +
                                       std::to_string(max_line_) + " bytes");
      }
      return Status::Ok();
    }
    const std::string_view piece = chunk.substr(pos, end - pos);
    if (line_.empty()) {
      ProcessLine(piece, events);
    } else {
      line_.append(piece);
      ProcessLine(line_, events);
      line_.clear();
    }
    pos = end + 1;
    if (chunk[end] == '\r') {
      if (pos < chunk.size()) {
        if (chunk[pos] == '\n') ++pos;
      } else {
        skip_lf_ = true;
      }
    }
  }
  return Status::Ok();
}

void SseParser::ProcessLine(std::string_view line, std::vector<SseEvent>* events) {
  if (line.empty()) {
    if (has_data_) events->push_back(std::move(pending_));
    pending_ = SseEvent{};
    has_data_ = false;
    return;
  }
  if (line.front() == ':') return;  // comment, e.g. a keep-alive heartbeat
  std::string_view field = line;
  std::string_view value;
  if (const size_t colon = line.find(':'); colon != std::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (has_data_) pending_.data.push_back('\n');
    pending_.data.append(value);
    has_data_ = true;
  } else if (field == "event") {
    pending_.event.assign(value);
  } else if (field == "id") {
    pending_.id.assign(value);
  }
  // `retry:` and unknown fields are ignored: reconnection is the client's own policy.
}

}  // namespace tidepool::llm
