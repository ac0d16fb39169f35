// `tidepool pools …`: the operator's CLI for worker pools, in gcloud's spirit. It talks to the
// admin API of a `tidepool up` or `tidepool pool` process (default 127.0.0.1:8086).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <boost/json.hpp>

#include "admin/http_client.h"
#include "cli/commands.h"

namespace tidepool::cli {
namespace {

namespace json = boost::json;

constexpr char kPoolsUsage[] =
    "Usage: tidepool pools <command> [--admin HOST:PORT] [--token TOKEN] [--format json]\n"
    "\n"
    "Commands:\n"
    "  list                               Pools with their instances and revisions\n"
    "  describe NAME                      One pool: spec, revisions, instances, scaling decisions\n"
    "  deploy -f POOL.yaml                Create or update a pool (a new revision when its\n"
    "                                     command, args, env or secrets change; rolled out\n"
    "                                     gradually)\n"
    "  scale NAME --instances N           Set a fixed instance count (turns autoscaling off)\n"
    "  update-split NAME --to-revisions R=P[,R=P...]\n"
    "                                     Split instances across revisions by percent\n"
    "  rollback NAME [--to-revision R]    Back to the previous (or given) revision\n"
    "  logs NAME [--lines N] [--follow]   Instance logs, prefixed pool/revision/instance\n"
    "\n"
    "The admin address comes from --admin, else TIDEPOOL_ADMIN, else 127.0.0.1:8086; the token\n"
    "from --token, else TIDEPOOL_ADMIN_TOKEN.\n";

constexpr auto kFollowPollInterval = std::chrono::milliseconds(500);
constexpr int kDefaultLogLines = 100;

struct Target {
  std::string admin = "127.0.0.1:8086";
  std::string token;
  bool json_output = false;
};

int Fail(const std::string& message) {
  std::fprintf(stderr, "tidepool pools: %s\n", message.c_str());
  return 1;
}

// Performs the call; prints the server's error message and returns false on failure.
bool Call(const Target& t, const std::string& method, const std::string& path,
          const std::string& body, const std::string& content_type, json::value* out) {
  admin::HttpCall call;
  call.method = method;
  call.endpoint = t.admin;
  call.target = path;
  call.body = body;
  call.content_type = content_type;
  call.bearer_token = t.token;
  auto reply = admin::HttpFetch(call);
  if (!reply.ok()) {
    Fail(reply.status().message() + " (is `tidepool up` or `tidepool pool` running there?)");
    return false;
  }
  boost::system::error_code ec;
  json::value parsed = json::parse(reply->body, ec);
  if (reply->status / 100 != 2) {
    std::string message = reply->body;
    if (!ec && parsed.is_object() && parsed.as_object().contains("error")) {
      message = json::value_to<std::string>(parsed.at("error").at("message"));
    }
    Fail("HTTP " + std::to_string(reply->status) + ": " + message);
    return false;
  }
  if (ec) {
    Fail("the admin API answered something that is not JSON: " + ec.message());
    return false;
  }
  *out = std::move(parsed);
  return true;
}

std::string Str(const json::value& v, const char* key) {
  if (!v.is_object()) return "";
  const auto* found = v.as_object().if_contains(key);
  if (found == nullptr) return "";
  if (found->is_string()) return std::string(found->as_string());
  if (found->is_int64()) return std::to_string(found->as_int64());
  if (found->is_uint64()) return std::to_string(found->as_uint64());
  if (found->is_double()) return std::to_string(found->as_double());
  if (found->is_bool()) return found->as_bool() ? "true" : "false";
  return json::serialize(*found);
}

void PrintJson(const json::value& v) {
  std::printf("%s\n", json::serialize(v).c_str());
}

int List(const Target& t) {
  json::value v;
  if (!Call(t, "GET", "/v1/pools", "", "", &v)) return 1;
  if (t.json_output) {
    PrintJson(v);
    return 0;
  }
  std::printf("%-20s %-10s %-8s %-8s %-10s %-22s %s\n", "NAME", "SCALING", "DESIRED", "READY",
              "DRAINING", "SPLIT", "SUBSCRIPTION");
  for (const auto& p : v.at("pools").as_array()) {
    std::string split;
    for (const auto& s : p.at("split").as_array()) {
      if (!split.empty()) split += ",";
      // Appends, not `"r" + Str(...)`: GCC 12 at -O3 warns (-Wrestrict, a false positive).
      split.append("r").append(Str(s, "revision")).append("=").append(Str(s, "percent"));
      split += "%";
    }
    std::printf("%-20s %-10s %-8s %-8s %-10s %-22s %s\n", Str(p, "name").c_str(),
                Str(p, "scaling").c_str(), Str(p, "desired").c_str(), Str(p, "ready").c_str(),
                Str(p, "draining").c_str(), split.c_str(), Str(p, "subscription").c_str());
  }
  return 0;
}

int Describe(const Target& t, const std::string& name) {
  json::value v;
  if (!Call(t, "GET", "/v1/pools/" + name, "", "", &v)) return 1;
  if (t.json_output) {
    PrintJson(v);
    return 0;
  }
  std::printf("name:          %s\n", Str(v, "name").c_str());
  std::printf("subscription:  %s\n", Str(v, "subscription").c_str());
  std::printf("scaling:       %s\n", Str(v, "scaling").c_str());
  std::printf("desired:       %s\n", Str(v, "desired").c_str());
  std::printf("revisions:\n");
  for (const auto& r : v.at("revisions").as_array()) {
    std::printf("  r%-4s %3s%%  %s  %s\n", Str(r, "revision").c_str(), Str(r, "percent").c_str(),
                Str(r, "created").c_str(), Str(r, "command").c_str());
  }
  std::printf("instances:\n");
  std::printf("  %-28s %-5s %-11s %-8s %-8s %-9s %s\n", "ID", "REV", "STATE", "PID", "INFLIGHT",
              "RESTARTS", "LAST EXIT");
  for (const auto& i : v.at("instances").as_array()) {
    std::string revision = "r";  // appended: `"r" + Str(...)` trips GCC 12's -O3 -Wrestrict
    revision += Str(i, "revision");
    std::printf("  %-28s %-5s %-11s %-8s %-8s %-9s %s\n", Str(i, "id").c_str(), revision.c_str(),
                Str(i, "state").c_str(), Str(i, "pid").c_str(), Str(i, "inflight").c_str(),
                Str(i, "restarts").c_str(), Str(i, "last_exit").c_str());
  }
  if (const auto* decisions = v.as_object().if_contains("decisions")) {
    std::printf("recent scaling decisions:\n");
    for (const auto& d : decisions->as_array()) {
      std::printf("  %s  %s -> %s  %s\n", Str(d, "time").c_str(), Str(d, "current").c_str(),
                  Str(d, "desired").c_str(), Str(d, "reason").c_str());
    }
  }
  return 0;
}

int Deploy(const Target& t, const std::string& file) {
  std::ifstream in(file);
  if (!in) return Fail("cannot read " + file);
  std::stringstream text;
  text << in.rdbuf();
  json::value v;
  if (!Call(t, "POST", "/v1/pools?origin=" + file, text.str(), "application/yaml", &v)) return 1;
  if (t.json_output) {
    PrintJson(v);
    return 0;
  }
  std::printf("pool %s: revision %s%s\n", Str(v, "name").c_str(), Str(v, "revision").c_str(),
              Str(v, "new_revision") == "true" ? " (new, rolling out)" : " (unchanged)");
  return 0;
}

int Simple(const Target& t, const std::string& path, const json::object& body) {
  json::value v;
  if (!Call(t, "POST", path, json::serialize(body), "application/json", &v)) return 1;
  if (t.json_output) {
    PrintJson(v);
  } else {
    std::printf("%s\n", Str(v, "message").c_str());
  }
  return 0;
}

int Logs(const Target& t, const std::string& name, int lines, bool follow) {
  uint64_t after = 0;
  std::string target = "/v1/pools/" + name + "/logs?lines=" + std::to_string(lines);
  for (;;) {
    json::value v;
    if (!Call(t, "GET", target, "", "", &v)) return 1;
    for (const auto& line : v.at("lines").as_array()) {
      std::printf("%s\n", Str(line, "text").c_str());
    }
    std::fflush(stdout);
    after = json::value_to<uint64_t>(v.at("next"));
    if (!follow) return 0;
    std::this_thread::sleep_for(kFollowPollInterval);
    target = "/v1/pools/" + name + "/logs?after=" + std::to_string(after);
  }
}

}  // namespace

int RunPools(const Args& all_args) {
  Target t;
  if (const char* env = std::getenv("TIDEPOOL_ADMIN")) t.admin = env;
  if (const char* env = std::getenv("TIDEPOOL_ADMIN_TOKEN")) t.token = env;
  Args args;
  std::string file, revisions, to_revision;
  int instances = -1;
  int lines = kDefaultLogLines;
  bool follow = false;
  for (size_t i = 0; i < all_args.size(); ++i) {
    const std::string& a = all_args[i];
    const bool has_value = i + 1 < all_args.size();
    if (a == "--admin" && has_value) {
      t.admin = all_args[++i];
    } else if (a == "--token" && has_value) {
      t.token = all_args[++i];
    } else if (a == "--format" && has_value) {
      t.json_output = all_args[++i] == "json";
    } else if ((a == "-f" || a == "--file") && has_value) {
      file = all_args[++i];
    } else if (a == "--instances" && has_value) {
      instances = std::atoi(all_args[++i].c_str());
      if (instances < 0) return Fail("--instances takes a number ≥ 0");
    } else if (a == "--to-revisions" && has_value) {
      revisions = all_args[++i];
    } else if (a == "--to-revision" && has_value) {
      to_revision = all_args[++i];
    } else if (a == "--lines" && has_value) {
      lines = std::atoi(all_args[++i].c_str());
    } else if (a == "--follow") {
      follow = true;
    } else if (a.rfind("--", 0) == 0 || a == "-f") {
      std::fprintf(stderr, "tidepool pools: unknown or incomplete option '%s'\n\n%s", a.c_str(),
                   kPoolsUsage);
      return 2;
    } else {
      args.push_back(a);
    }
  }
  if (args.empty() || args[0] == "help" || args[0] == "--help") {
    std::fputs(kPoolsUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string& cmd = args[0];
  const std::string name = args.size() > 1 ? args[1] : "";
  auto need_name = [&]() {
    if (name.empty()) Fail(cmd + " needs a pool NAME");
    return !name.empty();
  };
  if (cmd == "list") return List(t);
  if (cmd == "describe") return need_name() ? Describe(t, name) : 2;
  if (cmd == "deploy") {
    if (file.empty()) return Fail("deploy needs -f POOL.yaml");
    return Deploy(t, file);
  }
  if (cmd == "scale") {
    if (!need_name()) return 2;
    if (instances < 0) return Fail("scale needs --instances N");
    return Simple(t, "/v1/pools/" + name + ":scale", {{"instances", instances}});
  }
  if (cmd == "update-split") {
    if (!need_name()) return 2;
    if (revisions.empty()) return Fail("update-split needs --to-revisions R=P[,R=P...]");
    json::object split;
    std::stringstream parts(revisions);
    std::string part;
    while (std::getline(parts, part, ',')) {
      const auto eq = part.find('=');
      if (eq == std::string::npos) return Fail("'" + part + "' is not REVISION=PERCENT");
      std::string rev = part.substr(0, eq);
      if (!rev.empty() && (rev[0] == 'r' || rev[0] == 'R')) rev = rev.substr(1);
      split[rev] = std::atoi(part.substr(eq + 1).c_str());
    }
    return Simple(t, "/v1/pools/" + name + ":updateSplit", {{"split", split}});
  }
  if (cmd == "rollback") {
    if (!need_name()) return 2;
    json::object body;
    if (!to_revision.empty()) {
      if (to_revision[0] == 'r' || to_revision[0] == 'R') to_revision = to_revision.substr(1);
      body["revision"] = std::atoi(to_revision.c_str());
    }
    return Simple(t, "/v1/pools/" + name + ":rollback", body);
  }
  if (cmd == "logs") return need_name() ? Logs(t, name, lines, follow) : 2;
  std::fprintf(stderr, "tidepool pools: unknown command '%s'\n\n%s", cmd.c_str(), kPoolsUsage);
  return 2;
}

}  // namespace tidepool::cli
