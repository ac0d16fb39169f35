// Ledger: what became of each request, so that a redelivered request never yields a second
// final reply (docs/apps.md, "Exactly one reply").
//
// Before a final (or error) event is published, the worker records it as pending with the
// event itself; once the publish is confirmed it marks it published. A redelivery then finds:
//   published → ack, publish nothing;
//   pending   → publish the stored event again (same event id and text: consumers that store
//               replies by request id keep one), mark it published, ack;
//   nothing   → claim the request, run the pipeline.
// The claim keeps two deliveries of one request (a duplicate publish, a redelivery while the
// first run is still going) from running at once: the second finds it busy and is retried
// later, when it finds the reply. A claim is a lease the running worker renews; one whose
// worker died runs out and the request runs again.
// SqliteLedger is one file shared by every worker process on a machine (WAL, busy timeout).
#pragma once

#include <chrono>
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

enum class ClaimResult {
  kClaimed,  // this owner may run the request (until the lease runs out; renew by claiming again)
  kBusy,     // another owner holds an unexpired claim
  kDone,     // the request has an entry: look it up
};

class Ledger {
 public:
  virtual ~Ledger() = default;
  virtual Result<std::optional<LedgerEntry>> Lookup(const std::string& request_id) = 0;
  virtual Status Put(const std::string& request_id, const LedgerEntry& entry) = 0;
  // Atomically: kDone if the request has an entry, kBusy if another owner's claim is
  // unexpired, else claims (or renews) it for `lease_seconds`.
  virtual Result<ClaimResult> Claim(const std::string& request_id, const std::string& owner,
                                    int lease_seconds) = 0;
  // Gives up a claim of this owner (the run failed and will be retried).
  virtual Status Release(const std::string& request_id, const std::string& owner) = 0;
};

// In memory, for tests and for a single process that need not survive restarts.
class MemoryLedger final : public Ledger {
 public:
  Result<std::optional<LedgerEntry>> Lookup(const std::string& request_id) override;
  Status Put(const std::string& request_id, const LedgerEntry& entry) override;
  Result<ClaimResult> Claim(const std::string& request_id, const std::string& owner,
                            int lease_seconds) override;
  Status Release(const std::string& request_id, const std::string& owner) override;

 private:
  struct Held {
    std::string owner;
    std::chrono::steady_clock::time_point until;
  };
  std::mutex mu_;
  std::unordered_map<std::string, LedgerEntry> entries_;
  std::unordered_map<std::string, Held> claims_;
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
  Result<ClaimResult> Claim(const std::string& request_id, const std::string& owner,
                            int lease_seconds) override;
  Status Release(const std::string& request_id, const std::string& owner) override;

  struct Impl;

 private:
  explicit SqliteLedger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidepool::pipeline
