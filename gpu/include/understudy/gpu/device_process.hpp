#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/timespan.hpp>

#include "understudy/gpu/gpu_actor.hpp"
#include "understudy/process/process_host.hpp"
#include "understudy/supervision/child_spec.hpp"

// A GPU actor in a process of its own, so that a sticky CUDA error, which
// poisons the whole process, costs only that process. It runs on the runtime's
// process host (understudy/process/process_host.hpp): the parent holds a
// keeper that speaks the GPU actor's protocol and exits with a `process_errc`
// error naming the child's exit status (`host_status::poisoned` after a sticky
// CUDA error), so that a supervisor restarts it with a fresh process. The
// child is a program, by default this one, whose main() calls
// `run_device_process_if_requested` first. Messages that cross the boundary
// must be registered on both sides (`register_gpu_types` registers the GPU
// actor's protocol, `register_process_types` the process errors).

namespace understudy::gpu {

// -- a GPU actor per process ----------------------------------------------------------

/// A GPU actor in a process of its own.
struct device_process_options {
  /// The backend and device of the GPU actor.
  gpu_actor_options gpu;
  /// For tests on machines without a device: on the CPU backend, an
  /// `inject_fault` op fails the stream at completion with a sticky error, as
  /// an illegal address does on CUDA, so that the child exits with
  /// `host_status::poisoned` (on CUDA the fault is real anyway).
  bool simulate_sticky_faults = false;
  /// The program and its arguments (see understudy::process_spec); its main() must call
  /// `run_device_process_if_requested` first.
  std::string program = "/proc/self/exe";
  std::vector<std::string> args;
  caf::timespan start_timeout = std::chrono::seconds(60);
};

/// Returns the exit status of a device process whose GPU actor exited with
/// `reason`: 0 (normal), `host_status::poisoned` for a sticky CUDA error,
/// `host_status::failed` for any other.
int device_exit_status(const caf::error& reason);

/// Starts a GPU actor in a fresh process (see understudy::spawn_process_actor) and returns
/// its keeper, which speaks the GPU actor's protocol. `name` names it in errors.
caf::expected<caf::actor> spawn_device_process(caf::actor_system& sys, device_process_options opts,
                                               std::string name);

/// A child spec whose every incarnation is a GPU actor in a fresh process.
child_spec device_process_child(std::string id, device_process_options opts);

/// If this process was started as a device process, runs it (registering the
/// error categories and the GPU protocol's types) and returns its exit status;
/// returns none otherwise. Call it first in main(), before anything touches
/// CUDA, LMDB or threads:
///
///     if (auto status = understudy::gpu::run_device_process_if_requested())
///       return *status;
std::optional<int> run_device_process_if_requested();

} // namespace understudy::gpu
