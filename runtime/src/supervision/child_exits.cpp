// How the supervisor answers exits: its stop request, children stopping, crashing, failing.

#include <algorithm>
#include <utility>

#include <caf/exit_reason.hpp>

#include "supervisor_actor.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::supervision_detail {

namespace {

/// Normal and shutdown exits are not failures (OTP's `normal` and `shutdown`).
bool is_normal_exit(const caf::error& reason) {
  return !reason || reason == caf::exit_reason::normal || reason == caf::exit_reason::user_shutdown;
}

} // namespace

void supervisor_actor::on_exit(caf::exit_msg& msg) {
  if (!msg.reason || msg.reason == caf::exit_reason::normal)
    return;
  begin_stop_all(std::move(msg.reason), false);
}

void supervisor_actor::on_down(caf::down_msg& msg) {
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

void supervisor_actor::on_stopped(child_rec* rec, const caf::error& reason) {
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

void supervisor_actor::on_crash(child_rec* rec, const caf::error& reason) {
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

void supervisor_actor::on_start_failed(child_rec* rec, const caf::error& err) {
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

} // namespace understudy::supervision_detail
