#pragma once
// `understudy simulate`: seeded simulations of a cluster's coordination
// (understudy/cluster/simulation.hpp), many seeds at a time, each failure with
// the command that replays it.

#include <cstdint>
#include <iosfwd>
#include <string>

namespace CLI {
class App;
} // namespace CLI

namespace understudy::cli {

/// Options of `understudy simulate`.
struct simulate_options {
  /// Run seeds first .. first + seeds - 1; or only `seed` when it is set.
  uint64_t seeds = 100;
  uint64_t first = 1;
  uint64_t seed = 0;
  size_t nodes = 3;
  size_t monitors = 4;
  /// Simulated seconds per run.
  double seconds = 60;
  /// Write the (one) run's trace here.
  std::string trace;
  /// Shrink a failing run's faults to those it needs.
  bool shrink = false;
  /// Without faults (a baseline).
  bool no_faults = false;
  bool no_training = false;
};

/// Adds the `simulate` subcommand to `app`.
CLI::App* add_simulate_command(CLI::App& app, simulate_options& opts);

/// Runs it: 0 when every run passed, 1 when one broke an invariant, 2 for usage errors.
int run_simulate(const simulate_options& opts, std::ostream& out, std::ostream& err);

} // namespace understudy::cli
