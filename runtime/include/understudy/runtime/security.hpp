#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/timespan.hpp>

#include "understudy/runtime/errors.hpp"
#include "understudy/runtime/node_config.hpp"

namespace understudy {

// Cluster security: the certificates of `[cluster.security]` (a per-cluster CA
// and one certificate per node), the actor system settings a node needs to
// talk to its peers over mutual TLS (CAF's openssl module), and publishing and
// connecting so that a node binds its configured address only.
//
// What CAF 0.17.6's openssl module checks once a certificate, key and CA file
// are set: both sides present a certificate (a peer without one is refused),
// and each side verifies the other's chain against the CA file only (not the
// system's trust store). It does not check which node a certificate names
// (its CN or subjectAltName): any certificate of the cluster's CA is accepted
// for any node, so the CA's key must stay with the operator.

/// Error category atom for `security_errc`, as carried in `caf::error`.
constexpr caf::atom_value security_category = caf::atom("us_secur");

/// Failures of creating or checking certificates and of preparing a node for
/// the cluster. Every error's context says what went wrong and names the file.
enum class security_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// The config has no `[cluster.security]` section.
  no_security,
  /// A setting the task needs is not set (e.g. `ca_key` for `understudy certs`).
  missing_setting,
  /// A file to be written exists and overwriting it was not asked for.
  file_exists,
  /// A file or directory cannot be created, read or written; the context has
  /// the path and the OS reason.
  io_error,
  /// OpenSSL failed to generate or sign; the context has OpenSSL's reason.
  crypto_error,
  /// A certificate or key is unusable: not PEM, not issued by the cluster's
  /// CA, expired, for another node, or the key does not match the certificate.
  invalid_certificate,
  /// The config has no node of that name.
  unknown_node,
  /// Binding a wildcard address, or talking in the clear off loopback.
  insecure_address,
};

/// Returns the name of `x`, e.g. "file_exists".
std::string to_string(security_errc x);

/// Classifies `x` by what the caller should do next: `give_up` (fix the files
/// or the config) for all but `io_error`, which may be transient (`back_off`).
next_step next_step_for(security_errc x);

/// Wraps `x` into a `caf::error` with a context message describing the details.
caf::error make_error(security_errc x, std::string context);

/// Returns whether `err` is of category `security_category` with code `x`.
bool is(const caf::error& err, security_errc x);

/// Validity of the CA certificate `create_cluster_certificates` writes.
constexpr int ca_validity_days = 3650;

/// Validity of each node certificate `create_cluster_certificates` writes.
constexpr int node_validity_days = 825;

/// Creates the cluster's CA (an EC P-256 key and a self-signed certificate)
/// and, for every node of `config`, a key and a certificate issued by the CA
/// (CN the node's name, subjectAltName its host as IP address or DNS name,
/// extended key usage serverAuth and clientAuth), at the paths the config
/// resolves (`security_spec::ca`, `ca_key`, `node_spec::cert`, `key`).
/// Missing directories are created with mode 0700; keys are written 0600,
/// certificates 0644; each file is written to a temporary file and renamed.
/// Without `force`, nothing is written if any of the files exists
/// (`security_errc::file_exists` naming it); with it, all are replaced. Returns
/// the paths written, CA first. Errors: `no_security`, `missing_setting` (no
/// `ca_key`), `file_exists`, `io_error`, `crypto_error`. Thread-safe.
caf::expected<std::vector<std::string>> create_cluster_certificates(const node_config& config,
                                                                    bool force);

/// What a certificate says, as `read_certificate` reports it.
struct certificate_info {
  /// The subject's and issuer's common names.
  std::string subject_cn;
  std::string issuer_cn;
  /// subjectAltName entries.
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  /// Whether basicConstraints says CA:TRUE.
  bool is_ca = false;
  std::chrono::system_clock::time_point not_before;
  std::chrono::system_clock::time_point not_after;
};

/// Reads the PEM certificate at `path`. Errors: `io_error`,
/// `invalid_certificate`. Thread-safe.
caf::expected<certificate_info> read_certificate(const std::string& path);

/// Checks what the TLS handshake of node `node` will need, so that a node
/// fails at start with a clear message rather than with silently refused
/// connections: its certificate, key and the CA certificate are readable; the
/// key matches the certificate; the certificate is issued by the CA, valid
/// now, fit for TLS client and server use, and names the node (CN). Errors:
/// `no_security`, `unknown_node`, `io_error`, `invalid_certificate`.
caf::error check_node_certificate(const node_config& config, std::string_view node);

/// Prepares `cfg`, before the actor system is built from it, for node `node`
/// of `config`: loads CAF's middleman (do not load it again) and, when the
/// config has `[cluster.security]`, CAF's openssl module with the node's
/// certificate and key and the cluster's CA file, so that every connection
/// made through `publish_at` and `connect_to_peer` uses mutual TLS and a peer
/// without a certificate of the cluster's CA is refused. The node's
/// certificate is checked first (`check_node_certificate`). It always turns on
/// the middleman's heartbeats (`failure_detection.heartbeat_interval`) and its
/// connection timeout (`failure_detection.connection_timeout`: a connection
/// silent for that long is closed) and keeps automatic connections off (they
/// would bypass TLS). Returns notes worth a log line (e.g. that the node talks
/// in the clear, allowed on loopback only). Errors: those of
/// `check_node_certificate`, `unknown_node`, `insecure_address` (no security
/// and a host off loopback).
caf::expected<std::vector<std::string>> prepare_node_system_config(caf::actor_system_config& cfg,
                                                                   const node_config& config,
                                                                   std::string_view node);

/// Publishes `whom` at `host`:`port`, binding that address only (never all
/// interfaces), with `SO_REUSEADDR` so that a restarted node gets its port
/// back. Uses TLS when `sys` has CAF's openssl module loaded
/// (`prepare_node_system_config` with security); otherwise plain TCP, which
/// only a loopback `host` may use. `port` 0 binds an ephemeral port. Returns
/// the bound port. Errors: `insecure_address` (a wildcard host such as
/// "0.0.0.0", or plain TCP off loopback), CAF's own (`sec`) when binding
/// fails. Blocks the caller until the middleman answered; not from inside an
/// actor's handler.
caf::expected<uint16_t> publish_at(caf::actor_system& sys, const caf::actor& whom,
                                   const std::string& host, uint16_t port);

/// The common name of the certificate that the TLS peer at `host`:`port` (the
/// far end of one of this process's TLS connections, as CAF's middleman
/// reports a node's address) presented in its handshake; none if no TLS
/// connection to that address has completed one. Certificates of the cluster
/// CA name their node: a node checks that a peer's certificate names the node
/// it claims to be (CAF's TLS transport checks the CA only).
std::optional<std::string> tls_peer_name(const std::string& host, uint16_t port);

/// Connects to the actor published at `host`:`port` and returns its proxy,
/// over TLS when `sys` has CAF's openssl module loaded (plain TCP only to a
/// loopback host otherwise). Gives up after `timeout` (`caf::sec::request_timeout`).
/// A peer that refuses our certificate, or whose certificate we refuse,
/// yields an error (usually `caf::sec::disconnect_during_handshake`). Errors:
/// `insecure_address`, CAF's own (`sec`). Blocks the caller; not from inside
/// an actor's handler.
caf::expected<caf::actor> connect_to_peer(caf::actor_system& sys, const std::string& host,
                                          uint16_t port, caf::timespan timeout);

} // namespace understudy
