#include "llm/sim/schema_fill.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cmath>
#include <set>

#include "llm/sim/text_cues.h"

namespace tidepool::llm::sim {
namespace {
namespace json = boost::json;

// A validator for the subset FillSchema supports; "" when `v` is valid, else where it is not.
class Validator {
 public:
  explicit Validator(const json::value& root) : root_(root) {}

  std::string Check(const json::value& schema_in, const json::value& v, const std::string& at) {
    const json::value* schema = &schema_in;
    while (schema->is_object() && schema->get_object().contains("$ref")) {
      const std::string_view ref = schema->get_object().at("$ref").get_string();
      schema = ref == "#" ? &root_ : root_.find_pointer(ref.substr(1), ec_);
      if (schema == nullptr) return at + ": unresolved $ref";
    }
    const json::object& s = schema->get_object();
    for (const char* key : {"anyOf", "oneOf"}) {
      if (const json::value* branches = s.if_contains(key)) {
        for (const json::value& b : branches->get_array()) {
          if (Check(b, v, at).empty()) return "";
        }
        return at + ": matches no branch of " + key;
      }
    }
    if (const json::value* c = s.if_contains("const"); c && *c != v) return at + ": not the const";
    if (const json::value* e = s.if_contains("enum")) {
      const json::array& values = e->get_array();
      if (std::find(values.begin(), values.end(), v) == values.end()) {
        return at + ": " + json::serialize(v) + " not in enum";
      }
    }
    if (const json::value* t = s.if_contains("type")) {
      std::vector<std::string> types;
      if (t->is_string()) types.emplace_back(t->get_string());
      if (t->is_array()) {
        for (const json::value& x : t->get_array()) types.emplace_back(x.get_string());
      }
      bool any = false;
      for (const std::string& type : types) any = any || HasType(v, type);
      if (!any) return at + ": wrong type " + json::serialize(v);
    }
    if (v.is_object()) {
      const json::object& o = v.get_object();
      const json::value* props = s.if_contains("properties");
      if (const json::value* req = s.if_contains("required")) {
        for (const json::value& name : req->get_array()) {
          if (!o.contains(name.get_string()))
            return at + ": missing " + std::string(name.get_string());
        }
      }
      for (const auto& [key, value] : o) {
        const json::value* p = props ? props->get_object().if_contains(key) : nullptr;
        if (p == nullptr) {
          const json::value* ap = s.if_contains("additionalProperties");
          if (ap && ap->is_bool() && !ap->get_bool())
            return at + ": extra property " + std::string(key);
          continue;
        }
        if (std::string err = Check(*p, value, at + "." + std::string(key)); !err.empty())
          return err;
      }
    }
    if (v.is_array()) {
      const json::array& a = v.get_array();
      if (const json::value* m = s.if_contains("minItems");
          m && a.size() < m->to_number<size_t>()) {
        return at + ": too few items";
      }
      if (const json::value* m = s.if_contains("maxItems");
          m && a.size() > m->to_number<size_t>()) {
        return at + ": too many items";
      }
      if (const json::value* u = s.if_contains("uniqueItems"); u && u->as_bool()) {
        std::set<std::string> seen;
        for (const json::value& x : a) {
          if (!seen.insert(json::serialize(x)).second) return at + ": duplicate items";
        }
      }
      if (const json::value* items = s.if_contains("items")) {
        for (size_t i = 0; i < a.size(); ++i) {
          std::string err = Check(*items, a[i], at + "[" + std::to_string(i) + "]");
          if (!err.empty()) return err;
        }
      }
    }
    if (v.is_number()) {
      const double x = v.to_number<double>();
      if (const json::value* m = s.if_contains("minimum"); m && x < m->to_number<double>()) {
        return at + ": below minimum";
      }
      if (const json::value* m = s.if_contains("maximum"); m && x > m->to_number<double>()) {
        return at + ": above maximum";
      }
    }
    if (v.is_string()) {
      const size_t n = v.get_string().size();
      if (const json::value* m = s.if_contains("minLength"); m && n < m->to_number<size_t>()) {
        return at + ": too short";
      }
      if (const json::value* m = s.if_contains("maxLength"); m && n > m->to_number<size_t>()) {
        return at + ": too long";
      }
    }
    return "";
  }

 private:
  static bool HasType(const json::value& v, const std::string& type) {
    if (type == "object") return v.is_object();
    if (type == "array") return v.is_array();
    if (type == "string") return v.is_string();
    if (type == "integer") {
      return v.is_int64() || v.is_uint64() ||
             (v.is_double() && std::floor(v.get_double()) == v.get_double());
    }
    if (type == "number") return v.is_number();
    if (type == "boolean") return v.is_bool();
    if (type == "null") return v.is_null();
    return false;
  }

  const json::value& root_;
  boost::system::error_code ec_;
};

std::string Validate(const json::value& schema, const json::value& v) {
  return Validator(schema).Check(schema, v, "$");
}

// The shape of the fragrance advisor's discovery schema, with its synonyms.
const char kAdvisorSchema[] = R"({
  "type": "object", "additionalProperties": false,
  "required": ["families", "notes_liked", "notes_avoided", "intensity", "season", "occasion",
               "budget_max", "is_gift"],
  "properties": {
    "families": {"type": "array",
                 "items": {"type": "string",
                           "enum": ["woody", "fresh", "floral", "oriental", "gourmand", "citrus"]},
                 "x-synonyms": {"woody": ["wood", "cedar"], "fresh": ["clean", "aquatic"]}},
    "notes_liked": {"type": "array", "items": {"$ref": "#/$defs/note"}},
    "notes_avoided": {"type": "array", "items": {"$ref": "#/$defs/note"}},
    "intensity": {"type": "string", "enum": ["light", "moderate", "strong"],
                  "description": "How loud. synonyms: light=subtle|soft; strong=intense|bold|beast mode"},
    "season": {"type": ["string", "null"], "enum": ["spring", "summer", "autumn", "winter", null],
               "x-synonyms": {"autumn": ["fall"]}},
    "occasion": {"type": "string", "enum": ["everyday", "office", "evening", "date_night"]},
    "budget_max": {"type": ["number", "null"], "minimum": 10, "maximum": 500},
    "is_gift": {"type": "boolean", "x-synonyms": ["present", "for my wife", "for him"]}
  },
  "$defs": {"note": {"type": "string",
                     "enum": ["vanilla", "oud", "rose", "musk", "bergamot", "sandalwood"]}}
})";

TEST(SchemaFillTest, AdvisorSchemaFilledFromUserWords) {
  const json::value schema = json::parse(kAdvisorSchema);
  const json::value v = FillSchema(
      schema, {"I'm looking for a present for my wife: something woody or clean for the fall, "
               "nothing too intense. She loves rose and bergamot but hates vanilla and oud. "
               "Budget is under $120, ideally for date night."});
  ASSERT_EQ(Validate(schema, v), "") << json::serialize(v);
  EXPECT_EQ(v.at("families"), json::parse(R"(["woody", "fresh"])")) << json::serialize(v);
  EXPECT_EQ(v.at("notes_liked"), json::parse(R"(["rose", "bergamot"])")) << json::serialize(v);
  EXPECT_EQ(v.at("notes_avoided"), json::parse(R"(["vanilla", "oud"])")) << json::serialize(v);
  EXPECT_EQ(v.at("intensity"), "light") << "'intense' was negated";
  EXPECT_EQ(v.at("season"), "autumn");
  EXPECT_EQ(v.at("occasion"), "date_night");
  EXPECT_EQ(v.at("budget_max").to_number<double>(), 120);
  EXPECT_EQ(v.at("is_gift"), true);
}

TEST(SchemaFillTest, AbsentCuesGiveDefaultsAndNullForNullable) {
  const json::value schema = json::parse(kAdvisorSchema);
  const json::value v = FillSchema(schema, {"hello there"});
  ASSERT_EQ(Validate(schema, v), "") << json::serialize(v);
  EXPECT_EQ(v.at("families"), json::array());
  EXPECT_EQ(v.at("intensity"), "light");
  EXPECT_TRUE(v.at("season").is_null());
  EXPECT_TRUE(v.at("budget_max").is_null());
  EXPECT_EQ(v.at("is_gift"), false);
}

TEST(SchemaFillTest, DescriptionSynonymsAndLatestMessageWins) {
  const json::value schema = json::parse(kAdvisorSchema);
  const json::value v =
      FillSchema(schema, {"something subtle please", "actually make it bold, beast mode even"});
  EXPECT_EQ(v.at("intensity"), "strong");
  const json::value earlier = FillSchema(schema, {"something subtle please", "thanks"});
  EXPECT_EQ(earlier.at("intensity"), "light");
}

TEST(SchemaFillTest, NegatedMentionsNeverReachTheLikedList) {
  const json::value schema = json::parse(kAdvisorSchema);
  const json::value v = FillSchema(schema, {"No musk, no oud. I adore sandalwood though."});
  EXPECT_EQ(v.at("notes_avoided"), json::parse(R"(["musk", "oud"])")) << json::serialize(v);
  EXPECT_EQ(v.at("notes_liked"), json::parse(R"(["sandalwood"])")) << json::serialize(v);
}

TEST(SchemaFillTest, NumbersClampedAndRoundedAndCuedByName) {
  const json::value schema = json::parse(R"({
    "type": "object", "required": ["budget", "age", "rating"],
    "properties": {
      "budget": {"type": "number", "minimum": 10, "maximum": 500},
      "age": {"type": "integer", "minimum": 18},
      "rating": {"type": "integer", "minimum": 1, "maximum": 5}
    }})");
  const json::value v = FillSchema(schema, {"My age: 34.6. And a budget of 1,000 dollars"});
  ASSERT_EQ(Validate(schema, v), "") << json::serialize(v);
  EXPECT_EQ(v.at("budget").to_number<double>(), 500);
  EXPECT_EQ(v.at("age"), 35);
  EXPECT_EQ(v.at("rating"), 1) << "no cue: the minimum";
}

TEST(SchemaFillTest, NestedObjectsArraysAnyOfAndRefsAreValid) {
  const json::value schema = json::parse(R"({
    "type": "object", "additionalProperties": false,
    "required": ["picks", "meta", "mood", "tags", "label", "nothing"],
    "properties": {
      "picks": {"type": "array", "minItems": 2, "maxItems": 3,
                "items": {"$ref": "#/$defs/pick"}},
      "meta": {"type": "object", "additionalProperties": false, "required": ["count", "ok"],
               "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 3},
                              "ok": {"type": "boolean"}}},
      "mood": {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["calm", "bright"]}]},
      "tags": {"type": "array", "minItems": 2, "maxItems": 2, "uniqueItems": true,
               "items": {"type": "string", "enum": ["a", "b", "c"]}},
      "label": {"type": "string", "minLength": 3, "maxLength": 8},
      "nothing": {"type": "null"}
    },
    "$defs": {"pick": {"type": "object", "additionalProperties": false,
                       "required": ["name", "score"],
                       "properties": {"name": {"type": "string"},
                                      "score": {"type": "number", "minimum": 0, "maximum": 1}}}}
  })");
  const json::value v = FillSchema(schema, {"Something bright, ok?"});
  ASSERT_EQ(Validate(schema, v), "") << json::serialize(v);
  EXPECT_EQ(v.at("mood"), "bright");
  EXPECT_EQ(v.at("picks").as_array().size(), 2u);
  EXPECT_EQ(v.at("meta").at("ok"), true);
}

TEST(SchemaFillTest, SelfReferencingSchemaTerminates) {
  const json::value schema = json::parse(R"({
    "type": "object", "required": ["child"],
    "properties": {"child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}})");
  const json::value v = FillSchema(schema, {"hi"});
  EXPECT_EQ(Validate(schema, v), "") << json::serialize(v);
}

TEST(TextCuesTest, NegationScopeEndsAtClauseOrContrast) {
  const std::vector<Word> words = ReadWords("I don't like musk, but rose is fine. Oud too");
  std::vector<std::string> negated;
  for (const Word& w : words) {
    if (w.negated) negated.push_back(w.text);
  }
  EXPECT_EQ(negated, (std::vector<std::string>{"like", "musk"}));
  EXPECT_TRUE(ReadWords("not sure, maybe woody").back().negated == false);
  EXPECT_EQ(WordNumber("1,200").value_or(0), 1200);
  EXPECT_EQ(FindPhrase(ReadWords("I love florals"), PhraseWords("floral")).size(), 1u);
}

}  // namespace
}  // namespace tidepool::llm::sim
