// kill -9 the broker in the middle of a publish load, restart it on the same data dir:
// every publish that was answered with message ids is delivered afterwards, and the topics
// and subscriptions are still there.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "google/pubsub/v1/pubsub.grpc.pb.h"
#include "storage/test_util.h"
#include "test_process.h"

namespace tidepool {
namespace {

namespace v1 = ::google::pubsub::v1;
constexpr char kTopic[] = "projects/p/topics/load";
constexpr char kSub[] = "projects/p/subscriptions/load-reader";

using testing::FreePort;

pid_t StartBroker(const std::string& dir, int port, int admin_port = 0) {
  if (admin_port == 0) admin_port = FreePort();
  pid_t pid = ::fork();
  if (pid == 0) {
    const std::string listen = "127.0.0.1:" + std::to_string(port);
    const std::string admin = "127.0.0.1:" + std::to_string(admin_port);
    ::execl(TIDEPOOL_BIN, "tidepool", "broker", "--data-dir", dir.c_str(), "--listen",
            listen.c_str(), "--admin-listen", admin.c_str(), nullptr);
    std::_Exit(127);
  }
  return pid;
}

// A blocking HTTP/1.0 GET on loopback; returns the body ("" on failure).
std::string HttpGet(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return "";
  }
  std::string resp;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) resp.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const auto body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

// Waits until the broker accepts TCP connections, then opens a channel: a channel that saw
// "connection refused" backs off for seconds before it tries again.
std::shared_ptr<grpc::Channel> Connect(int port) {
  testing::WaitForPort(port, std::chrono::seconds(4));
  return grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureChannelCredentials());
}

bool WaitReady(v1::Publisher::Stub* stub) {
  for (int i = 0; i < 200; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    v1::ListTopicsRequest req;
    v1::ListTopicsResponse resp;
    req.set_project("projects/p");
    if (stub->ListTopics(&ctx, req, &resp).ok()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return false;
}

TEST(BrokerKillTest, AcknowledgedPublishesSurviveKill9) {
  storage::testing::TempDir dir;
  const std::string data_dir = dir.sub("data");
  std::set<std::string> acked;  // data of every message whose publish was answered
  std::mutex mu;
  int next_id = 0;
  constexpr int kRounds = 3;

  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const int port = FreePort();
    pid_t pid = StartBroker(data_dir, port);
    auto channel = Connect(port);
    auto pub = v1::Publisher::NewStub(channel);
    auto sub = v1::Subscriber::NewStub(channel);
    ASSERT_TRUE(WaitReady(pub.get()));
    if (round == 0) {
      grpc::ClientContext c1, c2;
      v1::Topic t, tr;
      t.set_name(kTopic);
      ASSERT_TRUE(pub->CreateTopic(&c1, t, &tr).ok());
      v1::Subscription s, sr;
      s.set_name(kSub);
      s.set_topic(kTopic);
      ASSERT_TRUE(sub->CreateSubscription(&c2, s, &sr).ok());
    }
    // Four publishers until the kill.
    std::atomic<bool> stop{false};
    std::vector<std::thread> publishers;
    for (int t = 0; t < 4; ++t) {
      publishers.emplace_back([&] {
        while (!stop.load()) {
          v1::PublishRequest req;
          req.set_topic(kTopic);
          std::vector<std::string> batch;
          {
            std::lock_guard lock(mu);
            for (int i = 0; i < 10; ++i) batch.push_back("msg-" + std::to_string(next_id++));
          }
          for (const auto& d : batch) req.add_messages()->set_data(d);
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
          v1::PublishResponse resp;
          if (!pub->Publish(&ctx, req, &resp).ok()) continue;  // the broker died mid-call
          EXPECT_EQ(resp.message_ids_size(), 10);
          std::lock_guard lock(mu);
          acked.insert(batch.begin(), batch.end());
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300 + 200 * round));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    ::waitpid(pid, nullptr, 0);
    stop = true;
    for (auto& t : publishers) t.join();
  }

  // Restart once more and read everything.
  const int port = FreePort();
  const int admin_port = FreePort();
  pid_t pid = StartBroker(data_dir, port, admin_port);
  auto channel = Connect(port);
  auto pub = v1::Publisher::NewStub(channel);
  auto sub = v1::Subscriber::NewStub(channel);
  ASSERT_TRUE(WaitReady(pub.get()));
  // The backlog the autoscaler reads counts every surviving message.
  {
    boost::system::error_code ec;
    auto backlog = boost::json::parse(HttpGet(admin_port, "/v1/backlog"), ec);
    ASSERT_FALSE(ec);
    const auto& subs = backlog.at("subscriptions").as_array();
    ASSERT_EQ(subs.size(), 1u);
    EXPECT_EQ(subs[0].at("subscription").as_string(), kSub);
    EXPECT_GE(subs[0].at("undelivered_messages").to_number<uint64_t>(), acked.size());
  }
  std::set<std::string> received;
  for (int empty = 0; empty < 3;) {
    grpc::ClientContext ctx;
    v1::PullRequest req;
    v1::PullResponse resp;
    req.set_subscription(kSub);
    req.set_max_messages(1000);
    req.set_return_immediately(true);
    ASSERT_TRUE(sub->Pull(&ctx, req, &resp).ok());
    if (resp.received_messages().empty()) {
      ++empty;
      continue;
    }
    grpc::ClientContext actx;
    v1::AcknowledgeRequest ack;
    google::protobuf::Empty ar;
    ack.set_subscription(kSub);
    for (const auto& m : resp.received_messages()) {
      received.insert(m.message().data());
      ack.add_ack_ids(m.ack_id());
    }
    ASSERT_TRUE(sub->Acknowledge(&actx, ack, &ar).ok());
  }
  {
    auto backlog = boost::json::parse(HttpGet(admin_port, "/v1/backlog"));
    EXPECT_EQ(
        backlog.at("subscriptions").as_array()[0].at("undelivered_messages").to_number<uint64_t>(),
        0u);
    const std::string metrics = HttpGet(admin_port, "/metrics");
    EXPECT_NE(metrics.find("tidepool_broker_backlog_messages{subscription=\"" + std::string(kSub)),
              std::string::npos);
  }
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "SIGTERM must drain and exit 0";
  ASSERT_GT(acked.size(), 500u) << "too little load for the test to mean much";
  size_t lost = 0;
  for (const auto& d : acked) lost += received.contains(d) ? 0 : 1;
  EXPECT_EQ(lost, 0u) << "of " << acked.size() << " acknowledged publishes";
  std::printf("acknowledged %zu, received %zu (unacknowledged ones may or may not be there)\n",
              acked.size(), received.size());
}

}  // namespace
}  // namespace tidepool
