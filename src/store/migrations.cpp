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

constexpr std::array<Migration, 1> kMigrations = {
    Migration{1, "conversations and messages", kV1Sqlite, kV1Postgresql},
};

static_assert(kMigrations.back().version == kSchemaVersion,
              "kSchemaVersion (store.h) is the last migration's version");

}  // namespace

std::span<const Migration> Migrations() {
  return kMigrations;
}

}  // namespace tidepool::store
