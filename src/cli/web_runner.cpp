#include "cli/web_runner.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <random>

#include "cli/up_config.h"
#include "pipeline/runner.h"

namespace tidepool::cli {

namespace fs = std::filesystem;

namespace {

// The directory holding the running binary.
fs::path ExecutableDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path(".") : exe.parent_path();
}

std::vector<fs::path> SearchRoots() {
  return {fs::current_path(), ExecutableDir().parent_path()};
}

constexpr char kRepliesSubscription[] = "tidepool-replies-web";

// "tidepool-events-web-HOST-RANDOM": the host name in the letters a subscription id allows
// (at most 40 of them), and 8 random hex digits that tell restarts and look-alike hosts apart.
std::string InstanceSubscriptionName() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::string name = "tidepool-events-web-";
  size_t kept = 0;
  for (const char* c = host; *c != '\0' && kept < 40; ++c, ++kept) {
    const bool plain = std::isalnum(static_cast<unsigned char>(*c)) || *c == '-';
    name += plain ? static_cast<char>(std::tolower(static_cast<unsigned char>(*c))) : '-';
  }
  std::random_device random;
  char suffix[16];
  std::snprintf(suffix, sizeof(suffix), "-%08x", static_cast<unsigned>(random()));
  return name + suffix;
}

}  // namespace

std::vector<std::string> FindApps() {
  for (const fs::path& root : SearchRoots()) {
    std::error_code ec;
    const fs::path apps = root / "apps";
    if (!fs::is_directory(apps, ec)) continue;
    std::vector<std::string> found;
    for (const auto& entry : fs::directory_iterator(apps, ec)) {
      const fs::path spec = entry.path() / "app.yaml";
      if (fs::is_regular_file(spec, ec)) found.push_back(spec.string());
    }
    std::sort(found.begin(), found.end());
    if (!found.empty()) return found;
  }
  return {};
}

Result<RunningWeb> StartWeb(const WebFlags& flags, queue::Queue& queue, WebHooks hooks) {
  RunningWeb running;
  std::vector<std::string> files = flags.apps.empty() ? FindApps() : flags.apps;
  if (files.empty()) {
    return Status::InvalidArgument("no apps: pass --app FILE (or run where apps/*/app.yaml is)");
  }
  std::map<std::string, std::vector<std::string>> api_keys;
  if (!flags.api_keys_file.empty()) {
    TP_ASSIGN_OR_RETURN(api_keys, LoadApiKeys(flags.api_keys_file));
  }
  web::WebOptions options;
  for (const std::string& file : files) {
    TP_ASSIGN_OR_RETURN(pipeline::AppSpec spec, pipeline::LoadApp(file));
    options.apps.push_back(web::AppInfo{.name = spec.name,
                                        .title = spec.title,
                                        .description = spec.description,
                                        .greeting = spec.greeting,
                                        .examples = spec.examples,
                                        .request_topic = spec.request_topic,
                                        .request_subscription = pipeline::RequestSubscription(spec),
                                        .api_keys = api_keys[spec.name]});
    if (options.events_topic != spec.events_topic && running.specs.empty()) {
      options.events_topic = spec.events_topic;
    }
    running.app_names += (running.app_names.empty() ? "" : ", ") + spec.name;
    running.specs.push_back(std::move(spec));
  }
  for (const auto& [app, keys] : api_keys) {
    if (std::none_of(running.specs.begin(), running.specs.end(),
                     [&](const pipeline::AppSpec& s) { return s.name == app; })) {
      return Status::InvalidArgument(flags.api_keys_file + ": keys for app " + app +
                                     ", which is not served here (apps: " + running.app_names +
                                     ")");
    }
  }
  for (const auto& spec : running.specs) {
    if (spec.events_topic != options.events_topic) {
      return Status::InvalidArgument("apps " + running.specs.front().name + " and " + spec.name +
                                     " publish events to different topics; one web tier reads "
                                     "one events topic");
    }
  }
  std::string store_url = flags.store;
  if (store_url.empty()) store_url = "sqlite:" + flags.data_dir + "/web/conversations.db";
  TP_ASSIGN_OR_RETURN(running.store, store::OpenStore(store_url));
  running.store_description =
      store_url.starts_with("sqlite:") ? store_url : running.store->engine();
  options.http.listen = flags.listen;
  options.events_subscription = flags.events_subscription;
  if (flags.events_subscription == "auto") {
    // Deleted at a clean stop; left behind by a crash, it expires after a day without us (the
    // shortest expiration Pub/Sub allows).
    options.events_subscription = InstanceSubscriptionName();
    options.replies_subscription = kRepliesSubscription;
    options.events_subscription_ttl = std::chrono::hours(24);
    options.events_subscription_retention = std::chrono::hours(1);
    options.delete_events_subscription = true;
  }
  options.cors_origin = flags.cors_origin;
  options.rate_per_second = flags.rate_limit;
  options.ui_dir = flags.ui_dir;
  options.extra_metrics = std::move(hooks.extra_metrics);
  options.dashboard_json = std::move(hooks.dashboard_json);
  TP_ASSIGN_OR_RETURN(running.service,
                      web::WebService::Start(std::move(options), running.store.get(), &queue));
  return running;
}

}  // namespace tidepool::cli
