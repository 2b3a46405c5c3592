// Shared pieces of bench_cluster: its options, node processes that never outlive the
// bench, a watchdog that ends a phase that hangs, scratch directories and free ports.

#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "report.hpp"

namespace cluster_bench {

using clock_type = std::chrono::steady_clock;

/// Milliseconds from `from` to `to`.
inline double ms_between(clock_type::time_point from, clock_type::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

/// The command line, resolved: quick mode's defaults applied where no value was given.
struct options {
  bool quick = false;
  /// Repetitions of each detection figure (a fresh peer process each).
  size_t runs = 10;
  /// `understudy launch` runs of the failover figure.
  size_t failover_runs = 5;
  /// Length of the loaded run that counts false suspicions.
  size_t load_seconds = 60;
  /// Rounds of the throughput comparison (each side once per round, rotated).
  size_t rounds = 5;
  /// Figure groups to run ("kill,stop,load,failover,throughput"); empty: all.
  std::string only;

  /// Whether group `name` runs.
  bool wants(const std::string& name) const;
};

// -- child processes -----------------------------------------------------------------------

/// A child process in a process group of its own, so that it and everything it starts
/// (the nodes of `understudy launch`) can be killed at once. Every live group is listed
/// where the bench's signal handler and watchdog find it, so no exit path leaves a node
/// behind; `parent_death_signal` reaches the child if the bench itself is SIGKILLed.
/// Owned by one thread.
class child_process {
public:
  /// Starts `argv` (argv[0] a path); its stdout and stderr go to `log_file` (created or
  /// truncated) or, when empty, to a pipe read through `output_fd`. Null on failure,
  /// with the reason in `error`.
  static std::unique_ptr<child_process> spawn(const std::vector<std::string>& argv,
                                              const std::string& log_file, int parent_death_signal,
                                              std::string& error);

  /// Kills the whole group (SIGKILL) and reaps the child.
  ~child_process();
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  pid_t pid() const noexcept { return pid_; }

  /// The read end of the output pipe, or -1 when the output goes to a file.
  int output_fd() const noexcept { return out_fd_; }

  /// Sends `sig` to the child only (not its group).
  void signal(int sig) const;

  /// Waits up to `timeout` for the child to exit; its wait status, or none.
  std::optional<int> wait_for(std::chrono::milliseconds timeout);

  /// SIGKILLs every process of the group, reaps the child and waits (up to 2 s) until
  /// the group is empty.
  void kill_group();

private:
  child_process() = default;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  bool reaped_ = false;
};

/// Prepares the bench for child processes: SIGINT, SIGTERM and SIGHUP kill every live
/// child group before the bench exits, and the bench becomes the subreaper of its
/// descendants, so that it reaps the nodes of a killed `understudy launch` itself.
/// Call once, first thing in main().
void init_child_handling();

/// Ends a phase that runs past its limit: prints which one, kills every child group
/// and exits the process with status 1, so that `make bench` never hangs.
class watchdog {
public:
  watchdog();
  ~watchdog();
  watchdog(const watchdog&) = delete;
  watchdog& operator=(const watchdog&) = delete;

  /// Starts the clock for `phase`: it must end (disarm or the next arm) within `limit`.
  void arm(std::string phase, std::chrono::seconds limit);
  void disarm();

private:
  void run();
  std::mutex mtx_;
  std::condition_variable cv_;
  std::string phase_;
  std::optional<clock_type::time_point> deadline_;
  bool stop_ = false;
  std::thread thread_;
};

// -- scratch space ---------------------------------------------------------------------------

/// A fresh directory under the system's temporary directory, removed with everything in
/// it on destruction.
struct scratch_dir {
  explicit scratch_dir(const std::string& name);
  ~scratch_dir();
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
  std::string path;
};

/// `n` distinct TCP ports on 127.0.0.1 that nothing listens on now (the kernel picks
/// them, so parallel runs do not collide); empty on failure.
std::vector<uint16_t> free_ports(size_t n);

/// Writes `text` to `path`; false on failure.
bool write_file(const std::string& path, const std::string& text);

/// The last `max_lines` lines of the file at `path` (for error messages).
std::string tail_of(const std::string& path, size_t max_lines = 15);

// -- the figure groups -------------------------------------------------------------------------

/// What a group measured: its figures, or why it could not measure them.
struct group_result {
  std::vector<bench::figure> figures;
  std::string error;
};

/// Figures 1 and 2: detection of a SIGKILLed and of a SIGSTOPped peer process by an
/// observer node in this process. `kill` and `stop` select which.
group_result measure_detection(const options& opts, watchdog& dog, bool kill, bool stop);

/// A leader whose etcd stops answering: how long it keeps acting (must be less
/// than its lease).
group_result measure_partitioned_leader(const options& opts, watchdog& dog);

/// Figure 3: suspicions and deaths declared while both cores are loaded.
group_result measure_false_suspicions(const options& opts, watchdog& dog);

/// etcd's calls per training step while a launched job runs without faults.
group_result measure_steady_etcd(const options& opts, watchdog& dog);

/// Figure 4: node death to all its actors serving elsewhere, from `understudy launch`.
group_result measure_failover(const options& opts, watchdog& dog);

/// Figure 5: cross-node message throughput, understudy plain and TLS vs raw CAF.
group_result measure_throughput(const options& opts, watchdog& dog);

} // namespace cluster_bench
