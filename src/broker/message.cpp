#include "broker/message.h"

#include <cstring>

namespace tidepool::broker {
namespace {

constexpr uint8_t kMessageFormat = 1;

void PutString(std::string* out, std::string_view s) {
  const auto n = static_cast<uint32_t>(s.size());
  out->append(reinterpret_cast<const char*>(&n), 4);
  out->append(s);
}

bool GetString(std::string_view* in, std::string* s) {
  if (in->size() < 4) return false;
  uint32_t n = 0;
  std::memcpy(&n, in->data(), 4);
  in->remove_prefix(4);
  if (in->size() < n) return false;
  s->assign(in->data(), n);
  in->remove_prefix(n);
  return true;
}

}  // namespace

size_t MessageSize(const Message& m) {
  size_t n = m.data.size() + m.ordering_key.size();
  for (const auto& [k, v] : m.attributes) n += k.size() + v.size();
  return n;
}

std::string EncodeMessage(const Message& m) {
  std::string out;
  out.reserve(16 + MessageSize(m) + 8 * m.attributes.size());
  out.push_back(static_cast<char>(kMessageFormat));
  const auto count = static_cast<uint32_t>(m.attributes.size());
  out.append(reinterpret_cast<const char*>(&count), 4);
  for (const auto& [k, v] : m.attributes) {
    PutString(&out, k);
    PutString(&out, v);
  }
  PutString(&out, m.ordering_key);
  out.append(m.data);
  return out;
}

Result<Message> DecodeMessage(std::string_view in) {
  if (in.empty() || static_cast<uint8_t>(in[0]) != kMessageFormat) {
    return Status::Corruption("message record of an unknown format");
  }
  in.remove_prefix(1);
  if (in.size() < 4) return Status::Corruption("message record too short");
  uint32_t count = 0;
  std::memcpy(&count, in.data(), 4);
  in.remove_prefix(4);
  Message m;
  for (uint32_t i = 0; i < count; ++i) {
    std::string k, v;
    if (!GetString(&in, &k) || !GetString(&in, &v)) {
      return Status::Corruption("message record with truncated attributes");
    }
    m.attributes.emplace(std::move(k), std::move(v));
  }
  if (!GetString(&in, &m.ordering_key)) return Status::Corruption("message record truncated");
  m.data.assign(in);
  return m;
}

}  // namespace tidepool::broker
