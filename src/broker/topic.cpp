#include "broker/topic.h"

#include <algorithm>

#include "broker/subscription.h"

namespace tidepool::broker {

Topic::Topic(TopicConfig config, std::unique_ptr<storage::Log> log)
    : config_(std::move(config)), log_(std::move(log)) {}

void Topic::Publish(const std::vector<Message>& messages,
                    std::function<void(Result<std::vector<std::string>>)> done) {
  std::vector<std::string> records;
  records.reserve(messages.size());
  for (const auto& m : messages) records.push_back(EncodeMessage(m));
  log_->AppendAsync(std::move(records),
                    [this, done = std::move(done)](Result<storage::SeqRange> r) {
                      if (!r.ok()) {
                        done(r.status());
                        return;
                      }
                      std::vector<std::string> ids;
                      ids.reserve(r->count);
                      for (uint64_t i = 0; i < r->count; ++i)
                        ids.push_back(std::to_string(r->first.value + i));
                      // Subscribers are woken before the publisher hears back: once `done`
                      // runs, the publisher may tear the broker down, topic included.
                      for (const auto& sub : subscriptions()) sub->NotifyListeners();
                      done(std::move(ids));
                    });
}

Result<std::vector<StoredMessage>> Topic::Read(uint64_t from, size_t max_messages,
                                               size_t max_bytes) const {
  TP_ASSIGN_OR_RETURN(auto records, log_->Read(storage::Seq(from), max_messages, max_bytes));
  std::vector<StoredMessage> out;
  out.reserve(records.size());
  for (auto& r : records) {
    auto m = DecodeMessage(r.data);
    if (!m.ok()) return m.status().WithContext("message " + std::to_string(r.seq.value));
    out.push_back(StoredMessage{r.seq.value, r.timestamp, std::move(*m)});
  }
  return out;
}

void Topic::AddSubscription(const std::shared_ptr<Subscription>& sub) {
  std::lock_guard lock(mu_);
  subs_.push_back(sub);
}

void Topic::RemoveSubscription(const Subscription* sub) {
  std::lock_guard lock(mu_);
  std::erase_if(subs_, [&](const std::weak_ptr<Subscription>& w) {
    auto s = w.lock();
    return !s || s.get() == sub;
  });
}

std::vector<std::shared_ptr<Subscription>> Topic::subscriptions() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Subscription>> out;
  for (const auto& w : subs_) {
    if (auto s = w.lock()) out.push_back(std::move(s));
  }
  return out;
}

TopicConfig Topic::config() const {
  std::lock_guard lock(mu_);
  return config_;
}

void Topic::set_config(const TopicConfig& config) {
  std::lock_guard lock(mu_);
  config_ = config;
}

}  // namespace tidepool::broker
