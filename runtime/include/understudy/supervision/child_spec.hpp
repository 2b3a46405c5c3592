#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/message.hpp>
#include <caf/spawn_options.hpp>
#include <caf/timespan.hpp>

#include "understudy/supervision/restart_policy.hpp"

namespace understudy {

class event_sink;

/// Lets a child tell its supervisor that it is ready or still making progress.
/// Cheap to copy; valid for one incarnation of one child. Any actor may use it.
struct child_token {
  /// The supervising actor.
  caf::actor supervisor;
  /// The child's slot in its supervisor (stable across restarts).
  uint64_t slot = 0;
  /// The incarnation this token belongs to (1 for the first start).
  uint64_t incarnation = 0;

  /// Returns whether the token names a supervisor.
  explicit operator bool() const noexcept { return static_cast<bool>(supervisor); }
};

/// Reports progress for the liveness deadline (typically from the child's own
/// handlers, once per unit of work). Any thread; a no-op for an empty token.
void report_progress(const child_token& token);

/// Announces that the child is serving; required once per incarnation for
/// children whose spec sets `announces_ready`. Any thread; a no-op for an empty token.
void announce_ready(const child_token& token);

/// What a start function gets: where the child lives and how to talk back.
/// Valid only during the call of the start function (it runs inside the
/// supervisor's handler); copy what the child needs.
struct child_context {
  /// The actor system to spawn in.
  caf::actor_system& system;
  /// The child's id within its supervisor.
  const std::string& id;
  /// The child's path in the tree, e.g. "/job/workers/worker-1".
  const std::string& path;
  /// 1 for the first start, +1 for each restart.
  uint64_t incarnation;
  /// Arguments given to start_child (simple_one_for_one); empty otherwise.
  const caf::message& args;
  /// For progress and readiness reports.
  child_token token;
  /// The supervisor's event sink (may be null); nested supervisors inherit it.
  const std::shared_ptr<event_sink>& events;
};

/// Starts one incarnation of a child and returns its handle, or an error that
/// fails the start. Runs on the supervisor's thread: it must not block.
using start_function = std::function<caf::expected<caf::actor>(child_context&)>;

/// Hands the outcome of an asynchronous start to the supervisor: the new
/// incarnation, or the error that fails the start. Call it exactly once, from
/// any thread; it does not block. When the supervisor no longer wants the
/// incarnation (it stopped the child, or ended, meanwhile), the actor handed
/// over is killed.
using start_callback = std::function<void(caf::expected<caf::actor>)>;

/// Starts one incarnation without holding up the supervisor: begins the work
/// elsewhere (e.g. on a blocking actor of its own) and returns at once; that
/// work calls `done` once. Meanwhile the supervisor goes on handling its
/// other children's exits and answering requests (`which_children` shows the
/// child as starting, without a handle). For starts that wait on other nodes,
/// e.g. cluster_node::placed. `ctx` is valid only during the call: copy what
/// the work needs. A child's `start_timeout` counts from when `done` hands
/// the incarnation over.
using async_start_function = std::function<void(child_context& ctx, start_callback done)>;

/// Whether a child is a worker or a supervisor (which changes defaults only).
enum class child_kind : uint8_t { worker, supervisor };

/// Declares one child of a supervisor.
struct child_spec {
  /// Unique among the supervisor's children; part of the child's path.
  std::string id;
  /// Creates a new incarnation. A spec sets this or start_async, not both.
  start_function start;
  /// Creates a new incarnation asynchronously (see async_start_function).
  async_start_function start_async;
  restart_type restart = restart_type::permanent;
  shutdown_spec shutdown = shutdown_spec::after(std::chrono::seconds(5));
  child_kind kind = child_kind::worker;
  /// A child with no progress report within this span is treated as hung:
  /// killed and restarted. Zero disables the check.
  caf::timespan liveness_deadline{0};
  /// If set, the child is serving only after it calls announce_ready (e.g. once
  /// it has loaded its state); otherwise once it has processed its first message.
  bool announces_ready = false;
  /// A child that is not serving within this span failed to start. Zero: no limit.
  caf::timespan start_timeout{0};
  /// With the supervisor's auto_shutdown, a significant child's exit stops the
  /// supervisor. Only for transient and temporary children.
  bool significant = false;
};

/// Makes an exception that escapes one of `self`'s handlers end the actor with
/// `caf::sec::runtime_error` carrying the exception's message, so that the
/// supervisor's events say what went wrong (CAF's default handler drops it).
/// Call it first thing in the actor's initialisation.
void capture_exceptions(caf::scheduled_actor* self);

/// Convenience: a child spec for `fn` spawned as an actor with `args`, i.e.
/// `sys.spawn<Os>(fn, args...)`. For a function taking `caf::event_based_actor*`,
/// exceptions are captured (capture_exceptions) before `fn` runs. Pass
/// `caf::detached` as `Os` for an actor whose handlers compute for long (a
/// training worker): it gets a thread of its own and leaves the scheduler's
/// threads to the others.
template <caf::spawn_options Os = caf::no_spawn_options, class F, class... Ts>
child_spec worker(std::string id, F fn, Ts... args) {
  child_spec spec;
  spec.id = std::move(id);
  spec.start = [fn, args...](child_context& ctx) -> caf::expected<caf::actor> {
    if constexpr (std::is_invocable_v<F, caf::event_based_actor*, Ts...>) {
      return caf::actor{ctx.system.spawn<Os>([fn, args...](caf::event_based_actor* self) {
        capture_exceptions(self);
        return fn(self, args...);
      })};
    } else {
      return caf::actor{ctx.system.spawn<Os>(fn, args...)};
    }
  };
  return spec;
}

} // namespace understudy
