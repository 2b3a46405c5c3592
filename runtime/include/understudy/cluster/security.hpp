#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/timespan.hpp>

#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"

namespace understudy {

// Cluster security: the certificates of `[cluster.security]` (a per-cluster CA
// and one certificate per node), the actor system settings a node needs to
// talk to its peers over mutual TLS (CAF's openssl module), and publishing and
// connecting so that a node binds its configured address only.
//
// Sources: runtime/src/cluster/certificates.cpp (making, reading and checking
// certificates), node_transport.cpp (a node's TLS settings, publishing,
// connecting), tls_peer_names.cpp (which node a TLS peer's certificate names)
// and openssl_error_queue.cpp (the OpenSSL interposers: see "OpenSSL
// interposition" at the end of this header: linking this part of the runtime
// changes SSL_read, SSL_write, SSL_connect and SSL_accept for the whole
// program). Threads: every function may be called from any thread; those that
// block say so. Errors: `security_errc` (below) and CAF's own `sec`.
//
// What CAF 0.17.6's openssl module checks once a certificate, key and CA file
// are set: both sides present a certificate (a peer without one is refused),
// and each side verifies the other's chain against the CA file only (not the
// system's trust store). It does not check which node a certificate names
// (its CN or subjectAltName): any certificate of the cluster's CA is accepted
// for any node, so the CA's key must stay with the operator.

/// Failures of creating or checking certificates and of preparing a node for
/// the cluster. Every error's context says what went wrong and names the file.
/// All but `io_error` (which may be transient: `back_off`) mean the files or
/// the config must be fixed (`give_up`).
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

/// Declares `security_errc`.
template <>
struct error_traits<security_errc> {
  static constexpr caf::atom_value category = caf::atom("us_secur");
  static constexpr error_value<security_errc> values[] = {
      {security_errc::none, "none", "not an error", next_step::give_up},
      {security_errc::no_security, "no_security", "the config has no [cluster.security]",
       next_step::give_up},
      {security_errc::missing_setting, "missing_setting", "a setting the task needs is not set",
       next_step::give_up},
      {security_errc::file_exists, "file_exists", "a file to be written exists",
       next_step::give_up},
      {security_errc::io_error, "io_error", "a file cannot be created, read or written",
       next_step::back_off},
      {security_errc::crypto_error, "crypto_error", "OpenSSL failed to generate or sign",
       next_step::give_up},
      {security_errc::invalid_certificate, "invalid_certificate",
       "a certificate or key is unusable", next_step::give_up},
      {security_errc::unknown_node, "unknown_node", "the config has no node of that name",
       next_step::give_up},
      {security_errc::insecure_address, "insecure_address",
       "a wildcard address, or clear text off loopback", next_step::give_up},
  };
};

/// Error category atom for `security_errc`, as carried in `caf::error`.
constexpr caf::atom_value security_category = error_traits<security_errc>::category;

/// Validity of the CA certificate `create_cluster_certificates` writes.
constexpr int ca_validity_days = 3650;

/// Validity of each node certificate `create_cluster_certificates` writes.
constexpr int node_validity_days = 825;

/// The common name of the status reader's certificate: nodes answer its
/// holder's status requests and refuse everything else it sends.
constexpr const char* status_reader_name = "understudy status";

/// Where the status reader's certificate and key of `config` are:
/// status.pem and status.key beside the CA certificate (empty without
/// [cluster.security]).
std::pair<std::string, std::string> status_credential(const node_config& config);

/// Creates the cluster's CA (an EC P-256 key and a self-signed certificate)
/// and, for every node of `config`, a key and a certificate issued by the CA
/// (CN the node's name, subjectAltName its host as IP address or DNS name,
/// extended key usage serverAuth and clientAuth), at the paths the config
/// resolves (`security_spec::ca`, `ca_key`, `node_spec::cert`, `key`), and
/// the status reader's (CN `status_reader_name`, at `status_credential`).
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
/// of `config`: loads CAF's middleman (do not load it again) and, with
/// `[cluster.security]` (required for a cluster of several nodes), CAF's openssl module with the
/// node's certificate and key and the cluster's CA file, so that every connection made through
/// `publish_at` and `connect_to_peer` uses mutual TLS and a peer without a certificate of the
/// cluster's CA is refused. The node's certificate is checked first (`check_node_certificate`). It
/// always turns on the middleman's heartbeats (`failure_detection.heartbeat_interval`) and its
/// connection timeout (`failure_detection.connection_timeout`: a connection
/// silent for that long is closed) and keeps automatic connections off (they
/// would bypass TLS). Returns notes worth a log line (e.g. that the node talks
/// in the clear, allowed on loopback only). Errors: those of
/// `check_node_certificate`, `unknown_node`, `no_security` (several nodes and no
/// security), `insecure_address` (no security and a host off loopback).
caf::expected<std::vector<std::string>> prepare_node_system_config(caf::actor_system_config& cfg,
                                                                   const node_config& config,
                                                                   std::string_view node);

/// Prepares `cfg` for a client that reads the nodes' status reports (what
/// `understudy status` runs): CAF's middleman and, with [cluster.security],
/// its openssl module with the status reader's certificate
/// (`status_credential`), which nodes accept for status requests only.
/// Errors: `io_error` naming the missing certificate (make it with
/// `understudy certs --force`).
caf::error prepare_status_reader_config(caf::actor_system_config& cfg, const node_config& config);

/// Prepares `cfg` of a process that node `node` hosts (an isolated worker,
/// see process_spec::tls) for mutual TLS with it: with [cluster.security],
/// loads CAF's openssl module with the node's own certificate and key and the
/// cluster's CA file, so that only holders of a certificate of the cluster's
/// CA (the node itself) can connect to the actor it publishes; returns true.
/// Without security it loads nothing and returns false (the node itself talks
/// plain TCP on loopback then). Call it after the middleman is loaded (as
/// run_actor_host's `configure` runs). Errors: `unknown_node`, those of
/// `check_node_certificate`.
caf::expected<bool> prepare_hosted_process_tls(caf::actor_system_config& cfg,
                                               const node_config& config, std::string_view node);

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

// -- OpenSSL interposition ------------------------------------------------------------------
//
// What: runtime/src/cluster/openssl_error_queue.cpp defines SSL_read,
// SSL_write, SSL_connect, SSL_accept and SSL_set_fd, and libc's
// pthread_sigmask and sigtimedwait. A static
// runtime links them into every program that uses `prepare_node_system_config`,
// `publish_at` or `connect_to_peer` (the cluster and the `understudy` command
// do), a shared runtime into every program that loads it. There they take
// OpenSSL's place for these calls, from any caller in the process:
//   - SSL_read, SSL_write, SSL_connect and SSL_accept each empty the calling
//     thread's OpenSSL error queue (ERR_clear_error), then call OpenSSL's own
//     function (found with dlsym(RTLD_NEXT)), and once a connection's
//     handshake is done record its peer's certificate name for
//     `tls_peer_name`;
//   - SSL_set_fd, called by CAF's openssl session (and by no other caller:
//     the call's return address must lie in CAF's openssl module), gives that
//     connection a fast path: a large SSL_write sends its records in batches
//     of up to 256 KiB instead of one send per 16 KiB record. A write is
//     reported done only once every byte of it has left: all records but the
//     last are batched, the last goes OpenSSL's ordinary way, so a full socket
//     still shows as SSL_ERROR_WANT_WRITE.
//     For every other connection these calls return OpenSSL's results
//     unchanged;
//   - pthread_sigmask and sigtimedwait, when they return into CAF's openssl
//     module, skip the SIGPIPE guard CAF's session puts around every OpenSSL
//     call (block SIGPIPE, consume a pending one, restore the mask: three
//     system calls per call), as long as every connection that module made has
//     the fast path, whose writes all use MSG_NOSIGNAL (no SIGPIPE can come);
//     a block and its restore are skipped in pairs per thread. Every other
//     caller's call goes to libc unchanged.
//
// Why: OpenSSL requires the thread's error queue to be empty before each of
// these calls, as SSL_get_error reports any queued error instead of the
// call's own outcome (SSL_get_error(3)). caf::openssl::session (CAF 0.17)
// does not clear it, and leaves the error of a failed connection in it. All
// sessions run on the middleman's one thread, so when one peer's connection
// fails (a node is killed), the next read on every other connection saw that
// stale error, reported as SSL_ERROR_SSL, and CAF closed them all: the whole
// cluster lost its connections at once. The fast path: CAF's session writes
// every 16 KiB record with a send of its own where plain CAF sends its whole
// buffer at once (bench/cluster: 64 KiB messages over TLS reach about 0.35x
// raw CAF without it), and its SIGPIPE guard costs 64 B messages over TLS
// about a third of their rate. CAF gives no hook around these calls,
// and its sessions keep their SSL objects private, so interposing is the only
// place to clear the queue, to learn a peer's certificate, and to batch I/O.
//
// Effect on other code in the program: an OpenSSL user that relies on an
// error queued before one of the four calls surviving the call loses it
// (OpenSSL's documentation tells callers not to rely on that). Every
// pthread_sigmask and sigtimedwait call of the program compares its return
// address with CAF's openssl module first (two integer comparisons). Each call also
// costs a dlsym once per process and an ex-data lookup per call; the peer-name
// table holds one entry per live TLS connection of the process; a connection
// with the fast path holds up to 256 KiB of ciphertext.

/// Returns whether SSL_read and SSL_write in this process resolve to the
/// runtime's interposers (see above), so that a stale OpenSSL error cannot
/// close a TLS connection. False when another definition comes first in
/// symbol lookup (e.g. a shared runtime opened with dlopen after libssl was
/// loaded). Thread-safe.
bool openssl_error_queue_guarded();

} // namespace understudy
