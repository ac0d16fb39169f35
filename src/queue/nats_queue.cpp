// The nats backend: the Queue interface over NATS JetStream through nats.c (Debian's 3.4.1).
// docs/queue-nats.md states the mapping and where the semantics differ from Pub/Sub.
//
//   topic        a stream (Interest retention, 7 days) with one subject
//   subscription a durable pull consumer on that stream (explicit ack, AckWait = ack deadline,
//                MaxDeliver = dead-letter attempts + 1, MaxAckPending) plus an entry in the
//                subscription directory (a KV bucket) that remembers its topic and the settings
//                JetStream has no place for (dead-letter topic, filter, retry policy, ...)
//   ack id       the JetStream ack subject of the delivery ("$JS.ACK.…"): Ack, Nack,
//                ExtendLease and Terminate publish +ACK, -NAK, +WPI, +TERM to it
//
// Pulls do not use natsSubscription_Fetch: in nats.c 3.4.1 it overflows its message array when
// more than half a batch already waits in the subscription (fixed upstream in 3.10). Pull and
// streams send JetStream pull requests themselves ($JS.API.CONSUMER.MSG.NEXT) to an inbox of
// their own and never block a thread on them; see PullOp and StreamCore.
//
// Threading: nats.c delivers on its own threads; the handlers there only copy the message and
// post it to the queue's BackendThread, where every request, timer, op and user callback runs.
// The management calls (EnsureTopic, EnsureSubscription, GetBacklog, the first lookup of a
// subscription) are blocking JetStream API requests on the caller's thread, bounded by
// QueueOptions::call_timeout.
#include <nats/nats.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "broker/filter.h"
#include "queue/backends.h"
#include "queue/nats_protocol.h"
#include "queue/queue_env.h"

namespace tidepool::queue::internal {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using broker::ResourceKind;
using Clock = std::chrono::steady_clock;
using nats::AckSubject;

constexpr std::string_view kNextPrefix = "$JS.API.CONSUMER.MSG.NEXT.";
constexpr std::string_view kAckPrefix = "$JS.ACK.";
constexpr char kAckPayload[] = "+ACK";
constexpr char kNakPayload[] = "-NAK";
constexpr char kProgressPayload[] = "+WPI";
constexpr char kTermPayload[] = "+TERM";
constexpr char kStatusHeader[] = "Status";
constexpr char kDescriptionHeader[] = "Description";

constexpr int kMaxPullMessages = 1000;
// Most messages one pull request of a stream asks for.
constexpr int64_t kMaxStreamBatch = 256;
// How long a stream's pull request waits on the server; a request lost with a server (a node
// killed, a reconnect) is replaced after this plus kLostRequestSlack.
constexpr std::chrono::milliseconds kStreamPullExpiry{5'000};
constexpr std::chrono::milliseconds kLostRequestSlack{2'000};
// Until the server has answered one of a stream's requests (a consumer whose Raft group is
// still electing its first leader drops them), and again after a request was lost, requests
// expire this soon: a lost one then costs about 1.5 s instead of 7 s.
constexpr std::chrono::milliseconds kProbePullExpiry{1'000};
constexpr std::chrono::milliseconds kProbeLostRequestSlack{500};
// The server ends a waiting request this much before the client stops waiting for it.
constexpr std::chrono::milliseconds kServerExpiryMargin{20};
// Requests (publishes, settles) without a reply by then are sent again.
constexpr std::chrono::milliseconds kResendInterval{2'000};
constexpr int64_t kNanosPerMicro = 1'000;
constexpr int64_t kRetentionSeconds = 7ll * 24 * 3600;
constexpr int64_t kDuplicateWindowSeconds = 120;
constexpr int kReconnectWaitMillis = 250;
constexpr int64_t kReadyProbeMillis = 1000;  // one JetStream readiness probe at start-up
constexpr int64_t kApiAttemptMillis = 2000;  // one attempt of a stream / consumer API call
constexpr int kReconnectBufferBytes = 64 << 20;
// With exactly-once delivery an ack is refused when less than this share of the lease is left:
// the server may expire the lease before the ack reaches it.
constexpr int64_t kExactlyOnceMarginDivisor = 10;
constexpr uint64_t kLeaseSweepEvery = 1024;
constexpr std::chrono::minutes kLeaseSweepAge{10};

// A message as it reached one of the queue's inboxes, copied off the nats.c thread.
struct Incoming {
  std::string subject;
  std::string reply;
  std::string data;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string status;  // "404", "408", "409", "503", "100" for JetStream status messages
  std::string description;
};

Incoming ToIncoming(natsMsg* m) {
  Incoming in;
  in.subject = natsMsg_GetSubject(m);
  if (const char* reply = natsMsg_GetReply(m); reply != nullptr) in.reply = reply;
  in.data.assign(natsMsg_GetData(m), static_cast<size_t>(natsMsg_GetDataLength(m)));
  const char** keys = nullptr;
  int count = 0;
  if (natsMsgHeader_Keys(m, &keys, &count) == NATS_OK) {
    for (int i = 0; i < count; ++i) {
      const char* value = nullptr;
      if (natsMsgHeader_Get(m, keys[i], &value) == NATS_OK && value != nullptr) {
        in.headers.emplace_back(keys[i], value);
      }
    }
    free(keys);  // NOLINT: nats.c hands the array out with malloc
  }
  const char* value = nullptr;
  if (natsMsgHeader_Get(m, kStatusHeader, &value) == NATS_OK && value != nullptr) {
    in.status = value;
  }
  value = nullptr;
  if (natsMsgHeader_Get(m, kDescriptionHeader, &value) == NATS_OK && value != nullptr) {
    in.description = value;
  }
  return in;
}

bool IsUserMessage(const Incoming& in) {
  return in.status.empty() && std::string_view(in.reply).starts_with(kAckPrefix);
}

Status FromNats(natsStatus s, const std::string& what) {
  std::string message = what + ": " + natsStatus_GetText(s);
  if (const char* last = nats_GetLastError(nullptr); last != nullptr && *last != '\0') {
    message += std::string(" (") + last + ")";
  }
  switch (s) {
    case NATS_TIMEOUT:
      return Status::DeadlineExceeded(message);
    case NATS_NOT_FOUND:
      return Status::NotFound(message);
    case NATS_INVALID_ARG:
      return Status::InvalidArgument(message);
    default:
      return Status::Unavailable(message);
  }
}

std::optional<Delivery> ToDelivery(Incoming& in) {
  auto ack = nats::ParseAckSubject(in.reply);
  if (!ack) return std::nullopt;
  Delivery d;
  d.ack_id = in.reply;
  d.message_id = std::to_string(ack->stream_sequence);
  d.publish_time_micros = ack->timestamp_nanos / kNanosPerMicro;
  d.delivery_attempt = static_cast<int>(ack->delivered);
  d.message.data = std::move(in.data);
  const std::string_view prefix = nats::kAttributeHeaderPrefix;
  for (auto& [key, value] : in.headers) {
    if (key.starts_with(prefix)) {
      // Values carry a leading '=' so that an empty value survives the header round trip.
      const std::string_view v = std::string_view(value).substr(value.empty() ? 0 : 1);
      d.message.attributes[nats::PercentDecode(key.substr(prefix.size()))] = nats::PercentDecode(v);
    } else if (key == nats::kOrderingKeyHeader) {
      d.message.ordering_key = nats::PercentDecode(value);
    } else if (!key.starts_with("Nats-") && key != kStatusHeader && key != kDescriptionHeader) {
      d.message.attributes[key] = value;  // a header from a plain NATS publisher
    }
  }
  return d;
}

// The message as published to `subject`, with `msg_id` for JetStream's deduplication.
Result<natsMsg*> BuildMessage(const std::string& subject, const std::string& reply,
                              const Message& m, const std::string& msg_id) {
  natsMsg* out = nullptr;
  natsStatus s = natsMsg_Create(&out, subject.c_str(), reply.c_str(), m.data.data(),
                                static_cast<int>(m.data.size()));
  if (s == NATS_OK) s = natsMsgHeader_Set(out, nats::kMsgIdHeader, msg_id.c_str());
  for (const auto& [key, value] : m.attributes) {
    if (s != NATS_OK) break;
    const std::string header = nats::kAttributeHeaderPrefix + nats::PercentEncode(key);
    const std::string encoded = "=" + nats::PercentEncode(value);
    s = natsMsgHeader_Set(out, header.c_str(), encoded.c_str());
  }
  if (s == NATS_OK && !m.ordering_key.empty()) {
    s = natsMsgHeader_Set(out, nats::kOrderingKeyHeader,
                          nats::PercentEncode(m.ordering_key).c_str());
  }
  if (s != NATS_OK) {
    natsMsg_Destroy(out);
    return FromNats(s, "build message for " + subject);
  }
  return out;
}

// ---- routing from nats.c threads to the backend thread.
//
// Every inbox subscription is registered under an id in a process-wide table, and nats.c gets
// only the id as its closure: a handler that runs after its queue (or op) is gone finds nothing
// and gives the message back (NAK) instead of touching freed memory.

class NatsQueue;
std::mutex g_routes_mu;
std::unordered_map<uint64_t, NatsQueue*>& Routes() {
  static auto* routes = new std::unordered_map<uint64_t, NatsQueue*>();
  return *routes;
}
std::atomic<uint64_t> g_next_route{1};
void OnInboxMessage(natsConnection* nc, natsSubscription*, natsMsg* m, void* closure);

// A subscription's settings, from the directory: what EnsureSubscription was given (names
// resolved) plus the JetStream names.
struct SubInfo {
  std::string path;
  std::string project;
  std::string topic;
  std::string stream;
  std::string consumer;
  std::string next_subject;  // $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>
  int ack_deadline_seconds = 10;
  bool ordering = false;
  bool exactly_once = false;
  std::string dead_letter_topic;
  int max_delivery_attempts = 5;
  int64_t min_backoff_seconds = 0;
  int64_t max_backoff_seconds = 0;
  int64_t expiration_seconds = 0;  // 0: the consumer never expires
  std::string filter_text;
  broker::Filter filter;

  // Backend thread only. Exactly-once: the lease this queue last handed out for each stream
  // sequence (consumer sequence and when it ends).
  struct Lease {
    uint64_t consumer_sequence = 0;
    Clock::time_point ends;
  };
  mutable std::unordered_map<uint64_t, Lease> leases;
  mutable uint64_t leases_added = 0;
};

json::object SpecJson(const SubInfo& s) {
  return json::object{{"topic", s.topic},
                      {"ack_deadline_seconds", s.ack_deadline_seconds},
                      {"enable_message_ordering", s.ordering},
                      {"enable_exactly_once_delivery", s.exactly_once},
                      {"dead_letter_topic", s.dead_letter_topic},
                      {"max_delivery_attempts", s.max_delivery_attempts},
                      {"min_backoff_seconds", s.min_backoff_seconds},
                      {"max_backoff_seconds", s.max_backoff_seconds},
                      {"expiration_ttl_seconds", s.expiration_seconds},
                      {"filter", s.filter_text}};
}

Status SpecFromJson(std::string_view text, SubInfo* s) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return Status::Corruption("subscription directory entry: " + s->path);
  const json::object& o = v.as_object();
  auto str = [&](const char* k) -> std::string {
    const json::value* x = o.if_contains(k);
    return x != nullptr && x->is_string() ? std::string(x->as_string()) : std::string();
  };
  auto num = [&](const char* k, int64_t def) -> int64_t {
    const json::value* x = o.if_contains(k);
    return x != nullptr && x->is_int64() ? x->as_int64() : def;
  };
  auto flag = [&](const char* k) -> bool {
    const json::value* x = o.if_contains(k);
    return x != nullptr && x->is_bool() && x->as_bool();
  };
  s->topic = str("topic");
  s->ack_deadline_seconds = static_cast<int>(num("ack_deadline_seconds", 10));
  s->ordering = flag("enable_message_ordering");
  s->exactly_once = flag("enable_exactly_once_delivery");
  s->dead_letter_topic = str("dead_letter_topic");
  s->max_delivery_attempts = static_cast<int>(num("max_delivery_attempts", 5));
  s->min_backoff_seconds = num("min_backoff_seconds", 0);
  s->max_backoff_seconds = num("max_backoff_seconds", 0);
  s->expiration_seconds = num("expiration_ttl_seconds", 0);
  s->filter_text = str("filter");
  auto filter = broker::Filter::Parse(s->filter_text);
  if (!filter.ok()) return filter.status();
  s->filter = std::move(*filter);
  return Status::Ok();
}

// Work on the backend thread that the queue cancels at shutdown.
class Op {
 public:
  virtual ~Op() = default;
  virtual void Abort(const Status& why) = 0;
};

// Sends a set of requests (publishes, settles) with a reply inbox each, resends those without
// a reply every kResendInterval, and finishes when all are answered, one fails for good, or the
// deadline passes.
class RequestBatch : public Op, public std::enable_shared_from_this<RequestBatch> {
 public:
  enum class Verdict { kDone, kResend, kFailed };
  struct Item {
    std::function<natsStatus(const std::string& reply)> send;
    uint64_t token = 0;
    bool done = false;
  };
  using OnReply = std::function<std::pair<Verdict, Status>(size_t index, Incoming& in)>;
  using OnFinish = std::function<void(Status)>;

  RequestBatch(NatsQueue* queue, std::vector<Item> items, OnReply on_reply, OnFinish on_finish,
               Clock::time_point deadline);
  void Start();
  void Abort(const Status& why) override { Finish(why); }
  void Fail(const Status& why) { Finish(why); }

 private:
  void SendPending();
  void OnTimer();
  void Finish(Status status);

  NatsQueue* const queue_;
  std::vector<Item> items_;
  const OnReply on_reply_;
  OnFinish on_finish_;
  const Clock::time_point deadline_;
  asio::steady_timer timer_;
  size_t remaining_ = 0;
  bool finished_ = false;
  Status last_send_error_;
};

class PullOp;
class StreamCore;

class NatsQueue final : public Queue {
 public:
  explicit NatsQueue(QueueOptions options) : options_(std::move(options)) {}
  ~NatsQueue() override;

  Status Connect();

  Status EnsureTopic(const std::string& topic) override;
  Status EnsureSubscription(const SubscriptionSpec& spec) override;
  void Publish(const std::string& topic, std::vector<Message> messages,
               PublishCallback done) override;
  Result<std::unique_ptr<MessageStream>> Subscribe(const std::string& subscription,
                                                   StreamOptions options,
                                                   DeliveryHandler on_messages,
                                                   StreamErrorHandler on_error) override;
  void Pull(const std::string& subscription, int max_messages, std::chrono::milliseconds max_wait,
            PullCallback done) override;
  void Ack(const std::string& subscription, std::vector<std::string> ack_ids,
           AckCallback done) override;
  void Nack(const std::string& subscription, std::vector<std::string> ack_ids,
            std::chrono::seconds delay, AckCallback done) override;
  void ExtendLease(const std::string& subscription, std::vector<std::string> ack_ids,
                   std::chrono::seconds lease, AckCallback done) override;
  void Terminate(const std::string& subscription, std::vector<Delivery> deliveries,
                 AckCallback done) override;
  Result<Backlog> GetBacklog(const std::string& subscription) override;
  Status DeleteSubscription(const std::string& subscription) override;
  std::string backend() const override { return "nats"; }

  // From OnInboxMessage on a nats.c thread, under g_routes_mu: posts, never blocks.
  void Enqueue(uint64_t route, Incoming in) {
    thread_.Post([this, route, in = std::move(in)]() mutable { Dispatch(route, in); });
  }

  // ---- for ops, streams and the MessageStream (backend thread unless said otherwise)
  BackendThread& thread() { return thread_; }
  asio::io_context& io() { return thread_.io(); }
  natsConnection* connection() { return nc_; }
  const QueueOptions& options() const { return options_; }
  std::chrono::nanoseconds Unit(int64_t seconds) const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(options_.nats_second) * seconds;
  }
  Result<std::shared_ptr<const SubInfo>> Find(const std::string& subscription);  // any thread
  std::string ReplySubject(uint64_t token) const { return reply_prefix_ + std::to_string(token); }
  // A reply token on the shared inbox; `on` runs on the backend thread.
  uint64_t AddWaiter(std::function<void(Incoming&)> on);
  void DropWaiter(uint64_t token) { waiters_.erase(token); }
  // An inbox subscription of its own (JetStream deliveries keep their original subject, so
  // they can only be told apart by the subscription they arrive on).
  Result<std::pair<natsSubscription*, std::string>> SubscribeInbox(
      uint64_t* route, std::function<void(Incoming&)> on);  // any thread
  void UnsubscribeInbox(natsSubscription* sub, uint64_t route);
  void Track(std::shared_ptr<Op> op) { live_[op.get()] = std::move(op); }
  void Untrack(Op* op) { live_.erase(op); }

  // What a delivery goes through before anyone sees it: a message past its dead-letter
  // attempts is forwarded there, one the filter rejects is acknowledged; true when it is
  // handed out (and then leased, for exactly-once).
  bool Admit(const std::shared_ptr<const SubInfo>& sub, Delivery& d);
  void SendNak(const std::string& ack_id) {
    natsConnection_PublishString(nc_, ack_id.c_str(), kNakPayload);
  }

  // The settle calls, shared by the queue and its streams; `cb` runs on the backend thread.
  enum class SettleKind { kAck, kNack, kProgress, kTerm };
  void Settle(std::shared_ptr<const SubInfo> sub, SettleKind kind, std::vector<std::string> ids,
              std::chrono::seconds delay, AckCallback cb);
  void ExtendOn(std::shared_ptr<const SubInfo> sub, std::vector<std::string> ids,
                std::chrono::seconds lease, AckCallback cb);
  void TerminateOn(std::shared_ptr<const SubInfo> sub, std::vector<Delivery> deliveries,
                   AckCallback cb);
  void PublishOn(std::string topic_path, std::vector<Message> messages, PublishCallback cb);
  // Asks JetStream (without blocking) whether `stream` exists: `done(false)` only on the API's
  // "stream not found"; no answer, or any other, says nothing.
  void CheckStreamMissing(const std::string& stream, std::function<void()> missing);

 private:
  struct Keepalive {
    Clock::time_point until;
    std::shared_ptr<asio::steady_timer> timer;
  };

  Result<std::string> ResolveTopic(const std::string& topic) {
    return ResolveName(options_.project, topic, ResourceKind::kTopic);
  }
  nats::TopicNames TopicNamesOf(const std::string& topic_path) const;
  jsOptions ApiOptions() const {
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = options_.call_timeout.count();
    return o;
  }
  // One JetStream API call, asked again while it goes unanswered. A stream or consumer whose
  // Raft group has no leader yet (a cluster just formed, a failover) drops requests instead of
  // answering them; short waits, asked again within the call timeout, end as soon as the
  // election does. `call` gets the options to pass and must reset its own outputs.
  template <typename Call>
  natsStatus AskJetStream(Call&& call) const {
    const auto give_up = Clock::now() + options_.call_timeout;
    jsOptions jo = ApiOptions();
    jo.Wait = std::min<int64_t>(kApiAttemptMillis, options_.call_timeout.count());
    for (;;) {
      const natsStatus s = call(&jo);
      if (s != NATS_TIMEOUT || Clock::now() + std::chrono::milliseconds(jo.Wait) > give_up) {
        return s;
      }
    }
  }
  Status EnsureConsumer(const SubInfo& info);
  Result<std::shared_ptr<SubInfo>> Lookup(const std::string& path);
  void ScheduleKeepalive(const std::string& id, std::chrono::nanoseconds ack_wait);
  void ForgetKeepalive(const std::string& id);
  void Dispatch(uint64_t route, Incoming& in);

  const QueueOptions options_;
  natsOptions* nats_options_ = nullptr;
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
  kvStore* directory_ = nullptr;
  natsSubscription* reply_sub_ = nullptr;
  uint64_t reply_route_ = 0;
  std::string inbox_;         // _INBOX.<nuid>
  std::string reply_prefix_;  // _INBOX.<nuid>.r.
  std::string msg_id_prefix_;
  std::atomic<uint64_t> next_msg_id_{1};

  std::mutex cache_mu_;
  std::unordered_map<std::string, std::shared_ptr<const SubInfo>> cache_;

  std::mutex routes_mu_;
  std::unordered_map<uint64_t, std::function<void(Incoming&)>> routed_;  // route → handler

  // Backend thread only.
  uint64_t next_token_ = 1;
  std::unordered_map<uint64_t, std::function<void(Incoming&)>> waiters_;
  std::unordered_map<Op*, std::shared_ptr<Op>> live_;
  std::unordered_map<std::string, Keepalive> keepalives_;
  bool closed_ = false;  // set first at shutdown: nothing may use the connection afterwards

  // Last: destroyed first, after waiting for every callback still to run.
  BackendThread thread_;
};

// ---- RequestBatch

RequestBatch::RequestBatch(NatsQueue* queue, std::vector<Item> items, OnReply on_reply,
                           OnFinish on_finish, Clock::time_point deadline)
    : queue_(queue),
      items_(std::move(items)),
      on_reply_(std::move(on_reply)),
      on_finish_(std::move(on_finish)),
      deadline_(deadline),
      timer_(queue->io()),
      remaining_(items_.size()) {}

void RequestBatch::Start() {
  if (items_.empty()) {
    Finish(Status::Ok());
    return;
  }
  queue_->Track(shared_from_this());
  std::weak_ptr<RequestBatch> weak = weak_from_this();
  for (size_t i = 0; i < items_.size(); ++i) {
    items_[i].token = queue_->AddWaiter([weak, i](Incoming& in) {
      auto self = weak.lock();
      if (!self || self->finished_ || self->items_[i].done) return;
      auto [verdict, status] = self->on_reply_(i, in);
      if (verdict == Verdict::kFailed) {
        self->Finish(status);
        return;
      }
      if (verdict == Verdict::kResend) return;  // sent again with the others on the timer
      self->items_[i].done = true;
      self->queue_->DropWaiter(self->items_[i].token);
      if (--self->remaining_ == 0) self->Finish(Status::Ok());
    });
  }
  SendPending();
  if (finished_) return;
  timer_.expires_at(std::min(deadline_, Clock::now() + kResendInterval));
  timer_.async_wait([weak](const boost::system::error_code& ec) {
    if (auto self = weak.lock(); self && !ec) self->OnTimer();
  });
}

void RequestBatch::SendPending() {
  for (auto& item : items_) {
    if (item.done) continue;
    const natsStatus s = item.send(queue_->ReplySubject(item.token));
    if (s != NATS_OK) last_send_error_ = FromNats(s, "send");
  }
}

void RequestBatch::OnTimer() {
  if (finished_) return;
  if (Clock::now() >= deadline_) {
    Finish(last_send_error_.ok()
               ? Status::DeadlineExceeded("no answer from NATS within the call timeout")
               : last_send_error_);
    return;
  }
  SendPending();
  std::weak_ptr<RequestBatch> weak = weak_from_this();
  timer_.expires_at(std::min(deadline_, Clock::now() + kResendInterval));
  timer_.async_wait([weak](const boost::system::error_code& ec) {
    if (auto self = weak.lock(); self && !ec) self->OnTimer();
  });
}

void RequestBatch::Finish(Status status) {
  if (finished_) return;
  finished_ = true;
  timer_.cancel();
  for (auto& item : items_) queue_->DropWaiter(item.token);
  auto done = std::move(on_finish_);
  auto keep = shared_from_this();
  queue_->Untrack(this);
  if (done) done(std::move(status));
}

// ---- Pull: one batch through pull requests of our own.
//
// First a no_wait request for up to max messages (the server answers at once: what there is,
// then a 404/408 status); when that brings nothing, a waiting request for ONE message that
// expires just before max_wait; once that one arrived, another no_wait request tops the batch
// up. A request never asks for more than the op still takes, so nothing arrives that has no
// place, and the inbox is the op's own, so no message of another request can land in it.

class PullOp : public Op, public std::enable_shared_from_this<PullOp> {
 public:
  PullOp(NatsQueue* queue, std::shared_ptr<const SubInfo> sub, int max_messages,
         Clock::time_point deadline, PullCallback done)
      : queue_(queue),
        sub_(std::move(sub)),
        max_(max_messages),
        deadline_(deadline),
        done_(std::move(done)),
        timer_(queue->io()) {}

  void Start() {
    queue_->Track(shared_from_this());
    std::weak_ptr<PullOp> weak = weak_from_this();
    auto inbox = queue_->SubscribeInbox(&route_, [weak](Incoming& in) {
      if (auto self = weak.lock()) self->OnIncoming(in);
    });
    if (!inbox.ok()) {
      Finish(inbox.status());
      return;
    }
    sub_handle_ = inbox->first;
    inbox_ = inbox->second;
    timer_.expires_at(deadline_ + kLostRequestSlack);
    timer_.async_wait([weak](const boost::system::error_code& ec) {
      if (auto self = weak.lock(); self && !ec) self->Finish(Status::Ok());
    });
    Request(max_, /*no_wait=*/true);
  }

  void Abort(const Status& why) override { Finish(why); }

 private:
  enum class Phase { kNoWait, kWait, kTopUp };

  void Request(int batch, bool no_wait) {
    const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
        deadline_ - Clock::now() - kServerExpiryMargin);
    if (!no_wait && left.count() <= 0) {
      Finish(Status::Ok());
      return;
    }
    phase_ = no_wait ? (got_.empty() ? Phase::kNoWait : Phase::kTopUp) : Phase::kWait;
    requested_ = batch;
    received_ = 0;
    json::object body{{"batch", batch}};
    if (no_wait) {
      body["no_wait"] = true;
    } else {
      body["expires"] = left.count();
    }
    const std::string text = json::serialize(body);
    const natsStatus s =
        natsConnection_PublishRequest(queue_->connection(), sub_->next_subject.c_str(),
                                      inbox_.c_str(), text.data(), static_cast<int>(text.size()));
    if (s != NATS_OK) Finish(FromNats(s, "pull from " + sub_->path));
  }

  void OnIncoming(Incoming& in) {
    if (finished_) {
      if (IsUserMessage(in)) queue_->SendNak(in.reply);
      return;
    }
    if (IsUserMessage(in)) {
      ++received_;
      if (auto d = ToDelivery(in); d && queue_->Admit(sub_, *d)) got_.push_back(std::move(*d));
      if (received_ >= requested_) RequestEnded();
      return;
    }
    if (in.status == "404" || in.status == "408") {
      RequestEnded();
    } else if (in.status == "409") {
      if (in.description.find("Deleted") != std::string::npos) {
        Finish(Status::NotFound(sub_->path + ": the JetStream consumer was deleted"));
      } else {
        RequestEnded();
      }
    }
  }

  void RequestEnded() {
    if (phase_ == Phase::kWait && !got_.empty() && static_cast<int>(got_.size()) < max_) {
      Request(max_ - static_cast<int>(got_.size()), /*no_wait=*/true);
      return;
    }
    if (!got_.empty()) {
      Finish(Status::Ok());
      return;
    }
    Request(1, /*no_wait=*/false);  // finishes empty when no time is left
  }

  void Finish(Status status) {
    if (finished_) return;
    finished_ = true;
    timer_.cancel();
    auto keep = shared_from_this();
    queue_->Untrack(this);
    if (sub_handle_ != nullptr) {
      // Anything that still arrives for a request the server keeps is NAKed by the router.
      queue_->UnsubscribeInbox(sub_handle_, route_);
      sub_handle_ = nullptr;
    }
    auto done = std::move(done_);
    if (!status.ok()) {
      for (const auto& d : got_) queue_->SendNak(d.ack_id);
      done(status);
      return;
    }
    done(std::move(got_));
  }

  NatsQueue* const queue_;
  const std::shared_ptr<const SubInfo> sub_;
  const int max_;
  const Clock::time_point deadline_;
  PullCallback done_;
  asio::steady_timer timer_;
  natsSubscription* sub_handle_ = nullptr;
  uint64_t route_ = 0;
  std::string inbox_;
  Phase phase_ = Phase::kNoWait;
  int requested_ = 0;
  int received_ = 0;
  std::vector<Delivery> got_;
  bool finished_ = false;
};

// ---- streams: one inbox per stream, one waiting pull request at a time sized to the credit
// that flow control leaves, replaced when it ends (batch complete, expired) or is lost.

class StreamCore : public Op, public std::enable_shared_from_this<StreamCore> {
 public:
  StreamCore(NatsQueue* queue, std::shared_ptr<const SubInfo> sub, FlowControl flow,
             DeliveryHandler on_messages, StreamErrorHandler on_error)
      : queue_(queue),
        sub_(std::move(sub)),
        flow_(flow),
        on_messages_(std::move(on_messages)),
        on_error_(std::move(on_error)),
        timer_(queue->io()) {}

  Status Open() {
    std::weak_ptr<StreamCore> weak = weak_from_this();
    auto inbox = queue_->SubscribeInbox(&route_, [weak](Incoming& in) {
      if (auto self = weak.lock()) self->OnIncoming(in);
    });
    if (!inbox.ok()) return inbox.status();
    sub_handle_ = inbox->first;
    inbox_ = inbox->second;
    queue_->thread().Post([self = shared_from_this()] {
      self->queue_->Track(self);
      self->Pump();
    });
    return Status::Ok();
  }

  const std::shared_ptr<const SubInfo>& sub() const { return sub_; }

  int64_t outstanding_messages() {
    std::lock_guard lock(mu_);
    return static_cast<int64_t>(outstanding_.size());
  }

  // The app settled `ids` (any thread): they stop counting for flow control at once.
  void Release(const std::vector<std::string>& ids) {
    bool freed = false;
    {
      std::lock_guard lock(mu_);
      for (const auto& id : ids) {
        auto it = outstanding_.find(id);
        if (it == outstanding_.end()) continue;
        outstanding_bytes_ -= it->second;
        outstanding_.erase(it);
        freed = true;
        auto key = key_of_.find(id);
        if (key == key_of_.end()) continue;
        if (--keys_outstanding_[key->second] <= 0) keys_outstanding_.erase(key->second);
        key_of_.erase(key);
      }
    }
    if (freed) SchedulePump();
  }

  AckCallback TrackSettle(AckCallback done) {
    {
      std::lock_guard lock(mu_);
      ++settling_;
    }
    return [self = shared_from_this(), done = std::move(done)](AckOutcome outcome) {
      if (done) done(std::move(outcome));
      std::lock_guard lock(self->mu_);
      if (--self->settling_ == 0) self->cv_.notify_all();
    };
  }

  void StopPulling() {
    {
      std::lock_guard lock(mu_);
      if (stopped_) return;
      stopped_ = true;
    }
    auto stop = [self = shared_from_this()] { self->StopOnThread(); };
    if (queue_->thread().InThread()) {
      stop();
    } else {
      queue_->thread().Post(stop);
    }
  }

  void Close() {
    {
      std::lock_guard lock(mu_);
      if (close_started_) return;
      close_started_ = true;
    }
    StopPulling();
    if (!queue_->thread().InThread()) {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return settling_ == 0; });
    }
    closed_.store(true);
    queue_->thread().Barrier();
  }

  void Abort(const Status&) override { StopOnThread(); }

 private:
  bool Stopped() {
    std::lock_guard lock(mu_);
    return stopped_;
  }

  void SchedulePump() {
    std::lock_guard lock(mu_);
    if (stopped_ || pump_scheduled_) return;
    pump_scheduled_ = true;
    queue_->thread().Post([self = shared_from_this()] { self->Pump(); });
  }

  bool FitsLocked(size_t size) const {
    const auto messages = static_cast<int64_t>(outstanding_.size());
    if (flow_.max_outstanding_messages > 0 && messages >= flow_.max_outstanding_messages) {
      return false;
    }
    // A message bigger than the whole budget still goes out when nothing is outstanding.
    return flow_.max_outstanding_bytes <= 0 || messages == 0 ||
           outstanding_bytes_ + static_cast<int64_t>(size) <= flow_.max_outstanding_bytes;
  }

  // Backend thread: hands out what fits, then asks for more when credit is left.
  void Pump() {
    std::vector<Delivery> batch;
    int64_t credit = 0;
    {
      std::lock_guard lock(mu_);
      pump_scheduled_ = false;
      if (stopped_) return;
      // With message ordering, a message waits while an earlier one of its key is
      // outstanding in this stream (or still waits itself); other keys pass it.
      std::unordered_set<std::string> blocked;
      for (auto it = pending_.begin(); it != pending_.end();) {
        const std::string& key = it->message.ordering_key;
        if (sub_->ordering && !key.empty() &&
            (blocked.contains(key) || keys_outstanding_.contains(key))) {
          blocked.insert(key);
          ++it;
          continue;
        }
        if (!FitsLocked(it->size())) break;
        outstanding_[it->ack_id] = static_cast<int64_t>(it->size());
        outstanding_bytes_ += static_cast<int64_t>(it->size());
        if (sub_->ordering && !key.empty()) {
          ++keys_outstanding_[key];
          key_of_[it->ack_id] = key;
        }
        batch.push_back(std::move(*it));
        it = pending_.erase(it);
      }
      credit = kMaxStreamBatch;
      if (flow_.max_outstanding_messages > 0) {
        credit = std::min<int64_t>(
            credit, flow_.max_outstanding_messages - static_cast<int64_t>(outstanding_.size()));
      }
      if (flow_.max_outstanding_bytes > 0 && !outstanding_.empty() &&
          outstanding_bytes_ >= flow_.max_outstanding_bytes) {
        credit = 0;
      }
      // Messages wait for credit: ask for none. With ordering they may wait for their key
      // only, so ask for what the message limit leaves beside them.
      if (!pending_.empty()) {
        credit = sub_->ordering ? credit - static_cast<int64_t>(pending_.size()) : 0;
      }
    }
    if (!batch.empty() && !closed_.load() && on_messages_) on_messages_(std::move(batch));
    if (credit > 0 && request_token_ == 0) Request(credit);
  }

  void Request(int64_t batch) {
    const auto expiry = answered_ ? kStreamPullExpiry : kProbePullExpiry;
    const auto slack = answered_ ? kLostRequestSlack : kProbeLostRequestSlack;
    const auto expires = std::chrono::duration_cast<std::chrono::nanoseconds>(expiry);
    const std::string text =
        json::serialize(json::object{{"batch", batch}, {"expires", expires.count()}});
    request_token_ = ++request_counter_;
    requested_ = batch;
    received_ = 0;
    const natsStatus s =
        natsConnection_PublishRequest(queue_->connection(), sub_->next_subject.c_str(),
                                      inbox_.c_str(), text.data(), static_cast<int>(text.size()));
    // A failed send (connection down) is retried when the request counts as lost.
    (void)s;
    std::weak_ptr<StreamCore> weak = weak_from_this();
    const uint64_t token = request_token_;
    timer_.expires_after(expiry + slack);
    timer_.async_wait([weak, token](const boost::system::error_code& ec) {
      auto self = weak.lock();
      if (!self || ec || self->request_token_ != token) return;
      self->answered_ = false;
      self->RequestEnded();  // lost with its server: ask again
    });
  }

  void RequestEnded() {
    request_token_ = 0;
    timer_.cancel();
    Pump();
  }

  void OnIncoming(Incoming& in) {
    answered_ = true;
    if (IsUserMessage(in)) {
      if (Stopped()) {
        queue_->SendNak(in.reply);
        return;
      }
      ++received_;
      auto d = ToDelivery(in);
      if (d && queue_->Admit(sub_, *d)) {
        std::lock_guard lock(mu_);
        pending_.push_back(std::move(*d));
      }
      if (request_token_ != 0 && received_ >= requested_) {
        request_token_ = 0;
        timer_.cancel();
      }
      SchedulePump();
      return;
    }
    if (request_token_ == 0) return;
    if (in.status == "404" || in.status == "408") {
      RequestEnded();
    } else if (in.status == "409") {
      if (in.description.find("Deleted") != std::string::npos) {
        Fail(Status::NotFound(sub_->path + ": the JetStream consumer was deleted"));
      } else {
        RequestEnded();
      }
    }
  }

  void Fail(Status status) {
    StopPulling();
    if (!closed_.load() && on_error_) on_error_(std::move(status));
  }

  void StopOnThread() {
    {
      std::lock_guard lock(mu_);
      stopped_ = true;
    }
    timer_.cancel();
    request_token_ = 0;
    std::deque<Delivery> held;
    {
      std::lock_guard lock(mu_);
      held.swap(pending_);
    }
    // Received, never handed out: another subscriber may have them at once.
    for (const auto& d : held) queue_->SendNak(d.ack_id);
    if (sub_handle_ != nullptr) {
      queue_->UnsubscribeInbox(sub_handle_, route_);
      sub_handle_ = nullptr;
    }
    queue_->Untrack(this);
  }

  NatsQueue* const queue_;
  const std::shared_ptr<const SubInfo> sub_;
  const FlowControl flow_;
  const DeliveryHandler on_messages_;
  const StreamErrorHandler on_error_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Delivery> pending_;                          // received, waiting for credit
  std::unordered_map<std::string, int64_t> outstanding_;  // handed out: ack id → bytes
  int64_t outstanding_bytes_ = 0;
  std::unordered_map<std::string, int64_t> keys_outstanding_;  // ordering key → handed out
  std::unordered_map<std::string, std::string> key_of_;        // ack id → ordering key
  bool stopped_ = false;
  bool close_started_ = false;
  bool pump_scheduled_ = false;
  int64_t settling_ = 0;
  std::atomic<bool> closed_{false};

  // Backend thread only (inbox_ and sub_handle_ are set before the first post).
  asio::steady_timer timer_;
  natsSubscription* sub_handle_ = nullptr;
  uint64_t route_ = 0;
  std::string inbox_;
  uint64_t request_counter_ = 0;
  uint64_t request_token_ = 0;  // the open request; 0: none
  bool answered_ = false;       // the server answered a request since the last one was lost
  int64_t requested_ = 0;
  int64_t received_ = 0;
};

class NatsStream final : public MessageStream {
 public:
  NatsStream(NatsQueue* queue, std::shared_ptr<StreamCore> core)
      : queue_(queue), core_(std::move(core)) {}
  ~NatsStream() override { Close(); }

  void StopPulling() override { core_->StopPulling(); }
  void Ack(std::vector<std::string> ack_ids, AckCallback done) override {
    Settle(NatsQueue::SettleKind::kAck, std::move(ack_ids), std::chrono::seconds(0),
           std::move(done));
  }
  void Nack(std::vector<std::string> ack_ids, std::chrono::seconds delay,
            AckCallback done) override {
    Settle(NatsQueue::SettleKind::kNack, std::move(ack_ids), delay, std::move(done));
  }
  void ExtendLease(std::vector<std::string> ack_ids, std::chrono::seconds lease,
                   AckCallback done) override {
    auto cb = queue_->thread().Wrap(core_->TrackSettle(std::move(done)));
    queue_->thread().Post([q = queue_, sub = core_->sub(), ids = std::move(ack_ids), lease,
                           cb = std::move(cb)]() mutable {
      q->ExtendOn(std::move(sub), std::move(ids), lease, std::move(cb));
    });
  }
  void Terminate(std::vector<Delivery> deliveries, AckCallback done) override {
    std::vector<std::string> ids;
    for (const auto& d : deliveries) ids.push_back(d.ack_id);
    core_->Release(ids);
    auto cb = queue_->thread().Wrap(core_->TrackSettle(std::move(done)));
    queue_->thread().Post(
        [q = queue_, sub = core_->sub(), ds = std::move(deliveries), cb = std::move(cb)]() mutable {
          q->TerminateOn(std::move(sub), std::move(ds), std::move(cb));
        });
  }
  int64_t outstanding_messages() const override { return core_->outstanding_messages(); }
  void Close() override { core_->Close(); }

 private:
  void Settle(NatsQueue::SettleKind kind, std::vector<std::string> ids, std::chrono::seconds delay,
              AckCallback done) {
    core_->Release(ids);
    auto cb = queue_->thread().Wrap(core_->TrackSettle(std::move(done)));
    queue_->thread().Post([q = queue_, sub = core_->sub(), kind, ids = std::move(ids), delay,
                           cb = std::move(cb)]() mutable {
      q->Settle(std::move(sub), kind, std::move(ids), delay, std::move(cb));
    });
  }

  NatsQueue* const queue_;
  const std::shared_ptr<StreamCore> core_;
};

// ---- NatsQueue

Status NatsQueue::Connect() {
  if (options_.nats_servers.empty()) {
    return Status::InvalidArgument("queue backend \"nats\" needs QueueOptions::nats_servers");
  }
  if (Status prefix = CheckNatsPrefix(options_.nats_prefix); !prefix.ok()) {
    return Status::InvalidArgument("nats_prefix: " + prefix.message());
  }
  if (options_.nats_replicas < 1 || options_.nats_second.count() <= 0) {
    return Status::InvalidArgument("nats_replicas and nats_second must be positive");
  }
  std::vector<const char*> servers;
  for (const auto& s : options_.nats_servers) servers.push_back(s.c_str());
  natsStatus s = natsOptions_Create(&nats_options_);
  if (s == NATS_OK) {
    s = natsOptions_SetServers(nats_options_, servers.data(), static_cast<int>(servers.size()));
  }
  if (s == NATS_OK) s = natsOptions_SetName(nats_options_, "tidepool");
  if (s == NATS_OK) s = natsOptions_SetTimeout(nats_options_, options_.call_timeout.count());
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(nats_options_, -1);  // forever
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(nats_options_, kReconnectWaitMillis);
  if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(nats_options_, kReconnectBufferBytes);
  // Inbox subscriptions come and go with every Pull: a shared delivery pool, not a thread each.
  if (s == NATS_OK) s = natsOptions_UseGlobalMessageDelivery(nats_options_, true);
  if (s == NATS_OK) s = natsConnection_Connect(&nc_, nats_options_);
  if (s != NATS_OK) return FromNats(s, "connect to NATS");
  jsOptions jo = ApiOptions();
  s = natsConnection_JetStream(&js_, nc_, &jo);
  if (s != NATS_OK) return FromNats(s, "JetStream context");

  natsInbox* inbox = nullptr;
  s = natsInbox_Create(&inbox);
  if (s != NATS_OK) return FromNats(s, "inbox");
  inbox_ = inbox;
  natsInbox_Destroy(inbox);
  reply_prefix_ = inbox_ + ".r.";
  msg_id_prefix_ = inbox_.substr(inbox_.find('.') + 1) + "-";

  // A cluster still electing its metadata leader drops JetStream API requests without an
  // answer, and the first call would sit out a whole call timeout. Short probes until it
  // answers (within the call timeout) make start-up as quick as the election.
  {
    const auto give_up = Clock::now() + options_.call_timeout;
    jsOptions probe = ApiOptions();
    probe.Wait = std::min<int64_t>(kReadyProbeMillis, options_.call_timeout.count());
    for (;;) {
      jsAccountInfo* info = nullptr;
      jsErrCode jerr = static_cast<jsErrCode>(0);
      s = js_GetAccountInfo(&info, js_, &probe, &jerr);
      if (info != nullptr) jsAccountInfo_Destroy(info);
      if (s == NATS_OK || Clock::now() >= give_up) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(kReadyProbeMillis / 4));
    }
    if (s != NATS_OK) return FromNats(s, "JetStream did not answer");
  }

  // The subscription directory.
  const std::string bucket = nats::DirectoryBucket(options_.nats_prefix);
  s = js_KeyValue(&directory_, js_, bucket.c_str());
  if (s != NATS_OK) {
    kvConfig cfg;
    kvConfig_Init(&cfg);
    cfg.Bucket = bucket.c_str();
    cfg.History = 1;
    cfg.Replicas = options_.nats_replicas;
    cfg.StorageType = js_FileStorage;
    s = js_CreateKeyValue(&directory_, js_, &cfg);
    if (s != NATS_OK) s = js_KeyValue(&directory_, js_, bucket.c_str());  // created meanwhile
    if (s != NATS_OK) return FromNats(s, "subscription directory " + bucket);
  }

  // The shared reply inbox (publish acks, settle replies).
  reply_route_ = g_next_route.fetch_add(1);
  {
    std::lock_guard lock(g_routes_mu);
    Routes()[reply_route_] = this;
  }
  const std::string wildcard = reply_prefix_ + "*";
  s = natsConnection_Subscribe(&reply_sub_, nc_, wildcard.c_str(), OnInboxMessage,
                               reinterpret_cast<void*>(static_cast<uintptr_t>(reply_route_)));
  if (s == NATS_OK) s = natsSubscription_SetPendingLimits(reply_sub_, -1, -1);
  if (s != NATS_OK) return FromNats(s, "subscribe " + wildcard);
  return Status::Ok();
}

NatsQueue::~NatsQueue() {
  {
    // From here on nothing reaches the backend thread from nats.c.
    std::lock_guard lock(g_routes_mu);
    Routes().erase(reply_route_);
    std::lock_guard routes_lock(routes_mu_);
    for (const auto& [route, on] : routed_) Routes().erase(route);
  }
  // Ops still in flight end with UNAVAILABLE; their callbacks run before the thread stops.
  thread_.Post([this] {
    closed_ = true;
    auto live = live_;
    for (auto& [raw, op] : live) op->Abort(Status::Unavailable("nats queue closed"));
    live_.clear();
    for (auto& [id, k] : keepalives_) k.timer->cancel();
    keepalives_.clear();
    waiters_.clear();
  });
  thread_.Barrier();
  if (reply_sub_ != nullptr) {
    natsSubscription_Unsubscribe(reply_sub_);
    natsSubscription_Destroy(reply_sub_);
  }
  kvStore_Destroy(directory_);
  jsCtx_Destroy(js_);
  if (nc_ != nullptr) {
    natsConnection_Close(nc_);
    natsConnection_Destroy(nc_);
  }
  natsOptions_Destroy(nats_options_);
}

void OnInboxMessage(natsConnection* nc, natsSubscription*, natsMsg* m, void* closure) {
  const auto route = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(closure));
  Incoming in = ToIncoming(m);
  natsMsg_Destroy(m);
  {
    std::lock_guard lock(g_routes_mu);
    auto it = Routes().find(route);
    if (it != Routes().end()) {
      it->second->Enqueue(route, std::move(in));
      return;
    }
  }
  // Nobody waits for it any more: let the server redeliver it at once.
  if (IsUserMessage(in)) natsConnection_PublishString(nc, in.reply.c_str(), kNakPayload);
}

void NatsQueue::Dispatch(uint64_t route, Incoming& in) {
  if (closed_) return;
  if (route == reply_route_) {
    const std::string_view subject = in.subject;
    if (!subject.starts_with(reply_prefix_)) return;
    uint64_t token = 0;
    const auto tail = subject.substr(reply_prefix_.size());
    std::from_chars(tail.data(), tail.data() + tail.size(), token);
    auto it = waiters_.find(token);
    if (it != waiters_.end()) {
      auto on = it->second;  // may drop itself
      on(in);
    }
    return;
  }
  std::function<void(Incoming&)> on;
  {
    std::lock_guard lock(routes_mu_);
    auto it = routed_.find(route);
    if (it != routed_.end()) on = it->second;
  }
  if (on) {
    on(in);
  } else if (IsUserMessage(in)) {
    SendNak(in.reply);
  }
}

uint64_t NatsQueue::AddWaiter(std::function<void(Incoming&)> on) {
  const uint64_t token = next_token_++;
  waiters_[token] = std::move(on);
  return token;
}

Result<std::pair<natsSubscription*, std::string>> NatsQueue::SubscribeInbox(
    uint64_t* route, std::function<void(Incoming&)> on) {
  *route = g_next_route.fetch_add(1);
  const std::string subject = inbox_ + ".s." + std::to_string(*route);
  {
    std::lock_guard lock(routes_mu_);
    routed_[*route] = std::move(on);
  }
  {
    std::lock_guard lock(g_routes_mu);
    Routes()[*route] = this;
  }
  natsSubscription* sub = nullptr;
  natsStatus s = natsConnection_Subscribe(&sub, nc_, subject.c_str(), OnInboxMessage,
                                          reinterpret_cast<void*>(static_cast<uintptr_t>(*route)));
  if (s == NATS_OK) s = natsSubscription_SetPendingLimits(sub, -1, -1);
  if (s != NATS_OK) {
    natsSubscription_Destroy(sub);
    UnsubscribeInbox(nullptr, *route);
    return FromNats(s, "subscribe " + subject);
  }
  return std::make_pair(sub, subject);
}

void NatsQueue::UnsubscribeInbox(natsSubscription* sub, uint64_t route) {
  {
    std::lock_guard lock(g_routes_mu);
    Routes().erase(route);
  }
  {
    std::lock_guard lock(routes_mu_);
    routed_.erase(route);
  }
  if (sub != nullptr) {
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
  }
}

nats::TopicNames NatsQueue::TopicNamesOf(const std::string& topic_path) const {
  auto parsed = broker::ParseResourceName(topic_path, ResourceKind::kTopic);
  return nats::NamesForTopic(options_.nats_prefix, parsed.ok() ? parsed->project : "",
                             parsed.ok() ? parsed->id : topic_path);
}

Status NatsQueue::EnsureTopic(const std::string& topic) {
  TP_ASSIGN_OR_RETURN(std::string path, ResolveTopic(topic));
  const nats::TopicNames names = TopicNamesOf(path);
  jsErrCode err = static_cast<jsErrCode>(0);
  natsStatus s = AskJetStream([&](jsOptions* jo) {
    jsStreamInfo* si = nullptr;
    err = static_cast<jsErrCode>(0);
    const natsStatus r = js_GetStreamInfo(&si, js_, names.stream.c_str(), jo, &err);
    jsStreamInfo_Destroy(si);
    return r;
  });
  if (s == NATS_OK) return Status::Ok();
  if (err != JSStreamNotFoundErr && s != NATS_NOT_FOUND) {
    return Named(FromNats(s, "stream info " + names.stream), path);
  }
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = names.stream.c_str();
  const char* subjects[] = {names.subject.c_str()};
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  // Like a Pub/Sub topic: a message stays until every subscription acknowledged it (or the
  // retention ends), and a new subscription sees only what is published after it.
  cfg.Retention = js_InterestPolicy;
  cfg.Storage = js_FileStorage;
  cfg.Replicas = options_.nats_replicas;
  cfg.MaxAge = kRetentionSeconds * 1'000'000'000;
  cfg.Duplicates = kDuplicateWindowSeconds * 1'000'000'000;
  const std::string description = "tidepool topic " + path;
  cfg.Description = description.c_str();
  s = AskJetStream([&](jsOptions* jo) {
    jsStreamInfo* si = nullptr;
    err = static_cast<jsErrCode>(0);
    const natsStatus r = js_AddStream(&si, js_, &cfg, jo, &err);
    jsStreamInfo_Destroy(si);
    return r;
  });
  if (s == NATS_OK || err == JSStreamNameExistErr) return Status::Ok();
  return Named(FromNats(s, "create stream " + names.stream), path);
}

Status NatsQueue::EnsureConsumer(const SubInfo& info) {
  jsErrCode err = static_cast<jsErrCode>(0);
  natsStatus s = AskJetStream([&](jsOptions* jo) {
    jsConsumerInfo* ci = nullptr;
    err = static_cast<jsErrCode>(0);
    const natsStatus r =
        js_GetConsumerInfo(&ci, js_, info.stream.c_str(), info.consumer.c_str(), jo, &err);
    jsConsumerInfo_Destroy(ci);
    return r;
  });
  if (s == NATS_OK) return Status::Ok();
  if (err == JSStreamNotFoundErr) return Status::NotFound(info.topic + ": topic not found");
  if (err != JSConsumerNotFoundErr && s != NATS_NOT_FOUND) {
    return FromNats(s, "consumer info " + info.consumer);
  }
  const nats::TopicNames names = TopicNamesOf(info.topic);
  jsConsumerConfig cfg;
  jsConsumerConfig_Init(&cfg);
  cfg.Durable = info.consumer.c_str();
  const std::string description = "tidepool subscription " + info.path;
  cfg.Description = description.c_str();
  cfg.DeliverPolicy = js_DeliverNew;
  cfg.AckPolicy = js_AckExplicit;
  cfg.AckWait = Unit(info.ack_deadline_seconds).count();
  // One more delivery than the dead-letter policy allows: that one is forwarded to the
  // dead-letter topic by whichever client receives it (see Admit).
  cfg.MaxDeliver = info.dead_letter_topic.empty() ? -1 : info.max_delivery_attempts + 1;
  cfg.FilterSubject = names.subject.c_str();
  cfg.MaxAckPending = options_.nats_max_ack_pending;
  cfg.ReplayPolicy = js_ReplayInstant;
  // Seconds of the real clock, not nats_second: the test clock shrinks leases, not lifetimes.
  if (info.expiration_seconds > 0) cfg.InactiveThreshold = info.expiration_seconds * 1'000'000'000;
  s = AskJetStream([&](jsOptions* jo) {
    jsConsumerInfo* ci = nullptr;
    err = static_cast<jsErrCode>(0);
    const natsStatus r = js_AddConsumer(&ci, js_, info.stream.c_str(), &cfg, jo, &err);
    jsConsumerInfo_Destroy(ci);
    return r;
  });
  if (s == NATS_OK) return Status::Ok();
  if (err == JSStreamNotFoundErr) return Status::NotFound(info.topic + ": topic not found");
  return FromNats(s, "create consumer " + info.consumer);
}

Status NatsQueue::EnsureSubscription(const SubscriptionSpec& spec) {
  TP_ASSIGN_OR_RETURN(std::string path,
                      ResolveName(options_.project, spec.name, ResourceKind::kSubscription));
  TP_ASSIGN_OR_RETURN(std::string topic, ResolveTopic(spec.topic));
  auto existing = Lookup(path);
  if (existing.ok()) return Named(EnsureConsumer(**existing), path);
  if (existing.status().code() != StatusCode::kNotFound) return existing.status();

  auto info = std::make_shared<SubInfo>();
  info->path = path;
  info->topic = topic;
  info->ack_deadline_seconds = spec.ack_deadline_seconds;
  info->ordering = spec.enable_message_ordering;
  info->exactly_once = spec.enable_exactly_once_delivery;
  info->max_delivery_attempts = spec.max_delivery_attempts;
  info->expiration_seconds = spec.expiration_ttl.count();
  info->min_backoff_seconds = spec.min_backoff.count();
  info->max_backoff_seconds = spec.max_backoff.count();
  info->filter_text = spec.filter;
  auto filter = broker::Filter::Parse(spec.filter);
  if (!filter.ok()) return Named(filter.status(), path);
  if (!spec.dead_letter_topic.empty()) {
    TP_ASSIGN_OR_RETURN(info->dead_letter_topic, ResolveTopic(spec.dead_letter_topic));
  }
  auto parsed = broker::ParseResourceName(path, ResourceKind::kSubscription);
  if (!parsed.ok()) return Named(parsed.status(), path);
  info->stream = TopicNamesOf(topic).stream;
  info->consumer = nats::ConsumerName(parsed->project, parsed->id);
  TP_RETURN_IF_ERROR(Named(EnsureConsumer(*info), path));
  const std::string key = nats::DirectoryKey(parsed->project, parsed->id);
  const std::string value = json::serialize(SpecJson(*info));
  uint64_t revision = 0;
  const natsStatus s = kvStore_Create(&revision, directory_, key.c_str(), value.data(),
                                      static_cast<int>(value.size()));
  // Lost a race with another creator: theirs stands, as an existing subscription does.
  if (s != NATS_OK && !Lookup(path).ok()) {
    return Named(FromNats(s, "subscription directory"), path);
  }
  return Status::Ok();
}

Status NatsQueue::DeleteSubscription(const std::string& subscription) {
  TP_ASSIGN_OR_RETURN(std::string path,
                      ResolveName(options_.project, subscription, ResourceKind::kSubscription));
  auto info = Lookup(path);
  {
    std::lock_guard lock(cache_mu_);
    cache_.erase(path);
  }
  if (!info.ok()) {
    return info.status().code() == StatusCode::kNotFound ? Status::Ok() : info.status();
  }
  jsErrCode err = static_cast<jsErrCode>(0);
  const natsStatus s = AskJetStream([&](jsOptions* jo) {
    err = static_cast<jsErrCode>(0);
    return js_DeleteConsumer(js_, (*info)->stream.c_str(), (*info)->consumer.c_str(), jo, &err);
  });
  if (s != NATS_OK && err != JSConsumerNotFoundErr && err != JSStreamNotFoundErr &&
      s != NATS_NOT_FOUND) {
    return Named(FromNats(s, "delete consumer " + (*info)->consumer), path);
  }
  auto parsed = broker::ParseResourceName(path, ResourceKind::kSubscription);
  if (!parsed.ok()) return Named(parsed.status(), path);
  const std::string key = nats::DirectoryKey(parsed->project, parsed->id);
  const natsStatus d = kvStore_Delete(directory_, key.c_str());
  if (d != NATS_OK) return Named(FromNats(d, "subscription directory"), path);
  return Status::Ok();
}

Result<std::shared_ptr<SubInfo>> NatsQueue::Lookup(const std::string& path) {
  auto parsed = broker::ParseResourceName(path, ResourceKind::kSubscription);
  if (!parsed.ok()) return Named(parsed.status(), path);
  // Read from the bucket's stream leader (the STREAM.MSG.GET API), not with kvStore_Get: that
  // uses direct gets, which any replica answers, and a replica that has not applied a fresh
  // EnsureSubscription yet would call the subscription missing.
  const std::string bucket = nats::DirectoryBucket(options_.nats_prefix);
  const std::string stream = "KV_" + bucket;
  const std::string subject =
      "$KV." + bucket + "." + nats::DirectoryKey(parsed->project, parsed->id);
  natsMsg* entry = nullptr;
  jsErrCode err = static_cast<jsErrCode>(0);
  const natsStatus s = AskJetStream([&](jsOptions* jo) {
    natsMsg_Destroy(entry);
    entry = nullptr;
    err = static_cast<jsErrCode>(0);
    return js_GetLastMsg(&entry, js_, stream.c_str(), subject.c_str(), jo, &err);
  });
  if (s == NATS_NOT_FOUND || err == JSNoMessageFoundErr) {
    natsMsg_Destroy(entry);
    return Status::NotFound(path + ": subscription not found");
  }
  if (s != NATS_OK) return Named(FromNats(s, "subscription directory"), path);
  // A deleted subscription leaves a tombstone (KV-Operation: DEL) as the key's last message.
  const char* operation = nullptr;
  if (natsMsgHeader_Get(entry, "KV-Operation", &operation) == NATS_OK && operation != nullptr) {
    natsMsg_Destroy(entry);
    return Status::NotFound(path + ": subscription not found");
  }
  auto info = std::make_shared<SubInfo>();
  info->path = path;
  Status parsed_spec = SpecFromJson(
      std::string_view(natsMsg_GetData(entry), static_cast<size_t>(natsMsg_GetDataLength(entry))),
      info.get());
  natsMsg_Destroy(entry);
  TP_RETURN_IF_ERROR(Named(parsed_spec, path));
  info->project = parsed->project;
  info->stream = TopicNamesOf(info->topic).stream;
  info->consumer = nats::ConsumerName(parsed->project, parsed->id);
  info->next_subject = std::string(kNextPrefix) + info->stream + "." + info->consumer;
  return info;
}

Result<std::shared_ptr<const SubInfo>> NatsQueue::Find(const std::string& subscription) {
  TP_ASSIGN_OR_RETURN(std::string path,
                      ResolveName(options_.project, subscription, ResourceKind::kSubscription));
  {
    std::lock_guard lock(cache_mu_);
    auto it = cache_.find(path);
    if (it != cache_.end()) return it->second;
  }
  TP_ASSIGN_OR_RETURN(std::shared_ptr<SubInfo> info, Lookup(path));
  std::lock_guard lock(cache_mu_);
  auto [it, inserted] = cache_.emplace(path, std::move(info));
  return it->second;
}

void NatsQueue::Publish(const std::string& topic, std::vector<Message> messages,
                        PublishCallback done) {
  auto cb = thread_.Wrap(std::move(done));
  auto path = ResolveTopic(topic);
  if (!path.ok()) {
    cb(path.status());
    return;
  }
  thread_.Post([this, path = *path, messages = std::move(messages), cb = std::move(cb)]() mutable {
    PublishOn(std::move(path), std::move(messages), std::move(cb));
  });
}

void NatsQueue::PublishOn(std::string topic_path, std::vector<Message> messages,
                          PublishCallback cb) {
  if (messages.empty()) {
    cb(std::vector<std::string>{});
    return;
  }
  const nats::TopicNames names = TopicNamesOf(topic_path);
  const std::string subject = names.subject;
  auto ids = std::make_shared<std::vector<std::string>>(messages.size());
  // Set once the op exists: a 503 triggers a check whether the stream is there at all.
  auto op_ref = std::make_shared<std::weak_ptr<RequestBatch>>();
  auto checking = std::make_shared<bool>(false);
  auto shared = std::make_shared<std::vector<Message>>(std::move(messages));
  std::vector<RequestBatch::Item> items;
  for (size_t i = 0; i < shared->size(); ++i) {
    // The same id on every resend: JetStream stores the message once.
    const std::string msg_id = msg_id_prefix_ + std::to_string(next_msg_id_.fetch_add(1));
    items.push_back(
        RequestBatch::Item{.send = [this, subject, shared, i, msg_id](const std::string& reply) {
          auto m = BuildMessage(subject, reply, (*shared)[i], msg_id);
          if (!m.ok()) return NATS_INVALID_ARG;
          const natsStatus s = natsConnection_PublishMsg(nc_, *m);
          natsMsg_Destroy(*m);
          return s;
        }});
  }
  auto on_reply = [this, ids, topic_path, stream = names.stream, op_ref, checking](
                      size_t i, Incoming& in) -> std::pair<RequestBatch::Verdict, Status> {
    using V = RequestBatch::Verdict;
    if (in.status == "503") {
      // No responders: no stream takes the subject, or (in a cluster that fails over) none
      // does right now. Resent on the timer unless the stream turns out not to exist.
      if (!*checking) {
        *checking = true;
        CheckStreamMissing(stream, [op_ref, topic_path] {
          if (auto op = op_ref->lock())
            op->Fail(Status::NotFound(topic_path + ": topic not found"));
        });
      }
      return {V::kResend, Status::Ok()};
    }
    boost::system::error_code ec;
    json::value v = json::parse(in.data, ec);
    if (ec || !v.is_object()) return {V::kResend, Status::Ok()};
    const json::object& o = v.as_object();
    if (const json::value* error = o.if_contains("error"); error != nullptr) {
      const json::object* e = error->if_object();
      const int64_t code = e != nullptr && e->if_contains("code") && (*e).at("code").is_int64()
                               ? (*e).at("code").as_int64()
                               : 0;
      std::string description =
          e != nullptr && e->if_contains("description") && (*e).at("description").is_string()
              ? std::string((*e).at("description").as_string())
              : json::serialize(*error);
      // 503: JetStream is electing a leader or catching up; the resend may land.
      if (code == 503) return {V::kResend, Status::Ok()};
      return {V::kFailed, Status::FailedPrecondition(topic_path + ": " + description)};
    }
    const json::value* seq = o.if_contains("seq");
    if (seq == nullptr || !seq->is_int64()) return {V::kResend, Status::Ok()};
    (*ids)[i] = std::to_string(seq->as_int64());
    return {V::kDone, Status::Ok()};
  };
  auto on_finish = [ids, topic_path, cb = std::move(cb)](Status status) mutable {
    if (!status.ok()) {
      cb(Named(status, topic_path));
      return;
    }
    cb(std::move(*ids));
  };
  auto op =
      std::make_shared<RequestBatch>(this, std::move(items), std::move(on_reply),
                                     std::move(on_finish), Clock::now() + options_.call_timeout);
  *op_ref = op;
  op->Start();
}

void NatsQueue::CheckStreamMissing(const std::string& stream, std::function<void()> missing) {
  const std::string api = "$JS.API.STREAM.INFO." + stream;
  auto token = std::make_shared<uint64_t>(0);
  *token = AddWaiter([this, token, missing = std::move(missing)](Incoming& in) {
    DropWaiter(*token);
    boost::system::error_code ec;
    json::value v = json::parse(in.data, ec);
    if (ec || !v.is_object()) return;
    const json::value* error = v.as_object().if_contains("error");
    if (error == nullptr || !error->is_object()) return;
    const json::value* code = error->as_object().if_contains("err_code");
    if (code != nullptr && code->is_int64() && code->as_int64() == JSStreamNotFoundErr) {
      missing();
    }
  });
  natsConnection_PublishRequest(nc_, api.c_str(), ReplySubject(*token).c_str(), "", 0);
}

bool NatsQueue::Admit(const std::shared_ptr<const SubInfo>& sub, Delivery& d) {
  if (!sub->dead_letter_topic.empty() && d.delivery_attempt > sub->max_delivery_attempts) {
    // JetStream would stop delivering it silently: forward it as Pub/Sub does.
    Delivery forwarded = d;
    forwarded.delivery_attempt = sub->max_delivery_attempts;
    TerminateOn(sub, {std::move(forwarded)}, [](AckOutcome) {});
    return false;
  }
  if (!sub->filter.empty() && !sub->filter.Matches(d.message.attributes)) {
    natsConnection_PublishString(nc_, d.ack_id.c_str(), kAckPayload);
    return false;
  }
  if (sub->exactly_once) {
    // Leases settled elsewhere (or never) would stay forever: forget long-expired ones now and
    // then. Their ack ids are refused either way.
    if (++sub->leases_added % kLeaseSweepEvery == 0) {
      const auto stale = Clock::now() - kLeaseSweepAge;
      std::erase_if(sub->leases, [stale](const auto& e) { return e.second.ends < stale; });
    }
    if (auto ack = nats::ParseAckSubject(d.ack_id)) {
      sub->leases[ack->stream_sequence] = SubInfo::Lease{
          ack->consumer_sequence, Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                     Unit(sub->ack_deadline_seconds))};
    }
  }
  return true;
}

void NatsQueue::Settle(std::shared_ptr<const SubInfo> sub, SettleKind kind,
                       std::vector<std::string> ids, std::chrono::seconds delay, AckCallback cb) {
  AckOutcome refused;
  std::vector<RequestBatch::Item> items;
  const auto now = Clock::now();
  const auto margin = std::chrono::duration_cast<Clock::duration>(Unit(sub->ack_deadline_seconds)) /
                      kExactlyOnceMarginDivisor;
  for (auto& id : ids) {
    auto ack = nats::ParseAckSubject(id);
    if (!ack || ack->stream != sub->stream || ack->consumer != sub->consumer) {
      cb(AckOutcome{Status::InvalidArgument(sub->path + ": invalid ack id \"" + id + "\"")});
      return;
    }
    if (kind != SettleKind::kProgress) ForgetKeepalive(id);
    if (sub->exactly_once) {
      auto it = sub->leases.find(ack->stream_sequence);
      const bool current = it != sub->leases.end() &&
                           it->second.consumer_sequence == ack->consumer_sequence &&
                           now + margin < it->second.ends;
      if (!current) {
        refused.failed_ack_ids.push_back(id);
        continue;
      }
      if (kind == SettleKind::kProgress) {
        it->second.ends = std::max(
            it->second.ends,
            now + std::chrono::duration_cast<Clock::duration>(Unit(sub->ack_deadline_seconds)));
      } else {
        sub->leases.erase(it);
      }
    }
    std::string payload;
    switch (kind) {
      case SettleKind::kAck:
        payload = kAckPayload;
        break;
      case SettleKind::kProgress:
        payload = kProgressPayload;
        break;
      case SettleKind::kTerm:
        payload = kTermPayload;
        break;
      case SettleKind::kNack: {
        int64_t seconds = std::clamp<int64_t>(delay.count(), 0, kMaxLease.count());
        if (seconds == 0 && (sub->min_backoff_seconds > 0 || sub->max_backoff_seconds > 0)) {
          // The retry policy: exponential from min_backoff, capped at max_backoff.
          seconds = sub->min_backoff_seconds;
          for (uint64_t a = 1; a < ack->delivered && seconds < sub->max_backoff_seconds; ++a) {
            seconds *= 2;
          }
          seconds = std::min(seconds, sub->max_backoff_seconds);
        }
        payload = seconds == 0 ? std::string(kNakPayload)
                               : std::string(kNakPayload) +
                                     " {\"delay\":" + std::to_string(Unit(seconds).count()) + "}";
        break;
      }
    }
    items.push_back(RequestBatch::Item{.send = [this, id, payload](const std::string& reply) {
      return natsConnection_PublishRequest(nc_, id.c_str(), reply.c_str(), payload.data(),
                                           static_cast<int>(payload.size()));
    }});
  }
  auto on_reply = [](size_t, Incoming&) -> std::pair<RequestBatch::Verdict, Status> {
    return {RequestBatch::Verdict::kDone, Status::Ok()};
  };
  auto on_finish = [path = sub->path, refused = std::move(refused),
                    cb = std::move(cb)](Status status) mutable {
    refused.status = Named(status, path);
    cb(std::move(refused));
  };
  auto op =
      std::make_shared<RequestBatch>(this, std::move(items), std::move(on_reply),
                                     std::move(on_finish), Clock::now() + options_.call_timeout);
  op->Start();
}

void NatsQueue::ExtendOn(std::shared_ptr<const SubInfo> sub, std::vector<std::string> ids,
                         std::chrono::seconds lease, AckCallback cb) {
  // In-progress restarts the server's AckWait; a longer lease is kept alive from here by
  // in-progress acks sent on a timer until it ends.
  const auto ack_wait = Unit(sub->ack_deadline_seconds);
  const auto wanted = Unit(std::clamp<int64_t>(lease.count(), 1, kMaxLease.count()));
  const auto now = Clock::now();
  const auto until = now + std::chrono::duration_cast<Clock::duration>(wanted);
  const auto margin =
      std::chrono::duration_cast<Clock::duration>(ack_wait) / kExactlyOnceMarginDivisor;
  for (const auto& id : ids) {
    if (sub->exactly_once) {
      // Only a current lease is extended (Settle refuses the others): an in-progress for a
      // stale ack id would extend whoever holds the message now.
      auto ack = nats::ParseAckSubject(id);
      if (!ack) continue;
      auto it = sub->leases.find(ack->stream_sequence);
      if (it == sub->leases.end() || it->second.consumer_sequence != ack->consumer_sequence ||
          now + margin >= it->second.ends) {
        continue;
      }
      it->second.ends = std::max(it->second.ends, until);
    }
    if (wanted > ack_wait) {
      keepalives_[id].until = until;
      ScheduleKeepalive(id, ack_wait);
    }
  }
  Settle(std::move(sub), SettleKind::kProgress, std::move(ids), std::chrono::seconds(0),
         std::move(cb));
}

void NatsQueue::ScheduleKeepalive(const std::string& id, std::chrono::nanoseconds ack_wait) {
  auto it = keepalives_.find(id);
  if (it == keepalives_.end()) return;
  Keepalive& k = it->second;
  const auto wait = std::chrono::duration_cast<Clock::duration>(ack_wait);
  // The last in-progress goes out one AckWait before the lease ends, so that it ends then.
  const Clock::time_point last = k.until - wait;
  const Clock::time_point now = Clock::now();
  if (last <= now) {
    keepalives_.erase(it);
    return;
  }
  const Clock::time_point next = std::min(last, now + wait / 2);
  if (!k.timer) k.timer = std::make_shared<asio::steady_timer>(io());
  k.timer->expires_at(next);
  k.timer->async_wait([this, id, ack_wait](const boost::system::error_code& ec) {
    if (ec || closed_) return;
    if (keepalives_.find(id) == keepalives_.end()) return;
    natsConnection_PublishString(nc_, id.c_str(), kProgressPayload);
    ScheduleKeepalive(id, ack_wait);
  });
}

void NatsQueue::ForgetKeepalive(const std::string& id) {
  auto it = keepalives_.find(id);
  if (it == keepalives_.end()) return;
  if (it->second.timer) it->second.timer->cancel();
  keepalives_.erase(it);
}

void NatsQueue::TerminateOn(std::shared_ptr<const SubInfo> sub, std::vector<Delivery> deliveries,
                            AckCallback cb) {
  std::vector<std::string> ids;
  for (const auto& d : deliveries) ids.push_back(d.ack_id);
  if (sub->dead_letter_topic.empty() || deliveries.empty()) {
    Settle(std::move(sub), SettleKind::kTerm, std::move(ids), std::chrono::seconds(0),
           std::move(cb));
    return;
  }
  // Published (durably) to the dead-letter topic first, TERM only then: a failure leaves the
  // messages to be redelivered rather than lost.
  std::vector<Message> dead;
  for (const auto& d : deliveries) dead.push_back(DeadLetterMessage(d, sub->path));
  const std::string dead_topic = sub->dead_letter_topic;
  PublishOn(dead_topic, std::move(dead),
            [this, sub, ids = std::move(ids), dead_topic,
             cb = std::move(cb)](Result<std::vector<std::string>> published) mutable {
              if (!published.ok()) {
                cb(AckOutcome{published.status().WithContext(sub->path + ": dead-letter topic " +
                                                             dead_topic)});
                return;
              }
              Settle(std::move(sub), SettleKind::kTerm, std::move(ids), std::chrono::seconds(0),
                     std::move(cb));
            });
}

Result<std::unique_ptr<MessageStream>> NatsQueue::Subscribe(const std::string& subscription,
                                                            StreamOptions options,
                                                            DeliveryHandler on_messages,
                                                            StreamErrorHandler on_error) {
  TP_ASSIGN_OR_RETURN(std::shared_ptr<const SubInfo> sub, Find(subscription));
  auto core = std::make_shared<StreamCore>(this, std::move(sub), options.flow,
                                           std::move(on_messages), std::move(on_error));
  TP_RETURN_IF_ERROR(core->Open());
  return std::unique_ptr<MessageStream>(new NatsStream(this, std::move(core)));
}

void NatsQueue::Pull(const std::string& subscription, int max_messages,
                     std::chrono::milliseconds max_wait, PullCallback done) {
  auto cb = thread_.Wrap(std::move(done));
  auto sub = Find(subscription);
  if (!sub.ok()) return cb(sub.status());
  if (max_messages <= 0) {
    return cb(Status::InvalidArgument("pull from " + (*sub)->path +
                                      ": max_messages must be positive, got " +
                                      std::to_string(max_messages)));
  }
  auto op =
      std::make_shared<PullOp>(this, std::move(*sub), std::min(max_messages, kMaxPullMessages),
                               Clock::now() + max_wait, std::move(cb));
  thread_.Post([op] { op->Start(); });
}

void NatsQueue::Ack(const std::string& subscription, std::vector<std::string> ack_ids,
                    AckCallback done) {
  auto cb = thread_.Wrap(std::move(done));
  auto sub = Find(subscription);
  if (!sub.ok()) return cb(AckOutcome{sub.status()});
  thread_.Post(
      [this, sub = std::move(*sub), ids = std::move(ack_ids), cb = std::move(cb)]() mutable {
        Settle(std::move(sub), SettleKind::kAck, std::move(ids), std::chrono::seconds(0),
               std::move(cb));
      });
}

void NatsQueue::Nack(const std::string& subscription, std::vector<std::string> ack_ids,
                     std::chrono::seconds delay, AckCallback done) {
  auto cb = thread_.Wrap(std::move(done));
  auto sub = Find(subscription);
  if (!sub.ok()) return cb(AckOutcome{sub.status()});
  thread_.Post(
      [this, sub = std::move(*sub), ids = std::move(ack_ids), delay, cb = std::move(cb)]() mutable {
        Settle(std::move(sub), SettleKind::kNack, std::move(ids), delay, std::move(cb));
      });
}

void NatsQueue::ExtendLease(const std::string& subscription, std::vector<std::string> ack_ids,
                            std::chrono::seconds lease, AckCallback done) {
  auto cb = thread_.Wrap(std::move(done));
  auto sub = Find(subscription);
  if (!sub.ok()) return cb(AckOutcome{sub.status()});
  thread_.Post(
      [this, sub = std::move(*sub), ids = std::move(ack_ids), lease, cb = std::move(cb)]() mutable {
        ExtendOn(std::move(sub), std::move(ids), lease, std::move(cb));
      });
}

void NatsQueue::Terminate(const std::string& subscription, std::vector<Delivery> deliveries,
                          AckCallback done) {
  auto cb = thread_.Wrap(std::move(done));
  auto sub = Find(subscription);
  if (!sub.ok()) return cb(AckOutcome{sub.status()});
  thread_.Post(
      [this, sub = std::move(*sub), ds = std::move(deliveries), cb = std::move(cb)]() mutable {
        TerminateOn(std::move(sub), std::move(ds), std::move(cb));
      });
}

Result<Backlog> NatsQueue::GetBacklog(const std::string& subscription) {
  TP_ASSIGN_OR_RETURN(std::shared_ptr<const SubInfo> sub, Find(subscription));
  jsOptions jo = ApiOptions();
  jsConsumerInfo* ci = nullptr;
  jsErrCode err = static_cast<jsErrCode>(0);
  natsStatus s =
      js_GetConsumerInfo(&ci, js_, sub->stream.c_str(), sub->consumer.c_str(), &jo, &err);
  if (s != NATS_OK) {
    if (err == JSConsumerNotFoundErr || err == JSStreamNotFoundErr) {
      return Status::NotFound(sub->path + ": JetStream consumer not found");
    }
    return Named(FromNats(s, "consumer info"), sub->path);
  }
  Backlog b;
  b.leased_messages = static_cast<uint64_t>(std::max<int64_t>(0, ci->NumAckPending));
  b.undelivered_messages = ci->NumPending + b.leased_messages;
  const uint64_t oldest = ci->AckFloor.Stream + 1;
  jsConsumerInfo_Destroy(ci);
  if (b.undelivered_messages == 0) return b;
  // The first message above the ack floor is the oldest one not acknowledged.
  natsMsg* m = nullptr;
  s = js_GetMsg(&m, js_, sub->stream.c_str(), oldest, &jo, &err);
  if (s == NATS_OK) {
    const int64_t stored_nanos = natsMsg_GetTime(m);
    const int64_t now_micros = std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count();
    b.oldest_unacked_age_micros = std::max<int64_t>(0, now_micros - stored_nanos / kNanosPerMicro);
    natsMsg_Destroy(m);
  }
  return b;
}

}  // namespace

Result<std::unique_ptr<Queue>> OpenNatsQueue(const QueueOptions& options) {
  auto queue = std::make_unique<NatsQueue>(options);
  TP_RETURN_IF_ERROR(queue->Connect());
  return std::unique_ptr<Queue>(std::move(queue));
}

}  // namespace tidepool::queue::internal
