// CountingEnv: an Env for benchmarks. It forwards every call to a base Env and counts what the
// storage engine asks of the disk: fdatasyncs of files (WritableFile::Sync), fsyncs of
// directories, writes, bytes, and the time spent inside write and fdatasync.
//
// It also keeps a durability watermark: the bytes of RECORD frames in segment files (*.log) that
// a completed Sync() of their file covers, so a benchmark can check that no acknowledgement gets
// ahead of an fdatasync. It relies on the Log writing a segment header as the first Append to
// an empty segment and each group (GROUP frame, then RECORD frames) with one Append
// (docs/storage-format.md).
//
// Thread-safety: like any Env, safe from many threads; its files follow the WritableFile
// contract (one thread at a time). Lifetime: must outlive every file it opened.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "storage/env.h"

namespace tidepool::bench {

struct IoCounts {
  uint64_t file_syncs = 0;  // WritableFile::Sync calls (fdatasync)
  uint64_t dir_syncs = 0;   // Env::SyncDir calls (fsync of a directory)
  uint64_t writes = 0;      // WritableFile::Append calls
  uint64_t bytes_written = 0;
  uint64_t write_nanos = 0;  // time spent inside WritableFile::Append
  uint64_t sync_nanos = 0;   // time spent inside WritableFile::Sync
  // Time from the end of a Sync to the start of the next Append (of any file): what the writer
  // did between two commits (completing appenders, building the next group, waiting for one).
  uint64_t gap_nanos = 0;
  uint64_t gaps = 0;

  // The counts between an earlier snapshot and this one.
  IoCounts operator-(const IoCounts& earlier) const;
  IoCounts& operator+=(const IoCounts& other);
};

class CountingEnv final : public storage::Env {
 public:
  explicit CountingEnv(storage::Env* base) : base_(base) {}

  IoCounts counts() const;
  // Bytes of RECORD frames in segment files whose file has been synced since they were
  // written. Failed writes and truncations are not subtracted: the benchmark stops at the first
  // error.
  uint64_t durable_record_frame_bytes() const {
    return durable_record_frame_bytes_.load(std::memory_order_acquire);
  }

  // Env
  Result<std::unique_ptr<storage::WritableFile>> OpenAppendable(const std::string& path) override;
  Result<std::unique_ptr<storage::RandomAccessFile>> OpenRandomAccess(
      const std::string& path) override {
    return base_->OpenRandomAccess(path);
  }
  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    return base_->ListDir(dir);
  }
  Status CreateDirs(const std::string& dir) override { return base_->CreateDirs(dir); }
  Status RemoveFile(const std::string& path) override { return base_->RemoveFile(path); }
  Status RemoveDirRecursive(const std::string& dir) override {
    return base_->RemoveDirRecursive(dir);
  }
  Status Rename(const std::string& from, const std::string& to) override {
    return base_->Rename(from, to);
  }
  Status SyncDir(const std::string& dir) override;
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  Result<uint64_t> FileSize(const std::string& path) override { return base_->FileSize(path); }
  int64_t NowMicros() override { return base_->NowMicros(); }

 private:
  friend class CountingWritableFile;

  storage::Env* const base_;
  std::atomic<uint64_t> file_syncs_{0};
  std::atomic<uint64_t> dir_syncs_{0};
  std::atomic<uint64_t> writes_{0};
  std::atomic<uint64_t> bytes_written_{0};
  std::atomic<uint64_t> write_nanos_{0};
  std::atomic<uint64_t> sync_nanos_{0};
  std::atomic<uint64_t> durable_record_frame_bytes_{0};
  std::atomic<uint64_t> gap_nanos_{0};
  std::atomic<uint64_t> gaps_{0};
  std::atomic<int64_t> last_sync_end_nanos_{0};  // steady clock; 0: no Sync since the last Append
};

}  // namespace tidepool::bench
