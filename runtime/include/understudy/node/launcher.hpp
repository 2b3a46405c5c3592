#pragma once
// The local launcher: what `understudy launch FILE` does. It starts every node
// of a node config file on this machine as a process of its own, prints their
// output line by line prefixed with the node's name, applies chaos (SIGKILL a
// node, or SIGSTOP it for a while, once the job reaches a step), and stops
// every node when the job ends or on SIGINT/SIGTERM. A node dies with the
// launcher (PR_SET_PDEATHSIG), so none is left behind, frozen or running. A
// cluster of several nodes whose file names no etcd gets a local one for the
// run (local_etcd.hpp), its URL passed to every node.
//
// Threads: run_launch runs on the calling thread (one poll loop) and installs
// handlers for SIGINT and SIGTERM for the process. Errors: bad options are
// reported on the error stream and as exit_code::bad_config.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "understudy/node/node.hpp"

namespace understudy {

/// What run_launch starts and does to the nodes.
struct launch_options {
  std::string file;
  /// "NODE@STEP": SIGKILL the node's process once the job reaches STEP.
  std::vector<std::string> kills;
  /// "NODE@STEP:DURATION": SIGSTOP it at STEP, SIGCONT after DURATION (e.g. 3s).
  std::vector<std::string> freezes;
  /// "NODE@STEP": start the node's process again at STEP if it has ended (e.g.
  /// after a --kill): the same name, config and state directory, as an
  /// operator restarting a lost machine; it joins as a new epoch.
  std::vector<std::string> restarts;
  /// Start the job over: remove every node's state directory first (each must
  /// hold a node's store, data.mdb, or a launch's node.log, or not exist;
  /// anything else is refused).
  bool fresh = false;
  /// Where to write the run as an HTML page (run_report) when it ends; none if empty.
  std::string report;
  /// Passed to every node (`understudy node --log-level`).
  std::string log_level = "info";
  /// The command line (program first) that runs node `name` of `file`, e.g.
  /// {this_program(argv[0]), "node", file, "--name", name}. When the launcher
  /// starts a local etcd it appends "--coordination URL".
  std::function<std::vector<std::string>(const std::string& name)> node_command;
  /// Starts the error lines, e.g. "understudy launch".
  std::string label = "understudy launch";
  /// To load the config as the nodes do and to learn the leader candidates.
  node_components components;
};

/// One planned act of chaos, parsed from --kill or --freeze.
struct chaos_action {
  std::string node;
  uint64_t step = 0;
  /// SIGSTOP for `duration`, then SIGCONT; otherwise SIGKILL.
  bool freeze = false;
  /// Start the node again (if it has ended) instead.
  bool restart = false;
  std::chrono::milliseconds duration{0};
};

/// Parses "NODE@STEP" (`freeze` false) or "NODE@STEP:DURATION" (DURATION as
/// 500ms or 3s, at most a year). `config_errc::invalid_value` naming the
/// offending text if `text` is no such spec, or its step overflows 64 bits or
/// its duration is longer.
caf::expected<chaos_action> parse_chaos(const std::string& text, bool freeze);

/// The path of the running program (/proc/self/exe), or `argv0` where it
/// cannot be read: what the nodes run.
std::string this_program(const char* argv0);

/// Starts every node of the file with `opts.node_command` (a file of more
/// than one node without [cluster.coordination] endpoints: after starting a
/// local etcd in a scratch directory, logged as "launch: coordination: local
/// etcd at URL", which it stops and removes at the end), prefixes their
/// output with the node's name ("[n1] ..."), applies the kills, freezes and restarts when
/// a node's "progress: step N/M" line reaches their step, and stops every node
/// (SIGTERM, SIGKILL after 10 s) when a node prints its "final:" line, a node
/// exits with bad_config or job_failed, no leader candidate is left, or on
/// SIGINT/SIGTERM. Returns the exit status of the node that ended the job
/// (exit_code::failure if none did), or exit_code::bad_config for bad options.
int run_launch(const launch_options& opts, node_output& out);

} // namespace understudy
