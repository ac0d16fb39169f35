#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace {

constexpr char kUsage[] =
    "tidepool: pull-based workloads in one binary (durable Pub/Sub broker, worker pools, web "
    "tier)\n"
    "\n"
    "Usage: tidepool <command> [options]\n"
    "\n"
    "Commands:\n"
    "  up [--config FILE] [--data-dir DIR] [--listen HOST:PORT]\n"
    "                             Run everything on this machine: the broker (as `broker`)\n"
    "                             and the worker pools of FILE, operated with `tidepool pools`\n"
    "                             on the admin address\n"
    "  broker [--data-dir DIR] [--listen HOST:PORT] [--admin-listen HOST:PORT]\n"
    "                             Serve the Pub/Sub v1 API (default 127.0.0.1:8085) on durable\n"
    "                             storage in DIR (default ./tidepool-data); backlog, metrics and\n"
    "                             health on the admin address (default 127.0.0.1:8086);\n"
    "                             --stream-lifetime SECONDS: StreamingPull streams are ended\n"
    "                             (UNAVAILABLE) after this long and clients reopen (default "
    "1800);\n"
    "                             --log-reserve BYTES: zeros kept ahead of each topic log's end\n"
    "                             (default 256Ki, 0 = off)\n"
    "  pool --config FILE [--endpoint HOST:PORT] ...\n"
    "                             Run worker pools against a remote broker (tidepool pool help)\n"
    "  pools list|describe|deploy|scale|update-split|rollback|logs ...\n"
    "                             Operate worker pools through the admin API (tidepool pools\n"
    "                             help)\n"
    "  llm-sim [--listen HOST:PORT] [--ttft-ms N] [--tokens-per-second N] ...\n"
    "                             Serve a SIMULATED OpenAI-compatible Chat Completions API\n"
    "                             (default 127.0.0.1:8090) for development, tests and load\n"
    "                             (tidepool llm-sim --help)\n"
    "  web [--listen HOST:PORT] [--broker HOST:PORT] [--store URL] ...\n"
    "                             Serve the chat API, its event streams and the UI (default\n"
    "                             127.0.0.1:8080; tidepool web --help)\n"
    "  worker --app FILE [--llm-base-url URL] ...\n"
    "                             Run an app's LLM pipeline on its request subscription (the\n"
    "                             command a pool runs; tidepool worker --help)\n"
    "  storage inspect DIR        Show the segments, sequence range and recovery report of a log\n"
    "  storage verify DIR         Read every record of a log and check every checksum\n"
    "  version                    Print the version\n"
    "  help, --help               Show this help\n";

int Dispatch(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "version" || cmd == "--version") {
    std::printf("tidepool %s\n", TIDEPOOL_VERSION);
    return 0;
  }
  if (cmd == "up") return tidepool::cli::RunUp(args);
  if (cmd == "broker") return tidepool::cli::RunBroker(args);
  if (cmd == "storage") return tidepool::cli::RunStorage(args);
  if (cmd == "pools") return tidepool::cli::RunPools(args);
  if (cmd == "pool") return tidepool::cli::RunPool(args);
  if (cmd == "llm-sim") return tidepool::cli::RunLlmSim(args);
  if (cmd == "worker") return tidepool::cli::RunWorker(args);
  if (cmd == "web") return tidepool::cli::RunWeb(args);
  std::fprintf(stderr, "tidepool: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const int code = Dispatch(argc, argv);
  // Every command has shut down what it started and made its state durable by now. Skipping
  // static destructors spares a second or more of gRPC's library teardown at exit.
  std::fflush(nullptr);
  std::_Exit(code);
}
