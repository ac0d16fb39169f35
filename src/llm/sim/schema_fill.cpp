#include "llm/sim/schema_fill.h"

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "llm/sim/text_cues.h"

namespace tidepool::llm::sim {
namespace json = boost::json;
namespace {

// Deeper schemas are cut off with a default value instead of recursing without end through
// self-referencing $refs.
constexpr int kMaxDepth = 24;
constexpr int kMaxRefHops = 16;
// How far (in words) a number may be from its cue word: before it ("budget of about 80"), and
// after it ("80 dollars").
constexpr size_t kCueBeforeWindow = 4;
constexpr size_t kCueAfterWindow = 2;
// Free-text strings echo the user's last message, cut at this many characters.
constexpr size_t kFreeTextMaxChars = 200;

// Name parts that say a number is an amount of money, which makes currency signs and words
// like "under" cues for it.
constexpr std::array<std::string_view, 14> kMoneyWords = {
    "budget", "price",   "cost",  "spend", "spending", "usd",    "eur",
    "gbp",    "dollars", "euros", "money", "amount",   "pounds", "dollar"};
constexpr std::array<std::string_view, 17> kMoneyCues = {
    "$",      "under", "below", "less",    "max",   "maximum", "around", "about", "up",
    "budget", "spend", "price", "dollars", "euros", "pounds",  "bucks",  "usd"};
// Name parts too generic to be cues for a boolean ("is_gift" → "gift").
constexpr std::array<std::string_view, 10> kGenericNameParts = {
    "is", "has", "for", "the", "a", "or", "of", "wants", "should", "be"};

template <size_t N>
bool OneOf(std::string_view word, const std::array<std::string_view, N>& list) {
  return std::find(list.begin(), list.end(), word) != list.end();
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Trim(std::string_view s) {
  const auto begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return "";
  const auto end = s.find_last_not_of(" \t\r\n.");
  return std::string(s.substr(begin, end + 1 - begin));
}

// "budgetMaxUsd" / "budget_max_usd" → budget, max, usd.
std::vector<std::string> NameParts(std::string_view name) {
  std::string spaced;
  for (size_t i = 0; i < name.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    if (std::isupper(c) && i > 0 && std::islower(static_cast<unsigned char>(name[i - 1]))) {
      spaced += ' ';
    }
    spaced += static_cast<char>(c);
  }
  return PhraseWords(spaced);
}

// Synonyms a schema author attached to a property: per enum value, and plain cue words.
struct Synonyms {
  std::map<std::string, std::vector<std::string>> by_value;  // lower-cased enum value → phrases
  std::vector<std::string> cues;
};

void ParseDescriptionSynonyms(std::string_view description, Synonyms* out) {
  const std::string lower = Lower(description);
  const auto at = lower.find("synonyms:");
  if (at == std::string::npos) return;
  std::string_view rest(description);
  rest.remove_prefix(at + std::string_view("synonyms:").size());
  rest = rest.substr(0, rest.find('\n'));
  while (!rest.empty()) {
    const auto semi = rest.find(';');
    const std::string_view item = rest.substr(0, semi);
    const auto eq = item.find('=');
    std::string_view alternatives = eq == std::string_view::npos ? item : item.substr(eq + 1);
    std::vector<std::string> phrases;
    while (!alternatives.empty()) {
      const auto bar = alternatives.find('|');
      std::string phrase = Trim(alternatives.substr(0, bar));
      if (!phrase.empty()) phrases.push_back(std::move(phrase));
      if (bar == std::string_view::npos) break;
      alternatives.remove_prefix(bar + 1);
    }
    if (eq == std::string_view::npos) {
      out->cues.insert(out->cues.end(), phrases.begin(), phrases.end());
    } else {
      auto& list = out->by_value[Lower(Trim(item.substr(0, eq)))];
      list.insert(list.end(), phrases.begin(), phrases.end());
    }
    if (semi == std::string_view::npos) break;
    rest.remove_prefix(semi + 1);
  }
}

void CollectSynonyms(const json::object* schema, Synonyms* out) {
  if (schema == nullptr) return;
  if (const json::value* x = schema->if_contains("x-synonyms")) {
    if (x->is_object()) {
      for (const auto& [key, phrases] : x->get_object()) {
        auto& list = out->by_value[Lower(key)];
        if (phrases.is_string()) list.emplace_back(phrases.get_string());
        if (!phrases.is_array()) continue;
        for (const json::value& p : phrases.get_array()) {
          if (p.is_string()) list.emplace_back(p.get_string());
        }
      }
    } else if (x->is_array()) {
      for (const json::value& p : x->get_array()) {
        if (p.is_string()) out->cues.emplace_back(p.get_string());
      }
    }
  }
  if (const json::value* d = schema->if_contains("description"); d && d->is_string()) {
    ParseDescriptionSynonyms(d->get_string(), out);
  }
}

struct Mention {
  size_t message = 0;  // index into the corpus (oldest first)
  size_t position = 0;
  bool negated = false;
};

// The user's messages as words, oldest first.
struct Corpus {
  std::vector<std::vector<Word>> messages;

  std::vector<Mention> Find(const std::vector<std::string>& phrase) const {
    std::vector<Mention> out;
    for (size_t m = 0; m < messages.size(); ++m) {
      for (size_t pos : FindPhrase(messages[m], phrase)) {
        out.push_back({.message = m, .position = pos, .negated = messages[m][pos].negated});
      }
    }
    return out;
  }
};

// The property being filled, as its parent object names it.
struct Slot {
  std::string name;
  bool avoid = false;  // the name contains "avoid": it takes negated mentions only
  const json::object* property_schema = nullptr;
};

struct Filled {
  json::value value;
  bool cued = false;  // taken from the user's words, not a default
};

class Filler {
 public:
  Filler(const json::value& root, Corpus corpus) : root_(root), corpus_(std::move(corpus)) {}

  Filled Fill(const json::value& schema_in, const Slot& slot, int depth) {
    const json::value* schema = Resolve(schema_in);
    if (schema == nullptr || !schema->is_object() || depth > kMaxDepth) return {nullptr, false};
    const json::object& s = schema->get_object();
    if (const json::value* c = s.if_contains("const")) return {*c, false};
    for (const char* key : {"anyOf", "oneOf"}) {
      if (const json::value* branches = s.if_contains(key); branches && branches->is_array()) {
        return FillUnion(branches->get_array(), slot, depth);
      }
    }
    if (const json::value* all = s.if_contains("allOf");
        all && all->is_array() && !all->get_array().empty()) {
      return Fill(all->get_array().front(), slot, depth + 1);
    }

    bool nullable = false;
    std::string type = TypeOf(s, &nullable);
    Filled out;
    if (type == "object") {
      out = FillObject(s, depth);
    } else if (type == "array") {
      out = FillArray(s, slot, depth);
    } else if (type == "string") {
      out = FillString(s, slot);
    } else if (type == "number" || type == "integer") {
      out = FillNumber(s, slot, type == "integer");
    } else if (type == "boolean") {
      out = FillBoolean(s, slot);
    } else {
      return {nullptr, false};
    }
    if (nullable && !out.cued) return {nullptr, false};
    return out;
  }

 private:
  // Follows local $refs; nullptr when one does not resolve.
  const json::value* Resolve(const json::value& schema) const {
    const json::value* s = &schema;
    for (int hop = 0; hop < kMaxRefHops; ++hop) {
      if (!s->is_object()) return s;
      const json::value* ref = s->get_object().if_contains("$ref");
      if (ref == nullptr || !ref->is_string()) return s;
      const std::string_view target = ref->get_string();
      if (target == "#") {
        s = &root_;
        continue;
      }
      if (target.substr(0, 1) != "#") return nullptr;
      boost::system::error_code ec;
      s = root_.find_pointer(target.substr(1), ec);
      if (ec || s == nullptr) return nullptr;
    }
    return nullptr;
  }

  // The one non-null type to produce; `nullable` when "null" is allowed too.
  static std::string TypeOf(const json::object& s, bool* nullable) {
    std::vector<std::string> types;
    if (const json::value* t = s.if_contains("type")) {
      if (t->is_string()) types.emplace_back(t->get_string());
      if (t->is_array()) {
        for (const json::value& v : t->get_array()) {
          if (v.is_string()) types.emplace_back(v.get_string());
        }
      }
    }
    if (const json::value* n = s.if_contains("nullable"); n && n->is_bool() && n->get_bool()) {
      *nullable = true;
    }
    std::string chosen;
    for (const std::string& t : types) {
      if (t == "null") {
        *nullable = true;
      } else if (chosen.empty()) {
        chosen = t;
      }
    }
    if (!chosen.empty()) return chosen;
    if (!types.empty()) return "null";
    if (const json::value* e = s.if_contains("enum"); e && e->is_array()) {
      for (const json::value& v : e->get_array()) {
        if (v.is_string()) return "string";
        if (v.is_int64() || v.is_uint64()) return "integer";
        if (v.is_double()) return "number";
        if (v.is_bool()) return "boolean";
      }
    }
    if (s.contains("properties")) return "object";
    if (s.contains("items")) return "array";
    return "string";
  }

  Filled FillUnion(const json::array& branches, const Slot& slot, int depth) {
    std::optional<Filled> first;
    bool has_null = false;
    for (const json::value& branch : branches) {
      const json::value* b = Resolve(branch);
      if (b == nullptr || !b->is_object()) continue;
      bool nullable = false;
      if (TypeOf(b->get_object(), &nullable) == "null") {
        has_null = true;
        continue;
      }
      Filled f = Fill(branch, slot, depth + 1);
      if (f.cued) return f;
      if (!first) first = std::move(f);
    }
    if (has_null) return {nullptr, false};
    if (first) return std::move(*first);
    return {nullptr, false};
  }

  Filled FillObject(const json::object& s, int depth) {
    json::object out;
    bool cued = false;
    const json::value* props = s.if_contains("properties");
    if (props != nullptr && props->is_object()) {
      for (const auto& [name, prop] : props->get_object()) {
        Slot slot{.name = std::string(name),
                  .avoid = Lower(name).find("avoid") != std::string::npos,
                  .property_schema = Resolve(prop) != nullptr && Resolve(prop)->is_object()
                                         ? &Resolve(prop)->get_object()
                                         : nullptr};
        Filled f = Fill(prop, slot, depth + 1);
        cued = cued || f.cued;
        out[name] = std::move(f.value);
      }
    }
    // Required names without a schema of their own can hold anything.
    if (const json::value* req = s.if_contains("required"); req && req->is_array()) {
      for (const json::value& name : req->get_array()) {
        if (name.is_string() && !out.contains(name.get_string())) out[name.get_string()] = nullptr;
      }
    }
    return {std::move(out), cued};
  }

  static std::optional<int64_t> IntField(const json::object& s, const char* key) {
    const json::value* v = s.if_contains(key);
    if (v == nullptr) return std::nullopt;
    if (v->is_int64()) return v->get_int64();
    if (v->is_uint64()) return static_cast<int64_t>(v->get_uint64());
    if (v->is_double()) return static_cast<int64_t>(v->get_double());
    return std::nullopt;
  }

  static std::optional<double> NumberField(const json::object& s, const char* key) {
    const json::value* v = s.if_contains(key);
    if (v == nullptr || !v->is_number()) return std::nullopt;
    return v->to_number<double>();
  }

  // The enum's string values and the phrases that name each, synonyms included.
  struct EnumChoice {
    std::string value;
    std::vector<std::vector<std::string>> phrases;
  };
  static std::vector<EnumChoice> EnumChoices(const json::array& values, const Synonyms& syn) {
    std::vector<EnumChoice> out;
    for (const json::value& v : values) {
      if (!v.is_string()) continue;
      EnumChoice c{.value = std::string(v.get_string()), .phrases = {}};
      c.phrases.push_back(PhraseWords(c.value));
      if (auto it = syn.by_value.find(Lower(c.value)); it != syn.by_value.end()) {
        for (const std::string& p : it->second) c.phrases.push_back(PhraseWords(p));
      }
      out.push_back(std::move(c));
    }
    return out;
  }

  // Mentions of `choice` this slot may use: negated ones for an avoid list, others otherwise.
  std::vector<Mention> UsableMentions(const EnumChoice& choice, const Slot& slot) const {
    std::vector<Mention> out;
    for (const auto& phrase : choice.phrases) {
      for (const Mention& m : corpus_.Find(phrase)) {
        if (m.negated == slot.avoid) out.push_back(m);
      }
    }
    return out;
  }

  Synonyms SlotSynonyms(const json::object& s, const Slot& slot) const {
    Synonyms syn;
    CollectSynonyms(&s, &syn);
    if (slot.property_schema != &s) CollectSynonyms(slot.property_schema, &syn);
    return syn;
  }

  Filled FillArray(const json::object& s, const Slot& slot, int depth) {
    const size_t min_items =
        static_cast<size_t>(std::max<int64_t>(0, IntField(s, "minItems").value_or(0)));
    const size_t max_items = static_cast<size_t>(std::max<int64_t>(
        0, IntField(s, "maxItems").value_or(std::numeric_limits<int64_t>::max())));
    const json::value* items = s.if_contains("items");
    const json::value* item_schema = items != nullptr ? Resolve(*items) : nullptr;
    const json::object* item_obj =
        item_schema != nullptr && item_schema->is_object() ? &item_schema->get_object() : nullptr;
    const json::value* item_enum = item_obj != nullptr ? item_obj->if_contains("enum") : nullptr;

    json::array out;
    if (item_enum != nullptr && item_enum->is_array()) {
      Synonyms syn = SlotSynonyms(s, slot);
      CollectSynonyms(item_obj, &syn);
      // Every mentioned value, in order of first mention.
      std::vector<std::pair<std::pair<size_t, size_t>, std::string>> found;
      const std::vector<EnumChoice> choices = EnumChoices(item_enum->get_array(), syn);
      for (const EnumChoice& c : choices) {
        std::vector<Mention> mentions = UsableMentions(c, slot);
        if (mentions.empty()) continue;
        auto first = std::min_element(mentions.begin(), mentions.end(), [](auto& a, auto& b) {
          return std::pair(a.message, a.position) < std::pair(b.message, b.position);
        });
        found.push_back({{first->message, first->position}, c.value});
      }
      std::sort(found.begin(), found.end());
      std::set<std::string> used;
      for (const auto& [where, value] : found) {
        if (out.size() >= max_items) break;
        out.emplace_back(value);
        used.insert(value);
      }
      const bool cued = !out.empty();
      for (const EnumChoice& c : choices) {
        if (out.size() >= min_items) break;
        if (used.insert(c.value).second) out.emplace_back(c.value);
      }
      while (out.size() < min_items && !choices.empty()) out.emplace_back(choices.front().value);
      return {std::move(out), cued};
    }
    if (items == nullptr) {
      while (out.size() < min_items) out.emplace_back("");
      return {std::move(out), false};
    }
    Filled one =
        Fill(*items, Slot{.name = slot.name, .avoid = slot.avoid, .property_schema = item_obj},
             depth + 1);
    const size_t count = std::min(max_items, std::max(min_items, one.cued ? size_t{1} : size_t{0}));
    for (size_t i = 0; i < count; ++i) out.push_back(one.value);
    return {std::move(out), one.cued};
  }

  Filled FillString(const json::object& s, const Slot& slot) {
    if (const json::value* e = s.if_contains("enum"); e && e->is_array()) {
      const Synonyms syn = SlotSynonyms(s, slot);
      const std::vector<EnumChoice> choices = EnumChoices(e->get_array(), syn);
      // The latest message with a mention wins; within it, the earliest mention.
      std::optional<std::pair<std::pair<size_t, size_t>, std::string>> best;
      for (const EnumChoice& c : choices) {
        for (const Mention& m : UsableMentions(c, slot)) {
          // Later message first, then earlier position: order by (-message, position).
          auto key = std::pair(corpus_.messages.size() - m.message, m.position);
          if (!best || key < best->first) best = {{key, c.value}};
        }
      }
      if (best) return {json::string(best->second), true};
      if (!e->get_array().empty()) return {e->get_array().front(), false};
      return {"", false};
    }
    const size_t max_length = static_cast<size_t>(
        std::max<int64_t>(0, IntField(s, "maxLength").value_or(kFreeTextMaxChars)));
    const size_t min_length =
        static_cast<size_t>(std::max<int64_t>(0, IntField(s, "minLength").value_or(0)));
    std::string text = last_message_text_;
    // Length is counted in code points; cut on a code point boundary.
    size_t code_points = 0;
    size_t cut = 0;
    while (cut < text.size() && code_points < std::min(max_length, kFreeTextMaxChars)) {
      ++cut;
      while (cut < text.size() && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) ++cut;
      ++code_points;
    }
    text.resize(cut);
    while (code_points < min_length) {
      text += '.';
      ++code_points;
    }
    return {json::string(text), false};
  }

  std::vector<std::vector<std::string>> ScalarCues(const json::object& s, const Slot& slot,
                                                   bool include_generic) const {
    std::vector<std::vector<std::string>> cues;
    for (const std::string& part : NameParts(slot.name)) {
      if (!include_generic && OneOf(part, kGenericNameParts)) continue;
      cues.push_back({part});
    }
    for (const std::string& c : SlotSynonyms(s, slot).cues) cues.push_back(PhraseWords(c));
    return cues;
  }

  Filled FillNumber(const json::object& s, const Slot& slot, bool integer) {
    std::vector<std::vector<std::string>> cues = ScalarCues(s, slot, /*include_generic=*/true);
    bool money = false;
    for (const auto& c : cues) {
      for (const std::string& w : c) money = money || OneOf(w, kMoneyWords);
    }
    if (money) {
      for (std::string_view c : kMoneyCues) cues.push_back({std::string(c)});
    }
    std::optional<double> found;
    // The latest message with a cued number wins; within it, the number closest to a cue.
    for (size_t m = corpus_.messages.size(); m-- > 0 && !found;) {
      const std::vector<Word>& words = corpus_.messages[m];
      std::vector<size_t> cue_positions;
      for (const auto& c : cues) {
        for (size_t pos : FindPhrase(words, c)) cue_positions.push_back(pos + c.size() - 1);
      }
      size_t best_distance = std::numeric_limits<size_t>::max();
      for (size_t i = 0; i < words.size(); ++i) {
        const std::optional<double> n = WordNumber(words[i].text);
        if (!n) continue;
        for (size_t cue : cue_positions) {
          const bool before = cue < i && i - cue <= kCueBeforeWindow;
          const bool after = cue > i && cue - i <= kCueAfterWindow;
          if ((!before && !after) || words[cue].clause != words[i].clause) continue;
          const size_t distance = before ? i - cue : cue - i;
          if (distance < best_distance) {
            best_distance = distance;
            found = *n;
          }
        }
      }
    }
    double lo = -std::numeric_limits<double>::infinity();
    double hi = std::numeric_limits<double>::infinity();
    if (auto v = NumberField(s, "minimum")) lo = *v;
    if (auto v = NumberField(s, "maximum")) hi = *v;
    // Exclusive bounds: one unit (integers) or a small step inside.
    const double step = integer ? 1.0 : 0.01;
    if (auto v = NumberField(s, "exclusiveMinimum")) lo = std::max(lo, *v + step);
    if (auto v = NumberField(s, "exclusiveMaximum")) hi = std::min(hi, *v - step);
    if (integer) {
      lo = std::ceil(lo);
      hi = std::floor(hi);
    }
    double value = found.value_or(std::isfinite(lo) ? lo : 0.0);
    value = std::clamp(value, lo, std::max(lo, hi));
    if (integer) return {static_cast<int64_t>(std::llround(value)), found.has_value()};
    return {value, found.has_value()};
  }

  Filled FillBoolean(const json::object& s, const Slot& slot) {
    for (size_t m = corpus_.messages.size(); m-- > 0;) {
      for (const auto& cue : ScalarCues(s, slot, /*include_generic=*/false)) {
        const std::vector<size_t> hits = FindPhrase(corpus_.messages[m], cue);
        if (hits.empty()) continue;
        return {!corpus_.messages[m][hits.front()].negated, true};
      }
    }
    return {false, false};
  }

 public:
  std::string last_message_text_;

 private:
  const json::value& root_;
  Corpus corpus_;
};

}  // namespace

json::value FillSchema(const json::value& schema, const std::vector<std::string>& user_messages) {
  Corpus corpus;
  for (const std::string& m : user_messages) corpus.messages.push_back(ReadWords(m));
  Filler filler(schema, std::move(corpus));
  if (!user_messages.empty()) filler.last_message_text_ = user_messages.back();
  const json::object* root_obj = schema.is_object() ? &schema.get_object() : nullptr;
  return filler.Fill(schema, Slot{.name = "", .avoid = false, .property_schema = root_obj}, 0)
      .value;
}

}  // namespace tidepool::llm::sim
