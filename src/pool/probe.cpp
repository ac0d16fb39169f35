#include "pool/probe.h"

#include <signal.h>

#include <array>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <memory>

#include "pool/process.h"

namespace tidepool::pool {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

constexpr int kHttpOkFirst = 200;
constexpr int kHttpOkLast = 299;
// The status line is all we read; anything longer without one is not HTTP.
constexpr size_t kMaxStatusLineBytes = 4096;

std::string TimedOut(std::chrono::milliseconds timeout) {
  return "timed out after " + std::to_string(timeout.count()) + "ms";
}

class HttpProbe : public std::enable_shared_from_this<HttpProbe> {
 public:
  HttpProbe(asio::io_context& io, int port, std::string path, std::chrono::milliseconds timeout,
            ProbeDone done)
      : socket_(io),
        timer_(io),
        port_(port),
        timeout_(timeout),
        request_("GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        done_(std::move(done)) {}

  void Start() {
    auto self = shared_from_this();
    timer_.expires_after(timeout_);
    timer_.async_wait([self](boost::system::error_code ec) {
      if (!ec) self->Finish(false, TimedOut(self->timeout_));
    });
    tcp::endpoint endpoint(asio::ip::address_v4::loopback(), static_cast<uint16_t>(port_));
    socket_.async_connect(endpoint, [self](boost::system::error_code ec) {
      if (ec) return self->Finish(false, "connect: " + ec.message());
      asio::async_write(self->socket_, asio::buffer(self->request_),
                        [self](boost::system::error_code write_ec, size_t) {
                          if (write_ec) return self->Finish(false, "write: " + write_ec.message());
                          self->Read();
                        });
    });
  }

 private:
  void Read() {
    auto self = shared_from_this();
    socket_.async_read_some(asio::buffer(buffer_), [self](boost::system::error_code ec, size_t n) {
      self->response_.append(self->buffer_.data(), n);
      auto end = self->response_.find("\r\n");
      if (end != std::string::npos) return self->Evaluate(self->response_.substr(0, end));
      if (ec) return self->Finish(false, "no HTTP status line: " + ec.message());
      if (self->response_.size() > kMaxStatusLineBytes) {
        return self->Finish(false, "no HTTP status line");
      }
      self->Read();
    });
  }

  void Evaluate(const std::string& status_line) {
    // "HTTP/1.1 200 OK"
    auto space = status_line.find(' ');
    int code = 0;
    if (status_line.rfind("HTTP/", 0) == 0 && space != std::string::npos) {
      code = std::atoi(status_line.c_str() + space + 1);
    }
    if (code == 0) return Finish(false, "not an HTTP status line");
    Finish(code >= kHttpOkFirst && code <= kHttpOkLast, "HTTP " + std::to_string(code));
  }

  void Finish(bool healthy, std::string detail) {
    if (finished_) return;
    finished_ = true;
    timer_.cancel();
    boost::system::error_code ignored;
    socket_.close(ignored);
    done_(healthy, std::move(detail));
  }

  tcp::socket socket_;
  asio::steady_timer timer_;
  int port_;
  std::chrono::milliseconds timeout_;
  std::string request_;
  ProbeDone done_;
  std::array<char, 1024> buffer_{};
  std::string response_;
  bool finished_ = false;
};

class ExecProbe : public std::enable_shared_from_this<ExecProbe> {
 public:
  ExecProbe(asio::io_context& io, SpawnedProcess process, std::chrono::milliseconds timeout,
            ProbeDone done)
      : pid_(process.pid),
        pidfd_(io, process.pidfd.Release()),
        timer_(io),
        timeout_(timeout),
        done_(std::move(done)) {}

  void Start() {
    auto self = shared_from_this();
    timer_.expires_after(timeout_);
    timer_.async_wait([self](boost::system::error_code ec) {
      if (ec) return;
      ::kill(-self->pid_, SIGKILL);
      self->Finish(false, TimedOut(self->timeout_));
    });
    // The probe is reaped even after a timeout, when the SIGKILL has landed.
    pidfd_.async_wait(
        asio::posix::descriptor_base::wait_read, [self](boost::system::error_code ec) {
          if (ec) return;
          ExitStatus status = ReapProcess(self->pid_);
          self->timer_.cancel();
          self->Finish(status.code == 0 && status.signal == 0, "exit " + DescribeExit(status));
        });
  }

 private:
  void Finish(bool healthy, std::string detail) {
    if (finished_) return;
    finished_ = true;
    done_(healthy, std::move(detail));
  }

  pid_t pid_;
  asio::posix::stream_descriptor pidfd_;
  asio::steady_timer timer_;
  std::chrono::milliseconds timeout_;
  ProbeDone done_;
  bool finished_ = false;
};

}  // namespace

void StartHttpProbe(asio::io_context& io, int port, std::string path,
                    std::chrono::milliseconds timeout, ProbeDone done) {
  std::make_shared<HttpProbe>(io, port, std::move(path), timeout, std::move(done))->Start();
}

void StartExecProbe(asio::io_context& io, std::vector<std::string> argv,
                    std::vector<std::string> env, std::chrono::milliseconds timeout,
                    ProbeDone done) {
  SpawnOptions options{.argv = std::move(argv), .env = std::move(env), .capture_output = false};
  auto spawned = SpawnProcess(options);
  if (!spawned.ok()) {
    // Reported on the io thread like every other outcome, never inline in the caller.
    asio::post(io, [done = std::move(done), message = spawned.status().message()] {
      done(false, message);
    });
    return;
  }
  std::make_shared<ExecProbe>(io, std::move(spawned).value(), timeout, std::move(done))->Start();
}

}  // namespace tidepool::pool
