// tidepool_jobs: the tidepool side of bench/run-jobs (no-op jobs end to end: publish →
// handler → ack), against a `tidepool broker` over its Pub/Sub API.
//
//   tidepool_jobs setup    --endpoint HOST:PORT [--topic T] [--subscription S]
//   tidepool_jobs produce  --endpoint HOST:PORT --count N --phase P [--topic T] [--rate R]
//                          [--payload-bytes B] [--batch N] [--inflight N]
//   tidepool_jobs worker   (environment: PUBSUB_EMULATOR_HOST, TIDEPOOL_SUBSCRIPTION,
//                          JOBS_STATS_DIR; optional JOBS_MAX_OUTSTANDING, JOBS_THREADS)
//   tidepool_jobs stream-worker  (same environment as worker)
//   tidepool_jobs wait-acked --endpoint HOST:PORT --admin HOST:PORT [--subscription S]
//
// A job is one Pub/Sub message whose data is "PHASE SEQ PUBLISHED_US" (wall-clock µs when the
// producer created it), padded with spaces to --payload-bytes. The producer publishes through
// queue::Publisher (batches of --batch, --inflight batches outstanding); the broker
// acknowledges a batch only after it is fsync'd. It prints "first_us=... last_us=..." on
// stdout: the first Publish call and the last durable acknowledgement.
//
// The worker is worker::RunWorkerMain with a no-op handler that records, per job, the line
// "PHASE SEQ PUBLISHED_US START_US END_US" into $JOBS_STATS_DIR/tidepool-<pid>.txt (buffered,
// written by a thread every 20 ms); the runtime acks each job when its handler returns.
// bench/jobs/collect.py reads those lines, as it reads the other sides'.
//
// stream-worker is a diagnostic, not a worker runtime: it takes the same jobs straight from a
// queue::MessageStream (Subscribe with the same flow control) and acks each batch of deliveries
// with one Ack call, where the runtime acks every message on its own. It shows what the
// runtime's per-message acks cost; it has no lease extension, retries or drain.
//
// wait-acked polls the broker's backlog until nothing is unacknowledged and prints
// "acked_us=..." (when it saw the backlog empty).

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "queue/queue.h"
#include "worker/runtime.h"

namespace {

using tidepool::Result;
using tidepool::Status;
namespace queue = tidepool::queue;

constexpr char kUsage[] =
    "usage: tidepool_jobs setup|produce|worker|wait-acked [options] (see the header of\n"
    "bench/jobs/tidepool_jobs.cpp)\n";
constexpr std::chrono::milliseconds kStatsFlushInterval{20};
constexpr std::chrono::milliseconds kBacklogPollInterval{5};
constexpr std::chrono::seconds kWaitAckedTimeout{300};
// The lease a job gets; a no-op handler never needs an extension.
constexpr int kAckDeadlineSeconds = 60;

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "tidepool_jobs: %s\n", what.c_str());
  std::exit(1);
}

// --key value options after the mode.
std::map<std::string, std::string> ParseFlags(int argc, char** argv) {
  std::map<std::string, std::string> flags;
  for (int i = 2; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (!arg.starts_with("--") || i + 1 >= argc) Die(std::string("bad argument ") + argv[i]);
    flags[std::string(arg.substr(2))] = argv[++i];
  }
  return flags;
}

std::string Flag(const std::map<std::string, std::string>& flags, const std::string& key,
                 const char* fallback = nullptr) {
  if (auto it = flags.find(key); it != flags.end()) return it->second;
  if (fallback == nullptr) Die("--" + key + " is required");
  return fallback;
}

int64_t IntFlag(const std::map<std::string, std::string>& flags, const std::string& key,
                const char* fallback = nullptr) {
  const std::string text = Flag(flags, key, fallback);
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 0)
    Die("--" + key + ": not a non-negative integer: " + text);
  return value;
}

std::unique_ptr<queue::Queue> Open(const std::map<std::string, std::string>& flags) {
  auto opened = queue::OpenQueue({.backend = "pubsub",
                                  .project = Flag(flags, "project", "tidepool"),
                                  .endpoint = Flag(flags, "endpoint"),
                                  .admin_endpoint = Flag(flags, "admin", "")});
  if (!opened.ok()) Die("cannot open the queue: " + opened.status().ToString());
  return std::move(*opened);
}

int Setup(const std::map<std::string, std::string>& flags) {
  auto q = Open(flags);
  const std::string topic = Flag(flags, "topic", "jobs");
  if (Status s = q->EnsureTopic(topic); !s.ok()) Die("EnsureTopic: " + s.ToString());
  queue::SubscriptionSpec spec;
  spec.name = Flag(flags, "subscription", "jobs");
  spec.topic = topic;
  spec.ack_deadline_seconds = kAckDeadlineSeconds;
  if (Status s = q->EnsureSubscription(spec); !s.ok()) Die("EnsureSubscription: " + s.ToString());
  return 0;
}

int Produce(const std::map<std::string, std::string>& flags) {
  auto q = Open(flags);
  const int64_t count = IntFlag(flags, "count");
  const std::string phase = Flag(flags, "phase");
  const int64_t rate = IntFlag(flags, "rate", "0");
  const auto payload_bytes = static_cast<size_t>(IntFlag(flags, "payload-bytes", "0"));
  queue::BatchingOptions batching;
  batching.max_messages = static_cast<size_t>(IntFlag(flags, "batch", "1000"));
  batching.max_in_flight = static_cast<int>(IntFlag(flags, "inflight", "8"));

  std::atomic<int64_t> failures{0};
  std::atomic<int64_t> last_ack_us{0};
  std::string first_error;
  std::mutex error_mu;
  const int64_t first_us = NowMicros();
  {
    queue::Publisher publisher(*q, Flag(flags, "topic", "jobs"), batching);
    for (int64_t seq = 0; seq < count; ++seq) {
      if (rate > 0) {
        const int64_t due_us = first_us + seq * 1'000'000 / rate;
        const int64_t wait_us = due_us - NowMicros();
        if (wait_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(wait_us));
      }
      queue::Message message;
      message.data = phase + " " + std::to_string(seq) + " " + std::to_string(NowMicros());
      if (message.data.size() < payload_bytes) message.data.resize(payload_bytes, ' ');
      publisher.Publish(std::move(message), [&](Result<std::string> id) {
        if (!id.ok()) {
          if (failures.fetch_add(1) == 0) {
            std::lock_guard lock(error_mu);
            first_error = id.status().ToString();
          }
          return;
        }
        // Callbacks of different batches may run on different threads: keep the latest.
        const int64_t now = NowMicros();
        int64_t seen = last_ack_us.load();
        while (seen < now && !last_ack_us.compare_exchange_weak(seen, now)) {
        }
      });
    }
    publisher.Flush();
  }
  if (failures > 0) {
    Die(std::to_string(failures.load()) + " of " + std::to_string(count) +
        " publishes failed; first: " + first_error);
  }
  std::printf("first_us=%lld last_us=%lld\n", static_cast<long long>(first_us),
              static_cast<long long>(last_ack_us.load()));
  return 0;
}

int WaitAcked(const std::map<std::string, std::string>& flags) {
  auto q = Open(flags);
  const std::string subscription = Flag(flags, "subscription", "jobs");
  const auto deadline = std::chrono::steady_clock::now() + kWaitAckedTimeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto backlog = q->GetBacklog(subscription);
    if (!backlog.ok()) Die("GetBacklog: " + backlog.status().ToString());
    if (backlog->undelivered_messages == 0) {
      std::printf("acked_us=%lld\n", static_cast<long long>(NowMicros()));
      return 0;
    }
    std::this_thread::sleep_for(kBacklogPollInterval);
  }
  Die("the backlog of " + subscription + " did not drain in time");
}

// Stats lines of the handlers, appended to the file by a thread every kStatsFlushInterval.
class StatsRecorder {
 public:
  explicit StatsRecorder(const std::string& path) : file_(std::fopen(path.c_str(), "a")) {
    if (file_ == nullptr) Die("cannot open " + path + ": " + std::strerror(errno));
    thread_ = std::thread([this] { Run(); });
  }
  ~StatsRecorder() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
    std::fclose(file_);
  }
  void Add(std::string_view job_fields, int64_t start_us, int64_t end_us) {
    char times[48];
    const int n = std::snprintf(times, sizeof(times), " %lld %lld\n",
                                static_cast<long long>(start_us), static_cast<long long>(end_us));
    std::lock_guard lock(mu_);
    buffer_.append(job_fields);
    buffer_.append(times, static_cast<size_t>(n));
  }

 private:
  void Run() {
    std::unique_lock lock(mu_);
    for (;;) {
      const bool stop = cv_.wait_for(lock, kStatsFlushInterval, [this] { return stopping_; });
      std::string out;
      out.swap(buffer_);
      lock.unlock();
      if (!out.empty()) {
        std::fwrite(out.data(), 1, out.size(), file_);
        std::fflush(file_);
      }
      lock.lock();
      if (stop) return;
    }
  }

  std::FILE* file_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string buffer_;
  bool stopping_ = false;
  std::thread thread_;
};

int Worker() {
  const char* stats_dir = std::getenv("JOBS_STATS_DIR");
  if (stats_dir == nullptr) Die("JOBS_STATS_DIR is not set");
  tidepool::worker::RuntimeOptions defaults;
  if (const char* v = std::getenv("JOBS_MAX_OUTSTANDING"))
    defaults.flow.max_outstanding_messages = std::atoll(v);
  if (const char* v = std::getenv("JOBS_THREADS")) defaults.threads = std::max(1, std::atoi(v));

  // RunWorkerMain takes SIGTERM / SIGINT with sigwait; block them before the recorder's
  // thread exists so that it inherits the mask and never takes them itself.
  sigset_t drain_signals;
  sigemptyset(&drain_signals);
  sigaddset(&drain_signals, SIGTERM);
  sigaddset(&drain_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &drain_signals, nullptr);

  StatsRecorder recorder(std::string(stats_dir) + "/tidepool-" + std::to_string(getpid()) + ".txt");
  auto handler = [&recorder](const queue::Delivery& delivery) -> boost::asio::awaitable<Status> {
    const int64_t start_us = NowMicros();
    std::string_view data = delivery.message.data;
    // "PHASE SEQ PUBLISHED_US" and the padding spaces after it.
    const size_t last = data.find_last_not_of(' ');
    recorder.Add(data.substr(0, last == std::string_view::npos ? 0 : last + 1), start_us,
                 NowMicros());
    co_return Status::Ok();
  };
  return tidepool::worker::RunWorkerMain(handler, defaults);
}

// Until SIGTERM / SIGINT: handles each batch the stream delivers, then acks it with one call.
int StreamWorker() {
  const char* stats_dir = std::getenv("JOBS_STATS_DIR");
  const char* endpoint = std::getenv("PUBSUB_EMULATOR_HOST");
  const char* subscription = std::getenv("TIDEPOOL_SUBSCRIPTION");
  if (stats_dir == nullptr || endpoint == nullptr || subscription == nullptr)
    Die("JOBS_STATS_DIR, PUBSUB_EMULATOR_HOST and TIDEPOOL_SUBSCRIPTION must be set");
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto q = Open({{"endpoint", endpoint}});
  StatsRecorder recorder(std::string(stats_dir) + "/tidepool-" + std::to_string(getpid()) + ".txt");
  queue::StreamOptions options;
  if (const char* v = std::getenv("JOBS_MAX_OUTSTANDING"))
    options.flow.max_outstanding_messages = std::atoll(v);
  std::mutex stream_mu;
  queue::MessageStream* stream = nullptr;
  std::vector<std::vector<std::string>> early_acks;  // batches delivered before Subscribe returned
  auto ack = [&](std::vector<std::string> ids) {
    std::lock_guard lock(stream_mu);
    if (stream == nullptr) {
      early_acks.push_back(std::move(ids));
      return;
    }
    stream->Ack(std::move(ids), [](queue::AckOutcome outcome) {
      if (!outcome.status.ok()) Die("ack failed: " + outcome.status.ToString());
    });
  };
  auto subscribed = q->Subscribe(
      subscription, options,
      [&](std::vector<queue::Delivery> deliveries) {
        std::vector<std::string> ids;
        ids.reserve(deliveries.size());
        for (auto& delivery : deliveries) {
          const int64_t start_us = NowMicros();
          std::string_view data = delivery.message.data;
          const size_t last = data.find_last_not_of(' ');
          recorder.Add(data.substr(0, last == std::string_view::npos ? 0 : last + 1), start_us,
                       NowMicros());
          ids.push_back(std::move(delivery.ack_id));
        }
        ack(std::move(ids));
      },
      [](Status error) { Die("stream failed: " + error.ToString()); });
  if (!subscribed.ok()) Die("Subscribe: " + subscribed.status().ToString());
  {
    std::lock_guard lock(stream_mu);
    stream = subscribed->get();
    for (auto& ids : early_acks) {
      stream->Ack(std::move(ids), [](queue::AckOutcome) {});
    }
    early_acks.clear();
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  (*subscribed)->StopPulling();
  (*subscribed)->Close();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string mode = argv[1];
  if (mode == "worker") return Worker();
  if (mode == "stream-worker") return StreamWorker();
  const auto flags = ParseFlags(argc, argv);
  if (mode == "setup") return Setup(flags);
  if (mode == "produce") return Produce(flags);
  if (mode == "wait-acked") return WaitAcked(flags);
  std::fputs(kUsage, stderr);
  return 2;
}
