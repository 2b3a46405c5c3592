#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "understudy/state/state_writer.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy {

/// Settings of an embedded runtime.
struct runtime_config {
  /// Scheduler threads; 0 picks CAF's default (one per core).
  size_t worker_threads = 0;
  /// How long a scheduler thread that ran out of work polls for more before it
  /// sleeps until work is queued for it. CAF's default polls for about 25 ms,
  /// waking every 50 us: on a machine with few cores that steals the CPU from
  /// compute-heavy actors (a training step beside its checkpoint ran 40%
  /// slower). Longer polling lowers the latency of work stolen from a busy
  /// scheduler thread; run long computations in detached actors instead.
  std::chrono::microseconds idle_poll{500};
  /// Called on the actor system's config before the system starts: to load
  /// modules (CAF's middleman for a cluster node) and register message types.
  std::function<void(caf::actor_system_config&)> configure;
  /// Default event sink for trees started without one. May be null.
  std::shared_ptr<event_sink> events;
  /// Also log every supervision event to stderr (make_log_sink).
  bool log_events = true;
  /// The lowest level of those log lines: "debug", "info", "warn", "error" or "off".
  std::string log_level = "info";
};

/// A handle to a running supervisor with blocking calls for the embedding
/// program (not for actor handlers: they send the protocol messages of
/// supervisor.hpp instead). Cheap to copy; any thread.
class supervisor_ref {
public:
  supervisor_ref() = default;
  supervisor_ref(caf::actor_system& sys, caf::actor handle);

  /// The supervisor actor.
  const caf::actor& handle() const noexcept { return handle_; }
  explicit operator bool() const noexcept { return static_cast<bool>(handle_); }

  /// All children with status, incarnation and restarts.
  caf::expected<std::vector<child_info>> which_children(
      std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  /// Counts as OTP's count_children.
  caf::expected<child_counts> count_children(
      std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  /// The nested supervisor `id` (a child made with supervisor_child), as a ref.
  caf::expected<supervisor_ref> nested(
      const std::string& id, std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  /// The serving incarnation of child `id` (waits while it restarts).
  caf::expected<caf::actor> resolve(
      const std::string& id, std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  /// simple_one_for_one: a new child `id` from the template with `args`.
  caf::expected<caf::actor> start_child(
      const std::string& id, caf::message args,
      std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  /// Static strategies: adds and starts a new child.
  caf::expected<caf::actor> add_child(
      child_spec spec, std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  /// Stops child `id` (a dynamic child is removed; a static child's spec stays).
  caf::error terminate_child(const std::string& id,
                             std::chrono::milliseconds timeout = std::chrono::seconds(30)) const;
  /// Starts a stopped static child again.
  caf::expected<caf::actor> restart_child(
      const std::string& id, std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  /// Removes a stopped static child's spec.
  caf::error delete_child(const std::string& id,
                          std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;

private:
  caf::actor_system* sys_ = nullptr;
  caf::actor handle_;
};

/// The understudy runtime embedded in a service: owns the CAF actor system and
/// the supervision trees started through it. No global state: create it in
/// main() (or the service) and pass it down. Not copyable; its methods may be
/// called from any non-actor thread.
class runtime {
public:
  explicit runtime(runtime_config cfg = {});
  /// Stops all trees (as `shutdown`) and then the actor system.
  ~runtime();

  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  /// The actor system, for spawning actors and sending messages.
  caf::actor_system& system() noexcept;

  /// The sink that logs supervision events (runtime_config::log_events), or
  /// null. start() adds it to the root's events; a nested supervisor that
  /// sets events of its own adds it itself to have them logged.
  std::shared_ptr<event_sink> log_sink() const noexcept;

  /// Starts a supervision tree and blocks until all its children serve.
  /// Errors: the `validate` error for a bad spec; `start_failed` naming the
  /// child that failed to start (nothing stays running then); `timeout`.
  caf::expected<supervisor_ref> start(supervisor_spec spec,
                                      std::chrono::milliseconds timeout = std::chrono::seconds(30));

  /// Stops one tree gracefully (children in reverse start order, each within its
  /// shutdown spec) and waits for it. Returns `timeout` if it did not finish.
  caf::error stop(const supervisor_ref& tree,
                  std::chrono::milliseconds timeout = std::chrono::seconds(60));

  /// Opens the node's state store under `cfg.directory` and spawns its writer,
  /// once per runtime: later calls return the same persistence (an error if
  /// they name another directory). Stopped by `shutdown`, after the trees.
  /// Errors: those of state_store::open (locked, invalid_config, io_error, ...).
  caf::expected<persistence> open_state(state_store_config cfg = {},
                                        state_writer_config writer = {});

  /// Stops all trees started here, newest first, then the state writer.
  void shutdown(std::chrono::milliseconds timeout = std::chrono::seconds(60));

  /// Renders `err` with all registered categories.
  std::string render(const caf::error& err) const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace understudy
