// Pipeline: runs one app's steps for each request message, publishing events as it goes
// (docs/apps.md). Its Handle is the worker runtime's handler (`tidepool worker --app`).
//
// A request is a message on the app's request topic whose data is JSON:
//   {"conversation_id": "...", "message_id": "...", "text": "...",
//    "history": [{"role": "user"|"assistant", "content": "..."}]}
// (message_id optional: the Pub/Sub message id is the request id then).
//
// Events go to the app's events topic with the conversation id as ordering key; each is JSON
//   {"id": "REQUEST/RUN/SEQ", "type": T, "app", "conversation_id", "request_id", "run", "seq", ...}
// with T one of started, step_started, token (text; batched ~50 ms), step_finished (ms),
// tool_result (name, data), final (text, cards), error (message, step). RUN is new for every run
// of a request (a redelivery runs it again) and seq counts from 1 within a run, so a consumer
// can order and de-duplicate what it receives.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "llm/client.h"
#include "pipeline/app.h"
#include "pipeline/ledger.h"
#include "pipeline/tools/registry.h"
#include "queue/queue.h"

namespace tidepool::pipeline {

struct Request {
  std::string request_id;
  std::string conversation_id;
  std::string text;
  std::vector<llm::ChatMessage> history;
  int attempt = 1;
};

// INVALID_ARGUMENT naming the field for a request that can never be served.
Result<Request> ParseRequest(const queue::Delivery& delivery);

// The app's request subscription as workers (and the web tier, so that nothing published
// before the first worker starts is lost) create it: dead-letter policy, retry backoff.
queue::SubscriptionSpec RequestSubscription(const AppSpec& app);

struct Event {
  std::string type;
  std::string conversation_id;
  std::string request_id;
  int64_t seq = 0;
  std::string data;  // the whole event as JSON
};

// Where events go. `done` runs once the event is durable (or could not be published).
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void Send(const Event& event, std::function<void(Status)> done) = 0;
};

// Publishes events on a topic through a batching publisher, ordering key = conversation id.
class QueueEventSink final : public EventSink {
 public:
  QueueEventSink(queue::Queue& queue, const std::string& topic);
  ~QueueEventSink() override;  // flushes
  void Send(const Event& event, std::function<void(Status)> done) override;

 private:
  std::unique_ptr<queue::Publisher> publisher_;
};

struct PipelineStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> finals{0};
  std::atomic<uint64_t> replays{0};     // a pending final published again after a redelivery
  std::atomic<uint64_t> duplicates{0};  // redeliveries of requests already answered
  std::atomic<uint64_t> busy{0};        // deliveries of a request another run is answering
  std::atomic<uint64_t> errors{0};      // requests ended with an error event
  std::atomic<uint64_t> step_retries{0};
  std::atomic<uint64_t> events{0};
};

struct PipelineDeps {
  llm::LlmClient* llm = nullptr;  // may be null when the app has no llm step
  EventSink* events = nullptr;
  Ledger* ledger = nullptr;
  const ToolRegistry* tools = nullptr;  // default: ToolRegistry::Builtin()
  std::string log_prefix{};
};

class Pipeline {
 public:
  // Creates the app's tools now, so that a bad catalog fails at start-up.
  static Result<std::unique_ptr<Pipeline>> Create(AppSpec app, PipelineDeps deps);
  ~Pipeline();

  // Handles one request message: OK → ack; an error → nack (retried); Permanent → dead letter
  // (after an error event the user sees). Runs on the caller's executor.
  boost::asio::awaitable<Status> Handle(const queue::Delivery& delivery);

  const AppSpec& app() const;
  const PipelineStats& stats() const;

  struct Impl;

 private:
  explicit Pipeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::pipeline
