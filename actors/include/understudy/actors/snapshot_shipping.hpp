#pragma once

// Shipping a cluster job's snapshots while it trains: the [snapshots] section
// of the node config file (owned by the training component).
//
//   [snapshots]
//   dir = "/mnt/dr/digits"   # a snapshot directory (understudy/state/snapshot.hpp)
//   every = "10s"            # how often the newest committed step is shipped
//   node = "n1"              # the node that writes them (default: the first active node)
//   keep_last = 0            # after each, prune to the last N (0: keep all) ...
//   keep_every = 0           # ... and every snapshot whose step is a multiple of K
//
// The shipping node gathers the job's committed steps from the nodes that hold
// them into a copy of its own (cluster_node::gatherer), off the training path,
// and every `every` writes the newest committed step it has as a snapshot
// (only the chunks the directory does not hold yet). Its lines say which step
// went and how far it was behind the newest the cluster had committed then.
//
// Threads: the gatherer on CAF's scheduler, the writer on a thread of its own
// (it does file I/O). Errors: config_errc in the section; write problems are
// logged and retried at the next round.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "understudy/cluster/cluster.hpp"
#include "understudy/config/config_section.hpp"
#include "understudy/node/node.hpp"

namespace understudy::actors {

/// The parse of [snapshots].
struct snapshots_config {
  std::string dir;
  std::chrono::milliseconds every{10000};
  /// The node that writes them.
  std::string node;
  uint64_t keep_last = 0;
  uint64_t keep_every = 0;
  int line = 0;
};

/// The [snapshots] section for node_config_options.
config_section snapshots_section();

/// The [snapshots] section of `nc`, or null.
const snapshots_config* snapshots_of(const node_config& nc);

/// On the node that [snapshots] names (with a [job]): the shipping, as a part
/// of the node that stops it when it goes; a part that does nothing elsewhere.
caf::expected<std::unique_ptr<node_part>> attach_snapshot_shipping(cluster_node& node,
                                                                   const node_config& nc);

} // namespace understudy::actors
