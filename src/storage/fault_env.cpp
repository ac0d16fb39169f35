#include "storage/fault_env.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace tidepool::storage {

class FaultWritableFile final : public WritableFile {
 public:
  FaultWritableFile(FaultInjectionEnv* env, std::string path, std::unique_ptr<WritableFile> base)
      : env_(env), path_(std::move(path)), base_(std::move(base)) {}

  Status Append(std::span<const std::byte> data) override {
    TP_RETURN_IF_ERROR(env_->BeginOp("append " + path_));
    size_t allowed = data.size();
    Status fault = env_->OnAppend(path_, data.size(), &allowed);
    Status s = allowed > 0 ? base_->Append(data.first(allowed)) : Status::Ok();
    env_->OnAppended(path_, base_->Size());
    TP_RETURN_IF_ERROR(s);
    return fault;
  }
  Status Sync() override {
    TP_RETURN_IF_ERROR(env_->BeginOp("fdatasync " + path_));
    if (env_->fail_syncs_.load())
      return Status::IOError("fdatasync " + path_ + ": Input/output error (injected)");
    TP_RETURN_IF_ERROR(base_->Sync());
    return env_->OnSync(path_, base_->Size() + base_->Reserved(), base_->Size());
  }
  Status Truncate(uint64_t size) override {
    TP_RETURN_IF_ERROR(env_->BeginOp("ftruncate " + path_));
    TP_RETURN_IF_ERROR(base_->Truncate(size));
    env_->OnTruncate(path_, size);
    return Status::Ok();
  }
  Status Reserve(uint64_t bytes) override {
    // Zeros count as unsynced bytes until a Sync: a power loss keeps any prefix of them.
    TP_RETURN_IF_ERROR(env_->BeginOp("reserve " + path_));
    return base_->Reserve(bytes);
  }
  uint64_t Reserved() const override { return base_->Reserved(); }
  Status Close() override { return base_->Close(); }
  uint64_t Size() const override { return base_->Size(); }

 private:
  FaultInjectionEnv* env_;
  std::string path_;
  std::unique_ptr<WritableFile> base_;
};

class FaultRandomAccessFile final : public RandomAccessFile {
 public:
  FaultRandomAccessFile(FaultInjectionEnv* env, std::string path,
                        std::unique_ptr<RandomAccessFile> base)
      : env_(env), path_(std::move(path)), base_(std::move(base)) {}
  Result<size_t> Read(uint64_t offset, std::span<std::byte> out) const override {
    if (env_->ReadFails(path_))
      return Status::IOError("pread " + path_ + ": Input/output error (injected)");
    return base_->Read(offset, out);
  }

 private:
  FaultInjectionEnv* env_;
  std::string path_;
  std::unique_ptr<RandomAccessFile> base_;
};

Status FaultInjectionEnv::BeginOp(const std::string& what) {
  int64_t left = ops_left_.load();
  while (left > 0 && !ops_left_.compare_exchange_weak(left, left - 1)) {
  }
  if (left == 0) return Status::IOError(what + ": the simulated machine has stopped");
  ops_done_.fetch_add(1);
  return Status::Ok();
}

Status FaultInjectionEnv::OnAppend(const std::string& path, size_t n, size_t* allowed) {
  std::lock_guard lock(mu_);
  (void)path;
  if (short_write_ != SIZE_MAX) {
    *allowed = std::min(n, short_write_);
    short_write_ = SIZE_MAX;
    return Status::IOError("write " + path + ": Input/output error (injected short write)");
  }
  int64_t left = space_left_.load();
  if (static_cast<int64_t>(n) > left) {
    *allowed = left > 0 ? static_cast<size_t>(left) : 0;
    space_left_.store(0);
    return Status::ResourceExhausted("write " + path + ": No space left on device (injected)");
  }
  if (left != INT64_MAX) space_left_.fetch_sub(static_cast<int64_t>(n));
  return Status::Ok();
}

void FaultInjectionEnv::OnAppended(const std::string& path, uint64_t data_end) {
  std::lock_guard lock(mu_);
  files_[path].data = data_end;
}

Status FaultInjectionEnv::OnSync(const std::string& path, uint64_t size, uint64_t data_end) {
  std::lock_guard lock(mu_);
  auto& f = files_[path];
  f.synced_size = size;
  f.synced_data = f.data = data_end;
  return Status::Ok();
}

void FaultInjectionEnv::OnTruncate(const std::string& path, uint64_t size) {
  std::lock_guard lock(mu_);
  auto& f = files_[path];
  // A truncate below the synced size is not durable until the next sync either; assume the
  // worst case for a reader (what was synced before may come back), but never beyond the file.
  if (f.synced_size > size) f.synced_size = size;
  f.data = std::min(f.data, size);
  f.synced_data = std::min(f.synced_data, size);
}

bool FaultInjectionEnv::ReadFails(const std::string& path) {
  std::lock_guard lock(mu_);
  return !fail_reads_.empty() && path.find(fail_reads_) != std::string::npos;
}

Result<std::unique_ptr<WritableFile>> FaultInjectionEnv::OpenAppendable(const std::string& path) {
  const bool existed = base_->FileExists(path);
  if (!existed) TP_RETURN_IF_ERROR(BeginOp("create " + path));
  TP_ASSIGN_OR_RETURN(auto base, base_->OpenAppendable(path));
  {
    std::lock_guard lock(mu_);
    auto [it, inserted] = files_.try_emplace(path);
    if (inserted) {
      // A file that existed before we saw it is durable as it is.
      it->second.entry_durable = existed;
      it->second.synced_size = existed ? base->Size() : 0;
      it->second.synced_data = it->second.data = it->second.synced_size;
    }
  }
  return std::unique_ptr<WritableFile>(
      std::make_unique<FaultWritableFile>(this, path, std::move(base)));
}

Result<std::unique_ptr<RandomAccessFile>> FaultInjectionEnv::OpenRandomAccess(
    const std::string& path) {
  if (ReadFails(path)) return Status::IOError("open " + path + ": Input/output error (injected)");
  TP_ASSIGN_OR_RETURN(auto base, base_->OpenRandomAccess(path));
  return std::unique_ptr<RandomAccessFile>(
      std::make_unique<FaultRandomAccessFile>(this, path, std::move(base)));
}

Status FaultInjectionEnv::CreateDirs(const std::string& dir) {
  TP_RETURN_IF_ERROR(BeginOp("mkdir " + dir));
  return base_->CreateDirs(dir);
}

Status FaultInjectionEnv::RemoveFile(const std::string& path) {
  TP_RETURN_IF_ERROR(BeginOp("unlink " + path));
  TP_RETURN_IF_ERROR(base_->RemoveFile(path));
  std::lock_guard lock(mu_);
  files_.erase(path);
  return Status::Ok();
}

Status FaultInjectionEnv::RemoveDirRecursive(const std::string& dir) {
  TP_RETURN_IF_ERROR(BeginOp("remove " + dir));
  TP_RETURN_IF_ERROR(base_->RemoveDirRecursive(dir));
  std::lock_guard lock(mu_);
  for (auto it = files_.begin(); it != files_.end();) {
    it = it->first.starts_with(dir + "/") ? files_.erase(it) : std::next(it);
  }
  return Status::Ok();
}

Status FaultInjectionEnv::Rename(const std::string& from, const std::string& to) {
  TP_RETURN_IF_ERROR(BeginOp("rename " + from));
  TP_RETURN_IF_ERROR(base_->Rename(from, to));
  std::lock_guard lock(mu_);
  auto it = files_.find(from);
  if (it != files_.end()) {
    FileState st = it->second;
    files_.erase(it);
    st.entry_durable = false;  // the new name is durable only after SyncDir
    files_[to] = st;
  }
  return Status::Ok();
}

Status FaultInjectionEnv::SyncDir(const std::string& dir) {
  TP_RETURN_IF_ERROR(BeginOp("fsync dir " + dir));
  if (fail_syncs_.load())
    return Status::IOError("fsync dir " + dir + ": Input/output error (injected)");
  TP_RETURN_IF_ERROR(base_->SyncDir(dir));
  std::lock_guard lock(mu_);
  for (auto& [path, st] : files_) {
    if (DirName(path) == dir) st.entry_durable = true;
  }
  return Status::Ok();
}

int64_t FaultInjectionEnv::NowMicros() {
  int64_t t = fixed_time_.load();
  return t != 0 ? t : base_->NowMicros();
}

Status FaultInjectionEnv::PowerLoss(PowerLossMode mode, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::lock_guard lock(mu_);
  namespace fs = std::filesystem;
  for (auto it = files_.begin(); it != files_.end();) {
    const std::string& path = it->first;
    const FileState& st = it->second;
    std::error_code ec;
    if (!fs::exists(path, ec)) {
      it = files_.erase(it);
      continue;
    }
    if (!st.entry_durable) {
      fs::remove(path, ec);
      it = files_.erase(it);
      continue;
    }
    const uint64_t size = fs::file_size(path, ec);
    // Data written over synced zeros since the last sync: the zeros may come back.
    const uint64_t over_end = std::min({st.data, st.synced_size, size});
    if (over_end > st.synced_data) {
      const uint64_t unsynced = over_end - st.synced_data;
      uint64_t keep = 0;  // bytes of it that survive whole; then sectors are garbled
      switch (mode) {
        case PowerLossMode::kDropUnsynced:
          break;
        case PowerLossMode::kKeepRandomPrefix:
          keep = rng() % (unsynced + 1);
          break;
        case PowerLossMode::kGarbleUnsynced:
          keep = unsynced;
          break;
      }
      std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
      const std::string zeros(512, '\0');
      for (uint64_t off = st.synced_data; off < over_end; off += 512) {
        const uint64_t n = std::min<uint64_t>(512, over_end - off);
        const bool lost = off + n > st.synced_data + keep ||
                          (mode == PowerLossMode::kGarbleUnsynced && rng() % 2 == 0);
        if (!lost) continue;
        // In kKeepRandomPrefix only the part past the surviving prefix goes.
        const uint64_t from =
            mode == PowerLossMode::kKeepRandomPrefix ? std::max(off, st.synced_data + keep) : off;
        f.seekp(static_cast<std::streamoff>(from));
        f.write(zeros.data(), static_cast<std::streamsize>(off + n - from));
      }
      if (!f) return Status::IOError("power loss on " + path + ": cannot rewrite zeros");
    }
    if (size > st.synced_size) {
      const uint64_t unsynced = size - st.synced_size;
      switch (mode) {
        case PowerLossMode::kDropUnsynced:
          fs::resize_file(path, st.synced_size, ec);
          break;
        case PowerLossMode::kKeepRandomPrefix:
          fs::resize_file(path, st.synced_size + rng() % (unsynced + 1), ec);
          break;
        case PowerLossMode::kGarbleUnsynced: {
          std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
          const std::string zeros(512, '\0');
          for (uint64_t off = st.synced_size; off < size; off += 512) {
            if (rng() % 2 == 0) {
              f.seekp(static_cast<std::streamoff>(off));
              f.write(zeros.data(),
                      static_cast<std::streamsize>(std::min<uint64_t>(512, size - off)));
            }
          }
          break;
        }
      }
      if (ec) return Status::IOError("power loss on " + path + ": " + ec.message());
    }
    it->second.synced_size = fs::file_size(path, ec);
    it->second.synced_data = it->second.data = it->second.synced_size;
    ++it;
  }
  ops_left_.store(-1);
  fail_syncs_.store(false);
  short_write_ = SIZE_MAX;
  space_left_.store(INT64_MAX);
  fail_reads_.clear();
  return Status::Ok();
}

}  // namespace tidepool::storage
