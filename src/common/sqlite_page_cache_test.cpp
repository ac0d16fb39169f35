// The wrapper's bookkeeping, against a page cache of the test's own that records what reaches
// it (sqlite_page_cache_sqlite_test.cpp runs it under SQLite itself).
#include "common/sqlite_page_cache.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <vector>

namespace tidepool {
namespace {

// A page cache that holds pages by key, as SQLite's would, and records each truncation.
struct FakeCache {
  std::map<unsigned, std::unique_ptr<sqlite3_pcache_page>> pages;
  std::vector<unsigned> truncations;
};

FakeCache* Fake(sqlite3_pcache* cache) {
  return reinterpret_cast<FakeCache*>(cache);
}

sqlite3_pcache_methods2 FakeMethods() {
  sqlite3_pcache_methods2 m{};
  m.iVersion = 1;
  m.xCreate = [](int, int, int) { return reinterpret_cast<sqlite3_pcache*>(new FakeCache); };
  m.xCachesize = [](sqlite3_pcache*, int) {};
  m.xPagecount = [](sqlite3_pcache* c) { return static_cast<int>(Fake(c)->pages.size()); };
  m.xFetch = [](sqlite3_pcache* c, unsigned key, int create) -> sqlite3_pcache_page* {
    auto& pages = Fake(c)->pages;
    if (auto it = pages.find(key); it != pages.end()) return it->second.get();
    if (create == 0) return nullptr;
    return pages.emplace(key, std::make_unique<sqlite3_pcache_page>()).first->second.get();
  };
  m.xUnpin = [](sqlite3_pcache*, sqlite3_pcache_page*, int) {};
  m.xRekey = [](sqlite3_pcache* c, sqlite3_pcache_page*, unsigned from, unsigned to) {
    auto node = Fake(c)->pages.extract(from);
    node.key() = to;
    Fake(c)->pages.insert(std::move(node));
  };
  m.xTruncate = [](sqlite3_pcache* c, unsigned limit) {
    Fake(c)->truncations.push_back(limit);
    Fake(c)->pages.erase(Fake(c)->pages.lower_bound(limit), Fake(c)->pages.end());
  };
  m.xDestroy = [](sqlite3_pcache* c) { delete Fake(c); };
  return m;
}

class WrappedPageCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    methods_ = internal::WrapPageCache(&inner_);
    cache_ = methods_.xCreate(4096, 0, 1);
    ASSERT_NE(cache_, nullptr);
  }
  void TearDown() override { methods_.xDestroy(cache_); }

  // The fake behind the wrapper, whose first member is the inner cache.
  FakeCache& Inner() { return *Fake(*reinterpret_cast<sqlite3_pcache**>(cache_)); }
  void Create(unsigned key) { ASSERT_NE(methods_.xFetch(cache_, key, 2), nullptr); }
  void Move(unsigned from, unsigned to) {
    methods_.xRekey(cache_, methods_.xFetch(cache_, from, 0), from, to);
  }

  sqlite3_pcache_methods2 inner_ = FakeMethods();
  sqlite3_pcache_methods2 methods_{};
  sqlite3_pcache* cache_ = nullptr;
};

// balance_nonroot's swap: A to the lock-byte page's number, B to A, A to B. No page is left
// past the end, so the commit's truncation has nothing to do and must not reach the cache.
TEST_F(WrappedPageCacheTest, SwapThroughAFarKeyLeavesNothingToTruncate) {
  for (unsigned key = 1; key <= 100; ++key) Create(key);
  Move(90, 262145);
  Move(40, 90);
  Move(262145, 40);
  methods_.xTruncate(cache_, 101);
  EXPECT_TRUE(Inner().truncations.empty());
  EXPECT_EQ(Inner().pages.size(), 100u);
}

TEST_F(WrappedPageCacheTest, APageLeftAtAFarKeyIsTruncated) {
  for (unsigned key = 1; key <= 10; ++key) Create(key);
  Move(7, 262145);
  methods_.xTruncate(cache_, 11);
  EXPECT_EQ(Inner().truncations, std::vector<unsigned>{11});
  EXPECT_EQ(Inner().pages.count(262145), 0u);
  // Gone, so the next commit's truncation is skipped again.
  methods_.xTruncate(cache_, 11);
  EXPECT_EQ(Inner().truncations.size(), 1u);
}

// A savepoint rolled back after the file grew leaves pages past the restored end.
TEST_F(WrappedPageCacheTest, PagesCreatedPastTheEndAreTruncated) {
  for (unsigned key = 1; key <= 20; ++key) Create(key);
  methods_.xTruncate(cache_, 16);
  EXPECT_EQ(Inner().truncations, std::vector<unsigned>{16});
  EXPECT_EQ(Inner().pages.size(), 15u);
  methods_.xTruncate(cache_, 16);
  EXPECT_EQ(Inner().truncations.size(), 1u);
  Create(16);
  methods_.xTruncate(cache_, 16);
  EXPECT_EQ(Inner().truncations.size(), 2u);
  EXPECT_EQ(Inner().pages.count(16), 0u);
}

// Clearing the cache (SQLite truncates to 1) always reaches a cache that ever held a page.
TEST_F(WrappedPageCacheTest, ClearingReachesTheCache) {
  Create(3);
  methods_.xTruncate(cache_, 1);
  EXPECT_EQ(Inner().truncations, std::vector<unsigned>{1});
  EXPECT_TRUE(Inner().pages.empty());
}

TEST_F(WrappedPageCacheTest, AnEmptyCacheIsNeverWalked) {
  methods_.xTruncate(cache_, 1);
  EXPECT_TRUE(Inner().truncations.empty());
}

// More far keys than the wrapper tracks: it stops skipping until a truncation goes through.
TEST_F(WrappedPageCacheTest, TooManyFarKeysMakeEveryTruncationGoThrough) {
  for (unsigned key = 1; key <= 20; ++key) Create(key);
  for (unsigned key = 1; key <= 12; ++key) Move(key, 1000 + key);
  for (unsigned key = 1; key <= 12; ++key) Move(1000 + key, key);
  methods_.xTruncate(cache_, 21);
  EXPECT_EQ(Inner().truncations, std::vector<unsigned>{21});
  methods_.xTruncate(cache_, 21);
  EXPECT_EQ(Inner().truncations.size(), 1u);
}

// After a truncation that went through because the far keys ran out of slots, the untracked
// far keys below its limit are still bounded: the next truncation below them goes through.
TEST_F(WrappedPageCacheTest, FarKeysLeftUntrackedStayBoundedAfterATruncation) {
  for (unsigned key = 1; key <= 20; ++key) Create(key);
  for (unsigned key = 1; key <= 12; ++key) Move(key, 1000 + key);  // 1009 to 1012 untracked
  methods_.xTruncate(cache_, 1010);
  EXPECT_EQ(Inner().pages.count(1010), 0u);
  ASSERT_EQ(Inner().pages.count(1009), 1u);
  methods_.xTruncate(cache_, 1009);
  EXPECT_EQ(Inner().pages.count(1009), 0u) << "a page past the limit was left in the cache";
  EXPECT_EQ(Inner().truncations, (std::vector<unsigned>{1010, 1009}));
}

TEST_F(WrappedPageCacheTest, OtherMethodsReachTheCache) {
  Create(1);
  Create(2);
  EXPECT_EQ(methods_.xPagecount(cache_), 2);
}

}  // namespace
}  // namespace tidepool
