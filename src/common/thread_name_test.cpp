#include "common/thread_name.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

namespace tidepool {
namespace {

TEST(ThreadNameTest, NamesTheCallingThreadAndCutsLongNames) {
  std::thread([] {
    SetCurrentThreadName("web-io");
    EXPECT_EQ(CurrentThreadName(), "web-io");
    SetCurrentThreadName("a-name-longer-than-fifteen-bytes");
    EXPECT_EQ(CurrentThreadName(), "a-name-longer-t");
  }).join();
}

// Every thread of the pool gets the name (none took two naming tasks), and the pool still
// serves afterwards, in many rounds. (The first version kept its latch on the caller's stack; a
// thread that woke after the caller had returned could wait on freed memory for ever. That hung
// a `tidepool up` once in a benchmark, but this test did not catch it in 100 rounds.)
TEST(ThreadNameTest, NameThreadsNamesEveryThreadOfAPoolThatKeepsServing) {
  constexpr size_t kThreads = 32;
  for (int round = 0; round < 100; ++round) {
    boost::asio::thread_pool pool(kThreads);
    NameThreads(pool, kThreads, "web-store");
    std::mutex mu;
    std::set<std::string> names;
    std::atomic<size_t> ran{0};
    std::promise<void> all_ran;
    for (size_t i = 0; i < 4 * kThreads; ++i) {
      boost::asio::post(pool, [&] {
        {
          std::lock_guard lock(mu);
          names.insert(CurrentThreadName());
        }
        if (ran.fetch_add(1) + 1 == 4 * kThreads) all_ran.set_value();
      });
    }
    if (all_ran.get_future().wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
      std::fprintf(stderr, "round %d: the pool stopped running tasks after NameThreads\n", round);
      _exit(1);  // its threads cannot be joined
    }
    pool.join();
    EXPECT_EQ(names, std::set<std::string>{"web-store"}) << "round " << round;
  }
}

}  // namespace
}  // namespace tidepool
