#pragma once

// Private to runtime/src/cluster: owning handles for OpenSSL objects and
// OpenSSL's error queue rendered into `security_errc` errors.

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <memory>
#include <string>

#include <caf/error.hpp>

#include "understudy/cluster/security.hpp"

namespace understudy::detail {

template <class T, void (*Free)(T*)>
struct openssl_deleter {
  void operator()(T* ptr) const noexcept { Free(ptr); }
};

using bio_ptr = std::unique_ptr<BIO, openssl_deleter<BIO, BIO_free_all>>;
using bignum_ptr = std::unique_ptr<BIGNUM, openssl_deleter<BIGNUM, BN_free>>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, openssl_deleter<EVP_PKEY, EVP_PKEY_free>>;
using x509_ptr = std::unique_ptr<X509, openssl_deleter<X509, X509_free>>;
using store_ptr = std::unique_ptr<X509_STORE, openssl_deleter<X509_STORE, X509_STORE_free>>;
using store_ctx_ptr =
    std::unique_ptr<X509_STORE_CTX, openssl_deleter<X509_STORE_CTX, X509_STORE_CTX_free>>;

/// Drains this thread's OpenSSL error queue into one line.
inline std::string openssl_errors() {
  std::string result;
  while (auto code = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!result.empty())
      result += "; ";
    result += buf;
  }
  return result.empty() ? "no OpenSSL error recorded" : result;
}

/// A `security_errc::crypto_error` saying `what` failed, with OpenSSL's reasons
/// (draining this thread's error queue).
inline caf::error crypto_error(const std::string& what) {
  return make_error(security_errc::crypto_error, what + ": " + openssl_errors());
}

} // namespace understudy::detail
