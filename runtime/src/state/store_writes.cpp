// Writes to the state store: commits, records and chunks, write_map allocation, retention.

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fcntl.h>
#include <lmdb.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <shared_mutex>

#include "record_codec.hpp"
#include "store_impl.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/schema/state.capnp.h"
#include "understudy/state/state_store.hpp"

namespace understudy {

using detail::chunk_key;
using detail::path_prefix;
using detail::record_key;
using state_detail::as_val;
using state_detail::chunk_count;
using state_detail::mdb_error;
using state_detail::record_checksum;
using state_detail::versioned;

namespace state_detail {

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

} // namespace state_detail

// -- allocation and writeback (write_map) -------------------------------------------

int state_store::impl::ensure_allocated(const void* p, size_t len) {
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

int state_store::impl::reserve_slack() {
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

void state_store::impl::start_writeback(const void* p, size_t len) {
  if (!direct || cfg.mode == durability::none)
    return;
  auto off = detail::map_offset(p, page_size);
  auto begin = off & ~(page_size - 1);
  auto end = off + len;
  ::sync_file_range(data_fd, static_cast<off_t>(begin), static_cast<off_t>(end - begin),
                    SYNC_FILE_RANGE_WRITE);
}

// -- versions and retention -------------------------------------------------------

int state_store::impl::delete_chunks(MDB_txn* txn, std::string_view path, uint64_t step) {
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

int state_store::impl::delete_version(MDB_txn* txn, std::string_view path, uint64_t step) {
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

int state_store::impl::steps_of(MDB_txn* txn, std::string_view path,
                                std::vector<uint64_t>& out) const {
  auto prefix = path_prefix(path);
  std::string p;
  uint64_t step = 0;
  return scan_prefix(txn, records, prefix, [&](std::string_view key) {
    if (detail::parse_record_key(key, p, step) && p.size() + 1 == prefix.size())
      out.push_back(step);
  });
}

int state_store::impl::apply_retention(MDB_txn* txn, std::string_view path, uint64_t written,
                                       bool replicated) {
  std::vector<uint64_t> steps;
  if (auto rc = steps_of(txn, path, steps))
    return rc;
  std::vector<uint64_t> doomed;
  if (!replicated) {
    for (auto s : steps)
      if (s > written)
        doomed.push_back(s);
    steps.erase(std::remove_if(steps.begin(), steps.end(), [&](uint64_t s) { return s > written; }),
                steps.end());
  }
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

// -- writing -----------------------------------------------------------------------

int state_store::impl::put_one(MDB_txn* txn, const checkpoint& cp, std::string& what,
                               bool replicated) {
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
  if (auto rc = apply_retention(txn, cp.path, cp.step, replicated)) {
    what = "retention of " + cp.path;
    return rc;
  }
  bytes_written += cp.byte_size();
  return 0;
}

namespace {

/// Sets `same` to whether `cp` is what `view` (a stored version of the same path and step)
/// holds: the same schema, payload and tensors, byte for byte. Errors: the stored tensors'.
caf::error same_contents(const record_view& view, const checkpoint& cp, bool& same) {
  same = false;
  const auto& info = view.info();
  if (info.schema_id != cp.schema_id || info.schema_version != cp.schema_version ||
      view.payload_word_count() != cp.payload.size() ||
      !std::equal(cp.payload.begin(), cp.payload.end(), view.payload_words()) ||
      info.tensors.size() != cp.tensors.size())
    return {};
  for (size_t t = 0; t < cp.tensors.size(); ++t) {
    const auto& mine = info.tensors[t];
    const auto& theirs = cp.tensors[t];
    if (mine.name != theirs.name || mine.type != theirs.type || mine.shape != theirs.shape ||
        mine.size != theirs.size)
      return {};
    auto chunks = view.tensor_chunks(t);
    if (!chunks)
      return std::move(chunks.error());
    size_t off = 0;
    for (const auto& c : *chunks) {
      if (std::memcmp(c.data, theirs.data + off, c.size) != 0)
        return {};
      off += c.size;
    }
  }
  same = true;
  return {};
}

} // namespace

caf::error state_store::replica_conflict(void* txn, const checkpoint& cp, bool& stored) const {
  stored = false;
  record_view view;
  auto err = record_view::access::fetch(view, this, static_cast<MDB_txn*>(txn), cp.path, cp.step);
  if (err && is(err, state_errc::not_found))
    return {};
  auto refuse = [&](const std::string& why) {
    return make_error(state_errc::version_conflict,
                      "replica of " + versioned(cp.path, cp.step) + " refused: " + why);
  };
  if (err)
    return refuse("the version stored there fails verification (" + describe(err) + ")");
  bool same = false;
  if (auto e = same_contents(view, cp, same))
    return refuse("the version stored there fails verification (" + describe(e) + ")");
  if (!same)
    return refuse("another version with other contents is stored at that step");
  stored = true;
  return {};
}

int state_store::impl::sender_epoch(MDB_txn* txn, const std::string& sender,
                                    uint64_t& epoch) const {
  epoch = 0;
  if (!has_senders)
    return 0;
  MDB_val k = as_val(sender);
  MDB_val v;
  auto rc = mdb_get(txn, senders, &k, &v);
  if (rc == MDB_NOTFOUND)
    return 0;
  if (rc != 0)
    return rc;
  if (v.mv_size != sizeof(epoch))
    return MDB_CORRUPTED;
  std::memcpy(&epoch, v.mv_data, sizeof(epoch));
  return 0;
}

int state_store::impl::check_epoch(MDB_txn* txn, const checkpoint& cp, const replica_origin& origin,
                                   caf::error& refused) {
  uint64_t stored = 0;
  if (auto rc = sender_epoch(txn, origin.sender, stored))
    return rc;
  if (origin.epoch < stored) {
    refused = make_error(state_errc::stale_epoch,
                         "replica of " + versioned(cp.path, cp.step) + " from node " +
                             origin.sender + " refused: it comes from epoch " +
                             std::to_string(origin.epoch) + ", lower than epoch " +
                             std::to_string(stored) + " already stored from " + origin.sender);
    return 0;
  }
  if (origin.epoch == stored)
    return 0;
  MDB_val k = as_val(origin.sender);
  MDB_val v{sizeof(origin.epoch), const_cast<uint64_t*>(&origin.epoch)};
  return mdb_put(txn, senders, &k, &v, 0);
}

caf::error state_store::commit(const std::vector<const checkpoint*>& batch,
                               std::vector<caf::error>& results,
                               const std::vector<bool>& replicated,
                               const std::vector<replica_origin>& origins) {
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
    for (size_t i = 0; rc == 0 && i < valid.size(); ++i) {
      auto& cp = *batch[valid[i]];
      bool copy = valid[i] < replicated.size() && replicated[valid[i]];
      if (copy && valid[i] < origins.size() && !origins[valid[i]].sender.empty()) {
        caf::error refused;
        rc = st.check_epoch(txn, cp, origins[valid[i]], refused);
        if (rc != 0) {
          what = "recording the epoch of " + origins[valid[i]].sender + " in " + st.cfg.directory;
          break;
        }
        if (refused) {
          results[valid[i]] = std::move(refused);
          continue;
        }
      }
      if (copy) {
        bool stored = false;
        if (auto err = replica_conflict(txn, cp, stored)) {
          results[valid[i]] = std::move(err);
          continue;
        }
        if (stored)
          continue; // the same version is here already
      }
      rc = st.put_one(txn, cp, what, copy);
    }
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

} // namespace understudy
