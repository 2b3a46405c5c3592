#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "understudy/actors/numerics/model.hpp"
#include "understudy/state/state_store.hpp"

namespace understudy::serving {

/// One version of a model's parameters. Immutable once made; replicas share it.
struct model_version {
  /// The version's number: the training job's committed step (> 0).
  uint64_t step = 0;
  std::shared_ptr<const std::vector<float>> params;
};

/// Where replicas load model versions from. Thread-safe: replicas on several
/// threads load at once.
class model_source {
public:
  virtual ~model_source() = default;
  /// The model's shape and numerics.
  virtual const actors::model& net() const = 0;
  /// The newest version available (0: none yet). Errors: I/O.
  virtual caf::expected<uint64_t> newest() const = 0;
  /// Loads version `step` (0: the newest). Errors (serving_errc::no_model):
  /// none committed, not that step, or its records do not fit the model.
  virtual caf::expected<model_version> load(uint64_t step) const = 0;
  /// What a replica in a process of its own needs to open the same source
  /// there (process_spec::role pairs, see run_replica_process_if_requested);
  /// empty where the source cannot be opened elsewhere (versions in memory,
  /// a model other than an MLP).
  virtual std::map<std::string, std::string> process_role() const { return {}; }
};

/// The committed steps of the training job at `job_path` (e.g. "/digits_mlp")
/// in `store`, which may be a read-only store next to a running job: a
/// version appears once the job commits its step. `net` must be the job's
/// model. Keeps the last version it loaded, so replicas loading the same
/// version share one copy.
std::shared_ptr<model_source> committed_steps(std::shared_ptr<const actors::model> net,
                                              std::shared_ptr<state_store> store,
                                              std::string job_path);

/// Versions held in memory (an embedding program's own parameters; tests).
/// `add` makes a newer version available. Each version's parameters must hold
/// `net->parameter_count()` floats.
class memory_source : public model_source {
public:
  explicit memory_source(std::shared_ptr<const actors::model> net);
  ~memory_source() override;
  /// Adds version `step`. Throws std::invalid_argument for a wrong size or a
  /// step of 0.
  void add(uint64_t step, std::vector<float> params);
  const actors::model& net() const override;
  caf::expected<uint64_t> newest() const override;
  caf::expected<model_version> load(uint64_t step) const override;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace understudy::serving
