// Ledger: what became of each request, so that a redelivered request never yields a second
// final reply (docs/apps.md, "Exactly one reply").
//
// Before a final (or error) event is published, the worker records it as pending with the
// event itself; once the publish is confirmed it marks it published. A redelivery then finds:
//   published → ack, publish nothing;
//   pending   → publish the stored event again (same event id and text: consumers that store
//               replies by request id keep one), mark it published, ack;
//   nothing   → run the pipeline.
// SqliteLedger is one file shared by every worker process on a machine (WAL, busy timeout).
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "common/status.h"

namespace tidepool::pipeline {

struct LedgerEntry {
  enum class State { kPending, kPublished };
  State state = State::kPending;
  std::string event;  // the serialized final or error event
};

class Ledger {
 public:
  virtual ~Ledger() = default;
  virtual Result<std::optional<LedgerEntry>> Lookup(const std::string& request_id) = 0;
  virtual Status Put(const std::string& request_id, const LedgerEntry& entry) = 0;
};

// In memory, for tests and for a single process that need not survive restarts.
class MemoryLedger final : public Ledger {
 public:
  Result<std::optional<LedgerEntry>> Lookup(const std::string& request_id) override;
  Status Put(const std::string& request_id, const LedgerEntry& entry) override;

 private:
  std::mutex mu_;
  std::unordered_map<std::string, LedgerEntry> entries_;
};

class SqliteLedger final : public Ledger {
 public:
  // Creates the file (and its directory) when missing. Entries older than `keep_seconds` are
  // pruned now and then (default 7 days: the longest a request can wait in a default topic).
  static Result<std::unique_ptr<SqliteLedger>> Open(const std::string& path,
                                                    int64_t keep_seconds = 7 * 24 * 3600);
  ~SqliteLedger() override;
  Result<std::optional<LedgerEntry>> Lookup(const std::string& request_id) override;
  Status Put(const std::string& request_id, const LedgerEntry& entry) override;

  struct Impl;

 private:
  explicit SqliteLedger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::pipeline
