// Internals shared by the queue backends: name resolution, the backend thread that runs every
// callback, and the dead-letter message a Terminate forwards. Not part of the public API.
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "broker/names.h"
#include "queue/queue.h"

namespace tidepool::queue::internal {

// The largest lease or nack delay a backend accepts (Pub/Sub's maximum ack deadline).
inline constexpr std::chrono::seconds kMaxLease{600};
// Ack ids per Acknowledge / ModifyAckDeadline call; the real service refuses larger requests.
inline constexpr size_t kMaxAckIdsPerCall = 2500;
// Settle calls of one kind per subscription in flight at once; more wait and are coalesced.
inline constexpr int kMaxSettleCallsInFlight = 2;

// The full path of `name` (a short id completed with `project`, or a full path validated as
// is); INVALID_ARGUMENT naming `name` when it is neither.
Result<std::string> ResolveName(const std::string& project, const std::string& name,
                                broker::ResourceKind kind);

// Prefixes `status` with `name` unless its message already names it, so that every error a
// caller sees says which topic or subscription it is about.
Status Named(const Status& status, const std::string& name);

// The message Terminate publishes to a dead-letter topic: the original data, attributes and
// ordering key, plus the attributes the real service (and the broker's own dead-lettering) adds.
Message DeadLetterMessage(const Delivery& delivery, const std::string& subscription_path);

// One thread (an io_context) that runs every user callback of a queue, so that callbacks never
// run inline in the caller's stack or on a storage / gRPC thread, and counts the operations
// whose callback has not run yet so that shutdown can wait for them.
//
// Thread-safety: all methods may be called from any thread.
class BackendThread {
 public:
  BackendThread();
  // Waits for every counted operation (REQUIRES: not called from a callback), then stops.
  ~BackendThread();
  BackendThread(const BackendThread&) = delete;
  BackendThread& operator=(const BackendThread&) = delete;

  boost::asio::io_context& io() { return io_; }
  bool InThread() const { return std::this_thread::get_id() == thread_.get_id(); }

  // Wraps `done` so that calling the result (exactly once) runs `done` on this thread. The
  // operation counts as pending until `done` has returned.
  template <typename T>
  std::function<void(T)> Wrap(std::function<void(T)> done) {
    Begin();
    return [this, done = std::move(done)](T value) mutable {
      boost::asio::post(io_, [this, done = std::move(done), value = std::move(value)]() mutable {
        if (done) done(std::move(value));
        End();
      });
    };
  }

  // Runs `fn` on this thread.
  void Post(std::function<void()> fn) { boost::asio::post(io_, std::move(fn)); }

  // Returns once everything posted before the call has run. No-op on this thread.
  void Barrier();

 private:
  void Begin();
  void End();

  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t pending_ = 0;
  std::thread thread_;
};

Result<std::unique_ptr<Queue>> OpenEmbeddedQueue(const QueueOptions& options);
Result<std::unique_ptr<Queue>> OpenPubsubQueue(const QueueOptions& options);
Result<std::unique_ptr<Queue>> OpenNatsQueue(const QueueOptions& options);

}  // namespace tidepool::queue::internal
