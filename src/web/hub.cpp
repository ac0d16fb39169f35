#include "web/hub.h"

namespace tidepool::web {

EventHub::EventHub(HubOptions options) : options_(options) {}

void EventHub::TrimLocked(Conversation& c) {
  // Events that fell out are forgotten with their ids: a very late duplicate is shown again,
  // and consumers de-duplicate by id themselves too.
  while (c.events.size() > options_.ring_size) {
    c.ids.erase(c.events.front().id);
    c.events.pop_front();
  }
}

bool EventHub::Add(const std::string& conversation_id, const std::string& id,
                   const std::string& type, std::string data) {
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lock(mu_);
    Conversation& c = conversations_[conversation_id];
    const auto now = Clock::now();
    if (!id.empty() && !c.ids.insert(id).second) {
      ++duplicates_total_;
      return false;
    }
    c.events.push_back(
        HubEvent{.index = c.next_index++, .id = id, .type = type, .data = std::move(data)});
    c.last_added = now;
    ++events_total_;
    TrimLocked(c);
    for (const auto& [sub, fn] : c.subscribers) wake.push_back(fn);
  }
  for (const auto& fn : wake) fn();
  return true;
}

std::vector<HubEvent> EventHub::Since(const std::string& conversation_id, uint64_t after) const {
  std::lock_guard lock(mu_);
  std::vector<HubEvent> out;
  auto it = conversations_.find(conversation_id);
  if (it == conversations_.end()) return out;
  for (const HubEvent& e : it->second.events) {
    if (e.index > after) out.push_back(e);
  }
  return out;
}

std::optional<uint64_t> EventHub::Find(const std::string& conversation_id,
                                       const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = conversations_.find(conversation_id);
  if (it == conversations_.end()) return std::nullopt;
  for (const HubEvent& e : it->second.events) {
    if (e.id == id) return e.index;
  }
  return std::nullopt;
}

uint64_t EventHub::Last(const std::string& conversation_id) const {
  std::lock_guard lock(mu_);
  auto it = conversations_.find(conversation_id);
  return it == conversations_.end() ? 0 : it->second.next_index - 1;
}

uint64_t EventHub::Subscribe(const std::string& conversation_id, std::function<void()> wake) {
  std::lock_guard lock(mu_);
  const uint64_t id = next_subscription_++;
  Conversation& c = conversations_[conversation_id];
  if (c.last_added == Clock::time_point{}) c.last_added = Clock::now();
  c.subscribers[id] = std::move(wake);
  return id;
}

void EventHub::Unsubscribe(const std::string& conversation_id, uint64_t subscription) {
  std::lock_guard lock(mu_);
  auto it = conversations_.find(conversation_id);
  if (it != conversations_.end()) it->second.subscribers.erase(subscription);
}

size_t EventHub::Sweep() {
  std::lock_guard lock(mu_);
  const auto now = Clock::now();
  size_t dropped = 0;
  for (auto it = conversations_.begin(); it != conversations_.end();) {
    const Conversation& c = it->second;
    if (c.subscribers.empty() && now - c.last_added > options_.retention) {
      it = conversations_.erase(it);
      ++dropped;
    } else {
      ++it;
    }
  }
  return dropped;
}

size_t EventHub::conversations() const {
  std::lock_guard lock(mu_);
  return conversations_.size();
}

uint64_t EventHub::events_total() const {
  std::lock_guard lock(mu_);
  return events_total_;
}

uint64_t EventHub::duplicates_total() const {
  std::lock_guard lock(mu_);
  return duplicates_total_;
}

}  // namespace tidepool::web
