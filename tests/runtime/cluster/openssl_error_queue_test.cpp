// Tests for runtime/src/cluster/openssl_error_queue.cpp and tls_fast_path.cpp:
// the SSL_* interposers that empty the thread's OpenSSL error queue before each
// call (see "OpenSSL interposition" in understudy/cluster/security.hpp), and
// the fast path they give CAF's TLS connections.

#include <dlfcn.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <random>
#include <string>
#include <vector>

#include <caf/openssl/session.hpp>
#include <catch2/catch.hpp>

#include "cluster/tls_fast_path.hpp"
#include "understudy/cluster/security.hpp"

using namespace understudy;

namespace {

/// How a tls_pair's two ends are joined.
enum class joined_by {
  /// An in-memory BIO pair.
  bio_pair,
  /// A non-blocking stream socket pair whose sockets buffer `socket_buffer`
  /// bytes, each end with the fast path.
  fast_sockets,
};

/// A client and a server TLS connection, with their handshake done (through
/// the interposed SSL_connect and SSL_accept).
struct tls_pair {
  SSL_CTX* server_ctx = SSL_CTX_new(TLS_server_method());
  SSL_CTX* client_ctx = SSL_CTX_new(TLS_client_method());
  SSL* server = nullptr;
  SSL* client = nullptr;
  int fds[2] = {-1, -1};

  explicit tls_pair(joined_by how = joined_by::bio_pair, int socket_buffer = 0) {
    REQUIRE(server_ctx != nullptr);
    REQUIRE(client_ctx != nullptr);
    // A throwaway self-signed server certificate; the client does not verify it.
    EVP_PKEY* key = EVP_EC_gen("P-256");
    REQUIRE(key != nullptr);
    X509* cert = X509_new();
    REQUIRE(cert != nullptr);
    X509_set_version(cert, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("server"), -1, -1, 0);
    X509_set_issuer_name(cert, X509_get_subject_name(cert));
    REQUIRE(X509_sign(cert, key, EVP_sha256()) > 0);
    REQUIRE(SSL_CTX_use_certificate(server_ctx, cert) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey(server_ctx, key) == 1);
    X509_free(cert);
    EVP_PKEY_free(key);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, nullptr);
    // No TLS 1.3 session tickets after the handshake: processing them would
    // run OpenSSL's state machine, which empties the error queue by itself.
    SSL_CTX_set_num_tickets(server_ctx, 0);
    server = SSL_new(server_ctx);
    client = SSL_new(client_ctx);
    REQUIRE(server != nullptr);
    REQUIRE(client != nullptr);
    if (how == joined_by::bio_pair) {
      BIO* client_bio = nullptr;
      BIO* server_bio = nullptr;
      REQUIRE(BIO_new_bio_pair(&client_bio, 0, &server_bio, 0) == 1);
      SSL_set_bio(client, client_bio, client_bio);
      SSL_set_bio(server, server_bio, server_bio);
    } else {
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
      for (int fd : fds)
        if (socket_buffer > 0) {
          REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &socket_buffer, sizeof socket_buffer) ==
                  0);
          REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &socket_buffer, sizeof socket_buffer) ==
                  0);
        }
      // Called from here, not from CAF: SSL_set_fd leaves them as OpenSSL makes them.
      REQUIRE(SSL_set_fd(client, fds[0]) == 1);
      REQUIRE(SSL_set_fd(server, fds[1]) == 1);
      REQUIRE_FALSE(detail::tls_fast_path_on(client));
      REQUIRE(detail::tls_fast_path_install(client, fds[0]));
      REQUIRE(detail::tls_fast_path_install(server, fds[1]));
      REQUIRE(detail::tls_fast_path_on(client));
    }
    bool client_done = false;
    bool server_done = false;
    for (int round = 0; round < 20 && !(client_done && server_done); ++round) {
      if (!client_done)
        client_done = SSL_connect(client) == 1;
      if (!server_done)
        server_done = SSL_accept(server) == 1;
    }
    REQUIRE(client_done);
    REQUIRE(server_done);
    ERR_clear_error();
  }

  ~tls_pair() {
    SSL_free(client);
    SSL_free(server);
    SSL_CTX_free(client_ctx);
    SSL_CTX_free(server_ctx);
    for (int fd : fds)
      if (fd >= 0)
        ::close(fd);
    ERR_clear_error();
  }

  tls_pair(const tls_pair&) = delete;
  tls_pair& operator=(const tls_pair&) = delete;
};

/// `n` bytes that do not repeat within a record.
std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 gen{seed};
  std::string out(n, '\0');
  for (auto& c : out)
    c = static_cast<char>(gen() & 0xff);
  return out;
}

/// Reads from `ssl` until it has nothing more (SSL_ERROR_WANT_READ), at most
/// `chunk` bytes per SSL_read, appending to `got`; the largest single read.
size_t read_available(SSL* ssl, std::string& got, size_t chunk) {
  std::vector<char> buf(chunk);
  size_t largest = 0;
  for (;;) {
    auto n = SSL_read(ssl, buf.data(), static_cast<int>(buf.size()));
    if (n <= 0) {
      REQUIRE(SSL_get_error(ssl, n) == SSL_ERROR_WANT_READ);
      return largest;
    }
    got.append(buf.data(), static_cast<size_t>(n));
    largest = std::max(largest, static_cast<size_t>(n));
  }
}

/// Leaves an error in this thread's OpenSSL error queue, as a failed
/// connection on the same thread does.
void leave_stale_error() {
  ERR_raise(ERR_LIB_SSL, SSL_R_UNEXPECTED_EOF_WHILE_READING);
  REQUIRE(ERR_peek_error() != 0);
}

} // namespace

TEST_CASE("SSL_read and SSL_write resolve to the runtime's error-queue guard", "[security]") {
  CHECK(openssl_error_queue_guarded());
  CHECK(::dlsym(RTLD_DEFAULT, "SSL_read") != ::dlsym(RTLD_NEXT, "SSL_read"));
}

TEST_CASE("a stale OpenSSL error does not fail the next read on another connection", "[security]") {
  tls_pair tls;
  char buf[64];
  SECTION("OpenSSL's own SSL_read reports the stale error as its own") {
    // What CAF 0.17's session saw without the guard: no data yet, but
    // SSL_get_error says the connection is broken.
    auto real_read = reinterpret_cast<int (*)(SSL*, void*, int)>(::dlsym(RTLD_NEXT, "SSL_read"));
    REQUIRE(real_read != nullptr);
    leave_stale_error();
    auto n = real_read(tls.client, buf, sizeof buf);
    REQUIRE(n <= 0);
    CHECK(SSL_get_error(tls.client, n) == SSL_ERROR_SSL);
  }
  SECTION("through the runtime, SSL_read with no data yet asks to read again") {
    leave_stale_error();
    auto n = SSL_read(tls.client, buf, sizeof buf);
    REQUIRE(n <= 0);
    CHECK(SSL_get_error(tls.client, n) == SSL_ERROR_WANT_READ);
    CHECK(ERR_peek_error() == 0);
  }
  SECTION("through the runtime, data written after a stale error arrives") {
    leave_stale_error();
    const std::string hello = "hello";
    auto written = SSL_write(tls.server, hello.data(), static_cast<int>(hello.size()));
    CHECK(written == static_cast<int>(hello.size()));
    CHECK(ERR_peek_error() == 0);
    leave_stale_error();
    auto n = SSL_read(tls.client, buf, sizeof buf);
    REQUIRE(n == static_cast<int>(hello.size()));
    CHECK(std::string(buf, static_cast<size_t>(n)) == hello);
  }
}

TEST_CASE("the TLS fast path reports a write done only once every byte of it has left",
          "[security]") {
  // A socket that holds 32 KiB: a 1 MiB write fills it again and again. The
  // writer calls as CAF's stream does, with the rest after a partial success
  // and with the same bytes after SSL_ERROR_WANT_WRITE; the reader drains a
  // little whenever the writer is told to wait.
  tls_pair tls{joined_by::fast_sockets, 32 * 1024};
  const auto data = random_bytes(1024 * 1024 + 12345, 7);
  std::string got;
  size_t off = 0;
  int waits = 0;
  long most_buffered = 0;
  while (off < data.size()) {
    auto n = SSL_write(tls.server, data.data() + off, static_cast<int>(data.size() - off));
    most_buffered =
        std::max(most_buffered, static_cast<long>(BIO_wpending(SSL_get_wbio(tls.server))));
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    REQUIRE(SSL_get_error(tls.server, n) == SSL_ERROR_WANT_WRITE);
    ++waits;
    read_available(tls.client, got, 4096);
  }
  CHECK(waits > 0);
  // What the write BIO holds stays bounded (256 KiB and one record).
  CHECK(most_buffered > 0);
  CHECK(most_buffered <= 256 * 1024 + 17 * 1024);
  // Reported done: nothing is left behind, and every byte reaches the reader
  // with no further call on the writer.
  CHECK(BIO_wpending(SSL_get_wbio(tls.server)) == 0);
  read_available(tls.client, got, 65536);
  REQUIRE(got.size() == data.size());
  CHECK(got == data);
}

TEST_CASE(
    "the SIGPIPE guards skipped are CAF's openssl module's only: other callers' signal "
    "masks change as they ask",
    "[security]") {
  // Only return addresses inside CAF's openssl module count as its guards.
  CHECK(detail::tls_fast_path_from_caf_openssl(
      reinterpret_cast<const void*>(&caf::openssl::make_session)));
  CHECK_FALSE(detail::tls_fast_path_from_caf_openssl(
      reinterpret_cast<const void*>(&detail::tls_fast_path_installed)));
  const auto skipped = detail::tls_fast_path_sigpipe_guards_skipped();
  // This caller blocks SIGPIPE the way CAF's guard does: it really is blocked, and the
  // restore really restores.
  sigset_t pipe_only;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  sigset_t saved;
  REQUIRE(pthread_sigmask(SIG_BLOCK, &pipe_only, &saved) == 0);
  sigset_t now;
  REQUIRE(pthread_sigmask(SIG_BLOCK, nullptr, &now) == 0);
  CHECK(sigismember(&now, SIGPIPE) == 1);
  timespec zero{};
  CHECK(sigtimedwait(&pipe_only, nullptr, &zero) == -1);
  REQUIRE(pthread_sigmask(SIG_SETMASK, &saved, nullptr) == 0);
  REQUIRE(pthread_sigmask(SIG_BLOCK, nullptr, &now) == 0);
  CHECK(sigismember(&now, SIGPIPE) == sigismember(&saved, SIGPIPE));
  CHECK(detail::tls_fast_path_sigpipe_guards_skipped() == skipped);
}
