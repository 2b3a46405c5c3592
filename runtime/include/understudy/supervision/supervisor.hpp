#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/timespan.hpp>

#include "understudy/supervision/child_spec.hpp"
#include "understudy/supervision/restart_policy.hpp"
#include "understudy/supervision/supervision_event.hpp"

namespace understudy {

/// Declares a supervisor: its strategy, its limits and its children.
struct supervisor_spec {
  /// The supervisor's name; its path is the parent's path + "/" + name.
  std::string name = "root";
  restart_strategy strategy = restart_strategy::one_for_one;
  restart_intensity intensity;
  backoff_policy backoff;
  auto_shutdown shutdown_policy = auto_shutdown::never;
  /// Static children, started in this order and stopped in reverse. For
  /// `simple_one_for_one`: exactly one, the template for start_child.
  std::vector<child_spec> children;
  /// Receives every event of this supervisor and (unless they set their own)
  /// of nested supervisors. May be null.
  std::shared_ptr<event_sink> events;
  /// Seed for backoff jitter, so that a run can be reproduced; mixed with the
  /// supervisor's path so that siblings do not back off in lockstep.
  uint64_t seed = 0x5eed;
};

/// Checks `spec` without starting anything: ids unique and non-empty, start
/// functions present, intensity, timeouts and backoff valid. Returns the first
/// problem found, naming the offending child.
caf::error validate(const supervisor_spec& spec);

/// Spawns a root supervisor for `spec`. It starts its children in order as soon
/// as it runs; use `await_ready_atom` (or `runtime::start`) to learn when all are
/// serving or why the start failed. Fails fast with the `validate` error.
caf::expected<caf::actor> spawn_supervisor(caf::actor_system& sys, supervisor_spec spec);

/// A child spec that runs a nested supervisor for `spec`. It is restarted as a
/// unit (with all its children); shutdown defaults to infinity as in OTP.
child_spec supervisor_child(supervisor_spec spec, restart_type restart = restart_type::permanent);

// -- protocol --------------------------------------------------------------------
//
// A supervisor is a dynamically typed actor that answers these requests (any
// actor may send them; responses or errors as listed):
//
//   (await_ready_atom)                   -> ok_atom once all static children serve;
//                                           error start_failed if that failed
//   (which_children_atom)                -> std::vector<child_info>
//   (count_children_atom)                -> child_counts
//   (resolve_atom, id)                   -> caf::actor, the serving incarnation
//                                           (waits while the child restarts)
//   (resolve_atom, id, min_incarnation)  -> caf::actor of an incarnation >= min
//   (start_child_atom, id, caf::message) -> caf::actor; simple_one_for_one: a new
//                                           child from the template, with args
//   (start_child_atom, id)               -> caf::actor; static strategies: restart
//                                           a stopped child (OTP restart_child)
//   (terminate_child_atom, id)           -> ok_atom; stops the child (dynamic
//                                           children are removed)
//   (delete_child_atom, id)              -> ok_atom; removes a stopped child's spec
//
// Local only (child_spec holds std::function): (add_child_atom, child_spec).
// Children report with report_progress/announce_ready (child_spec.hpp).
// A supervisor stops when it receives an exit message from its parent or anyone
// else (e.g. caf::exit_reason::user_shutdown): children stop in reverse start
// order, each within its shutdown spec, then it exits with the same reason.

using await_ready_atom = caf::atom_constant<caf::atom("us_await")>;
using which_children_atom = caf::atom_constant<caf::atom("us_which")>;
using count_children_atom = caf::atom_constant<caf::atom("us_count")>;
using resolve_atom = caf::atom_constant<caf::atom("us_resolve")>;
using start_child_atom = caf::atom_constant<caf::atom("us_start")>;
using add_child_atom = caf::atom_constant<caf::atom("us_add")>;
using terminate_child_atom = caf::atom_constant<caf::atom("us_term")>;
using delete_child_atom = caf::atom_constant<caf::atom("us_delete")>;
using progress_atom = caf::atom_constant<caf::atom("us_progr")>;
using ready_atom = caf::atom_constant<caf::atom("us_ready")>;

/// Where a child is in its life cycle.
enum class child_status : uint8_t {
  /// Started, not yet serving.
  starting,
  /// Serving.
  running,
  /// Exited; waiting for its restart (possibly in backoff).
  restarting,
  /// Being stopped by its supervisor.
  stopping,
  /// Not running and not to be restarted (terminated, or transient after a
  /// normal exit); its spec is kept.
  stopped,
};

/// Returns the name of `x`, e.g. "running".
std::string to_string(child_status x);

/// One row of which_children.
struct child_info {
  std::string id;
  /// Current incarnation; invalid unless starting or running.
  caf::actor handle;
  child_kind kind = child_kind::worker;
  restart_type restart = restart_type::permanent;
  child_status status = child_status::stopped;
  uint64_t incarnation = 0;
  /// How often this child was restarted, by its own crashes or its group's.
  uint64_t restarts = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, child_info& x) {
  return f(caf::meta::type_name("understudy::child_info"), x.id, x.handle, x.kind, x.restart,
           x.status, x.incarnation, x.restarts);
}

/// The answer to count_children (as OTP's count_children).
struct child_counts {
  /// All child specs.
  size_t specs = 0;
  /// Children starting or running.
  size_t active = 0;
  /// Specs of kind supervisor.
  size_t supervisors = 0;
  /// Specs of kind worker.
  size_t workers = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, child_counts& x) {
  return f(caf::meta::type_name("understudy::child_counts"), x.specs, x.active, x.supervisors,
           x.workers);
}

} // namespace understudy

// child_spec holds a std::function: it may be sent locally (add_child_atom), never serialized.
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(understudy::child_spec)
