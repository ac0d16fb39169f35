#include "llm/sim/llm_sim.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "common/cpu_list.h"

namespace tidepool::llm::sim {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

using Headers = std::map<std::string, std::string>;

struct Reply {
  int status = 0;
  bool complete = false;  // the whole response arrived (false: dropped or timed out)
  Headers headers;
  std::string body;
  double first_content_ms = -1;  // streaming: when the first content delta arrived
  double total_ms = 0;
};

double MillisSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// A blocking client over one connection. Each call has a deadline, so that a stalled server
// ends the call instead of the test.
class Client {
 public:
  explicit Client(int port, std::chrono::milliseconds timeout = std::chrono::seconds(10))
      : socket_(io_), timeout_(timeout) {
    socket_.connect(
        tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)));
  }

  Reply Call(http::verb method, const std::string& target, const std::string& body = "",
             const Headers& headers = {}) {
    http::request<http::string_body> req(method, target, 11);
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::content_type, "application/json");
    for (const auto& [name, value] : headers) req.set(name, value);
    req.body() = body;
    req.prepare_payload();
    Reply reply;
    const Clock::time_point start = Clock::now();
    const Clock::time_point deadline = start + timeout_;
    beast::error_code ec;
    http::write(socket_, req, ec);
    if (ec) return reply;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    bool header_seen = false;
    while (!parser.is_done()) {
      if (!ReadSome(parser, deadline)) break;
      if (!header_seen && parser.is_header_done()) {
        header_seen = true;
        reply.status = parser.get().result_int();
        for (const auto& field : parser.get()) {
          reply.headers[std::string(field.name_string())] = std::string(field.value());
        }
      }
      if (reply.first_content_ms < 0 &&
          parser.get().body().find("\"delta\":{\"content\"") != std::string::npos) {
        reply.first_content_ms = MillisSince(start);
      }
    }
    reply.body = parser.get().body();
    reply.complete = parser.is_done();
    reply.total_ms = MillisSince(start);
    return reply;
  }

  void Close() {
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
  }

 private:
  // One read step; false on an error, end of stream or the deadline.
  bool ReadSome(http::response_parser<http::string_body>& parser, Clock::time_point deadline) {
    bool done = false;
    beast::error_code result;
    http::async_read_some(socket_, buffer_, parser, [&](beast::error_code ec, size_t) {
      done = true;
      result = ec;
    });
    io_.restart();
    io_.run_until(deadline);
    if (!done) {
      beast::error_code ignored;
      socket_.cancel(ignored);
      io_.restart();
      io_.run();
      return false;
    }
    return !result;
  }

  asio::io_context io_;
  tcp::socket socket_;
  std::chrono::milliseconds timeout_;
  beast::flat_buffer buffer_;
};

std::string ChatBody(bool stream,
                     const std::string& user =
                         "Which woody fragrance suits the "
                         "office? I like Santal 33.",
                     const std::string& extra = "") {
  return R"({"model": "gpt-test", "stream": )" + std::string(stream ? "true" : "false") +
         R"(, "messages": [{"role": "system", "content": "You are a fragrance advisor."},
                           {"role": "user", "content": )" +
         json::serialize(json::string(user)) + "}]" + extra + "}";
}

Reply Chat(int port, const std::string& body, const Headers& headers = {},
           std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  Client client(port, timeout);
  return client.Call(http::verb::post, "/v1/chat/completions", body, headers);
}

// The JSON payloads of an SSE body; "[DONE]" as a string.
std::vector<json::value> SseEvents(const std::string& body) {
  std::vector<json::value> events;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    const std::string data = body.substr(pos + 6, end - pos - 6);
    events.push_back(data == "[DONE]" ? json::value("[DONE]") : json::parse(data));
    pos = end;
  }
  return events;
}

std::unique_ptr<LlmSim> StartSim(SimOptions options = {}) {
  options.threads = 2;
  auto sim = LlmSim::Start(std::move(options));
  EXPECT_TRUE(sim.ok()) << sim.status().ToString();
  return std::move(*sim);
}

// `up` keeps the sim off the web tier's CPU: its threads run on options.cpus at options.nice.
TEST(LlmSimTest, ThreadsRunOnTheGivenCpusAtTheGivenNiceness) {
  const std::vector<int> allowed = AllowedCpus();
  if (allowed.size() < 2) GTEST_SKIP() << "one CPU: pinned and unpinned threads look alike";
  const int cpu = allowed.back();
  SimOptions options;
  options.cpus = {cpu};
  options.nice = 7;
  auto sim = StartSim(std::move(options));
  Client client(sim->port());
  ASSERT_EQ(client.Call(http::verb::get, "/healthz").status, 200);
  // The sim's threads are this process's threads pinned to `cpu` alone (the test's own are not).
  int pinned = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream status(task.path() / "status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("Cpus_allowed_list:", 0) != 0) continue;
      const std::string list = line.substr(line.find_first_not_of(" \t", 18));
      if (list != std::to_string(cpu)) break;
      ++pinned;
      errno = 0;
      const int nice = ::getpriority(PRIO_PROCESS,
                                     static_cast<id_t>(std::stoi(task.path().filename().string())));
      EXPECT_EQ(errno, 0);
      EXPECT_EQ(nice, 7);
    }
  }
  EXPECT_EQ(pinned, 2) << "both sim threads pinned to CPU " << cpu;
}

TEST(LlmSimTest, ModelsHealthUnknownPathAndWrongMethod) {
  auto sim = StartSim();
  Client client(sim->port());
  const Reply models = client.Call(http::verb::get, "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(json::parse(models.body).at("data").at(0).at("id"), kSimModelName);
  // Keep-alive: the same connection serves the next requests.
  EXPECT_EQ(client.Call(http::verb::get, "/healthz").body, "ok\n");
  const Reply missing = client.Call(http::verb::get, "/v1/nope");
  EXPECT_EQ(missing.status, 404);
  EXPECT_NE(json::parse(missing.body).at("error").at("message").as_string().find("/v1/nope"),
            std::string::npos);
  EXPECT_EQ(client.Call(http::verb::get, "/v1/chat/completions").status, 405);
  EXPECT_EQ(sim->base_url(), "http://127.0.0.1:" + std::to_string(sim->port()) + "/v1");
}

TEST(LlmSimTest, NonStreamingShapeAndUsage) {
  auto sim = StartSim();
  const Reply r = Chat(sim->port(), ChatBody(false), {{"X-Sim-Output-Tokens", "40"}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json::value v = json::parse(r.body);
  EXPECT_EQ(v.at("object"), "chat.completion");
  EXPECT_EQ(v.at("model"), "tidepool-llm-sim (simulated: gpt-test)");
  const json::value& choice = v.at("choices").at(0);
  EXPECT_EQ(choice.at("index"), 0);
  EXPECT_EQ(choice.at("finish_reason"), "stop");
  EXPECT_EQ(choice.at("message").at("role"), "assistant");
  const std::string content(choice.at("message").at("content").as_string());
  EXPECT_NE(content.find("Santal 33"), std::string::npos) << content;
  const json::value& usage = v.at("usage");
  EXPECT_EQ(usage.at("completion_tokens"), 40);
  EXPECT_GT(usage.at("prompt_tokens").as_int64(), 10);
  EXPECT_EQ(usage.at("total_tokens").as_int64(),
            usage.at("prompt_tokens").as_int64() + usage.at("completion_tokens").as_int64());
  EXPECT_EQ(sim->counters().completed, 1u);
}

TEST(LlmSimTest, MaxTokensCapsOutputWithFinishReasonLength) {
  auto sim = StartSim();
  const Reply r = Chat(sim->port(), ChatBody(false, "hi", R"(, "max_completion_tokens": 5)"),
                       {{"X-Sim-Output-Tokens", "30"}});
  const json::value v = json::parse(r.body);
  EXPECT_EQ(v.at("choices").at(0).at("finish_reason"), "length");
  EXPECT_EQ(v.at("usage").at("completion_tokens"), 5);

  const Reply s = Chat(sim->port(), ChatBody(true, "hi", R"(, "max_tokens": 4)"),
                       {{"X-Sim-Output-Tokens", "30"}});
  const std::vector<json::value> events = SseEvents(s.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events[events.size() - 2].at("choices").at(0).at("finish_reason"), "length");
}

TEST(LlmSimTest, StreamingShapeMatchesNonStreamingContent) {
  auto sim = StartSim();
  const Headers headers{{"X-Sim-Output-Tokens", "20"}};
  const Reply s = Chat(sim->port(),
                       ChatBody(true, "Something fresh for summer?",
                                R"(, "stream_options": {"include_usage": true})"),
                       headers);
  ASSERT_EQ(s.status, 200);
  ASSERT_TRUE(s.complete);
  EXPECT_EQ(s.headers.at("Content-Type"), "text/event-stream");
  const std::vector<json::value> events = SseEvents(s.body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.front().at("choices").at(0).at("delta").at("role"), "assistant");
  std::string content;
  size_t i = 0;
  for (; i < events.size() && events[i].is_object(); ++i) {
    const json::value& e = events[i];
    EXPECT_EQ(e.at("object"), "chat.completion.chunk");
    EXPECT_EQ(e.at("model"), "tidepool-llm-sim (simulated: gpt-test)");
    if (e.at("choices").as_array().empty()) break;  // the usage chunk
    if (const json::value* c =
            e.at("choices").at(0).at("delta").as_object().if_contains("content")) {
      content += c->as_string();
    }
  }
  ASSERT_LT(i + 1, events.size());
  EXPECT_EQ(events[i - 1].at("choices").at(0).at("finish_reason"), "stop");
  EXPECT_EQ(events[i].at("usage").at("completion_tokens"), 20);
  EXPECT_EQ(events[i + 1], "[DONE]");
  EXPECT_EQ(i + 2, events.size());

  const Reply whole = Chat(sim->port(), ChatBody(false, "Something fresh for summer?"), headers);
  EXPECT_EQ(json::parse(whole.body).at("choices").at(0).at("message").at("content"),
            json::value(content))
      << "the same prompt gets the same reply, streamed or not";
}

TEST(LlmSimTest, TimeToFirstTokenAndPacingAreLowerBounds) {
  auto sim = StartSim();
  const Reply s = Chat(sim->port(), ChatBody(true),
                       {{"X-Sim-Ttft-Ms", "300"},
                        {"X-Sim-Tokens-Per-Second", "100"},
                        {"X-Sim-Output-Tokens", "11"}});
  ASSERT_TRUE(s.complete);
  EXPECT_GE(s.first_content_ms, 295);
  EXPECT_GE(s.total_ms, 295 + 100 - 5);  // 10 more tokens at 100/s
  const Reply whole = Chat(sim->port(), ChatBody(false), {{"X-Sim-Ttft-Ms", "200"}});
  EXPECT_GE(whole.total_ms, 195);

  SimOptions uniform;
  uniform.ttft = TtftModel::Uniform(150, 200);
  auto sim2 = StartSim(uniform);
  EXPECT_GE(Chat(sim2->port(), ChatBody(false)).total_ms, 145);
}

TEST(LlmSimTest, Forced429HasRetryAfter) {
  auto sim = StartSim();
  const Reply r =
      Chat(sim->port(), ChatBody(true), {{"X-Sim-Fail", "429"}, {"X-Sim-Retry-After", "7"}});
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.headers.at("Retry-After"), "7");
  EXPECT_EQ(json::parse(r.body).at("error").at("code"), "rate_limit_exceeded");
  EXPECT_EQ(sim->counters().injected_429, 1u);
}

TEST(LlmSimTest, Forced500) {
  auto sim = StartSim();
  const Reply r = Chat(sim->port(), ChatBody(false), {{"X-Sim-Fail", "500"}});
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(json::parse(r.body).at("error").at("type"), "server_error");
  EXPECT_EQ(sim->counters().injected_500, 1u);
}

TEST(LlmSimTest, ForcedDropClosesMidStreamOrBeforeReplying) {
  auto sim = StartSim();
  const Reply s =
      Chat(sim->port(), ChatBody(true), {{"X-Sim-Fail", "drop"}, {"X-Sim-Output-Tokens", "10"}});
  EXPECT_EQ(s.status, 200);
  EXPECT_FALSE(s.complete);
  EXPECT_NE(s.body.find("\"role\":\"assistant\""), std::string::npos);
  EXPECT_EQ(s.body.find("[DONE]"), std::string::npos);
  const Reply whole = Chat(sim->port(), ChatBody(false), {{"X-Sim-Fail", "drop"}});
  EXPECT_EQ(whole.status, 0);
  EXPECT_EQ(sim->counters().injected_drop, 2u);
}

TEST(LlmSimTest, ForcedStallPausesThenFinishes) {
  auto sim = StartSim();
  const Reply s =
      Chat(sim->port(), ChatBody(true), {{"X-Sim-Fail", "stall"}, {"X-Sim-Stall-Seconds", "1"}});
  EXPECT_TRUE(s.complete);
  EXPECT_GE(s.total_ms, 990);
  EXPECT_NE(s.body.find("[DONE]"), std::string::npos);
}

TEST(LlmSimTest, StallForeverLastsUntilTheClientGivesUp) {
  auto sim = StartSim();
  Client client(sim->port(), std::chrono::milliseconds(400));
  const Reply s = client.Call(http::verb::post, "/v1/chat/completions", ChatBody(true),
                              {{"X-Sim-Fail", "stall"}, {"X-Sim-Output-Tokens", "10"}});
  EXPECT_FALSE(s.complete);
  EXPECT_GE(s.total_ms, 390);
  EXPECT_EQ(sim->counters().in_flight, 1u);
  client.Close();
  // The server notices the client left and frees the slot.
  const Clock::time_point start = Clock::now();
  while (sim->counters().in_flight != 0 && MillisSince(start) < 5000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(sim->counters().in_flight, 0u);
  EXPECT_EQ(sim->counters().injected_stall, 1u);
}

TEST(LlmSimTest, StopEndsStalledStreams) {
  auto sim = StartSim();
  std::thread caller([port = sim->port()] {
    const Reply s = Chat(port, ChatBody(true), {{"X-Sim-Fail", "stall"}});
    EXPECT_FALSE(s.complete);
  });
  const Clock::time_point start = Clock::now();
  while (sim->counters().in_flight == 0 && MillisSince(start) < 5000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  sim->Stop();
  caller.join();
  EXPECT_LT(MillisSince(start), 5000);
}

TEST(LlmSimTest, OverMaxConcurrencyIs429) {
  SimOptions options;
  options.max_concurrency = 2;
  options.retry_after_seconds = 3;
  auto sim = StartSim(options);
  std::vector<std::thread> holders;
  for (int i = 0; i < 2; ++i) {
    holders.emplace_back([port = sim->port()] {
      EXPECT_EQ(Chat(port, ChatBody(true), {{"X-Sim-Ttft-Ms", "1500"}}).status, 200);
    });
  }
  const Clock::time_point start = Clock::now();
  while (sim->counters().in_flight < 2 && MillisSince(start) < 5000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const Reply r = Chat(sim->port(), ChatBody(false));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.headers.at("Retry-After"), "3");
  for (std::thread& t : holders) t.join();
  const SimCounters c = sim->counters();
  EXPECT_EQ(c.rejected_concurrency, 1u);
  EXPECT_EQ(c.peak_in_flight, 2u);
  EXPECT_EQ(Chat(sim->port(), ChatBody(false)).status, 200) << "slots are released";
}

TEST(LlmSimTest, ErrorRatesFromOptions) {
  SimOptions options;
  options.error_500_rate = 1;
  auto sim = StartSim(options);
  EXPECT_EQ(Chat(sim->port(), ChatBody(false)).status, 500);
  options.error_500_rate = 1.5;
  EXPECT_FALSE(ValidateOptions(options).ok());
  options.error_500_rate = 0.6;
  options.drop_rate = 0.6;
  EXPECT_FALSE(ValidateOptions(options).ok());
}

TEST(LlmSimTest, JsonSchemaReplyIsFilledFromUserWords) {
  auto sim = StartSim();
  const std::string format = R"(, "response_format": {"type": "json_schema", "json_schema": {
      "name": "discovery", "strict": true, "schema": {
        "type": "object", "additionalProperties": false,
        "required": ["families", "notes_avoided", "budget_max"],
        "properties": {
          "families": {"type": "array", "items": {"type": "string",
                       "enum": ["woody", "fresh", "floral"]},
                       "description": "synonyms: woody=cedar|sandalwood; fresh=clean"},
          "notes_avoided": {"type": "array", "items": {"type": "string",
                            "enum": ["vanilla", "oud", "rose"]}},
          "budget_max": {"type": ["number", "null"]}}}}})";
  const std::string user = "Clean or cedar, please. I hate vanilla. Budget 90.";
  for (bool stream : {false, true}) {
    const Reply r = Chat(sim->port(), ChatBody(stream, user, format));
    ASSERT_EQ(r.status, 200) << r.body;
    std::string content;
    if (stream) {
      for (const json::value& e : SseEvents(r.body)) {
        if (!e.is_object() || e.at("choices").as_array().empty()) continue;
        const json::object& delta = e.at("choices").at(0).at("delta").as_object();
        if (delta.contains("content")) content += delta.at("content").as_string();
      }
    } else {
      content = json::parse(r.body).at("choices").at(0).at("message").at("content").as_string();
    }
    const json::value v = json::parse(content);
    EXPECT_EQ(v.at("families"), json::parse(R"(["fresh", "woody"])")) << content;
    EXPECT_EQ(v.at("notes_avoided"), json::parse(R"(["vanilla"])")) << content;
    EXPECT_EQ(v.at("budget_max").to_number<double>(), 90) << content;
  }
  const Reply object =
      Chat(sim->port(), ChatBody(false, "hi", R"(, "response_format": {"type": "json_object"})"));
  EXPECT_TRUE(
      json::parse(
          json::parse(object.body).at("choices").at(0).at("message").at("content").as_string())
          .is_object());
}

TEST(LlmSimTest, BadRequestsAre400NamingTheField) {
  auto sim = StartSim();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "body"},
      {R"({"model": "m"})", "messages"},
      {R"({"messages": [{"role": "user", "content": "x"}]})", "model"},
      {R"({"model": "m", "messages": [{"role": "robot", "content": "x"}]})", "messages[0].role"},
      {R"({"model": "m", "messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})",
       "max_tokens"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"})",
       "stream"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
           "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})",
       "response_format.json_schema.schema"},
  };
  for (const auto& [body, field] : cases) {
    const Reply r = Chat(sim->port(), body);
    ASSERT_EQ(r.status, 400) << body << " -> " << r.body;
    const json::value error = json::parse(r.body).at("error");
    EXPECT_EQ(error.at("param"), json::value(field)) << r.body;
    EXPECT_EQ(error.at("message").as_string().find(field), 0u) << r.body;
    EXPECT_EQ(error.at("type"), "invalid_request_error");
  }
  const Reply header = Chat(sim->port(), ChatBody(false), {{"X-Sim-Fail", "sometimes"}});
  EXPECT_EQ(header.status, 400);
  EXPECT_EQ(json::parse(header.body).at("error").at("param"), "X-Sim-Fail");
  EXPECT_EQ(sim->counters().bad_requests, cases.size() + 1);
}

}  // namespace
}  // namespace tidepool::llm::sim
