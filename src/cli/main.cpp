#include <cstdio>
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
    "  up [--data-dir DIR]        Run everything on this machine (today: open and recover the\n"
    "                             storage in DIR and hold it until Ctrl-C)\n"
    "  storage inspect DIR        Show the segments, sequence range and recovery report of a log\n"
    "  storage verify DIR         Read every record of a log and check every checksum\n"
    "  version                    Print the version\n"
    "  help, --help               Show this help\n";

}  // namespace

int main(int argc, char** argv) {
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
  if (cmd == "storage") return tidepool::cli::RunStorage(args);
  std::fprintf(stderr, "tidepool: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
  return 2;
}
