#include "broker/report.h"

#include <boost/json.hpp>
#include <cstdio>

namespace tidepool::broker {
namespace {

// Escapes a Prometheus label value.
std::string Label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::string BacklogJson(const std::vector<SubscriptionBacklog>& backlogs) {
  boost::json::array subs;
  for (const auto& b : backlogs) {
    boost::json::object o;
    o["subscription"] = b.subscription;
    o["topic"] = b.topic;
    o["undelivered_messages"] = b.backlog.undelivered_messages;
    o["oldest_unacked_age_seconds"] =
        static_cast<double>(b.backlog.oldest_unacked_age_micros) / kMicrosPerSecond;
    o["leased_messages"] = b.backlog.leased_messages;
    subs.push_back(std::move(o));
  }
  boost::json::object root;
  root["subscriptions"] = std::move(subs);
  return boost::json::serialize(root);
}

std::string BacklogMetrics(const std::vector<SubscriptionBacklog>& backlogs) {
  std::string out;
  auto gauge = [&](const char* name, const char* help, auto value_of) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n";
    for (const auto& b : backlogs) {
      char value[64];
      std::snprintf(value, sizeof(value), "%.6g", static_cast<double>(value_of(b.backlog)));
      out += std::string(name) + "{subscription=\"" + Label(b.subscription) + "\",topic=\"" +
             Label(b.topic) + "\"} " + value + "\n";
    }
  };
  gauge("tidepool_broker_backlog_messages", "Published and not yet acknowledged messages.",
        [](const Backlog& b) { return b.undelivered_messages; });
  gauge("tidepool_broker_oldest_unacked_age_seconds", "Age of the oldest unacknowledged message.",
        [](const Backlog& b) {
          return static_cast<double>(b.oldest_unacked_age_micros) / kMicrosPerSecond;
        });
  gauge("tidepool_broker_leased_messages", "Messages delivered and leased to a subscriber.",
        [](const Backlog& b) { return b.leased_messages; });
  return out;
}

}  // namespace tidepool::broker
