#pragma once

#include <memory>

#include "understudy/node/node.hpp"

namespace understudy::actors {

/// The training job as a node component (node/node.hpp): loading parses its
/// [job] section (job_section); it registers the job's message types; the
/// trainer's placement names the leader candidates (leader_candidates); on
/// every node it lets peers start shards, loaders and workers
/// (cluster_training); on the leader it builds the tree's "training_job"
/// child, prints the job's start and progress lines ("job: ...",
/// "progress: step N/M ..."), registers and feeds the training metrics (training_metrics) and ends
/// the node with the job ("final: steps=... params_digest=..."). The `understudy` command passes it
/// to run_node, run_status and run_launch.
std::shared_ptr<const node_component> training_component();

} // namespace understudy::actors
