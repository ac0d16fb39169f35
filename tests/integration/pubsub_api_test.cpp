// The Pub/Sub v1 gRPC API of the broker, end to end through real gRPC calls: every RPC, the
// semantics behind them, and the status codes and messages of the errors.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <set>
#include <thread>

#include "broker/broker.h"
#include "google/pubsub/v1/pubsub.grpc.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "pubsub/client.h"
#include "pubsub/convert.h"
#include "pubsub/server.h"
#include "storage/fault_env.h"
#include "storage/test_util.h"

namespace tidepool::pubsub {
namespace {

using namespace std::chrono_literals;

constexpr int64_t kStart = 1'700'000'000'000'000;
constexpr char kProject[] = "projects/p";
constexpr char kTopic[] = "projects/p/topics/orders";
constexpr char kSub[] = "projects/p/subscriptions/workers";

class PubsubApiTest : public ::testing::Test {
 protected:
  PubsubApiTest() : env_(storage::DefaultEnv()) {
    env_.SetTime(kStart);
    Start();
  }
  ~PubsubApiTest() override { Stop(); }

  void Start() {
    broker::BrokerOptions o;
    o.data_dir = dir_.sub("data");
    o.env = &env_;
    o.run_timekeeper = false;
    auto b = broker::Broker::Open(o);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    broker_ = std::move(*b);
    ServerOptions so;
    so.listen = "127.0.0.1:0";
    so.pull_wait_micros = 2'000'000;
    so.stream_lifetime_micros = stream_lifetime_micros_;
    auto s = PubsubServer::Start(broker_.get(), so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(*s);
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                       grpc::InsecureChannelCredentials());
    publisher_ = v1::Publisher::NewStub(channel);
    subscriber_ = v1::Subscriber::NewStub(channel);
  }
  void Stop() {
    publisher_.reset();
    subscriber_.reset();
    if (server_) server_->Shutdown(1'000'000);
    server_.reset();
    broker_.reset();
  }
  void Restart() {
    Stop();
    Start();
  }
  void Advance(int64_t seconds) {
    env_.AdvanceTime(seconds * broker::kMicrosPerSecond);
    broker_->Tick();
  }

  grpc::Status CreateTopic(const std::string& name) {
    grpc::ClientContext ctx;
    v1::Topic req, resp;
    req.set_name(name);
    return publisher_->CreateTopic(&ctx, req, &resp);
  }
  grpc::Status CreateSub(v1::Subscription s) {
    grpc::ClientContext ctx;
    v1::Subscription resp;
    if (s.name().empty()) s.set_name(kSub);
    if (s.topic().empty()) s.set_topic(kTopic);
    return subscriber_->CreateSubscription(&ctx, s, &resp);
  }
  void Setup(v1::Subscription s = {}) {
    ASSERT_TRUE(CreateTopic(kTopic).ok());
    auto st = CreateSub(s);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  std::vector<std::string> Publish(const std::vector<std::string>& data,
                                   const std::string& key = "",
                                   std::map<std::string, std::string> attrs = {}) {
    grpc::ClientContext ctx;
    v1::PublishRequest req;
    v1::PublishResponse resp;
    req.set_topic(kTopic);
    for (const auto& d : data) {
      auto* m = req.add_messages();
      m->set_data(d);
      m->set_ordering_key(key);
      m->mutable_attributes()->insert(attrs.begin(), attrs.end());
    }
    auto st = publisher_->Publish(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return {resp.message_ids().begin(), resp.message_ids().end()};
  }
  v1::PullResponse Pull(int max = 100, bool immediately = true, const std::string& sub = kSub) {
    grpc::ClientContext ctx;
    v1::PullRequest req;
    v1::PullResponse resp;
    req.set_subscription(sub);
    req.set_max_messages(max);
    req.set_return_immediately(immediately);
    auto st = subscriber_->Pull(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp;
  }
  grpc::Status Ack(const std::vector<std::string>& ids, const std::string& sub = kSub) {
    grpc::ClientContext ctx;
    v1::AcknowledgeRequest req;
    google::protobuf::Empty resp;
    req.set_subscription(sub);
    for (const auto& id : ids) req.add_ack_ids(id);
    return subscriber_->Acknowledge(&ctx, req, &resp);
  }
  grpc::Status ModAck(const std::vector<std::string>& ids, int seconds) {
    grpc::ClientContext ctx;
    v1::ModifyAckDeadlineRequest req;
    google::protobuf::Empty resp;
    req.set_subscription(kSub);
    req.set_ack_deadline_seconds(seconds);
    for (const auto& id : ids) req.add_ack_ids(id);
    return subscriber_->ModifyAckDeadline(&ctx, req, &resp);
  }
  static std::vector<std::string> Data(const v1::PullResponse& r) {
    std::vector<std::string> out;
    for (const auto& m : r.received_messages()) out.push_back(m.message().data());
    return out;
  }
  static std::vector<std::string> AckIds(const v1::PullResponse& r) {
    std::vector<std::string> out;
    for (const auto& m : r.received_messages()) out.push_back(m.ack_id());
    return out;
  }

  int64_t stream_lifetime_micros_ = 30ll * 60 * 1000 * 1000;
  storage::testing::TempDir dir_;
  storage::FaultInjectionEnv env_;
  std::unique_ptr<broker::Broker> broker_;
  std::unique_ptr<PubsubServer> server_;
  std::unique_ptr<v1::Publisher::Stub> publisher_;
  std::unique_ptr<v1::Subscriber::Stub> subscriber_;
};

TEST_F(PubsubApiTest, TopicAdminAndErrors) {
  ASSERT_TRUE(CreateTopic(kTopic).ok());
  auto dup = CreateTopic(kTopic);
  EXPECT_EQ(dup.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(dup.error_message().find(kTopic), std::string::npos);
  auto bad = CreateTopic("projects/p/topics/goog-reserved");
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("goog"), std::string::npos);

  {
    grpc::ClientContext ctx;
    v1::UpdateTopicRequest req;
    v1::Topic resp;
    req.mutable_topic()->set_name(kTopic);
    (*req.mutable_topic()->mutable_labels())["env"] = "test";
    *req.mutable_topic()->mutable_message_retention_duration() = ToDuration(3600ll * 1000000);
    req.mutable_update_mask()->add_paths("labels");
    req.mutable_update_mask()->add_paths("message_retention_duration");
    ASSERT_TRUE(publisher_->UpdateTopic(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.labels().at("env"), "test");
    EXPECT_EQ(resp.message_retention_duration().seconds(), 3600);
  }
  for (int i = 0; i < 4; ++i)
    ASSERT_TRUE(CreateTopic("projects/p/topics/extra" + std::to_string(i)).ok());
  std::vector<std::string> names;
  std::string token;
  do {
    grpc::ClientContext ctx;
    v1::ListTopicsRequest req;
    v1::ListTopicsResponse resp;
    req.set_project(kProject);
    req.set_page_size(2);
    req.set_page_token(token);
    ASSERT_TRUE(publisher_->ListTopics(&ctx, req, &resp).ok());
    for (const auto& t : resp.topics()) names.push_back(t.name());
    token = resp.next_page_token();
  } while (!token.empty());
  EXPECT_EQ(names.size(), 5u);
  {
    grpc::ClientContext ctx;
    v1::GetTopicRequest req;
    v1::Topic resp;
    req.set_topic("projects/p/topics/missing");
    EXPECT_EQ(publisher_->GetTopic(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteTopicRequest req;
    google::protobuf::Empty resp;
    req.set_topic(kTopic);
    EXPECT_TRUE(publisher_->DeleteTopic(&ctx, req, &resp).ok());
  }
}

TEST_F(PubsubApiTest, PublishLimits) {
  ASSERT_TRUE(CreateTopic(kTopic).ok());
  auto publish = [&](int count, size_t size) {
    grpc::ClientContext ctx;
    v1::PublishRequest req;
    v1::PublishResponse resp;
    req.set_topic(kTopic);
    for (int i = 0; i < count; ++i) req.add_messages()->set_data(std::string(size, 'x'));
    return publisher_->Publish(&ctx, req, &resp);
  };
  EXPECT_TRUE(publish(1000, 10).ok());
  auto too_many = publish(1001, 10);
  EXPECT_EQ(too_many.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(too_many.error_message().find("1000"), std::string::npos);
  EXPECT_EQ(publish(2, 5'500'000).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(publish(0, 0).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(publish(1, 0).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(publish(1, 9'999'000).ok());
}

TEST_F(PubsubApiTest, SubscriptionAdminAppliesDefaultsAndValidates) {
  ASSERT_TRUE(CreateTopic(kTopic).ok());
  v1::Subscription s;
  s.set_name(kSub);
  s.set_topic(kTopic);
  {
    grpc::ClientContext ctx;
    v1::Subscription resp;
    ASSERT_TRUE(subscriber_->CreateSubscription(&ctx, s, &resp).ok());
    EXPECT_EQ(resp.ack_deadline_seconds(), 10);
    EXPECT_EQ(resp.message_retention_duration().seconds(), 7 * 24 * 3600);
    EXPECT_EQ(resp.expiration_policy().ttl().seconds(), 31 * 24 * 3600);
  }
  EXPECT_EQ(CreateSub(s).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  v1::Subscription bad;
  bad.set_name("projects/p/subscriptions/bad1");
  bad.set_ack_deadline_seconds(700);
  EXPECT_EQ(CreateSub(bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad.set_ack_deadline_seconds(0);
  bad.set_filter("attributes.x = ");
  auto f = CreateSub(bad);
  EXPECT_EQ(f.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(f.error_message().find("filter"), std::string::npos);
  bad.set_filter("");
  bad.set_topic("projects/p/topics/none");
  EXPECT_EQ(CreateSub(bad).error_code(), grpc::StatusCode::NOT_FOUND);
  {
    grpc::ClientContext ctx;
    v1::UpdateSubscriptionRequest req;
    v1::Subscription resp;
    req.mutable_subscription()->set_name(kSub);
    req.mutable_subscription()->set_ack_deadline_seconds(60);
    req.mutable_update_mask()->add_paths("ack_deadline_seconds");
    ASSERT_TRUE(subscriber_->UpdateSubscription(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.ack_deadline_seconds(), 60);
  }
  {
    grpc::ClientContext ctx;
    v1::ListTopicSubscriptionsRequest req;
    v1::ListTopicSubscriptionsResponse resp;
    req.set_topic(kTopic);
    ASSERT_TRUE(publisher_->ListTopicSubscriptions(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.subscriptions_size(), 1);
    EXPECT_EQ(resp.subscriptions(0), kSub);
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteSubscriptionRequest req;
    google::protobuf::Empty resp;
    req.set_subscription(kSub);
    EXPECT_TRUE(subscriber_->DeleteSubscription(&ctx, req, &resp).ok());
  }
}

TEST_F(PubsubApiTest, PullAckNackAndDeadlines) {
  Setup();
  auto ids = Publish({"a", "b"}, "", {{"k", "v"}});
  ASSERT_EQ(ids.size(), 2u);
  auto got = Pull();
  ASSERT_EQ(Data(got), (std::vector<std::string>{"a", "b"}));
  const auto& m = got.received_messages(0).message();
  EXPECT_EQ(m.message_id(), ids[0]);
  EXPECT_EQ(m.attributes().at("k"), "v");
  EXPECT_EQ(TimestampMicros(m.publish_time()), kStart);
  EXPECT_TRUE(Pull().received_messages().empty());
  ASSERT_TRUE(ModAck({got.received_messages(1).ack_id()}, 0).ok());  // nack b
  EXPECT_EQ(Data(Pull()), std::vector<std::string>{"b"});
  ASSERT_TRUE(Ack({got.received_messages(0).ack_id()}).ok());
  EXPECT_EQ(ModAck({got.received_messages(0).ack_id()}, 601).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Ack({"nonsense"}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Ack({}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  Advance(11);  // b's second lease expires
  EXPECT_EQ(Data(Pull()), std::vector<std::string>{"b"});
}

TEST_F(PubsubApiTest, PullWaitsForAPublish) {
  Setup();
  std::thread publisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    Publish({"late"});
  });
  auto got = Pull(10, /*immediately=*/false);
  publisher.join();
  EXPECT_EQ(Data(got), std::vector<std::string>{"late"});
}

// A waiting Pull whose client gave up (its deadline passed) must not take the next message:
// nobody would receive it, and it would sit leased until its ack deadline.
TEST_F(PubsubApiTest, APullTheClientGaveUpOnTakesNothing) {
  Setup();
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 300ms);
    v1::PullRequest req;
    v1::PullResponse resp;
    req.set_subscription(kSub);
    req.set_max_messages(10);
    req.set_return_immediately(false);  // the server may wait up to 2 s here
    const auto st = subscriber_->Pull(&ctx, req, &resp);
    EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
        << st.error_message();
    EXPECT_EQ(resp.received_messages_size(), 0);
  }
  std::this_thread::sleep_for(100ms);
  Publish({"after"});
  EXPECT_EQ(Data(Pull(10, /*immediately=*/true)), std::vector<std::string>{"after"});
}

TEST_F(PubsubApiTest, StreamingPullWithFlowControlAndInStreamAcks) {
  Setup();
  std::vector<std::string> data;
  for (int i = 0; i < 20; ++i) data.push_back("m" + std::to_string(i));
  Publish(data);
  grpc::ClientContext ctx;
  auto stream = subscriber_->StreamingPull(&ctx);
  v1::StreamingPullRequest first;
  first.set_subscription(kSub);
  first.set_stream_ack_deadline_seconds(30);
  first.set_max_outstanding_messages(5);
  ASSERT_TRUE(stream->Write(first));
  v1::StreamingPullResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_TRUE(resp.has_subscription_properties());
  EXPECT_FALSE(resp.subscription_properties().exactly_once_delivery_enabled());
  std::set<std::string> seen;
  std::vector<std::string> outstanding;
  while (outstanding.size() < 5) {
    ASSERT_TRUE(stream->Read(&resp));
    for (const auto& m : resp.received_messages()) {
      seen.insert(m.message().data());
      outstanding.push_back(m.ack_id());
    }
  }
  EXPECT_EQ(outstanding.size(), 5u) << "flow control allows five outstanding messages";
  // Acks on the stream free the budget; everything arrives, never more than 5 at once.
  while (seen.size() < 20) {
    v1::StreamingPullRequest acks;
    for (const auto& id : outstanding) acks.add_ack_ids(id);
    outstanding.clear();
    ASSERT_TRUE(stream->Write(acks));
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_LE(resp.received_messages_size(), 5);
    for (const auto& m : resp.received_messages()) {
      seen.insert(m.message().data());
      outstanding.push_back(m.ack_id());
    }
  }
  v1::StreamingPullRequest last;
  for (const auto& id : outstanding) last.add_ack_ids(id);
  ASSERT_TRUE(stream->Write(last));
  stream->WritesDone();
  while (stream->Read(&resp)) {
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(seen.size(), 20u);
  EXPECT_EQ(broker_->Backlogs()[0].backlog.undelivered_messages, 0u);
}

// A client that cancels its stream while the server's write to it is stuck (the client reads
// nothing, so HTTP/2 flow control holds the write) must not leave the call unfinished: the
// server's Shutdown waits for every call, so one leaked stream made `tidepool up` hang at exit.
TEST_F(PubsubApiTest, CancellingAStreamMidWriteLetsTheServerShutDown) {
  Setup();
  const std::string big(512 * 1024, 'x');
  for (int batch = 0; batch < 4; ++batch) Publish({big, big, big, big});
  grpc::ClientContext ctx;
  auto stream = subscriber_->StreamingPull(&ctx);
  v1::StreamingPullRequest first;
  first.set_subscription(kSub);
  first.set_stream_ack_deadline_seconds(30);
  ASSERT_TRUE(stream->Write(first));
  // Never read: the server's response with 8 MB of messages cannot be written out.
  std::this_thread::sleep_for(500ms);
  ctx.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  auto shutdown = std::async(std::launch::async, [&] { server_->Shutdown(1'000'000); });
  if (shutdown.wait_for(60s) != std::future_status::ready) {
    std::fprintf(stderr, "the server's Shutdown did not return: a stream was never finished\n");
    std::abort();
  }
  server_.reset();
  // The messages went back to the subscription: nothing is lost.
  Restart();
  std::set<std::string> ids;
  for (int i = 0; i < 40 && ids.size() < 16; ++i) {
    const v1::PullResponse got = Pull(4);  // 2 MB: under the client's 4 MB receive limit
    for (const auto& m : got.received_messages()) ids.insert(m.message().message_id());
    if (got.received_messages_size() > 0) {
      EXPECT_TRUE(Ack(AckIds(got)).ok());
    } else {
      Advance(60);  // expire any lease still held from the cancelled stream
    }
  }
  EXPECT_EQ(ids.size(), 16u);
}

TEST_F(PubsubApiTest, StreamingPullRejectsABadFirstRequest) {
  Setup();
  grpc::ClientContext ctx;
  auto stream = subscriber_->StreamingPull(&ctx);
  v1::StreamingPullRequest first;
  first.set_subscription(kSub);
  first.set_stream_ack_deadline_seconds(5);
  stream->Write(first);
  v1::StreamingPullResponse resp;
  while (stream->Read(&resp)) {
  }
  auto st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("stream_ack_deadline_seconds"), std::string::npos);

  grpc::ClientContext ctx2;
  auto stream2 = subscriber_->StreamingPull(&ctx2);
  first.set_subscription("projects/p/subscriptions/none");
  first.set_stream_ack_deadline_seconds(10);
  stream2->Write(first);
  while (stream2->Read(&resp)) {
  }
  EXPECT_EQ(stream2->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(PubsubApiTest, ServerEndsStreamsAfterTheirLifetimeAndTheDeadlineCanChange) {
  stream_lifetime_micros_ = 500'000;
  Restart();
  Setup();
  grpc::ClientContext ctx;
  auto stream = subscriber_->StreamingPull(&ctx);
  v1::StreamingPullRequest first;
  first.set_subscription(kSub);
  first.set_stream_ack_deadline_seconds(10);
  ASSERT_TRUE(stream->Write(first));
  v1::StreamingPullRequest update;
  update.set_stream_ack_deadline_seconds(60);
  ASSERT_TRUE(stream->Write(update));
  v1::StreamingPullResponse resp;
  ASSERT_TRUE(stream->Read(&resp));  // subscription properties
  // The update is read by the server right after the first request; give it that moment
  // before anything is delivered.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Publish({"m"});
  ASSERT_TRUE(stream->Read(&resp));
  ASSERT_EQ(resp.received_messages_size(), 1);
  // Leased for 60 s, not 10: still leased after 30.
  Advance(30);
  EXPECT_TRUE(Pull().received_messages().empty());
  while (stream->Read(&resp)) {
  }
  auto st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("reopen"), std::string::npos);
}

TEST_F(PubsubApiTest, ExactlyOnceReturnsPerAckIdErrorInfo) {
  v1::Subscription s;
  s.set_enable_exactly_once_delivery(true);
  Setup(s);
  Publish({"m"});
  auto first = Pull();
  ASSERT_EQ(first.received_messages_size(), 1);
  Advance(11);
  auto second = Pull();
  ASSERT_EQ(second.received_messages_size(), 1);
  const std::string stale = first.received_messages(0).ack_id();
  auto st = Ack({stale});
  ASSERT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(st.error_details()));
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "EXACTLY_ONCE_ACKID_FAILURE");
  EXPECT_EQ(info.metadata().at(stale), "PERMANENT_FAILURE_INVALID_ACK_ID");
  EXPECT_TRUE(Ack({second.received_messages(0).ack_id()}).ok());
}

TEST_F(PubsubApiTest, DeadLetterOrderingFilterThroughTheApi) {
  ASSERT_TRUE(CreateTopic(kTopic).ok());
  ASSERT_TRUE(CreateTopic("projects/p/topics/dead").ok());
  v1::Subscription dl;
  dl.set_name("projects/p/subscriptions/dead-reader");
  dl.set_topic("projects/p/topics/dead");
  ASSERT_TRUE(CreateSub(dl).ok());
  v1::Subscription s;
  s.mutable_dead_letter_policy()->set_dead_letter_topic("projects/p/topics/dead");
  s.mutable_dead_letter_policy()->set_max_delivery_attempts(5);
  s.set_enable_message_ordering(true);
  s.set_filter("attributes.kind = \"order\"");
  ASSERT_TRUE(CreateSub(s).ok());
  Publish({"ignored"}, "", {{"kind", "noise"}});
  Publish({"o1", "o2"}, "customer-1", {{"kind", "order"}});
  for (int attempt = 1; attempt <= 5; ++attempt) {
    auto got = Pull();
    ASSERT_EQ(Data(got), std::vector<std::string>{"o1"}) << "attempt " << attempt;
    EXPECT_EQ(got.received_messages(0).delivery_attempt(), attempt);
    ASSERT_TRUE(ModAck(AckIds(got), 0).ok());
  }
  broker_->Tick();
  v1::PullResponse dead;
  for (int i = 0; i < 100 && dead.received_messages().empty(); ++i) {
    dead = Pull(10, true, "projects/p/subscriptions/dead-reader");
    if (dead.received_messages().empty())
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(Data(dead), std::vector<std::string>{"o1"});
  EXPECT_EQ(dead.received_messages(0).message().attributes().at(
                "CloudPubSubDeadLetterSourceDeliveryCount"),
            "5");
  // o1 left the key: o2 follows.
  v1::PullResponse next;
  for (int i = 0; i < 100 && next.received_messages().empty(); ++i) {
    next = Pull();
    if (next.received_messages().empty())
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Data(next), std::vector<std::string>{"o2"});
}

TEST_F(PubsubApiTest, SeekAndSnapshotsThroughTheApi) {
  Setup();
  Publish({"m1", "m2"});
  ASSERT_TRUE(Ack(AckIds(Pull())).ok());
  {
    grpc::ClientContext ctx;
    v1::SeekRequest req;
    v1::SeekResponse resp;
    req.set_subscription(kSub);
    *req.mutable_time() = ToTimestamp(0);
    ASSERT_TRUE(subscriber_->Seek(&ctx, req, &resp).ok());
  }
  auto replay = Pull();
  EXPECT_EQ(Data(replay), (std::vector<std::string>{"m1", "m2"}));
  {
    grpc::ClientContext ctx;
    v1::CreateSnapshotRequest req;
    v1::Snapshot resp;
    req.set_name("projects/p/snapshots/snap1");
    req.set_subscription(kSub);
    ASSERT_TRUE(subscriber_->CreateSnapshot(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.topic(), kTopic);
    EXPECT_GT(TimestampMicros(resp.expire_time()), kStart);
  }
  ASSERT_TRUE(Ack(AckIds(replay)).ok());
  Restart();
  {
    grpc::ClientContext ctx;
    v1::SeekRequest req;
    v1::SeekResponse resp;
    req.set_subscription(kSub);
    req.set_snapshot("projects/p/snapshots/snap1");
    ASSERT_TRUE(subscriber_->Seek(&ctx, req, &resp).ok());
  }
  EXPECT_EQ(Data(Pull()), (std::vector<std::string>{"m1", "m2"}));
  {
    grpc::ClientContext ctx;
    v1::ListSnapshotsRequest req;
    v1::ListSnapshotsResponse resp;
    req.set_project(kProject);
    ASSERT_TRUE(subscriber_->ListSnapshots(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.snapshots_size(), 1);
  }
}

TEST_F(PubsubApiTest, SnapshotAdminDetachAndPushConfig) {
  Setup();
  {
    grpc::ClientContext ctx;
    v1::CreateSnapshotRequest req;
    v1::Snapshot resp;
    req.set_name("projects/p/snapshots/keep");
    req.set_subscription(kSub);
    (*req.mutable_labels())["why"] = "test";
    ASSERT_TRUE(subscriber_->CreateSnapshot(&ctx, req, &resp).ok());
  }
  {
    grpc::ClientContext ctx;
    v1::ListTopicSnapshotsRequest req;
    v1::ListTopicSnapshotsResponse resp;
    req.set_topic(kTopic);
    ASSERT_TRUE(publisher_->ListTopicSnapshots(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.snapshots_size(), 1);
    EXPECT_EQ(resp.snapshots(0), "projects/p/snapshots/keep");
  }
  {
    grpc::ClientContext ctx;
    v1::UpdateSnapshotRequest req;
    v1::Snapshot resp;
    req.mutable_snapshot()->set_name("projects/p/snapshots/keep");
    (*req.mutable_snapshot()->mutable_labels())["why"] = "changed";
    req.mutable_update_mask()->add_paths("labels");
    ASSERT_TRUE(subscriber_->UpdateSnapshot(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.labels().at("why"), "changed");
  }
  {
    grpc::ClientContext ctx;
    v1::GetSnapshotRequest req;
    v1::Snapshot resp;
    req.set_snapshot("projects/p/snapshots/keep");
    ASSERT_TRUE(subscriber_->GetSnapshot(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.labels().at("why"), "changed");
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteSnapshotRequest req;
    google::protobuf::Empty resp;
    req.set_snapshot("projects/p/snapshots/keep");
    ASSERT_TRUE(subscriber_->DeleteSnapshot(&ctx, req, &resp).ok());
    grpc::ClientContext ctx2;
    EXPECT_EQ(subscriber_->DeleteSnapshot(&ctx2, req, &resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::ModifyPushConfigRequest req;
    google::protobuf::Empty resp;
    req.set_subscription(kSub);
    req.mutable_push_config()->set_push_endpoint("https://example.invalid/push");
    ASSERT_TRUE(subscriber_->ModifyPushConfig(&ctx, req, &resp).ok());
    grpc::ClientContext ctx2;
    v1::GetSubscriptionRequest get;
    v1::Subscription sub;
    get.set_subscription(kSub);
    ASSERT_TRUE(subscriber_->GetSubscription(&ctx2, get, &sub).ok());
    EXPECT_EQ(sub.push_config().push_endpoint(), "https://example.invalid/push");
  }
  Publish({"before-detach"});
  {
    grpc::ClientContext ctx;
    v1::DetachSubscriptionRequest req;
    v1::DetachSubscriptionResponse resp;
    req.set_subscription(kSub);
    ASSERT_TRUE(publisher_->DetachSubscription(&ctx, req, &resp).ok());
  }
  EXPECT_TRUE(Pull().received_messages().empty());  // detached: delivers nothing
  grpc::ClientContext ctx;
  v1::GetSubscriptionRequest get;
  v1::Subscription sub;
  get.set_subscription(kSub);
  ASSERT_TRUE(subscriber_->GetSubscription(&ctx, get, &sub).ok());
  EXPECT_TRUE(sub.detached());
}

TEST_F(PubsubApiTest, TheCppClientRoundTripsAndMapsErrors) {
  auto client = PubsubClient::Connect("127.0.0.1:" + std::to_string(server_->port()));
  ASSERT_TRUE(client->CreateTopic(kTopic).ok());
  EXPECT_EQ(client->CreateTopic(kTopic).code(), StatusCode::kAlreadyExists);
  v1::Subscription s;
  s.set_name(kSub);
  s.set_topic(kTopic);
  ASSERT_TRUE(client->CreateSubscription(s).ok());
  auto ids = client->Publish(kTopic, {{"hello", {{"a", "b"}}, ""}});
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  ASSERT_EQ(ids->size(), 1u);
  auto got = client->Pull(kSub, 10, true);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].message().data(), "hello");
  EXPECT_EQ((*got)[0].message().message_id(), (*ids)[0]);
  ASSERT_TRUE(client->Acknowledge(kSub, {(*got)[0].ack_id()}).ok());
  EXPECT_EQ(client->Publish("projects/p/topics/none", {{"x", {}, ""}}).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(client->ModifyAckDeadline(kSub, {"bad"}, 10).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(client->DeleteSubscription(kSub).ok());
  ASSERT_TRUE(client->DeleteTopic(kTopic).ok());
}

TEST_F(PubsubApiTest, MessagesOlderThanTheSubscriptionRetentionAreDropped) {
  v1::Subscription s;
  *s.mutable_message_retention_duration() = ToDuration(600ll * 1000000);  // 10 minutes
  Setup(s);
  Publish({"old"});
  env_.AdvanceTime(601ll * 1000000);
  Publish({"new"});
  EXPECT_EQ(Data(Pull()), std::vector<std::string>{"new"});
}

}  // namespace
}  // namespace tidepool::pubsub
