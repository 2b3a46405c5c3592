#pragma once
// `understudy node FILE --name N` runs one node of a cluster; `understudy
// launch FILE` runs every node of FILE on this machine, each as a process.

#include <string>
#include <vector>

namespace CLI {
class App;
} // namespace CLI

namespace understudy::cli {

/// Options of `understudy node`.
struct node_options {
  std::string file;
  std::string name;
};

/// Adds the `node` subcommand to `app`.
CLI::App* add_node_command(CLI::App& app, node_options& opts);

/// Runs the node until its job ends (the leader), a peer or a signal stops
/// it, or the cluster fences it. Exit codes: 0 done, 2 bad config or start
/// failure, 3 fenced (declared dead by the cluster), 4 the job failed.
int run_node(const node_options& opts, const char* argv0);

/// Options of `understudy status`.
struct status_options {
  std::string file;
  /// The node whose certificate the query presents (clusters with TLS).
  std::string as;
};

/// Adds the `status` subcommand to `app`.
CLI::App* add_status_command(CLI::App& app, status_options& opts);

/// Prints every node's status report (health of its peers, and on the leader
/// the supervision tree with placement, incarnations, restarts and recent
/// events). Exit codes: 0, 1 no node reachable, 2 bad config.
int run_status(const status_options& opts);

/// Options of `understudy launch`.
struct launch_options {
  std::string file;
  /// "NODE@STEP": SIGKILL the node's process once the job reaches STEP.
  std::vector<std::string> kills;
  /// "NODE@STEP:DURATION": SIGSTOP it at STEP, SIGCONT after DURATION (e.g. 3s).
  std::vector<std::string> freezes;
};

/// Adds the `launch` subcommand to `app`.
CLI::App* add_launch_command(CLI::App& app, launch_options& opts);

/// Starts every node of the file as `argv0 node FILE --name N`, prefixes their
/// output with the node's name, applies the kills and freezes, and stops every
/// node when the job ends or on SIGINT/SIGTERM. Returns the leader's exit code.
int run_launch(const launch_options& opts, const char* argv0);

} // namespace understudy::cli
