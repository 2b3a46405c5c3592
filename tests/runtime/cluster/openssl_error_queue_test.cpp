// Tests for runtime/src/cluster/openssl_error_queue.cpp: the SSL_* interposers
// that empty the thread's OpenSSL error queue before each call (see "OpenSSL
// interposition" in understudy/cluster/security.hpp).

#include <dlfcn.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <string>

#include <catch2/catch.hpp>

#include "understudy/cluster/security.hpp"

using namespace understudy;

namespace {

/// A client and a server TLS connection joined by an in-memory BIO pair, with
/// their handshake done (through the interposed SSL_connect and SSL_accept).
struct tls_pair {
  SSL_CTX* server_ctx = SSL_CTX_new(TLS_server_method());
  SSL_CTX* client_ctx = SSL_CTX_new(TLS_client_method());
  SSL* server = nullptr;
  SSL* client = nullptr;

  tls_pair() {
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
    BIO* client_bio = nullptr;
    BIO* server_bio = nullptr;
    REQUIRE(BIO_new_bio_pair(&client_bio, 0, &server_bio, 0) == 1);
    SSL_set_bio(client, client_bio, client_bio);
    SSL_set_bio(server, server_bio, server_bio);
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
    ERR_clear_error();
  }

  tls_pair(const tls_pair&) = delete;
  tls_pair& operator=(const tls_pair&) = delete;
};

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
