// The subscriber runtime of a worker: one streaming pull, a coroutine per delivered message,
// automatic lease extension, ack / nack with backoff / dead-letter, and a graceful drain.
//
//   queue::Queue ──Subscribe──▶ MessageStream ──deliveries──▶ co_spawn(handler) per message
//        ▲                                                         │
//        └──── Ack (OK) · Nack(backoff) (error) · Terminate (Permanent) ◀──┘
//
// Every delivery starts its handler at once: the only bound on concurrency is the stream's flow
// control (max outstanding messages / bytes), so no message waits in a local buffer while its
// lease runs out. Handlers are coroutines on an io_context with `threads` threads; thousands of
// them awaiting timers or I/O cost memory, not threads.
//
// Handler outcome:
//   OK                       → Ack.
//   an error (or exception)  → Nack with delay min(max_nack_delay, min_nack_delay·2^(attempt-1)),
//                              attempt = delivery_attempt, or a local count when the backend
//                              reports 0.
//   Permanent(error)         → Terminate: to the subscription's dead-letter topic, else dropped.
//
// Cancellation: when the drain's grace budget runs out, the handlers still running get a
// terminal cancellation through their coroutine's cancellation slot (pending timers and I/O
// complete with operation_aborted; the next co_await of a cancelled coroutine throws). Their
// messages are nacked with delay 0 right then, whatever the handler does afterwards.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "queue/queue.h"

namespace tidepool::worker {

// The handler of one message. It runs on the runtime's io_context: it may co_await anything on
// `co_await boost::asio::this_coro::executor`, and must not block its thread for long (that
// stalls the other handlers sharing it). The Delivery stays valid until the coroutine ends.
using Handler = std::function<boost::asio::awaitable<Status>(const queue::Delivery&)>;

// Marks an error as permanent: the message is dead-lettered instead of retried. The marker is a
// prefix of the message ("permanent: "), so a Status keeps it through copies and WithContext
// of callers that add their context after it; Permanent of an ok Status is an Internal error.
Status Permanent(Status error);
bool IsPermanent(const Status& status);

// Nack delay for a message that failed on its `attempt`-th delivery (1-based; < 1 counts as 1):
// min(max_delay, min_delay · 2^(attempt-1)).
std::chrono::seconds NackDelay(int attempt, std::chrono::seconds min_delay,
                               std::chrono::seconds max_delay);

// TIDEPOOL_GRACE_PERIOD_SECONDS (a positive number, fractions allowed), else 30 s.
std::chrono::milliseconds DefaultGracePeriod();

constexpr int kDefaultStreamAckDeadlineSeconds = 60;
constexpr std::chrono::minutes kDefaultMaxLeaseExtension{60};
constexpr std::chrono::seconds kDefaultMinNackDelay{1};
constexpr std::chrono::seconds kDefaultMaxNackDelay{60};

struct RuntimeOptions {
  std::string subscription{};
  // Max outstanding messages = max handlers running at once.
  queue::FlowControl flow{};
  // The lease each delivery gets, and each extension adds (10–600 s on Pub/Sub).
  int stream_ack_deadline_seconds = kDefaultStreamAckDeadlineSeconds;
  // Leases are extended until this long after receipt; then the runtime lets the lease expire
  // (the message is redelivered, possibly while its first handler still runs) and logs it.
  std::chrono::seconds max_lease_extension = kDefaultMaxLeaseExtension;
  std::chrono::seconds min_nack_delay = kDefaultMinNackDelay;
  std::chrono::seconds max_nack_delay = kDefaultMaxNackDelay;
  // Drain budget. The runtime stops waiting for handlers before it runs out (at
  // grace - max(grace/10, 1 s)), so that a supervisor's SIGKILL at `grace` never comes first.
  std::chrono::milliseconds grace_period = DefaultGracePeriod();
  int threads = 1;  // io_context threads running the handlers
  // Status pipe (docs/workers.md); -1: none. Not owned. SIGPIPE is set to ignored when it is
  // at its default, so that a vanished reader cannot kill the process.
  int status_fd = -1;
  // Prefixed to every log line (stderr), e.g. "[pool/rev/instance] ".
  std::string log_prefix{};
};

struct Stats {
  uint64_t received = 0;
  uint64_t acked = 0;             // acks the backend confirmed
  uint64_t nacked = 0;            // including the nacks of a drain
  uint64_t terminated = 0;        // dead-lettered (or dropped without a dead-letter topic)
  uint64_t ack_failures = 0;      // acks refused (exactly-once) or failed as a whole
  uint64_t lease_extensions = 0;  // per message
  uint64_t in_flight = 0;         // handlers running now
  uint64_t max_in_flight = 0;     // the most handlers ever running at once
};

// Thread-safety: Drain and stats may be called from any thread at any time, also before Run
// and after it returned. Run is called at most once. The queue outlives the Runtime.
class Runtime {
 public:
  Runtime(queue::Queue& queue, RuntimeOptions options, Handler handler);
  ~Runtime();  // REQUIRES: Run is not running (it returned, or was never called)
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Pulls and handles messages until drained (returns OK) or until the stream fails for good
  // (returns its Status, after cancelling the handlers still running). Returns at once with OK
  // when Drain was called before Run.
  Status Run();

  // Stops pulling at once and makes Run drain: wait for the handlers up to the grace budget,
  // cancel and nack(0) the rest, close the stream, return. Idempotent; returns without
  // waiting; safe from a signal-handling thread (not from an async signal handler).
  void Drain();

  Stats stats() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// The main of a worker process started by a pool (docs/workers.md): reads the environment
// contract — the queue as queue/queue_env.h names it (TIDEPOOL_NATS_URL for NATS JetStream,
// else PUBSUB_EMULATOR_HOST, else Google Cloud Pub/Sub at TIDEPOOL_PUBSUB_ENDPOINT or
// pubsub.googleapis.com:443 with TLS and Application Default Credentials), TIDEPOOL_SUBSCRIPTION,
// TIDEPOOL_POOL / _REVISION / _INSTANCE, TIDEPOOL_GRACE_PERIOD_SECONDS, TIDEPOOL_STATUS_FD —
// over `defaults`, opens the queue, drains on SIGTERM / SIGINT.
// Returns the process exit code: 0 after a clean drain, 1 when the stream failed for good,
// 2 when the environment is incomplete or invalid.
// REQUIRES: called from the main thread before any other thread is started (it blocks SIGTERM
// and SIGINT, which the threads started later inherit).
int RunWorkerMain(Handler handler, RuntimeOptions defaults = {});

// The environment contract, parsed; exposed for tests.
struct WorkerEnv {
  queue::QueueOptions queue{};
  RuntimeOptions options{};
};

// For handlers that need the queue (to publish, to create their topics): `setup` runs once the
// queue is open, before pulling starts. An INVALID_ARGUMENT from it exits 2 (bad
// configuration), any other error 1.
using HandlerSetup = std::function<Result<Handler>(queue::Queue& queue, const WorkerEnv& env)>;
int RunWorkerMain(const HandlerSetup& setup, RuntimeOptions defaults = {});

// `getenv` is the lookup (nullptr when unset), so tests need not touch the process env.
Result<WorkerEnv> ParseWorkerEnv(const std::function<const char*(const char*)>& getenv,
                                 RuntimeOptions defaults);

}  // namespace tidepool::worker
