#include "understudy/runtime/state_store.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fcntl.h>
#include <kj/exception.h>
#include <lmdb.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <shared_mutex>

#include "record_codec.hpp"
#include "understudy/runtime/errors.hpp"
#include "understudy/schema/state.capnp.h"

namespace understudy {

using detail::chunk_key;
using detail::path_prefix;
using detail::record_key;

std::string to_string(durability x) {
  switch (x) {
    case durability::sync_each_commit:
      return "sync_each_commit";
    case durability::periodic:
      return "periodic";
    case durability::none:
      return "none";
  }
  return "unknown";
}

size_t element_size(element_type x) {
  switch (x) {
    case element_type::bytes:
    case element_type::u8:
      return 1;
    case element_type::f16:
    case element_type::bf16:
      return 2;
    case element_type::f32:
    case element_type::i32:
    case element_type::u32:
      return 4;
    case element_type::f64:
    case element_type::i64:
    case element_type::u64:
      return 8;
  }
  return 1;
}

std::string to_string(element_type x) {
  switch (x) {
    case element_type::bytes:
      return "bytes";
    case element_type::f32:
      return "f32";
    case element_type::f64:
      return "f64";
    case element_type::i32:
      return "i32";
    case element_type::i64:
      return "i64";
    case element_type::u8:
      return "u8";
    case element_type::u32:
      return "u32";
    case element_type::u64:
      return "u64";
    case element_type::f16:
      return "f16";
    case element_type::bf16:
      return "bf16";
  }
  return "unknown";
}

size_t checkpoint::byte_size() const {
  size_t n = payload.size() * sizeof(uint64_t);
  for (auto& t : tensors)
    n += t.size;
  return n;
}

namespace {

constexpr unsigned max_schema_element_type = static_cast<unsigned>(element_type::bf16);

MDB_val as_val(const std::string& key) {
  return MDB_val{key.size(), const_cast<char*>(key.data())};
}

std::string_view as_view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

std::string versioned(std::string_view path, uint64_t step) {
  return std::string{path} + "@" + std::to_string(step);
}

/// Translates an LMDB or errno code at the boundary, keeping it as context.
caf::error mdb_error(int rc, const std::string& what) {
  if (rc == ENOSPC)
    return make_error(state_errc::disk_full, what + ": " + mdb_strerror(rc));
  return make_error(state_errc::io_error,
                    what + ": " + mdb_strerror(rc) + " (code " + std::to_string(rc) + ")");
}

uint32_t chunk_count(uint64_t size, uint64_t chunk) {
  return chunk == 0 ? 0 : static_cast<uint32_t>((size + chunk - 1) / chunk);
}

/// A checksum over everything a record says, so that a flipped byte in the
/// payload, the header or a chunk's checksum is noticed.
uint64_t record_checksum(schema::RecordHeader::Reader h, kj::ArrayPtr<const kj::byte> payload) {
  detail::record_hasher x;
  x.bytes(payload.begin(), payload.size());
  x.text({h.getActorPath().cStr(), h.getActorPath().size()});
  x.u64(h.getStep());
  x.u64(h.getSchemaId());
  x.u64(h.getSchemaVersion());
  x.u64(h.getPayloadLength());
  x.u64(h.getIncarnation());
  x.u64(static_cast<uint64_t>(h.getCreatedUnixNanos()));
  auto tensors = h.getTensors();
  x.u64(tensors.size());
  for (auto t : tensors) {
    x.text({t.getName().cStr(), t.getName().size()});
    x.u64(static_cast<uint64_t>(t.getElementType()));
    x.u64(t.getShape().size());
    for (auto d : t.getShape())
      x.u64(d);
    x.u64(t.getByteLength());
    x.u64(t.getChunkSize());
    x.u64(t.getChunkChecksums().size());
    for (auto c : t.getChunkChecksums())
      x.u64(c);
  }
  return x.digest();
}

} // namespace

// -- impl ---------------------------------------------------------------------

struct state_store::impl {
  state_store_config cfg;
  MDB_env* env = nullptr;
  MDB_dbi records = 0;
  MDB_dbi chunks = 0;
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

  ~impl() {
    if (env != nullptr)
      mdb_env_close(env);
    if (lock_fd >= 0)
      ::close(lock_fd);
  }

  void refresh_map_info() {
    MDB_envinfo info;
    mdb_env_info(env, &info);
    map_size = info.me_mapsize;
    MDB_stat st;
    mdb_env_stat(env, &st);
    page_size = st.ms_psize;
  }

  /// Makes sure the file range behind `p` is allocated before it is written
  /// through the map, so that a full disk is an error (ENOSPC) rather than a
  /// SIGBUS on the page fault.
  int ensure_allocated(const void* p, size_t len) {
    if (!direct)
      return 0;
    auto off = detail::map_offset(p, page_size);
    auto begin = off & ~(page_size - 1);
    auto end = off + len;
    if (end <= allocated)
      return 0;
    if (::fallocate(data_fd, 0, static_cast<off_t>(begin), static_cast<off_t>(end - begin)) != 0)
      return errno;
    if (begin <= allocated)
      allocated = end;
    return 0;
  }

  /// Allocates slack beyond the last used page for the B-tree pages a
  /// transaction touches (write_map only).
  int reserve_slack() {
    if (!direct)
      return 0;
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(env, &info);
    mdb_env_stat(env, &st);
    constexpr size_t slack = size_t{32} << 20;
    auto used = static_cast<size_t>(info.me_last_pgno + 1) * st.ms_psize;
    auto want = std::min(used + slack, map_size.load());
    if (want <= allocated)
      return 0;
    if (::fallocate(data_fd, 0, 0, static_cast<off_t>(want)) != 0)
      return errno;
    allocated = want;
    return 0;
  }

  /// Starts writeback of `len` bytes at `p` without waiting (write_map only).
  void start_writeback(const void* p, size_t len) {
    if (!direct || cfg.mode == durability::none)
      return;
    auto off = detail::map_offset(p, page_size);
    auto begin = off & ~(page_size - 1);
    auto end = off + len;
    ::sync_file_range(data_fd, static_cast<off_t>(begin), static_cast<off_t>(end - begin),
                      SYNC_FILE_RANGE_WRITE);
  }

  caf::error grow() {
    std::unique_lock<std::shared_mutex> guard{resize_mtx};
    auto cur = map_size.load();
    if (cur >= cfg.max_map_size)
      return make_error(
          state_errc::map_size_limit,
          cfg.directory + ": map is full at max_map_size " + std::to_string(cur) + " bytes");
    auto next = std::min(cfg.max_map_size, cur * 2);
    if (auto rc = mdb_env_set_mapsize(env, next))
      return mdb_error(rc, "mdb_env_set_mapsize(" + std::to_string(next) + ")");
    refresh_map_info();
    ++map_growths;
    return {};
  }

  // -- writing ----------------------------------------------------------------

  /// Calls `fn(key)` for every key of `dbi` that starts with `prefix`, in order.
  template <class F>
  int scan_prefix(MDB_txn* txn, MDB_dbi dbi, const std::string& prefix, F fn) const {
    MDB_cursor* cur = nullptr;
    if (auto rc = mdb_cursor_open(txn, dbi, &cur))
      return rc;
    MDB_val k = as_val(prefix);
    MDB_val v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && starts_with(as_view(k), prefix)) {
      fn(as_view(k));
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
  }

  /// Deletes the chunks of `path`@`step` (all tensors).
  int delete_chunks(MDB_txn* txn, std::string_view path, uint64_t step) {
    std::vector<std::string> keys;
    if (auto rc = scan_prefix(txn, chunks, record_key(path, step),
                              [&](std::string_view key) { keys.emplace_back(key); }))
      return rc;
    for (auto& key : keys) {
      MDB_val dk = as_val(key);
      if (auto rc = mdb_del(txn, chunks, &dk, nullptr))
        return rc;
    }
    return 0;
  }

  int delete_version(MDB_txn* txn, std::string_view path, uint64_t step) {
    auto key = record_key(path, step);
    MDB_val k = as_val(key);
    int rc = mdb_del(txn, records, &k, nullptr);
    if (rc != 0 && rc != MDB_NOTFOUND)
      return rc;
    if ((rc = delete_chunks(txn, path, step)) != 0)
      return rc;
    ++versions_deleted;
    return 0;
  }

  /// Steps of `path`, ascending.
  int steps_of(MDB_txn* txn, std::string_view path, std::vector<uint64_t>& out) const {
    auto prefix = path_prefix(path);
    std::string p;
    uint64_t step = 0;
    return scan_prefix(txn, records, prefix, [&](std::string_view key) {
      if (detail::parse_record_key(key, p, step) && p.size() + 1 == prefix.size())
        out.push_back(step);
    });
  }

  /// Versions newer than the one just written belong to an abandoned timeline
  /// (the actor was rolled back); the rest follow the retention policy.
  int apply_retention(MDB_txn* txn, std::string_view path, uint64_t written) {
    std::vector<uint64_t> steps;
    if (auto rc = steps_of(txn, path, steps))
      return rc;
    std::vector<uint64_t> doomed;
    for (auto s : steps)
      if (s > written)
        doomed.push_back(s);
    steps.erase(std::remove_if(steps.begin(), steps.end(), [&](uint64_t s) { return s > written; }),
                steps.end());
    auto keep_last = static_cast<size_t>(cfg.retention.keep_last);
    if (steps.size() > keep_last) {
      for (size_t i = 0; i + keep_last < steps.size(); ++i) {
        auto s = steps[i];
        if (cfg.retention.keep_every > 0 && s % cfg.retention.keep_every == 0)
          continue;
        doomed.push_back(s);
      }
    }
    for (auto s : doomed)
      if (auto rc = delete_version(txn, path, s))
        return rc;
    return 0;
  }

  /// Writes one checkpoint. Returns an MDB/errno code; `what` names the failing step.
  int put_one(MDB_txn* txn, const checkpoint& cp, std::string& what) {
    // Rewriting a version replaces it completely.
    {
      auto key = record_key(cp.path, cp.step);
      MDB_val k = as_val(key);
      MDB_val v;
      int rc = mdb_get(txn, records, &k, &v);
      if (rc == 0) {
        if ((rc = delete_version(txn, cp.path, cp.step)) != 0) {
          what = "delete old " + versioned(cp.path, cp.step);
          return rc;
        }
        --versions_deleted;
      } else if (rc != MDB_NOTFOUND) {
        what = "mdb_get " + versioned(cp.path, cp.step);
        return rc;
      }
    }
    capnp::MallocMessageBuilder msg;
    auto rec = msg.initRoot<schema::Record>();
    auto h = rec.initHeader();
    h.setSchemaId(cp.schema_id);
    h.setSchemaVersion(cp.schema_version);
    h.setActorPath(cp.path);
    h.setStep(cp.step);
    h.setIncarnation(cp.incarnation);
    h.setCreatedUnixNanos(std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count());
    auto tensors = h.initTensors(static_cast<unsigned>(cp.tensors.size()));
    auto chunk = static_cast<uint64_t>(cfg.chunk_size);
    for (uint32_t ti = 0; ti < cp.tensors.size(); ++ti) {
      auto& t = cp.tensors[ti];
      auto info = tensors[ti];
      info.setName(t.name);
      info.setElementType(static_cast<schema::ElementType>(t.type));
      auto shape = info.initShape(static_cast<unsigned>(t.shape.size()));
      for (unsigned i = 0; i < t.shape.size(); ++i)
        shape.set(i, t.shape[i]);
      info.setByteLength(t.size);
      info.setChunkSize(chunk);
      auto n = chunk_count(t.size, chunk);
      auto sums = info.initChunkChecksums(n);
      for (uint32_t c = 0; c < n; ++c) {
        auto off = static_cast<size_t>(c) * chunk;
        auto len = std::min<size_t>(chunk, t.size - off);
        auto key = chunk_key(cp.path, cp.step, ti, c);
        MDB_val k = as_val(key);
        MDB_val v{len, nullptr};
        if (auto rc = mdb_put(txn, chunks, &k, &v, MDB_RESERVE)) {
          what = "mdb_put chunk " + std::to_string(c) + " of " + versioned(cp.path, cp.step);
          return rc;
        }
        if (auto rc = ensure_allocated(v.mv_data, len)) {
          what = "fallocate for " + versioned(cp.path, cp.step);
          return rc;
        }
        uint64_t sum = 0;
        if (direct && len >= pwrite_min) {
          auto at = detail::map_offset(v.mv_data, page_size);
          if (auto rc = detail::write_and_hash(data_fd, at, t.data + off, len, sum)) {
            what = "writing chunk " + std::to_string(c) + " of " + versioned(cp.path, cp.step);
            return rc;
          }
        } else {
          sum = detail::copy_and_hash(v.mv_data, t.data + off, len);
        }
        sums.set(c, sum);
        // Early writeback pays for large chunks; each call costs a VM exit,
        // so small ones are left to the commit's single sync.
        if (len >= writeback_min)
          start_writeback(v.mv_data, len);
      }
    }
    auto payload_bytes = kj::arrayPtr(reinterpret_cast<const kj::byte*>(cp.payload.data()),
                                      cp.payload.size() * sizeof(uint64_t));
    h.setPayloadLength(payload_bytes.size());
    rec.setPayload(payload_bytes);
    h.setChecksum(record_checksum(h.asReader(), payload_bytes));
    // Canonical form (one segment, zeroed padding) lets a reader check that
    // every byte is meaningful: the checksum covers the fields, canonicality the rest.
    auto words = capnp::canonicalize(rec.asReader());
    auto bytes = words.asBytes();
    // A one-segment message: the segment table (count - 1 = 0, size in words),
    // then the canonical segment.
    uint32_t table[2] = {0, static_cast<uint32_t>(words.size())};
    auto key = record_key(cp.path, cp.step);
    MDB_val k = as_val(key);
    MDB_val v{sizeof(table) + bytes.size(), nullptr};
    if (auto rc = mdb_put(txn, records, &k, &v, MDB_RESERVE)) {
      what = "mdb_put record " + versioned(cp.path, cp.step);
      return rc;
    }
    if (auto rc = ensure_allocated(v.mv_data, v.mv_size)) {
      what = "fallocate for " + versioned(cp.path, cp.step);
      return rc;
    }
    std::memcpy(v.mv_data, table, sizeof(table));
    std::memcpy(static_cast<char*>(v.mv_data) + sizeof(table), bytes.begin(), bytes.size());
    if (auto rc = apply_retention(txn, cp.path, cp.step)) {
      what = "retention of " + cp.path;
      return rc;
    }
    bytes_written += cp.byte_size();
    return 0;
  }

  // -- reading ----------------------------------------------------------------

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

  caf::error begin_read(reader& r) const {
    for (int attempt = 0;; ++attempt) {
      auto rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &r.txn);
      if (rc == 0)
        return {};
      r.txn = nullptr;
      if (rc != MDB_MAP_RESIZED || attempt > 0)
        return mdb_error(rc, "mdb_txn_begin(read) in " + cfg.directory);
      // The writer (another process) grew the map: adopt its size, which
      // LMDB allows only with no transaction open here.
      r.guard.unlock();
      {
        std::unique_lock<std::shared_mutex> resize{resize_mtx};
        if (auto rc2 = mdb_env_set_mapsize(env, 0))
          return mdb_error(rc2, "mdb_env_set_mapsize(0) in " + cfg.directory);
        const_cast<impl*>(this)->refresh_map_info();
      }
      r.guard.lock();
    }
  }
};

// -- record_view ----------------------------------------------------------------

struct record_view::access {
  /// Parses and verifies the record stored at `val` for `path`@`step` into `view`.
  static caf::error load(record_view& view, MDB_txn* txn, const std::string& path, uint64_t step,
                         const MDB_val& val) {
    view.txn_ = txn;
    auto name = versioned(path, step);
    const uint64_t* words = nullptr;
    auto aligned = reinterpret_cast<uintptr_t>(val.mv_data) % alignof(uint64_t) == 0;
    if (val.mv_size % 8 != 0)
      return make_error(state_errc::corrupt_record, name + ": record length " +
                                                        std::to_string(val.mv_size) +
                                                        " is not a whole number of words");
    if (aligned) {
      words = static_cast<const uint64_t*>(val.mv_data);
    } else {
      view.record_copy_.resize(val.mv_size / 8);
      std::memcpy(view.record_copy_.data(), val.mv_data, val.mv_size);
      words = view.record_copy_.data();
    }
    try {
      capnp::ReaderOptions opts;
      opts.traversalLimitInWords = val.mv_size / 8 + 1024;
      opts.nestingLimit = 16;
      capnp::FlatArrayMessageReader msg{
          kj::arrayPtr(reinterpret_cast<const capnp::word*>(words), val.mv_size / 8), opts};
      auto rec = msg.getRoot<schema::Record>();
      if (!msg.isCanonical())
        return make_error(state_errc::corrupt_record,
                          name + ": record is not in canonical form (stray or flipped bytes)");
      auto h = rec.getHeader();
      auto payload = rec.getPayload();
      auto& info = view.info_;
      info.path = h.getActorPath();
      info.step = h.getStep();
      info.schema_id = h.getSchemaId();
      info.schema_version = h.getSchemaVersion();
      info.incarnation = h.getIncarnation();
      info.payload_size = payload.size();
      info.created = std::chrono::system_clock::time_point{
          std::chrono::duration_cast<std::chrono::system_clock::duration>(
              std::chrono::nanoseconds{h.getCreatedUnixNanos()})};
      if (info.path != path || info.step != step)
        return make_error(state_errc::corrupt_record,
                          name + ": header names " + versioned(info.path, info.step));
      if (h.getPayloadLength() != payload.size())
        return make_error(state_errc::corrupt_record, name + ": payload length mismatch");
      if (record_checksum(h, payload) != h.getChecksum())
        return make_error(state_errc::corrupt_record, name + ": checksum mismatch");
      info.tensor_size = 0;
      info.tensors.clear();
      view.chunk_checksums_.clear();
      for (auto t : h.getTensors()) {
        tensor_info ti;
        ti.name = t.getName();
        auto et = static_cast<unsigned>(t.getElementType());
        if (et > max_schema_element_type)
          return make_error(state_errc::corrupt_record,
                            name + ": tensor " + ti.name + " has an unknown element type");
        ti.type = static_cast<element_type>(et);
        for (auto d : t.getShape())
          ti.shape.push_back(d);
        ti.size = t.getByteLength();
        ti.chunk_size = t.getChunkSize();
        auto sums = t.getChunkChecksums();
        if (ti.chunk_size == 0 && ti.size > 0)
          return make_error(state_errc::corrupt_record,
                            name + ": tensor " + ti.name + " has chunk size 0");
        if (chunk_count(ti.size, ti.chunk_size) != sums.size())
          return make_error(state_errc::corrupt_record,
                            name + ": tensor " + ti.name + " chunk count mismatch");
        ti.chunks = sums.size();
        std::vector<uint64_t> cs;
        cs.reserve(sums.size());
        for (auto c : sums)
          cs.push_back(c);
        view.chunk_checksums_.push_back(std::move(cs));
        info.tensor_size += ti.size;
        info.tensors.push_back(std::move(ti));
      }
      // The payload blob is word-aligned inside the (aligned) record.
      auto* pb = payload.begin();
      if (reinterpret_cast<uintptr_t>(pb) % alignof(uint64_t) == 0 && payload.size() % 8 == 0) {
        view.payload_words_ = reinterpret_cast<const uint64_t*>(pb);
        view.payload_size_ = payload.size();
      } else {
        return make_error(state_errc::corrupt_record,
                          name + ": payload is not a Cap'n Proto flat array");
      }
    } catch (const kj::Exception& e) {
      return make_error(state_errc::corrupt_record,
                        name + ": malformed record: " + e.getDescription().cStr());
    }
    return {};
  }

  /// Fetches the record of `path`@`step` into `view` and verifies its header.
  /// Errors: not_found, io_error, corrupt_record.
  static caf::error fetch(record_view& view, const state_store* owner, MDB_txn* txn,
                          const std::string& path, uint64_t step) {
    auto& st = *owner->impl_;
    auto key = record_key(path, step);
    MDB_val k = as_val(key);
    MDB_val v;
    int rc = mdb_get(txn, st.records, &k, &v);
    if (rc == MDB_NOTFOUND)
      return make_error(state_errc::not_found, "no version " + versioned(path, step));
    if (rc != 0)
      return mdb_error(rc, "mdb_get " + versioned(path, step));
    view.store_ = owner;
    return load(view, txn, path, step, v);
  }

  /// Fetches chunk `c` of tensor `ti`, checking its length.
  static caf::expected<byte_span> chunk(const record_view& view, size_t ti, uint32_t c) {
    auto& st = *view.store_->impl_;
    auto& t = view.info_.tensors[ti];
    auto key = chunk_key(view.info_.path, view.info_.step, static_cast<uint32_t>(ti), c);
    MDB_val k = as_val(key);
    MDB_val v;
    auto* txn = static_cast<MDB_txn*>(const_cast<void*>(view.txn_));
    auto expected = std::min<uint64_t>(t.chunk_size, t.size - uint64_t{c} * t.chunk_size);
    auto name = versioned(view.info_.path, view.info_.step) + " tensor " + t.name + " chunk " +
                std::to_string(c);
    int rc = mdb_get(txn, st.chunks, &k, &v);
    if (rc == MDB_NOTFOUND)
      return make_error(state_errc::truncated_chunk, name + " is missing");
    if (rc != 0)
      return mdb_error(rc, "mdb_get " + name);
    if (v.mv_size != expected)
      return make_error(state_errc::truncated_chunk, name + " has " + std::to_string(v.mv_size) +
                                                         " bytes, expected " +
                                                         std::to_string(expected));
    return byte_span{static_cast<const std::byte*>(v.mv_data), v.mv_size};
  }

  static caf::error mismatch(const record_view& view, size_t ti, uint32_t c) {
    return make_error(state_errc::corrupt_record, versioned(view.info_.path, view.info_.step) +
                                                      " tensor " + view.info_.tensors[ti].name +
                                                      " chunk " + std::to_string(c) +
                                                      ": checksum mismatch");
  }
};

const std::vector<uint64_t>& record_view::payload_copy() const {
  if (payload_copy_.size() != payload_size_ / 8)
    payload_copy_.assign(payload_words_, payload_words_ + payload_size_ / 8);
  return payload_copy_;
}

std::optional<size_t> record_view::find_tensor(std::string_view name) const {
  for (size_t i = 0; i < info_.tensors.size(); ++i)
    if (info_.tensors[i].name == name)
      return i;
  return std::nullopt;
}

caf::error record_view::copy_tensor(size_t index, void* dst, size_t size) const {
  if (index >= info_.tensors.size())
    return make_error(state_errc::not_found, "tensor index " + std::to_string(index));
  auto& t = info_.tensors[index];
  if (size != t.size)
    return make_error(state_errc::schema_mismatch,
                      versioned(info_.path, info_.step) + " tensor " + t.name + " has " +
                          std::to_string(t.size) + " bytes, the target " + std::to_string(size));
  auto* out = static_cast<std::byte*>(dst);
  for (uint32_t c = 0; c < t.chunks; ++c)
    if (auto err = copy_chunk(index, c, out + uint64_t{c} * t.chunk_size))
      return err;
  return {};
}

caf::error record_view::copy_chunk(size_t index, uint32_t chunk, void* dst) const {
  if (index >= info_.tensors.size())
    return make_error(state_errc::not_found, "tensor index " + std::to_string(index));
  auto& t = info_.tensors[index];
  if (chunk >= t.chunks)
    return make_error(state_errc::not_found, versioned(info_.path, info_.step) + " tensor " +
                                                 t.name + " has " + std::to_string(t.chunks) +
                                                 " chunks, not " + std::to_string(chunk + 1));
  auto span = access::chunk(*this, index, chunk);
  if (!span)
    return std::move(span.error());
  if (detail::copy_and_hash(dst, span->data, span->size) != chunk_checksums_[index][chunk])
    return access::mismatch(*this, index, chunk);
  return {};
}

caf::expected<std::vector<byte_span>> record_view::tensor_chunks(size_t index) const {
  if (index >= info_.tensors.size())
    return make_error(state_errc::not_found, "tensor index " + std::to_string(index));
  std::vector<byte_span> result;
  auto& t = info_.tensors[index];
  for (uint32_t c = 0; c < t.chunks; ++c) {
    auto span = access::chunk(*this, index, c);
    if (!span)
      return std::move(span.error());
    if (detail::hash_bytes(span->data, span->size) != chunk_checksums_[index][c])
      return access::mismatch(*this, index, c);
    result.push_back(*span);
  }
  return result;
}

caf::error record_view::verify_tensors() const {
  for (size_t i = 0; i < info_.tensors.size(); ++i)
    if (auto chunks = tensor_chunks(i); !chunks)
      return std::move(chunks.error());
  return {};
}

// -- state_store ----------------------------------------------------------------

state_store::state_store(std::unique_ptr<impl> ptr) : impl_(std::move(ptr)) {
  // Nothing to do.
}

state_store::~state_store() = default;

const state_store_config& state_store::config() const noexcept {
  return impl_->cfg;
}

namespace {

/// The stores this process has open, by canonical directory: a read-only open
/// of one of them shares it, because LMDB must not open an environment twice
/// in one process (closing the second would drop the first's file locks).
struct open_stores {
  std::mutex mtx;
  std::map<std::string, std::weak_ptr<state_store>> by_dir;

  static open_stores& get() {
    static open_stores instance;
    return instance;
  }

  static std::string key(const std::string& directory) {
    std::error_code ec;
    auto canonical = std::filesystem::weakly_canonical(directory, ec);
    return ec ? directory : canonical.string();
  }
};

} // namespace

caf::expected<std::shared_ptr<state_store>> state_store::open(state_store_config cfg) {
  if (cfg.directory.empty())
    return make_error(state_errc::invalid_config, "state directory is empty");
  auto& registry = open_stores::get();
  const auto dir_key = open_stores::key(cfg.directory);
  if (cfg.read_only) {
    std::lock_guard<std::mutex> guard{registry.mtx};
    if (auto i = registry.by_dir.find(dir_key); i != registry.by_dir.end())
      if (auto existing = i->second.lock())
        return existing;
  }
  if (cfg.chunk_size == 0 || cfg.chunk_size % 4096 != 0)
    return make_error(
        state_errc::invalid_config,
        "chunk_size must be a positive multiple of 4096, got " + std::to_string(cfg.chunk_size));
  if (cfg.retention.keep_last == 0)
    return make_error(state_errc::invalid_config, "retention.keep_last must be at least 1");
  if (cfg.initial_map_size < (size_t{1} << 20) || cfg.initial_map_size > cfg.max_map_size)
    return make_error(state_errc::invalid_config,
                      "initial_map_size must be at least 1 MiB and at most max_map_size");
  if (cfg.mode == durability::periodic && cfg.sync_interval.count() <= 0)
    return make_error(state_errc::invalid_config, "sync_interval must be positive");
  auto st = std::make_unique<impl>();
  st->cfg = cfg;
  std::error_code ec;
  if (!cfg.read_only) {
    std::filesystem::create_directories(cfg.directory, ec);
    if (ec)
      return make_error(state_errc::io_error,
                        "cannot create state directory " + cfg.directory + ": " + ec.message());
    // One writer per directory: an exclusive lock held while the store is open.
    // flock locks belong to the open file, so a second open in this process fails too.
    auto lock_path = cfg.directory + "/understudy.lock";
    st->lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (st->lock_fd < 0)
      return mdb_error(errno, "open " + lock_path);
    if (::flock(st->lock_fd, LOCK_EX | LOCK_NB) != 0) {
      char buf[32] = {0};
      auto n = ::pread(st->lock_fd, buf, sizeof(buf) - 1, 0);
      std::string holder = n > 0 ? std::string{" (held by pid "} + buf + ")" : std::string{};
      return make_error(state_errc::locked, "state directory " + cfg.directory +
                                                " is already open for writing" + holder);
    }
    auto pid = std::to_string(::getpid());
    if (::ftruncate(st->lock_fd, 0) == 0 && ::pwrite(st->lock_fd, pid.data(), pid.size(), 0) < 0) {
      // The pid is informational only.
    }
  } else if (!std::filesystem::exists(cfg.directory + "/data.mdb", ec)) {
    return make_error(state_errc::not_found,
                      "no state store in " + cfg.directory + " (data.mdb is missing)");
  }
  if (auto rc = mdb_env_create(&st->env))
    return mdb_error(rc, "mdb_env_create");
  mdb_env_set_maxdbs(st->env, 4);
  mdb_env_set_maxreaders(st->env, 256);
  if (!cfg.read_only) {
    if (auto rc = mdb_env_set_mapsize(st->env, cfg.initial_map_size))
      return mdb_error(rc, "mdb_env_set_mapsize");
  }
  unsigned flags = MDB_NOTLS;
  if (cfg.read_only)
    flags |= MDB_RDONLY;
  else if (cfg.write_map)
    flags |= MDB_WRITEMAP;
  if (cfg.mode != durability::sync_each_commit && !cfg.read_only)
    flags |= MDB_NOSYNC;
  if (auto rc = mdb_env_open(st->env, cfg.directory.c_str(), flags, 0644)) {
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH)
      return make_error(
          state_errc::corrupt_record,
          cfg.directory + "/data.mdb is not a usable LMDB environment: " + mdb_strerror(rc));
    return mdb_error(rc, "mdb_env_open(" + cfg.directory + ")");
  }
  int dead = 0;
  mdb_reader_check(st->env, &dead);
  mdb_env_get_fd(st->env, &st->data_fd);
  st->refresh_map_info();
  st->direct = cfg.write_map && !cfg.read_only;
  MDB_txn* txn = nullptr;
  if (auto rc = mdb_txn_begin(st->env, nullptr, cfg.read_only ? MDB_RDONLY : 0, &txn))
    return mdb_error(rc, "mdb_txn_begin(open)");
  unsigned dbflags = cfg.read_only ? 0 : MDB_CREATE;
  int rc = mdb_dbi_open(txn, "records", dbflags, &st->records);
  if (rc == 0)
    rc = mdb_dbi_open(txn, "chunks", dbflags, &st->chunks);
  if (rc != 0) {
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND)
      return make_error(state_errc::not_found, cfg.directory + " holds no understudy state");
    return mdb_error(rc, "mdb_dbi_open in " + cfg.directory);
  }
  if ((rc = mdb_txn_commit(txn)) != 0)
    return mdb_error(rc, "mdb_txn_commit(open)");
  std::shared_ptr<state_store> result{new state_store(std::move(st))};
  std::lock_guard<std::mutex> guard{registry.mtx};
  auto& slot = registry.by_dir[dir_key];
  if (slot.expired() || !cfg.read_only)
    slot = result;
  return result;
}

caf::error state_store::commit(const std::vector<const checkpoint*>& batch,
                               std::vector<caf::error>& results) {
  auto& st = *impl_;
  results.assign(batch.size(), caf::error{});
  if (st.cfg.read_only)
    return make_error(state_errc::read_only, st.cfg.directory + " is open read-only");
  std::vector<size_t> valid;
  for (size_t i = 0; i < batch.size(); ++i) {
    auto& cp = *batch[i];
    if (cp.path.empty() || cp.path.find('\0') != std::string::npos ||
        cp.path.size() > detail::max_path_length)
      results[i] = make_error(state_errc::invalid_path,
                              "actor path must be 1.." + std::to_string(detail::max_path_length) +
                                  " bytes without NUL: '" + cp.path + "'");
    else if (cp.payload.size() * sizeof(uint64_t) > st.cfg.max_payload)
      results[i] = make_error(state_errc::payload_too_large,
                              versioned(cp.path, cp.step) + ": payload of " +
                                  std::to_string(cp.payload.size() * 8) +
                                  " bytes exceeds max_payload; store large data as tensors");
    else
      valid.push_back(i);
  }
  if (valid.empty())
    return {};
  for (;;) {
    std::shared_lock<std::shared_mutex> guard{st.resize_mtx};
    MDB_txn* txn = nullptr;
    if (auto rc = mdb_txn_begin(st.env, nullptr, 0, &txn))
      return mdb_error(rc, "mdb_txn_begin(write) in " + st.cfg.directory);
    int rc = st.reserve_slack();
    std::string what = "fallocate in " + st.cfg.directory;
    for (size_t i = 0; rc == 0 && i < valid.size(); ++i)
      rc = st.put_one(txn, *batch[valid[i]], what);
    if (rc == 0) {
      rc = mdb_txn_commit(txn);
      what = "mdb_txn_commit in " + st.cfg.directory;
    } else {
      mdb_txn_abort(txn);
    }
    if (rc == MDB_MAP_FULL) {
      guard.unlock();
      if (auto err = st.grow())
        return err;
      continue;
    }
    if (rc != 0)
      return mdb_error(rc, what);
    ++st.commits;
    st.puts += valid.size();
    return {};
  }
}

caf::error state_store::sync() {
  if (impl_->cfg.read_only)
    return {};
  if (auto rc = mdb_env_sync(impl_->env, 1))
    return mdb_error(rc, "mdb_env_sync in " + impl_->cfg.directory);
  return {};
}

caf::expected<std::vector<std::string>> state_store::paths() const {
  auto& st = *impl_;
  impl::reader r{st};
  if (auto err = st.begin_read(r))
    return err;
  MDB_cursor* cur = nullptr;
  if (auto rc = mdb_cursor_open(r.txn, st.records, &cur))
    return mdb_error(rc, "mdb_cursor_open");
  std::vector<std::string> result;
  MDB_val k;
  MDB_val v;
  std::string path;
  uint64_t step = 0;
  int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
  while (rc == 0) {
    if (detail::parse_record_key(as_view(k), path, step) &&
        (result.empty() || result.back() != path))
      result.push_back(path);
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  if (rc != MDB_NOTFOUND)
    return mdb_error(rc, "mdb_cursor_get");
  return result;
}

caf::expected<std::vector<version_info>> state_store::versions(const std::string& path) const {
  auto& st = *impl_;
  impl::reader r{st};
  if (auto err = st.begin_read(r))
    return err;
  std::vector<uint64_t> steps;
  if (auto rc = st.steps_of(r.txn, path, steps))
    return mdb_error(rc, "listing versions of " + path);
  std::vector<version_info> result;
  for (auto s : steps) {
    record_view view;
    if (auto err = record_view::access::fetch(view, this, r.txn, path, s)) {
      if (!is(err, state_errc::corrupt_record))
        return err;
      // Unreadable header: report what the key says.
      version_info info;
      info.path = path;
      info.step = s;
      info.problem = describe(err);
      result.push_back(std::move(info));
    } else {
      result.push_back(view.info_);
    }
  }
  return result;
}

caf::error state_store::read(const std::string& path, uint64_t step,
                             const std::function<caf::error(const record_view&)>& fn) const {
  auto& st = *impl_;
  impl::reader r{st};
  if (auto err = st.begin_read(r))
    return err;
  record_view view;
  if (auto err = record_view::access::fetch(view, this, r.txn, path, step))
    return err;
  return fn(view);
}

caf::expected<restore_report> state_store::restore_newest(
    const std::string& path, const std::function<caf::error(const record_view&)>& load,
    uint64_t max_step) const {
  auto t0 = std::chrono::steady_clock::now();
  auto& st = *impl_;
  restore_report report;
  impl::reader r{st};
  if (auto err = st.begin_read(r))
    return err;
  std::vector<uint64_t> steps;
  if (auto rc = st.steps_of(r.txn, path, steps))
    return mdb_error(rc, "listing versions of " + path);
  for (auto i = steps.rbegin(); i != steps.rend(); ++i) {
    if (*i > max_step)
      continue;
    record_view view;
    auto err = record_view::access::fetch(view, this, r.txn, path, *i);
    if (!err)
      err = load(view);
    if (!err) {
      report.step = *i;
      break;
    }
    if (is(err, state_errc::io_error) || is(err, state_errc::disk_full))
      return err;
    report.skipped.emplace_back(*i, std::move(err));
  }
  report.duration = std::chrono::steady_clock::now() - t0;
  return report;
}

caf::error state_store::verify(const std::string& path, uint64_t step) const {
  return read(path, step, [](const record_view& view) { return view.verify_tensors(); });
}

size_t state_store::map_size() const {
  return impl_->map_size.load();
}

state_store_stats state_store::stats() const {
  state_store_stats s;
  s.commits = impl_->commits;
  s.puts = impl_->puts;
  s.bytes_written = impl_->bytes_written;
  s.map_growths = impl_->map_growths;
  s.versions_deleted = impl_->versions_deleted;
  return s;
}

} // namespace understudy
