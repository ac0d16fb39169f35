// CPU lists as Linux writes them ("0-3,6"): parsing, the CPUs this process may run on, and
// pinning a thread to a set of them; and a thread's CPU priority. Pools and `tidepool up` use
// them to keep inference off the CPUs of the web tier, or below its priority (DESIGN.md,
// promise 3).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace tidepool {

// "1", "0-3", "0,2-3": sorted, without duplicates. INVALID_ARGUMENT (naming the list) for
// anything else, for a range that runs backwards and for a CPU number of 1024 or more.
Result<std::vector<int>> ParseCpuList(std::string_view list);

// The inverse of ParseCpuList, with ranges where CPUs are consecutive: {0,1,2,5} -> "0-2,5".
std::string FormatCpuList(const std::vector<int>& cpus);

// The CPUs the calling thread may run on (its affinity mask), in order.
std::vector<int> AllowedCpus();

// Pins the calling thread (and the threads it starts later, which inherit the mask) to `cpus`.
// INVALID_ARGUMENT when none of them is online and allowed.
Status PinCurrentThread(const std::vector<int>& cpus);

// The calling thread's niceness (Linux keeps one per thread).
int CurrentThreadNiceness();

// Lowers the calling thread's CPU priority to niceness `nice` (0-19); the threads it starts
// later inherit it. Never raises it: a thread already at `nice` or above is left alone.
// INVALID_ARGUMENT outside 0-19, or naming the error when the kernel refuses.
Status LowerCurrentThreadPriority(int nice);

}  // namespace tidepool
