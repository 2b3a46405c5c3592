#pragma once
// `understudy certs FILE [--force]`: creates the cluster CA of a node config
// file and a key and certificate per node, where [cluster.security] says.

#include <iosfwd>
#include <string>

namespace CLI {
class App;
} // namespace CLI

namespace understudy::cli {

/// Options of `understudy certs`.
struct certs_options {
  /// The node config file.
  std::string config_file;
  /// Replace existing files (a new CA and new certificates for every node).
  bool force = false;
};

/// Adds the `certs` subcommand to `app`, filling `opts` when it is parsed.
/// Returns the subcommand (test it with `*sub` after parsing).
CLI::App* add_certs_command(CLI::App& app, certs_options& opts);

/// Reads the config, creates the CA and the node certificates
/// (`create_cluster_certificates`), lists what it wrote on `out` and any
/// problem on `err`. Returns `exit_ok`, or `exit_failure` when the config is
/// invalid or has no [cluster.security], a file exists without `force`, or a
/// file cannot be written.
int run_certs(const certs_options& opts, std::ostream& out, std::ostream& err);

} // namespace understudy::cli
