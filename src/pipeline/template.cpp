#include "pipeline/template.h"

#include <charconv>
#include <cmath>
#include <compare>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <system_error>
#include <utility>

#include <boost/json/array.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>

namespace tidepool::pipeline {
namespace template_internal {

namespace json = boost::json;

enum class Filter {
  kJson,
  kLength,
  kDefault,
  kJoin,
  kUpper,
  kLower,
  kFirst,
  kLast,
  kMerge,
  kRound
};

struct FilterSpec {
  std::string_view name;
  Filter filter;
  size_t min_arguments;
  size_t max_arguments;
  bool named_arguments;  // key=value (merge) instead of positional
};

constexpr size_t kUnlimited = std::numeric_limits<size_t>::max();

constexpr FilterSpec kFilters[] = {
    {"json", Filter::kJson, 0, 0, false},           {"length", Filter::kLength, 0, 0, false},
    {"default", Filter::kDefault, 1, 1, false},     {"join", Filter::kJoin, 0, 1, false},
    {"upper", Filter::kUpper, 0, 0, false},         {"lower", Filter::kLower, 0, 0, false},
    {"first", Filter::kFirst, 0, 0, false},         {"last", Filter::kLast, 0, 0, false},
    {"merge", Filter::kMerge, 1, kUnlimited, true}, {"round", Filter::kRound, 0, 1, false},
};

enum class ExprKind { kLiteral, kPath, kNot, kAnd, kOr, kCompare, kFilter };
enum class CompareOp { kEqual, kNotEqual, kLess, kLessEqual, kGreater, kGreaterEqual };

struct Argument {
  std::string name;  // empty for a positional argument
  std::unique_ptr<const Expr> value;
};

struct Expr {
  ExprKind kind = ExprKind::kLiteral;
  // "offset 14", or "offset 14 (line 2, column 3)": where an operator or filter stands, for
  // evaluation errors.
  std::string where;
  json::value literal;            // kLiteral
  std::vector<std::string> path;  // kPath: keys and decimal indices
  CompareOp compare = CompareOp::kEqual;
  const FilterSpec* filter = nullptr;
  // The operand of kNot, the left side of kAnd/kOr/kCompare, the input of kFilter.
  std::unique_ptr<const Expr> left;
  std::unique_ptr<const Expr> right;  // the right side of kAnd/kOr/kCompare
  std::vector<Argument> arguments;    // kFilter
};

}  // namespace template_internal

namespace {

namespace json = boost::json;
using template_internal::Argument;
using template_internal::CompareOp;
using template_internal::Expr;
using template_internal::ExprKind;
using template_internal::Filter;
using template_internal::FilterSpec;
using template_internal::kFilters;
using template_internal::kUnlimited;
using ExprPtr = std::unique_ptr<const Expr>;

// Deeper nesting (parentheses, `not not ...`, filter arguments) or a longer expression (terms
// and filters, e.g. `a or b or ...`) is a parse error rather than a deep recursion when the
// expression is evaluated or destroyed.
constexpr int kMaxNesting = 64;
constexpr int kMaxTerms = 512;
// round(n) accepts 0..kMaxRoundDecimals; a double holds about 15 significant decimal digits.
constexpr int64_t kMaxRoundDecimals = 15;

// ---- text helpers

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}
bool IsNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool IsNameChar(char c) {
  return IsNameStart(c) || IsDigit(c);
}
bool IsKeyword(std::string_view word) {
  return word == "and" || word == "or" || word == "not" || word == "true" || word == "false" ||
         word == "null";
}
bool IsUtf8Continuation(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

size_t CountCodePoints(std::string_view s) {
  size_t count = 0;
  for (char c : s) count += IsUtf8Continuation(c) ? 0 : 1;
  return count;
}

// ---- rendering values as text

void AppendJson(const json::value& v, std::string& out);

// A JSON string literal, escaped by Boost.JSON's serializer.
void AppendQuoted(std::string_view s, std::string& out) {
  out += json::serialize(json::string(s));
}

void AppendDouble(double d, std::string& out) {
  if (!std::isfinite(d)) {
    out += "null";  // JSON has no infinities; JavaScript writes them as null too
    return;
  }
  char buffer[64];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, d);
  out.append(buffer, end);
}

// Compact JSON. Unlike json::serialize, doubles are written in their shortest round-trip form
// (1.5, not 1.5E0): these values end up in prompts.
void AppendJson(const json::value& v, std::string& out) {
  switch (v.kind()) {
    case json::kind::null:
      out += "null";
      return;
    case json::kind::bool_:
      out += v.get_bool() ? "true" : "false";
      return;
    case json::kind::int64:
      out += std::to_string(v.get_int64());
      return;
    case json::kind::uint64:
      out += std::to_string(v.get_uint64());
      return;
    case json::kind::double_:
      AppendDouble(v.get_double(), out);
      return;
    case json::kind::string:
      AppendQuoted(v.get_string(), out);
      return;
    case json::kind::array: {
      out += '[';
      bool first = true;
      for (const json::value& element : v.get_array()) {
        if (!first) out += ',';
        first = false;
        AppendJson(element, out);
      }
      out += ']';
      return;
    }
    case json::kind::object: {
      out += '{';
      bool first = true;
      for (const json::key_value_pair& member : v.get_object()) {
        if (!first) out += ',';
        first = false;
        AppendQuoted(member.key(), out);
        out += ':';
        AppendJson(member.value(), out);
      }
      out += '}';
      return;
    }
  }
}

std::string ToJson(const json::value& v) {
  std::string out;
  AppendJson(v, out);
  return out;
}

// A hole's value as text: strings as they are, null as "", everything else as compact JSON.
void AppendText(const json::value& v, std::string& out) {
  if (v.is_string()) {
    out += v.get_string();
  } else if (!v.is_null()) {
    AppendJson(v, out);
  }
}

// ---- value semantics

std::string_view TypeName(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null:
      return "null";
    case json::kind::bool_:
      return "bool";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_:
      return "number";
    case json::kind::string:
      return "string";
    case json::kind::array:
      return "array";
    case json::kind::object:
      return "object";
  }
  return "unknown";
}

bool Truthy(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null:
      return false;
    case json::kind::bool_:
      return v.get_bool();
    case json::kind::int64:
      return v.get_int64() != 0;
    case json::kind::uint64:
      return v.get_uint64() != 0;
    case json::kind::double_:
      return v.get_double() != 0.0;
    case json::kind::string:
      return !v.get_string().empty();
    case json::kind::array:
      return !v.get_array().empty();
    case json::kind::object:
      return !v.get_object().empty();
  }
  return false;
}

double AsDouble(const json::value& v) {
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  return v.get_double();
}

// REQUIRES: both are numbers. Integers compare exactly, even int64 against uint64.
std::partial_ordering CompareNumbers(const json::value& a, const json::value& b) {
  if (a.is_double() || b.is_double()) return AsDouble(a) <=> AsDouble(b);
  auto three_way = [](auto x, auto y) {
    if (std::cmp_less(x, y)) return std::partial_ordering::less;
    if (std::cmp_greater(x, y)) return std::partial_ordering::greater;
    return std::partial_ordering::equivalent;
  };
  if (a.is_int64()) {
    return b.is_int64() ? three_way(a.get_int64(), b.get_int64())
                        : three_way(a.get_int64(), b.get_uint64());
  }
  return b.is_int64() ? three_way(a.get_uint64(), b.get_int64())
                      : three_way(a.get_uint64(), b.get_uint64());
}

// json::value's operator== tells 1 from 1.0; here numbers compare by value, at any depth.
bool DeepEqual(const json::value& a, const json::value& b) {
  if (a.is_number() && b.is_number()) return std::is_eq(CompareNumbers(a, b));
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case json::kind::array: {
      const json::array& x = a.get_array();
      const json::array& y = b.get_array();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!DeepEqual(x[i], y[i])) return false;
      }
      return true;
    }
    case json::kind::object: {
      const json::object& x = a.get_object();
      const json::object& y = b.get_object();
      if (x.size() != y.size()) return false;
      for (const json::key_value_pair& member : x) {
        const json::value* other = y.if_contains(member.key());
        if (other == nullptr || !DeepEqual(member.value(), *other)) return false;
      }
      return true;
    }
    default:
      return a == b;
  }
}

// ---- parsing

class Parser {
 public:
  // `hole_start`: the offset of the "{{" when parsing a template hole; an end of text inside the
  // hole is then reported as an unclosed hole.
  Parser(std::string_view source, size_t pos, std::optional<size_t> hole_start)
      : source_(source), pos_(pos), hole_start_(hole_start) {}

  size_t pos() const { return pos_; }
  bool AtEnd() const { return pos_ >= source_.size(); }
  bool LooksAt(std::string_view s) const { return source_.substr(pos_).starts_with(s); }
  void SkipSpace() {
    while (!AtEnd() && IsSpace(source_[pos_])) ++pos_;
  }

  Result<ExprPtr> ParseExpression() { return ParseOr(); }

  // "<problem> at offset N", with the line and column when the source has several lines.
  Status Error(size_t offset, std::string_view problem) const {
    return Status::InvalidArgument(std::string(problem) + " at " + Where(offset));
  }

  // The end of text where more was needed.
  Status EndError() const {
    if (hole_start_) return Error(*hole_start_, "unclosed '{{'");
    return Error(pos_, "unexpected end of condition");
  }

  // "expected '}}', found 'b'" at the current position.
  Status ExpectedError(std::string_view expected) const {
    if (AtEnd()) return EndError();
    return Error(pos_,
                 "expected " + std::string(expected) + ", found '" + std::string(Token()) + "'");
  }

 private:
  std::string Where(size_t offset) const {
    std::string where = "offset " + std::to_string(offset);
    if (source_.find('\n') == std::string_view::npos) return where;
    size_t line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < offset && i < source_.size(); ++i) {
      if (source_[i] == '\n') {
        ++line;
        line_start = i + 1;
      }
    }
    return where + " (line " + std::to_string(line) + ", column " +
           std::to_string(offset - line_start + 1) + ")";
  }

  // The token at pos_, for messages: a name or number, "}}" or "{{", or one UTF-8 character.
  std::string_view Token() const {
    if (LooksAt("}}") || LooksAt("{{")) return source_.substr(pos_, 2);
    size_t end = pos_ + 1;
    if (IsNameChar(source_[pos_])) {
      while (end < source_.size() && IsNameChar(source_[end])) ++end;
    } else {
      while (end < source_.size() && IsUtf8Continuation(source_[end])) ++end;
    }
    return source_.substr(pos_, end - pos_);
  }

  Status Unexpected() const {
    if (AtEnd()) return EndError();
    if (LooksAt("{{") && !hole_start_) {
      return Error(pos_, "unexpected '{{' (a condition is a bare expression, without '{{ }}')");
    }
    return Error(pos_, "unexpected '" + std::string(Token()) + "'");
  }

  std::string_view PeekName() const {
    size_t end = pos_;
    while (end < source_.size() && IsNameChar(source_[end])) ++end;
    return source_.substr(pos_, end - pos_);
  }

  bool ConsumeKeyword(std::string_view keyword) {
    SkipSpace();
    if (AtEnd() || !IsNameStart(source_[pos_]) || PeekName() != keyword) return false;
    pos_ += keyword.size();
    return true;
  }

  std::optional<CompareOp> PeekCompare(size_t* length) const {
    static constexpr std::pair<std::string_view, CompareOp> kOperators[] = {
        {"==", CompareOp::kEqual},     {"!=", CompareOp::kNotEqual},
        {"<=", CompareOp::kLessEqual}, {">=", CompareOp::kGreaterEqual},
        {"<", CompareOp::kLess},       {">", CompareOp::kGreater},
    };
    for (const auto& [text, op] : kOperators) {
      if (LooksAt(text)) {
        *length = text.size();
        return op;
      }
    }
    return std::nullopt;
  }

  std::unique_ptr<Expr> MakeNode(ExprKind kind, size_t offset, ExprPtr left, ExprPtr right) const {
    auto node = std::make_unique<Expr>();
    node->kind = kind;
    node->where = Where(offset);
    node->left = std::move(left);
    node->right = std::move(right);
    return node;
  }

  Result<ExprPtr> ParseOr() {
    TP_ASSIGN_OR_RETURN(ExprPtr left, ParseAnd());
    for (;;) {
      SkipSpace();
      size_t offset = pos_;
      if (!ConsumeKeyword("or")) return left;
      TP_ASSIGN_OR_RETURN(ExprPtr right, ParseAnd());
      left = MakeNode(ExprKind::kOr, offset, std::move(left), std::move(right));
    }
  }

  Result<ExprPtr> ParseAnd() {
    TP_ASSIGN_OR_RETURN(ExprPtr left, ParseNot());
    for (;;) {
      SkipSpace();
      size_t offset = pos_;
      if (!ConsumeKeyword("and")) return left;
      TP_ASSIGN_OR_RETURN(ExprPtr right, ParseNot());
      left = MakeNode(ExprKind::kAnd, offset, std::move(left), std::move(right));
    }
  }

  // Every nested parse passes through here, so the depth check lives here.
  Result<ExprPtr> ParseNot() {
    SkipSpace();
    if (depth_ >= kMaxNesting) return Error(pos_, "expression nested too deeply");
    ++depth_;
    Result<ExprPtr> result = ParseNotUnchecked();
    --depth_;
    return result;
  }

  Result<ExprPtr> ParseNotUnchecked() {
    size_t offset = pos_;
    if (!ConsumeKeyword("not")) return ParseComparison();
    TP_ASSIGN_OR_RETURN(ExprPtr operand, ParseNot());
    return ExprPtr(MakeNode(ExprKind::kNot, offset, std::move(operand), nullptr));
  }

  Result<ExprPtr> ParseComparison() {
    TP_ASSIGN_OR_RETURN(ExprPtr left, ParseFiltered());
    SkipSpace();
    size_t offset = pos_;
    size_t length = 0;
    std::optional<CompareOp> op = PeekCompare(&length);
    if (!op) {
      if (LooksAt("=")) return Error(pos_, "unexpected '=' (use '==' to compare)");
      return left;
    }
    pos_ += length;
    TP_ASSIGN_OR_RETURN(ExprPtr right, ParseFiltered());
    SkipSpace();
    if (PeekCompare(&length)) {
      return Error(pos_, "comparisons do not chain (join them with 'and')");
    }
    std::unique_ptr<Expr> node =
        MakeNode(ExprKind::kCompare, offset, std::move(left), std::move(right));
    node->compare = *op;
    return ExprPtr(std::move(node));
  }

  Result<ExprPtr> ParseFiltered() {
    TP_ASSIGN_OR_RETURN(ExprPtr value, ParsePrimary());
    for (;;) {
      SkipSpace();
      if (!LooksAt("|")) return value;
      ++pos_;
      SkipSpace();
      size_t name_offset = pos_;
      if (AtEnd() || !IsNameStart(source_[pos_])) return ExpectedError("a filter name after '|'");
      TP_RETURN_IF_ERROR(CountTerm());
      std::string_view name = PeekName();
      const FilterSpec* spec = nullptr;
      for (const FilterSpec& candidate : kFilters) {
        if (candidate.name == name) spec = &candidate;
      }
      if (spec == nullptr) return Error(name_offset, "unknown filter '" + std::string(name) + "'");
      pos_ += name.size();
      auto node = std::make_unique<Expr>();
      node->kind = ExprKind::kFilter;
      node->where = Where(name_offset);
      node->filter = spec;
      node->left = std::move(value);
      SkipSpace();
      if (LooksAt("(")) {
        TP_ASSIGN_OR_RETURN(node->arguments, ParseArguments(*spec));
      }
      TP_RETURN_IF_ERROR(CheckArguments(*spec, node->arguments, name_offset));
      value = std::move(node);
    }
  }

  // REQUIRES: at '('. Reads "(a, b)" or "(key=a, other=b)" up to and including ')'.
  Result<std::vector<Argument>> ParseArguments(const FilterSpec& spec) {
    std::vector<Argument> arguments;
    ++pos_;
    SkipSpace();
    if (LooksAt(")")) {
      ++pos_;
      return arguments;
    }
    for (;;) {
      SkipSpace();
      size_t argument_offset = pos_;
      Argument argument;
      // `name =` (but not `name ==`) starts a named argument.
      if (!AtEnd() && IsNameStart(source_[pos_])) {
        std::string_view name = PeekName();
        pos_ += name.size();
        SkipSpace();
        if (LooksAt("=") && !LooksAt("==")) {
          ++pos_;
          argument.name = std::string(name);
        } else {
          pos_ = argument_offset;
        }
      }
      if (spec.named_arguments && argument.name.empty()) {
        return Error(argument_offset,
                     "filter '" + std::string(spec.name) + "' takes key=value arguments");
      }
      if (!spec.named_arguments && !argument.name.empty()) {
        return Error(argument_offset,
                     "filter '" + std::string(spec.name) + "' takes no key=value arguments");
      }
      for (const Argument& earlier : arguments) {
        if (!argument.name.empty() && earlier.name == argument.name) {
          return Error(argument_offset, "duplicate key '" + argument.name + "'");
        }
      }
      TP_ASSIGN_OR_RETURN(argument.value, ParseOr());
      arguments.push_back(std::move(argument));
      SkipSpace();
      if (LooksAt(",")) {
        ++pos_;
        continue;
      }
      if (LooksAt(")")) {
        ++pos_;
        return arguments;
      }
      return ExpectedError("',' or ')'");
    }
  }

  Status CheckArguments(const FilterSpec& spec, const std::vector<Argument>& arguments,
                        size_t offset) const {
    size_t count = arguments.size();
    if (count >= spec.min_arguments && count <= spec.max_arguments) return Status::Ok();
    // "no arguments", "1 argument", "at least 1 argument", "at most 1 argument"
    bool too_few = count < spec.min_arguments;
    size_t bound = too_few ? spec.min_arguments : spec.max_arguments;
    std::string expected = bound == 0 ? "no" : std::to_string(bound);
    if (bound != 0 && spec.min_arguments != spec.max_arguments) {
      expected = (too_few ? "at least " : "at most ") + expected;
    }
    expected += bound == 1 ? " argument" : " arguments";
    return Error(offset, "filter '" + std::string(spec.name) + "' takes " + expected + ", got " +
                             std::to_string(count));
  }

  Status CountTerm() {
    if (++terms_ > kMaxTerms) {
      return Error(pos_, "expression too long (over " + std::to_string(kMaxTerms) + " terms)");
    }
    return Status::Ok();
  }

  Result<ExprPtr> ParsePrimary() {
    SkipSpace();
    if (AtEnd()) return EndError();
    TP_RETURN_IF_ERROR(CountTerm());
    char c = source_[pos_];
    if (c == '(') {
      ++pos_;
      TP_ASSIGN_OR_RETURN(ExprPtr inner, ParseOr());
      SkipSpace();
      if (!LooksAt(")")) return ExpectedError("')'");
      ++pos_;
      return inner;
    }
    if (c == '"' || c == '\'') return ParseString();
    if (IsDigit(c) || (c == '-' && pos_ + 1 < source_.size() && IsDigit(source_[pos_ + 1]))) {
      return ParseNumber();
    }
    if (IsNameStart(c)) return ParseNameOrKeyword();
    return Unexpected();
  }

  ExprPtr MakeLiteral(json::value value) const {
    auto node = std::make_unique<Expr>();
    node->kind = ExprKind::kLiteral;
    node->literal = std::move(value);
    return node;
  }

  Result<ExprPtr> ParseString() {
    size_t start = pos_;
    char quote = source_[pos_++];
    std::string text;
    for (;;) {
      if (AtEnd()) return Error(start, "unterminated string");
      char c = source_[pos_++];
      if (c == quote) return MakeLiteral(json::string(text));
      if (c != '\\') {
        text += c;
        continue;
      }
      if (AtEnd()) return Error(start, "unterminated string");
      char escaped = source_[pos_++];
      switch (escaped) {
        case '"':
        case '\'':
        case '\\':
          text += escaped;
          break;
        case 'n':
          text += '\n';
          break;
        case 't':
          text += '\t';
          break;
        default: {
          size_t end = pos_;
          while (end < source_.size() && IsUtf8Continuation(source_[end])) ++end;
          std::string sequence(source_.substr(pos_ - 2, end - pos_ + 2));
          return Error(pos_ - 2, "unknown escape '" + sequence + "' in string");
        }
      }
    }
  }

  Result<ExprPtr> ParseNumber() {
    size_t start = pos_;
    if (source_[pos_] == '-') ++pos_;
    while (!AtEnd() && IsDigit(source_[pos_])) ++pos_;
    bool decimal = pos_ + 1 < source_.size() && source_[pos_] == '.' && IsDigit(source_[pos_ + 1]);
    if (decimal) {
      ++pos_;
      while (!AtEnd() && IsDigit(source_[pos_])) ++pos_;
    }
    // `12abc` and `3and` are typos, not a number followed by a name.
    if (!AtEnd() && IsNameChar(source_[pos_])) return Unexpected();
    const char* first = source_.data() + start;
    const char* last = source_.data() + pos_;
    if (decimal) {
      double value = 0;
      auto [end, ec] = std::from_chars(first, last, value);
      if (ec != std::errc() || end != last) return Error(start, "number out of range");
      return MakeLiteral(value);
    }
    int64_t value = 0;
    auto [end, ec] = std::from_chars(first, last, value);
    if (ec != std::errc() || end != last) return Error(start, "integer out of range");
    return MakeLiteral(value);
  }

  Result<ExprPtr> ParseNameOrKeyword() {
    std::string_view name = PeekName();
    if (name == "true" || name == "false" || name == "null") {
      pos_ += name.size();
      if (name == "null") return MakeLiteral(nullptr);
      return MakeLiteral(name == "true");
    }
    if (IsKeyword(name)) return Unexpected();
    auto node = std::make_unique<Expr>();
    node->kind = ExprKind::kPath;
    node->path.emplace_back(name);
    pos_ += name.size();
    // Segments after a dot are keys or indices; keywords are fine there (`flags.not`).
    while (LooksAt(".")) {
      ++pos_;
      std::string_view segment = PeekName();
      if (segment.empty()) return ExpectedError("a key or index after '.'");
      node->path.emplace_back(segment);
      pos_ += segment.size();
    }
    return ExprPtr(std::move(node));
  }

  std::string_view source_;
  size_t pos_;
  std::optional<size_t> hole_start_;
  int depth_ = 0;
  int terms_ = 0;  // primaries and filters so far
};

// ---- evaluation

Result<json::value> EvaluateExpr(const Expr& expr, const json::object& context);

const json::value* Lookup(const std::vector<std::string>& path, const json::object& context) {
  const json::value* current = context.if_contains(path.front());
  for (size_t i = 1; i < path.size() && current != nullptr; ++i) {
    const std::string& segment = path[i];
    if (const json::object* object = current->if_object()) {
      current = object->if_contains(segment);
    } else if (const json::array* array = current->if_array()) {
      size_t index = 0;
      auto [end, ec] = std::from_chars(segment.data(), segment.data() + segment.size(), index);
      bool is_index = ec == std::errc() && end == segment.data() + segment.size();
      current = is_index && index < array->size() ? &(*array)[index] : nullptr;
    } else {
      current = nullptr;
    }
  }
  return current;
}

Status EvaluationError(const Expr& expr, std::string_view problem) {
  std::string what = expr.kind == ExprKind::kFilter
                         ? "filter '" + std::string(expr.filter->name) + "'"
                         : std::string("comparison");
  return Status::InvalidArgument(what + " at " + expr.where + ": " + std::string(problem));
}

Status TypeError(const Expr& expr, std::string_view expected, const json::value& got) {
  return EvaluationError(
      expr, "expects " + std::string(expected) + ", got " + std::string(TypeName(got)));
}

Result<bool> Compare(const Expr& expr, const json::value& a, const json::value& b) {
  switch (expr.compare) {
    case CompareOp::kEqual:
      return DeepEqual(a, b);
    case CompareOp::kNotEqual:
      return !DeepEqual(a, b);
    default:
      break;
  }
  std::partial_ordering order = std::partial_ordering::unordered;
  if (a.is_number() && b.is_number()) {
    order = CompareNumbers(a, b);
  } else if (a.is_string() && b.is_string()) {
    order = std::string_view(a.get_string()) <=> std::string_view(b.get_string());
  } else {
    return EvaluationError(expr, "cannot order " + std::string(TypeName(a)) + " and " +
                                     std::string(TypeName(b)) +
                                     " (only two numbers or two strings)");
  }
  switch (expr.compare) {
    case CompareOp::kLess:
      return std::is_lt(order);
    case CompareOp::kLessEqual:
      return std::is_lteq(order);
    case CompareOp::kGreater:
      return std::is_gt(order);
    case CompareOp::kGreaterEqual:
      return std::is_gteq(order);
    default:
      return false;
  }
}

// The first or last UTF-8 character of a non-empty string.
json::value EdgeCharacter(std::string_view s, bool first) {
  if (first) {
    size_t end = 1;
    while (end < s.size() && IsUtf8Continuation(s[end])) ++end;
    return json::string(s.substr(0, end));
  }
  size_t start = s.size() - 1;
  while (start > 0 && IsUtf8Continuation(s[start])) --start;
  return json::string(s.substr(start));
}

Result<json::value> Round(const Expr& expr, const json::value& input, const json::object& context) {
  if (input.is_null()) return input;
  if (!input.is_number()) return TypeError(expr, "a number", input);
  int64_t decimals = 0;
  if (!expr.arguments.empty()) {
    TP_ASSIGN_OR_RETURN(json::value argument, EvaluateExpr(*expr.arguments[0].value, context));
    if (!argument.is_int64() || argument.get_int64() < 0 ||
        argument.get_int64() > kMaxRoundDecimals) {
      return EvaluationError(expr, "expects 0 to " + std::to_string(kMaxRoundDecimals) +
                                       " decimals, got " + ToJson(argument));
    }
    decimals = argument.get_int64();
  }
  if (!input.is_double()) return input;  // integers are already round
  double value = input.get_double();
  if (decimals == 0) {
    double rounded = std::round(value);
    // 2^63: the doubles in [-2^63, 2^63) convert to int64 exactly.
    constexpr double kTwoTo63 = 9223372036854775808.0;
    if (rounded >= -kTwoTo63 && rounded < kTwoTo63) {
      return json::value(static_cast<int64_t>(rounded));
    }
    return json::value(rounded);
  }
  double scale = std::pow(10.0, static_cast<double>(decimals));
  double scaled = value * scale;
  if (!std::isfinite(scaled)) return input;  // too large to have decimals to round
  return json::value(std::round(scaled) / scale);
}

Result<json::value> ApplyFilter(const Expr& expr, json::value input, const json::object& context) {
  switch (expr.filter->filter) {
    case Filter::kJson:
      return json::value(json::string(ToJson(input)));
    case Filter::kLength:
      if (input.is_null()) return json::value(int64_t{0});
      if (input.is_string())
        return json::value(static_cast<int64_t>(CountCodePoints(input.get_string())));
      if (input.is_array()) return json::value(static_cast<int64_t>(input.get_array().size()));
      if (input.is_object()) return json::value(static_cast<int64_t>(input.get_object().size()));
      return TypeError(expr, "a string, array or object", input);
    case Filter::kDefault:
      if (input.is_null() || (input.is_string() && input.get_string().empty())) {
        return EvaluateExpr(*expr.arguments[0].value, context);
      }
      return input;
    case Filter::kJoin: {
      if (input.is_null()) return json::value(json::string());
      if (!input.is_array()) return TypeError(expr, "an array", input);
      std::string separator;
      if (!expr.arguments.empty()) {
        TP_ASSIGN_OR_RETURN(json::value argument, EvaluateExpr(*expr.arguments[0].value, context));
        if (!argument.is_string()) {
          return EvaluationError(
              expr, "separator must be a string, got " + std::string(TypeName(argument)));
        }
        separator = argument.get_string();
      }
      std::string out;
      bool first = true;
      for (const json::value& element : input.get_array()) {
        if (!first) out += separator;
        first = false;
        AppendText(element, out);
      }
      return json::value(json::string(out));
    }
    case Filter::kUpper:
    case Filter::kLower: {
      if (input.is_null()) return input;
      if (!input.is_string()) return TypeError(expr, "a string", input);
      bool upper = expr.filter->filter == Filter::kUpper;
      for (char& c : input.get_string()) {
        if (upper && c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
        if (!upper && c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      }
      return input;
    }
    case Filter::kFirst:
    case Filter::kLast: {
      bool first = expr.filter->filter == Filter::kFirst;
      if (input.is_null()) return input;
      if (const json::array* array = input.if_array()) {
        if (array->empty()) return json::value(nullptr);
        return first ? array->front() : array->back();
      }
      if (const json::string* string = input.if_string()) {
        if (string->empty()) return json::value(nullptr);
        return EdgeCharacter(*string, first);
      }
      return TypeError(expr, "an array or string", input);
    }
    case Filter::kMerge: {
      json::object* object = input.if_object();
      if (object == nullptr) return TypeError(expr, "an object", input);
      for (const Argument& argument : expr.arguments) {
        TP_ASSIGN_OR_RETURN(json::value value, EvaluateExpr(*argument.value, context));
        (*object)[argument.name] = std::move(value);
      }
      return input;
    }
    case Filter::kRound:
      return Round(expr, input, context);
  }
  return Status::Internal("unhandled filter");
}

Result<json::value> EvaluateExpr(const Expr& expr, const json::object& context) {
  switch (expr.kind) {
    case ExprKind::kLiteral:
      return expr.literal;
    case ExprKind::kPath: {
      const json::value* found = Lookup(expr.path, context);
      return found != nullptr ? *found : json::value(nullptr);
    }
    case ExprKind::kNot: {
      TP_ASSIGN_OR_RETURN(json::value operand, EvaluateExpr(*expr.left, context));
      return json::value(!Truthy(operand));
    }
    case ExprKind::kAnd:
    case ExprKind::kOr: {
      TP_ASSIGN_OR_RETURN(json::value left, EvaluateExpr(*expr.left, context));
      bool decided = expr.kind == ExprKind::kOr;  // `or` is decided by a true left side
      if (Truthy(left) == decided) return json::value(decided);
      TP_ASSIGN_OR_RETURN(json::value right, EvaluateExpr(*expr.right, context));
      return json::value(Truthy(right));
    }
    case ExprKind::kCompare: {
      TP_ASSIGN_OR_RETURN(json::value left, EvaluateExpr(*expr.left, context));
      TP_ASSIGN_OR_RETURN(json::value right, EvaluateExpr(*expr.right, context));
      TP_ASSIGN_OR_RETURN(bool result, Compare(expr, left, right));
      return json::value(result);
    }
    case ExprKind::kFilter: {
      TP_ASSIGN_OR_RETURN(json::value input, EvaluateExpr(*expr.left, context));
      return ApplyFilter(expr, std::move(input), context);
    }
  }
  return Status::Internal("unhandled expression");
}

bool IsBlank(std::string_view s) {
  for (char c : s) {
    if (!IsSpace(c)) return false;
  }
  return true;
}

}  // namespace

// ---- Template

Result<Template> Template::Parse(std::string_view text) {
  Template result;
  result.source_ = std::string(text);
  std::string_view source = result.source_;
  size_t pos = 0;
  while (pos < source.size()) {
    size_t open = source.find("{{", pos);
    if (open == std::string_view::npos) open = source.size();
    if (open > pos) {
      result.segments_.push_back(Segment{std::string(source.substr(pos, open - pos)), nullptr});
    }
    if (open == source.size()) break;

    Parser parser(source, open + 2, open);
    parser.SkipSpace();
    if (parser.AtEnd()) return parser.EndError();
    if (parser.LooksAt("}}")) return parser.Error(open, "empty hole '{{ }}'");
    TP_ASSIGN_OR_RETURN(ExprPtr expression, parser.ParseExpression());
    parser.SkipSpace();
    if (!parser.LooksAt("}}")) return parser.ExpectedError("'}}'");
    result.segments_.push_back(Segment{"", std::move(expression)});
    pos = parser.pos() + 2;
  }

  size_t holes = 0;
  bool blank_literals = true;
  for (size_t i = 0; i < result.segments_.size(); ++i) {
    const Segment& segment = result.segments_[i];
    if (segment.expression) {
      ++holes;
      result.single_hole_ = i;
    } else {
      blank_literals = blank_literals && IsBlank(segment.literal);
    }
  }
  if (holes != 1 || !blank_literals) result.single_hole_.reset();
  return result;
}

Result<std::string> Template::Render(const boost::json::object& context) const {
  std::string out;
  for (const Segment& segment : segments_) {
    if (!segment.expression) {
      out += segment.literal;
      continue;
    }
    TP_ASSIGN_OR_RETURN(json::value value, EvaluateExpr(*segment.expression, context));
    AppendText(value, out);
  }
  return out;
}

Result<boost::json::value> Template::Evaluate(const boost::json::object& context) const {
  if (single_hole_) return EvaluateExpr(*segments_[*single_hole_].expression, context);
  TP_ASSIGN_OR_RETURN(std::string text, Render(context));
  return json::value(json::string(text));
}

// ---- Condition

Result<Condition> Condition::Parse(std::string_view text) {
  Condition result;
  result.source_ = std::string(text);
  Parser parser(result.source_, 0, std::nullopt);
  parser.SkipSpace();
  if (parser.AtEnd()) return parser.Error(0, "empty condition");
  TP_ASSIGN_OR_RETURN(result.expression_, parser.ParseExpression());
  parser.SkipSpace();
  if (!parser.AtEnd()) return parser.ExpectedError("the end of the condition");
  return result;
}

Result<bool> Condition::Evaluate(const boost::json::object& context) const {
  TP_ASSIGN_OR_RETURN(json::value value, EvaluateExpr(*expression_, context));
  return Truthy(value);
}

}  // namespace tidepool::pipeline
