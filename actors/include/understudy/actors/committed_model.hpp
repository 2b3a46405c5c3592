#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "understudy/actors/numerics/model.hpp"
#include "understudy/state/state_store.hpp"

namespace understudy::actors {

/// A training job's parameters at one committed step: what the job itself
/// would resume from, for serving or exporting a model without running it.
struct committed_parameters {
  /// The committed step (the model's version).
  uint64_t step = 0;
  /// The flat parameter vector, `model::parameter_count()` floats.
  std::vector<float> params;
  /// Held-out accuracy the job measured at `eval_step` (NaN before the first).
  double accuracy = std::numeric_limits<double>::quiet_NaN();
  uint64_t eval_step = 0;
};

/// The newest committed step of the training job at `job_path` (e.g.
/// "/digits_mlp") in `store`, at most `max_step`: the newest step whose trainer
/// record and every shard record it names verify completely. 0 when none does.
/// A corrupt newest step falls back to the one before, as the job's own resume
/// does. Errors: I/O only. Any thread; reads in transactions of its own.
caf::expected<uint64_t> newest_committed_step(const state_store& store, const std::string& job_path,
                                              uint64_t max_step = UINT64_MAX);

/// Reads the parameters of committed step `step` (0: the newest committed
/// step) of the job at `job_path`, put together from its shards and checked
/// against `net` (every parameter held exactly once). Errors: not_found when
/// the job has no committed step (or not `step`), schema_mismatch naming the
/// record when the shards do not fit `net` (another model), corrupt_record.
caf::expected<committed_parameters> read_committed_parameters(const state_store& store,
                                                              const std::string& job_path,
                                                              const model& net, uint64_t step = 0);

/// The records that make up a committed step of a job, for copying it whole
/// (snapshots): the trainer's, each shard's and each loader's, all at `step`.
struct committed_step_records {
  uint64_t step = 0;
  /// The job's fingerprint as its trainer recorded it (see fingerprint()).
  uint64_t fingerprint = 0;
  std::vector<std::string> paths;

  /// The fingerprint as a snapshot names it: 16 hexadecimal digits.
  std::string fingerprint_hex() const;
};

/// The records of committed step `step` (0: the newest committed step) of the
/// job at `job_path` in `store`, each verified completely. Errors: not_found
/// when the job has no committed step (or not `step`), corrupt_record naming
/// a record that does not verify.
caf::expected<committed_step_records> read_committed_step_records(const state_store& store,
                                                                  const std::string& job_path,
                                                                  uint64_t step = 0);

} // namespace understudy::actors
