#pragma once

// The benchmarks' live child process groups, where a signal handler can read them: a
// fixed table of lock-free atomics, because a handler may neither lock nor allocate.
// A benchmark is a program, not a library, so one process-wide table breaks no
// embedding rule.

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>

namespace bench {

inline constexpr size_t max_child_groups = 64;
inline std::atomic<pid_t> child_groups[max_child_groups];

/// Records a child's process group (a table beyond max_child_groups is never
/// reached here: at most a few nodes; the group is still killed by its owner).
inline void add_child_group(pid_t pgid) {
  for (auto& slot : child_groups) {
    pid_t expected = 0;
    if (slot.compare_exchange_strong(expected, pgid))
      return;
  }
}

inline void remove_child_group(pid_t pgid) {
  for (auto& slot : child_groups) {
    pid_t expected = pgid;
    if (slot.compare_exchange_strong(expected, 0))
      return;
  }
}

/// SIGKILLs every recorded group. Async-signal-safe.
inline void kill_child_groups() {
  for (auto& slot : child_groups) {
    pid_t pgid = slot.load();
    if (pgid > 0)
      ::kill(-pgid, SIGKILL);
  }
}

} // namespace bench
