// Catalog scoring: the deterministic tool step between discovery (an LLM turning the shopper's
// words into structured preferences) and copy generation (an LLM writing about the winners).
//
// The scorer is driven by data: a catalog declares its own vocabulary (families, seasons,
// occasions; notes are whatever its items use), so the Scent Advisor and the Gift Concierge run
// the same code over different files. The formula, its weights and the tie-break are written
// down in docs/scent-advisor.md; the weights below are the single source of truth.
//
// Every score is the exact sum of its points, each with a reason a person can read ("family
// woody matches", "over budget by $15.00"), so the copy step and the recommendation cards can
// explain a ranking without guessing.
//
// Thread-safety: a Catalog is immutable after loading; Score* and ScoreToolJson only read it and
// may run concurrently on one Catalog.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/json/value.hpp>

#include "common/status.h"

namespace tidepool::pipeline::tools {

// ---- weights (points; integers so scores are exact and goldens compare with ==)

// An item's primary family is one the shopper asked for.
inline constexpr int kFamilyMatchPoints = 30;
// One of an item's secondary families (facets) is one the shopper asked for; per facet.
inline constexpr int kFacetMatchPoints = 12;
// Per liked note the item contains (in any tier; counted once per note).
inline constexpr int kLikedNotePoints = 8;
// Intensity, by distance from the wanted range: 0, 1, 2, 3 or more steps away.
inline constexpr int kIntensityExactPoints = 15;
inline constexpr int kIntensityNearPoints = 5;
inline constexpr int kIntensityFarPoints = -10;
inline constexpr int kIntensityVeryFarPoints = -20;
inline constexpr int kSeasonMatchPoints = 10;
inline constexpr int kOccasionMatchPoints = 10;
// popularity (0..100) * kPopularityMaxPoints / 100, rounded down: a small nudge that orders
// items nothing else separates (and the whole ranking when the shopper said nothing yet).
inline constexpr int kPopularityMaxPoints = 5;
// For a gift the recipient's taste is a guess, so crowd-pleasers earn the popularity nudge
// twice: same formula, a second point "crowd-pleaser for a gift".
inline constexpr int kGiftPopularityMaxPoints = 5;
// Over budget: a price up to kBudgetMarginPercent over the budget stays in the ranking with a
// penalty growing linearly to kBudgetMaxPenalty at the margin (rounded up, so $0.01 over already
// costs a point); beyond the margin the item is excluded.
inline constexpr int kBudgetMarginPercent = 25;
inline constexpr int kBudgetMaxPenalty = 30;
// Items containing an avoided note are excluded, never merely penalized: "I can't stand oud"
// must not be outvoted by three liked notes.

// ScoreToolJson: results returned when the arguments do not say top_n, and the most allowed.
inline constexpr size_t kDefaultTopN = 3;
inline constexpr size_t kMaxTopN = 20;

// ---- catalog

struct NoteTier {
  std::string tier;  // "top", "heart", "base" for fragrances; any name a catalog chooses
  std::vector<std::string> notes;
};

struct CatalogItem {
  std::string id;    // unique; [a-z0-9-]+
  std::string name;  // unique within the catalog
  std::string house;
  std::string family;                  // one of Catalog::families
  std::vector<std::string> facets;     // secondary families; each in Catalog::families, != family
  std::vector<NoteTier> notes;         // tiers in file order
  int intensity = 0;                   // 1 (a whisper) .. 5 (fills a room)
  std::vector<std::string> seasons;    // each in Catalog::seasons
  std::vector<std::string> occasions;  // each in Catalog::occasions
  int64_t price_cents = 0;     // > 0; the catalog file holds dollars with at most 2 decimals
  std::optional<int> size_ml;  // optional: gift items have no size
  int popularity = 0;          // 0..100, an invented bestseller signal
  std::string description;

  bool HasNote(std::string_view note) const;
};

struct Catalog {
  std::string name;
  std::string currency = "USD";
  // The vocabulary, declared by the catalog file and enforced on its items.
  std::vector<std::string> families;
  std::vector<std::string> seasons;
  std::vector<std::string> occasions;
  // Derived: every note any item uses, sorted and unique.
  std::vector<std::string> notes;
  std::vector<CatalogItem> items;  // file order

  bool HasFamily(std::string_view family) const;
  bool HasNote(std::string_view note) const;
};

// Parses and validates a catalog (format: docs/scent-advisor.md). Errors are InvalidArgument and
// name the item (index and id) and the field, e.g.
//   item 4 ("salt-hymn"): field "price": must be a positive number with at most 2 decimals
Result<Catalog> ParseCatalog(std::string_view json_text);
Result<Catalog> ParseCatalog(const boost::json::value& json);
// Reads a file and parses it; a missing file is NotFound.
Result<Catalog> LoadCatalogFile(const std::string& path);

// ---- preferences (the discovery step's structured output)

enum class GiftOrSelf { kUnspecified, kGift, kSelf };

// The wanted intensity as a closed range: light = 1..2, moderate = 3, strong = 4..5, and a
// number n from 1 to 5 = n..n.
struct IntensityRange {
  int low = 0;
  int high = 0;
  std::string label;  // "light", "moderate", "strong" or the number
};

struct Preferences {
  std::vector<std::string> families;       // known families only, deduplicated, in input order
  std::vector<std::string> notes_liked;    // known notes only; never one that is also avoided
  std::vector<std::string> notes_avoided;  // known notes only
  std::optional<IntensityRange> intensity;
  std::optional<std::string> season;  // absent for "any"
  std::optional<std::string> occasion;
  std::optional<int64_t> budget_max_cents;
  GiftOrSelf gift_or_self = GiftOrSelf::kUnspecified;
  // Values the scorer ignored and why ("unknown family \"fruity\" ignored"). The LLM may say
  // things the catalog does not know; that is a note for the logs and the UI, not an error.
  std::vector<std::string> warnings;

  bool empty() const;
};

// Reads the discovery JSON object (fields of discovery.schema.json; other fields, such as
// follow_up_question, are ignored). Null or missing fields mean "not said". Unknown enum values
// are dropped into `warnings`. A field of the wrong JSON type (families as a number) is
// InvalidArgument naming the field: that is a broken producer, not a shopper's whim.
Result<Preferences> ParsePreferences(const boost::json::value& discovery, const Catalog& catalog);

// ---- scoring

struct Point {
  std::string reason;
  int points = 0;

  bool operator==(const Point&) const = default;
};

struct ScoredItem {
  const CatalogItem* item = nullptr;  // points into the Catalog, which must outlive this
  int score = 0;                      // == the sum of points
  std::vector<Point> points;          // in formula order: family, facets, notes, intensity, season,
                                      // occasion, budget, popularity, gift
};

struct Exclusion {
  std::string id;
  std::string reason;
};

struct ScoreReport {
  std::vector<ScoredItem> results;  // best first, at most top_n
  std::vector<Exclusion> excluded;  // every excluded item, in catalog order
  size_t considered = 0;            // items in the catalog
};

// Ranks the catalog: excluded items dropped, the rest ordered by score descending, then
// popularity descending, then price ascending, then id ascending. The order is total, so the
// result does not depend on the order of the catalog file.
ScoreReport ScoreCatalog(const Catalog& catalog, const Preferences& preferences, size_t top_n);
std::vector<ScoredItem> Score(const Catalog& catalog, const Preferences& preferences, size_t top_n);

// The tool step's entry point. `args` is the discovery object, optionally with "top_n"
// (1..kMaxTopN, default kDefaultTopN). Returns
//   {"results": [{"id", "name", "house", "family", "facets", "notes": {"top": [...], ...},
//                 "intensity", "price", "price_cents", "price_display", "size_ml"?,
//                 "description", "score", "points": [{"reason", "points"}]}],
//    "considered": N, "excluded": [{"id", "reason"}], "warnings": ["..."]}
// "price" is dollars as a JSON double (Boost.JSON writes 49 as 4.9E1); "price_cents" is exact.
// Errors: InvalidArgument for arguments that are not an object, a bad top_n, or a field of the
// wrong JSON type (see ParsePreferences).
Result<boost::json::value> ScoreToolJson(const Catalog& catalog, const boost::json::value& args);

// "$1234.50": dollars with two decimals, no thousands separator. Used in reasons and display.
std::string FormatDollars(int64_t cents);

}  // namespace tidepool::pipeline::tools
