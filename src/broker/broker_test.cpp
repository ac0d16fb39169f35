#include "broker/broker.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

#include "storage/fault_env.h"
#include "storage/test_util.h"

namespace tidepool::broker {
namespace {

constexpr int64_t kStart = 1'700'000'000'000'000;  // µs
constexpr char kTopic[] = "projects/p/topics/orders";
constexpr char kSub[] = "projects/p/subscriptions/workers";

class BrokerTest : public ::testing::Test {
 protected:
  BrokerTest() : env_(storage::DefaultEnv()) {
    env_.SetTime(kStart);
    Open();
  }

  void Open() {
    BrokerOptions o;
    o.data_dir = dir_.sub("data");
    o.env = &env_;
    o.run_timekeeper = false;
    o.log.segment_max_bytes = 4096;
    auto b = Broker::Open(o);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    broker_ = std::move(*b);
  }
  void Restart() {
    broker_.reset();
    Open();
  }

  void Advance(int64_t seconds) {
    env_.AdvanceTime(seconds * kMicrosPerSecond);
    broker_->Tick();
  }

  std::vector<std::string> Publish(const std::string& topic, std::vector<Message> msgs) {
    std::promise<Result<std::vector<std::string>>> p;
    broker_->Publish(topic, std::move(msgs),
                     [&](Result<std::vector<std::string>> r) { p.set_value(r); });
    auto r = p.get_future().get();
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : std::vector<std::string>{};
  }
  Status PublishStatus(const std::string& topic, std::vector<Message> msgs) {
    std::promise<Status> p;
    broker_->Publish(topic, std::move(msgs),
                     [&](Result<std::vector<std::string>> r) { p.set_value(r.status()); });
    return p.get_future().get();
  }
  static Message Msg(std::string data, std::map<std::string, std::string> attrs = {},
                     std::string key = "") {
    return Message{std::move(data), std::move(attrs), std::move(key)};
  }

  std::vector<ReceivedMessage> Pull(const std::string& sub = kSub, size_t max = 100) {
    auto s = broker_->FindSubscription(sub);
    EXPECT_TRUE(s.ok());
    auto r = (*s)->Pull(max, SIZE_MAX, (*s)->config().ack_deadline_seconds, consumer_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : std::vector<ReceivedMessage>{};
  }
  AckResult Ack(const std::vector<std::string>& ids, const std::string& sub = kSub) {
    std::promise<AckResult> p;
    (*broker_->FindSubscription(sub))->Acknowledge(ids, [&](AckResult r) { p.set_value(r); });
    return p.get_future().get();
  }
  AckResult ModAck(const std::vector<std::string>& ids, int seconds,
                   const std::string& sub = kSub) {
    std::promise<AckResult> p;
    (*broker_->FindSubscription(sub))->ModifyAckDeadline(ids, seconds, [&](AckResult r) {
      p.set_value(r);
    });
    return p.get_future().get();
  }
  static std::vector<std::string> Data(const std::vector<ReceivedMessage>& msgs) {
    std::vector<std::string> out;
    for (const auto& m : msgs) out.push_back(m.message.message.data);
    return out;
  }
  static std::vector<std::string> AckIds(const std::vector<ReceivedMessage>& msgs) {
    std::vector<std::string> out;
    for (const auto& m : msgs) out.push_back(m.ack_id);
    return out;
  }

  void CreateTopicAndSub(SubscriptionConfig sub = {}) {
    ASSERT_TRUE(broker_->CreateTopic({kTopic, {}, 0, ""}).ok());
    if (sub.name.empty()) sub.name = kSub;
    sub.topic = kTopic;
    auto r = broker_->CreateSubscription(sub);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  storage::testing::TempDir dir_;
  storage::FaultInjectionEnv env_;
  std::unique_ptr<Broker> broker_;
  std::shared_ptr<Consumer> consumer_ = std::make_shared<Consumer>();
};

TEST_F(BrokerTest, TopicAdmin) {
  ASSERT_TRUE(broker_->CreateTopic({kTopic, {{"team", "a"}}, 0, ""}).ok());
  EXPECT_EQ(broker_->CreateTopic({kTopic, {}, 0, ""}).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(broker_->CreateTopic({"projects/p/topics/x", {}, 0, ""}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(broker_->GetTopic(kTopic)->labels.at("team"), "a");
  EXPECT_EQ(broker_->GetTopic("projects/p/topics/nope").status().code(), StatusCode::kNotFound);

  TopicConfig update{kTopic, {{"team", "b"}}, 3600 * kMicrosPerSecond, ""};
  auto u = broker_->UpdateTopic(update, {"labels", "message_retention_duration"});
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ(u->labels.at("team"), "b");
  EXPECT_EQ(broker_->UpdateTopic(update, {"name"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(
      broker_->UpdateTopic({kTopic, {}, 60, ""}, {"message_retention_duration"}).status().code(),
      StatusCode::kInvalidArgument);

  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(
        broker_->CreateTopic({"projects/p/topics/t" + std::to_string(i) + "xx", {}, 0, ""}).ok());
  }
  ASSERT_TRUE(broker_->CreateTopic({"projects/other/topics/zzz", {}, 0, ""}).ok());
  std::vector<std::string> names;
  std::string token;
  int pages = 0;
  do {
    auto page = broker_->ListTopics("projects/p", 2, token);
    ASSERT_TRUE(page.ok());
    for (const auto& t : page->items) names.push_back(t.name);
    token = page->next_page_token;
    ++pages;
  } while (!token.empty());
  EXPECT_EQ(names.size(), 6u);
  EXPECT_EQ(pages, 3);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));

  Restart();
  EXPECT_EQ(broker_->GetTopic(kTopic)->labels.at("team"), "b");
  ASSERT_TRUE(broker_->DeleteTopic(kTopic).ok());
  EXPECT_EQ(broker_->GetTopic(kTopic).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(broker_->DeleteTopic(kTopic).code(), StatusCode::kNotFound);
}

TEST_F(BrokerTest, PublishValidation) {
  ASSERT_TRUE(broker_->CreateTopic({kTopic, {}, 0, ""}).ok());
  EXPECT_EQ(PublishStatus(kTopic, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PublishStatus(kTopic, {Msg("")}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PublishStatus(kTopic, std::vector<Message>(1001, Msg("x"))).code(),
            StatusCode::kInvalidArgument);
  Status big = PublishStatus(kTopic, {Msg(std::string(10'000'001, 'x'))});
  EXPECT_EQ(big.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(big.message().find("10000000"), std::string::npos);
  EXPECT_EQ(PublishStatus(kTopic, {Msg("x", {{"googkey", "v"}})}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(PublishStatus("projects/p/topics/missing", {Msg("x")}).code(), StatusCode::kNotFound);
  EXPECT_TRUE(PublishStatus(kTopic, {Msg("", {{"only", "attributes"}})}).ok());
}

TEST_F(BrokerTest, PublishPullAckAndNewSubscriptionsStartAtTheEnd) {
  ASSERT_TRUE(broker_->CreateTopic({kTopic, {}, 0, ""}).ok());
  Publish(kTopic, {Msg("before")});
  ASSERT_TRUE(broker_->CreateSubscription({.name = kSub, .topic = kTopic}).ok());
  auto ids = Publish(kTopic, {Msg("a", {{"k", "v"}}), Msg("b")});
  ASSERT_EQ(ids.size(), 2u);
  auto got = Pull();
  ASSERT_EQ(Data(got), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(got[0].message.message_id(), ids[0]);
  EXPECT_EQ(got[0].message.message.attributes.at("k"), "v");
  EXPECT_EQ(got[0].message.publish_time_micros, kStart);
  EXPECT_EQ(got[0].delivery_attempt, 0);  // no dead-letter policy
  EXPECT_EQ(consumer_->outstanding_messages.load(), 2);
  EXPECT_TRUE(Pull().empty());  // leased
  EXPECT_TRUE(Ack(AckIds(got)).status.ok());
  EXPECT_EQ(consumer_->outstanding_messages.load(), 0);
  Advance(60);
  EXPECT_TRUE(Pull().empty());  // acked: never again
}

TEST_F(BrokerTest, ExpiredLeaseIsRedeliveredWithTheNextAttempt) {
  CreateTopicAndSub({.ack_deadline_seconds = 20,
                     .dead_letter_policy = DeadLetterPolicy{"projects/p/topics/dead", 10}});
  Publish(kTopic, {Msg("m")});
  auto first = Pull();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].delivery_attempt, 1);
  Advance(19);
  EXPECT_TRUE(Pull().empty());
  Advance(2);
  auto second = Pull();
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].delivery_attempt, 2);
  EXPECT_NE(second[0].ack_id, first[0].ack_id);
}

TEST_F(BrokerTest, ModifyAckDeadlineExtendsAndZeroNacks) {
  CreateTopicAndSub();
  Publish(kTopic, {Msg("m")});
  auto got = Pull();
  ASSERT_TRUE(ModAck(AckIds(got), 60).status.ok());
  Advance(30);
  EXPECT_TRUE(Pull().empty());  // extended past the 10 s default
  EXPECT_EQ(ModAck(AckIds(got), 601).status.code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(ModAck(AckIds(got), 0).status.ok());
  EXPECT_EQ(Data(Pull()), std::vector<std::string>{"m"});  // nacked: at once
}

TEST_F(BrokerTest, RetryPolicyBacksOffExponentially) {
  CreateTopicAndSub({.retry_policy = RetryPolicy{10 * kMicrosPerSecond, 25 * kMicrosPerSecond}});
  Publish(kTopic, {Msg("m")});
  ASSERT_TRUE(ModAck(AckIds(Pull()), 0).status.ok());  // attempt 1 nacked: 10 s
  Advance(9);
  EXPECT_TRUE(Pull().empty());
  Advance(2);
  auto second = Pull();
  ASSERT_EQ(second.size(), 1u);
  ASSERT_TRUE(ModAck(AckIds(second), 0).status.ok());  // attempt 2: 20 s
  Advance(19);
  EXPECT_TRUE(Pull().empty());
  Advance(2);
  auto third = Pull();
  ASSERT_EQ(third.size(), 1u);
  ASSERT_TRUE(ModAck(AckIds(third), 0).status.ok());  // attempt 3: 40 s, capped at 25
  Advance(24);
  EXPECT_TRUE(Pull().empty());
  Advance(2);
  EXPECT_EQ(Pull().size(), 1u);
}

TEST_F(BrokerTest, DeadLetterAfterMaxDeliveryAttempts) {
  const std::string dead = "projects/p/topics/dead";
  const std::string dead_sub = "projects/p/subscriptions/dead-reader";
  CreateTopicAndSub({.dead_letter_policy = DeadLetterPolicy{dead, 5}});
  ASSERT_TRUE(broker_->CreateTopic({dead, {}, 0, ""}).ok());
  ASSERT_TRUE(broker_->CreateSubscription({.name = dead_sub, .topic = dead}).ok());
  Publish(kTopic, {Msg("poison", {{"a", "b"}})});
  for (int attempt = 1; attempt <= 5; ++attempt) {
    auto got = Pull();
    ASSERT_EQ(got.size(), 1u) << attempt;
    EXPECT_EQ(got[0].delivery_attempt, attempt);
    ASSERT_TRUE(ModAck(AckIds(got), 0).status.ok());
  }
  broker_->Tick();  // hands the message to the dead-letter topic
  EXPECT_TRUE(Pull().empty());
  std::vector<ReceivedMessage> dl;
  for (int i = 0; i < 200 && dl.empty(); ++i) {  // the forward is an asynchronous publish
    dl = Pull(dead_sub);
    if (dl.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(dl.size(), 1u);
  const auto& attrs = dl[0].message.message.attributes;
  EXPECT_EQ(dl[0].message.message.data, "poison");
  EXPECT_EQ(attrs.at("a"), "b");
  EXPECT_EQ(attrs.at("CloudPubSubDeadLetterSourceDeliveryCount"), "5");
  EXPECT_EQ(attrs.at("CloudPubSubDeadLetterSourceSubscription"), "workers");
  EXPECT_EQ(attrs.at("CloudPubSubDeadLetterSourceTopicPublishTime"),
            "2023-11-14T22:13:20.000000+00:00");
  // Acked on the source once the forward is durable: in the publish's completion, which may
  // run just after the dead-letter subscription could already deliver the message.
  auto source_backlog = [&] {
    for (const auto& b : broker_->Backlogs()) {
      if (b.subscription == kSub) return b.backlog.undelivered_messages;
    }
    return uint64_t{999};
  };
  for (int i = 0; i < 200 && source_backlog() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Advance(100);
  EXPECT_TRUE(Pull().empty());
  for (const auto& b : broker_->Backlogs()) {
    EXPECT_EQ(b.backlog.undelivered_messages, b.subscription == kSub ? 0u : 1u) << b.subscription;
  }
}

TEST_F(BrokerTest, OrderingKeysDeliverInOrderAndANackBlocksTheKey) {
  CreateTopicAndSub({.enable_message_ordering = true});
  Publish(kTopic, {Msg("a1", {}, "A"), Msg("b1", {}, "B"), Msg("a2", {}, "A"), Msg("a3", {}, "A"),
                   Msg("free")});
  auto got = Pull();
  EXPECT_EQ(Data(got), (std::vector<std::string>{"a1", "b1", "free"}));
  // Nack a1: a2 must not overtake it.
  ASSERT_TRUE(ModAck({got[0].ack_id}, 0).status.ok());
  auto again = Pull();
  EXPECT_EQ(Data(again), std::vector<std::string>{"a1"});
  ASSERT_TRUE(Ack({again[0].ack_id}).status.ok());
  EXPECT_EQ(Data(Pull()), std::vector<std::string>{"a2"});
}

TEST_F(BrokerTest, FilterDropsAndAcknowledgesWhatDoesNotMatch) {
  CreateTopicAndSub({.filter = "attributes.region = \"eu\""});
  Publish(kTopic, {Msg("eu1", {{"region", "eu"}}), Msg("us", {{"region", "us"}}), Msg("none"),
                   Msg("eu2", {{"region", "eu"}})});
  EXPECT_EQ(Data(Pull()), (std::vector<std::string>{"eu1", "eu2"}));
  auto backlog = broker_->Backlogs();
  EXPECT_EQ(backlog.front().backlog.undelivered_messages, 2u);  // only the two leased remain
  EXPECT_EQ(broker_
                ->CreateSubscription({.name = "projects/p/subscriptions/bad",
                                      .topic = kTopic,
                                      .filter = "attributes.x = unquoted"})
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

TEST_F(BrokerTest, ExactlyOnceRejectsExpiredAndStaleAckIds) {
  CreateTopicAndSub({.enable_exactly_once_delivery = true});
  Publish(kTopic, {Msg("m1"), Msg("m2")});
  auto got = Pull();
  ASSERT_EQ(got.size(), 2u);
  Advance(11);  // both leases expire
  auto redelivered = Pull();
  ASSERT_EQ(redelivered.size(), 2u);
  AckResult stale = Ack({got[0].ack_id});
  EXPECT_TRUE(stale.status.ok());
  EXPECT_EQ(stale.invalid_ack_ids, std::vector<std::string>{got[0].ack_id});
  AckResult fresh = Ack({redelivered[0].ack_id, "garbage"});
  EXPECT_EQ(fresh.invalid_ack_ids, std::vector<std::string>{"garbage"});
  // The valid one is durable: it survives a restart.
  Restart();
  Advance(60);
  auto after = Pull();
  EXPECT_EQ(Data(after), std::vector<std::string>{"m2"});
}

TEST_F(BrokerTest, MalformedAckIdIsAnErrorWithoutExactlyOnce) {
  CreateTopicAndSub();
  Publish(kTopic, {Msg("m")});
  auto got = Pull();
  ASSERT_EQ(got.size(), 1u);
  // The request fails whole: the valid id before the malformed one is not acknowledged either.
  AckResult r = Ack({got[0].ack_id, "not-an-ack-id"});
  EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status.message().find("not-an-ack-id"), std::string::npos);
  EXPECT_EQ(broker_->Backlogs()[0].backlog.undelivered_messages, 1u);
}

TEST_F(BrokerTest, StateSurvivesRestart) {
  CreateTopicAndSub({.ack_deadline_seconds = 30});
  Publish(kTopic, {Msg("acked"), Msg("leased"), Msg("fresh")});
  auto got = Pull(kSub, 2);
  ASSERT_EQ(Data(got), (std::vector<std::string>{"acked", "leased"}));
  ASSERT_TRUE(Ack({got[0].ack_id}).status.ok());
  Restart();
  EXPECT_EQ(broker_->GetSubscription(kSub)->ack_deadline_seconds, 30);
  // "leased" is still leased after the restart, and its ack id still works.
  EXPECT_EQ(Data(Pull()), std::vector<std::string>{"fresh"});
  Advance(31);  // both leases, the one from before the restart and the new one, expire
  auto redelivered = Pull();
  EXPECT_EQ(Data(redelivered), (std::vector<std::string>{"leased", "fresh"}));
  ASSERT_TRUE(Ack(AckIds(redelivered)).status.ok());
}

TEST_F(BrokerTest, SeekToTimeReplaysAndSeekToSnapshotRestores) {
  CreateTopicAndSub();
  Publish(kTopic, {Msg("m1")});
  env_.AdvanceTime(10 * kMicrosPerSecond);
  const int64_t t2 = env_.NowMicros();
  Publish(kTopic, {Msg("m2")});
  ASSERT_TRUE(Ack(AckIds(Pull())).status.ok());
  EXPECT_TRUE(Pull().empty());

  ASSERT_TRUE(broker_->SeekToTime(kSub, t2).ok());
  EXPECT_EQ(Data(Pull()), std::vector<std::string>{"m2"});
  ASSERT_TRUE(broker_->SeekToTime(kSub, 0).ok());
  auto all = Pull();
  EXPECT_EQ(Data(all), (std::vector<std::string>{"m1", "m2"}));
  ASSERT_TRUE(Ack({all[0].ack_id}).status.ok());  // m1 acked, m2 outstanding

  const std::string snap = "projects/p/snapshots/before-m3";
  auto created = broker_->CreateSnapshot(snap, kSub, {});
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(created->topic, kTopic);
  Publish(kTopic, {Msg("m3")});
  ASSERT_TRUE(Ack({all[1].ack_id}).status.ok());
  ASSERT_TRUE(Ack(AckIds(Pull())).status.ok());
  EXPECT_TRUE(Pull().empty());
  Restart();
  ASSERT_TRUE(broker_->SeekToSnapshot(kSub, snap).ok());
  EXPECT_EQ(Data(Pull()), (std::vector<std::string>{"m2", "m3"}));
  EXPECT_EQ(broker_->SeekToSnapshot(kSub, "projects/p/snapshots/none").code(),
            StatusCode::kNotFound);
}

TEST_F(BrokerTest, RetentionDeletesSegmentsOnlyAfterEveryoneAcked) {
  CreateTopicAndSub();
  for (int i = 0; i < 40; ++i) Publish(kTopic, {Msg(std::string(200, 'a' + i % 26))});
  auto topic_dir_segments = [&] {
    size_t n = 0;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.sub("data/topics"))) {
      if (e.path().extension() == ".log") ++n;
    }
    return n;
  };
  const size_t before = topic_dir_segments();
  ASSERT_GT(before, 2u);
  broker_->Maintain();
  EXPECT_EQ(topic_dir_segments(), before);  // nothing acked yet
  ASSERT_TRUE(Ack(AckIds(Pull(kSub, 100))).status.ok());
  Restart();  // acks are durable
  broker_->Maintain();
  EXPECT_EQ(topic_dir_segments(), 1u);
}

TEST_F(BrokerTest, BacklogCountsUnackedAndOldestAge) {
  CreateTopicAndSub();
  Publish(kTopic, {Msg("1"), Msg("2"), Msg("3")});
  env_.AdvanceTime(5 * kMicrosPerSecond);
  auto b = broker_->Backlogs();
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].backlog.undelivered_messages, 3u);
  EXPECT_EQ(b[0].backlog.oldest_unacked_age_micros, 5 * kMicrosPerSecond);
  auto got = Pull(kSub, 1);
  ASSERT_TRUE(Ack(AckIds(got)).status.ok());
  EXPECT_EQ(broker_->Backlogs()[0].backlog.undelivered_messages, 2u);
}

TEST_F(BrokerTest, SubscriptionsOutliveTheirTopicAndExpireWhenIdle) {
  CreateTopicAndSub({.expiration_ttl_micros = 8 * kDay});
  ASSERT_TRUE(broker_->DeleteTopic(kTopic).ok());
  EXPECT_EQ(broker_->GetSubscription(kSub)->topic, "_deleted-topic_");
  EXPECT_TRUE(Pull().empty());
  env_.AdvanceTime(9 * kDay);
  broker_->Maintain();
  EXPECT_EQ(broker_->GetSubscription(kSub).status().code(), StatusCode::kNotFound);
}

TEST_F(BrokerTest, SubscriptionValidation) {
  ASSERT_TRUE(broker_->CreateTopic({kTopic, {}, 0, ""}).ok());
  auto code = [&](SubscriptionConfig c) {
    c.topic = c.topic.empty() ? kTopic : c.topic;
    c.name = kSub;
    return broker_->CreateSubscription(c).status().code();
  };
  EXPECT_EQ(code({.ack_deadline_seconds = 5}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.ack_deadline_seconds = 601}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.message_retention_micros = 60 * kMicrosPerSecond}),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.dead_letter_policy = DeadLetterPolicy{"projects/p/topics/dl", 4}}),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.dead_letter_policy = DeadLetterPolicy{"projects/p/topics/dl", 101}}),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.retry_policy = RetryPolicy{20 * kMicrosPerSecond, 10 * kMicrosPerSecond}}),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.topic = "projects/p/topics/missing"}), StatusCode::kNotFound);
  EXPECT_EQ(code({}), StatusCode::kOk);
  EXPECT_EQ(code({}), StatusCode::kAlreadyExists);
  SubscriptionConfig upd{.name = kSub, .ack_deadline_seconds = 42};
  auto u = broker_->UpdateSubscription(upd, {"ack_deadline_seconds"});
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->ack_deadline_seconds, 42);
  EXPECT_EQ(broker_->UpdateSubscription(upd, {"filter"}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tidepool::broker
