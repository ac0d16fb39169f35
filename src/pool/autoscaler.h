// Autoscaler: turns queue metrics into a desired instance count for one pool, the way the
// Kubernetes HPA does under KEDA (docs/pools.md, "How the autoscaler decides"):
//
//   per trigger   ceil(metric / target)            max across triggers
//   activation    every metric <= its activation   -> 0
//   stabilization up: min over the scale_up window; down: max over the scale_down window
//   rate policies each bounds the change over its period; select max / min / disabled
//   clamp         [min, max]
//
// Pure and deterministic: no threads, no clock, no I/O. The caller reads the metrics (every
// poll_interval), passes the time in, applies `desired` and records the Decision.
#pragma once

#include <chrono>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pool/spec.h"

namespace tidepool::pool {

using ScalerClock = std::chrono::steady_clock;

// What the caller observed at one poll.
struct Observation {
  ScalerClock::time_point now{};
  // Instances that are capacity: running + starting. Starting ones count so that a scale-up
  // is not repeated while its instances boot.
  int current = 0;
  // Instances draining after a scale-down: still finishing work, but not capacity. Reported in
  // the Decision; they do not change the arithmetic.
  int draining = 0;
  // Queue metrics for the pool's subscription; nullopt when the read failed or the backend
  // does not report it. Triggers pick the metric of their kind.
  std::optional<double> backlog{};                     // messages
  std::optional<double> oldest_unacked_age_seconds{};  // seconds
};

// The stage that made `desired` differ from the triggers' raw recommendation: the last stage
// that changed the value.
enum class ScaleLimit {
  kNone,
  kActivation,      // every metric was at or below its activation threshold: 0
  kMissingMetrics,  // some or all metrics unavailable: no scale-down
  kStabilization,
  kRatePolicy,
  kClamp,  // [min, max]
};

// "none", "activation", "missing_metrics", "stabilization", "rate_policy", "clamp": a stable
// name for metric labels and logs.
std::string_view ScaleLimitName(ScaleLimit limit);

struct TriggerRecommendation {
  TriggerKind kind = TriggerKind::kBacklog;
  bool available = false;  // false: the metric was missing; `metric` and `instances` are 0
  double metric = 0;
  double target = 0;
  double activation = 0;
  bool active = false;  // metric > activation
  int instances = 0;    // ceil(metric / target)
};

struct Decision {
  ScalerClock::time_point at{};
  int current = 0;
  int draining = 0;
  std::vector<TriggerRecommendation> triggers{};  // in spec order
  // Max over the triggers after activation (0 when no trigger is active); with a missing
  // metric, never below `current`; `current` when no metric is available.
  int recommended = 0;
  int stabilized = 0;    // after the stabilization windows
  int rate_limited = 0;  // after the rate policies
  int desired = 0;       // after the clamp to [min, max]: what the pool should run
  ScaleLimit limited_by = ScaleLimit::kNone;
  // One line for logs and the admin API, e.g.
  // "scale up 2 -> 4: backlog 950/100 -> 10; limited by rate policy (at most 4 now)".
  std::string reason{};
};

// Not thread-safe: one owner (the pool's supervisor loop) calls Evaluate.
class Autoscaler {
 public:
  explicit Autoscaler(AutoscalingSpec spec);

  // One evaluation. Assumes the caller applies `desired`: a decision that changes the count is
  // recorded as a scale event, which the rate policies of later evaluations count.
  // REQUIRES: observation.now is not earlier than that of the previous call.
  Decision Evaluate(const Observation& observation);

  // New scaling settings (a config reload). The recommendation and scale-event history is
  // kept, so a reload does not reset the windows.
  void UpdateSpec(AutoscalingSpec spec);

  const AutoscalingSpec& spec() const { return spec_; }

 private:
  struct Recommendation {
    ScalerClock::time_point at;
    int instances;
  };
  struct ScaleEvent {
    ScalerClock::time_point at;
    int change;  // desired - current; never 0
  };

  int Stabilize(ScalerClock::time_point now, int recommended, int current) const;
  int ScaleUpLimit(ScalerClock::time_point now, int current) const;
  int ScaleDownLimit(ScalerClock::time_point now, int current) const;
  int PeriodStartCount(ScalerClock::time_point now, std::chrono::milliseconds period,
                       int current) const;
  void Forget(ScalerClock::time_point now);

  AutoscalingSpec spec_;
  std::deque<Recommendation> recommendations_;  // oldest first
  std::deque<ScaleEvent> events_;               // oldest first
};

}  // namespace tidepool::pool
