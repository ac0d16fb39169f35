// EventHub: the pipeline events of every conversation this web instance follows, kept for a
// while and handed to the Server-Sent Events streams that show them (docs/api.md, "Events").
//
// Each web instance reads the whole events topic through its own subscription, so every
// instance holds every conversation's recent events: a client that reconnects anywhere resumes
// from its Last-Event-ID with no gap. Events are kept per conversation in arrival order (the
// subscription orders by conversation), at most `ring_size` of them and for `retention`;
// duplicates (the same event id delivered twice) are dropped.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace tidepool::web {

struct HubEvent {
  uint64_t index = 0;  // position in its conversation, from 1, assigned by the hub
  std::string id;      // the event's own id (REQUEST/RUN/SEQ)
  std::string type;
  std::string data;  // the event JSON as published
};

struct HubOptions {
  size_t ring_size = 2'000;
  std::chrono::milliseconds retention{15 * 60 * 1000};
};

class EventHub {
 public:
  using Clock = std::chrono::steady_clock;
  explicit EventHub(HubOptions options = {});

  // Adds an event; false for a duplicate id (dropped). Wakes the conversation's subscribers.
  bool Add(const std::string& conversation_id, const std::string& id, const std::string& type,
           std::string data);

  // Events after position `after` (0: everything retained).
  std::vector<HubEvent> Since(const std::string& conversation_id, uint64_t after) const;
  // The position of an event id, if still retained.
  std::optional<uint64_t> Find(const std::string& conversation_id, const std::string& id) const;
  // The last position handed out in the conversation (0: none).
  uint64_t Last(const std::string& conversation_id) const;

  uint64_t Subscribe(const std::string& conversation_id, std::function<void()> wake);
  void Unsubscribe(const std::string& conversation_id, uint64_t subscription);

  // Drops conversations idle for longer than the retention. Returns how many.
  size_t Sweep();

  size_t conversations() const;
  uint64_t events_total() const;
  uint64_t duplicates_total() const;

 private:
  struct Conversation {
    std::deque<HubEvent> events;
    std::unordered_set<std::string> ids;
    uint64_t next_index = 1;
    Clock::time_point last_added{};
    std::map<uint64_t, std::function<void()>> subscribers;
  };
  void TrimLocked(Conversation& c);

  const HubOptions options_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Conversation> conversations_;
  uint64_t next_subscription_ = 1;
  uint64_t events_total_ = 0;
  uint64_t duplicates_total_ = 0;
};

}  // namespace tidepool::web
