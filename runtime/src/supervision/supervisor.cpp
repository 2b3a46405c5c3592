// The supervisor actor's behavior (its message handlers) and the functions that spawn it.

#include <string>
#include <utility>

#include <caf/actor_system.hpp>

#include "supervisor_actor.hpp"
#include "understudy/core/errors.hpp"

namespace understudy {

namespace supervision_detail {

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
      [this](start_child_atom, const std::string& id, caf::message& args) {
        return start_dynamic_child(id, args);
      },
      [this](start_child_atom, const std::string& id) { return restart_child(id); },
      [this](add_child_atom, child_spec& spec) { return add_child(spec); },
      [this](terminate_child_atom, const std::string& id) { return terminate_child(id); },
      [this](delete_child_atom, const std::string& id) { return delete_child(id); },
      [this](ready_atom, uint64_t slot, uint64_t inc) { on_ready(slot, inc); },
      [this](start_done_atom, uint64_t slot, uint64_t inc, const start_outcome_ptr& out) {
        if (out)
          out->adopted = on_start_done(slot, inc, *out);
      },
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

} // namespace supervision_detail

using supervision_detail::spawn_supervisor_impl;

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
