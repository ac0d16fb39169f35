#include "pool/manager.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <span>
#include <sstream>
#include <string_view>

#include <boost/json.hpp>

#include "common/thread_name.h"
#include "queue/queue.h"
#include "storage/env.h"

namespace tidepool::pool {

namespace json = boost::json;

namespace {

constexpr double kMicrosPerSecond = 1e6;
constexpr std::string_view kSavedSuffix = ".yaml";

std::string Rfc3339(std::chrono::system_clock::time_point t) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::chrono::system_clock::time_point WallTime(ScalerClock::time_point t) {
  const auto age = ScalerClock::now() - t;
  return std::chrono::system_clock::now() -
         std::chrono::duration_cast<std::chrono::system_clock::duration>(age);
}

std::string DescribeExit(const ExitInfo& e) {
  if (!e.start_error.empty()) return "start failed: " + e.start_error;
  if (e.oom) return "killed: out of memory";
  if (e.signal != 0) return "signal " + std::to_string(e.signal);
  return "code " + std::to_string(e.code);
}

std::string ScalingText(const PoolSpec& spec, bool autoscaled) {
  if (!autoscaled || !spec.autoscaling) return "manual";
  return "auto " + std::to_string(spec.autoscaling->min_instances) + "-" +
         std::to_string(spec.autoscaling->max_instances);
}

const char* TriggerName(TriggerKind kind) {
  return kind == TriggerKind::kBacklog ? "backlog" : "oldest_unacked_age";
}

json::array SplitJson(const std::map<int, int>& split) {
  json::array out;
  for (const auto& [revision, percent] : split) {
    out.push_back(json::object{{"revision", revision}, {"percent", percent}});
  }
  return out;
}

json::object DecisionJson(const Decision& d) {
  json::array triggers;
  for (const auto& t : d.triggers) {
    triggers.push_back(json::object{{"trigger", TriggerName(t.kind)},
                                    {"available", t.available},
                                    {"metric", t.metric},
                                    {"target", t.target},
                                    {"active", t.active},
                                    {"instances", t.instances}});
  }
  return json::object{{"time", Rfc3339(WallTime(d.at))},
                      {"current", d.current},
                      {"draining", d.draining},
                      {"recommended", d.recommended},
                      {"stabilized", d.stabilized},
                      {"rate_limited", d.rate_limited},
                      {"desired", d.desired},
                      {"limited_by", std::string(ScaleLimitName(d.limited_by))},
                      {"triggers", std::move(triggers)},
                      {"reason", d.reason}};
}

// Escapes a Prometheus label value.
std::string Label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

struct PoolManager::Pool {
  std::string name;
  std::unique_ptr<Supervisor> supervisor;

  mutable std::mutex mu;  // everything below but the logs
  PoolSpec spec;
  std::unique_ptr<Autoscaler> autoscaler;  // null: manual scaling
  ScalerClock::time_point next_poll{};
  std::optional<Decision> last_decision;
  std::deque<Decision> changes;  // decisions that changed the count, newest last
  uint64_t scale_ups = 0;
  uint64_t scale_downs = 0;
  std::optional<queue::Backlog> backlog;
  std::string backlog_error;

  mutable std::mutex log_mu;
  std::deque<LogLine> logs;
  uint64_t next_seq = 1;
  uint64_t follow_id = 0;
};

PoolManager::PoolManager(ManagerOptions options) : options_(std::move(options)) {}

PoolManager::~PoolManager() {
  Stop();
}

void PoolManager::Start() {
  std::lock_guard lock(mu_);
  if (loop_.joinable() || stopping_) return;
  loop_ = std::thread([this] {
    SetCurrentThreadName("pool-manager");
    Loop();
  });
}

void PoolManager::Stop() {
  std::map<std::string, std::shared_ptr<Pool>> pools;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    pools = pools_;
  }
  cv_.notify_all();
  if (loop_.joinable()) loop_.join();
  // Drain all pools at once: each waits up to its own grace period.
  std::vector<std::thread> stoppers;
  for (auto& [name, pool] : pools) {
    stoppers.emplace_back([pool] { pool->supervisor->Stop(); });
  }
  for (auto& t : stoppers) t.join();
}

Result<std::shared_ptr<PoolManager::Pool>> PoolManager::Find(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = pools_.find(name);
  if (it == pools_.end()) return Status::NotFound("pool \"" + name + "\" does not exist");
  return it->second;
}

Result<DeployResult> PoolManager::Deploy(const PoolSpec& spec) {
  TP_RETURN_IF_ERROR(Validate(spec));
  std::shared_ptr<Pool> pool;
  bool created = false;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Status::FailedPrecondition("shutting down: no deploys");
    auto it = pools_.find(spec.name);
    if (it == pools_.end()) {
      pool = std::make_shared<Pool>();
      pool->name = spec.name;
      pool->supervisor = std::make_unique<Supervisor>(options_.supervisor);
      pools_[spec.name] = pool;
      created = true;
    } else {
      pool = it->second;
    }
  }
  if (created) {
    const size_t keep = options_.log_lines;
    Pool* raw = pool.get();
    pool->follow_id = pool->supervisor->FollowLogs([raw, keep](const std::string& line) {
      std::lock_guard lock(raw->log_mu);
      raw->logs.push_back(LogLine{raw->next_seq++, line});
      while (raw->logs.size() > keep) raw->logs.pop_front();
    });
    pool->supervisor->Start();
  }
  const size_t revisions_before = pool->supervisor->GetStatus().revisions.size();
  auto revision = pool->supervisor->Deploy(spec);
  if (!revision.ok()) {
    if (created) {
      pool->supervisor->Stop();
      std::lock_guard lock(mu_);
      pools_.erase(spec.name);
    }
    return revision.status();
  }
  const size_t revisions_after = pool->supervisor->GetStatus().revisions.size();
  {
    std::lock_guard lock(pool->mu);
    pool->spec = spec;
    if (spec.autoscaling) {
      if (pool->autoscaler) {
        pool->autoscaler->UpdateSpec(*spec.autoscaling);
      } else {
        pool->autoscaler = std::make_unique<Autoscaler>(*spec.autoscaling);
      }
      pool->next_poll = ScalerClock::now();
    } else {
      pool->autoscaler.reset();
    }
  }
  cv_.notify_all();
  return DeployResult{spec.name, *revision, revisions_after > revisions_before, created};
}

Status PoolManager::Scale(const std::string& name, int instances) {
  if (instances < 0) return Status::InvalidArgument("instances must be >= 0");
  TP_ASSIGN_OR_RETURN(auto pool, Find(name));
  {
    std::lock_guard lock(pool->mu);
    pool->autoscaler.reset();
    pool->spec.instances = instances;
  }
  return pool->supervisor->Scale(instances);
}

Status PoolManager::SetSplit(const std::string& name, const std::map<int, int>& split) {
  TP_ASSIGN_OR_RETURN(auto pool, Find(name));
  return pool->supervisor->SetSplit(split);
}

Result<int> PoolManager::Rollback(const std::string& name, std::optional<int> revision) {
  TP_ASSIGN_OR_RETURN(auto pool, Find(name));
  TP_RETURN_IF_ERROR(pool->supervisor->Rollback(revision));
  const auto status = pool->supervisor->GetStatus();
  int target = 0, best = -1;
  for (const auto& [rev, percent] : status.split) {
    if (percent > best) {
      best = percent;
      target = rev;
    }
  }
  return target;
}

Result<std::vector<std::string>> PoolManager::RestoreSaved() {
  std::vector<std::string> restored;
  if (options_.state_dir.empty()) return restored;
  storage::Env* env = storage::DefaultEnv();
  if (!env->FileExists(options_.state_dir)) return restored;
  TP_ASSIGN_OR_RETURN(auto names, env->ListDir(options_.state_dir));
  std::sort(names.begin(), names.end());
  for (const auto& file : names) {
    if (file.size() <= kSavedSuffix.size() ||
        file.compare(file.size() - kSavedSuffix.size(), kSavedSuffix.size(), kSavedSuffix) != 0) {
      continue;
    }
    const std::string path = options_.state_dir + "/" + file;
    auto text = env->ReadFileToString(path);
    if (!text.ok()) return text.status();
    auto spec = ParsePool(*text, path);
    if (!spec.ok()) {
      if (options_.supervisor.log_sink) {
        options_.supervisor.log_sink("pools: skipping " + path + ": " + spec.status().ToString());
      }
      continue;
    }
    TP_ASSIGN_OR_RETURN(auto deployed, Deploy(*spec));
    restored.push_back(deployed.name);
  }
  return restored;
}

Status PoolManager::SaveSpec(const std::string& name, const std::string& yaml) const {
  if (options_.state_dir.empty()) return Status::Ok();
  storage::Env* env = storage::DefaultEnv();
  TP_RETURN_IF_ERROR(env->CreateDirs(options_.state_dir));
  return env->WriteFileAtomic(
      options_.state_dir + "/" + name + std::string(kSavedSuffix),
      std::span(reinterpret_cast<const std::byte*>(yaml.data()), yaml.size()));
}

std::vector<std::string> PoolManager::PoolNames() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> names;
  for (const auto& [name, pool] : pools_) names.push_back(name);
  return names;
}

Result<PoolStatus> PoolManager::GetStatus(const std::string& name) const {
  TP_ASSIGN_OR_RETURN(auto pool, Find(name));
  return pool->supervisor->GetStatus();
}

std::vector<Decision> PoolManager::Decisions(const std::string& name) const {
  auto pool = Find(name);
  if (!pool.ok()) return {};
  std::lock_guard lock((*pool)->mu);
  return {(*pool)->changes.begin(), (*pool)->changes.end()};
}

void PoolManager::Loop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    std::vector<std::shared_ptr<Pool>> pools;
    for (auto& [name, pool] : pools_) pools.push_back(pool);
    lock.unlock();
    const auto now = ScalerClock::now();
    for (auto& pool : pools) EvaluatePool(*pool, now);
    lock.lock();
    cv_.wait_for(lock, options_.loop_tick, [this] { return stopping_; });
  }
}

void PoolManager::EvaluatePool(Pool& pool, ScalerClock::time_point now) {
  std::string subscription;
  {
    std::lock_guard lock(pool.mu);
    if (!pool.autoscaler || now < pool.next_poll) return;
    pool.next_poll = now + pool.spec.autoscaling->poll_interval;
    subscription = pool.spec.subscription;
  }
  // The backlog read happens outside the pool's lock: over the pubsub backend it is a network
  // call, and describe must not wait for it.
  std::optional<queue::Backlog> backlog;
  std::string backlog_error;
  if (options_.queue == nullptr) {
    backlog_error = "no queue to read backlog from";
  } else if (auto b = options_.queue->GetBacklog(subscription); b.ok()) {
    backlog = *b;
  } else {
    backlog_error = b.status().ToString();
  }
  const PoolStatus status = pool.supervisor->GetStatus();
  Observation obs;
  obs.now = now;
  obs.current = status.desired;
  obs.draining = static_cast<int>(
      std::count_if(status.instances.begin(), status.instances.end(),
                    [](const InstanceStatus& i) { return i.state == InstanceState::kDraining; }));
  if (backlog) {
    obs.backlog = static_cast<double>(backlog->undelivered_messages);
    obs.oldest_unacked_age_seconds =
        static_cast<double>(backlog->oldest_unacked_age_micros) / kMicrosPerSecond;
  }
  Decision decision;
  {
    std::lock_guard lock(pool.mu);
    if (!pool.autoscaler) return;  // scaled by hand meanwhile
    decision = pool.autoscaler->Evaluate(obs);
    pool.last_decision = decision;
    pool.backlog = backlog;
    pool.backlog_error = backlog_error;
    if (decision.desired != decision.current) {
      (decision.desired > decision.current ? pool.scale_ups : pool.scale_downs)++;
      pool.changes.push_back(decision);
      while (pool.changes.size() > options_.decision_history) pool.changes.pop_front();
    }
  }
  if (decision.desired == decision.current) return;
  const Status scaled = pool.supervisor->Scale(decision.desired);
  if (options_.supervisor.log_sink) {
    options_.supervisor.log_sink(pool.name + "/autoscaler " + decision.reason +
                                 (scaled.ok() ? "" : " (not applied: " + scaled.ToString() + ")"));
  }
}

json::object PoolManager::ListJson() const {
  std::vector<std::shared_ptr<Pool>> pools;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, pool] : pools_) pools.push_back(pool);
  }
  json::array out;
  for (const auto& pool : pools) {
    const PoolStatus s = pool->supervisor->GetStatus();
    int draining = 0, latest = 0;
    for (const auto& i : s.instances) draining += i.state == InstanceState::kDraining;
    for (const auto& r : s.revisions) latest = std::max(latest, r.number);
    std::lock_guard lock(pool->mu);
    out.push_back(json::object{{"name", pool->name},
                               {"subscription", pool->spec.subscription},
                               {"scaling", ScalingText(pool->spec, pool->autoscaler != nullptr)},
                               {"desired", s.desired},
                               {"ready", s.available},
                               {"draining", draining},
                               {"instances", s.instances.size()},
                               {"split", SplitJson(s.split)},
                               {"latest_revision", latest}});
  }
  return json::object{{"pools", std::move(out)}};
}

Result<json::object> PoolManager::DescribeJson(const std::string& name) const {
  TP_ASSIGN_OR_RETURN(auto pool, Find(name));
  const PoolStatus s = pool->supervisor->GetStatus();
  json::array revisions;
  for (const auto& r : s.revisions) {
    std::string command = r.command;
    for (const auto& a : r.args) command += " " + a;
    auto percent = s.split.find(r.number);
    json::array env_keys(r.env_keys.begin(), r.env_keys.end());
    json::array secret_keys(r.secret_keys.begin(), r.secret_keys.end());
    revisions.push_back(json::object{{"revision", r.number},
                                     {"percent", percent == s.split.end() ? 0 : percent->second},
                                     {"digest", r.digest},
                                     {"created", Rfc3339(r.created)},
                                     {"command", command},
                                     {"env_keys", std::move(env_keys)},
                                     {"secret_keys", std::move(secret_keys)},
                                     {"memory_limit_bytes", r.memory_limit_bytes}});
  }
  json::array instances;
  for (const auto& i : s.instances) {
    json::object o{{"id", i.id},
                   {"revision", i.revision},
                   {"state", InstanceStateName(i.state)},
                   {"pid", i.pid},
                   {"inflight", i.inflight},
                   {"pulling", i.pulling},
                   {"restarts", i.restarts},
                   {"last_exit", i.last_exit ? DescribeExit(*i.last_exit) : ""}};
    if (i.started_at) o["started_at"] = Rfc3339(*i.started_at);
    instances.push_back(std::move(o));
  }
  json::object out{{"name", pool->name},
                   {"desired", s.desired},
                   {"available", s.available},
                   {"split", SplitJson(s.split)},
                   {"revisions", std::move(revisions)},
                   {"instances", std::move(instances)},
                   {"restarts_total", s.restarts_total},
                   {"oom_kills_total", s.oom_kills_total},
                   {"liveness_failures_total", s.liveness_failures_total}};
  if (!s.memory_limit_warning.empty()) out["memory_limit_warning"] = s.memory_limit_warning;
  std::lock_guard lock(pool->mu);
  out["subscription"] = pool->spec.subscription;
  out["scaling"] = ScalingText(pool->spec, pool->autoscaler != nullptr);
  out["grace_period_seconds"] = static_cast<double>(pool->spec.grace_period.count()) / 1000.0;
  if (pool->backlog) {
    out["backlog"] = json::object{
        {"undelivered_messages", pool->backlog->undelivered_messages},
        {"oldest_unacked_age_seconds",
         static_cast<double>(pool->backlog->oldest_unacked_age_micros) / kMicrosPerSecond}};
  } else if (!pool->backlog_error.empty()) {
    out["backlog_error"] = pool->backlog_error;
  }
  if (pool->last_decision) out["last_decision"] = DecisionJson(*pool->last_decision);
  json::array decisions;
  for (const auto& d : pool->changes) decisions.push_back(DecisionJson(d));
  out["decisions"] = std::move(decisions);
  return out;
}

Result<LogsPage> PoolManager::Logs(const std::string& name, size_t lines, uint64_t after) const {
  TP_ASSIGN_OR_RETURN(auto pool, Find(name));
  std::lock_guard lock(pool->log_mu);
  LogsPage page;
  page.next = pool->next_seq - 1;
  auto it = pool->logs.begin();
  if (after == 0) {
    if (pool->logs.size() > lines) it += static_cast<std::ptrdiff_t>(pool->logs.size() - lines);
  } else {
    it = std::find_if(pool->logs.begin(), pool->logs.end(),
                      [after](const LogLine& l) { return l.seq > after; });
  }
  page.lines.assign(it, pool->logs.end());
  return page;
}

std::string PoolManager::MetricsText() const {
  std::vector<std::shared_ptr<Pool>> pools;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, pool] : pools_) pools.push_back(pool);
  }
  std::ostringstream out;
  out << "# HELP tidepool_pool_instances Instances of a pool by state and revision.\n"
         "# TYPE tidepool_pool_instances gauge\n";
  std::ostringstream desired, restarts, ooms, liveness, decisions, inputs, backlog, age;
  for (const auto& pool : pools) {
    const PoolStatus s = pool->supervisor->GetStatus();
    const std::string p = Label(pool->name);
    std::map<std::pair<std::string, int>, int> by_state;
    for (const auto& i : s.instances) by_state[{InstanceStateName(i.state), i.revision}]++;
    for (const auto& [key, n] : by_state) {
      out << "tidepool_pool_instances{pool=\"" << p << "\",state=\"" << key.first
          << "\",revision=\"" << key.second << "\"} " << n << "\n";
    }
    desired << "tidepool_pool_desired_instances{pool=\"" << p << "\"} " << s.desired << "\n";
    restarts << "tidepool_pool_restarts_total{pool=\"" << p << "\"} " << s.restarts_total << "\n";
    ooms << "tidepool_pool_oom_kills_total{pool=\"" << p << "\"} " << s.oom_kills_total << "\n";
    liveness << "tidepool_pool_liveness_failures_total{pool=\"" << p << "\"} "
             << s.liveness_failures_total << "\n";
    std::lock_guard lock(pool->mu);
    decisions << "tidepool_pool_scaling_decisions_total{pool=\"" << p << "\",direction=\"up\"} "
              << pool->scale_ups << "\n"
              << "tidepool_pool_scaling_decisions_total{pool=\"" << p << "\",direction=\"down\"} "
              << pool->scale_downs << "\n";
    if (pool->last_decision) {
      for (const auto& t : pool->last_decision->triggers) {
        if (!t.available) continue;
        inputs << "tidepool_pool_autoscaler_metric{pool=\"" << p << "\",trigger=\""
               << TriggerName(t.kind) << "\"} " << t.metric << "\n";
      }
      inputs << "tidepool_pool_autoscaler_recommended_instances{pool=\"" << p << "\"} "
             << pool->last_decision->recommended << "\n";
    }
    if (pool->backlog) {
      const std::string sub = Label(pool->spec.subscription);
      backlog << "tidepool_pool_backlog_messages{pool=\"" << p << "\",subscription=\"" << sub
              << "\"} " << pool->backlog->undelivered_messages << "\n";
      age << "tidepool_pool_oldest_unacked_age_seconds{pool=\"" << p << "\",subscription=\"" << sub
          << "\"} "
          << static_cast<double>(pool->backlog->oldest_unacked_age_micros) / kMicrosPerSecond
          << "\n";
    }
  }
  out << "# HELP tidepool_pool_desired_instances Instances the pool should run.\n"
         "# TYPE tidepool_pool_desired_instances gauge\n"
      << desired.str()
      << "# HELP tidepool_pool_restarts_total Instance restarts after an exit or failed probe.\n"
         "# TYPE tidepool_pool_restarts_total counter\n"
      << restarts.str()
      << "# HELP tidepool_pool_oom_kills_total Instances killed for exceeding their memory "
         "limit.\n"
         "# TYPE tidepool_pool_oom_kills_total counter\n"
      << ooms.str()
      << "# HELP tidepool_pool_liveness_failures_total Failed liveness probes.\n"
         "# TYPE tidepool_pool_liveness_failures_total counter\n"
      << liveness.str()
      << "# HELP tidepool_pool_scaling_decisions_total Autoscaler decisions that changed the "
         "instance count.\n"
         "# TYPE tidepool_pool_scaling_decisions_total counter\n"
      << decisions.str()
      << "# HELP tidepool_pool_autoscaler_metric The last metric value each trigger saw.\n"
         "# TYPE tidepool_pool_autoscaler_metric gauge\n"
      << inputs.str()
      << "# HELP tidepool_pool_backlog_messages Undelivered messages of the pool's "
         "subscription, as the autoscaler read them.\n"
         "# TYPE tidepool_pool_backlog_messages gauge\n"
      << backlog.str()
      << "# HELP tidepool_pool_oldest_unacked_age_seconds Age of the oldest unacknowledged "
         "message of the pool's subscription.\n"
         "# TYPE tidepool_pool_oldest_unacked_age_seconds gauge\n"
      << age.str();
  return out.str();
}

admin::RequestHandler PoolManager::ApiHandler() {
  return [this](const admin::Request& r) { return Handle(r); };
}

admin::Response PoolManager::Handle(const admin::Request& r) {
  auto ok = [](const json::value& v, int status = 200) {
    return admin::Response{status, "application/json", json::serialize(v) + "\n"};
  };
  const std::string prefix = "/v1/pools";
  std::string rest = r.path.substr(prefix.size());
  if (rest.empty() || rest == "/") {
    if (r.method == "GET") return ok(ListJson());
    if (r.method != "POST") return admin::ErrorResponse(405, "GET or POST /v1/pools");
    auto origin = r.query.find("origin");
    auto spec = ParsePool(r.body, origin == r.query.end() ? "request" : origin->second);
    if (!spec.ok()) return admin::ErrorResponse(spec.status());
    auto result = Deploy(*spec);
    if (!result.ok()) return admin::ErrorResponse(result.status());
    // Kept so that a restart runs the pool as deployed (a failure here leaves it running and
    // says so: the deploy itself happened).
    if (const Status saved = SaveSpec(result->name, r.body); !saved.ok()) {
      return admin::ErrorResponse(500, "pool " + result->name + " deployed as revision " +
                                           std::to_string(result->revision) +
                                           " but not saved for restarts: " + saved.ToString());
    }
    return ok(json::object{{"name", result->name},
                           {"revision", result->revision},
                           {"new_revision", result->new_revision},
                           {"new_pool", result->new_pool}},
              result->new_pool ? 201 : 200);
  }
  if (rest[0] != '/') return admin::ErrorResponse(404, "no such path: " + r.path);
  rest = rest.substr(1);
  std::string name = rest, verb, sub;
  if (auto slash = rest.find('/'); slash != std::string::npos) {
    name = rest.substr(0, slash);
    sub = rest.substr(slash + 1);
  }
  if (auto colon = name.find(':'); colon != std::string::npos) {
    verb = name.substr(colon + 1);
    name = name.substr(0, colon);
  }
  if (sub == "logs" && verb.empty()) {
    if (r.method != "GET") return admin::ErrorResponse(405, "GET the logs");
    size_t lines = 100;
    uint64_t after = 0;
    for (const auto& [key, target] : {std::pair<const char*, uint64_t*>{"after", &after}}) {
      if (auto it = r.query.find(key); it != r.query.end()) {
        char* end = nullptr;
        *target = std::strtoull(it->second.c_str(), &end, 10);
        if (it->second.empty() || *end != '\0') {
          return admin::ErrorResponse(400, std::string(key) + " must be a number");
        }
      }
    }
    if (auto it = r.query.find("lines"); it != r.query.end()) {
      char* end = nullptr;
      lines = std::strtoul(it->second.c_str(), &end, 10);
      if (it->second.empty() || *end != '\0') {
        return admin::ErrorResponse(400, "lines must be a number");
      }
    }
    auto page = Logs(name, lines, after);
    if (!page.ok()) return admin::ErrorResponse(page.status());
    json::array out;
    for (const auto& l : page->lines) out.push_back(json::object{{"seq", l.seq}, {"text", l.text}});
    return ok(json::object{{"lines", std::move(out)}, {"next", page->next}});
  }
  if (!sub.empty()) return admin::ErrorResponse(404, "no such path: " + r.path);
  if (verb.empty()) {
    if (r.method != "GET") return admin::ErrorResponse(405, "GET a pool, POST its :verbs");
    auto d = DescribeJson(name);
    if (!d.ok()) return admin::ErrorResponse(d.status());
    return ok(*d);
  }
  if (r.method != "POST") return admin::ErrorResponse(405, ":" + verb + " takes POST");
  boost::system::error_code ec;
  json::value body = r.body.empty() ? json::value(json::object{}) : json::parse(r.body, ec);
  if (ec || !body.is_object()) {
    return admin::ErrorResponse(400, "the request body is not a JSON object");
  }
  const json::object& o = body.as_object();
  if (verb == "scale") {
    const auto* n = o.if_contains("instances");
    if (n == nullptr || !n->is_int64() || n->as_int64() < 0) {
      return admin::ErrorResponse(400, "\"instances\" must be an integer >= 0");
    }
    const Status s = Scale(name, static_cast<int>(n->as_int64()));
    if (!s.ok()) return admin::ErrorResponse(s);
    return ok(
        json::object{{"message", "pool " + name + " scaled to " + std::to_string(n->as_int64()) +
                                     " instances (autoscaling off)"}});
  }
  if (verb == "updateSplit") {
    const auto* split = o.if_contains("split");
    if (split == nullptr || !split->is_object()) {
      return admin::ErrorResponse(400, "\"split\" must be an object {\"REVISION\": PERCENT}");
    }
    std::map<int, int> parsed;
    for (const auto& [key, value] : split->as_object()) {
      char* end = nullptr;
      const long rev = std::strtol(std::string(key).c_str(), &end, 10);
      if (*end != '\0' || rev <= 0 || !value.is_int64()) {
        return admin::ErrorResponse(
            400, "split entry \"" + std::string(key) + "\" must be REVISION: PERCENT (integers)");
      }
      parsed[static_cast<int>(rev)] = static_cast<int>(value.as_int64());
    }
    const Status s = SetSplit(name, parsed);
    if (!s.ok()) return admin::ErrorResponse(s);
    std::string text;
    for (const auto& [rev, percent] : parsed) {
      text += (text.empty() ? "" : ", ") + ("r" + std::to_string(rev)) + "=" +
              std::to_string(percent) + "%";
    }
    return ok(json::object{{"message", "pool " + name + " split: " + text}});
  }
  if (verb == "rollback") {
    std::optional<int> revision;
    if (const auto* rev = o.if_contains("revision")) {
      if (!rev->is_int64()) return admin::ErrorResponse(400, "\"revision\" must be an integer");
      revision = static_cast<int>(rev->as_int64());
    }
    auto target = Rollback(name, revision);
    if (!target.ok()) return admin::ErrorResponse(target.status());
    return ok(json::object{
        {"message", "pool " + name + " rolling back to revision " + std::to_string(*target)},
        {"revision", *target}});
  }
  return admin::ErrorResponse(404, "unknown verb :" + verb + " (scale, updateSplit, rollback)");
}

}  // namespace tidepool::pool
