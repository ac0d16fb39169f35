#include "pool/log_ring.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace tidepool::pool {
namespace {

std::string UtcTimestamp() {
  auto now = std::chrono::system_clock::now();
  std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &utc);
  char with_millis[48];
  std::snprintf(with_millis, sizeof(with_millis), "%s.%03dZ", text, static_cast<int>(millis));
  return with_millis;
}

}  // namespace

void LineSplitter::Feed(std::string_view bytes, const Emit& emit) {
  while (!bytes.empty()) {
    auto newline = bytes.find('\n');
    if (newline == std::string_view::npos) {
      partial_.append(bytes);
      bytes = {};
    } else {
      partial_.append(bytes.substr(0, newline));
      bytes.remove_prefix(newline + 1);
      while (partial_.size() > kMaxLogLineBytes) {
        emit(std::string_view(partial_).substr(0, kMaxLogLineBytes));
        partial_.erase(0, kMaxLogLineBytes);
      }
      emit(partial_);
      partial_.clear();
      continue;
    }
    while (partial_.size() > kMaxLogLineBytes) {
      emit(std::string_view(partial_).substr(0, kMaxLogLineBytes));
      partial_.erase(0, kMaxLogLineBytes);
    }
  }
}

void LineSplitter::Flush(const Emit& emit) {
  if (partial_.empty()) return;
  emit(partial_);
  partial_.clear();
}

PoolLog::PoolLog(PoolLogOptions options) : options_(std::move(options)) {}

void PoolLog::SetFile(const std::string& path) {
  std::lock_guard lock(mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  file_failed_ = false;
  file_path_ = path;
  OpenFile();
}

PoolLog::~PoolLog() {
  if (fd_ >= 0) ::close(fd_);
}

void PoolLog::OpenFile() {
  fd_ = ::open(file_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    file_failed_ = true;
    std::fprintf(stderr, "tidepool: cannot open log file %s: %s; logging to it is off\n",
                 file_path_.c_str(), std::strerror(errno));
    return;
  }
  struct stat info {};
  file_bytes_ = ::fstat(fd_, &info) == 0 ? info.st_size : 0;
}

void PoolLog::Rotate() {
  ::close(fd_);
  fd_ = -1;
  const std::string& base = file_path_;
  if (options_.files_kept <= 0) {
    ::unlink(base.c_str());
  } else {
    // PATH.N-1 -> PATH.N, ..., PATH -> PATH.1; the oldest is overwritten.
    for (int index = options_.files_kept - 1; index >= 1; --index) {
      std::string from = base + "." + std::to_string(index);
      std::string to = base + "." + std::to_string(index + 1);
      ::rename(from.c_str(), to.c_str());
    }
    ::rename(base.c_str(), (base + ".1").c_str());
  }
  OpenFile();
}

void PoolLog::WriteToFile(const std::string& line) {
  if (fd_ < 0 || file_failed_) return;
  std::string record = UtcTimestamp() + " " + line + "\n";
  if (file_bytes_ > 0 &&
      file_bytes_ + static_cast<int64_t>(record.size()) > options_.file_max_bytes) {
    Rotate();
    if (fd_ < 0) return;
  }
  ssize_t written = ::write(fd_, record.data(), record.size());
  if (written < 0) {
    file_failed_ = true;
    std::fprintf(stderr, "tidepool: cannot write log file %s: %s; logging to it is off\n",
                 file_path_.c_str(), std::strerror(errno));
    return;
  }
  file_bytes_ += written;
}

void PoolLog::Append(std::string line) {
  std::lock_guard lock(mu_);
  WriteToFile(line);
  if (options_.sink) options_.sink(line);
  for (auto& [id, follower] : followers_) follower(line);
  if (options_.ring_lines == 0) return;
  if (ring_.size() == options_.ring_lines) ring_.pop_front();
  ring_.push_back(std::move(line));
}

std::vector<std::string> PoolLog::Tail(size_t max_lines) const {
  std::lock_guard lock(mu_);
  size_t count = std::min(max_lines, ring_.size());
  return std::vector<std::string>(ring_.end() - static_cast<std::ptrdiff_t>(count), ring_.end());
}

uint64_t PoolLog::Follow(std::function<void(const std::string&)> follower) {
  std::lock_guard lock(mu_);
  uint64_t id = next_follower_id_++;
  followers_.emplace(id, std::move(follower));
  return id;
}

void PoolLog::Unfollow(uint64_t id) {
  std::lock_guard lock(mu_);
  followers_.erase(id);
}

}  // namespace tidepool::pool
