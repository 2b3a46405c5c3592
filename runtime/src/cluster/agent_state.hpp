#pragma once

// Private to runtime/src/cluster: the node protocol's atoms and the state that the node's agent,
// its connector and the public methods of cluster_node share.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/exit_reason.hpp>
#include <caf/node_id.hpp>
#include <caf/send.hpp>

#include "membership_core.hpp"
#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/coordination.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/state/state_writer.hpp"

namespace understudy {

namespace cluster_detail {

using clock_type = std::chrono::steady_clock;

// -- protocol --------------------------------------------------------------------------

/// (hello, name, epoch, leader) -> (name, epoch, leader) or an error if the
/// epoch is fenced or stale; `leader`: informational (the coordinator decides).
using hello_atom = caf::atom_constant<caf::atom("us_nhello")>;
/// (beat, name, epoch, leader): a heartbeat (`leader` is informational: a beat
/// never changes who leads).
using beat_atom = caf::atom_constant<caf::atom("us_nbeat")>;
/// (spawn, type, id, path, incarnation, supervisor, slot, args) -> actor.
using spawn_atom = caf::atom_constant<caf::atom("us_nspawn")>;
/// (replica, name, generation, checkpoint_batch) -> count, once durable here.
using replica_atom = caf::atom_constant<caf::atom("us_nrepl")>;
/// (transfer, path, to) -> count: copies every version of the actors at or
/// under `path` that this node holds to node `to` (durably, as replicas there),
/// for an actor that restarts on `to`.
using transfer_atom = caf::atom_constant<caf::atom("us_nxfer")>;
/// (holds, path) -> step: the newest step this node holds of the actors at or
/// under `path` (0: none).
using holds_atom = caf::atom_constant<caf::atom("us_nholds")>;
/// (export, prefix, after) -> checkpoint_batch: every verified version this
/// node holds of the actors at or under `prefix` newer than step `after` (its
/// own actors' and the copies it holds for others), for a component that
/// reads a job's state spread over the nodes (cluster_node::request_versions).
using export_atom = caf::atom_constant<caf::atom("us_nexport")>;
/// (status) -> std::string: the node's status report.
using status_atom = caf::atom_constant<caf::atom("us_nstat")>;
/// (status_json_atom) -> std::string: the status report as a JSON object.
using status_json_atom = caf::atom_constant<caf::atom("us_nstatj")>;
/// (mesh) -> std::vector<std::string>: the peers this node has no connection to
/// (those declared dead aside); a leader asks before it starts the tree.
using mesh_atom = caf::atom_constant<caf::atom("us_nmesh")>;
/// (stop): the peer asks this node's process to end.
using stop_atom = caf::atom_constant<caf::atom("us_nstop")>;
/// Local: the connector reached a peer: (up, name, agent).
using up_atom = caf::atom_constant<caf::atom("us_nup")>;
/// Local: heartbeat and detection round; connector round.
using tick_atom = caf::atom_constant<caf::atom("us_ntick")>;
/// Local: a factory was added; spawn requests waiting for it go on.
using factory_atom = caf::atom_constant<caf::atom("us_nfact")>;
/// Local: (core, core_input): an answer or a view of the coordinator, for the core.
using core_atom = caf::atom_constant<caf::atom("us_ncore")>;

/// Something for the membership core that happened on another thread (a coordinator's
/// answer or view), applied on the agent's thread at the time it is handled.
struct core_input {
  std::function<void(membership_core&, clock_type::time_point)> apply;
};

} // namespace cluster_detail

/// An actor started here for a supervisor on another node.
struct spawned_actor {
  caf::actor handle;
  /// The node of its supervisor.
  std::string from;
  /// Its path in the tree: a newer incarnation replaces it.
  std::string path;
};

/// A peer as this node tracks it: its agent and a mirror of what the membership core decides
/// (state, epoch, fenced epochs), kept for the node's other handlers and its status report.
struct peer_entry {
  node_spec spec;
  caf::actor agent;
  /// Heartbeats on the real clock, for the status report (the core judges on its own).
  phi_accrual detector;
  peer_state state = peer_state::unknown;
  /// The epoch of its newest incarnation known (0: none yet).
  uint64_t generation = 0;
  /// Epochs up to this one are fenced (0: none).
  uint64_t fenced = 0;

  peer_entry(node_spec s, caf::timespan interval) : spec(std::move(s)), detector(interval) {}
};

/// What the agent, the connector and cluster_node share: the node's config, its peers, its
/// factories and listeners, its coordinator, its fencing and the leader. Every member behind
/// `mtx` except those fixed at start (rt, cfg, self, generation, p, events, agent, connector,
/// coord) and `core`, which only the agent's handlers touch.
struct cluster_node::state {
  using clock_type = cluster_detail::clock_type;

  runtime* rt = nullptr;
  node_config cfg;
  node_spec self;
  /// This incarnation's epoch, given by the coordinator when the node joined.
  uint64_t generation = 0;
  persistence p;
  std::shared_ptr<event_sink> events;
  caf::actor agent;
  caf::actor connector;
  /// The cluster's arbiter (etcd, or an in-process service for a node alone).
  std::shared_ptr<coordinator> coord;
  /// Membership, fencing and leadership decisions: the agent's thread only.
  std::unique_ptr<cluster_detail::membership_core> core;

  mutable std::mutex mtx;
  mutable std::condition_variable cv;
  std::map<std::string, peer_entry> peers;
  std::map<std::string, node_factory> factories;
  std::vector<peer_listener> listeners;
  /// Over TLS: the certificate name (none: it names none) and address of
  /// each peer process's connection, by node id, as CAF's openssl manager
  /// reported them (asked once per connection; see check_peer).
  std::map<caf::node_id, std::pair<std::optional<std::string>, std::string>> tls_names;
  /// Identity checks waiting for a lookup of their peer's certificate name that
  /// is under way, in the order their messages arrived (the agent's thread only).
  std::map<caf::node_id, std::vector<std::function<void(const std::optional<std::string>&,
                                                        const std::string&, const caf::error&)>>>
      tls_waiting;
  /// Hellos from peers at an epoch that the coordinator's view has not shown here yet, in the
  /// order they came (the agent's thread only): each is tried again after every view and
  /// tick, and returns whether it was answered (admitted, refused, or its deadline passed).
  std::vector<std::function<bool()>> pending_hellos;
  /// Hear what the node does on its own account (e.g. an actor it moved).
  std::vector<std::function<void(const std::string&)>> note_listeners;

  void announce(const std::string& text) {
    std::vector<std::function<void(const std::string&)>> ls;
    {
      std::lock_guard<std::mutex> guard{mtx};
      ls = note_listeners;
    }
    for (auto& f : ls)
      f(text);
  }
  bool stop_requested = false;
  /// The coordinator declared this node dead, or its leadership or session ended: it stops.
  bool fenced = false;
  std::string fenced_reason;
  std::function<std::string()> status_provider;
  std::function<std::string()> status_json_provider;
  /// Actors started here for supervisors elsewhere: stopped with the node,
  /// or when the node of their supervisor is declared dead (orphans).
  std::vector<spawned_actor> spawned;
  /// The nodes that may run the tree, in order of preference (see
  /// cluster_node::set_leader_candidates); empty: no leader.
  std::vector<std::string> candidates;
  /// The leader as the coordinator names it ("" while none), and its term.
  std::string leader;
  uint64_t term = 0;
  /// The coordinator made this node the leader (its term is `term`).
  bool leads = false;
  /// This node runs the tree (claim_leadership).
  bool leading = false;

  const failure_detection_spec& fd() const { return cfg.cluster.failure_detection; }

  bool knows(const std::string& name) const {
    std::lock_guard<std::mutex> guard{mtx};
    return peers.count(name) != 0;
  }

  peer_view view(const peer_entry& e) const {
    return {e.spec.name, e.state, e.detector.phi(clock_type::now()), e.generation, {}};
  }

  /// Whether this node has a connection to peer `name` that counts: its agent is known and the
  /// peer is up. Called with mtx held.
  bool connected_locked(const std::string& name) const {
    auto i = peers.find(name);
    return i != peers.end() && i->second.agent && up_locked(name);
  }

  /// Whether peer `name` counts as up: alive or suspected (not yet declared dead). Called with
  /// mtx held.
  bool up_locked(const std::string& name) const {
    auto i = peers.find(name);
    return i != peers.end() &&
           (i->second.state == peer_state::alive || i->second.state == peer_state::suspected);
  }

  std::string current_leader() const {
    std::lock_guard<std::mutex> guard{mtx};
    return leader;
  }
};

namespace cluster_detail {

using state_ptr = std::shared_ptr<cluster_node::state>;

} // namespace cluster_detail

} // namespace understudy

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(understudy::cluster_detail::core_input)
