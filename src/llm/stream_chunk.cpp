#include "llm/stream_chunk.h"

#include <array>
#include <cstdint>

#include <boost/json/basic_parser_impl.hpp>

namespace tidepool::llm {

namespace {

using boost::system::error_code;
using JsonStringView = boost::json::string_view;

// What a value is, by where it sits in the chunk; kOther for everything the client ignores.
enum class Slot : uint8_t {
  kOther,
  kRoot,
  kError,
  kModel,
  kUsage,
  kPromptTokens,
  kCompletionTokens,
  kTotalTokens,
  kChoices,
  kChoice,  // choices[0]
  kFinishReason,
  kDelta,
  kContent,
};

Slot MemberSlot(Slot parent, std::string_view key) {
  switch (parent) {
    case Slot::kRoot:
      if (key == "choices") return Slot::kChoices;
      if (key == "usage") return Slot::kUsage;
      if (key == "model") return Slot::kModel;
      if (key == "error") return Slot::kError;
      return Slot::kOther;
    case Slot::kUsage:
      if (key == "prompt_tokens") return Slot::kPromptTokens;
      if (key == "completion_tokens") return Slot::kCompletionTokens;
      if (key == "total_tokens") return Slot::kTotalTokens;
      return Slot::kOther;
    case Slot::kChoice:
      if (key == "delta") return Slot::kDelta;
      if (key == "finish_reason") return Slot::kFinishReason;
      return Slot::kOther;
    case Slot::kDelta:
      return key == "content" ? Slot::kContent : Slot::kOther;
    default:
      return Slot::kOther;
  }
}

// The SAX handler of boost::json::basic_parser (its required interface, hence the names).
class ChunkHandler {
 public:
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);

  explicit ChunkHandler(StreamChunk* chunk) : chunk_(chunk) {}

  bool on_document_begin(error_code&) { return true; }
  bool on_document_end(error_code&) { return true; }

  bool on_object_begin(error_code& ec) {
    const Slot slot = Begin();
    if (depth_ == 0) chunk_->is_object = true;
    if (slot == Slot::kUsage) usage_ = Usage{};
    if (slot == Slot::kChoice) chunk_->has_choice = true;
    return Push(slot, false, ec);
  }
  bool on_object_end(std::size_t, error_code&) {
    const Slot slot = levels_[--depth_].slot;
    if (slot == Slot::kUsage) {
      if (usage_.total_tokens == 0) {
        usage_.total_tokens = usage_.prompt_tokens + usage_.completion_tokens;
      }
      chunk_->usage = usage_;
    }
    ValueDone();
    return true;
  }
  bool on_array_begin(error_code& ec) { return Push(Begin(), true, ec); }
  bool on_array_end(std::size_t, error_code&) {
    --depth_;
    ValueDone();
    return true;
  }

  bool on_key_part(JsonStringView part, std::size_t, error_code&) {
    key_.append(part.data(), part.size());
    return true;
  }
  bool on_key(JsonStringView last, std::size_t, error_code&) {
    std::string_view key(last.data(), last.size());
    if (!key_.empty()) {
      key_.append(key);
      key = key_;
    }
    member_slot_ = MemberSlot(levels_[depth_ - 1].slot, key);
    key_.clear();
    return true;
  }

  bool on_string_part(JsonStringView part, std::size_t, error_code&) {
    if (Kept(Current())) string_.append(part.data(), part.size());
    return true;
  }
  bool on_string(JsonStringView last, std::size_t, error_code&) {
    const Slot slot = Begin();
    std::string_view value(last.data(), last.size());
    if (!string_.empty()) {
      string_.append(value);
      value = string_;
    }
    if (slot == Slot::kModel) chunk_->model.assign(value);
    if (slot == Slot::kFinishReason) chunk_->finish_reason.assign(value);
    if (slot == Slot::kContent) chunk_->content.assign(value);
    string_.clear();
    ValueDone();
    return true;
  }

  bool on_number_part(JsonStringView, error_code&) { return true; }
  bool on_int64(int64_t value, JsonStringView, error_code&) { return Number(value); }
  bool on_uint64(uint64_t value, JsonStringView, error_code&) {
    return Number(static_cast<int64_t>(value));
  }
  bool on_double(double value, JsonStringView, error_code&) {
    return Number(static_cast<int64_t>(value));
  }
  bool on_bool(bool, error_code&) {
    Begin();
    ValueDone();
    return true;
  }
  bool on_null(error_code&) {
    // A null `error` is no error; a null finish_reason or content is none.
    ValueDone();
    return true;
  }
  bool on_comment_part(JsonStringView, error_code&) { return true; }
  bool on_comment(JsonStringView, error_code&) { return true; }

 private:
  struct Level {
    Slot slot = Slot::kOther;
    bool is_array = false;
    size_t index = 0;  // arrays: the element being read
  };
  // Deeper than the parser's max_depth (parse_options' default, 32) is refused by the parser.
  static constexpr size_t kMaxLevels = 64;

  static bool Kept(Slot slot) {
    return slot == Slot::kModel || slot == Slot::kFinishReason || slot == Slot::kContent;
  }

  // Where the value starting now sits.
  Slot Current() const {
    if (depth_ == 0) return Slot::kRoot;
    const Level& parent = levels_[depth_ - 1];
    if (!parent.is_array) return member_slot_;
    return parent.slot == Slot::kChoices && parent.index == 0 ? Slot::kChoice : Slot::kOther;
  }
  // A value starts: its slot, with a non-null `error` noted whatever its type.
  Slot Begin() {
    const Slot slot = Current();
    if (slot == Slot::kError) chunk_->has_error = true;
    return slot;
  }
  bool Push(Slot slot, bool is_array, error_code& ec) {
    if (depth_ >= kMaxLevels) {
      ec = boost::json::error::too_deep;
      return false;
    }
    levels_[depth_++] = Level{slot, is_array, 0};
    return true;
  }
  // A value ended: an array moves on to its next element.
  void ValueDone() {
    if (depth_ > 0 && levels_[depth_ - 1].is_array) ++levels_[depth_ - 1].index;
  }
  bool Number(int64_t value) {
    const Slot slot = Begin();
    if (slot == Slot::kPromptTokens) usage_.prompt_tokens = value;
    if (slot == Slot::kCompletionTokens) usage_.completion_tokens = value;
    if (slot == Slot::kTotalTokens) usage_.total_tokens = value;
    ValueDone();
    return true;
  }

  StreamChunk* chunk_;
  std::array<Level, kMaxLevels> levels_;
  size_t depth_ = 0;
  Slot member_slot_ = Slot::kOther;  // the slot of the member whose key was read last
  Usage usage_;
  std::string key_;     // a key arriving in parts
  std::string string_;  // a kept string arriving in parts
};

}  // namespace

bool ParseStreamChunk(std::string_view data, StreamChunk* chunk) {
  chunk->is_object = false;
  chunk->has_error = false;
  chunk->model.clear();
  chunk->usage.reset();
  chunk->has_choice = false;
  chunk->finish_reason.clear();
  chunk->content.clear();
  boost::json::basic_parser<ChunkHandler> parser(boost::json::parse_options{}, chunk);
  error_code ec;
  const size_t used = parser.write_some(false, data.data(), data.size(), ec);
  if (ec || !parser.done()) return false;
  // write_some stops after the value; anything but whitespace after it is not one value.
  return data.find_first_not_of(" \t\r\n", used) == std::string_view::npos;
}

}  // namespace tidepool::llm
