// FaultInjectionEnv: an Env for tests that wraps a real one and can lose power, fail fsync,
// write short, run out of space and fail reads (LevelDB's fault_injection_test, grown up).
//
// It remembers, per file, how much of it was made durable by Sync() and whether its directory
// entry was made durable by SyncDir(). PowerLoss() then rewrites the real files to what a disk
// would hold after a crash. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>

#include "storage/env.h"

namespace tidepool::storage {

class FaultInjectionEnv final : public Env {
 public:
  explicit FaultInjectionEnv(Env* base) : base_(base) {}

  enum class PowerLossMode {
    kDropUnsynced,      // every file is cut back to its last synced size
    kKeepRandomPrefix,  // a random prefix of the unsynced bytes survives
    kGarbleUnsynced,    // unsynced bytes survive with random 512-byte sectors zeroed
  };

  // Simulates a power failure: applies `mode` to every file written through this Env (to the
  // bytes past its last synced size, and to data written since over synced zeros), deletes
  // files whose creation was never made durable by SyncDir, then clears all fault settings.
  // REQUIRES: no file of this Env is being written concurrently.
  Status PowerLoss(PowerLossMode mode, uint64_t seed = 0);

  // After `n` more mutating operations (append, sync, truncate, rename, remove, sync dir,
  // create) every further one fails, as if the machine had stopped. -1 disables.
  void CrashAfterOps(int64_t n) { ops_left_.store(n); }
  bool crashed() const { return ops_left_.load() == 0; }
  uint64_t mutating_ops() const { return ops_done_.load(); }

  void FailSyncs(bool fail) { fail_syncs_.store(fail); }
  // The next Append writes only `bytes` of its data, then fails with EIO.
  void ShortWriteOnce(size_t bytes) {
    std::lock_guard lock(mu_);
    short_write_ = bytes;
  }
  // Appends past this many more bytes (in total) fail with ENOSPC after writing what fits.
  void SetSpaceLimit(int64_t bytes) { space_left_.store(bytes); }
  // Reads of files whose path contains `needle` fail with EIO ("" stops it).
  void FailReads(std::string needle) {
    std::lock_guard lock(mu_);
    fail_reads_ = std::move(needle);
  }
  // Fixes NowMicros() at `micros` (0 returns to the base clock).
  void SetTime(int64_t micros) { fixed_time_.store(micros); }
  void AdvanceTime(int64_t micros) { fixed_time_.fetch_add(micros); }

  // Env
  Result<std::unique_ptr<WritableFile>> OpenAppendable(const std::string& path) override;
  Result<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string& path) override;
  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    return base_->ListDir(dir);
  }
  Status CreateDirs(const std::string& dir) override;
  Status RemoveFile(const std::string& path) override;
  Status RemoveDirRecursive(const std::string& dir) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status SyncDir(const std::string& dir) override;
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  Result<uint64_t> FileSize(const std::string& path) override { return base_->FileSize(path); }
  int64_t NowMicros() override;

 private:
  friend class FaultWritableFile;
  friend class FaultRandomAccessFile;
  struct FileState {
    uint64_t synced_size = 0;  // the file's size at the last Sync, reserved zeros included
    // End of the data at the last Sync and now. Bytes in [synced_data, min(data, synced_size))
    // were written over synced zeros (WritableFile::Reserve) and are not durable yet.
    uint64_t synced_data = 0;
    uint64_t data = 0;
    bool entry_durable = false;  // its directory entry survived a SyncDir
  };

  // Counts one mutating operation; non-ok when the simulated machine has stopped.
  Status BeginOp(const std::string& what);
  Status OnAppend(const std::string& path, size_t n, size_t* allowed);
  void OnAppended(const std::string& path, uint64_t data_end);
  Status OnSync(const std::string& path, uint64_t size, uint64_t data_end);
  void OnTruncate(const std::string& path, uint64_t size);
  bool ReadFails(const std::string& path);

  Env* const base_;
  std::mutex mu_;
  std::map<std::string, FileState> files_;
  std::set<std::string> dirs_created_;
  std::string fail_reads_;
  size_t short_write_ = SIZE_MAX;
  std::atomic<int64_t> ops_left_{-1};
  std::atomic<uint64_t> ops_done_{0};
  std::atomic<bool> fail_syncs_{false};
  std::atomic<int64_t> space_left_{INT64_MAX};
  std::atomic<int64_t> fixed_time_{0};
};

}  // namespace tidepool::storage
