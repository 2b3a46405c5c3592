#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <caf/atom.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/timespan.hpp>

#include "understudy/actors/numerics/dataset.hpp"
#include "understudy/actors/numerics/model.hpp"
#include "understudy/actors/numerics/optimizer.hpp"
#include "understudy/core/shared_value.hpp"
#include "understudy/state/state_writer.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy::actors {

// -- faults ----------------------------------------------------------------------

/// Which actor an injected fault crashes. `gpu` is a device fault of a GPU
/// actor (examples/gpu_mlp): a real illegal-address kernel on CUDA; training
/// jobs without GPU actors accept none.
enum class fault_target : uint8_t { worker, shard, loader, trainer, gpu };

/// Returns "worker", "shard", "loader", "trainer" or "gpu".
std::string to_string(fault_target x);

/// What an injected fault does: `crash` throws (the actor exits with an
/// error); `hang` makes the actor stop answering without exiting: it keeps
/// every later message unanswered in its mailbox, as a stuck collective or a
/// deadlocked reader would, until the trainer's step deadline finds it;
/// `slow` (workers only) makes every later step of that worker incarnation
/// take `factor` times as long, at least (factor - 1) x 10 ms longer, as a
/// degraded device or a noisy neighbour would, until the trainer restarts it
/// as a straggler; `lose` (workers only) loses that worker's gradients of the
/// step in transit while the worker goes on answering.
enum class fault_kind : uint8_t { crash, hang, slow, lose };

/// One injected fault: actor `target` number `index` (0 for the trainer)
/// crashes or hangs when it starts working on step `step`. Each fault fires once.
struct fault {
  fault_target target = fault_target::worker;
  size_t index = 0;
  uint64_t step = 0;
  fault_kind kind = fault_kind::crash;
  /// For `slow`: how many times slower (above 1).
  double factor = 1;
};

/// Renders `f` as in a fault spec, e.g. "worker:1@120", "trainer@600",
/// "hang:shard:0@40" or "slow:worker:1@50:10".
std::string to_string(const fault& f);

/// Parses a fault spec: a comma-separated list of `worker:I@S`, `shard:I@S`,
/// `loader:I@S`, `trainer@S`, `gpu:I@S` (only with `gpus` > 0), `hang:ROLE:I@S`
/// (ROLE worker, shard or loader: the actor stops answering) or `hang:trainer@S`,
/// `slow:worker:I@S:F` (F from 1.5 to 1000: that worker's steps take F times as long),
/// `lose:worker:I@S` (that worker's gradients of step S are lost in transit), or `random:K` (K
/// crashes of any kind at steps in [1, steps], drawn from `seed`; with `gpus` > 0 of the kinds
/// whose count is not 0, GPU faults included). Indices must name existing actors and steps lie in
/// [1, steps]. Errors name the offending entry. An empty spec is no fault.
caf::expected<std::vector<fault>> parse_faults(const std::string& spec, size_t workers,
                                               size_t shards, size_t loaders, uint64_t steps,
                                               uint64_t seed, size_t gpus = 0);

// -- the job -----------------------------------------------------------------------

/// Strategy and restart limits of one role's supervisor.
struct role_policy {
  restart_strategy strategy = restart_strategy::one_for_one;
  restart_intensity intensity{20, std::chrono::seconds(10)};
  backoff_policy backoff;
  /// The role's own bounds of the step deadline (training_config::hang_floor),
  /// zero: the job's. The trainer waits for an answer from one of the role's
  /// actors at least hang_floor and at most hang_ceiling before it finds it
  /// hung (e.g. a longer floor for loaders whose reads block for seconds).
  /// Shards, loaders and workers only.
  std::chrono::milliseconds hang_floor{0};
  std::chrono::milliseconds hang_ceiling{0};
};

/// Everything that defines a synchronous data-parallel training job. Changing
/// any field marked (*) changes the job's fingerprint: a state directory
/// written by one job is not resumed by another.
struct training_config {
  /// The model (*), the training data (*) and the held-out data.
  std::shared_ptr<const model> net;
  std::shared_ptr<const dataset> train;
  std::shared_ptr<const dataset> test;
  /// Actors per role. They are not part of the job's mathematics: the result
  /// is the same for any counts, and a state directory resumes with others
  /// (see training_job).
  size_t workers = 2;
  size_t shards = 2;
  size_t loaders = 1;
  /// The global batch (*): samples per step, in the training set's global
  /// order (one shuffle per epoch), split into `micro_batches` (*) equal
  /// micro-batches. Micro-batch m of a step is computed by one worker, which
  /// one does not matter: each micro-batch's gradient is computed alone, and
  /// every shard sums them in micro-batch order. So workers can be at most
  /// `micro_batches`, and each takes about micro_batches / workers of them.
  size_t batch = 64;
  size_t micro_batches = 8;
  /// Total steps (not part of the fingerprint: a finished job can be extended).
  uint64_t steps = 3000;
  /// Seeds parameter initialisation and the per-epoch shuffles (*).
  uint64_t seed = 1;
  optimizer_config optimizer; // (*)
  /// Shards and loaders checkpoint every this many steps (and at the last
  /// step); the trainer commits those steps. A crash loses the steps since.
  uint64_t checkpoint_every = 1;
  /// Held-out evaluation every this many steps (and at the end); 0 only at the end.
  uint64_t eval_every = 250;
  /// Steps of batches a loader prepares ahead of the step being served.
  size_t prefetch = 2;
  std::vector<fault> faults;
  /// Supervisors of the roles. Workers and loaders default to one_for_one;
  /// the shards' strategy is a choice (one_for_all restarts every shard).
  role_policy worker_policy;
  role_policy loader_policy;
  role_policy shard_policy;
  role_policy trainer_policy;
  /// Step deadlines: a step not applied by every shard within
  /// clamp(hang_factor x the slowest of the last 32 steps, hang_floor,
  /// hang_ceiling) makes the trainer ask every shard, loader and worker
  /// whether it still answers, allowing the same time again; one that does
  /// not is killed as hung (its supervisor restarts it and the step is redone).
  /// If every one answers and the job still has not moved, a message was lost:
  /// the step is redone from the committed one, and the deadline doubles until
  /// a step is applied again. Until 8 steps have been timed, the deadline is
  /// hang_ceiling. A role's own hang_floor and hang_ceiling (role_policy)
  /// bound the wait for its actors' answers instead. The trainer itself ticks every half
  /// hang_floor: one that does not tick for hang_ceiling (a hung handler) is killed by the job's
  /// supervisor as hung and restarted.
  std::chrono::milliseconds hang_floor{250};
  std::chrono::milliseconds hang_ceiling{10000};
  double hang_factor = 4.0;
  /// Stragglers: a worker whose gradients arrive more than straggler_ratio
  /// times the workers' median time after the step started, and at least
  /// straggler_lag later than that median, for straggler_steps steps in a row,
  /// is restarted (killed; its supervisor starts it afresh, the step is redone).
  /// straggler_ratio 0 turns this off.
  double straggler_ratio = 3.0;
  uint64_t straggler_steps = 20;
  std::chrono::milliseconds straggler_lag{20};
  /// Elastic workers: 0 (the default) or `workers` waits for every worker.
  /// From 1 to workers - 1, a worker that answers a step with parked_atom
  /// (in a cluster: its node was lost and no node without a worker of the job
  /// is left) is left out, and its micro-batches go to the others, as long as
  /// at least `min_workers` serve; below that the trainer waits for a worker
  /// to come back. Any number of workers gives the same result.
  size_t min_workers = 0;
};

/// Checks `cfg`: model and data present and matching, counts >= 1, at most one
/// shard per parameter, batch >= 1 and a multiple of micro_batches, at most one
/// worker and one loader per micro-batch, steps >= 1, checkpoint_every >= 1,
/// optimizer valid, faults naming existing actors. Returns the first problem.
caf::error validate(const training_config& cfg);

/// The part of `validate` about hang_floor, hang_ceiling and hang_factor: the
/// first key out of range and its error, or an empty error.
std::pair<const char*, caf::error> check_liveness(const training_config& cfg);

/// A hash of the fields marked (*) in training_config: not of the counts of
/// workers, shards and loaders.
uint64_t fingerprint(const training_config& cfg);

/// Reported by the trainer after each committed step (from an actor thread).
struct training_progress {
  uint64_t step = 0;
  uint64_t steps = 0;
  /// Mean training loss of the step's batches.
  float loss = 0;
  /// Held-out accuracy at the latest evaluation; negative before the first.
  double accuracy = -1;
  uint64_t restarts = 0;
  uint64_t lost_steps = 0;
  /// The slowest worker's time to deliver its gradients in the last step that
  /// every worker delivered, over the workers' median (1: none is behind; 0:
  /// not measured yet).
  double slowest_worker_ratio = 0;
  /// Each worker's (by index) time over the workers' median in the same step:
  /// its straggler score; 0 where not measured (parked, or no such step yet).
  std::vector<double> worker_ratios;
  /// The share of the wall time since the job started in this process spent
  /// on steps that were committed and kept (see training_result::goodput).
  double goodput = 0;
  /// The last report of the job: its final step, evaluated. Reports of the
  /// final step before it (applied, committed) have this false.
  bool finished = false;
};

/// The outcome of a job.
struct training_result {
  /// The job was asked to stop (training_job::request_stop) and ended at its
  /// committed step `steps` without evaluating: accuracy and params_digest are
  /// not set; the same state directory resumes from `steps`.
  bool stopped = false;
  uint64_t steps = 0;
  double accuracy = 0;
  /// XXH3-64 of every final parameter's bytes, in parameter order.
  uint64_t params_digest = 0;
  uint64_t restarts = 0;
  /// Steps computed and thrown away by recoveries (the steps in flight and
  /// those after the last commit).
  uint64_t lost_steps = 0;
  /// The committed step the job resumed from (0: a fresh start).
  uint64_t resumed_from = 0;
  /// Actors killed because they stopped answering, and the longest time from
  /// the start of the step they hung in to their kill.
  uint64_t hangs = 0;
  std::chrono::milliseconds longest_hang_detection{0};
  /// Workers restarted as stragglers.
  uint64_t stragglers = 0;
  /// Liveness rounds that found every participant answering while the job did
  /// not move (a lost message): each redid the step from the committed one.
  uint64_t stalls = 0;
  /// Goodput: the wall time from the trainer's first start in this process to
  /// the end, the part of it spent computing steps that were committed and
  /// kept, and the time each incident (a recovery round after the job had
  /// started: a crash, a hang, a lost node, a lost message) cost: from its
  /// start to the job running again, plus the step in flight and the applied
  /// steps it threw away. What is neither is the time between steps
  /// (commits, messages).
  std::chrono::nanoseconds wall{0};
  std::chrono::nanoseconds kept{0};
  std::vector<std::chrono::nanoseconds> incidents;
  std::vector<float> params;

  /// kept / wall (0 for no wall time).
  double goodput() const {
    return wall.count() > 0 ? static_cast<double>(kept.count()) / static_cast<double>(wall.count())
                            : 0.0;
  }
};

/// The figures of a progress line: "step 300/3000 loss 0.05487 accuracy 0.9721
/// restarts 1 lost 4" (the loss with four significant digits, the accuracy "-"
/// before the first evaluation).
std::string describe_progress(const training_progress& p);

/// The final line: "final: steps=3000 accuracy=0.9721 params_digest=c5bd1d999326cf93
/// restarts=4 lost_steps=4", what every training program prints at its end.
std::string describe_final(const training_result& r);

/// One line on `r`'s goodput, e.g. "goodput: 96.4% of 2.95 s in committed
/// steps; 4 incidents cost 52 ms (12, 14, 13, 13 ms); the rest went between
/// steps" (the first 10 incidents listed).
std::string describe_goodput(const training_result& r);

/// A training job as a supervision tree:
///
///   job (one_for_one)
///   ├── shards  (shard_policy)   shard-0 .. shard-N-1   parameter shards
///   ├── loaders (loader_policy)  loader-0 .. loader-N-1 data loaders
///   ├── workers (worker_policy)  worker-0 .. worker-N-1 forward/backward
///   └── trainer                  drives the steps, commits, evaluates
///
/// Start `spec()` with runtime::start, then `wait()` for the result. Shards,
/// loaders and the trainer persist their state in `p`; a tree started on a
/// state directory that holds a committed step of the same job resumes there,
/// also with other counts of workers, shards and loaders: the trainer first
/// rewrites the committed step's shard records (parameters and optimizer
/// state) and loader cursors for the new counts, in one transaction (so a
/// crash leaves the old layout or the new one), and the job ends with the
/// digest of an uninterrupted run.
class training_job {
public:
  /// Validates `cfg` (the `validate` error otherwise).
  static caf::expected<training_job> create(training_config cfg, persistence p);

  /// A job that only runs workers, which persist nothing: for a worker in an
  /// OS process of its own (no state store there). Its shard_spec,
  /// loader_spec and spec must not be used.
  static caf::expected<training_job> create_for_workers(training_config cfg);

  /// The injected faults (indices into config().faults) that have fired.
  std::vector<size_t> fired_faults() const;

  /// Marks fault `i` of config().faults as fired (it fired in another
  /// process): it does not fire again here.
  void mark_fired(size_t i);

  /// Calls `fn` with the index of an injected fault when it fires, before the
  /// actor crashes (set it before the job starts). E.g. an isolated worker's
  /// process records the fault and crashes the whole process instead.
  void on_fault(std::function<void(size_t)> fn);

  /// The supervision tree, named `name`. `events` receives every supervision
  /// event (may be null); restarts are counted either way. `placer`, if set,
  /// may replace the child spec of each shard, loader and worker (e.g. its
  /// start function, to start it on another node); the trainer stays local.
  supervisor_spec spec(std::string name = "job", std::shared_ptr<event_sink> events = nullptr,
                       std::function<child_spec(fault_target role, size_t index, child_spec local)>
                           placer = {}) const;

  /// Calls `fn` with a worker's index when the trainer restarts it as a
  /// straggler, just before it kills it (set it before the job starts): a
  /// cluster uses it to start that worker on another node where one is free.
  void on_straggler(std::function<void(size_t worker)> fn);

  /// Whether a resume with other counts of shards or loaders reshards the
  /// committed step through the local state store (the default). A cluster
  /// turns it off: its records are spread over its nodes, and such a resume
  /// then fails with an error that says so.
  void reshard_on_resume(bool enabled);

  /// Reshards the newest committed step of the job at `job_path` in this
  /// job's own state store for this job's counts of shards and loaders, when
  /// the store holds that step whole (every old shard's and loader's record)
  /// and its counts differ, as a resume through the local store does: for a
  /// cluster whose every node got the whole step (`understudy snapshot import
  /// --cluster`), each node reshards alike. Returns the step resharded, 0 when
  /// nothing needed it (no committed step, the same counts). Errors: those of
  /// reading the records, not_found when a record of the step is missing.
  caf::expected<uint64_t> reshard_stored(const std::string& job_path);

  /// Called by the trainer after every committed step (and on its evaluations).
  void on_progress(std::function<void(const training_progress&)> fn);

  /// Called once when the trainer has found its starting point: the committed
  /// step it resumes from (0 for a fresh start).
  void on_start(std::function<void(uint64_t committed)> fn);

  /// Blocks until the trainer finishes (the result) or fails for good (the
  /// error, e.g. a state directory of another job), or `timeout` passes.
  caf::expected<training_result> wait(std::chrono::milliseconds timeout) const;

  /// Asks the job to stop in order: the trainer starts no new step, and once
  /// the steps in flight are committed (or abandoned, between checkpoints) the
  /// job ends with a result whose `stopped` is set, at the step it resumes
  /// from. wait() then returns it.
  void request_stop();

  /// The newest step this job has committed, or resumed from, so far (0 before
  /// the trainer found its starting point): where a run stopped now would
  /// resume.
  uint64_t committed_step() const;

  const training_config& config() const;

  /// The children of the tree, for tests that drive one role by hand with the
  /// protocol below (the trainer's side).
  child_spec shard_spec(size_t k) const;
  child_spec loader_spec(size_t l) const;
  child_spec worker_spec(size_t w) const;

  struct shared;

private:
  explicit training_job(std::shared_ptr<shared> s);
  static training_job make(training_config cfg, persistence p);
  std::shared_ptr<shared> s_;
};

/// A stand-in for worker `index` of an elastic job (training_config::min_workers)
/// that has no node to run on: it answers every step with parked_atom, so the
/// trainer leaves it out, and liveness questions with alive_atom; every `poll`
/// it calls `node_free` (from its own thread) and, once that returns true,
/// exits, so that its supervisor starts the worker again where there is room.
/// Use its handle as a worker incarnation's (e.g. from a start function).
caf::actor spawn_parked_worker(caf::actor_system& sys, size_t index,
                               std::function<bool()> node_free, caf::timespan poll);

/// XXH3-64 of `n` floats' bytes.
uint64_t params_digest(const float* params, size_t n);

// -- protocol (for tests and tools) --------------------------------------------------

using train_step_atom = caf::atom_constant<caf::atom("us_tstep")>;
using batch_atom = caf::atom_constant<caf::atom("us_batch")>;
using pull_atom = caf::atom_constant<caf::atom("us_pull")>;
using push_atom = caf::atom_constant<caf::atom("us_push")>;
using applied_atom = caf::atom_constant<caf::atom("us_applied")>;
using rewind_atom = caf::atom_constant<caf::atom("us_rewind")>;
using commit_atom = caf::atom_constant<caf::atom("us_commit")>;
using stored_atom = caf::atom_constant<caf::atom("us_stored")>;
using probe_atom = caf::atom_constant<caf::atom("us_probe")>;
using stats_atom = caf::atom_constant<caf::atom("us_stats")>;
using alive_atom = caf::atom_constant<caf::atom("us_alive")>;
using pushed_atom = caf::atom_constant<caf::atom("us_pushed")>;
using parked_atom = caf::atom_constant<caf::atom("us_parked")>;

// any:     (alive_atom) -> alive_atom: the trainer's liveness question when a
//          step misses its deadline (an actor that does not answer is hung)
// worker:  (train_step_atom, step, attempt, slot, stride, std::vector<caf::actor> loaders,
//           std::vector<caf::actor> shards)
//          computes micro-batches slot, slot + stride, ... (< micro_batches): fetches
//          each from loader m % loaders, pulls every slice, pushes each
//          micro-batch's gradient slices, then tells the sender
//          (pushed_atom, step, attempt, rank). A parked worker (no node for it, see
//          training_config::min_workers) answers (parked_atom, step, attempt, rank)
//          instead, and is left out until it restarts.
// loader:  (batch_atom, step, micro) -> batch_ptr: micro-batch `micro` of `step`
//          (rewind_atom, step, attempt) -> step: the cursor after `step`
//          (commit_atom, step) -> step once the cursor after `step` is durable
//          (probe_atom) -> newest step stored (see shard)
//          (stats_atom) -> loader_stats
// shard:   (pull_atom) -> (step, slice_ptr): its parameters after `step`
//          (push_atom, step, attempt, micro, std::vector<float> grad, float loss):
//            micro-batch `micro`'s gradient slice and mean loss
//          (rewind_atom, step, attempt) -> step: its state after `step`; the
//            sender receives (applied_atom, shard, step, attempt, mean loss)
//            as soon as each step is applied, and on checkpoint steps
//            (stored_atom, shard, step, attempt) once that step is durable
//          (probe_atom) -> the newest step of its state on disk, once every
//            checkpoint sent to the writer before the probe is durable
//          (stats_atom) -> shard_stats

struct loader_stats {
  /// Steps of batches prepared and not yet served in full.
  size_t cached_steps = 0;
  /// The most that may be cached (prefetch + the step being served).
  size_t max_cached_steps = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, loader_stats& x) {
  return f(caf::meta::type_name("loader_stats"), x.cached_steps, x.max_cached_steps);
}

struct shard_stats {
  uint64_t step = 0;
  /// Pushes ignored: a second one for the same (worker, step), or one from an
  /// abandoned attempt or for another step.
  uint64_t duplicates = 0;
  uint64_t stale = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, shard_stats& x) {
  return f(caf::meta::type_name("shard_stats"), x.step, x.duplicates, x.stale);
}

/// A micro-batch served by a loader for (step, micro): the samples' indices in
/// the training set, with their data. Sample j is number `offset + j` of the
/// job's global stream, i.e. position (offset + j) % epoch_size of epoch
/// (offset + j) / epoch_size's order of the whole training set.
struct served_batch {
  uint64_t step = 0;
  size_t micro = 0;
  uint64_t offset = 0;
  uint64_t epoch_size = 0;
  std::vector<uint32_t> indices;
  std::vector<float> inputs;
  std::vector<uint32_t> labels;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, served_batch& x) {
  return f(caf::meta::type_name("served_batch"), x.step, x.micro, x.offset, x.epoch_size, x.indices,
           x.inputs, x.labels);
}

/// Shared between actors of a process, copied only to another process or node.
using batch_ptr = shared_value<served_batch>;
using slice_ptr = shared_value<std::vector<float>>;

/// Registers the protocol's message types and the training component's error
/// categories (`data_errc`) with `cfg`, for jobs whose actors run in several
/// processes or on several nodes (every process must do it).
void register_training_types(caf::actor_system_config& cfg);

} // namespace understudy::actors
