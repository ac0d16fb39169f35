// Scale-out, end to end with real processes: one PostgreSQL for two `tidepool web` instances,
// two worker pools (`tidepool pool`, two `tidepool worker` instances each, every instance with
// its own ledger as on separate machines), llm-sim, and the queue: a `tidepool broker`, or a
// 3-node NATS JetStream cluster with every stream and consumer on 3 replicas (then no tidepool
// broker runs at all: requests and conversation events both go through JetStream). Conversations
// are driven through both web instances; one instance is killed with SIGKILL mid-run and its
// clients retry on the other with the same Idempotency-Key, as a load balancer would. Every message
// that was accepted (202) must end with exactly one reply in the history: not zero, not two.
//
// TIDEPOOL_SCALE_CONVERSATIONS sets the number of conversations (default 5,000).
#include <gtest/gtest.h>

#include <atomic>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <fstream>
#include <mutex>
#include <thread>

#include "admin/http_client.h"
#include "queue/test_nats_server.h"
#include "storage/test_util.h"
#include "store/test_postgres_server.h"
#include "test_process.h"

namespace tidepool {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;
using testing::ChildProcess;
using Clock = std::chrono::steady_clock;

constexpr int kClients = 8;
constexpr char kApp[] = "scent-advisor";

int Conversations() {
  const char* n = std::getenv("TIDEPOOL_SCALE_CONVERSATIONS");
  return n != nullptr && std::atoi(n) > 0 ? std::atoi(n) : 5000;
}

std::string Endpoint(int port) {
  return "127.0.0.1:" + std::to_string(port);
}

enum class Backend { kBroker, kNatsCluster };

class ScaleOutTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    auto pg = store::testing::TestPostgresServer::Start();
    ASSERT_TRUE(pg.ok()) << pg.status().ToString();
    postgres_ = std::move(pg).value();
    auto db = postgres_->CreateDatabase();
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    store_url_ = postgres_->Uri(*db);

    sim_port_ = testing::FreePort();
    if (GetParam() == Backend::kBroker) {
      broker_port_ = testing::FreePort();
      admin_port_ = testing::FreePort();
      broker_ = std::make_unique<ChildProcess>(std::vector<std::string>{
          TIDEPOOL_BIN, "broker", "--data-dir", dir_.sub("broker"), "--listen",
          Endpoint(broker_port_), "--admin-listen", Endpoint(admin_port_)});
      ASSERT_TRUE(testing::WaitForPort(broker_port_, 20s));
      queue_flags_ = {"--broker", Endpoint(broker_port_)};
      pool_queue_flags_ = {"--endpoint", Endpoint(broker_port_), "--broker-admin",
                           Endpoint(admin_port_)};
    } else {
      auto nats = queue::testing::NatsServers::Start(3);
      ASSERT_TRUE(nats.ok()) << nats.status().ToString();
      nats_ = std::move(nats).value();
      std::string urls;
      for (const auto& url : nats_->urls()) urls += (urls.empty() ? "" : ",") + url;
      queue_flags_ = {"--nats", urls, "--nats-replicas", "3"};
      pool_queue_flags_ = queue_flags_;
    }
    sim_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        TIDEPOOL_BIN, "llm-sim", "--listen", Endpoint(sim_port_), "--ttft-ms", "20",
        "--tokens-per-second", "0", "--output-tokens", "20", "--threads", "1"});
    ASSERT_TRUE(testing::WaitForPort(sim_port_, 20s));
    for (int i = 0; i < 2; ++i) {
      web_ports_[i] = testing::FreePort();
      StartWeb(i);
    }
    for (int i = 0; i < 2; ++i) StartPool(i);
  }

  void StartWeb(int i) {
    std::vector<std::string> args{TIDEPOOL_BIN,
                                  "web",
                                  "--listen",
                                  Endpoint(web_ports_[i]),
                                  "--store",
                                  store_url_,
                                  "--data-dir",
                                  dir_.sub("web" + std::to_string(i)),
                                  "--app",
                                  App(),
                                  "--events-subscription",
                                  "tidepool-events-web-" + std::to_string(i),
                                  "--rate-limit",
                                  "0"};
    args.insert(args.end(), queue_flags_.begin(), queue_flags_.end());
    webs_[i] = std::make_unique<ChildProcess>(std::move(args));
    ASSERT_TRUE(testing::WaitForPort(web_ports_[i], 30s)) << "tidepool web " << i;
  }

  // A pool machine: its own supervisor, two worker instances, each with its own ledger.
  void StartPool(int i) {
    const std::string config = dir_.sub("pool" + std::to_string(i) + ".yaml");
    std::ofstream(config) << "pools:\n"
                          << "  - name: advisor-" << i << "\n"
                          << "    subscription: scent-advisor-workers\n"
                          << "    command: " << json::serialize(json::value(TIDEPOOL_BIN)) << "\n"
                          << "    args: [worker, --app, " << json::serialize(json::value(App()))
                          << ", --llm-base-url, \"http://" << Endpoint(sim_port_) << "/v1\"]\n"
                          << "    env:\n"
                          << "      TIDEPOOL_DATA_DIR: "
                          << json::serialize(json::value(dir_.sub("pool" + std::to_string(i))))
                          << "\n"
                          << "    instances: 2\n";
    std::vector<std::string> args{TIDEPOOL_BIN,     "pool",
                                  "--config",       config,
                                  "--admin-listen", Endpoint(testing::FreePort()),
                                  "--data-dir",     dir_.sub("pool" + std::to_string(i))};
    args.insert(args.end(), pool_queue_flags_.begin(), pool_queue_flags_.end());
    pools_[i] = std::make_unique<ChildProcess>(std::move(args));
  }

  static std::string App() {
    return std::string(TIDEPOOL_SOURCE_DIR) + "/apps/" + kApp + "/app.yaml";
  }

  static Result<admin::HttpReply> Call(int port, const std::string& method,
                                       const std::string& target, const std::string& body = "",
                                       const std::string& idempotency_key = "") {
    admin::HttpCall call{.method = method,
                         .endpoint = Endpoint(port),
                         .target = target,
                         .body = body,
                         .content_type = body.empty() ? "" : "application/json",
                         .timeout = 20s};
    if (!idempotency_key.empty()) call.headers.emplace_back("Idempotency-Key", idempotency_key);
    return admin::HttpFetch(call);
  }

  storage::testing::TempDir dir_;
  std::unique_ptr<store::testing::TestPostgresServer> postgres_;
  std::unique_ptr<queue::testing::NatsServers> nats_;
  std::vector<std::string> queue_flags_;       // how `tidepool web` reaches the queue
  std::vector<std::string> pool_queue_flags_;  // how `tidepool pool` does
  std::string store_url_;
  int broker_port_ = 0;
  int admin_port_ = 0;
  int sim_port_ = 0;
  int web_ports_[2] = {0, 0};
  std::unique_ptr<ChildProcess> broker_;
  std::unique_ptr<ChildProcess> sim_;
  std::unique_ptr<ChildProcess> webs_[2];
  std::unique_ptr<ChildProcess> pools_[2];
};

TEST_P(ScaleOutTest, EveryAcceptedMessageIsAnsweredOnceWhenAWebInstanceDiesMidRun) {
  const int total = Conversations();
  const std::string base = std::string("/v1/apps/") + kApp + "/conversations";
  std::atomic<bool> web0_dead{false};
  std::atomic<int> next{0};
  std::atomic<int> retried_elsewhere{0};
  std::mutex mu;
  std::map<std::string, std::string> accepted;  // conversation → message id
  std::vector<std::string> failures;

  // Sends to the conversation's instance; after web 0 died, to web 1 with the same key.
  auto send = [&](int preferred, const std::string& method, const std::string& target,
                  const std::string& body, const std::string& key) -> Result<admin::HttpReply> {
    for (int attempt = 0; attempt < 3; ++attempt) {
      const int instance = web0_dead.load() ? 1 : preferred;
      auto reply = Call(web_ports_[instance], method, target, body, key);
      if (reply.ok() && reply->status < 500) return reply;
      if (instance == 0) ++retried_elsewhere;
      std::this_thread::sleep_for(100ms);
    }
    return Status::Unavailable(method + " " + target + " failed on both instances");
  };

  const auto started = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      int i;
      while ((i = next.fetch_add(1)) < total) {
        const int preferred = i % 2;
        auto created = send(preferred, "POST", base, "", "");
        if (!created.ok() || created->status != 201) {
          std::lock_guard lock(mu);
          failures.push_back("create " + std::to_string(i) + ": " +
                             (created.ok() ? created->body : created.status().ToString()));
          continue;
        }
        const std::string id(json::parse(created->body).at("id").as_string());
        const std::string body = json::serialize(
            json::object{{"text", "something fresh for summer, #" + std::to_string(i)}});
        auto posted = send(preferred, "POST", base + "/" + id + "/messages", body,
                           "send-" + std::to_string(i));
        std::lock_guard lock(mu);
        if (!posted.ok() || posted->status != 202) {
          failures.push_back("post " + std::to_string(i) + ": " +
                             (posted.ok() ? posted->body : posted.status().ToString()));
          continue;
        }
        accepted[id] = std::string(json::parse(posted->body).at("message_id").as_string());
      }
    });
  }
  // Kill web 0 when 40% of the conversations have been sent.
  while (next.load() < total * 4 / 10) std::this_thread::sleep_for(10ms);
  webs_[0]->Signal(SIGKILL);
  web0_dead = true;
  for (auto& t : clients) t.join();
  const double send_seconds = std::chrono::duration<double>(Clock::now() - started).count();
  EXPECT_TRUE(failures.empty()) << failures.size() << " requests failed, e.g. " << failures.front();
  ASSERT_GE(accepted.size(), static_cast<size_t>(total) * 99 / 100);

  // Every accepted message: exactly one reply, answering it. Read through the survivor.
  std::map<std::string, int> replies;  // conversation → replies seen
  std::vector<std::string> pending;
  for (const auto& [id, message] : accepted) pending.push_back(id);
  const auto deadline = Clock::now() + 300s;
  while (!pending.empty() && Clock::now() < deadline) {
    std::vector<std::string> still;
    for (const std::string& id : pending) {
      auto history = Call(web_ports_[1], "GET", base + "/" + id);
      ASSERT_TRUE(history.ok()) << history.status().ToString();
      ASSERT_EQ(history->status, 200) << history->body;
      int users = 0, answers = 0;
      const json::value parsed = json::parse(history->body);  // named: outlives the loop
      for (const auto& m : parsed.at("messages").as_array()) {
        if (m.at("role").as_string() == "user") {
          ++users;
          EXPECT_EQ(m.at("id").as_string(), accepted[id]);
        } else {
          ++answers;
          EXPECT_EQ(m.at("request_id").as_string(), accepted[id]);
        }
      }
      EXPECT_EQ(users, 1) << id;
      replies[id] = answers;
      if (answers == 0) still.push_back(id);
    }
    pending = std::move(still);
    if (!pending.empty()) std::this_thread::sleep_for(1s);
  }
  int twice = 0;
  for (const auto& [id, n] : replies) twice += n > 1;
  EXPECT_EQ(pending.size(), 0u) << "accepted messages never answered, e.g. "
                                << (pending.empty() ? "" : pending.front());
  EXPECT_EQ(twice, 0) << "messages answered more than once";
  const double total_seconds = std::chrono::duration<double>(Clock::now() - started).count();
  std::printf(
      "scale-out (%s): %zu of %d messages accepted in %.1f s (%d requests retried on the "
      "other instance), all answered once after %.1f s\n",
      GetParam() == Backend::kBroker ? "tidepool broker" : "NATS cluster, R3", accepted.size(),
      total, send_seconds, retried_elsewhere.load(), total_seconds);
}

INSTANTIATE_TEST_SUITE_P(Queues, ScaleOutTest,
                         ::testing::Values(Backend::kBroker, Backend::kNatsCluster),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kBroker ? "broker" : "nats_cluster";
                         });

}  // namespace
}  // namespace tidepool
