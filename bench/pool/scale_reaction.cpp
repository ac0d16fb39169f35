// Scale reaction: how long from the start of a burst until the autoscaler decides to scale up,
// and until the new instances pull. Runs `tidepool up` and the example echo worker for real;
// repeats the burst so that the phase of the 1 s poll against the burst is spread out.
//
//   scale_reaction --tidepool build/tidepool --worker build/examples/echo_worker [--trials 7]
#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../../tests/integration/test_process.h"
#include "admin/http_client.h"
#include "queue/queue.h"

namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using tidepool::testing::ChildProcess;

namespace {

constexpr int kBurst = 4'000;
constexpr auto kPollEvery = 10ms;

struct Trial {
  double decision = -1;        // seconds from the burst's first publish to desired > 1
  double second_pulling = -1;  // ... to a second instance reporting "pulling"
  double all_pulling = -1;     // ... to every desired instance pulling
  int desired = 0;
};

json::value Describe(const std::string& admin) {
  auto reply = tidepool::admin::HttpFetch({.endpoint = admin, .target = "/v1/pools/echo"});
  if (!reply.ok() || reply->status != 200) return {};
  boost::system::error_code ec;
  return json::parse(reply->body, ec);
}

int Pulling(const json::value& d) {
  int n = 0;
  for (const auto& i : d.at("instances").as_array()) {
    n += i.at("state").as_string() == "running" && i.at("pulling").as_bool();
  }
  return n;
}

double Median(std::vector<double> v) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string tidepool_bin = "build/tidepool", worker_bin = "build/examples/echo_worker";
  int trials = 7;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--tidepool") tidepool_bin = argv[i + 1];
    if (a == "--worker") worker_bin = argv[i + 1];
    if (a == "--trials") trials = std::atoi(argv[i + 1]);
  }
  char dir_template[] = "/tmp/tidepool-scale-XXXXXX";
  const std::string dir = ::mkdtemp(dir_template);
  const int port = tidepool::testing::FreePort(), admin_port = tidepool::testing::FreePort();
  const std::string admin = "127.0.0.1:" + std::to_string(admin_port);
  ChildProcess up({tidepool_bin, "up", "--no-apps", "--data-dir", dir + "/data", "--broker-listen",
                   "127.0.0.1:" + std::to_string(port), "--admin-listen", admin},
                  {});
  if (!tidepool::testing::WaitForPort(port, 20s) ||
      !tidepool::testing::WaitForPort(admin_port, 20s)) {
    std::fprintf(stderr, "tidepool up did not start\n");
    return 1;
  }
  auto queue = tidepool::queue::OpenQueue(
      {.backend = "pubsub", .endpoint = "127.0.0.1:" + std::to_string(port)});
  if (!queue.ok() || !(*queue)->EnsureTopic("burst").ok() ||
      !(*queue)->EnsureSubscription({.name = "burst-workers", .topic = "burst"}).ok()) {
    std::fprintf(stderr, "cannot set up the topic and subscription\n");
    return 1;
  }
  const std::string pool_yaml = dir + "/pool.yaml";
  std::ofstream(pool_yaml) << "name: echo\ncommand: " << worker_bin
                           << "\nsubscription: burst-workers\ngrace_period: 10s\n"
                              "env:\n  ECHO_WORK_MS: \"20\"\n"
                              "  TIDEPOOL_MAX_OUTSTANDING_MESSAGES: \"8\"\n"
                              "autoscaling:\n  min: 1\n  max: 4\n  poll_interval: 1s\n"
                              "  triggers:\n    - {type: backlog, target: 200}\n"
                              "  scale_down:\n    stabilization_window: 2s\n"
                              "    policies:\n      - {type: percent, value: 100, period: 1s}\n";
  const std::string deploy = tidepool_bin + " pools deploy -f " + pool_yaml + " --admin " + admin;
  if (std::system(deploy.c_str()) != 0) return 1;

  std::mt19937 rng(std::random_device{}());
  std::vector<Trial> results;
  for (int t = 0; t < trials; ++t) {
    // Back to one idle instance that pulls, then a random pause so that bursts land at
    // different phases of the autoscaler's poll.
    const auto settle_end = Clock::now() + 60s;
    for (;;) {
      const json::value d = Describe(admin);
      if (d.is_object() && d.at("desired").as_int64() == 1 && Pulling(d) == 1 &&
          d.at("instances").as_array().size() == 1 && d.as_object().contains("backlog") &&
          d.at("backlog").at("undelivered_messages").to_number<uint64_t>() == 0) {
        break;
      }
      if (Clock::now() > settle_end) {
        std::fprintf(stderr, "the pool did not settle back to 1 instance\n");
        return 1;
      }
      std::this_thread::sleep_for(50ms);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 1000));

    Trial trial;
    const auto t0 = Clock::now();
    std::thread publisher([&] {
      tidepool::queue::Publisher p(**queue, "burst");
      for (int i = 0; i < kBurst; ++i) p.Publish({.data = "x"}, [](auto) {});
      p.Flush();
    });
    while (Clock::now() - t0 < 30s) {
      const json::value d = Describe(admin);
      const double now = std::chrono::duration<double>(Clock::now() - t0).count();
      if (d.is_object()) {
        const int desired = static_cast<int>(d.at("desired").as_int64());
        const int pulling = Pulling(d);
        if (desired > 1 && trial.decision < 0) {
          trial.decision = now;
          trial.desired = desired;
        }
        if (pulling >= 2 && trial.second_pulling < 0) trial.second_pulling = now;
        if (trial.desired > 1 && pulling >= trial.desired) {
          trial.all_pulling = now;
          break;
        }
      }
      std::this_thread::sleep_for(kPollEvery);
    }
    publisher.join();
    std::printf(
        "trial %d: decision %.2f s (to %d), 2nd instance pulling %.2f s, all %d pulling "
        "%.2f s\n",
        t + 1, trial.decision, trial.desired, trial.second_pulling, trial.desired,
        trial.all_pulling);
    std::fflush(stdout);
    results.push_back(trial);
  }
  std::vector<double> decision, second, all;
  double worst_decision = 0;
  for (const auto& r : results) {
    decision.push_back(r.decision);
    second.push_back(r.second_pulling);
    all.push_back(r.all_pulling);
    worst_decision = std::max(worst_decision, r.decision);
  }
  std::printf(
      "\nscale reaction over %d bursts of %d messages (poll interval 1 s):\n"
      "  burst start -> scale-up decision: median %.2f s, worst %.2f s (goal <= 2 s)\n"
      "  burst start -> 2nd instance pulling: median %.2f s\n"
      "  burst start -> all new instances pulling: median %.2f s\n",
      trials, kBurst, Median(decision), worst_decision, Median(second), Median(all));
  up.Signal(SIGTERM);
  up.Wait(60s);
  std::string cleanup = "rm -rf " + dir;
  return std::system(cleanup.c_str()) == 0 ? 0 : 1;
}
