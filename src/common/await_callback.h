// AwaitCallback: awaits an operation that reports through a callback (the queue's publisher,
// an event sink), from a coroutine. The callback may run on any thread, before or after the
// coroutine suspends, and after the coroutine was cancelled and gone: it only touches shared
// state and wakes the coroutine through its executor.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <functional>
#include <memory>
#include <optional>

namespace tidepool {

// `start(done)` begins the operation; `done(value)` is called exactly once. Returns that value,
// or `if_cancelled` when the awaiting coroutine is cancelled first.
template <typename T, typename Start>
boost::asio::awaitable<T> AwaitCallback(Start start, T if_cancelled) {
  namespace asio = boost::asio;
  struct State {
    explicit State(asio::any_io_executor ex) : executor(ex), timer(ex) {}
    asio::any_io_executor executor;
    asio::steady_timer timer;
    std::optional<T> value;
  };
  auto state = std::make_shared<State>(co_await asio::this_coro::executor);
  state->timer.expires_at(asio::steady_timer::time_point::max());
  std::function<void(T)> done = [state](T value) {
    asio::post(state->executor, [state, value = std::move(value)]() mutable {
      state->value = std::move(value);
      state->timer.cancel();
    });
  };
  start(std::move(done));
  while (!state->value) {
    // The wake-up is a cancel of the timer: its error code says nothing.
    (void)co_await state->timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (state->value) break;
    // Woken without a value: the coroutine itself was cancelled.
    const auto cancelled = co_await asio::this_coro::cancellation_state;
    if (cancelled.cancelled() != asio::cancellation_type::none) co_return if_cancelled;
  }
  co_return std::move(*state->value);
}

}  // namespace tidepool
