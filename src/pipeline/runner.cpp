#include "pipeline/runner.h"

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>

#include "common/await_callback.h"
#include "pipeline/http_tool.h"
#include "worker/runtime.h"

namespace tidepool::pipeline {

namespace asio = boost::asio;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr size_t kMaxHistoryMessages = 200;

std::string Str(const json::value& v) {
  return v.is_string() ? std::string(v.get_string()) : std::string();
}

// A step's output as reply text: strings as they are, anything else as JSON.
std::string AsText(const json::value& v) {
  if (v.is_string()) return std::string(v.get_string());
  if (v.is_null()) return "";
  return json::serialize(v);
}

void Logf(const std::string& prefix, const char* format, const std::string& a,
          const std::string& b = "") {
  std::fprintf(stderr, "%s", prefix.c_str());
  std::fprintf(stderr, format, a.c_str(), b.c_str());
  std::fputc('\n', stderr);
}

// Awaits an EventSink::Send.
asio::awaitable<Status> SendAwait(EventSink& sink, const Event& event) {
  auto send = [&sink, &event](std::function<void(Status)> done) { sink.Send(event, done); };
  Status sent = co_await AwaitCallback<Status>(std::move(send),
                                               Status::Unavailable("cancelled while publishing"));
  co_return sent;
}

std::string NewRunId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  uint64_t bits = rng();
  std::string id(8, '0');
  for (char& c : id) {
    c = kHex[bits & 0xF];
    bits >>= 4;
  }
  return id;
}

}  // namespace

Result<Request> ParseRequest(const queue::Delivery& delivery) {
  boost::system::error_code ec;
  json::value parsed = json::parse(delivery.message.data, ec);
  if (ec || !parsed.is_object()) {
    return Status::InvalidArgument("request data is not a JSON object");
  }
  const json::object& o = parsed.get_object();
  Request r;
  r.attempt = delivery.delivery_attempt > 0 ? delivery.delivery_attempt : 1;
  const json::value* conversation = o.if_contains("conversation_id");
  if (conversation == nullptr || !conversation->is_string() ||
      !IsValidId(conversation->get_string())) {
    return Status::InvalidArgument(
        "request: conversation_id is required: 1-128 of A-Z a-z 0-9 . _ : -");
  }
  r.conversation_id = std::string(conversation->get_string());
  if (const json::value* id = o.if_contains("message_id"); id != nullptr && !id->is_null()) {
    if (!id->is_string() || !IsValidId(id->get_string())) {
      return Status::InvalidArgument("request: message_id must be 1-128 of A-Z a-z 0-9 . _ : -");
    }
    r.request_id = std::string(id->get_string());
  } else {
    r.request_id = delivery.message_id;
  }
  const json::value* text = o.if_contains("text");
  if (text == nullptr || !text->is_string() || text->get_string().empty()) {
    return Status::InvalidArgument("request: text is required (a non-empty string)");
  }
  if (text->get_string().size() > kMaxMessageTextBytes) {
    return Status::InvalidArgument("request: text is longer than 32 KiB");
  }
  r.text = std::string(text->get_string());
  if (const json::value* history = o.if_contains("history");
      history != nullptr && !history->is_null()) {
    if (!history->is_array()) {
      return Status::InvalidArgument("request: history must be an array of {role, content}");
    }
    const json::array& list = history->get_array();
    size_t first = list.size() > kMaxHistoryMessages ? list.size() - kMaxHistoryMessages : 0;
    for (size_t i = first; i < list.size(); ++i) {
      const json::value& m = list[i];
      if (!m.is_object()) {
        return Status::InvalidArgument("request: history[" + std::to_string(i) +
                                       "] must be an object {role, content}");
      }
      const std::string role = Str(m.get_object().contains("role") ? m.at("role") : nullptr);
      if (role != "user" && role != "assistant") {
        return Status::InvalidArgument("request: history[" + std::to_string(i) +
                                       "].role must be user or assistant");
      }
      const json::value* content = m.get_object().if_contains("content");
      if (content == nullptr || !content->is_string()) {
        return Status::InvalidArgument("request: history[" + std::to_string(i) +
                                       "].content must be a string");
      }
      r.history.push_back({.role = role, .content = std::string(content->get_string())});
    }
  }
  return r;
}

queue::SubscriptionSpec RequestSubscription(const AppSpec& app) {
  queue::SubscriptionSpec sub;
  sub.name = app.request_subscription;
  sub.topic = app.request_topic;
  sub.ack_deadline_seconds = 60;
  sub.dead_letter_topic = app.dead_letter_topic;
  sub.max_delivery_attempts = app.max_delivery_attempts;
  sub.min_backoff = std::chrono::seconds(1);
  sub.max_backoff = std::chrono::seconds(60);
  return sub;
}

// ---- QueueEventSink

QueueEventSink::QueueEventSink(queue::Queue& queue, const std::string& topic)
    : publisher_(std::make_unique<queue::Publisher>(
          queue, topic, queue::BatchingOptions{.max_messages = 100, .max_bytes = 1 << 20})) {}

QueueEventSink::~QueueEventSink() = default;

void QueueEventSink::Send(const Event& event, std::function<void(Status)> done) {
  queue::Message m;
  m.data = event.data;
  m.ordering_key = event.conversation_id;
  m.attributes = {{"type", event.type},
                  {"conversation_id", event.conversation_id},
                  {"request_id", event.request_id},
                  {"seq", std::to_string(event.seq)}};
  publisher_->Publish(std::move(m), [done = std::move(done)](Result<std::string> id) {
    if (done) done(id.ok() ? Status::Ok() : id.status());
  });
}

// ---- Pipeline

struct StepRuntime {
  const StepSpec* spec = nullptr;
  std::unique_ptr<Tool> tool;
  std::optional<llm::ChatRequest::JsonSchema> schema;
};

struct Pipeline::Impl {
  // A run's claim on its request lasts this long unless renewed (every third of it): a worker
  // that died holds a request up for at most this long.
  static constexpr int kClaimLeaseSeconds = 30;

  AppSpec app;
  std::string owner = "p-" + NewRunId() + NewRunId();  // prefixes this pipeline's claims
  PipelineDeps deps;
  std::vector<StepRuntime> steps;
  PipelineStats stats;

  // One request's run: its events' sequence and where they go.
  struct Run {
    const Request* request = nullptr;
    std::string run_id;  // distinguishes the runs of a redelivered request
    int64_t seq = 0;
    json::object context;
    json::object cards;
  };

  Event MakeEvent(Run& run, const std::string& type, json::object body) {
    Event e;
    e.type = type;
    e.conversation_id = run.request->conversation_id;
    e.request_id = run.request->request_id;
    e.seq = ++run.seq;
    body["id"] = run.request->request_id + "/" + run.run_id + "/" + std::to_string(e.seq);
    body["run"] = run.run_id;
    body["type"] = type;
    body["app"] = app.name;
    body["conversation_id"] = e.conversation_id;
    body["request_id"] = e.request_id;
    body["seq"] = e.seq;
    e.data = json::serialize(body);
    return e;
  }

  // Progress events: not awaited; ordering within the conversation is kept by the key, and a
  // lost progress event only costs the user a progress line (the final is awaited).
  void Emit(Run& run, const std::string& type, json::object body) {
    ++stats.events;
    Event e = MakeEvent(run, type, std::move(body));
    deps.events->Send(e, [prefix = deps.log_prefix, type](Status s) {
      if (!s.ok()) Logf(prefix, "%s event not published: %s", type, s.ToString());
    });
  }

  json::value RenderArgs(const StepSpec& spec, const json::object& context, Status& error) {
    if (spec.args_all) {
      auto v = spec.args_all->Evaluate(context);
      if (!v.ok()) {
        error = v.status();
        return nullptr;
      }
      return std::move(v).value();
    }
    json::object args;
    for (const auto& [key, value] : spec.arg_constants) args[key] = value;
    for (const auto& [key, tmpl] : spec.args) {
      auto v = tmpl.Evaluate(context);
      if (!v.ok()) {
        error = Status::InvalidArgument("args." + key + ": " + v.status().message());
        return nullptr;
      }
      args[key] = std::move(v).value();
    }
    return args;
  }

  // Batches token deltas into `token` events, at most one per token_batch.
  struct TokenBatcher {
    Impl* impl;
    Run* run;
    std::string step;
    std::string pending{};
    Clock::time_point last_flush{Clock::now()};
    void Add(std::string_view delta) {
      pending.append(delta);
      if (Clock::now() - last_flush >= impl->app.token_batch) Flush();
    }
    void Flush() {
      last_flush = Clock::now();
      if (pending.empty()) return;
      impl->Emit(*run, "token", {{"step", step}, {"text", pending}});
      pending.clear();
    }
  };

  asio::awaitable<Result<json::value>> RunLlm(const StepRuntime& step, Run& run,
                                              bool& streamed_any) {
    const StepSpec& spec = *step.spec;
    if (deps.llm == nullptr) co_return Status::FailedPrecondition("no LLM client configured");
    llm::ChatRequest request;
    request.model = spec.model.name;
    request.temperature = spec.model.temperature;
    request.max_tokens = spec.model.max_tokens;
    if (spec.system) {
      auto system = spec.system->Render(run.context);
      if (!system.ok()) co_return system.status();
      request.messages.push_back({.role = "system", .content = std::move(system).value()});
    }
    const auto& history = run.request->history;
    size_t first = 0;
    if (!spec.history.all) {
      const size_t keep = static_cast<size_t>(spec.history.last);
      first = history.size() > keep ? history.size() - keep : 0;
    }
    for (size_t i = first; i < history.size(); ++i) request.messages.push_back(history[i]);
    auto user = spec.user.Render(run.context);
    if (!user.ok()) co_return user.status();
    request.messages.push_back({.role = "user", .content = std::move(user).value()});
    request.json_schema = step.schema;

    if (!spec.stream) {
      auto result = co_await deps.llm->Complete(std::move(request));
      if (!result.ok()) co_return result.status();
      if (!step.schema) co_return json::value(result->content);
      boost::system::error_code ec;
      json::value parsed = json::parse(result->content, ec);
      if (ec || !parsed.is_object()) {
        co_return Status::Unavailable(
            "the model's reply is not the JSON object the schema asks "
            "for");
      }
      co_return parsed;
    }
    TokenBatcher batcher{.impl = this, .run = &run, .step = spec.id};
    auto result = co_await deps.llm->Stream(std::move(request), [&](std::string_view delta) {
      streamed_any = true;
      batcher.Add(delta);
    });
    batcher.Flush();
    if (!result.ok()) co_return result.status();
    co_return json::value(result->content);
  }

  asio::awaitable<Result<json::value>> RunStepOnce(const StepRuntime& step, Run& run,
                                                   bool& streamed_any) {
    const StepSpec& spec = *step.spec;
    switch (spec.kind) {
      case StepKind::kTemplate: {
        auto text = spec.text.Evaluate(run.context);
        if (!text.ok()) co_return text.status();
        co_return std::move(text).value();
      }
      case StepKind::kTool: {
        Status error;
        json::value args = RenderArgs(spec, run.context, error);
        if (!error.ok()) co_return error;
        if (step.tool) co_return step.tool->Call(args);
        co_return co_await HttpPostJson(*spec.http, args, spec.timeout);
      }
      case StepKind::kLlm:
        co_return co_await RunLlm(step, run, streamed_any);
    }
    co_return Status::Internal("unknown step kind");
  }

  // Default-constructible, as co_spawn's completion needs.
  struct StepOutcome {
    Result<json::value> result = Status::Internal("not run");
  };
  asio::awaitable<StepOutcome> RunStepOutcome(const StepRuntime& step, Run& run,
                                              bool& streamed_any) {
    auto result = co_await RunStepOnce(step, run, streamed_any);
    co_return StepOutcome{std::move(result)};
  }

  // One attempt bounded by the step's timeout: the attempt is cancelled when it runs out.
  asio::awaitable<Result<json::value>> RunStepTimed(const StepRuntime& step, Run& run,
                                                    bool& streamed_any) {
    auto executor = co_await asio::this_coro::executor;
    // Shared with the timer's handler, which may run after this frame is gone.
    struct Deadline {
      asio::cancellation_signal cancel;
      bool timed_out = false;
      bool done = false;
    };
    auto deadline = std::make_shared<Deadline>();
    asio::steady_timer timer(executor);
    timer.expires_after(step.spec->timeout);
    timer.async_wait([deadline](boost::system::error_code ec) {
      if (ec || deadline->done) return;
      deadline->timed_out = true;
      deadline->cancel.emit(asio::cancellation_type::terminal);
    });
    auto [error, result] = co_await asio::co_spawn(
        executor, RunStepOutcome(step, run, streamed_any),
        asio::bind_cancellation_slot(deadline->cancel.slot(), asio::as_tuple(asio::use_awaitable)));
    deadline->done = true;
    timer.cancel();
    if (deadline->timed_out) {
      co_return Status::DeadlineExceeded("step " + step.spec->id + " timed out after " +
                                         std::to_string(step.spec->timeout.count()) + " ms");
    }
    if (error) std::rethrow_exception(error);
    co_return std::move(result.result);
  }

  asio::awaitable<Status> PublishFinal(Run& run, Event event, bool error) {
    LedgerEntry entry{.state = LedgerEntry::State::kPending, .event = event.data};
    // The event goes into the ledger first: a crash after the publish and before the ack finds
    // it pending on redelivery and publishes the same event again instead of a new answer.
    if (Status s = deps.ledger->Put(run.request->request_id, entry); !s.ok()) co_return s;
    Status sent = co_await SendAwait(*deps.events, event);
    if (!sent.ok()) co_return sent;  // nacked: the redelivery publishes the stored event
    entry.state = LedgerEntry::State::kPublished;
    if (Status s = deps.ledger->Put(run.request->request_id, entry); !s.ok()) {
      Logf(deps.log_prefix, "ledger: %s", s.ToString());
    }
    if (error) {
      ++stats.errors;
    } else {
      ++stats.finals;
    }
    co_return Status::Ok();
  }

  asio::awaitable<Status> Replay(const Request& request, const LedgerEntry& entry) {
    Event event;
    boost::system::error_code ec;
    json::value parsed = json::parse(entry.event, ec);
    if (ec || !parsed.is_object()) co_return Status::Internal("ledger holds a malformed event");
    event.type = Str(parsed.at("type"));
    event.conversation_id = request.conversation_id;
    event.request_id = request.request_id;
    event.seq = parsed.at("seq").is_int64() ? parsed.at("seq").get_int64() : 0;
    event.data = entry.event;
    Status sent = co_await SendAwait(*deps.events, event);
    if (!sent.ok()) co_return sent;
    ++stats.replays;
    LedgerEntry done{.state = LedgerEntry::State::kPublished, .event = entry.event};
    if (Status s = deps.ledger->Put(request.request_id, done); !s.ok()) {
      Logf(deps.log_prefix, "ledger: %s", s.ToString());
    }
    co_return Status::Ok();
  }

  asio::awaitable<Status> Handle(const queue::Delivery& delivery) {
    ++stats.requests;
    auto parsed = ParseRequest(delivery);
    if (!parsed.ok()) {
      Logf(deps.log_prefix, "request %s dead-lettered: %s", delivery.message_id,
           parsed.status().message());
      co_return worker::Permanent(parsed.status());
    }
    const Request& request = *parsed;
    // Each delivery claims for itself: two deliveries in this process exclude each other too.
    const std::string claimant = owner + "/" + NewRunId();
    auto claim = deps.ledger->Claim(request.request_id, claimant, kClaimLeaseSeconds);
    if (!claim.ok()) co_return claim.status();  // retried: the ledger may come back
    if (*claim == ClaimResult::kDone) {
      auto known = deps.ledger->Lookup(request.request_id);
      if (!known.ok()) co_return known.status();
      if (!known->has_value()) co_return Status::Unavailable("ledger entry vanished");
      if ((*known)->state == LedgerEntry::State::kPublished) {
        ++stats.duplicates;
        co_return Status::Ok();
      }
      Status replayed = co_await Replay(request, **known);
      co_return replayed;
    }
    if (*claim == ClaimResult::kBusy) {
      ++stats.busy;
      co_return Status::Unavailable("request " + request.request_id +
                                    " is being answered by another run; retried later");
    }
    // Claimed: renewed while the run lasts, released if it fails and will be retried.
    auto keep = std::make_shared<std::atomic<bool>>(true);
    struct StopRenewing {
      std::shared_ptr<std::atomic<bool>> keep;
      ~StopRenewing() { keep->store(false); }
    } stop_renewing{keep};
    auto executor = co_await asio::this_coro::executor;
    asio::co_spawn(executor, RenewClaim(request.request_id, claimant, keep), asio::detached);
    Status result = co_await RunRequest(request);
    keep->store(false);
    if (!result.ok() && !worker::IsPermanent(result)) {
      (void)deps.ledger->Release(request.request_id, claimant);
    }
    co_return result;
  }

  // Renews the claim on a request while its run lasts.
  asio::awaitable<void> RenewClaim(std::string request_id, std::string claimant,
                                   std::shared_ptr<std::atomic<bool>> keep) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    while (keep->load()) {
      timer.expires_after(std::chrono::seconds(kClaimLeaseSeconds / 3));
      (void)co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      if (!keep->load()) break;
      (void)deps.ledger->Claim(request_id, claimant, kClaimLeaseSeconds);
    }
  }

  asio::awaitable<Status> RunRequest(const Request& request) {
    Run run;
    run.request = &request;
    run.run_id = NewRunId();
    run.context["app"] = app.name;
    run.context["conversation_id"] = request.conversation_id;
    run.context["request_id"] = request.request_id;
    run.context["message"] = request.text;
    run.context["attempt"] = request.attempt;
    json::array history;
    for (const auto& m : request.history) {
      history.push_back(json::object{{"role", m.role}, {"content", m.content}});
    }
    run.context["history"] = std::move(history);
    Emit(run, "started", {{"attempt", request.attempt}});

    const StepRuntime* last = nullptr;
    json::value last_output;
    for (const StepRuntime& step : steps) {
      const StepSpec& spec = *step.spec;
      if (spec.when) {
        auto go = spec.when->Evaluate(run.context);
        if (!go.ok()) {
          co_return co_await Fail(run, spec.id, go.status());
        }
        if (!*go) continue;
      }
      Emit(run, "step_started", {{"step", spec.id}});
      const auto started = Clock::now();
      Result<json::value> output = Status::Internal("not run");
      for (int attempt = 0; attempt <= spec.retries; ++attempt) {
        bool streamed_any = false;
        output = co_await RunStepTimed(step, run, streamed_any);
        if (output.ok()) break;
        // Retrying cannot fix bad arguments, nor take back text the user has seen.
        if (output.status().code() == StatusCode::kInvalidArgument || streamed_any) break;
        if (attempt < spec.retries) {
          ++stats.step_retries;
          Logf(deps.log_prefix, "step %s failed, retrying: %s", spec.id,
               output.status().ToString());
        }
      }
      if (!output.ok()) co_return co_await Fail(run, spec.id, output.status());
      const auto ms = std::chrono::duration_cast<milliseconds>(Clock::now() - started).count();
      if (!spec.emit.empty()) {
        run.cards[spec.emit] = *output;
        Emit(run, "tool_result", {{"step", spec.id}, {"name", spec.emit}, {"data", *output}});
      }
      Emit(run, "step_finished", {{"step", spec.id}, {"ms", ms}});
      run.context[spec.id] = *output;
      last = &step;
      last_output = std::move(output).value();
      if (spec.final) break;
    }
    if (last == nullptr) {
      co_return co_await Fail(run, "",
                              Status::FailedPrecondition("no step ran (every when: was "
                                                         "false)"));
    }
    json::object body{{"text", AsText(last_output)}, {"step", last->spec->id}};
    body["cards"] = std::move(run.cards);
    Event final = MakeEvent(run, "final", std::move(body));
    co_return co_await PublishFinal(run, std::move(final), /*error=*/false);
  }

  // A step failed for good: the user gets an error event, the request goes to dead letter.
  asio::awaitable<Status> Fail(Run& run, const std::string& step, Status error) {
    Logf(deps.log_prefix, "request %s failed: %s", run.request->request_id,
         (step.empty() ? "" : "step " + step + ": ") + error.ToString());
    json::object body{
        {"message", "Sorry, I could not finish this answer. Please try again in a moment."},
        {"step", step},
        {"code", std::string(StatusCodeName(error.code()))},
        {"detail", error.message()}};
    Event event = MakeEvent(run, "error", std::move(body));
    Status sent = co_await PublishFinal(run, std::move(event), /*error=*/true);
    if (!sent.ok()) co_return sent;
    co_return worker::Permanent(error);
  }
};

Pipeline::Pipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Pipeline::~Pipeline() = default;

Result<std::unique_ptr<Pipeline>> Pipeline::Create(AppSpec app, PipelineDeps deps) {
  if (deps.events == nullptr || deps.ledger == nullptr) {
    return Status::InvalidArgument("a pipeline needs an event sink and a ledger");
  }
  if (deps.tools == nullptr) deps.tools = &ToolRegistry::Builtin();
  auto impl = std::make_unique<Impl>();
  impl->app = std::move(app);
  impl->deps = std::move(deps);
  for (const StepSpec& spec : impl->app.steps) {
    StepRuntime step;
    step.spec = &spec;
    if (spec.kind == StepKind::kTool && !spec.tool.empty()) {
      ToolConfig config;
      if (!spec.data_file.empty()) {
        config.data_path = impl->app.files.at(spec.data_file);
        auto it = impl->app.json_files.find(spec.data_file);
        if (it != impl->app.json_files.end()) config.data_json = &it->second;
      }
      auto tool = impl->deps.tools->Create(spec.tool, config);
      if (!tool.ok()) {
        return Status::InvalidArgument("app " + impl->app.name + ": step " + spec.id + ": " +
                                       tool.status().message());
      }
      step.tool = std::move(tool).value();
    }
    if (spec.kind == StepKind::kLlm && !spec.json_schema_file.empty()) {
      step.schema = llm::ChatRequest::JsonSchema{
          .name = spec.id, .schema = impl->app.json_files.at(spec.json_schema_file)};
    }
    if (spec.kind == StepKind::kLlm && impl->deps.llm == nullptr) {
      return Status::InvalidArgument("app " + impl->app.name + ": step " + spec.id +
                                     " needs an LLM provider");
    }
    impl->steps.push_back(std::move(step));
  }
  return std::unique_ptr<Pipeline>(new Pipeline(std::move(impl)));
}

asio::awaitable<Status> Pipeline::Handle(const queue::Delivery& delivery) {
  return impl_->Handle(delivery);
}

const AppSpec& Pipeline::app() const {
  return impl_->app;
}

const PipelineStats& Pipeline::stats() const {
  return impl_->stats;
}

}  // namespace tidepool::pipeline
