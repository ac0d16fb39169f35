#include "pool/autoscaler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace tidepool::pool {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

ScalerClock::time_point At(int second) {
  return ScalerClock::time_point{} + seconds(second);
}

// No window and no rate limit, so that a test isolates the stage it is about.
ScalingRules Unlimited() {
  return {.stabilization_window = milliseconds{0}, .policies = {}, .select = SelectPolicy::kMax};
}

ScalingRules Rules(milliseconds window, std::vector<RatePolicy> policies,
                   SelectPolicy select = SelectPolicy::kMax) {
  return {.stabilization_window = window, .policies = std::move(policies), .select = select};
}

RatePolicy Percent(double value, int period_seconds) {
  return {.kind = PolicyKind::kPercent, .value = value, .period = seconds(period_seconds)};
}

RatePolicy Instances(double value, int period_seconds) {
  return {.kind = PolicyKind::kInstances, .value = value, .period = seconds(period_seconds)};
}

Trigger BacklogTrigger(double target, double activation = 0) {
  return {.kind = TriggerKind::kBacklog, .target = target, .activation = activation};
}

Trigger AgeTrigger(double target_seconds, double activation_seconds = 0) {
  return {.kind = TriggerKind::kOldestUnackedAge,
          .target = target_seconds,
          .activation = activation_seconds};
}

AutoscalingSpec Spec(std::vector<Trigger> triggers, int min, int max) {
  AutoscalingSpec spec;
  spec.min_instances = min;
  spec.max_instances = max;
  spec.triggers = std::move(triggers);
  spec.scale_up = Unlimited();
  spec.scale_down = Unlimited();
  return spec;
}

Observation Backlog(int second, int current, double backlog) {
  return {.now = At(second), .current = current, .backlog = backlog};
}

// ---- The formula

TEST(AutoscalerFormulaTest, CeilOfMetricOverTarget) {
  struct Row {
    double backlog;
    double target;
    int want;
  };
  const Row rows[] = {
      {1, 100, 1},   {99, 100, 1},    {100, 100, 1},  {101, 100, 2},
      {250, 100, 3}, {1000, 100, 10}, {1.1, 0.1, 11},  // 1.1 / 0.1 is 11.000000000000002 in double
      {0.3, 0.1, 3}, {0.001, 100, 1},                  // any positive metric asks for one instance
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(testing::Message() << row.backlog << " / " << row.target);
    Autoscaler scaler(Spec({BacklogTrigger(row.target)}, 0, 1000));
    Decision d = scaler.Evaluate(Backlog(0, 1, row.backlog));
    ASSERT_EQ(d.triggers.size(), 1u);
    EXPECT_EQ(d.triggers[0].instances, row.want);
    EXPECT_DOUBLE_EQ(d.triggers[0].metric, row.backlog);
    EXPECT_DOUBLE_EQ(d.triggers[0].target, row.target);
    EXPECT_EQ(d.recommended, row.want);
    EXPECT_EQ(d.desired, row.want);
    EXPECT_EQ(d.limited_by, ScaleLimit::kNone);
  }
}

TEST(AutoscalerFormulaTest, MultipleTriggersTakeTheMax) {
  Autoscaler scaler(Spec({BacklogTrigger(100), AgeTrigger(30)}, 0, 100));

  Decision d = scaler.Evaluate(
      {.now = At(0), .current = 1, .backlog = 350, .oldest_unacked_age_seconds = 90});
  ASSERT_EQ(d.triggers.size(), 2u);
  EXPECT_EQ(d.triggers[0].kind, TriggerKind::kBacklog);
  EXPECT_EQ(d.triggers[0].instances, 4);
  EXPECT_EQ(d.triggers[1].kind, TriggerKind::kOldestUnackedAge);
  EXPECT_DOUBLE_EQ(d.triggers[1].metric, 90);
  EXPECT_DOUBLE_EQ(d.triggers[1].target, 30);
  EXPECT_EQ(d.triggers[1].instances, 3);
  EXPECT_EQ(d.desired, 4);

  d = scaler.Evaluate(
      {.now = At(1), .current = 4, .backlog = 50, .oldest_unacked_age_seconds = 200});
  EXPECT_EQ(d.triggers[0].instances, 1);
  EXPECT_EQ(d.triggers[1].instances, 7);  // ceil(200 / 30)
  EXPECT_EQ(d.desired, 7);
}

// ---- Stabilization

TEST(AutoscalerStabilizationTest, ScaleUpUsesTheMinimumOverTheWindow) {
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 100);
  spec.scale_up = Rules(seconds(60), {});
  Autoscaler scaler(spec);

  EXPECT_EQ(scaler.Evaluate(Backlog(0, 2, 200)).desired, 2);

  Decision d = scaler.Evaluate(Backlog(10, 2, 500));  // min(2 at t0, 5) = 2
  EXPECT_EQ(d.recommended, 5);
  EXPECT_EQ(d.stabilized, 2);
  EXPECT_EQ(d.desired, 2);
  EXPECT_EQ(d.limited_by, ScaleLimit::kStabilization);

  EXPECT_EQ(scaler.Evaluate(Backlog(30, 2, 600)).desired, 2);  // min(2, 5, 6)

  d = scaler.Evaluate(Backlog(61, 2, 600));  // t0 left the window: min(5, 6, 6)
  EXPECT_EQ(d.desired, 5);
  EXPECT_EQ(d.limited_by, ScaleLimit::kStabilization);

  d = scaler.Evaluate(Backlog(71, 5, 600));  // t10 left too: min(6, 6, 6)
  EXPECT_EQ(d.desired, 6);
  EXPECT_EQ(d.limited_by, ScaleLimit::kNone);
}

TEST(AutoscalerStabilizationTest, BriefDipDoesNotScaleDownBeforeTheWindow) {
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 100);
  spec.scale_down = Rules(seconds(300), {});
  Autoscaler scaler(spec);

  EXPECT_EQ(scaler.Evaluate(Backlog(0, 5, 500)).desired, 5);

  Decision dip = scaler.Evaluate(Backlog(100, 5, 100));
  EXPECT_EQ(dip.recommended, 1);
  EXPECT_EQ(dip.stabilized, 5);
  EXPECT_EQ(dip.desired, 5);
  EXPECT_EQ(dip.limited_by, ScaleLimit::kStabilization);
  EXPECT_EQ(dip.reason,
            "hold at 5: backlog 100/100 -> 1; held by the scale-down stabilization window "
            "(300s): 5");

  EXPECT_EQ(scaler.Evaluate(Backlog(200, 5, 500)).desired, 5);  // the load came back
  EXPECT_EQ(scaler.Evaluate(Backlog(350, 5, 100)).desired, 5);  // max(1, 5 at t200, 1)
  EXPECT_EQ(scaler.Evaluate(Backlog(499, 5, 100)).desired, 5);  // t200 still inside

  Decision d = scaler.Evaluate(Backlog(500, 5, 100));  // (200, 500]: only 1s
  EXPECT_EQ(d.desired, 1);
  EXPECT_EQ(d.limited_by, ScaleLimit::kNone);
  EXPECT_EQ(d.reason, "scale down 5 -> 1: backlog 100/100 -> 1");
}

// ---- Rate policies

TEST(AutoscalerRatePolicyTest, PercentDoublesPerPeriod) {
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 100);
  spec.scale_up = Rules(seconds(0), {Percent(100, 15)});
  Autoscaler scaler(spec);

  Decision d = scaler.Evaluate(Backlog(0, 2, 1000));
  EXPECT_EQ(d.recommended, 10);
  EXPECT_EQ(d.rate_limited, 4);
  EXPECT_EQ(d.desired, 4);
  EXPECT_EQ(d.limited_by, ScaleLimit::kRatePolicy);
  EXPECT_EQ(d.reason,
            "scale up 2 -> 4: backlog 1000/100 -> 10; limited by the scale-up rate policies: 4 "
            "now");

  // The +2 at t0 is inside the period: it started at 2, so 4 is all it may have.
  d = scaler.Evaluate(Backlog(5, 4, 1000));
  EXPECT_EQ(d.desired, 4);
  EXPECT_EQ(d.limited_by, ScaleLimit::kRatePolicy);

  EXPECT_EQ(scaler.Evaluate(Backlog(15, 4, 1000)).desired, 8);  // the t0 event expired
  d = scaler.Evaluate(Backlog(30, 8, 1000));                    // 16 allowed, 10 wanted
  EXPECT_EQ(d.desired, 10);
  EXPECT_EQ(d.limited_by, ScaleLimit::kNone);
}

TEST(AutoscalerRatePolicyTest, InstancesAddsAFixedNumberPerPeriod) {
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 100);
  spec.scale_up = Rules(seconds(0), {Instances(4, 15)});
  Autoscaler scaler(spec);

  EXPECT_EQ(scaler.Evaluate(Backlog(0, 2, 2000)).desired, 6);
  EXPECT_EQ(scaler.Evaluate(Backlog(10, 6, 2000)).desired, 6);
  EXPECT_EQ(scaler.Evaluate(Backlog(15, 6, 2000)).desired, 10);
}

TEST(AutoscalerRatePolicyTest, SelectPicksAmongPolicies) {
  struct Row {
    SelectPolicy select;
    int current;
    double backlog;
    int want;
  };
  // Percent 100 allows 2 * current; instances 4 allows current + 4.
  const Row rows[] = {
      {SelectPolicy::kMax, 2, 2000, 6},      {SelectPolicy::kMin, 2, 2000, 4},
      {SelectPolicy::kMax, 10, 5000, 20},    {SelectPolicy::kMin, 10, 5000, 14},
      {SelectPolicy::kDisabled, 2, 2000, 2},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(testing::Message()
                 << "select " << static_cast<int>(row.select) << ", current " << row.current);
    AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 100);
    spec.scale_up = Rules(seconds(0), {Percent(100, 15), Instances(4, 15)}, row.select);
    Autoscaler scaler(spec);
    Decision d = scaler.Evaluate(Backlog(0, row.current, row.backlog));
    EXPECT_EQ(d.desired, row.want);
    EXPECT_EQ(d.limited_by, ScaleLimit::kRatePolicy);
  }
}

TEST(AutoscalerRatePolicyTest, DisabledScaleDownHolds) {
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 100);
  spec.scale_down = Rules(seconds(0), {Percent(100, 15)}, SelectPolicy::kDisabled);
  Autoscaler scaler(spec);
  Decision d = scaler.Evaluate(Backlog(0, 5, 100));
  EXPECT_EQ(d.desired, 5);
  EXPECT_EQ(d.limited_by, ScaleLimit::kRatePolicy);
  EXPECT_EQ(d.reason,
            "hold at 5: backlog 100/100 -> 1; limited by the scale-down rate policies: 5 now");
}

TEST(AutoscalerRatePolicyTest, PercentScaleDownRoundsTheRemovalUp) {
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 100);
  spec.scale_down = Rules(seconds(0), {Percent(50, 60)});
  Autoscaler scaler(spec);

  EXPECT_EQ(scaler.Evaluate(Backlog(0, 10, 100)).desired, 5);   // 10 - ceil(5)
  EXPECT_EQ(scaler.Evaluate(Backlog(30, 5, 100)).desired, 5);   // period started at 10
  EXPECT_EQ(scaler.Evaluate(Backlog(60, 5, 100)).desired, 2);   // 5 - ceil(2.5)
  EXPECT_EQ(scaler.Evaluate(Backlog(120, 2, 100)).desired, 1);  // 2 - ceil(1)

  Autoscaler from_three(spec);
  EXPECT_EQ(from_three.Evaluate(Backlog(0, 3, 0)).desired, 1);  // 3 - ceil(1.5)
}

TEST(AutoscalerRatePolicyTest, PeriodStartCountsScaleDownsToo) {
  // Flapping does not buy extra scale-up: the period's starting count adds back the removals.
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 100);
  spec.scale_up = Rules(seconds(0), {Instances(4, 60)});
  Autoscaler scaler(spec);

  EXPECT_EQ(scaler.Evaluate(Backlog(0, 2, 1000)).desired, 6);
  EXPECT_EQ(scaler.Evaluate(Backlog(10, 6, 100)).desired, 1);
  // Start of the period: 1 - 4 added + 5 removed = 2; 2 + 4 = 6.
  EXPECT_EQ(scaler.Evaluate(Backlog(20, 1, 1000)).desired, 6);
}

// ---- Activation and scale to zero

TEST(AutoscalerActivationTest, LeavesZeroOnlyAboveTheThreshold) {
  struct Row {
    double backlog;
    int want;
    ScaleLimit limited_by;
  };
  // Default scale-up rules: from 0, percent allows 0 and instances allows 4.
  const Row rows[] = {
      {30, 0, ScaleLimit::kActivation},
      {50, 0, ScaleLimit::kActivation},  // at the threshold is not above it
      {51, 1, ScaleLimit::kNone},
      {1000, 4, ScaleLimit::kRatePolicy},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(testing::Message() << "backlog " << row.backlog);
    AutoscalingSpec spec = Spec({BacklogTrigger(100, 50)}, 0, 10);
    spec.scale_up = DefaultScaleUpRules();
    Autoscaler scaler(spec);
    Decision d = scaler.Evaluate(Backlog(0, 0, row.backlog));
    EXPECT_EQ(d.desired, row.want);
    EXPECT_EQ(d.triggers[0].active, row.backlog > 50);
    EXPECT_EQ(d.limited_by, row.limited_by);
  }
}

TEST(AutoscalerActivationTest, PercentOnlyPolicyStillWakesAnIdlePool) {
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 10);
  spec.scale_up = Rules(seconds(0), {Percent(100, 15)});
  Autoscaler scaler(spec);
  Decision d = scaler.Evaluate(Backlog(0, 0, 300));
  EXPECT_EQ(d.desired, 1);
  EXPECT_EQ(d.limited_by, ScaleLimit::kRatePolicy);
}

TEST(AutoscalerActivationTest, ScalesToZeroOnlyWithMinZero) {
  Autoscaler idle(Spec({BacklogTrigger(100)}, 0, 10));
  Decision d = idle.Evaluate(Backlog(0, 2, 0));
  EXPECT_EQ(d.desired, 0);
  EXPECT_EQ(d.limited_by, ScaleLimit::kNone);

  Autoscaler below_activation(Spec({BacklogTrigger(100, 20)}, 0, 10));
  d = below_activation.Evaluate(Backlog(0, 2, 10));
  EXPECT_EQ(d.triggers[0].instances, 1);
  EXPECT_EQ(d.recommended, 0);
  EXPECT_EQ(d.desired, 0);
  EXPECT_EQ(d.limited_by, ScaleLimit::kActivation);
  EXPECT_EQ(d.reason,
            "scale down 2 -> 0: backlog 10/100 -> 1 (not above activation 20); no trigger above "
            "its activation threshold: 0");

  Autoscaler min_one(Spec({BacklogTrigger(100, 20)}, 1, 10));
  d = min_one.Evaluate(Backlog(0, 2, 10));
  EXPECT_EQ(d.desired, 1);
  EXPECT_EQ(d.limited_by, ScaleLimit::kClamp);
}

TEST(AutoscalerActivationTest, OneActiveTriggerActivatesAll) {
  // The inactive trigger still contributes its recommendation, as under KEDA.
  Autoscaler scaler(Spec({BacklogTrigger(100, 50), AgeTrigger(20, 10)}, 0, 10));
  Decision d = scaler.Evaluate(
      {.now = At(0), .current = 0, .backlog = 30, .oldest_unacked_age_seconds = 40});
  EXPECT_FALSE(d.triggers[0].active);
  EXPECT_TRUE(d.triggers[1].active);
  EXPECT_EQ(d.recommended, 2);
  EXPECT_EQ(d.desired, 2);

  d = scaler.Evaluate(
      {.now = At(1), .current = 2, .backlog = 130, .oldest_unacked_age_seconds = 5});
  EXPECT_EQ(d.recommended, 2);  // backlog is active now: ceil(130 / 100)
}

// ---- Clamp

TEST(AutoscalerClampTest, ClampsToMinAndMax) {
  struct Row {
    int current;
    double backlog;
    int want;
  };
  const Row rows[] = {
      {2, 2000, 5},  // wants 20, max 5
      {3, 100, 3},   // wants 1, min 3
      {8, 800, 5},   // above max after max was lowered
      {1, 0, 3},     // below min
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(testing::Message() << "current " << row.current << ", backlog " << row.backlog);
    Autoscaler scaler(Spec({BacklogTrigger(100)}, 3, 5));
    Decision d = scaler.Evaluate(Backlog(0, row.current, row.backlog));
    EXPECT_EQ(d.desired, row.want);
    EXPECT_EQ(d.limited_by, ScaleLimit::kClamp);
  }
}

TEST(AutoscalerClampTest, ClampOverridesRatePolicy) {
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 6, 10);
  spec.scale_up = Rules(seconds(0), {Instances(1, 60)});
  Autoscaler scaler(spec);
  Decision d = scaler.Evaluate(Backlog(0, 2, 1000));
  EXPECT_EQ(d.rate_limited, 3);
  EXPECT_EQ(d.desired, 6);
  EXPECT_EQ(d.limited_by, ScaleLimit::kClamp);
}

// ---- Missing and empty metrics

TEST(AutoscalerMetricsTest, NoMetricHoldsTheCurrentCount) {
  Autoscaler scaler(Spec({BacklogTrigger(100)}, 0, 10));
  Decision d = scaler.Evaluate({.now = At(0), .current = 4, .draining = 1});
  EXPECT_EQ(d.desired, 4);
  EXPECT_FALSE(d.triggers[0].available);
  EXPECT_EQ(d.limited_by, ScaleLimit::kMissingMetrics);
  EXPECT_EQ(d.draining, 1);
  EXPECT_EQ(d.reason, "hold at 4: backlog unavailable; no metric available: holding; 1 draining");

  d = scaler.Evaluate(
      {.now = At(1), .current = 4, .backlog = std::numeric_limits<double>::quiet_NaN()});
  EXPECT_EQ(d.desired, 4);
  EXPECT_EQ(d.limited_by, ScaleLimit::kMissingMetrics);

  Autoscaler below_min(Spec({BacklogTrigger(100)}, 2, 10));
  d = below_min.Evaluate({.now = At(0), .current = 1});
  EXPECT_EQ(d.desired, 2);
  EXPECT_EQ(d.limited_by, ScaleLimit::kClamp);
}

TEST(AutoscalerMetricsTest, MissingMetricAllowsScaleUpButNotDown) {
  Autoscaler scaler(Spec({BacklogTrigger(100), AgeTrigger(30)}, 0, 10));
  Decision d = scaler.Evaluate({.now = At(0), .current = 4, .oldest_unacked_age_seconds = 10});
  EXPECT_EQ(d.triggers[1].instances, 1);
  EXPECT_EQ(d.recommended, 4);
  EXPECT_EQ(d.desired, 4);
  EXPECT_EQ(d.limited_by, ScaleLimit::kMissingMetrics);

  d = scaler.Evaluate({.now = At(1), .current = 4, .oldest_unacked_age_seconds = 180});
  EXPECT_EQ(d.desired, 6);
  EXPECT_EQ(d.limited_by, ScaleLimit::kNone);
}

TEST(AutoscalerMetricsTest, ZeroAndNegativeMetricsRecommendZero) {
  Autoscaler scaler(Spec({BacklogTrigger(100)}, 0, 10));
  Decision d = scaler.Evaluate(Backlog(0, 3, 0));
  EXPECT_EQ(d.triggers[0].instances, 0);
  EXPECT_EQ(d.desired, 0);

  d = scaler.Evaluate(Backlog(1, 0, -5));
  EXPECT_DOUBLE_EQ(d.triggers[0].metric, 0);
  EXPECT_EQ(d.desired, 0);
  EXPECT_EQ(d.reason, "hold at 0: backlog 0/100 -> 0 (not above activation 0)");
}

TEST(AutoscalerMetricsTest, NoTriggersHolds) {
  Autoscaler scaler(Spec({}, 0, 10));
  Decision d = scaler.Evaluate(Backlog(0, 3, 5000));
  EXPECT_TRUE(d.triggers.empty());
  EXPECT_EQ(d.desired, 3);
  EXPECT_EQ(d.limited_by, ScaleLimit::kMissingMetrics);
}

TEST(AutoscalerTest, UpdateSpecKeepsTheWindows) {
  AutoscalingSpec spec = Spec({BacklogTrigger(100)}, 0, 100);
  spec.scale_down = Rules(seconds(300), {});
  Autoscaler scaler(spec);
  EXPECT_EQ(scaler.Evaluate(Backlog(0, 5, 500)).desired, 5);

  spec.max_instances = 50;
  scaler.UpdateSpec(spec);
  EXPECT_EQ(scaler.spec().max_instances, 50);
  EXPECT_EQ(scaler.Evaluate(Backlog(10, 5, 100)).desired, 5);  // t0's 5 is still in the window
}

// The example of docs/pools.md, with the default rules.
TEST(AutoscalerTest, DefaultsWorkedExample) {
  AutoscalingSpec spec;
  spec.min_instances = 0;
  spec.max_instances = 20;
  spec.triggers = {BacklogTrigger(100)};
  Autoscaler scaler(spec);

  EXPECT_EQ(scaler.Evaluate(Backlog(0, 0, 1000)).desired, 4);    // max(0 + 100%, 0 + 4)
  EXPECT_EQ(scaler.Evaluate(Backlog(14, 4, 1000)).desired, 4);   // the period started at 0
  EXPECT_EQ(scaler.Evaluate(Backlog(15, 4, 1000)).desired, 8);   // max(4 * 2, 4 + 4)
  EXPECT_EQ(scaler.Evaluate(Backlog(30, 8, 1000)).desired, 10);  // 16 allowed
  EXPECT_EQ(scaler.Evaluate(Backlog(31, 10, 0)).desired, 10);    // 10 at t30 in the window
  EXPECT_EQ(scaler.Evaluate(Backlog(329, 10, 0)).desired, 10);
  EXPECT_EQ(scaler.Evaluate(Backlog(330, 10, 0)).desired, 0);  // 300 s after the last 10
}

TEST(AutoscalerTest, LimitNamesAreStable) {
  EXPECT_EQ(ScaleLimitName(ScaleLimit::kNone), "none");
  EXPECT_EQ(ScaleLimitName(ScaleLimit::kActivation), "activation");
  EXPECT_EQ(ScaleLimitName(ScaleLimit::kMissingMetrics), "missing_metrics");
  EXPECT_EQ(ScaleLimitName(ScaleLimit::kStabilization), "stabilization");
  EXPECT_EQ(ScaleLimitName(ScaleLimit::kRatePolicy), "rate_policy");
  EXPECT_EQ(ScaleLimitName(ScaleLimit::kClamp), "clamp");
}

}  // namespace
}  // namespace tidepool::pool
