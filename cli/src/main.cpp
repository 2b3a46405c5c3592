// The `understudy` command. One subcommand per task; `inspect` today, `launch`,
// `node` and `status` to come. Exit codes: 0 success, 1 the task found a problem
// (e.g. a corrupt record), 2 usage errors and failures to open or read.

#include <chrono>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "inspect.hpp"
#include "understudy/runtime/version.hpp"

int main(int argc, char** argv) {
  namespace cli = understudy::cli;
  CLI::App app{"understudy: a fault-tolerant actor runtime for training jobs", "understudy"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string{understudy::version()});
  cli::inspect_options inspect;
  auto* inspect_cmd = cli::add_inspect_command(app, inspect);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Help and version requests exit 0; every other parse error is a usage error.
    return app.exit(e) == 0 ? cli::exit_ok : cli::exit_failure;
  }
  if (*inspect_cmd)
    return cli::run_inspect(inspect, std::cout, std::cerr, std::chrono::system_clock::now());
  std::cerr << app.help();
  return cli::exit_failure;
}
