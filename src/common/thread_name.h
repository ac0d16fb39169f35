// Names for the threads tidepool starts, so that `top -H`, `ps -L`, perf and /proc show which
// part of the process a thread belongs to (web-io, store-ckpt, log-flush, ...).
#pragma once

#include <cstddef>
#include <latch>
#include <memory>
#include <string>
#include <string_view>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

namespace tidepool {

// Names the calling thread. Linux keeps 15 bytes of a name; the rest is cut off.
void SetCurrentThreadName(std::string_view name);

// The calling thread's name ("" where it cannot be read).
std::string CurrentThreadName();

// Names each of the `threads` threads of a pool that has just been made and has no work yet:
// every thread takes one naming task and holds it until all have one, so none takes two. The
// tasks share the latch: the caller may return and leave before the last of them has woken.
inline void NameThreads(boost::asio::thread_pool& pool, size_t threads, std::string_view name) {
  auto all = std::make_shared<std::latch>(static_cast<std::ptrdiff_t>(threads));
  for (size_t i = 0; i < threads; ++i) {
    boost::asio::post(pool, [all, label = std::string(name)] {
      SetCurrentThreadName(label);
      all->arrive_and_wait();
    });
  }
  all->wait();
}

}  // namespace tidepool
