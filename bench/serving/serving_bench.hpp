// Shared pieces of bench_serving: its options, its failure type, and the failover
// figures (failover.cpp), which run digits_serving, serving_loadgen and nginx as
// child processes.

#pragma once

#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "report.hpp"

namespace serving_bench {

using clock_type = std::chrono::steady_clock;

/// A failure of the benchmark itself (never crosses a message).
struct bench_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Seconds from `from` to `to`.
inline double seconds_between(clock_type::time_point from, clock_type::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

/// The command line, resolved (quick mode's values applied).
struct options {
  bool quick = false;
  /// One group of figures ("latency", "throughput", "failover"); empty: all.
  std::string only;
  /// Latency: measured rounds (each side once per round) and requests per side per round.
  size_t latency_rounds = 16;
  size_t per_round = 200;
  /// Throughput: rounds, and the measured seconds of each side per round.
  size_t throughput_rounds = 3;
  double throughput_seconds = 1.0;
  /// Failover: rounds (a fresh deployment of each side per round) and the load's rate.
  size_t failover_rounds = 5;
  double rate = 500;

  bool runs(const std::string& group) const { return only.empty() || only == group; }

  void make_quick() {
    quick = true;
    latency_rounds = 4;
    per_round = 100;
    throughput_rounds = 1;
    throughput_seconds = 0.5;
    failover_rounds = 1;
  }
};

/// Makes every child process die with the bench: SIGINT, SIGTERM and SIGHUP kill the
/// live children's process groups before the bench exits. Call once, first in main().
void init_child_handling();

/// The failover figures: understudy (one digits_serving, 2 replicas + 1 standby, a
/// replica killed mid-window) against nginx in front of two digits_serving processes
/// (one SIGKILLed mid-window), both under serving_loadgen at `opts.rate`. Appends its
/// figures to `figs`, or a note where a program is missing.
void bench_failover(const options& opts, std::vector<bench::figure>& figs);

} // namespace serving_bench
