// Starting actors here for supervisors elsewhere: spawn requests, waiting for their factory.

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/typed_response_promise.hpp>

#include "agent.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/supervision/child_spec.hpp"

namespace understudy::cluster_detail {

namespace {

/// The most spawn requests that wait for a factory at once: a peer that asks
/// for types this node never registers cannot grow the queue without bound.
constexpr size_t max_pending_spawns = 256;

/// A spawn request that came before the node registered the factory.
struct pending_spawn {
  std::string type;
  std::string id;
  std::string path;
  uint64_t incarnation;
  caf::actor supervisor;
  uint64_t slot;
  caf::message args;
  caf::typed_response_promise<caf::actor> rp;
};

/// Starts each pending request whose factory is registered, unless its
/// supervisor's node is fenced or unknown; the others wait in `pending`.
void run_spawn(caf::event_based_actor* self, const state_ptr& st,
               std::vector<pending_spawn>& pending) {
  std::vector<pending_spawn> waiting;
  for (auto& ps : pending) {
    node_factory f;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      auto i = st->factories.find(ps.type);
      if (i != st->factories.end())
        f = i->second;
    }
    if (!f) {
      waiting.push_back(std::move(ps));
      continue;
    }
    // The supervisor's node: refused once it is fenced (its successor has
    // started, or will start, the child afresh).
    std::string from;
    std::vector<caf::actor> replaced;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      if (ps.supervisor && ps.supervisor.node() == self->node())
        from = st->self.name;
      for (auto& [n, e] : st->peers)
        if (e.agent && e.state != peer_state::dead && ps.supervisor &&
            e.agent.node() == ps.supervisor.node())
          from = n;
    }
    if (from.empty()) {
      ps.rp.deliver(make_error(cluster_errc::fenced,
                               "node " + st->self.name + " refuses to start " + ps.path +
                                   ": its supervisor's node is fenced or unknown"));
      continue;
    }
    child_context ctx{
        self->home_system(), ps.id,   ps.path,
        ps.incarnation,      ps.args, child_token{ps.supervisor, ps.slot, ps.incarnation},
        st->events};
    auto r = f(ctx, ps.args);
    if (r) {
      {
        std::lock_guard<std::mutex> guard{st->mtx};
        auto gone = [&](const spawned_actor& a) {
          if (a.path == ps.path && a.handle != *r) {
            replaced.push_back(a.handle); // an older incarnation of the same child
            return true;
          }
          return a.handle->getf(caf::abstract_actor::is_terminated_flag);
        };
        st->spawned.erase(std::remove_if(st->spawned.begin(), st->spawned.end(), gone),
                          st->spawned.end());
        st->spawned.push_back({*r, from, ps.path});
      }
      for (auto& a : replaced)
        self->send_exit(a, caf::exit_reason::kill);
      ps.rp.deliver(*r);
    } else {
      // A request out of the factory's range comes from a broken or hostile
      // peer: the node says so.
      if (is(r.error(), cluster_errc::malformed_message))
        st->announce("node " + st->self.name + " refuses a spawn request from " + from + ": " +
                     describe(r.error()));
      ps.rp.deliver(r.error());
    }
  }
  pending = std::move(waiting);
}

} // namespace

caf::message_handler spawning_handlers(caf::event_based_actor* self, const state_ptr& st) {
  // Spawn requests wait here until the factory of their type is registered (a
  // node registers its factories after it starts listening).
  auto pending = std::make_shared<std::vector<pending_spawn>>();
  return {
      [self, st, pending](spawn_atom, const std::string& type, const std::string& id,
                          const std::string& path, uint64_t incarnation,
                          const caf::actor& supervisor, uint64_t slot,
                          const caf::message& args) -> caf::result<caf::actor> {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        auto rp = self->make_response_promise<caf::actor>();
        pending_spawn ps{type, id, path, incarnation, supervisor, slot, args, rp};
        authenticate(self, st, sender, "", [self, st, pending, ps](caf::error err) mutable {
          if (err) {
            ps.rp.deliver(std::move(err));
            return;
          }
          pending->push_back(std::move(ps));
          run_spawn(self, st, *pending);
          // A request whose factory is registered has started; one that must
          // wait is the newest still pending, refused if the queue is full.
          if (pending->size() > max_pending_spawns) {
            auto& last = pending->back();
            last.rp.deliver(
                make_error(cluster_errc::no_factory,
                           "node " + st->self.name + " refuses to start " + last.path + " (type '" +
                               last.type + "'): " + std::to_string(max_pending_spawns) +
                               " spawn requests already wait for factories it has not registered"));
            pending->pop_back();
          }
        });
        return rp;
      },
      [self, st, pending](factory_atom) {
        if (from_here(self)) // only cluster_node::add_factory says so
          run_spawn(self, st, *pending);
      },
  };
}

} // namespace understudy::cluster_detail
