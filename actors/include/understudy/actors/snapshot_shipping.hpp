#pragma once

// Shipping a cluster job's snapshots while it trains: the [snapshots] section
// of the node config file (owned by the training component).
//
//   [snapshots]
//   dir = "/mnt/dr/digits"   # a snapshot directory (understudy/state/snapshot.hpp)
//   every = "10s"            # how often the newest committed step is shipped
//   rpo = "30s"              # the declared recovery point: a duration, or a count of steps
//   node = "n1"              # the node that writes them (default: the first active node)
//   keep_last = 0            # after each, prune to the last N (0: keep all) ...
//   keep_every = 0           # ... and every snapshot whose step is a multiple of K
//
//   # On a second site (standby.hpp): the same [job] and dir, its own nodes.
//   standby = true           # trains nothing until promoted
//   primary = "site-a.toml"  # the primary's file (its nodes are probed)
//   promote_after = "30s"    # promote when the primary was unreachable this long
//   drill_every = "1h"       # restore drills on a schedule
//
// The shipping node gathers the job's committed steps from the nodes that hold
// them into a copy of its own (cluster_node::gatherer), off the training path,
// and every `every` writes the newest committed step it has as a snapshot
// (only the chunks the directory does not hold yet); sooner when the recovery
// point reaches half the declared `rpo`. Its metrics (understudy_dr_*) give
// the live recovery point against the rpo. When the directory records that
// another cluster took the job over, this cluster stops: it drives nothing.
//
// Threads: the gatherer on CAF's scheduler, the writer detached (a thread of
// its own: it does file I/O). Errors: config_errc in the section; write
// problems are logged, counted and retried at the next round.

#include <chrono>
#include <cstdint>
#include <map>
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
  /// The declared recovery point (0: none): as steps, or as time.
  uint64_t rpo_steps = 0;
  std::chrono::milliseconds rpo{0};
  /// A second site: trains nothing until promoted.
  bool standby = false;
  /// The primary's node config file (as written, and resolved against this
  /// file's directory), promotion after it was unreachable this long (0:
  /// only `understudy promote`), drills every (0: none) into `drill_dir`
  /// (default DIR-drill).
  std::string primary;
  std::chrono::milliseconds promote_after{0};
  std::chrono::milliseconds drill_every{0};
  std::string drill_dir;
  int line = 0;
};

/// The [snapshots] section for node_config_options.
config_section snapshots_section();

/// The [snapshots] section of `nc`, or null.
const snapshots_config* snapshots_of(const node_config& nc);

/// On the node that [snapshots] names (with a [job]): the shipping, as a part
/// of the node that stops it when it goes; a part that does nothing elsewhere.
/// `metrics` (may be null) gets the understudy_dr_* metrics.
caf::expected<std::unique_ptr<node_part>> attach_snapshot_shipping(cluster_node& node,
                                                                   const node_config& nc,
                                                                   node_metrics* metrics);

/// How far a copy of the job is behind the newest committed step: the steps
/// not shipped yet, and how long ago the oldest of them was committed (its
/// trainer record's creation time, on the node that committed it). A plain
/// object driven by its caller's clock.
class recovery_point {
public:
  using time_point = std::chrono::system_clock::time_point;
  /// Step `step` was committed at `at` (a step at or below the shipped one is ignored).
  void committed(uint64_t step, time_point at);
  /// Step `step` is shipped (everything up to it is safe).
  void shipped(uint64_t step);
  uint64_t shipped_step() const noexcept { return shipped_; }
  uint64_t behind_steps() const noexcept { return newest_ > shipped_ ? newest_ - shipped_ : 0; }
  /// Since the oldest step not shipped was committed; zero when none waits.
  std::chrono::milliseconds behind(time_point now) const;
  /// When the oldest step not shipped was committed, if one waits.
  std::optional<time_point> oldest_waiting() const;

private:
  uint64_t newest_ = 0;
  uint64_t shipped_ = 0;
  /// The commit times of the steps past shipped_ that were seen.
  std::map<uint64_t, time_point> waiting_;
};

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
/// directory records that another cluster took its job over (a superseded
/// site drives nothing), or if it is a standby site not promoted yet.
caf::error check_not_superseded(const node_config& nc);

/// Fills the cluster of `nc` (stopped: its nodes' state directories) from the
/// snapshot directory `dir`: snapshot `step`, or (0) the newest that verifies
/// completely, of the same job (fingerprint and path), imported into every
/// active node's store as copies (a stored version is never replaced), so
/// that `understudy launch` resumes the job from it; when the job's counts of
/// shards or loaders differ from the snapshot's, every node reshards the step
/// alike in its store (training_job::reshard_stored; `resharded_step` gets the
/// step, 0 when nothing needed it). Returns the snapshot.
/// Errors: missing_key (no [job]), not_found (no such or no intact snapshot),
/// invalid_value (another job's snapshots), corrupt_record, those of the import.
caf::expected<snapshot_info> import_into_cluster(const node_config& nc, const std::string& dir,
                                                 uint64_t step = 0,
                                                 uint64_t* resharded_step = nullptr);

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
