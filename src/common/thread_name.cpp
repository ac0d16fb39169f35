#include "common/thread_name.h"

#include <pthread.h>

namespace tidepool {

void SetCurrentThreadName(std::string_view name) {
  char buffer[16] = {};
  name.copy(buffer, sizeof buffer - 1);
  (void)::pthread_setname_np(::pthread_self(), buffer);  // best effort: a name is a label
}

std::string CurrentThreadName() {
  char buffer[16] = {};
  if (::pthread_getname_np(::pthread_self(), buffer, sizeof buffer) != 0) return "";
  return buffer;
}

}  // namespace tidepool
