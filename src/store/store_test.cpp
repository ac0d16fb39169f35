// The store's contract (store.h), the same suite for every engine (store_test.h): conversations,
// history order and limits, idempotent user messages, exactly one reply per request under
// concurrency (threads, and two stores = two connections or pools), unpublished messages,
// input checks, migrations and reopening.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <latch>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "store/store.h"
#include "store/store_test.h"

namespace tidepool::store::testing {
namespace {

::testing::AssertionResult IsOk(const Status& status) {
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << status.ToString();
}
template <typename T>
::testing::AssertionResult IsOk(const Result<T>& result) {
  return IsOk(result.status());
}
template <typename T>
StatusCode CodeOf(const Result<T>& result) {
  return result.status().code();
}

Conversation MakeConversation(const std::string& id, int64_t created_micros = 0) {
  return Conversation{id, "scent-advisor", created_micros};
}

std::vector<std::string> Ids(const std::vector<StoredMessage>& messages) {
  std::vector<std::string> ids;
  for (const auto& message : messages) ids.push_back(message.id);
  return ids;
}

// Runs `body(i)` on `threads` threads released at once, to make them race.
template <typename Body>
void RunConcurrently(int threads, Body body) {
  std::latch start(threads);
  std::vector<std::thread> running;
  for (int i = 0; i < threads; ++i) {
    running.emplace_back([&, i] {
      start.arrive_and_wait();
      body(i);
    });
  }
  for (auto& thread : running) thread.join();
}

constexpr int kRacers = 8;

TEST_P(StoreTest, EngineAnswers) {
  EXPECT_EQ(store_->engine(), GetParam().name);
  EXPECT_TRUE(IsOk(store_->Ping()));
}

TEST_P(StoreTest, CreateAndGetConversation) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c2", 1234))));

  auto c1 = store_->GetConversation("c1");
  ASSERT_TRUE(IsOk(c1));
  ASSERT_TRUE(c1->has_value());
  EXPECT_EQ((*c1)->id, "c1");
  EXPECT_EQ((*c1)->app, "scent-advisor");
  EXPECT_GT((*c1)->created_micros, 0);  // assigned

  auto c2 = store_->GetConversation("c2");
  ASSERT_TRUE(IsOk(c2));
  ASSERT_TRUE(c2->has_value());
  EXPECT_EQ((*c2)->created_micros, 1234);
}

TEST_P(StoreTest, UnknownConversationIsEmptyNotAnError) {
  auto found = store_->GetConversation("nope");
  ASSERT_TRUE(IsOk(found));
  EXPECT_FALSE(found->has_value());
}

TEST_P(StoreTest, DuplicateConversationIsAlreadyExists) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  const Status again = store_->CreateConversation(Conversation{"c1", "other-app", 0});
  EXPECT_EQ(again.code(), StatusCode::kAlreadyExists) << again.ToString();
  auto found = store_->GetConversation("c1");
  ASSERT_TRUE(IsOk(found));
  EXPECT_EQ((*found)->app, "scent-advisor");  // the first one is untouched
}

TEST_P(StoreTest, UserMessagesGetSeqsFromOneInOrder) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  for (int i = 1; i <= 3; ++i) {
    auto added = store_->AddUserMessage(UserMessage("c1", "m" + std::to_string(i), "hi"), "");
    ASSERT_TRUE(IsOk(added));
    EXPECT_TRUE(added->created);
    EXPECT_EQ(added->message.seq, i);
    EXPECT_EQ(added->message.request_id, added->message.id);
    EXPECT_GT(added->message.created_micros, 0);
    EXPECT_FALSE(added->message.published);
  }
}

TEST_P(StoreTest, AddUserMessageToUnknownConversationIsNotFound) {
  auto added = store_->AddUserMessage(UserMessage("nope", "m1", "hi"), "key");
  EXPECT_EQ(CodeOf(added), StatusCode::kNotFound) << added.status().ToString();
}

TEST_P(StoreTest, HistoryIsInSeqOrderAndTheLimitKeepsTheLatest) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c2"))));
  for (int i = 1; i <= 3; ++i) {
    const std::string id = "m" + std::to_string(i);
    ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", id, "question " + id), "")));
    ASSERT_TRUE(IsOk(store_->AddReply(Reply("c1", id, "answer " + id))));
  }
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c2", "other", "elsewhere"), "")));

  auto all = store_->History("c1", 100);
  ASSERT_TRUE(IsOk(all));
  EXPECT_EQ(Ids(*all),
            (std::vector<std::string>{"m1", "m1/reply", "m2", "m2/reply", "m3", "m3/reply"}));
  for (size_t i = 0; i < all->size(); ++i) EXPECT_EQ((*all)[i].seq, static_cast<int64_t>(i + 1));
  EXPECT_EQ((*all)[1].text, "answer m1");
  EXPECT_EQ((*all)[1].role, Role::kAssistant);

  auto latest = store_->History("c1", 3);
  ASSERT_TRUE(IsOk(latest));
  EXPECT_EQ(Ids(*latest), (std::vector<std::string>{"m2/reply", "m3", "m3/reply"}));

  auto other = store_->History("c2", 100);
  ASSERT_TRUE(IsOk(other));
  EXPECT_EQ(Ids(*other), std::vector<std::string>{"other"});
}

TEST_P(StoreTest, HistoryOfAnEmptyConversationIsEmpty) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  EXPECT_TRUE(history->empty());
}

TEST_P(StoreTest, HistoryOfUnknownConversationIsNotFound) {
  auto history = store_->History("nope", 10);
  EXPECT_EQ(CodeOf(history), StatusCode::kNotFound) << history.status().ToString();
}

TEST_P(StoreTest, SameIdempotencyKeyReturnsTheFirstMessage) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  auto first = store_->AddUserMessage(UserMessage("c1", "m1", "first try"), "key-1");
  ASSERT_TRUE(IsOk(first));
  EXPECT_TRUE(first->created);

  // A retried POST: a new message id, the same key.
  auto retry = store_->AddUserMessage(UserMessage("c1", "m2", "second try"), "key-1");
  ASSERT_TRUE(IsOk(retry));
  EXPECT_FALSE(retry->created);
  EXPECT_EQ(retry->message.id, "m1");
  EXPECT_EQ(retry->message.text, "first try");
  EXPECT_EQ(retry->message.seq, first->message.seq);
  EXPECT_EQ(retry->message.created_micros, first->message.created_micros);

  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  EXPECT_EQ(Ids(*history), std::vector<std::string>{"m1"});
}

TEST_P(StoreTest, SameIdempotencyKeyInAnotherConversationIsANewMessage) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c2"))));
  auto in_c1 = store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "key");
  auto in_c2 = store_->AddUserMessage(UserMessage("c2", "m2", "hi"), "key");
  ASSERT_TRUE(IsOk(in_c1));
  ASSERT_TRUE(IsOk(in_c2));
  EXPECT_TRUE(in_c1->created);
  EXPECT_TRUE(in_c2->created);
}

TEST_P(StoreTest, MessagesWithoutKeyAreAlwaysNew) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  auto first = store_->AddUserMessage(UserMessage("c1", "m1", "same text"), "");
  auto second = store_->AddUserMessage(UserMessage("c1", "m2", "same text"), "");
  ASSERT_TRUE(IsOk(first));
  ASSERT_TRUE(IsOk(second));
  EXPECT_TRUE(second->created);
  EXPECT_EQ(second->message.seq, 2);
}

TEST_P(StoreTest, DuplicateMessageIdIsAlreadyExists) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "")));
  auto again = store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "");
  EXPECT_EQ(CodeOf(again), StatusCode::kAlreadyExists) << again.status().ToString();
  // Nothing of the refused write remains: the next message takes the next seq.
  auto next = store_->AddUserMessage(UserMessage("c1", "m2", "hi"), "");
  ASSERT_TRUE(IsOk(next));
  EXPECT_EQ(next->message.seq, 2);
}

TEST_P(StoreTest, SeqGivenByTheCallerIsKeptAndLaterSeqsFollowIt) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  StoredMessage imported = UserMessage("c1", "m1", "imported");
  imported.seq = 10;
  auto added = store_->AddUserMessage(imported, "");
  ASSERT_TRUE(IsOk(added));
  EXPECT_EQ(added->message.seq, 10);

  auto next = store_->AddUserMessage(UserMessage("c1", "m2", "next"), "");
  ASSERT_TRUE(IsOk(next));
  EXPECT_EQ(next->message.seq, 11);

  StoredMessage clash = UserMessage("c1", "m3", "clash");
  clash.seq = 10;
  auto refused = store_->AddUserMessage(clash, "");
  EXPECT_EQ(CodeOf(refused), StatusCode::kAlreadyExists) << refused.status().ToString();
}

TEST_P(StoreTest, ConcurrentAddsWithOneKeyStoreExactlyOne) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  auto other = backend_->Open();  // a second store: its own connection or pool
  ASSERT_TRUE(IsOk(other));
  Store* stores[] = {store_.get(), other->get()};

  std::vector<Result<AddResult>> results(kRacers, Status::Internal("not run"));
  RunConcurrently(kRacers, [&](int i) {
    results[i] = stores[i % 2]->AddUserMessage(
        UserMessage("c1", "m" + std::to_string(i), "try " + std::to_string(i)), "the-key");
  });

  int created = 0;
  std::set<std::string> ids;
  for (const auto& result : results) {
    ASSERT_TRUE(IsOk(result));
    created += result->created ? 1 : 0;
    ids.insert(result->message.id);
  }
  EXPECT_EQ(created, 1);
  EXPECT_EQ(ids.size(), 1u) << "every caller sees the one stored message";
  auto history = store_->History("c1", 100);
  ASSERT_TRUE(IsOk(history));
  ASSERT_EQ(history->size(), 1u);
  EXPECT_EQ(history->front().id, *ids.begin());
  EXPECT_EQ(history->front().seq, 1);
}

TEST_P(StoreTest, ConcurrentAddsGetDistinctConsecutiveSeqs) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  auto other = backend_->Open();
  ASSERT_TRUE(IsOk(other));
  Store* stores[] = {store_.get(), other->get()};
  constexpr int kEach = 10;

  std::atomic<int> failures = 0;
  RunConcurrently(kRacers, [&](int i) {
    for (int k = 0; k < kEach; ++k) {
      const std::string id = "m" + std::to_string(i) + "-" + std::to_string(k);
      // Half of them with a key of their own: keys do not serialize anything else.
      const std::string key = k % 2 == 0 ? "key-" + id : "";
      if (!stores[i % 2]->AddUserMessage(UserMessage("c1", id, "hi"), key).ok()) ++failures;
    }
  });

  EXPECT_EQ(failures.load(), 0);
  auto history = store_->History("c1", 1000);
  ASSERT_TRUE(IsOk(history));
  ASSERT_EQ(history->size(), static_cast<size_t>(kRacers * kEach));
  for (size_t i = 0; i < history->size(); ++i) {
    EXPECT_EQ((*history)[i].seq, static_cast<int64_t>(i + 1));
  }
}

// Writes that run together (SQLite commits concurrent writes in one transaction) succeed or
// fail each on its own: the refused ones change nothing, the others are all kept.
TEST_P(StoreTest, AmongConcurrentWritesAFailingOneFailsAlone) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("taken"))));
  constexpr int kWriters = 64;
  std::vector<Status> created(kWriters, Status::Internal("not run"));
  std::vector<Result<AddResult>> added(kWriters, Status::Internal("not run"));
  RunConcurrently(kWriters, [&](int i) {
    // Every fourth writer asks for a conversation that exists, or adds to one that does not.
    const bool refused = i % 4 == 0;
    const std::string id = refused ? "taken" : "c" + std::to_string(i);
    created[i] = store_->CreateConversation(MakeConversation(id));
    added[i] = store_->AddUserMessage(
        UserMessage(refused ? "absent-" + std::to_string(i) : id, "m" + std::to_string(i), "hi"),
        "");
  });
  for (int i = 0; i < kWriters; ++i) {
    if (i % 4 == 0) {
      EXPECT_EQ(created[i].code(), StatusCode::kAlreadyExists) << i;
      EXPECT_EQ(added[i].status().code(), StatusCode::kNotFound) << i;
      continue;
    }
    ASSERT_TRUE(IsOk(created[i])) << i;
    ASSERT_TRUE(IsOk(added[i])) << i;
    auto history = store_->History("c" + std::to_string(i), 10);
    ASSERT_TRUE(IsOk(history));
    ASSERT_EQ(history->size(), 1u) << i;
    EXPECT_EQ(history->front().id, "m" + std::to_string(i));
  }
  auto taken = store_->History("taken", 10);
  ASSERT_TRUE(IsOk(taken));
  EXPECT_TRUE(taken->empty());
}

TEST_P(StoreTest, ASecondReplyToARequestIsNotStored) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "which scent?"), "")));

  StoredMessage reply = Reply("c1", "m1", "Try vetiver.");
  reply.cards_json = R"({"cards":[{"title":"Vetiver"}]})";
  auto first = store_->AddReply(reply);
  ASSERT_TRUE(IsOk(first));
  EXPECT_TRUE(*first);

  auto again = store_->AddReply(Reply("c1", "m1", "Try oud."));  // redelivered, rerun
  ASSERT_TRUE(IsOk(again));
  EXPECT_FALSE(*again);
  auto error_reply = store_->AddReply(Reply("c1", "m1", "failed", Role::kError));
  ASSERT_TRUE(IsOk(error_reply));
  EXPECT_FALSE(*error_reply);

  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  ASSERT_EQ(history->size(), 2u);
  const StoredMessage& stored = (*history)[1];
  EXPECT_EQ(stored.id, "m1/reply");
  EXPECT_EQ(stored.request_id, "m1");
  EXPECT_EQ(stored.role, Role::kAssistant);
  EXPECT_EQ(stored.text, "Try vetiver.");
  EXPECT_EQ(stored.cards_json, reply.cards_json);
  EXPECT_EQ(stored.seq, 2);
}

TEST_P(StoreTest, AnErrorIsTheReplyWhenItComesFirst) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "")));
  auto error_reply = store_->AddReply(Reply("c1", "m1", "the model timed out", Role::kError));
  ASSERT_TRUE(IsOk(error_reply));
  EXPECT_TRUE(*error_reply);
  auto late = store_->AddReply(Reply("c1", "m1", "late answer"));
  ASSERT_TRUE(IsOk(late));
  EXPECT_FALSE(*late);
  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  ASSERT_EQ(history->size(), 2u);
  EXPECT_EQ((*history)[1].role, Role::kError);
}

TEST_P(StoreTest, ConcurrentRepliesToOneRequestStoreExactlyOne) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "")));
  auto other = backend_->Open();
  ASSERT_TRUE(IsOk(other));
  Store* stores[] = {store_.get(), other->get()};

  std::vector<Result<bool>> results(kRacers, Status::Internal("not run"));
  RunConcurrently(kRacers, [&](int i) {
    results[i] = stores[i % 2]->AddReply(Reply("c1", "m1", "reply " + std::to_string(i)));
  });

  int stored = 0;
  std::string winner;
  for (int i = 0; i < kRacers; ++i) {
    ASSERT_TRUE(IsOk(results[i]));
    if (*results[i]) {
      ++stored;
      winner = "reply " + std::to_string(i);
    }
  }
  EXPECT_EQ(stored, 1);
  auto history = store_->History("c1", 100);
  ASSERT_TRUE(IsOk(history));
  ASSERT_EQ(history->size(), 2u);
  EXPECT_EQ((*history)[1].text, winner);
}

TEST_P(StoreTest, ConcurrentRepliesToManyRequestsStoreOneEach) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  constexpr int kRequests = 5;
  for (int r = 0; r < kRequests; ++r) {
    ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m" + std::to_string(r), "q"), "")));
  }
  auto other = backend_->Open();
  ASSERT_TRUE(IsOk(other));
  Store* stores[] = {store_.get(), other->get()};

  std::atomic<int> stored = 0;
  std::atomic<int> failures = 0;
  RunConcurrently(kRacers, [&](int i) {
    for (int r = 0; r < kRequests; ++r) {
      auto result = stores[i % 2]->AddReply(Reply("c1", "m" + std::to_string(r), "a"));
      if (!result.ok()) {
        ++failures;
      } else if (*result) {
        ++stored;
      }
    }
  });
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(stored.load(), kRequests);
  auto history = store_->History("c1", 100);
  ASSERT_TRUE(IsOk(history));
  EXPECT_EQ(history->size(), static_cast<size_t>(2 * kRequests));
}

TEST_P(StoreTest, ReplyToWhatIsNotThereIsNotFound) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c2"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "")));
  ASSERT_TRUE(IsOk(store_->AddReply(Reply("c1", "m1", "hello"))));

  auto unknown_request = store_->AddReply(Reply("c1", "m9", "?"));
  EXPECT_EQ(CodeOf(unknown_request), StatusCode::kNotFound);
  auto other_conversation = store_->AddReply(Reply("c2", "m1", "?"));
  EXPECT_EQ(CodeOf(other_conversation), StatusCode::kNotFound);
  auto unknown_conversation = store_->AddReply(Reply("c9", "m1", "?"));
  EXPECT_EQ(CodeOf(unknown_conversation), StatusCode::kNotFound);
  auto to_a_reply = store_->AddReply(Reply("c1", "m1/reply", "?"));
  EXPECT_EQ(CodeOf(to_a_reply), StatusCode::kNotFound);
}

// AddReplyAsync keeps AddReply's answers: stored once, then false; NOT_FOUND and
// INVALID_ARGUMENT through `done`. Queued alone, with no other write to share a commit with, a
// reply is still committed and reported.
TEST_P(StoreTest, AddReplyAsyncReportsWhatAddReplyWould) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "")));
  auto add = [this](const StoredMessage& reply) {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<Result<bool>> answer;
    int calls = 0;
    store_->AddReplyAsync(reply, [&](Result<bool> stored) {
      std::lock_guard lock(mu);
      ++calls;
      answer.emplace(std::move(stored));
      cv.notify_all();
    });
    std::unique_lock lock(mu);
    const bool answered =
        cv.wait_for(lock, std::chrono::seconds(10), [&] { return answer.has_value(); });
    EXPECT_TRUE(answered) << "no answer within 10 s";
    EXPECT_LE(calls, 1);
    return answered ? *answer : Result<bool>(Status::Internal("no answer"));
  };
  StoredMessage first = Reply("c1", "m1", "Try vetiver.");
  first.cards_json = R"({"recommendations":{"results":[]}})";
  auto stored = add(first);
  ASSERT_TRUE(IsOk(stored));
  EXPECT_TRUE(*stored);
  auto again = add(Reply("c1", "m1", "Try oud."));
  ASSERT_TRUE(IsOk(again));
  EXPECT_FALSE(*again);
  EXPECT_EQ(CodeOf(add(Reply("c1", "m9", "?"))), StatusCode::kNotFound);
  EXPECT_EQ(CodeOf(add(Reply("c1", "m1", "hi", Role::kUser))), StatusCode::kInvalidArgument);

  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  ASSERT_EQ(history->size(), 2u);
  EXPECT_EQ((*history)[1].text, "Try vetiver.");
  EXPECT_EQ((*history)[1].cards_json, first.cards_json);
}

// Replies queued from many threads (more than one group's worth, some of them twice) beside
// POSTs, then the store closes at once: every call hears `done` exactly once, each request has
// exactly one reply reported stored, and the reopened database holds exactly those.
TEST_P(StoreTest, AddReplyAsyncAnswersEveryCallAcrossClose) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  constexpr int kRequests = 300;
  for (int r = 0; r < kRequests; ++r) {
    ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m" + std::to_string(r), "q"), "")));
  }
  constexpr int kThreads = 3;
  std::mutex mu;
  std::map<std::string, int> done_calls;  // by "REQUEST#THREAD"
  std::map<std::string, int> stored;      // by request: how many calls were told "stored"
  int failures = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    // Thread 0 replies to every request, the others to every second one: duplicates race.
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRequests; r += t == 0 ? 1 : 2) {
        const std::string request = "m" + std::to_string(r);
        const std::string call = request + "#" + std::to_string(t);
        store_->AddReplyAsync(Reply("c1", request, "a" + std::to_string(t)),
                              [&, request, call](Result<bool> result) {
                                std::lock_guard lock(mu);
                                ++done_calls[call];
                                if (!result.ok()) {
                                  ++failures;
                                } else if (*result) {
                                  ++stored[request];
                                }
                              });
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < 50; ++i) {
      PostCallbacks callbacks;
      store_->PostUserMessageAsync("scent-advisor", UserMessage("c1", "p" + std::to_string(i), "x"),
                                   "", 1, std::move(callbacks));
    }
  });
  for (auto& thread : threads) thread.join();
  store_.reset();  // waits for the writes queued so far
  std::lock_guard lock(mu);
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(done_calls.size(), static_cast<size_t>(kRequests + (kThreads - 1) * kRequests / 2));
  for (const auto& [call, calls] : done_calls) EXPECT_EQ(calls, 1) << call;
  EXPECT_EQ(stored.size(), static_cast<size_t>(kRequests));
  for (const auto& [request, count] : stored) EXPECT_EQ(count, 1) << request;
  auto reopened = backend_->Open();
  ASSERT_TRUE(IsOk(reopened));
  auto history = (*reopened)->History("c1", 3 * kRequests);
  ASSERT_TRUE(IsOk(history));
  size_t replies = 0;
  for (const auto& message : *history) replies += message.role == Role::kAssistant ? 1 : 0;
  EXPECT_EQ(replies, static_cast<size_t>(kRequests));
  EXPECT_EQ(history->size(), static_cast<size_t>(2 * kRequests + 50));
}

TEST_P(StoreTest, RolesMustMatchTheCall) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  StoredMessage not_user = UserMessage("c1", "m1", "hi");
  not_user.role = Role::kAssistant;
  EXPECT_EQ(CodeOf(store_->AddUserMessage(not_user, "")), StatusCode::kInvalidArgument);
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "")));
  EXPECT_EQ(CodeOf(store_->AddReply(Reply("c1", "m1", "hi", Role::kUser))),
            StatusCode::kInvalidArgument);
}

TEST_P(StoreTest, BadInputIsInvalidArgument) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "")));
  const auto invalid = StatusCode::kInvalidArgument;

  EXPECT_EQ(store_->CreateConversation(MakeConversation("")).code(), invalid);
  EXPECT_EQ(store_->CreateConversation(Conversation{"c2", "", 0}).code(), invalid);
  EXPECT_EQ(store_->CreateConversation(MakeConversation(std::string(kMaxIdBytes + 1, 'c'))).code(),
            invalid);
  EXPECT_EQ(store_->CreateConversation(MakeConversation("c2", -1)).code(), invalid);
  EXPECT_EQ(CodeOf(store_->GetConversation("")), invalid);

  EXPECT_EQ(CodeOf(store_->AddUserMessage(UserMessage("c1", "", "hi"), "")), invalid);
  EXPECT_EQ(CodeOf(store_->AddUserMessage(UserMessage("", "m2", "hi"), "")), invalid);
  EXPECT_EQ(CodeOf(store_->AddUserMessage(
                UserMessage("c1", "m2", std::string(kMaxTextBytes + 1, 'x')), "")),
            invalid);
  EXPECT_EQ(CodeOf(store_->AddUserMessage(UserMessage("c1", "m2", std::string("a\0b", 3)), "")),
            invalid);
  EXPECT_EQ(CodeOf(store_->AddUserMessage(UserMessage("c1", "m2", "bad \xC3\x28 utf-8"), "")),
            invalid);
  EXPECT_EQ(CodeOf(store_->AddUserMessage(UserMessage("c1", "m2", "surrogate \xED\xA0\x80"), "")),
            invalid);
  EXPECT_EQ(CodeOf(store_->AddUserMessage(UserMessage("c1", "m2", "hi"),
                                          std::string(kMaxIdBytes + 1, 'k'))),
            invalid);
  StoredMessage with_cards = UserMessage("c1", "m2", "hi");
  with_cards.cards_json = "{}";
  EXPECT_EQ(CodeOf(store_->AddUserMessage(with_cards, "")), invalid);
  StoredMessage other_request = UserMessage("c1", "m2", "hi");
  other_request.request_id = "m3";
  EXPECT_EQ(CodeOf(store_->AddUserMessage(other_request, "")), invalid);
  StoredMessage negative_seq = UserMessage("c1", "m2", "hi");
  negative_seq.seq = -1;
  EXPECT_EQ(CodeOf(store_->AddUserMessage(negative_seq, "")), invalid);

  EXPECT_EQ(CodeOf(store_->AddReply(Reply("c1", "", "hi"))), invalid);
  StoredMessage wrong_id = Reply("c1", "m1", "hi");
  wrong_id.id = "m1-answer";
  EXPECT_EQ(CodeOf(store_->AddReply(wrong_id)), invalid);
  StoredMessage array_cards = Reply("c1", "m1", "hi");
  array_cards.cards_json = "[1, 2]";
  EXPECT_EQ(CodeOf(store_->AddReply(array_cards)), invalid);
  StoredMessage broken_cards = Reply("c1", "m1", "hi");
  broken_cards.cards_json = "{\"cards\": [";
  EXPECT_EQ(CodeOf(store_->AddReply(broken_cards)), invalid);

  EXPECT_EQ(store_->MarkPublished("").code(), invalid);
  EXPECT_EQ(CodeOf(store_->History("c1", 0)), invalid);
  EXPECT_EQ(CodeOf(store_->History("c1", -5)), invalid);
  EXPECT_EQ(CodeOf(store_->Unpublished(0, 0)), invalid);

  // Nothing refused was stored, and no reply was.
  auto history = store_->History("c1", 100);
  ASSERT_TRUE(IsOk(history));
  EXPECT_EQ(Ids(*history), std::vector<std::string>{"m1"});
}

TEST_P(StoreTest, TheSchemaItselfRefusesDuplicates) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "key-1")));
  ASSERT_TRUE(IsOk(store_->AddReply(Reply("c1", "m1", "hello"))));
  // Rows written around the store, as a buggy writer would: the unique indexes refuse them.
  const std::string insert =
      "INSERT INTO messages (id, conversation_id, seq, role, text, request_id, cards_json, "
      "created_micros, idempotency_key) VALUES ";
  EXPECT_FALSE(backend_
                   ->Query(insert + "('x1', 'c1', 100, 'assistant', 'second', 'm1', '', 1, "
                                    "NULL)")
                   .ok())
      << "a second reply to m1";
  EXPECT_FALSE(
      backend_->Query(insert + "('x2', 'c1', 101, 'user', 'dup', 'x2', '', 1, 'key-1')").ok())
      << "a second message with key-1";
  EXPECT_FALSE(backend_->Query(insert + "('x3', 'c1', 1, 'user', 'dup', 'x3', '', 1, NULL)").ok())
      << "a second seq 1";
  EXPECT_FALSE(
      backend_->Query(insert + "('x4', 'c9', 102, 'user', 'orphan', 'x4', '', 1, NULL)").ok())
      << "a message of no conversation";
  EXPECT_FALSE(backend_->Query(insert + "('m1', 'c1', 104, 'user', 'dup', 'm1', '', 1, NULL)").ok())
      << "a second message m1";
  EXPECT_TRUE(
      IsOk(backend_->Query(insert + "('x5', 'c1', 103, 'user', 'fine', 'x5', '', 1, NULL)")));
}

TEST_P(StoreTest, TextAtTheLimitAndUnicodeRoundTrip) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  const std::string longest(kMaxTextBytes, 'x');
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", longest), "")));
  const std::string unicode = "Caf\xC3\xA9 \xE2\x98\x95 \xF0\x9F\x8C\xB8 'quoted' \"double\" ; --";
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m2 \xC3\xA9", unicode), "k\xC3\xA9")));
  StoredMessage reply = Reply("c1", "m2 \xC3\xA9", unicode);
  reply.cards_json = R"({"note":"Caf\u00e9","n":[1,2.5,null,true]})";
  ASSERT_TRUE(IsOk(store_->AddReply(reply)));

  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  ASSERT_EQ(history->size(), 3u);
  EXPECT_EQ((*history)[0].text, longest);
  EXPECT_EQ((*history)[1].id, "m2 \xC3\xA9");
  EXPECT_EQ((*history)[1].text, unicode);
  EXPECT_EQ((*history)[2].text, unicode);
  EXPECT_EQ((*history)[2].cards_json, reply.cards_json);
}

TEST_P(StoreTest, UnpublishedListsUserMessagesOldestFirst) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c2"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "late", "x", 3'000), "")));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c2", "early", "x", 1'000), "")));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "middle", "x", 2'000), "")));
  ASSERT_TRUE(IsOk(store_->AddReply(Reply("c1", "late", "a reply is never unpublished"))));

  auto all = store_->Unpublished(10'000, 100);
  ASSERT_TRUE(IsOk(all));
  EXPECT_EQ(Ids(*all), (std::vector<std::string>{"early", "middle", "late"}));
  EXPECT_EQ((*all)[0].conversation_id, "c2");
  EXPECT_FALSE((*all)[0].published);

  auto before = store_->Unpublished(3'000, 100);  // strictly before
  ASSERT_TRUE(IsOk(before));
  EXPECT_EQ(Ids(*before), (std::vector<std::string>{"early", "middle"}));

  auto limited = store_->Unpublished(10'000, 1);
  ASSERT_TRUE(IsOk(limited));
  EXPECT_EQ(Ids(*limited), std::vector<std::string>{"early"});
}

// A POST's store work in one call: the conversation must be the app's; the history returned
// ends with the message and keeps the latest history_limit.
TEST_P(StoreTest, PostUserMessageChecksTheAppAndReturnsTheHistory) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "one"), "")));
  ASSERT_TRUE(IsOk(store_->AddReply(Reply("c1", "m1", "reply one"))));

  auto posted = store_->PostUserMessage("scent-advisor", UserMessage("c1", "m2", "two"), "k2", 2);
  ASSERT_TRUE(IsOk(posted));
  EXPECT_TRUE(posted->added.created);
  EXPECT_EQ(posted->added.message.seq, 3);
  EXPECT_EQ(Ids(posted->history), (std::vector<std::string>{"m1/reply", "m2"}));
  EXPECT_FALSE(posted->history.back().published);

  // The same key again: the first message, stored once.
  auto again = store_->PostUserMessage("scent-advisor", UserMessage("c1", "m3", "two"), "k2", 10);
  ASSERT_TRUE(IsOk(again));
  EXPECT_FALSE(again->added.created);
  EXPECT_EQ(again->added.message.id, "m2");
  EXPECT_EQ(Ids(again->history), (std::vector<std::string>{"m1", "m1/reply", "m2"}));

  // Another app's conversation, or none: NOT_FOUND, and nothing is stored.
  auto other_app = store_->PostUserMessage("gift-concierge", UserMessage("c1", "m4", "x"), "", 5);
  EXPECT_EQ(CodeOf(other_app), StatusCode::kNotFound);
  EXPECT_NE(other_app.status().message().find("gift-concierge"), std::string::npos)
      << other_app.status().ToString();
  auto unknown = store_->PostUserMessage("scent-advisor", UserMessage("c9", "m5", "x"), "", 5);
  EXPECT_EQ(CodeOf(unknown), StatusCode::kNotFound);
  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  EXPECT_EQ(Ids(*history), (std::vector<std::string>{"m1", "m1/reply", "m2"}));

  EXPECT_EQ(CodeOf(store_->PostUserMessage("scent-advisor", UserMessage("c1", "m6", "x"), "", 0)),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(store_->PostUserMessage("scent-advisor", UserMessage("c1", "", "x"), "", 5)),
            StatusCode::kInvalidArgument);
}

// What PostUserMessageAsync reported for one call.
struct AsyncPost {
  std::mutex mu;
  std::condition_variable cv;
  int written_calls = 0;
  int done_calls = 0;
  bool written_before_done = false;
  std::optional<PostedMessage> written;
  std::vector<std::string> history_when_written;  // read beside the write, through the store
  std::optional<Result<AddResult>> done;

  PostCallbacks Callbacks(Store& store, const std::string& conversation) {
    PostCallbacks callbacks;
    callbacks.written = [this, &store, conversation](PostedMessage posted) {
      auto seen = store.History(conversation, 100);  // a read: must not wait for the commit
      std::lock_guard lock(mu);
      ++written_calls;
      written = std::move(posted);
      if (seen.ok()) {
        for (const auto& m : *seen) history_when_written.push_back(m.id);
      }
    };
    callbacks.done = [this](Result<AddResult> posted) {
      std::lock_guard lock(mu);
      ++done_calls;
      written_before_done = written_calls == 1;
      done.emplace(std::move(posted));
      cv.notify_all();
    };
    return callbacks;
  }
  // Posts `message` through PostUserMessageAsync and waits (10 s at most) for `done`.
  bool Post(Store& store, const StoredMessage& message, const std::string& key, int limit) {
    store.PostUserMessageAsync("scent-advisor", message, key, limit,
                               Callbacks(store, message.conversation_id));
    std::unique_lock lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(10), [this] { return done_calls > 0; });
  }
};

// PostUserMessageAsync: `written` with what the commit will make durable, then `done`. Both
// engines call `written` before their commit (so that the web tier's publish overlaps it): a
// read beside it, on another connection, does not see the message yet. Errors reach `done`
// alone.
TEST_P(StoreTest, PostUserMessageAsyncReportsWrittenThenDone) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "one"), "")));

  AsyncPost first;
  ASSERT_TRUE(first.Post(*store_, UserMessage("c1", "m2", "two"), "k2", 5));
  {
    std::lock_guard lock(first.mu);
    EXPECT_EQ(first.written_calls, 1);
    EXPECT_EQ(first.done_calls, 1);
    EXPECT_TRUE(first.written_before_done);
    ASSERT_TRUE(first.written.has_value());
    EXPECT_TRUE(first.written->added.created);
    EXPECT_EQ(Ids(first.written->history), (std::vector<std::string>{"m1", "m2"}));
    ASSERT_TRUE(IsOk(*first.done));
    EXPECT_EQ((*first.done)->message.id, "m2");
    EXPECT_TRUE((*first.done)->created);
    EXPECT_EQ(first.history_when_written, std::vector<std::string>{"m1"});
  }
  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  EXPECT_EQ(Ids(*history), (std::vector<std::string>{"m1", "m2"}));

  // The key again: written reports the first message, not created.
  AsyncPost again;
  ASSERT_TRUE(again.Post(*store_, UserMessage("c1", "m3", "two"), "k2", 5));
  {
    std::lock_guard lock(again.mu);
    ASSERT_EQ(again.written_calls, 1);
    EXPECT_FALSE(again.written->added.created);
    EXPECT_EQ(again.written->added.message.id, "m2");
  }

  // An unknown conversation, a bad limit: done alone, with the error.
  AsyncPost unknown;
  ASSERT_TRUE(unknown.Post(*store_, UserMessage("c9", "m4", "x"), "", 5));
  AsyncPost bad_limit;
  ASSERT_TRUE(bad_limit.Post(*store_, UserMessage("c1", "m5", "x"), "", 0));
  std::lock_guard lock(unknown.mu);
  std::lock_guard lock2(bad_limit.mu);
  EXPECT_EQ(unknown.written_calls, 0);
  EXPECT_EQ(CodeOf(*unknown.done), StatusCode::kNotFound);
  EXPECT_EQ(bad_limit.written_calls, 0);
  EXPECT_EQ(CodeOf(*bad_limit.done), StatusCode::kInvalidArgument);
  history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  EXPECT_EQ(Ids(*history), (std::vector<std::string>{"m1", "m2"}));
}

// Many posts in flight from many threads, beside blocking writes, then the store closes at
// once: every call hears `done` exactly once, and what it was told is what the database holds.
TEST_P(StoreTest, PostUserMessageAsyncAnswersEveryCallAcrossClose) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  constexpr int kThreads = 4;
  constexpr int kEach = 100;
  std::mutex mu;
  std::map<std::string, int> done_calls;
  std::set<std::string> stored;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const std::string id = "m" + std::to_string(t) + "-" + std::to_string(i);
        PostCallbacks callbacks;
        callbacks.done = [&, id](Result<AddResult> posted) {
          std::lock_guard lock(mu);
          ++done_calls[id];
          if (posted.ok()) stored.insert(id);
        };
        store_->PostUserMessageAsync("scent-advisor", UserMessage("c1", id, "x"), "", 1,
                                     std::move(callbacks));
      }
    });
  }
  // Blocking writes in the same groups as the queued ones.
  threads.emplace_back([&] {
    for (int i = 0; i < kEach; ++i) {
      const std::string id = "sync-" + std::to_string(i);
      auto added = store_->AddUserMessage(UserMessage("c1", id, "x"), "");
      ASSERT_TRUE(IsOk(added));
      std::lock_guard lock(mu);
      ++done_calls[id];
      stored.insert(id);
    }
  });
  for (auto& thread : threads) thread.join();
  store_.reset();  // waits for the writes queued so far
  std::lock_guard lock(mu);
  ASSERT_EQ(done_calls.size(), static_cast<size_t>((kThreads + 1) * kEach));
  for (const auto& [id, calls] : done_calls) EXPECT_EQ(calls, 1) << id;
  auto reopened = backend_->Open();
  ASSERT_TRUE(IsOk(reopened));
  auto history = (*reopened)->History("c1", (kThreads + 1) * kEach + 10);
  ASSERT_TRUE(IsOk(history));
  const std::vector<std::string> ids = Ids(*history);
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()), stored);
  EXPECT_EQ(ids.size(), stored.size());
}

TEST_P(StoreTest, MarkPublishedTakesAMessageOffUnpublished) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "x", 1'000), "")));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m2", "x", 2'000), "")));

  ASSERT_TRUE(IsOk(store_->MarkPublished("m1")));
  ASSERT_TRUE(IsOk(store_->MarkPublished("m1")));  // twice is fine
  auto unpublished = store_->Unpublished(10'000, 100);
  ASSERT_TRUE(IsOk(unpublished));
  EXPECT_EQ(Ids(*unpublished), std::vector<std::string>{"m2"});

  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  EXPECT_TRUE((*history)[0].published);
  EXPECT_FALSE((*history)[1].published);
}

TEST_P(StoreTest, MarkAllPublishedMarksTheUserMessagesAndSkipsTheRest) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  // Ids with characters that mean something to SQL, JSON or array literals.
  const std::vector<std::string> ids = {"m1", "m,2", "m\"3'", "m{4}"};
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_TRUE(IsOk(store_->AddUserMessage(
        UserMessage("c1", ids[i], "x", static_cast<int64_t>(i + 1) * 1'000), "")));
  }
  ASSERT_TRUE(IsOk(store_->AddReply(Reply("c1", "m1", "y"))));
  auto marked = store_->MarkAllPublished({"m,2", "m\"3'", "nope", "m1/reply"});
  ASSERT_TRUE(IsOk(marked));
  EXPECT_EQ(*marked, 2);
  auto unpublished = store_->Unpublished(10'000, 100);
  ASSERT_TRUE(IsOk(unpublished));
  EXPECT_EQ(Ids(*unpublished), (std::vector<std::string>{"m1", "m{4}"}));
  auto none = store_->MarkAllPublished({});
  ASSERT_TRUE(IsOk(none));
  EXPECT_EQ(*none, 0);
  EXPECT_EQ(CodeOf(store_->MarkAllPublished({"m1", ""})), StatusCode::kInvalidArgument);
}

TEST_P(StoreTest, MarkPublishedOfWhatIsNoUserMessageIsNotFound) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1"))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "x"), "")));
  ASSERT_TRUE(IsOk(store_->AddReply(Reply("c1", "m1", "y"))));
  EXPECT_EQ(store_->MarkPublished("nope").code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->MarkPublished("m1/reply").code(), StatusCode::kNotFound);
}

TEST_P(StoreTest, ReopenKeepsTheData) {
  ASSERT_TRUE(IsOk(store_->CreateConversation(MakeConversation("c1", 42))));
  ASSERT_TRUE(IsOk(store_->AddUserMessage(UserMessage("c1", "m1", "hi"), "key-1")));
  ASSERT_TRUE(IsOk(store_->AddReply(Reply("c1", "m1", "hello"))));
  ASSERT_TRUE(IsOk(store_->MarkPublished("m1")));
  store_.reset();

  auto reopened = backend_->Open();
  ASSERT_TRUE(IsOk(reopened));
  store_ = std::move(reopened).value();
  auto conversation = store_->GetConversation("c1");
  ASSERT_TRUE(IsOk(conversation));
  ASSERT_TRUE(conversation->has_value());
  EXPECT_EQ((*conversation)->created_micros, 42);

  auto history = store_->History("c1", 10);
  ASSERT_TRUE(IsOk(history));
  EXPECT_EQ(Ids(*history), (std::vector<std::string>{"m1", "m1/reply"}));
  EXPECT_TRUE((*history)[0].published);

  // What decides later writes survived too: the key, the reply, the seq counter.
  auto retry = store_->AddUserMessage(UserMessage("c1", "m1-retry", "hi"), "key-1");
  ASSERT_TRUE(IsOk(retry));
  EXPECT_FALSE(retry->created);
  auto second_reply = store_->AddReply(Reply("c1", "m1", "again"));
  ASSERT_TRUE(IsOk(second_reply));
  EXPECT_FALSE(*second_reply);
  auto next = store_->AddUserMessage(UserMessage("c1", "m2", "next"), "");
  ASSERT_TRUE(IsOk(next));
  EXPECT_EQ(next->message.seq, 3);
}

TEST_P(StoreTest, ReopeningAppliesNoMigrationAgain) {
  auto version = store_->SchemaVersion();
  ASSERT_TRUE(IsOk(version));
  EXPECT_EQ(*version, kSchemaVersion);
  const std::string list =
      "SELECT version, name, applied_at FROM schema_migrations ORDER BY version";
  auto before = backend_->Query(list);
  ASSERT_TRUE(IsOk(before));
  ASSERT_EQ(before->size(), static_cast<size_t>(kSchemaVersion));
  EXPECT_EQ(before->back()[0], std::to_string(kSchemaVersion));
  EXPECT_FALSE(before->back()[2].empty());

  store_.reset();
  for (int i = 0; i < 2; ++i) {
    auto reopened = backend_->Open();
    ASSERT_TRUE(IsOk(reopened));
  }
  auto after = backend_->Query(list);
  ASSERT_TRUE(IsOk(after));
  EXPECT_EQ(*after, *before);  // same rows, same applied_at
}

TEST_P(StoreTest, ConcurrentOpensOfANewDatabaseMigrateOnce) {
  auto fresh = GetParam().make();
  std::vector<Status> opened(4);
  RunConcurrently(4, [&](int i) { opened[i] = fresh->Open().status(); });
  for (const Status& status : opened) EXPECT_TRUE(IsOk(status));
  auto rows = fresh->Query("SELECT version FROM schema_migrations ORDER BY version");
  ASSERT_TRUE(IsOk(rows));
  EXPECT_EQ(rows->size(), static_cast<size_t>(kSchemaVersion));
}

TEST_P(StoreTest, ADatabaseFromANewerBuildIsRefused) {
  ASSERT_TRUE(IsOk(backend_->Query("INSERT INTO schema_migrations (version, name) VALUES (" +
                                   std::to_string(kSchemaVersion + 1) + ", 'from the future')")));
  store_.reset();
  auto reopened = backend_->Open();
  EXPECT_EQ(CodeOf(reopened), StatusCode::kFailedPrecondition) << reopened.status().ToString();
}

}  // namespace
}  // namespace tidepool::store::testing
