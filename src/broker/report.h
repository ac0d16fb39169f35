// Text renderings of the broker's operational figures, for the admin endpoint: the backlog
// per subscription as JSON (what the autoscaler reads) and Prometheus metrics.
#pragma once

#include <string>
#include <vector>

#include "broker/broker.h"

namespace tidepool::broker {

// {"subscriptions":[{"subscription":…,"topic":…,"undelivered_messages":N,
//   "oldest_unacked_age_seconds":S,"leased_messages":L}, …]}
std::string BacklogJson(const std::vector<SubscriptionBacklog>& backlogs);

// tidepool_broker_* gauges per subscription, Prometheus text format 0.0.4.
std::string BacklogMetrics(const std::vector<SubscriptionBacklog>& backlogs);

}  // namespace tidepool::broker
