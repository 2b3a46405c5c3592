// The fast path of CAF's TLS connections: a coalescing write BIO. Why and
// what: tls_fast_path.hpp.

#include "tls_fast_path.hpp"

#include <dlfcn.h>
#include <link.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <vector>

#include <caf/openssl/session.hpp>

namespace understudy::detail {

namespace {

/// Connections given the fast path in this process.
std::atomic<uint64_t> installed{0};

/// The most plaintext one TLS record carries (OpenSSL's default
/// max_send_fragment): a large write's last record takes the ordinary path.
constexpr int record_bytes = 16384;

/// Buffered ciphertext beyond which the write BIO sends before it takes more.
constexpr size_t coalesce_bytes = 256 * 1024;

/// The write side of one connection.
struct coalescer {
  int fd = -1;
  /// True while SSL_write encrypts every record of a large write but its last:
  /// records are buffered, not sent one by one.
  bool buffering = false;
  std::vector<unsigned char> out;
  size_t sent = 0;
  /// errno of a send that failed after its bytes were reported written; every
  /// later write fails with it.
  int error = 0;

  size_t pending() const { return out.size() - sent; }

  /// Sends what is buffered: 1 when all of it left, 0 when the socket is full,
  /// -1 when it failed (`error`).
  int flush() {
    while (pending() > 0) {
      auto n = ::send(fd, out.data() + sent, pending(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
      error = n < 0 ? errno : EPIPE;
      return -1;
    }
    out.clear();
    sent = 0;
    return 1;
  }
};

/// errno values after which a socket BIO asks to retry (BIO_sock_should_retry).
bool retry_errno(int err) {
  return err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == EINPROGRESS ||
         err == EALREADY || err == ENOTCONN || err == EPROTO;
}

int coalescer_write(BIO* b, const char* data, int len) {
  BIO_clear_retry_flags(b);
  auto* c = static_cast<coalescer*>(BIO_get_data(b));
  if (c->error != 0) {
    errno = c->error;
    return -1;
  }
  if (len <= 0)
    return 0;
  if (c->buffering) {
    if (c->pending() >= coalesce_bytes) {
      if (c->flush() < 0) {
        errno = c->error;
        return -1;
      }
      if (c->pending() >= coalesce_bytes) {
        BIO_set_retry_write(b);
        return -1;
      }
    }
    if (c->sent > 0) {
      c->out.erase(c->out.begin(), c->out.begin() + static_cast<std::ptrdiff_t>(c->sent));
      c->sent = 0;
    }
    c->out.insert(c->out.end(), data, data + len);
    return len;
  }
  // Direct: what is buffered leaves first, then this goes as a socket BIO's would.
  if (c->pending() > 0) {
    auto f = c->flush();
    if (f < 0) {
      errno = c->error;
      return -1;
    }
    if (f == 0) {
      BIO_set_retry_write(b);
      return -1;
    }
  }
  auto n = ::send(c->fd, data, static_cast<size_t>(len), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n >= 0)
    return static_cast<int>(n);
  if (retry_errno(errno))
    BIO_set_retry_write(b);
  return -1;
}

long coalescer_ctrl(BIO* b, int cmd, long, void* ptr) {
  auto* c = static_cast<coalescer*>(BIO_get_data(b));
  switch (cmd) {
    case BIO_C_GET_FD:
      if (ptr != nullptr)
        *static_cast<int*>(ptr) = c->fd;
      return c->fd;
    case BIO_CTRL_FLUSH: {
      BIO_clear_retry_flags(b);
      auto f = c->flush();
      if (f == 0)
        BIO_set_retry_write(b);
      return f > 0 ? 1 : -1;
    }
    case BIO_CTRL_WPENDING:
      return static_cast<long>(c->pending());
    case BIO_CTRL_GET_CLOSE:
      return BIO_NOCLOSE;
    case BIO_CTRL_SET_CLOSE:
    case BIO_CTRL_DUP:
      return 1;
    default:
      return 0;
  }
}

int coalescer_create(BIO* b) {
  BIO_set_data(b, new coalescer);
  BIO_set_init(b, 1);
  return 1;
}

int coalescer_destroy(BIO* b) {
  if (b == nullptr)
    return 0;
  delete static_cast<coalescer*>(BIO_get_data(b));
  BIO_set_data(b, nullptr);
  return 1;
}

/// The write BIO's type, taken once per process.
int coalescer_type() {
  static const int type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR;
  return type;
}

/// The write BIO's method, made once per process.
BIO_METHOD* coalescer_method() {
  static BIO_METHOD* method = [] {
    auto* m = BIO_meth_new(coalescer_type(), "understudy coalescing socket");
    if (m == nullptr)
      return m;
    BIO_meth_set_write(m, coalescer_write);
    BIO_meth_set_ctrl(m, coalescer_ctrl);
    BIO_meth_set_create(m, coalescer_create);
    BIO_meth_set_destroy(m, coalescer_destroy);
    return m;
  }();
  return method;
}

coalescer* coalescer_of(const SSL* ssl) {
  auto* method = coalescer_method();
  BIO* w = SSL_get_wbio(ssl);
  if (method == nullptr || w == nullptr || BIO_method_type(w) != coalescer_type())
    return nullptr;
  return static_cast<coalescer*>(BIO_get_data(w));
}

/// The base address of CAF's openssl module (a shared library, or this program
/// when CAF is linked in statically).
const void* caf_openssl_base() {
  static const void* base = [] {
    Dl_info info{};
    auto* fn = reinterpret_cast<void*>(&caf::openssl::make_session);
    return ::dladdr(fn, &info) != 0 ? static_cast<const void*>(info.dli_fbase) : nullptr;
  }();
  return base;
}

/// Connections of CAF's openssl module left without the fast path (its write
/// BIO could not be made): their writes can raise SIGPIPE.
std::atomic<bool> unguarded{false};

/// SIGPIPE guards of CAF's openssl module skipped so far.
std::atomic<uint64_t> skipped{0};

/// [start, end) of the executable code of CAF's openssl module.
std::pair<uintptr_t, uintptr_t> caf_openssl_text() {
  static const auto range = [] {
    std::pair<uintptr_t, uintptr_t> out{0, 0};
    const void* base = caf_openssl_base();
    if (base == nullptr)
      return out;
    struct search {
      const void* base;
      std::pair<uintptr_t, uintptr_t>* out;
    } s{base, &out};
    ::dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) -> int {
          auto* s = static_cast<search*>(data);
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const auto& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_LOAD || (ph.p_flags & PF_X) == 0)
              continue;
            auto start = static_cast<uintptr_t>(info->dlpi_addr + ph.p_vaddr);
            auto end = start + ph.p_memsz;
            auto b = reinterpret_cast<uintptr_t>(s->base);
            // The object whose mapping holds the module's base.
            if (reinterpret_cast<uintptr_t>(info->dlpi_addr) <= b && b < end) {
              *s->out = {start, end};
              return 1;
            }
          }
          return 0;
        },
        &s);
    return out;
  }();
  return range;
}

} // namespace

bool tls_fast_path_from_caf_openssl(const void* caller) {
  auto [start, end] = caf_openssl_text();
  auto c = reinterpret_cast<uintptr_t>(caller);
  return start <= c && c < end;
}

bool tls_fast_path_sigpipe_free(const void* caller) {
  if (unguarded.load(std::memory_order_relaxed) || !tls_fast_path_from_caf_openssl(caller))
    return false;
  skipped.fetch_add(1, std::memory_order_relaxed);
  return true;
}

uint64_t tls_fast_path_sigpipe_guards_skipped() {
  return skipped.load(std::memory_order_relaxed);
}

void tls_fast_path_attach(SSL* ssl, int fd, const void* caller) {
  Dl_info info{};
  const void* base = caf_openssl_base();
  if (base == nullptr || ::dladdr(caller, &info) == 0 || info.dli_fbase != base)
    return;
  if (!tls_fast_path_install(ssl, fd))
    unguarded.store(true, std::memory_order_relaxed);
}

bool tls_fast_path_install(SSL* ssl, int fd) {
  auto* method = coalescer_method();
  if (method == nullptr)
    return false;
  BIO* w = BIO_new(method);
  if (w == nullptr)
    return false;
  static_cast<coalescer*>(BIO_get_data(w))->fd = fd;
  SSL_set0_wbio(ssl, w);
  installed.fetch_add(1, std::memory_order_relaxed);
  return true;
}

uint64_t tls_fast_path_installed() {
  return installed.load(std::memory_order_relaxed);
}

bool tls_fast_path_on(const SSL* ssl) {
  return coalescer_of(ssl) != nullptr;
}

int tls_fast_path_write(int (*next)(SSL*, const void*, int), SSL* ssl, const void* buf, int num) {
  auto* c = coalescer_of(ssl);
  if (c == nullptr || num <= record_bytes)
    return next(ssl, buf, num);
  // Every record but the last into the buffer. The caller's write is then not
  // done (the last record is still to come), so it calls again once the
  // socket is writable, and that call sends what is buffered first.
  const int head = num - ((num - 1) % record_bytes + 1);
  c->buffering = true;
  const int ret = next(ssl, buf, head);
  c->buffering = false;
  if (ret > 0)
    c->flush();
  return ret;
}

} // namespace understudy::detail
