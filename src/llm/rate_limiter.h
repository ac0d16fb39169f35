// Asynchronous admission control for LLM calls: a counting semaphore (concurrency limit) and a
// token bucket (requests/min, tokens/min). Both make callers wait on timers or channels rather
// than fail, so a worker pool drains its backlog at the provider's quota instead of hammering it.
//
// Thread-safety: both classes may be used from coroutines on any threads of one execution
// context; internal state is guarded by a mutex that is never held across a suspension.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

namespace tidepool::llm {

// A counting semaphore whose Acquire suspends the calling coroutine until a permit is free.
// Waiters are served in FIFO order. A limit of 0 means unlimited.
class AsyncSemaphore {
 public:
  AsyncSemaphore(boost::asio::any_io_executor executor, int64_t limit);
  ~AsyncSemaphore();
  AsyncSemaphore(const AsyncSemaphore&) = delete;
  AsyncSemaphore& operator=(const AsyncSemaphore&) = delete;

  // Returns true once a permit is held; false if the wait was cancelled (no permit held).
  boost::asio::awaitable<bool> Acquire();
  // REQUIRES: the caller holds a permit from Acquire().
  void Release();

  int64_t in_use() const;
  int64_t waiting() const;

 private:
  struct Waiter;
  boost::asio::any_io_executor executor_;
  const int64_t limit_;
  mutable std::mutex mu_;
  int64_t in_use_ = 0;
  std::deque<std::shared_ptr<Waiter>> waiters_;
};

// Holds a permit of an AsyncSemaphore for its lifetime.
class SemaphorePermit {
 public:
  SemaphorePermit() = default;
  explicit SemaphorePermit(AsyncSemaphore* semaphore) : semaphore_(semaphore) {}
  SemaphorePermit(SemaphorePermit&& other) noexcept : semaphore_(other.semaphore_) {
    other.semaphore_ = nullptr;
  }
  SemaphorePermit& operator=(SemaphorePermit&&) = delete;
  ~SemaphorePermit() {
    if (semaphore_ != nullptr) semaphore_->Release();
  }

 private:
  AsyncSemaphore* semaphore_ = nullptr;
};

// A token bucket refilled continuously at `per_minute / 60` units per second, holding at most
// `capacity` units. Take(n) reserves n units at once — the level may go negative, which is
// a queue of reservations — and sleeps until the reservation is covered. Reservations are
// therefore served in order, each caller sleeps exactly once, and a request larger than the
// capacity still runs (after the bucket has refilled to full) instead of starving.
// A rate of 0 means unlimited.
class TokenBucket {
 public:
  using Clock = std::chrono::steady_clock;

  TokenBucket(double per_minute, double capacity);

  // The time the caller must wait for a reservation of `units` made now (zero when covered).
  // The reservation is made; Refund undoes it.
  Clock::duration Reserve(double units, Clock::time_point now = Clock::now());
  // Gives back units reserved but not used (negative: takes more, e.g. when the real token
  // count of a call exceeded its estimate).
  void Refund(double units);

  // Reserves `units` and waits until they are available. Returns false if the wait was
  // cancelled (the reservation is refunded).
  boost::asio::awaitable<bool> Take(double units);

  bool unlimited() const { return per_second_ <= 0; }
  double level(Clock::time_point now = Clock::now());

 private:
  void RefillLocked(Clock::time_point now);

  const double per_second_;
  const double capacity_;
  std::mutex mu_;
  double level_;
  Clock::time_point last_refill_;
};

}  // namespace tidepool::llm
