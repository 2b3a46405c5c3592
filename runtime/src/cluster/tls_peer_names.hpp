#pragma once

// Private to runtime/src/cluster: the table behind `tls_peer_name`, filled
// from the OpenSSL interposers of openssl_error_queue.cpp.

#include <openssl/ssl.h>

namespace understudy::detail {

/// Records, once `ssl`'s handshake is done, the common name of the certificate
/// its peer presented under the peer's address; the entry goes when OpenSSL
/// frees `ssl`. Cheap for a connection already recorded (one lookup of its ex
/// data, no lock). Called after every interposed SSL_read, SSL_write,
/// SSL_connect and SSL_accept, on whichever thread made that call.
void note_tls_peer(SSL* ssl);

} // namespace understudy::detail
