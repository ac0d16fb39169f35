// The web tier's API end to end in one process: an embedded broker, the SQLite store, the web
// service on a real socket, and a pipeline worker (the subscriber runtime running the Scent
// Advisor against an in-process llm-sim). Every status path, idempotency, event streams and
// their resumption after a reconnect.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "broker/broker.h"
#include "llm/sim/llm_sim.h"
#include "pipeline/app.h"
#include "pipeline/ledger.h"
#include "pipeline/runner.h"
#include "queue/queue.h"
#include "storage/test_util.h"
#include "store/store.h"
#include "web/service.h"
#include "worker/runtime.h"

namespace tidepool::web {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Reply {
  int status = 0;
  std::map<std::string, std::string> headers;
  std::string body;
  json::value Json() const {
    boost::system::error_code ec;
    json::value v = json::parse(body, ec);
    return ec ? json::value() : v;
  }
};

// One HTTP exchange on a fresh connection.
Reply Call(int port, const std::string& method, const std::string& target,
           const std::string& body = "", std::map<std::string, std::string> headers = {}) {
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)));
  http::request<http::string_body> req{http::string_to_verb(method), target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!body.empty() && !headers.contains("Content-Type")) {
    req.set(http::field::content_type, "application/json");
  }
  for (const auto& [k, v] : headers) req.set(k, v);
  req.body() = body;
  req.prepare_payload();
  http::write(socket, req);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(16 << 20);
  parser.skip(method == "HEAD");  // a HEAD response has a Content-Length and no body
  http::read(socket, buffer, parser);
  Reply r;
  r.status = static_cast<int>(parser.get().result_int());
  for (const auto& f : parser.get())
    r.headers[std::string(f.name_string())] = std::string(f.value());
  r.body = parser.get().body();
  return r;
}

struct SseEvent {
  std::string id;
  std::string type;
  std::string data;
};

// Reads a Server-Sent Events stream until `stop` says so or `timeout` passes.
class SseClient {
 public:
  SseClient(int port, const std::string& target, const std::string& last_event_id = "")
      : socket_(io_) {
    socket_.connect(
        tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)));
    timeval tv{.tv_sec = 0, .tv_usec = 200'000};
    ::setsockopt(socket_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string request =
        "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n";
    if (!last_event_id.empty()) request += "Last-Event-ID: " + last_event_id + "\r\n";
    request += "\r\n";
    asio::write(socket_, asio::buffer(request));
  }

  template <typename Pred>
  bool ReadUntil(Pred stop, std::chrono::milliseconds timeout) {
    const auto end = Clock::now() + timeout;
    while (Clock::now() < end) {
      if (stop(events)) return true;
      char chunk[4096];
      const ssize_t n = ::recv(socket_.native_handle(), chunk, sizeof(chunk), 0);
      if (n == 0) return stop(events);  // closed
      if (n < 0) continue;              // timeout: look again
      buffer_.append(chunk, static_cast<size_t>(n));
      Parse();
    }
    return stop(events);
  }

  int status() const { return status_; }
  std::vector<SseEvent> events;

 private:
  void Parse() {
    if (status_ == 0) {
      const size_t end = buffer_.find("\r\n\r\n");
      if (end == std::string::npos) return;
      status_ = std::stoi(buffer_.substr(9, 3));
      buffer_.erase(0, end + 4);
    }
    size_t block;
    while ((block = buffer_.find("\n\n")) != std::string::npos) {
      const std::string text = buffer_.substr(0, block);
      buffer_.erase(0, block + 2);
      SseEvent e;
      bool any = false;
      size_t start = 0;
      while (start <= text.size()) {
        size_t nl = text.find('\n', start);
        const std::string line = text.substr(start, nl == std::string::npos ? nl : nl - start);
        if (line.starts_with("id: ")) e.id = line.substr(4), any = true;
        if (line.starts_with("event: ")) e.type = line.substr(7), any = true;
        if (line.starts_with("data: ")) e.data += line.substr(6), any = true;
        if (nl == std::string::npos) break;
        start = nl + 1;
      }
      if (any) events.push_back(std::move(e));
    }
  }

  asio::io_context io_;
  tcp::socket socket_;
  std::string buffer_;
  int status_ = 0;
};

bool HasType(const std::vector<SseEvent>& events, const std::string& type) {
  return std::any_of(events.begin(), events.end(),
                     [&](const SseEvent& e) { return e.type == type; });
}

class WebApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker::BrokerOptions bo;
    bo.data_dir = dir_.sub("broker");
    auto broker = broker::Broker::Open(bo);
    ASSERT_TRUE(broker.ok()) << broker.status().ToString();
    broker_ = std::move(broker).value();
    auto queue = queue::OpenQueue({.backend = "embedded", .broker = broker_.get()});
    ASSERT_TRUE(queue.ok());
    queue_ = std::move(queue).value();
    auto store = store::OpenSqliteStore(dir_.sub("web.db"));
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    llm::sim::SimOptions so;
    so.threads = 1;
    so.ttft = llm::sim::TtftModel::Fixed(100);
    so.tokens_per_second = 60;  // 40 tokens in ~0.7 s: a stream to cut in the middle
    so.output_tokens_min = so.output_tokens_max = 40;
    auto sim = llm::sim::LlmSim::Start(so);
    ASSERT_TRUE(sim.ok());
    sim_ = std::move(sim).value();
    for (const std::string name : {"scent-advisor", "gift-concierge"}) {
      auto spec =
          pipeline::LoadApp(std::string(TIDEPOOL_SOURCE_DIR) + "/apps/" + name + "/app.yaml");
      ASSERT_TRUE(spec.ok()) << spec.status().ToString();
      specs_.push_back(std::move(spec).value());
    }
  }

  void TearDown() override {
    if (service_) service_->Stop(1s);
    service_.reset();
    if (runtime_) runtime_->Drain();
    if (worker_.joinable()) worker_.join();
    // The LLM client lives on the runtime's io_context: it goes first.
    pipeline_.reset();
    llm_.reset();
    runtime_.reset();
    events_.reset();
  }

  WebOptions Options() {
    WebOptions o;
    o.http.listen = "127.0.0.1:0";
    o.http.threads = 2;
    for (const auto& spec : specs_) {
      o.apps.push_back(AppInfo{.name = spec.name,
                               .title = spec.title,
                               .description = spec.description,
                               .greeting = spec.greeting,
                               .examples = spec.examples,
                               .request_topic = spec.request_topic,
                               .request_subscription = pipeline::RequestSubscription(spec),
                               .api_keys = {}});
    }
    o.rate_per_second = 1000;
    o.rate_burst = 1000;
    o.heartbeat = 1s;
    return o;
  }

  void StartWeb(WebOptions o) {
    auto service = WebService::Start(std::move(o), store_.get(), queue_.get());
    ASSERT_TRUE(service.ok()) << service.status().ToString();
    service_ = std::move(service).value();
    port_ = service_->port();
  }

  // The Scent Advisor's worker: the runtime and the pipeline, in process.
  void StartWorker() {
    const pipeline::AppSpec& app = specs_[1].name == "scent-advisor" ? specs_[1] : specs_[0];
    events_ = std::make_unique<pipeline::QueueEventSink>(*queue_, app.events_topic);
    worker::RuntimeOptions ro;
    ro.subscription = app.request_subscription;
    ro.flow.max_outstanding_messages = 100;
    ro.grace_period = 2s;
    runtime_ = std::make_unique<worker::Runtime>(
        *queue_, ro, [this, app](const queue::Delivery& d) -> asio::awaitable<Status> {
          if (!pipeline_) {
            auto executor = co_await asio::this_coro::executor;
            std::call_once(once_, [&] {
              llm::ProviderOptions provider;
              provider.base_url = sim_->base_url();
              auto& context =
                  static_cast<asio::io_context&>(asio::query(executor, asio::execution::context));
              llm_ = std::move(llm::LlmClient::Create(context.get_executor(), provider)).value();
              pipeline_ = std::move(pipeline::Pipeline::Create(
                                        app, pipeline::PipelineDeps{.llm = llm_.get(),
                                                                    .events = events_.get(),
                                                                    .ledger = &ledger_,
                                                                    .tools = nullptr,
                                                                    .log_prefix = "[worker] "}))
                              .value();
            });
          }
          co_return co_await pipeline_->Handle(d);
        });
    worker_ = std::thread([this] { (void)runtime_->Run(); });
  }

  std::string NewConversation(const std::string& app = "scent-advisor") {
    Reply r = Call(port_, "POST", "/v1/apps/" + app + "/conversations");
    EXPECT_EQ(r.status, 201) << r.body;
    return std::string(r.Json().at("id").as_string());
  }

  std::string Base(const std::string& conversation, const std::string& app = "scent-advisor") {
    return "/v1/apps/" + app + "/conversations/" + conversation;
  }

  Reply Post(const std::string& conversation, const std::string& text,
             std::map<std::string, std::string> headers = {}) {
    return Call(port_, "POST", Base(conversation) + "/messages",
                json::serialize(json::object{{"text", text}}), std::move(headers));
  }

  json::array History(const std::string& conversation) {
    Reply r = Call(port_, "GET", Base(conversation));
    EXPECT_EQ(r.status, 200) << r.body;
    return r.Json().at("messages").as_array();
  }

  bool WaitForReplies(const std::string& conversation, size_t replies, std::chrono::seconds t) {
    const auto end = Clock::now() + t;
    while (Clock::now() < end) {
      size_t n = 0;
      for (const auto& m : History(conversation)) n += m.at("role").as_string() != "user";
      if (n >= replies) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  storage::testing::TempDir dir_;
  std::unique_ptr<broker::Broker> broker_;
  std::unique_ptr<queue::Queue> queue_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<llm::sim::LlmSim> sim_;
  std::vector<pipeline::AppSpec> specs_;
  std::unique_ptr<WebService> service_;
  int port_ = 0;
  std::once_flag once_;
  std::unique_ptr<llm::LlmClient> llm_;
  std::unique_ptr<pipeline::QueueEventSink> events_;
  pipeline::MemoryLedger ledger_;
  std::unique_ptr<pipeline::Pipeline> pipeline_;
  std::unique_ptr<worker::Runtime> runtime_;
  std::thread worker_;
};

TEST_F(WebApiTest, AppsAndConversationsAnswerEveryStatusPath) {
  StartWeb(Options());
  Reply apps = Call(port_, "GET", "/v1/apps");
  ASSERT_EQ(apps.status, 200);
  const json::value apps_json = apps.Json();
  const json::array& list = apps_json.at("apps").as_array();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_FALSE(list[0].at("greeting").as_string().empty());

  EXPECT_EQ(Call(port_, "POST", "/v1/apps/nope/conversations").status, 404);
  Reply created = Call(port_, "POST", "/v1/apps/scent-advisor/conversations");
  ASSERT_EQ(created.status, 201);
  const std::string id(created.Json().at("id").as_string());
  EXPECT_EQ(created.headers["Location"], Base(id));
  Reply got = Call(port_, "GET", Base(id));
  EXPECT_EQ(got.status, 200);
  EXPECT_TRUE(got.Json().at("messages").as_array().empty());
  EXPECT_EQ(Call(port_, "GET", Base("c-unknown")).status, 404);
  EXPECT_EQ(Call(port_, "GET", Base(id, "gift-concierge")).status, 404) << "another app's";
  EXPECT_EQ(Call(port_, "GET", Base("bad%20id")).status, 400);
  EXPECT_EQ(Call(port_, "GET", Base(id) + "?limit=0").status, 400);
  EXPECT_EQ(Call(port_, "GET", "/v1/nothing").status, 404);
  Reply wrong_method = Call(port_, "DELETE", "/v1/apps");
  EXPECT_EQ(wrong_method.status, 405);
  EXPECT_EQ(wrong_method.Json().at("error").at("code").as_int64(), 405);
  EXPECT_FALSE(wrong_method.Json().at("error").at("message").as_string().empty());
  EXPECT_EQ(Call(port_, "GET", "/healthz").status, 200);
  EXPECT_EQ(Call(port_, "GET", "/readyz").status, 200);
  const Reply metrics = Call(port_, "GET", "/metrics");
  EXPECT_NE(metrics.body.find("tidepool_web_request_duration_seconds_bucket{route=\"GET "
                              "/v1/apps/{app}/conversations/{id}\""),
            std::string::npos)
      << metrics.body;
}

TEST_F(WebApiTest, BadMessagesGetClearErrorsAndStoreNothing) {
  StartWeb(Options());
  const std::string id = NewConversation();
  const std::string target = Base(id) + "/messages";
  struct Case {
    std::string body;
    std::map<std::string, std::string> headers;
    int status;
  };
  const std::vector<Case> cases = {
      {R"({"text": "hi"})", {{"Content-Type", "text/plain"}}, 415},
      {"not json", {}, 400},
      {R"({"words": "hi"})", {}, 400},
      {R"({"text": 5})", {}, 400},
      {R"({"text": "   "})", {}, 400},
      {"{\"text\": \"caf\xff\"}", {}, 400},
      {json::serialize(json::object{{"text", std::string(33 * 1024, 'a')}}), {}, 413},
      {json::serialize(json::object{{"text", std::string(70 * 1024, 'a')}}), {}, 413},
      {R"({"text": "hi"})", {{"Idempotency-Key", std::string(201, 'k')}}, 400},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.body.substr(0, 40));
    Reply r = Call(port_, "POST", target, c.body, c.headers);
    EXPECT_EQ(r.status, c.status) << c.body.substr(0, 40) << " → " << r.body;
    EXPECT_TRUE(r.Json().at("error").is_object()) << r.body;
  }
  EXPECT_EQ(Call(port_, "POST", Base("c-missing") + "/messages", R"({"text": "hi"})").status, 404);
  EXPECT_TRUE(History(id).empty()) << "a refused message was stored";
}

TEST_F(WebApiTest, AMessageIsAnsweredOnceAndARetriedPostPublishesNothingNew) {
  StartWeb(Options());
  StartWorker();
  const std::string id = NewConversation();
  const std::map<std::string, std::string> key = {{"Idempotency-Key", "send-1"}};
  Reply first = Post(id, "Something fresh and citrusy for summer, under $90", key);
  ASSERT_EQ(first.status, 202) << first.body;
  const std::string message_id(first.Json().at("message_id").as_string());
  Reply again = Post(id, "Something fresh and citrusy for summer, under $90", key);
  ASSERT_EQ(again.status, 202);
  EXPECT_EQ(again.Json().at("message_id").as_string(), message_id);
  EXPECT_EQ(again.headers["Idempotent-Replayed"], "true");

  ASSERT_TRUE(WaitForReplies(id, 1, 30s));
  std::this_thread::sleep_for(500ms);  // a second reply, if one were coming
  const json::array history = History(id);
  ASSERT_EQ(history.size(), 2u) << json::serialize(history);
  EXPECT_EQ(history[0].at("role").as_string(), "user");
  EXPECT_EQ(history[0].at("id").as_string(), message_id);
  EXPECT_EQ(history[1].at("role").as_string(), "assistant");
  EXPECT_EQ(history[1].at("request_id").as_string(), message_id);
  EXPECT_EQ(history[1].at("cards").at("recommendations").at("results").as_array().size(), 3u);
  EXPECT_EQ(service_->stats().messages_accepted, 1u);
  EXPECT_EQ(service_->stats().messages_replayed, 1u);
  EXPECT_EQ(pipeline_->stats().requests.load(), 1u) << "the retry was published";
}

// A store whose POST write fails at its commit, after the message was written into the
// transaction (what a disk error does to SQLite there): it reports `written` with the message
// and the history, stores nothing, and reports the failure. Everything else goes to `inner`.
class CommitFailsStore : public store::Store {
 public:
  explicit CommitFailsStore(store::Store& inner) : inner_(inner) {}
  void PostUserMessageAsync(const std::string&, const store::StoredMessage& message,
                            const std::string&, int history_limit,
                            store::PostCallbacks callbacks) override {
    store::PostedMessage written;
    written.added.message = message;
    written.added.message.request_id = message.id;
    written.added.created = true;
    if (auto history = inner_.History(message.conversation_id, history_limit); history.ok()) {
      written.history = std::move(history).value();
    }
    written.history.push_back(written.added.message);
    callbacks.written(written);
    callbacks.done(Status::Unavailable("sqlite: commit: disk I/O error (a test's failure)"));
  }
  bool WritesInBackground() const override { return true; }

  Status CreateConversation(const store::Conversation& c) override {
    return inner_.CreateConversation(c);
  }
  Result<std::optional<store::Conversation>> GetConversation(const std::string& id) override {
    return inner_.GetConversation(id);
  }
  Result<store::AddResult> AddUserMessage(const store::StoredMessage& m,
                                          const std::string& key) override {
    return inner_.AddUserMessage(m, key);
  }
  Result<int64_t> MarkAllPublished(const std::vector<std::string>& ids) override {
    return inner_.MarkAllPublished(ids);
  }
  Result<std::vector<store::StoredMessage>> Unpublished(int64_t before, int limit) override {
    return inner_.Unpublished(before, limit);
  }
  Result<bool> AddReply(const store::StoredMessage& reply) override {
    Result<bool> added = inner_.AddReply(reply);
    std::lock_guard lock(mu_);
    reply_results_.push_back(added.status().code());
    return added;
  }
  Result<std::vector<store::StoredMessage>> History(const std::string& id, int limit) override {
    return inner_.History(id, limit);
  }
  Status Ping() override { return inner_.Ping(); }
  Result<int> SchemaVersion() override { return inner_.SchemaVersion(); }
  std::string engine() const override { return inner_.engine(); }

  std::vector<StatusCode> reply_results() {
    std::lock_guard lock(mu_);
    return reply_results_;
  }

 private:
  store::Store& inner_;
  std::mutex mu_;
  std::vector<StatusCode> reply_results_;
};

// The publish starts before the store's commit is done (docs/api.md). When that commit fails
// the POST fails with the store's error, and the request that went out anyway is answered by
// the workers without a reply being stored for a message that is not.
TEST_F(WebApiTest, ACommitThatFailsAfterThePublishStartedFailsThePostAndStoresNoReply) {
  CommitFailsStore failing(*store_);
  auto service = WebService::Start(Options(), &failing, queue_.get());
  ASSERT_TRUE(service.ok()) << service.status().ToString();
  service_ = std::move(service).value();
  port_ = service_->port();
  StartWorker();
  const std::string id = NewConversation();

  Reply r = Post(id, "Something green and bright for spring");
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_NE(r.body.find("disk I/O error"), std::string::npos) << r.body;
  EXPECT_EQ(service_->stats().messages_accepted, 0u);
  EXPECT_EQ(service_->stats().publish_failures, 0u);

  // The request was published: the worker answers it; its final reaches the web tier, whose
  // store finds no message to attach it to.
  const auto end = Clock::now() + 30s;
  while (Clock::now() < end && failing.reply_results().empty()) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(pipeline_ ? pipeline_->stats().requests.load() : 0u, 1u);
  EXPECT_EQ(failing.reply_results(), std::vector<StatusCode>{StatusCode::kNotFound});
  EXPECT_TRUE(History(id).empty());
}

TEST_F(WebApiTest, TheEventStreamShowsProgressTokensCardsAndTheFinal) {
  StartWeb(Options());
  StartWorker();
  const std::string id = NewConversation();
  SseClient stream(port_, Base(id) + "/events");
  ASSERT_EQ(Post(id, "A warm woody scent for winter evenings, no vanilla").status, 202);
  ASSERT_TRUE(stream.ReadUntil([](const auto& e) { return HasType(e, "final"); }, 30s));
  EXPECT_EQ(stream.status(), 200);
  for (const char* type : {"started", "step_started", "token", "tool_result", "step_finished"}) {
    EXPECT_TRUE(HasType(stream.events, type)) << type;
  }
  std::set<std::string> ids;
  for (const auto& e : stream.events) {
    EXPECT_TRUE(ids.insert(e.id).second) << "duplicate " << e.id;
    EXPECT_TRUE(json::parse(e.data).is_object());
  }
}

// Anonymous instances (`tidepool web --events-subscription auto`): each streams from a
// subscription of its own, replies are stored from one shared subscription, and a stopped
// instance deletes its own.
TEST_F(WebApiTest, InstancesWithSubscriptionsOfTheirOwnBothStreamAndStoreEachReplyOnce) {
  auto instance = [this](const std::string& name) {
    WebOptions o = Options();
    o.events_subscription = name;
    o.replies_subscription = "tidepool-replies-web";
    o.events_subscription_ttl = std::chrono::hours(24);
    o.events_subscription_retention = std::chrono::hours(1);
    o.delete_events_subscription = true;
    return o;
  };
  StartWeb(instance("tidepool-events-web-a"));
  auto second = WebService::Start(instance("tidepool-events-web-b"), store_.get(), queue_.get());
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  StartWorker();
  const std::string id = NewConversation();
  SseClient on_first(port_, Base(id) + "/events");
  SseClient on_second((*second)->port(), Base(id) + "/events");
  ASSERT_EQ(Post(id, "Something green and fresh for spring").status, 202);
  for (SseClient* stream : {&on_first, &on_second}) {
    ASSERT_TRUE(stream->ReadUntil([](const auto& e) { return HasType(e, "final"); }, 30s));
    EXPECT_TRUE(HasType(stream->events, "token"));
  }
  ASSERT_TRUE(WaitForReplies(id, 1, 30s));
  std::this_thread::sleep_for(500ms);  // a second reply, if one were coming
  EXPECT_EQ(History(id).size(), 2u);

  (*second)->Stop(1s);
  EXPECT_EQ(broker_->GetSubscription("projects/tidepool/subscriptions/tidepool-events-web-b")
                .status()
                .code(),
            StatusCode::kNotFound);
  EXPECT_TRUE(
      broker_->GetSubscription("projects/tidepool/subscriptions/tidepool-events-web-a").ok());
  auto shared = broker_->GetSubscription("projects/tidepool/subscriptions/tidepool-replies-web");
  ASSERT_TRUE(shared.ok()) << "the shared one stays for the other instances";
  EXPECT_FALSE(shared->filter.empty());

  // A reply finished while no instance runs is stored by one started later, under a new name:
  // its own subscription did not exist then, the shared one did.
  ASSERT_EQ(Post(id, "And one for autumn?").status, 202);
  service_->Stop(1s);
  service_.reset();
  std::this_thread::sleep_for(3s);  // the worker answers meanwhile (about 1 s)
  StartWeb(instance("tidepool-events-web-c"));
  EXPECT_TRUE(WaitForReplies(id, 2, 30s)) << json::serialize(History(id));
}

TEST_F(WebApiTest, AReconnectWithLastEventIdResumesWithNoGapAndNoDuplicate) {
  StartWeb(Options());
  StartWorker();
  const std::string id = NewConversation();
  ASSERT_EQ(Post(id, "Something fresh and citrusy for the office").status, 202);
  std::vector<SseEvent> seen;
  {
    SseClient first(port_, Base(id) + "/events");
    ASSERT_TRUE(first.ReadUntil([](const auto& e) { return HasType(e, "token"); }, 30s));
    seen = first.events;  // cut mid-stream
  }
  ASSERT_FALSE(HasType(seen, "final")) << "the reply ended before the cut; nothing tested";
  SseClient second(port_, Base(id) + "/events", seen.back().id);
  ASSERT_TRUE(second.ReadUntil([](const auto& e) { return HasType(e, "final"); }, 30s));
  for (const auto& e : second.events) seen.push_back(e);
  // The whole stream, read from the start once the reply is done: the same events in order.
  SseClient whole(port_, Base(id) + "/events");
  ASSERT_TRUE(whole.ReadUntil([](const auto& e) { return HasType(e, "final"); }, 10s));
  ASSERT_EQ(seen.size(), whole.events.size());
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].id, whole.events[i].id) << i;

  SseClient stale(port_, Base(id) + "/events", "m-gone/run/1");
  ASSERT_TRUE(stale.ReadUntil([](const auto& e) { return !e.empty(); }, 5s));
  EXPECT_EQ(stale.events.front().type, "reset");
  SseClient missing(port_, Base("c-missing") + "/events");
  missing.ReadUntil([](const auto&) { return false; }, 300ms);
  EXPECT_EQ(missing.status(), 404);
}

TEST_F(WebApiTest, RateLimitsApiKeysAndCors) {
  WebOptions o = Options();
  o.rate_per_second = 1;
  o.rate_burst = 3;
  o.cors_origin = "https://shop.example";
  o.apps[1].api_keys = {"secret-key"};
  const std::string keyed = o.apps[1].name;
  StartWeb(std::move(o));
  const std::string other = keyed == "scent-advisor" ? "gift-concierge" : "scent-advisor";
  EXPECT_EQ(Call(port_, "POST", "/v1/apps/" + keyed + "/conversations").status, 401);
  EXPECT_EQ(
      Call(port_, "POST", "/v1/apps/" + keyed + "/conversations", "", {{"X-API-Key", "wrong"}})
          .status,
      403);
  // The three calls above and below spend the burst of 3.
  Reply ok = Call(port_, "POST", "/v1/apps/" + keyed + "/conversations", "",
                  {{"Authorization", "Bearer secret-key"}});
  EXPECT_EQ(ok.status, 201) << ok.body;
  EXPECT_EQ(ok.headers["Access-Control-Allow-Origin"], "https://shop.example");
  Reply limited = Call(port_, "POST", "/v1/apps/" + other + "/conversations");
  EXPECT_EQ(limited.status, 429) << limited.body;
  EXPECT_FALSE(limited.headers["Retry-After"].empty());
  Reply preflight = Call(port_, "OPTIONS", "/v1/apps/" + other + "/conversations");
  EXPECT_EQ(preflight.status, 204);
  EXPECT_NE(preflight.headers["Access-Control-Allow-Headers"].find("Idempotency-Key"),
            std::string::npos);
}

TEST_F(WebApiTest, StaticFilesStayInsideTheUiDirectory) {
  const std::string ui = dir_.sub("ui");
  std::filesystem::create_directories(ui);
  std::ofstream(ui + "/index.html") << "<h1>apps</h1>";
  std::ofstream(ui + "/app.html") << "<h1>chat</h1>";
  std::ofstream(dir_.sub("secret.txt")) << "secret";
  WebOptions o = Options();
  o.ui_dir = ui;
  StartWeb(std::move(o));
  EXPECT_EQ(Call(port_, "GET", "/").body, "<h1>apps</h1>");
  Reply chat = Call(port_, "GET", "/apps/scent-advisor");
  EXPECT_EQ(chat.body, "<h1>chat</h1>");
  EXPECT_EQ(chat.headers["Content-Type"], "text/html; charset=utf-8");
  EXPECT_NE(Call(port_, "GET", "/../secret.txt").status, 200);
  EXPECT_NE(Call(port_, "GET", "/%2e%2e/secret.txt").status, 200);
  EXPECT_EQ(Call(port_, "GET", "/missing.js").status, 404);
}

TEST_F(WebApiTest, TheBuiltInUiIsServedWithEtagsAndHead) {
  StartWeb(Options());  // no ui_dir: the copy built into the library
  auto source = [](const std::string& name) {
    std::ifstream in(std::string(TIDEPOOL_SOURCE_DIR) + "/ui/" + name, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  };
  Reply index = Call(port_, "GET", "/");
  ASSERT_EQ(index.status, 200);
  EXPECT_EQ(index.body, source("index.html"));
  EXPECT_EQ(Call(port_, "GET", "/apps/scent-advisor").body, source("app.html"));
  EXPECT_EQ(Call(port_, "GET", "/dashboard").body, source("dashboard.html"));
  Reply script = Call(port_, "GET", "/app.js");
  EXPECT_EQ(script.body, source("app.js"));
  EXPECT_EQ(script.headers["Content-Type"], "text/javascript; charset=utf-8");
  const std::string etag = script.headers["ETag"];
  ASSERT_FALSE(etag.empty());
  EXPECT_NE(etag, index.headers["ETag"]);

  Reply unchanged = Call(port_, "GET", "/app.js", "", {{"If-None-Match", etag}});
  EXPECT_EQ(unchanged.status, 304);
  EXPECT_TRUE(unchanged.body.empty());
  EXPECT_EQ(Call(port_, "GET", "/app.js", "", {{"If-None-Match", "\"other\""}}).status, 200);

  Reply head = Call(port_, "HEAD", "/app.js");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.headers["Content-Length"], std::to_string(source("app.js").size()));
  EXPECT_EQ(head.headers["ETag"], etag);
  EXPECT_TRUE(head.body.empty());
  EXPECT_EQ(Call(port_, "HEAD", "/v1/apps").status, 200);
  EXPECT_EQ(Call(port_, "HEAD", "/missing.js").status, 404);
  EXPECT_EQ(Call(port_, "GET", "/missing.js").status, 404);
  const std::string id = NewConversation();
  Reply stream = Call(port_, "HEAD", Base(id) + "/events");
  EXPECT_EQ(stream.status, 405);
}

TEST_F(WebApiTest, AStreamTokenOpensTheEventStreamOfOneConversationOnly) {
  WebOptions o = Options();
  const std::string keyed = o.apps[0].name;
  const std::string open_app = o.apps[1].name;
  o.apps[0].api_keys = {"old-key-0123456789", "new-key-0123456789"};
  StartWeb(std::move(o));
  const std::map<std::string, std::string> key = {{"X-API-Key", "new-key-0123456789"}};
  auto base = [&](const std::string& id) { return Base(id, keyed); };
  Reply created = Call(port_, "POST", "/v1/apps/" + keyed + "/conversations", "", key);
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string id(created.Json().at("id").as_string());
  Reply other_created = Call(port_, "POST", "/v1/apps/" + keyed + "/conversations", "", key);
  const std::string other(other_created.Json().at("id").as_string());

  EXPECT_EQ(Call(port_, "POST", base(id) + "/stream-token").status, 401);
  Reply minted = Call(port_, "POST", base(id) + "/stream-token", "", key);
  ASSERT_EQ(minted.status, 201) << minted.body;
  const std::string token(minted.Json().at("token").as_string());
  EXPECT_EQ(minted.Json().at("expires_in").as_int64(), 900);

  SseClient without(port_, base(id) + "/events");
  without.ReadUntil([](const auto&) { return false; }, 300ms);
  EXPECT_EQ(without.status(), 401);
  SseClient with(port_, base(id) + "/events?access_token=" + token);
  with.ReadUntil([&](const auto&) { return with.status() != 0; }, 2s);
  EXPECT_EQ(with.status(), 200);
  // Not for another conversation, not altered, not for the other routes.
  SseClient elsewhere(port_, base(other) + "/events?access_token=" + token);
  elsewhere.ReadUntil([&](const auto&) { return elsewhere.status() != 0; }, 2s);
  EXPECT_EQ(elsewhere.status(), 403);
  std::string altered = token;
  altered.back() = altered.back() == '0' ? '1' : '0';
  SseClient tampered(port_, base(id) + "/events?access_token=" + altered);
  tampered.ReadUntil([&](const auto&) { return tampered.status() != 0; }, 2s);
  EXPECT_EQ(tampered.status(), 403);
  const std::string expired = "1000." + token.substr(token.find('.') + 1);
  SseClient old(port_, base(id) + "/events?access_token=" + expired);
  old.ReadUntil([&](const auto&) { return old.status() != 0; }, 2s);
  EXPECT_EQ(old.status(), 403);
  EXPECT_EQ(Call(port_, "GET", base(id) + "?access_token=" + token).status, 401);

  // A key still listed signs tokens too; an app without keys has no use for one.
  Reply by_old = Call(port_, "POST", base(id) + "/stream-token", "",
                      {{"Authorization", "Bearer old-key-0123456789"}});
  EXPECT_EQ(by_old.status, 201);
  const std::string open_id = NewConversation(open_app);
  EXPECT_EQ(Call(port_, "POST", Base(open_id, open_app) + "/stream-token").status, 400);
  EXPECT_EQ(Call(port_, "POST", base("c-missing") + "/stream-token", "", key).status, 404);
}

TEST_F(WebApiTest, PostLatencyOfTheLastSecondsIsReported) {
  StartWeb(Options());
  EXPECT_EQ(service_->PostLatency().count, 0u);
  const std::string id = NewConversation();
  for (int i = 0; i < 20; ++i) ASSERT_EQ(Post(id, "message " + std::to_string(i)).status, 202);
  const LatencySummary latency = service_->PostLatency();
  EXPECT_EQ(latency.count, 20u);
  EXPECT_GT(latency.p50_ms, 0);
  EXPECT_GE(latency.p99_ms, latency.p50_ms);
  EXPECT_EQ(latency.window_seconds, 10);
  // Its two waits on a disk: every POST stored and published once, each part no longer than
  // the POST that waited for it.
  const LatencySummary store = service_->PostStoreLatency();
  const LatencySummary publish = service_->PostPublishLatency();
  EXPECT_EQ(store.count, 20u);
  EXPECT_EQ(publish.count, 20u);
  EXPECT_GT(store.p50_ms, 0);
  EXPECT_GT(publish.p50_ms, 0);
  EXPECT_LE(store.p50_ms, latency.p99_ms * 1.05);  // 5%: the windows' bucket width
  EXPECT_LE(publish.p50_ms, latency.p99_ms * 1.05);
  // A retry with a key publishes nothing: the store's window counts it, the publish's does not.
  const std::map<std::string, std::string> key = {{"Idempotency-Key", "k"}};
  ASSERT_EQ(Post(id, "again", key).status, 202);
  ASSERT_EQ(Post(id, "again", key).status, 202);
  EXPECT_EQ(service_->PostStoreLatency().count, 22u);
  EXPECT_EQ(service_->PostPublishLatency().count, 21u);
}

}  // namespace
}  // namespace tidepool::web
