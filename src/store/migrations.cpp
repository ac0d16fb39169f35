#include "store/migrations.h"

#include <array>

#include "store/store.h"

namespace tidepool::store {
namespace {

constexpr std::array<std::string_view, 5> kV1Sqlite = {
    "CREATE TABLE conversations ("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  app TEXT NOT NULL,"
    "  created_micros INTEGER NOT NULL,"
    "  next_seq INTEGER NOT NULL DEFAULT 1)",
    "CREATE TABLE messages ("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  conversation_id TEXT NOT NULL REFERENCES conversations (id),"
    "  seq INTEGER NOT NULL,"
    "  role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'error')),"
    "  text TEXT NOT NULL,"
    "  request_id TEXT NOT NULL,"
    "  cards_json TEXT NOT NULL DEFAULT '',"
    "  created_micros INTEGER NOT NULL,"
    "  published INTEGER NOT NULL DEFAULT 0 CHECK (published IN (0, 1)),"
    "  idempotency_key TEXT,"
    "  UNIQUE (conversation_id, seq))",
    "CREATE UNIQUE INDEX messages_idempotency_key ON messages (conversation_id, idempotency_key)"
    "  WHERE idempotency_key IS NOT NULL",
    "CREATE UNIQUE INDEX messages_one_reply_per_request ON messages (request_id)"
    "  WHERE role <> 'user'",
    "CREATE INDEX messages_unpublished ON messages (created_micros)"
    "  WHERE role = 'user' AND published = 0",
};

constexpr std::array<std::string_view, 5> kV1Postgresql = {
    "CREATE TABLE conversations ("
    "  id TEXT PRIMARY KEY,"
    "  app TEXT NOT NULL,"
    "  created_micros BIGINT NOT NULL,"
    "  next_seq BIGINT NOT NULL DEFAULT 1)",
    "CREATE TABLE messages ("
    "  id TEXT PRIMARY KEY,"
    "  conversation_id TEXT NOT NULL REFERENCES conversations (id),"
    "  seq BIGINT NOT NULL,"
    "  role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'error')),"
    "  text TEXT NOT NULL,"
    "  request_id TEXT NOT NULL,"
    "  cards_json TEXT NOT NULL DEFAULT '',"
    "  created_micros BIGINT NOT NULL,"
    "  published BOOLEAN NOT NULL DEFAULT FALSE,"
    "  idempotency_key TEXT,"
    "  CONSTRAINT messages_conversation_seq UNIQUE (conversation_id, seq))",
    "CREATE UNIQUE INDEX messages_idempotency_key ON messages (conversation_id, idempotency_key)"
    "  WHERE idempotency_key IS NOT NULL",
    "CREATE UNIQUE INDEX messages_one_reply_per_request ON messages (request_id)"
    "  WHERE role <> 'user'",
    "CREATE INDEX messages_unpublished ON messages (created_micros)"
    "  WHERE role = 'user' AND NOT published",
};

// Version 2 (SQLite only) lays the tables out for what a POST does, which writes a few pages
// at random per message and fsyncs them: messages are clustered by (conversation_id, seq), so
// a conversation's history is a few neighbouring pages instead of a page per message; the
// unpublished user messages move to their own small table, so that marking one published
// writes near the end of that table instead of the message's page; and the next seq is the
// conversation's largest seq + 1, read where the message goes, instead of a counter in the
// conversation's row that every message would write.
constexpr std::array<std::string_view, 13> kV2Sqlite = {
    "CREATE TABLE conversations_v2 ("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  app TEXT NOT NULL,"
    "  created_micros INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO conversations_v2 (id, app, created_micros)"
    "  SELECT id, app, created_micros FROM conversations",
    "CREATE TABLE messages_v2 ("
    "  conversation_id TEXT NOT NULL REFERENCES conversations_v2 (id),"
    "  seq INTEGER NOT NULL,"
    "  id TEXT NOT NULL UNIQUE,"
    "  role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'error')),"
    "  text TEXT NOT NULL,"
    "  request_id TEXT NOT NULL,"
    "  cards_json TEXT NOT NULL DEFAULT '',"
    "  created_micros INTEGER NOT NULL,"
    "  idempotency_key TEXT,"
    "  PRIMARY KEY (conversation_id, seq)) WITHOUT ROWID",
    "INSERT INTO messages_v2 (conversation_id, seq, id, role, text, request_id, cards_json,"
    "  created_micros, idempotency_key)"
    "  SELECT conversation_id, seq, id, role, text, request_id, cards_json, created_micros,"
    "  idempotency_key FROM messages",
    "CREATE TABLE unpublished ("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  created_micros INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO unpublished (id, created_micros)"
    "  SELECT id, created_micros FROM messages WHERE role = 'user' AND published = 0",
    "DROP TABLE messages",
    "DROP TABLE conversations",
    // Renaming a table renames it in the REFERENCES clauses of the others too.
    "ALTER TABLE conversations_v2 RENAME TO conversations",
    "ALTER TABLE messages_v2 RENAME TO messages",
    "CREATE UNIQUE INDEX messages_idempotency_key ON messages (conversation_id, idempotency_key)"
    "  WHERE idempotency_key IS NOT NULL",
    "CREATE UNIQUE INDEX messages_one_reply_per_request ON messages (request_id)"
    "  WHERE role <> 'user'",
    "CREATE INDEX unpublished_by_time ON unpublished (created_micros, id)",
};

constexpr std::array<Migration, 2> kMigrations = {
    Migration{1, "conversations and messages", kV1Sqlite, kV1Postgresql},
    Migration{2, "sqlite: messages clustered by conversation, unpublished apart", kV2Sqlite, {}},
};

static_assert(kMigrations.back().version == kSchemaVersion,
              "kSchemaVersion (store.h) is the last migration's version");

}  // namespace

std::span<const Migration> Migrations() {
  return kMigrations;
}

}  // namespace tidepool::store
