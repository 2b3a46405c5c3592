#pragma once

// Private to runtime/src/state: what the parts of the state store share (state_store.cpp:
// the LMDB environment; store_writes.cpp: commits; store_reads.cpp: reads and stats;
// record_view.cpp: parsing and verifying records).

#include <kj/common.h>
#include <lmdb.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "understudy/schema/state.capnp.h"
#include "understudy/state/state_store.hpp"

namespace understudy {

namespace state_detail {

constexpr unsigned max_schema_element_type = static_cast<unsigned>(element_type::bf16);

inline MDB_val as_val(const std::string& key) {
  return MDB_val{key.size(), const_cast<char*>(key.data())};
}

inline std::string_view as_view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}

inline bool starts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

inline std::string versioned(std::string_view path, uint64_t step) {
  return std::string{path} + "@" + std::to_string(step);
}

/// Translates an LMDB or errno code at the boundary, keeping it as context.
caf::error mdb_error(int rc, const std::string& what);

inline uint32_t chunk_count(uint64_t size, uint64_t chunk) {
  return chunk == 0 ? 0 : static_cast<uint32_t>((size + chunk - 1) / chunk);
}

/// A checksum over everything a record says, so that a flipped byte in the
/// payload, the header or a chunk's checksum is noticed.
uint64_t record_checksum(schema::RecordHeader::Reader h, kj::ArrayPtr<const kj::byte> payload);

} // namespace state_detail

/// The open environment: its handles, its map and its counters. Writers are
/// serialised by LMDB (one write transaction at a time); readers run in
/// parallel, each holding `resize_mtx` shared.
struct state_store::impl {
  state_store_config cfg;
  MDB_env* env = nullptr;
  MDB_dbi records = 0;
  MDB_dbi chunks = 0;
  /// Sender node name -> the highest epoch (8 bytes, host order) of the
  /// replicas stored from it.
  MDB_dbi senders = 0;
  /// False only in a read-only open of a store written before senders existed.
  bool has_senders = false;
  int data_fd = -1;
  int lock_fd = -1;
  /// Readers hold it shared for their transaction; growing the map takes it
  /// exclusively (LMDB forbids resizing with transactions open).
  mutable std::shared_mutex resize_mtx;
  /// Values are written straight into the map (MDB_WRITEMAP, not read-only).
  bool direct = false;
  size_t page_size = 4096;
  std::atomic<size_t> map_size{0};
  std::atomic<uint64_t> commits{0};
  std::atomic<uint64_t> puts{0};
  std::atomic<uint64_t> bytes_written{0};
  std::atomic<uint64_t> map_growths{0};
  std::atomic<uint64_t> versions_deleted{0};
  /// Bytes of the data file known to be allocated (write_map only).
  size_t allocated = 0;
  /// Chunks smaller than this get no early writeback.
  static constexpr size_t writeback_min = size_t{1} << 20;
  /// Chunks of at least this size are written with pwrite rather than through
  /// the map (see detail::write_and_hash); smaller ones cost a few faults.
  static constexpr size_t pwrite_min = size_t{256} << 10;

  ~impl();

  void refresh_map_info();

  /// Makes sure the file range behind `p` is allocated before it is written
  /// through the map, so that a full disk is an error (ENOSPC) rather than a
  /// SIGBUS on the page fault.
  int ensure_allocated(const void* p, size_t len);

  /// Allocates slack beyond the last used page for the B-tree pages a
  /// transaction touches (write_map only).
  int reserve_slack();

  /// Starts writeback of `len` bytes at `p` without waiting (write_map only).
  void start_writeback(const void* p, size_t len);

  /// Doubles the map up to max_map_size. Errors: map_size_limit, io_error.
  caf::error grow();

  // -- writing (store_writes.cpp) ---------------------------------------------

  /// Calls `fn(key)` for every key of `dbi` that starts with `prefix`, in order.
  template <class F>
  int scan_prefix(MDB_txn* txn, MDB_dbi dbi, const std::string& prefix, F fn) const {
    MDB_cursor* cur = nullptr;
    if (auto rc = mdb_cursor_open(txn, dbi, &cur))
      return rc;
    MDB_val k = state_detail::as_val(prefix);
    MDB_val v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && state_detail::starts_with(state_detail::as_view(k), prefix)) {
      fn(state_detail::as_view(k));
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
  }

  /// Deletes the chunks of `path`@`step` (all tensors).
  int delete_chunks(MDB_txn* txn, std::string_view path, uint64_t step);

  int delete_version(MDB_txn* txn, std::string_view path, uint64_t step);

  /// Steps of `path`, ascending.
  int steps_of(MDB_txn* txn, std::string_view path, std::vector<uint64_t>& out) const;

  /// Versions newer than the one just written belong to an abandoned timeline
  /// (the actor was rolled back) and go unless `replicated` (a copy from
  /// another node never deletes them); the rest follow the retention policy.
  int apply_retention(MDB_txn* txn, std::string_view path, uint64_t written, bool replicated);

  /// The highest epoch recorded for `sender` (0: none) into `epoch`. Returns an MDB code.
  int sender_epoch(MDB_txn* txn, const std::string& sender, uint64_t& epoch) const;

  /// Sets `refused` when the replica `cp` from `origin` comes from an epoch
  /// below the one recorded for its sender, else raises the recorded epoch to
  /// its. Returns an MDB code.
  int check_epoch(MDB_txn* txn, const checkpoint& cp, const replica_origin& origin,
                  caf::error& refused);

  /// Writes one checkpoint. Returns an MDB/errno code; `what` names the failing step.
  int put_one(MDB_txn* txn, const checkpoint& cp, std::string& what, bool replicated);

  // -- reading (state_store.cpp) ----------------------------------------------

  /// A read transaction holding the resize lock shared.
  struct reader {
    std::shared_lock<std::shared_mutex> guard;
    MDB_txn* txn = nullptr;
    explicit reader(const impl& self) : guard(self.resize_mtx) {}
    ~reader() {
      if (txn != nullptr)
        mdb_txn_abort(txn);
    }
  };

  /// Begins `r`'s read transaction, adopting a map grown by another process.
  caf::error begin_read(reader& r) const;
};

/// Fetching and parsing records for record_view (record_view.cpp).
struct record_view::access {
  /// Parses and verifies the record stored at `val` for `path`@`step` into `view`.
  static caf::error load(record_view& view, MDB_txn* txn, const std::string& path, uint64_t step,
                         const MDB_val& val);

  /// Fetches the record of `path`@`step` into `view` and verifies its header.
  /// Errors: not_found, io_error, corrupt_record.
  static caf::error fetch(record_view& view, const state_store* owner, MDB_txn* txn,
                          const std::string& path, uint64_t step);

  /// Fetches chunk `c` of tensor `ti`, checking its length.
  static caf::expected<byte_span> chunk(const record_view& view, size_t ti, uint32_t c);

  static caf::error mismatch(const record_view& view, size_t ti, uint32_t c);
};

} // namespace understudy
