#include "cli/up_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/cpu_list.h"

namespace tidepool::cli {
namespace {

namespace fs = std::filesystem;

// Each test gets a clean environment for the variables it may set, and a temp file.
class UpConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kVariables) unsetenv(name);
    path_ = fs::temp_directory_path() / ("up_config_test_" + std::to_string(getpid()) + ".yaml");
  }
  void TearDown() override {
    for (const char* name : kVariables) unsetenv(name);
    std::error_code ec;
    fs::remove(path_, ec);
  }
  std::string Write(const std::string& text) {
    std::ofstream(path_) << text;
    return path_.string();
  }

  static constexpr const char* kVariables[] = {
      "TIDEPOOL_CONFIG",         "TIDEPOOL_WEB_LISTEN",        "TIDEPOOL_WEB_RATE_LIMIT",
      "TIDEPOOL_DATA_DIR",       "TIDEPOOL_APPS_FILES",        "TIDEPOOL_BROKER_STREAM_LIFETIME",
      "TIDEPOOL_STORE_URL",      "TIDEPOOL_APPS_ENABLED",      "TIDEPOOL_QUEUE_BACKEND",
      "TIDEPOOL_QUEUE_NATS_URL", "TIDEPOOL_BROKER_LOG_RESERVE"};
  fs::path path_;
};

TEST_F(UpConfigTest, DefaultsNeedNoConfigAtAll) {
  auto config = LoadUpConfig(ConfigCommand::kUp, {});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->web_listen, "127.0.0.1:8080");
  EXPECT_EQ(config->broker_listen, "127.0.0.1:8085");
  EXPECT_EQ(config->data_dir, "tidepool-data");
  EXPECT_TRUE(config->apps_enabled);
  EXPECT_EQ(config->rate_limit, 5);
}

TEST_F(UpConfigTest, FileThenEnvironmentThenFlags) {
  const std::string file = Write(
      "data_dir: /srv/tp\n"
      "web:\n"
      "  listen: 0.0.0.0:9000\n"
      "  rate_limit: 50\n"
      "broker:\n"
      "  stream_lifetime: 5m\n"
      "apps:\n"
      "  files: [a.yaml, b.yaml]\n"
      "  max_instances: 8\n");
  setenv("TIDEPOOL_WEB_RATE_LIMIT", "0", 1);
  auto config = LoadUpConfig(ConfigCommand::kUp, {"--config", file, "--listen", "127.0.0.1:1"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->data_dir, "/srv/tp");           // file
  EXPECT_EQ(config->stream_lifetime_seconds, 300);  // file, a duration
  EXPECT_EQ(config->rate_limit, 0);                 // environment over file
  EXPECT_EQ(config->web_listen, "127.0.0.1:1");     // flag over file
  EXPECT_EQ(config->app_max_instances, 8);          // file
  EXPECT_EQ(config->app_files, (std::vector<std::string>{"a.yaml", "b.yaml"}));
  EXPECT_EQ(config->config_path, file);
  EXPECT_NE(config->config_text.find("max_instances"), std::string::npos);
}

TEST_F(UpConfigTest, FlagsOfAListReplaceTheFileListAndAccumulate) {
  const std::string file = Write("apps:\n  files: [a.yaml]\n");
  auto config =
      LoadUpConfig(ConfigCommand::kUp, {"--config", file, "--app", "x.yaml", "--app", "y.yaml"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->app_files, (std::vector<std::string>{"x.yaml", "y.yaml"}));
  setenv("TIDEPOOL_APPS_FILES", "p.yaml,q.yaml", 1);
  config = LoadUpConfig(ConfigCommand::kUp, {});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->app_files, (std::vector<std::string>{"p.yaml", "q.yaml"}));
}

TEST_F(UpConfigTest, TheConfigFileCanComeFromTheEnvironment) {
  setenv("TIDEPOOL_CONFIG", Write("web:\n  cors_origin: \"*\"\n").c_str(), 1);
  auto config = LoadUpConfig(ConfigCommand::kUp, {});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->cors_origin, "*");
}

TEST_F(UpConfigTest, UnknownKeysNameTheFileLineAndTheKnownKeys) {
  const std::string file = Write("web:\n  listen: x:1\n  lisen: y:2\n");
  auto config = LoadUpConfig(ConfigCommand::kUp, {"--config", file});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find(file + ":3: web.lisen: unknown key"), std::string::npos)
      << config.status().message();
  EXPECT_NE(config.status().message().find("rate_limit"), std::string::npos);

  config = LoadUpConfig(ConfigCommand::kUp, {"--config", Write("wbe:\n  listen: x\n")});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find(":1: wbe: unknown key"), std::string::npos)
      << config.status().message();
}

TEST_F(UpConfigTest, BadValuesNameWhereTheyCameFrom) {
  auto config =
      LoadUpConfig(ConfigCommand::kUp, {"--config", Write("broker:\n  stream_lifetime: soon\n")});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find(":2: broker.stream_lifetime: 'soon' is not a duration"),
            std::string::npos)
      << config.status().message();

  config = LoadUpConfig(ConfigCommand::kUp, {"--config", Write("web: [1, 2]\n")});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find(":1: web: expected a mapping"), std::string::npos);

  config = LoadUpConfig(ConfigCommand::kUp, {"--config", Write("web:\n  listen: [a]\n")});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("web.listen: expected a single value"),
            std::string::npos);

  config = LoadUpConfig(ConfigCommand::kUp, {"--config", Write("web: {listen: \"unclosed\n")});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("invalid YAML"), std::string::npos);

  setenv("TIDEPOOL_WEB_RATE_LIMIT", "fast", 1);
  config = LoadUpConfig(ConfigCommand::kUp, {});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("TIDEPOOL_WEB_RATE_LIMIT (web.rate_limit): 'fast'"),
            std::string::npos)
      << config.status().message();
  unsetenv("TIDEPOOL_WEB_RATE_LIMIT");

  config = LoadUpConfig(ConfigCommand::kUp, {"--rate-limit", "-1"});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("--rate-limit: '-1'"), std::string::npos);

  config = LoadUpConfig(ConfigCommand::kUp, {"--listen"});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("--listen needs a value"), std::string::npos);

  config = LoadUpConfig(ConfigCommand::kUp, {"--frobnicate"});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("unknown option '--frobnicate'"), std::string::npos);

  config = LoadUpConfig(ConfigCommand::kUp, {"--config", "/nonexistent/tidepool.yaml"});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kNotFound);
}

TEST_F(UpConfigTest, InconsistentInstanceBoundsAreRefused) {
  auto config = LoadUpConfig(
      ConfigCommand::kUp, {"--config", Write("apps:\n  min_instances: 5\n  max_instances: 2\n")});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(
      config.status().message().find("apps.min_instances (5) is above apps.max_instances (2)"),
      std::string::npos);
}

TEST_F(UpConfigTest, QueueOnNatsNeedsValidServers) {
  auto embedded = LoadUpConfig(ConfigCommand::kUp, {});
  ASSERT_TRUE(embedded.ok());
  EXPECT_EQ(embedded->queue_backend, "embedded");

  const std::string file = Write(
      "queue:\n"
      "  backend: nats\n"
      "  nats_url: nats://10.0.0.1:4222,nats://10.0.0.2:4222\n"
      "  nats_replicas: 3\n");
  auto nats = LoadUpConfig(ConfigCommand::kUp, {"--config", file});
  ASSERT_TRUE(nats.ok()) << nats.status().ToString();
  EXPECT_EQ(nats->queue_backend, "nats");
  EXPECT_EQ(nats->nats_url, "nats://10.0.0.1:4222,nats://10.0.0.2:4222");
  EXPECT_EQ(nats->nats_replicas, 3);

  setenv("TIDEPOOL_QUEUE_NATS_URL", "10.0.0.1:4222", 1);
  auto bad_url = LoadUpConfig(ConfigCommand::kUp, {"--config", file});
  ASSERT_FALSE(bad_url.ok());
  EXPECT_NE(bad_url.status().message().find("queue.nats_url"), std::string::npos);
  unsetenv("TIDEPOOL_QUEUE_NATS_URL");

  auto missing = LoadUpConfig(ConfigCommand::kUp, {"--queue", "nats"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("--nats"), std::string::npos);
  auto unknown = LoadUpConfig(ConfigCommand::kUp, {"--queue", "kafka"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("kafka"), std::string::npos);
  Write("queue:\n  nats_replicas: 7\n");
  EXPECT_FALSE(LoadUpConfig(ConfigCommand::kUp, {"--config", file}).ok());
  // `broker` has no queue to choose: it is the queue.
  EXPECT_FALSE(LoadUpConfig(ConfigCommand::kBroker, {"--queue", "nats"}).ok());
}

TEST_F(UpConfigTest, AppCpusLeaveTheFirstCpuToTheWebTierByDefault) {
  auto config = LoadUpConfig(ConfigCommand::kUp, {});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->app_cpus, "auto");
  std::vector<int> expected = AllowedCpus();
  if (expected.size() >= 2) {
    expected.erase(expected.begin());
  } else {
    expected.clear();
  }
  EXPECT_EQ(AppCpus(*config), expected);
  config->app_cpus = "all";
  EXPECT_TRUE(AppCpus(*config).empty());
  config->app_cpus = "0,2-3";
  EXPECT_EQ(AppCpus(*config), (std::vector<int>{0, 2, 3}));

  const std::string file = Write("apps:\n  cpus: first\n");
  auto bad = LoadUpConfig(ConfigCommand::kUp, {"--config", file});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("apps.cpus"), std::string::npos);
}

TEST_F(UpConfigTest, NoAppsIsASwitchAndAnEnvironmentBoolean) {
  auto config = LoadUpConfig(ConfigCommand::kUp, {"--no-apps"});
  ASSERT_TRUE(config.ok());
  EXPECT_FALSE(config->apps_enabled);
  setenv("TIDEPOOL_APPS_ENABLED", "false", 1);
  config = LoadUpConfig(ConfigCommand::kUp, {});
  ASSERT_TRUE(config.ok());
  EXPECT_FALSE(config->apps_enabled);
}

TEST_F(UpConfigTest, TheBrokerCommandTakesOnlyItsOwnSettings) {
  setenv("TIDEPOOL_WEB_LISTEN", "not-for-the-broker", 1);
  auto config = LoadUpConfig(ConfigCommand::kBroker, {"--listen", "127.0.0.1:9999"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->broker_listen, "127.0.0.1:9999");  // --listen is the broker's own address
  EXPECT_EQ(config->web_listen, "127.0.0.1:8080");
  config = LoadUpConfig(ConfigCommand::kBroker, {"--app", "a.yaml"});
  EXPECT_FALSE(config.ok());
  config = LoadUpConfig(ConfigCommand::kBroker, {"--config", Write("web:\n  listen: x\n")});
  EXPECT_FALSE(config.ok());
}

TEST_F(UpConfigTest, LogReserveIsASizeOfUpAndOfTheBroker) {
  auto config = LoadUpConfig(ConfigCommand::kUp, {});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->log_reserve_bytes, 256 << 10);
  config = LoadUpConfig(ConfigCommand::kBroker, {"--log-reserve", "1Mi"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->log_reserve_bytes, 1 << 20);
  config = LoadUpConfig(ConfigCommand::kUp, {"--config", Write("broker:\n  log_reserve: 64Ki\n")});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->log_reserve_bytes, 64 << 10);
  setenv("TIDEPOOL_BROKER_LOG_RESERVE", "0", 1);
  config = LoadUpConfig(ConfigCommand::kUp, {});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->log_reserve_bytes, 0);

  for (const char* bad : {"lots", "-1", "2Gi"}) {
    config = LoadUpConfig(ConfigCommand::kUp, {"--log-reserve", bad});
    ASSERT_FALSE(config.ok()) << bad;
    EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(config.status().message().find("'" + std::string(bad) + "' is not a size"),
              std::string::npos)
        << config.status().message();
  }
}

TEST_F(UpConfigTest, PrintedConfigReadsBackToTheSameSettings) {
  auto config = LoadUpConfig(ConfigCommand::kUp,
                             {"--listen", "0.0.0.0:81", "--rate-limit", "2.5", "--app", "a b.yaml",
                              "--stream-lifetime", "90s", "--log-reserve", "4Mi"});
  ASSERT_TRUE(config.ok());
  const std::string text = ConfigYaml(*config);
  auto again = LoadUpConfig(ConfigCommand::kUp, {"--config", Write(text)});
  ASSERT_TRUE(again.ok()) << again.status().ToString() << "\n" << text;
  EXPECT_EQ(ConfigYaml(*again), text);
  EXPECT_EQ(again->web_listen, "0.0.0.0:81");
  EXPECT_EQ(again->rate_limit, 2.5);
  EXPECT_EQ(again->app_files, (std::vector<std::string>{"a b.yaml"}));
  EXPECT_EQ(again->stream_lifetime_seconds, 90);
  EXPECT_EQ(again->log_reserve_bytes, 4 << 20);
}

TEST_F(UpConfigTest, ApiKeysFileListsKeysByAppAndNamesBadLines) {
  auto keys =
      LoadApiKeys(Write("# keys of the shop's backend\n"
                        "scent-advisor  k1-0123456789abcdef   # rotated in November\n"
                        "\n"
                        "scent-advisor k2-0123456789abcdef\n"
                        "gift-concierge k3-0123456789abcdef\n"));
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  EXPECT_EQ((*keys)["scent-advisor"],
            (std::vector<std::string>{"k1-0123456789abcdef", "k2-0123456789abcdef"}));
  EXPECT_EQ((*keys)["gift-concierge"], (std::vector<std::string>{"k3-0123456789abcdef"}));

  keys = LoadApiKeys(Write("scent-advisor\n"));
  ASSERT_FALSE(keys.ok());
  EXPECT_NE(keys.status().message().find(":1: expected \"APP KEY\""), std::string::npos);
  keys = LoadApiKeys(Write("# a\nscent-advisor tiny-key\n"));
  ASSERT_FALSE(keys.ok());
  EXPECT_NE(keys.status().message().find(":2: the key for app scent-advisor is shorter"),
            std::string::npos);
  EXPECT_EQ(keys.status().message().find("tiny-key"), std::string::npos) << "a key in a message";
  EXPECT_EQ(LoadApiKeys("/nonexistent/keys").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace tidepool::cli
