// Liveness probes of pool instances: an HTTP GET on loopback, or a command.
//
// Both run on the given io_context and call `done` exactly once, on its thread, within about
// `timeout` (an exec probe still running then is SIGKILLed with its process group).
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace tidepool::pool {

// healthy, and a short reason when not ("HTTP 503", "exit code 1", "timed out after 1000ms").
using ProbeDone = std::function<void(bool healthy, std::string detail)>;

// GET http://127.0.0.1:PORT/PATH (HTTP/1.0); healthy on a 2xx status line.
void StartHttpProbe(boost::asio::io_context& io, int port, std::string path,
                    std::chrono::milliseconds timeout, ProbeDone done);

// Runs argv with env ("NAME=value" entries), output discarded; healthy on exit 0.
void StartExecProbe(boost::asio::io_context& io, std::vector<std::string> argv,
                    std::vector<std::string> env, std::chrono::milliseconds timeout,
                    ProbeDone done);

}  // namespace tidepool::pool
