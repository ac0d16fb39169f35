#include "pool/spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace tidepool::pool {
namespace {

using std::chrono::milliseconds;
using testing::HasSubstr;

// Line numbers in the error tests below count from the first line of these strings.
constexpr char kFullPool[] = R"(name: advisor
subscription: chat-requests
command: /usr/bin/tidepool
args: [worker, --app, advisor]
env:
  LOG_LEVEL: info
  WORKERS: 8
secrets:
  OPENAI_API_KEY: /run/secrets/openai
memory_limit: 512Mi
working_dir: /srv/advisor
instances: 2
grace_period: 45s
restart:
  policy: always
  initial_backoff: 500ms
  max_backoff: 2m
  reset_after: 90s
  crash_loop: {restarts: 7, window: 10m}
liveness:
  http_path: /healthz
  initial_delay: 10s
  period: 3s
  timeout: 2s
  failure_threshold: 4
rollout: {max_surge: 2, max_unavailable: 1}
autoscaling:
  min: 1
  max: 20
  poll_interval: 2s
  triggers:
    - {type: backlog, target: 50, activation: 5}
    - {type: oldest_unacked_age, target: 30s, activation: 2s}
  scale_up:
    stabilization_window: 10s
    select: min
    policies:
      - {type: instances, value: 2, period: 30s}
  scale_down:
    stabilization_window: 1m
    select: disabled
)";

constexpr char kMinimalPool[] = R"(name: p
subscription: s
command: ./worker
)";

PoolSpec MustParse(const std::string& yaml) {
  Result<PoolSpec> spec = ParsePool(yaml, "pool.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().ToString();
  return spec.ok() ? *spec : PoolSpec{};
}

std::string ParseError(const std::string& yaml) {
  Result<PoolSpec> spec = ParsePool(yaml, "pool.yaml");
  EXPECT_FALSE(spec.ok()) << "parsed:\n" << yaml;
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  return spec.status().message();
}

TEST(ParsePoolTest, FullExample) {
  PoolSpec spec = MustParse(kFullPool);
  EXPECT_EQ(spec.name, "advisor");
  EXPECT_EQ(spec.subscription, "chat-requests");
  EXPECT_EQ(spec.revision.command, "/usr/bin/tidepool");
  EXPECT_EQ(spec.revision.args, (std::vector<std::string>{"worker", "--app", "advisor"}));
  EXPECT_EQ(spec.revision.env,
            (std::map<std::string, std::string>{{"LOG_LEVEL", "info"}, {"WORKERS", "8"}}));
  EXPECT_EQ(spec.revision.secrets,
            (std::map<std::string, std::string>{{"OPENAI_API_KEY", "/run/secrets/openai"}}));
  EXPECT_EQ(spec.revision.memory_limit_bytes, 512 * 1024 * 1024);
  EXPECT_EQ(spec.revision.working_dir, "/srv/advisor");
  EXPECT_EQ(spec.instances, 2);
  EXPECT_EQ(spec.grace_period, milliseconds(45'000));

  EXPECT_EQ(spec.restart.policy, RestartPolicy::kAlways);
  EXPECT_EQ(spec.restart.initial_backoff, milliseconds(500));
  EXPECT_EQ(spec.restart.max_backoff, milliseconds(120'000));
  EXPECT_EQ(spec.restart.reset_after, milliseconds(90'000));
  EXPECT_EQ(spec.restart.crash_loop_restarts, 7);
  EXPECT_EQ(spec.restart.crash_loop_window, milliseconds(600'000));

  ASSERT_TRUE(spec.liveness.has_value());
  EXPECT_EQ(spec.liveness->http_path, "/healthz");
  EXPECT_TRUE(spec.liveness->exec.empty());
  EXPECT_EQ(spec.liveness->initial_delay, milliseconds(10'000));
  EXPECT_EQ(spec.liveness->period, milliseconds(3'000));
  EXPECT_EQ(spec.liveness->timeout, milliseconds(2'000));
  EXPECT_EQ(spec.liveness->failure_threshold, 4);

  EXPECT_EQ(spec.rollout.max_surge, 2);
  EXPECT_EQ(spec.rollout.max_unavailable, 1);

  ASSERT_TRUE(spec.autoscaling.has_value());
  const AutoscalingSpec& as = *spec.autoscaling;
  EXPECT_EQ(as.min_instances, 1);
  EXPECT_EQ(as.max_instances, 20);
  EXPECT_EQ(as.poll_interval, milliseconds(2'000));
  ASSERT_EQ(as.triggers.size(), 2u);
  EXPECT_EQ(as.triggers[0].kind, TriggerKind::kBacklog);
  EXPECT_DOUBLE_EQ(as.triggers[0].target, 50);
  EXPECT_DOUBLE_EQ(as.triggers[0].activation, 5);
  EXPECT_EQ(as.triggers[1].kind, TriggerKind::kOldestUnackedAge);
  EXPECT_DOUBLE_EQ(as.triggers[1].target, 30);
  EXPECT_DOUBLE_EQ(as.triggers[1].activation, 2);

  EXPECT_EQ(as.scale_up.stabilization_window, milliseconds(10'000));
  EXPECT_EQ(as.scale_up.select, SelectPolicy::kMin);
  ASSERT_EQ(as.scale_up.policies.size(), 1u);  // written policies replace the defaults
  EXPECT_EQ(as.scale_up.policies[0].kind, PolicyKind::kInstances);
  EXPECT_DOUBLE_EQ(as.scale_up.policies[0].value, 2);
  EXPECT_EQ(as.scale_up.policies[0].period, milliseconds(30'000));

  EXPECT_EQ(as.scale_down.stabilization_window, milliseconds(60'000));
  EXPECT_EQ(as.scale_down.select, SelectPolicy::kDisabled);
  ASSERT_EQ(as.scale_down.policies.size(), 1u);  // not written: the default stays
  EXPECT_EQ(as.scale_down.policies[0].kind, PolicyKind::kPercent);
}

TEST(ParsePoolTest, Defaults) {
  PoolSpec spec = MustParse(kMinimalPool);
  EXPECT_EQ(spec.revision.command, "./worker");
  EXPECT_TRUE(spec.revision.args.empty());
  EXPECT_EQ(spec.revision.memory_limit_bytes, 0);
  EXPECT_EQ(spec.instances, 1);
  EXPECT_EQ(spec.grace_period, milliseconds(30'000));
  EXPECT_EQ(spec.restart.policy, RestartPolicy::kOnFailure);
  EXPECT_EQ(spec.restart.initial_backoff, milliseconds(1'000));
  EXPECT_EQ(spec.restart.max_backoff, milliseconds(60'000));
  EXPECT_FALSE(spec.liveness.has_value());
  EXPECT_EQ(spec.rollout.max_surge, 1);
  EXPECT_EQ(spec.rollout.max_unavailable, 0);
  EXPECT_FALSE(spec.autoscaling.has_value());
}

TEST(ParsePoolTest, AutoscalingDefaultsAreTheHpaDefaults) {
  PoolSpec spec = MustParse(std::string(kMinimalPool) + R"(autoscaling:
  triggers: [{type: backlog, target: 100}]
)");
  ASSERT_TRUE(spec.autoscaling.has_value());
  const AutoscalingSpec& as = *spec.autoscaling;
  EXPECT_EQ(as.min_instances, 0);
  EXPECT_EQ(as.max_instances, 10);
  EXPECT_EQ(as.poll_interval, milliseconds(1'000));
  EXPECT_DOUBLE_EQ(as.triggers[0].activation, 0);

  EXPECT_EQ(as.scale_up.stabilization_window, milliseconds(0));
  EXPECT_EQ(as.scale_up.select, SelectPolicy::kMax);
  ASSERT_EQ(as.scale_up.policies.size(), 2u);
  EXPECT_EQ(as.scale_up.policies[0].kind, PolicyKind::kPercent);
  EXPECT_DOUBLE_EQ(as.scale_up.policies[0].value, 100);
  EXPECT_EQ(as.scale_up.policies[0].period, milliseconds(15'000));
  EXPECT_EQ(as.scale_up.policies[1].kind, PolicyKind::kInstances);
  EXPECT_DOUBLE_EQ(as.scale_up.policies[1].value, 4);
  EXPECT_EQ(as.scale_up.policies[1].period, milliseconds(15'000));

  EXPECT_EQ(as.scale_down.stabilization_window, milliseconds(300'000));
  EXPECT_EQ(as.scale_down.select, SelectPolicy::kMax);
  ASSERT_EQ(as.scale_down.policies.size(), 1u);
  EXPECT_EQ(as.scale_down.policies[0].kind, PolicyKind::kPercent);
  EXPECT_DOUBLE_EQ(as.scale_down.policies[0].value, 100);
  EXPECT_EQ(as.scale_down.policies[0].period, milliseconds(15'000));

  // A default-constructed spec carries the same defaults.
  AutoscalingSpec constructed;
  EXPECT_EQ(constructed.scale_up.policies.size(), 2u);
  EXPECT_EQ(constructed.scale_down.stabilization_window, milliseconds(300'000));
}

TEST(ParsePoolTest, LivenessExec) {
  PoolSpec spec = MustParse(std::string(kMinimalPool) + R"(liveness:
  exec: [/bin/sh, -c, "test -f /tmp/alive"]
)");
  ASSERT_TRUE(spec.liveness.has_value());
  EXPECT_EQ(spec.liveness->exec, (std::vector<std::string>{"/bin/sh", "-c", "test -f /tmp/alive"}));
  EXPECT_EQ(spec.liveness->period, milliseconds(5'000));
}

TEST(ParsePoolTest, EmptyMappingsAndListsAreEmpty) {
  PoolSpec spec = MustParse(std::string(kMinimalPool) + "env:\nargs:\nsecrets: {}\n");
  EXPECT_TRUE(spec.revision.env.empty());
  EXPECT_TRUE(spec.revision.args.empty());
}

// ---- Errors: each names the file, the line and the key's path.

TEST(ParsePoolErrorTest, UnknownKey) {
  std::string error = ParseError(std::string(kMinimalPool) + "replicas: 3\n");
  EXPECT_THAT(error, HasSubstr("pool.yaml:4: replicas: unknown key (expected one of: name,"));
}

TEST(ParsePoolErrorTest, UnknownNestedKeyInTheFullExample) {
  std::string yaml = kFullPool;
  yaml.replace(yaml.find("    select: min"), 15, "    selekt: min");
  EXPECT_EQ(ParseError(yaml),
            "pool.yaml:36: autoscaling.scale_up.selekt: unknown key (expected one of: "
            "stabilization_window, select, policies)");
}

TEST(ParsePoolErrorTest, WrongTypes) {
  struct Row {
    std::string yaml;
    std::string want;
  };
  const Row rows[] = {
      {"instances: three\n", "pool.yaml:4: instances: expected an integer, got \"three\""},
      {"instances: 2.5\n", "pool.yaml:4: instances: expected an integer, got \"2.5\""},
      {"args: worker\n", "pool.yaml:4: args: expected a list of strings"},
      {"env: [A, B]\n", "pool.yaml:4: env: expected a mapping of names to strings"},
      {"restart: always\n", "pool.yaml:4: restart: expected a mapping"},
      {"args: [a, {b: c}]\n", "pool.yaml:4: args[1]: expected a string"},
      {"autoscaling:\n  triggers:\n    - {type: backlog, target: lots}\n",
       "pool.yaml:6: autoscaling.triggers[0].target: expected a number, got \"lots\""},
      {"autoscaling:\n  max: [1]\n", "pool.yaml:5: autoscaling.max: expected an integer"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.yaml);
    EXPECT_EQ(ParseError(std::string(kMinimalPool) + row.yaml), row.want);
  }
}

TEST(ParsePoolErrorTest, BadValues) {
  struct Row {
    std::string yaml;
    std::string want;
  };
  const Row rows[] = {
      {"grace_period: soon\n", "pool.yaml:4: grace_period: invalid duration \"soon\""},
      {"memory_limit: 1Gb\n", "pool.yaml:4: memory_limit: invalid size \"1Gb\""},
      {"restart: {policy: sometimes}\n",
       "pool.yaml:4: restart.policy: \"sometimes\" is not one of: on-failure, always, never"},
      {"autoscaling:\n  triggers:\n    - {type: cpu, target: 1}\n",
       "pool.yaml:6: autoscaling.triggers[0].type: \"cpu\" is not one of: backlog, "
       "oldest_unacked_age"},
      {"autoscaling:\n  triggers:\n    - {type: oldest_unacked_age, target: 30x}\n",
       "pool.yaml:6: autoscaling.triggers[0].target: invalid duration \"30x\""},
      {"autoscaling:\n  triggers:\n    - {type: backlog}\n",
       "pool.yaml:6: autoscaling.triggers[0]: missing key `target`"},
      {"autoscaling:\n  scale_down:\n    select: most\n",
       "pool.yaml:6: autoscaling.scale_down.select: \"most\" is not one of: max, min, disabled"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.yaml);
    EXPECT_THAT(ParseError(std::string(kMinimalPool) + row.yaml), HasSubstr(row.want));
  }
}

TEST(ParsePoolErrorTest, DuplicateKey) {
  EXPECT_EQ(ParseError(std::string(kMinimalPool) + "name: q\n"),
            "pool.yaml:4: name: duplicate key");
}

TEST(ParsePoolErrorTest, InvalidYaml) {
  EXPECT_THAT(ParseError("name: p\nargs: [a, b\n"), HasSubstr("pool.yaml:3: invalid YAML: "));
}

TEST(ParsePoolErrorTest, NotAMapping) {
  EXPECT_EQ(ParseError("- a\n- b\n"), "pool.yaml:1: expected a mapping (a pool)");
}

TEST(ParsePoolErrorTest, ValidationErrorsNameTheLine) {
  struct Row {
    std::string yaml;
    std::string want;
  };
  const Row rows[] = {
      {"name: Advisor_1\nsubscription: s\ncommand: w\n",
       "pool.yaml:1: name: \"Advisor_1\" is not a valid name"},
      {"name: p\nsubscription: s\n", "pool.yaml:1: command: is required"},
      {"name: p\ncommand: w\n", "pool.yaml:1: subscription: is required"},
      {"name: p\nsubscription: s\ncommand: w\ninstances: -1\n",
       "pool.yaml:4: instances: must not be negative"},
      {"name: p\nsubscription: s\ncommand: w\nautoscaling:\n  min: 5\n  max: 2\n  triggers: "
       "[{type: backlog, target: 10}]\n",
       "pool.yaml:5: autoscaling.min: must not exceed max (5 > 2)"},
      {"name: p\nsubscription: s\ncommand: w\nautoscaling:\n  max: 0\n  triggers: "
       "[{type: backlog, target: 10}]\n",
       "pool.yaml:5: autoscaling.max: must be at least 1"},
      {"name: p\nsubscription: s\ncommand: w\nautoscaling:\n  triggers:\n    - type: backlog\n"
       "      target: 0\n",
       "pool.yaml:7: autoscaling.triggers[0].target: must be greater than 0"},
      {"name: p\nsubscription: s\ncommand: w\nautoscaling: {max: 3}\n",
       "pool.yaml:4: autoscaling.triggers: needs at least one trigger"},
      {"name: p\nsubscription: s\ncommand: w\nrollout: {max_surge: 0}\n",
       "pool.yaml:4: rollout: max_surge + max_unavailable must be at least 1"},
      {"name: p\nsubscription: s\ncommand: w\nliveness:\n  period: 1s\n",
       "pool.yaml:4: liveness: needs exactly one of http_path and exec"},
      {"name: p\nsubscription: s\ncommand: w\nliveness: {http_path: /h, exec: [x]}\n",
       "pool.yaml:4: liveness: needs exactly one of http_path and exec"},
      {"name: p\nsubscription: s\ncommand: w\nliveness: {http_path: healthz}\n",
       "pool.yaml:4: liveness.http_path: must start with '/'"},
      {"name: p\nsubscription: s\ncommand: w\nmemory_limit: 256\n",
       "pool.yaml:4: memory_limit: 256 bytes is below the 1Mi minimum (missing unit?)"},
      {"name: p\nsubscription: s\ncommand: w\nnice: 20\n", "pool.yaml:4: nice: 20 is not in 0-19"},
      {"name: p\nsubscription: s\ncommand: w\nnice: -5\n", "pool.yaml:4: nice: -5 is not in 0-19"},
      {"name: p\nsubscription: s\ncommand: w\ncpus: 3-1\n",
       "pool.yaml:4: cpus: CPU list \"3-1\": range 3-1 runs backwards"},
      {"name: p\nsubscription: s\ncommand: w\ncpus: all\n",
       "pool.yaml:4: cpus: CPU list \"all\": expected CPU numbers and ranges like 0-3,6"},
      {"name: p\nsubscription: s\ncommand: w\nenv: {KEY: a}\nsecrets:\n  KEY: /run/k\n",
       "pool.yaml:6: secrets.KEY: is also set in env"},
      {"name: p\nsubscription: s\ncommand: w\nenv:\n  1BAD: x\n",
       "pool.yaml:5: env.1BAD: is not a valid environment variable name"},
      {"name: p\nsubscription: s\ncommand: w\nrestart: {initial_backoff: 10s, max_backoff: "
       "5s}\n",
       "pool.yaml:4: restart.max_backoff: must not be less than initial_backoff"},
      {"name: p\nsubscription: s\ncommand: w\nautoscaling:\n  triggers: [{type: backlog, "
       "target: 1}]\n  scale_up:\n    policies: []\n",
       "pool.yaml:7: autoscaling.scale_up.policies: needs at least one policy"},
      {"name: p\nsubscription: s\ncommand: w\nautoscaling:\n  triggers: [{type: backlog, "
       "target: 1}]\n  scale_up:\n    policies:\n      - {type: instances, value: 1.5}\n",
       "pool.yaml:8: autoscaling.scale_up.policies[0].value: must be a whole number"},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.yaml);
    EXPECT_THAT(ParseError(row.yaml), HasSubstr(row.want));
  }
}

TEST(ParsePoolErrorTest, ReportsEveryProblem) {
  std::string error =
      ParseError("name: p\nsubscription: s\ncommand: w\ninstances: x\ncolour: red\n");
  EXPECT_EQ(error,
            "pool.yaml:4: instances: expected an integer, got \"x\"\n"
            "pool.yaml:5: colour: unknown key (expected one of: name, subscription, command, "
            "args, env, secrets, memory_limit, working_dir, nice, cpus, instances, grace_period, "
            "restart, liveness, rollout, autoscaling)");
}

// ---- ParsePools

TEST(ParsePoolsTest, ReadsThePoolsListAndIgnoresOtherSections) {
  Result<std::vector<PoolSpec>> pools = ParsePools(R"(data_dir: /var/lib/tidepool
web: {port: 8080}
pools:
  - name: a
    subscription: sa
    command: wa
  - name: b
    subscription: sb
    command: wb
    instances: 3
)",
                                                   "tidepool.yaml");
  ASSERT_TRUE(pools.ok()) << pools.status().ToString();
  ASSERT_EQ(pools->size(), 2u);
  EXPECT_EQ((*pools)[0].name, "a");
  EXPECT_EQ((*pools)[1].name, "b");
  EXPECT_EQ((*pools)[1].instances, 3);
}

TEST(ParsePoolsTest, NoPoolsIsAnEmptyList) {
  for (const char* yaml : {"", "web: {port: 8080}\n", "pools:\n", "pools: []\n"}) {
    SCOPED_TRACE(yaml);
    Result<std::vector<PoolSpec>> pools = ParsePools(yaml, "tidepool.yaml");
    ASSERT_TRUE(pools.ok()) << pools.status().ToString();
    EXPECT_TRUE(pools->empty());
  }
}

TEST(ParsePoolsTest, ErrorsCarryTheListIndex) {
  Result<std::vector<PoolSpec>> pools = ParsePools(R"(pools:
  - name: a
    subscription: sa
    command: wa
  - name: b
    subscription: sb
    command: wb
    autoscaling:
      max: many
)",
                                                   "tidepool.yaml");
  ASSERT_FALSE(pools.ok());
  EXPECT_EQ(pools.status().message(),
            "tidepool.yaml:9: pools[1].autoscaling.max: expected an integer, got \"many\"");
}

TEST(ParsePoolsTest, DuplicateNames) {
  Result<std::vector<PoolSpec>> pools = ParsePools(R"(pools:
  - {name: a, subscription: s, command: w}
  - {name: a, subscription: s, command: w}
)",
                                                   "tidepool.yaml");
  ASSERT_FALSE(pools.ok());
  EXPECT_EQ(pools.status().message(),
            "tidepool.yaml:3: pools[1].name: \"a\" is already the name of pools[0]");
}

TEST(ParsePoolsTest, PoolsMustBeAList) {
  Result<std::vector<PoolSpec>> pools = ParsePools("web: {}\npools: {name: a}\n", "t.yaml");
  ASSERT_FALSE(pools.ok());
  EXPECT_EQ(pools.status().message(), "t.yaml:2: pools: expected a list of pools");
}

// ---- Validate without a file

TEST(ValidateTest, MessagesNameThePath) {
  PoolSpec spec;
  spec.name = "p";
  spec.subscription = "s";
  spec.revision.command = "w";
  EXPECT_TRUE(Validate(spec).ok());

  spec.autoscaling = AutoscalingSpec{};
  spec.autoscaling->triggers.push_back({.kind = TriggerKind::kBacklog, .target = -1});
  Status status = Validate(spec);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "autoscaling.triggers[0].target: must be greater than 0");
}

// ---- Durations and sizes

TEST(ParseDurationTest, AcceptsUnitsAndBareSeconds) {
  struct Row {
    const char* text;
    int64_t want_ms;
  };
  const Row rows[] = {
      {"30s", 30'000},          {"500ms", 500},    {"2m", 120'000},
      {"1h", 3'600'000},        {"30", 30'000},    {"0", 0},
      {"1.5s", 1'500},          {"1m30s", 90'000}, {"0.25", 250},
      {"1h2m3s4ms", 3'723'004},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.text);
    Result<milliseconds> parsed = ParseDuration(row.text);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(parsed->count(), row.want_ms);
  }
}

TEST(ParseDurationTest, RejectsMalformed) {
  for (const char* text : {"", "s", "-5s", "5 s", "5sec", "1m30", "1d", ".s", "1e3s", "abc"}) {
    SCOPED_TRACE(text);
    EXPECT_FALSE(ParseDuration(text).ok());
  }
  EXPECT_THAT(ParseDuration("99999999999999h").status().message(), HasSubstr("too long"));
}

TEST(ParseByteSizeTest, AcceptsSuffixes) {
  struct Row {
    const char* text;
    int64_t want;
  };
  const Row rows[] = {
      {"256Mi", 256LL << 20},
      {"1Gi", 1LL << 30},
      {"500M", 500'000'000},
      {"64k", 64'000},
      {"64K", 64'000},
      {"2Ki", 2048},
      {"1048576", 1 << 20},
      {"1.5Gi", 3LL << 29},
      {"2T", 2'000'000'000'000},
      {"1Ti", 1LL << 40},
      {"0", 0},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.text);
    Result<int64_t> parsed = ParseByteSize(row.text);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(*parsed, row.want);
  }
}

TEST(ParseByteSizeTest, RejectsMalformed) {
  for (const char* text : {"", "Mi", "-1Mi", "1GB", "1gi", "1 Mi", "1e6"}) {
    SCOPED_TRACE(text);
    EXPECT_FALSE(ParseByteSize(text).ok());
  }
}

// ---- Revision digest

RevisionSpec SampleRevision() {
  RevisionSpec revision;
  revision.command = "/usr/bin/tidepool";
  revision.args = {"worker", "--app", "advisor"};
  revision.env = {{"LOG_LEVEL", "info"}};
  revision.secrets = {{"OPENAI_API_KEY", "/run/secrets/openai"}};
  revision.memory_limit_bytes = 512LL << 20;
  revision.working_dir = "/srv";
  return revision;
}

TEST(RevisionDigestTest, IsStableSha256Hex) {
  std::string digest = RevisionDigest(SampleRevision());
  EXPECT_EQ(digest.size(), 64u);
  EXPECT_EQ(digest.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(digest, RevisionDigest(SampleRevision()));
}

TEST(RevisionDigestTest, ChangesWithWhatRuns) {
  const std::string base = RevisionDigest(SampleRevision());
  struct Row {
    const char* what;
    void (*change)(RevisionSpec&);
  };
  const Row rows[] = {
      {"command", [](RevisionSpec& r) { r.command = "/usr/local/bin/tidepool"; }},
      {"args", [](RevisionSpec& r) { r.args.push_back("--verbose"); }},
      {"args split differently",
       [](RevisionSpec& r) {
         r.args = {"worker --app", "advisor"};
       }},
      {"env value", [](RevisionSpec& r) { r.env["LOG_LEVEL"] = "debug"; }},
      {"env added", [](RevisionSpec& r) { r.env["EXTRA"] = ""; }},
      {"secret path", [](RevisionSpec& r) { r.secrets["OPENAI_API_KEY"] = "/run/secrets/b"; }},
      {"env moved to secrets",
       [](RevisionSpec& r) {
         r.env.clear();
         r.secrets["LOG_LEVEL"] = "info";
       }},
      {"memory limit", [](RevisionSpec& r) { r.memory_limit_bytes = 1LL << 30; }},
      {"working dir", [](RevisionSpec& r) { r.working_dir = "/srv/b"; }},
      {"nice", [](RevisionSpec& r) { r.nice = 10; }},
      {"cpus", [](RevisionSpec& r) { r.cpus = "1-3"; }},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.what);
    RevisionSpec revision = SampleRevision();
    row.change(revision);
    EXPECT_NE(RevisionDigest(revision), base);
  }
}

TEST(RevisionDigestTest, IgnoresScalingAndProbes) {
  std::string yaml = kFullPool;
  PoolSpec a = MustParse(yaml);
  yaml.replace(yaml.find("instances: 2"), 12, "instances: 9");
  yaml.replace(yaml.find("  max: 20"), 9, "  max: 30");
  yaml.replace(yaml.find("period: 3s"), 10, "period: 9s");
  PoolSpec b = MustParse(yaml);
  EXPECT_NE(b.instances, a.instances);
  EXPECT_EQ(RevisionDigest(a.revision), RevisionDigest(b.revision));
}

}  // namespace
}  // namespace tidepool::pool
