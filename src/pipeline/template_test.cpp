#include "pipeline/template.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <boost/json.hpp>

namespace tidepool::pipeline {
namespace {
namespace json = boost::json;

// The context every case runs against: what the runtime would hold after a discovery step.
const json::object& Context() {
  static const json::object context = json::parse(R"({
    "message": "I love vetiver",
    "name": "Ada",
    "empty": "",
    "nothing": null,
    "count": 3,
    "zero": 0,
    "price": 1.5,
    "whole": 49.0,
    "huge": 1e300,
    "big": 18446744073709551615,
    "yes": true,
    "no": false,
    "order": 1,
    "tags": ["woody", "fresh"],
    "nums": [1, 2.5, "x", null, true],
    "ints": [1, 2],
    "floats": [1.0, 2.0],
    "empty_list": [],
    "empty_object": {},
    "discovery": {"families": ["woody", "citrus"], "ready_to_recommend": true, "budget": 80,
                  "follow_up_question": null, "gift": {"for": "mother"}},
    "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "unicode": "h\u00e9llo w\u00f6rld",
    "quote": "say \"hi\"\n",
    "control": "\u0001",
    "mixed": "MiXeD Case"
  })")
                                          .as_object();
  return context;
}

std::string RenderOrError(std::string_view text) {
  Result<Template> parsed = Template::Parse(text);
  if (!parsed.ok()) return "parse error: " + parsed.status().message();
  Result<std::string> rendered = parsed->Render(Context());
  if (!rendered.ok()) return "render error: " + rendered.status().message();
  return *rendered;
}

json::value EvaluateOrDie(std::string_view text) {
  Result<Template> parsed = Template::Parse(text);
  EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
  if (!parsed.ok()) return nullptr;
  Result<json::value> value = parsed->Evaluate(Context());
  EXPECT_TRUE(value.ok()) << value.status().ToString();
  return value.ok() ? *value : json::value(nullptr);
}

struct RenderCase {
  std::string text;
  std::string expected;
};

void ExpectRenders(const std::vector<RenderCase>& cases) {
  for (const RenderCase& c : cases) {
    EXPECT_EQ(RenderOrError(c.text), c.expected) << "template: " << c.text;
  }
}

// ---- rendering

TEST(TemplateRender, LiteralTextOnly) {
  ExpectRenders({
      {"", ""},
      {"plain text", "plain text"},
      {"a } b }} c { d", "a } b }} c { d"},
      {"line one\nline two\n", "line one\nline two\n"},
  });
}

TEST(TemplateRender, EveryKindOfValue) {
  ExpectRenders({
      {"Hello {{ name }}!", "Hello Ada!"},
      {"{{name}}", "Ada"},
      {"{{ message }}", "I love vetiver"},
      {"[{{ nothing }}]", "[]"},
      {"[{{ empty }}]", "[]"},
      {"{{ count }}", "3"},
      {"{{ zero }}", "0"},
      {"{{ price }}", "1.5"},
      {"{{ whole }}", "49"},
      {"{{ big }}", "18446744073709551615"},
      {"{{ yes }} {{ no }}", "true false"},
      {"{{ tags }}", R"(["woody","fresh"])"},
      {"{{ nums }}", R"([1,2.5,"x",null,true])"},
      {"{{ empty_list }}{{ empty_object }}", "[]{}"},
      {"{{ discovery.gift }}", R"({"for":"mother"})"},
      {"{{ history.0 }}", R"({"role":"user","content":"hi"})"},
      {"{{ unicode }}", "h\u00e9llo w\u00f6rld"},
      {"{{ quote }}", "say \"hi\"\n"},
  });
}

TEST(TemplateRender, NestedPathsAndIndices) {
  ExpectRenders({
      {"{{ discovery.gift.for }}", "mother"},
      {"{{ discovery.families.1 }}", "citrus"},
      {"{{ history.1.content }}", "hello"},
      {"{{ history.0.role }}: {{ history.0.content }}", "user: hi"},
      {"{{ discovery.budget }}", "80"},
  });
}

TEST(TemplateRender, MissingPathsAreNull) {
  ExpectRenders({
      {"[{{ missing }}]", "[]"},
      {"[{{ discovery.missing }}]", "[]"},
      {"[{{ discovery.missing.deeper.still }}]", "[]"},
      {"[{{ discovery.follow_up_question }}]", "[]"},
      {"[{{ history.9.content }}]", "[]"},
      {"[{{ history.01x }}]", "[]"},                      // not an index
      {"[{{ tags.woody }}]", "[]"},                       // a key on an array
      {"[{{ name.first }}]", "[]"},                       // through a string
      {"[{{ count.0 }}]", "[]"},                          // through a number
      {"[{{ nothing.field }}]", "[]"},                    // through null
      {"[{{ history.99999999999999999999999 }}]", "[]"},  // an index past any size_t
  });
}

TEST(TemplateRender, Literals) {
  ExpectRenders({
      {"{{ 'single' }}", "single"},
      {R"({{ "double" }})", "double"},
      {R"({{ 'it\'s' }})", "it's"},
      {R"({{ "say \"hi\"" }})", "say \"hi\""},
      {R"({{ 'back\\slash' }})", "back\\slash"},
      {R"({{ 'a\tb\nc' }})", "a\tb\nc"},
      {R"({{ "it's" }} {{ 'say "hi"' }})", "it's say \"hi\""},
      {"{{ '{{' }} not a hole {{ '}}' }}", "{{ not a hole }}"},
      {"{{ 42 }} {{ -3 }} {{ 0.25 }} {{ -1.5 }}", "42 -3 0.25 -1.5"},
      {"{{ true }} {{ false }} [{{ null }}]", "true false []"},
  });
}

TEST(TemplateRender, SeveralHolesAndLines) {
  ExpectRenders({
      {"{{ name }} likes {{ tags | join(', ') }}.", "Ada likes woody, fresh."},
      {"Shopper said:\n{{ message }}\nFamilies: {{ discovery.families | json }}\n",
       "Shopper said:\nI love vetiver\nFamilies: [\"woody\",\"citrus\"]\n"},
      {"{{ name }}{{ name }}", "AdaAda"},
  });
}

// ---- filters

TEST(TemplateFilters, Json) {
  ExpectRenders({
      {"{{ name | json }}", R"("Ada")"},
      {"{{ quote | json }}", R"("say \"hi\"\n")"},
      {"{{ control | json }}", R"("\u0001")"},
      {"{{ nothing | json }}", "null"},
      {"{{ missing | json }}", "null"},
      {"{{ count | json }} {{ price | json }} {{ yes | json }}", "3 1.5 true"},
      {"{{ discovery.gift | json }}", R"({"for":"mother"})"},
      {"{{ nums | json }}", R"([1,2.5,"x",null,true])"},
      {"{{ unicode | json }}", "\"h\u00e9llo w\u00f6rld\""},
  });
}

TEST(TemplateFilters, Length) {
  ExpectRenders({
      {"{{ name | length }}", "3"},
      {"{{ unicode | length }}", "11"},  // characters, not bytes
      {"{{ tags | length }}", "2"},
      {"{{ discovery | length }}", "5"},
      {"{{ empty | length }}", "0"},
      {"{{ empty_list | length }}", "0"},
      {"{{ nothing | length }}", "0"},
      {"{{ missing | length }}", "0"},
  });
  EXPECT_TRUE(EvaluateOrDie("{{ tags | length }}").is_int64());
}

TEST(TemplateFilters, Default) {
  ExpectRenders({
      {"{{ nothing | default('n/a') }}", "n/a"},
      {"{{ missing | default('n/a') }}", "n/a"},
      {"{{ empty | default('n/a') }}", "n/a"},
      {"{{ name | default('n/a') }}", "Ada"},
      {"{{ zero | default(5) }}", "0"},  // only null and "" are replaced
      {"{{ no | default(true) }}", "false"},
      {"{{ empty_list | default(1) }}", "[]"},
      {"{{ missing | default(name) }}", "Ada"},
      {"{{ missing | default(nothing) | default('last') }}", "last"},
  });
}

TEST(TemplateFilters, Join) {
  ExpectRenders({
      {"{{ tags | join(', ') }}", "woody, fresh"},
      {"{{ tags | join }}", "woodyfresh"},
      {"{{ tags | join() }}", "woodyfresh"},
      {"{{ nums | join('/') }}", "1/2.5/x//true"},
      {"{{ history | join(';') }}",
       R"({"role":"user","content":"hi"};{"role":"assistant","content":"hello"})"},
      {"[{{ empty_list | join(',') }}]", "[]"},
      {"[{{ missing | join(',') }}]", "[]"},
      {R"({{ tags | join("\n") }})", "woody\nfresh"},
  });
}

TEST(TemplateFilters, UpperLower) {
  ExpectRenders({
      {"{{ mixed | upper }}", "MIXED CASE"},
      {"{{ mixed | lower }}", "mixed case"},
      {"{{ unicode | upper }}", "H\u00e9LLO W\u00f6RLD"},  // ASCII letters only
      {"[{{ missing | upper }}]", "[]"},
      {"{{ 'abc' | upper | lower }}", "abc"},
  });
}

TEST(TemplateFilters, FirstLast) {
  ExpectRenders({
      {"{{ tags | first }}", "woody"},
      {"{{ tags | last }}", "fresh"},
      {"{{ history | last | json }}", R"({"role":"assistant","content":"hello"})"},
      {"{{ history | first }}", R"({"role":"user","content":"hi"})"},
      {"[{{ empty_list | first }}]", "[]"},
      {"[{{ empty_list | last }}]", "[]"},
      {"{{ name | first }}{{ name | last }}", "Aa"},
      {"{{ '\u00e9!' | first }}", "\u00e9"},
      {"{{ 'a\u00e9' | last }}", "\u00e9"},
      {"[{{ empty | first }}]", "[]"},
      {"[{{ missing | first }}]", "[]"},
  });
}

TEST(TemplateFilters, Merge) {
  ExpectRenders({
      {"{{ discovery.gift | merge(top_n=3) }}", R"({"for":"mother","top_n":3})"},
      {"{{ discovery.gift | merge(top_n=3, note='x') }}",
       R"({"for":"mother","top_n":3,"note":"x"})"},
      {"{{ discovery.gift | merge(for='father') }}", R"({"for":"father"})"},
      {"{{ empty_object | merge(who=name, tags=tags) }}",
       R"({"who":"Ada","tags":["woody","fresh"]})"},
      {"{{ history | first | merge(seen=true) | json }}",
       R"({"role":"user","content":"hi","seen":true})"},
  });
  // The context is not changed by a merge.
  EXPECT_EQ(RenderOrError("{{ discovery.gift }}"), R"({"for":"mother"})");
}

TEST(TemplateFilters, Round) {
  ExpectRenders({
      {"{{ price | round }}", "2"},  // half away from zero
      {"{{ -2.5 | round }}", "-3"},
      {"{{ 3.14159 | round(2) }}", "3.14"},
      {"{{ 3.14159 | round(0) }}", "3"},
      {"{{ count | round(2) }}", "3"},
      {"{{ huge | round(15) }}", "1e+300"},
      {"[{{ nothing | round }}]", "[]"},
  });
  EXPECT_EQ(EvaluateOrDie("{{ price | round }}"), json::value(2));
  EXPECT_TRUE(EvaluateOrDie("{{ price | round }}").is_int64());
}

TEST(TemplateFilters, ChainsAndArguments) {
  ExpectRenders({
      {"{{ tags | join(',') | upper }}", "WOODY,FRESH"},
      {"{{ tags|first|upper|length }}", "5"},
      {"{{ missing | default(tags | first) | upper }}", "WOODY"},
      {"{{ missing | default((name)) }}", "Ada"},
      {"{{ discovery.gift | merge(big=count > 2, n=tags | length) }}",
       R"({"for":"mother","big":true,"n":2})"},
  });
}

// ---- operators

TEST(TemplateRender, OperatorsYieldBooleans) {
  ExpectRenders({
      {"{{ count > 2 }}", "true"},
      {"{{ name and count }}", "true"},
      {"{{ nothing or empty }}", "false"},
      {"{{ not name }}", "false"},
  });
}

struct ConditionCase {
  std::string text;
  bool expected;
};

void ExpectConditions(const std::vector<ConditionCase>& cases) {
  for (const ConditionCase& c : cases) {
    Result<Condition> condition = Condition::Parse(c.text);
    ASSERT_TRUE(condition.ok()) << c.text << ": " << condition.status().ToString();
    Result<bool> value = condition->Evaluate(Context());
    ASSERT_TRUE(value.ok()) << c.text << ": " << value.status().ToString();
    EXPECT_EQ(*value, c.expected) << "condition: " << c.text;
  }
}

TEST(ConditionTest, Truthiness) {
  ExpectConditions({
      {"nothing", false},
      {"missing", false},
      {"no", false},
      {"zero", false},
      {"0.0", false},
      {"-0.0", false},
      {"empty", false},
      {"empty_list", false},
      {"empty_object", false},
      {"yes", true},
      {"count", true},
      {"-1", true},
      {"0.5", true},
      {"big", true},
      {"name", true},
      {"'false'", true},
      {"'0'", true},
      {"' '", true},
      {"tags", true},
      {"discovery", true},
      {"nums", true},
      {"discovery.ready_to_recommend", true},
      {"discovery.follow_up_question", false},
  });
}

TEST(ConditionTest, NotAndOr) {
  ExpectConditions({
      {"not discovery.ready_to_recommend", false},
      {"not missing", true},
      {"not not name", true},
      {"yes and no", false},
      {"yes and count", true},
      {"yes or no", true},
      {"no or nothing", false},
      {"no or nothing or name", true},
      // Names that begin with a keyword are names.
      {"order", true},
      {"not nothing", true},
      {"yes and order", true},
      {"notmissing", false},
  });
}

TEST(ConditionTest, PrecedenceAndParentheses) {
  ExpectConditions({
      {"yes or no and no", true},     // yes or (no and no)
      {"(yes or no) and no", false},  //
      {"no and no or yes", true},     // (no and no) or yes
      {"no and (no or yes)", false},  //
      {"not no and no", false},       // (not no) and no
      {"not (no and no)", true},      //
      {"not count == 4", true},       // not (count == 4)
      {"not yes or yes", true},       // (not yes) or yes
      {"tags | length == 2", true},   // (tags | length) == 2
      {"tags | length > 1 and name == 'Ada'", true},
      {"((((yes))))", true},
      {"( no )", false},
  });
}

TEST(ConditionTest, Comparisons) {
  ExpectConditions({
      {"count == 3", true},    {"count == 3.0", true},
      {"count != 4", true},    {"count != 3", false},
      {"count < 4", true},     {"count <= 3", true},
      {"count > 2", true},     {"count >= 4", false},
      {"price < 2", true},     {"price > 1.25", true},
      {"price >= 1.5", true},  {"big > count", true},
      {"-1 < zero", true},     {"discovery.budget <= 80", true},
      {"name == 'Ada'", true}, {"name == \"Ada\"", true},
      {"name != 'ada'", true}, {"name < 'Bob'", true},
      {"'abc' < 'abd'", true}, {"'b' > 'abc'", true},
      {"'' < 'a'", true},      {"name >= 'Ada'", true},
      {"count==3", true},
  });
}

TEST(ConditionTest, Equality) {
  ExpectConditions({
      {"discovery.gift == discovery.gift", true},
      {"history.0 == history.1", false},
      {"history.0 != history.1", true},
      {"ints == floats", true},  // numbers compare by value, at any depth
      {"ints == tags", false},
      {"nothing == null", true},
      {"missing == null", true},
      {"nothing == missing", true},
      {"yes == true", true},
      {"zero == false", false},  // no coercion between types
      {"'3' == count", false},
      {"empty == null", false},
      {"discovery.families.0 == tags.0", true},
  });
}

TEST(ConditionTest, AndOrShortCircuit) {
  // The right side would be an evaluation error (null < 3, a merge on null).
  ExpectConditions({
      {"missing and missing < 3", false},
      {"name or missing < 3", true},
      {"missing and missing | merge(a=1)", false},
  });
}

// ---- Evaluate

TEST(TemplateEvaluate, SingleHoleYieldsItsValue) {
  EXPECT_EQ(EvaluateOrDie("{{ discovery }}"), Context().at("discovery"));
  EXPECT_EQ(EvaluateOrDie("  {{ discovery.gift }}\n"), json::parse(R"({"for":"mother"})"));
  EXPECT_EQ(EvaluateOrDie("{{ tags }}"), json::parse(R"(["woody","fresh"])"));
  EXPECT_EQ(EvaluateOrDie("{{ count }}"), json::value(3));
  EXPECT_EQ(EvaluateOrDie("{{ price }}"), json::value(1.5));
  EXPECT_EQ(EvaluateOrDie("{{ nothing }}"), json::value(nullptr));
  EXPECT_EQ(EvaluateOrDie("{{ missing }}"), json::value(nullptr));
  EXPECT_EQ(EvaluateOrDie("{{ count > 2 }}"), json::value(true));
  EXPECT_EQ(EvaluateOrDie("{{ name }}"), json::value("Ada"));
}

TEST(TemplateEvaluate, MergeForAToolStepsArguments) {
  // apps/scent-advisor/app.yaml: args: "{{ discovery | merge(top_n=3) }}"
  json::value args = EvaluateOrDie("{{ discovery | merge(top_n=3) }}");
  ASSERT_TRUE(args.is_object());
  EXPECT_EQ(args.at("top_n"), json::value(3));
  EXPECT_EQ(args.at("families"), json::parse(R"(["woody","citrus"])"));
  EXPECT_EQ(args.as_object().size(), Context().at("discovery").as_object().size() + 1);
}

TEST(TemplateEvaluate, AnythingElseYieldsTheRenderedString) {
  EXPECT_EQ(EvaluateOrDie("Hi {{ name }}"), json::value("Hi Ada"));
  EXPECT_EQ(EvaluateOrDie("{{ count }}{{ count }}"), json::value("33"));
  EXPECT_EQ(EvaluateOrDie("{{ count }}."), json::value("3."));
  EXPECT_EQ(EvaluateOrDie("plain"), json::value("plain"));
  EXPECT_EQ(EvaluateOrDie(""), json::value(""));
  EXPECT_EQ(EvaluateOrDie("   "), json::value("   "));
}

TEST(TemplateEvaluate, EmptySourceAndCopies) {
  Template unset;
  EXPECT_TRUE(unset.empty());
  EXPECT_EQ(unset.source(), "");
  EXPECT_EQ(*unset.Render(Context()), "");
  EXPECT_EQ(*unset.Evaluate(Context()), json::value(""));

  Result<Template> parsed = Template::Parse("{{ name }} x");
  ASSERT_TRUE(parsed.ok());
  EXPECT_FALSE(parsed->empty());
  EXPECT_EQ(parsed->source(), "{{ name }} x");
  EXPECT_TRUE(Template::Parse("")->empty());

  Template copy = *parsed;
  parsed = Template::Parse("other");
  EXPECT_EQ(*copy.Render(Context()), "Ada x");
  EXPECT_EQ(copy.source(), "{{ name }} x");
}

// ---- parse errors

struct ErrorCase {
  std::string text;
  std::string message;
};

TEST(TemplateParse, Errors) {
  const std::vector<ErrorCase> cases = {
      {"Hello {{ name", "unclosed '{{' at offset 6"},
      {"{{ name }} and {{", "unclosed '{{' at offset 15"},
      {"{{ name |", "unclosed '{{' at offset 0"},
      {"{{ name == ", "unclosed '{{' at offset 0"},
      {"{{ 'abc }}", "unterminated string at offset 3"},
      {"{{ \"abc", "unterminated string at offset 3"},
      {"{{ 'abc\\", "unterminated string at offset 3"},
      {"{{ name | jsn }}", "unknown filter 'jsn' at offset 10"},
      {"{{ name | json | Upper }}", "unknown filter 'Upper' at offset 17"},
      {"{{ name extra }}", "expected '}}', found 'extra' at offset 8"},
      {"{{ name }", "expected '}}', found '}' at offset 8"},
      {"{{ 12abc }}", "unexpected 'abc' at offset 5"},
      {"{{ }}", "empty hole '{{ }}' at offset 0"},
      {"x{{}}", "empty hole '{{ }}' at offset 1"},
      {"{{ name | }}", "expected a filter name after '|', found '}}' at offset 10"},
      {"{{ name | 3 }}", "expected a filter name after '|', found '3' at offset 10"},
      {"{{ name == }}", "unexpected '}}' at offset 11"},
      {"{{ a = b }}", "unexpected '=' (use '==' to compare) at offset 5"},
      {"{{ a < b < c }}", "comparisons do not chain (join them with 'and') at offset 9"},
      {"{{ (a }}", "expected ')', found '}}' at offset 6"},
      {"{{ a.}}", "expected a key or index after '.', found '}}' at offset 5"},
      {"{{ 'x\\q' }}", "unknown escape '\\q' in string at offset 5"},
      {"{{ name | default }}", "filter 'default' takes 1 argument, got 0 at offset 10"},
      {"{{ name | default(1, 2) }}", "filter 'default' takes 1 argument, got 2 at offset 10"},
      {"{{ name | upper(1) }}", "filter 'upper' takes no arguments, got 1 at offset 10"},
      {"{{ t | join(',', ';') }}", "filter 'join' takes at most 1 argument, got 2 at offset 7"},
      {"{{ d | merge }}", "filter 'merge' takes at least 1 argument, got 0 at offset 7"},
      {"{{ d | merge(3) }}", "filter 'merge' takes key=value arguments at offset 13"},
      {"{{ d | merge(a=1, a=2) }}", "duplicate key 'a' at offset 18"},
      {"{{ d | round(n=2) }}", "filter 'round' takes no key=value arguments at offset 13"},
      {"{{ t | join(',' }}", "expected ',' or ')', found '}}' at offset 16"},
      {"{{ and }}", "unexpected 'and' at offset 3"},
      {"{{ a == not b }}", "unexpected 'not' at offset 8"},
      {"{{ 99999999999999999999 }}", "integer out of range at offset 3"},
      {"{{ @ }}", "unexpected '@' at offset 3"},
      {"{{ \u201cx\u201d }}", "unexpected '\u201c' at offset 3"},
      {"{{ {{ a }} }}", "unexpected '{{' at offset 3"},
      {"line one\n  {{ name | jsn }}", "unknown filter 'jsn' at offset 21 (line 2, column 13)"},
  };
  for (const ErrorCase& c : cases) {
    Result<Template> parsed = Template::Parse(c.text);
    ASSERT_FALSE(parsed.ok()) << "template: " << c.text;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_EQ(parsed.status().message(), c.message) << "template: " << c.text;
  }
}

TEST(TemplateParse, DeepNestingIsAnErrorNotACrash) {
  const std::string deep = "{{ " + std::string(10000, '(') + "a" + std::string(10000, ')') + " }}";
  Result<Template> parsed = Template::Parse(deep);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("nested too deeply"), std::string::npos);

  std::string nots = "{{ ";
  for (int i = 0; i < 10000; ++i) nots += "not ";
  EXPECT_FALSE(Template::Parse(nots + "a }}").ok());

  const std::string fine = "{{ " + std::string(30, '(') + "a" + std::string(30, ')') + " }}";
  EXPECT_TRUE(Template::Parse(fine).ok());
}

TEST(TemplateParse, LongExpressionIsAnErrorNotADeepTree) {
  std::string ors = "{{ a";
  std::string filters = "{{ a";
  for (int i = 0; i < 10000; ++i) {
    ors += " or a";
    filters += " | upper";
  }
  for (const std::string& text : {ors + " }}", filters + " }}"}) {
    Result<Template> parsed = Template::Parse(text);
    ASSERT_FALSE(parsed.ok());
    EXPECT_NE(parsed.status().message().find("expression too long (over 512 terms)"),
              std::string::npos)
        << parsed.status().message();
  }
  std::string many = "{{ a";
  for (int i = 0; i < 100; ++i) many += " or a | upper";
  EXPECT_TRUE(Template::Parse(many + " }}").ok());
  // The limit is per hole, not per template.
  std::string holes;
  for (int i = 0; i < 1000; ++i) holes += "{{ name }}";
  Result<Template> parsed = Template::Parse(holes);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->Render(Context())->size(), 3000u);
}

TEST(ConditionParse, Errors) {
  const std::vector<ErrorCase> cases = {
      {"", "empty condition at offset 0"},
      {"   ", "empty condition at offset 0"},
      {"a b", "expected the end of the condition, found 'b' at offset 2"},
      {"a and", "unexpected end of condition at offset 5"},
      {"(a", "unexpected end of condition at offset 2"},
      {"a | nope", "unknown filter 'nope' at offset 4"},
      {"{{ a }}",
       "unexpected '{{' (a condition is a bare expression, without '{{ }}') at offset 0"},
      {"a }}", "expected the end of the condition, found '}}' at offset 2"},
      {"count>=3and yes", "unexpected 'and' at offset 8"},
      {"'open", "unterminated string at offset 0"},
  };
  for (const ErrorCase& c : cases) {
    Result<Condition> parsed = Condition::Parse(c.text);
    ASSERT_FALSE(parsed.ok()) << "condition: " << c.text;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_EQ(parsed.status().message(), c.message) << "condition: " << c.text;
  }
}

// ---- evaluation errors

TEST(TemplateEvaluate, TypeErrorsNameTheFilter) {
  const std::vector<ErrorCase> cases = {
      {"{{ tags | merge(x=1) }}", "filter 'merge' at offset 10: expects an object, got array"},
      {"{{ missing | merge(x=1) }}", "filter 'merge' at offset 13: expects an object, got null"},
      {"{{ count | length }}",
       "filter 'length' at offset 11: expects a string, array or object, got number"},
      {"{{ count | upper }}", "filter 'upper' at offset 11: expects a string, got number"},
      {"{{ tags | lower }}", "filter 'lower' at offset 10: expects a string, got array"},
      {"{{ name | join }}", "filter 'join' at offset 10: expects an array, got string"},
      {"{{ tags | join(1) }}",
       "filter 'join' at offset 10: separator must be a string, got number"},
      {"{{ discovery | first }}",
       "filter 'first' at offset 15: expects an array or string, got object"},
      {"{{ count | last }}", "filter 'last' at offset 11: expects an array or string, got number"},
      {"{{ name | round }}", "filter 'round' at offset 10: expects a number, got string"},
      {"{{ price | round(16) }}", "filter 'round' at offset 11: expects 0 to 15 decimals, got 16"},
      {"{{ price | round(-1) }}", "filter 'round' at offset 11: expects 0 to 15 decimals, got -1"},
      {"{{ price | round('2') }}",
       "filter 'round' at offset 11: expects 0 to 15 decimals, got \"2\""},
      {"{{ name < 3 }}",
       "comparison at offset 8: cannot order string and number (only two numbers or two strings)"},
      {"x\n{{ missing > 3 }}",
       "comparison at offset 13 (line 2, column 12): cannot order null and number (only two "
       "numbers or two strings)"},
      // An error inside a filter's argument is reported as it is.
      {"{{ missing | default(tags | upper) }}",
       "filter 'upper' at offset 28: expects a string, got array"},
  };
  for (const ErrorCase& c : cases) {
    Result<Template> parsed = Template::Parse(c.text);
    ASSERT_TRUE(parsed.ok()) << c.text << ": " << parsed.status().ToString();
    Result<std::string> rendered = parsed->Render(Context());
    ASSERT_FALSE(rendered.ok()) << "template: " << c.text;
    EXPECT_EQ(rendered.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_EQ(rendered.status().message(), c.message) << "template: " << c.text;
    Result<json::value> evaluated = parsed->Evaluate(Context());
    ASSERT_FALSE(evaluated.ok()) << "template: " << c.text;
    EXPECT_EQ(evaluated.status().message(), c.message) << "template: " << c.text;
  }
}

TEST(ConditionTest, EvaluationErrors) {
  const std::vector<ErrorCase> cases = {
      {"tags < tags",
       "comparison at offset 5: cannot order array and array (only two numbers or "
       "two strings)"},
      {"yes and discovery.budget > 'a'",
       "comparison at offset 25: cannot order number and string (only two numbers or two "
       "strings)"},
      {"not (count | upper)", "filter 'upper' at offset 13: expects a string, got number"},
  };
  for (const ErrorCase& c : cases) {
    Result<Condition> condition = Condition::Parse(c.text);
    ASSERT_TRUE(condition.ok()) << c.text << ": " << condition.status().ToString();
    Result<bool> value = condition->Evaluate(Context());
    ASSERT_FALSE(value.ok()) << "condition: " << c.text;
    EXPECT_EQ(value.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_EQ(value.status().message(), c.message) << "condition: " << c.text;
  }
}

}  // namespace
}  // namespace tidepool::pipeline
