// A node's transport: preparing its actor system for mutual TLS through CAF's
// openssl module, publishing on its configured address only, and connecting
// to a peer.

#include <sys/stat.h>

#include <cstdio>
#include <set>
#include <utility>

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/node_id.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/sec.hpp>

#include "addresses.hpp"
#include "understudy/cluster/security.hpp"

namespace understudy {

using detail::is_loopback;
using detail::is_wildcard;
using detail::strip_brackets;

// -- preparing a node -------------------------------------------------------------------------

namespace {

/// Loads CAF's openssl module into `cfg` with this certificate, key and CA
/// file. CAF's openssl module reads these members; with any of them set it
/// requires a certificate from every peer and verifies it against the CA file
/// alone (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT).
void load_tls(caf::actor_system_config& cfg, const std::string& cert, const std::string& key,
              const std::string& ca) {
  cfg.set("openssl.certificate", cert);
  cfg.set("openssl.key", key);
  cfg.set("openssl.cafile", ca);
  cfg.openssl_certificate = cert;
  cfg.openssl_key = key;
  cfg.openssl_cafile = ca;
  cfg.openssl_capath.clear();
  cfg.openssl_passphrase.clear();
  cfg.load<caf::openssl::manager>();
}

} // namespace

caf::expected<std::vector<std::string>> prepare_node_system_config(caf::actor_system_config& cfg,
                                                                   const node_config& config,
                                                                   std::string_view node) {
  const auto* n = config.find_node(node);
  if (n == nullptr)
    return make_error(security_errc::unknown_node,
                      config.origin + ": has no node '" + std::string{node} + "'");
  std::vector<std::string> notes;
  if (config.cluster.security) {
    if (auto err = check_node_certificate(config, node))
      return err;
    struct stat st {};
    if (::stat(n->key.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      char mode[8];
      std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
      notes.push_back("node '" + n->name + "': its key " + n->key +
                      " is readable by others (mode " + mode + "); chmod 600 it");
    }
  } else if (config.nodes.size() > 1) {
    // Without TLS a node cannot tell who sent a message: any local process
    // could connect to its port and say it is any node.
    return make_error(security_errc::no_security,
                      config.origin + ": a cluster of " + std::to_string(config.nodes.size()) +
                          " nodes talks mutual TLS only, and it has no [cluster.security]: add "
                          "it and make the certificates with `understudy certs " +
                          config.origin +
                          "`, or start the cluster with `understudy launch`, which makes them");
  } else if (!is_loopback(n->host)) {
    return make_error(security_errc::insecure_address,
                      config.origin + ": node '" + n->name + "' is on " + n->host +
                          ", which is not loopback, and there is no [cluster.security] section");
  }
  cfg.load<caf::io::middleman>();
  const auto& fd = config.cluster.failure_detection;
  cfg.set("middleman.heartbeat-interval", caf::timespan{fd.heartbeat_interval});
  cfg.set("middleman.connection-timeout", caf::timespan{fd.connection_timeout});
  // Automatic connections (direct connections to nodes learned of through a
  // third) are made by libcaf_io, which has no TLS: they would bypass it.
  cfg.set("middleman.enable-automatic-connections", false);
  if (!config.cluster.security) {
    notes.push_back(config.origin + ": no security settings ([cluster.security]): node '" +
                    n->name +
                    "', a cluster of one, talks plain TCP, which is allowed on loopback only");
    return notes;
  }
  const auto& sec = *config.cluster.security;
  load_tls(cfg, n->cert, n->key, sec.ca);
  notes.push_back("node '" + n->name + "': mutual TLS with certificate " + n->cert +
                  ", peers must hold a certificate of CA " + sec.ca);
  // Also links openssl_error_queue.cpp into a program built on a static runtime.
  if (!openssl_error_queue_guarded())
    notes.push_back("node '" + n->name +
                    "': SSL_read and SSL_write do not resolve to the runtime's error-queue "
                    "guard (see security.hpp): one failed peer connection may close the others");
  return notes;
}

caf::error prepare_status_reader_config(caf::actor_system_config& cfg, const node_config& config) {
  cfg.load<caf::io::middleman>();
  cfg.set("middleman.enable-automatic-connections", false);
  if (!config.cluster.security)
    return {};
  auto [cert, key] = status_credential(config);
  for (const auto& path : {cert, key}) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
      return make_error(security_errc::io_error,
                        "the status reader's credential " + path +
                            " is missing (certificates made before it existed: make them again "
                            "with `understudy certs --force`)");
  }
  load_tls(cfg, cert, key, config.cluster.security->ca);
  return {};
}

caf::expected<bool> prepare_hosted_process_tls(caf::actor_system_config& cfg,
                                               const node_config& config, std::string_view node) {
  const auto* n = config.find_node(node);
  if (n == nullptr)
    return make_error(security_errc::unknown_node,
                      config.origin + ": has no node '" + std::string{node} + "'");
  if (!config.cluster.security)
    return false;
  if (auto err = check_node_certificate(config, node))
    return err;
  load_tls(cfg, n->cert, n->key, config.cluster.security->ca);
  return true;
}

// -- publishing and connecting ----------------------------------------------------------------

caf::expected<uint16_t> publish_at(caf::actor_system& sys, const caf::actor& whom,
                                   const std::string& host, uint16_t port) {
  if (is_wildcard(host))
    return make_error(security_errc::insecure_address,
                      "refusing to bind '" + host +
                          "': a node binds its configured address only, never all interfaces");
  if (!whom)
    return caf::make_error(caf::sec::cannot_publish_invalid_actor);
  if (!sys.has_middleman())
    return make_error(security_errc::missing_setting,
                      "the actor system has no middleman (see prepare_node_system_config)");
  auto in = strip_brackets(host);
  if (sys.has_openssl_manager())
    return caf::openssl::publish(whom, port, in.c_str(), true);
  if (!is_loopback(host))
    return make_error(security_errc::insecure_address, "refusing to publish on " + host +
                                                           " without TLS: plain TCP is allowed on "
                                                           "loopback only");
  return sys.middleman().publish(whom, port, in.c_str(), true);
}

caf::expected<caf::actor> connect_to_peer(caf::actor_system& sys, const std::string& host,
                                          uint16_t port, caf::timespan timeout) {
  if (!sys.has_middleman())
    return make_error(security_errc::missing_setting,
                      "the actor system has no middleman (see prepare_node_system_config)");
  caf::io::middleman_actor mm;
  if (sys.has_openssl_manager()) {
    mm = sys.openssl_manager().actor_handle();
  } else if (is_loopback(host)) {
    mm = sys.middleman().actor_handle();
  } else {
    return make_error(security_errc::insecure_address, "refusing to connect to " + host +
                                                           " without TLS: plain TCP is allowed on "
                                                           "loopback only");
  }
  caf::error err;
  caf::actor result;
  caf::scoped_actor self{sys};
  self->request(mm, timeout, caf::connect_atom::value, strip_brackets(host), port)
      .receive(
          [&](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>& ifs) {
            if (!ptr)
              err = caf::make_error(caf::sec::no_actor_published_at_port, port);
            else if (!ifs.empty())
              err = caf::make_error(caf::sec::unexpected_actor_messaging_interface);
            else
              result = caf::actor_cast<caf::actor>(std::move(ptr));
          },
          [&](caf::error& x) { err = std::move(x); });
  if (err)
    return err;
  return result;
}

} // namespace understudy
