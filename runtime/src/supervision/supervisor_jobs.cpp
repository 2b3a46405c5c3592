// The supervisor's job queue: start/stop ordering, restart groups, stopping the supervisor.

#include <algorithm>
#include <utility>

#include <caf/exit_reason.hpp>

#include "supervisor_actor.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::supervision_detail {

void supervisor_actor::enqueue(std::unique_ptr<job> j) {
  j->id = ++next_job_;
  jobs_.push_back(std::move(j));
  if (jobs_.size() == 1)
    advance();
}

void supervisor_actor::advance() {
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

void supervisor_actor::step_done() {
  auto* j = current();
  if (j == nullptr || j->steps.empty())
    return;
  j->steps.pop_front();
  advance();
}

void supervisor_actor::lay_out(job& j) {
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

std::vector<uint64_t> supervisor_actor::restart_group(child_rec* trigger) {
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

bool supervisor_actor::begin_step(job& j, job::step& s) {
  switch (s.kind) {
    case job::step_kind::start: {
      auto* rec = find_slot(s.slots.front());
      if (rec == nullptr || rec->status == child_status::running ||
          rec->status == child_status::starting)
        return true; // Removed (temporary sibling) or already up.
      if (rec->spec.start_async) {
        begin_async_start(*rec);
        return false; // Resumed by on_start_done and on_ready, or replaced by on_start_failed.
      }
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

void supervisor_actor::finish(job& j) {
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

// -- stopping the supervisor ---------------------------------------------------------

void supervisor_actor::begin_stop_all(caf::error reason, bool escalation) {
  if (stopping_)
    return;
  replace_with_stop_all(std::move(reason), escalation);
}

void supervisor_actor::replace_with_stop_all(caf::error reason, bool escalation) {
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

void supervisor_actor::check_auto_shutdown() {
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

} // namespace understudy::supervision_detail
