#include "broker/filter.h"

#include <gtest/gtest.h>

namespace tidepool::broker {
namespace {

bool Match(const std::string& filter, const std::map<std::string, std::string>& attrs) {
  auto f = Filter::Parse(filter);
  EXPECT_TRUE(f.ok()) << filter << ": " << f.status().ToString();
  return f.ok() && f->Matches(attrs);
}

const std::map<std::string, std::string> kAttrs = {
    {"domain", "com"}, {"region", "eu-west"}, {"my-key", "x"}, {"odd key", "y"}};

TEST(FilterTest, EmptyFilterMatchesEverything) {
  EXPECT_TRUE(Match("", {}));
  EXPECT_TRUE(Match("   ", kAttrs));
}

TEST(FilterTest, Comparisons) {
  EXPECT_TRUE(Match("attributes:domain", kAttrs));
  EXPECT_FALSE(Match("attributes:missing", kAttrs));
  EXPECT_TRUE(Match("attributes.domain = \"com\"", kAttrs));
  EXPECT_FALSE(Match("attributes.domain = \"org\"", kAttrs));
  EXPECT_TRUE(Match("attributes.domain != \"org\"", kAttrs));
  EXPECT_TRUE(Match("attributes.missing != \"org\"", kAttrs));  // absent counts as different
  EXPECT_FALSE(Match("attributes.missing = \"\"", kAttrs));
  EXPECT_TRUE(Match("hasPrefix(attributes.region, \"eu-\")", kAttrs));
  EXPECT_FALSE(Match("hasPrefix(attributes.region, \"us-\")", kAttrs));
  EXPECT_FALSE(Match("hasPrefix(attributes.missing, \"\")", kAttrs));
  EXPECT_TRUE(Match("attributes.my-key = \"x\"", kAttrs));
  EXPECT_TRUE(Match("attributes.\"odd key\" = 'y'", kAttrs));
}

TEST(FilterTest, BooleanOperators) {
  EXPECT_TRUE(Match("attributes:domain AND attributes.region = \"eu-west\"", kAttrs));
  EXPECT_FALSE(Match("attributes:domain AND attributes:missing", kAttrs));
  EXPECT_TRUE(Match("attributes:missing OR attributes:domain", kAttrs));
  EXPECT_TRUE(Match("NOT attributes:missing", kAttrs));
  EXPECT_FALSE(Match("-attributes:domain", kAttrs));
  EXPECT_TRUE(Match("(attributes:missing OR attributes:domain) AND NOT attributes.domain = \"org\"",
                    kAttrs));
  EXPECT_FALSE(Match("NOT (attributes:domain AND attributes:region)", kAttrs));
}

TEST(FilterTest, InvalidFiltersAreRejectedWithPosition) {
  for (const char* bad :
       {"attributes:domain AND attributes:a OR attributes:b",
        "attributes.domain =", "attributes.domain = com", "data = \"x\"",
        "attributes:", "(attributes:a", "hasPrefix(attributes.a)", "attributes.a = \"unterminated",
        "attributes.a ! \"x\"", "attributes:a attributes:b"}) {
    auto f = Filter::Parse(bad);
    ASSERT_FALSE(f.ok()) << bad;
    EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(f.status().message().find("invalid filter"), std::string::npos);
  }
  auto mixed = Filter::Parse("attributes:a AND attributes:b OR attributes:c");
  EXPECT_NE(mixed.status().message().find("parentheses"), std::string::npos);
  EXPECT_FALSE(Filter::Parse("attributes:" + std::string(300, 'a')).ok());
}

}  // namespace
}  // namespace tidepool::broker
