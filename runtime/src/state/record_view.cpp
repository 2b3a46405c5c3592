// Reading one record: parsing and verifying its header (record_view::access) and its tensors.

#include <capnp/serialize.h>
#include <kj/exception.h>
#include <lmdb.h>

#include <algorithm>
#include <cstring>

#include "record_codec.hpp"
#include "store_impl.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/schema/state.capnp.h"
#include "understudy/state/state_store.hpp"

namespace understudy {

using detail::chunk_key;
using detail::record_key;
using state_detail::as_val;
using state_detail::chunk_count;
using state_detail::max_schema_element_type;
using state_detail::mdb_error;
using state_detail::record_checksum;
using state_detail::versioned;

caf::error record_view::access::load(record_view& view, MDB_txn* txn, const std::string& path,
                                     uint64_t step, const MDB_val& val) {
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

caf::error record_view::access::fetch(record_view& view, const state_store* owner, MDB_txn* txn,
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

caf::expected<byte_span> record_view::access::chunk(const record_view& view, size_t ti,
                                                    uint32_t c) {
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

caf::error record_view::access::mismatch(const record_view& view, size_t ti, uint32_t c) {
  return make_error(state_errc::corrupt_record, versioned(view.info_.path, view.info_.step) +
                                                    " tensor " + view.info_.tensors[ti].name +
                                                    " chunk " + std::to_string(c) +
                                                    ": checksum mismatch");
}

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

} // namespace understudy
