// The pipeline runner against a real llm-sim (in process) and the shipped apps: events, cards,
// token batching, follow-up questions, redelivery, step failures, timeouts, the http tool.
#include "pipeline/runner.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <future>
#include <thread>

#include "admin/admin_server.h"
#include "llm/sim/llm_sim.h"
#include "worker/runtime.h"

namespace tidepool::pipeline {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;

// Collects events; can be told to fail publishes.
class RecordingSink final : public EventSink {
 public:
  void Send(const Event& event, std::function<void(Status)> done) override {
    Status result;
    {
      std::lock_guard lock(mu_);
      if (fail_) {
        result = Status::Unavailable("sink down");
      } else {
        events_.push_back(event);
      }
    }
    done(result);
  }
  std::vector<Event> events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  void set_fail(bool fail) {
    std::lock_guard lock(mu_);
    fail_ = fail;
  }
  void clear() {
    std::lock_guard lock(mu_);
    events_.clear();
  }

 private:
  std::mutex mu_;
  std::vector<Event> events_;
  bool fail_ = false;
};

json::object Body(const Event& e) {
  return json::parse(e.data).as_object();
}

std::vector<std::string> Types(const std::vector<Event>& events) {
  std::vector<std::string> out;
  for (const auto& e : events) out.push_back(e.type);
  return out;
}

queue::Delivery Request(const std::string& conversation, const std::string& text,
                        const std::string& message_id = "m-1") {
  queue::Delivery d;
  d.ack_id = "ack-" + message_id;
  d.message_id = "pubsub-" + message_id;
  d.delivery_attempt = 1;
  json::object data{{"conversation_id", conversation}, {"message_id", message_id}, {"text", text}};
  d.message.data = json::serialize(data);
  return d;
}

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    llm::sim::SimOptions so;
    so.threads = 1;
    so.output_tokens_min = so.output_tokens_max = 40;
    so.tokens_per_second = 400;  // 100 ms of tokens: several 50 ms batches
    StartSim(so);
    io_thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    pipeline_.reset();
    client_.reset();
    work_.reset();
    io_.stop();
    io_thread_.join();
  }

  void StartSim(llm::sim::SimOptions so) {
    auto sim = llm::sim::LlmSim::Start(so);
    ASSERT_TRUE(sim.ok()) << sim.status().ToString();
    sim_ = std::move(sim).value();
  }

  void Make(const std::string& app_path, llm::ProviderOptions provider = {}) {
    auto app = LoadApp(app_path);
    ASSERT_TRUE(app.ok()) << app.status().ToString();
    MakeFrom(std::move(app).value(), provider);
  }
  void MakeFrom(AppSpec app, llm::ProviderOptions provider = {}) {
    if (provider.base_url.empty()) provider.base_url = sim_->base_url();
    provider.max_retries = 0;
    auto client = llm::LlmClient::Create(io_.get_executor(), provider);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    client_ = std::move(client).value();
    auto made = Pipeline::Create(std::move(app), PipelineDeps{.llm = client_.get(),
                                                              .events = &sink_,
                                                              .ledger = &ledger_,
                                                              .tools = nullptr,
                                                              .log_prefix = "[test] "});
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    pipeline_ = std::move(made).value();
  }

  Status Handle(const queue::Delivery& d) {
    auto done = asio::co_spawn(io_, pipeline_->Handle(d), asio::use_future);
    return done.get();
  }

  static std::string App(const std::string& name) {
    return std::string(TIDEPOOL_SOURCE_DIR) + "/apps/" + name + "/app.yaml";
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  std::thread io_thread_;
  std::unique_ptr<llm::sim::LlmSim> sim_;
  std::unique_ptr<llm::LlmClient> client_;
  RecordingSink sink_;
  MemoryLedger ledger_;
  std::unique_ptr<Pipeline> pipeline_;
};

TEST_F(PipelineTest, AFullTurnScoresStreamsAndEndsWithOneFinal) {
  Make(App("scent-advisor"));
  ASSERT_TRUE(Handle(Request("c-1",
                             "Something fresh and citrusy for summer days at the office, "
                             "under $90, no vanilla"))
                  .ok());
  const auto events = sink_.events();
  const auto types = Types(events);
  ASSERT_GE(events.size(), 8u) << events.size() << " events";
  EXPECT_EQ(types.front(), "started");
  EXPECT_EQ(types.back(), "final");
  EXPECT_EQ(std::count(types.begin(), types.end(), "final"), 1);
  // Sequence numbers count from 1 without gaps; every event names the request and conversation.
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq, static_cast<int64_t>(i + 1));
    const json::object b = Body(events[i]);
    EXPECT_EQ(b.at("request_id").as_string(), "m-1");
    EXPECT_EQ(b.at("conversation_id").as_string(), "c-1");
    EXPECT_EQ(b.at("id").as_string(),
              "m-1/" + std::string(b.at("run").as_string()) + "/" + std::to_string(i + 1));
    EXPECT_EQ(b.at("app").as_string(), "scent-advisor");
  }
  // The scoring tool's output is a card with three scored fragrances and their reasons.
  const auto card = std::find(types.begin(), types.end(), "tool_result");
  ASSERT_NE(card, types.end());
  const json::object tool = Body(events[static_cast<size_t>(card - types.begin())]);
  EXPECT_EQ(tool.at("name").as_string(), "recommendations");
  const json::array& results = tool.at("data").at("results").as_array();
  ASSERT_EQ(results.size(), 3u);
  EXPECT_FALSE(results[0].at("points").as_array().empty());
  // Tokens come batched: fewer events than the 40 tokens, and together the final text.
  std::string streamed;
  size_t token_events = 0;
  for (const auto& e : events) {
    if (e.type != "token") continue;
    ++token_events;
    streamed += Body(e).at("text").as_string();
  }
  EXPECT_GE(token_events, 1u);
  EXPECT_LT(token_events, 40u) << "tokens are batched, not one event per token";
  const json::object final = Body(events.back());
  EXPECT_EQ(final.at("text").as_string(), streamed);
  EXPECT_EQ(final.at("step").as_string(), "copy");
  EXPECT_EQ(final.at("cards").at("recommendations").at("results").as_array().size(), 3u);
}

TEST_F(PipelineTest, AVagueMessageGetsAFollowUpQuestionAndNoScoring) {
  Make(App("scent-advisor"));
  ASSERT_TRUE(Handle(Request("c-2", "hello")).ok());
  const auto types = Types(sink_.events());
  EXPECT_EQ(std::count(types.begin(), types.end(), "tool_result"), 0);
  const json::object final = Body(sink_.events().back());
  EXPECT_EQ(final.at("step").as_string(), "ask");
  EXPECT_FALSE(final.at("text").as_string().empty());
}

TEST_F(PipelineTest, TheSecondAppRunsTheSameStepsOnItsOwnData) {
  Make(App("gift-concierge"));
  ASSERT_TRUE(
      Handle(Request("c-3", "A gift for my dad who loves cooking and coffee, under $60")).ok());
  const auto events = sink_.events();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().type, "final");
  const json::object final = Body(events.back());
  EXPECT_EQ(final.at("conversation_id").as_string(), "c-3");
  EXPECT_EQ(final.at("app").as_string(), "gift-concierge");
}

TEST_F(PipelineTest, ARedeliveredRequestYieldsNoSecondFinal) {
  Make(App("scent-advisor"));
  const queue::Delivery d = Request("c-4", "A warm woody scent for winter evenings", "m-4");
  ASSERT_TRUE(Handle(d).ok());
  const size_t first = sink_.events().size();
  queue::Delivery again = d;
  again.delivery_attempt = 2;
  ASSERT_TRUE(Handle(again).ok());
  EXPECT_EQ(sink_.events().size(), first) << "the redelivery published something";
  EXPECT_EQ(pipeline_->stats().duplicates.load(), 1u);
  EXPECT_EQ(pipeline_->stats().finals.load(), 1u);
}

TEST_F(PipelineTest, TwoDeliveriesOfOneRequestAtOnceRunItOnce) {
  Make(App("scent-advisor"));
  const queue::Delivery d = Request("c-10", "Fresh citrus for summer days", "m-10");
  queue::Delivery duplicate = d;
  duplicate.message_id = "pubsub-other";  // published twice, delivered side by side
  auto first = asio::co_spawn(io_, pipeline_->Handle(d), asio::use_future);
  auto second = asio::co_spawn(io_, pipeline_->Handle(duplicate), asio::use_future);
  const Status a = first.get();
  const Status b = second.get();
  EXPECT_TRUE(a.ok()) << a.ToString();
  EXPECT_EQ(b.code(), StatusCode::kUnavailable) << "the second waits for a retry: " << b.ToString();
  EXPECT_FALSE(worker::IsPermanent(b));
  EXPECT_EQ(pipeline_->stats().busy.load(), 1u);
  // Its retry finds the reply.
  EXPECT_TRUE(Handle(duplicate).ok());
  const auto types = Types(sink_.events());
  EXPECT_EQ(std::count(types.begin(), types.end(), "final"), 1);
  EXPECT_EQ(std::count(types.begin(), types.end(), "started"), 1);
}

TEST_F(PipelineTest, AFinalWhosePublishFailedIsPublishedAgainUnchanged) {
  Make(App("scent-advisor"));
  // The final cannot be published: the request is nacked, with its final kept as pending.
  sink_.set_fail(true);
  const queue::Delivery d =
      Request("c-5", "A gift for my sister who loves roses, around $120", "m-5");
  EXPECT_FALSE(Handle(d).ok());
  auto kept = ledger_.Lookup("m-5");
  ASSERT_TRUE(kept.ok() && kept->has_value());
  EXPECT_EQ((*kept)->state, LedgerEntry::State::kPending);
  // The redelivery publishes exactly that event, once, and runs nothing again.
  sink_.set_fail(false);
  ASSERT_TRUE(Handle(d).ok());
  const auto events = sink_.events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, "final");
  EXPECT_EQ(events[0].data, (*kept)->event);
  EXPECT_EQ(pipeline_->stats().replays.load(), 1u);
  ASSERT_TRUE(Handle(d).ok());
  EXPECT_EQ(sink_.events().size(), 1u);
}

TEST_F(PipelineTest, AFailingModelEndsInOneErrorEventAndTheDeadLetter) {
  llm::sim::SimOptions so;
  so.threads = 1;
  so.error_500_rate = 1.0;
  StartSim(so);
  Make(App("scent-advisor"));
  const Status s = Handle(Request("c-6", "fresh citrus for summer", "m-6"));
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(worker::IsPermanent(s)) << s.ToString();
  const auto events = sink_.events();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().type, "error");
  const json::object error = Body(events.back());
  EXPECT_EQ(error.at("step").as_string(), "discovery");
  EXPECT_FALSE(error.at("message").as_string().empty());
  EXPECT_EQ(pipeline_->stats().step_retries.load(), 2u) << "discovery has retries: 2";
  // The dead-lettered request, delivered again, does not produce a second error.
  sink_.clear();
  EXPECT_TRUE(Handle(Request("c-6", "fresh citrus for summer", "m-6")).ok());
  EXPECT_TRUE(sink_.events().empty());
}

TEST_F(PipelineTest, AStepThatOutlivesItsTimeoutFails) {
  llm::sim::SimOptions so;
  so.threads = 1;
  so.ttft = llm::sim::TtftModel::Fixed(5'000);
  StartSim(so);
  auto app = ParseApp(R"(
app: slow
steps:
  - id: answer
    kind: llm
    timeout: 200ms
)",
                      "slow.yaml", ".");
  ASSERT_TRUE(app.ok()) << app.status().ToString();
  MakeFrom(std::move(app).value());
  const auto started = std::chrono::steady_clock::now();
  const Status s = Handle(Request("c-7", "hi", "m-7"));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 4s) << "the timeout did not cut the call";
  EXPECT_TRUE(worker::IsPermanent(s)) << s.ToString();
  const json::object error = Body(sink_.events().back());
  EXPECT_EQ(error.at("code").as_string(), "DEADLINE_EXCEEDED");
}

TEST_F(PipelineTest, AnHttpToolCallsAServiceWithTheRenderedArguments) {
  std::string received;
  admin::AdminOptions ao;
  ao.listen = "127.0.0.1:0";
  ao.prefix_routes["/tool"] = [&received](const admin::Request& r) {
    received = r.body;
    return admin::Response{.status = 200, .body = R"({"answer": "42 apples"})"};
  };
  auto server = admin::AdminServer::Start(ao);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto app = ParseApp(R"(
app: counter
steps:
  - id: count
    kind: tool
    http: {url: "http://127.0.0.1:)" +
                          std::to_string((*server)->port()) +
                          R"(/tool"}
    args: {question: "{{ message }}", limit: 3, exact: true}
  - id: reply
    kind: template
    text: "The service says {{ count.answer }}."
)",
                      "counter.yaml", ".");
  ASSERT_TRUE(app.ok()) << app.status().ToString();
  MakeFrom(std::move(app).value());
  ASSERT_TRUE(Handle(Request("c-8", "how many apples?", "m-8")).ok());
  const json::value args = json::parse(received);
  EXPECT_EQ(args.at("question").as_string(), "how many apples?");
  EXPECT_EQ(args.at("limit").as_int64(), 3);
  EXPECT_EQ(args.at("exact").as_bool(), true);
  EXPECT_EQ(Body(sink_.events().back()).at("text").as_string(), "The service says 42 apples.");
}

TEST_F(PipelineTest, ARequestThatCanNeverBeServedIsDeadLetteredWithoutEvents) {
  Make(App("scent-advisor"));
  queue::Delivery d = Request("c-9", "x");
  for (const std::string data :
       {"not json", R"({"text": "hi"})", R"({"conversation_id": "c 9", "text": "hi"})",
        R"({"conversation_id": "c-9", "text": ""})",
        R"({"conversation_id": "c-9", "text": "hi", "history": [{"role": "system"}]})"}) {
    d.message.data = data;
    const Status s = Handle(d);
    EXPECT_TRUE(worker::IsPermanent(s)) << data << ": " << s.ToString();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << data;
  }
  EXPECT_TRUE(sink_.events().empty());
}

// ---- app specs

TEST(AppSpecTest, ReportsEveryProblemWithItsLine) {
  struct Case {
    std::string yaml;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"app: Bad_Name\nsteps: [{id: a, kind: template, text: hi}]\n", "x.yaml:1: app:"},
      {"app: a\n", "steps: required"},
      {"app: a\nsteps:\n  - {id: a, kind: magic}\n", "x.yaml:3: steps[0].kind: \"magic\""},
      {"app: a\nsteps:\n  - {id: a, kind: template}\n", "steps[0].text: required"},
      {"app: a\nsteps:\n  - {id: message, kind: template, text: x}\n", "reserved name"},
      {"app: a\nsteps:\n  - {id: a, kind: template, text: x}\n  - {id: a, kind: template, "
       "text: y}\n",
       "used by an earlier step"},
      {"app: a\nsteps:\n  - {id: a, kind: template, text: x, colour: red}\n",
       "steps[0].colour: unknown key"},
      {"app: a\nsteps:\n  - {id: a, kind: template, text: \"{{ x \"}\n", "steps[0].text:"},
      {"app: a\nsteps:\n  - {id: a, kind: llm, response_format: {json_schema: nope}}\n",
       "\"nope\" is not a key of files:"},
      {"app: a\nfiles: {cat: missing.json}\nsteps:\n  - {id: a, kind: template, text: x}\n",
       "files.cat: cannot read"},
      {"app: a\nsteps:\n  - {id: a, kind: tool}\n", "steps[0].tool: required"},
      {"app: a\nsteps:\n  - {id: a, kind: template, text: x, timeout: soon}\n",
       "steps[0].timeout: invalid duration"},
      {"app: a\nsteps:\n  - {id: a, kind: template, text: x, when: \"a ==\"}\n", "steps[0].when:"},
  };
  for (const auto& c : cases) {
    auto parsed = ParseApp(c.yaml, "x.yaml", "/nonexistent");
    ASSERT_FALSE(parsed.ok()) << c.yaml;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.expected), std::string::npos)
        << "expected \"" << c.expected << "\" in:\n"
        << parsed.status().message();
  }
}

TEST(AppSpecTest, TheShippedAppsLoadWithTheirDefaults) {
  for (const std::string name : {"scent-advisor", "gift-concierge"}) {
    auto app = LoadApp(std::string(TIDEPOOL_SOURCE_DIR) + "/apps/" + name + "/app.yaml");
    ASSERT_TRUE(app.ok()) << app.status().ToString();
    EXPECT_EQ(app->name, name);
    EXPECT_EQ(app->request_topic, name + "-requests");
    EXPECT_EQ(app->request_subscription, name + "-workers");
    EXPECT_EQ(app->dead_letter_topic, name + "-dead-letter");
    EXPECT_EQ(app->events_topic, "tidepool-events");
    EXPECT_FALSE(app->greeting.empty());
    ASSERT_EQ(app->steps.size(), 4u);
    EXPECT_TRUE(app->steps[3].stream);
  }
}

TEST(AppSpecTest, AnUnknownToolStopsTheAppAtStartUp) {
  auto app = ParseApp("app: a\nsteps:\n  - {id: a, kind: tool, tool: telepathy}\n", "x.yaml", ".");
  ASSERT_TRUE(app.ok()) << app.status().ToString();
  RecordingSink sink;
  MemoryLedger ledger;
  auto made = Pipeline::Create(std::move(app).value(),
                               PipelineDeps{.llm = nullptr, .events = &sink, .ledger = &ledger});
  ASSERT_FALSE(made.ok());
  EXPECT_NE(made.status().message().find("no tool named \"telepathy\""), std::string::npos)
      << made.status().message();
}

TEST(LedgerTest, ClaimsKeepTwoRunsApartAndExpire) {
  const std::string path = ::testing::TempDir() + "/claims-" + std::to_string(::getpid()) + ".db";
  std::remove(path.c_str());
  auto a = SqliteLedger::Open(path);
  auto b = SqliteLedger::Open(path);  // another process's handle on the same file
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*(*a)->Claim("r-1", "A", 1), ClaimResult::kClaimed);
  EXPECT_EQ(*(*b)->Claim("r-1", "B", 1), ClaimResult::kBusy);
  EXPECT_EQ(*(*a)->Claim("r-1", "A", 1), ClaimResult::kClaimed) << "the owner renews";
  ASSERT_TRUE((*a)->Release("r-1", "A").ok());
  EXPECT_EQ(*(*b)->Claim("r-1", "B", 1), ClaimResult::kClaimed) << "released";
  std::this_thread::sleep_for(2100ms);  // B's 1 s lease runs out (whole seconds)
  EXPECT_EQ(*(*a)->Claim("r-1", "A", 30), ClaimResult::kClaimed) << "expired";
  ASSERT_TRUE((*a)->Put("r-1", {.state = LedgerEntry::State::kPublished, .event = "{}"}).ok());
  EXPECT_EQ(*(*b)->Claim("r-1", "B", 30), ClaimResult::kDone);
  std::remove(path.c_str());
}

TEST(LedgerTest, SqliteKeepsEntriesAcrossReopens) {
  const std::string path = ::testing::TempDir() + "/ledger-" + std::to_string(::getpid()) + ".db";
  std::remove(path.c_str());
  {
    auto ledger = SqliteLedger::Open(path);
    ASSERT_TRUE(ledger.ok()) << ledger.status().ToString();
    ASSERT_TRUE((*ledger)->Put("r-1", {.state = LedgerEntry::State::kPending, .event = "{}"}).ok());
    ASSERT_TRUE((*ledger)
                    ->Put("r-1", {.state = LedgerEntry::State::kPublished, .event = "{\"a\":1}"})
                    .ok());
  }
  auto ledger = SqliteLedger::Open(path);
  ASSERT_TRUE(ledger.ok());
  auto got = (*ledger)->Lookup("r-1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->state, LedgerEntry::State::kPublished);
  EXPECT_EQ((*got)->event, "{\"a\":1}");
  auto missing = (*ledger)->Lookup("r-2");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace tidepool::pipeline
