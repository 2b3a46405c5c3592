// The common name each TLS peer of this process presented, by the peer's
// address, for `tls_peer_name`.

#include "tls_peer_names.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/x509.h>
#include <sys/socket.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "addresses.hpp"
#include "understudy/cluster/security.hpp"

namespace understudy {

namespace {

/// The common name of the certificate each TLS peer presented, by the peer's
/// address ("ip port"). Filled once per connection, when its handshake is done
/// (which CAF's non-blocking sessions may finish inside a later read or
/// write); emptied when OpenSSL frees the connection.
///
/// Process-wide because CAF 0.17 leaves no other way: caf::openssl::session
/// keeps its SSL object private and reports a connection's peer by address
/// only, so the certificate is seen only by the SSL_* interposers
/// (openssl_error_queue.cpp), which are process-wide themselves and know no
/// actor system. Entries are keyed by the connection's address, which is
/// unique within the process.
struct tls_peers {
  std::mutex mtx;
  /// Name and the connection's serial number, so that a freed connection
  /// does not erase the entry of a newer one with the same address.
  std::map<std::string, std::pair<std::string, uint64_t>> names;
  uint64_t serial = 0;

  static tls_peers& get() {
    static tls_peers instance;
    return instance;
  }
};

std::string address_key(const std::string& ip, uint16_t port) {
  return ip + " " + std::to_string(port);
}

/// A connection's entry in the table.
struct peer_key {
  std::string address;
  uint64_t serial = 0;
};

/// Frees a connection's entry when OpenSSL frees its session.
void forget_peer(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  auto* key = static_cast<peer_key*>(ptr);
  if (key == nullptr)
    return;
  if (!key->address.empty()) {
    auto& reg = tls_peers::get();
    std::lock_guard<std::mutex> guard{reg.mtx};
    auto i = reg.names.find(key->address);
    if (i != reg.names.end() && i->second.second == key->serial)
      reg.names.erase(i);
  }
  delete key;
}

} // namespace

void detail::note_tls_peer(SSL* ssl) {
  // Every read and write passes here: a lock-free test first. The ex data is
  // the connection's key in the table (set once its handshake is done). An ex
  // data index is process-wide in OpenSSL; one is taken for the process.
  static const int seen_index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, forget_peer);
  if (SSL_get_ex_data(ssl, seen_index) != nullptr || SSL_is_init_finished(ssl) != 1)
    return;
  auto* key = new peer_key;
  SSL_set_ex_data(ssl, seen_index, key);
  std::string name;
  if (X509* cert = SSL_get1_peer_certificate(ssl)) {
    char cn[256] = {0};
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0)
      name = cn;
    X509_free(cert);
  }
  sockaddr_storage sa{};
  socklen_t len = sizeof sa;
  if (::getpeername(SSL_get_fd(ssl), reinterpret_cast<sockaddr*>(&sa), &len) != 0)
    return;
  char ip[INET6_ADDRSTRLEN] = {0};
  uint16_t port = 0;
  if (sa.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&sa);
    ::inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    port = ntohs(in->sin_port);
  } else if (sa.ss_family == AF_INET6) {
    auto* in = reinterpret_cast<sockaddr_in6*>(&sa);
    ::inet_ntop(AF_INET6, &in->sin6_addr, ip, sizeof ip);
    port = ntohs(in->sin6_port);
  } else {
    return;
  }
  auto& reg = tls_peers::get();
  std::lock_guard<std::mutex> guard{reg.mtx};
  key->address = address_key(ip, port);
  key->serial = ++reg.serial;
  reg.names[key->address] = {name, key->serial};
}

std::optional<std::string> tls_peer_name(const std::string& host, uint16_t port) {
  auto& reg = tls_peers::get();
  std::lock_guard<std::mutex> guard{reg.mtx};
  auto i = reg.names.find(address_key(detail::canonical_ip(host), port));
  if (i == reg.names.end())
    return std::nullopt;
  return i->second.first;
}

} // namespace understudy
