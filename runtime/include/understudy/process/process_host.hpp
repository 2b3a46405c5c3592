#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/timespan.hpp>

#include "understudy/core/errors.hpp"

// Actors in child processes. A process that hosts one actor is started with
// fork+exec (posix_spawn) of a program, by default this one, whose main() asks
// first whether it was started to host an actor (`actor_host_role_from_env`)
// and if so runs `run_actor_host` and nothing else. The child runs an actor
// system with CAF's middleman, publishes its actor on 127.0.0.1 (an ephemeral
// port; loopback only) and reports the port through a pipe; the parent
// connects with the middleman, monitors the remote actor and reaps the
// process, whose exit status says why it ended. A parent-side actor (the
// keeper) stands for the remote one: it forwards every message to it, and
// exits with an error naming the status when the process ends, so that a
// supervisor restarts it — with a fresh process.
//
// Any actor can be hosted this way; understudy::gpu uses it to host a GPU
// actor per device (gpu/device_process.hpp), so that a sticky CUDA error,
// which poisons the whole process, costs only that process. Messages that
// cross the boundary must be registered on both sides (the child's through
// the `configure` argument of `run_actor_host`).

namespace understudy {

// -- exit statuses --------------------------------------------------------------------

/// The exit statuses of a process that hosts an actor (`run_actor_host`):
/// 0 when its actor exited normally, otherwise one of these.
struct host_status {
  /// The hosted actor reported the process itself unusable (e.g. a sticky
  /// CUDA error poisoned its CUDA context): only a fresh process can serve again.
  static constexpr int poisoned = 70;
  /// The hosted actor failed with another error, or could not be started or published.
  static constexpr int failed = 71;
  /// The parent was gone before the child started (it exits with the parent).
  static constexpr int orphaned = 72;
};

// -- errors ---------------------------------------------------------------------------

/// Why a process hosting an actor ended or could not be used. The context
/// names the process (its name and pid), its exit status or signal, what the
/// status means, and the hosted actor's own exit reason where the child
/// reported it, e.g. "gpu-1 (pid 4242) exited with status 70 (poisoned): ...
/// sticky_cuda_error: stream work on device 0: cudaErrorIllegalAddress (700) ...".
/// `spawn_failed` and `no_middleman` give up; the others start a fresh
/// process (`retry_now`).
enum class process_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// The program could not be started (posix_spawn failed); the context has errno.
  spawn_failed,
  /// The child did not report its actor in time, ended before it did, or the
  /// connection to it failed.
  start_failed,
  /// The child exited with `host_status::poisoned`: its process is unusable
  /// (e.g. its CUDA context is poisoned).
  poisoned,
  /// The child exited with `host_status::failed`: its actor failed.
  actor_failed,
  /// The child exited with another status, or was killed by a signal (a crash,
  /// or the keeper killing a child whose connection was lost).
  crashed,
  /// The parent's actor system has no middleman (load caf::io::middleman).
  no_middleman,
};

/// Declares `process_errc`.
template <>
struct error_traits<process_errc> {
  static constexpr caf::atom_value category = caf::atom("us_proc");
  static constexpr error_value<process_errc> values[] = {
      {process_errc::none, "none", "not an error", next_step::give_up},
      {process_errc::spawn_failed, "spawn_failed", "the program could not be started",
       next_step::give_up},
      {process_errc::start_failed, "start_failed", "the child did not report its actor",
       next_step::retry_now},
      {process_errc::poisoned, "poisoned", "the child's process is unusable", next_step::retry_now},
      {process_errc::actor_failed, "actor_failed", "the child's actor failed",
       next_step::retry_now},
      {process_errc::crashed, "crashed", "the child crashed or was killed", next_step::retry_now},
      {process_errc::no_middleman, "no_middleman", "the actor system has no middleman",
       next_step::give_up},
  };
};

/// Error category atom for `process_errc`, as carried in `caf::error`.
constexpr caf::atom_value process_category = error_traits<process_errc>::category;

/// Registers the `process_errc` category with `cfg`: call it wherever a system
/// hosts or talks to child processes (`run_actor_host` does for the child).
void register_process_types(caf::actor_system_config& cfg);

// -- the parent's side ----------------------------------------------------------------

/// How to start a process that hosts one actor.
struct process_spec {
  /// A name for errors and logs, e.g. "gpu-1".
  std::string name;
  /// The program to run; this program by default.
  std::string program = "/proc/self/exe";
  /// Its arguments after argv[0] (e.g. a test filter).
  std::vector<std::string> args;
  /// What the child should host, as key=value pairs that its `actor_host_role`
  /// carries (through the environment; keys and values without ';' and '=').
  std::map<std::string, std::string> role;
  /// The child has this long from its start to report its actor.
  caf::timespan start_timeout = std::chrono::seconds(60);
  /// Once the connection to the child is lost, it has this long to exit
  /// before it is killed (SIGKILL).
  caf::timespan exit_timeout = std::chrono::seconds(5);
  /// Connect to the child over mutual TLS with the parent's openssl module
  /// (CAF's, loaded into the parent's actor system), so that no other local
  /// process can talk to its actor. The child's `configure` (run_actor_host)
  /// must load the openssl module with credentials the parent accepts and that
  /// accept the parent's (e.g. prepare_hosted_process_tls); it then publishes
  /// over TLS. Without it the child publishes plain TCP on loopback.
  bool tls = false;
};

/// Starts a process for `spec` and returns at once the keeper: a local actor
/// that stands for the remote one. Messages sent to the keeper before the
/// child's actor is connected wait; then every message is forwarded to it in
/// order (requests are answered by the remote actor directly). The keeper
/// exits
/// - normally, when the child's actor exited normally (status 0);
/// - with a `process_errc` error naming the exit status otherwise: `poisoned`,
///   `actor_failed`, `crashed`; `start_failed` when the child did not come up.
/// When the keeper exits for any reason (an exit message, a link), the child is
/// killed (SIGKILL) and reaped. A helper thread per child starts it, reads its
/// reports and reaps it (waitpid), so no scheduler thread blocks. As with any
/// remote actor, a request that the child's actor had taken when the process
/// died may go unanswered: monitor (or link to) the keeper.
///
/// Errors: `no_middleman` if `sys` was built without CAF's middleman, or
/// without its openssl module for a spec with `tls`.
caf::expected<caf::actor> spawn_process_actor(caf::actor_system& sys, process_spec spec);

// -- the child's side -----------------------------------------------------------------

/// What a process started by `spawn_process_actor` is to host, read from its
/// environment.
struct actor_host_role {
  /// The pairs of `process_spec::role`.
  std::map<std::string, std::string> values;
  /// Where the child reports its port and, at its end, its actor's exit reason.
  int report_fd = -1;
  /// The pid of the parent that started it.
  int parent = 0;

  /// Returns the value of `key`, or `fallback`.
  std::string get(const std::string& key, const std::string& fallback = {}) const;
};

/// Returns the role of this process if `spawn_process_actor` started it
/// (its environment says so), none otherwise. Cheap; call it first in main(),
/// before anything starts threads or opens LMDB:
///
///     if (auto role = understudy::actor_host_role_from_env())
///       if (role->get("actor") == "mine")
///         return understudy::run_actor_host(*role, configure, make, status_of);
std::optional<actor_host_role> actor_host_role_from_env();

/// Runs the child's side for `role`: closes inherited file descriptors (but
/// stdio and the report pipe), makes the process die with its parent, builds
/// an actor system with the middleman and understudy's error categories
/// (`configure` registers further message types and categories), spawns the
/// actor with `make`, publishes it on 127.0.0.1 at an ephemeral port, reports
/// the port, and waits for the actor to exit. Then it reports the exit reason
/// and ends the process at once (std::_Exit) with `status_of(reason)` (0 for a
/// normal exit): a poisoned CUDA context must not hold up the exit. An empty
/// `status_of` gives 0 for a normal exit and `host_status::failed` otherwise.
/// Never returns on success; returns `host_status::failed` or `orphaned` if it
/// could not start.
int run_actor_host(const actor_host_role& role,
                   const std::function<void(caf::actor_system_config&)>& configure,
                   const std::function<caf::expected<caf::actor>(caf::actor_system&)>& make,
                   const std::function<int(const caf::error&)>& status_of);

} // namespace understudy
