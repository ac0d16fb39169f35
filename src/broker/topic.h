// Topic: a durable log of messages plus the subscriptions attached to it.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "broker/config.h"
#include "broker/message.h"
#include "common/status.h"
#include "storage/log.h"

namespace tidepool::broker {

class Subscription;

class Topic {
 public:
  Topic(TopicConfig config, std::unique_ptr<storage::Log> log);

  // Appends `messages` as one durable group. `done` gets the message ids after the fsync, or
  // the error; it runs on a storage thread and must not block.
  // REQUIRES: the messages were validated (Broker::Publish does it).
  void Publish(const std::vector<Message>& messages,
               std::function<void(Result<std::vector<std::string>>)> done);

  // Reads committed messages from `from` on. OUT_OF_RANGE when `from` is gone (retention).
  Result<std::vector<StoredMessage>> Read(uint64_t from, size_t max_messages,
                                          size_t max_bytes) const;

  void AddSubscription(const std::shared_ptr<Subscription>& sub);
  void RemoveSubscription(const Subscription* sub);
  std::vector<std::shared_ptr<Subscription>> subscriptions() const;

  TopicConfig config() const;
  void set_config(const TopicConfig& config);
  storage::Log& log() { return *log_; }
  const storage::Log& log() const { return *log_; }

 private:
  mutable std::mutex mu_;
  TopicConfig config_;
  std::vector<std::weak_ptr<Subscription>> subs_;
  // Last, so that it is destroyed first: closing the log runs the completions of queued
  // publishes, which still use the members above.
  const std::unique_ptr<storage::Log> log_;
};

}  // namespace tidepool::broker
