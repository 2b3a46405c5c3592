#include "understudy/runtime/supervisor.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <random>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/response_promise.hpp>
#include <caf/sec.hpp>
#include <caf/send.hpp>

#include "understudy/runtime/errors.hpp"

namespace understudy {

namespace {

using time_point = caf::actor_clock::time_point;

using restart_timer_atom = caf::atom_constant<caf::atom("us_rtimer")>;
using shutdown_timer_atom = caf::atom_constant<caf::atom("us_stimer")>;
using liveness_timer_atom = caf::atom_constant<caf::atom("us_ltimer")>;
using start_timer_atom = caf::atom_constant<caf::atom("us_sttimer")>;

/// Normal and shutdown exits are not failures (OTP's `normal` and `shutdown`).
bool is_normal_exit(const caf::error& reason) {
  return !reason || reason == caf::exit_reason::normal || reason == caf::exit_reason::user_shutdown;
}

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
  /// Whether the child's handle may be handed out (serving, or started without
  /// an explicit readiness announcement).
  bool resolvable() const {
    return status == child_status::running ||
           (status == child_status::starting && !spec.announces_ready);
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

caf::error validate_child_spec(const child_spec& spec);

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
  // -- bookkeeping -----------------------------------------------------------------

  bool dynamic() const { return spec_.strategy == restart_strategy::simple_one_for_one; }

  time_point now() { return clock().now(); }

  child_rec* find_slot(uint64_t slot) {
    auto i = recs_.find(slot);
    return i == recs_.end() ? nullptr : i->second.get();
  }

  child_rec* find_id(const std::string& id) {
    auto i = by_id_.find(id);
    return i == by_id_.end() ? nullptr : i->second;
  }

  child_rec* add_rec(child_spec spec, caf::message args) {
    auto rec = std::make_unique<child_rec>();
    rec->slot = ++next_slot_;
    rec->spec = std::move(spec);
    rec->args = std::move(args);
    auto* ptr = rec.get();
    by_id_.emplace(ptr->spec.id, ptr);
    order_.push_back(ptr);
    recs_.emplace(ptr->slot, std::move(rec));
    return ptr;
  }

  void remove_rec(child_rec* rec) {
    fail_waiters(rec, make_error(supervision_errc::child_not_running,
                                 "child " + rec->spec.id + " was removed"));
    if (rec->addr)
      by_addr_.erase(rec->addr);
    by_id_.erase(rec->spec.id);
    order_.erase(std::remove(order_.begin(), order_.end(), rec), order_.end());
    recs_.erase(rec->slot); // Destroys rec.
  }

  void fail_waiters(child_rec* rec, const caf::error& err) {
    for (auto& w : rec->waiters)
      w.rp.deliver(err);
    rec->waiters.clear();
  }

  void serve_waiters(child_rec* rec) {
    if (!rec->resolvable() || rec->waiters.empty())
      return;
    auto& ws = rec->waiters;
    auto keep = std::partition(ws.begin(), ws.end(), [&](const resolve_waiter& w) {
      return w.min_incarnation > rec->incarnation;
    });
    for (auto i = keep; i != ws.end(); ++i)
      i->rp.deliver(rec->handle);
    ws.erase(keep, ws.end());
  }

  std::string child_path(const child_spec& spec) const { return path_ + "/" + spec.id; }

  // -- events ----------------------------------------------------------------------

  void record(event_kind kind, const child_rec* rec, std::string reason, std::string action,
              caf::timespan duration = caf::timespan{0}) {
    if (!spec_.events)
      return;
    supervision_event ev;
    ev.kind = kind;
    ev.supervisor = path_;
    if (rec != nullptr) {
      ev.child = rec->spec.id;
      ev.incarnation = rec->incarnation;
    }
    ev.reason = std::move(reason);
    ev.action = std::move(action);
    ev.duration = duration;
    ev.time = now();
    ev.wall_time = std::chrono::system_clock::now();
    spec_.events->on_event(ev);
  }

  // -- jobs ------------------------------------------------------------------------

  void enqueue(std::unique_ptr<job> j) {
    j->id = ++next_job_;
    jobs_.push_back(std::move(j));
    if (jobs_.size() == 1)
      advance();
  }

  job* current() { return jobs_.empty() ? nullptr : jobs_.front().get(); }

  /// Works through the current job's steps until one has to wait, then returns;
  /// finishes jobs and moves on to the next.
  void advance() {
    while (auto* j = current()) {
      if (!j->begun) {
        j->begun = true;
        lay_out(*j);
      }
      while (!j->steps.empty()) {
        auto& s = j->steps.front();
        if (!begin_step(*j, s))
          return; // Waiting; resumed by on_ready, on_stopped or a timer.
        j->steps.pop_front();
      }
      auto done = std::move(jobs_.front());
      jobs_.pop_front();
      finish(*done);
      if (quitting_)
        return;
    }
  }

  /// Resumes the current job after its front step completed.
  void step_done() {
    auto* j = current();
    if (j == nullptr || j->steps.empty())
      return;
    j->steps.pop_front();
    advance();
  }

  void lay_out(job& j) {
    using sk = job::step_kind;
    switch (j.what) {
      case job::purpose::initial_start:
        for (auto* rec : order_)
          j.steps.push_back({sk::start, {rec->slot}, {}});
        break;
      case job::purpose::restart: {
        auto* trigger = find_slot(j.trigger);
        if (trigger == nullptr || trigger->status != child_status::restarting)
          break; // Removed or restarted meanwhile.
        j.group = restart_group(trigger);
        for (auto i = j.group.rbegin(); i != j.group.rend(); ++i) {
          auto* rec = find_slot(*i);
          if (rec->status == child_status::running || rec->status == child_status::starting)
            j.steps.push_back({sk::stop, {rec->slot}, {}});
        }
        if (j.backoff.count() > 0)
          j.steps.push_back({sk::delay, {}, j.backoff});
        for (auto slot : j.group)
          j.steps.push_back({sk::start, {slot}, {}});
        break;
      }
      case job::purpose::stop_all: {
        std::vector<uint64_t> live;
        for (auto i = order_.rbegin(); i != order_.rend(); ++i)
          if ((*i)->status == child_status::running || (*i)->status == child_status::starting ||
              (*i)->status == child_status::stopping)
            live.push_back((*i)->slot);
        if (live.empty())
          break;
        if (dynamic()) {
          j.steps.push_back({sk::stop, std::move(live), {}}); // All at once, as OTP.
        } else {
          for (auto slot : live)
            j.steps.push_back({sk::stop, {slot}, {}});
        }
        break;
      }
      case job::purpose::terminate:
        j.steps.push_back({sk::stop, {j.trigger}, {}});
        break;
      case job::purpose::start_one:
        j.steps.push_back({sk::start, {j.trigger}, {}});
        break;
    }
  }

  /// The children a restart of `trigger` involves, in start order.
  std::vector<uint64_t> restart_group(child_rec* trigger) {
    std::vector<uint64_t> group;
    auto take = [&](child_rec* rec) {
      if (rec == trigger || rec->status == child_status::running ||
          rec->status == child_status::starting || rec->status == child_status::restarting)
        group.push_back(rec->slot);
    };
    switch (spec_.strategy) {
      case restart_strategy::one_for_one:
      case restart_strategy::simple_one_for_one:
        group.push_back(trigger->slot);
        break;
      case restart_strategy::one_for_all:
        for (auto* rec : order_)
          take(rec);
        break;
      case restart_strategy::rest_for_one: {
        auto i = std::find(order_.begin(), order_.end(), trigger);
        for (; i != order_.end(); ++i)
          take(*i);
        break;
      }
    }
    return group;
  }

  /// Starts step `s`; returns true if it completed at once.
  bool begin_step(job& j, job::step& s) {
    switch (s.kind) {
      case job::step_kind::start: {
        auto* rec = find_slot(s.slots.front());
        if (rec == nullptr || rec->status == child_status::running ||
            rec->status == child_status::starting)
          return true; // Removed (temporary sibling) or already up.
        if (auto err = start_incarnation(*rec)) {
          on_start_failed(rec, err);
          return false; // on_start_failed replaced or finished the job.
        }
        return rec->status == child_status::running;
      }
      case job::step_kind::stop: {
        bool waiting = false;
        for (auto slot : s.slots) {
          auto* rec = find_slot(slot);
          if (rec == nullptr)
            continue;
          if (rec->status == child_status::running || rec->status == child_status::starting) {
            stop_incarnation(*rec);
            waiting = true;
          } else if (rec->status == child_status::stopping) {
            waiting = true; // Already on its way down.
          }
        }
        if (waiting) {
          s.slots.erase(std::remove_if(s.slots.begin(), s.slots.end(),
                                       [&](uint64_t slot) {
                                         auto* rec = find_slot(slot);
                                         return rec == nullptr ||
                                                rec->status != child_status::stopping;
                                       }),
                        s.slots.end());
        }
        return !waiting;
      }
      case job::step_kind::delay:
        delayed_send(caf::actor_cast<caf::actor>(this), s.delay, restart_timer_atom::value, j.id);
        return false;
    }
    return true;
  }

  void finish(job& j) {
    switch (j.what) {
      case job::purpose::initial_start:
        started_ = true;
        record(event_kind::supervisor_started, nullptr, {}, "serving");
        for (auto& rp : ready_waiters_)
          rp.deliver(caf::ok_atom::value);
        ready_waiters_.clear();
        if (parent_)
          announce_ready(parent_);
        break;
      case job::purpose::restart:
        break;
      case job::purpose::stop_all: {
        quitting_ = true;
        auto err = j.reason;
        record(event_kind::supervisor_stopped, nullptr, describe(err),
               j.escalation ? "escalate" : "stop");
        auto gone = make_error(supervision_errc::supervisor_stopping, path_ + " stopped");
        for (auto& rp : ready_waiters_)
          rp.deliver(start_error_ ? start_error_ : gone);
        ready_waiters_.clear();
        for (auto* rec : order_)
          fail_waiters(rec, gone);
        for (auto& other : jobs_)
          if (other->rp.pending())
            other->rp.deliver(gone);
        quit(err);
        break;
      }
      case job::purpose::terminate: {
        auto* rec = find_slot(j.trigger);
        if (rec != nullptr) {
          fail_waiters(rec, make_error(supervision_errc::child_not_running,
                                       "child " + rec->spec.id + " was terminated"));
          if (dynamic() || rec->spec.restart == restart_type::temporary)
            remove_rec(rec);
        }
        j.rp.deliver(caf::ok_atom::value);
        break;
      }
      case job::purpose::start_one: {
        auto* rec = find_slot(j.trigger);
        if (rec != nullptr)
          j.rp.deliver(rec->handle);
        break;
      }
    }
  }

  // -- starting and stopping incarnations -------------------------------------------

  /// Calls the start function, links the new incarnation and begins waiting for
  /// it to serve. Returns an error if there is no new incarnation.
  caf::error start_incarnation(child_rec& rec) {
    auto path = child_path(rec.spec);
    auto inc = rec.incarnation + 1;
    child_context ctx{system(),    rec.spec.id,
                      path,        inc,
                      rec.args,    child_token{caf::actor_cast<caf::actor>(this), rec.slot, inc},
                      spec_.events};
    caf::expected<caf::actor> res{caf::actor{}};
    try {
      res = rec.spec.start(ctx);
    } catch (const std::exception& e) {
      return make_error(supervision_errc::start_failed,
                        rec.spec.id + ": start function threw: " + e.what());
    }
    if (!res)
      return make_error(supervision_errc::start_failed,
                        rec.spec.id + ": start function returned " + describe(res.error()));
    if (!*res)
      return make_error(supervision_errc::start_failed,
                        rec.spec.id + ": start function returned no actor");
    rec.incarnation = inc;
    rec.handle = std::move(*res);
    rec.addr = rec.handle.address();
    rec.status = child_status::starting;
    rec.killed_after_timeout = false;
    by_addr_[rec.addr] = &rec;
    // Monitor, not link: a child killed with exit_reason::kill must not take
    // the supervisor down (CAF treats kill as fatal for linked actors). on_exit
    // takes care of the other direction.
    monitor(rec.handle);
    if (rec.spec.start_timeout.count() > 0)
      delayed_send(caf::actor_cast<caf::actor>(this), rec.spec.start_timeout,
                   start_timer_atom::value, rec.slot, inc);
    if (!rec.spec.announces_ready) {
      // Any scheduled actor answers this system message once it has initialized:
      // its answer tells that the new incarnation is serving.
      auto slot = rec.slot;
      request(rec.handle, caf::infinite, caf::sys_atom::value, caf::get_atom::value,
              std::string{"info"})
          .then([this, slot, inc](caf::ok_atom, const std::string&, const caf::strong_actor_ptr&,
                                  const std::string&) { on_ready(slot, inc); },
                [](caf::error&) {
                  // The exit message tells what happened.
                });
    }
    serve_waiters(&rec);
    return caf::none;
  }

  void stop_incarnation(child_rec& rec) {
    rec.status = child_status::stopping;
    switch (rec.spec.shutdown.mode) {
      case shutdown_mode::brutal_kill:
        send_exit(rec.handle, caf::exit_reason::kill);
        break;
      case shutdown_mode::timeout:
        send_exit(rec.handle, caf::exit_reason::user_shutdown);
        delayed_send(caf::actor_cast<caf::actor>(this), rec.spec.shutdown.timeout,
                     shutdown_timer_atom::value, rec.slot, rec.incarnation);
        break;
      case shutdown_mode::infinity:
        send_exit(rec.handle, caf::exit_reason::user_shutdown);
        break;
    }
  }

  void on_ready(uint64_t slot, uint64_t inc) {
    auto* rec = find_slot(slot);
    if (rec == nullptr || rec->incarnation != inc || rec->status != child_status::starting)
      return;
    rec->status = child_status::running;
    rec->started_at = now();
    if (rec->recovering) {
      rec->recovering = false;
      record(event_kind::child_restarted, rec, {}, "serving", rec->started_at - rec->crashed_at);
    } else {
      record(event_kind::child_started, rec, {}, "serving");
    }
    serve_waiters(rec);
    if (rec->spec.liveness_deadline.count() > 0) {
      rec->last_progress = rec->started_at;
      delayed_send(caf::actor_cast<caf::actor>(this), rec->spec.liveness_deadline,
                   liveness_timer_atom::value, slot, inc);
    }
    auto* j = current();
    if (j != nullptr && !j->steps.empty() && j->steps.front().kind == job::step_kind::start &&
        j->steps.front().slots.front() == slot)
      step_done();
  }

  // -- exits -------------------------------------------------------------------------

  /// Our parent (or anyone) asks us to stop.
  void on_exit(caf::exit_msg& msg) {
    if (!msg.reason || msg.reason == caf::exit_reason::normal)
      return;
    begin_stop_all(std::move(msg.reason), false);
  }

  void on_down(caf::down_msg& msg) {
    auto i = by_addr_.find(msg.source);
    if (i == by_addr_.end())
      return; // Stale: a monitor of an earlier incarnation.
    auto* rec = i->second;
    by_addr_.erase(i);
    rec->handle = nullptr;
    rec->addr = caf::actor_addr{};
    auto reason = std::move(msg.reason);
    if (rec->kill_reason) {
      reason = std::move(rec->kill_reason);
      rec->kill_reason = caf::error{};
    }
    switch (rec->status) {
      case child_status::stopping:
        on_stopped(rec, reason);
        break;
      case child_status::starting:
        on_start_failed(rec,
                        make_error(supervision_errc::start_failed,
                                   rec->spec.id + ": exited before serving: " + describe(reason)));
        break;
      case child_status::running:
        on_crash(rec, reason);
        break;
      default:
        break;
    }
  }

  void on_stopped(child_rec* rec, const caf::error& reason) {
    auto* j = current();
    bool group_restart = j != nullptr && j->what == job::purpose::restart &&
                         std::find(j->group.begin(), j->group.end(), rec->slot) != j->group.end();
    record(event_kind::child_stopped, rec, describe(reason),
           rec->killed_after_timeout ? "killed after shutdown timeout" : "stopped");
    if (group_restart && rec->spec.restart != restart_type::temporary) {
      rec->status = child_status::restarting;
      ++rec->restarts;
      rec->recovering = true;
      rec->crashed_at = find_slot(j->trigger)->crashed_at;
    } else {
      rec->status = child_status::stopped;
    }
    if (group_restart && rec->spec.restart == restart_type::temporary) {
      j->group.erase(std::remove(j->group.begin(), j->group.end(), rec->slot), j->group.end());
      remove_rec(rec);
    }
    if (j == nullptr || j->steps.empty() || j->steps.front().kind != job::step_kind::stop)
      return;
    // rec may be gone now: drop every slot that is no longer stopping.
    auto& slots = j->steps.front().slots;
    slots.erase(std::remove_if(slots.begin(), slots.end(),
                               [&](uint64_t slot) {
                                 auto* r = find_slot(slot);
                                 return r == nullptr || r->status != child_status::stopping;
                               }),
                slots.end());
    if (slots.empty())
      step_done();
  }

  void on_crash(child_rec* rec, const caf::error& reason) {
    // Rendering the reason costs; only do it when someone listens.
    auto why = [&] { return spec_.events ? describe(reason) : std::string{}; };
    bool abnormal = !is_normal_exit(reason);
    bool restart = !stopping_ && (rec->spec.restart == restart_type::permanent ||
                                  (rec->spec.restart == restart_type::transient && abnormal));
    auto crash_time = now();
    if (!restart) {
      bool remove = rec->spec.restart == restart_type::temporary;
      record(event_kind::child_exited, rec, why(), remove ? "remove" : "ignore");
      rec->status = child_status::stopped;
      bool significant = rec->spec.significant;
      if (remove) {
        remove_rec(rec);
      } else {
        fail_waiters(rec, make_error(supervision_errc::child_not_running,
                                     "child " + rec->spec.id + " exited: " + describe(reason)));
      }
      if (significant)
        check_auto_shutdown();
      return;
    }
    rec->status = child_status::restarting;
    rec->recovering = true;
    rec->crashed_at = crash_time;
    // A child that a running restart job will start anyway needs no job of its own.
    auto* j = current();
    if (j != nullptr && j->what == job::purpose::restart && j->begun &&
        std::find(j->group.begin(), j->group.end(), rec->slot) != j->group.end()) {
      record(event_kind::child_exited, rec, why(), "restart (pending)");
      return;
    }
    if (!count_restart()) {
      record(event_kind::child_exited, rec, why(), "escalate");
      escalate(rec, reason);
      return;
    }
    auto delay = next_backoff(*rec, crash_time);
    std::string action = "restart";
    if (spec_.strategy == restart_strategy::one_for_all)
      action += " one_for_all";
    else if (spec_.strategy == restart_strategy::rest_for_one)
      action += " rest_for_one";
    record(event_kind::child_exited, rec, why(), action, delay);
    ++rec->restarts;
    auto nj = std::make_unique<job>();
    nj->what = job::purpose::restart;
    nj->trigger = rec->slot;
    nj->backoff = delay;
    enqueue(std::move(nj));
  }

  void on_start_failed(child_rec* rec, const caf::error& err) {
    record(event_kind::start_failed, rec, describe(err), "");
    rec->status = child_status::stopped;
    auto* j = current();
    if (j == nullptr) {
      return;
    }
    switch (j->what) {
      case job::purpose::initial_start: {
        // The supervisor's start fails: undo in reverse order, then exit.
        // err names the child relative to us; name it by its path in the tree.
        auto detail = describe(err);
        const std::string prefix = "start_failed: ";
        if (detail.compare(0, prefix.size(), prefix) == 0)
          detail.erase(0, prefix.size());
        start_error_ = make_error(supervision_errc::start_failed, path_ + "/" + detail);
        replace_with_stop_all(start_error_, false);
        return;
      }
      case job::purpose::start_one: {
        auto rp = j->rp;
        bool added = j->added;
        jobs_.pop_front();
        if (added)
          remove_rec(rec);
        rp.deliver(err);
        advance();
        return;
      }
      case job::purpose::restart: {
        // Retry the whole group after a backoff; the failed attempt counts
        // against the restart intensity like any crash.
        auto trigger = j->trigger;
        auto group = j->group;
        jobs_.pop_front();
        rec->status = child_status::restarting;
        rec->recovering = true;
        if (rec->crashed_at == time_point{})
          rec->crashed_at = now();
        auto* trig = find_slot(trigger);
        if (trig != nullptr && trig != rec && trig->status != child_status::running &&
            trig->status != child_status::starting)
          trig->status = child_status::restarting;
        // Bring the rest of the group down again so the retry restarts it in order.
        for (auto slot : group) {
          auto* g = find_slot(slot);
          if (g != nullptr && g != rec && g->status != child_status::stopped) {
            g->recovering = true;
            g->crashed_at = rec->crashed_at;
          }
        }
        if (!count_restart()) {
          escalate(rec, err);
          return;
        }
        auto nj = std::make_unique<job>();
        nj->what = job::purpose::restart;
        nj->trigger = rec->slot;
        nj->backoff = next_backoff(*rec, now());
        ++rec->restarts;
        nj->id = ++next_job_;
        jobs_.push_front(std::move(nj));
        advance();
        return;
      }
      default:
        return;
    }
  }

  // -- restart intensity and backoff ---------------------------------------------------

  /// Records a restart; returns false if that exceeds the intensity.
  bool count_restart() {
    auto t = now();
    restart_times_.push_back(t);
    while (!restart_times_.empty() && t - restart_times_.front() > spec_.intensity.period)
      restart_times_.pop_front();
    return static_cast<int>(restart_times_.size()) <= spec_.intensity.max_restarts;
  }

  caf::timespan next_backoff(child_rec& rec, time_point crash_time) {
    const auto& b = spec_.backoff;
    if (!b.enabled())
      return caf::timespan{0};
    if (rec.started_at != time_point{} && crash_time - rec.started_at >= b.reset_after)
      rec.backoff_attempt = 0;
    double d = static_cast<double>(b.min.count()) *
               std::pow(b.multiplier, static_cast<double>(rec.backoff_attempt));
    auto cap = static_cast<double>(std::max(b.max, b.min).count());
    d = std::min(d, cap);
    if (b.jitter > 0) {
      std::uniform_real_distribution<double> dist(-b.jitter, b.jitter);
      d = std::min(cap, d * (1.0 + dist(rng_)));
    }
    ++rec.backoff_attempt;
    return caf::timespan{static_cast<caf::timespan::rep>(d)};
  }

  void escalate(child_rec* rec, const caf::error& reason) {
    auto err = make_error(supervision_errc::intensity_exceeded,
                          path_ + ": more than " + std::to_string(spec_.intensity.max_restarts) +
                              " restarts within " +
                              std::to_string(spec_.intensity.period.count() / 1000000) +
                              " ms; last: " + rec->spec.id + " " + describe(reason));
    record(event_kind::intensity_exceeded, rec, describe(reason), "escalate");
    replace_with_stop_all(err, true);
  }

  // -- stopping the supervisor ---------------------------------------------------------

  void begin_stop_all(caf::error reason, bool escalation) {
    if (stopping_)
      return;
    replace_with_stop_all(std::move(reason), escalation);
  }

  /// Abandons pending work and stops every child in reverse start order.
  void replace_with_stop_all(caf::error reason, bool escalation) {
    stopping_ = true;
    // Children that are restarting stay down; pending requests get an answer.
    auto gone = make_error(supervision_errc::supervisor_stopping, path_ + " is stopping");
    std::deque<std::unique_ptr<job>> old;
    old.swap(jobs_);
    for (auto& j : old)
      if (j->rp.pending())
        j->rp.deliver(gone);
    for (auto* rec : order_)
      if (rec->status == child_status::restarting)
        rec->status = child_status::stopped;
    auto j = std::make_unique<job>();
    j->what = job::purpose::stop_all;
    j->reason = std::move(reason);
    j->escalation = escalation;
    enqueue(std::move(j));
  }

  void check_auto_shutdown() {
    if (spec_.shutdown_policy == auto_shutdown::never || stopping_)
      return;
    // Called after a significant child exited for good; removed (temporary)
    // significant children count as down.
    bool all_down = std::all_of(order_.begin(), order_.end(), [](child_rec* rec) {
      return !rec->spec.significant || rec->status == child_status::stopped;
    });
    if (spec_.shutdown_policy == auto_shutdown::any_significant || all_down)
      begin_stop_all(caf::exit_reason::normal, false);
  }

  // -- timers --------------------------------------------------------------------------

  void on_shutdown_timer(uint64_t slot, uint64_t inc) {
    auto* rec = find_slot(slot);
    if (rec == nullptr || rec->incarnation != inc || rec->status != child_status::stopping ||
        !rec->handle)
      return;
    record(event_kind::shutdown_timeout, rec,
           "ignored shutdown for " + std::to_string(rec->spec.shutdown.timeout.count() / 1000000) +
               " ms",
           "kill");
    rec->killed_after_timeout = true;
    send_exit(rec->handle, caf::exit_reason::kill);
  }

  void on_liveness_timer(uint64_t slot, uint64_t inc) {
    auto* rec = find_slot(slot);
    if (rec == nullptr || rec->incarnation != inc || rec->status != child_status::running)
      return;
    auto t = now();
    auto deadline = rec->spec.liveness_deadline;
    auto idle = t - rec->last_progress;
    if (idle < deadline) {
      delayed_send(caf::actor_cast<caf::actor>(this), deadline - idle, liveness_timer_atom::value,
                   slot, inc);
      return;
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline).count();
    auto err = make_error(supervision_errc::liveness_deadline_missed,
                          rec->spec.id + ": no progress for " + std::to_string(ms) + " ms");
    record(event_kind::hang_detected, rec, describe(err), "kill");
    rec->kill_reason = err;
    send_exit(rec->handle, caf::exit_reason::kill);
  }

  void on_start_timer(uint64_t slot, uint64_t inc) {
    auto* rec = find_slot(slot);
    if (rec == nullptr || rec->incarnation != inc || rec->status != child_status::starting)
      return;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(rec->spec.start_timeout);
    rec->kill_reason =
        make_error(supervision_errc::start_timeout,
                   rec->spec.id + ": not serving after " + std::to_string(ms.count()) + " ms");
    send_exit(rec->handle, caf::exit_reason::kill);
  }

  // -- requests ------------------------------------------------------------------------

  std::vector<child_info> which_children() {
    std::vector<child_info> result;
    result.reserve(order_.size());
    for (auto* rec : order_) {
      child_info info;
      info.id = rec->spec.id;
      if (rec->status == child_status::running || rec->status == child_status::starting)
        info.handle = rec->handle;
      info.kind = rec->spec.kind;
      info.restart = rec->spec.restart;
      info.status = rec->status;
      info.incarnation = rec->incarnation;
      info.restarts = rec->restarts;
      result.push_back(std::move(info));
    }
    return result;
  }

  child_counts count_children() {
    child_counts c;
    for (auto* rec : order_) {
      ++c.specs;
      if (rec->status == child_status::running || rec->status == child_status::starting)
        ++c.active;
      if (rec->spec.kind == child_kind::supervisor)
        ++c.supervisors;
      else
        ++c.workers;
    }
    return c;
  }

  caf::result<caf::actor> resolve(const std::string& id, uint64_t min_incarnation) {
    auto* rec = find_id(id);
    if (rec == nullptr)
      return make_error(supervision_errc::unknown_child, id);
    if (rec->resolvable() && rec->incarnation >= min_incarnation)
      return rec->handle;
    if (rec->status == child_status::stopped || stopping_)
      return make_error(supervision_errc::child_not_running, id);
    auto rp = make_response_promise<caf::actor>();
    rec->waiters.push_back({min_incarnation, rp});
    return rp;
  }

  caf::result<caf::actor> start_new_child(child_spec spec, caf::message args) {
    if (stopping_)
      return make_error(supervision_errc::supervisor_stopping, path_);
    if (auto err = validate_child_spec(spec))
      return err;
    if (find_id(spec.id) != nullptr)
      return make_error(supervision_errc::duplicate_child_id, spec.id);
    auto* rec = add_rec(std::move(spec), std::move(args));
    return request_job<caf::actor>(job::purpose::start_one, rec, true);
  }

  /// Queues a job on behalf of a request; its finish (or failure) answers it.
  template <class T>
  caf::typed_response_promise<T> request_job(job::purpose what, child_rec* rec, bool added) {
    auto j = std::make_unique<job>();
    j->what = what;
    j->trigger = rec->slot;
    j->added = added;
    auto rp = make_response_promise<T>();
    j->rp = rp;
    enqueue(std::move(j));
    return rp;
  }

  /// For requests that only static supervisors support on a stopped child:
  /// finds child `id` or says why the request is refused.
  caf::error stopped_static_child(const char* request, const std::string& id, child_rec*& rec) {
    if (dynamic())
      return make_error(supervision_errc::wrong_strategy,
                        path_ + ": " + request + " is not supported by simple_one_for_one");
    rec = find_id(id);
    if (rec == nullptr)
      return make_error(supervision_errc::unknown_child, id);
    if (rec->status != child_status::stopped)
      return make_error(supervision_errc::child_running, id);
    return caf::none;
  }

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

caf::error validate_timespan(const std::string& what, const std::string& id, caf::timespan t,
                             bool zero_ok) {
  if (t.count() < 0 || (!zero_ok && t.count() == 0))
    return make_error(supervision_errc::invalid_timeout,
                      id + ": " + what + " must be " + (zero_ok ? "zero or " : "") +
                          "positive, got " + std::to_string(t.count()) + " ns");
  return caf::none;
}

caf::error validate_child_spec(const child_spec& spec) {
  if (spec.id.empty())
    return make_error(supervision_errc::invalid_child_spec, "child without an id");
  if (spec.id.find('/') != std::string::npos)
    return make_error(supervision_errc::invalid_child_spec,
                      spec.id + ": a child id must not contain '/'");
  if (!spec.start)
    return make_error(supervision_errc::invalid_child_spec, spec.id + ": no start function");
  if (spec.shutdown.mode == shutdown_mode::timeout)
    if (auto err = validate_timespan("shutdown timeout", spec.id, spec.shutdown.timeout, false))
      return err;
  if (auto err = validate_timespan("liveness deadline", spec.id, spec.liveness_deadline, true))
    return err;
  if (auto err = validate_timespan("start timeout", spec.id, spec.start_timeout, true))
    return err;
  if (spec.significant && spec.restart == restart_type::permanent)
    return make_error(supervision_errc::invalid_child_spec,
                      spec.id + ": a permanent child cannot be significant");
  return caf::none;
}

caf::behavior supervisor_actor::make_behavior() {
  set_exit_handler([this](caf::exit_msg& msg) { on_exit(msg); });
  set_down_handler([this](caf::down_msg& msg) { on_down(msg); });
  if (!dynamic()) {
    for (auto& c : spec_.children)
      add_rec(std::move(c), caf::message{});
    spec_.children.clear();
  }
  auto j = std::make_unique<job>();
  j->what = job::purpose::initial_start;
  enqueue(std::move(j));
  return {
      [this](await_ready_atom) -> caf::result<caf::ok_atom> {
        if (started_)
          return caf::ok_atom::value;
        if (stopping_)
          return start_error_ ? start_error_
                              : make_error(supervision_errc::supervisor_stopping, path_);
        auto rp = make_response_promise<caf::ok_atom>();
        ready_waiters_.push_back(rp);
        return rp;
      },
      [this](which_children_atom) { return which_children(); },
      [this](count_children_atom) { return count_children(); },
      [this](resolve_atom, const std::string& id) { return resolve(id, 0); },
      [this](resolve_atom, const std::string& id, uint64_t min_incarnation) {
        return resolve(id, min_incarnation);
      },
      [this](start_child_atom, const std::string& id,
             caf::message& args) -> caf::result<caf::actor> {
        if (!dynamic())
          return make_error(supervision_errc::wrong_strategy,
                            path_ +
                                ": start_child with arguments needs simple_one_for_one; "
                                "use add_child or restart_child");
        auto spec = spec_.children.front();
        spec.id = id;
        return start_new_child(std::move(spec), std::move(args));
      },
      [this](start_child_atom, const std::string& id) -> caf::result<caf::actor> {
        child_rec* rec = nullptr;
        if (auto err = stopped_static_child("restart_child", id, rec))
          return err;
        if (stopping_)
          return make_error(supervision_errc::supervisor_stopping, path_);
        rec->status = child_status::restarting;
        return request_job<caf::actor>(job::purpose::start_one, rec, false);
      },
      [this](add_child_atom, child_spec& spec) -> caf::result<caf::actor> {
        if (dynamic())
          return make_error(supervision_errc::wrong_strategy,
                            path_ +
                                ": simple_one_for_one children come from its template; "
                                "use start_child with arguments");
        return start_new_child(std::move(spec), caf::message{});
      },
      [this](terminate_child_atom, const std::string& id) -> caf::result<caf::ok_atom> {
        auto* rec = find_id(id);
        if (rec == nullptr)
          return make_error(supervision_errc::unknown_child, id);
        if (stopping_)
          return make_error(supervision_errc::supervisor_stopping, path_);
        if (rec->status == child_status::stopped) {
          if (dynamic() || rec->spec.restart == restart_type::temporary)
            remove_rec(rec);
          return caf::ok_atom::value;
        }
        return request_job<caf::ok_atom>(job::purpose::terminate, rec, false);
      },
      [this](delete_child_atom, const std::string& id) -> caf::result<caf::ok_atom> {
        child_rec* rec = nullptr;
        if (auto err = stopped_static_child("delete_child", id, rec))
          return err;
        remove_rec(rec);
        return caf::ok_atom::value;
      },
      [this](ready_atom, uint64_t slot, uint64_t inc) { on_ready(slot, inc); },
      [this](progress_atom, uint64_t slot, uint64_t inc) {
        auto* rec = find_slot(slot);
        if (rec != nullptr && rec->incarnation == inc)
          rec->last_progress = now();
      },
      [this](restart_timer_atom, uint64_t job_id) {
        auto* j = current();
        if (j != nullptr && j->id == job_id && !j->steps.empty() &&
            j->steps.front().kind == job::step_kind::delay)
          step_done();
      },
      [this](shutdown_timer_atom, uint64_t slot, uint64_t inc) { on_shutdown_timer(slot, inc); },
      [this](liveness_timer_atom, uint64_t slot, uint64_t inc) { on_liveness_timer(slot, inc); },
      [this](start_timer_atom, uint64_t slot, uint64_t inc) { on_start_timer(slot, inc); },
  };
}

caf::expected<caf::actor> spawn_supervisor_impl(caf::actor_system& sys, supervisor_spec spec,
                                                std::string path, child_token parent) {
  if (auto err = validate(spec))
    return err;
  return caf::actor{
      sys.spawn<supervisor_actor>(std::move(spec), std::move(path), std::move(parent))};
}

} // namespace

// -- free functions --------------------------------------------------------------------

void capture_exceptions(caf::scheduled_actor* self) {
  self->set_exception_handler([](caf::scheduled_actor*, std::exception_ptr& eptr) -> caf::error {
    try {
      std::rethrow_exception(eptr);
    } catch (const std::exception& e) {
      return caf::make_error(caf::sec::runtime_error, std::string{"exception: "} + e.what());
    } catch (...) {
      return caf::make_error(caf::sec::runtime_error, std::string{"unknown exception"});
    }
  });
}

void report_progress(const child_token& token) {
  if (token)
    caf::anon_send(token.supervisor, progress_atom::value, token.slot, token.incarnation);
}

void announce_ready(const child_token& token) {
  if (token)
    caf::anon_send(token.supervisor, ready_atom::value, token.slot, token.incarnation);
}

caf::error validate(const supervisor_spec& spec) {
  if (spec.name.empty() || spec.name.find('/') != std::string::npos)
    return make_error(supervision_errc::invalid_child_spec,
                      "supervisor name must be non-empty and contain no '/': '" + spec.name + "'");
  if (spec.intensity.max_restarts < 0)
    return make_error(supervision_errc::invalid_intensity,
                      spec.name + ": max_restarts must be >= 0, got " +
                          std::to_string(spec.intensity.max_restarts));
  if (spec.intensity.period.count() <= 0)
    return make_error(supervision_errc::invalid_intensity,
                      spec.name + ": period must be positive, got " +
                          std::to_string(spec.intensity.period.count()) + " ns");
  const auto& b = spec.backoff;
  if (b.min.count() < 0 || b.max.count() < 0 || b.reset_after.count() < 0)
    return make_error(supervision_errc::invalid_backoff,
                      spec.name + ": backoff durations must not be negative");
  if (b.enabled() && b.max.count() > 0 && b.max < b.min)
    return make_error(supervision_errc::invalid_backoff,
                      spec.name + ": backoff max (" + std::to_string(b.max.count()) +
                          " ns) is below min (" + std::to_string(b.min.count()) + " ns)");
  if (b.multiplier < 1.0)
    return make_error(supervision_errc::invalid_backoff,
                      spec.name + ": backoff multiplier must be >= 1");
  if (b.jitter < 0.0 || b.jitter > 1.0)
    return make_error(supervision_errc::invalid_backoff,
                      spec.name + ": backoff jitter must be within [0, 1]");
  if (spec.strategy == restart_strategy::simple_one_for_one && spec.children.size() != 1)
    return make_error(supervision_errc::invalid_child_spec,
                      spec.name + ": simple_one_for_one needs exactly one template child, got " +
                          std::to_string(spec.children.size()));
  std::unordered_set<std::string> ids;
  for (const auto& c : spec.children) {
    if (auto err = validate_child_spec(c))
      return err;
    if (!ids.insert(c.id).second)
      return make_error(supervision_errc::duplicate_child_id,
                        spec.name + ": duplicate child id '" + c.id + "'");
  }
  return caf::none;
}

caf::expected<caf::actor> spawn_supervisor(caf::actor_system& sys, supervisor_spec spec) {
  auto path = "/" + spec.name;
  return spawn_supervisor_impl(sys, std::move(spec), std::move(path), child_token{});
}

child_spec supervisor_child(supervisor_spec spec, restart_type restart) {
  child_spec c;
  c.id = spec.name;
  c.kind = child_kind::supervisor;
  c.restart = restart;
  c.shutdown = shutdown_spec::infinite();
  c.announces_ready = true;
  c.start = [spec](child_context& ctx) -> caf::expected<caf::actor> {
    auto copy = spec;
    if (!copy.events)
      copy.events = ctx.events;
    return spawn_supervisor_impl(ctx.system, std::move(copy), ctx.path, ctx.token);
  };
  return c;
}

std::string to_string(child_status x) {
  switch (x) {
    case child_status::starting:
      return "starting";
    case child_status::running:
      return "running";
    case child_status::restarting:
      return "restarting";
    case child_status::stopping:
      return "stopping";
    case child_status::stopped:
      return "stopped";
  }
  return "unknown";
}

} // namespace understudy
