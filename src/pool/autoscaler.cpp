#include "pool/autoscaler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

namespace tidepool::pool {

using std::chrono::milliseconds;

namespace {

// Caps every intermediate count: far above any real pool, far below int overflow.
constexpr int kMaxRecommendation = 1'000'000;
// metric / target and count * percent / 100 are computed in double, where 1.1 / 0.1 is
// 11.000000000000002; without this slack ceil() would ask for one instance too many.
constexpr double kRoundingSlack = 1e-9;
constexpr double kPercentBase = 100;

int ToCount(double value) {
  if (!(value > 0)) return 0;
  if (value >= kMaxRecommendation) return kMaxRecommendation;
  return static_cast<int>(value);
}

int CeilRatio(double metric, double target) {
  if (!(metric > 0)) return 0;
  // Any positive metric asks for at least one instance, however small against its target.
  return std::max(1, ToCount(std::ceil(metric / target - kRoundingSlack)));
}

// Instances that `percent` of `count` stands for, rounded up, as the HPA rounds.
int CeilPercent(int count, double percent) {
  return ToCount(std::ceil(count * percent / kPercentBase - kRoundingSlack));
}

std::string FormatNumber(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", value);
  return buffer;
}

std::string FormatSeconds(milliseconds duration) {
  return FormatNumber(static_cast<double>(duration.count()) / 1000.0) + "s";
}

std::string_view TriggerName(TriggerKind kind) {
  return kind == TriggerKind::kBacklog ? "backlog" : "oldest_unacked_age";
}

std::string DescribeTrigger(const TriggerRecommendation& trigger) {
  std::string unit = trigger.kind == TriggerKind::kOldestUnackedAge ? "s" : "";
  std::string text(TriggerName(trigger.kind));
  if (!trigger.available) return text + " unavailable";
  // Appends, not `" " + FormatNumber(...)`: GCC 12 at -O3 warns (-Wrestrict) about
  // operator+(const char*, std::string&&), a false positive that -Werror turns into an error.
  text.append(" ").append(FormatNumber(trigger.metric)).append(unit);
  text.append("/").append(FormatNumber(trigger.target)).append(unit);
  text.append(" -> ").append(std::to_string(trigger.instances));
  if (!trigger.active) {
    text.append(" (not above activation ").append(FormatNumber(trigger.activation));
    text.append(unit).append(")");
  }
  return text;
}

std::string DescribeLimit(const Decision& d, const AutoscalingSpec& spec) {
  switch (d.limited_by) {
    case ScaleLimit::kNone:
      return "";
    case ScaleLimit::kActivation:
      return "no trigger above its activation threshold: 0";
    case ScaleLimit::kMissingMetrics:
      if (std::none_of(d.triggers.begin(), d.triggers.end(),
                       [](const TriggerRecommendation& t) { return t.available; })) {
        return "no metric available: holding";
      }
      return "a metric is unavailable: no scale-down";
    case ScaleLimit::kStabilization:
      if (d.stabilized > d.recommended) {
        return "held by the scale-down stabilization window (" +
               FormatSeconds(spec.scale_down.stabilization_window) +
               "): " + std::to_string(d.stabilized);
      }
      return "held by the scale-up stabilization window (" +
             FormatSeconds(spec.scale_up.stabilization_window) +
             "): " + std::to_string(d.stabilized);
    case ScaleLimit::kRatePolicy:
      return std::string("limited by the scale-") + (d.stabilized > d.current ? "up" : "down") +
             " rate policies: " + std::to_string(d.rate_limited) + " now";
    case ScaleLimit::kClamp:
      return "clamped to [" + std::to_string(spec.min_instances) + ", " +
             std::to_string(spec.max_instances) + "]";
  }
  return "";
}

std::string DescribeDecision(const Decision& d, const AutoscalingSpec& spec) {
  std::string text;
  if (d.desired > d.current) {
    text = "scale up " + std::to_string(d.current) + " -> " + std::to_string(d.desired);
  } else if (d.desired < d.current) {
    text = "scale down " + std::to_string(d.current) + " -> " + std::to_string(d.desired);
  } else {
    text = "hold at " + std::to_string(d.current);
  }
  text += ":";
  if (d.triggers.empty()) text += " no triggers";
  for (size_t i = 0; i < d.triggers.size(); ++i) {
    text += (i == 0 ? " " : ", ") + DescribeTrigger(d.triggers[i]);
  }
  std::string limit = DescribeLimit(d, spec);
  if (!limit.empty()) text += "; " + limit;
  if (d.draining > 0) text += "; " + std::to_string(d.draining) + " draining";
  return text;
}

}  // namespace

std::string_view ScaleLimitName(ScaleLimit limit) {
  switch (limit) {
    case ScaleLimit::kNone:
      return "none";
    case ScaleLimit::kActivation:
      return "activation";
    case ScaleLimit::kMissingMetrics:
      return "missing_metrics";
    case ScaleLimit::kStabilization:
      return "stabilization";
    case ScaleLimit::kRatePolicy:
      return "rate_policy";
    case ScaleLimit::kClamp:
      return "clamp";
  }
  return "unknown";
}

Autoscaler::Autoscaler(AutoscalingSpec spec) : spec_(std::move(spec)) {}

void Autoscaler::UpdateSpec(AutoscalingSpec spec) {
  spec_ = std::move(spec);
}

Decision Autoscaler::Evaluate(const Observation& observation) {
  const ScalerClock::time_point now = observation.now;
  const int current = std::max(0, observation.current);
  Forget(now);

  Decision d;
  d.at = now;
  d.current = current;
  d.draining = observation.draining;

  int raw = 0;
  bool any_available = false;
  bool any_missing = false;
  bool any_active = false;
  for (const Trigger& trigger : spec_.triggers) {
    TriggerRecommendation r{
        .kind = trigger.kind, .target = trigger.target, .activation = trigger.activation};
    std::optional<double> metric = trigger.kind == TriggerKind::kBacklog
                                       ? observation.backlog
                                       : observation.oldest_unacked_age_seconds;
    if (metric && !std::isnan(*metric)) {
      r.available = true;
      r.metric = std::max(0.0, *metric);
      r.active = r.metric > trigger.activation;
      r.instances = CeilRatio(r.metric, trigger.target);
      raw = std::max(raw, r.instances);
      any_available = true;
      any_active = any_active || r.active;
    } else {
      any_missing = true;
    }
    d.triggers.push_back(r);
  }

  if (!any_available) {
    // Nothing to decide on: hold, and keep this non-decision out of the windows.
    d.recommended = d.stabilized = d.rate_limited = current;
    d.limited_by = ScaleLimit::kMissingMetrics;
  } else {
    d.recommended = any_active ? raw : 0;
    if (d.recommended != raw) d.limited_by = ScaleLimit::kActivation;
    // A trigger we could not read may be the one that needs the instances we have.
    if (any_missing && d.recommended < current) {
      d.recommended = current;
      d.limited_by = ScaleLimit::kMissingMetrics;
    }

    d.stabilized = Stabilize(now, d.recommended, current);
    recommendations_.push_back({.at = now, .instances = d.recommended});
    if (d.stabilized != d.recommended) d.limited_by = ScaleLimit::kStabilization;

    d.rate_limited = d.stabilized;
    if (d.stabilized > current) {
      int limit = std::max(ScaleUpLimit(now, current), current);
      // Percent of zero is zero: an idle pool must still be able to wake.
      if (current == 0 && spec_.scale_up.select != SelectPolicy::kDisabled) {
        limit = std::max(limit, 1);
      }
      d.rate_limited = std::min(d.stabilized, limit);
    } else if (d.stabilized < current) {
      int limit = std::min(ScaleDownLimit(now, current), current);
      d.rate_limited = std::max(d.stabilized, limit);
    }
    if (d.rate_limited != d.stabilized) d.limited_by = ScaleLimit::kRatePolicy;
  }

  d.desired = std::clamp(d.rate_limited, spec_.min_instances,
                         std::max(spec_.min_instances, spec_.max_instances));
  if (d.desired != d.rate_limited) d.limited_by = ScaleLimit::kClamp;

  if (d.desired != current) events_.push_back({.at = now, .change = d.desired - current});
  d.reason = DescribeDecision(d, spec_);
  return d;
}

int Autoscaler::Stabilize(ScalerClock::time_point now, int recommended, int current) const {
  // The HPA's rule: a scale-up goes only as high as every recommendation in the scale_up
  // window allows, a scale-down only as low as every one in the scale_down window allows.
  const auto up_cutoff = now - spec_.scale_up.stabilization_window;
  const auto down_cutoff = now - spec_.scale_down.stabilization_window;
  int up_bound = recommended;
  int down_bound = recommended;
  for (const Recommendation& r : recommendations_) {
    if (r.at > up_cutoff) up_bound = std::min(up_bound, r.instances);
    if (r.at > down_cutoff) down_bound = std::max(down_bound, r.instances);
  }
  int stabilized = current;
  if (stabilized < up_bound) stabilized = up_bound;
  if (stabilized > down_bound) stabilized = down_bound;
  return stabilized;
}

int Autoscaler::PeriodStartCount(ScalerClock::time_point now, milliseconds period,
                                 int current) const {
  const auto cutoff = now - period;
  int added = 0;
  int removed = 0;
  for (const ScaleEvent& event : events_) {
    if (event.at <= cutoff) continue;
    if (event.change > 0) {
      added += event.change;
    } else {
      removed -= event.change;
    }
  }
  return std::max(0, current - added + removed);
}

int Autoscaler::ScaleUpLimit(ScalerClock::time_point now, int current) const {
  const ScalingRules& rules = spec_.scale_up;
  if (rules.select == SelectPolicy::kDisabled) return current;
  if (rules.policies.empty()) return kMaxRecommendation;
  const bool pick_max = rules.select == SelectPolicy::kMax;
  int result = pick_max ? 0 : kMaxRecommendation;
  for (const RatePolicy& policy : rules.policies) {
    int start = PeriodStartCount(now, policy.period, current);
    int step = policy.kind == PolicyKind::kInstances ? ToCount(std::round(policy.value))
                                                     : CeilPercent(start, policy.value);
    int proposed = std::min(kMaxRecommendation, start + step);
    result = pick_max ? std::max(result, proposed) : std::min(result, proposed);
  }
  return result;
}

int Autoscaler::ScaleDownLimit(ScalerClock::time_point now, int current) const {
  const ScalingRules& rules = spec_.scale_down;
  if (rules.select == SelectPolicy::kDisabled) return current;
  if (rules.policies.empty()) return 0;
  // For a scale-down the biggest change is the lowest count.
  const bool pick_biggest_change = rules.select == SelectPolicy::kMax;
  int result = pick_biggest_change ? kMaxRecommendation : 0;
  for (const RatePolicy& policy : rules.policies) {
    int start = PeriodStartCount(now, policy.period, current);
    int step = policy.kind == PolicyKind::kInstances ? ToCount(std::round(policy.value))
                                                     : CeilPercent(start, policy.value);
    int proposed = std::max(0, start - step);
    result = pick_biggest_change ? std::min(result, proposed) : std::max(result, proposed);
  }
  return result;
}

void Autoscaler::Forget(ScalerClock::time_point now) {
  const milliseconds longest_window =
      std::max(spec_.scale_up.stabilization_window, spec_.scale_down.stabilization_window);
  while (!recommendations_.empty() && recommendations_.front().at <= now - longest_window) {
    recommendations_.pop_front();
  }
  milliseconds longest_period{0};
  for (const ScalingRules* rules : {&spec_.scale_up, &spec_.scale_down}) {
    for (const RatePolicy& policy : rules->policies) {
      longest_period = std::max(longest_period, policy.period);
    }
  }
  while (!events_.empty() && events_.front().at <= now - longest_period) events_.pop_front();
}

}  // namespace tidepool::pool
