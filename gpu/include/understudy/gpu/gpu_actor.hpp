#pragma once

#include <memory>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "understudy/gpu/backend.hpp"
#include "understudy/gpu/ops.hpp"

namespace understudy::gpu {

/// `(gpu_run_atom, op_batch)` -> `batch_result`: runs a batch of operations.
using gpu_run_atom = caf::atom_constant<caf::atom("gpu_run")>;

/// `(gpu_info_atom)` -> `std::string`: the backend's `describe()`.
using gpu_info_atom = caf::atom_constant<caf::atom("gpu_info")>;

/// What a GPU actor runs on.
struct gpu_actor_options {
  backend_kind kind = backend_kind::cpu;
  /// CUDA device ordinal (ignored for the CPU backend).
  int device = 0;
};

/// Spawns a GPU actor that owns one backend: on CUDA one device, one stream and
/// its cuBLAS handle; or the CPU backend. It holds the buffers that batches
/// allocate, by id, until they are released or it exits.
///
/// Protocol:
/// - `(gpu_run_atom, op_batch)` -> `batch_result`. The batch is checked first;
///   `gpu_errc::invalid_argument` means nothing ran and the actor carries on.
///   Otherwise its operations are enqueued on the stream at once and the reply
///   comes when they have completed, delivered by a CUDA host callback as a
///   message: the actor never blocks its scheduler thread and accepts further
///   batches meanwhile. Batches run and are answered in arrival order.
///   `gpu_errc::out_of_memory` fails only that batch (operations before the
///   failing allocation did run). Any other failure (a CUDA or cuBLAS error, a
///   sticky error, a fault) is replied to every pending request and the actor
///   exits with that error, naming the CUDA error, so that its supervisor
///   restarts it (with a sticky error: in a fresh process).
/// - `(gpu_info_atom)` -> `std::string`.
///
/// Errors: `gpu_errc::no_cuda` or `no_device` or the failing CUDA call when the
/// backend cannot be created; nothing is spawned then.
caf::expected<caf::actor> spawn_gpu_actor(caf::actor_system& sys, gpu_actor_options opts);

/// Spawns a GPU actor that takes ownership of `be`; see the other overload.
/// Precondition: `be` is not null.
caf::actor spawn_gpu_actor(caf::actor_system& sys, std::unique_ptr<backend> be);

} // namespace understudy::gpu
