#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "understudy/actors/job_config.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/cluster/cluster.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/state/runtime.hpp"

namespace understudy {
class node_component;
} // namespace understudy

namespace understudy::actors {

/// The training_config of `nc`'s [job] (job_of): loads its data file (relative to the
/// working directory), splits it by seed, builds the model. Errors name the
/// config file and the line of the key at fault.
caf::expected<training_config> make_training_config(const node_config& nc);

/// For the program that runs a cluster's nodes (the `understudy` command, or
/// one that embeds nodes): call it first in main(). In a process that a node
/// started to host one actor of its training job in isolation (`process =
/// "isolated"` for [job.worker]), it hosts that actor and returns the
/// process's exit status (see run_actor_host); elsewhere it returns none at
/// once. Such a worker runs in a process of its own on its node, so that a
/// crash of that process (a segfault, a sticky CUDA error) costs only it: its
/// supervisor restarts it in a fresh process. The worker reads its node's
/// config file with what `components` accept (those of the node program:
/// every section its file may hold; empty: the training component's).
std::optional<int> host_isolated_training_actor(
    const std::vector<std::shared_ptr<const node_component>>& components = {});

/// The nodes that may host the trainer, and so run the job's tree, in order
/// of preference: [job.trainer]'s placement (its first node, then its
/// failover nodes); for a trainer without a placement of its own, that of the
/// tree's `training_job` child or else the root's.
std::vector<std::string> leader_candidates(const node_config& nc);

/// One node's part of a cluster's training job. Every node builds the same job
/// (same config, its own state store) and lets its peers start shards,
/// loaders and workers on it; the leader (the first of leader_candidates while
/// it lives, then the next one alive: cluster_node's leadership) runs the
/// job's supervision tree and hosts the trainer. Shards, loaders and workers
/// start on the nodes their placement names and, when such a node dies, on its
/// buddy, restored from the copies of its checkpoints. A new leader starts the
/// tree afresh: the trainer finds the last step every shard and loader has on
/// disk and the job goes on from there.
class cluster_training {
public:
  /// Builds the job on `node` and registers its factories there.
  static caf::expected<std::unique_ptr<cluster_training>> create(cluster_node& node,
                                                                 const node_config& nc);

  /// The nodes that may run the job's tree, in order (leader_candidates);
  /// the node's leadership (cluster_node::await_leadership) says which does.
  const std::vector<std::string>& candidates() const noexcept { return candidates_; }

  /// On the leader: the job's tree, its actors placed over the nodes. With
  /// elastic workers ([job] min_workers below workers) each worker runs on a
  /// node of its own: one whose node is lost moves to a live node that runs
  /// none of the job's workers, or, where there is none, is parked (a stand-in
  /// on the leader, see spawn_parked_worker) while the job goes on without it;
  /// it starts again as soon as such a node is alive (one that came back or
  /// joined).
  supervisor_spec spec(std::shared_ptr<event_sink> events, std::string name = "job") const;

  training_job& job() noexcept { return job_; }

private:
  cluster_training(cluster_node& node, const node_config& nc, training_job job);
  cluster_node& node_;
  /// Where the actors of each role start and may restart ([job.<role>]).
  struct role_placements {
    placement_spec shard;
    placement_spec loader;
    placement_spec worker;
  };
  role_placements placements_;
  training_job job_;
  std::vector<std::string> candidates_;
  /// Elastic workers (training_config::min_workers below workers): where each
  /// worker runs ("" while parked or not placed yet), one worker per node.
  struct worker_nodes;
  std::shared_ptr<worker_nodes> worker_nodes_;
};

} // namespace understudy::actors
