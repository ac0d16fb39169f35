#include "web/service.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <atomic>
#include <boost/asio/async_result.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "common/await_callback.h"
#include "common/request_limits.h"
#include "common/thread_name.h"
#include "web/hub.h"
#include "web/latency_window.h"
#include "web/ui_assets.h"

namespace tidepool::web {

namespace asio = boost::asio;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr size_t kMaxIdempotencyKey = 200;
constexpr int kMaxHistoryLimit = 500;
constexpr auto kSweepEvery = std::chrono::seconds(5);
constexpr auto kUnpublishedAfter = std::chrono::seconds(10);
constexpr char kBadConversationId[] = "conversation id must be 1-128 of A-Z a-z 0-9 . _ : -";
constexpr size_t kMaxRateClients = 100'000;
constexpr int64_t kStreamTokenSeconds = 15 * 60;
constexpr char kPostMessageRoute[] = "POST /v1/apps/{app}/conversations/{id}/messages";
constexpr char kEventsPattern[] = "/v1/apps/{app}/conversations/{id}/events";

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A stream token: "EXPIRY.HMAC" where HMAC = hex HMAC-SHA256 under one of the app's API keys
// of "APP\nCONVERSATION\nEXPIRY". Any web instance configured with the same keys verifies it;
// no state is kept, and removing a key revokes every token it signed.
std::string StreamTokenMac(const std::string& key, const std::string& app,
                           const std::string& conversation, int64_t expiry) {
  const std::string text = app + "\n" + conversation + "\n" + std::to_string(expiry);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(text.data()), text.size(), mac, &length);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex += kHex[mac[i] >> 4];
    hex += kHex[mac[i] & 0xF];
  }
  return hex;
}

bool StreamTokenValid(const std::vector<std::string>& keys, const std::string& app,
                      const std::string& conversation, const std::string& token) {
  const size_t dot = token.find('.');
  if (dot == std::string::npos || dot == 0 || dot > 12) return false;
  int64_t expiry = 0;
  for (size_t i = 0; i < dot; ++i) {
    if (token[i] < '0' || token[i] > '9') return false;
    expiry = expiry * 10 + (token[i] - '0');
  }
  if (expiry < NowSeconds()) return false;
  const std::string mac = token.substr(dot + 1);
  for (const std::string& key : keys) {
    const std::string expected = StreamTokenMac(key, app, conversation, expiry);
    if (mac.size() == expected.size() &&
        CRYPTO_memcmp(mac.data(), expected.data(), mac.size()) == 0) {
      return true;
    }
  }
  return false;
}

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string RandomId(const char* prefix, int hex_digits) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = prefix;
  uint64_t bits = rng();
  for (int i = 0; i < hex_digits; ++i) {
    if (i == 16) bits = rng();
    id += kHex[bits & 0xF];
    bits >>= 4;
  }
  return id;
}

// A message id: "m-", the time in milliseconds (11 hex digits, good until the year 2527), then
// 13 random hex digits. Ids made later sort later, so the store's id index grows at its end
// instead of taking a write on a random page for every message.
std::string MessageId() {
  static constexpr char kHex[] = "0123456789abcdef";
  const auto millis = static_cast<uint64_t>(NowMicros() / 1000);
  std::string id = "m-";
  for (int shift = 40; shift >= 0; shift -= 4) id += kHex[(millis >> shift) & 0xF];
  return RandomId(id.c_str(), 13);
}

json::object MessageJson(const store::StoredMessage& m) {
  json::object o{{"id", m.id},     {"role", std::string(store::RoleName(m.role))},
                 {"text", m.text}, {"request_id", m.request_id},
                 {"seq", m.seq},   {"created_micros", m.created_micros}};
  if (!m.cards_json.empty()) {
    boost::system::error_code ec;
    json::value cards = json::parse(m.cards_json, ec);
    if (!ec) o["cards"] = std::move(cards);
  }
  return o;
}

// The body of Offload: `f` is a parameter (copied into the coroutine frame), not a capture of a
// coroutine lambda, whose captures would die with the lambda object before the body runs.
template <typename F>
asio::awaitable<std::optional<std::invoke_result_t<F>>> CallOnce(F f) {
  co_return f();
}

// Runs `f` on the blocking pool and resumes on the caller's executor with its result. Callers
// pass a named lambda: GCC 12 destroys a temporary in a co_await expression twice.
template <typename F>
asio::awaitable<std::invoke_result_t<F>> Offload(asio::thread_pool& pool, F f) {
  auto op = CallOnce(std::move(f));
  auto done = co_await asio::co_spawn(pool, std::move(op), asio::use_awaitable);
  co_return std::move(*done);
}

struct Bucket {
  double tokens = 0;
  Clock::time_point last{};
};

}  // namespace

// What a POST's store write and publish came to.
struct PostOutcome {
  Result<store::AddResult> posted = Status::Unavailable("cancelled while storing");
  std::optional<Status> published;  // none: nothing was published (not stored, or a replay)
};

// Joins a POST's store write and its publish: `done` runs once both have reported. The store
// reports `written` (where the publish starts and Expect is called) before it reports `done`.
struct PostJoin {
  std::mutex mu;
  int waiting = 1;  // the store's done, and the publish once expected
  PostOutcome outcome;
  std::function<void(PostOutcome)> done;

  void Expect() {
    std::lock_guard lock(mu);
    ++waiting;
  }
  void Stored(Result<store::AddResult> posted) {
    Report([&] { outcome.posted = std::move(posted); });
  }
  void Published(Status status) {
    Report([&] { outcome.published = std::move(status); });
  }
  template <typename Set>
  void Report(Set set) {
    bool last = false;
    {
      std::lock_guard lock(mu);
      set();
      last = --waiting == 0;
    }
    if (last) done(std::move(outcome));
  }
};

struct WebService::Impl {
  WebOptions options;
  store::Store* store = nullptr;
  queue::Queue* queue = nullptr;
  std::unique_ptr<HttpServer> server;
  // Store calls block (a commit waits for its fsync): enough threads that concurrent writes
  // queue in the store and commit together instead of waiting here one by one. 32, measured
  // with bench/run-web unpaced when POSTs ran here with SQLite too (now they go to its writing
  // thread, PostgreSQL's still come here): 16 left POSTs queued here for 4 ms, 64 made every
  // thread switch cost more than the larger groups saved.
  static constexpr size_t kStoreThreads = 32;
  asio::thread_pool blocking{kStoreThreads};
  // Final replies are stored on their own threads when the store does not write in the
  // background (PostgreSQL): under load thousands of them arrive at once, and in `blocking`'s
  // FIFO queue they would hold up the POSTs behind them.
  static constexpr size_t kReplyThreads = 4;
  // Builds POSTs' requests and hands them to the publishers, beside the store's commit.
  asio::thread_pool publishing{1};
  // POSTs whose store write has not reported done: the store's own thread calls back into
  // this object (publishers, marks), so Stop waits for them.
  std::mutex posts_mu;
  std::condition_variable posts_cv;
  int posts_in_store = 0;
  int replies_in_store = 0;     // replies handed to a store that writes in the background
  bool replies_closed = false;  // Stop waits for those: no more are handed over
  asio::thread_pool replies{kReplyThreads};
  Impl() {
    NameThreads(blocking, kStoreThreads, "web-store");
    NameThreads(replies, kReplyThreads, "web-replies");
    NameThreads(publishing, 1, "web-publish");
  }
  EventHub hub;
  std::map<std::string, AppInfo> apps;
  std::map<std::string, std::unique_ptr<queue::Publisher>> publishers;  // by app
  std::unique_ptr<queue::MessageStream> events;
  std::unique_ptr<queue::MessageStream> replies_stream;  // with options.replies_subscription
  std::atomic<bool> events_ok{false};
  std::atomic<bool> stopping{false};
  std::thread sweeper;
  std::mutex sweeper_mu;
  std::condition_variable sweeper_cv;
  // Marks of published messages, written by `marker` in one transaction for all that queued
  // meanwhile: a POST answers once the queue confirmed its publish, without waiting for a
  // second commit of its own. A mark lost to a crash only makes the sweeper publish the
  // message again, and the workers drop the duplicate (by message id).
  std::thread marker;
  std::mutex marks_mu;
  std::condition_variable marks_cv;
  std::vector<std::string> marks_queued;
  std::unordered_set<std::string> marks_pending;  // queued or being written
  bool marks_done = false;

  mutable std::mutex mu;
  WebStats stats;
  LatencyWindow post_store;    // under mu
  LatencyWindow post_publish;  // under mu
  std::unordered_map<std::string, Bucket> buckets;

  void Count(uint64_t WebStats::*field) {
    std::lock_guard lock(mu);
    ++(stats.*field);
  }

  void RecordSince(LatencyWindow WebService::Impl::*window, Clock::time_point began) {
    const auto now = Clock::now();
    const double ms = std::chrono::duration<double, std::milli>(now - began).count();
    std::lock_guard lock(mu);
    (this->*window).Record(ms, now);
  }

  LatencySummary Summary(const LatencyWindow WebService::Impl::*window) const {
    std::lock_guard lock(mu);
    return Summarize(this->*window);
  }

  // ---- filters: auth, rate limits, CORS preflight

  HttpResponse Filter(const HttpRequest& r) {
    if (r.method == "OPTIONS") {
      if (options.cors_origin.empty()) return JsonError(405, "no CORS configured");
      HttpResponse ok{.status = 204};
      ok.headers = {{"Access-Control-Allow-Methods", "GET, POST, OPTIONS"},
                    {"Access-Control-Allow-Headers",
                     "Content-Type, Authorization, X-API-Key, Idempotency-Key, Last-Event-ID"},
                    {"Access-Control-Max-Age", "600"}};
      return ok;
    }
    // The rate limit first: a client guessing keys is limited too.
    if (r.method == "POST" && options.rate_per_second > 0) {
      std::lock_guard lock(mu);
      const auto now = Clock::now();
      if (buckets.size() > kMaxRateClients) buckets.clear();
      Bucket& b = buckets[r.remote_ip];
      if (b.last == Clock::time_point{}) {
        b.tokens = options.rate_burst;
      } else {
        const double seconds = std::chrono::duration<double>(now - b.last).count();
        b.tokens = std::min(options.rate_burst, b.tokens + seconds * options.rate_per_second);
      }
      b.last = now;
      if (b.tokens < 1) {
        ++stats.rate_limited;
        const int wait =
            std::max(1, static_cast<int>(std::ceil((1 - b.tokens) / options.rate_per_second)));
        HttpResponse limited = JsonError(
            429, "too many requests from this address; retry in " + std::to_string(wait) + " s");
        limited.headers.emplace_back("Retry-After", std::to_string(wait));
        return limited;
      }
      b.tokens -= 1;
    }
    if (auto app = r.params.find("app"); app != r.params.end()) {
      auto it = apps.find(app->second);
      if (it != apps.end() && !it->second.api_keys.empty()) {
        std::string key = r.header("x-api-key");
        const std::string& auth = r.header("authorization");
        if (key.empty() && auth.starts_with("Bearer ")) key = auth.substr(7);
        const auto& keys = it->second.api_keys;
        // EventSource cannot send headers: a browser's stream presents a stream token.
        if (auto token = r.query.find("access_token");
            key.empty() && token != r.query.end() && r.route == kEventsPattern) {
          if (StreamTokenValid(keys, it->first, r.params.at("id"), token->second)) {
            return HttpResponse{.status = 0};
          }
          return JsonError(403, "the stream token is not valid for this conversation, or expired");
        }
        if (key.empty()) return JsonError(401, "this app needs an API key (X-API-Key)");
        if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
          return JsonError(403, "the API key is not valid for app " + it->first);
        }
      }
    }
    return HttpResponse{.status = 0};
  }

  const AppInfo* FindApp(const HttpRequest& r) const {
    auto it = apps.find(r.params.at("app"));
    return it == apps.end() ? nullptr : &it->second;
  }

  // ---- API

  asio::awaitable<HttpResponse> ListApps(HttpRequest&) {
    json::array list;
    for (const auto& [name, app] : apps) {
      json::array examples;
      for (const auto& e : app.examples) examples.push_back(json::value(e));
      list.push_back(json::object{{"name", app.name},
                                  {"title", app.title},
                                  {"description", app.description},
                                  {"greeting", app.greeting},
                                  {"examples", std::move(examples)},
                                  {"requires_api_key", !app.api_keys.empty()}});
    }
    co_return Json(200, json::serialize(json::object{{"apps", std::move(list)}}));
  }

  // A token for GET .../events?access_token=, for browsers of apps with API keys: the caller
  // authenticated with a key (by the filter); the token is signed with that key.
  asio::awaitable<HttpResponse> CreateStreamToken(HttpRequest& r) {
    const AppInfo* app = FindApp(r);
    if (app == nullptr) co_return JsonError(404, "no app named " + r.params.at("app"));
    if (app->api_keys.empty()) {
      co_return JsonError(400, "app " + app->name + " needs no API key: open the stream directly");
    }
    const std::string conversation = r.params.at("id");
    if (auto refused = co_await CheckConversation(*app, conversation)) co_return *refused;
    std::string key = r.header("x-api-key");
    if (const std::string& auth = r.header("authorization"); key.empty() && auth.size() > 7) {
      key = auth.substr(7);  // "Bearer KEY", as the filter checked
    }
    const int64_t expiry = NowSeconds() + kStreamTokenSeconds;
    const std::string token =
        std::to_string(expiry) + "." + StreamTokenMac(key, app->name, conversation, expiry);
    co_return Json(
        201, json::serialize(json::object{{"token", token}, {"expires_in", kStreamTokenSeconds}}));
  }

  asio::awaitable<HttpResponse> CreateConversation(HttpRequest& r) {
    const AppInfo* app = FindApp(r);
    if (app == nullptr) co_return JsonError(404, "no app named " + r.params.at("app"));
    store::Conversation c{
        .id = RandomId("c-", 20), .app = app->name, .created_micros = NowMicros()};
    auto create = [this, c] { return store->CreateConversation(c); };
    Status created = co_await Offload(blocking, std::move(create));
    if (!created.ok()) co_return JsonError(created);
    HttpResponse response =
        Json(201, json::serialize(json::object{
                      {"id", c.id}, {"app", c.app}, {"created_micros", c.created_micros}}));
    response.headers.emplace_back("Location", "/v1/apps/" + app->name + "/conversations/" + c.id);
    co_return response;
  }

  // The conversation, if it exists in this app; else the error response to give.
  asio::awaitable<std::optional<HttpResponse>> CheckConversation(const AppInfo& app,
                                                                 const std::string& id) {
    if (!IsValidId(id)) co_return JsonError(400, kBadConversationId);
    auto get = [this, id] { return store->GetConversation(id); };
    auto got = co_await Offload(blocking, std::move(get));
    if (!got.ok()) co_return JsonError(got.status());
    if (!got->has_value() || (*got)->app != app.name) {
      co_return JsonError(404, "no conversation " + id + " in app " + app.name);
    }
    co_return std::nullopt;
  }

  asio::awaitable<HttpResponse> GetConversation(HttpRequest& r) {
    const AppInfo* app = FindApp(r);
    if (app == nullptr) co_return JsonError(404, "no app named " + r.params.at("app"));
    const std::string id = r.params.at("id");
    if (auto refused = co_await CheckConversation(*app, id)) co_return std::move(*refused);
    int limit = 200;
    if (auto it = r.query.find("limit"); it != r.query.end()) {
      char* end = nullptr;
      const long parsed = std::strtol(it->second.c_str(), &end, 10);
      if (it->second.empty() || *end != '\0' || parsed < 1 || parsed > 1000) {
        co_return JsonError(400, "limit must be a number from 1 to 1000");
      }
      limit = static_cast<int>(parsed);
    }
    auto read = [this, id, limit] { return store->History(id, limit); };
    auto history = co_await Offload(blocking, std::move(read));
    if (!history.ok()) co_return JsonError(history.status());
    json::array messages;
    for (const auto& m : *history) messages.push_back(MessageJson(m));
    co_return Json(200, json::serialize(json::object{
                            {"id", id}, {"app", app->name}, {"messages", std::move(messages)}}));
  }

  // The request the workers get: the message and the conversation before it.
  std::string RequestData(const store::StoredMessage& m,
                          const std::vector<store::StoredMessage>& history) {
    json::array turns;
    for (const auto& h : history) {
      if (h.seq >= m.seq || h.role == store::Role::kError) continue;
      turns.push_back(json::object{{"role", h.role == store::Role::kUser ? "user" : "assistant"},
                                   {"content", h.text}});
    }
    return json::serialize(json::object{{"conversation_id", m.conversation_id},
                                        {"message_id", m.id},
                                        {"text", m.text},
                                        {"history", std::move(turns)}});
  }

  // The request message published for user message `m` of `app`.
  queue::Message RequestMessage(const std::string& app, const store::StoredMessage& m,
                                const std::vector<store::StoredMessage>& history) {
    queue::Message request{.data = RequestData(m, history)};
    request.attributes = {{"app", app}, {"conversation_id", m.conversation_id}};
    return request;
  }

  // Stores the user message and publishes its request, and reports once both are done. The
  // publish starts as soon as the message is written: with a store that writes on a thread of
  // its own (SQLite) the queue's fsync runs beside the store's commit instead of after it. A
  // retry of a message that is published, or being published, publishes nothing.
  asio::awaitable<PostOutcome> StoreAndPublish(const AppInfo& app, store::StoredMessage m,
                                               std::string key, int history_limit) {
    auto start = [this, app_name = app.name, m = std::move(m), key = std::move(key),
                  history_limit](std::function<void(PostOutcome)> done) mutable {
      const auto began = Clock::now();
      auto join = std::make_shared<PostJoin>();
      join->done = std::move(done);
      store::PostCallbacks callbacks;
      callbacks.written = [this, join, app_name](store::PostedMessage posted) {
        const store::StoredMessage& message = posted.added.message;
        if (!posted.added.created && (message.published || MarkPending(message.id))) return;
        join->Expect();
        // The request is built and handed to the publisher on a thread of ours: the store's
        // writing thread goes on to its commit.
        asio::post(publishing, [this, join, app_name, posted = std::move(posted)] {
          const auto publishing_began = Clock::now();
          publishers.at(app_name)->Publish(
              RequestMessage(app_name, posted.added.message, posted.history),
              [this, join, publishing_began](Result<std::string> id) {
                RecordSince(&Impl::post_publish, publishing_began);
                join->Published(id.status());
              });
        });
      };
      callbacks.done = [this, join, began](Result<store::AddResult> posted) {
        RecordSince(&Impl::post_store, began);
        join->Stored(std::move(posted));
        // The last touch of `this`: Stop waits for it.
        std::lock_guard lock(posts_mu);
        --posts_in_store;
        posts_cv.notify_all();
      };
      {
        std::lock_guard lock(posts_mu);
        ++posts_in_store;
      }
      if (store->WritesInBackground()) {
        store->PostUserMessageAsync(app_name, m, key, history_limit, std::move(callbacks));
        return;
      }
      asio::post(blocking, [this, app_name, m = std::move(m), key = std::move(key), history_limit,
                            callbacks = std::move(callbacks)]() mutable {
        store->PostUserMessageAsync(app_name, m, key, history_limit, std::move(callbacks));
      });
    };
    PostOutcome cancelled;
    PostOutcome outcome =
        co_await AwaitCallback<PostOutcome>(std::move(start), std::move(cancelled));
    co_return outcome;
  }

  asio::awaitable<HttpResponse> PostMessage(HttpRequest& r) {
    const AppInfo* app = FindApp(r);
    if (app == nullptr) co_return JsonError(404, "no app named " + r.params.at("app"));
    const std::string conversation = r.params.at("id");
    const std::string key = r.header("idempotency-key");
    if (key.size() > kMaxIdempotencyKey) {
      co_return JsonError(400, "Idempotency-Key is longer than 200 characters");
    }
    if (!r.header("content-type").starts_with("application/json")) {
      co_return JsonError(415, "send the message as application/json: {\"text\": \"...\"}");
    }
    boost::system::error_code ec;
    json::value body = json::parse(r.body, ec);
    if (ec || !body.is_object()) co_return JsonError(400, "the body must be a JSON object");
    const json::value* text = body.get_object().if_contains("text");
    if (text == nullptr || !text->is_string()) {
      co_return JsonError(400, "text is required (a string)");
    }
    const std::string message_text(text->get_string());
    if (message_text.find_first_not_of(" \t\r\n") == std::string::npos) {
      co_return JsonError(400, "text is empty");
    }
    if (message_text.size() > kMaxMessageTextBytes) {
      co_return JsonError(413, "text is longer than 32 KiB");
    }
    if (!IsValidUtf8(message_text)) co_return JsonError(400, "text is not valid UTF-8");
    if (!IsValidId(conversation)) co_return JsonError(400, kBadConversationId);

    store::StoredMessage m;
    m.id = MessageId();
    m.conversation_id = conversation;
    m.role = store::Role::kUser;
    m.text = message_text;
    m.request_id = m.id;
    m.created_micros = NowMicros();
    const int limit = std::clamp(options.history_limit, 0, kMaxHistoryLimit);
    PostOutcome outcome = co_await StoreAndPublish(*app, std::move(m), key, limit + 1);
    if (outcome.posted.status().code() == StatusCode::kNotFound) {
      co_return JsonError(404, "no conversation " + conversation + " in app " + app->name);
    }
    // Not stored. When its commit failed after the publish had started the request is out, for
    // a message that is not: its reply will not be stored (there is no message to answer), and
    // a retry with the same key stores and publishes it anew.
    if (!outcome.posted.ok()) co_return JsonError(outcome.posted.status());
    const store::AddResult& added = *outcome.posted;
    const store::StoredMessage& message = added.message;
    auto accepted = [&](bool replayed) {
      HttpResponse response =
          Json(202, json::serialize(json::object{{"message_id", message.id},
                                                 {"conversation_id", message.conversation_id},
                                                 {"status", "accepted"}}));
      if (replayed) response.headers.emplace_back("Idempotent-Replayed", "true");
      return response;
    };
    if (!outcome.published) {  // a retry of a message published before
      Count(&WebStats::messages_replayed);
      co_return accepted(true);
    }
    if (!outcome.published->ok()) {
      Count(&WebStats::publish_failures);
      // Stored, not published: the sweeper publishes it; a retry with the same key does too.
      HttpResponse unavailable =
          JsonError(503, "the message is stored but the queue did not confirm it yet: " +
                             outcome.published->message());
      unavailable.headers.emplace_back("Retry-After", "1");
      co_return unavailable;
    }
    QueueMark(message.id);
    Count(added.created ? &WebStats::messages_accepted : &WebStats::messages_replayed);
    co_return accepted(!added.created);
  }

  // ---- events

  asio::awaitable<void> StreamEvents(HttpRequest& r, SseWriter& out, HttpResponse& refusal) {
    const AppInfo* app = FindApp(r);
    if (app == nullptr) {
      refusal = JsonError(404, "no app named " + r.params.at("app"));
      co_return;
    }
    const std::string conversation = r.params.at("id");
    if (auto refused = co_await CheckConversation(*app, conversation)) {
      refusal = std::move(*refused);
      co_return;
    }
    std::string last = r.header("last-event-id");
    if (last.empty()) {
      if (auto it = r.query.find("last_event_id"); it != r.query.end()) last = it->second;
    }
    const uint64_t subscription = hub.Subscribe(conversation, out.Waker());
    uint64_t position = 0;
    bool ok = true;
    if (!last.empty()) {
      if (auto found = hub.Find(conversation, last)) {
        position = *found;
      } else {
        // Too old to resume from: the client reloads the history (replies are stored) and
        // continues with what comes next.
        position = hub.Last(conversation);
        ok = co_await out.Send("", "reset",
                               R"({"reason":"the last event id is no longer retained; reload )"
                               R"(the conversation"})");
      }
    }
    if (ok) ok = co_await out.Comment("connected");
    auto last_write = Clock::now();
    while (ok && !out.stopping()) {
      // A named vector, not a temporary in the range-for: the loop suspends.
      const std::vector<HubEvent> batch = hub.Since(conversation, position);
      for (const HubEvent& e : batch) {
        ok = co_await out.Send(e.id, e.type, e.data);
        if (!ok) break;
        position = e.index;
        last_write = Clock::now();
      }
      if (!ok || out.stopping()) break;
      if (Clock::now() - last_write >= options.heartbeat) {
        ok = co_await out.Comment("keep-alive");
        last_write = Clock::now();
        continue;
      }
      co_await out.Wait(options.heartbeat);
    }
    hub.Unsubscribe(conversation, subscription);
  }

  // What a stream of events is for: the hub (event streams), storing final replies, or both.
  enum class EventUse { kAll, kHubOnly, kRepliesOnly };

  // On the queue's thread: hands each event to the hub; finals and errors are stored (off the
  // queue's thread) before they are acked.
  void OnEvents(std::vector<queue::Delivery> deliveries, EventUse use) {
    std::unique_ptr<queue::MessageStream>& source =
        use == EventUse::kRepliesOnly ? replies_stream : events;
    std::vector<std::string> ack_now;
    for (auto& d : deliveries) {
      {
        std::lock_guard lock(mu);
        ++stats.events_received;
      }
      boost::system::error_code ec;
      json::value parsed = json::parse(d.message.data, ec);
      if (ec || !parsed.is_object()) {
        ack_now.push_back(d.ack_id);  // not an event of ours
        continue;
      }
      const json::object& e = parsed.get_object();
      auto str = [&e](const char* key) {
        const json::value* v = e.if_contains(key);
        return v != nullptr && v->is_string() ? std::string(v->get_string()) : std::string();
      };
      const std::string conversation = str("conversation_id");
      const std::string type = str("type");
      if (conversation.empty() || type.empty()) {
        ack_now.push_back(d.ack_id);
        continue;
      }
      if (use != EventUse::kRepliesOnly) hub.Add(conversation, str("id"), type, d.message.data);
      if (use == EventUse::kHubOnly || (type != "final" && type != "error")) {
        ack_now.push_back(d.ack_id);
        continue;
      }
      store::StoredMessage reply;
      reply.request_id = str("request_id");
      reply.id = reply.request_id + "/reply";
      reply.conversation_id = conversation;
      reply.role = type == "final" ? store::Role::kAssistant : store::Role::kError;
      reply.text = type == "final" ? str("text") : str("message");
      if (const json::value* cards = e.if_contains("cards");
          cards != nullptr && cards->is_object() && !cards->get_object().empty()) {
        reply.cards_json = json::serialize(*cards);
      }
      reply.created_micros = NowMicros();
      if (!store->WritesInBackground()) {
        asio::post(replies, [this, reply, ack = d.ack_id, &source] {
          FinishReply(store->AddReply(reply), ack, source);
        });
        continue;
      }
      // The store's own thread commits it, with the POSTs around it (not a commit of its own
      // that a POST would queue behind), and calls back from there.
      {
        std::lock_guard lock(posts_mu);
        if (replies_closed) continue;  // stopping: not acked, so delivered again later
        ++replies_in_store;
      }
      store->AddReplyAsync(reply, [this, ack = d.ack_id, &source](Result<bool> stored) {
        FinishReply(stored, ack, source);
        std::lock_guard lock(posts_mu);
        if (--replies_in_store == 0) posts_cv.notify_all();
      });
    }
    if (!ack_now.empty() && source) source->Ack(std::move(ack_now), nullptr);
  }

  // A final reply is acked once stored, or once it can never be (no such conversation or user
  // message, a reply the store refuses); while the store is down it comes back later.
  void FinishReply(const Result<bool>& stored, const std::string& ack,
                   const std::unique_ptr<queue::MessageStream>& source) {
    if (stored.ok() || stored.status().code() == StatusCode::kNotFound ||
        stored.status().code() == StatusCode::kInvalidArgument) {
      if (stored.ok() && *stored) Count(&WebStats::replies_stored);
      if (source) source->Ack({ack}, nullptr);
    } else if (source) {
      source->Nack({ack}, std::chrono::seconds(1), nullptr);
    }
  }

  Result<std::unique_ptr<queue::MessageStream>> SubscribeEvents(const std::string& name,
                                                                EventUse use) {
    queue::StreamOptions stream_options;
    stream_options.flow.max_outstanding_messages = 10'000;
    stream_options.stream_ack_deadline_seconds = 30;
    return queue->Subscribe(
        name, stream_options,
        [this, use](std::vector<queue::Delivery> d) { OnEvents(std::move(d), use); },
        [this, name](Status error) {
          events_ok = false;
          std::fprintf(stderr, "web: events stream of %s ended: %s\n", name.c_str(),
                       error.ToString().c_str());
        });
  }

  Status StartEvents() {
    TP_RETURN_IF_ERROR(queue->EnsureTopic(options.events_topic));
    queue::SubscriptionSpec sub{.name = options.events_subscription, .topic = options.events_topic};
    sub.ack_deadline_seconds = 30;
    sub.enable_message_ordering = true;
    sub.expiration_ttl = options.events_subscription_ttl;
    sub.message_retention = options.events_subscription_retention;
    TP_RETURN_IF_ERROR(queue->EnsureSubscription(sub));
    const bool shared_replies = !options.replies_subscription.empty();
    if (shared_replies) {
      queue::SubscriptionSpec shared{.name = options.replies_subscription,
                                     .topic = options.events_topic};
      shared.ack_deadline_seconds = 30;
      shared.filter = R"(attributes.type = "final" OR attributes.type = "error")";
      TP_RETURN_IF_ERROR(queue->EnsureSubscription(shared));
      TP_ASSIGN_OR_RETURN(replies_stream,
                          SubscribeEvents(options.replies_subscription, EventUse::kRepliesOnly));
    }
    TP_ASSIGN_OR_RETURN(events,
                        SubscribeEvents(options.events_subscription,
                                        shared_replies ? EventUse::kHubOnly : EventUse::kAll));
    events_ok = true;
    return Status::Ok();
  }

  // Publishes what a crash left stored but unpublished.
  void Sweep() {
    std::unique_lock lock(sweeper_mu);
    while (!stopping.load()) {
      sweeper_cv.wait_for(lock, kSweepEvery, [this] { return stopping.load(); });
      if (stopping.load()) return;
      hub.Sweep();
      const int64_t before =
          NowMicros() -
          std::chrono::duration_cast<std::chrono::microseconds>(kUnpublishedAfter).count();
      auto pending = store->Unpublished(before, 100);
      if (!pending.ok()) continue;
      for (const auto& m : *pending) {
        auto conversation = store->GetConversation(m.conversation_id);
        if (!conversation.ok() || !conversation->has_value()) continue;
        auto app = apps.find((*conversation)->app);
        if (app == apps.end()) continue;
        auto history = store->History(m.conversation_id, options.history_limit + 1);
        std::vector<store::StoredMessage> turns;
        if (history.ok()) turns = std::move(history).value();
        std::promise<Status> done;
        publishers.at(app->first)
            ->Publish(RequestMessage(app->first, m, turns),
                      [&done](Result<std::string> id) { done.set_value(id.status()); });
        if (done.get_future().get().ok() && store->MarkPublished(m.id).ok()) {
          Count(&WebStats::republished);
        }
      }
    }
  }

  void QueueMark(const std::string& id) {
    {
      std::lock_guard lock(marks_mu);
      marks_queued.push_back(id);
      marks_pending.insert(id);
    }
    marks_cv.notify_one();
  }

  // Published, its mark not written yet: a retry with its key must not publish it again.
  bool MarkPending(const std::string& id) {
    std::lock_guard lock(marks_mu);
    return marks_pending.contains(id);
  }

  void MarkLoop() {
    for (;;) {
      std::vector<std::string> batch;
      {
        std::unique_lock lock(marks_mu);
        marks_cv.wait(lock, [this] { return !marks_queued.empty() || marks_done; });
        if (marks_queued.empty()) return;
        batch.swap(marks_queued);
      }
      // Unmarked (the store failed): the sweeper publishes them again later.
      (void)store->MarkAllPublished(batch);
      std::lock_guard lock(marks_mu);
      for (const auto& id : batch) marks_pending.erase(id);
    }
  }

  // ---- operations

  asio::awaitable<HttpResponse> Ready(HttpRequest&) {
    auto probe = [this] { return store->Ping(); };
    Status ping = co_await Offload(blocking, std::move(probe));
    if (!ping.ok()) co_return JsonError(503, "store: " + ping.message());
    if (!events_ok.load()) co_return JsonError(503, "the events stream is not open");
    co_return Json(200, R"({"status":"ready"})");
  }

  std::string Metrics() const {
    WebStats s;
    {
      std::lock_guard lock(mu);
      s = stats;
    }
    std::ostringstream out;
    auto counter = [&out](const char* name, const char* help, uint64_t value) {
      out << "# HELP " << name << " " << help << "\n# TYPE " << name << " counter\n"
          << name << " " << value << "\n";
    };
    counter("tidepool_web_messages_accepted_total", "Messages stored, published, answered 202.",
            s.messages_accepted);
    counter("tidepool_web_messages_replayed_total", "Retries answered from an Idempotency-Key.",
            s.messages_replayed);
    counter("tidepool_web_publish_failures_total", "Messages stored whose publish failed.",
            s.publish_failures);
    counter("tidepool_web_republished_total", "Stored messages published by the sweeper.",
            s.republished);
    counter("tidepool_web_events_received_total", "Pipeline events read from the events topic.",
            s.events_received);
    counter("tidepool_web_replies_stored_total", "Final replies stored (once per request).",
            s.replies_stored);
    counter("tidepool_web_rate_limited_total", "Requests refused by the rate limit.",
            s.rate_limited);
    out << "# HELP tidepool_web_hub_conversations Conversations with retained events.\n"
        << "# TYPE tidepool_web_hub_conversations gauge\n"
        << "tidepool_web_hub_conversations " << hub.conversations() << "\n";
    out << server->MetricsText();
    if (options.extra_metrics) out << options.extra_metrics();
    return out.str();
  }

  static std::string ContentType(const std::string& path) {
    static const std::map<std::string, std::string> kTypes = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".json", "application/json"},
        {".ico", "image/x-icon"}};
    auto type = kTypes.find(std::filesystem::path(path).extension().string());
    return type == kTypes.end() ? "application/octet-stream" : type->second;
  }

  asio::awaitable<HttpResponse> Static(HttpRequest& r) {
    std::string path = r.path;
    if (path == "/" || path.empty()) path = "/index.html";
    if (path == "/dashboard") path = "/dashboard.html";
    if (path.starts_with("/apps/") && path.find('.') == std::string::npos) path = "/app.html";
    // No way out of the UI: no "..", no backslashes, no NUL, and a file read from a directory
    // must resolve to a path under it.
    if (path.find("..") != std::string::npos || path.find('\\') != std::string::npos ||
        path.find('\0') != std::string::npos) {
      co_return JsonError(400, "bad path");
    }
    HttpResponse response{.status = 200, .content_type = ContentType(path)};
    response.headers.emplace_back("Cache-Control", "no-cache");
    response.headers.emplace_back("X-Content-Type-Options", "nosniff");
    if (options.ui_dir.empty()) {
      // The built-in UI: an ETag from the file's digest, so a reload revalidates in one 304.
      for (const UiAsset& asset : UiAssets()) {
        if (asset.path != path) continue;
        const std::string etag = "\"" + std::string(asset.sha256.substr(0, 32)) + "\"";
        response.headers.emplace_back("ETag", etag);
        if (r.header("if-none-match") == etag) {
          response.status = 304;
          co_return response;
        }
        response.body = std::string(asset.content);
        co_return response;
      }
      co_return JsonError(404, "no such file: " + r.path);
    }
    std::error_code ec;
    const auto root = std::filesystem::weakly_canonical(options.ui_dir, ec);
    const auto file = std::filesystem::weakly_canonical(root / path.substr(1), ec);
    if (ec || file.string().rfind(root.string() + "/", 0) != 0 ||
        !std::filesystem::is_regular_file(file)) {
      co_return JsonError(404, "no such file: " + r.path);
    }
    std::ifstream in(file, std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    response.body = content.str();
    co_return response;
  }
};

WebService::WebService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WebService::~WebService() {
  Stop(std::chrono::milliseconds(0));
}

Result<std::unique_ptr<WebService>> WebService::Start(WebOptions options, store::Store* store,
                                                      queue::Queue* queue) {
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.options = std::move(options);
  s.store = store;
  s.queue = queue;
  for (const AppInfo& app : s.options.apps) {
    TP_RETURN_IF_ERROR(queue->EnsureTopic(app.request_topic));
    if (app.request_subscription) {
      if (!app.request_subscription->dead_letter_topic.empty()) {
        TP_RETURN_IF_ERROR(queue->EnsureTopic(app.request_subscription->dead_letter_topic));
      }
      TP_RETURN_IF_ERROR(queue->EnsureSubscription(*app.request_subscription));
    }
    s.apps[app.name] = app;
    // No batching delay: a POST waits for its publish, and while max_in_flight publishes are
    // out the next messages gather into one.
    s.publishers[app.name] = std::make_unique<queue::Publisher>(
        *queue, app.request_topic, queue::BatchingOptions{.max_delay = {}});
  }
  if (!s.options.cors_origin.empty()) {
    s.options.http.headers.emplace_back("Access-Control-Allow-Origin", s.options.cors_origin);
  }
  TP_ASSIGN_OR_RETURN(s.server, HttpServer::Create(s.options.http));
  HttpServer& http = *s.server;
  Impl* self = &s;
  http.SetFilter([self](const HttpRequest& r) { return self->Filter(r); });
  http.Route("GET", "/v1/apps", [self](HttpRequest& r) { return self->ListApps(r); });
  http.Route("POST", "/v1/apps/{app}/conversations",
             [self](HttpRequest& r) { return self->CreateConversation(r); });
  http.Route("GET", "/v1/apps/{app}/conversations/{id}",
             [self](HttpRequest& r) { return self->GetConversation(r); });
  http.Route("POST", "/v1/apps/{app}/conversations/{id}/messages",
             [self](HttpRequest& r) { return self->PostMessage(r); });
  http.Route("POST", "/v1/apps/{app}/conversations/{id}/stream-token",
             [self](HttpRequest& r) { return self->CreateStreamToken(r); });
  http.Stream("GET", kEventsPattern, [self](HttpRequest& r, SseWriter& w, HttpResponse& refusal) {
    return self->StreamEvents(r, w, refusal);
  });
  http.Route("GET", "/healthz", [](HttpRequest&) -> asio::awaitable<HttpResponse> {
    co_return Json(200, R"({"status":"ok"})");
  });
  http.Route("GET", "/readyz", [self](HttpRequest& r) { return self->Ready(r); });
  http.Route("GET", "/metrics", [self](HttpRequest&) -> asio::awaitable<HttpResponse> {
    co_return HttpResponse{
        .status = 200, .content_type = "text/plain; version=0.0.4", .body = self->Metrics()};
  });
  http.Route("GET", "/v1/dashboard", [self](HttpRequest&) -> asio::awaitable<HttpResponse> {
    if (!self->options.dashboard_json) co_return JsonError(404, "no dashboard data here");
    co_return Json(200, self->options.dashboard_json());
  });
  http.Prefix("/", [self](HttpRequest& r) { return self->Static(r); });
  TP_RETURN_IF_ERROR(s.StartEvents());
  TP_RETURN_IF_ERROR(http.Start());
  s.sweeper = std::thread([self] {
    SetCurrentThreadName("web-sweep");
    self->Sweep();
  });
  s.marker = std::thread([self] {
    SetCurrentThreadName("web-mark");
    self->MarkLoop();
  });
  return std::unique_ptr<WebService>(new WebService(std::move(impl)));
}

void WebService::Stop(std::chrono::milliseconds grace) {
  Impl& s = *impl_;
  if (s.stopping.exchange(true)) return;
  s.sweeper_cv.notify_all();
  if (s.sweeper.joinable()) s.sweeper.join();
  s.server->Stop(grace);
  if (s.events) s.events->StopPulling();
  if (s.replies_stream) s.replies_stream->StopPulling();
  s.blocking.join();
  {
    std::unique_lock lock(s.posts_mu);
    s.posts_cv.wait(lock, [&s] { return s.posts_in_store == 0; });
  }
  s.publishing.join();  // after the store's last `written`: it may post here
  {
    std::lock_guard lock(s.marks_mu);
    s.marks_done = true;
  }
  s.marks_cv.notify_all();
  if (s.marker.joinable()) s.marker.join();  // what is queued is written first
  s.replies.join();                          // replies being stored are stored and acked
  {
    std::unique_lock lock(s.posts_mu);
    s.replies_closed = true;
    s.posts_cv.wait(lock, [&s] { return s.replies_in_store == 0; });
  }
  if (s.events) s.events->Close();
  if (s.replies_stream) s.replies_stream->Close();
  s.publishers.clear();  // flushes
  s.events.reset();
  s.replies_stream.reset();
  if (s.options.delete_events_subscription) {
    if (Status deleted = s.queue->DeleteSubscription(s.options.events_subscription);
        !deleted.ok()) {
      std::fprintf(stderr, "web: events subscription %s stays until it expires: %s\n",
                   s.options.events_subscription.c_str(), deleted.ToString().c_str());
    }
  }
}

int WebService::port() const {
  return impl_->server->port();
}

WebStats WebService::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

LatencySummary WebService::PostLatency() const {
  return impl_->server->RecentLatency(kPostMessageRoute);
}

LatencySummary WebService::PostStoreLatency() const {
  return impl_->Summary(&Impl::post_store);
}

LatencySummary WebService::PostPublishLatency() const {
  return impl_->Summary(&Impl::post_publish);
}

std::string WebService::MetricsText() const {
  return impl_->Metrics();
}

}  // namespace tidepool::web
