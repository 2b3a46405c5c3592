#pragma once
// Low-level helpers for state store tests: temporary directories, TensorState
// payloads, and damaging a stored record or chunk on disk byte by byte (through
// LMDB's own view of where the value lies in data.mdb), so that tests can check
// that corruption is detected.

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fcntl.h>
#include <lmdb.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "state/record_codec.hpp"
#include "understudy/schema/state.capnp.h"

namespace test {

/// Creates a fresh, empty directory under /tmp and returns its path. The
/// caller removes it (std::filesystem::remove_all).
inline std::string make_temp_dir() {
  std::string tmpl = "/tmp/understudy-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr)
    throw std::runtime_error("mkdtemp failed for " + tmpl);
  return tmpl;
}

/// A TensorState message for `step` (with a scalar and a note) as a Cap'n Proto
/// flat array, ready to be a checkpoint's payload.
inline std::vector<uint64_t> tensor_state_payload(uint64_t step) {
  capnp::MallocMessageBuilder msg;
  auto root = msg.initRoot<understudy::schema::TensorState>();
  root.setStep(step);
  auto scalars = root.initScalars(1);
  scalars[0].setName("loss");
  scalars[0].setValue(1.0 / static_cast<double>(step + 1));
  root.setNote("test state at step " + std::to_string(step));
  auto words = capnp::messageToFlatArray(msg);
  auto bytes = words.asBytes();
  std::vector<uint64_t> result(words.size());
  std::memcpy(result.data(), bytes.begin(), bytes.size());
  return result;
}

namespace detail {

/// Finds the value stored under `key` in database `db` of the environment in
/// `dir` and returns its offset in data.mdb and its size. The environment is
/// opened read-only and closed again before returning.
inline std::pair<size_t, size_t> locate_value(const std::string& dir, const char* db,
                                              const std::string& key) {
  MDB_env* env = nullptr;
  auto fail = [&](const std::string& what, int rc) {
    if (env != nullptr)
      mdb_env_close(env);
    throw std::runtime_error(what + " in " + dir + ": " + mdb_strerror(rc));
  };
  if (int rc = mdb_env_create(&env))
    fail("mdb_env_create", rc);
  mdb_env_set_maxdbs(env, 4);
  if (int rc = mdb_env_open(env, dir.c_str(), MDB_RDONLY | MDB_NOTLS, 0644))
    fail("mdb_env_open", rc);
  MDB_txn* txn = nullptr;
  if (int rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn))
    fail("mdb_txn_begin", rc);
  MDB_dbi dbi = 0;
  if (int rc = mdb_dbi_open(txn, db, 0, &dbi)) {
    mdb_txn_abort(txn);
    fail(std::string{"mdb_dbi_open "} + db, rc);
  }
  MDB_val k{key.size(), const_cast<char*>(key.data())};
  MDB_val v;
  if (int rc = mdb_get(txn, dbi, &k, &v)) {
    mdb_txn_abort(txn);
    fail(std::string{"mdb_get in "} + db, rc);
  }
  MDB_stat st;
  mdb_env_stat(env, &st);
  auto offset = understudy::detail::map_offset(v.mv_data, st.ms_psize);
  auto size = v.mv_size;
  mdb_txn_abort(txn);
  mdb_env_close(env);
  return {offset, size};
}

/// Inverts the bits of the byte at `offset` of the value under `key`, writing
/// straight into data.mdb (no store may be open for writing meanwhile).
inline void flip_value_byte(const std::string& dir, const char* db, const std::string& key,
                            size_t offset) {
  auto [at, size] = locate_value(dir, db, key);
  if (offset >= size)
    throw std::runtime_error("offset " + std::to_string(offset) + " is beyond the " +
                             std::to_string(size) + "-byte value in " + db);
  auto file = dir + "/data.mdb";
  int fd = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0)
    throw std::runtime_error("cannot open " + file);
  unsigned char byte = 0;
  auto pos = static_cast<off_t>(at + offset);
  bool ok = ::pread(fd, &byte, 1, pos) == 1;
  byte = static_cast<unsigned char>(~byte);
  ok = ok && ::pwrite(fd, &byte, 1, pos) == 1;
  ::close(fd);
  if (!ok)
    throw std::runtime_error("cannot rewrite byte " + std::to_string(pos) + " of " + file);
}

} // namespace detail

/// Size in bytes of the stored record (header and payload) of `path`@`step`.
inline size_t record_size(const std::string& dir, const std::string& path, uint64_t step) {
  return detail::locate_value(dir, "records", understudy::detail::record_key(path, step)).second;
}

/// Flips one byte at `offset` inside chunk `chunk` of tensor `tensor` of
/// `path`@`step` in the store in `dir` (which must not be open for writing).
inline void flip_byte_in_chunk(const std::string& dir, const std::string& path, uint64_t step,
                               uint32_t tensor, uint32_t chunk, size_t offset) {
  detail::flip_value_byte(dir, "chunks", understudy::detail::chunk_key(path, step, tensor, chunk),
                          offset);
}

/// Flips one byte at `offset` inside the record (header and payload) of
/// `path`@`step` in the store in `dir` (which must not be open for writing).
inline void flip_byte_in_record(const std::string& dir, const std::string& path, uint64_t step,
                                size_t offset) {
  detail::flip_value_byte(dir, "records", understudy::detail::record_key(path, step), offset);
}

} // namespace test
