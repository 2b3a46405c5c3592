#pragma once

// Private to runtime/src/cluster: a training job's commit protocol on a cluster_sim, with
// simulated disks (see simulation.hpp for what it is part of).
//
// The job: `shards` parameter shards and `loaders` data loaders (the stateful participants;
// workers hold no state and are folded into the shards' work), driven by whichever node leads.
// The numerics are a stand-in whose result is still checked: a loader hands out the next
// sample ids of a global order (a permutation of the data set per epoch, from the seed) and
// keeps a cursor; a shard folds the step and every sample id of its batch into a hash chain.
// The fault-free run's chain is computed up front; every committed step must match it.
//
// Each step s: the driver asks every loader for its part of batch s, then sends the batch to
// every shard; each participant applies s in the memory of its node's process, writes its state
// after s to that node's disk (durable after an fsync) and copies it to a buddy node (the next
// node in name order that its node sees alive; durable there after the buddy's fsync), and says
// "durable" to the driver once both copies are: the commit rule is the training job's own
// (state/step_commit.hpp), as is the choice of the step a recovery resumes from. A recovery
// round (when the driver starts leading, when a participant's node is seen dead, when nothing
// moved for a deadline) asks every node it sees alive which versions of each participant its
// disk holds (each read verified by its checksum), resumes from the lowest newest version,
// places each participant on a node that holds that version (its current node if it does),
// and rolls it back there. Every message carries the driver's node, epoch and attempt (its
// term and round): a node acts on it only if its membership core accepts that epoch, and a
// participant never goes back to an older attempt than one it has seen.
//
// Disks: writes land in the page cache and survive a process kill; a power loss (the
// `power_loss` fault) loses the writes not yet fsynced, leaving some torn (present, failing
// their checksum); reads return corrupt bytes with some probability (a checksum mismatch, read
// again); a replaced machine (`lose_disk`) comes back with an empty disk (at most one per
// run: with one buddy copy, two lost disks may lose an acknowledged step).
//
// Invariants (reported through `violation`): the committed step never goes back, across
// leaders and recoveries (no acknowledged checkpoint lost); every committed step's states are
// the fault-free run's (a step applied twice, skipped or fed other samples changes the chain;
// the fault-free order consumes every sample exactly once per epoch, checked up front); the
// job ends (finished() or an explicit error()).
//
// Threads: the caller's (cluster_sim's). Errors: none thrown.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

namespace understudy::cluster_detail {

class cluster_sim;

struct training_sim_options {
  size_t shards = 2;
  size_t loaders = 2;
  uint64_t steps = 200;
  /// Samples per step (a multiple of `loaders`), and per epoch (a multiple of `batch`).
  uint64_t batch = 8;
  uint64_t epoch_samples = 96;
  uint64_t data_seed = 1;
  /// A shard's work per step, a disk's fastest fsync (each takes 1 to 30 times that), copying
  /// a checkpoint to the buddy.
  std::chrono::milliseconds compute{100};
  std::chrono::milliseconds fsync{2};
  std::chrono::milliseconds transfer{20};
  /// Nothing moved this long (driver's clock): a new recovery round.
  std::chrono::milliseconds progress_deadline{1000};
  /// Versions each disk keeps per participant.
  size_t keep_last = 3;
  /// Probability that a read returns corrupt bytes.
  double corrupt_reads = 0;
  /// Seed of the disks' own faults (torn writes, corrupt reads).
  uint64_t disk_seed = 1;
};

class training_sim {
public:
  training_sim(cluster_sim& sim, training_sim_options o,
               std::function<void(const std::string&)> violation);
  ~training_sim();
  training_sim(const training_sim&) = delete;
  training_sim& operator=(const training_sim&) = delete;

  /// Call after every input of node incarnation `id` (cluster_sim::after_input): a node that
  /// starts leading starts driving the job; one that stopped leading stops.
  void after_input(size_t id);

  /// Power loss at `node` (call before killing it): its unsynced writes are lost or torn.
  void power_loss(const std::string& node);

  /// `node`'s machine is replaced (call before killing it): its disk comes back empty.
  void lose_disk(const std::string& node);

  /// At the end of the run: a finished job sent every step's samples, each sample exactly once
  /// per epoch.
  void check_end();

  /// Whether some driver recorded the job's last step as committed.
  bool finished() const;
  /// When it did (simulated ms since the start; 0: not yet).
  double finished_ms() const;
  /// An explicit error that ended the job ("" if none).
  const std::string& error() const;
  /// The newest committed step any driver saw, the recovery rounds run, steps applied (all
  /// attempts), and what the disks refused to return (torn or corrupt reads).
  uint64_t committed() const;
  uint64_t rounds() const;
  uint64_t applied_steps() const;
  uint64_t bad_reads() const;
  /// The longest time between two commits that each moved the job past every step before,
  /// and the median one (a step), in simulated ms.
  std::pair<double, double> commit_gaps() const;
  /// Lines for the trace (recoveries, placements, commits every 50 steps, errors).
  const std::string& trace() const;

private:
  struct impl;
  std::unique_ptr<impl> d_;
};

} // namespace understudy::cluster_detail
