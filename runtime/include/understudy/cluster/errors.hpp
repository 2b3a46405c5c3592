#pragma once

#include <cstdint>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

#include "understudy/core/errors.hpp"

namespace understudy {

/// Failures of the cluster: membership, fencing, replication and placement
/// (cluster.hpp). The context says what was refused or missing and names the
/// nodes concerned, e.g. "node n2 generation 3 is fenced: it was declared dead".
/// Sorted by what the caller does next: a misconfiguration or an identity or
/// fencing refusal gives up, missing capacity backs off, a lost peer reconnects.
enum class cluster_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// A node or peer is not one of the cluster's config file.
  unknown_node,
  /// A peer is not the node it claims to be: its certificate or its answer
  /// names another node. The connection is refused.
  identity_mismatch,
  /// The node was declared dead (fenced), or stayed paused past its deadline:
  /// the cluster refuses what it sends and it must not act any more.
  fenced,
  /// No live node can take the work (replicate a checkpoint, hold a child's
  /// checkpoints, start a child): wait for nodes to come back.
  no_live_node,
  /// The node the request needs has no connection or is gone: resolve it
  /// again (or another one) and retry.
  peer_unreachable,
  /// The node cannot listen on its configured address (e.g. the port is in use).
  cannot_listen,
  /// No actor factory of the requested type is registered on the node.
  no_factory,
  /// The tree asks for a placement the cluster does not support (e.g. an
  /// isolated process for a child other than a training job's worker).
  unsupported_placement,
  /// A peer's message is malformed or out of range (a size, count or index it
  /// declares): it is refused and logged, and the node goes on.
  malformed_message,
  /// A replica does not match the checksums its sender computed (its bytes
  /// changed on the way): it is refused, nothing stored changes.
  replica_refused,
};

/// Declares `cluster_errc`.
template <>
struct error_traits<cluster_errc> {
  static constexpr caf::atom_value category = caf::atom("us_cluster");
  static constexpr error_value<cluster_errc> values[] = {
      {cluster_errc::none, "none", "not an error", next_step::give_up},
      {cluster_errc::unknown_node, "unknown_node", "the cluster's config has no such node",
       next_step::give_up},
      {cluster_errc::identity_mismatch, "identity_mismatch",
       "a peer is not the node it claims to be", next_step::give_up},
      {cluster_errc::fenced, "fenced", "the node was declared dead", next_step::give_up},
      {cluster_errc::no_live_node, "no_live_node", "no live node can take the work",
       next_step::back_off},
      {cluster_errc::peer_unreachable, "peer_unreachable",
       "the node the request needs is not connected", next_step::reconnect},
      {cluster_errc::cannot_listen, "cannot_listen",
       "the node cannot listen on its configured address", next_step::back_off},
      {cluster_errc::no_factory, "no_factory", "no actor factory of that type on the node",
       next_step::give_up},
      {cluster_errc::unsupported_placement, "unsupported_placement",
       "the tree asks for a placement the cluster does not support", next_step::give_up},
      {cluster_errc::malformed_message, "malformed_message",
       "a peer's message is malformed or out of range", next_step::give_up},
      {cluster_errc::replica_refused, "replica_refused",
       "a replica does not match its sender's checksums", next_step::give_up},
  };
};

/// Error category atom for `cluster_errc`, as carried in `caf::error`.
constexpr caf::atom_value cluster_category = error_traits<cluster_errc>::category;

/// Registers the cluster's error categories (`cluster_errc`, `security_errc`,
/// `coordination_errc`)
/// with `cfg` so that `caf::actor_system::render` prints them by name.
/// `cluster_node::configure` calls it.
void register_cluster_error_categories(caf::actor_system_config& cfg);

} // namespace understudy
