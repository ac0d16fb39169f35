// The store's schema, as versioned migrations (one list, written once per SQL dialect).
//
// At open, each engine applies the migrations it has not recorded, in version order, each in
// its own transaction together with its row in
//   schema_migrations(version INTEGER PRIMARY KEY, name, applied_at)
// so a migration is either applied and recorded or neither. Opens that race (several web
// instances starting at once) are serialized: SQLite by BEGIN IMMEDIATE (the database's write
// lock), PostgreSQL by a transaction-scoped advisory lock (kMigrationLockKey). A database whose
// recorded version is newer than this build's is refused (FAILED_PRECONDITION), never altered.
//
// Version 1, the tables (both dialects alike; SQLite spells BIGINT and BOOLEAN as INTEGER):
//   conversations(id TEXT PRIMARY KEY, app, created_micros,
//                 next_seq: the seq the next message of the conversation gets)
//   messages(id TEXT PRIMARY KEY, conversation_id REFERENCES conversations, seq, role
//            ('user' | 'assistant' | 'error'), text, request_id, cards_json, created_micros,
//            published, idempotency_key NULL)
//     UNIQUE (conversation_id, seq)                            one order per conversation
//     UNIQUE (conversation_id, idempotency_key) WHERE the key IS NOT NULL
//     UNIQUE (request_id) WHERE role <> 'user'                 one reply per user message
//     INDEX (created_micros) WHERE role = 'user' AND NOT published   for Unpublished
//
// Version 2, SQLite only (PostgreSQL stays at the version 1 tables; the version is recorded):
//   conversations(id TEXT PRIMARY KEY, app, created_micros) WITHOUT ROWID: the next seq is
//                 MAX(seq) + 1 of the conversation's messages
//   messages(conversation_id, seq, id UNIQUE, role, text, request_id, cards_json,
//            created_micros, idempotency_key NULL, PRIMARY KEY (conversation_id, seq))
//            WITHOUT ROWID: a conversation's messages are stored together, in order
//     the same two partial unique indexes as version 1
//   unpublished(id TEXT PRIMARY KEY, created_micros) WITHOUT ROWID: the user messages not
//               marked published (a message is published when it has no row here)
//     INDEX (created_micros, id)                                    for Unpublished
//
// A migration is never edited once released: a change is a new version appended to the list.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace tidepool::store {

struct Migration {
  int version = 0;
  std::string_view name;
  // One statement per element (libpq's PQexecParams runs exactly one).
  std::span<const std::string_view> sqlite;
  std::span<const std::string_view> postgresql;
};

// In version order, 1, 2, ...; the last one's version is kSchemaVersion.
std::span<const Migration> Migrations();

// The PostgreSQL advisory lock key that serializes migrations of one database.
inline constexpr int64_t kMigrationLockKey = 0x7469'6465'706f'6f6c;  // "tidepool"

}  // namespace tidepool::store
