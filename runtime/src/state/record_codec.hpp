#pragma once
// Private: the on-disk layout of the state store (keys, record checksum,
// hashing). Shared by state_store.cpp and the tests of corruption handling.

#include <xxh_x86dispatch.h>
#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "understudy/state/state_store.hpp"

namespace understudy::detail {

/// Longest accepted actor path: LMDB's key limit (511) minus step and chunk ids.
constexpr size_t max_path_length = 480;

/// Key of a record: path, NUL, big-endian step (so versions sort by step).
std::string record_key(std::string_view path, uint64_t step);

/// Key of one chunk: the record key, big-endian tensor index and chunk index.
std::string chunk_key(std::string_view path, uint64_t step, uint32_t tensor, uint32_t chunk);

/// Prefix of every key of `path` (path + NUL).
std::string path_prefix(std::string_view path);

/// Splits a record key into path and step; false if it is not one.
bool parse_record_key(std::string_view key, std::string& path, uint64_t& step);

/// Streaming XXH3-64 over the fields that a record's checksum covers.
class record_hasher {
public:
  record_hasher();
  ~record_hasher();
  record_hasher(const record_hasher&) = delete;
  record_hasher& operator=(const record_hasher&) = delete;

  void bytes(const void* data, size_t size);
  void u64(uint64_t x);
  void text(std::string_view x);
  uint64_t digest() const;

private:
  XXH3_state_t* state_;
};

/// Copies `size` bytes from `src` to `dst` and returns the XXH3-64 of them,
/// hashing each block while it is still in cache.
uint64_t copy_and_hash(void* dst, const void* src, size_t size);

/// Writes `size` bytes from `src` to file `fd` at `offset` (pwrite, retried on
/// short writes and EINTR) and stores their XXH3-64 in `hash`. Returns 0 or
/// the errno of the failed write. For a file that is also memory-mapped with
/// MAP_SHARED: the page cache is the same, but no page of the map is faulted
/// in for writing, and a multi-threaded process is spared the TLB shootdowns
/// that writing back pages dirtied through the map costs every core.
int write_and_hash(int fd, uint64_t offset, const void* src, size_t size, uint64_t& hash);

/// Offset in data.mdb of `p`, a pointer into an LMDB memory map whose pages
/// are `page_size` bytes (the OS page size): every LMDB page starts with its
/// page number, which locates the page in the file. (mdb_env_info's
/// me_mapaddr is not the map's address unless MDB_FIXEDMAP is used.)
inline size_t map_offset(const void* p, size_t page_size) {
  auto addr = reinterpret_cast<uintptr_t>(p);
  auto page = addr & ~(static_cast<uintptr_t>(page_size) - 1);
  uint64_t pgno = 0;
  std::memcpy(&pgno, reinterpret_cast<const void*>(page), sizeof(pgno));
  return static_cast<size_t>(pgno * page_size + (addr - page));
}

/// XXH3-64 of `size` bytes.
inline uint64_t hash_bytes(const void* data, size_t size) {
  return XXH3_64bits(data, size);
}

} // namespace understudy::detail
