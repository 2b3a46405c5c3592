#pragma once

// Private to runtime/src/cluster: the fast path of CAF's TLS connections,
// driven from the OpenSSL interposers of openssl_error_queue.cpp.
//
// CAF 0.17's openssl session writes each 16 KiB TLS record with a send of its
// own, where plain CAF sends a whole buffer per call. For the connections CAF's
// openssl module makes (and no other TLS connection of the process), the fast
// path coalesces writes: all records of a large SSL_write but its last go into
// a buffer of the connection's own write BIO and leave in sends of up to
// 256 KiB; the last record takes OpenSSL's ordinary non-blocking path, so a
// full socket still shows as SSL_ERROR_WANT_WRITE with CAF's write buffer not
// yet empty, and CAF keeps polling for writability until every buffered byte
// has left (nothing is ever left in the buffer once CAF believes its data is
// written).
//
// Reads stay as OpenSSL makes them: read-ahead (fewer recv calls) was tried and
// made 64 B messages slower (0.80x raw CAF to 0.60-0.65x in bench/cluster).
//
// CAF's session also wraps every OpenSSL call in three system calls that block
// SIGPIPE, wait for a pending one and restore the mask (CAF_BLOCK_SIGPIPE).
// With the fast path no write of those connections can raise SIGPIPE, so the
// interposed pthread_sigmask and sigtimedwait (openssl_error_queue.cpp) skip
// them when they return into CAF's openssl module, block and restore in pairs
// per thread; every other caller, and every call once one of that module's
// connections went without the fast path, reaches libc. That made 64 B
// messages over TLS about 1.4x faster in bench/cluster.

#include <openssl/ssl.h>

#include <cstdint>

namespace understudy::detail {

/// Called after OpenSSL's SSL_set_fd with the address it returns to: when that
/// address lies in CAF's openssl module, gives `ssl` the fast path (a
/// coalescing write BIO on `fd`). Other callers' connections are left as
/// OpenSSL made them.
void tls_fast_path_attach(SSL* ssl, int fd, const void* caller);

/// Gives `ssl`, whose socket is `fd`, the fast path, whoever made it; false
/// when OpenSSL could not make the write BIO (the connection stays as it was).
bool tls_fast_path_install(SSL* ssl, int fd);

/// Whether a SIGPIPE guard (pthread_sigmask blocking it) returning to `caller`
/// comes from CAF's openssl module while every connection that module made has
/// the fast path: then it guards against a SIGPIPE that cannot come (every
/// write goes out with MSG_NOSIGNAL) and is skipped (counted).
bool tls_fast_path_sigpipe_free(const void* caller);

/// How many SIGPIPE guards of CAF's openssl module were skipped so far.
uint64_t tls_fast_path_sigpipe_guards_skipped();

/// Whether `caller` (a return address) lies in CAF's openssl module.
bool tls_fast_path_from_caf_openssl(const void* caller);

/// How many connections this process gave the fast path so far.
uint64_t tls_fast_path_installed();

/// Whether `ssl` has the fast path.
bool tls_fast_path_on(const SSL* ssl);

/// SSL_write for a connection with the fast path: `next` is OpenSSL's.
int tls_fast_path_write(int (*next)(SSL*, const void*, int), SSL* ssl, const void* buf, int num);

} // namespace understudy::detail
