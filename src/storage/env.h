// Env: every file operation of the storage engine goes through this interface, so tests can
// swap in FaultInjectionEnv (power loss, failed fsync, short writes, ENOSPC, EIO).
//
// Thread-safety: an Env is safe to use from many threads. A WritableFile is used by one
// thread at a time (the group-commit leader); a RandomAccessFile by any number at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace tidepool::storage {

class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `data` at the end of the file, or fails. On failure a prefix of `data` may
  // have been written; the file size says how much.
  virtual Status Append(std::span<const std::byte> data) = 0;
  // Makes everything appended so far durable (fdatasync).
  virtual Status Sync() = 0;
  // Cuts the file to `size` bytes (used to drop a torn tail or a failed write). Reserved
  // zeros go with it.
  virtual Status Truncate(uint64_t size) = 0;
  // Makes at least the `bytes` after the end of the data allocated and zero-filled, so that
  // appends into them change no file size and an fdatasync after them has only data to write,
  // no metadata. Size() does not move; the zeros are in the file, though, until the next
  // Truncate or Close, and survive a crash as a zero tail. Not durable by itself: the next
  // Sync writes them too.
  virtual Status Reserve(uint64_t bytes) = 0;
  // Zero-filled bytes after the data (Reserve).
  virtual uint64_t Reserved() const = 0;
  // Drops reserved zeros (best effort) and closes.
  virtual Status Close() = 0;
  // The end of the data: what was appended, not counting reserved zeros.
  virtual uint64_t Size() const = 0;
};

class RandomAccessFile {
 public:
  virtual ~RandomAccessFile() = default;
  // Reads up to out.size() bytes at `offset`; returns how many were read (short at EOF).
  virtual Result<size_t> Read(uint64_t offset, std::span<std::byte> out) const = 0;
};

class Env {
 public:
  virtual ~Env() = default;

  // Opens `path` for appending, creating it if absent; the position is the current end.
  virtual Result<std::unique_ptr<WritableFile>> OpenAppendable(const std::string& path) = 0;
  virtual Result<std::unique_ptr<RandomAccessFile>> OpenRandomAccess(const std::string& path) = 0;

  virtual Result<std::vector<std::string>> ListDir(const std::string& dir) = 0;  // names only
  virtual Status CreateDirs(const std::string& dir) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;
  virtual Status RemoveDirRecursive(const std::string& dir) = 0;
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  // Makes the directory entries of `dir` durable (new, renamed and removed files).
  virtual Status SyncDir(const std::string& dir) = 0;
  virtual bool FileExists(const std::string& path) = 0;
  virtual Result<uint64_t> FileSize(const std::string& path) = 0;

  // Wall-clock time in microseconds since the Unix epoch.
  virtual int64_t NowMicros() = 0;

  // Reads the whole file (small files: indexes, checkpoints).
  Result<std::string> ReadFileToString(const std::string& path);
  // Writes `data` to `path` atomically and durably: temp file, sync, rename, sync dir.
  Status WriteFileAtomic(const std::string& path, std::span<const std::byte> data);
};

// The process-wide POSIX Env. Never null; lives for the whole program.
Env* DefaultEnv();

// Joins a directory and a file name with one '/'.
std::string JoinPath(const std::string& dir, const std::string& name);
// The directory part of a path ("." when there is none).
std::string DirName(const std::string& path);

}  // namespace tidepool::storage
