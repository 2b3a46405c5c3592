#include "understudy/state/state_writer.hpp"

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/response_promise.hpp>
#include <caf/send.hpp>
#include <caf/spawn_options.hpp>
#include <caf/typed_response_promise.hpp>

#include "record_codec.hpp"
#include "understudy/core/errors.hpp"

namespace understudy {

namespace {

/// Tensors travel with the XXH3-64 of every piece of this many bytes (the
/// store's default chunk size).
constexpr uint64_t wire_chunk_bytes = uint64_t{8} << 20;

/// The XXH3-64 of each `chunk`-byte piece of `size` bytes at `data`.
std::vector<uint64_t> chunk_sums(const std::byte* data, uint64_t size, uint64_t chunk) {
  std::vector<uint64_t> sums;
  for (uint64_t off = 0; off < size; off += chunk)
    sums.push_back(detail::hash_bytes(data + off, std::min(chunk, size - off)));
  return sums;
}

/// The XXH3-64 a checkpoint travels with: over its header fields, its payload
/// and its tensors' descriptions and chunk checksums (`sums`), as the store's
/// record checksum covers them.
uint64_t wire_checksum(const checkpoint& c, uint64_t chunk,
                       const std::vector<std::vector<uint64_t>>& sums) {
  detail::record_hasher x;
  x.bytes(c.payload.data(), c.payload.size() * sizeof(uint64_t));
  x.text(c.path);
  x.u64(c.step);
  x.u64(c.schema_id);
  x.u64(c.schema_version);
  x.u64(c.payload.size());
  x.u64(c.incarnation);
  x.u64(c.tensors.size());
  x.u64(chunk);
  for (size_t t = 0; t < c.tensors.size(); ++t) {
    const auto& ti = c.tensors[t];
    x.text(ti.name);
    x.u64(static_cast<uint64_t>(ti.type));
    x.u64(ti.shape.size());
    for (auto d : ti.shape)
      x.u64(d);
    x.u64(ti.size);
    x.u64(sums[t].size());
    for (auto v : sums[t])
      x.u64(v);
  }
  return x.digest();
}

} // namespace

caf::error inspect(caf::serializer& f, checkpoint_batch& x) {
  auto n = x.items.size();
  if (auto err = f.begin_sequence(n))
    return err;
  for (auto& cp : x.items) {
    auto& c = const_cast<checkpoint&>(*cp); // read only: saving
    auto tensors = c.tensors.size();
    auto chunk = wire_chunk_bytes;
    if (auto err =
            f(c.path, c.step, c.schema_id, c.schema_version, c.incarnation, c.payload, chunk))
      return err;
    std::vector<std::vector<uint64_t>> sums;
    if (auto err = f.begin_sequence(tensors))
      return err;
    for (auto& t : c.tensors) {
      auto type = static_cast<uint8_t>(t.type);
      auto size = static_cast<uint64_t>(t.size);
      if (auto err = f(t.name, type, t.shape, size))
        return err;
      if (size > 0)
        if (auto err = f.apply_raw(t.size, const_cast<std::byte*>(t.data)))
          return err;
      sums.push_back(chunk_sums(t.data, size, chunk));
      if (auto err = f(sums.back()))
        return err;
    }
    if (auto err = f.end_sequence())
      return err;
    auto sum = wire_checksum(c, chunk, sums);
    if (auto err = f(sum))
      return err;
  }
  return f.end_sequence();
}

namespace {

/// Reads one checkpoint of a batch and verifies it against the checksums it
/// came with; an empty string when it is well formed and intact, else what is
/// wrong with it (`mismatch`: a checksum differs). `left` says how many bytes the message still
/// holds (none: unknown, e.g. not a binary deserializer).
std::string read_checkpoint(caf::deserializer& f, checkpoint& c,
                            const std::function<std::optional<size_t>()>& left, bool& mismatch) {
  size_t tensors = 0;
  uint64_t chunk = 0;
  if (auto err = f(c.path, c.step, c.schema_id, c.schema_version, c.incarnation, c.payload, chunk))
    return "a checkpoint's header or payload is cut short or malformed";
  if (chunk == 0 || chunk > max_received_tensor_bytes)
    return "checkpoint " + c.path + " declares a chunk size of " + std::to_string(chunk);
  std::vector<std::vector<uint64_t>> sums;
  if (auto err = f.begin_sequence(tensors))
    return "checkpoint " + c.path + ": its tensor count is unreadable";
  // Each tensor takes at least its name's length, type, shape count and size.
  if (auto l = left(); l && tensors > *l / 4)
    return "checkpoint " + c.path + " declares " + std::to_string(tensors) +
           " tensors but the message holds " + std::to_string(*l) + " more bytes";
  for (size_t j = 0; j < tensors; ++j) {
    tensor_data t;
    uint8_t type = 0;
    uint64_t size = 0;
    if (auto err = f(t.name, type, t.shape, size))
      return "checkpoint " + c.path + ": tensor " + std::to_string(j) +
             " is cut short or malformed";
    if (type > static_cast<uint8_t>(element_type::bf16))
      return "tensor '" + t.name + "' of " + c.path + " has an unknown element type " +
             std::to_string(type);
    if (size > max_received_tensor_bytes)
      return "tensor '" + t.name + "' of " + c.path + " declares " + std::to_string(size) +
             " bytes, more than the " + std::to_string(max_received_tensor_bytes) +
             " a received tensor may hold";
    if (auto l = left(); l && size > *l)
      return "tensor '" + t.name + "' of " + c.path + " declares " + std::to_string(size) +
             " bytes but the message holds " + std::to_string(*l) + " more";
    t.type = static_cast<element_type>(type);
    auto bytes = std::make_shared<std::vector<std::byte>>(size);
    if (size > 0)
      if (auto err = f.apply_raw(size, bytes->data()))
        return "tensor '" + t.name + "' of " + c.path + " is cut short";
    std::vector<uint64_t> sent;
    if (auto err = f(sent))
      return "tensor '" + t.name + "' of " + c.path + ": its chunk checksums are cut short";
    auto got = chunk_sums(bytes->data(), size, chunk);
    if (sent.size() != got.size())
      return "tensor '" + t.name + "' of " + c.path + " comes with " + std::to_string(sent.size()) +
             " chunk checksums for " + std::to_string(got.size()) + " chunks";
    for (size_t k = 0; k < got.size(); ++k)
      if (sent[k] != got[k]) {
        mismatch = true;
        return "tensor '" + t.name + "' of " + c.path + "@" + std::to_string(c.step) + " chunk " +
               std::to_string(k) + ": checksum mismatch (the bytes changed on the way)";
      }
    sums.push_back(std::move(got));
    t.data = bytes->data();
    t.size = size;
    t.owner = std::move(bytes);
    c.tensors.push_back(std::move(t));
  }
  if (auto err = f.end_sequence())
    return "checkpoint " + c.path + " is malformed";
  uint64_t sum = 0;
  if (auto err = f(sum))
    return "checkpoint " + c.path + ": its checksum is cut short";
  if (sum != wire_checksum(c, chunk, sums)) {
    mismatch = true;
    return "checkpoint " + c.path + "@" + std::to_string(c.step) +
           ": record checksum mismatch (its header or payload changed on the way)";
  }
  return {};
}

} // namespace

caf::error inspect(caf::deserializer& f, checkpoint_batch& x) {
  auto* bin = dynamic_cast<caf::binary_deserializer*>(&f);
  std::function<std::optional<size_t>()> left = [bin]() -> std::optional<size_t> {
    if (bin == nullptr)
      return std::nullopt;
    return bin->remaining();
  };
  x.items.clear();
  x.problem.clear();
  x.corrupt = false;
  auto refuse = [&](std::string why) -> caf::error {
    x.items.clear();
    x.problem = std::move(why);
    if (bin == nullptr) // cannot skip what is left: fail the whole message
      return make_error(state_errc::corrupt_record, x.problem);
    bin->skip(bin->remaining());
    return caf::none;
  };
  size_t n = 0;
  if (auto err = f.begin_sequence(n))
    return refuse("the batch's checkpoint count is unreadable");
  // Each checkpoint takes at least its fixed-size fields.
  if (auto l = left(); l && n > *l / 8)
    return refuse("the batch declares " + std::to_string(n) +
                  " checkpoints but the message holds " + std::to_string(*l) + " more bytes");
  for (size_t i = 0; i < n; ++i) {
    auto c = std::make_shared<checkpoint>();
    if (auto why = read_checkpoint(f, *c, left, x.corrupt); !why.empty())
      return refuse(std::move(why));
    x.items.push_back(std::move(c));
  }
  if (auto err = f.end_sequence())
    return refuse("the batch is malformed at its end");
  return caf::none;
}

namespace {

using flush_atom = caf::atom_constant<caf::atom("us_flush")>;
using tick_atom = caf::atom_constant<caf::atom("us_tick")>;

struct pending_put {
  checkpoint_ptr cp;
  caf::response_promise rp;
  /// A copy of another node's checkpoint: not replicated again.
  bool replica = false;
  /// Who sent the copy (for a replica).
  replica_origin origin;
};

struct writer_state {
  std::shared_ptr<state_store> store;
  state_writer_config cfg;
  /// Puts received and not yet committed.
  std::vector<pending_put> pending;
  /// Committed puts waiting for the periodic sync.
  std::vector<pending_put> unsynced;
  /// Sync requests waiting for the periodic sync.
  std::vector<caf::response_promise> sync_waiters;
  bool flush_scheduled = false;
  bool tick_scheduled = false;
  /// A flush was put off by commit_delay.
  bool delaying = false;
  /// Puts committed by the last flush.
  size_t last_batch = 0;

  void fail_all(const caf::error& err) {
    for (auto& p : pending)
      p.rp.deliver(err);
    for (auto& p : unsynced)
      p.rp.deliver(err);
    pending.clear();
    unsynced.clear();
  }
};

/// Sends durable puts to the replica target; acknowledges them once it answers
/// that their copies are durable, and fails them when it answers with an error
/// or not in time.
void replicate(caf::event_based_actor* self, writer_state& st, std::vector<pending_put> puts) {
  checkpoint_batch cps;
  cps.items.reserve(puts.size());
  for (auto& p : puts)
    cps.items.push_back(p.cp);
  auto shared = std::make_shared<std::vector<pending_put>>(std::move(puts));
  auto timeout = st.cfg.replica_timeout;
  self->request(st.cfg.replica, timeout, replicate_atom::value, std::move(cps))
      .then(
          [shared](uint64_t) {
            for (auto& p : *shared)
              p.rp.deliver(p.cp->step);
          },
          [shared, timeout](caf::error& err) {
            auto cause =
                err == caf::sec::request_timeout
                    ? "the replica target did not answer within " +
                          std::to_string(
                              std::chrono::duration_cast<std::chrono::milliseconds>(timeout)
                                  .count()) +
                          " ms"
                    : describe(err);
            for (auto& p : *shared)
              p.rp.deliver(make_error(state_errc::not_replicated,
                                      p.cp->path + "@" + std::to_string(p.cp->step) +
                                          " is durable on this node but not on its replica, "
                                          "not acknowledged: " +
                                          cause));
          });
}

/// Commits everything pending, in batches bounded by the config.
void flush(caf::event_based_actor* self, writer_state& st) {
  auto mode = st.store->config().mode;
  std::vector<const checkpoint*> batch;
  std::vector<bool> replicated;
  std::vector<replica_origin> origins;
  std::vector<caf::error> results;
  size_t begin = 0;
  while (begin < st.pending.size()) {
    batch.clear();
    replicated.clear();
    origins.clear();
    size_t bytes = 0;
    auto end = begin;
    while (end < st.pending.size() && batch.size() < st.cfg.max_batch_puts) {
      auto n = st.pending[end].cp->byte_size();
      if (!batch.empty() && bytes + n > st.cfg.max_batch_bytes)
        break;
      batch.push_back(st.pending[end].cp.get());
      replicated.push_back(st.pending[end].replica);
      origins.push_back(st.pending[end].origin);
      bytes += n;
      ++end;
    }
    auto started = std::chrono::steady_clock::now();
    auto err = st.store->commit(batch, results, replicated, origins);
    if (st.cfg.on_commit && !err)
      st.cfg.on_commit(std::chrono::steady_clock::now() - started);
    std::vector<pending_put> to_replicate;
    for (auto i = begin; i < end; ++i) {
      auto& p = st.pending[i];
      auto& res = results[i - begin];
      if (err)
        p.rp.deliver(err);
      else if (res)
        p.rp.deliver(res);
      else if (mode == durability::periodic)
        st.unsynced.push_back(std::move(p));
      else if (st.cfg.replica && !p.replica)
        to_replicate.push_back(std::move(p));
      else
        p.rp.deliver(p.cp->step);
    }
    if (!to_replicate.empty())
      replicate(self, st, std::move(to_replicate));
    begin = end;
  }
  st.last_batch = st.pending.size();
  st.pending.clear();
  if (!st.unsynced.empty() && !st.tick_scheduled) {
    st.tick_scheduled = true;
    self->delayed_send(self, st.store->config().sync_interval, tick_atom::value);
  }
}

/// Syncs and acknowledges what waited for it: at once, or once the synced
/// batch is durable on the replica too.
void sync_now(caf::event_based_actor* self, writer_state& st) {
  auto err = st.store->sync();
  std::vector<pending_put> to_replicate;
  for (auto& p : st.unsynced) {
    if (err)
      p.rp.deliver(err);
    else if (st.cfg.replica && !p.replica)
      to_replicate.push_back(std::move(p));
    else
      p.rp.deliver(p.cp->step);
  }
  st.unsynced.clear();
  if (!to_replicate.empty())
    replicate(self, st, std::move(to_replicate));
  for (auto& rp : st.sync_waiters) {
    if (err)
      rp.deliver(err);
    else
      rp.deliver(st.store->stats().commits);
  }
  st.sync_waiters.clear();
}

/// Queues a put and schedules the flush that commits it.
caf::typed_response_promise<uint64_t> enqueue(caf::event_based_actor* self, writer_state& st,
                                              const checkpoint_ptr& cp, bool replica,
                                              replica_origin origin = {}) {
  auto rp = self->make_response_promise<uint64_t>();
  st.pending.push_back(pending_put{cp, rp, replica, std::move(origin)});
  if (st.delaying && st.pending.size() >= st.last_batch) {
    // Everyone from the last batch is back: no need to wait longer.
    st.delaying = false;
    self->send(self, flush_atom::value);
  } else if (!st.flush_scheduled) {
    // Everything already in the mailbox comes before this message, so
    // all of it joins the same transaction.
    st.flush_scheduled = true;
    self->send(self, flush_atom::value);
  }
  return rp;
}

caf::behavior writer_actor(caf::event_based_actor* self, std::shared_ptr<state_store> store,
                           state_writer_config cfg) {
  auto st = std::make_shared<writer_state>();
  st->store = std::move(store);
  st->cfg = cfg;
  self->set_exit_handler([self, st](caf::exit_msg& msg) {
    st->fail_all(make_error(state_errc::writer_stopped,
                            "state writer of " + st->store->config().directory + " stopped"));
    self->quit(msg.reason);
  });
  return {
      [self, st](put_state_atom, const checkpoint_ptr& cp) -> caf::result<uint64_t> {
        return enqueue(self, *st, cp, false);
      },
      [self, st](put_replica_atom, const checkpoint_ptr& cp) -> caf::result<uint64_t> {
        return enqueue(self, *st, cp, true);
      },
      [self, st](put_replica_atom, const checkpoint_ptr& cp, const std::string& sender,
                 uint64_t epoch) -> caf::result<uint64_t> {
        return enqueue(self, *st, cp, true, replica_origin{sender, epoch});
      },
      [self, st](flush_atom) {
        st->flush_scheduled = false;
        if (st->pending.empty())
          return;
        if (!st->delaying && st->last_batch > 1 && st->pending.size() < st->last_batch &&
            st->cfg.commit_delay.count() > 0) {
          st->delaying = true;
          st->flush_scheduled = true;
          self->delayed_send(self, st->cfg.commit_delay, flush_atom::value);
          return;
        }
        st->delaying = false;
        flush(self, *st);
      },
      [self, st](tick_atom) {
        st->tick_scheduled = false;
        sync_now(self, *st);
      },
      [self, st](sync_state_atom) -> caf::result<uint64_t> {
        flush(self, *st);
        auto rp = self->make_response_promise<uint64_t>();
        st->sync_waiters.push_back(rp);
        sync_now(self, *st);
        return rp;
      },
  };
}

} // namespace

caf::actor spawn_state_writer(caf::actor_system& sys, std::shared_ptr<state_store> store,
                              state_writer_config cfg) {
  return sys.spawn<caf::detached>(writer_actor, std::move(store), cfg);
}

} // namespace understudy
