// PoolSpec: a worker pool as declared in the config file (YAML; docs/pools.md). Parsing
// reports unknown keys and bad values with the key's path and the file line.
//
// A revision is the part of a spec that changes what runs (command, args, env, secrets,
// memory limit); any change to it makes a new revision. Scaling, split and probe settings
// change without a new revision.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/units.h"

namespace tidepool::pool {

enum class RestartPolicy { kOnFailure, kAlways, kNever };

struct RestartSpec {
  RestartPolicy policy = RestartPolicy::kOnFailure;
  std::chrono::milliseconds initial_backoff{1'000};
  std::chrono::milliseconds max_backoff{60'000};
  // An instance that ran at least this long before exiting resets its backoff.
  std::chrono::milliseconds reset_after{60'000};
  // Crash loop: this many crashes within `crash_loop_window` marks the instance crash-looping
  // (reported; restarts continue at max_backoff).
  int crash_loop_restarts = 5;
  std::chrono::milliseconds crash_loop_window{120'000};
};

struct LivenessSpec {
  // Exactly one of: an HTTP GET on 127.0.0.1:$PORT (the pool gives each instance a PORT) of
  // http_path, expecting 2xx; or a command run with the instance's env, expecting exit 0.
  std::string http_path{};
  std::vector<std::string> exec{};
  std::chrono::milliseconds initial_delay{5'000};
  std::chrono::milliseconds period{5'000};
  std::chrono::milliseconds timeout{1'000};
  int failure_threshold = 3;
};

enum class TriggerKind { kBacklog, kOldestUnackedAge };

struct Trigger {
  TriggerKind kind = TriggerKind::kBacklog;
  // kBacklog: messages per instance; kOldestUnackedAge: seconds of age per instance.
  double target = 100;
  // At or below this (for every trigger) a pool at 0 stays at 0, and a pool at min 0 goes
  // to 0. Same unit as `target`.
  double activation = 0;
};

enum class PolicyKind { kInstances, kPercent };

struct RatePolicy {
  PolicyKind kind = PolicyKind::kPercent;
  double value = 100;  // instances, or percent of the current count
  std::chrono::milliseconds period{15'000};
};

enum class SelectPolicy { kMax, kMin, kDisabled };

struct ScalingRules {
  std::chrono::milliseconds stabilization_window{0};
  // The parser never yields an empty list (Validate rejects one); the autoscaler treats an
  // empty list as "no rate limit".
  std::vector<RatePolicy> policies{};
  SelectPolicy select = SelectPolicy::kMax;
};

// The defaults of Kubernetes' HPA (and so of KEDA).
ScalingRules DefaultScaleUpRules();
ScalingRules DefaultScaleDownRules();

struct AutoscalingSpec {
  int min_instances = 0;
  int max_instances = 10;
  std::vector<Trigger> triggers{};
  std::chrono::milliseconds poll_interval{1'000};
  ScalingRules scale_up = DefaultScaleUpRules();      // stabilization 0, +100% or +4 per 15 s, max
  ScalingRules scale_down = DefaultScaleDownRules();  // stabilization 300 s, -100% per 15 s
};

struct RolloutSpec {
  int max_surge = 1;
  int max_unavailable = 0;
};

// The part of a spec that defines what runs.
struct RevisionSpec {
  std::string command{};
  std::vector<std::string> args{};
  std::map<std::string, std::string> env{};
  // Environment variable name -> file holding its value. Read at each start; values are
  // never printed.
  std::map<std::string, std::string> secrets{};
  int64_t memory_limit_bytes = 0;  // 0: none
  std::string working_dir{};
  // CPU priority of the instances, as nice(1): 0 (default) to 19, the higher the more they
  // yield the CPU to other processes (a web tier on the same machine).
  int nice = 0;
  // The CPUs the instances may run on, as a CPU list ("1-3,6"); empty: any. Keeps them off the
  // CPUs a web tier on the same machine needs to answer at once.
  std::string cpus{};
};

struct PoolSpec {
  std::string name{};
  std::string subscription{};
  RevisionSpec revision{};
  // Manual scaling when autoscaling is absent; ignored when it is present.
  int instances = 1;
  std::optional<AutoscalingSpec> autoscaling{};
  std::chrono::milliseconds grace_period{30'000};
  RestartSpec restart{};
  std::optional<LivenessSpec> liveness{};
  RolloutSpec rollout{};
};

// Content hash of a revision spec (hex), so that re-deploying an unchanged spec makes no new
// revision.
std::string RevisionDigest(const RevisionSpec& spec);

// Parses one pool (a YAML mapping) or the `pools:` list of a config file (other top-level keys
// are left to their owners; pool names must be unique). `origin` names the file in error
// messages ("pool.yaml:12: pools[0].autoscaling.max: expected an integer"). Both also run
// Validate, so a returned spec is valid. On failure the status (kInvalidArgument) lists every
// problem found, one per line, each as "ORIGIN:LINE: path.to.key: what is wrong" (LINE is
// 1-based).
Result<PoolSpec> ParsePool(const std::string& yaml_text, const std::string& origin);
Result<std::vector<PoolSpec>> ParsePools(const std::string& yaml_text, const std::string& origin);

// Checks the rules a parsed spec must meet (docs/pools.md). On failure (kInvalidArgument)
// the message lists every problem, one per line, as "path.to.key: what is wrong".
Status Validate(const PoolSpec& spec);

// Durations and sizes (common/units.h), as pool specs write them.
using tidepool::ParseByteSize;
using tidepool::ParseDuration;

}  // namespace tidepool::pool
