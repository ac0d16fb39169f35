// Test helper: real nats-server processes with JetStream on loopback, one or a cluster of
// three, each with its own store directory under a temp dir. The binary is the Debian package's
// /usr/sbin/nats-server (or $TIDEPOOL_NATS_SERVER); a missing binary is a failure, not a skip.
//
// Thread-safety: none; use from the test's thread. The servers die with the thread that
// started them (PR_SET_PDEATHSIG), so a crashed test leaves none behind.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tidepool::queue::testing {

class NatsServers {
 public:
  // Starts `nodes` servers (1: standalone JetStream; 3: a JetStream cluster) and waits until
  // JetStream answers (for a cluster: until a replicated stream can be created).
  static Result<std::unique_ptr<NatsServers>> Start(int nodes = 1);
  ~NatsServers();  // SIGKILLs whatever still runs, removes the store directories
  NatsServers(const NatsServers&) = delete;
  NatsServers& operator=(const NatsServers&) = delete;

  // "nats://127.0.0.1:PORT" of every node, killed ones included.
  std::vector<std::string> urls() const;
  int size() const { return static_cast<int>(nodes_.size()); }
  // SIGKILL: no graceful shutdown, no lame-duck mode.
  void Kill(int node);
  // Starts a killed node again on the same ports and store.
  Status Restart(int node);

 private:
  struct Node {
    int client_port = 0;
    int cluster_port = 0;
    std::string store_dir;
    pid_t pid = -1;
  };
  NatsServers() = default;
  Status Spawn(int node);
  Status WaitReady();

  std::string root_;
  std::vector<Node> nodes_;
};

}  // namespace tidepool::queue::testing
