#include "queue/queue_env.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>

namespace tidepool::queue {
namespace {

constexpr char kNatsUrl[] = "TIDEPOOL_NATS_URL";
constexpr char kNatsReplicas[] = "TIDEPOOL_NATS_REPLICAS";
constexpr char kNatsPrefix[] = "TIDEPOOL_NATS_PREFIX";
constexpr char kEmulatorHost[] = "PUBSUB_EMULATOR_HOST";
constexpr char kPubsubEndpoint[] = "TIDEPOOL_PUBSUB_ENDPOINT";
constexpr char kPubsubCaFile[] = "TIDEPOOL_PUBSUB_CA_FILE";
constexpr char kGoogleEndpoint[] = "pubsub.googleapis.com:443";

std::string Trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return std::string(s);
}

bool ValidHostPort(std::string_view s) {
  const auto colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == s.size()) return false;
  int port = 0;
  const char* first = s.data() + colon + 1;
  const char* last = s.data() + s.size();
  auto [end, ec] = std::from_chars(first, last, port);
  return ec == std::errc() && end == last && port > 0 && port < 65536;
}

}  // namespace

Status CheckNatsPrefix(const std::string& prefix) {
  const bool valid = !prefix.empty() && std::all_of(prefix.begin(), prefix.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-';
  });
  if (valid) return Status::Ok();
  return Status::InvalidArgument("'" + prefix + "' may hold only letters, digits and '-'");
}

Result<QueueOptions> QueueOptionsFromProcessEnv(const std::map<std::string, std::string>& overrides,
                                                const QueueEnvDefaults& defaults) {
  return QueueOptionsFromEnv(
      [&overrides](const char* name) -> const char* {
        auto it = overrides.find(name);
        return it != overrides.end() ? it->second.c_str() : std::getenv(name);
      },
      defaults);
}

Result<std::vector<std::string>> ParseNatsUrls(const std::string& list) {
  std::vector<std::string> urls;
  size_t start = 0;
  for (;;) {
    const size_t comma = list.find(',', start);
    std::string url = Trim(std::string_view(list).substr(
        start, comma == std::string::npos ? std::string::npos : comma - start));
    std::string_view rest = url;
    if (rest.starts_with("nats://")) {
      rest.remove_prefix(7);
    } else if (rest.starts_with("tls://")) {
      rest.remove_prefix(6);
    } else {
      return Status::InvalidArgument("NATS server \"" + url +
                                     "\" is not nats://HOST:PORT or tls://HOST:PORT");
    }
    if (const auto at = rest.rfind('@'); at != std::string_view::npos) rest.remove_prefix(at + 1);
    if (!ValidHostPort(rest)) {
      return Status::InvalidArgument("NATS server \"" + url +
                                     "\" is not nats://HOST:PORT or tls://HOST:PORT");
    }
    urls.push_back(std::move(url));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return urls;
}

Result<QueueOptions> QueueOptionsFromEnv(const std::function<const char*(const char*)>& getenv,
                                         const QueueEnvDefaults& defaults) {
  auto value = [&](const char* name) -> std::string {
    const char* v = getenv(name);
    return v == nullptr ? std::string() : Trim(v);
  };
  QueueOptions options;
  options.project = value("GOOGLE_CLOUD_PROJECT");
  const bool google_project = !options.project.empty();
  if (options.project.empty()) options.project = value("PUBSUB_PROJECT_ID");
  if (options.project.empty()) options.project = "tidepool";

  if (const std::string urls = value(kNatsUrl); !urls.empty()) {
    options.backend = "nats";
    auto parsed = ParseNatsUrls(urls);
    if (!parsed.ok()) {
      return Status::InvalidArgument(std::string(kNatsUrl) + ": " + parsed.status().message());
    }
    options.nats_servers = std::move(parsed).value();
    if (const std::string replicas = value(kNatsReplicas); !replicas.empty()) {
      int n = 0;
      auto [end, ec] = std::from_chars(replicas.data(), replicas.data() + replicas.size(), n);
      if (ec != std::errc() || end != replicas.data() + replicas.size() || n < 1 ||
          n > kMaxNatsReplicas) {
        return Status::InvalidArgument(std::string(kNatsReplicas) + ": '" + replicas +
                                       "' is not a number of replicas from 1 to 5");
      }
      options.nats_replicas = n;
    }
    if (const std::string prefix = value(kNatsPrefix); !prefix.empty()) {
      if (Status checked = CheckNatsPrefix(prefix); !checked.ok()) {
        return Status::InvalidArgument(std::string(kNatsPrefix) + ": " + checked.message());
      }
      options.nats_prefix = prefix;
    }
    return options;
  }

  options.backend = "pubsub";
  options.endpoint = value(kEmulatorHost);
  if (!options.endpoint.empty()) {
    if (!ValidHostPort(options.endpoint)) {
      return Status::InvalidArgument(std::string(kEmulatorHost) + ": '" + options.endpoint +
                                     "' is not HOST:PORT");
    }
    return options;
  }
  if (!defaults.emulator_endpoint.empty() && !google_project) {
    options.endpoint = defaults.emulator_endpoint;
    return options;
  }
  // No emulator: Google Cloud Pub/Sub (Cloud Run), over TLS with the credentials of the
  // environment (docs/deploy.md).
  if (!google_project && value("PUBSUB_PROJECT_ID").empty()) {
    return Status::InvalidArgument(
        "GOOGLE_CLOUD_PROJECT is not set: Google Cloud Pub/Sub needs the project (or set "
        "PUBSUB_EMULATOR_HOST to HOST:PORT of a tidepool broker, or TIDEPOOL_NATS_URL to the "
        "NATS servers)");
  }
  options.endpoint = value(kPubsubEndpoint);
  if (options.endpoint.empty()) options.endpoint = kGoogleEndpoint;
  options.auth = "google";
  options.tls_ca_file = value(kPubsubCaFile);
  return options;
}

Result<std::map<std::string, std::string>> QueueEnvOf(const QueueOptions& options) {
  std::map<std::string, std::string> env;
  env["GOOGLE_CLOUD_PROJECT"] = options.project;
  env["PUBSUB_PROJECT_ID"] = options.project;
  if (options.backend == "nats") {
    std::string urls;
    for (const auto& url : options.nats_servers) urls += (urls.empty() ? "" : ",") + url;
    env[kNatsUrl] = urls;
    env[kNatsReplicas] = std::to_string(options.nats_replicas);
    env[kNatsPrefix] = options.nats_prefix;
    env[kEmulatorHost] = "";
    return env;
  }
  if (options.backend == "pubsub") {
    env[kNatsUrl] = "";
    if (options.auth == "google") {
      env[kEmulatorHost] = "";
      env[kPubsubEndpoint] = options.endpoint;
      env[kPubsubCaFile] = options.tls_ca_file;
    } else {
      env[kEmulatorHost] = options.endpoint;
    }
    return env;
  }
  return Status::InvalidArgument("a queue of backend \"" + options.backend +
                                 "\" cannot be handed to another process");
}

std::string DescribeQueue(const QueueOptions& options) {
  if (options.backend == "nats") {
    std::string urls;
    for (const auto& url : options.nats_servers) urls += (urls.empty() ? "" : ",") + url;
    return "nats " + urls + " (" + std::to_string(options.nats_replicas) +
           (options.nats_replicas == 1 ? " replica)" : " replicas)");
  }
  if (options.backend == "pubsub") {
    return "pubsub " + options.endpoint + (options.auth == "google" ? " (TLS, Google auth)" : "");
  }
  return options.backend;
}

}  // namespace tidepool::queue
