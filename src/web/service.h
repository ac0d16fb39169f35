// WebService: the producer side of tidepool (docs/api.md). Accepts shopper messages, makes them
// durable (stored, then published to the app's request topic) before answering 202, and
// streams each conversation's pipeline events back over Server-Sent Events. It reads the
// events topic through its own subscription, keeps recent events per conversation (EventHub)
// and stores every final reply exactly once, so any instance can serve any conversation.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "queue/queue.h"
#include "store/store.h"
#include "web/http_server.h"

namespace tidepool::web {

// What the web tier needs to know of an app (from its spec, docs/apps.md).
struct AppInfo {
  std::string name;
  std::string title;
  std::string description;
  std::string greeting;
  std::vector<std::string> examples;
  std::string request_topic;
  // Created (if missing) before any message is accepted, so that nothing published before the
  // first worker starts is lost: a topic without subscriptions drops what it gets.
  std::optional<queue::SubscriptionSpec> request_subscription{};
  std::vector<std::string> api_keys{};  // required on this app's API when not empty
};

struct WebOptions {
  HttpServerOptions http;
  std::vector<AppInfo> apps;
  std::string events_topic = "tidepool-events";
  // This instance's subscription to the events topic; several web instances need one each.
  std::string events_subscription = "tidepool-events-web";
  // Anonymous instances (Cloud Run), whose events subscription is new at each start: non-empty,
  // final replies are stored from this subscription instead, shared by every instance (each
  // reply goes to one of them, and one started later still gets what was published while none
  // ran), and the events subscription only feeds this instance's event streams.
  std::string replies_subscription{};
  // Deleted after this long without this instance (0: the queue's default), and at Stop.
  std::chrono::seconds events_subscription_ttl{0};
  std::chrono::seconds events_subscription_retention{0};  // 0: the queue's default
  bool delete_events_subscription = false;
  // Per client address, on POSTs: a token bucket (429 + Retry-After when empty).
  double rate_per_second = 5;
  double rate_burst = 20;
  // "*" or one origin: Access-Control-Allow-Origin on every response, and preflights answered.
  std::string cors_origin;
  int history_limit = 50;  // earlier messages sent to the workers with each request
  std::chrono::milliseconds heartbeat{15'000};
  // UI files served at / (index.html, app.html, dashboard.html, assets): from this directory
  // when set, else the copy built into the binary.
  std::string ui_dir;
  // More Prometheus text for /metrics (the pools, the broker's backlog).
  std::function<std::string()> extra_metrics;
  // JSON for GET /v1/dashboard (pools and backlog), when set.
  std::function<std::string()> dashboard_json;
};

struct WebStats {
  uint64_t messages_accepted = 0;
  uint64_t messages_replayed = 0;  // Idempotency-Key hits
  uint64_t publish_failures = 0;
  uint64_t republished = 0;  // stored but unpublished messages published by the sweeper
  uint64_t events_received = 0;
  uint64_t replies_stored = 0;
  uint64_t rate_limited = 0;
};

class WebService {
 public:
  // The store and queue outlive the service.
  static Result<std::unique_ptr<WebService>> Start(WebOptions options, store::Store* store,
                                                   queue::Queue* queue);
  ~WebService();
  // Stops accepting, ends the streams, waits for requests in flight up to `grace`.
  void Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(5'000));

  int port() const;
  WebStats stats() const;
  // Latency of POST .../messages over the last seconds (the dashboard's "now").
  LatencySummary PostLatency() const;
  // The two parts of a POST that wait on a disk, over the same window: the store's write
  // (queued until durable) and the request's publish (handed to the queue until confirmed).
  // They overlap with SQLite; a POST's own latency adds HTTP and the wait for the later one.
  LatencySummary PostStoreLatency() const;
  LatencySummary PostPublishLatency() const;
  std::string MetricsText() const;

  struct Impl;

 private:
  explicit WebService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::web
