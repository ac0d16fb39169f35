#include "broker/filter.h"

#include <vector>

namespace tidepool::broker {

constexpr size_t kMaxFilterBytes = 256;

struct Filter::Node {
  enum class Kind { kHas, kEq, kNe, kPrefix, kNot, kAnd, kOr };
  Kind kind;
  std::string key;
  std::string value;
  std::vector<std::shared_ptr<const Node>> children;
};

namespace {

using Node = Filter::Node;
using NodePtr = std::shared_ptr<const Node>;

enum class Tok { kIdent, kString, kDot, kColon, kEq, kNe, kLParen, kRParen, kComma, kMinus, kEnd };

struct Token {
  Tok kind;
  std::string text;
  size_t pos;
};

bool IsKeyChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Result<NodePtr> Run() {
    TP_RETURN_IF_ERROR(Lex());
    TP_ASSIGN_OR_RETURN(NodePtr root, Expr());
    if (Peek().kind != Tok::kEnd) return Error(Peek().pos, "unexpected \"" + Peek().text + "\"");
    return root;
  }

 private:
  Status Error(size_t pos, const std::string& why) {
    return Status::InvalidArgument("invalid filter at position " + std::to_string(pos + 1) + ": " +
                                   why);
  }

  Status Lex() {
    size_t i = 0;
    while (i < text_.size()) {
      const char c = text_[i];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++i;
        continue;
      }
      const size_t start = i;
      switch (c) {
        case '.':
          tokens_.push_back({Tok::kDot, ".", start});
          ++i;
          continue;
        case ':':
          tokens_.push_back({Tok::kColon, ":", start});
          ++i;
          continue;
        case '=':
          tokens_.push_back({Tok::kEq, "=", start});
          ++i;
          continue;
        case '(':
          tokens_.push_back({Tok::kLParen, "(", start});
          ++i;
          continue;
        case ')':
          tokens_.push_back({Tok::kRParen, ")", start});
          ++i;
          continue;
        case ',':
          tokens_.push_back({Tok::kComma, ",", start});
          ++i;
          continue;
        case '-':
          tokens_.push_back({Tok::kMinus, "-", start});
          ++i;
          continue;
        case '!':
          if (i + 1 < text_.size() && text_[i + 1] == '=') {
            tokens_.push_back({Tok::kNe, "!=", start});
            i += 2;
            continue;
          }
          return Error(start, "'!' must be followed by '='");
        case '"':
        case '\'': {
          TP_ASSIGN_OR_RETURN(std::string s, LexString(&i));
          tokens_.push_back({Tok::kString, std::move(s), start});
          continue;
        }
        default:
          break;
      }
      if (!IsKeyChar(c)) return Error(start, std::string("unexpected character '") + c + "'");
      while (i < text_.size() && IsKeyChar(text_[i])) ++i;
      tokens_.push_back({Tok::kIdent, std::string(text_.substr(start, i - start)), start});
    }
    tokens_.push_back({Tok::kEnd, "end of filter", text_.size()});
    return Status::Ok();
  }

  Result<std::string> LexString(size_t* i) {
    const char quote = text_[*i];
    const size_t start = *i;
    std::string out;
    ++*i;
    while (*i < text_.size()) {
      char c = text_[*i];
      if (c == quote) {
        ++*i;
        return out;
      }
      if (c == '\\') {
        if (*i + 1 >= text_.size()) break;
        const char e = text_[*i + 1];
        *i += 2;
        switch (e) {
          case 'n':
            out.push_back('\n');
            break;
          case 't':
            out.push_back('\t');
            break;
          case 'r':
            out.push_back('\r');
            break;
          case '\\':
            out.push_back('\\');
            break;
          case '"':
            out.push_back('"');
            break;
          case '\'':
            out.push_back('\'');
            break;
          case 'x': {
            if (*i + 2 > text_.size()) return Error(*i, "incomplete \\x escape");
            int v = 0;
            for (int k = 0; k < 2; ++k) {
              const char h = text_[*i + k];
              v *= 16;
              if (h >= '0' && h <= '9')
                v += h - '0';
              else if (h >= 'a' && h <= 'f')
                v += h - 'a' + 10;
              else if (h >= 'A' && h <= 'F')
                v += h - 'A' + 10;
              else
                return Error(*i + k, "bad hex digit in \\x escape");
            }
            out.push_back(static_cast<char>(v));
            *i += 2;
            break;
          }
          default:
            return Error(*i - 1, std::string("unknown escape \\") + e);
        }
        continue;
      }
      out.push_back(c);
      ++*i;
    }
    return Error(start, "unterminated string literal");
  }

  const Token& Peek() const { return tokens_[pos_]; }
  Token Next() { return tokens_[pos_++]; }
  bool IsWord(const Token& t, std::string_view w) const {
    return t.kind == Tok::kIdent && t.text == w;
  }

  Result<NodePtr> Expr() {
    TP_ASSIGN_OR_RETURN(NodePtr first, Unary());
    if (!IsWord(Peek(), "AND") && !IsWord(Peek(), "OR")) return first;
    const std::string op = Peek().text;
    auto node = std::make_shared<Node>();
    node->kind = op == "AND" ? Node::Kind::kAnd : Node::Kind::kOr;
    node->children.push_back(first);
    while (IsWord(Peek(), "AND") || IsWord(Peek(), "OR")) {
      if (Peek().text != op) {
        return Error(Peek().pos, "AND and OR must not be combined without parentheses");
      }
      Next();
      TP_ASSIGN_OR_RETURN(NodePtr next, Unary());
      node->children.push_back(next);
    }
    return NodePtr(node);
  }

  Result<NodePtr> Unary() {
    if (IsWord(Peek(), "NOT") || Peek().kind == Tok::kMinus) {
      Next();
      TP_ASSIGN_OR_RETURN(NodePtr inner, Unary());
      auto node = std::make_shared<Node>();
      node->kind = Node::Kind::kNot;
      node->children.push_back(inner);
      return NodePtr(node);
    }
    return Primary();
  }

  Result<std::string> Key() {
    Token t = Next();
    if (t.kind == Tok::kIdent || t.kind == Tok::kString) return t.text;
    return Error(t.pos, "expected an attribute key, found \"" + t.text + "\"");
  }

  Result<std::string> StringLiteral() {
    Token t = Next();
    if (t.kind != Tok::kString) {
      return Error(t.pos, "expected a string literal, found \"" + t.text + "\"");
    }
    return t.text;
  }

  Status Expect(Tok kind, const char* what) {
    Token t = Next();
    if (t.kind != kind)
      return Error(t.pos, std::string("expected ") + what + ", found \"" + t.text + "\"");
    return Status::Ok();
  }

  Result<NodePtr> Primary() {
    Token t = Next();
    if (t.kind == Tok::kLParen) {
      TP_ASSIGN_OR_RETURN(NodePtr inner, Expr());
      TP_RETURN_IF_ERROR(Expect(Tok::kRParen, "')'"));
      return inner;
    }
    auto node = std::make_shared<Node>();
    if (IsWord(t, "hasPrefix")) {
      TP_RETURN_IF_ERROR(Expect(Tok::kLParen, "'(' after hasPrefix"));
      Token a = Next();
      if (!IsWord(a, "attributes")) return Error(a.pos, "hasPrefix takes attributes.KEY first");
      TP_RETURN_IF_ERROR(Expect(Tok::kDot, "'.' after attributes"));
      TP_ASSIGN_OR_RETURN(node->key, Key());
      TP_RETURN_IF_ERROR(Expect(Tok::kComma, "','"));
      TP_ASSIGN_OR_RETURN(node->value, StringLiteral());
      TP_RETURN_IF_ERROR(Expect(Tok::kRParen, "')'"));
      node->kind = Node::Kind::kPrefix;
      return NodePtr(node);
    }
    if (!IsWord(t, "attributes")) {
      return Error(t.pos, "expected attributes, hasPrefix, NOT or '(', found \"" + t.text + "\"");
    }
    Token sep = Next();
    if (sep.kind == Tok::kColon) {
      TP_ASSIGN_OR_RETURN(node->key, Key());
      node->kind = Node::Kind::kHas;
      return NodePtr(node);
    }
    if (sep.kind != Tok::kDot) return Error(sep.pos, "expected '.' or ':' after attributes");
    TP_ASSIGN_OR_RETURN(node->key, Key());
    Token op = Next();
    if (op.kind == Tok::kEq) {
      node->kind = Node::Kind::kEq;
    } else if (op.kind == Tok::kNe) {
      node->kind = Node::Kind::kNe;
    } else {
      return Error(op.pos, "expected = or != after attributes." + node->key);
    }
    TP_ASSIGN_OR_RETURN(node->value, StringLiteral());
    return NodePtr(node);
  }

  std::string_view text_;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
};

bool Eval(const Node& n, const std::map<std::string, std::string>& attrs) {
  switch (n.kind) {
    case Node::Kind::kHas:
      return attrs.contains(n.key);
    case Node::Kind::kEq: {
      auto it = attrs.find(n.key);
      return it != attrs.end() && it->second == n.value;
    }
    case Node::Kind::kNe: {
      auto it = attrs.find(n.key);
      return it == attrs.end() || it->second != n.value;
    }
    case Node::Kind::kPrefix: {
      auto it = attrs.find(n.key);
      return it != attrs.end() && it->second.starts_with(n.value);
    }
    case Node::Kind::kNot:
      return !Eval(*n.children[0], attrs);
    case Node::Kind::kAnd:
      for (const auto& c : n.children) {
        if (!Eval(*c, attrs)) return false;
      }
      return true;
    case Node::Kind::kOr:
      for (const auto& c : n.children) {
        if (Eval(*c, attrs)) return true;
      }
      return false;
  }
  return false;
}

}  // namespace

Result<Filter> Filter::Parse(std::string_view text) {
  Filter f;
  if (text.size() > kMaxFilterBytes) {
    return Status::InvalidArgument("invalid filter: " + std::to_string(text.size()) +
                                   " bytes, the limit is 256");
  }
  bool blank = true;
  for (char c : text) blank = blank && (c == ' ' || c == '\t' || c == '\n' || c == '\r');
  if (blank) return f;
  Parser p(text);
  TP_ASSIGN_OR_RETURN(f.root_, p.Run());
  return f;
}

bool Filter::Matches(const std::map<std::string, std::string>& attributes) const {
  return root_ == nullptr || Eval(*root_, attributes);
}

}  // namespace tidepool::broker
