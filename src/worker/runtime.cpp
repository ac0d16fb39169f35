#include "worker/runtime.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <condition_variable>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/thread_name.h"
#include "queue/queue_env.h"

namespace tidepool::worker {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view kPermanentPrefix = "permanent: ";
constexpr std::chrono::milliseconds kFallbackGracePeriod{30'000};
// How often the leases of running handlers are looked at; well below the 10 s minimum lease.
constexpr std::chrono::milliseconds kLeaseCheckInterval{1'000};
// A lease is extended once less than max(kMinLeaseMargin, lease / kLeaseMarginDivisor) of it
// remains: enough for one check interval plus a round trip to a remote broker.
constexpr std::chrono::milliseconds kMinLeaseMargin{2'500};
constexpr int kLeaseMarginDivisor = 4;
// Status pipe "inflight N" lines are coalesced to one per interval (a drop to 0 goes at once).
constexpr std::chrono::milliseconds kStatusInterval{100};
// The drain stops waiting for handlers this much before the grace period ends, leaving time
// to nack, close and exit before the supervisor's SIGKILL.
constexpr std::chrono::milliseconds kMinDrainSafetyMargin{1'000};
constexpr int kDrainSafetyDivisor = 10;
// After cancelling, how long the runtime waits for the cancelled coroutines to return before
// it stops the io_context under them.
constexpr std::chrono::milliseconds kCancelledExitWait{500};
// RunWorkerMain exits on its own this long after its grace period when a drain hangs.
constexpr std::chrono::milliseconds kDrainSlack{10'000};
// Local delivery counts (for backends that report no delivery_attempt) are forgotten past this
// many messages, so that messages settled elsewhere cannot grow the map without bound.
constexpr size_t kMaxLocalAttemptEntries = 100'000;
// The largest shift NackDelay computes before clamping (2^30 s is far beyond any max).
constexpr int kMaxBackoffShift = 30;

void Logf(const std::string& prefix, const char* format, ...) __attribute__((format(printf, 2, 3)));

// One line per event, written with one call so that lines of concurrent threads do not mix.
void Logf(const std::string& prefix, const char* format, ...) {
  char body[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(body, sizeof(body), format, args);
  va_end(args);
  std::string line = prefix + body + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
}

std::chrono::milliseconds DrainBudget(std::chrono::milliseconds grace) {
  auto margin = std::max(kMinDrainSafetyMargin, grace / kDrainSafetyDivisor);
  return std::max(std::chrono::milliseconds(0), grace - margin);
}

// Parses a positive number of seconds (fractions allowed) into milliseconds.
std::optional<std::chrono::milliseconds> ParseSeconds(const char* text) {
  if (text == nullptr || *text == '\0') return std::nullopt;
  char* end = nullptr;
  double seconds = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(seconds > 0) || seconds > 1e9) return std::nullopt;
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

}  // namespace

Status Permanent(Status error) {
  if (error.ok()) return Status::Internal(std::string(kPermanentPrefix) + "Permanent(OK)");
  if (IsPermanent(error)) return error;
  return Status(error.code(), std::string(kPermanentPrefix) + error.message());
}

bool IsPermanent(const Status& status) {
  return !status.ok() && std::string_view(status.message()).starts_with(kPermanentPrefix);
}

std::chrono::seconds NackDelay(int attempt, std::chrono::seconds min_delay,
                               std::chrono::seconds max_delay) {
  int shift = std::clamp(attempt - 1, 0, kMaxBackoffShift);
  auto delay = min_delay * (int64_t{1} << shift);
  return std::min(max_delay, delay);
}

std::chrono::milliseconds DefaultGracePeriod() {
  return ParseSeconds(std::getenv("TIDEPOOL_GRACE_PERIOD_SECONDS")).value_or(kFallbackGracePeriod);
}

// ---------------------------------------------------------------------------------------------

namespace {

// One message whose handler runs. Owned by the in-flight map (until settled or abandoned) and
// by its handler coroutine.
struct InFlight {
  InFlight(queue::Delivery d, asio::strand<asio::io_context::executor_type> s)
      : delivery(std::move(d)), strand(std::move(s)) {}
  queue::Delivery delivery;
  // The handler runs on its own strand, so that its cancellation signal is emitted on the
  // executor that runs it (cancellation_signal is not thread-safe).
  asio::strand<asio::io_context::executor_type> strand;
  asio::cancellation_signal cancel;
  int attempt = 1;
  Clock::time_point received_at{};
  Clock::time_point lease_expires_at{};  // as far as this process knows; guarded by Impl::mu
  bool extending = true;                 // false once extension stopped; guarded by Impl::mu
};

}  // namespace

struct Runtime::Impl : std::enable_shared_from_this<Runtime::Impl> {
  Impl(queue::Queue& q, RuntimeOptions o, Handler h)
      : queue(q), options(std::move(o)), handler(std::move(h)) {
    options.threads = std::max(1, options.threads);
    lease = std::chrono::seconds(options.stream_ack_deadline_seconds);
    lease_margin =
        std::max<std::chrono::milliseconds>(kMinLeaseMargin, lease / kLeaseMarginDivisor);
  }

  // Declared first: destroyed last, after everything holding its executors.
  asio::io_context ioc;
  queue::Queue& queue;
  RuntimeOptions options;
  Handler handler;
  std::chrono::milliseconds lease{};
  std::chrono::milliseconds lease_margin{};
  std::vector<std::thread> threads;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;

  // Lock order: stream_mu before mu. No stream call is made with mu held: a backend may run
  // callbacks (deliveries included) inline, and those take mu.
  std::mutex mu;
  std::condition_variable cv;
  std::unordered_map<std::string, std::shared_ptr<InFlight>> in_flight;  // by ack id
  std::unordered_map<std::string, int> local_attempts;                   // by message id
  std::vector<std::string> late_nacks;  // delivered after the drain began: give back at once
  bool started = false;
  bool draining = false;
  Clock::time_point drain_started{};
  std::optional<Status> fatal;
  int pending_settles = 0;  // handlers that finished and are issuing their ack / nack
  int live_handlers = 0;    // handler coroutines not yet returned (abandoned ones included)

  std::shared_mutex stream_mu;
  std::unique_ptr<queue::MessageStream> stream;  // guarded by stream_mu
  bool stream_closed = false;                    // guarded by stream_mu

  std::mutex status_mu;  // one writer of the status pipe at a time; guards last_inflight_line
  int64_t last_inflight_line = 0;  // a worker starts idle: no line until something runs

  std::atomic<uint64_t> received{0}, acked{0}, nacked{0}, terminated{0}, ack_failures{0},
      lease_extensions{0}, in_flight_count{0}, max_in_flight{0};

  // ---- status pipe

  void WriteStatusLine(const std::string& line) {
    if (options.status_fd < 0) return;
    std::string text = line + "\n";
    // A pipe write of at most PIPE_BUF bytes is atomic; the result is ignored because the
    // reader (the pool) may be gone, and a full pipe must not stall the worker.
    ssize_t ignored = ::write(options.status_fd, text.data(), text.size());
    (void)ignored;
  }
  void WriteInflight(bool only_if_zero) {
    if (options.status_fd < 0) return;
    std::lock_guard lock(status_mu);
    auto n = static_cast<int64_t>(in_flight_count.load());
    if (n == last_inflight_line || (only_if_zero && n != 0)) return;
    last_inflight_line = n;
    WriteStatusLine("inflight " + std::to_string(n));
  }
  void WriteStatus(const std::string& line) {
    if (options.status_fd < 0) return;
    std::lock_guard lock(status_mu);
    WriteStatusLine(line);
  }

  // ---- deliveries

  void OnMessages(std::vector<queue::Delivery> deliveries) {
    std::vector<std::shared_ptr<InFlight>> start;
    bool post_late = false;
    {
      std::lock_guard lock(mu);
      received += deliveries.size();
      for (auto& d : deliveries) {
        if (draining || fatal) {
          late_nacks.push_back(std::move(d.ack_id));
          post_late = true;
          continue;
        }
        auto f = std::make_shared<InFlight>(std::move(d), asio::make_strand(ioc));
        if (f->delivery.delivery_attempt > 0) {
          f->attempt = f->delivery.delivery_attempt;
        } else {
          if (local_attempts.size() >= kMaxLocalAttemptEntries) local_attempts.clear();
          f->attempt = ++local_attempts[f->delivery.message_id];
        }
        f->received_at = Clock::now();
        f->lease_expires_at = f->received_at + lease;
        in_flight.insert_or_assign(f->delivery.ack_id, f);
        ++live_handlers;
        start.push_back(std::move(f));
      }
      in_flight_count = in_flight.size();
      uint64_t peak = max_in_flight.load();
      while (in_flight.size() > peak &&
             !max_in_flight.compare_exchange_weak(peak, in_flight.size())) {
      }
    }
    auto self = shared_from_this();
    for (auto& f : start) {
      auto slot = f->cancel.slot();
      // The completion handler owns `f` too: co_spawn's entry point touches the slot (thus the
      // signal inside `f`) after RunHandler's frame is gone, up to invoking this handler.
      asio::co_spawn(f->strand, self->RunHandler(f),
                     asio::bind_cancellation_slot(slot, [f](const std::exception_ptr&) {}));
    }
    // Not nacked inline: this callback may run inside a stream call.
    if (post_late) {
      std::weak_ptr<Impl> weak = self;
      asio::post(ioc, [weak] {
        if (auto impl = weak.lock()) impl->FlushLateNacks();
      });
    }
  }

  asio::awaitable<void> RunHandler(std::shared_ptr<InFlight> f) {
    Status result;
    try {
      result = co_await handler(f->delivery);
    } catch (const std::exception& e) {
      result = Status::Internal(std::string("handler threw: ") + e.what());
    } catch (...) {
      result = Status::Internal("handler threw a non-standard exception");
    }
    Finish(f, std::move(result));
  }

  void Finish(const std::shared_ptr<InFlight>& f, Status result) {
    bool now_idle = false;
    {
      std::lock_guard lock(mu);
      --live_handlers;
      auto it = in_flight.find(f->delivery.ack_id);
      if (it == in_flight.end() || it->second != f) {
        // Abandoned at the drain deadline or after a stream failure: already nacked (or the
        // lease is gone); whatever the handler returned no longer counts.
        cv.notify_all();
        return;
      }
      in_flight.erase(it);
      in_flight_count = in_flight.size();
      now_idle = in_flight.empty();
      ++pending_settles;
    }
    if (now_idle) WriteInflight(/*only_if_zero=*/true);
    Settle(*f, std::move(result));
    std::lock_guard lock(mu);
    --pending_settles;
    cv.notify_all();
  }

  void ForgetAttempts(const std::string& message_id) {
    std::lock_guard lock(mu);
    local_attempts.erase(message_id);
  }

  void Settle(const InFlight& f, Status result) {
    auto self = shared_from_this();
    const queue::Delivery& d = f.delivery;
    std::shared_lock lock(stream_mu);
    if (!stream || stream_closed) {
      Logf(options.log_prefix, "message %s: stream closed before it was settled",
           d.message_id.c_str());
      return;
    }
    if (result.ok()) {
      stream->Ack({d.ack_id}, [self, ack_id = d.ack_id,
                               message_id = d.message_id](queue::AckOutcome outcome) {
        bool refused = std::find(outcome.failed_ack_ids.begin(), outcome.failed_ack_ids.end(),
                                 ack_id) != outcome.failed_ack_ids.end();
        if (!outcome.status.ok() || refused) {
          ++self->ack_failures;
          Logf(self->options.log_prefix,
               "message %s: ack not confirmed (%s); it may be redelivered", message_id.c_str(),
               refused ? "lease lost" : outcome.status.ToString().c_str());
          return;
        }
        ++self->acked;
        self->ForgetAttempts(message_id);
      });
      return;
    }
    if (IsPermanent(result)) {
      Logf(options.log_prefix, "message %s: permanent failure, dead-lettering: %s",
           d.message_id.c_str(), result.ToString().c_str());
      stream->Terminate(
          {d}, [self, ack_id = d.ack_id, message_id = d.message_id](queue::AckOutcome outcome) {
            bool refused = std::find(outcome.failed_ack_ids.begin(), outcome.failed_ack_ids.end(),
                                     ack_id) != outcome.failed_ack_ids.end();
            if (!outcome.status.ok() || refused) {
              Logf(self->options.log_prefix, "message %s: dead-lettering not confirmed (%s)",
                   message_id.c_str(), refused ? "lease lost" : outcome.status.ToString().c_str());
              return;
            }
            ++self->terminated;
            self->ForgetAttempts(message_id);
          });
      return;
    }
    auto delay = NackDelay(f.attempt, options.min_nack_delay, options.max_nack_delay);
    Logf(options.log_prefix, "message %s: attempt %d failed: %s; redelivery in %llds",
         d.message_id.c_str(), f.attempt, result.ToString().c_str(),
         static_cast<long long>(delay.count()));
    stream->Nack({d.ack_id}, delay, [self, message_id = d.message_id](queue::AckOutcome outcome) {
      if (!outcome.status.ok() || !outcome.failed_ack_ids.empty()) {
        Logf(self->options.log_prefix, "message %s: nack not confirmed; the lease will expire",
             message_id.c_str());
        return;
      }
      ++self->nacked;
    });
  }

  // Gives leases back for immediate redelivery (drain). REQUIRES: stream_mu held, stream open.
  void NackNowLocked(std::vector<std::string> ack_ids) {
    if (ack_ids.empty()) return;
    auto self = shared_from_this();
    size_t count = ack_ids.size();
    stream->Nack(std::move(ack_ids), std::chrono::seconds(0),
                 [self, count](queue::AckOutcome outcome) {
                   if (!outcome.status.ok()) {
                     Logf(self->options.log_prefix, "drain: nack failed: %s",
                          outcome.status.ToString().c_str());
                     return;
                   }
                   self->nacked += count - std::min(count, outcome.failed_ack_ids.size());
                 });
  }

  void FlushLateNacks() {
    std::vector<std::string> ids;
    std::shared_lock stream_lock(stream_mu);
    {
      std::lock_guard lock(mu);
      ids.swap(late_nacks);
    }
    if (!stream || stream_closed) return;
    NackNowLocked(std::move(ids));
  }

  // ---- lease extension

  void ExtendDueLeases() {
    auto now = Clock::now();
    std::vector<std::string> due;
    {
      std::lock_guard lock(mu);
      for (auto& [ack_id, f] : in_flight) {
        if (!f->extending) continue;
        if (now - f->received_at >= options.max_lease_extension) {
          f->extending = false;
          Logf(options.log_prefix,
               "message %s: max lease extension (%llds) reached; no longer extending, it will "
               "be redelivered",
               f->delivery.message_id.c_str(),
               static_cast<long long>(options.max_lease_extension.count()));
          continue;
        }
        if (f->lease_expires_at - now > lease_margin) continue;
        f->lease_expires_at = now + lease;
        due.push_back(ack_id);
      }
    }
    if (due.empty()) return;
    auto self = shared_from_this();
    std::shared_lock lock(stream_mu);
    if (!stream || stream_closed) return;
    size_t count = due.size();
    std::vector<std::string> extended = due;
    stream->ExtendLease(
        std::move(due), std::chrono::duration_cast<std::chrono::seconds>(lease),
        [self, count, extended = std::move(extended)](queue::AckOutcome outcome) {
          std::lock_guard guard(self->mu);
          if (!outcome.status.ok()) {
            // Due again at the next check: the lease still ends where it did.
            Logf(self->options.log_prefix, "lease extension failed: %s",
                 outcome.status.ToString().c_str());
            for (const auto& id : extended) {
              auto it = self->in_flight.find(id);
              if (it != self->in_flight.end()) it->second->lease_expires_at = Clock::now();
            }
            return;
          }
          self->lease_extensions += count - std::min(count, outcome.failed_ack_ids.size());
          for (const auto& id : outcome.failed_ack_ids) {
            auto it = self->in_flight.find(id);
            if (it == self->in_flight.end()) continue;
            it->second->extending = false;
            Logf(self->options.log_prefix,
                 "message %s: lease lost; it will be redelivered and its ack will fail",
                 it->second->delivery.message_id.c_str());
          }
        });
  }

  asio::awaitable<void> LeaseLoop() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (;;) {
      timer.expires_after(kLeaseCheckInterval);
      auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      ExtendDueLeases();
    }
  }

  asio::awaitable<void> StatusLoop() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (;;) {
      timer.expires_after(kStatusInterval);
      auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      WriteInflight(/*only_if_zero=*/false);
    }
  }

  // ---- run / drain

  void StartIo() {
    work.emplace(ioc.get_executor());
    for (int i = 0; i < options.threads; ++i) {
      threads.emplace_back([this] {
        SetCurrentThreadName("worker-io");
        ioc.run();
      });
    }
  }
  void StopIo() {
    work.reset();
    ioc.stop();
    for (auto& t : threads) t.join();
    threads.clear();
  }

  // Takes every running handler out of the in-flight map and cancels it. REQUIRES: mu held.
  std::vector<std::string> AbandonAllLocked() {
    std::vector<std::string> ack_ids;
    for (auto& [ack_id, f] : in_flight) {
      ack_ids.push_back(ack_id);
      asio::post(f->strand, [f] { f->cancel.emit(asio::cancellation_type::terminal); });
    }
    in_flight.clear();
    in_flight_count = 0;
    return ack_ids;
  }

  void CloseStream() {
    std::unique_lock lock(stream_mu);
    if (!stream || stream_closed) return;
    stream->Close();
    stream_closed = true;
  }

  Status Run() {
    {
      std::lock_guard lock(mu);
      if (started) return Status::FailedPrecondition("Runtime::Run called twice");
      started = true;
      if (draining) return Status::Ok();
    }
    if (options.status_fd >= 0) {
      int flags = ::fcntl(options.status_fd, F_GETFL);
      if (flags >= 0) ::fcntl(options.status_fd, F_SETFL, flags | O_NONBLOCK);
      struct sigaction current {};
      if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
        std::signal(SIGPIPE, SIG_IGN);
      }
    }
    StartIo();
    auto self = shared_from_this();
    {
      std::unique_lock lock(stream_mu);
      queue::StreamOptions stream_options{
          .flow = options.flow, .stream_ack_deadline_seconds = options.stream_ack_deadline_seconds};
      auto opened = queue.Subscribe(
          options.subscription, stream_options,
          [self](std::vector<queue::Delivery> d) { self->OnMessages(std::move(d)); },
          [self](Status error) { self->OnStreamError(std::move(error)); });
      if (!opened.ok()) {
        lock.unlock();
        StopIo();
        return opened.status().WithContext("subscribe " + options.subscription);
      }
      stream = std::move(*opened);
    }
    bool drain_early = false;
    {
      std::lock_guard lock(mu);
      drain_early = draining;
    }
    if (drain_early) {
      std::shared_lock lock(stream_mu);
      stream->StopPulling();
    }
    WriteStatus("pulling");
    Logf(options.log_prefix, "pulling from %s (max %lld messages in flight)",
         options.subscription.c_str(),
         static_cast<long long>(options.flow.max_outstanding_messages));
    asio::co_spawn(ioc, LeaseLoop(), asio::detached);
    asio::co_spawn(ioc, StatusLoop(), asio::detached);

    std::vector<std::string> give_back;
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return draining || fatal.has_value(); });
    if (draining) {
      auto deadline = drain_started + DrainBudget(options.grace_period);
      cv.wait_until(lock, deadline, [&] { return in_flight.empty() || fatal.has_value(); });
    }
    bool stream_failed = fatal.has_value();
    if (!in_flight.empty()) {
      Logf(options.log_prefix, "%s: cancelling %zu handlers still running",
           stream_failed ? "stream failed" : "drain deadline", in_flight.size());
    }
    give_back = AbandonAllLocked();
    give_back.insert(give_back.end(), std::make_move_iterator(late_nacks.begin()),
                     std::make_move_iterator(late_nacks.end()));
    late_nacks.clear();
    // Handlers that finished before the cut are issuing their acks: let them, then close.
    cv.wait(lock, [&] { return pending_settles == 0; });
    lock.unlock();

    WriteInflight(/*only_if_zero=*/true);
    if (!stream_failed) {
      std::shared_lock stream_lock(stream_mu);
      NackNowLocked(std::move(give_back));
    }
    CloseStream();

    lock.lock();
    cv.wait_for(lock, kCancelledExitWait, [&] { return live_handlers == 0; });
    int stuck = live_handlers;
    Status outcome = fatal.value_or(Status::Ok());
    lock.unlock();
    if (stuck > 0) {
      Logf(options.log_prefix, "%d cancelled handlers did not return; stopping under them", stuck);
    }
    StopIo();
    {
      // Drops the callbacks the stream holds (they own this Impl).
      std::unique_lock stream_lock(stream_mu);
      stream.reset();
    }
    auto s = Snapshot();
    Logf(options.log_prefix,
         "stopped: received %llu, acked %llu, nacked %llu, terminated %llu, ack failures %llu",
         static_cast<unsigned long long>(s.received), static_cast<unsigned long long>(s.acked),
         static_cast<unsigned long long>(s.nacked), static_cast<unsigned long long>(s.terminated),
         static_cast<unsigned long long>(s.ack_failures));
    return outcome;
  }

  void OnStreamError(Status error) {
    Logf(options.log_prefix, "stream failed: %s", error.ToString().c_str());
    std::lock_guard lock(mu);
    if (!fatal) fatal = error.ok() ? Status::Internal("stream ended with OK status") : error;
    cv.notify_all();
  }

  void Drain() {
    {
      std::lock_guard lock(mu);
      if (draining) return;
      draining = true;
      drain_started = Clock::now();
      cv.notify_all();
    }
    WriteStatus("draining");
    Logf(options.log_prefix, "draining (grace period %lld ms)",
         static_cast<long long>(options.grace_period.count()));
    std::shared_lock lock(stream_mu);
    if (stream && !stream_closed) stream->StopPulling();
  }

  Stats Snapshot() const {
    return Stats{.received = received.load(),
                 .acked = acked.load(),
                 .nacked = nacked.load(),
                 .terminated = terminated.load(),
                 .ack_failures = ack_failures.load(),
                 .lease_extensions = lease_extensions.load(),
                 .in_flight = in_flight_count.load(),
                 .max_in_flight = max_in_flight.load()};
  }
};

Runtime::Runtime(queue::Queue& queue, RuntimeOptions options, Handler handler)
    : impl_(std::make_shared<Impl>(queue, std::move(options), std::move(handler))) {}

Runtime::~Runtime() = default;

Status Runtime::Run() {
  return impl_->Run();
}
void Runtime::Drain() {
  impl_->Drain();
}
Stats Runtime::stats() const {
  return impl_->Snapshot();
}

// ---------------------------------------------------------------------------------------------

Result<WorkerEnv> ParseWorkerEnv(const std::function<const char*(const char*)>& getenv,
                                 RuntimeOptions defaults) {
  auto value = [&](const char* name) -> std::string {
    const char* v = getenv(name);
    return v == nullptr ? std::string() : std::string(v);
  };
  WorkerEnv env;
  env.options = std::move(defaults);
  TP_ASSIGN_OR_RETURN(env.queue, queue::QueueOptionsFromEnv(getenv));
  std::string subscription = value("TIDEPOOL_SUBSCRIPTION");
  if (!subscription.empty()) env.options.subscription = subscription;
  if (env.options.subscription.empty()) {
    return Status::InvalidArgument("TIDEPOOL_SUBSCRIPTION is not set");
  }
  if (const char* grace = getenv("TIDEPOOL_GRACE_PERIOD_SECONDS"); grace != nullptr) {
    auto parsed = ParseSeconds(grace);
    if (!parsed) {
      return Status::InvalidArgument(std::string("TIDEPOOL_GRACE_PERIOD_SECONDS: '") + grace +
                                     "' is not a positive number of seconds");
    }
    env.options.grace_period = *parsed;
  }
  if (const char* fd = getenv("TIDEPOOL_STATUS_FD"); fd != nullptr && *fd != '\0') {
    char* end = nullptr;
    long parsed = std::strtol(fd, &end, 10);
    if (*end != '\0' || parsed < 0 || parsed > INT32_MAX) {
      return Status::InvalidArgument(std::string("TIDEPOOL_STATUS_FD: '") + fd +
                                     "' is not a file descriptor number");
    }
    env.options.status_fd = static_cast<int>(parsed);
  }
  if (const char* max = getenv("TIDEPOOL_MAX_OUTSTANDING_MESSAGES"); max != nullptr && *max) {
    char* end = nullptr;
    const long long parsed = std::strtoll(max, &end, 10);
    if (*end != '\0' || parsed <= 0) {
      return Status::InvalidArgument(std::string("TIDEPOOL_MAX_OUTSTANDING_MESSAGES: '") + max +
                                     "' is not a positive number");
    }
    env.options.flow.max_outstanding_messages = parsed;
  }
  std::string pool = value("TIDEPOOL_POOL");
  std::string revision = value("TIDEPOOL_REVISION");
  std::string instance = value("TIDEPOOL_INSTANCE");
  if (env.options.log_prefix.empty()) {
    std::string who = pool.empty() ? std::string("worker") : pool;
    if (!revision.empty()) who += "/" + revision;
    if (!instance.empty()) who += "/" + instance;
    env.options.log_prefix = "[" + who + "] ";
  }
  return env;
}

int RunWorkerMain(Handler handler, RuntimeOptions defaults) {
  return RunWorkerMain([handler = std::move(handler)](
                           queue::Queue&, const WorkerEnv&) -> Result<Handler> { return handler; },
                       std::move(defaults));
}

int RunWorkerMain(const HandlerSetup& setup, RuntimeOptions defaults) {
  sigset_t drain_signals;
  sigemptyset(&drain_signals);
  sigaddset(&drain_signals, SIGTERM);
  sigaddset(&drain_signals, SIGINT);
  // Blocked before any thread exists, so that only the sigwait thread ever takes them.
  pthread_sigmask(SIG_BLOCK, &drain_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto env =
      ParseWorkerEnv([](const char* name) { return std::getenv(name); }, std::move(defaults));
  if (!env.ok()) {
    std::fprintf(stderr, "worker: %s\n", env.status().ToString().c_str());
    return 2;
  }
  const std::string& prefix = env->options.log_prefix;
  auto queue = queue::OpenQueue(env->queue);
  if (!queue.ok()) {
    Logf(prefix, "cannot open the queue (%s): %s", queue::DescribeQueue(env->queue).c_str(),
         queue.status().ToString().c_str());
    return 1;
  }
  auto handler = setup(**queue, *env);
  if (!handler.ok()) {
    Logf(prefix, "%s", handler.status().ToString().c_str());
    return handler.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  Runtime runtime(**queue, env->options, std::move(handler).value());
  std::atomic<bool> finished{false};
  // The drain's deadline: a worker whose broker is gone (its supervisor and broker killed
  // together) can wait on settle calls that never complete, and nobody would SIGKILL it after
  // its grace period. It exits on its own grace_period + kDrainSlack after the first signal.
  std::mutex deadline_mu;
  std::condition_variable deadline_cv;
  std::thread deadline_thread;
  std::thread signal_thread([&] {
    for (;;) {
      int sig = 0;
      if (sigwait(&drain_signals, &sig) != 0) continue;
      if (finished) return;
      Logf(prefix, "%s received", sig == SIGINT ? "SIGINT" : "SIGTERM");
      if (!deadline_thread.joinable()) {
        const auto limit = env->options.grace_period + kDrainSlack;
        deadline_thread = std::thread([&, limit] {
          std::unique_lock lock(deadline_mu);
          if (deadline_cv.wait_for(lock, limit, [&] { return finished.load(); })) return;
          Logf(prefix, "drain did not end within the grace period + %lld s: exiting now",
               static_cast<long long>(
                   std::chrono::duration_cast<std::chrono::seconds>(kDrainSlack).count()));
          std::_Exit(1);
        });
      }
      runtime.Drain();
    }
  });
  Status status = runtime.Run();
  {
    std::lock_guard lock(deadline_mu);
    finished = true;
  }
  deadline_cv.notify_all();
  // Wakes the sigwait thread so that it sees `finished`.
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  if (deadline_thread.joinable()) deadline_thread.join();
  if (!status.ok()) {
    Logf(prefix, "fatal: %s", status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace tidepool::worker
