// Publisher: batches single-message publishes into Queue::Publish calls.
//
// A batch is sealed when it reaches max_messages or max_bytes, or max_delay after its first
// message (a timer thread watches that); sealed batches go out in order, at most max_in_flight
// at once. With a max_delay of 0 a batch is sealed as soon as an in-flight slot is free: a
// message goes out at once while the queue keeps up, and gathers with the next ones while all
// slots are busy. Ordering keys are not given one batch in flight per key: messages of one key may
// be reordered when batches complete out of order.
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "broker/config.h"
#include "common/thread_name.h"
#include "queue/queue.h"

namespace tidepool::queue {

namespace {
using MessageCallback = std::function<void(Result<std::string>)>;

struct Batch {
  std::vector<Message> messages;
  std::vector<MessageCallback> callbacks;
  size_t bytes = 0;
};
}  // namespace

struct Publisher::Impl {
  Impl(Queue& q, std::string t, BatchingOptions o) : queue(q), topic(std::move(t)), options(o) {
    // The API's per-request limits bound any batch, whatever the options say.
    options.max_messages =
        std::clamp<size_t>(options.max_messages, 1, broker::kMaxMessagesPerPublish);
    options.max_bytes = std::clamp<size_t>(options.max_bytes, 1, broker::kMaxPublishRequestBytes);
    options.max_in_flight = std::max(options.max_in_flight, 1);
    timer = std::thread([this] {
      SetCurrentThreadName("publish-timer");
      RunTimer();
    });
  }

  ~Impl() {
    Flush();
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    cv.notify_all();
    timer.join();
  }

  void Publish(Message message, MessageCallback done) {
    const size_t size = broker::MessageSize(message);
    std::vector<Batch> to_send;
    {
      std::lock_guard lock(mu);
      if (!current.messages.empty() && current.bytes + size > options.max_bytes) SealLocked();
      if (current.messages.empty() && !Eager()) {
        deadline = std::chrono::steady_clock::now() + options.max_delay;
        cv.notify_all();
      }
      current.messages.push_back(std::move(message));
      current.callbacks.push_back(std::move(done));
      current.bytes += size;
      if (current.messages.size() >= options.max_messages || current.bytes >= options.max_bytes ||
          (Eager() && SlotFreeLocked())) {
        SealLocked();
      }
      to_send = TakeSendableLocked();
    }
    Send(std::move(to_send));
  }

  void Flush() {
    std::vector<Batch> to_send;
    {
      std::lock_guard lock(mu);
      SealLocked();
      to_send = TakeSendableLocked();
    }
    Send(std::move(to_send));
    std::unique_lock lock(mu);
    cv.wait(lock, [this] { return sealed.empty() && in_flight == 0 && current.messages.empty(); });
  }

  // max_delay 0: batches are sealed when a slot frees, not by the timer.
  bool Eager() const { return options.max_delay.count() <= 0; }

  // REQUIRES: mu held. Whether a batch sealed now would go out at once.
  bool SlotFreeLocked() const { return sealed.empty() && in_flight < options.max_in_flight; }

  // REQUIRES: mu held.
  void SealLocked() {
    if (current.messages.empty()) return;
    sealed.push_back(std::move(current));
    current = Batch{};
  }

  // REQUIRES: mu held. The sealed batches that may go out now; they count as in flight.
  std::vector<Batch> TakeSendableLocked() {
    std::vector<Batch> out;
    while (!sealed.empty() && in_flight < options.max_in_flight) {
      out.push_back(std::move(sealed.front()));
      sealed.pop_front();
      ++in_flight;
    }
    return out;
  }

  // Not under mu: Queue::Publish may complete at once on its backend thread.
  void Send(std::vector<Batch> batches) {
    for (auto& batch : batches) {
      auto callbacks = std::make_shared<std::vector<MessageCallback>>(std::move(batch.callbacks));
      queue.Publish(topic, std::move(batch.messages),
                    [this, callbacks](Result<std::vector<std::string>> ids) {
                      Complete(*callbacks, std::move(ids));
                    });
    }
  }

  void Complete(std::vector<MessageCallback>& callbacks, Result<std::vector<std::string>> ids) {
    for (size_t i = 0; i < callbacks.size(); ++i) {
      if (!callbacks[i]) continue;
      if (!ids.ok()) {
        callbacks[i](ids.status());
      } else if (i < ids->size()) {
        callbacks[i](std::move((*ids)[i]));
      } else {
        callbacks[i](Status::Internal("publish to " + topic + " returned " +
                                      std::to_string(ids->size()) + " ids for " +
                                      std::to_string(callbacks.size()) + " messages"));
      }
    }
    std::vector<Batch> to_send;
    {
      std::lock_guard lock(mu);
      --in_flight;
      if (Eager() && SlotFreeLocked()) SealLocked();
      to_send = TakeSendableLocked();
    }
    // Flush waits for in_flight to drop; wake it whether or not more goes out.
    cv.notify_all();
    Send(std::move(to_send));
  }

  // Seals the open batch max_delay after its first message.
  void RunTimer() {
    std::unique_lock lock(mu);
    while (!stopping) {
      if (current.messages.empty() || Eager()) {
        cv.wait(lock);
        continue;
      }
      if (std::chrono::steady_clock::now() < deadline) {
        cv.wait_until(lock, deadline);
        continue;
      }
      SealLocked();
      std::vector<Batch> to_send = TakeSendableLocked();
      lock.unlock();
      Send(std::move(to_send));
      lock.lock();
    }
  }

  Queue& queue;
  const std::string topic;
  BatchingOptions options;

  std::mutex mu;
  std::condition_variable cv;
  Batch current;
  std::chrono::steady_clock::time_point deadline;
  std::deque<Batch> sealed;  // waiting for an in-flight slot
  int in_flight = 0;
  bool stopping = false;
  std::thread timer;
};

Publisher::Publisher(Queue& queue, std::string topic, BatchingOptions options)
    : impl_(std::make_unique<Impl>(queue, std::move(topic), options)) {}

Publisher::~Publisher() = default;

void Publisher::Publish(Message message, std::function<void(Result<std::string>)> done) {
  impl_->Publish(std::move(message), std::move(done));
}

void Publisher::Flush() {
  impl_->Flush();
}

}  // namespace tidepool::queue
