#include "broker/names.h"

#include <gtest/gtest.h>

namespace tidepool::broker {
namespace {

TEST(NamesTest, ValidTopicName) {
  auto r = ParseResourceName("projects/my-proj/topics/orders.v1~a+b%c_d", ResourceKind::kTopic);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->project, "my-proj");
  EXPECT_EQ(r->id, "orders.v1~a+b%c_d");
}

TEST(NamesTest, RejectsWithAMessageNamingTheProblem) {
  struct Case {
    const char* name;
    const char* why;
  };
  for (const Case& c : {Case{"topics/x", "expected projects/{project}/topics/{topic}"},
                        Case{"projects/p/topics/ab", "3 to 255 characters"},
                        Case{"projects/p/topics/1abc", "must start with a letter"},
                        Case{"projects/p/topics/google", "must not start with \"goog\""},
                        Case{"projects/p/topics/a b c", "character ' ' is not allowed"},
                        Case{"projects/p/subscriptions/abc", "expected projects/{project}/topics"},
                        Case{"projects//topics/abc", "expected projects/{project}"}}) {
    auto r = ParseResourceName(c.name, ResourceKind::kTopic);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.why), std::string::npos) << r.status().message();
  }
  EXPECT_FALSE(
      ParseResourceName("projects/p/topics/" + std::string(256, 'a'), ResourceKind::kTopic).ok());
  EXPECT_TRUE(
      ParseResourceName("projects/p/topics/" + std::string(255, 'a'), ResourceKind::kTopic).ok());
}

TEST(NamesTest, SubscriptionsAndSnapshots) {
  EXPECT_TRUE(
      ParseResourceName("projects/p/subscriptions/sub-1", ResourceKind::kSubscription).ok());
  EXPECT_TRUE(ParseResourceName("projects/p/snapshots/snap-1", ResourceKind::kSnapshot).ok());
  EXPECT_FALSE(ParseResourceName("projects/p/topics/sub-1", ResourceKind::kSubscription).ok());
  EXPECT_EQ(*ParseProjectName("projects/abc"), "abc");
  EXPECT_FALSE(ParseProjectName("projects/abc/topics").ok());
}

}  // namespace
}  // namespace tidepool::broker
