#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "understudy/metrics/metrics.hpp"

namespace understudy::actors {

/// The training job's metrics on a node's endpoint: `understudy_training_steps_total`
/// (the highest committed step; steps redone after a rollback count once),
/// `understudy_training_step` (the last committed step) and
/// `understudy_training_step_rate` (steps committed per second over the rate
/// window, 0 when none was) and `understudy_training_slowest_worker_ratio`
/// (training_progress::slowest_worker_ratio: a straggler's score), and each
/// worker's own score `understudy_training_worker_step_ratio{worker}`.
///
/// Build one per node that runs a job, next to its node_metrics; it registers
/// the metrics at zero at once. Threads: on_step is thread-safe (a mutex), so
/// the job's progress callback may call it from an actor thread.
class training_metrics {
public:
  /// Registers the metrics with `metrics`; the rate covers the last `rate_window`.
  explicit training_metrics(
      node_metrics& metrics,
      std::chrono::steady_clock::duration rate_window = std::chrono::seconds(10),
      size_t workers = 0);

  /// Reports that training step `committed_step` is committed (globally, or by
  /// this node's participants). Advances the steps counter by the steps past
  /// the highest reported so far (a rollback counts nothing until the steps are
  /// passed again), sets the current step gauge, and recomputes the step rate
  /// over the rate window. `now` is for tests.
  void on_step(uint64_t committed_step,
               std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());

  /// Sets the slowest worker's ratio to the workers' median (thread-safe).
  void on_worker_ratio(double slowest);

  /// Sets each worker's ratio to the median (`understudy_training_worker_step_ratio`,
  /// labelled `worker="worker-I"`; a series per worker of the job, at zero from
  /// the start). Ratios past the job's workers are ignored.
  void on_worker_ratios(const std::vector<double>& ratios);

  /// Sets the goodput gauge: the share of wall time in committed steps.
  void on_goodput(double share);

private:
  struct state;
  std::shared_ptr<state> st_;
};

} // namespace understudy::actors
