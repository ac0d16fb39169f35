#include "queue/queue_env.h"

#include <gtest/gtest.h>

#include <map>

namespace tidepool::queue {
namespace {

class QueueEnvTest : public ::testing::Test {
 protected:
  Result<QueueOptions> Parse(QueueEnvDefaults defaults = {}) {
    return QueueOptionsFromEnv(
        [this](const char* name) -> const char* {
          auto it = vars_.find(name);
          return it == vars_.end() ? nullptr : it->second.c_str();
        },
        defaults);
  }
  std::map<std::string, std::string> vars_;
};

TEST_F(QueueEnvTest, NothingSetNeedsAProjectForGoogleOrFallsBackToTheDefaultEmulator) {
  auto missing = Parse();
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("GOOGLE_CLOUD_PROJECT"), std::string::npos);
  EXPECT_NE(missing.status().message().find("TIDEPOOL_NATS_URL"), std::string::npos);

  auto local = Parse({.emulator_endpoint = "127.0.0.1:8085"});
  ASSERT_TRUE(local.ok());
  EXPECT_EQ(local->backend, "pubsub");
  EXPECT_EQ(local->endpoint, "127.0.0.1:8085");
  EXPECT_EQ(local->auth, "");
  EXPECT_EQ(local->project, "tidepool");

  // A Google project means Google Cloud Pub/Sub even where a local default exists.
  vars_["GOOGLE_CLOUD_PROJECT"] = "shop";
  auto google = Parse({.emulator_endpoint = "127.0.0.1:8085"});
  ASSERT_TRUE(google.ok());
  EXPECT_EQ(google->endpoint, "pubsub.googleapis.com:443");
  EXPECT_EQ(google->auth, "google");
  EXPECT_EQ(google->project, "shop");
}

TEST_F(QueueEnvTest, NatsUrlWinsAndIsChecked) {
  vars_["PUBSUB_EMULATOR_HOST"] = "127.0.0.1:8085";
  vars_["TIDEPOOL_NATS_URL"] = "nats://a:4222,nats://b:4223 , tls://user:pw@c:4224";
  vars_["TIDEPOOL_NATS_REPLICAS"] = "3";
  vars_["TIDEPOOL_NATS_PREFIX"] = "shop-1";
  auto nats = Parse();
  ASSERT_TRUE(nats.ok()) << nats.status().ToString();
  EXPECT_EQ(nats->backend, "nats");
  EXPECT_EQ(nats->nats_servers,
            (std::vector<std::string>{"nats://a:4222", "nats://b:4223", "tls://user:pw@c:4224"}));
  EXPECT_EQ(nats->nats_replicas, 3);
  EXPECT_EQ(nats->nats_prefix, "shop-1");

  for (const char* bad : {"a:4222", "nats://a", "nats://a:port", "nats://a:4222,,nats://b:1",
                          "nats://a:70000", "http://a:4222"}) {
    vars_["TIDEPOOL_NATS_URL"] = bad;
    auto parsed = Parse();
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("TIDEPOOL_NATS_URL"), std::string::npos) << bad;
  }
  vars_["TIDEPOOL_NATS_URL"] = "nats://a:4222";
  for (const char* bad : {"0", "6", "three", "3x"}) {
    vars_["TIDEPOOL_NATS_REPLICAS"] = bad;
    auto parsed = Parse();
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("TIDEPOOL_NATS_REPLICAS"), std::string::npos);
  }
  vars_["TIDEPOOL_NATS_REPLICAS"] = "1";
  vars_["TIDEPOOL_NATS_PREFIX"] = "a.b";
  EXPECT_NE(Parse().status().message().find("TIDEPOOL_NATS_PREFIX"), std::string::npos);
  // Empty means unset: the emulator again.
  vars_["TIDEPOOL_NATS_URL"] = "";
  auto pubsub = Parse();
  ASSERT_TRUE(pubsub.ok());
  EXPECT_EQ(pubsub->backend, "pubsub");
  EXPECT_EQ(pubsub->endpoint, "127.0.0.1:8085");
}

TEST_F(QueueEnvTest, EnvOfReadsBackToTheSameQueueWhateverTheParentHad) {
  std::vector<QueueOptions> cases;
  cases.push_back({.backend = "pubsub", .project = "p", .endpoint = "10.1.1.1:8085"});
  cases.push_back({.backend = "pubsub",
                   .project = "p",
                   .endpoint = "europe-west1-pubsub.googleapis.com:443",
                   .auth = "google",
                   .tls_ca_file = "/etc/ca.pem"});
  QueueOptions nats{.backend = "nats", .project = "p"};
  nats.nats_servers = {"nats://a:1", "nats://b:2"};
  nats.nats_replicas = 3;
  nats.nats_prefix = "x";
  cases.push_back(nats);
  for (const auto& want : cases) {
    // The parent's own variables point elsewhere; the child must still reach `want`.
    vars_ = {{"TIDEPOOL_NATS_URL", "nats://elsewhere:4222"},
             {"PUBSUB_EMULATOR_HOST", "elsewhere:1"},
             {"GOOGLE_CLOUD_PROJECT", "other"}};
    auto env = QueueEnvOf(want);
    ASSERT_TRUE(env.ok());
    for (const auto& [k, v] : *env) vars_[k] = v;
    auto got = Parse();
    ASSERT_TRUE(got.ok()) << DescribeQueue(want) << ": " << got.status().ToString();
    EXPECT_EQ(got->backend, want.backend);
    EXPECT_EQ(got->project, want.project);
    EXPECT_EQ(got->endpoint, want.endpoint);
    EXPECT_EQ(got->auth, want.auth);
    EXPECT_EQ(got->tls_ca_file, want.tls_ca_file);
    EXPECT_EQ(got->nats_servers, want.nats_servers);
    EXPECT_EQ(got->nats_replicas, want.nats_replicas);
    EXPECT_EQ(got->nats_prefix, want.nats_prefix);
  }
  EXPECT_FALSE(QueueEnvOf({.backend = "embedded"}).ok());
  EXPECT_EQ(DescribeQueue(nats), "nats nats://a:1,nats://b:2 (3 replicas)");
}

}  // namespace
}  // namespace tidepool::queue
