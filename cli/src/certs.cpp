#include "certs.hpp"

#include <ostream>
#include <string>

#include <CLI/CLI.hpp>
#include <caf/error.hpp>
#include <caf/message.hpp>

#include "inspect.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::cli {

namespace {

/// A security error's own message (it names the file), others as `describe` renders them.
std::string message_of(const caf::error& err) {
  auto details = error_context(err);
  return err.category() == security_category && !details.empty() ? details : describe(err);
}

} // namespace

CLI::App* add_certs_command(CLI::App& app, certs_options& opts) {
  auto* sub = app.add_subcommand(
      "certs", "make the cluster's CA and a key and certificate for every node of FILE");
  sub->footer(
      "Writes them where FILE's [cluster.security] says, and refuses to overwrite an "
      "existing file unless --force is given. Exits 0 on success, 2 otherwise.");
  sub->add_option("FILE", opts.config_file, "the cluster's node config file (TOML)")->required();
  sub->add_flag("--force", opts.force,
                "replace existing files: a new CA, and new certificates for every node");
  return sub;
}

int run_certs(const certs_options& opts, std::ostream& out, std::ostream& err) {
  const std::string prog = "understudy certs: ";
  auto config = load_node_config(opts.config_file, actors::job_config_options());
  if (!config) {
    err << prog << describe(config.error()) << '\n';
    return exit_failure;
  }
  auto written = create_cluster_certificates(*config, opts.force);
  if (!written) {
    err << prog << message_of(written.error()) << '\n';
    return exit_failure;
  }
  const auto& sec = *config->cluster.security;
  for (const auto& path : *written) {
    out << "wrote " << path;
    if (path == sec.ca_key)
      out << "  (the CA's key: only needed to issue certificates; keep it off the nodes)";
    else if (path == sec.ca)
      out << "  (the CA certificate, valid " << ca_validity_days << " days)";
    out << '\n';
  }
  out << "cluster '" << config->cluster.name << "': a CA and " << config->nodes.size()
      << " node certificate" << (config->nodes.size() == 1 ? "" : "s") << " (valid "
      << node_validity_days
      << " days); copy each node its certificate and key, and the CA "
         "certificate\n";
  return exit_ok;
}

} // namespace understudy::cli
