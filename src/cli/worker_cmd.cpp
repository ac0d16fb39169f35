// `tidepool worker --app FILE`: the command a pool runs for a chat app (docs/apps.md). Pulls the
// app's requests through the subscriber runtime, runs its steps, publishes events.
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include "cli/commands.h"
#include "llm/client.h"
#include "pipeline/app.h"
#include "pipeline/ledger.h"
#include "pipeline/runner.h"
#include "worker/runtime.h"

namespace tidepool::cli {
namespace {

namespace asio = boost::asio;

constexpr char kDefaultLlmUrl[] = "http://127.0.0.1:8090/v1";

constexpr char kWorkerUsage[] =
    "Usage: tidepool worker --app FILE [options]\n"
    "Runs an app's pipeline on its request subscription (the command a pool runs).\n"
    "  --app FILE                 the app spec (docs/apps.md)\n"
    "  --llm-base-url URL         OpenAI-compatible endpoint (env TIDEPOOL_LLM_BASE_URL;\n"
    "                             default http://127.0.0.1:8090/v1, `tidepool llm-sim`)\n"
    "  --llm-api-key-env NAME     env var holding the API key (env TIDEPOOL_LLM_API_KEY_ENV)\n"
    "  --llm-api-key-file PATH    file holding the API key (env TIDEPOOL_LLM_API_KEY_FILE)\n"
    "  --llm-max-concurrency N    calls in flight per model in this process (default 0 = no "
    "limit)\n"
    "  --ledger PATH              request ledger (SQLite; env TIDEPOOL_LEDGER; default\n"
    "                             $TIDEPOOL_DATA_DIR/pipeline/APP.ledger.db, else\n"
    "                             ./tidepool-data/pipeline/APP.ledger.db)\n"
    "  --max-in-flight N          requests handled at once (default 1000)\n"
    "  --ack-deadline SECONDS     the lease of each request and each extension (10-600,\n"
    "                             default 60); a crashed worker's requests come back after it\n"
    "The queue and subscription come from the pool's environment (docs/workers.md):\n"
    "TIDEPOOL_NATS_URL or PUBSUB_EMULATOR_HOST, TIDEPOOL_SUBSCRIPTION (default: the app's).\n";

struct WorkerFlags {
  std::string app;
  llm::ProviderOptions provider;
  std::string ledger;
  long long max_in_flight = 1000;
  int ack_deadline_seconds = worker::kDefaultStreamAckDeadlineSeconds;
};

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

bool ParseWorkerFlags(const Args& args, WorkerFlags* f) {
  f->provider.base_url = EnvOr("TIDEPOOL_LLM_BASE_URL", kDefaultLlmUrl);
  f->provider.api_key_env = EnvOr("TIDEPOOL_LLM_API_KEY_ENV", "");
  f->provider.api_key_file = EnvOr("TIDEPOOL_LLM_API_KEY_FILE", "");
  f->ledger = EnvOr("TIDEPOOL_LEDGER", "");
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kWorkerUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "tidepool worker: unknown option or missing value: '%s'\n\n%s",
                   flag.c_str(), kWorkerUsage);
      return false;
    }
    const std::string& value = args[++i];
    char* end = nullptr;
    if (flag == "--app") {
      f->app = value;
    } else if (flag == "--llm-base-url") {
      f->provider.base_url = value;
    } else if (flag == "--llm-api-key-env") {
      f->provider.api_key_env = value;
    } else if (flag == "--llm-api-key-file") {
      f->provider.api_key_file = value;
    } else if (flag == "--llm-max-concurrency") {
      const long long n = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 0) {
        std::fprintf(stderr, "tidepool worker: --llm-max-concurrency: '%s' is not a number\n",
                     value.c_str());
        return false;
      }
      f->provider.limits.max_concurrency = static_cast<int>(n);
    } else if (flag == "--ledger") {
      f->ledger = value;
    } else if (flag == "--max-in-flight") {
      f->max_in_flight = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || f->max_in_flight <= 0) {
        std::fprintf(stderr, "tidepool worker: --max-in-flight: '%s' is not a positive number\n",
                     value.c_str());
        return false;
      }
    } else if (flag == "--ack-deadline") {
      const long long n = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 10 || n > 600) {
        std::fprintf(stderr,
                     "tidepool worker: --ack-deadline: '%s' is not a number of seconds from 10 "
                     "to 600\n",
                     value.c_str());
        return false;
      }
      f->ack_deadline_seconds = static_cast<int>(n);
    } else {
      std::fprintf(stderr, "tidepool worker: unknown option '%s'\n\n%s", flag.c_str(),
                   kWorkerUsage);
      return false;
    }
  }
  if (f->app.empty()) {
    std::fprintf(stderr, "tidepool worker: --app FILE is required\n\n%s", kWorkerUsage);
    return false;
  }
  return true;
}

// Everything a running worker holds; the LLM client is made on the runtime's executor by the
// first request (the runtime owns the io_context it runs handlers on).
struct WorkerState {
  pipeline::AppSpec app;
  llm::ProviderOptions provider;
  std::unique_ptr<pipeline::Ledger> ledger;
  std::unique_ptr<pipeline::QueueEventSink> events;
  std::once_flag llm_once;
  std::unique_ptr<llm::LlmClient> llm;
  Status llm_error;
  std::unique_ptr<pipeline::Pipeline> pipeline;
  std::string log_prefix;
};

bool NeedsLlm(const pipeline::AppSpec& app) {
  for (const auto& step : app.steps) {
    if (step.kind == pipeline::StepKind::kLlm) return true;
  }
  return false;
}

}  // namespace

int RunWorker(const Args& args) {
  WorkerFlags flags;
  if (!ParseWorkerFlags(args, &flags)) return 2;
  auto app = pipeline::LoadApp(flags.app);
  if (!app.ok()) {
    std::fprintf(stderr, "tidepool worker: %s\n", app.status().message().c_str());
    return 2;
  }
  auto state = std::make_shared<WorkerState>();
  state->app = std::move(app).value();
  state->provider = flags.provider;
  if (flags.ledger.empty()) {
    flags.ledger =
        EnvOr("TIDEPOOL_DATA_DIR", "tidepool-data") + "/pipeline/" + state->app.name + ".ledger.db";
  }
  worker::RuntimeOptions defaults;
  defaults.subscription = state->app.request_subscription;
  defaults.flow.max_outstanding_messages = flags.max_in_flight;
  defaults.stream_ack_deadline_seconds = flags.ack_deadline_seconds;
  const std::string ledger_path = flags.ledger;

  // The handler ends up the only owner of the state: the runtime destroys it before its
  // io_context, which the LLM client's sockets and timers belong to.
  auto holder = std::make_shared<std::shared_ptr<WorkerState>>(std::move(state));
  auto setup = [holder, ledger_path](queue::Queue& queue,
                                     const worker::WorkerEnv& env) -> Result<worker::Handler> {
    std::shared_ptr<WorkerState> state = std::move(*holder);
    const pipeline::AppSpec& app = state->app;
    state->log_prefix = env.options.log_prefix;
    for (const std::string& topic : {app.request_topic, app.dead_letter_topic, app.events_topic}) {
      if (Status s = queue.EnsureTopic(topic); !s.ok()) return s;
    }
    queue::SubscriptionSpec sub = pipeline::RequestSubscription(app);
    sub.name = env.options.subscription;
    if (Status s = queue.EnsureSubscription(sub); !s.ok()) return s;
    TP_ASSIGN_OR_RETURN(state->ledger, pipeline::SqliteLedger::Open(ledger_path));
    state->events = std::make_unique<pipeline::QueueEventSink>(queue, app.events_topic);
    std::fprintf(stderr, "%sapp %s: %zu steps, requests from %s, events to %s, ledger %s\n",
                 state->log_prefix.c_str(), app.name.c_str(), app.steps.size(), sub.name.c_str(),
                 app.events_topic.c_str(), ledger_path.c_str());
    // The pipeline itself is made by the first request, with the LLM client, on the runtime's
    // executor; its tools are checked now so that a bad catalog stops the worker at once.
    pipeline::PipelineDeps check{.llm = nullptr,
                                 .events = state->events.get(),
                                 .ledger = state->ledger.get(),
                                 .tools = nullptr,
                                 .log_prefix = state->log_prefix};
    pipeline::AppSpec tools_only = app;
    std::erase_if(tools_only.steps,
                  [](const pipeline::StepSpec& s) { return s.kind == pipeline::StepKind::kLlm; });
    if (auto checked = pipeline::Pipeline::Create(std::move(tools_only), check); !checked.ok()) {
      return checked.status();
    }
    if (NeedsLlm(app)) {
      // The key source is read now, so that a missing key stops the worker at start-up rather
      // than failing every request; the client that serves is made on the runtime's executor.
      asio::io_context probe;
      auto client = llm::LlmClient::Create(probe.get_executor(), state->provider);
      if (!client.ok()) return Status::InvalidArgument("llm: " + client.status().message());
      std::fprintf(stderr, "%sLLM endpoint %s\n", state->log_prefix.c_str(),
                   state->provider.base_url.c_str());
    }
    return worker::Handler([state](const queue::Delivery& delivery) -> asio::awaitable<Status> {
      if (!state->pipeline) {
        auto executor = co_await asio::this_coro::executor;
        std::call_once(state->llm_once, [&] {
          if (NeedsLlm(state->app)) {
            // On the io_context itself, not the strand of the message that happens to come
            // first: the client outlives that message and serves every other one.
            auto& context =
                static_cast<asio::io_context&>(asio::query(executor, asio::execution::context));
            auto client = llm::LlmClient::Create(context.get_executor(), state->provider);
            if (!client.ok()) {
              state->llm_error = client.status();
              return;
            }
            state->llm = std::move(client).value();
          }
          auto made = pipeline::Pipeline::Create(
              state->app, pipeline::PipelineDeps{.llm = state->llm.get(),
                                                 .events = state->events.get(),
                                                 .ledger = state->ledger.get(),
                                                 .tools = nullptr,
                                                 .log_prefix = state->log_prefix});
          if (made.ok()) {
            state->pipeline = std::move(made).value();
          } else {
            state->llm_error = made.status();
          }
        });
      }
      if (!state->pipeline) co_return state->llm_error;
      co_return co_await state->pipeline->Handle(delivery);
    });
  };
  return worker::RunWorkerMain(setup, defaults);
}

}  // namespace tidepool::cli
