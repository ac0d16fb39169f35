#include "pipeline/tools/scent_scoring.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <system_error>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>

namespace tidepool::pipeline::tools {
namespace json = boost::json;

namespace {

constexpr int kCatalogFormatVersion = 1;
constexpr int kMinIntensity = 1;
constexpr int kMaxIntensity = 5;
constexpr int kMaxPopularity = 100;
constexpr int64_t kCentsPerDollar = 100;
// Larger prices are a typo (or cents written as dollars), and staying far below INT64_MAX keeps
// the penalty arithmetic free of overflow.
constexpr double kMaxPriceDollars = 1'000'000.0;
// A price must be a whole number of cents; this absorbs binary floating-point noise only.
constexpr double kCentsEpsilon = 1e-6;

constexpr std::string_view kCatalogKeys[] = {"version",  "name",    "description", "currency",
                                             "families", "seasons", "occasions",   "items"};
constexpr std::string_view kItemKeys[] = {
    "id",      "name",      "house", "family",  "facets",     "notes",      "intensity",
    "seasons", "occasions", "price", "size_ml", "popularity", "description"};

bool Contains(const std::vector<std::string>& values, std::string_view value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

template <size_t N>
bool IsKnownKey(const std::string_view (&keys)[N], std::string_view key) {
  return std::find(std::begin(keys), std::end(keys), key) != std::end(keys);
}

std::string Quote(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

// Lower-cased and trimmed: the LLM may write "Woody " where the catalog says "woody".
std::string Normalize(std::string_view raw) {
  size_t begin = 0;
  size_t end = raw.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(raw[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(raw[end - 1]))) --end;
  std::string out(raw.substr(begin, end - begin));
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::optional<double> AsNumber(const json::value& v) {
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  if (v.is_double()) return v.get_double();
  return std::nullopt;
}

// An integer-valued JSON number (3 or 3.0), or nullopt.
std::optional<int64_t> AsInteger(const json::value& v) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64()) {
    if (v.get_uint64() > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(v.get_uint64());
  }
  if (v.is_double()) {
    const double d = v.get_double();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 1e15) return std::nullopt;
    return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

// Dollars with at most two decimals → cents; nullopt when not a positive such amount.
std::optional<int64_t> DollarsToCents(double dollars) {
  if (!std::isfinite(dollars) || dollars <= 0 || dollars > kMaxPriceDollars) return std::nullopt;
  const double scaled = dollars * static_cast<double>(kCentsPerDollar);
  const double rounded = std::round(scaled);
  if (std::fabs(scaled - rounded) > kCentsEpsilon * std::max(1.0, scaled)) return std::nullopt;
  return static_cast<int64_t>(rounded);
}

bool IsValidId(std::string_view id) {
  if (id.empty()) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

// A vocabulary word: non-empty, already normalized, so matching can compare bytes.
bool IsVocabularyWord(std::string_view word) {
  return !word.empty() && Normalize(word) == word;
}

// ---- catalog parsing

class ItemContext {
 public:
  ItemContext(size_t index, std::string id) : index_(index), id_(std::move(id)) {}
  void set_id(std::string id) { id_ = std::move(id); }

  Status Error(std::string_view field, std::string_view problem) const {
    std::string where = "item " + std::to_string(index_);
    if (!id_.empty()) where += " (" + Quote(id_) + ")";
    return Status::InvalidArgument(where + ": field " + Quote(field) + ": " + std::string(problem));
  }

 private:
  size_t index_;
  std::string id_;
};

Result<std::string> RequireString(const json::object& obj, std::string_view field,
                                  const ItemContext& ctx) {
  const json::value* v = obj.if_contains(field);
  if (v == nullptr) return ctx.Error(field, "missing");
  if (!v->is_string() || v->get_string().empty()) {
    return ctx.Error(field, "must be a non-empty string");
  }
  return std::string(v->get_string());
}

// A list of vocabulary words, unique, each in `allowed` (when given).
Result<std::vector<std::string>> RequireWordList(const json::object& obj, std::string_view field,
                                                 bool required, bool allow_empty,
                                                 const std::vector<std::string>* allowed,
                                                 const ItemContext& ctx) {
  std::vector<std::string> out;
  const json::value* v = obj.if_contains(field);
  if (v == nullptr) {
    if (required) return ctx.Error(field, "missing");
    return out;
  }
  if (!v->is_array()) return ctx.Error(field, "must be an array of strings");
  for (const json::value& e : v->get_array()) {
    if (!e.is_string() || !IsVocabularyWord(e.get_string())) {
      return ctx.Error(field, "entries must be non-empty lower-case strings");
    }
    std::string word(e.get_string());
    if (allowed != nullptr && !Contains(*allowed, word)) {
      return ctx.Error(field,
                       Quote(word) + " is not declared in the catalog's " + std::string(field));
    }
    if (Contains(out, word)) return ctx.Error(field, Quote(word) + " appears twice");
    out.push_back(std::move(word));
  }
  if (out.empty() && !allow_empty) return ctx.Error(field, "must not be empty");
  return out;
}

Result<int> RequireIntInRange(const json::object& obj, std::string_view field, int low, int high,
                              const ItemContext& ctx) {
  const json::value* v = obj.if_contains(field);
  const std::string range =
      "must be an integer from " + std::to_string(low) + " to " + std::to_string(high);
  if (v == nullptr) return ctx.Error(field, "missing");
  const std::optional<int64_t> n = AsInteger(*v);
  if (!n || *n < low || *n > high) return ctx.Error(field, range);
  return static_cast<int>(*n);
}

Result<std::vector<NoteTier>> ParseNotes(const json::object& obj, const ItemContext& ctx) {
  constexpr std::string_view kField = "notes";
  const json::value* v = obj.if_contains(kField);
  if (v == nullptr) return ctx.Error(kField, "missing");
  if (!v->is_object()) return ctx.Error(kField, "must be an object of tier -> [notes]");
  std::vector<NoteTier> tiers;
  std::vector<std::string> seen;
  for (const auto& [tier_name, tier_notes] : v->get_object()) {
    const std::string tier_field = "notes." + std::string(tier_name);
    if (!tier_notes.is_array()) return ctx.Error(tier_field, "must be an array of strings");
    NoteTier tier{std::string(tier_name), {}};
    for (const json::value& e : tier_notes.get_array()) {
      if (!e.is_string() || !IsVocabularyWord(e.get_string())) {
        return ctx.Error(tier_field, "entries must be non-empty lower-case strings");
      }
      std::string note(e.get_string());
      if (Contains(seen, note)) return ctx.Error(tier_field, Quote(note) + " appears twice");
      seen.push_back(note);
      tier.notes.push_back(std::move(note));
    }
    tiers.push_back(std::move(tier));
  }
  if (seen.empty()) return ctx.Error(kField, "must name at least one note");
  return tiers;
}

Result<CatalogItem> ParseItem(const json::value& v, size_t index, const Catalog& catalog) {
  ItemContext ctx(index, "");
  if (!v.is_object()) return ctx.Error("(item)", "must be an object");
  const json::object& obj = v.get_object();

  CatalogItem item;
  TP_ASSIGN_OR_RETURN(item.id, RequireString(obj, "id", ctx));
  if (!IsValidId(item.id)) return ctx.Error("id", "must match [a-z0-9-]+");
  ctx.set_id(item.id);
  for (const auto& [key, unused] : obj) {
    if (!IsKnownKey(kItemKeys, key)) return ctx.Error(key, "unknown field");
  }
  TP_ASSIGN_OR_RETURN(item.name, RequireString(obj, "name", ctx));
  TP_ASSIGN_OR_RETURN(item.house, RequireString(obj, "house", ctx));
  TP_ASSIGN_OR_RETURN(item.family, RequireString(obj, "family", ctx));
  if (!Contains(catalog.families, item.family)) {
    return ctx.Error("family", Quote(item.family) + " is not declared in the catalog's families");
  }
  TP_ASSIGN_OR_RETURN(item.facets, RequireWordList(obj, "facets", /*required=*/false,
                                                   /*allow_empty=*/true, &catalog.families, ctx));
  if (Contains(item.facets, item.family)) {
    return ctx.Error("facets", "repeats the primary family " + Quote(item.family));
  }
  TP_ASSIGN_OR_RETURN(item.notes, ParseNotes(obj, ctx));
  TP_ASSIGN_OR_RETURN(item.intensity,
                      RequireIntInRange(obj, "intensity", kMinIntensity, kMaxIntensity, ctx));
  TP_ASSIGN_OR_RETURN(item.seasons, RequireWordList(obj, "seasons", /*required=*/true,
                                                    /*allow_empty=*/false, &catalog.seasons, ctx));
  TP_ASSIGN_OR_RETURN(item.occasions,
                      RequireWordList(obj, "occasions", /*required=*/true, /*allow_empty=*/false,
                                      &catalog.occasions, ctx));

  const json::value* price = obj.if_contains("price");
  if (price == nullptr) return ctx.Error("price", "missing");
  const std::optional<double> dollars = AsNumber(*price);
  const std::optional<int64_t> cents = dollars ? DollarsToCents(*dollars) : std::nullopt;
  if (!cents) return ctx.Error("price", "must be a positive number with at most 2 decimals");
  item.price_cents = *cents;

  if (const json::value* size = obj.if_contains("size_ml"); size != nullptr) {
    const std::optional<int64_t> ml = AsInteger(*size);
    if (!ml || *ml <= 0 || *ml > INT32_MAX) {
      return ctx.Error("size_ml", "must be a positive integer");
    }
    item.size_ml = static_cast<int>(*ml);
  }
  TP_ASSIGN_OR_RETURN(item.popularity,
                      RequireIntInRange(obj, "popularity", 0, kMaxPopularity, ctx));
  TP_ASSIGN_OR_RETURN(item.description, RequireString(obj, "description", ctx));
  return item;
}

Result<std::vector<std::string>> ParseVocabulary(const json::object& obj, std::string_view field) {
  const json::value* v = obj.if_contains(field);
  const Status bad = Status::InvalidArgument(
      "catalog: field " + Quote(field) +
      ": must be a non-empty array of unique, non-empty lower-case strings");
  if (v == nullptr || !v->is_array() || v->get_array().empty()) return bad;
  std::vector<std::string> words;
  for (const json::value& e : v->get_array()) {
    if (!e.is_string() || !IsVocabularyWord(e.get_string())) return bad;
    std::string word(e.get_string());
    if (Contains(words, word)) return bad;
    words.push_back(std::move(word));
  }
  return words;
}

// ---- preferences parsing

Status FieldTypeError(std::string_view field, std::string_view expected) {
  return Status::InvalidArgument("discovery: field " + Quote(field) + ": must be " +
                                 std::string(expected));
}

// Null, missing or an array of strings; the strings normalized.
Result<std::vector<std::string>> OptionalStringList(const json::object& obj,
                                                    std::string_view field) {
  std::vector<std::string> out;
  const json::value* v = obj.if_contains(field);
  if (v == nullptr || v->is_null()) return out;
  if (!v->is_array()) return FieldTypeError(field, "an array of strings or null");
  for (const json::value& e : v->get_array()) {
    if (!e.is_string()) return FieldTypeError(field, "an array of strings or null");
    out.push_back(Normalize(e.get_string()));
  }
  return out;
}

// Null, missing or a string; normalized. An empty string counts as "not said".
Result<std::optional<std::string>> OptionalString(const json::object& obj, std::string_view field) {
  const json::value* v = obj.if_contains(field);
  if (v == nullptr || v->is_null()) return std::optional<std::string>();
  if (!v->is_string()) return FieldTypeError(field, "a string or null");
  std::string s = Normalize(v->get_string());
  if (s.empty()) return std::optional<std::string>();
  return std::optional<std::string>(std::move(s));
}

// Keeps the known, first-seen words of `raw`; reports the unknown ones.
std::vector<std::string> KnownWords(const std::vector<std::string>& raw,
                                    const std::vector<std::string>& vocabulary,
                                    std::string_view kind, std::vector<std::string>& warnings) {
  std::vector<std::string> out;
  for (const std::string& word : raw) {
    if (word.empty() || Contains(out, word)) continue;
    if (!Contains(vocabulary, word)) {
      warnings.push_back("unknown " + std::string(kind) + " " + Quote(word) + " ignored");
      continue;
    }
    out.push_back(word);
  }
  return out;
}

Status ParseIntensity(const json::object& obj, Preferences& prefs) {
  constexpr std::string_view kField = "intensity";
  const json::value* v = obj.if_contains(kField);
  if (v == nullptr || v->is_null()) return Status::Ok();
  if (v->is_string()) {
    const std::string label = Normalize(v->get_string());
    if (label.empty()) return Status::Ok();
    if (label == "light") {
      prefs.intensity = IntensityRange{1, 2, label};
    } else if (label == "moderate") {
      prefs.intensity = IntensityRange{3, 3, label};
    } else if (label == "strong") {
      prefs.intensity = IntensityRange{4, 5, label};
    } else {
      prefs.warnings.push_back("unknown intensity " + Quote(label) + " ignored");
    }
    return Status::Ok();
  }
  if (v->is_number()) {
    const std::optional<int64_t> n = AsInteger(*v);
    if (n && *n >= kMinIntensity && *n <= kMaxIntensity) {
      const int level = static_cast<int>(*n);
      prefs.intensity = IntensityRange{level, level, std::to_string(level)};
    } else {
      prefs.warnings.push_back("intensity " + json::serialize(*v) +
                               " ignored: must be an integer from 1 to 5");
    }
    return Status::Ok();
  }
  return FieldTypeError(kField, "\"light\", \"moderate\", \"strong\", an integer 1..5 or null");
}

Status ParseBudget(const json::object& obj, Preferences& prefs) {
  constexpr std::string_view kField = "budget_max";
  const json::value* v = obj.if_contains(kField);
  if (v == nullptr || v->is_null()) return Status::Ok();
  const std::optional<double> dollars = AsNumber(*v);
  if (!dollars) return FieldTypeError(kField, "a number or null");
  if (!std::isfinite(*dollars) || *dollars <= 0 || *dollars > kMaxPriceDollars) {
    prefs.warnings.push_back("budget_max " + json::serialize(*v) + " ignored: must be positive");
    return Status::Ok();
  }
  // A budget is a ceiling; rounding half a cent in the shopper's favour costs nothing.
  prefs.budget_max_cents =
      static_cast<int64_t>(std::round(*dollars * static_cast<double>(kCentsPerDollar)));
  return Status::Ok();
}

// ---- scoring

std::string IntensityReason(int intensity, const IntensityRange& wanted, int distance) {
  const std::string level = "intensity " + std::to_string(intensity);
  if (distance == 0) return level + " fits " + wanted.label;
  if (distance == 1) return level + " close to " + wanted.label;
  return level + " far from " + wanted.label;
}

int IntensityPoints(int distance) {
  if (distance == 0) return kIntensityExactPoints;
  if (distance == 1) return kIntensityNearPoints;
  if (distance == 2) return kIntensityFarPoints;
  return kIntensityVeryFarPoints;
}

// Ceil(a / b) for a >= 0, b > 0.
int64_t CeilDiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Returns the reason an item is excluded, or an empty string.
std::string ExclusionReason(const CatalogItem& item, const Preferences& prefs) {
  std::vector<std::string> reasons;
  std::string avoided;
  for (const std::string& note : prefs.notes_avoided) {
    if (!item.HasNote(note)) continue;
    avoided += (avoided.empty() ? "" : ", ") + note;
  }
  if (!avoided.empty()) reasons.push_back("contains avoided note " + avoided);
  if (prefs.budget_max_cents) {
    const int64_t budget = *prefs.budget_max_cents;
    const int64_t over = item.price_cents - budget;
    const int64_t margin = budget * kBudgetMarginPercent / 100;
    if (over > margin) {
      reasons.push_back("over budget by " + FormatDollars(over) + " (more than " +
                        std::to_string(kBudgetMarginPercent) + "% over " + FormatDollars(budget) +
                        ")");
    }
  }
  std::string joined;
  for (const std::string& r : reasons) joined += (joined.empty() ? "" : "; ") + r;
  return joined;
}

// REQUIRES: ExclusionReason(item, prefs) is empty.
ScoredItem ScoreItem(const CatalogItem& item, const Preferences& prefs) {
  ScoredItem scored;
  scored.item = &item;
  auto add = [&scored](std::string reason, int points) {
    scored.points.push_back(Point{std::move(reason), points});
  };

  if (Contains(prefs.families, item.family)) {
    add("family " + item.family + " matches", kFamilyMatchPoints);
  }
  for (const std::string& facet : item.facets) {
    if (Contains(prefs.families, facet)) add("facet " + facet + " matches", kFacetMatchPoints);
  }
  for (const std::string& note : prefs.notes_liked) {
    if (item.HasNote(note)) add("note " + note + " liked", kLikedNotePoints);
  }
  if (prefs.intensity) {
    const IntensityRange& wanted = *prefs.intensity;
    int distance = 0;
    if (item.intensity < wanted.low) distance = wanted.low - item.intensity;
    if (item.intensity > wanted.high) distance = item.intensity - wanted.high;
    add(IntensityReason(item.intensity, wanted, distance), IntensityPoints(distance));
  }
  if (prefs.season && Contains(item.seasons, *prefs.season)) {
    add("season " + *prefs.season, kSeasonMatchPoints);
  }
  if (prefs.occasion && Contains(item.occasions, *prefs.occasion)) {
    add("occasion " + *prefs.occasion, kOccasionMatchPoints);
  }
  if (prefs.budget_max_cents) {
    const int64_t budget = *prefs.budget_max_cents;
    const int64_t over = item.price_cents - budget;
    if (over <= 0) {
      add("within budget of " + FormatDollars(budget), 0);
    } else {
      // Not excluded, so 0 < over <= margin and margin > 0.
      const int64_t margin = budget * kBudgetMarginPercent / 100;
      add("over budget by " + FormatDollars(over),
          -static_cast<int>(CeilDiv(kBudgetMaxPenalty * over, margin)));
    }
  }
  const int popularity_points = item.popularity * kPopularityMaxPoints / kMaxPopularity;
  if (popularity_points > 0) {
    add("popularity " + std::to_string(item.popularity) + "/100", popularity_points);
  }
  const int gift_points = item.popularity * kGiftPopularityMaxPoints / kMaxPopularity;
  if (prefs.gift_or_self == GiftOrSelf::kGift && gift_points > 0) {
    add("crowd-pleaser for a gift", gift_points);
  }
  for (const Point& p : scored.points) scored.score += p.points;
  return scored;
}

// The total order of docs/scent-advisor.md: score desc, popularity desc, price asc, id asc.
bool RanksBefore(const ScoredItem& a, const ScoredItem& b) {
  if (a.score != b.score) return a.score > b.score;
  if (a.item->popularity != b.item->popularity) return a.item->popularity > b.item->popularity;
  if (a.item->price_cents != b.item->price_cents) {
    return a.item->price_cents < b.item->price_cents;
  }
  return a.item->id < b.item->id;
}

json::array ToJsonArray(const std::vector<std::string>& values) {
  json::array out;
  for (const std::string& v : values) out.emplace_back(v);
  return out;
}

json::object ResultToJson(const ScoredItem& scored) {
  const CatalogItem& item = *scored.item;
  json::object notes;
  for (const NoteTier& tier : item.notes) notes[tier.tier] = ToJsonArray(tier.notes);
  json::array points;
  for (const Point& p : scored.points) {
    points.push_back(json::object{{"reason", p.reason}, {"points", p.points}});
  }
  json::object out{
      {"id", item.id},
      {"name", item.name},
      {"house", item.house},
      {"family", item.family},
      {"facets", ToJsonArray(item.facets)},
      {"notes", std::move(notes)},
      {"intensity", item.intensity},
      {"price", static_cast<double>(item.price_cents) / static_cast<double>(kCentsPerDollar)},
      {"price_cents", item.price_cents},
      {"price_display", FormatDollars(item.price_cents)},
      {"description", item.description},
      {"score", scored.score},
      {"points", std::move(points)},
  };
  if (item.size_ml) out["size_ml"] = *item.size_ml;
  return out;
}

}  // namespace

// ---- public

bool CatalogItem::HasNote(std::string_view note) const {
  for (const NoteTier& tier : notes) {
    if (std::find(tier.notes.begin(), tier.notes.end(), note) != tier.notes.end()) return true;
  }
  return false;
}

bool Catalog::HasFamily(std::string_view family) const {
  return Contains(families, family);
}

bool Catalog::HasNote(std::string_view note) const {
  return std::binary_search(notes.begin(), notes.end(), note);
}

std::string FormatDollars(int64_t cents) {
  const bool negative = cents < 0;
  const uint64_t magnitude =
      negative ? static_cast<uint64_t>(-(cents + 1)) + 1 : static_cast<uint64_t>(cents);
  char cents_part[3];
  std::snprintf(cents_part, sizeof(cents_part), "%02u",
                static_cast<unsigned>(magnitude % kCentsPerDollar));
  return std::string(negative ? "-$" : "$") + std::to_string(magnitude / kCentsPerDollar) + "." +
         cents_part;
}

Result<Catalog> ParseCatalog(const json::value& root) {
  if (!root.is_object()) return Status::InvalidArgument("catalog: must be a JSON object");
  const json::object& obj = root.get_object();
  for (const auto& [key, unused] : obj) {
    if (!IsKnownKey(kCatalogKeys, key)) {
      return Status::InvalidArgument("catalog: unknown field " + Quote(key));
    }
  }
  if (const json::value* version = obj.if_contains("version"); version != nullptr) {
    const std::optional<int64_t> n = AsInteger(*version);
    if (!n || *n != kCatalogFormatVersion) {
      return Status::InvalidArgument("catalog: field \"version\": only version " +
                                     std::to_string(kCatalogFormatVersion) + " is understood");
    }
  }
  Catalog catalog;
  if (const json::value* name = obj.if_contains("name"); name != nullptr) {
    if (!name->is_string()) return Status::InvalidArgument("catalog: field \"name\": not a string");
    catalog.name = std::string(name->get_string());
  }
  if (const json::value* currency = obj.if_contains("currency"); currency != nullptr) {
    // Prices are formatted with "$"; another currency needs formatting work first.
    if (!currency->is_string() || currency->get_string() != "USD") {
      return Status::InvalidArgument("catalog: field \"currency\": only \"USD\" is supported");
    }
  }
  TP_ASSIGN_OR_RETURN(catalog.families, ParseVocabulary(obj, "families"));
  TP_ASSIGN_OR_RETURN(catalog.seasons, ParseVocabulary(obj, "seasons"));
  TP_ASSIGN_OR_RETURN(catalog.occasions, ParseVocabulary(obj, "occasions"));

  const json::value* items = obj.if_contains("items");
  if (items == nullptr || !items->is_array() || items->get_array().empty()) {
    return Status::InvalidArgument("catalog: field \"items\": must be a non-empty array");
  }
  std::set<std::string> ids;
  std::set<std::string> names;
  std::set<std::string> notes;
  for (size_t i = 0; i < items->get_array().size(); ++i) {
    TP_ASSIGN_OR_RETURN(CatalogItem item, ParseItem(items->get_array()[i], i, catalog));
    const ItemContext ctx(i, item.id);
    if (!ids.insert(item.id).second) return ctx.Error("id", "duplicate id");
    if (!names.insert(item.name).second) {
      return ctx.Error("name", "duplicate name " + Quote(item.name));
    }
    for (const NoteTier& tier : item.notes) notes.insert(tier.notes.begin(), tier.notes.end());
    catalog.items.push_back(std::move(item));
  }
  catalog.notes.assign(notes.begin(), notes.end());
  return catalog;
}

Result<Catalog> ParseCatalog(std::string_view json_text) {
  std::error_code ec;
  json::value root = json::parse(json_text, ec);
  if (ec) return Status::InvalidArgument("catalog: invalid JSON: " + ec.message());
  return ParseCatalog(root);
}

Result<Catalog> LoadCatalogFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("catalog file " + path + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Status::IOError("catalog file " + path + ": read failed");
  Result<Catalog> catalog = ParseCatalog(std::string_view(text.str()));
  if (!catalog.ok()) return catalog.status().WithContext(path);
  return catalog;
}

bool Preferences::empty() const {
  return families.empty() && notes_liked.empty() && notes_avoided.empty() && !intensity &&
         !season && !occasion && !budget_max_cents && gift_or_self == GiftOrSelf::kUnspecified;
}

Result<Preferences> ParsePreferences(const json::value& discovery, const Catalog& catalog) {
  if (!discovery.is_object()) return Status::InvalidArgument("discovery: must be a JSON object");
  const json::object& obj = discovery.get_object();
  Preferences prefs;

  TP_ASSIGN_OR_RETURN(std::vector<std::string> families, OptionalStringList(obj, "families"));
  prefs.families = KnownWords(families, catalog.families, "family", prefs.warnings);

  TP_ASSIGN_OR_RETURN(std::vector<std::string> liked, OptionalStringList(obj, "notes_liked"));
  TP_ASSIGN_OR_RETURN(std::vector<std::string> avoided, OptionalStringList(obj, "notes_avoided"));
  prefs.notes_avoided = KnownWords(avoided, catalog.notes, "note", prefs.warnings);
  for (std::string& note : KnownWords(liked, catalog.notes, "note", prefs.warnings)) {
    if (Contains(prefs.notes_avoided, note)) {
      // Avoiding is the safer reading of a contradiction: it can only remove an item.
      prefs.warnings.push_back("note " + Quote(note) + " both liked and avoided: avoided");
      continue;
    }
    prefs.notes_liked.push_back(std::move(note));
  }

  TP_RETURN_IF_ERROR(ParseIntensity(obj, prefs));

  TP_ASSIGN_OR_RETURN(std::optional<std::string> season, OptionalString(obj, "season"));
  if (season && *season != "any") {
    if (Contains(catalog.seasons, *season)) {
      prefs.season = std::move(season);
    } else {
      prefs.warnings.push_back("unknown season " + Quote(*season) + " ignored");
    }
  }
  TP_ASSIGN_OR_RETURN(std::optional<std::string> occasion, OptionalString(obj, "occasion"));
  if (occasion) {
    if (Contains(catalog.occasions, *occasion)) {
      prefs.occasion = std::move(occasion);
    } else {
      prefs.warnings.push_back("unknown occasion " + Quote(*occasion) + " ignored");
    }
  }

  TP_RETURN_IF_ERROR(ParseBudget(obj, prefs));

  TP_ASSIGN_OR_RETURN(std::optional<std::string> gift, OptionalString(obj, "gift_or_self"));
  if (gift) {
    if (*gift == "gift") {
      prefs.gift_or_self = GiftOrSelf::kGift;
    } else if (*gift == "self") {
      prefs.gift_or_self = GiftOrSelf::kSelf;
    } else {
      prefs.warnings.push_back("unknown gift_or_self " + Quote(*gift) + " ignored");
    }
  }
  return prefs;
}

ScoreReport ScoreCatalog(const Catalog& catalog, const Preferences& preferences, size_t top_n) {
  ScoreReport report;
  report.considered = catalog.items.size();
  std::vector<ScoredItem> ranked;
  ranked.reserve(catalog.items.size());
  for (const CatalogItem& item : catalog.items) {
    std::string reason = ExclusionReason(item, preferences);
    if (!reason.empty()) {
      report.excluded.push_back(Exclusion{item.id, std::move(reason)});
      continue;
    }
    ranked.push_back(ScoreItem(item, preferences));
  }
  const size_t keep = std::min(top_n, ranked.size());
  std::partial_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(keep),
                    ranked.end(), RanksBefore);
  ranked.resize(keep);
  report.results = std::move(ranked);
  return report;
}

std::vector<ScoredItem> Score(const Catalog& catalog, const Preferences& preferences,
                              size_t top_n) {
  return ScoreCatalog(catalog, preferences, top_n).results;
}

Result<json::value> ScoreToolJson(const Catalog& catalog, const json::value& args) {
  if (!args.is_object()) return Status::InvalidArgument("score tool: arguments must be an object");
  size_t top_n = kDefaultTopN;
  if (const json::value* v = args.get_object().if_contains("top_n");
      v != nullptr && !v->is_null()) {
    const std::optional<int64_t> n = AsInteger(*v);
    if (!n || *n < 1 || static_cast<size_t>(*n) > kMaxTopN) {
      return Status::InvalidArgument("score tool: field \"top_n\": must be an integer from 1 to " +
                                     std::to_string(kMaxTopN));
    }
    top_n = static_cast<size_t>(*n);
  }
  TP_ASSIGN_OR_RETURN(Preferences prefs, ParsePreferences(args, catalog));
  const ScoreReport report = ScoreCatalog(catalog, prefs, top_n);

  json::array results;
  for (const ScoredItem& scored : report.results) results.push_back(ResultToJson(scored));
  json::array excluded;
  for (const Exclusion& e : report.excluded) {
    excluded.push_back(json::object{{"id", e.id}, {"reason", e.reason}});
  }
  return json::value(json::object{
      {"results", std::move(results)},
      {"considered", report.considered},
      {"excluded", std::move(excluded)},
      {"warnings", ToJsonArray(prefs.warnings)},
  });
}

}  // namespace tidepool::pipeline::tools
