// The node's agent: its behavior, made of the membership, spawning and replication handlers.

#include "agent.hpp"

#include <mutex>
#include <string>
#include <vector>

#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/typed_response_promise.hpp>

namespace understudy::cluster_detail {

namespace {

/// A status report (`render` of the node's state) for a peer or for the
/// status reader's read-only credential, none for anyone else.
caf::result<std::string> answer_status(caf::event_based_actor* self, const state_ptr& st,
                                       std::string (*render)(const cluster_node::state&)) {
  auto sender = caf::actor_cast<caf::actor>(self->current_sender());
  auto rp = self->make_response_promise<std::string>();
  authenticate(
      self, st, sender, "",
      [st, rp, render](caf::error err) mutable {
        if (err)
          rp.deliver(std::move(err));
        else
          rp.deliver(render(*st));
      },
      true);
  return rp;
}

} // namespace

caf::behavior agent_actor(caf::event_based_actor* self, state_ptr st) {
  // The groups handle distinct atoms; membership also installs the down
  // handler and starts the tick loop.
  auto membership = membership_handlers(self, st);
  auto spawning = spawning_handlers(self, st);
  auto replication = replication_handlers(self, st);
  return membership.or_else(spawning)
      .or_else(replication)
      .or_else([self, st](status_atom) { return answer_status(self, st, render_status); },
               [self, st](status_json_atom) { return answer_status(self, st, render_status_json); },
               [self, st](mesh_atom) -> caf::result<std::vector<std::string>> {
                 auto sender = caf::actor_cast<caf::actor>(self->current_sender());
                 auto rp = self->make_response_promise<std::vector<std::string>>();
                 authenticate(self, st, sender, "", [st, rp](caf::error err) mutable {
                   if (err) {
                     rp.deliver(std::move(err));
                     return;
                   }
                   std::vector<std::string> unconnected;
                   {
                     std::lock_guard<std::mutex> guard{st->mtx};
                     for (auto& [name, e] : st->peers)
                       if (e.state != peer_state::dead && !st->connected_locked(name))
                         unconnected.push_back(name);
                   }
                   rp.deliver(std::move(unconnected));
                 });
                 return rp;
               },
               [self, st](stop_atom) -> caf::result<void> {
                 auto sender = caf::actor_cast<caf::actor>(self->current_sender());
                 auto rp = self->make_response_promise();
                 authenticate_current(self, st, sender, "a stop request",
                                      [st, rp](caf::error err) mutable {
                                        if (err) {
                                          rp.deliver(std::move(err));
                                          return;
                                        }
                                        {
                                          std::lock_guard<std::mutex> guard{st->mtx};
                                          st->stop_requested = true;
                                          st->cv.notify_all();
                                        }
                                        rp.deliver(caf::unit);
                                      });
                 return rp;
               });
}

} // namespace understudy::cluster_detail
