#include "node.hpp"

#include <iostream>

#include <CLI/CLI.hpp>

#include "understudy/actors/training_component.hpp"
#include "understudy/serving/serving_component.hpp"

namespace understudy::cli {

CLI::App* add_node_command(CLI::App& app, node_options& opts) {
  auto* sub =
      app.add_subcommand("node", "run one node of a cluster (for real multi-host clusters)");
  sub->add_option("FILE", opts.file, "the cluster's node config file (TOML)")->required();
  auto* name = sub->add_option("--name", opts.name, "which [[node]] of FILE this is");
  auto* from = sub->add_option(
      "--name-from", opts.name_from,
      "hostname (a StatefulSet pod's ordinal) or env:VAR (e.g. env:SLURM_PROCID): the [[node]] "
      "whose position in FILE, from 0, is that ordinal");
  name->excludes(from);
  sub->callback([name, from] {
    if (name->count() == 0 && from->count() == 0)
      throw CLI::RequiredError("--name or --name-from");
  });
  sub->add_option("--log-level", opts.log_level,
                  "the lowest level of the supervision events logged: debug, info, warn, error "
                  "or off")
      ->check(CLI::IsMember({"debug", "info", "warn", "error", "off"}));
  sub->add_option("--coordination", opts.coordination_endpoints,
                  "URL[,URL...]: etcd's client URLs, replacing [cluster.coordination] endpoints")
      ->delimiter(',');
  return sub;
}

int run_node(node_options opts) {
  opts.components = {actors::training_component(), serving::serving_component()};
  node_output out{std::cout, std::cerr};
  return to_int(understudy::run_node(opts, out));
}

CLI::App* add_status_command(CLI::App& app, status_options& opts) {
  auto* sub =
      app.add_subcommand("status", "print every node's health and the live supervision tree");
  sub->add_option("FILE", opts.file, "the cluster's node config file (TOML)")->required();
  sub->add_flag("--json", opts.json, "one JSON object per node and line");
  return sub;
}

int run_status(status_options opts) {
  opts.components = {actors::training_component(), serving::serving_component()};
  return to_int(understudy::run_status(opts, std::cout, std::cerr));
}

CLI::App* add_events_command(CLI::App& app, events_options& opts) {
  auto* sub = app.add_subcommand(
      "events", "merge every node's event log into one incident timeline (this machine's nodes)");
  sub->add_option("FILE", opts.file, "the cluster's node config file (TOML)")->required();
  sub->add_flag("--json", opts.json, "one JSON object per event and per incident");
  sub->add_flag("--follow", opts.follow, "keep printing events as the nodes log them");
  return sub;
}

int run_events(events_options opts) {
  opts.components = {actors::training_component(), serving::serving_component()};
  return to_int(understudy::run_events(opts, std::cout, std::cerr));
}

CLI::App* add_launch_command(CLI::App& app, launch_options& opts) {
  auto* sub = app.add_subcommand("launch", "start every node of a cluster on this machine");
  sub->add_option("FILE", opts.file, "the cluster's node config file (TOML)")->required();
  sub->add_option("--kill", opts.kills, "NODE@STEP: SIGKILL the node's process at that step");
  sub->add_option("--freeze", opts.freezes,
                  "NODE@STEP:DURATION: SIGSTOP the node at that step, SIGCONT after DURATION");
  sub->add_option("--log-level", opts.log_level,
                  "every node's lowest level of supervision events logged: debug, info, warn, "
                  "error or off")
      ->check(CLI::IsMember({"debug", "info", "warn", "error", "off"}));
  sub->add_option("--report", opts.report,
                  "FILE.html: write the run as one page (loss and accuracy curves with each "
                  "fault and recovery marked, goodput, incidents) when it ends");
  sub->add_flag("--fresh", opts.fresh,
                "start the job over: remove every node's state directory first");
  sub->add_option("--restart", opts.restarts,
                  "NODE@STEP: start the node's process again at that step if it has ended "
                  "(after --kill)");
  return sub;
}

int run_launch(launch_options opts, const char* argv0) {
  // The nodes run this very program.
  opts.node_command = [exe = this_program(argv0), file = opts.file,
                       level = opts.log_level](const std::string& name) {
    return std::vector<std::string>{exe, "node", file, "--name", name, "--log-level", level};
  };
  opts.components = {actors::training_component(), serving::serving_component()};
  node_output out{std::cout, std::cerr};
  return understudy::run_launch(opts, out);
}

} // namespace understudy::cli
