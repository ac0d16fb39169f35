#include "common/cpu_list.h"

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace tidepool {
namespace {

constexpr int kMaxCpu = CPU_SETSIZE;  // 1024 with glibc

Result<int> ParseCpu(std::string_view text, std::string_view list) {
  int cpu = -1;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, cpu);
  if (text.empty() || ec != std::errc() || ptr != end || cpu < 0) {
    return Status::InvalidArgument("CPU list \"" + std::string(list) +
                                   "\": expected CPU numbers and ranges like 0-3,6");
  }
  if (cpu >= kMaxCpu) {
    return Status::InvalidArgument("CPU list \"" + std::string(list) + "\": CPU " +
                                   std::to_string(cpu) + " is beyond " +
                                   std::to_string(kMaxCpu - 1));
  }
  return cpu;
}

}  // namespace

Result<std::vector<int>> ParseCpuList(std::string_view list) {
  std::vector<int> cpus;
  size_t start = 0;
  for (;;) {
    const size_t comma = list.find(',', start);
    const std::string_view item = list.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    const size_t dash = item.find('-');
    if (dash == std::string_view::npos) {
      TP_ASSIGN_OR_RETURN(int cpu, ParseCpu(item, list));
      cpus.push_back(cpu);
    } else {
      TP_ASSIGN_OR_RETURN(int first, ParseCpu(item.substr(0, dash), list));
      TP_ASSIGN_OR_RETURN(int last, ParseCpu(item.substr(dash + 1), list));
      if (last < first) {
        return Status::InvalidArgument("CPU list \"" + std::string(list) + "\": range " +
                                       std::string(item) + " runs backwards");
      }
      for (int cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::string FormatCpuList(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus[i]);
    if (j > i) out += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return out;
}

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < kMaxCpu; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

Status PinCurrentThread(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) {
    if (cpu >= 0 && cpu < kMaxCpu) CPU_SET(cpu, &set);
  }
  if (::sched_setaffinity(0, sizeof(set), &set) != 0) {
    const int error = errno;
    return Status::InvalidArgument("cannot run on CPUs " + FormatCpuList(cpus) + ": " +
                                   std::strerror(error));
  }
  return Status::Ok();
}

int CurrentThreadNiceness() {
  errno = 0;  // -1 is a niceness as well as the error return
  const int nice = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
  return errno == 0 ? nice : 0;
}

Status LowerCurrentThreadPriority(int nice) {
  if (nice < 0 || nice > 19) {
    return Status::InvalidArgument("niceness " + std::to_string(nice) + " is not in 0-19");
  }
  if (CurrentThreadNiceness() >= nice) return Status::Ok();
  // PRIO_PROCESS with a thread id sets that one thread on Linux.
  if (::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), nice) != 0) {
    const int error = errno;
    return Status::InvalidArgument("cannot run at niceness " + std::to_string(nice) + ": " +
                                   std::strerror(error));
  }
  return Status::Ok();
}

}  // namespace tidepool
