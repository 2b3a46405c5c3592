#pragma once

#include <map>
#include <string>
#include <vector>

#include "understudy/actors/training.hpp"
#include "understudy/config/config_section.hpp"
#include "understudy/config/node_config.hpp"

namespace understudy::actors {

// The training component's section of the node config file: `[job]`, a
// synchronous data-parallel training job, with its roles' supervisors and
// placements in `[job.shard]`, `[job.loader]`, `[job.worker]` and
// `[job.trainer]` (docs/config.md lists every key). The tree starts it as
// its child of type "training_job". Register `job_section()` in the
// node_config_options of a program that runs jobs; the parsed section is a
// `job_config`, found with `job_of`. Errors are `config_errc` values reading
// `FILE:LINE: problem`.

/// `[job]` as the training component reads it: everything of the job's
/// training_config but the model and the data, which make_training_config
/// builds, and where the actors of each role run.
struct job_config {
  /// Counts, steps, seed, optimizer, faults and the roles' policies; `net`,
  /// `train` and `test` are empty.
  training_config training;
  /// "mlp" with `layers` = {inputs, hidden..., classes}.
  std::string model = "mlp";
  std::vector<size_t> layers;
  /// A CSV file (plain or gzip), last column the label; inputs scaled by `data_scale`.
  std::string data;
  double data_scale = csv_options{}.scale;
  /// The share of samples held out for evaluation, split by `seed`.
  double test_fraction = 0.2;
  /// The fault spec as written (parsed into `training.faults`).
  std::string faults;
  /// Where each role's actors run, resolved against the nodes (one start
  /// node per actor).
  placement_spec shard_placement;
  placement_spec loader_placement;
  placement_spec worker_placement;
  placement_spec trainer_placement;
  /// Source lines of the keys set in the file: "data", "faults",
  /// "worker.placement", ...; the `[job]` header under "".
  std::map<std::string, int> lines;

  /// Returns the line of `key` (see `lines`), or that of `[job]` if not set there.
  int line_of(const std::string& key) const;
};

/// The `[job]` section, to register in node_config_options::sections; its
/// tree child type is "training_job".
config_section job_section();

/// Returns node_config_options with the `[job]` section registered.
node_config_options job_config_options();

/// The path in the tree of `nc` of its training job (the first child of type
/// "training_job", depth first; e.g. "/root/job"), or "" if it runs none.
std::string training_job_path(const node_config& nc);

/// The parsed `[job]` of `nc`, or null if it has none (or `[job]` was not registered).
const job_config* job_of(const node_config& nc);
job_config* job_of(node_config& nc);

} // namespace understudy::actors
