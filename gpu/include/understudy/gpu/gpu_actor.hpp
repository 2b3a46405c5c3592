#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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

/// `(gpu_comm_join_atom, std::vector<uint8_t> id, uint32_t ranks, uint32_t rank)`
/// -> `caf::ok_atom`: joins a collective group's communicator (see
/// spawn_gpu_actor). Sent by collective groups.
using gpu_comm_join_atom = caf::atom_constant<caf::atom("gpu_cjoin")>;

/// `(gpu_comm_abort_atom)`: aborts the communicator (see spawn_gpu_actor).
/// Sent by a failing collective group.
using gpu_comm_abort_atom = caf::atom_constant<caf::atom("gpu_cabrt")>;

/// `(gpu_restore_atom, restore_plan)` -> `uint64_t`: copies tensors of a
/// stored version straight from the state store into buffers (see
/// spawn_gpu_actor); answers the bytes copied.
using gpu_restore_atom = caf::atom_constant<caf::atom("gpu_rstor")>;

/// One tensor of a restore: the record's tensor `tensor` (float32) fills
/// buffer `buffer`, which must exist and hold exactly its elements.
struct restore_target {
  std::string tensor;
  buffer_id buffer = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, restore_target& x) {
  return f(caf::meta::type_name("understudy::gpu::restore_target"), x.tensor, x.buffer);
}

/// Which stored tensors a GPU actor reads into its buffers: version `step` of
/// `path` in the state store in `directory` (opened read-only in the GPU
/// actor's process, or shared where that process already has it open).
struct restore_plan {
  std::string directory;
  std::string path;
  uint64_t step = 0;
  std::vector<restore_target> targets;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, restore_plan& x) {
  return f(caf::meta::type_name("understudy::gpu::restore_plan"), x.directory, x.path, x.step,
           x.targets);
}

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
/// - `(gpu_restore_atom, restore_plan)` -> `uint64_t`. Streams the plan's
///   tensors from the memory-mapped store chunk by chunk (each chunk's
///   checksum verified as it is copied) through a few page-locked staging
///   blocks onto the stream, so that copying the next chunk overlaps the
///   transfer of the last; no copy of the state passes through messages or
///   another process. Batches that arrive meanwhile wait, and run once the
///   restore is on the stream in full. A stored version that is missing,
///   corrupt or does not fit the buffers fails only the request (the buffers
///   may then hold part of it); a CUDA error fails the actor.
/// - `(gpu_comm_join_atom, id, ranks, rank)` -> `caf::ok_atom`: joins the
///   communicator `id` (make_comm_id) as rank `rank` of `ranks` without
///   blocking (the backend's join is polled), so that `all_reduce` and
///   `broadcast` ops run in place on this actor's buffers and stream.
///   Replaces an earlier communicator. `unsupported` on the CPU backend.
/// - `(gpu_comm_abort_atom)`: aborts the communicator (ncclCommAbort), so that
///   a collective stuck on a dead peer returns; the buffers it wrote hold
///   garbage until they are restored. The actor carries on.
/// - `(gpu_info_atom)` -> `std::string`.
///
/// Errors: `gpu_errc::no_cuda` or `no_device` or the failing CUDA call when the
/// backend cannot be created; nothing is spawned then.
caf::expected<caf::actor> spawn_gpu_actor(caf::actor_system& sys, gpu_actor_options opts);

/// Spawns a GPU actor that takes ownership of `be`; see the other overload.
/// Precondition: `be` is not null.
caf::actor spawn_gpu_actor(caf::actor_system& sys, std::unique_ptr<backend> be);

} // namespace understudy::gpu
