#include "llm/rate_limiter.h"

#include <algorithm>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace tidepool::llm {

namespace asio = boost::asio;

// A concurrent channel, not a timer: Release may run on another thread than the waiter, and
// try_send on a buffered concurrent channel is safe even before the waiter starts receiving.
struct AsyncSemaphore::Waiter {
  explicit Waiter(asio::any_io_executor executor) : wakeup(std::move(executor), 1) {}
  asio::experimental::concurrent_channel<void(boost::system::error_code)> wakeup;
  bool granted = false;  // guarded by the semaphore's mutex
};

AsyncSemaphore::AsyncSemaphore(asio::any_io_executor executor, int64_t limit)
    : executor_(std::move(executor)), limit_(limit) {}

AsyncSemaphore::~AsyncSemaphore() = default;

asio::awaitable<bool> AsyncSemaphore::Acquire() {
  std::shared_ptr<Waiter> waiter;
  {
    std::lock_guard lock(mu_);
    if (limit_ <= 0 || in_use_ < limit_) {
      ++in_use_;
      co_return true;
    }
    waiter = std::make_shared<Waiter>(executor_);
    waiters_.push_back(waiter);
  }
  co_await waiter->wakeup.async_receive(asio::as_tuple(asio::use_awaitable));
  std::lock_guard lock(mu_);
  if (waiter->granted) co_return true;
  // Cancelled before a permit was handed over: leave the queue.
  std::erase(waiters_, waiter);
  co_return false;
}

void AsyncSemaphore::Release() {
  std::shared_ptr<Waiter> next;
  {
    std::lock_guard lock(mu_);
    if (waiters_.empty()) {
      --in_use_;
      return;
    }
    // The permit passes straight to the next waiter; in_use_ is unchanged.
    next = std::move(waiters_.front());
    waiters_.pop_front();
    next->granted = true;
  }
  next->wakeup.try_send(boost::system::error_code{});
}

int64_t AsyncSemaphore::in_use() const {
  std::lock_guard lock(mu_);
  return in_use_;
}

int64_t AsyncSemaphore::waiting() const {
  std::lock_guard lock(mu_);
  return static_cast<int64_t>(waiters_.size());
}

namespace {
constexpr double kSecondsPerMinute = 60.0;
}

TokenBucket::TokenBucket(double per_minute, double capacity)
    : per_second_(per_minute / kSecondsPerMinute),
      capacity_(std::max(capacity, 1.0)),
      level_(capacity_),
      last_refill_(Clock::now()) {}

void TokenBucket::RefillLocked(Clock::time_point now) {
  if (now <= last_refill_) return;
  const double elapsed = std::chrono::duration<double>(now - last_refill_).count();
  level_ = std::min(capacity_, level_ + elapsed * per_second_);
  last_refill_ = now;
}

TokenBucket::Clock::duration TokenBucket::Reserve(double units, Clock::time_point now) {
  if (unlimited()) return Clock::duration::zero();
  std::lock_guard lock(mu_);
  RefillLocked(now);
  // A reservation bigger than the bucket waits for a full bucket, then drives it negative.
  const double needed = std::min(units, capacity_);
  const double shortfall = needed - level_;
  level_ -= units;
  if (shortfall <= 0) return Clock::duration::zero();
  // The previous reservations' debt is part of the shortfall, which keeps callers in order.
  return std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(shortfall / per_second_));
}

void TokenBucket::Refund(double units) {
  if (unlimited()) return;
  std::lock_guard lock(mu_);
  RefillLocked(Clock::now());
  level_ = std::min(capacity_, level_ + units);
}

double TokenBucket::level(Clock::time_point now) {
  std::lock_guard lock(mu_);
  RefillLocked(now);
  return level_;
}

asio::awaitable<bool> TokenBucket::Take(double units) {
  const auto wait = Reserve(units);
  if (wait <= Clock::duration::zero()) co_return true;
  asio::steady_timer timer(co_await asio::this_coro::executor, wait);
  auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  if (!ec) co_return true;
  Refund(units);  // cancelled: the reservation is not used
  co_return false;
}

}  // namespace tidepool::llm
