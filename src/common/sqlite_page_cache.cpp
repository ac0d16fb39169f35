#include "common/sqlite_page_cache.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <new>

namespace tidepool {
namespace {

// Keys pages were moved to above every key created: a balance moves at most one page at a
// time to the lock-byte page's number and then away, so a few slots are plenty. When they run
// out, the bound gives up (every truncation goes through) until the next one that goes through.
constexpr size_t kMovedSlots = 8;

struct WrappedCache {
  sqlite3_pcache* inner = nullptr;
  // Every page in the inner cache has a key <= max_created, or a key in moved[0, moved_count),
  // unless moved_overflow: then nothing is known.
  unsigned max_created = 0;
  std::array<unsigned, kMovedSlots> moved{};
  size_t moved_count = 0;
  bool moved_overflow = false;

  // The largest key a page of the cache can hold now.
  unsigned Bound() const {
    if (moved_overflow) return ~0u;
    unsigned bound = max_created;
    for (size_t i = 0; i < moved_count; ++i) bound = std::max(bound, moved[i]);
    return bound;
  }
  void ForgetMoved(unsigned key) {
    for (size_t i = 0; i < moved_count; ++i) {
      if (moved[i] == key) {
        moved[i] = moved[--moved_count];
        return;
      }
    }
  }
  void NoteMoved(unsigned key) {
    if (key <= max_created || moved_overflow) return;
    if (moved_count == kMovedSlots) {
      moved_overflow = true;
      return;
    }
    moved[moved_count++] = key;
  }
  // After the inner cache dropped every page with a key >= limit.
  void Truncated(unsigned limit) {
    if (moved_overflow) {
      // Untracked moved keys below the limit may remain: the limit is the only bound known.
      max_created = limit - 1;
      moved_count = 0;
      moved_overflow = false;
      return;
    }
    max_created = std::min(max_created, limit - 1);
    size_t kept = 0;
    for (size_t i = 0; i < moved_count; ++i) {
      if (moved[i] < limit) moved[kept++] = moved[i];
    }
    moved_count = kept;
  }
};

// SQLite calls the page cache's methods without a context (only xInit and xShutdown get pArg),
// so the inner methods are process-wide. Set before SQLite uses the wrapper; read-only after.
const sqlite3_pcache_methods2* g_inner = nullptr;
sqlite3_pcache_methods2 g_sqlite_default{};
std::atomic<bool> g_installed{false};

WrappedCache* Unwrap(sqlite3_pcache* cache) {
  return reinterpret_cast<WrappedCache*>(cache);
}

int Init(void*) {
  return g_inner->xInit != nullptr ? g_inner->xInit(g_inner->pArg) : SQLITE_OK;
}

void Shutdown(void*) {
  if (g_inner->xShutdown != nullptr) g_inner->xShutdown(g_inner->pArg);
}

sqlite3_pcache* Create(int page_size, int extra_size, int purgeable) {
  auto* wrapped = new (std::nothrow) WrappedCache;
  if (wrapped == nullptr) return nullptr;
  wrapped->inner = g_inner->xCreate(page_size, extra_size, purgeable);
  if (wrapped->inner == nullptr) {
    delete wrapped;
    return nullptr;
  }
  return reinterpret_cast<sqlite3_pcache*>(wrapped);
}

void Cachesize(sqlite3_pcache* cache, int pages) {
  g_inner->xCachesize(Unwrap(cache)->inner, pages);
}

int Pagecount(sqlite3_pcache* cache) {
  return g_inner->xPagecount(Unwrap(cache)->inner);
}

sqlite3_pcache_page* Fetch(sqlite3_pcache* cache, unsigned key, int create) {
  WrappedCache* wrapped = Unwrap(cache);
  sqlite3_pcache_page* page = g_inner->xFetch(wrapped->inner, key, create);
  // Only a fetch that may create a page adds a key; a lookup finds a key already counted (and
  // must not count a moved one as created: SQLite looks up the key it moves a page to).
  if (page != nullptr && create != 0 && key > wrapped->max_created) wrapped->max_created = key;
  return page;
}

void Unpin(sqlite3_pcache* cache, sqlite3_pcache_page* page, int discard) {
  // A discarded page may still be counted in the bound: that only makes it looser.
  g_inner->xUnpin(Unwrap(cache)->inner, page, discard);
}

void Rekey(sqlite3_pcache* cache, sqlite3_pcache_page* page, unsigned old_key, unsigned new_key) {
  WrappedCache* wrapped = Unwrap(cache);
  g_inner->xRekey(wrapped->inner, page, old_key, new_key);
  wrapped->ForgetMoved(old_key);
  wrapped->NoteMoved(new_key);
}

void Truncate(sqlite3_pcache* cache, unsigned limit) {
  WrappedCache* wrapped = Unwrap(cache);
  // No page has a key >= limit: nothing to drop, and no walk over the inner cache.
  if (limit > wrapped->Bound()) return;
  g_inner->xTruncate(wrapped->inner, limit);
  wrapped->Truncated(limit);
}

void Destroy(sqlite3_pcache* cache) {
  WrappedCache* wrapped = Unwrap(cache);
  g_inner->xDestroy(wrapped->inner);
  delete wrapped;
}

void Shrink(sqlite3_pcache* cache) {
  if (g_inner->xShrink != nullptr) g_inner->xShrink(Unwrap(cache)->inner);
}

}  // namespace

namespace internal {

sqlite3_pcache_methods2 WrapPageCache(const sqlite3_pcache_methods2* inner) {
  g_inner = inner;
  return sqlite3_pcache_methods2{.iVersion = 1,
                                 .pArg = nullptr,
                                 .xInit = Init,
                                 .xShutdown = Shutdown,
                                 .xCreate = Create,
                                 .xCachesize = Cachesize,
                                 .xPagecount = Pagecount,
                                 .xFetch = Fetch,
                                 .xUnpin = Unpin,
                                 .xRekey = Rekey,
                                 .xTruncate = Truncate,
                                 .xDestroy = Destroy,
                                 .xShrink = Shrink};
}

}  // namespace internal

bool InstallSqlitePageCache() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Both calls fail with SQLITE_MISUSE once SQLite has initialized.
    if (sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &g_sqlite_default) != SQLITE_OK) return;
    if (g_sqlite_default.xCreate == nullptr || g_sqlite_default.xTruncate == nullptr) return;
    const sqlite3_pcache_methods2 wrapper = internal::WrapPageCache(&g_sqlite_default);
    if (sqlite3_config(SQLITE_CONFIG_PCACHE2, &wrapper) != SQLITE_OK) return;
    g_installed.store(true);
  });
  return g_installed.load();
}

}  // namespace tidepool
