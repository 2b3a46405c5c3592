#pragma once

// Private to runtime/src/cluster: the node's actors (agent, connector) and the handler groups
// the agent's behavior is made of, each defined in a file of its own.

#include <cstdint>
#include <functional>
#include <string>

#include <caf/behavior.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/expected.hpp>
#include <caf/message_handler.hpp>

#include "agent_state.hpp"
#include "understudy/state/state_store.hpp"
#include "understudy/state/state_writer.hpp"

namespace understudy::cluster_detail {

/// The node's agent, published on its address (agent.cpp): the handler groups below, then
/// status and stop. Holds `st` until it exits.
caf::behavior agent_actor(caf::event_based_actor* self, state_ptr st);

/// Connects to the peers not connected yet and tells the agent (`up_atom`); runs detached,
/// because remote_actor blocks (membership.cpp).
caf::behavior connector_actor(caf::event_based_actor* self, state_ptr st);

/// hello, beat, tick and fence, and the `up` of the connector: who is alive, who is dead,
/// who leads (membership.cpp). Installs the agent's down handler and starts its tick loop.
caf::message_handler membership_handlers(caf::event_based_actor* self, const state_ptr& st);

/// replicate (from the local writer), replica, transfer and holds (replication.cpp).
caf::message_handler replication_handlers(caf::event_based_actor* self, const state_ptr& st);

/// cluster_node::request_versions on the node's state.
std::vector<std::string> request_versions(
    const state_ptr& st, caf::event_based_actor* self, const std::string& prefix, uint64_t after,
    std::function<void(const std::string& node, caf::expected<checkpoint_batch> batch)> each,
    const std::vector<std::string>& skip);

/// The gathering actor of cluster_node::gatherer.
caf::behavior gather(const state_ptr& st, caf::event_based_actor* self,
                     std::shared_ptr<state_store> into, const std::string& prefix,
                     caf::timespan interval, std::function<uint64_t()> after);

/// spawn (from a peer's supervisor) and factory (a factory registered here): requests wait
/// until the factory of their type is there (spawning.cpp).
caf::message_handler spawning_handlers(caf::event_based_actor* self, const state_ptr& st);

/// Who sent the agent's current message (`sender`, taken before a response promise takes it
/// over), checked before the agent acts on it: calls `k` with none when it is this process, or
/// (over TLS) when the verified certificate of its connection names node `claimed` (empty: any node
/// of the cluster); else logs the refusal through the node's notes and calls `k` with
/// `cluster_errc::identity_mismatch` (also for a sender with no verified identity). Without TLS
/// (loopback only) there is no identity to check: `k` gets none at once. With `reader_ok` (the
/// status request only) the status reader's certificate (`status_reader_name`) passes too.
void authenticate(caf::event_based_actor* self, const state_ptr& st, const caf::actor& sender,
                  const std::string& claimed, std::function<void(caf::error)> k,
                  bool reader_ok = false);

/// authenticate, then also that `sender` is this process or the incarnation of a peer that
/// this node admitted (its hello's connection) and does not hold dead: a fenced or replaced
/// incarnation (an old process woken from a pause), or a connection that never said hello, is
/// refused with `cluster_errc::fenced` (logged, naming `what`). For the requests that act on
/// this node without carrying an epoch: stop and transfer.
void authenticate_current(caf::event_based_actor* self, const state_ptr& st,
                          const caf::actor& sender, const std::string& what,
                          std::function<void(caf::error)> k);

/// A node name a message claims, as the node's errors and notes show it: a
/// name from the network is cut to 64 characters (with its size), so that a
/// huge one is not echoed back or logged whole.
inline std::string shown(const std::string& name) {
  constexpr size_t limit = 64;
  if (name.size() <= limit)
    return name;
  return name.substr(0, limit) + "... (" + std::to_string(name.size()) + " bytes)";
}

/// Whether the agent's current message comes from this process (its own actors).
inline bool from_here(caf::event_based_actor* self) {
  auto sender = self->current_sender();
  return sender && sender->node() == self->node();
}

/// The node's status report: itself, its peers, then the status provider's text
/// (cluster_node.cpp).
std::string render_status(const cluster_node::state& st);
std::string render_status_json(const cluster_node::state& st);

/// The newest step of the actors at or under `path` in `store` (0: none) (replication.cpp).
uint64_t newest_held(const state_store& store, const std::string& path);

} // namespace understudy::cluster_detail
