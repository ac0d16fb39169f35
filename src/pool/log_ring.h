// The log of one pool: a bounded ring of recent lines for `tidepool pools logs`, a size-rotated
// file, and live followers.
//
// Thread-safety: all methods are thread-safe. Followers and the sink are called with the log's
// lock held, on the thread that appends: they must return quickly and must not call back into
// this log (Follow/Unfollow) or into its owner.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace tidepool::pool {

// Longer lines are split into pieces of this size, so one runaway writer cannot grow memory.
inline constexpr size_t kMaxLogLineBytes = 16 * 1024;

// Splits a byte stream into lines (without the '\n'). Not thread-safe.
class LineSplitter {
 public:
  using Emit = std::function<void(std::string_view line)>;
  void Feed(std::string_view bytes, const Emit& emit);
  // Emits the unterminated rest, if any (the stream ended).
  void Flush(const Emit& emit);

 private:
  std::string partial_;
};

struct PoolLogOptions {
  size_t ring_lines = 10'000;
  int64_t file_max_bytes = 10 * 1024 * 1024;
  // Rotated files kept beside the live one: PATH.1 (newest) .. PATH.N.
  int files_kept = 5;
  std::function<void(const std::string& line)> sink{};
};

class PoolLog {
 public:
  explicit PoolLog(PoolLogOptions options);
  ~PoolLog();
  PoolLog(const PoolLog&) = delete;
  PoolLog& operator=(const PoolLog&) = delete;

  // From now on also appends to `path` (prefixed with a UTC timestamp), rotated by size.
  void SetFile(const std::string& path);
  // Appends one line (no '\n'): to the ring, the file (prefixed with a UTC timestamp), the sink
  // and every follower. File errors are reported once on stderr and the file is skipped.
  void Append(std::string line);
  // The newest `max_lines` lines, oldest first.
  std::vector<std::string> Tail(size_t max_lines) const;
  // Calls `follower` with every line appended from now on, until Unfollow(id).
  uint64_t Follow(std::function<void(const std::string&)> follower);
  void Unfollow(uint64_t id);

 private:
  void WriteToFile(const std::string& line);
  void Rotate();
  void OpenFile();

  std::string file_path_;

  const PoolLogOptions options_;
  mutable std::mutex mu_;
  std::deque<std::string> ring_;
  int fd_ = -1;
  int64_t file_bytes_ = 0;
  bool file_failed_ = false;
  uint64_t next_follower_id_ = 1;
  std::map<uint64_t, std::function<void(const std::string&)>> followers_;
};

}  // namespace tidepool::pool
