// Which queue a process reaches, as its environment names it. This is the contract between
// `tidepool pool` and the worker instances it starts, and how `tidepool web` and
// `tidepool pool` find their queue too (docs/workers.md, docs/deploy.md):
//
//   TIDEPOOL_NATS_URL        "nats://HOST:PORT[,nats://HOST:PORT...]": NATS JetStream (the
//                            client reconnects to any of the servers). Set and not empty, it
//                            wins over every Pub/Sub variable below.
//   TIDEPOOL_NATS_REPLICAS   replicas of each stream and consumer (default 1; 3 in a cluster)
//   TIDEPOOL_NATS_PREFIX     prefix of every stream, subject and bucket (default tidepool)
//   PUBSUB_EMULATOR_HOST     "HOST:PORT": a Pub/Sub API in plaintext (a tidepool broker, the
//                            emulator)
//   GOOGLE_CLOUD_PROJECT     the project (else PUBSUB_PROJECT_ID, else "tidepool")
//   TIDEPOOL_PUBSUB_ENDPOINT Google Cloud Pub/Sub's address when PUBSUB_EMULATOR_HOST is unset
//                            (default pubsub.googleapis.com:443; TLS, Application Default
//                            Credentials)
//   TIDEPOOL_PUBSUB_CA_FILE  PEM roots to trust for it instead of the system's
#pragma once

#include <functional>
#include <map>
#include <string>

#include "common/status.h"
#include "queue/queue.h"

namespace tidepool::queue {

// What to do when neither TIDEPOOL_NATS_URL nor PUBSUB_EMULATOR_HOST is set.
struct QueueEnvDefaults {
  // Non-empty: this plaintext Pub/Sub endpoint ("HOST:PORT"), unless GOOGLE_CLOUD_PROJECT is set
  // (then Google Cloud Pub/Sub). Empty: Google Cloud Pub/Sub, which needs the project.
  std::string emulator_endpoint{};
};

// `getenv` returns nullptr for an unset variable (tests pass a map, processes std::getenv).
// Errors are INVALID_ARGUMENT and name the variable and what it should be.
Result<QueueOptions> QueueOptionsFromEnv(const std::function<const char*(const char*)>& getenv,
                                         const QueueEnvDefaults& defaults = {});

// Parses "nats://a:4222,nats://b:4222" (a comma-separated list; spaces around commas are
// allowed). Every entry must be nats://HOST:PORT or tls://HOST:PORT.
Result<std::vector<std::string>> ParseNatsUrls(const std::string& list);

// The variables that make QueueOptionsFromEnv in a child process reach the queue `options`
// describes (backends "pubsub" and "nats"; an "embedded" queue cannot be shared). Variables of
// the other backend are set empty so that the parent's environment cannot override the choice.
Result<std::map<std::string, std::string>> QueueEnvOf(const QueueOptions& options);

// The variables of the process, with `overrides` (a command's flags) in front of them.
Result<QueueOptions> QueueOptionsFromProcessEnv(const std::map<std::string, std::string>& overrides,
                                                const QueueEnvDefaults& defaults);

// A prefix of NATS names: letters, digits and '-' (INVALID_ARGUMENT saying so, without a name
// of the setting: callers put theirs in front).
Status CheckNatsPrefix(const std::string& prefix);
constexpr int kMaxNatsReplicas = 5;  // JetStream replicates a stream on at most 5 servers

// One line for logs: "nats nats://a:4222,nats://b:4222 (3 replicas)", "pubsub 127.0.0.1:8085".
std::string DescribeQueue(const QueueOptions& options);

}  // namespace tidepool::queue
