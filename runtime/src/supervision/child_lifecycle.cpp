// The supervisor's child records, events, incarnations (start, stop, readiness) and timers.

#include <algorithm>
#include <chrono>
#include <exception>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/exit_reason.hpp>
#include <caf/send.hpp>

#include "supervisor_actor.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::supervision_detail {

// -- bookkeeping -----------------------------------------------------------------

child_rec* supervisor_actor::find_slot(uint64_t slot) {
  auto i = recs_.find(slot);
  return i == recs_.end() ? nullptr : i->second.get();
}

child_rec* supervisor_actor::find_id(const std::string& id) {
  auto i = by_id_.find(id);
  return i == by_id_.end() ? nullptr : i->second;
}

child_rec* supervisor_actor::add_rec(child_spec spec, caf::message args) {
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

void supervisor_actor::remove_rec(child_rec* rec) {
  fail_waiters(rec, make_error(supervision_errc::child_not_running,
                               "child " + rec->spec.id + " was removed"));
  if (rec->addr)
    by_addr_.erase(rec->addr);
  by_id_.erase(rec->spec.id);
  order_.erase(std::remove(order_.begin(), order_.end(), rec), order_.end());
  recs_.erase(rec->slot); // Destroys rec.
}

void supervisor_actor::fail_waiters(child_rec* rec, const caf::error& err) {
  for (auto& w : rec->waiters)
    w.rp.deliver(err);
  rec->waiters.clear();
}

void supervisor_actor::serve_waiters(child_rec* rec) {
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

// -- events ----------------------------------------------------------------------

void supervisor_actor::record(event_kind kind, const child_rec* rec, std::string reason,
                              std::string action, caf::timespan duration) {
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

// -- starting and stopping incarnations -------------------------------------------

caf::error supervisor_actor::start_incarnation(child_rec& rec) {
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
  adopt(rec, inc, std::move(*res));
  return caf::none;
}

bool supervisor_actor::begin_async_start(child_rec& rec) {
  auto path = child_path(rec.spec);
  auto inc = rec.incarnation + 1;
  auto self = caf::actor_cast<caf::actor>(this);
  child_context ctx{system(),    rec.spec.id, path, inc, rec.args, child_token{self, rec.slot, inc},
                    spec_.events};
  rec.pending_inc = inc;
  rec.ready_early = false;
  rec.status = child_status::starting;
  rec.killed_after_timeout = false;
  start_callback done = [self, slot = rec.slot, inc](caf::expected<caf::actor> res) {
    auto out = std::make_shared<start_outcome>();
    if (res)
      out->handle = std::move(*res);
    else
      out->err = std::move(res.error());
    caf::anon_send(self, start_done_atom::value, slot, inc, std::move(out));
  };
  try {
    rec.spec.start_async(ctx, std::move(done));
  } catch (const std::exception& e) {
    rec.pending_inc = 0;
    on_start_failed(&rec, make_error(supervision_errc::start_failed,
                                     rec.spec.id + ": start function threw: " + e.what()));
    return false;
  }
  return true;
}

start_outcome::~start_outcome() {
  if (!adopted && handle)
    caf::anon_send_exit(handle, caf::exit_reason::kill);
}

bool supervisor_actor::on_start_done(uint64_t slot, uint64_t inc, start_outcome& out) {
  auto& handle = out.handle;
  auto& err = out.err;
  auto* rec = find_slot(slot);
  if (rec == nullptr || rec->pending_inc == 0 || rec->pending_inc != inc)
    return false;
  rec->pending_inc = 0;
  if (rec->status == child_status::stopping) {
    // Stopped (with its siblings, or with the supervisor) while it started.
    if (!handle) {
      on_stopped(rec, err);
      return false;
    }
    // The incarnation is not wanted any more, but it is stopped as any other
    // (its shutdown spec) and the stop goes on only once it is down: the
    // children that started before it stop after it.
    attach(*rec, inc, std::move(handle));
    stop_incarnation(*rec);
    return true;
  }
  if (rec->status != child_status::starting)
    return false;
  if (!handle) {
    on_start_failed(rec, make_error(supervision_errc::start_failed,
                                    rec->spec.id + ": start function returned " +
                                        (err ? describe(err) : std::string{"no actor"})));
    return false;
  }
  bool ready = rec->ready_early;
  rec->ready_early = false;
  adopt(*rec, inc, std::move(handle));
  if (ready)
    on_ready(slot, inc);
  return true;
}

void supervisor_actor::attach(child_rec& rec, uint64_t inc, caf::actor handle) {
  rec.incarnation = inc;
  rec.handle = std::move(handle);
  rec.addr = rec.handle.address();
  rec.killed_after_timeout = false;
  by_addr_[rec.addr] = &rec;
  // Monitor, not link: a child killed with exit_reason::kill must not take
  // the supervisor down (CAF treats kill as fatal for linked actors). on_exit
  // takes care of the other direction.
  monitor(rec.handle);
}

void supervisor_actor::adopt(child_rec& rec, uint64_t inc, caf::actor handle) {
  attach(rec, inc, std::move(handle));
  rec.status = child_status::starting;
  if (rec.spec.start_timeout.count() > 0)
    delayed_send(caf::actor_cast<caf::actor>(this), rec.spec.start_timeout, start_timer_atom::value,
                 rec.slot, inc);
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
}

void supervisor_actor::stop_incarnation(child_rec& rec) {
  rec.status = child_status::stopping;
  if (!rec.handle)
    return; // Its asynchronous start is still at work: on_start_done ends the stop.
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

void supervisor_actor::on_ready(uint64_t slot, uint64_t inc) {
  auto* rec = find_slot(slot);
  if (rec != nullptr && rec->pending_inc != 0 && rec->pending_inc == inc) {
    rec->ready_early = true; // Announced before its start function handed it over.
    return;
  }
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

// -- timers --------------------------------------------------------------------------

void supervisor_actor::on_shutdown_timer(uint64_t slot, uint64_t inc) {
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

void supervisor_actor::on_liveness_timer(uint64_t slot, uint64_t inc) {
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

void supervisor_actor::on_start_timer(uint64_t slot, uint64_t inc) {
  auto* rec = find_slot(slot);
  if (rec == nullptr || rec->incarnation != inc || rec->status != child_status::starting)
    return;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(rec->spec.start_timeout);
  rec->kill_reason =
      make_error(supervision_errc::start_timeout,
                 rec->spec.id + ": not serving after " + std::to_string(ms.count()) + " ms");
  send_exit(rec->handle, caf::exit_reason::kill);
}

} // namespace understudy::supervision_detail
