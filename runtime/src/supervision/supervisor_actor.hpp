#pragma once

// Private to runtime/src/supervision: the supervisor actor, its child records and
// its jobs, shared by the files that implement it (supervisor.cpp: the behavior and
// spawning; supervisor_jobs.cpp: the job queue, start/stop ordering and stopping the
// supervisor; child_lifecycle.cpp: child records, incarnations, readiness and timers;
// child_exits.cpp: exits, crashes and failed starts; restart_intensity.cpp: restart
// intensity and backoff; child_requests.cpp: requests, including simple_one_for_one's
// dynamic children; spec_validation.cpp).

#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <caf/actor_clock.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/response_promise.hpp>
#include <caf/send.hpp>
#include <caf/typed_response_promise.hpp>

#include "understudy/supervision/supervisor.hpp"

namespace understudy::supervision_detail {

using time_point = caf::actor_clock::time_point;

using restart_timer_atom = caf::atom_constant<caf::atom("us_rtimer")>;
using shutdown_timer_atom = caf::atom_constant<caf::atom("us_stimer")>;
using liveness_timer_atom = caf::atom_constant<caf::atom("us_ltimer")>;
using start_timer_atom = caf::atom_constant<caf::atom("us_sttimer")>;
/// An asynchronous start's outcome (start_callback): slot, incarnation, outcome.
using start_done_atom = caf::atom_constant<caf::atom("us_stdone")>;

/// What an asynchronous start produced. An actor that its supervisor does
/// not adopt is killed when the last reference goes: also when the message
/// carrying it is dropped because the supervisor has ended.
struct start_outcome {
  caf::actor handle;
  caf::error err;
  bool adopted = false;
  start_outcome() = default;
  start_outcome(const start_outcome&) = delete;
  start_outcome& operator=(const start_outcome&) = delete;
  ~start_outcome();
};

using start_outcome_ptr = std::shared_ptr<start_outcome>;

struct resolve_waiter {
  uint64_t min_incarnation;
  caf::response_promise rp;
};

/// One child slot of a supervisor. The spec stays across incarnations.
struct child_rec {
  uint64_t slot = 0;
  child_spec spec;
  caf::message args;
  caf::actor handle;
  caf::actor_addr addr;
  uint64_t incarnation = 0;
  uint64_t restarts = 0;
  child_status status = child_status::stopped;
  /// Serving since.
  time_point started_at{};
  /// When the crash that triggered the pending restart was observed.
  time_point crashed_at{};
  /// The next time this child serves completes a recovery.
  bool recovering = false;
  /// Set when the supervisor kills the child for a reason of its own.
  caf::error kill_reason;
  /// The child ignored its shutdown and was killed.
  bool killed_after_timeout = false;
  time_point last_progress{};
  uint32_t backoff_attempt = 0;
  std::vector<resolve_waiter> waiters;
  /// The incarnation an asynchronous start is working on (0: none). The
  /// child is `starting` (or `stopping`, if stopped meanwhile) without a handle.
  uint64_t pending_inc = 0;
  /// The pending incarnation announced itself before its start completed.
  bool ready_early = false;
  /// Whether the child's handle may be handed out (serving, or started without
  /// an explicit readiness announcement).
  bool resolvable() const {
    return handle && (status == child_status::running ||
                      (status == child_status::starting && !spec.announces_ready));
  }
};

/// A sequence of steps the supervisor works through one at a time, like the
/// synchronous sequences inside an OTP supervisor, but without blocking.
struct job {
  enum class purpose : uint8_t { initial_start, restart, stop_all, terminate, start_one };
  enum class step_kind : uint8_t { start, stop, delay };
  struct step {
    step_kind kind;
    std::vector<uint64_t> slots;
    caf::timespan delay{0};
  };

  purpose what;
  uint64_t id = 0;
  /// restart: the child whose exit triggered it; terminate/start_one: the child.
  uint64_t trigger = 0;
  /// restart: the children this job restarts (in start order).
  std::vector<uint64_t> group;
  /// restart: the backoff delay before starting again.
  caf::timespan backoff{0};
  /// stop_all: the exit reason the supervisor quits with afterwards.
  caf::error reason;
  /// stop_all: escalation (intensity exceeded) rather than a requested shutdown.
  bool escalation = false;
  /// terminate/start_one: who asked.
  caf::response_promise rp;
  /// Whether the steps were laid out (happens when the job begins).
  bool begun = false;
  std::deque<step> steps;
  /// start_one: the child was added by this job (removed again if it fails).
  bool added = false;
};

/// Checks one child spec: id, start function, timeouts, significance.
caf::error validate_child_spec(const child_spec& spec);

/// Spawns a supervisor at `path` under `parent` (none for a root), after `validate`.
caf::expected<caf::actor> spawn_supervisor_impl(caf::actor_system& sys, supervisor_spec spec,
                                                std::string path, child_token parent);

/// A supervisor: starts, watches, restarts and stops its children as its spec
/// says, one job at a time. Runs on the actor system's scheduler; all state is
/// the actor's own.
class supervisor_actor : public caf::event_based_actor {
public:
  supervisor_actor(caf::actor_config& cfg, supervisor_spec spec, std::string path,
                   child_token parent)
      : caf::event_based_actor(cfg),
        spec_(std::move(spec)),
        path_(std::move(path)),
        parent_(std::move(parent)),
        rng_(spec_.seed ^ std::hash<std::string>{}(path_)) {
    // Nothing to do.
  }

  const char* name() const override { return "understudy.supervisor"; }

  caf::behavior make_behavior() override;

  /// Runs when the supervisor terminates. After an orderly stop no child is
  /// left; after an abrupt death (a kill) no child may outlive it either.
  void on_exit() override {
    for (auto& kv : by_addr_)
      if (auto h = kv.second->handle)
        caf::anon_send_exit(h, caf::exit_reason::kill);
    by_addr_.clear();
  }

private:
  // -- bookkeeping (child_lifecycle.cpp) ----------------------------------------------

  bool dynamic() const { return spec_.strategy == restart_strategy::simple_one_for_one; }

  time_point now() { return clock().now(); }

  child_rec* find_slot(uint64_t slot);
  child_rec* find_id(const std::string& id);
  child_rec* add_rec(child_spec spec, caf::message args);
  void remove_rec(child_rec* rec);
  void fail_waiters(child_rec* rec, const caf::error& err);
  void serve_waiters(child_rec* rec);

  std::string child_path(const child_spec& spec) const { return path_ + "/" + spec.id; }

  /// Hands an event to the spec's sink, if any.
  void record(event_kind kind, const child_rec* rec, std::string reason, std::string action,
              caf::timespan duration = caf::timespan{0});

  // -- jobs (supervisor_jobs.cpp) -------------------------------------------------------

  void enqueue(std::unique_ptr<job> j);

  job* current() { return jobs_.empty() ? nullptr : jobs_.front().get(); }

  /// Works through the current job's steps until one has to wait, then returns;
  /// finishes jobs and moves on to the next.
  void advance();

  /// Resumes the current job after its front step completed.
  void step_done();

  void lay_out(job& j);

  /// The children a restart of `trigger` involves, in start order.
  std::vector<uint64_t> restart_group(child_rec* trigger);

  /// Starts step `s`; returns true if it completed at once.
  bool begin_step(job& j, job::step& s);

  void finish(job& j);

  // -- starting and stopping incarnations (child_lifecycle.cpp) -------------------------

  /// Calls the start function, links the new incarnation and begins waiting for
  /// it to serve. Returns an error if there is no new incarnation.
  caf::error start_incarnation(child_rec& rec);

  /// Calls the asynchronous start function of `rec` (its outcome arrives as
  /// on_start_done); returns false if it failed at once (on_start_failed ran).
  bool begin_async_start(child_rec& rec);

  /// An asynchronous start's outcome; returns whether the incarnation was adopted.
  bool on_start_done(uint64_t slot, uint64_t inc, start_outcome& out);

  /// Makes `handle` incarnation `inc` of `rec` and monitors it.
  void attach(child_rec& rec, uint64_t inc, caf::actor handle);

  /// attach(), then begins waiting for the new incarnation to serve.
  void adopt(child_rec& rec, uint64_t inc, caf::actor handle);

  void stop_incarnation(child_rec& rec);

  void on_ready(uint64_t slot, uint64_t inc);

  // -- exits (child_exits.cpp) ----------------------------------------------------------

  /// Our parent (or anyone) asks us to stop.
  void on_exit(caf::exit_msg& msg);

  void on_down(caf::down_msg& msg);
  void on_stopped(child_rec* rec, const caf::error& reason);
  void on_crash(child_rec* rec, const caf::error& reason);
  void on_start_failed(child_rec* rec, const caf::error& err);

  // -- restart intensity and backoff (restart_intensity.cpp) ----------------------------

  /// Records a restart; returns false if that exceeds the intensity.
  bool count_restart();

  caf::timespan next_backoff(child_rec& rec, time_point crash_time);

  void escalate(child_rec* rec, const caf::error& reason);

  // -- stopping the supervisor (supervisor_jobs.cpp) ------------------------------------

  void begin_stop_all(caf::error reason, bool escalation);

  /// Abandons pending work and stops every child in reverse start order.
  void replace_with_stop_all(caf::error reason, bool escalation);

  void check_auto_shutdown();

  // -- timers (child_lifecycle.cpp) -----------------------------------------------------

  void on_shutdown_timer(uint64_t slot, uint64_t inc);
  void on_liveness_timer(uint64_t slot, uint64_t inc);
  void on_start_timer(uint64_t slot, uint64_t inc);

  // -- requests (child_requests.cpp) ----------------------------------------------------

  std::vector<child_info> which_children();
  child_counts count_children();
  caf::result<caf::actor> resolve(const std::string& id, uint64_t min_incarnation);

  /// start_child with arguments: a new simple_one_for_one child from the template.
  caf::result<caf::actor> start_dynamic_child(const std::string& id, caf::message& args);

  /// start_child without arguments: restarts a stopped static child.
  caf::result<caf::actor> restart_child(const std::string& id);

  caf::result<caf::actor> add_child(child_spec& spec);
  caf::result<caf::ok_atom> terminate_child(const std::string& id);
  caf::result<caf::ok_atom> delete_child(const std::string& id);

  caf::result<caf::actor> start_new_child(child_spec spec, caf::message args);

  /// Queues a job on behalf of a request; its finish (or failure) answers it.
  template <class T>
  caf::typed_response_promise<T> request_job(job::purpose what, child_rec* rec, bool added);

  /// For requests that only static supervisors support on a stopped child:
  /// finds child `id` or says why the request is refused.
  caf::error stopped_static_child(const char* request, const std::string& id, child_rec*& rec);

  supervisor_spec spec_;
  std::string path_;
  child_token parent_;
  std::mt19937_64 rng_;
  std::unordered_map<uint64_t, std::unique_ptr<child_rec>> recs_;
  std::vector<child_rec*> order_;
  std::unordered_map<std::string, child_rec*> by_id_;
  std::unordered_map<caf::actor_addr, child_rec*> by_addr_;
  std::deque<std::unique_ptr<job>> jobs_;
  std::deque<time_point> restart_times_;
  std::vector<caf::response_promise> ready_waiters_;
  caf::error start_error_;
  uint64_t next_slot_ = 0;
  uint64_t next_job_ = 0;
  bool started_ = false;
  bool stopping_ = false;
  bool quitting_ = false;
};

} // namespace understudy::supervision_detail

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(understudy::supervision_detail::start_outcome_ptr)
