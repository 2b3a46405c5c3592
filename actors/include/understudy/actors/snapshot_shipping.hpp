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
#include <optional>
#include <string>

#include "understudy/cluster/cluster.hpp"
#include "understudy/config/config_section.hpp"
#include "understudy/node/node.hpp"
#include "understudy/state/snapshot.hpp"

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

/// What a drill found.
struct drill_report {
  /// The snapshot restored and the one its replay is compared with.
  uint64_t restored_step = 0;
  uint64_t compared_step = 0;
  /// The parameters' digests: the replay's and the shipped step's.
  uint64_t replayed_digest = 0;
  uint64_t shipped_digest = 0;
  /// How long the restore (verification and import) and the replay took.
  std::chrono::milliseconds restore_time{0};
  std::chrono::milliseconds replay_time{0};
  bool passed() const noexcept { return replayed_digest == shipped_digest; }
};

/// A restore drill of the job of `nc` from its [snapshots] directory: takes
/// the two newest snapshots, verifies every file of both, imports the older
/// into `scratch/restored` (a fresh directory), runs the job there (in this
/// process, without its faults) up to the newer one's step, and compares the
/// parameters it ends with against the newer snapshot's, bit for bit. Errors:
/// missing_key (no [job] or [snapshots]), not_found (fewer than two
/// snapshots), corrupt_record naming a damaged file, those of the run.
caf::expected<drill_report> run_drill(const node_config& nc, const std::string& scratch);

/// An error (config_errc::invalid_value) if `nc` has [snapshots] whose
/// directory records that another cluster took its job over: a superseded
/// site drives nothing.
caf::error check_not_superseded(const node_config& nc);

/// Makes the cluster of `nc` (a second site: its own nodes and etcd, the same
/// [job]) take the job over from its [snapshots] directory: the newest
/// snapshot that verifies completely (an older one if the newest is damaged)
/// of the same job (fingerprint and path) is imported into every active
/// node's state directory, so that `understudy launch` resumes it there, and
/// the directory records the promotion, after which the old site's nodes
/// refuse to start and its shipping stops. Errors: missing_key, not_found (no
/// intact snapshot), invalid_value (another job's snapshots, a promotion by
/// another cluster already), those of the import. Call it only once the old
/// site is down (`understudy promote` checks that first).
caf::expected<snapshot_promotion> promote_site(const node_config& nc);

} // namespace understudy::actors
