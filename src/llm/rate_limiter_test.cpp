#include "llm/rate_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace tidepool::llm {
namespace {

namespace asio = boost::asio;
using Clock = TokenBucket::Clock;
using std::chrono::milliseconds;

TEST(TokenBucketTest, BurstThenPacedReservations) {
  constexpr double kPerMinute = 600;  // 10 per second
  TokenBucket bucket(kPerMinute, 2);
  const auto now = Clock::now();
  EXPECT_EQ(bucket.Reserve(1, now), Clock::duration::zero());
  EXPECT_EQ(bucket.Reserve(1, now), Clock::duration::zero());
  // The bucket is empty: each further reservation waits one more refill interval.
  EXPECT_NEAR(std::chrono::duration<double>(bucket.Reserve(1, now)).count(), 0.1, 1e-6);
  EXPECT_NEAR(std::chrono::duration<double>(bucket.Reserve(1, now)).count(), 0.2, 1e-6);
}

TEST(TokenBucketTest, ReservationLargerThanCapacityWaitsForFullBucketOnly) {
  TokenBucket bucket(60, 5);  // 1 per second
  const auto now = Clock::now();
  EXPECT_EQ(bucket.Reserve(50, now), Clock::duration::zero());
  // 45 units of debt plus one: 46 seconds.
  EXPECT_NEAR(std::chrono::duration<double>(bucket.Reserve(1, now)).count(), 46, 1e-6);
}

TEST(TokenBucketTest, RefundReturnsUnits) {
  TokenBucket bucket(60, 10);
  const auto now = Clock::now();
  EXPECT_EQ(bucket.Reserve(10, now), Clock::duration::zero());
  bucket.Refund(4);
  EXPECT_GE(bucket.level(), 4.0);
  EXPECT_LE(bucket.level(), 10.0);
}

TEST(TokenBucketTest, ZeroRateIsUnlimited) {
  TokenBucket bucket(0, 0);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(bucket.Reserve(1e6), Clock::duration::zero());
}

TEST(AsyncSemaphoreTest, NeverMoreHoldersThanTheLimit) {
  constexpr int kLimit = 3;
  constexpr int kTasks = 20;
  asio::io_context io;
  AsyncSemaphore semaphore(io.get_executor(), kLimit);
  int holders = 0;
  int peak = 0;
  int finished = 0;
  for (int i = 0; i < kTasks; ++i) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          if (!co_await semaphore.Acquire()) {
            ADD_FAILURE() << "Acquire was cancelled";
            co_return;
          }
          SemaphorePermit permit(&semaphore);
          peak = std::max(peak, ++holders);
          asio::steady_timer timer(io, milliseconds(2));
          co_await timer.async_wait(asio::use_awaitable);
          --holders;
          ++finished;
        },
        asio::detached);
  }
  io.run();
  EXPECT_EQ(finished, kTasks);
  EXPECT_EQ(peak, kLimit);
  EXPECT_EQ(semaphore.in_use(), 0);
  EXPECT_EQ(semaphore.waiting(), 0);
}

TEST(AsyncSemaphoreTest, ManyThreadsShareOneSemaphore) {
  constexpr int kLimit = 4;
  constexpr int kTasks = 400;
  constexpr int kThreads = 4;
  asio::io_context io;
  AsyncSemaphore semaphore(io.get_executor(), kLimit);
  std::atomic<int> holders{0};
  std::atomic<int> peak{0};
  std::atomic<int> finished{0};
  for (int i = 0; i < kTasks; ++i) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          if (!co_await semaphore.Acquire()) co_return;
          SemaphorePermit permit(&semaphore);
          const int now = ++holders;
          int seen = peak.load();
          while (now > seen && !peak.compare_exchange_weak(seen, now)) {
          }
          asio::steady_timer timer(io, std::chrono::microseconds(100));
          co_await timer.async_wait(asio::use_awaitable);
          --holders;
          ++finished;
        },
        asio::detached);
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back([&] { io.run(); });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(finished.load(), kTasks);
  EXPECT_LE(peak.load(), kLimit);
  EXPECT_EQ(semaphore.in_use(), 0);
}

}  // namespace
}  // namespace tidepool::llm
