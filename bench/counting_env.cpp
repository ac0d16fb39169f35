#include "counting_env.h"

#include <chrono>

#include "storage/log_format.h"

namespace tidepool::bench {
namespace {

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

IoCounts IoCounts::operator-(const IoCounts& earlier) const {
  return IoCounts{
      .file_syncs = file_syncs - earlier.file_syncs,
      .dir_syncs = dir_syncs - earlier.dir_syncs,
      .writes = writes - earlier.writes,
      .bytes_written = bytes_written - earlier.bytes_written,
      .write_nanos = write_nanos - earlier.write_nanos,
      .sync_nanos = sync_nanos - earlier.sync_nanos,
      .gap_nanos = gap_nanos - earlier.gap_nanos,
      .gaps = gaps - earlier.gaps,
  };
}

IoCounts& IoCounts::operator+=(const IoCounts& other) {
  file_syncs += other.file_syncs;
  dir_syncs += other.dir_syncs;
  writes += other.writes;
  bytes_written += other.bytes_written;
  write_nanos += other.write_nanos;
  sync_nanos += other.sync_nanos;
  gap_nanos += other.gap_nanos;
  gaps += other.gaps;
  return *this;
}

class CountingWritableFile final : public storage::WritableFile {
 public:
  CountingWritableFile(CountingEnv* env, std::unique_ptr<storage::WritableFile> base,
                       bool is_segment)
      : env_(env), base_(std::move(base)), is_segment_(is_segment) {}

  Status Append(std::span<const std::byte> data) override {
    const int64_t start = NowNanos();
    if (const int64_t sync_end = env_->last_sync_end_nanos_.exchange(0); sync_end != 0) {
      env_->gap_nanos_.fetch_add(static_cast<uint64_t>(start - sync_end),
                                 std::memory_order_relaxed);
      env_->gaps_.fetch_add(1, std::memory_order_relaxed);
    }
    const bool header = base_->Size() == 0;
    Status s = base_->Append(data);
    env_->write_nanos_.fetch_add(static_cast<uint64_t>(NowNanos() - start),
                                 std::memory_order_relaxed);
    env_->writes_.fetch_add(1, std::memory_order_relaxed);
    if (s.ok()) {
      env_->bytes_written_.fetch_add(data.size(), std::memory_order_relaxed);
      const size_t framing = header ? storage::kSegmentHeaderFrameSize : storage::kGroupFrameSize;
      if (is_segment_ && data.size() > framing) unsynced_record_bytes_ += data.size() - framing;
    }
    return s;
  }

  Status Sync() override {
    const int64_t start = NowNanos();
    Status s = base_->Sync();
    const int64_t end = NowNanos();
    env_->sync_nanos_.fetch_add(static_cast<uint64_t>(end - start), std::memory_order_relaxed);
    env_->last_sync_end_nanos_.store(end, std::memory_order_relaxed);
    env_->file_syncs_.fetch_add(1, std::memory_order_relaxed);
    if (s.ok()) {
      env_->durable_record_frame_bytes_.fetch_add(unsynced_record_bytes_,
                                                  std::memory_order_release);
      unsynced_record_bytes_ = 0;
    }
    return s;
  }

  Status Truncate(uint64_t size) override { return base_->Truncate(size); }
  // Zeros written ahead count as write time, not as bytes written: they hold no records.
  Status Reserve(uint64_t bytes) override {
    const int64_t start = NowNanos();
    Status s = base_->Reserve(bytes);
    env_->write_nanos_.fetch_add(static_cast<uint64_t>(NowNanos() - start),
                                 std::memory_order_relaxed);
    return s;
  }
  uint64_t Reserved() const override { return base_->Reserved(); }
  Status Close() override { return base_->Close(); }
  uint64_t Size() const override { return base_->Size(); }

 private:
  CountingEnv* const env_;
  const std::unique_ptr<storage::WritableFile> base_;
  const bool is_segment_;
  // RECORD frame bytes written to this segment since its last successful Sync.
  uint64_t unsynced_record_bytes_ = 0;
};

Result<std::unique_ptr<storage::WritableFile>> CountingEnv::OpenAppendable(
    const std::string& path) {
  TP_ASSIGN_OR_RETURN(auto file, base_->OpenAppendable(path));
  const bool is_segment = path.ends_with(storage::kSegmentSuffix);
  return std::unique_ptr<storage::WritableFile>(
      std::make_unique<CountingWritableFile>(this, std::move(file), is_segment));
}

Status CountingEnv::SyncDir(const std::string& dir) {
  dir_syncs_.fetch_add(1, std::memory_order_relaxed);
  return base_->SyncDir(dir);
}

IoCounts CountingEnv::counts() const {
  return IoCounts{
      .file_syncs = file_syncs_.load(),
      .dir_syncs = dir_syncs_.load(),
      .writes = writes_.load(),
      .bytes_written = bytes_written_.load(),
      .write_nanos = write_nanos_.load(),
      .sync_nanos = sync_nanos_.load(),
      .gap_nanos = gap_nanos_.load(),
      .gaps = gaps_.load(),
  };
}

}  // namespace tidepool::bench
