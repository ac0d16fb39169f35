// SQLite's own page cache, wrapped so that a commit does not walk the whole cache.
//
// At the end of every write transaction SQLite truncates its page cache to the database's size
// (pager_end_transaction), and its page cache (pcache1) does that by walking every page it
// holds whenever the largest key it has ever seen lies far past the end. A b-tree balance that
// swaps two new pages into ascending order moves one of them, for a moment, to the number of
// the lock-byte page (262,145 with 4 KiB pages; btree.c, balance_nonroot), and pcache1 never
// forgets that key: from then on each commit that splits a page, which inserts at random keys
// do all the time, walks the whole cache, one cache miss per page. With a 64 MiB cache that was
// a fifth of the conversation store's writer thread (docs/benchmarks.md).
//
// The wrapper keeps its own bound on the keys the cache can hold: the largest key a page was
// created with, and the keys pages were moved to and still hold. A truncation below nothing
// the cache can hold is skipped; any other goes to pcache1 as before. Nothing else changes:
// pages, their memory, eviction and limits are pcache1's.
#pragma once

#include <sqlite3.h>

namespace tidepool {

// Installs the wrapper as SQLite's page cache for the whole process, once. It must run before
// SQLite initializes (before the process's first sqlite3_open*); later it changes nothing and
// returns false, and SQLite keeps its own cache, which is only slower. Thread-safe.
bool InstallSqlitePageCache();

namespace internal {

// The wrapper's methods around `inner`, which must outlive every cache created through them.
// The wrapper keeps one inner cache at a time: each call replaces the one before (tests).
sqlite3_pcache_methods2 WrapPageCache(const sqlite3_pcache_methods2* inner);

}  // namespace internal
}  // namespace tidepool
