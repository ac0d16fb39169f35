// echo_worker: the example worker the pool tests run (docs/workers.md).
//
// For each message: waits `work_ms` (the message attribute, else env ECHO_WORK_MS, else 0) on
// an asio timer; fails when the attribute "fail" is "true" (the message is nacked and
// retried); otherwise appends "<message_id> <data>\n" to the file named by env ECHO_RECORD
// (when set) and acks. Tests count processed messages and duplicates from that file: each line
// goes out in one write() on an O_APPEND descriptor, so lines of concurrent instances never
// interleave.
#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "worker/runtime.h"

namespace {

namespace asio = boost::asio;
using tidepool::Status;

// Parses a non-negative number of milliseconds; `fallback` when absent or malformed.
long ParseMillis(const std::string& text, long fallback) {
  if (text.empty()) return fallback;
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (*end != '\0' || value < 0) return fallback;
  return value;
}

}  // namespace

int main() {
  const char* default_work = std::getenv("ECHO_WORK_MS");
  const long default_work_ms = ParseMillis(default_work == nullptr ? "" : default_work, 0);

  int record_fd = -1;
  if (const char* record = std::getenv("ECHO_RECORD"); record != nullptr && *record != '\0') {
    record_fd = ::open(record, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (record_fd < 0) {
      std::fprintf(stderr, "echo_worker: cannot open ECHO_RECORD %s: %s\n", record,
                   std::strerror(errno));
      return 2;
    }
  }

  auto handler = [default_work_ms,
                  record_fd](const tidepool::queue::Delivery& d) -> asio::awaitable<Status> {
    const auto& attributes = d.message.attributes;
    long work_ms = default_work_ms;
    if (auto it = attributes.find("work_ms"); it != attributes.end()) {
      work_ms = ParseMillis(it->second, default_work_ms);
    }
    if (work_ms > 0) {
      asio::steady_timer timer(co_await asio::this_coro::executor);
      timer.expires_after(std::chrono::milliseconds(work_ms));
      auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      // Cancelled by a drain that ran out of time: the runtime has nacked the message already.
      if (ec) co_return Status::Unavailable("cancelled");
    }
    if (auto it = attributes.find("fail"); it != attributes.end() && it->second == "true") {
      co_return Status::Internal("asked to fail");
    }
    if (record_fd >= 0) {
      std::string line = d.message_id + " " + d.message.data + "\n";
      if (::write(record_fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
        co_return Status::IOError(std::string("ECHO_RECORD write: ") + std::strerror(errno));
      }
    }
    co_return Status::Ok();
  };
  return tidepool::worker::RunWorkerMain(handler);
}
