// Replication: commits copied to the buddy, replicas stored here, transfers and holdings.

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <caf/event_based_actor.hpp>
#include <caf/spawn_options.hpp>
#include <caf/typed_response_promise.hpp>

#include "agent.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::cluster_detail {

/// The newest step of the actors at or under `path` in `store` (0: none).
uint64_t newest_held(const state_store& store, const std::string& path) {
  uint64_t newest = 0;
  auto paths = store.paths();
  if (!paths)
    return 0;
  for (const auto& p : *paths) {
    if (p != path && p.rfind(path + "/", 0) != 0)
      continue;
    if (auto versions = store.versions(p))
      for (const auto& v : *versions)
        if (v.problem.empty())
          newest = std::max(newest, v.step);
  }
  return newest;
}

namespace {

/// Every verified version of the actors at or under `path` in `store` newer
/// than step `after`, as checkpoints (tensors copied out of the map).
caf::expected<checkpoint_batch> export_versions(const state_store& store, const std::string& path,
                                                uint64_t after = 0) {
  checkpoint_batch out;
  auto paths = store.paths();
  if (!paths)
    return paths.error();
  for (const auto& p : *paths) {
    if (p != path && p.rfind(path + "/", 0) != 0)
      continue;
    auto versions = store.versions(p);
    if (!versions)
      return versions.error();
    for (const auto& v : *versions) {
      if (!v.problem.empty() || v.step <= after)
        continue; // a damaged version stays behind; restore skips it too
      auto cp = std::make_shared<checkpoint>();
      auto err = store.read(p, v.step, [&](const record_view& r) -> caf::error {
        const auto& info = r.info();
        cp->path = p;
        cp->step = info.step;
        cp->schema_id = info.schema_id;
        cp->schema_version = info.schema_version;
        cp->incarnation = info.incarnation;
        cp->payload = r.payload_copy();
        for (size_t t = 0; t < info.tensors.size(); ++t) {
          const auto& ti = info.tensors[t];
          auto bytes = std::make_shared<std::vector<std::byte>>(ti.size);
          if (auto e = r.copy_tensor(t, bytes->data(), bytes->size()))
            return e;
          tensor_data td;
          td.name = ti.name;
          td.type = ti.type;
          td.shape = ti.shape;
          td.data = bytes->data();
          td.size = bytes->size();
          td.owner = std::move(bytes);
          cp->tensors.push_back(std::move(td));
        }
        return {};
      });
      if (err)
        continue; // as above
      out.items.push_back(std::move(cp));
    }
  }
  return out;
}

/// Sends a batch of the local writer's commits on; answered with the count
/// once durable there, or with an error naming the node it went to.
caf::result<uint64_t> to_buddy(caf::event_based_actor* self, const state_ptr& st,
                               checkpoint_batch& batch) {
  // From the local writer: copy to the buddy or, while it is dead, to
  // the first live node down its buddy chain, so that every commit has
  // a copy on a live node (where a successor looks for it).
  caf::actor target;
  std::string target_name;
  std::vector<std::string> dead;
  {
    std::lock_guard<std::mutex> guard{st->mtx};
    std::vector<std::string> seen{st->self.name};
    for (auto h = st->cfg.find_node(st->self.buddy); h != nullptr && !target;
         h = st->cfg.find_node(h->buddy)) {
      if (std::find(seen.begin(), seen.end(), h->name) != seen.end())
        break;
      seen.push_back(h->name);
      auto i = st->peers.find(h->name);
      if (i != st->peers.end() && i->second.state != peer_state::dead && i->second.agent) {
        target = i->second.agent;
        target_name = h->name;
      } else {
        dead.push_back(h->name);
      }
    }
  }
  if (!target) {
    std::string names;
    for (const auto& n : dead)
      names += (names.empty() ? "" : ", ") + n;
    return make_error(cluster_errc::no_live_node, "node " + st->self.name + " cannot replicate " +
                                                      std::to_string(batch.items.size()) +
                                                      " checkpoints: its buddy chain (" + names +
                                                      ") has no live node");
  }
  auto what = "replica of " + std::to_string(batch.items.size()) + " checkpoints to node " +
              target_name +
              (dead.empty() ? std::string{} : " (buddy " + dead.front() + " is dead)");
  auto timeout = st->fd().connection_timeout;
  auto rp = self->make_response_promise<uint64_t>();
  // The epoch the receiving store orders this node's replicas by: the one the
  // coordinator gave this incarnation.
  auto epoch = st->generation;
  self->request(target, timeout, replica_atom::value, st->self.name, st->generation, epoch,
                std::move(batch))
      .then(
          [rp](uint64_t n) mutable { rp.deliver(n); },
          [rp, what, timeout](caf::error& err) mutable {
            if (err == caf::sec::request_timeout)
              err = make_error(
                  cluster_errc::peer_unreachable,
                  "no answer within " +
                      std::to_string(
                          std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) +
                      " ms");
            rp.deliver(with_context(err, what));
          });
  return rp;
}

/// A peer's commits: each goes through this node's writer (not replicated
/// again); refused from a fenced or replaced epoch.
void store_replica(caf::event_based_actor* self, const state_ptr& st, const std::string& from,
                   uint64_t gen, uint64_t epoch, checkpoint_batch& batch,
                   caf::typed_response_promise<uint64_t> rp) {
  if (!batch.problem.empty()) {
    auto err =
        make_error(batch.corrupt ? cluster_errc::replica_refused : cluster_errc::malformed_message,
                   "node " + st->self.name + " refuses a replica said to be from " + shown(from) +
                       ": " + batch.problem);
    st->announce(describe(err));
    rp.deliver(std::move(err));
    return;
  }
  // The store orders a sender's replicas by `epoch`: it must be the incarnation's own (an
  // epoch written higher would make the store refuse that node's real replicas from then on).
  if (epoch != gen) {
    auto err =
        make_error(cluster_errc::malformed_message,
                   "node " + st->self.name + " refuses a replica said to be from " + shown(from) +
                       ": it orders its versions by epoch " + std::to_string(epoch) +
                       ", not its incarnation's " + std::to_string(gen));
    st->announce(describe(err));
    rp.deliver(std::move(err));
    return;
  }
  // An unknown node, a fenced epoch or one older than the newest incarnation known.
  if (!st->core->accepts(from, gen)) {
    // A newer epoch than the coordinator's view shows here: not (yet) the sender's; the
    // store must not learn it, or it would refuse the real incarnation's replicas.
    if (gen > st->core->epoch_of(from))
      rp.deliver(make_error(cluster_errc::peer_unreachable,
                            "replica from " + shown(from) + " epoch " + std::to_string(gen) +
                                " refused: the coordinator has not shown that epoch to node " +
                                st->self.name + " (yet)"));
    else
      rp.deliver(make_error(cluster_errc::fenced, "replica from " + shown(from) + " epoch " +
                                                      std::to_string(gen) +
                                                      " refused: the node is fenced or replaced"));
    return;
  }
  auto left = std::make_shared<size_t>(batch.items.size());
  auto n = batch.items.size();
  if (n == 0) {
    rp.deliver(uint64_t{0});
    return;
  }
  for (auto& cp : batch.items)
    self->request(st->p.writer, caf::infinite, put_replica_atom::value, cp, from, epoch)
        .then(
            [rp, left, n](uint64_t) mutable {
              if (--*left == 0)
                rp.deliver(static_cast<uint64_t>(n));
            },
            [rp, st, from](caf::error& err) mutable {
              if (is(err, state_errc::version_conflict) || is(err, state_errc::stale_epoch))
                st->announce("node " + st->self.name + " refuses a replica said to be from " +
                             shown(from) + ": " + describe(err));
              rp.deliver(std::move(err));
            });
}

/// Copies every version held here of the actors at or under `path` to node
/// `to`, from an actor of its own.
void transfer(caf::event_based_actor* self, const state_ptr& st, const std::string& path,
              const std::string& to, caf::typed_response_promise<uint64_t> rp) {
  caf::actor target;
  {
    std::lock_guard<std::mutex> guard{st->mtx};
    auto i = st->peers.find(to);
    if (i != st->peers.end() && i->second.state != peer_state::dead)
      target = i->second.agent;
  }
  if (!target) {
    rp.deliver(make_error(cluster_errc::peer_unreachable,
                          "node " + st->self.name + " cannot copy " + shown(path) + " to " +
                              shown(to) + ": no connection to it"));
    return;
  }
  // Reading and sending may take long for a large state: not on the
  // agent, whose heartbeats must go on. A scheduled actor, not a detached
  // one: it talks to a remote node, and a detached actor that remote nodes
  // saw can keep CAF 0.17 from ending its thread at shutdown (see start()).
  self->spawn([st, path, target, rp](caf::event_based_actor* w) mutable {
    auto batch = export_versions(*st->p.store, path);
    if (!batch) {
      rp.deliver(batch.error());
      w->quit();
      return;
    }
    if (batch->items.empty()) {
      rp.deliver(uint64_t{0});
      w->quit();
      return;
    }
    w->request(target, caf::infinite, replica_atom::value, st->self.name, st->generation,
               st->generation, std::move(*batch))
        .then(
            [w, rp](uint64_t n) mutable {
              rp.deliver(n);
              w->quit();
            },
            [w, rp](caf::error& err) mutable {
              rp.deliver(std::move(err));
              w->quit();
            });
  });
}

} // namespace

caf::message_handler replication_handlers(caf::event_based_actor* self, const state_ptr& st) {
  return {
      [self, st](replicate_atom, checkpoint_batch& batch) -> caf::result<uint64_t> {
        if (!from_here(self)) // only this node's writer replicates its commits
          return make_error(cluster_errc::identity_mismatch,
                            "node " + st->self.name + " replicates its own commits only");
        return to_buddy(self, st, batch);
      },
      [self, st](replica_atom, const std::string& from, uint64_t gen, uint64_t epoch,
                 checkpoint_batch& batch) -> caf::result<uint64_t> {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        auto rp = self->make_response_promise<uint64_t>();
        authenticate(
            self, st, sender, from,
            [self, st, from, gen, epoch, batch = std::move(batch), rp](caf::error err) mutable {
              if (err) {
                rp.deliver(std::move(err));
                return;
              }
              store_replica(self, st, from, gen, epoch, batch, rp);
            });
        return rp;
      },
      [self, st](transfer_atom, const std::string& path,
                 const std::string& to) -> caf::result<uint64_t> {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        auto rp = self->make_response_promise<uint64_t>();
        authenticate_current(self, st, sender, "a transfer request",
                             [self, st, path, to, rp](caf::error err) mutable {
                               if (err) {
                                 rp.deliver(std::move(err));
                                 return;
                               }
                               transfer(self, st, path, to, rp);
                             });
        return rp;
      },
      [self, st](export_atom, const std::string& prefix,
                 uint64_t after) -> caf::result<checkpoint_batch> {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        auto rp = self->make_response_promise<checkpoint_batch>();
        authenticate(self, st, sender, "", [self, st, prefix, after, rp](caf::error err) mutable {
          if (err) {
            rp.deliver(std::move(err));
            return;
          }
          // Reading may take long for a large state: not on the agent.
          self->spawn([st, prefix, after, rp]() mutable {
            auto batch = export_versions(*st->p.store, prefix, after);
            if (batch)
              rp.deliver(std::move(*batch));
            else
              rp.deliver(std::move(batch.error()));
          });
        });
        return rp;
      },
      [self, st](holds_atom, const std::string& path) -> caf::result<uint64_t> {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        auto rp = self->make_response_promise<uint64_t>();
        authenticate(self, st, sender, "", [st, path, rp](caf::error err) mutable {
          if (err)
            rp.deliver(std::move(err));
          else
            rp.deliver(newest_held(*st->p.store, path));
        });
        return rp;
      },
  };
}

} // namespace understudy::cluster_detail
