// Promise 1 across a web-tier crash: `tidepool web` killed with SIGKILL right after answering
// 202 (before the reply exists) loses nothing. The worker answers meanwhile; the restarted web
// tier reads the final reply from its events subscription and stores it, once.
#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <thread>

#include "admin/http_client.h"
#include "storage/test_util.h"
#include "test_process.h"

namespace tidepool {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;
using testing::ChildProcess;
using Clock = std::chrono::steady_clock;

class WebKillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_port_ = testing::FreePort();
    admin_port_ = testing::FreePort();
    sim_port_ = testing::FreePort();
    web_port_ = testing::FreePort();
    broker_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{TIDEPOOL_BIN, "broker", "--data-dir", dir_.sub("broker"),
                                 "--listen", "127.0.0.1:" + std::to_string(broker_port_),
                                 "--admin-listen", "127.0.0.1:" + std::to_string(admin_port_)});
    // The reply takes a few seconds: the web tier is dead while it is written.
    sim_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        TIDEPOOL_BIN, "llm-sim", "--listen", "127.0.0.1:" + std::to_string(sim_port_), "--ttft-ms",
        "1500", "--tokens-per-second", "40", "--output-tokens", "40", "--threads", "1"});
    ASSERT_TRUE(testing::WaitForPort(broker_port_, 20s));
    ASSERT_TRUE(testing::WaitForPort(sim_port_, 20s));
  }

  void StartWeb() {
    web_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        TIDEPOOL_BIN, "web", "--listen", "127.0.0.1:" + std::to_string(web_port_), "--broker",
        "127.0.0.1:" + std::to_string(broker_port_), "--data-dir", dir_.sub("web"), "--app",
        App()});
    ASSERT_TRUE(testing::WaitForPort(web_port_, 20s)) << "tidepool web did not listen";
  }

  void StartWorker() {
    worker_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{TIDEPOOL_BIN, "worker", "--app", App(), "--llm-base-url",
                                 "http://127.0.0.1:" + std::to_string(sim_port_) + "/v1",
                                 "--ledger", dir_.sub("ledger.db")},
        std::vector<std::pair<std::string, std::string>>{
            {"PUBSUB_EMULATOR_HOST", "127.0.0.1:" + std::to_string(broker_port_)}});
  }

  static std::string App() {
    return std::string(TIDEPOOL_SOURCE_DIR) + "/apps/scent-advisor/app.yaml";
  }

  admin::HttpReply Web(const std::string& method, const std::string& target,
                       const std::string& body = "") {
    auto reply = admin::HttpFetch({.method = method,
                                   .endpoint = "127.0.0.1:" + std::to_string(web_port_),
                                   .target = target,
                                   .body = body,
                                   .content_type = body.empty() ? "" : "application/json"});
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    return reply.ok() ? *reply : admin::HttpReply{};
  }

  std::vector<json::object> History(const std::string& conversation) {
    const admin::HttpReply r = Web("GET", "/v1/apps/scent-advisor/conversations/" + conversation);
    std::vector<json::object> out;
    if (r.status != 200) return out;
    const json::value parsed = json::parse(r.body);
    for (const auto& m : parsed.at("messages").as_array()) out.push_back(m.as_object());
    return out;
  }

  static size_t Replies(const std::vector<json::object>& history) {
    size_t n = 0;
    for (const auto& m : history) n += m.at("role").as_string() != "user";
    return n;
  }

  storage::testing::TempDir dir_;
  int broker_port_ = 0;
  int admin_port_ = 0;
  int sim_port_ = 0;
  int web_port_ = 0;
  std::unique_ptr<ChildProcess> broker_;
  std::unique_ptr<ChildProcess> sim_;
  std::unique_ptr<ChildProcess> worker_;
  std::unique_ptr<ChildProcess> web_;
};

TEST_F(WebKillTest, AReplyWrittenWhileTheWebTierIsDeadArrivesOnceAfterItsRestart) {
  StartWeb();  // creates the request subscription and its events subscription
  StartWorker();
  const admin::HttpReply created = Web("POST", "/v1/apps/scent-advisor/conversations");
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string conversation(json::parse(created.body).at("id").as_string());
  const admin::HttpReply accepted =
      Web("POST", "/v1/apps/scent-advisor/conversations/" + conversation + "/messages",
          R"({"text": "A warm woody scent for winter evenings, under $120"})");
  ASSERT_EQ(accepted.status, 202) << accepted.body;
  web_->Signal(SIGKILL);
  ASSERT_TRUE(web_->Wait(10s).has_value());

  std::this_thread::sleep_for(4s);  // the worker answers into the events topic meanwhile
  StartWeb();
  std::vector<json::object> history;
  const auto end = Clock::now() + 60s;
  while (Clock::now() < end) {
    history = History(conversation);
    if (Replies(history) > 0) break;
    std::this_thread::sleep_for(200ms);
  }
  ASSERT_EQ(Replies(history), 1u) << "no reply after the restart";
  std::this_thread::sleep_for(2s);  // a duplicate, if one were coming
  history = History(conversation);
  ASSERT_EQ(history.size(), 2u);
  EXPECT_EQ(history[0].at("role").as_string(), "user");
  EXPECT_EQ(history[1].at("role").as_string(), "assistant");
  EXPECT_EQ(history[1].at("request_id").as_string(),
            json::parse(accepted.body).at("message_id").as_string());
  EXPECT_FALSE(history[1].at("text").as_string().empty());
}

}  // namespace
}  // namespace tidepool
