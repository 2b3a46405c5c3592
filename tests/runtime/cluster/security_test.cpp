// Cluster security: the CA and node certificates `create_cluster_certificates`
// writes (modes, names, signatures, refusing to overwrite), preparing a node's
// actor system, and mutual TLS between two actor systems on loopback: a peer
// with a certificate of the cluster's CA is answered, a peer with no
// certificate or with one from another CA is refused, on both sides.

#include "understudy/cluster/security.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/after.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/sec.hpp>
#include <catch2/catch.hpp>

#include "cluster/tls_fast_path.hpp"
#include "support/etcd_fixture.hpp"
#include "support/state_test_util.hpp"
#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/cluster/memory_coordinator.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/process/process_host.hpp"
#include "understudy/state/runtime.hpp"
#include "understudy/state/state_writer.hpp"

using namespace understudy;
using namespace std::chrono_literals;

namespace {

namespace fs = std::filesystem;

/// A temporary directory, removed at the end of the test.
struct scratch_dir {
  std::string path = test::make_temp_dir();
  ~scratch_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string slurp(const std::string& file) {
  std::ifstream in{file, std::ios::binary};
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

/// Writes a config of two loopback nodes (n1 on 127.0.0.1, n2 on localhost)
/// whose certificates live in `cert_dir` to `dir`/`file` and loads it.
node_config write_config(const std::string& dir, const std::string& file,
                         const std::string& cert_dir, bool with_security = true) {
  std::string text = "[cluster]\nname = \"sec\"\nstate_root = \"" + dir + "/state\"\n";
  if (with_security)
    text += "[cluster.security]\ndir = \"" + cert_dir + "\"\n";
  text +=
      "[[node]]\nname = \"n1\"\nhost = \"127.0.0.1\"\nport = 4811\n"
      "[[node]]\nname = \"n2\"\nhost = \"localhost\"\nport = 4812\n";
  auto path = dir + "/" + file;
  std::ofstream{path} << text;
  auto cfg = load_node_config(path);
  if (!cfg)
    FAIL("cannot load " << path << ": " << describe(cfg.error()));
  return std::move(*cfg);
}

/// The error's own message (the context string).
std::string message_of(const caf::error& err) {
  auto details = error_context(err);
  return details.empty() ? describe(err) : details;
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

/// An X509 certificate read with OpenSSL directly, independent of the code under test.
struct x509_file {
  explicit x509_file(const std::string& path) {
    auto* f = std::fopen(path.c_str(), "r");
    REQUIRE(f != nullptr);
    cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    REQUIRE(cert != nullptr);
  }
  ~x509_file() { X509_free(cert); }
  x509_file(const x509_file&) = delete;
  x509_file& operator=(const x509_file&) = delete;
  X509* cert = nullptr;
};

/// Whether `cert_path` carries a valid signature by the key of `ca_path`.
bool signed_by(const std::string& cert_path, const std::string& ca_path) {
  x509_file cert{cert_path};
  x509_file ca{ca_path};
  EVP_PKEY* ca_key = X509_get0_pubkey(ca.cert);
  REQUIRE(ca_key != nullptr);
  auto ok = X509_verify(cert.cert, ca_key) == 1;
  ERR_clear_error();
  return ok;
}

/// A CA and node certificates created in a scratch directory: the cluster's
/// (`cluster`) and, for the rogue peers, another CA's for the same node names
/// (`other`).
struct certified_clusters {
  scratch_dir dir;
  node_config cluster = write_config(dir.path, "cluster.toml", dir.path + "/certs");
  node_config other = write_config(dir.path, "other.toml", dir.path + "/other-certs");

  certified_clusters() {
    REQUIRE(create_cluster_certificates(cluster, false));
    REQUIRE(create_cluster_certificates(other, false));
  }

  const node_spec& node(const node_config& cfg, const char* name) {
    const auto* n = cfg.find_node(name);
    REQUIRE(n != nullptr);
    return *n;
  }
};

/// Whether connecting failed because the TLS handshake was refused: CAF saw the
/// connection close before its own (BASP) handshake, not a timeout.
bool refused_in_handshake(const caf::expected<caf::actor>& res) {
  if (res)
    return false;
  UNSCOPED_INFO("connecting failed with " << caf::to_string(res.error().category()) << " "
                                          << static_cast<int>(res.error().code()));
  // Refused: the connection failed, not merely timed out (under load CAF
  // reports the refusal as a failed connect as well as a handshake cut short).
  return res.error() != caf::sec::request_timeout;
}

/// An actor that answers an int with its successor.
caf::behavior successor() {
  return {[](int x) { return x + 1; }};
}

/// Sends 41 to `peer` and returns the answer, or -1 with the error in `why`.
int ask(caf::actor_system& sys, const caf::actor& peer, std::string& why) {
  int result = -1;
  caf::scoped_actor self{sys};
  self->request(peer, 10s, 41)
      .receive([&](int y) { result = y; }, [&](caf::error& err) { why = sys.render(err); });
  return result;
}

/// An actor system prepared for node `name` of `cfg` (through the code under test).
struct node_system {
  node_system(const node_config& cfg, const char* name) {
    auto res = prepare_node_system_config(conf, cfg, name);
    REQUIRE(res);
    notes = std::move(*res);
    sys = std::make_unique<caf::actor_system>(conf);
  }
  ~node_system() {
    for (auto& a : actors)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  }
  caf::actor_system_config conf;
  std::vector<std::string> notes;
  std::unique_ptr<caf::actor_system> sys;
  std::vector<caf::actor> actors;
};

/// An actor system with CAF's openssl module set up by hand (for rogue peers):
/// empty strings leave an option unset; all empty gives CAF's anonymous TLS.
struct manual_tls_system {
  manual_tls_system(const std::string& cert, const std::string& key, const std::string& cafile) {
    conf.load<caf::io::middleman>();
    conf.openssl_certificate = cert;
    conf.openssl_key = key;
    conf.openssl_cafile = cafile;
    conf.load<caf::openssl::manager>();
    conf.add_message_type<checkpoint_batch>("understudy::checkpoint_batch");
    sys = std::make_unique<caf::actor_system>(conf);
  }
  ~manual_tls_system() {
    for (auto& a : actors)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  }
  caf::actor_system_config conf;
  std::unique_ptr<caf::actor_system> sys;
  std::vector<caf::actor> actors;
};

/// An actor system with the plain middleman only.
struct plain_system {
  plain_system() {
    conf.load<caf::io::middleman>();
    sys = std::make_unique<caf::actor_system>(conf);
  }
  caf::actor_system_config conf;
  std::unique_ptr<caf::actor_system> sys;
};

/// Whether a TCP connection to `ipv4`:`port` is accepted.
bool accepts_on(const char* ipv4, uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  REQUIRE(inet_pton(AF_INET, ipv4, &addr.sin_addr) == 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

/// What a raw OpenSSL client saw when talking to a TLS node.
struct raw_tls_outcome {
  /// SSL_connect succeeded (with TLS 1.3 a client learns of a refused client
  /// certificate only when it reads).
  bool handshake = false;
  /// Bytes the node sent after the handshake (its BASP handshake), or <= 0.
  int bytes = 0;
  /// OpenSSL's reason when the handshake or the read failed, e.g. the alert
  /// the node sent ("tlsv13 alert certificate required").
  std::string error;
};

/// Connects to 127.0.0.1:`port` with OpenSSL directly, trusting `cafile`,
/// presenting `cert`/`key` unless empty, and reads what the node sends first.
raw_tls_outcome raw_tls_client(uint16_t port, const std::string& cafile, const std::string& cert,
                               const std::string& key) {
  // SIGPIPE from writing to a socket the node closed stays pending here and is
  // consumed below instead of killing the test.
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  raw_tls_outcome out;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  // Only a safety net against a node that neither answers nor closes.
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  REQUIRE(ctx != nullptr);
  REQUIRE(SSL_CTX_load_verify_locations(ctx, cafile.c_str(), nullptr) == 1);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (!cert.empty()) {
    REQUIRE(SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) == 1);
  }
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  out.handshake = SSL_connect(ssl) == 1;
  if (out.handshake) {
    char buf[512];
    out.bytes = SSL_read(ssl, buf, sizeof(buf));
  }
  if (auto code = ERR_peek_error(); code != 0) {
    char text[256];
    ERR_error_string_n(code, text, sizeof(text));
    out.error = text;
  }
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  ::close(fd);
  ERR_clear_error();
  timespec zero{0, 0};
  while (sigtimedwait(&pipe_set, nullptr, &zero) == SIGPIPE) {
    // Consumed.
  }
  pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  return out;
}

} // namespace

TEST_CASE("certs creates a CA and a certificate per node signed by it", "[security]") {
  scratch_dir dir;
  auto cfg = write_config(dir.path, "c.toml", dir.path + "/certs");
  auto written = create_cluster_certificates(cfg, false);
  REQUIRE(written);
  auto certs = dir.path + "/certs";
  std::vector<std::string> expected{certs + "/ca.key",     certs + "/ca.pem",    certs + "/n1.key",
                                    certs + "/n1.pem",     certs + "/n2.key",    certs + "/n2.pem",
                                    certs + "/status.key", certs + "/status.pem"};
  CHECK(*written == expected);
  // The directory is created private, keys are the owner's only.
  CHECK(mode_of(certs) == 0700);
  for (const auto& key : {"/ca.key", "/n1.key", "/n2.key", "/status.key"})
    CHECK(mode_of(certs + key) == 0600);
  for (const auto& cert : {"/ca.pem", "/n1.pem", "/n2.pem", "/status.pem"})
    CHECK(mode_of(certs + cert) == 0644);
  // No temporary files are left behind.
  CHECK(std::distance(fs::directory_iterator{certs}, fs::directory_iterator{}) == 8);

  auto ca = read_certificate(certs + "/ca.pem");
  REQUIRE(ca);
  CHECK(ca->is_ca);
  CHECK(ca->subject_cn == "understudy CA sec");
  CHECK(ca->issuer_cn == ca->subject_cn);
  CHECK(ca->not_after - ca->not_before >= std::chrono::hours(24 * ca_validity_days));
  CHECK(signed_by(certs + "/ca.pem", certs + "/ca.pem"));

  auto n1 = read_certificate(certs + "/n1.pem");
  REQUIRE(n1);
  CHECK_FALSE(n1->is_ca);
  CHECK(n1->subject_cn == "n1");
  CHECK(n1->issuer_cn == ca->subject_cn);
  CHECK(n1->ip_addresses == std::vector<std::string>{"127.0.0.1"});
  CHECK(n1->dns_names.empty());
  auto validity = n1->not_after - n1->not_before;
  CHECK(validity >= std::chrono::hours(24 * node_validity_days));
  CHECK(validity <= std::chrono::hours(24 * node_validity_days + 2));
  CHECK(n1->not_before <= std::chrono::system_clock::now());

  auto n2 = read_certificate(certs + "/n2.pem");
  REQUIRE(n2);
  CHECK(n2->subject_cn == "n2");
  CHECK(n2->dns_names == std::vector<std::string>{"localhost"});
  CHECK(n2->ip_addresses.empty());

  // Signed by the CA (checked with OpenSSL directly), and the full check passes.
  CHECK(signed_by(certs + "/n1.pem", certs + "/ca.pem"));
  CHECK(signed_by(certs + "/n2.pem", certs + "/ca.pem"));
  CHECK_FALSE(signed_by(certs + "/n1.pem", certs + "/n2.pem"));
  CHECK_FALSE(check_node_certificate(cfg, "n1"));
  CHECK_FALSE(check_node_certificate(cfg, "n2"));
  // Node certificates are fit for both ends of a TLS connection.
  x509_file n1_cert{certs + "/n1.pem"};
  CHECK(X509_check_purpose(n1_cert.cert, X509_PURPOSE_SSL_SERVER, 0) == 1);
  CHECK(X509_check_purpose(n1_cert.cert, X509_PURPOSE_SSL_CLIENT, 0) == 1);
}

TEST_CASE("certs refuses to overwrite any file without force and replaces all with it",
          "[security]") {
  scratch_dir dir;
  auto certs = dir.path + "/certs";
  auto cfg = write_config(dir.path, "c.toml", certs);
  REQUIRE(create_cluster_certificates(cfg, false));
  std::map<std::string, std::string> before;
  for (const auto& f :
       {"ca.key", "ca.pem", "n1.key", "n1.pem", "n2.key", "n2.pem", "status.key", "status.pem"})
    before[f] = slurp(certs + "/" + f);

  SECTION("without force nothing is overwritten") {
    auto again = create_cluster_certificates(cfg, false);
    REQUIRE_FALSE(again);
    CHECK(is(again.error(), security_errc::file_exists));
    CHECK_THAT(message_of(again.error()), Catch::Contains(certs + "/ca.key"));
    for (const auto& [f, text] : before)
      CHECK(slurp(certs + "/" + f) == text);
  }
  SECTION("without force one existing file keeps the missing ones from being written") {
    fs::remove(certs + "/n2.pem");
    fs::remove(certs + "/ca.key");
    fs::remove(certs + "/ca.pem");
    auto again = create_cluster_certificates(cfg, false);
    REQUIRE_FALSE(again);
    CHECK(is(again.error(), security_errc::file_exists));
    CHECK_THAT(message_of(again.error()), Catch::Contains(certs + "/n1.key"));
    CHECK_FALSE(fs::exists(certs + "/n2.pem"));
    CHECK_FALSE(fs::exists(certs + "/ca.pem"));
    CHECK(slurp(certs + "/n1.pem") == before["n1.pem"]);
  }
  SECTION("with force every file is replaced by a new CA and its certificates") {
    auto again = create_cluster_certificates(cfg, true);
    REQUIRE(again);
    CHECK(again->size() == 8); // the CA, two nodes, the status reader
    for (const auto& [f, text] : before)
      CHECK(slurp(certs + "/" + f) != text);
    CHECK(mode_of(certs + "/n1.key") == 0600);
    CHECK_FALSE(check_node_certificate(cfg, "n1"));
    // The old CA no longer signs the new certificates.
    auto old_ca = dir.path + "/old-ca.pem";
    std::ofstream{old_ca} << before["ca.pem"];
    CHECK_FALSE(signed_by(certs + "/n1.pem", old_ca));
    CHECK(signed_by(certs + "/n1.pem", certs + "/ca.pem"));
  }
}

TEST_CASE("certs needs a security section and a place for the CA key", "[security]") {
  scratch_dir dir;
  auto cfg = write_config(dir.path, "plain.toml", "", false);
  auto res = create_cluster_certificates(cfg, false);
  REQUIRE_FALSE(res);
  CHECK(is(res.error(), security_errc::no_security));
  CHECK_THAT(message_of(res.error()), Catch::Contains("[cluster.security]"));
  CHECK(std::distance(fs::directory_iterator{dir.path}, fs::directory_iterator{}) == 1);

  std::ofstream{dir.path + "/nokey.toml"}
      << "[cluster]\nname = \"k\"\nstate_root = \"" << dir.path
      << "/state\"\n[cluster.security]\nca = \"" << dir.path << "/ca.pem\"\ncert = \"" << dir.path
      << "/{node}.pem\"\nkey = \"" << dir.path
      << "/{node}.key\"\n[[node]]\nname = \"a\"\nhost = \"127.0.0.1\"\nport = 4900\n";
  auto nokey = load_node_config(dir.path + "/nokey.toml");
  REQUIRE(nokey);
  auto res2 = create_cluster_certificates(*nokey, false);
  REQUIRE_FALSE(res2);
  CHECK(is(res2.error(), security_errc::missing_setting));
  CHECK_FALSE(fs::exists(dir.path + "/ca.pem"));
}

TEST_CASE("a node's certificate check names what is wrong", "[security]") {
  certified_clusters c;
  auto certs = c.dir.path + "/certs";
  auto other = c.dir.path + "/other-certs";
  CHECK(is(check_node_certificate(c.cluster, "n9"), security_errc::unknown_node));
  SECTION("a certificate of another CA") {
    fs::copy_file(other + "/n1.pem", certs + "/n1.pem", fs::copy_options::overwrite_existing);
    fs::copy_file(other + "/n1.key", certs + "/n1.key", fs::copy_options::overwrite_existing);
    auto err = check_node_certificate(c.cluster, "n1");
    CHECK(is(err, security_errc::invalid_certificate));
    CHECK_THAT(message_of(err), Catch::Contains(certs + "/n1.pem"));
  }
  SECTION("a key that does not belong to the certificate") {
    fs::copy_file(certs + "/n2.key", certs + "/n1.key", fs::copy_options::overwrite_existing);
    auto err = check_node_certificate(c.cluster, "n1");
    CHECK(is(err, security_errc::invalid_certificate));
    CHECK_THAT(message_of(err), Catch::Contains("does not belong"));
  }
  SECTION("another node's certificate and key") {
    fs::copy_file(certs + "/n2.pem", certs + "/n1.pem", fs::copy_options::overwrite_existing);
    fs::copy_file(certs + "/n2.key", certs + "/n1.key", fs::copy_options::overwrite_existing);
    auto err = check_node_certificate(c.cluster, "n1");
    CHECK(is(err, security_errc::invalid_certificate));
    CHECK_THAT(message_of(err), Catch::Contains("not to node 'n1'"));
  }
  SECTION("a missing certificate") {
    fs::remove(certs + "/n1.pem");
    auto err = check_node_certificate(c.cluster, "n1");
    CHECK(is(err, security_errc::io_error));
    CHECK_THAT(message_of(err), Catch::Contains(certs + "/n1.pem"));
    caf::actor_system_config conf;
    auto res = prepare_node_system_config(conf, c.cluster, "n1");
    REQUIRE_FALSE(res);
    CHECK(is(res.error(), security_errc::io_error));
  }
}

TEST_CASE("preparing a node turns on heartbeats and mutual TLS with the cluster CA", "[security]") {
  certified_clusters c;
  caf::actor_system_config conf;
  auto notes = prepare_node_system_config(conf, c.cluster, "n1");
  REQUIRE(notes);
  const auto& n1 = c.node(c.cluster, "n1");
  CHECK(conf.openssl_certificate == n1.cert);
  CHECK(conf.openssl_key == n1.key);
  CHECK(conf.openssl_cafile == c.cluster.cluster.security->ca);
  CHECK(caf::get_or(conf, "middleman.heartbeat-interval", caf::timespan{0}) ==
        caf::timespan{100ms});
  CHECK(caf::get_or(conf, "middleman.connection-timeout", caf::timespan{0}) == caf::timespan{2s});
  CHECK(caf::get_or(conf, "middleman.enable-automatic-connections", true) == false);
  REQUIRE(notes->size() == 1);
  CHECK_THAT(notes->front(), Catch::Contains("mutual TLS"));
  CHECK(is(prepare_node_system_config(conf, c.cluster, "n9").error(), security_errc::unknown_node));
}

TEST_CASE(
    "a cluster of several nodes without security is refused, and a node alone talks plain TCP "
    "on loopback only",
    "[security]") {
  scratch_dir dir;
  auto cfg = write_config(dir.path, "plain.toml", "", false);
  caf::actor_system_config conf;
  auto refused = prepare_node_system_config(conf, cfg, "n2");
  REQUIRE_FALSE(refused);
  CHECK(is(refused.error(), security_errc::no_security));
  CHECK_THAT(describe(refused.error()), Catch::Contains("a cluster of 2 nodes talks mutual TLS "
                                                        "only") &&
                                            Catch::Contains("understudy certs"));
  // A cluster of one node has no peer to authenticate.
  cfg.nodes.pop_back();
  caf::actor_system_config alone;
  auto notes = prepare_node_system_config(alone, cfg, "n1");
  REQUIRE(notes);
  REQUIRE(notes->size() == 1);
  CHECK_THAT(notes->front(), Catch::Contains("plain TCP") && Catch::Contains("loopback only"));
  CHECK(alone.openssl_certificate.empty());
  CHECK(caf::get_or(alone, "middleman.heartbeat-interval", caf::timespan{0}) ==
        caf::timespan{100ms});
  // A node off loopback without security is refused here too (the parser refuses it first).
  cfg.nodes[0].host = "10.1.2.3";
  caf::actor_system_config conf2;
  CHECK(is(prepare_node_system_config(conf2, cfg, "n1").error(), security_errc::insecure_address));
}

TEST_CASE("publishing binds the given address only and never all interfaces", "[security]") {
  plain_system plain;
  auto echo = plain.sys->spawn(successor);
  for (const auto* host : {"0.0.0.0", "", "::", "[::]"}) {
    auto res = publish_at(*plain.sys, echo, host, 0);
    REQUIRE_FALSE(res);
    CHECK(is(res.error(), security_errc::insecure_address));
  }
  // Plain TCP off loopback is refused for publishing and connecting alike.
  auto off = publish_at(*plain.sys, echo, "10.1.2.3", 0);
  REQUIRE_FALSE(off);
  CHECK(is(off.error(), security_errc::insecure_address));
  auto conn = connect_to_peer(*plain.sys, "10.1.2.3", 4811, 1s);
  REQUIRE_FALSE(conn);
  CHECK(is(conn.error(), security_errc::insecure_address));
  // On loopback it publishes, bound to 127.0.0.1 only: the port does not answer
  // on 127.0.0.2 (which a wildcard bind would), and a plain peer gets an answer.
  auto port = publish_at(*plain.sys, echo, "127.0.0.1", 0);
  REQUIRE(port);
  CHECK(*port != 0);
  plain_system peer;
  auto proxy = connect_to_peer(*peer.sys, "127.0.0.1", *port, 10s);
  REQUIRE(proxy);
  std::string why;
  CHECK(ask(*peer.sys, *proxy, why) == 42);
  CHECK_FALSE(accepts_on("127.0.0.2", *port));
  caf::anon_send_exit(echo, caf::exit_reason::user_shutdown);
}

TEST_CASE("a peer with a certificate of the cluster CA connects over TLS and gets an answer",
          "[security]") {
  certified_clusters c;
  node_system server{c.cluster, "n1"};
  auto echo = server.sys->spawn(successor);
  server.actors.push_back(echo);
  auto port = publish_at(*server.sys, echo, "127.0.0.1", 0);
  REQUIRE(port);
  CHECK(*port != 0);
  node_system client{c.cluster, "n2"};
  const auto fast_before = detail::tls_fast_path_installed();
  const auto guards_before = detail::tls_fast_path_sigpipe_guards_skipped();
  auto proxy = connect_to_peer(*client.sys, "127.0.0.1", *port, 10s);
  INFO((proxy ? std::string{} : describe(proxy.error())));
  REQUIRE(proxy);
  std::string why;
  auto answer = ask(*client.sys, *proxy, why);
  INFO(why);
  CHECK(answer == 42);
  // Both ends of the connection (CAF's openssl sessions) took the fast path.
  CHECK(detail::tls_fast_path_installed() >= fast_before + 2);
  // And their OpenSSL calls went without CAF's SIGPIPE guards (three system calls each).
  CHECK(detail::tls_fast_path_sigpipe_guards_skipped() > guards_before);
  // The node speaks TLS only: a raw TLS client with n2's certificate gets the
  // node's first bytes, the same client without a certificate gets none.
  const auto& ca = c.cluster.cluster.security->ca;
  const auto& n2 = c.node(c.cluster, "n2");
  auto with_cert = raw_tls_client(*port, ca, n2.cert, n2.key);
  CHECK(with_cert.handshake);
  CHECK(with_cert.bytes > 0);
  // Bound to the node's address only.
  CHECK_FALSE(accepts_on("127.0.0.2", *port));
}

namespace {

/// Folds `msg` into `hash` (FNV-1a over its length and bytes): the same
/// messages in the same order give the same hash.
uint64_t fold(uint64_t hash, const std::string& msg) {
  auto mix = [&](unsigned char c) {
    hash ^= c;
    hash *= 1099511628211ull;
  };
  for (int i = 0; i < 8; ++i)
    mix(static_cast<unsigned char>(msg.size() >> (8 * i)));
  for (char c : msg)
    mix(static_cast<unsigned char>(c));
  return hash;
}

/// Folds every string it receives; answers an int with how many and the hash.
caf::behavior ledger(caf::event_based_actor* self) {
  auto hash = std::make_shared<uint64_t>(14695981039346656037ull);
  auto count = std::make_shared<uint64_t>(0);
  CAF_IGNORE_UNUSED(self);
  return {
      [=](const std::string& msg) {
        *hash = fold(*hash, msg);
        ++*count;
      },
      [=](int) { return std::to_string(*count) + ":" + std::to_string(*hash); },
  };
}

} // namespace

TEST_CASE("messages of every size between two nodes over TLS arrive whole and in order",
          "[security]") {
  // Sizes around TLS's 16 KiB records and CAF's buffers, sent without waiting
  // so that CAF writes many at once, then one request whose answer must come.
  certified_clusters c;
  node_system server{c.cluster, "n1"};
  auto sink = server.sys->spawn(ledger);
  server.actors.push_back(sink);
  auto port = publish_at(*server.sys, sink, "127.0.0.1", 0);
  REQUIRE(port);
  node_system client{c.cluster, "n2"};
  auto proxy = connect_to_peer(*client.sys, "127.0.0.1", *port, 10s);
  REQUIRE(proxy);
  const std::vector<size_t> sizes{0,     1,     100,       16383,      16384,          16385,
                                  32768, 65536, 65536 + 7, 300 * 1024, 1024 * 1024 + 3};
  uint64_t hash = 14695981039346656037ull;
  uint64_t count = 0;
  caf::scoped_actor self{*client.sys};
  for (int round = 0; round < 12; ++round)
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::string msg(sizes[(i + static_cast<size_t>(round)) % sizes.size()], '\0');
      for (size_t k = 0; k < msg.size(); ++k)
        msg[k] = static_cast<char>((k * 131 + static_cast<size_t>(round) * 7 + i) & 0xff);
      hash = fold(hash, msg);
      ++count;
      self->send(*proxy, std::move(msg));
    }
  std::string summary;
  self->request(*proxy, 30s, 0)
      .receive([&](std::string& s) { summary = std::move(s); },
               [&](caf::error& err) { summary = client.sys->render(err); });
  CHECK(summary == std::to_string(count) + ":" + std::to_string(hash));
}

TEST_CASE("a peer with no certificate cannot connect", "[security]") {
  certified_clusters c;
  node_system server{c.cluster, "n1"};
  auto echo = server.sys->spawn(successor);
  server.actors.push_back(echo);
  auto port = publish_at(*server.sys, echo, "127.0.0.1", 0);
  REQUIRE(port);
  const auto& ca = c.cluster.cluster.security->ca;

  SECTION("a TLS client that trusts the CA but presents no certificate gets nothing") {
    auto out = raw_tls_client(*port, ca, "", "");
    CHECK(out.bytes <= 0);
    // The node's alert: it demands a certificate.
    CHECK_THAT(out.error, Catch::Contains("certificate required"));
  }
  SECTION("a CAF peer with the openssl module and no certificate (anonymous TLS)") {
    manual_tls_system peer{"", "", ""};
    auto proxy = connect_to_peer(*peer.sys, "127.0.0.1", *port, 10s);
    CHECK(refused_in_handshake(proxy));
  }
  SECTION("a CAF peer over plain TCP") {
    plain_system peer;
    auto proxy = connect_to_peer(*peer.sys, "127.0.0.1", *port, 10s);
    CHECK(refused_in_handshake(proxy));
  }
  // The node still serves peers with a valid certificate afterwards.
  node_system client{c.cluster, "n2"};
  auto proxy = connect_to_peer(*client.sys, "127.0.0.1", *port, 10s);
  INFO((proxy ? std::string{} : describe(proxy.error())));
  REQUIRE(proxy);
  std::string why;
  CHECK(ask(*client.sys, *proxy, why) == 42);
}

TEST_CASE("a peer with a certificate of another CA cannot connect", "[security]") {
  certified_clusters c;
  const auto& ca = c.cluster.cluster.security->ca;
  const auto& rogue = c.node(c.other, "n2");

  SECTION("the node refuses a client whose certificate another CA issued") {
    node_system server{c.cluster, "n1"};
    auto echo = server.sys->spawn(successor);
    server.actors.push_back(echo);
    auto port = publish_at(*server.sys, echo, "127.0.0.1", 0);
    REQUIRE(port);
    // The rogue trusts the cluster's CA, so only the node's check can stop it.
    manual_tls_system peer{rogue.cert, rogue.key, ca};
    auto proxy = connect_to_peer(*peer.sys, "127.0.0.1", *port, 10s);
    CHECK(refused_in_handshake(proxy));
    auto raw = raw_tls_client(*port, ca, rogue.cert, rogue.key);
    CHECK(raw.bytes <= 0);
    // The node's alert: it does not know the CA that issued the certificate.
    CHECK_THAT(raw.error, Catch::Contains("unknown ca"));
    // A valid client is still served.
    node_system client{c.cluster, "n2"};
    auto good = connect_to_peer(*client.sys, "127.0.0.1", *port, 10s);
    REQUIRE(good);
    std::string why;
    CHECK(ask(*client.sys, *good, why) == 42);
  }
  SECTION("a node refuses a server whose certificate another CA issued") {
    // The rogue server trusts the cluster's CA, so only the client's check can stop it.
    manual_tls_system server{rogue.cert, rogue.key, ca};
    auto echo = server.sys->spawn(successor);
    server.actors.push_back(echo);
    auto port = publish_at(*server.sys, echo, "127.0.0.1", 0);
    REQUIRE(port);
    node_system client{c.cluster, "n2"};
    auto proxy = connect_to_peer(*client.sys, "127.0.0.1", *port, 10s);
    CHECK(refused_in_handshake(proxy));
  }
}

namespace {

/// A TCP port on 127.0.0.1 that was free a moment ago.
uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  REQUIRE(inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr) == 1);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// Writes a three-node TLS cluster (n1, n2, n3 on free loopback ports) into
/// `dir` with its certificates, and returns its config.
node_config tls_cluster(const std::string& dir) {
  std::string text = "[cluster]\nname = \"sec\"\nstate_root = \"" + dir +
                     "/state\"\n[cluster.security]\ndir = \"" + dir + "/certs\"\n";
  // Three distinct ports: the kernel may hand out a port it just released again,
  // and two nodes on one address are a config error.
  std::set<uint16_t> ports;
  while (ports.size() < 3)
    ports.insert(free_port());
  auto port = ports.begin();
  for (const char* n : {"n1", "n2", "n3"})
    text += std::string{"[[node]]\nname = \""} + n +
            "\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(*port++) + "\n";
  auto path = dir + "/cluster.toml";
  std::ofstream{path} << text;
  auto nc = load_node_config(path);
  REQUIRE(nc);
  REQUIRE(create_cluster_certificates(*nc, false));
  return std::move(*nc);
}

} // namespace

/// Node n1 of a TLS cluster in an in-process coordination service, which other nodes of the
/// file can join (join()) to be peers it knows.
struct tls_node {
  scratch_dir dir;
  // Sessions that outlive every test: a node joined by join() never renews.
  std::shared_ptr<memory_coordination_service> service =
      std::make_shared<memory_coordination_service>(std::chrono::hours(1));
  std::vector<std::shared_ptr<memory_coordinator>> sessions;
  std::optional<node_config> nc{tls_cluster(dir.path)};
  caf::expected<std::vector<std::string>> prepared{std::vector<std::string>{}};
  std::unique_ptr<runtime> rt;
  std::shared_ptr<cluster_node> node;

  tls_node() {
    runtime_config rc;
    rc.log_events = false;
    rc.configure = [this](caf::actor_system_config& cfg) {
      prepared = cluster_node::configure(cfg, *nc, "n1");
    };
    rt = std::make_unique<runtime>(rc);
    REQUIRE(prepared);
    auto started =
        cluster_node::start(*rt, *nc, "n1", nullptr, {}, memory_coordinator::make(service));
    REQUIRE(started);
    node = std::move(*started);
  }

  ~tls_node() { node.reset(); }

  /// Node `name` joins the coordination service: the epoch it was given.
  uint64_t join(const std::string& name) {
    auto c = memory_coordinator::make(service);
    auto e = etcd_test::join(*c, name);
    REQUIRE(e);
    sessions.push_back(c);
    return *e;
  }
};

TEST_CASE("a node refuses a peer whose certificate names another node than it claims to be",
          "[security]") {
  tls_node t;
  auto& nc = t.nc;
  auto node = std::make_optional(t.node);
  // A peer with a valid certificate of the cluster CA: n3's, at the epoch the coordinator gave
  // n3 (a hello at one it never gave waits for a view that shows it).
  const auto n3_epoch = t.join("n3");
  const auto& n3 = *nc->find_node("n3");
  manual_tls_system rogue{n3.cert, n3.key, nc->cluster.security->ca};
  auto agent = connect_to_peer(*rogue.sys, "127.0.0.1", (*node)->self().port, 10s);
  INFO((agent ? std::string{} : describe(agent.error())));
  REQUIRE(agent);
  auto hello = [&](const std::string& name) {
    caf::expected<std::string> out{std::string{}};
    caf::scoped_actor self{*rogue.sys};
    self->request(*agent, 10s, caf::atom("us_nhello"), name, n3_epoch, std::string{})
        .receive([&](const std::string& who, uint64_t, const std::string&) { out = who; },
                 [&](caf::error& err) { out = std::move(err); });
    return out;
  };
  // Claiming to be n2 with n3's certificate is refused ...
  auto as_n2 = hello("n2");
  REQUIRE_FALSE(as_n2);
  CHECK_THAT(describe(as_n2.error()),
             Catch::Contains("says it is node n2") && Catch::Contains("certificate names 'n3'"));
  CHECK((*node)->peers().front().state == peer_state::unknown); // n2 was not admitted
  // ... while the same connection saying n3 is accepted.
  auto as_n3 = hello("n3");
  INFO((as_n3 ? std::string{} : describe(as_n3.error())));
  REQUIRE(as_n3);
  CHECK(*as_n3 == "n1");
}

TEST_CASE("over TLS a node takes a message's sender from its certificate, not from the message",
          "[security]") {
  tls_node t;
  auto& nc = t.nc;
  auto node = std::make_optional(t.node);
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<std::string> notes;
  (*node)->on_note([&](const std::string& line) {
    std::lock_guard<std::mutex> guard{mtx};
    notes.push_back(line);
    cv.notify_all();
  });
  // n3's valid certificate, speaking for n2.
  const auto& n3 = *nc->find_node("n3");
  manual_tls_system rogue{n3.cert, n3.key, nc->cluster.security->ca};
  auto agent = connect_to_peer(*rogue.sys, "127.0.0.1", (*node)->self().port, 10s);
  INFO((agent ? std::string{} : describe(agent.error())));
  REQUIRE(agent);
  caf::scoped_actor self{*rogue.sys};
  // A heartbeat naming n2 (and n2 as leader) is refused and logged: n2 is not admitted.
  self->send(*agent, caf::atom("us_nbeat"), std::string{"n2"}, uint64_t{1}, std::string{"n2"});
  {
    std::unique_lock<std::mutex> guard{mtx};
    REQUIRE(cv.wait_for(guard, 10s, [&] { return !notes.empty(); }));
    CHECK_THAT(notes.front(),
               Catch::Contains("says it is node n2") && Catch::Contains("certificate names 'n3'"));
  }
  for (const auto& p : (*node)->peers())
    if (p.name == "n2")
      CHECK(p.state == peer_state::unknown);
  // A replica said to be from n2 is refused before it is read.
  caf::error replica_err;
  self->request(*agent, 10s, caf::atom("us_nrepl"), std::string{"n2"}, uint64_t{1}, uint64_t{1},
                checkpoint_batch{})
      .receive([](uint64_t) {}, [&](caf::error& err) { replica_err = std::move(err); });
  REQUIRE(replica_err);
  CHECK(is(replica_err, cluster_errc::identity_mismatch));
  {
    std::lock_guard<std::mutex> guard{mtx};
    CHECK(notes.size() == 2);
  }
  // A fence of n1 (the old protocol's message) is no message of the node
  // protocol any more: only the coordinator fences. The node goes on.
  self->send(*agent, caf::atom("us_nfence"), std::string{"n1"}, (*node)->generation(),
             std::string{"n2"}, uint64_t{1});
  // The same connection speaking as n3 is heard.
  std::string status;
  self->request(*agent, 10s, caf::atom("us_nstat"))
      .receive([&](const std::string& s) { status = s; },
               [&](caf::error& err) { status = describe(err); });
  CHECK_THAT(status, Catch::Contains("n1"));
  CHECK_FALSE((*node)->await_stop_request(0ms));
  CHECK_FALSE((*node)->fenced());
}

TEST_CASE("the status reader's certificate reads a node's status and nothing else", "[security]") {
  tls_node t;
  auto& nc = t.nc;
  auto node = std::make_optional(t.node);
  auto [cert, key] = status_credential(*nc);
  REQUIRE(read_certificate(cert));
  CHECK(read_certificate(cert)->subject_cn == status_reader_name);
  manual_tls_system reader{cert, key, nc->cluster.security->ca};
  auto agent = connect_to_peer(*reader.sys, "127.0.0.1", (*node)->self().port, 10s);
  INFO((agent ? std::string{} : describe(agent.error())));
  REQUIRE(agent);
  caf::scoped_actor self{*reader.sys};
  std::string status;
  self->request(*agent, 10s, caf::atom("us_nstat"))
      .receive([&](const std::string& s) { status = s; },
               [&](caf::error& err) { status = describe(err); });
  CHECK_THAT(status, Catch::Contains("node n1"));
  // A replica and a stop request from the reader are refused: it names no node.
  caf::error replica_err;
  self->request(*agent, 10s, caf::atom("us_nrepl"), std::string{"n2"}, uint64_t{1}, uint64_t{1},
                checkpoint_batch{})
      .receive([](uint64_t) {}, [&](caf::error& err) { replica_err = std::move(err); });
  CHECK(is(replica_err, cluster_errc::identity_mismatch));
  caf::error stop_err;
  self->request(*agent, 10s, caf::atom("us_nstop"))
      .receive([] {}, [&](caf::error& err) { stop_err = std::move(err); });
  CHECK(is(stop_err, cluster_errc::identity_mismatch));
  CHECK_FALSE((*node)->await_stop_request(0ms));
}

// -- processes a node hosts ----------------------------------------------------------------

namespace {

using tls_child_ports_atom = caf::atom_constant<caf::atom("tc_ports")>;

/// The TCP ports this process listens on, comma-separated: its sockets
/// (/proc/self/fd) that /proc/self/net/tcp lists in state LISTEN.
std::string listening_ports() {
  std::set<std::string> inodes;
  for (const auto& e : fs::directory_iterator{"/proc/self/fd"}) {
    std::error_code ec;
    auto target = fs::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0)
      inodes.insert(target.substr(8, target.size() - 9));
  }
  std::ifstream in{"/proc/self/net/tcp"};
  std::string line;
  std::getline(in, line); // The header.
  std::string out;
  while (std::getline(in, line)) {
    std::istringstream fields{line};
    std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
    fields >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
    if (state != "0A" || inodes.count(inode) == 0)
      continue;
    auto port = std::stoul(local.substr(local.find(':') + 1), nullptr, 16);
    out += (out.empty() ? "" : ",") + std::to_string(port);
  }
  return out;
}

} // namespace

TEST_CASE("tls process host child", "[.][tls_process_host_child]") {
  // Run by the test below in a child process: hosts an actor the way an
  // isolated worker's process does, with the node's credentials.
  auto role = actor_host_role_from_env();
  REQUIRE(role);
  auto nc = load_node_config(role->get("config"));
  REQUIRE(nc);
  auto node = role->get("node");
  auto configure = [&](caf::actor_system_config& cfg) {
    (void)prepare_hosted_process_tls(cfg, *nc, node);
  };
  auto make = [](caf::actor_system& sys) -> caf::expected<caf::actor> {
    return caf::actor{sys.spawn([]() -> caf::behavior {
      return {
          [](int x) { return x + 1; },
          [](tls_child_ports_atom) { return listening_ports(); },
      };
    })};
  };
  std::_Exit(run_actor_host(*role, configure, make, nullptr));
}

TEST_CASE("a process a node hosts talks to it over mutual TLS and to no other local process",
          "[security][process_host]") {
  certified_clusters c;
  node_system parent{c.cluster, "n1"};
  process_spec ps;
  ps.name = "tls-child";
  ps.args = {"[tls_process_host_child]", "-o", "/dev/null"};
  ps.role = {{"config", c.dir.path + "/cluster.toml"}, {"node", "n1"}};
  ps.tls = true;
  auto keeper = spawn_process_actor(*parent.sys, ps);
  REQUIRE(keeper);
  parent.actors.push_back(*keeper);
  caf::scoped_actor self{*parent.sys};
  self->monitor(*keeper);
  int answer = 0;
  std::string ports;
  std::string why;
  self->request(*keeper, 60s, 41)
      .receive([&](int x) { answer = x; }, [&](caf::error& err) { why = describe(err); });
  if (answer != 42)
    self->receive([&](caf::down_msg& dm) { why += "; the keeper ended: " + describe(dm.reason); },
                  caf::after(std::chrono::seconds(10)) >> [] {});
  INFO(why);
  CHECK(answer == 42);
  self->request(*keeper, 10s, tls_child_ports_atom::value)
      .receive([&](std::string& p) { ports = p; }, [&](caf::error& err) { why = describe(err); });
  INFO("the child listens on " << ports);
  REQUIRE_FALSE(ports.empty());
  REQUIRE(ports.find(',') == std::string::npos);
  auto port = static_cast<uint16_t>(std::stoul(ports));
  SECTION("a local process over plain TCP is refused") {
    plain_system peer;
    CHECK(refused_in_handshake(connect_to_peer(*peer.sys, "127.0.0.1", port, 10s)));
  }
  SECTION("a local process with a certificate of another CA is refused") {
    node_system rogue{c.other, "n2"};
    CHECK(refused_in_handshake(connect_to_peer(*rogue.sys, "127.0.0.1", port, 10s)));
  }
  // The node's own connection still works.
  answer = 0;
  self->request(*keeper, 10s, 1).receive([&](int x) { answer = x; }, [](caf::error&) {});
  CHECK(answer == 2);
}

TEST_CASE("a node without security gives its hosted processes no TLS, and TLS needs the module",
          "[security][process_host]") {
  certified_clusters c;
  auto plain = write_config(c.dir.path, "plain.toml", "", false);
  caf::actor_system_config cfg;
  auto loaded = prepare_hosted_process_tls(cfg, plain, "n1");
  REQUIRE(loaded);
  CHECK_FALSE(*loaded);
  auto secured = prepare_hosted_process_tls(cfg, c.cluster, "n1");
  REQUIRE(secured);
  CHECK(*secured);
  CHECK_FALSE(prepare_hosted_process_tls(cfg, c.cluster, "n9"));
  plain_system parent;
  process_spec ps;
  ps.name = "tls-child";
  ps.tls = true;
  auto keeper = spawn_process_actor(*parent.sys, ps);
  REQUIRE_FALSE(keeper);
  CHECK(describe(keeper.error()).find("openssl") != std::string::npos);
}
