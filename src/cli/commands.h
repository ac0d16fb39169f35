// Subcommands of the tidepool binary. Each takes the arguments after its name and returns the
// process exit code.
#pragma once

#include <string>
#include <vector>

namespace tidepool::cli {

using Args = std::vector<std::string>;

int RunUp(const Args& args);
int RunBroker(const Args& args);
int RunStorage(const Args& args);
int RunPools(const Args& args);
int RunPool(const Args& args);
int RunLlmSim(const Args& args);
int RunWorker(const Args& args);
int RunWeb(const Args& args);

}  // namespace tidepool::cli
