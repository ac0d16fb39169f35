// The nats backend on a real 3-node JetStream cluster on loopback (R3): the node that leads the
// topic's stream is SIGKILLed in the middle of a 50,000-message run, and every message whose
// publish succeeded must be processed (duplicates allowed, losses not).
//
// The rest of the queue contract on the cluster runs in nats_cluster_suite_test (the QueueTest
// suite of src/queue/queue_test.cpp with the backend "nats_cluster").
#include <gtest/gtest.h>
#include <nats/nats.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "queue/queue.h"
#include "queue/test_nats_server.h"

namespace tidepool::queue {
namespace {

using namespace std::chrono_literals;

constexpr int kMessages = 50'000;
constexpr int kKillAfterPublished = kMessages / 3;
constexpr auto kPatience = 180s;
constexpr char kProject[] = "proj";
constexpr char kTopic[] = "work";
constexpr char kSub[] = "workers";

// The index of the node that leads `stream` (server names are "n0".."n2"), or -1.
int StreamLeader(const std::vector<std::string>& urls, const std::string& stream) {
  natsOptions* opts = nullptr;
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  jsStreamInfo* si = nullptr;
  int leader = -1;
  std::vector<const char*> servers;
  for (const auto& u : urls) servers.push_back(u.c_str());
  jsErrCode err = static_cast<jsErrCode>(0);
  if (natsOptions_Create(&opts) == NATS_OK &&
      natsOptions_SetServers(opts, servers.data(), static_cast<int>(servers.size())) == NATS_OK &&
      natsConnection_Connect(&nc, opts) == NATS_OK &&
      natsConnection_JetStream(&js, nc, nullptr) == NATS_OK &&
      js_GetStreamInfo(&si, js, stream.c_str(), nullptr, &err) == NATS_OK && si->Cluster &&
      si->Cluster->Leader != nullptr && si->Cluster->Leader[0] == 'n') {
    leader = std::atoi(si->Cluster->Leader + 1);
  }
  jsStreamInfo_Destroy(si);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  natsOptions_Destroy(opts);
  return leader;
}

TEST(NatsClusterTest, LeaderKilledDuringA50kRunLosesNothing) {
  auto started = testing::NatsServers::Start(3);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  std::unique_ptr<testing::NatsServers> servers = std::move(*started);

  QueueOptions qo;
  qo.backend = "nats";
  qo.project = kProject;
  qo.nats_servers = servers->urls();
  qo.nats_replicas = 3;
  qo.nats_prefix = "kill";
  qo.call_timeout = 30s;
  auto opened = OpenQueue(qo);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<Queue> queue = std::move(*opened);
  ASSERT_TRUE(queue->EnsureTopic(kTopic).ok());
  Status s = queue->EnsureSubscription(
      SubscriptionSpec{.name = kSub, .topic = kTopic, .ack_deadline_seconds = 30});
  ASSERT_TRUE(s.ok()) << s.ToString();

  std::mutex mu;
  std::condition_variable cv;
  std::unordered_set<std::string> processed;
  std::unordered_set<std::string> published;
  int64_t deliveries = 0;
  int publish_failures = 0;
  std::string first_publish_error;

  std::unique_ptr<MessageStream> stream;
  auto subscribed = queue->Subscribe(
      kSub, StreamOptions{.flow = {.max_outstanding_messages = 2'000}},
      [&](std::vector<Delivery> batch) {
        std::vector<std::string> ids;
        {
          std::lock_guard lock(mu);
          for (auto& d : batch) {
            processed.insert(d.message.data);
            ids.push_back(d.ack_id);
            ++deliveries;
          }
          cv.notify_all();
        }
        stream->Ack(std::move(ids), [](AckOutcome) {});
      },
      [](Status error) { ADD_FAILURE() << "stream ended: " << error.ToString(); });
  ASSERT_TRUE(subscribed.ok()) << subscribed.status().ToString();
  stream = std::move(*subscribed);

  const auto start = std::chrono::steady_clock::now();
  int killed = -1;
  {
    Publisher publisher(*queue, kTopic,
                        BatchingOptions{.max_messages = 500, .max_delay = 2ms, .max_in_flight = 8});
    std::atomic<int> acked{0};
    for (int i = 0; i < kMessages; ++i) {
      Message m;
      m.data = "m" + std::to_string(i);
      publisher.Publish(m, [&, data = m.data](Result<std::string> r) {
        std::lock_guard lock(mu);
        if (r.ok()) {
          published.insert(data);
        } else {
          if (publish_failures++ == 0) first_publish_error = r.status().ToString();
        }
        acked.fetch_add(1);
      });
      if (i == kKillAfterPublished) {
        publisher.Flush();
        killed = StreamLeader(servers->urls(), "kill_proj__work");
        ASSERT_GE(killed, 0) << "no stream leader";
        servers->Kill(killed);
        std::fprintf(stderr, "killed node n%d (the stream leader) after %d messages\n", killed,
                     i + 1);
      }
    }
  }  // flushes and waits for every publish callback
  const auto published_at = std::chrono::steady_clock::now();

  size_t missing = 0;
  {
    std::unique_lock lock(mu);
    cv.wait_until(lock, std::chrono::steady_clock::now() + kPatience, [&] {
      for (const auto& p : published) {
        if (!processed.contains(p)) return false;
      }
      return true;
    });
    for (const auto& p : published) missing += processed.contains(p) ? 0 : 1;
  }
  const auto done_at = std::chrono::steady_clock::now();
  stream->Close();
  {
    std::lock_guard lock(mu);
    std::fprintf(stderr,
                 "published %zu/%d (failures %d), processed %zu distinct in %lld deliveries, "
                 "missing %zu; publish %.1f s, total %.1f s\n",
                 published.size(), kMessages, publish_failures, processed.size(),
                 static_cast<long long>(deliveries), missing,
                 std::chrono::duration<double>(published_at - start).count(),
                 std::chrono::duration<double>(done_at - start).count());
    EXPECT_EQ(publish_failures, 0) << first_publish_error;
    EXPECT_EQ(published.size(), static_cast<size_t>(kMessages));
  }
  EXPECT_EQ(missing, 0u) << "published messages never processed";
  EXPECT_GE(killed, 0);
}

}  // namespace
}  // namespace tidepool::queue
