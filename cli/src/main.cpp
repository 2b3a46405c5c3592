// The `understudy` command. One subcommand per task: `inspect`, `certs`, `node`,
// `launch`, `status`, `events`, `snapshot`, `drill`, `promote`, `standby`, `simulate`. Exit codes:
// 0 success, 1 the task found a problem (e.g. a corrupt record), 2 usage errors and failures to
// open or read.

#include <chrono>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "certs.hpp"
#include "inspect.hpp"
#include "node.hpp"
#include "simulate.hpp"
#include "snapshot.hpp"
#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/training_component.hpp"
#include "understudy/core/version.hpp"
#include "understudy/serving/serving_component.hpp"

int main(int argc, char** argv) {
  // A process that a node started to host an isolated actor: a worker of its
  // job, or a replica it serves (each reads the node's file as the node did).
  const understudy::node_components components{understudy::actors::training_component(),
                                               understudy::serving::serving_component()};
  if (auto status = understudy::actors::host_isolated_training_actor(components))
    return *status;
  if (auto status = understudy::serving::run_replica_process_if_requested(components))
    return *status;
  namespace cli = understudy::cli;
  CLI::App app{"understudy: a fault-tolerant actor runtime for training jobs", "understudy"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string{understudy::version()});
  cli::inspect_options inspect;
  auto* inspect_cmd = cli::add_inspect_command(app, inspect);
  cli::certs_options certs;
  auto* certs_cmd = cli::add_certs_command(app, certs);
  understudy::node_options node;
  auto* node_cmd = cli::add_node_command(app, node);
  understudy::launch_options launch;
  auto* launch_cmd = cli::add_launch_command(app, launch);
  understudy::status_options status;
  auto* status_cmd = cli::add_status_command(app, status);
  understudy::events_options events;
  auto* events_cmd = cli::add_events_command(app, events);
  cli::snapshot_options snapshot;
  auto* snapshot_cmd = cli::add_snapshot_command(app, snapshot);
  cli::drill_options drill;
  auto* drill_cmd = cli::add_drill_command(app, drill);
  cli::promote_options promote;
  auto* promote_cmd = cli::add_promote_command(app, promote);
  cli::simulate_options simulate;
  auto* simulate_cmd = cli::add_simulate_command(app, simulate);
  cli::standby_cli_options standby;
  auto* standby_cmd = cli::add_standby_command(app, standby);
  if (argc == 1) {
    // Alone, the command says what it can do (and, being no command, exits 2).
    std::cout << app.help();
    return cli::exit_failure;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Help and version requests exit 0; every other parse error is a usage error.
    return app.exit(e) == 0 ? cli::exit_ok : cli::exit_failure;
  }
  if (*inspect_cmd)
    return cli::run_inspect(inspect, std::cout, std::cerr, std::chrono::system_clock::now());
  if (*certs_cmd)
    return cli::run_certs(certs, std::cout, std::cerr);
  if (*node_cmd)
    return cli::run_node(node);
  if (*launch_cmd)
    return cli::run_launch(launch, argv[0]);
  if (*status_cmd)
    return cli::run_status(status);
  if (*events_cmd)
    return cli::run_events(events);
  if (*snapshot_cmd)
    return cli::run_snapshot(snapshot, std::cout, std::cerr);
  if (*drill_cmd)
    return cli::run_drill(drill, std::cout, std::cerr);
  if (*promote_cmd)
    return cli::run_promote(promote, std::cout, std::cerr);
  if (*simulate_cmd)
    return cli::run_simulate(simulate, std::cout, std::cerr);
  if (*standby_cmd) {
    int rc = cli::run_standby(standby, std::cout, std::cerr);
    if (rc != cli::exit_ok || !standby.promoted || standby.no_launch)
      return rc;
    // Promoted: this site runs the job now.
    understudy::launch_options site;
    site.file = standby.file;
    return cli::run_launch(site, argv[0]);
  }
  std::cerr << app.help();
  return cli::exit_failure;
}
