// LlmClient against the real llm-sim, started in-process, and against a tiny HTTP(S) server
// of this file's own for what the simulator does not do (TLS, echoing the Authorization header).
#include "llm/client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/json.hpp>

#include "llm/sim/llm_sim.h"

namespace tidepool::llm {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr char kModel[] = "test-model";
constexpr int kOutputTokens = 20;

ChatRequest Hello(std::vector<std::pair<std::string, std::string>> headers = {}) {
  ChatRequest request;
  request.model = kModel;
  request.messages = {{"system", "You are terse."}, {"user", "Say hello to the tide pool."}};
  request.headers = std::move(headers);
  return request;
}

// Options that make failures quick to observe.
ProviderOptions FastOptions(const std::string& base_url) {
  ProviderOptions options;
  options.base_url = base_url;
  options.initial_backoff = milliseconds(20);
  options.max_backoff = milliseconds(100);
  options.max_retries = 3;
  options.connect_timeout = milliseconds(2'000);
  options.first_token_timeout = milliseconds(5'000);
  options.total_timeout = milliseconds(10'000);
  return options;
}

// Runs `task` on `io` until it and everything it spawned finish. (Not co_spawn's use_future:
// Result has no default constructor.)
template <typename T>
T RunOn(asio::io_context& io, asio::awaitable<T> task) {
  std::optional<T> out;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { out.emplace(co_await std::move(task)); },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  io.restart();
  io.run();
  return std::move(*out);
}

inline void RunOn(asio::io_context& io, asio::awaitable<void> task) {
  asio::co_spawn(io, std::move(task), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  io.restart();
  io.run();
}

class LlmClientTest : public ::testing::Test {
 protected:
  void StartSim(sim::SimOptions options = {}) {
    options.threads = 1;
    options.output_tokens_min = kOutputTokens;
    options.output_tokens_max = kOutputTokens;
    auto sim_or = sim::LlmSim::Start(options);
    ASSERT_TRUE(sim_or.ok()) << sim_or.status().ToString();
    sim_ = std::move(sim_or).value();
  }

  std::unique_ptr<LlmClient> MakeClient(ProviderOptions options) {
    auto client = LlmClient::Create(io_.get_executor(), std::move(options));
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(client).value() : nullptr;
  }

  // Runs `task` on the test's io_context until it finishes.
  template <typename T>
  T Run(asio::awaitable<T> task) {
    return RunOn(io_, std::move(task));
  }

  // Streams `request`, collecting the deltas into `*deltas`.
  Result<ChatResult> RunStream(LlmClient& client, ChatRequest request, std::string* deltas) {
    return Run(client.Stream(std::move(request),
                             [deltas](std::string_view delta) { deltas->append(delta); }));
  }

  asio::io_context io_;
  std::unique_ptr<sim::LlmSim> sim_;
};

TEST_F(LlmClientTest, CompleteReturnsContentAndUsage) {
  StartSim();
  auto client = MakeClient(FastOptions(sim_->base_url()));
  auto result = Run(client->Complete(Hello()));
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_FALSE(result->content.empty());
  EXPECT_EQ(result->finish_reason, "stop");
  EXPECT_EQ(result->attempts, 1);
  EXPECT_EQ(result->usage.completion_tokens, kOutputTokens);
  EXPECT_GT(result->usage.prompt_tokens, 0);
  EXPECT_EQ(result->usage.total_tokens,
            result->usage.prompt_tokens + result->usage.completion_tokens);
  EXPECT_NE(result->model.find(kModel), std::string::npos);
}

TEST_F(LlmClientTest, StreamDeltasConcatenateToContentAndUsageArrives) {
  StartSim();
  auto client = MakeClient(FastOptions(sim_->base_url()));
  std::string deltas;
  int calls = 0;
  auto result = Run(client->Stream(Hello(), [&](std::string_view delta) {
    deltas.append(delta);
    ++calls;
  }));
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(deltas, result->content);
  EXPECT_GE(calls, 2);
  EXPECT_EQ(result->finish_reason, "stop");
  EXPECT_EQ(result->usage.completion_tokens, kOutputTokens);
  EXPECT_GT(result->usage.prompt_tokens, 0);
  // Streaming and non-streaming replies to the same prompt agree.
  auto whole = Run(client->Complete(Hello()));
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->content, result->content);
  const ClientStats stats = client->stats();
  EXPECT_EQ(stats.succeeded, 2u);
  EXPECT_EQ(stats.completion_tokens, 2u * kOutputTokens);
}

TEST_F(LlmClientTest, TimeToFirstTokenReflectsServerDelay) {
  StartSim();
  auto client = MakeClient(FastOptions(sim_->base_url()));
  std::string deltas;
  auto result = RunStream(*client, Hello({{"X-Sim-Ttft-Ms", "200"}}), &deltas);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_GE(result->time_to_first_token, milliseconds(200));
  EXPECT_GE(result->total_time, result->time_to_first_token);
}

// Each token is its own HTTP chunk; a delta must reach the caller when its chunk arrives, not
// when the next chunk's size line does.
TEST_F(LlmClientTest, EachDeltaArrivesWhenItsTokenIsSentNotWithTheNext) {
  constexpr milliseconds kTokenGap{400};
  StartSim();
  auto client = MakeClient(FastOptions(sim_->base_url()));
  std::vector<Clock::time_point> arrivals;
  const auto start = Clock::now();
  auto result = Run(client->Stream(Hello({{"X-Sim-Ttft-Ms", "50"},
                                          {"X-Sim-Tokens-Per-Second", "2.5"},
                                          {"X-Sim-Output-Tokens", "3"}}),
                                   [&](std::string_view) { arrivals.push_back(Clock::now()); }));
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_EQ(arrivals.size(), 3u);
  // The tokens are sent 50, 450 and 850 ms after the request.
  EXPECT_LT(arrivals[0] - start, kTokenGap);
  EXPECT_LT(arrivals[1] - start, 2 * kTokenGap);
  EXPECT_GT(arrivals[1] - arrivals[0], kTokenGap / 2);
  EXPECT_GT(arrivals[2] - arrivals[1], kTokenGap / 2);
}

TEST_F(LlmClientTest, JsonSchemaReplyParsesAndHasRequiredFields) {
  StartSim();
  auto client = MakeClient(FastOptions(sim_->base_url()));
  ChatRequest request = Hello();
  request.messages = {{"user", "I want a fresh citrus perfume under $80, nothing woody."}};
  request.json_schema = ChatRequest::JsonSchema{.name = "perfume_query", .schema = json::parse(R"({
        "type": "object",
        "properties": {
          "mood": {"type": "string", "enum": ["fresh", "woody", "sweet"]},
          "max_price": {"type": "number", "minimum": 0},
          "gift": {"type": "boolean"}
        },
        "required": ["mood", "max_price", "gift"],
        "additionalProperties": false
      })")};
  for (bool stream : {false, true}) {
    std::string deltas;
    auto result = stream ? RunStream(*client, request, &deltas) : Run(client->Complete(request));
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    boost::system::error_code ec;
    const json::value reply = json::parse(result->content, ec);
    ASSERT_FALSE(ec) << result->content;
    ASSERT_TRUE(reply.is_object());
    const auto& object = reply.as_object();
    ASSERT_TRUE(object.contains("mood") && object.at("mood").is_string()) << result->content;
    ASSERT_TRUE(object.contains("max_price") && object.at("max_price").is_number());
    ASSERT_TRUE(object.contains("gift") && object.at("gift").is_bool());
    EXPECT_EQ(object.at("mood").as_string(), "fresh");
  }
}

TEST_F(LlmClientTest, RequestBodyCarriesResponseFormatAndStreamOptions) {
  ChatRequest request = Hello();
  request.max_tokens = 64;
  request.temperature = 0.5;
  request.json_object = true;
  const json::value body = json::parse(LlmClient::BuildRequestBody(request, true));
  EXPECT_EQ(body.at("model").as_string(), kModel);
  EXPECT_EQ(body.at("messages").as_array().size(), 2u);
  EXPECT_EQ(body.at("max_tokens").as_int64(), 64);
  EXPECT_TRUE(body.at("stream").as_bool());
  EXPECT_TRUE(body.at("stream_options").at("include_usage").as_bool());
  EXPECT_EQ(body.at("response_format").at("type").as_string(), "json_object");
  const json::value plain = json::parse(LlmClient::BuildRequestBody(Hello(), false));
  EXPECT_FALSE(plain.as_object().contains("stream_options"));
  EXPECT_FALSE(plain.as_object().contains("response_format"));
}

TEST_F(LlmClientTest, RateLimitStormIsRiddenOutHonouringRetryAfter) {
  // The sim admits two requests at a time and answers the rest 429 with Retry-After: 1.
  sim::SimOptions sim_options;
  sim_options.max_concurrency = 2;
  sim_options.retry_after_seconds = 1;
  sim_options.ttft = sim::TtftModel::Fixed(100);
  StartSim(sim_options);
  ProviderOptions options = FastOptions(sim_->base_url());
  options.max_retries = 8;
  auto client = MakeClient(options);
  constexpr int kCalls = 6;
  int succeeded = 0;
  int max_attempts = 0;
  const auto start = Clock::now();
  auto all = [&]() -> asio::awaitable<void> {
    auto one = [&]() -> asio::awaitable<void> {
      std::string deltas;
      auto result = co_await client->Stream(Hello(), [&](std::string_view d) { deltas += d; });
      if (result.ok()) {
        ++succeeded;
        max_attempts = std::max(max_attempts, result->attempts);
      } else {
        ADD_FAILURE() << result.status().ToString();
      }
    };
    for (int i = 0; i < kCalls; ++i) asio::co_spawn(io_, one, asio::detached);
    co_return;
  };
  Run(all());
  const auto elapsed = Clock::now() - start;
  EXPECT_EQ(succeeded, kCalls);
  EXPECT_GE(max_attempts, 2);
  EXPECT_GT(client->stats().rate_limited, 0u);
  EXPECT_GT(sim_->counters().rejected_concurrency, 0u);
  // Lower bound only: a refused call waited at least the Retry-After second.
  EXPECT_GE(elapsed, std::chrono::seconds(1));
}

TEST_F(LlmClientTest, PersistentRateLimitEndsResourceExhaustedAfterRetryAfterWaits) {
  StartSim();
  ProviderOptions options = FastOptions(sim_->base_url());
  options.max_retries = 1;
  auto client = MakeClient(options);
  const auto start = Clock::now();
  auto result = Run(client->Complete(Hello({{"X-Sim-Fail", "429"}, {"X-Sim-Retry-After", "1"}})));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(result.status().message().find("429"), std::string::npos);
  EXPECT_GE(Clock::now() - start, std::chrono::seconds(1));
  EXPECT_EQ(sim_->counters().injected_429, 2u);
}

TEST_F(LlmClientTest, ServerErrorsAreRetriedThenSucceed) {
  sim::SimOptions sim_options;
  sim_options.error_500_rate = 0.5;
  sim_options.seed = 7;
  StartSim(sim_options);
  ProviderOptions options = FastOptions(sim_->base_url());
  options.max_retries = 12;  // P(13 failures in a row) = 2^-13 per call
  auto client = MakeClient(options);
  constexpr int kCalls = 8;
  for (int i = 0; i < kCalls; ++i) {
    auto result = Run(client->Complete(Hello()));
    ASSERT_TRUE(result.ok()) << result.status().ToString();
  }
  EXPECT_GT(sim_->counters().injected_500, 0u);
  EXPECT_EQ(client->stats().retries, sim_->counters().injected_500);
}

TEST_F(LlmClientTest, PersistentServerErrorIsUnavailableAfterAllAttempts) {
  StartSim();
  ProviderOptions options = FastOptions(sim_->base_url());
  options.max_retries = 2;
  auto client = MakeClient(options);
  auto result = Run(client->Complete(Hello({{"X-Sim-Fail", "500"}})));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(sim_->counters().injected_500, 3u);
  EXPECT_NE(result.status().message().find("after 3 attempts"), std::string::npos);
}

TEST_F(LlmClientTest, BadRequestIsNotRetried) {
  StartSim();
  auto client = MakeClient(FastOptions(sim_->base_url()));
  auto result = Run(client->Complete(Hello({{"X-Sim-Fail", "teapot"}})));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("teapot"), std::string::npos)
      << result.status().ToString();
  EXPECT_EQ(client->stats().attempts, 1u);
}

TEST_F(LlmClientTest, DropBeforeFirstTokenIsRetried) {
  StartSim();
  ProviderOptions options = FastOptions(sim_->base_url());
  options.max_retries = 2;
  auto client = MakeClient(options);
  // A non-streamed reply is dropped before anything is sent; a one-token stream drops before
  // its only token. Both are retried every time, so every attempt shows up at the sim.
  auto whole = Run(client->Complete(Hello({{"X-Sim-Fail", "drop"}})));
  ASSERT_FALSE(whole.ok());
  EXPECT_EQ(whole.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(sim_->counters().injected_drop, 3u);
  std::string deltas;
  auto streamed =
      RunStream(*client, Hello({{"X-Sim-Fail", "drop"}, {"X-Sim-Output-Tokens", "1"}}), &deltas);
  ASSERT_FALSE(streamed.ok());
  EXPECT_EQ(deltas, "");
  EXPECT_EQ(sim_->counters().injected_drop, 6u);
}

TEST_F(LlmClientTest, DroppedConnectionsAreRetriedToSuccess) {
  sim::SimOptions sim_options;
  sim_options.drop_rate = 0.5;
  sim_options.seed = 11;
  sim_options.output_tokens_min = 1;
  StartSim(sim_options);
  ProviderOptions options = FastOptions(sim_->base_url());
  options.max_retries = 12;
  auto client = MakeClient(options);
  constexpr int kCalls = 8;
  for (int i = 0; i < kCalls; ++i) {
    auto result = Run(client->Complete(Hello()));
    ASSERT_TRUE(result.ok()) << result.status().ToString();
  }
  EXPECT_GT(sim_->counters().injected_drop, 0u);
}

TEST_F(LlmClientTest, DropMidStreamIsAnErrorWithoutRetry) {
  StartSim();
  auto client = MakeClient(FastOptions(sim_->base_url()));
  std::string deltas;
  auto result = RunStream(*client, Hello({{"X-Sim-Fail", "drop"}}), &deltas);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kUnavailable);
  EXPECT_FALSE(deltas.empty());
  EXPECT_EQ(client->stats().attempts, 1u);
  EXPECT_EQ(sim_->counters().injected_drop, 1u);
}

TEST_F(LlmClientTest, StallBeforeFirstTokenHitsFirstTokenTimeout) {
  StartSim();
  ProviderOptions options = FastOptions(sim_->base_url());
  options.first_token_timeout = milliseconds(300);
  auto client = MakeClient(options);
  std::string deltas;
  const auto start = Clock::now();
  auto result =
      RunStream(*client, Hello({{"X-Sim-Fail", "stall"}, {"X-Sim-Output-Tokens", "1"}}), &deltas);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(result.status().message().find("first-token"), std::string::npos);
  EXPECT_GE(Clock::now() - start, milliseconds(300));
  EXPECT_LT(Clock::now() - start, milliseconds(3'000));
}

TEST_F(LlmClientTest, StallMidStreamHitsIdleTimeoutAndIsNotRetried) {
  StartSim();
  ProviderOptions options = FastOptions(sim_->base_url());
  options.idle_timeout = milliseconds(300);
  auto client = MakeClient(options);
  std::string deltas;
  auto result = RunStream(*client, Hello({{"X-Sim-Fail", "stall"}}), &deltas);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(deltas.empty());
  EXPECT_EQ(client->stats().attempts, 1u);
}

TEST_F(LlmClientTest, TotalTimeoutBoundsANonStreamedCall) {
  StartSim();
  ProviderOptions options = FastOptions(sim_->base_url());
  options.total_timeout = milliseconds(400);
  auto client = MakeClient(options);
  const auto start = Clock::now();
  auto result = Run(client->Complete(Hello({{"X-Sim-Fail", "stall"}})));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(result.status().message().find("total timeout"), std::string::npos);
  EXPECT_GE(Clock::now() - start, milliseconds(400));
  EXPECT_LT(Clock::now() - start, milliseconds(3'000));
}

TEST_F(LlmClientTest, TotalTimeoutCutsASlowStream) {
  StartSim();
  ProviderOptions options = FastOptions(sim_->base_url());
  options.total_timeout = milliseconds(500);
  auto client = MakeClient(options);
  std::string deltas;
  // 20 tokens at 10/s take two seconds.
  auto result = RunStream(*client, Hello({{"X-Sim-Tokens-Per-Second", "10"}}), &deltas);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(deltas.empty());
}

TEST_F(LlmClientTest, ConcurrencyLimitIsNeverExceeded) {
  sim::SimOptions sim_options;
  sim_options.ttft = sim::TtftModel::Fixed(30);
  StartSim(sim_options);
  ProviderOptions options = FastOptions(sim_->base_url());
  constexpr int kLimit = 3;
  constexpr int kCalls = 15;
  options.limits.max_concurrency = kLimit;
  auto client = MakeClient(options);
  int succeeded = 0;
  auto all = [&]() -> asio::awaitable<void> {
    for (int i = 0; i < kCalls; ++i) {
      asio::co_spawn(
          io_,
          [&]() -> asio::awaitable<void> {
            auto result = co_await client->Stream(Hello(), nullptr);
            if (result.ok()) ++succeeded;
          },
          asio::detached);
    }
    co_return;
  };
  Run(all());
  EXPECT_EQ(succeeded, kCalls);
  EXPECT_EQ(sim_->counters().peak_in_flight, static_cast<uint64_t>(kLimit));
  EXPECT_EQ(client->stats().peak_in_flight, static_cast<uint64_t>(kLimit));
}

TEST_F(LlmClientTest, ManyStreamsOnSeveralThreads) {
  sim::SimOptions sim_options;
  sim_options.ttft = sim::TtftModel::Fixed(20);
  sim_options.tokens_per_second = 200;
  StartSim(sim_options);
  ProviderOptions options = FastOptions(sim_->base_url());
  constexpr int kLimit = 64;
  constexpr int kCalls = 300;
  constexpr int kThreads = 2;
  options.limits.max_concurrency = kLimit;
  options.max_idle_connections = kLimit;
  auto client = MakeClient(options);
  const std::string expected = Run(client->Complete(Hello()))->content;
  std::atomic<int> matched{0};
  for (int i = 0; i < kCalls; ++i) {
    asio::co_spawn(
        io_,
        [&]() -> asio::awaitable<void> {
          std::string deltas;
          auto result =
              co_await client->Stream(Hello(), [&](std::string_view d) { deltas.append(d); });
          if (result.ok() && deltas == expected && result->content == expected) ++matched;
        },
        asio::detached);
  }
  io_.restart();
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back([this] { io_.run(); });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(matched.load(), kCalls);
  EXPECT_LE(sim_->counters().peak_in_flight, static_cast<uint64_t>(kLimit));
  const ClientStats stats = client->stats();
  EXPECT_EQ(stats.in_flight, 0u);
  EXPECT_LE(stats.connections_opened, static_cast<uint64_t>(kLimit) + 1);
}

TEST_F(LlmClientTest, RequestsPerMinuteBucketPacesRequests) {
  StartSim();
  ProviderOptions options = FastOptions(sim_->base_url());
  options.limits.requests_per_minute = 600;  // 10 per second
  options.rate_burst = milliseconds(100);    // a bucket of one request
  auto client = MakeClient(options);
  constexpr int kCalls = 6;
  const auto start = Clock::now();
  for (int i = 0; i < kCalls; ++i) ASSERT_TRUE(Run(client->Complete(Hello())).ok());
  // The first goes at once, each further one a tenth of a second later.
  EXPECT_GE(Clock::now() - start, milliseconds(450));
}

TEST_F(LlmClientTest, PerModelLimitsOverrideTheDefault) {
  StartSim();
  ProviderOptions options = FastOptions(sim_->base_url());
  options.limits.requests_per_minute = 60;  // would take seconds for three calls
  options.model_limits["fast-model"] = ModelLimits{};
  options.rate_burst = milliseconds(1'000);
  auto client = MakeClient(options);
  const auto start = Clock::now();
  for (int i = 0; i < 3; ++i) {
    ChatRequest request = Hello();
    request.model = "fast-model";
    ASSERT_TRUE(Run(client->Complete(request)).ok());
  }
  EXPECT_LT(Clock::now() - start, milliseconds(900));
}

TEST_F(LlmClientTest, KeepAliveReusesOneConnection) {
  StartSim();
  auto client = MakeClient(FastOptions(sim_->base_url()));
  constexpr int kCalls = 5;
  for (int i = 0; i < kCalls; ++i) {
    std::string deltas;
    ASSERT_TRUE(
        (i % 2 == 0 ? Run(client->Complete(Hello())) : RunStream(*client, Hello(), &deltas)).ok());
  }
  EXPECT_EQ(client->stats().connections_opened, 1u);
  EXPECT_EQ(client->stats().connections_reused, static_cast<uint64_t>(kCalls - 1));
}

TEST_F(LlmClientTest, BrokenConnectionIsNotReused) {
  StartSim();
  auto client = MakeClient(FastOptions(sim_->base_url()));
  std::string deltas;
  ASSERT_FALSE(RunStream(*client, Hello({{"X-Sim-Fail", "drop"}}), &deltas).ok());
  ASSERT_TRUE(Run(client->Complete(Hello())).ok());
  EXPECT_EQ(client->stats().connections_opened, 2u);
  EXPECT_EQ(client->stats().connections_reused, 0u);
}

TEST_F(LlmClientTest, ConnectionRefusedIsRetriedThenUnavailable) {
  // Bind and close a port so that nothing listens on it.
  asio::ip::tcp::acceptor acceptor(io_, {asio::ip::make_address("127.0.0.1"), 0});
  const int port = acceptor.local_endpoint().port();
  acceptor.close();
  ProviderOptions options = FastOptions("http://127.0.0.1:" + std::to_string(port) + "/v1");
  options.max_retries = 2;
  auto client = MakeClient(options);
  auto result = Run(client->Complete(Hello()));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(client->stats().attempts, 3u);
}

TEST(LlmClientOptionsTest, BadBaseUrlAndMissingKeyAreErrors) {
  asio::io_context io;
  ProviderOptions options;
  options.base_url = "ftp://example.com";
  EXPECT_EQ(LlmClient::Create(io.get_executor(), options).status().code(),
            StatusCode::kInvalidArgument);
  options.base_url = "http://127.0.0.1:1/v1";
  options.api_key_env = "TIDEPOOL_LLM_TEST_UNSET_KEY_VARIABLE";
  EXPECT_EQ(LlmClient::Create(io.get_executor(), options).status().code(),
            StatusCode::kUnauthenticated);
}

TEST(LlmClientOptionsTest, ApiKeyFromFileIsTrimmed) {
  const auto path = std::filesystem::temp_directory_path() / "tidepool_llm_key_test";
  std::ofstream(path) << "  sk-from-file \n";
  auto key = LoadApiKey("", path.string());
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(*key, "sk-from-file");
  std::filesystem::remove(path);
  EXPECT_EQ(LoadApiKey("", path.string()).status().code(), StatusCode::kUnauthenticated);
}

TEST(RetryAfterTest, SecondsAndHttpDates) {
  EXPECT_EQ(ParseRetryAfter("2"), milliseconds(2'000));
  EXPECT_EQ(ParseRetryAfter(" 0.5 "), milliseconds(500));
  EXPECT_EQ(ParseRetryAfter("-1"), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("soon"), std::nullopt);
  const auto now = std::chrono::system_clock::from_time_t(1445412470);  // 07:27:50 GMT
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", now), milliseconds(10'000));
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:27:00 GMT", now), milliseconds(0));
}

// ---- a tiny HTTP(S) server for TLS and for echoing the key back

// Serves every request with `reply(authorization header)` until destroyed; one thread.
class TinyServer {
 public:
  using Reply = std::function<http::response<http::string_body>(std::string_view authorization)>;

  TinyServer(asio::ssl::context* tls, Reply reply, const char* address = "127.0.0.1")
      : tls_(tls), reply_(std::move(reply)), acceptor_(io_, {asio::ip::make_address(address), 0}) {
    asio::co_spawn(io_, Accept(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TinyServer() {
    io_.stop();
    thread_.join();
  }
  int port() const { return acceptor_.local_endpoint().port(); }

 private:
  asio::awaitable<void> Accept() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      asio::co_spawn(io_, Serve(std::move(socket)), asio::detached);
    }
  }
  asio::awaitable<void> Serve(asio::ip::tcp::socket socket) {
    if (tls_ == nullptr) {
      beast::tcp_stream stream(std::move(socket));
      co_await Exchange(stream);
      co_return;
    }
    beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *tls_);
    auto [ec] = co_await stream.async_handshake(asio::ssl::stream_base::server,
                                                asio::as_tuple(asio::use_awaitable));
    if (!ec) co_await Exchange(stream);
  }
  template <typename AsyncStream>
  asio::awaitable<void> Exchange(AsyncStream& stream) {
    beast::flat_buffer buffer;
    for (;;) {
      http::request<http::string_body> request;
      auto [ec, n] =
          co_await http::async_read(stream, buffer, request, asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      auto response = reply_(request[http::field::authorization]);
      response.keep_alive(request.keep_alive());
      response.prepare_payload();
      auto [wec, wn] =
          co_await http::async_write(stream, response, asio::as_tuple(asio::use_awaitable));
      if (wec) co_return;
    }
  }

  asio::io_context io_;
  asio::ssl::context* tls_;
  Reply reply_;
  asio::ip::tcp::acceptor acceptor_;
  std::thread thread_;
};

http::response<http::string_body> CannedCompletion(std::string_view) {
  http::response<http::string_body> response{http::status::ok, 11};
  response.set(http::field::content_type, "application/json");
  response.body() = R"({"model":"canned","choices":[{"index":0,"message":{"role":"assistant",)"
                    R"("content":"over TLS"},"finish_reason":"stop"}],)"
                    R"("usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}})";
  return response;
}

TEST(LlmClientSecretTest, ApiKeyNeverAppearsInErrors) {
  constexpr char kKey[] = "sk-test-DO-NOT-LEAK-0123456789";
  constexpr char kEnv[] = "TIDEPOOL_LLM_CLIENT_TEST_KEY";
  ::setenv(kEnv, kKey, 1);
  std::string seen_authorization;
  // Like some providers, the server quotes the key it was given in its 401.
  TinyServer server(nullptr, [&](std::string_view authorization) {
    seen_authorization = authorization;
    http::response<http::string_body> response{http::status::unauthorized, 11};
    response.set(http::field::content_type, "application/json");
    response.body() = json::serialize(json::object{
        {"error",
         json::object{{"message", "Incorrect API key provided: " + std::string(authorization)}}}});
    return response;
  });
  asio::io_context io;
  ProviderOptions options =
      FastOptions("http://127.0.0.1:" + std::to_string(server.port()) + "/v1");
  options.api_key_env = kEnv;
  auto client = LlmClient::Create(io.get_executor(), options);
  ASSERT_TRUE(client.ok());
  auto result = RunOn(io, (*client)->Complete(Hello()));
  ::unsetenv(kEnv);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(seen_authorization, std::string("Bearer ") + kKey);
  EXPECT_EQ(result.status().ToString().find(kKey), std::string::npos) << result.status().ToString();
  EXPECT_NE(result.status().message().find("[redacted]"), std::string::npos);
  EXPECT_EQ((*client)->stats().attempts, 1u);  // 401 is not retried
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        std::filesystem::temp_directory_path() / ("tidepool_llm_tls_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    const std::string command =
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
        "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
        (dir_ / "key.pem").string() + " -out " + (dir_ / "cert.pem").string() + " >/dev/null 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << "openssl CLI needed to make a test certificate";
    server_tls_.use_certificate_chain_file((dir_ / "cert.pem").string());
    server_tls_.use_private_key_file((dir_ / "key.pem").string(), asio::ssl::context::pem);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  Result<ChatResult> CallOnce(ProviderOptions options) {
    asio::io_context io;
    auto client = LlmClient::Create(io.get_executor(), std::move(options));
    if (!client.ok()) return client.status();
    return RunOn(io, (*client)->Complete(Hello()));
  }

  std::filesystem::path dir_;
  asio::ssl::context server_tls_{asio::ssl::context::tls_server};
};

TEST_F(TlsTest, TrustedCaFileSucceedsByNameAndByAddress) {
  TinyServer server(&server_tls_, CannedCompletion);
  for (const std::string host : {"localhost", "127.0.0.1"}) {
    ProviderOptions options =
        FastOptions("https://" + host + ":" + std::to_string(server.port()) + "/v1");
    options.ca_file = (dir_ / "cert.pem").string();
    auto result = CallOnce(options);
    ASSERT_TRUE(result.ok()) << host << ": " << result.status().ToString();
    EXPECT_EQ(result->content, "over TLS");
    EXPECT_EQ(result->usage.total_tokens, 5);
  }
}

TEST_F(TlsTest, UntrustedCertificateFailsWithoutRetry) {
  TinyServer server(&server_tls_, CannedCompletion);
  ProviderOptions options =
      FastOptions("https://localhost:" + std::to_string(server.port()) + "/v1");
  auto result = CallOnce(options);  // the system store does not know the self-signed cert
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(result.status().message().find("certificate not trusted"), std::string::npos)
      << result.status().ToString();
  // A certificate problem is not retried: the message has no attempt count.
  EXPECT_EQ(result.status().message().find("attempts"), std::string::npos);
}

TEST_F(TlsTest, WrongHostNameFails) {
  // The certificate names localhost and 127.0.0.1, not 127.0.0.2 (also loopback on Linux).
  TinyServer server(&server_tls_, CannedCompletion, "127.0.0.2");
  ProviderOptions options =
      FastOptions("https://127.0.0.2:" + std::to_string(server.port()) + "/v1");
  options.ca_file = (dir_ / "cert.pem").string();
  auto result = CallOnce(options);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace tidepool::llm
