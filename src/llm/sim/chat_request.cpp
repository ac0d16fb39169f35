#include "llm/sim/chat_request.h"

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <cstdlib>
#include <limits>

namespace tidepool::llm::sim {
namespace json = boost::json;
namespace {

constexpr std::array<std::string_view, 6> kRoles = {"system",    "developer", "user",
                                                    "assistant", "tool",      "function"};

Status Bad(const std::string& field, const std::string& problem) {
  return Status::InvalidArgument(field + ": " + problem);
}

std::optional<std::string> Header(const std::map<std::string, std::string>& headers,
                                  const std::string& name) {
  auto it = headers.find(name);
  if (it == headers.end()) return std::nullopt;
  return it->second;
}

Result<double> HeaderNumber(const std::string& name, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(v >= 0)) {
    return Bad(name, "expected a non-negative number, got \"" + text + "\"");
  }
  return v;
}

Result<int> HeaderInt(const std::string& name, const std::string& text) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < 0 || v > std::numeric_limits<int>::max()) {
    return Bad(name, "expected a non-negative integer, got \"" + text + "\"");
  }
  return static_cast<int>(v);
}

Status ParseHeaders(const std::map<std::string, std::string>& headers, ChatRequest* r) {
  if (auto v = Header(headers, "x-sim-ttft-ms")) {
    TP_ASSIGN_OR_RETURN(r->ttft_ms, HeaderNumber("X-Sim-Ttft-Ms", *v));
  }
  if (auto v = Header(headers, "x-sim-tokens-per-second")) {
    TP_ASSIGN_OR_RETURN(r->tokens_per_second, HeaderNumber("X-Sim-Tokens-Per-Second", *v));
  }
  if (auto v = Header(headers, "x-sim-output-tokens")) {
    const auto comma = v->find(',');
    TP_ASSIGN_OR_RETURN(int lo, HeaderInt("X-Sim-Output-Tokens", v->substr(0, comma)));
    int hi = lo;
    if (comma != std::string::npos) {
      TP_ASSIGN_OR_RETURN(hi, HeaderInt("X-Sim-Output-Tokens", v->substr(comma + 1)));
    }
    if (hi < lo) return Bad("X-Sim-Output-Tokens", "MIN,MAX with MIN > MAX");
    r->output_tokens = {lo, hi};
  }
  if (auto v = Header(headers, "x-sim-fail")) {
    if (*v == "429") {
      r->fail = ForcedFailure::k429;
    } else if (*v == "500") {
      r->fail = ForcedFailure::k500;
    } else if (*v == "stall") {
      r->fail = ForcedFailure::kStall;
    } else if (*v == "drop") {
      r->fail = ForcedFailure::kDrop;
    } else if (*v != "none" && !v->empty()) {
      return Bad("X-Sim-Fail", "expected 429, 500, stall or drop, got \"" + *v + "\"");
    }
  }
  if (auto v = Header(headers, "x-sim-stall-seconds")) {
    TP_ASSIGN_OR_RETURN(r->stall_seconds, HeaderInt("X-Sim-Stall-Seconds", *v));
  }
  if (auto v = Header(headers, "x-sim-retry-after")) {
    TP_ASSIGN_OR_RETURN(r->retry_after_seconds, HeaderInt("X-Sim-Retry-After", *v));
  }
  return Status::Ok();
}

// Message content: a string, null, or an array of parts of which the text ones count.
Result<std::string> ContentText(const json::value& content, const std::string& field) {
  if (content.is_null()) return std::string();
  if (content.is_string()) return std::string(content.get_string());
  if (!content.is_array()) return Bad(field, "expected a string or an array of content parts");
  std::string text;
  const json::array& parts = content.get_array();
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string part_field = field + "[" + std::to_string(i) + "]";
    if (!parts[i].is_object()) return Bad(part_field, "expected an object {type, text}");
    const json::object& part = parts[i].get_object();
    const json::value* type = part.if_contains("type");
    if (type == nullptr || !type->is_string()) return Bad(part_field + ".type", "required string");
    if (type->get_string() != "text") continue;  // images, audio: not read by the simulator
    const json::value* t = part.if_contains("text");
    if (t == nullptr || !t->is_string()) return Bad(part_field + ".text", "required string");
    if (!text.empty()) text += '\n';
    text += t->get_string();
  }
  return text;
}

Result<std::optional<int64_t>> PositiveInt(const json::object& body, const char* key) {
  const json::value* v = body.if_contains(key);
  if (v == nullptr || v->is_null()) return std::optional<int64_t>();
  if (v->is_int64() && v->get_int64() >= 1) return std::optional<int64_t>(v->get_int64());
  if (v->is_uint64()) return std::optional<int64_t>(static_cast<int64_t>(v->get_uint64()));
  return Bad(key, "expected an integer >= 1");
}

Status ParseResponseFormat(const json::value& rf, ChatRequest* r) {
  if (rf.is_null()) return Status::Ok();
  if (!rf.is_object()) return Bad("response_format", "expected an object {type, ...}");
  const json::value* type = rf.get_object().if_contains("type");
  if (type == nullptr || !type->is_string()) return Bad("response_format.type", "required string");
  const std::string_view t = type->get_string();
  if (t == "text") return Status::Ok();
  if (t == "json_object") {
    r->format = ResponseFormat::kJsonObject;
    return Status::Ok();
  }
  if (t != "json_schema") {
    return Bad("response_format.type",
               "expected text, json_object or json_schema, got \"" + std::string(t) + "\"");
  }
  const json::value* js = rf.get_object().if_contains("json_schema");
  if (js == nullptr || !js->is_object()) {
    return Bad("response_format.json_schema", "required object {name, schema, strict}");
  }
  const json::value* name = js->get_object().if_contains("name");
  if (name == nullptr || !name->is_string() || name->get_string().empty()) {
    return Bad("response_format.json_schema.name", "required non-empty string");
  }
  const json::value* schema = js->get_object().if_contains("schema");
  if (schema == nullptr || !schema->is_object()) {
    return Bad("response_format.json_schema.schema", "required object (a JSON Schema)");
  }
  r->format = ResponseFormat::kJsonSchema;
  r->schema = *schema;
  return Status::Ok();
}

}  // namespace

Result<ChatRequest> ParseChatRequest(std::string_view body,
                                     const std::map<std::string, std::string>& headers) {
  ChatRequest r;
  TP_RETURN_IF_ERROR(ParseHeaders(headers, &r));
  boost::system::error_code ec;
  json::value doc = json::parse(body, ec);
  if (ec) return Bad("body", "not valid JSON (" + ec.message() + ")");
  if (!doc.is_object()) return Bad("body", "expected a JSON object");
  const json::object& o = doc.get_object();

  const json::value* model = o.if_contains("model");
  if (model == nullptr || !model->is_string() || model->get_string().empty()) {
    return Bad("model", "required non-empty string");
  }
  r.model = std::string(model->get_string());

  const json::value* messages = o.if_contains("messages");
  if (messages == nullptr || !messages->is_array() || messages->get_array().empty()) {
    return Bad("messages", "required non-empty array of {role, content}");
  }
  const json::array& list = messages->get_array();
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string field = "messages[" + std::to_string(i) + "]";
    if (!list[i].is_object()) return Bad(field, "expected an object {role, content}");
    const json::object& m = list[i].get_object();
    const json::value* role = m.if_contains("role");
    if (role == nullptr || !role->is_string()) return Bad(field + ".role", "required string");
    if (std::find(kRoles.begin(), kRoles.end(), role->get_string()) == kRoles.end()) {
      return Bad(field + ".role", "expected system, developer, user, assistant or tool, got \"" +
                                      std::string(role->get_string()) + "\"");
    }
    const json::value* content = m.if_contains("content");
    if (content == nullptr && role->get_string() != "assistant") {
      return Bad(field + ".content", "required");
    }
    std::string text;
    if (content != nullptr) {
      TP_ASSIGN_OR_RETURN(text, ContentText(*content, field + ".content"));
    }
    r.messages.push_back({.role = std::string(role->get_string()), .content = std::move(text)});
  }

  if (const json::value* s = o.if_contains("stream"); s != nullptr && !s->is_null()) {
    if (!s->is_bool()) return Bad("stream", "expected a boolean");
    r.stream = s->get_bool();
  }
  if (const json::value* so = o.if_contains("stream_options"); so != nullptr && !so->is_null()) {
    if (!so->is_object()) return Bad("stream_options", "expected an object {include_usage}");
    if (const json::value* iu = so->get_object().if_contains("include_usage")) {
      if (!iu->is_bool()) return Bad("stream_options.include_usage", "expected a boolean");
      r.include_usage = iu->get_bool();
    }
  }
  TP_ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens, PositiveInt(o, "max_tokens"));
  TP_ASSIGN_OR_RETURN(std::optional<int64_t> max_completion,
                      PositiveInt(o, "max_completion_tokens"));
  r.max_tokens = max_tokens;
  if (max_completion && (!r.max_tokens || *max_completion < *r.max_tokens)) {
    r.max_tokens = max_completion;
  }
  if (const json::value* n = o.if_contains("n"); n != nullptr && !n->is_null()) {
    if (!(n->is_int64() && n->get_int64() == 1)) {
      return Bad("n", "the simulator generates one choice (n = 1)");
    }
  }
  if (const json::value* t = o.if_contains("temperature");
      t != nullptr && !t->is_null() && !t->is_number()) {
    return Bad("temperature", "expected a number");
  }
  if (const json::value* rf = o.if_contains("response_format")) {
    TP_RETURN_IF_ERROR(ParseResponseFormat(*rf, &r));
  }
  return r;
}

std::vector<std::string> UserTexts(const ChatRequest& request) {
  std::vector<std::string> out;
  for (const PromptMessage& m : request.messages) {
    if (m.role == "user") out.push_back(m.content);
  }
  return out;
}

}  // namespace tidepool::llm::sim
