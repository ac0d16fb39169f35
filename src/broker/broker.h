// Broker: topics, subscriptions and snapshots with the semantics of Google Cloud Pub/Sub, on
// the storage engine. No networking: src/pubsub serves it over gRPC.
//
// State on disk, under data_dir:
//   catalog.json                 topics, subscriptions, snapshots (rewritten atomically)
//   topics/<id>/                 a topic's log
//   subscriptions/<id>/          a subscription's cursor
//
// Thread-safety: every method may be called from any thread. Completions run on storage
// threads and must not block.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "broker/config.h"
#include "broker/message.h"
#include "broker/subscription.h"
#include "broker/topic.h"
#include "common/status.h"
#include "storage/env.h"
#include "storage/flusher.h"

namespace tidepool::broker {

struct BrokerOptions {
  std::string data_dir;
  storage::Env* env = nullptr;  // DefaultEnv() when null
  int flusher_threads = 1;
  storage::LogOptions log;
  storage::CursorOptions cursor;
  // The background thread that expires leases and applies retention. Tests turn it off and
  // call Tick()/Maintain() themselves.
  bool run_timekeeper = true;
  int64_t tick_interval_micros = 100'000;
  int64_t maintenance_interval_micros = 10'000'000;
};

template <typename T>
struct Page {
  std::vector<T> items;
  std::string next_page_token;
};

struct SubscriptionBacklog {
  std::string subscription;
  std::string topic;
  Backlog backlog;
};

class Broker {
 public:
  static Result<std::unique_ptr<Broker>> Open(BrokerOptions options);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // ---- topics
  Result<TopicConfig> CreateTopic(TopicConfig config);
  Result<TopicConfig> GetTopic(const std::string& name);
  // `paths` are update-mask paths: "labels", "message_retention_duration".
  Result<TopicConfig> UpdateTopic(const TopicConfig& config, const std::vector<std::string>& paths);
  Result<Page<TopicConfig>> ListTopics(const std::string& project, int page_size,
                                       const std::string& page_token);
  Result<Page<std::string>> ListTopicSubscriptions(const std::string& topic, int page_size,
                                                   const std::string& page_token);
  Result<Page<std::string>> ListTopicSnapshots(const std::string& topic, int page_size,
                                               const std::string& page_token);
  Status DeleteTopic(const std::string& name);

  // Publishes atomically; `done` gets the message ids once they are durable (fsync'd).
  void Publish(const std::string& topic, std::vector<Message> messages,
               std::function<void(Result<std::vector<std::string>>)> done);

  // ---- subscriptions
  Result<SubscriptionConfig> CreateSubscription(SubscriptionConfig config);
  Result<SubscriptionConfig> GetSubscription(const std::string& name);
  Result<SubscriptionConfig> UpdateSubscription(const SubscriptionConfig& config,
                                                const std::vector<std::string>& paths);
  Result<Page<SubscriptionConfig>> ListSubscriptions(const std::string& project, int page_size,
                                                     const std::string& page_token);
  Status DeleteSubscription(const std::string& name);
  Status DetachSubscription(const std::string& name);
  // The live subscription, for pulling, acking and listening. NOT_FOUND if absent.
  Result<std::shared_ptr<Subscription>> FindSubscription(const std::string& name);

  // ---- snapshots and seek
  Result<SnapshotConfig> CreateSnapshot(const std::string& name, const std::string& subscription,
                                        const Labels& labels);
  Result<SnapshotConfig> GetSnapshot(const std::string& name);
  Result<SnapshotConfig> UpdateSnapshot(const SnapshotConfig& config,
                                        const std::vector<std::string>& paths);
  Result<Page<SnapshotConfig>> ListSnapshots(const std::string& project, int page_size,
                                             const std::string& page_token);
  Status DeleteSnapshot(const std::string& name);
  Status SeekToTime(const std::string& subscription, int64_t time_micros);
  Status SeekToSnapshot(const std::string& subscription, const std::string& snapshot);

  // ---- operations
  std::vector<SubscriptionBacklog> Backlogs();
  // Expires leases, ends backoffs and dead-letters (the timekeeper calls it every tick).
  void Tick();
  // Retention, segment age rolls, subscription expiration, snapshot expiry.
  void Maintain();
  storage::Env* env() const { return env_; }

 private:
  struct SubscriptionEntry {
    SubscriptionConfig config;
    uint64_t id = 0;
    uint64_t epoch = 0;
    std::shared_ptr<Subscription> sub;
  };
  struct TopicEntry {
    uint64_t id = 0;
    std::shared_ptr<Topic> topic;
  };

  explicit Broker(BrokerOptions options);
  Status Load();
  Status SaveCatalog();  // REQUIRES: mu_ held exclusively
  Result<std::shared_ptr<Topic>> OpenTopic(const TopicConfig& config, uint64_t id);
  Result<std::shared_ptr<Subscription>> OpenSubscription(const SubscriptionConfig& config,
                                                         uint64_t id, uint64_t epoch);
  Status ValidateSubscription(const SubscriptionConfig& c) const;
  void ForwardDeadLetter(const std::shared_ptr<Subscription>& sub, const DeadLetter& d);
  void RunTimekeeper();
  std::string TopicDir(uint64_t id) const;
  std::string SubscriptionDir(uint64_t id) const;

  const BrokerOptions options_;
  storage::Env* const env_;
  std::unique_ptr<storage::Flusher> flusher_;

  // Guards the catalog maps; held shared for lookups, exclusively for admin changes.
  mutable std::shared_mutex mu_;
  uint64_t next_id_ = 1;
  std::map<std::string, TopicEntry> topics_;
  std::map<std::string, SubscriptionEntry> subs_;
  std::map<std::string, SnapshotConfig> snapshots_;

  std::mutex tk_mu_;
  std::condition_variable tk_cv_;
  bool stopping_ = false;
  std::thread timekeeper_;
};

}  // namespace tidepool::broker
