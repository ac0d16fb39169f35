// Templates and conditions: how an app spec's steps read the user's message, the conversation and
// earlier steps' outputs (apps/*/app.yaml: `text: "{{ discovery.follow_up_question }}"`,
// `args: "{{ discovery | merge(top_n=3) }}"`, `when: "not discovery.ready_to_recommend"`).
//
// A template is text with {{ expression }} holes. Outside holes every character is literal; there
// is no escape for "{{" other than a string literal in a hole: {{ "{{" }}. A "}}" outside a hole
// is literal too.
//
// Expressions, evaluated against a context object (the runtime puts `message`, `history` and each
// finished step's output, keyed by step id, in it):
//
//   paths       message   discovery.families   history.0.content
//               The first name is a key of the context, then `.key` or `.index` (decimal digits)
//               step into objects and arrays. A missing key, an index past the end, or a step into
//               anything that is not an object or array yields null, never an error. Names are
//               [A-Za-z_][A-Za-z0-9_]*; the first cannot be a keyword (and or not true false null).
//   literals    'single' or "double" quoted strings (escapes \" \' \\ \n \t; any other backslash is
//               an error), integers (-3, 42), decimals (0.5, -1.25), true, false, null.
//   operators   loosest first: `or`, `and`, `not`, then the comparisons == != < <= > >=, then
//               filters; parentheses group. `and`, `or`, `not` short-circuit and yield true or
//               false. Comparisons do not chain (`a < b < c` is a parse error).
//                 == !=   deep equality on any JSON; numbers compare by value (1 == 1.0).
//                 < <= > >=  numbers numerically, strings by bytes (lexicographic on UTF-8);
//                         any other pairing (a string and a number, null and a number) is an error.
//   filters     value | name   or   value | name(arguments); filters bind tighter than comparisons,
//               so `items | length > 2` compares the length.
//                 json        the value as compact JSON text (a string comes back quoted)
//                 length      characters of a string (UTF-8 code points), size of an array or
//                             object; null is 0
//                 default(x)  x when the value is null or "", else the value (x is evaluated only
//                             then)
//                 join(sep)   an array's elements as text (see rendering below) joined by sep
//                             (default ""); null is ""
//                 upper lower ASCII case mapping of a string; other characters are unchanged
//                 first last  an array's first/last element or a string's first/last character;
//                             null when empty
//                 merge(key=value, ...)  a copy of the object with the given keys set
//                 round(n)    a number rounded to n decimals (0..15, default 0); round(0) yields an
//                             integer
//               upper, lower, first, last and round pass null through, so a missing value stays
//               missing. Any other input type is an evaluation error naming the filter.
//
// Rendering a hole's value as text: a string as it is, null as "", a number, bool, object or array
// as compact JSON. Doubles are written in their shortest round-trip form (1.5, 49, 1e+100), not
// Boost.JSON's 1.5E0.
//
// Truthiness (`when:` and `not`/`and`/`or`): null, false, 0, "", [] and {} are false; everything
// else is true.
//
// An expression holds at most 512 terms and filters and nests at most 64 deep (parentheses, `not`,
// filter arguments); beyond that is a parse error.
//
// Errors are InvalidArgument. Parse errors name the problem and the offset into the source text
// ("unclosed '{{' at offset 12", "unknown filter 'jsn' at offset 20"), adding the line and column
// when the source has several lines. Evaluation errors name the filter or comparison and its
// offset ("filter 'merge' at offset 14: expects an object, got array").
//
// Thread-safety: Template and Condition are immutable after Parse; Render and Evaluate may run
// concurrently on one object. Copies are cheap (they share the parsed expressions).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include "common/status.h"

namespace tidepool::pipeline {

namespace template_internal {
struct Expr;  // a parsed expression; defined in template.cpp
}  // namespace template_internal

class Template {
 public:
  // The empty template: renders "", evaluates to "".
  Template() = default;

  static Result<Template> Parse(std::string_view text);

  // Literal text and each hole's value rendered as text (see the header comment).
  Result<std::string> Render(const boost::json::object& context) const;

  // When the template is exactly one hole, with only whitespace around it, the hole's JSON value
  // (so "{{ discovery }}" yields the object itself). Otherwise Render's string as a JSON string.
  Result<boost::json::value> Evaluate(const boost::json::object& context) const;

  // True when the source text is empty.
  bool empty() const { return source_.empty(); }
  const std::string& source() const { return source_; }

 private:
  // Literal text when `expression` is null, else a hole.
  struct Segment {
    std::string literal;
    std::shared_ptr<const template_internal::Expr> expression;
  };

  std::string source_;
  std::vector<Segment> segments_;
  // Index into segments_ of the only hole when every other segment is whitespace.
  std::optional<size_t> single_hole_;
};

// A boolean expression, e.g. a step's `when:`. The source is a bare expression, without braces.
class Condition {
 public:
  static Result<Condition> Parse(std::string_view text);

  // The truthiness of the expression's value.
  Result<bool> Evaluate(const boost::json::object& context) const;

  const std::string& source() const { return source_; }

 private:
  Condition() = default;

  std::string source_;
  std::shared_ptr<const template_internal::Expr> expression_;
};

}  // namespace tidepool::pipeline
