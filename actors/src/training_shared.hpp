#pragma once

// State shared by a training job's actors and its owner (training.cpp, roles.cpp).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <caf/actor_addr.hpp>
#include <caf/actor_cast.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/skip.hpp>

#include "understudy/actors/training.hpp"
#include "understudy/state/persistent.hpp"

namespace understudy::actors {

/// The one message a hung actor's behavior names (none is ever sent).
using hung_atom = caf::atom_constant<caf::atom("us_hung")>;

struct training_job::shared {
  training_config cfg;
  persistence p;
  uint64_t fingerprint = 0;

  /// Parameter ranges of the shards.
  std::vector<size_t> shard_first;
  std::vector<size_t> shard_count;
  /// Whether a state directory written with other counts of shards or loaders
  /// may be resharded by the trainer through the local store (false in a
  /// cluster, where their records live on several nodes).
  bool reshard_locally = true;

  std::unique_ptr<std::atomic<bool>[]> fired;
  std::atomic<uint64_t> restarts{0};
  std::atomic<uint64_t> lost_steps{0};
  /// The step the trainer works on (survives trainer restarts).
  std::atomic<uint64_t> inflight{0};

  /// The committed step the job started from.
  std::atomic<uint64_t> resumed_from{0};
  /// The newest step the job has committed (or resumed from) in this process.
  std::atomic<uint64_t> committed{0};
  /// Set by training_job::request_stop: the trainer starts no new step.
  std::atomic<bool> stop_requested{false};

  /// The job's event sink (set by training_job::spec; weak: the sink's
  /// counter holds this object) and the job's path in the tree (set when the
  /// trainer starts): where the trainer reports the hangs it finds.
  std::weak_ptr<event_sink> events;
  std::string job_path;

  /// Actors killed as hung, and the longest detection (ms; see training_result).
  std::atomic<uint64_t> hangs{0};
  std::atomic<int64_t> longest_hang_detection_ms{0};
  /// Workers restarted as stragglers; steps redone after a lost message.
  std::atomic<uint64_t> stragglers{0};
  std::atomic<uint64_t> stalls{0};

  /// Goodput (training_result::goodput), kept here across trainer restarts
  /// and written by the trainer only (one incarnation at a time): when the
  /// first trainer started, the time of committed steps, the applied steps
  /// not committed yet with their durations, the incidents' costs, and the
  /// open incident (its start and the time it already threw away).
  std::optional<std::chrono::steady_clock::time_point> began;
  std::chrono::steady_clock::duration kept{0};
  std::deque<std::pair<uint64_t, std::chrono::steady_clock::duration>> uncommitted;
  std::vector<std::chrono::steady_clock::duration> incidents;
  std::optional<std::chrono::steady_clock::time_point> incident_since;
  std::chrono::steady_clock::duration incident_lost{0};
  uint64_t lost_steps_before_incident = 0;
  /// When the job last moved (a trainer that dies or hangs stops it).
  std::optional<std::chrono::steady_clock::time_point> last_moved;
  /// The job has run (resumed) once in this process: a recovery round from
  /// now on is an incident.
  bool ran = false;

  /// kept / the time since `began`.
  double goodput_now() const {
    if (!began)
      return 0;
    auto wall = std::chrono::steady_clock::now() - *began;
    return wall.count() > 0 ? std::chrono::duration<double>(kept).count() /
                                  std::chrono::duration<double>(wall).count()
                            : 0.0;
  }

  std::function<void(const training_progress&)> progress;
  std::function<void(uint64_t)> started;
  /// Called when an injected fault fires, before the crash (training_job::on_fault).
  std::function<void(size_t)> on_fire;
  /// Called with a worker's index when the trainer restarts it as a
  /// straggler, before the kill (training_job::on_straggler).
  std::function<void(size_t)> straggler;

  std::mutex mtx;
  std::condition_variable cv;
  std::optional<caf::expected<training_result>> outcome;

  /// The trainer's token (its parent, slot and incarnation), set by its start function.
  /// Kept as an address: a strong handle here would keep the supervisor, which
  /// holds this state, alive forever.
  void set_trainer_token(const child_token& token, const std::string& trainer_path) {
    std::lock_guard<std::mutex> guard{mtx};
    // The trainer's parent is the job: "/job/trainer" -> "/job".
    job_path = trainer_path.substr(0, trainer_path.rfind('/'));
    job_sup_ = token.supervisor.address();
    trainer_slot_ = token.slot;
    trainer_incarnation_ = token.incarnation;
  }
  child_token trainer_token() {
    std::lock_guard<std::mutex> guard{mtx};
    return {caf::actor_cast<caf::actor>(job_sup_), trainer_slot_, trainer_incarnation_};
  }

  /// Fires the (first unfired) fault of `kind` for (target, index, step): its
  /// index in cfg.faults, once.
  std::optional<size_t> fire_index(fault_target target, size_t index, uint64_t step,
                                   fault_kind kind) {
    for (size_t i = 0; i < cfg.faults.size(); ++i) {
      const auto& f = cfg.faults[i];
      if (f.kind == kind && f.target == target && f.index == index && f.step == step &&
          !fired[i].exchange(true)) {
        if (on_fire)
          on_fire(i);
        return i;
      }
    }
    return std::nullopt;
  }

  bool fire(fault_target target, size_t index, uint64_t step, fault_kind kind = fault_kind::crash) {
    return fire_index(target, index, step, kind).has_value();
  }

  /// The slowdown factor of a slow fault due for (target, index, step), once.
  std::optional<double> maybe_slow(fault_target target, size_t index, uint64_t step) {
    if (auto i = fire_index(target, index, step, fault_kind::slow))
      return cfg.faults[*i].factor;
    return std::nullopt;
  }

  /// Throws the injected crash if a fault is due.
  void maybe_crash(fault_target target, size_t index, uint64_t step) {
    if (fire(target, index, step))
      throw std::runtime_error("injected fault " + to_string(fault{target, index, step}));
  }

  /// If a hang is due: `self` stops answering (every later message stays
  /// unanswered in its mailbox; only a kill ends it) and the caller must
  /// return at once, answering nothing. True then.
  bool maybe_hang(caf::event_based_actor* self, fault_target target, size_t index, uint64_t step) {
    if (!fire(target, index, step, fault_kind::hang))
      return false;
    self->set_default_handler(caf::skip);
    self->become(caf::behavior{[](hung_atom) {}});
    return true;
  }

  void finish(caf::expected<training_result> r) {
    std::lock_guard<std::mutex> guard{mtx};
    if (!outcome)
      outcome = std::move(r);
    cv.notify_all();
  }

  /// Samples per micro-batch.
  size_t micro_size() const { return cfg.batch / cfg.micro_batches; }
  /// The loader that serves micro-batch `m`, and how many loader `l` serves.
  size_t loader_of(size_t m) const { return m % cfg.loaders; }
  size_t micros_of_loader(size_t l) const {
    return cfg.micro_batches / cfg.loaders + (l < cfg.micro_batches % cfg.loaders ? 1 : 0);
  }
  bool checkpoint_step(uint64_t step) const {
    return step % cfg.checkpoint_every == 0 || step == cfg.steps;
  }

private:
  /// Weak: the supervisor's child specs hold this object.
  caf::actor_addr job_sup_;
  uint64_t trainer_slot_ = 0;
  uint64_t trainer_incarnation_ = 0;
};

/// The behaviors of the roles (roles.cpp).
child_spec make_shard_spec(std::shared_ptr<training_job::shared> s, size_t k);
child_spec make_loader_spec(std::shared_ptr<training_job::shared> s, size_t l);
child_spec make_worker_spec(std::shared_ptr<training_job::shared> s, size_t w);
child_spec make_trainer_spec(std::shared_ptr<training_job::shared> s);

/// Reads version `step` of `path` as `State` into `out`.
template <class State>
caf::error read_record(const state_store& store, const std::string& path, uint64_t step,
                       State& out) {
  using codec = state_codec<State>;
  return store.read(path, step, [&](const record_view& rec) -> caf::error {
    if (rec.info().schema_id != capnp::typeId<typename codec::schema>() ||
        rec.info().schema_version != codec::version)
      return make_error(
          state_errc::schema_mismatch,
          path + "@" + std::to_string(step) + ": stored schema does not match the state type");
    state_decoder dec{rec, payload_limits{}};
    try {
      return codec::load(dec, out);
    } catch (const kj::Exception& e) {
      return detail::load_exception(path, step, e.getDescription().cStr());
    }
  });
}

/// The parameters (and optimizer state) of a step, put together from its shards.
struct gathered_shards {
  std::vector<float> params;
  /// Empty when the optimizer keeps none.
  std::vector<float> m;
  std::vector<float> v;
  uint64_t optimizer_steps = 0;
};

/// Reads version `step` of shards 0 .. shards-1 of the job at `job_path` and
/// puts their slices together into `out` (`n` parameters, each held exactly
/// once). A nonzero `fingerprint` must match the shards'. Errors name the
/// shard and step at fault (not_found, corrupt_record, schema_mismatch).
caf::error gather_shards(const state_store& store, const std::string& job_path, size_t shards,
                         uint64_t step, size_t n, uint64_t fingerprint, gathered_shards& out);

/// Rewrites the newest committed step of the job at `job_path` in the local
/// store, written with `old_shards` shards and `old_loaders` loaders, for the
/// job's own counts: every shard record (parameters and optimizer state) and
/// loader cursor of that step, in one transaction with `trainer_record` (the
/// trainer's record of the step, built by the caller from the step). Returns
/// the step, or an error naming what is missing or inconsistent (nothing is
/// written then).
caf::expected<uint64_t> reshard_committed(
    const training_job::shared& s, const std::string& job_path, size_t old_shards,
    size_t old_loaders, const std::function<checkpoint(uint64_t)>& trainer_record);

} // namespace understudy::actors
