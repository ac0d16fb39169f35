// The `http` tool step: POSTs the step's arguments as JSON to a URL and returns the JSON reply,
// so that an app can call its own service without any C++ (docs/apps.md).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/json/value.hpp>
#include <chrono>

#include "common/status.h"
#include "pipeline/app.h"

namespace tidepool::pipeline {

// One attempt, bounded by `timeout`. 2xx with a JSON body → the body. 4xx → INVALID_ARGUMENT
// (retrying will not help); 5xx, 429, connection errors → UNAVAILABLE; a body that is not JSON
// → INTERNAL. Plain http:// only for now.
boost::asio::awaitable<Result<boost::json::value>> HttpPostJson(const HttpToolSpec& spec,
                                                                const boost::json::value& args,
                                                                std::chrono::milliseconds timeout);

}  // namespace tidepool::pipeline
