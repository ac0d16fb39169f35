// The NATS JetStream side of broker_vs_nats, through nats.c (Debian libnats-dev 3.4.1): file
// storage, one replica; js_PublishAsync with a bounded window or js_Publish; a durable pull
// consumer with explicit acks (natsSubscription_Fetch), or a push consumer for latency.

#include <nats/nats.h>

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "driver.h"

namespace broker_bench {
namespace {

// Long enough that nothing is redelivered during a run: every delivery is acked once.
constexpr int64_t kAckWaitNanos = 60'000'000'000;
// Fetches normally return at once (the messages are there); the wait only matters at the end.
constexpr int64_t kFetchTimeoutMillis = 5000;
constexpr int64_t kLatencyFetchTimeoutMillis = 200;
constexpr int kMaxFetchTimeouts = 3;
constexpr int64_t kPublishCompleteTimeoutMillis = 60'000;
// The latency publisher is open-loop: the window only bounds memory if the server stalls.
constexpr int64_t kLatencyMaxPending = 1'000'000;
constexpr double kDrainSeconds = 10;
constexpr int64_t kDrainWaitMillis = 5000;

void Check(natsStatus s, const std::string& what) {
  if (s == NATS_OK) return;
  const char* detail = nats_GetLastError(nullptr);
  throw std::runtime_error("nats: " + what + ": " + natsStatus_GetText(s) +
                           (detail != nullptr ? std::string(" (") + detail + ")" : ""));
}

// A connection and its JetStream context, destroyed together.
class Connection {
 public:
  explicit Connection(const std::string& url, const jsOptions* js_options = nullptr) {
    Check(natsConnection_ConnectTo(&nc_, url.c_str()), "connect to " + url);
    jsOptions defaults;
    jsOptions_Init(&defaults);
    Check(natsConnection_JetStream(
              &js_, nc_, js_options != nullptr ? const_cast<jsOptions*>(js_options) : &defaults),
          "JetStream context");
  }
  ~Connection() {
    jsCtx_Destroy(js_);
    natsConnection_Destroy(nc_);  // closes it
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  natsConnection* nc() const { return nc_; }
  jsCtx* js() const { return js_; }

 private:
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
};

struct StreamNames {
  std::string stream;
  std::string subject;
  std::string durable;
};

// A file-backed, single-replica stream (the server's defaults otherwise: limits retention, no
// size limit), as `nats stream add --storage file --replicas 1` would make.
StreamNames CreateStream(const std::string& url, const std::string& mode,
                         const std::string& run_id) {
  StreamNames n;
  n.stream = mode + "_" + run_id;
  n.subject = "bench." + mode + "." + run_id;
  n.durable = mode + "_" + run_id;
  Connection c(url);
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  const char* subjects[] = {n.subject.c_str()};
  cfg.Name = n.stream.c_str();
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  cfg.Storage = js_FileStorage;
  cfg.Replicas = 1;
  jsErrCode err = static_cast<jsErrCode>(0);
  Check(js_AddStream(nullptr, c.js(), &cfg, nullptr, &err), "add stream " + n.stream);
  return n;
}

// What the pipelined publishers of one run share; AckHandler closures point here.
struct AckCounter {
  std::atomic<uint64_t> acked{0};
  std::atomic<uint64_t> failed{0};
  std::mutex mu;
  std::string first_error;
  // Latency runs: PubAck time - send time of messages sent at or after record_from.
  bool record_ack_latency = false;
  std::atomic<int64_t> record_from{INT64_MAX};
  std::vector<int64_t> ack_latencies_ns;  // guarded by mu
};

void OnPublishAck(jsCtx*, natsMsg* msg, jsPubAck* ack, jsPubAckErr* err, void* closure) {
  auto* counter = static_cast<AckCounter*>(closure);
  if (ack != nullptr) {
    counter->acked.fetch_add(1);
    if (counter->record_ack_latency) {
      const int64_t now = NowNanos();
      const int64_t sent =
          PayloadSendTime(natsMsg_GetData(msg), static_cast<size_t>(natsMsg_GetDataLength(msg)));
      if (sent >= counter->record_from.load(std::memory_order_relaxed)) {
        std::lock_guard lock(counter->mu);
        counter->ack_latencies_ns.push_back(now - sent);
      }
    }
  } else if (counter->failed.fetch_add(1) == 0 && err != nullptr) {
    std::lock_guard lock(counter->mu);
    counter->first_error = err->ErrText != nullptr ? err->ErrText : natsStatus_GetText(err->Err);
  }
  natsMsg_Destroy(msg);
}

jsOptions AsyncPublishOptions(int64_t max_pending, AckCounter* counter) {
  jsOptions o;
  jsOptions_Init(&o);
  o.PublishAsync.MaxPending = max_pending;
  o.PublishAsync.AckHandler = OnPublishAck;
  o.PublishAsync.AckHandlerClosure = counter;
  return o;
}

// Publishes `payload` once, waiting out stalls (a full window) instead of failing on them.
void PublishAsyncRetryingStalls(jsCtx* js, const std::string& subject, const std::string& payload) {
  for (;;) {
    const natsStatus s = js_PublishAsync(js, subject.c_str(), payload.data(),
                                         static_cast<int>(payload.size()), nullptr);
    if (s != NATS_TIMEOUT) {
      Check(s, "js_PublishAsync");
      return;
    }
  }
}

void WaitForPublishAcks(jsCtx* js) {
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = kPublishCompleteTimeoutMillis;
  Check(js_PublishAsyncComplete(js, &po), "js_PublishAsyncComplete");
}

// `publishers` connections publishing 1-message js_PublishAsync calls, each with a window of
// batch * inflight unacknowledged messages; until the deadline, or `message_limit` in all.
Result PublishPipelinedTo(const std::string& url, const std::string& subject, const Workload& w,
                          uint64_t message_limit) {
  AckCounter counter;
  const int64_t window = static_cast<int64_t>(w.batch) * w.inflight;
  std::atomic<uint64_t> claimed{0};
  std::atomic<int64_t> last_completion{0};
  std::mutex error_mu;
  std::string thread_error;
  const int64_t start = NowNanos();
  const int64_t deadline = start + SecondsToNanos(w.duration_seconds);
  std::vector<std::thread> threads;
  for (int i = 0; i < w.publishers; ++i) {
    threads.emplace_back([&] {
      try {
        const jsOptions options = AsyncPublishOptions(window, &counter);
        Connection c(url, &options);
        const std::string payload = MakePayload(w.message_bytes, 0);
        for (;;) {
          if (message_limit > 0 ? claimed.fetch_add(1) >= message_limit : NowNanos() >= deadline)
            break;
          PublishAsyncRetryingStalls(c.js(), subject, payload);
        }
        WaitForPublishAcks(c.js());
        const int64_t done = NowNanos();
        int64_t seen = last_completion.load();
        while (seen < done && !last_completion.compare_exchange_weak(seen, done)) {
        }
      } catch (const std::exception& e) {
        std::lock_guard lock(error_mu);
        thread_error = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (!thread_error.empty()) throw std::runtime_error(thread_error);
  Result r;
  r.messages = counter.acked.load();
  r.seconds = static_cast<double>(last_completion.load() - start) / 1e9;
  r.errors = counter.failed.load();
  r.first_error = counter.first_error;
  r.note = std::to_string(w.publishers) + " connections x js_PublishAsync, window " +
           std::to_string(window) + " msgs (MaxPending)";
  return r;
}

// The latency and consume runs' bookkeeping of received messages.
struct ReceiveState {
  std::atomic<int64_t> record_from{INT64_MAX};
  std::atomic<uint64_t> received{0};
  std::vector<int64_t> latencies_ns;  // written by the one receiving thread
  std::vector<int64_t> latency_sent_ns;
  std::atomic<uint64_t> ack_failures{0};
};

void Receive(natsMsg* msg, ReceiveState* state) {
  const int64_t now = NowNanos();
  const int64_t sent =
      PayloadSendTime(natsMsg_GetData(msg), static_cast<size_t>(natsMsg_GetDataLength(msg)));
  if (sent >= state->record_from.load(std::memory_order_relaxed)) {
    state->latencies_ns.push_back(now - sent);
    state->latency_sent_ns.push_back(sent);
  }
  if (natsMsg_Ack(msg, nullptr) != NATS_OK) state->ack_failures.fetch_add(1);
  natsMsg_Destroy(msg);
  state->received.fetch_add(1);
}

void OnPushedMessage(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  Receive(msg, static_cast<ReceiveState*>(closure));
}

jsSubOptions ConsumerOptions(const StreamNames& names, const Workload& w) {
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = names.stream.c_str();
  so.Config.Durable = names.durable.c_str();
  so.Config.AckPolicy = js_AckExplicit;
  so.Config.AckWait = kAckWaitNanos;
  so.Config.MaxAckPending = w.nats_max_ack_pending;
  return so;
}

// natsSubscription_Fetch of nats.c 3.4.1 overruns its result array when more than half of the
// requested batch is already queued in the subscription (left over from an expired pull). Asking
// for exactly twice what is queued is safe: it returns the queued messages. Otherwise fetch
// `batch`: nothing is queued, since every earlier fetch was handled in full.
natsStatus SafeFetch(natsMsgList* list, natsSubscription* sub, int batch, int64_t timeout_millis,
                     uint64_t* leftover_fetches) {
  int queued = 0;
  natsSubscription_GetPending(sub, &queued, nullptr);
  if (queued > 0) {
    ++*leftover_fetches;
    batch = 2 * queued;
  }
  jsErrCode err = static_cast<jsErrCode>(0);
  return natsSubscription_Fetch(list, sub, batch, timeout_millis, &err);
}

class NatsDriver final : public Driver {
 public:
  explicit NatsDriver(std::string url) : url_(std::move(url)) {}

  Result PublishPipelined(const Workload& w) override {
    const StreamNames names = CreateStream(url_, "publish", w.run_id);
    return PublishPipelinedTo(url_, names.subject, w, 0);
  }

  Result PublishSync(const Workload& w) override {
    const StreamNames names = CreateStream(url_, "publish_sync", w.run_id);
    std::atomic<uint64_t> acked{0};
    std::atomic<uint64_t> errors{0};
    std::vector<std::thread> threads;
    const int64_t start = NowNanos();
    const int64_t deadline = start + SecondsToNanos(w.duration_seconds);
    for (int i = 0; i < w.publishers; ++i) {
      threads.emplace_back([&] {
        Connection c(url_);
        const std::string payload = MakePayload(w.message_bytes, 0);
        while (NowNanos() < deadline) {
          jsPubAck* ack = nullptr;
          jsErrCode err = static_cast<jsErrCode>(0);
          if (js_Publish(&ack, c.js(), names.subject.c_str(), payload.data(),
                         static_cast<int>(payload.size()), nullptr, &err) == NATS_OK) {
            acked.fetch_add(1);
          } else {
            errors.fetch_add(1);
          }
          jsPubAck_Destroy(ack);
        }
      });
    }
    for (auto& t : threads) t.join();
    Result r;
    r.messages = acked.load();
    r.seconds = static_cast<double>(NowNanos() - start) / 1e9;
    r.errors = errors.load();
    r.note = std::to_string(w.publishers) + " connections x js_Publish (waits for each PubAck)";
    return r;
  }

  Result Consume(const Workload& w) override {
    const StreamNames names = CreateStream(url_, "consume", w.run_id);
    const Result loaded = PublishPipelinedTo(url_, names.subject, w, w.preload_messages);
    if (loaded.messages == 0)
      throw std::runtime_error("nats: preload failed: " + loaded.first_error);

    Connection c(url_);
    jsSubOptions so = ConsumerOptions(names, w);
    natsSubscription* sub = nullptr;
    jsErrCode err = static_cast<jsErrCode>(0);
    const int64_t start = NowNanos();
    Check(js_PullSubscribe(&sub, c.js(), names.subject.c_str(), names.durable.c_str(), nullptr, &so,
                           &err),
          "js_PullSubscribe");
    uint64_t received = 0;
    uint64_t bad_payloads = 0;
    uint64_t ack_failures = 0;
    uint64_t leftover_fetches = 0;
    int timeouts = 0;
    while (received < loaded.messages && timeouts < kMaxFetchTimeouts) {
      natsMsgList list;
      const natsStatus s =
          SafeFetch(&list, sub, w.fetch_batch, kFetchTimeoutMillis, &leftover_fetches);
      if (s == NATS_TIMEOUT) {
        ++timeouts;
        continue;
      }
      Check(s, "natsSubscription_Fetch");
      for (int i = 0; i < list.Count; ++i) {
        natsMsg* msg = list.Msgs[i];
        if (static_cast<size_t>(natsMsg_GetDataLength(msg)) != w.message_bytes) ++bad_payloads;
        if (natsMsg_Ack(msg, nullptr) != NATS_OK) ++ack_failures;
        ++received;
      }
      natsMsgList_Destroy(&list);
    }
    // A round trip: the server has read every ack sent before.
    Check(natsConnection_Flush(c.nc()), "flush");
    Result r;
    r.messages = received;
    r.seconds = static_cast<double>(NowNanos() - start) / 1e9;
    r.errors = bad_payloads + ack_failures + (received < loaded.messages ? 1 : 0);
    if (received < loaded.messages) r.first_error = "fetches timed out before all were received";
    r.note = "preloaded " + std::to_string(loaded.messages) +
             "; durable pull consumer, explicit ack, MaxAckPending=" +
             std::to_string(w.nats_max_ack_pending) + ", Fetch batch " +
             std::to_string(w.fetch_batch) + ", natsMsg_Ack per msg; leftover fetches " +
             std::to_string(leftover_fetches);
    natsSubscription_Destroy(sub);
    return r;
  }

  Result Latency(const Workload& w) override {
    const bool pull = w.nats_consumer == "pull";
    const StreamNames names = CreateStream(url_, pull ? "latency_pull" : "latency_push", w.run_id);
    ReceiveState state;
    state.latencies_ns.reserve(static_cast<size_t>(w.latency_seconds * w.rate_per_second) + 16);

    Connection consumer_conn(url_);
    jsSubOptions so = ConsumerOptions(names, w);
    natsSubscription* sub = nullptr;
    jsErrCode err = static_cast<jsErrCode>(0);
    std::atomic<bool> stop{false};
    uint64_t leftover_fetches = 0;
    std::thread puller;
    if (pull) {
      Check(js_PullSubscribe(&sub, consumer_conn.js(), names.subject.c_str(), names.durable.c_str(),
                             nullptr, &so, &err),
            "js_PullSubscribe");
      // Batches of one: a larger Fetch that finds nothing waits until the whole batch is there,
      // which would be counted as latency.
      puller = std::thread([&] {
        while (!stop.load()) {
          natsMsgList list;
          const natsStatus s =
              SafeFetch(&list, sub, 1, kLatencyFetchTimeoutMillis, &leftover_fetches);
          if (s != NATS_OK) {
            continue;
          }
          for (int i = 0; i < list.Count; ++i) {
            Receive(list.Msgs[i], &state);
            list.Msgs[i] = nullptr;  // Receive destroyed it
          }
          natsMsgList_Destroy(&list);
        }
      });
    } else {
      so.ManualAck = true;
      Check(js_Subscribe(&sub, consumer_conn.js(), names.subject.c_str(), OnPushedMessage, &state,
                         nullptr, &so, &err),
            "js_Subscribe");
    }

    AckCounter counter;
    counter.record_ack_latency = true;
    const jsOptions options = AsyncPublishOptions(kLatencyMaxPending, &counter);
    Connection publisher(url_, &options);
    const int64_t interval_ns = static_cast<int64_t>(1e9 / w.rate_per_second);
    const auto total =
        static_cast<uint64_t>((w.warmup_seconds + w.latency_seconds) * w.rate_per_second);
    const int64_t start = NowNanos();
    state.record_from.store(start + SecondsToNanos(w.warmup_seconds));
    counter.record_from.store(state.record_from.load());
    int64_t next = start;
    for (uint64_t i = 0; i < total; ++i, next += interval_ns) {
      const int64_t wait = next - NowNanos();
      if (wait > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(wait));
      PublishAsyncRetryingStalls(publisher.js(), names.subject,
                                 MakePayload(w.message_bytes, NowNanos()));
    }
    const int64_t publish_end = NowNanos();
    WaitForPublishAcks(publisher.js());
    const int64_t drain_deadline = publish_end + SecondsToNanos(kDrainSeconds);
    while (state.received.load() < counter.acked.load() && NowNanos() < drain_deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (pull) {
      stop.store(true);
      puller.join();
    } else {
      natsSubscription_Drain(sub);
      natsSubscription_WaitForDrainCompletion(sub, kDrainWaitMillis);
    }
    natsSubscription_Destroy(sub);

    Result r;
    r.messages = state.received.load();
    r.seconds = static_cast<double>(publish_end - start) / 1e9;
    r.errors =
        counter.failed.load() + state.ack_failures.load() +
        (state.received.load() < counter.acked.load() ? counter.acked.load() - state.received.load()
                                                      : 0);
    r.latencies_ns = std::move(state.latencies_ns);
    r.latency_sent_ns = std::move(state.latency_sent_ns);
    {
      std::lock_guard lock(counter.mu);
      r.ack_latencies_ns = std::move(counter.ack_latencies_ns);
    }
    r.note =
        std::string("1 msg per js_PublishAsync, paced; published ") +
        std::to_string(counter.acked.load()) + " (acked), received " + std::to_string(r.messages) +
        (pull ? "; durable pull consumer, Fetch batch 1, natsMsg_Ack per msg; leftover fetches " +
                    std::to_string(leftover_fetches)
              : "; durable push consumer (js_Subscribe), natsMsg_Ack per msg");
    return r;
  }

 private:
  std::string url_;
};

}  // namespace

std::unique_ptr<Driver> MakeNatsDriver(std::string url) {
  return std::make_unique<NatsDriver>(std::move(url));
}

}  // namespace broker_bench
