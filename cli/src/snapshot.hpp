#pragma once
// `understudy snapshot export|import|list|verify|prune`: portable snapshots of
// a training job's committed steps (understudy/state/snapshot.hpp).

#include <cstdint>
#include <iosfwd>
#include <string>

namespace CLI {
class App;
} // namespace CLI

namespace understudy::cli {

/// Options of `understudy snapshot`.
struct snapshot_options {
  /// export: STATE_DIR SNAPSHOT_DIR; import: SNAPSHOT_DIR STATE_DIR; the
  /// others: SNAPSHOT_DIR.
  std::string first;
  std::string second;
  /// import: the node config file of a (stopped) cluster to fill instead of
  /// a state directory.
  std::string cluster;
  /// The job's path in the state directory.
  std::string job = "/digits_mlp";
  /// export: the committed step (0: the newest); import, verify: the
  /// snapshot's step (0: the newest, verify: all).
  uint64_t step = 0;
  /// prune: keep the newest this many and every one whose step is a multiple
  /// of keep_every.
  uint64_t keep_last = 0;
  uint64_t keep_every = 0;
  bool json = false;
  /// Which subcommand ran: "export", "import", "list", "verify", "prune".
  std::string action;
};

/// Adds the `snapshot` subcommand (with its own subcommands) to `app`.
CLI::App* add_snapshot_command(CLI::App& app, snapshot_options& opts);

/// Runs it: output to `out`, problems to `err`. Returns an exit_code (1: a
/// snapshot or record is damaged, 2: usage, another job, I/O).
int run_snapshot(const snapshot_options& opts, std::ostream& out, std::ostream& err);

/// Options of `understudy drill`.
struct drill_options {
  /// The node config file with the [job] and its [snapshots].
  std::string file;
  /// Where the restore goes (emptied first; default: a directory beside the
  /// snapshots' named drill-scratch).
  std::string scratch;
};

/// Adds the `drill` subcommand to `app`.
CLI::App* add_drill_command(CLI::App& app, drill_options& opts);

/// Runs a restore drill (actors::run_drill): 0 when the replay reproduced
/// the shipped step bit for bit, 1 when it did not or a file is damaged, 2
/// for usage errors and failures to run.
int run_drill(const drill_options& opts, std::ostream& out, std::ostream& err);

/// Options of `understudy promote`.
struct promote_options {
  /// The second site's node config file (its nodes, the same [job], the
  /// [snapshots] directory the primary shipped to).
  std::string file;
  /// The primary's node config file: each of its nodes must refuse
  /// connections (the site is down) before the promotion.
  std::string primary;
  /// Promote without checking the primary.
  bool force = false;
};

/// Adds the `promote` subcommand to `app`.
CLI::App* add_promote_command(CLI::App& app, promote_options& opts);

/// Runs it (actors::promote_site once the primary is found down): 0 when
/// promoted, 1 when no snapshot verifies, 2 otherwise (a primary still
/// reachable, another job, usage).
int run_promote(const promote_options& opts, std::ostream& out, std::ostream& err);

/// Options of `understudy standby`.
struct standby_cli_options {
  /// The second site's node config file ([snapshots] standby = true).
  std::string file;
  /// The primary's node config file (default: [snapshots] primary).
  std::string primary;
  /// HOST:PORT for the standby's metrics endpoint; none if empty.
  std::string metrics;
  /// Exit once promoted instead of launching the site.
  bool no_launch = false;
  /// Set by run_standby when the site was promoted.
  bool promoted = false;
};

/// Adds the `standby` subcommand to `app`.
CLI::App* add_standby_command(CLI::App& app, standby_cli_options& opts);

/// Runs it (actors::run_standby): 0 when promoted (opts.promoted set; the
/// caller launches the site) or stopped, 2 for usage errors and a directory
/// promoted to another cluster.
int run_standby(standby_cli_options& opts, std::ostream& out, std::ostream& err);

} // namespace understudy::cli
