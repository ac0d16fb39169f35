#include "queue/nats_protocol.h"

#include <charconv>
#include <vector>

namespace tidepool::queue::internal::nats {
namespace {

constexpr char kHex[] = "0123456789ABCDEF";
// Stream and consumer names become file names in the JetStream file store.
constexpr size_t kMaxNameLength = 200;
constexpr size_t kHashedNameKeep = 180;
constexpr std::string_view kAckPrefix = "$JS.ACK.";
constexpr size_t kAckTokensV1 = 9;   // $JS ACK stream consumer dc sseq dseq ts pending
constexpr size_t kAckTokensV2 = 12;  // $JS ACK domain hash stream consumer ... pending random

bool IsTokenChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

void AppendHex(std::string& out, char prefix, unsigned char c) {
  out.push_back(prefix);
  out.push_back(kHex[c >> 4]);
  out.push_back(kHex[c & 0xF]);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// FNV-1a, 64 bits: stable across builds and platforms.
uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string Shorten(std::string name) {
  if (name.size() <= kMaxNameLength) return name;
  const uint64_t h = Fnv1a(name);
  name.resize(kHashedNameKeep);
  name += "-H";
  for (int shift = 60; shift >= 0; shift -= 4) name.push_back(kHex[(h >> shift) & 0xF]);
  return name;
}

template <typename T>
bool ParseNumber(std::string_view s, T* out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

std::string EscapeToken(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (IsTokenChar(c)) {
      out.push_back(c);
    } else {
      AppendHex(out, '_', static_cast<unsigned char>(c));
    }
  }
  return out;
}

std::string PercentEncode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u > 0x20 && u < 0x7F && c != '%' && c != ':') {
      out.push_back(c);
    } else {
      AppendHex(out, '%', u);
    }
  }
  return out;
}

std::string PercentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      const int hi = HexValue(s[i + 1]);
      const int lo = HexValue(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

TopicNames NamesForTopic(std::string_view prefix, std::string_view project,
                         std::string_view topic_id) {
  const std::string p = EscapeToken(project);
  const std::string t = EscapeToken(topic_id);
  TopicNames names;
  names.stream = Shorten(std::string(prefix) + "_" + p + "__" + t);
  names.subject = std::string(prefix) + "." + p + "." + t;
  return names;
}

std::string ConsumerName(std::string_view project, std::string_view subscription_id) {
  return Shorten(EscapeToken(project) + "__" + EscapeToken(subscription_id));
}

std::string DirectoryBucket(std::string_view prefix) {
  return std::string(prefix) + "_subscriptions";
}

std::string DirectoryKey(std::string_view project, std::string_view subscription_id) {
  return EscapeToken(project) + "." + EscapeToken(subscription_id);
}

std::optional<AckSubject> ParseAckSubject(std::string_view subject) {
  if (!subject.starts_with(kAckPrefix)) return std::nullopt;
  std::vector<std::string_view> tokens;
  size_t start = 0;
  while (true) {
    const size_t dot = subject.find('.', start);
    tokens.push_back(subject.substr(start, dot == std::string_view::npos ? dot : dot - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  size_t first = 0;  // index of the stream token
  if (tokens.size() == kAckTokensV1) {
    first = 2;
  } else if (tokens.size() >= kAckTokensV2 - 1) {
    first = 4;
  } else {
    return std::nullopt;
  }
  AckSubject a;
  a.stream = std::string(tokens[first]);
  a.consumer = std::string(tokens[first + 1]);
  if (a.stream.empty() || a.consumer.empty() || !ParseNumber(tokens[first + 2], &a.delivered) ||
      !ParseNumber(tokens[first + 3], &a.stream_sequence) ||
      !ParseNumber(tokens[first + 4], &a.consumer_sequence) ||
      !ParseNumber(tokens[first + 5], &a.timestamp_nanos) ||
      !ParseNumber(tokens[first + 6], &a.pending)) {
    return std::nullopt;
  }
  return a;
}

}  // namespace tidepool::queue::internal::nats
