#pragma once
// `understudy node FILE --name N` runs one node of a cluster, `understudy
// status FILE` asks every node for its status, `understudy launch FILE` runs
// every node of FILE on this machine, each as a process. The node library
// (understudy/node/) does the work, with the training job as its component;
// these parse the options and call it.

#include "understudy/node/event_journal.hpp"
#include "understudy/node/launcher.hpp"
#include "understudy/node/node.hpp"

namespace CLI {
class App;
} // namespace CLI

namespace understudy::cli {

/// Adds the `node` subcommand to `app`.
CLI::App* add_node_command(CLI::App& app, node_options& opts);

/// Runs the node (understudy::run_node with the training job); its exit code
/// (understudy::exit_code): 0 done, 2 bad config or start failure, 3 fenced,
/// 4 the job failed.
int run_node(node_options opts);

/// Adds the `events` subcommand to `app`.
CLI::App* add_events_command(CLI::App& app, events_options& opts);

/// Prints the cluster's incident timeline (understudy::run_events): 0, 1 when
/// no node has an event log, 2 for a bad config.
int run_events(events_options opts);

/// Adds the `status` subcommand to `app`.
CLI::App* add_status_command(CLI::App& app, status_options& opts);

/// Prints every node's status report (understudy::run_status). Exit codes:
/// 0, 1 no node reachable, 2 bad config.
int run_status(status_options opts);

/// Adds the `launch` subcommand to `app`.
CLI::App* add_launch_command(CLI::App& app, launch_options& opts);

/// Starts every node of the file as `argv0 node FILE --name N`
/// (understudy::run_launch). Returns the leader's exit code.
int run_launch(launch_options opts, const char* argv0);

} // namespace understudy::cli
