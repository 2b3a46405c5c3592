// The trainer: drives synchronous steps, commits them, evaluates, recovers.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/sec.hpp>

#include "training_shared.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/recovery.hpp"
#include "understudy/schema/training.capnp.h"
#include "understudy/state/persistent.hpp"
#include "understudy/state/step_commit.hpp"

namespace understudy::actors {

struct trainer_state {
  uint64_t step = 0;
  uint64_t fingerprint = 0;
  double accuracy = std::numeric_limits<double>::quiet_NaN();
  uint64_t eval_step = 0;
  uint64_t workers = 0;
  uint64_t shards = 0;
  uint64_t loaders = 0;
};

} // namespace understudy::actors

namespace understudy {

template <>
struct state_codec<actors::trainer_state> {
  using trainer_state = actors::trainer_state;
  using schema = schema::TrainerState;
  static constexpr uint32_t version = 1;
  static void save(const trainer_state& st, state_encoder& enc) {
    auto root = enc.init_root<schema>();
    root.setStep(st.step);
    root.setFingerprint(st.fingerprint);
    root.setAccuracy(st.accuracy);
    root.setEvalStep(st.eval_step);
    root.setWorkers(st.workers);
    root.setShards(st.shards);
    root.setLoaders(st.loaders);
  }
  static caf::error load(state_decoder& dec, trainer_state& st) {
    auto root = dec.root<schema>();
    st.step = root.getStep();
    st.fingerprint = root.getFingerprint();
    st.accuracy = root.getAccuracy();
    st.eval_step = root.getEvalStep();
    st.workers = root.getWorkers();
    st.shards = root.getShards();
    st.loaders = root.getLoaders();
    return {};
  }
};

} // namespace understudy

namespace understudy::actors {

namespace {

using shared_ptr_t = std::shared_ptr<training_job::shared>;

enum role : size_t { shards_role, loaders_role, workers_role };

/// The trainer's own timer for step deadlines (see training_config::hang_floor).
using deadline_atom = caf::atom_constant<caf::atom("us_dline")>;

using steady = std::chrono::steady_clock;

/// Steps timed for the deadline, and how many must be before it leaves the ceiling.
constexpr size_t timed_steps = 32;
constexpr size_t timed_before_deadline = 8;
const char* const role_names[] = {"shards", "loaders", "workers"};

/// A participant that does not answer a recovery request within this long is
/// asked again in a new round (a request to a remote actor whose node died may
/// go unanswered; its down message then marks it for resolving).
constexpr auto recovery_timeout = std::chrono::seconds(10);

/// An error that the trainer answers by restarting the part and rewinding to
/// the committed step rather than failing the job: the part is gone, or its
/// checkpoint was kept here but not on its replica (so it was not acknowledged).
bool is_down_error(const caf::error& err) {
  return err == caf::sec::request_receiver_down || err == caf::sec::request_timeout ||
         is(err, state_errc::not_replicated);
}

/// Reshards the committed step of the job at `job_path`, written with the
/// counts of shards and loaders in `old` (the trainer's record), for the job's
/// counts; the trainer's record of the new counts (`out`) goes into the same
/// transaction, at `trainer_path` with `incarnation`.
caf::expected<uint64_t> reshard_for_counts(const training_job::shared& s,
                                           const std::string& job_path,
                                           const std::string& trainer_path, uint64_t incarnation,
                                           const trainer_state& old, trainer_state& out) {
  out = old;
  return reshard_committed(s, job_path, old.shards, old.loaders, [&](uint64_t at) {
    out.step = at;
    out.workers = s.cfg.workers;
    out.shards = s.cfg.shards;
    out.loaders = s.cfg.loaders;
    state_encoder enc;
    state_codec<trainer_state>::save(out, enc);
    return enc.finish(trainer_path, at, capnp::typeId<schema::TrainerState>(),
                      state_codec<trainer_state>::version, incarnation);
  });
}

struct trainer_actor {
  caf::event_based_actor* self;
  shared_ptr_t s;
  std::shared_ptr<persistent<trainer_state>> st;
  caf::actor job;
  uint64_t incarnation;
  /// For progress reports to the job supervisor (the trainer's liveness).
  child_token token;
  caf::actor sups[3];
  /// Resolves, probes and rewinds the shards, loaders and workers (in this
  /// order); created once the role supervisors are found.
  std::unique_ptr<recovery_protocol> rp;
  /// The commit rule (state/step_commit.hpp): the committed step and the
  /// checkpoint steps started and not yet committed (at most the one applied
  /// last and the one in flight), with what is durable of them so far.
  step_commit ledger;
  /// Last applied step.
  uint64_t done = 0;
  bool finished = false;
  bool announced = false;
  // The step in flight: shards that applied it, and its mean loss.
  uint64_t cur = 0;
  size_t applied = 0;
  float loss = 0;
  float last_loss = 0;
  /// Liveness: a counter of progress (steps applied or committed, recoveries
  /// ended) and when it last moved; the durations of the last steps; whether
  /// the deadline ticks run and whether a liveness round runs.
  uint64_t progress = 0;
  steady::time_point progress_at = steady::now();
  steady::time_point step_started = steady::now();
  std::deque<steady::duration> step_times;
  bool ticking = false;
  /// Stragglers: when each worker delivered the step in flight (since the
  /// step started; nullopt: not yet), and each worker's run of late steps.
  std::vector<std::optional<steady::duration>> delivered;
  std::vector<uint64_t> late_steps;
  /// Liveness rounds in a row that found everyone answering while the job did
  /// not move (a lost message): each doubles the deadline until a step is applied.
  unsigned stalls_in_a_row = 0;
  double slowest_ratio = 0;
  /// Each worker's ratio in that step (0: not serving).
  std::vector<double> worker_ratios;
  bool asking = false;
  /// Elastic workers: the incarnation of each worker that answered a step as
  /// parked (left out until it restarts), and how many served the last step.
  std::vector<caf::actor_addr> parked;
  size_t serving = 0;
  bool waiting_for_workers = false;

  trainer_actor(caf::event_based_actor* self, shared_ptr_t s,
                std::shared_ptr<persistent<trainer_state>> st, child_token token)
      : self(self),
        s(std::move(s)),
        st(std::move(st)),
        job(token.supervisor),
        incarnation(token.incarnation),
        token(std::move(token)),
        ledger(this->s->cfg.shards + this->s->cfg.loaders) {
    // nop
  }

  size_t shard_index(size_t k) const { return k; }
  size_t loader_index(size_t l) const { return s->cfg.shards + l; }
  size_t worker_index(size_t w) const { return s->cfg.shards + s->cfg.loaders + w; }
  const caf::actor& shard(size_t k) const { return rp->handle(shard_index(k)); }
  const caf::actor& loader(size_t l) const { return rp->handle(loader_index(l)); }
  const caf::actor& worker(size_t w) const { return rp->handle(worker_index(w)); }

  uint64_t attempt() const { return rp ? rp->attempt() : 0; }

  void fail(caf::error err) {
    if (finished)
      return;
    finished = true;
    if (rp)
      rp->stop();
    s->finish(std::move(err));
    self->quit();
  }

  void start() {
    auto& v = st->value();
    if (st->restored_step()) {
      if (v.fingerprint != s->fingerprint) {
        fail(make_error(state_errc::schema_mismatch,
                        "the state directory holds another training job (its model, data, "
                        "batch, micro-batches, seed or optimizer differ): use another state "
                        "directory or remove it"));
        return;
      }
      if (auto err = change_counts())
        return fail(std::move(err));
    }
    if (auto err = past_last_step(v.step))
      return fail(std::move(err));
    // Goodput: the job's wall time starts with its first trainer; a
    // restarted trainer is an incident from now on.
    if (!s->began)
      s->began = steady::now();
    else if (s->ran && !s->incident_since) {
      // From the last progress of the trainer that died or hung.
      s->incident_since = s->last_moved ? *s->last_moved : steady::now();
      s->lost_steps_before_incident = s->lost_steps.load();
    }
    // The deadline ticks (and the liveness reports to the supervisor) run
    // from now on, through the recovery too.
    if (!ticking) {
      ticking = true;
      self->delayed_send(self, tick_interval(), deadline_atom::value);
    }
    v.fingerprint = s->fingerprint;
    v.workers = s->cfg.workers;
    v.shards = s->cfg.shards;
    v.loaders = s->cfg.loaders;
    // Find the role supervisors, then recover (resolve, probe, rewind) and run.
    auto left = std::make_shared<size_t>(3);
    for (size_t r = 0; r < 3; ++r)
      self->request(job, caf::infinite, resolve_atom::value, std::string{role_names[r]})
          .then(
              [this, r, left](const caf::actor& sup) {
                sups[r] = sup;
                if (--*left == 0)
                  start_recovery();
              },
              [this](caf::error& err) { throw_error("cannot find a role supervisor", err); });
  }

  /// A state directory written with other counts of shards or loaders: its
  /// committed step is resharded for this job's counts first (workers hold no
  /// state: another count of them needs nothing).
  caf::error change_counts() {
    auto& v = st->value();
    const auto& cfg = s->cfg;
    if (v.shards == cfg.shards && v.loaders == cfg.loaders)
      return {};
    auto counts = [](uint64_t shards, uint64_t loaders) {
      auto n = [](uint64_t x, const char* what) {
        return std::to_string(x) + " " + what + (x == 1 ? "" : "s");
      };
      return n(shards, "shard") + " and " + n(loaders, "loader");
    };
    if (v.shards == 0 || v.loaders == 0)
      return make_error(state_errc::schema_mismatch,
                        "the trainer's record of step " + std::to_string(v.step) +
                            " names no counts of shards and loaders: cannot reshard it");
    if (!s->reshard_locally)
      return make_error(config_errc::invalid_job,
                        "the job's state was written with " + counts(v.shards, v.loaders) +
                            ", this job has " + counts(cfg.shards, cfg.loaders) +
                            ": a cluster cannot reshard its state in place (the records are "
                            "spread over its nodes); keep the counts, change only the workers, "
                            "or import a snapshot of it into a stopped cluster with the new "
                            "counts (understudy snapshot import DIR --cluster FILE), which "
                            "reshards it on every node");
    trainer_state record;
    auto step = reshard_for_counts(*s, s->job_path, st->identity().path, st->identity().incarnation,
                                   v, record);
    if (!step)
      return make_error(state_errc::not_found, "cannot resume the job's state, written with " +
                                                   counts(v.shards, v.loaders) + ", with " +
                                                   counts(cfg.shards, cfg.loaders) + ": " +
                                                   describe(step.error()));
    std::fprintf(stderr, "trainer: resharded committed step %llu from %s to %s\n",
                 static_cast<unsigned long long>(*step), counts(v.shards, v.loaders).c_str(),
                 counts(cfg.shards, cfg.loaders).c_str());
    v = record;
    return {};
  }

  /// A state directory committed past the job's last step holds a longer
  /// run: its result is not this job's, and rewinding would destroy it.
  caf::error past_last_step(uint64_t step) const {
    if (step <= s->cfg.steps)
      return {};
    return make_error(config_errc::invalid_job,
                      "the state directory has committed step " + std::to_string(step) +
                          ", past this job's last step " + std::to_string(s->cfg.steps) +
                          ": run at least " + std::to_string(step) +
                          " steps or use another state directory");
  }

  [[noreturn]] void throw_error(const std::string& what, const caf::error& err) {
    throw std::runtime_error(what + ": " + describe(err));
  }

  /// The committed step is the newest one that every shard and loader has on
  /// disk: checkpoints still on their way to the writer when a participant
  /// failed count too, so a crash loses only the step in flight.
  void start_recovery() {
    using rp_t = recovery_protocol;
    const auto& cfg = s->cfg;
    std::vector<rp_t::participant> parts;
    for (size_t k = 0; k < cfg.shards; ++k)
      parts.push_back({"shard-" + std::to_string(k), sups[shards_role], true, {}, 0, true, false});
    for (size_t l = 0; l < cfg.loaders; ++l)
      parts.push_back(
          {"loader-" + std::to_string(l), sups[loaders_role], true, {}, 0, true, false});
    for (size_t w = 0; w < cfg.workers; ++w)
      parts.push_back(
          {"worker-" + std::to_string(w), sups[workers_role], false, {}, 0, true, false});
    rp_t::hooks h;
    h.probe = [this](size_t, const caf::actor& hdl, rp_t::step_callback done) {
      auto att = attempt();
      self->request(hdl, recovery_timeout, probe_atom::value)
          .then([done](uint64_t step) { done(step); },
                [this, att, done](caf::error& err) { on_recovery_error(att, err, done); });
    };
    h.rewind = [this](size_t, const caf::actor& hdl, uint64_t step, rp_t::step_callback done) {
      auto att = attempt();
      self->request(hdl, recovery_timeout, rewind_atom::value, step, att)
          .then([done](uint64_t restored) { done(restored); },
                [this, att, done](caf::error& err) { on_recovery_error(att, err, done); });
    };
    h.probed = [this](uint64_t, const std::vector<std::optional<uint64_t>>& newest) {
      auto at =
          step_commit::resume(newest, st->value().step, s->cfg.checkpoint_every, s->cfg.steps);
      if (at.lost)
        return lost_state(*at.lost, at.highest);
      if (at.past_last)
        return past_last_step(at.step);
      set_committed(at.step);
      return caf::error{};
    };
    h.round_started = [this] {
      if (!s->ran || s->incident_since)
        return;
      s->incident_since = steady::now();
      s->lost_steps_before_incident = s->lost_steps.load();
      if (cur != 0) // the step in flight is thrown away
        s->incident_lost += steady::now() - step_started;
    };
    h.resume = [this](uint64_t) {
      end_incident();
      cur = 0;
      moved();
      next();
    };
    h.failed = [this](caf::error err) { fail(std::move(err)); };
    // A participant that is gone is resolved again (a timeout never gets here:
    // see on_recovery_error). Any other error ends the job.
    h.exits_by_itself = [](const caf::error& err) {
      return err == caf::sec::request_receiver_down;
    };
    h.fails_job = [](const caf::error& err) { return !is_down_error(err); };
    // A role supervisor that is gone (it was restarted): the trainer restarts
    // and finds the new one.
    h.unresolved = [this](size_t, const caf::error& err) {
      throw_error("cannot resolve a restarted child", err);
    };
    // The role supervisors' restart intensity bounds the rounds.
    rp = std::make_unique<rp_t>(self, std::move(parts), std::move(h), incarnation << 32,
                                std::numeric_limits<size_t>::max());
    rp->recover();
  }

  /// A participant without any saved state, in a job that has committed
  /// steps, lost its state (e.g. it restarted on a node that holds no copy of
  /// it): rolling everyone back to the start would lose the job's progress.
  /// (step_commit::resume decides when that is so: participant `i` holds
  /// nothing while others hold up to `highest`.)
  caf::error lost_state(size_t i, uint64_t highest) const {
    return make_error(state_errc::not_found,
                      rp->id(i) + " has no saved state although the job has committed step " +
                          std::to_string(std::max(st->value().step, ledger.committed())) +
                          " (others hold up to step " + std::to_string(highest) +
                          "): it restarted where its checkpoints are not; refusing to roll "
                          "the job back to the start");
  }

  /// The job runs again: an open incident cost the time since it began,
  /// what it threw away of the step in flight, and the applied steps past the
  /// committed one.
  void end_incident() {
    s->ran = true;
    auto lost = s->incident_lost;
    while (!s->uncommitted.empty() && s->uncommitted.back().first > ledger.committed()) {
      lost += s->uncommitted.back().second;
      s->uncommitted.pop_back();
    }
    if (!s->incident_since)
      return;
    auto cost = steady::now() - *s->incident_since + lost;
    s->incidents.push_back(cost);
    s->incident_since.reset();
    s->incident_lost = {};
    auto steps_lost = s->lost_steps.load() - s->lost_steps_before_incident;
    report_job(event_kind::job_resumed,
               "resumed from committed step " + std::to_string(ledger.committed()) + "; " +
                   std::to_string(steps_lost) + (steps_lost == 1 ? " step" : " steps") + " lost",
               std::chrono::duration_cast<std::chrono::milliseconds>(cost));
  }

  /// An event about the job itself (its trainer), e.g. job_resumed.
  void report_job(event_kind kind, std::string reason, std::chrono::milliseconds took) {
    auto sink = s->events.lock();
    if (!sink)
      return;
    supervision_event ev;
    ev.kind = kind;
    ev.supervisor = s->job_path;
    ev.child = "trainer";
    ev.incarnation = incarnation;
    ev.reason = std::move(reason);
    ev.duration = took;
    ev.time = steady::now();
    ev.wall_time = std::chrono::system_clock::now();
    sink->on_event(ev);
  }

  void set_committed(uint64_t step) {
    ledger.resumed(step);
    done = step;
    auto inflight = s->inflight.load();
    if (inflight > step) {
      s->lost_steps += inflight - step;
      s->inflight = step;
    }
    if (!announced) {
      announced = true;
      if (incarnation == 1) {
        s->resumed_from = step;
        s->committed = step;
        if (s->started)
          s->started(step);
      }
    }
  }

  /// A probe or rewind of attempt `att` failed: a participant that did not
  /// answer in time starts a new round that asks everyone again (its node may
  /// be gone, and then its down message marks it; or the answer was lost).
  void on_recovery_error(uint64_t att, caf::error& err,
                         const recovery_protocol::step_callback& done) {
    if (err != caf::sec::request_timeout)
      return done(std::move(err));
    if (att == attempt() && !finished)
      rp->recover();
  }

  /// A request of attempt `att` to participant `index` failed.
  void on_error(uint64_t att, size_t index, const caf::error& err) {
    if (!finished)
      rp->on_error(att, index, err);
  }

  std::vector<caf::actor> shard_handles() {
    std::vector<caf::actor> out;
    for (size_t k = 0; k < s->cfg.shards; ++k)
      out.push_back(shard(k));
    return out;
  }

  /// Starts step done + 1 unless one is in flight, or an older checkpoint step
  /// than the last applied one is not committed yet (so at most two steps are
  /// uncommitted: the one applied last and the one in flight).
  void next() {
    if (rp->recovering() || finished || cur != 0)
      return;
    if (!ledger.may_start_after(done))
      return;
    if (done >= s->cfg.steps) {
      if (ledger.committed() >= s->cfg.steps)
        finish();
      return;
    }
    if (s->stop_requested) {
      // Asked to stop (training_job::request_stop): no new step; once nothing
      // waits to be committed, the job ends where it resumes.
      if (ledger.idle())
        halt();
      return;
    }
    auto step = done + 1;
    if (!enough_workers(step))
      return;
    s->inflight = step;
    s->maybe_crash(fault_target::trainer, 0, step);
    // A hung trainer stops ticking: its supervisor's liveness deadline finds it.
    if (s->maybe_hang(self, fault_target::trainer, 0, step)) {
      self->set_down_handler([](caf::down_msg&) {});
      return;
    }
    cur = step;
    applied = 0;
    step_started = steady::now();
    delivered.assign(s->cfg.workers, std::nullopt);
    auto shards = shard_handles();
    std::vector<caf::actor> loaders;
    for (size_t l = 0; l < s->cfg.loaders; ++l)
      loaders.push_back(loader(l));
    // The i-th serving worker computes micro-batches i, i + serving, ...
    auto active = serving_workers();
    for (size_t i = 0; i < active.size(); ++i)
      self->send(worker(active[i]), train_step_atom::value, step, attempt(), i, active.size(),
                 loaders, shards);
    if (!s->checkpoint_step(step))
      return;
    ledger.open(step);
    auto att = attempt();
    for (size_t l = 0; l < s->cfg.loaders; ++l)
      self->request(loader(l), caf::infinite, commit_atom::value, step)
          .then(
              [this, att, step, l](uint64_t) {
                if (att == attempt() && ledger.durable(step, loader_index(l)))
                  committed_now(step);
              },
              [this, att, l](caf::error& err) { on_error(att, loader_index(l), err); });
  }

  // -- elastic workers -------------------------------------------------------------

  bool is_parked(size_t w) const {
    return w < parked.size() && parked[w] && parked[w] == worker(w).address();
  }

  /// The workers that take part in the next step: all but the parked ones.
  std::vector<size_t> serving_workers() const {
    std::vector<size_t> out;
    for (size_t w = 0; w < s->cfg.workers; ++w)
      if (!is_parked(w))
        out.push_back(w);
    return out;
  }

  /// Whether enough workers serve for step `step` (min_workers; all of them
  /// when the job is not elastic); says so when their number changes.
  bool enough_workers(uint64_t step) {
    const auto& cfg = s->cfg;
    auto n = serving_workers().size();
    auto needed = cfg.min_workers == 0 ? cfg.workers : cfg.min_workers;
    if (n < needed) {
      if (!waiting_for_workers)
        std::fprintf(stderr,
                     "trainer: %zu of %zu workers serve, fewer than min_workers %zu: step %llu "
                     "waits for a worker to come back\n",
                     n, cfg.workers, needed, static_cast<unsigned long long>(step));
      waiting_for_workers = true;
      return false;
    }
    waiting_for_workers = false;
    if (n != serving && serving != 0)
      std::fprintf(stderr, "trainer: step %llu runs on %zu of %zu workers\n",
                   static_cast<unsigned long long>(step), n, cfg.workers);
    serving = n;
    return true;
  }

  /// Worker `rank` answered the step as parked: it is left out until it
  /// restarts, and the step is redone with the micro-batches spread over the others.
  void on_parked(uint64_t step, uint64_t att, size_t rank) {
    if (!rp || att != attempt() || step != cur || rank >= s->cfg.workers || rp->recovering())
      return;
    auto from = caf::actor_cast<caf::actor_addr>(self->current_sender());
    if (!from || from != worker(rank).address())
      return;
    parked.resize(s->cfg.workers);
    parked[rank] = from;
    std::fprintf(stderr, "trainer: %s is parked (no node for it): redoing step %llu without it\n",
                 rp->id(worker_index(rank)).c_str(), static_cast<unsigned long long>(step));
    rp->recover();
  }

  void on_applied(size_t k, uint64_t step, uint64_t att, float l) {
    if (!rp || att != attempt() || step != cur || rp->recovering())
      return;
    if (k == 0)
      loss = l;
    if (++applied != s->cfg.shards)
      return;
    cur = 0;
    done = step;
    last_loss = loss;
    s->uncommitted.emplace_back(step, steady::now() - step_started);
    step_times.push_back(steady::now() - step_started);
    if (step_times.size() > timed_steps)
      step_times.pop_front();
    stalls_in_a_row = 0;
    moved();
    judge_stragglers();
    if (ledger.pending(step)) {
      if (ledger.applied(step))
        committed_now(step);
    } else {
      report(step);
    }
    if (!eval_due(step) || step == s->cfg.steps) {
      next(); // the last step is evaluated by finish()
      return;
    }
    pull_params([this, att, step](std::vector<float> params) {
      if (att != attempt())
        return;
      auto& v = st->value();
      v.accuracy = evaluate(params);
      v.eval_step = step;
      next();
    });
  }

  void on_stored(size_t k, uint64_t step, uint64_t att) {
    if (!rp || att != attempt() || k >= s->cfg.shards)
      return;
    if (ledger.durable(step, shard_index(k)))
      committed_now(step);
  }

  /// `step` is committed (applied, and every shard and loader has it on
  /// disk); the trainer's own record of it follows without being waited for.
  void committed_now(uint64_t step) {
    while (!s->uncommitted.empty() && s->uncommitted.front().first <= step) {
      s->kept += s->uncommitted.front().second;
      s->uncommitted.pop_front();
    }
    moved();
    rp->committed();
    st->value().step = step;
    s->committed = step;
    bool last = step == s->cfg.steps;
    st->checkpoint(step, [this, step, last](caf::expected<uint64_t> r) {
      if (!r)
        throw_error("cannot record committed step " + std::to_string(step), r.error());
      if (last)
        next(); // the job ends with its record on disk
    });
    report(step);
    if (!last)
      next();
  }

  // -- liveness ------------------------------------------------------------------

  void moved() {
    ++progress;
    progress_at = steady::now();
    s->last_moved = progress_at;
  }

  /// How long the job may go without progress before the trainer asks who
  /// still answers, and how long it then waits for each answer.
  caf::timespan deadline() const {
    const auto& cfg = s->cfg;
    if (step_times.size() < timed_before_deadline)
      return cfg.hang_ceiling;
    auto slowest = *std::max_element(step_times.begin(), step_times.end());
    auto scaled = std::chrono::duration_cast<caf::timespan>(slowest * cfg.hang_factor);
    scaled *= int64_t{1} << std::min(stalls_in_a_row, 16u);
    return std::clamp<caf::timespan>(scaled, cfg.hang_floor, cfg.hang_ceiling);
  }

  /// How long participant `index` (shards, loaders, workers in that order)
  /// may take to answer a liveness round: the deadline within its role's own
  /// bounds, where it has them (role_policy::hang_floor).
  caf::timespan answer_deadline(size_t index) const {
    const auto& cfg = s->cfg;
    const role_policy& p = index < cfg.shards                 ? cfg.shard_policy
                           : index < cfg.shards + cfg.loaders ? cfg.loader_policy
                                                              : cfg.worker_policy;
    auto floor = p.hang_floor.count() > 0 ? p.hang_floor : cfg.hang_floor;
    auto ceiling = p.hang_ceiling.count() > 0 ? p.hang_ceiling : cfg.hang_ceiling;
    return std::clamp<caf::timespan>(deadline(), std::chrono::duration_cast<caf::timespan>(floor),
                                     std::chrono::duration_cast<caf::timespan>(ceiling));
  }

  /// How often the trainer looks for a missed deadline: half the floor.
  caf::timespan tick_interval() const {
    return std::chrono::duration_cast<caf::timespan>(s->cfg.hang_floor) / 2;
  }

  /// Every tick: if nothing moved for a deadline while a step or a commit is
  /// outstanding, asks every participant whether it answers.
  void on_deadline() {
    if (finished)
      return;
    if (s->stop_requested)
      next();
    if (finished)
      return;
    // The trainer's own liveness, for its supervisor (training_config::hang_ceiling).
    report_progress(token);
    self->delayed_send(self, tick_interval(), deadline_atom::value);
    bool waiting = cur != 0 || !ledger.idle();
    if (rp && !rp->recovering() && !asking && waiting && steady::now() - progress_at >= deadline())
      ask_alive();
  }

  /// A liveness round: a participant that does not answer within the deadline
  /// while the job still has not moved is hung. It is killed: its supervisor
  /// restarts it, its down message starts a recovery, the step is redone.
  void ask_alive() {
    asking = true;
    auto att = attempt();
    auto seen = progress;
    auto n = s->cfg.shards + s->cfg.loaders + s->cfg.workers;
    auto left = std::make_shared<size_t>(n);
    auto killed = std::make_shared<bool>(false);
    // Everyone answered and still nothing moved: a message of the step was
    // lost (a connection that broke and came back, a node that joined). The
    // step is redone from the committed one under a new attempt.
    auto answered = [this, left, killed, att, seen] {
      if (--*left != 0)
        return;
      asking = false;
      if (*killed || finished || att != attempt() || progress != seen || rp->recovering())
        return;
      ++stalls_in_a_row;
      ++s->stalls;
      std::fprintf(stderr,
                   "trainer: step %llu did not move for %lld ms although every participant "
                   "answers: a message was lost; redoing it from committed step %llu\n",
                   static_cast<unsigned long long>(cur != 0 ? cur : done + 1),
                   static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              steady::now() - progress_at)
                                              .count()),
                   static_cast<unsigned long long>(ledger.committed()));
      rp->recover();
    };
    for (size_t i = 0; i < n; ++i) {
      auto hdl = rp->handle(i);
      if (!hdl) {
        answered();
        continue;
      }
      self->request(hdl, answer_deadline(i), alive_atom::value)
          .then(
              [answered](alive_atom) { answered(); },
              [this, answered, killed, att, seen, i, hdl](caf::error& err) {
                // Gone, moved on or hung: either way not a lost message.
                *killed = true;
                answered();
                if (err != caf::sec::request_timeout || finished || att != attempt() ||
                    progress != seen)
                  return;
                auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() -
                                                                                    progress_at);
                ++s->hangs;
                // Only the trainer writes it (one incarnation at a time).
                if (waited.count() > s->longest_hang_detection_ms.load())
                  s->longest_hang_detection_ms = waited.count();
                report(i, event_kind::hang_detected,
                       "did not answer for " + std::to_string(waited.count()) + " ms while step " +
                           std::to_string(cur != 0 ? cur : done + 1) + " waited",
                       waited);
                self->send_exit(hdl, caf::exit_reason::kill);
              });
    }
  }

  void on_pushed(uint64_t step, uint64_t att, size_t rank) {
    if (!rp || att != attempt() || step != cur || rank >= delivered.size())
      return;
    delivered[rank] = steady::now() - step_started;
  }

  /// After a step every worker delivered: each worker's time over the median;
  /// one late beyond straggler_ratio and straggler_lag for straggler_steps steps
  /// in a row is restarted.
  void judge_stragglers() {
    const auto& cfg = s->cfg;
    auto active = serving_workers();
    if (delivered.size() != cfg.workers || active.size() < 2)
      return;
    std::vector<steady::duration> times(cfg.workers);
    std::vector<steady::duration> served;
    for (auto w : active) {
      if (!delivered[w])
        return;
      times[w] = *delivered[w];
      served.push_back(*delivered[w]);
    }
    // The lower median: with two workers, the faster one is the yardstick.
    auto mid = (served.size() - 1) / 2;
    std::nth_element(served.begin(), served.begin() + static_cast<long>(mid), served.end());
    auto median = std::max<steady::duration>(served[mid], std::chrono::microseconds(1));
    late_steps.resize(cfg.workers, 0);
    worker_ratios.assign(cfg.workers, 0.0);
    double slowest = 0;
    for (auto w : active) {
      double ratio = std::chrono::duration<double>(times[w]).count() /
                     std::chrono::duration<double>(median).count();
      worker_ratios[w] = ratio;
      slowest = std::max(slowest, ratio);
      bool late = cfg.straggler_ratio > 0 && ratio > cfg.straggler_ratio &&
                  times[w] - median >= cfg.straggler_lag;
      late_steps[w] = late ? late_steps[w] + 1 : 0;
    }
    slowest_ratio = slowest;
    for (auto w : active) {
      if (late_steps[w] < cfg.straggler_steps)
        continue;
      late_steps[w] = 0;
      ++s->stragglers;
      auto i = worker_index(w);
      auto us = [](steady::duration d) {
        return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
      };
      char ratio[32];
      std::snprintf(ratio, sizeof ratio, "%g", cfg.straggler_ratio);
      report(i, event_kind::straggler_detected,
             "more than " + std::string{ratio} + "x the workers' median time late for " +
                 std::to_string(cfg.straggler_steps) + " steps in a row (last step: " +
                 us(times[w]) + " us against " + us(median) + " us)",
             std::chrono::duration_cast<std::chrono::milliseconds>(times[w]));
      if (s->straggler)
        s->straggler(w);
      self->send_exit(rp->handle(i), caf::exit_reason::kill);
    }
  }

  /// A hang_detected or straggler_detected event for participant `i`, as a
  /// supervisor records one for a child that misses its own liveness deadline.
  void report(size_t i, event_kind kind, std::string reason, std::chrono::milliseconds waited) {
    auto sink = s->events.lock();
    if (!sink)
      return;
    supervision_event ev;
    ev.kind = kind;
    const char* role = i < s->cfg.shards                    ? role_names[shards_role]
                       : i < s->cfg.shards + s->cfg.loaders ? role_names[loaders_role]
                                                            : role_names[workers_role];
    ev.supervisor = s->job_path + "/" + role;
    ev.child = rp->id(i);
    ev.incarnation = rp->incarnation(i);
    ev.reason = std::move(reason);
    ev.action = "kill";
    ev.duration = waited;
    ev.time = steady::now();
    ev.wall_time = std::chrono::system_clock::now();
    sink->on_event(ev);
  }

  bool eval_due(uint64_t step) const {
    return step == s->cfg.steps || (s->cfg.eval_every != 0 && step % s->cfg.eval_every == 0);
  }

  double evaluate(const std::vector<float>& params) const {
    return accuracy(*s->cfg.net, params.data(), s->cfg.test->view());
  }

  void report(uint64_t step, bool finished_job = false) {
    if (!s->progress)
      return;
    training_progress p;
    p.finished = finished_job;
    p.step = step;
    p.steps = s->cfg.steps;
    p.loss = last_loss;
    auto acc = st->value().accuracy;
    p.accuracy = std::isnan(acc) ? -1.0 : acc;
    p.restarts = s->restarts.load();
    p.lost_steps = s->lost_steps.load();
    p.slowest_worker_ratio = slowest_ratio;
    p.worker_ratios = worker_ratios;
    p.goodput = s->goodput_now();
    s->progress(p);
  }

  /// Pulls every shard's parameters (all after the same step) into one vector.
  template <class F>
  void pull_params(F then) {
    auto att = attempt();
    auto params = std::make_shared<std::vector<float>>(s->cfg.net->parameter_count());
    auto left = std::make_shared<size_t>(s->cfg.shards);
    for (size_t k = 0; k < s->cfg.shards; ++k)
      self->request(shard(k), caf::infinite, pull_atom::value)
          .then(
              [this, k, params, left, then](uint64_t, const slice_ptr& slice) {
                std::copy(slice->begin(), slice->end(), params->begin() + s->shard_first[k]);
                if (--*left == 0)
                  then(std::move(*params));
              },
              [this, att, k](caf::error& err) { on_error(att, shard_index(k), err); });
  }

  /// Ends the job at its committed step, unevaluated (training_result::stopped).
  void halt() {
    finished = true;
    training_result r;
    r.stopped = true;
    r.steps = ledger.committed();
    r.restarts = s->restarts.load();
    r.lost_steps = s->lost_steps.load();
    r.resumed_from = s->resumed_from;
    r.wall = std::chrono::duration_cast<std::chrono::nanoseconds>(
        s->began ? steady::now() - *s->began : steady::duration{});
    r.kept = std::chrono::duration_cast<std::chrono::nanoseconds>(s->kept);
    rp->stop();
    s->finish(std::move(r));
    self->quit();
  }

  void finish() {
    auto att = attempt();
    pull_params([this, att](std::vector<float> params) {
      if (att != attempt() || finished)
        return;
      training_result r;
      r.steps = ledger.committed();
      r.accuracy = evaluate(params);
      r.params_digest = params_digest(params.data(), params.size());
      r.restarts = s->restarts.load();
      r.lost_steps = s->lost_steps.load();
      r.resumed_from = s->resumed_from;
      r.hangs = s->hangs.load();
      r.longest_hang_detection = std::chrono::milliseconds{s->longest_hang_detection_ms.load()};
      r.stragglers = s->stragglers.load();
      r.stalls = s->stalls.load();
      r.wall = std::chrono::duration_cast<std::chrono::nanoseconds>(
          s->began ? steady::now() - *s->began : steady::duration{});
      r.kept = std::chrono::duration_cast<std::chrono::nanoseconds>(s->kept);
      for (auto d : s->incidents)
        r.incidents.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(d));
      r.params = std::move(params);
      auto& v = st->value();
      v.accuracy = r.accuracy;
      v.eval_step = ledger.committed();
      report(ledger.committed(), true);
      finished = true;
      rp->stop();
      s->finish(std::move(r));
      self->quit();
    });
  }

  caf::behavior make() {
    self->set_down_handler([this](caf::down_msg& dm) {
      if (rp)
        rp->on_down(dm);
    });
    self->send(self, train_step_atom::value);
    return {
        [this](train_step_atom) { start(); },
        [this](applied_atom, size_t k, uint64_t step, uint64_t att, float l) {
          on_applied(k, step, att, l);
        },
        [this](stored_atom, size_t k, uint64_t step, uint64_t att) { on_stored(k, step, att); },
        [this](deadline_atom) { on_deadline(); },
        [this](pushed_atom, uint64_t step, uint64_t att, size_t rank) {
          on_pushed(step, att, rank);
        },
        [this](parked_atom, uint64_t step, uint64_t att, size_t rank) {
          on_parked(step, att, rank);
        },
    };
  }
};

} // namespace

child_spec make_trainer_spec(shared_ptr_t s) {
  auto spec = persistent_child<trainer_state>(
      "trainer", s->p,
      [s](caf::event_based_actor* self, std::shared_ptr<persistent<trainer_state>> st) {
        // Set by persistent_child before init: the job supervisor is the parent.
        auto token = s->trainer_token();
        auto a = std::make_shared<trainer_actor>(self, s, std::move(st), token);
        // Serving from here on, even if its first message ends the job (a state
        // directory of another job): readiness must not race with that exit.
        announce_ready(token);
        self->attach_functor([a](const caf::error&) {});
        return a->make();
      });
  // Capture the parent and incarnation of each start.
  auto inner = spec.start;
  spec.start = [s, inner](child_context& ctx) -> caf::expected<caf::actor> {
    s->set_trainer_token(ctx.token, ctx.path);
    return inner(ctx);
  };
  spec.restart = restart_type::transient;
  spec.announces_ready = true;
  // A trainer that stops ticking (a hung handler) is killed and restarted by
  // the job's supervisor; it ticks every half hang_floor.
  spec.liveness_deadline = std::chrono::duration_cast<caf::timespan>(s->cfg.hang_ceiling);
  return spec;
}

} // namespace understudy::actors

namespace understudy::actors {

caf::expected<uint64_t> training_job::reshard_stored(const std::string& job_path) {
  auto& store = *s_->p.store;
  const auto& cfg = s_->cfg;
  auto trainer_path = job_path + "/trainer";
  auto versions = store.versions(trainer_path);
  if (!versions)
    return std::move(versions.error());
  // The newest trainer record that reads: the committed step and its counts.
  trainer_state ts;
  bool found = false;
  for (auto i = versions->rbegin(); i != versions->rend() && !found; ++i)
    found = i->step != 0 && !read_record(store, trainer_path, i->step, ts) && ts.step == i->step;
  if (!found || (ts.shards == cfg.shards && ts.loaders == cfg.loaders))
    return uint64_t{0};
  if (ts.shards == 0 || ts.loaders == 0)
    return make_error(state_errc::schema_mismatch,
                      trainer_path + "@" + std::to_string(ts.step) +
                          " names no counts of shards and loaders: cannot reshard it");
  trainer_state record;
  return reshard_for_counts(*s_, job_path, trainer_path, versions->back().incarnation, ts, record);
}

caf::expected<uint64_t> newest_committed_step(const state_store& store, const std::string& job_path,
                                              uint64_t max_step) {
  auto trainer_path = job_path + "/trainer";
  auto versions = store.versions(trainer_path);
  if (!versions)
    return std::move(versions.error());
  // Newest first: the newest step whose trainer record and shards all verify.
  for (auto i = versions->rbegin(); i != versions->rend(); ++i) {
    if (i->step > max_step || i->step == 0)
      continue;
    trainer_state ts;
    if (read_record(store, trainer_path, i->step, ts) || ts.step != i->step || ts.shards == 0)
      continue;
    bool intact = true;
    for (uint64_t k = 0; intact && k < ts.shards; ++k) {
      auto path = job_path + "/shards/shard-" + std::to_string(k);
      auto newest = store.newest_intact(path, i->step);
      if (!newest)
        return std::move(newest.error());
      intact = *newest == i->step;
    }
    if (intact)
      return i->step;
  }
  return uint64_t{0};
}

caf::expected<committed_parameters> read_committed_parameters(const state_store& store,
                                                              const std::string& job_path,
                                                              const model& net, uint64_t step) {
  if (step == 0) {
    auto newest = newest_committed_step(store, job_path);
    if (!newest)
      return std::move(newest.error());
    if (*newest == 0)
      return make_error(state_errc::not_found,
                        "the state store holds no committed step of the job " + job_path);
    step = *newest;
  }
  auto trainer_path = job_path + "/trainer";
  trainer_state ts;
  if (auto err = read_record(store, trainer_path, step, ts))
    return err;
  if (ts.step != step || ts.shards == 0)
    return make_error(state_errc::schema_mismatch,
                      trainer_path + "@" + std::to_string(step) + ": names no shards of its step");
  gathered_shards g;
  if (auto err =
          gather_shards(store, job_path, ts.shards, step, net.parameter_count(), ts.fingerprint, g))
    return err;
  committed_parameters out;
  out.step = step;
  out.params = std::move(g.params);
  out.accuracy = ts.accuracy;
  out.eval_step = ts.eval_step;
  return out;
}

std::string committed_step_records::fingerprint_hex() const {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(fingerprint));
  return buf;
}

caf::expected<committed_step_records> read_committed_step_records(const state_store& store,
                                                                  const std::string& job_path,
                                                                  uint64_t step) {
  if (step == 0) {
    auto newest = newest_committed_step(store, job_path);
    if (!newest)
      return std::move(newest.error());
    step = *newest;
  }
  if (step == 0)
    return make_error(state_errc::not_found,
                      "the state store holds no committed step of the job " + job_path);
  auto trainer_path = job_path + "/trainer";
  trainer_state ts;
  if (auto err = read_record(store, trainer_path, step, ts))
    return make_error(state_errc::not_found, "no committed step " + std::to_string(step) +
                                                 " of the job " + job_path + ": " + describe(err));
  if (ts.step != step || ts.shards == 0)
    return make_error(state_errc::corrupt_record,
                      trainer_path + "@" + std::to_string(step) + ": names no shards of its step");
  committed_step_records out;
  out.step = step;
  out.fingerprint = ts.fingerprint;
  out.paths.push_back(trainer_path);
  for (uint64_t k = 0; k < ts.shards; ++k)
    out.paths.push_back(job_path + "/shards/shard-" + std::to_string(k));
  for (uint64_t l = 0; l < ts.loaders; ++l)
    out.paths.push_back(job_path + "/loaders/loader-" + std::to_string(l));
  for (const auto& p : out.paths)
    if (auto err = store.verify(p, step))
      return err;
  return out;
}

} // namespace understudy::actors
