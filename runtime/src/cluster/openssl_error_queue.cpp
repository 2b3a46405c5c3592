// The OpenSSL interposers: this file defines SSL_read, SSL_write,
// SSL_connect, SSL_accept and SSL_set_fd, which take the place of
// OpenSSL's own in the whole process. Why, and what that does to a program linking the runtime:
// see "OpenSSL interposition" in understudy/cluster/security.hpp.

#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "tls_fast_path.hpp"
#include "tls_peer_names.hpp"
#include "understudy/cluster/security.hpp"

namespace understudy {

namespace {

/// The definition of `name` next in symbol lookup after this program's (`lib`'s own: OpenSSL's
/// or libc's). Its absence is a broken installation: aborts.
template <class F>
F next_definition(const char* name, const char* lib = "OpenSSL") {
  auto f = reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
  if (f == nullptr) {
    std::fprintf(stderr, "understudy: cannot find %s's %s: %s\n", lib, name, ::dlerror());
    std::abort();
  }
  return f;
}

/// Empties this thread's error queue, calls OpenSSL's `next`, and records the
/// peer's certificate name once the handshake is done.
template <class F, class... Ts>
int call_ssl(F next, SSL* ssl, Ts... xs) {
  ERR_clear_error();
  auto ret = next(ssl, xs...);
  detail::note_tls_peer(ssl);
  return ret;
}

} // namespace

} // namespace understudy

extern "C" {

// Each looks OpenSSL's function up once, on first use (a function-local
// static: one pointer per process, as the symbol it replaces is one per process).

int SSL_read(SSL* ssl, void* buf, int num) {
  static auto next = understudy::next_definition<int (*)(SSL*, void*, int)>("SSL_read");
  return understudy::call_ssl(next, ssl, buf, num);
}

int SSL_write(SSL* ssl, const void* buf, int num) {
  using fn = int (*)(SSL*, const void*, int);
  static auto next = understudy::next_definition<fn>("SSL_write");
  return understudy::call_ssl(
      [](SSL* s, const void* b, int n) {
        return understudy::detail::tls_fast_path_write(next, s, b, n);
      },
      ssl, buf, num);
}

// CAF's openssl session hands each connection its socket here: those
// connections (and no others) get the fast path of tls_fast_path.hpp.
int SSL_set_fd(SSL* ssl, int fd) {
  static auto next = understudy::next_definition<int (*)(SSL*, int)>("SSL_set_fd");
  const int ret = next(ssl, fd);
  if (ret == 1)
    understudy::detail::tls_fast_path_attach(ssl, fd, __builtin_return_address(0));
  return ret;
}

int SSL_connect(SSL* ssl) {
  static auto next = understudy::next_definition<int (*)(SSL*)>("SSL_connect");
  return understudy::call_ssl(next, ssl);
}

int SSL_accept(SSL* ssl) {
  static auto next = understudy::next_definition<int (*)(SSL*)>("SSL_accept");
  return understudy::call_ssl(next, ssl);
}

// CAF's openssl session blocks SIGPIPE around every OpenSSL call (three
// system calls each: block, sigtimedwait, restore). With the fast path every
// write of its connections goes out with MSG_NOSIGNAL, so those calls change
// nothing; they are skipped for that caller only, and in pairs: a restore is
// skipped exactly when this thread's block before it was.
namespace {
thread_local bool sigpipe_block_skipped = false;
}

int pthread_sigmask(int how, const sigset_t* set, sigset_t* old) {
  using fn = int (*)(int, const sigset_t*, sigset_t*);
  static auto next = understudy::next_definition<fn>("pthread_sigmask", "libc");
  if (how == SIG_BLOCK && !sigpipe_block_skipped &&
      understudy::detail::tls_fast_path_sigpipe_free(__builtin_return_address(0))) {
    sigpipe_block_skipped = true;
    return 0;
  }
  if (how == SIG_SETMASK && sigpipe_block_skipped &&
      understudy::detail::tls_fast_path_from_caf_openssl(__builtin_return_address(0))) {
    sigpipe_block_skipped = false;
    return 0;
  }
  return next(how, set, old);
}

int sigtimedwait(const sigset_t* set, siginfo_t* info, const struct timespec* timeout) {
  using fn = int (*)(const sigset_t*, siginfo_t*, const struct timespec*);
  static auto next = understudy::next_definition<fn>("sigtimedwait", "libc");
  if (sigpipe_block_skipped &&
      understudy::detail::tls_fast_path_from_caf_openssl(__builtin_return_address(0))) {
    errno = EAGAIN;
    return -1;
  }
  return next(set, info, timeout);
}

} // extern "C"

bool understudy::openssl_error_queue_guarded() {
  using read_fn = int (*)(SSL*, void*, int);
  using write_fn = int (*)(SSL*, const void*, int);
  read_fn read = &SSL_read;
  write_fn write = &SSL_write;
  return ::dlsym(RTLD_DEFAULT, "SSL_read") == reinterpret_cast<void*>(read) &&
         ::dlsym(RTLD_DEFAULT, "SSL_write") == reinterpret_cast<void*>(write);
}
