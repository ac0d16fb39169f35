// The workloads of broker_vs_nats and the interface each system's driver implements.
//
// A driver runs one workload against one server and returns what it measured; it creates the
// topic/stream and subscription/consumer it needs under names made unique by
// Workload::run_id, so that modes never see each other's messages. Drivers throw
// std::runtime_error for what ends a run for good (server unreachable, setup refused).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace broker_bench {

struct Workload {
  std::string run_id = "run";  // suffix of every topic, stream and consumer name
  size_t message_bytes = 1024;

  // publish and publish-sync
  int publishers = 10;
  double duration_seconds = 5;
  // Pipelined publishing: each publisher keeps `inflight` requests of `batch` messages
  // unacknowledged (tidepool); NATS gets the same window of batch * inflight messages.
  int batch = 100;
  int inflight = 4;

  // consume
  uint64_t preload_messages = 200'000;
  int64_t max_outstanding_messages = 1000;  // tidepool StreamingPull flow control
  int ack_batch = 1000;                     // tidepool: ack ids per StreamingPullRequest
  int fetch_batch = 1000;                   // NATS: messages per natsSubscription_Fetch
  int64_t nats_max_ack_pending = 20'000;

  // latency
  double rate_per_second = 5000;
  double latency_seconds = 10;
  double warmup_seconds = 1;           // paced like the rest, not recorded
  std::string nats_consumer = "push";  // push | pull
  std::string timeline_path;           // latency: write "send_s latency_us" per message here
};

struct Result {
  uint64_t messages = 0;  // acknowledged publishes, or acknowledged deliveries
  double seconds = 0;
  uint64_t errors = 0;
  std::string first_error;
  std::vector<int64_t> latencies_ns;      // latency mode: receive time - send time
  std::vector<int64_t> latency_sent_ns;   // the send time of each of latencies_ns, same order
  std::vector<int64_t> ack_latencies_ns;  // latency mode: publish ack time - send time
  std::string note;                       // how the side was driven, one line
};

class Driver {
 public:
  virtual ~Driver() = default;
  // `publishers` pipelined publishers for duration_seconds; every message acknowledged.
  virtual Result PublishPipelined(const Workload& w) = 0;
  // `publishers` publishers, one message per request, one request in flight each.
  virtual Result PublishSync(const Workload& w) = 0;
  // Preloads preload_messages (not timed), then receives and acknowledges all of them.
  virtual Result Consume(const Workload& w) = 0;
  // One paced publisher (one message per publish) and one consumer acking each message.
  virtual Result Latency(const Workload& w) = 0;
};

std::unique_ptr<Driver> MakeTidepoolDriver(std::string target);
std::unique_ptr<Driver> MakeNatsDriver(std::string url);

// ---- shared helpers

inline int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline int64_t SecondsToNanos(double seconds) {
  return static_cast<int64_t>(seconds * 1e9);
}

// A message body of `bytes` bytes whose first 8 bytes carry `send_time_ns` (little-endian, as
// the host stores it: sender and receiver are one process).
std::string MakePayload(size_t bytes, int64_t send_time_ns);
int64_t PayloadSendTime(const void* data, size_t size);

}  // namespace broker_bench
