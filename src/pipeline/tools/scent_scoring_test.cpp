#include "pipeline/tools/scent_scoring.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <boost/json.hpp>

namespace tidepool::pipeline::tools {
namespace {
namespace json = boost::json;

const std::string kTestdata = TIDEPOOL_TOOLS_TESTDATA_DIR;
const std::string kSourceDir = TIDEPOOL_SOURCE_DIR;

json::value ReadJsonFile(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream text;
  text << in.rdbuf();
  return json::parse(text.str());
}

Catalog LoadOrDie(const std::string& path) {
  Result<Catalog> catalog = LoadCatalogFile(path);
  if (!catalog.ok()) ADD_FAILURE() << catalog.status().ToString();
  return catalog.ok() ? std::move(catalog).value() : Catalog{};
}

std::vector<std::string> StringsOf(const json::value& v) {
  std::vector<std::string> out;
  for (const json::value& e : v.as_array()) out.emplace_back(e.as_string());
  return out;
}

std::vector<Point> PointsOf(const json::value& v) {
  std::vector<Point> out;
  for (const json::value& p : v.as_array()) {
    out.push_back(Point{std::string(p.at("reason").as_string()),
                        static_cast<int>(p.at("points").to_number<int64_t>())});
  }
  return out;
}

std::string Describe(const std::vector<Point>& points) {
  std::string out;
  for (const Point& p : points) out += "{" + p.reason + ", " + std::to_string(p.points) + "} ";
  return out;
}

std::vector<std::string> Ids(const std::vector<ScoredItem>& results) {
  std::vector<std::string> ids;
  for (const ScoredItem& r : results) ids.push_back(r.item->id);
  return ids;
}

// ---- golden scoring cases (testdata/scoring_cases.json over testdata/scoring_catalog.json)

class GoldenScoringTest : public ::testing::Test {
 protected:
  void SetUp() override {
    catalog_ = LoadOrDie(kTestdata + "/scoring_catalog.json");
    cases_ = ReadJsonFile(kTestdata + "/scoring_cases.json").at("cases").as_array();
    ASSERT_FALSE(cases_.empty());
  }

  Catalog catalog_;
  json::array cases_;
};

TEST_F(GoldenScoringTest, RankingsScoresPointsExclusionsAndWarnings) {
  for (const json::value& c : cases_) {
    const std::string name(c.at("name").as_string());
    SCOPED_TRACE(name);
    Result<Preferences> prefs = ParsePreferences(c.at("preferences"), catalog_);
    ASSERT_TRUE(prefs.ok()) << prefs.status().ToString();
    const size_t top_n = static_cast<size_t>(c.at("top_n").to_number<int64_t>());
    const ScoreReport report = ScoreCatalog(catalog_, *prefs, top_n);
    const json::object& expect = c.at("expect").as_object();

    const json::array& want = expect.at("results").as_array();
    ASSERT_EQ(report.results.size(), want.size())
        << "got ids: " << ::testing::PrintToString(Ids(report.results));
    for (size_t i = 0; i < want.size(); ++i) {
      SCOPED_TRACE("position " + std::to_string(i));
      const ScoredItem& got = report.results[i];
      EXPECT_EQ(got.item->id, want[i].at("id").as_string());
      EXPECT_EQ(got.score, want[i].at("score").to_number<int64_t>()) << Describe(got.points);
      if (const json::value* points = want[i].as_object().if_contains("points")) {
        EXPECT_EQ(got.points, PointsOf(*points)) << Describe(got.points);
      }
    }
    if (const json::value* excluded = expect.if_contains("excluded")) {
      std::vector<std::string> got;
      for (const Exclusion& e : report.excluded) got.push_back(e.id);
      EXPECT_EQ(got, StringsOf(*excluded));
    }
    if (const json::value* warnings = expect.if_contains("warnings")) {
      EXPECT_EQ(prefs->warnings.size(), static_cast<size_t>(warnings->to_number<int64_t>()))
          << ::testing::PrintToString(prefs->warnings);
    }
    EXPECT_EQ(report.considered, catalog_.items.size());
    EXPECT_EQ(prefs->empty(),
              c.at("preferences").as_object().empty() || name == "all nulls are the same as empty");
  }
}

TEST_F(GoldenScoringTest, ToolJsonAgreesWithScore) {
  for (const json::value& c : cases_) {
    SCOPED_TRACE(std::string(c.at("name").as_string()));
    json::object args = c.at("preferences").as_object();
    args["top_n"] = c.at("top_n");
    Result<json::value> out = ScoreToolJson(catalog_, args);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    const json::array& results = out->at("results").as_array();
    const json::array& want = c.at("expect").at("results").as_array();
    ASSERT_EQ(results.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(results[i].at("id"), want[i].at("id"));
      EXPECT_EQ(results[i].at("score").to_number<int64_t>(),
                want[i].at("score").to_number<int64_t>());
    }
    EXPECT_EQ(out->at("considered").to_number<int64_t>(),
              static_cast<int64_t>(catalog_.items.size()));
  }
}

TEST_F(GoldenScoringTest, ExclusionReasonsNameTheCause) {
  json::object args{{"notes_avoided", json::array{"oud"}}, {"budget_max", 50}};
  Result<json::value> out = ScoreToolJson(catalog_, args);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  std::map<std::string, std::string> reasons;
  for (const json::value& e : out->at("excluded").as_array()) {
    reasons[std::string(e.at("id").as_string())] = std::string(e.at("reason").as_string());
  }
  EXPECT_EQ(reasons["b-oud"],
            "contains avoided note oud; over budget by $150.00 (more than 25% over $50.00)");
  EXPECT_EQ(reasons["i-twin"], "over budget by $20.00 (more than 25% over $50.00)");
}

// ---- catalog validation (testdata/catalog_errors.json)

// Shallow merge: keys of `patch` replace those of `base`; a null value removes the key.
json::object Merge(json::object base, const json::object& patch) {
  for (const auto& [key, value] : patch) {
    if (value.is_null()) {
      base.erase(key);
    } else {
      base[key] = value;
    }
  }
  return base;
}

Result<Catalog> BuildCatalog(const json::object& suite, const json::object& c) {
  if (const json::value* text = c.if_contains("text")) {
    return ParseCatalog(std::string_view(text->as_string()));
  }
  json::object catalog = suite.at("base_catalog").as_object();
  if (const json::value* patch = c.if_contains("catalog")) {
    catalog = Merge(std::move(catalog), patch->as_object());
  }
  json::array items;
  for (const json::value& patch : c.at("items").as_array()) {
    items.push_back(Merge(suite.at("base_item").as_object(), patch.as_object()));
  }
  catalog["items"] = std::move(items);
  return ParseCatalog(json::value(std::move(catalog)));
}

TEST(CatalogValidationTest, ValidCatalogsLoad) {
  const json::object suite = ReadJsonFile(kTestdata + "/catalog_errors.json").as_object();
  for (const json::value& c : suite.at("valid_cases").as_array()) {
    SCOPED_TRACE(std::string(c.at("name").as_string()));
    Result<Catalog> catalog = BuildCatalog(suite, c.as_object());
    EXPECT_TRUE(catalog.ok()) << catalog.status().ToString();
  }
}

TEST(CatalogValidationTest, ErrorsNameTheItemAndField) {
  const json::object suite = ReadJsonFile(kTestdata + "/catalog_errors.json").as_object();
  for (const json::value& c : suite.at("error_cases").as_array()) {
    SCOPED_TRACE(std::string(c.at("name").as_string()));
    Result<Catalog> catalog = BuildCatalog(suite, c.as_object());
    ASSERT_FALSE(catalog.ok());
    EXPECT_EQ(catalog.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(catalog.status().message().find(std::string(c.at("error").as_string())),
              std::string::npos)
        << catalog.status().message();
  }
}

TEST(CatalogValidationTest, PricesAreExactCents) {
  const json::object suite = ReadJsonFile(kTestdata + "/catalog_errors.json").as_object();
  Result<Catalog> catalog =
      BuildCatalog(suite, json::object{{"items", json::array{json::object{{"price", 79.99}}}}});
  ASSERT_TRUE(catalog.ok()) << catalog.status().ToString();
  EXPECT_EQ(catalog->items[0].price_cents, 7999);
  EXPECT_EQ(catalog->notes, (std::vector<std::string>{"bergamot", "cedar", "rose"}));
}

TEST(CatalogValidationTest, MissingFileIsNotFound) {
  Result<Catalog> catalog = LoadCatalogFile(kTestdata + "/no-such-catalog.json");
  ASSERT_FALSE(catalog.ok());
  EXPECT_EQ(catalog.status().code(), StatusCode::kNotFound);
}

// ---- preferences

TEST(PreferencesTest, WrongJsonTypeIsAnErrorNamingTheField) {
  const Catalog catalog = LoadOrDie(kTestdata + "/scoring_catalog.json");
  const std::vector<std::pair<std::string, json::value>> cases = {
      {"families", json::value(3)},        {"notes_liked", json::value("rose")},
      {"notes_avoided", json::array{1}},   {"intensity", json::array{}},
      {"season", json::value(true)},       {"occasion", json::value(7)},
      {"budget_max", json::value("$100")}, {"gift_or_self", json::value(1)},
  };
  for (const auto& [field, value] : cases) {
    SCOPED_TRACE(field);
    Result<Preferences> prefs = ParsePreferences(json::object{{field, value}}, catalog);
    ASSERT_FALSE(prefs.ok());
    EXPECT_EQ(prefs.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(prefs.status().message().find("\"" + field + "\""), std::string::npos)
        << prefs.status().message();
  }
  EXPECT_FALSE(ParsePreferences(json::value("woody"), catalog).ok());
}

TEST(PreferencesTest, IntensityLabelsAndNumbers) {
  const Catalog catalog = LoadOrDie(kTestdata + "/scoring_catalog.json");
  struct Case {
    json::value input;
    int low;
    int high;
  };
  const std::vector<Case> cases = {
      {json::value("light"), 1, 2}, {json::value("Moderate"), 3, 3}, {json::value("strong"), 4, 5},
      {json::value(1), 1, 1},       {json::value(5.0), 5, 5},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(json::serialize(c.input));
    Result<Preferences> prefs = ParsePreferences(json::object{{"intensity", c.input}}, catalog);
    ASSERT_TRUE(prefs.ok());
    ASSERT_TRUE(prefs->intensity.has_value());
    EXPECT_EQ(prefs->intensity->low, c.low);
    EXPECT_EQ(prefs->intensity->high, c.high);
  }
  for (const json::value& ignored : {json::value(0), json::value(6), json::value(2.5)}) {
    Result<Preferences> prefs = ParsePreferences(json::object{{"intensity", ignored}}, catalog);
    ASSERT_TRUE(prefs.ok());
    EXPECT_FALSE(prefs->intensity.has_value());
    EXPECT_EQ(prefs->warnings.size(), 1u);
  }
}

TEST(ScoreToolJsonTest, RejectsBadTopN) {
  const Catalog catalog = LoadOrDie(kTestdata + "/scoring_catalog.json");
  for (const json::value& top_n :
       {json::value(0), json::value(21), json::value("3"), json::value(1.5)}) {
    SCOPED_TRACE(json::serialize(top_n));
    Result<json::value> out = ScoreToolJson(catalog, json::object{{"top_n", top_n}});
    ASSERT_FALSE(out.ok());
    EXPECT_NE(out.status().message().find("top_n"), std::string::npos);
  }
  EXPECT_FALSE(ScoreToolJson(catalog, json::array{}).ok());
  Result<json::value> out = ScoreToolJson(catalog, json::object{});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->at("results").as_array().size(), kDefaultTopN);
}

TEST(FormatDollarsTest, TwoDecimals) {
  EXPECT_EQ(FormatDollars(0), "$0.00");
  EXPECT_EQ(FormatDollars(1), "$0.01");
  EXPECT_EQ(FormatDollars(7999), "$79.99");
  EXPECT_EQ(FormatDollars(123456), "$1234.56");
  EXPECT_EQ(FormatDollars(-250), "-$2.50");
}

// ---- the shipped apps

struct AppFiles {
  std::string dir;
  size_t min_items;
};

const std::vector<AppFiles> kApps = {{"apps/scent-advisor", 60}, {"apps/gift-concierge", 30}};

std::set<std::string> EnumOf(const json::value& property) {
  const json::value* items = property.as_object().if_contains("items");
  const json::value& holder = items != nullptr ? *items : property;
  std::set<std::string> out;
  for (const json::value& v : holder.at("enum").as_array()) {
    if (v.is_string()) out.emplace(v.as_string());
  }
  return out;
}

TEST(ShippedAppsTest, CatalogsLoadWithUniqueIdsAndNames) {
  for (const AppFiles& app : kApps) {
    SCOPED_TRACE(app.dir);
    const Catalog catalog = LoadOrDie(kSourceDir + "/" + app.dir + "/catalog.json");
    EXPECT_GE(catalog.items.size(), app.min_items);
    std::set<std::string> ids;
    std::set<std::string> names;
    for (const CatalogItem& item : catalog.items) {
      ids.insert(item.id);
      names.insert(item.name);
    }
    EXPECT_EQ(ids.size(), catalog.items.size());
    EXPECT_EQ(names.size(), catalog.items.size());
    // Every declared family, season and occasion is used, so none is a dead enum value.
    for (const std::string& family : catalog.families) {
      EXPECT_TRUE(std::any_of(catalog.items.begin(), catalog.items.end(),
                              [&](const CatalogItem& i) {
                                return i.family == family ||
                                       std::find(i.facets.begin(), i.facets.end(), family) !=
                                           i.facets.end();
                              }))
          << "family " << family << " unused";
    }
  }
}

TEST(ShippedAppsTest, DiscoverySchemaEnumsMatchTheCatalog) {
  for (const AppFiles& app : kApps) {
    SCOPED_TRACE(app.dir);
    const Catalog catalog = LoadOrDie(kSourceDir + "/" + app.dir + "/catalog.json");
    const json::value schema = ReadJsonFile(kSourceDir + "/" + app.dir + "/discovery.schema.json");
    const json::object& properties = schema.at("properties").as_object();
    const std::set<std::string> notes(catalog.notes.begin(), catalog.notes.end());
    EXPECT_EQ(EnumOf(properties.at("notes_liked")), notes);
    EXPECT_EQ(EnumOf(properties.at("notes_avoided")), notes);
    EXPECT_EQ(EnumOf(properties.at("families")),
              std::set<std::string>(catalog.families.begin(), catalog.families.end()));
    std::set<std::string> seasons(catalog.seasons.begin(), catalog.seasons.end());
    seasons.insert("any");
    EXPECT_EQ(EnumOf(properties.at("season")), seasons);
    EXPECT_EQ(EnumOf(properties.at("occasion")),
              std::set<std::string>(catalog.occasions.begin(), catalog.occasions.end()));
    EXPECT_EQ(EnumOf(properties.at("intensity")),
              (std::set<std::string>{"light", "moderate", "strong"}));
    EXPECT_EQ(EnumOf(properties.at("gift_or_self")), (std::set<std::string>{"gift", "self"}));
  }
}

// The simulator maps a shopper's word through x-synonyms; a key outside the enum would produce
// a value the scorer ignores, and a word under two keys would make the mapping ambiguous.
TEST(ShippedAppsTest, SynonymsMapOntoEnumValuesUnambiguously) {
  for (const AppFiles& app : kApps) {
    SCOPED_TRACE(app.dir);
    const json::value schema = ReadJsonFile(kSourceDir + "/" + app.dir + "/discovery.schema.json");
    size_t properties_with_synonyms = 0;
    for (const auto& [name, property] : schema.at("properties").as_object()) {
      const json::value* synonyms = property.as_object().if_contains("x-synonyms");
      if (synonyms == nullptr) continue;
      ++properties_with_synonyms;
      SCOPED_TRACE(std::string(name));
      const std::set<std::string> values = EnumOf(property);
      std::map<std::string, std::string> owner;
      for (const auto& [value, words] : synonyms->as_object()) {
        EXPECT_TRUE(values.count(std::string(value))) << value << " is not an enum value";
        for (const json::value& word : words.as_array()) {
          const std::string w(word.as_string());
          auto [it, inserted] = owner.emplace(w, std::string(value));
          EXPECT_TRUE(inserted) << "\"" << w << "\" is a synonym of both " << it->second << " and "
                                << value;
        }
      }
    }
    EXPECT_GE(properties_with_synonyms, 6u);
  }
}

// ---- invariants over the shipped scent catalog

Catalog ScentCatalog() {
  return LoadOrDie(kSourceDir + "/apps/scent-advisor/catalog.json");
}

std::vector<json::value> SampleDiscoveries() {
  return {
      json::object{},
      json::object{{"families", json::array{"woody"}},
                   {"notes_liked", json::array{"sandalwood", "vanilla"}},
                   {"notes_avoided", json::array{"oud"}},
                   {"intensity", "strong"},
                   {"season", "winter"},
                   {"occasion", "evening"},
                   {"budget_max", 150}},
      json::object{{"families", json::array{"citrus", "fresh"}},
                   {"intensity", "light"},
                   {"season", "summer"},
                   {"occasion", "office"},
                   {"budget_max", 60},
                   {"gift_or_self", "gift"}},
      json::object{{"notes_liked", json::array{"rose", "iris", "musk"}},
                   {"notes_avoided", json::array{"patchouli", "vanilla"}}},
  };
}

TEST(ScentCatalogScoringTest, ScoreIsTheSumOfItsPoints) {
  const Catalog catalog = ScentCatalog();
  for (const json::value& discovery : SampleDiscoveries()) {
    Result<Preferences> prefs = ParsePreferences(discovery, catalog);
    ASSERT_TRUE(prefs.ok());
    for (const ScoredItem& r : Score(catalog, *prefs, catalog.items.size())) {
      int sum = 0;
      for (const Point& p : r.points) sum += p.points;
      EXPECT_EQ(sum, r.score) << r.item->id;
    }
  }
}

TEST(ScentCatalogScoringTest, RankingDoesNotDependOnCatalogOrder) {
  const Catalog catalog = ScentCatalog();
  Catalog reversed = catalog;
  std::reverse(reversed.items.begin(), reversed.items.end());
  Catalog shuffled = catalog;
  std::mt19937 rng(20240917);
  std::shuffle(shuffled.items.begin(), shuffled.items.end(), rng);
  for (const json::value& discovery : SampleDiscoveries()) {
    SCOPED_TRACE(json::serialize(discovery));
    Result<Preferences> prefs = ParsePreferences(discovery, catalog);
    ASSERT_TRUE(prefs.ok());
    const size_t all = catalog.items.size();
    const std::vector<std::string> want = Ids(Score(catalog, *prefs, all));
    EXPECT_EQ(Ids(Score(reversed, *prefs, all)), want);
    EXPECT_EQ(Ids(Score(shuffled, *prefs, all)), want);
    EXPECT_EQ(Ids(Score(catalog, *prefs, all)), want);
    // top_n is a prefix of the full ranking.
    const std::vector<std::string> top3 = Ids(Score(catalog, *prefs, 3));
    EXPECT_TRUE(std::equal(top3.begin(), top3.end(), want.begin()));
  }
}

TEST(ScentCatalogScoringTest, AvoidedNotesAreNeverRecommended) {
  const Catalog catalog = ScentCatalog();
  for (const std::string& note : catalog.notes) {
    SCOPED_TRACE(note);
    // Liking the note's neighbours must not pull an item with the avoided note back in.
    json::object discovery{{"notes_avoided", json::array{json::value(note)}},
                           {"notes_liked", json::array{"vanilla", "musk", "bergamot"}}};
    Result<Preferences> prefs = ParsePreferences(discovery, catalog);
    ASSERT_TRUE(prefs.ok());
    const ScoreReport report = ScoreCatalog(catalog, *prefs, catalog.items.size());
    for (const ScoredItem& r : report.results) EXPECT_FALSE(r.item->HasNote(note)) << r.item->id;
    EXPECT_EQ(report.results.size() + report.excluded.size(), catalog.items.size());
    EXPECT_FALSE(report.excluded.empty());
  }
}

TEST(ScentCatalogScoringTest, BudgetIsRespectedWithinTheMargin) {
  const Catalog catalog = ScentCatalog();
  for (const int budget : {40, 60, 100, 150}) {
    SCOPED_TRACE(budget);
    Result<Preferences> prefs = ParsePreferences(json::object{{"budget_max", budget}}, catalog);
    ASSERT_TRUE(prefs.ok());
    const int64_t limit = budget * 100 + budget * kBudgetMarginPercent;
    for (const ScoredItem& r : Score(catalog, *prefs, catalog.items.size())) {
      EXPECT_LE(r.item->price_cents, limit) << r.item->id;
    }
  }
}

TEST(ScentCatalogScoringTest, ToolJsonCarriesWhatTheCardsNeed) {
  const Catalog catalog = ScentCatalog();
  json::object args = SampleDiscoveries()[1].as_object();
  args["top_n"] = 5;
  Result<json::value> out = ScoreToolJson(catalog, args);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->at("considered").to_number<int64_t>(), static_cast<int64_t>(catalog.items.size()));
  const json::array& results = out->at("results").as_array();
  ASSERT_EQ(results.size(), 5u);
  for (const json::value& r : results) {
    for (const char* key : {"id", "name", "house", "family", "description", "price_display"}) {
      EXPECT_TRUE(r.at(key).is_string()) << key;
    }
    for (const char* tier : {"top", "heart", "base"}) {
      EXPECT_TRUE(r.at("notes").at(tier).is_array()) << tier;
    }
    EXPECT_TRUE(r.at("price").is_number());
    EXPECT_TRUE(r.at("size_ml").is_int64());
    EXPECT_NEAR(r.at("price").as_double() * 100,
                static_cast<double>(r.at("price_cents").as_int64()), 1e-6);
    EXPECT_TRUE(r.at("score").is_int64());
    EXPECT_FALSE(r.at("points").as_array().empty());
  }
  EXPECT_FALSE(out->at("excluded").as_array().empty());  // oud is avoided
  EXPECT_TRUE(out->at("warnings").as_array().empty());
}

// The worked example of docs/scent-advisor.md, pinned so the document cannot drift.
TEST(ScentCatalogScoringTest, DocsExample) {
  const Catalog catalog = ScentCatalog();
  Result<Preferences> prefs = ParsePreferences(SampleDiscoveries()[1], catalog);
  ASSERT_TRUE(prefs.ok());
  const ScoreReport report = ScoreCatalog(catalog, *prefs, 3);
  ASSERT_EQ(report.results.size(), 3u);
  EXPECT_EQ(Ids(report.results),
            (std::vector<std::string>{"patchouli-parable", "cacao-nocturne", "sandalwood-hour"}));
  EXPECT_EQ(report.results[0].score, 75);
  EXPECT_EQ(report.results[1].score, 66);
  EXPECT_EQ(report.results[2].score, 65);
  EXPECT_EQ(report.results[0].points, (std::vector<Point>{{"family woody matches", 30},
                                                          {"note vanilla liked", 8},
                                                          {"intensity 4 fits strong", 15},
                                                          {"season winter", 10},
                                                          {"occasion evening", 10},
                                                          {"within budget of $150.00", 0},
                                                          {"popularity 50/100", 2}}));
  EXPECT_EQ(report.excluded.size(), 8u);
}

}  // namespace
}  // namespace tidepool::pipeline::tools
