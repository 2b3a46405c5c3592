// The supervisor's requests: queries; adding, starting, terminating children; dynamic children.

#include <utility>

#include "supervisor_actor.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::supervision_detail {

// -- queries ---------------------------------------------------------------------

std::vector<child_info> supervisor_actor::which_children() {
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

child_counts supervisor_actor::count_children() {
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

caf::result<caf::actor> supervisor_actor::resolve(const std::string& id, uint64_t min_incarnation) {
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

// -- adding, starting and removing children ----------------------------------------

template <class T>
caf::typed_response_promise<T> supervisor_actor::request_job(job::purpose what, child_rec* rec,
                                                             bool added) {
  auto j = std::make_unique<job>();
  j->what = what;
  j->trigger = rec->slot;
  j->added = added;
  auto rp = make_response_promise<T>();
  j->rp = rp;
  enqueue(std::move(j));
  return rp;
}

caf::result<caf::actor> supervisor_actor::start_new_child(child_spec spec, caf::message args) {
  if (stopping_)
    return make_error(supervision_errc::supervisor_stopping, path_);
  if (auto err = validate_child_spec(spec))
    return err;
  if (find_id(spec.id) != nullptr)
    return make_error(supervision_errc::duplicate_child_id, spec.id);
  auto* rec = add_rec(std::move(spec), std::move(args));
  return request_job<caf::actor>(job::purpose::start_one, rec, true);
}

caf::result<caf::actor> supervisor_actor::start_dynamic_child(const std::string& id,
                                                              caf::message& args) {
  if (!dynamic())
    return make_error(supervision_errc::wrong_strategy,
                      path_ +
                          ": start_child with arguments needs simple_one_for_one; "
                          "use add_child or restart_child");
  auto spec = spec_.children.front();
  spec.id = id;
  return start_new_child(std::move(spec), std::move(args));
}

caf::result<caf::actor> supervisor_actor::restart_child(const std::string& id) {
  child_rec* rec = nullptr;
  if (auto err = stopped_static_child("restart_child", id, rec))
    return err;
  if (stopping_)
    return make_error(supervision_errc::supervisor_stopping, path_);
  rec->status = child_status::restarting;
  return request_job<caf::actor>(job::purpose::start_one, rec, false);
}

caf::result<caf::actor> supervisor_actor::add_child(child_spec& spec) {
  if (dynamic())
    return make_error(supervision_errc::wrong_strategy,
                      path_ +
                          ": simple_one_for_one children come from its template; "
                          "use start_child with arguments");
  return start_new_child(std::move(spec), caf::message{});
}

caf::result<caf::ok_atom> supervisor_actor::terminate_child(const std::string& id) {
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
}

caf::result<caf::ok_atom> supervisor_actor::delete_child(const std::string& id) {
  child_rec* rec = nullptr;
  if (auto err = stopped_static_child("delete_child", id, rec))
    return err;
  remove_rec(rec);
  return caf::ok_atom::value;
}

caf::error supervisor_actor::stopped_static_child(const char* request, const std::string& id,
                                                  child_rec*& rec) {
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

} // namespace understudy::supervision_detail
