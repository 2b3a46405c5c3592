#include "understudy/runtime/state_writer.hpp"

#include <algorithm>
#include <chrono>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/response_promise.hpp>
#include <caf/send.hpp>
#include <caf/spawn_options.hpp>
#include <caf/typed_response_promise.hpp>

#include "understudy/runtime/errors.hpp"

namespace understudy {

caf::error inspect(caf::serializer& f, checkpoint_batch& x) {
  auto n = x.items.size();
  if (auto err = f.begin_sequence(n))
    return err;
  for (auto& cp : x.items) {
    auto& c = const_cast<checkpoint&>(*cp); // read only: saving
    auto tensors = c.tensors.size();
    if (auto err = f(c.path, c.step, c.schema_id, c.schema_version, c.incarnation, c.payload))
      return err;
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
    }
    if (auto err = f.end_sequence())
      return err;
  }
  return f.end_sequence();
}

caf::error inspect(caf::deserializer& f, checkpoint_batch& x) {
  size_t n = 0;
  if (auto err = f.begin_sequence(n))
    return err;
  x.items.clear();
  for (size_t i = 0; i < n; ++i) {
    auto c = std::make_shared<checkpoint>();
    size_t tensors = 0;
    if (auto err = f(c->path, c->step, c->schema_id, c->schema_version, c->incarnation, c->payload))
      return err;
    if (auto err = f.begin_sequence(tensors))
      return err;
    for (size_t j = 0; j < tensors; ++j) {
      tensor_data t;
      uint8_t type = 0;
      uint64_t size = 0;
      if (auto err = f(t.name, type, t.shape, size))
        return err;
      t.type = static_cast<element_type>(type);
      auto bytes = std::make_shared<std::vector<std::byte>>(size);
      if (size > 0)
        if (auto err = f.apply_raw(size, bytes->data()))
          return err;
      t.data = bytes->data();
      t.size = size;
      t.owner = std::move(bytes);
      c->tensors.push_back(std::move(t));
    }
    if (auto err = f.end_sequence())
      return err;
    x.items.push_back(std::move(c));
  }
  return f.end_sequence();
}

namespace {

using flush_atom = caf::atom_constant<caf::atom("us_flush")>;
using tick_atom = caf::atom_constant<caf::atom("us_tick")>;

struct pending_put {
  checkpoint_ptr cp;
  caf::response_promise rp;
  /// A copy of another node's checkpoint: not replicated again.
  bool replica = false;
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

/// Sends committed puts to the replica target; acknowledges them when it answers.
void replicate(caf::event_based_actor* self, writer_state& st, std::vector<pending_put> puts) {
  checkpoint_batch cps;
  cps.items.reserve(puts.size());
  for (auto& p : puts)
    cps.items.push_back(p.cp);
  auto done = [puts = std::move(puts)]() mutable {
    for (auto& p : puts)
      p.rp.deliver(p.cp->step);
  };
  self->request(st.cfg.replica, caf::infinite, replicate_atom::value, std::move(cps))
      .then([done](uint64_t) mutable { done(); }, [done](caf::error&) mutable { done(); });
}

/// Commits everything pending, in batches bounded by the config.
void flush(caf::event_based_actor* self, writer_state& st) {
  auto mode = st.store->config().mode;
  std::vector<const checkpoint*> batch;
  std::vector<caf::error> results;
  size_t begin = 0;
  while (begin < st.pending.size()) {
    batch.clear();
    size_t bytes = 0;
    auto end = begin;
    while (end < st.pending.size() && batch.size() < st.cfg.max_batch_puts) {
      auto n = st.pending[end].cp->byte_size();
      if (!batch.empty() && bytes + n > st.cfg.max_batch_bytes)
        break;
      batch.push_back(st.pending[end].cp.get());
      bytes += n;
      ++end;
    }
    auto started = std::chrono::steady_clock::now();
    auto err = st.store->commit(batch, results);
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

/// Syncs and acknowledges what waited for it.
void sync_now(writer_state& st) {
  auto err = st.store->sync();
  for (auto& p : st.unsynced) {
    if (err)
      p.rp.deliver(err);
    else
      p.rp.deliver(p.cp->step);
  }
  st.unsynced.clear();
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
                                              const checkpoint_ptr& cp, bool replica) {
  auto rp = self->make_response_promise<uint64_t>();
  st.pending.push_back(pending_put{cp, rp, replica});
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
        sync_now(*st);
      },
      [self, st](sync_state_atom) -> caf::result<uint64_t> {
        flush(self, *st);
        auto rp = self->make_response_promise<uint64_t>();
        st->sync_waiters.push_back(rp);
        sync_now(*st);
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
