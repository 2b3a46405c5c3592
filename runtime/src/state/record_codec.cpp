#include "record_codec.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace understudy::detail {

namespace {

void put_be(std::string& out, uint64_t x, int bytes) {
  for (int i = bytes - 1; i >= 0; --i)
    out.push_back(static_cast<char>((x >> (8 * i)) & 0xff));
}

} // namespace

std::string path_prefix(std::string_view path) {
  std::string key{path};
  key.push_back('\0');
  return key;
}

std::string record_key(std::string_view path, uint64_t step) {
  auto key = path_prefix(path);
  put_be(key, step, 8);
  return key;
}

std::string chunk_key(std::string_view path, uint64_t step, uint32_t tensor, uint32_t chunk) {
  auto key = record_key(path, step);
  put_be(key, tensor, 4);
  put_be(key, chunk, 4);
  return key;
}

bool parse_record_key(std::string_view key, std::string& path, uint64_t& step) {
  if (key.size() < 10 || key[key.size() - 9] != '\0')
    return false;
  path.assign(key.data(), key.size() - 9);
  step = 0;
  for (size_t i = key.size() - 8; i < key.size(); ++i)
    step = (step << 8) | static_cast<uint8_t>(key[i]);
  return true;
}

record_hasher::record_hasher() : state_(XXH3_createState()) {
  if (state_ == nullptr)
    throw std::bad_alloc();
  XXH3_64bits_reset(state_);
}

record_hasher::~record_hasher() {
  XXH3_freeState(state_);
}

void record_hasher::bytes(const void* data, size_t size) {
  XXH3_64bits_update(state_, data, size);
}

void record_hasher::u64(uint64_t x) {
  unsigned char buf[8];
  for (int i = 0; i < 8; ++i)
    buf[i] = static_cast<unsigned char>(x >> (8 * i));
  bytes(buf, sizeof(buf));
}

void record_hasher::text(std::string_view x) {
  u64(x.size());
  bytes(x.data(), x.size());
}

uint64_t record_hasher::digest() const {
  return XXH3_64bits_digest(state_);
}

namespace {

/// Copies `n` bytes with non-temporal stores where SSE2 is available: the
/// destination (a fresh buffer or the memory map) is not read into the cache
/// first, as ordinary stores would. The caller issues the fence.
void stream_copy(std::byte* d, const std::byte* s, size_t n) {
#if defined(__SSE2__)
  auto head = std::min(n, (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15);
  std::memcpy(d, s, head);
  d += head;
  s += head;
  n -= head;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    auto a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    auto b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
    auto c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
    auto e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
  }
  std::memcpy(d + i, s + i, n - i);
#else
  std::memcpy(d, s, n);
#endif
}

} // namespace

uint64_t copy_and_hash(void* dst, const void* src, size_t size) {
  constexpr size_t block = size_t{128} << 10;
  if (size <= block) {
    std::memcpy(dst, src, size);
    return XXH3_64bits(src, size);
  }
  record_hasher h;
  auto* d = static_cast<std::byte*>(dst);
  auto* s = static_cast<const std::byte*>(src);
  for (size_t off = 0; off < size; off += block) {
    auto n = std::min(block, size - off);
    stream_copy(d + off, s + off, n);
    // The source block was just read: hash it while it is in cache.
    h.bytes(s + off, n);
  }
#if defined(__SSE2__)
  _mm_sfence();
#endif
  return h.digest();
}

int write_and_hash(int fd, uint64_t offset, const void* src, size_t size, uint64_t& hash) {
  constexpr size_t block = size_t{1} << 20;
  record_hasher h;
  auto* s = static_cast<const std::byte*>(src);
  for (size_t off = 0; off < size; off += block) {
    auto n = std::min(block, size - off);
    h.bytes(s + off, n);
    for (size_t done = 0; done < n;) {
      auto r = ::pwrite(fd, s + off + done, n - done, static_cast<off_t>(offset + off + done));
      if (r < 0) {
        if (errno == EINTR)
          continue;
        return errno;
      }
      done += static_cast<size_t>(r);
    }
  }
  hash = h.digest();
  return 0;
}

} // namespace understudy::detail
