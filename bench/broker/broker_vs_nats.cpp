// broker_vs_nats: one workload against one system, tidepool's Pub/Sub API or NATS JetStream.
// bench/run-broker-vs-nats runs every mode against both and prints the comparison; the modes
// and how each side is driven are described in bench/broker/NOTES.md.
//
//   broker_vs_nats --system tidepool|nats --target HOST:PORT --mode MODE [options]
//
// Prints a human summary on stderr and one `RESULT key=value ...` line on stdout.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>

#include "driver.h"

namespace broker_bench {

std::string MakePayload(size_t bytes, int64_t send_time_ns) {
  std::string payload(std::max(bytes, sizeof(send_time_ns)), 'x');
  std::memcpy(payload.data(), &send_time_ns, sizeof(send_time_ns));
  return payload;
}

int64_t PayloadSendTime(const void* data, size_t size) {
  int64_t t = 0;
  if (size >= sizeof(t)) std::memcpy(&t, data, sizeof(t));
  return t;
}

namespace {

constexpr char kUsage[] =
    "usage: broker_vs_nats --system tidepool|nats --target HOST:PORT --mode MODE [options]\n"
    "modes:\n"
    "  publish       pipelined publishers for --duration seconds, every message acked\n"
    "  publish-sync  one message per request, one request in flight per publisher\n"
    "  consume       preload --messages, then receive and ack them all\n"
    "  latency       --rate msg/s for --latency-duration s (after --warmup s), one consumer\n"
    "options (defaults in brackets):\n"
    "  --run-id ID [run]  --message-bytes N [1024]  --publishers N [10]  --duration S [5]\n"
    "  --batch N [100]  --inflight N [4]  --messages N [200000]  --max-outstanding N [1000]\n"
    "  --ack-batch N [1000]  --fetch-batch N [1000]  --max-ack-pending N [20000]\n"
    "  --rate N [5000]  --latency-duration S [10]  --warmup S [1]  --nats-consumer push|pull "
    "[push]\n"
    "  --timeline FILE   latency: one line per message, \"send_s latency_us\"\n";

double Percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const auto rank = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
  return static_cast<double>(sorted[std::min(rank, sorted.size() - 1)]);
}

// A key=value field whose value has no spaces (the script splits on them).
std::string Field(const std::string& key, const std::string& value) {
  std::string v = value;
  std::replace(v.begin(), v.end(), ' ', '_');
  return " " + key + "=" + v;
}

std::string Fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// One line per received message, in arrival order: seconds since the first recorded send, and
// its latency in microseconds (to see when the tail happened).
void WriteTimeline(const std::string& path, const Result& r) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) throw std::runtime_error("cannot write " + path);
  const int64_t first = r.latency_sent_ns.empty()
                            ? 0
                            : *std::min_element(r.latency_sent_ns.begin(), r.latency_sent_ns.end());
  for (size_t i = 0; i < r.latencies_ns.size() && i < r.latency_sent_ns.size(); ++i) {
    std::fprintf(f, "%.6f %lld\n", static_cast<double>(r.latency_sent_ns[i] - first) / 1e9,
                 static_cast<long long>(r.latencies_ns[i] / 1000));
  }
  std::fclose(f);
}

void Report(const std::string& system, const std::string& mode, const Workload& w, Result r) {
  if (!w.timeline_path.empty()) WriteTimeline(w.timeline_path, r);
  const double msgs_per_s = r.seconds > 0 ? static_cast<double>(r.messages) / r.seconds : 0;
  const double mb_per_s = msgs_per_s * static_cast<double>(w.message_bytes) / 1e6;
  std::string line =
      "RESULT" + Field("system", system) + Field("mode", mode) +
      Field("messages", std::to_string(r.messages)) + Field("seconds", Fixed(r.seconds, 3)) +
      Field("msgs_per_s", Fixed(msgs_per_s, 0)) + Field("mb_per_s", Fixed(mb_per_s, 1)) +
      Field("errors", std::to_string(r.errors));
  std::fprintf(stderr, "%s %s: %llu msgs in %.3f s = %.0f msg/s, %.1f MB/s, errors %llu\n",
               system.c_str(), mode.c_str(), static_cast<unsigned long long>(r.messages), r.seconds,
               msgs_per_s, mb_per_s, static_cast<unsigned long long>(r.errors));
  if (!r.latencies_ns.empty()) {
    std::sort(r.latencies_ns.begin(), r.latencies_ns.end());
    const double us = 1e3;
    const double p50 = Percentile(r.latencies_ns, 50) / us;
    const double p90 = Percentile(r.latencies_ns, 90) / us;
    const double p99 = Percentile(r.latencies_ns, 99) / us;
    const double max = static_cast<double>(r.latencies_ns.back()) / us;
    line += Field("recorded", std::to_string(r.latencies_ns.size())) +
            Field("p50_us", Fixed(p50, 0)) + Field("p90_us", Fixed(p90, 0)) +
            Field("p99_us", Fixed(p99, 0)) + Field("max_us", Fixed(max, 0));
    std::fprintf(stderr,
                 "  latency over %zu msgs: p50 %.0f us, p90 %.0f us, p99 %.0f us, max %.0f us\n",
                 r.latencies_ns.size(), p50, p90, p99, max);
  }
  if (!r.ack_latencies_ns.empty()) {
    std::sort(r.ack_latencies_ns.begin(), r.ack_latencies_ns.end());
    const double us = 1e3;
    const double p50 = Percentile(r.ack_latencies_ns, 50) / us;
    const double p99 = Percentile(r.ack_latencies_ns, 99) / us;
    const double max = static_cast<double>(r.ack_latencies_ns.back()) / us;
    line += Field("ack_p50_us", Fixed(p50, 0)) + Field("ack_p99_us", Fixed(p99, 0)) +
            Field("ack_max_us", Fixed(max, 0));
    std::fprintf(stderr, "  publish ack latency: p50 %.0f us, p99 %.0f us, max %.0f us\n", p50, p99,
                 max);
  }
  if (!r.first_error.empty()) std::fprintf(stderr, "  first error: %s\n", r.first_error.c_str());
  std::fprintf(stderr, "  how: %s\n", r.note.c_str());
  line += Field("note", r.note);
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

int Main(int argc, char** argv) {
  std::string system, target, mode;
  Workload w;
  std::map<std::string, std::function<void(const char*)>> options = {
      {"--system", [&](const char* v) { system = v; }},
      {"--target", [&](const char* v) { target = v; }},
      {"--mode", [&](const char* v) { mode = v; }},
      {"--run-id", [&](const char* v) { w.run_id = v; }},
      {"--message-bytes", [&](const char* v) { w.message_bytes = std::stoul(v); }},
      {"--publishers", [&](const char* v) { w.publishers = std::stoi(v); }},
      {"--duration", [&](const char* v) { w.duration_seconds = std::stod(v); }},
      {"--batch", [&](const char* v) { w.batch = std::stoi(v); }},
      {"--inflight", [&](const char* v) { w.inflight = std::stoi(v); }},
      {"--messages", [&](const char* v) { w.preload_messages = std::stoull(v); }},
      {"--max-outstanding", [&](const char* v) { w.max_outstanding_messages = std::stoll(v); }},
      {"--ack-batch", [&](const char* v) { w.ack_batch = std::stoi(v); }},
      {"--fetch-batch", [&](const char* v) { w.fetch_batch = std::stoi(v); }},
      {"--max-ack-pending", [&](const char* v) { w.nats_max_ack_pending = std::stoll(v); }},
      {"--rate", [&](const char* v) { w.rate_per_second = std::stod(v); }},
      {"--latency-duration", [&](const char* v) { w.latency_seconds = std::stod(v); }},
      {"--warmup", [&](const char* v) { w.warmup_seconds = std::stod(v); }},
      {"--nats-consumer", [&](const char* v) { w.nats_consumer = v; }},
      {"--timeline", [&](const char* v) { w.timeline_path = v; }},
  };
  for (int i = 1; i < argc; ++i) {
    auto it = options.find(argv[i]);
    if (it == options.end() || i + 1 >= argc) {
      std::fprintf(stderr, "broker_vs_nats: unknown option or missing value: %s\n%s", argv[i],
                   kUsage);
      return 2;
    }
    try {
      it->second(argv[++i]);
    } catch (const std::exception&) {
      std::fprintf(stderr, "broker_vs_nats: bad value for %s: %s\n", argv[i - 1], argv[i]);
      return 2;
    }
  }
  if (target.empty() || (system != "tidepool" && system != "nats")) {
    std::fprintf(stderr, "%s", kUsage);
    return 2;
  }
  std::unique_ptr<Driver> driver =
      system == "tidepool" ? MakeTidepoolDriver(target) : MakeNatsDriver("nats://" + target);
  std::map<std::string, std::function<Result()>> modes = {
      {"publish", [&] { return driver->PublishPipelined(w); }},
      {"publish-sync", [&] { return driver->PublishSync(w); }},
      {"consume", [&] { return driver->Consume(w); }},
      {"latency", [&] { return driver->Latency(w); }},
  };
  auto run = modes.find(mode);
  if (run == modes.end()) {
    std::fprintf(stderr, "broker_vs_nats: unknown mode '%s'\n%s", mode.c_str(), kUsage);
    return 2;
  }
  std::string label = mode;
  if (mode == "latency" && system == "nats") label += "-" + w.nats_consumer;
  try {
    Report(system, label, w, run->second());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "broker_vs_nats %s %s: %s\n", system.c_str(), label.c_str(), e.what());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace broker_bench

int main(int argc, char** argv) {
  return broker_bench::Main(argc, argv);
}
