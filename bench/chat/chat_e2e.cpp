// chat_e2e: the end-to-end chat path under load, as a shopper's browser drives it — create a
// conversation, POST a message, and count until the reply is stored — against one or more web
// tiers (bench/run-chat). Prints one JSON line: messages/s from the first POST to the last
// reply stored, POST latency percentiles, and the check that every accepted message has
// exactly one reply in its history.
//
//   chat_e2e --web HOST:PORT [--web HOST:PORT ...] [--app NAME] [--messages N]
//            [--concurrency C] [--timeout SECONDS]
#include <algorithm>
#include <atomic>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "admin/http_client.h"

namespace {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using tidepool::admin::HttpCall;
using tidepool::admin::HttpFetch;

struct Options {
  std::vector<std::string> webs;
  std::string app = "scent-advisor";
  int messages = 2000;
  int concurrency = 32;
  int timeout_seconds = 300;
};

// The replies stored so far by every web tier (the counter on /metrics).
double RepliesStored(const std::vector<std::string>& webs) {
  double total = 0;
  for (const std::string& web : webs) {
    auto reply = HttpFetch(HttpCall{.endpoint = web, .target = "/metrics"});
    if (!reply.ok()) continue;
    const std::string key = "\ntidepool_web_replies_stored_total ";
    const size_t at = reply->body.find(key);
    if (at != std::string::npos) total += std::atof(reply->body.c_str() + at + key.size());
  }
  return total;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--web") {
      o.webs.push_back(value);
    } else if (flag == "--app") {
      o.app = value;
    } else if (flag == "--messages") {
      o.messages = std::atoi(value.c_str());
    } else if (flag == "--concurrency") {
      o.concurrency = std::atoi(value.c_str());
    } else if (flag == "--timeout") {
      o.timeout_seconds = std::atoi(value.c_str());
    } else {
      std::fprintf(stderr, "chat_e2e: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  if (o.webs.empty() || o.messages <= 0 || o.concurrency <= 0) {
    std::fprintf(stderr, "usage: chat_e2e --web HOST:PORT [--messages N] [--concurrency C]\n");
    return 2;
  }
  const std::string base = "/v1/apps/" + o.app + "/conversations";

  // Conversations first: the measured part is the message path.
  std::vector<std::string> conversations(static_cast<size_t>(o.messages));
  std::atomic<int> next{0};
  std::atomic<int> errors{0};
  auto parallel = [&](const std::function<void(int)>& work) {
    next = 0;
    std::vector<std::thread> threads;
    for (int t = 0; t < o.concurrency; ++t) {
      threads.emplace_back([&] {
        for (int i; (i = next.fetch_add(1)) < o.messages;) work(i);
      });
    }
    for (auto& t : threads) t.join();
  };
  parallel([&](int i) {
    const std::string& web = o.webs[static_cast<size_t>(i) % o.webs.size()];
    auto r = HttpFetch(HttpCall{.method = "POST", .endpoint = web, .target = base});
    if (!r.ok() || r->status != 201) {
      ++errors;
      return;
    }
    conversations[static_cast<size_t>(i)] = std::string(json::parse(r->body).at("id").as_string());
  });

  const double stored_before = RepliesStored(o.webs);
  std::mutex mu;
  std::vector<double> post_ms;
  std::vector<std::string> message_ids(static_cast<size_t>(o.messages));
  const auto started = Clock::now();
  parallel([&](int i) {
    const std::string& id = conversations[static_cast<size_t>(i)];
    if (id.empty()) return;
    const std::string& web = o.webs[static_cast<size_t>(i) % o.webs.size()];
    const auto t0 = Clock::now();
    auto r = HttpFetch(HttpCall{
        .method = "POST",
        .endpoint = web,
        .target = base + "/" + id + "/messages",
        .body = R"({"text": "Something fresh and citrusy for summer evenings, under $90"})",
        .content_type = "application/json"});
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (!r.ok() || r->status != 202) {
      ++errors;
      return;
    }
    message_ids[static_cast<size_t>(i)] =
        std::string(json::parse(r->body).at("message_id").as_string());
    std::lock_guard lock(mu);
    post_ms.push_back(ms);
  });
  const double posting_seconds = std::chrono::duration<double>(Clock::now() - started).count();
  const double accepted = static_cast<double>(post_ms.size());

  // Until every accepted message's reply is stored (or the timeout).
  double stored = 0;
  const auto deadline = started + std::chrono::seconds(o.timeout_seconds);
  while (Clock::now() < deadline) {
    stored = RepliesStored(o.webs) - stored_before;
    if (stored >= accepted) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();

  // Exactly one reply per accepted message, answering it.
  std::atomic<int> wrong{0};
  parallel([&](int i) {
    const std::string& id = conversations[static_cast<size_t>(i)];
    const std::string& message = message_ids[static_cast<size_t>(i)];
    if (message.empty()) return;
    auto r = HttpFetch(HttpCall{.endpoint = o.webs[static_cast<size_t>(i) % o.webs.size()],
                                .target = base + "/" + id});
    if (!r.ok() || r->status != 200) {
      ++wrong;
      return;
    }
    const json::value history = json::parse(r->body);
    int replies = 0;
    for (const auto& m : history.at("messages").as_array()) {
      if (m.at("role").as_string() != "user" && m.at("request_id").as_string() == message) {
        ++replies;
      }
    }
    if (replies != 1) ++wrong;
  });

  json::object out{{"webs", o.webs.size()},
                   {"messages", o.messages},
                   {"accepted", accepted},
                   {"replies_stored", stored},
                   {"errors", errors.load()},
                   {"not_exactly_one_reply", wrong.load()},
                   {"seconds", seconds},
                   {"messages_per_second", stored / seconds},
                   {"post_seconds", posting_seconds},
                   {"post_p50_ms", Percentile(post_ms, 0.50)},
                   {"post_p99_ms", Percentile(post_ms, 0.99)}};
  std::printf("%s\n", json::serialize(out).c_str());
  return stored >= accepted && wrong.load() == 0 && errors.load() == 0 ? 0 : 1;
}
