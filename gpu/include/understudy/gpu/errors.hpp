#pragma once

#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/fwd.hpp>

#include "understudy/core/errors.hpp"

namespace understudy::gpu {

/// Failures of device discovery, backends and GPU actors. The context of every
/// error is one message naming the call or operation and, for a CUDA, cuBLAS or
/// NCCL failure, the original code by name and number, e.g.
/// "cudaMemcpyAsync on device 0: cudaErrorIllegalAddress (700): an illegal
/// memory access was encountered". `invalid_argument`, `unsupported`, `no_cuda`
/// and `no_device` give up; `out_of_memory` backs off; a CUDA or cuBLAS error
/// retries on a fresh backend (`retry_now`); a sticky error gives up in this
/// process (its supervisor starts a fresh one).
enum class gpu_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// understudy::gpu was built without CUDA, so no CUDA backend exists.
  no_cuda,
  /// The requested device does not exist, or no CUDA device or driver is present.
  no_device,
  /// A CUDA runtime call or kernel failed with an error that leaves the CUDA
  /// context usable (e.g. an invalid launch configuration): the backend can be
  /// rebuilt in the same process.
  cuda_error,
  /// A CUDA error that poisons the process's CUDA context (illegal address,
  /// launch failure, hardware exception, ...): every later CUDA call in this
  /// process fails, so the process must exit and be started afresh.
  sticky_cuda_error,
  /// A cuBLAS call failed.
  cublas_error,
  /// Device or pinned host memory is exhausted.
  out_of_memory,
  /// An operation's arguments are wrong: unknown or duplicate buffer, a slice
  /// outside its buffer, sizes that do not fit the shape, a label not below the
  /// class count. Nothing of the failing operation ran.
  invalid_argument,
  /// The backend does not implement the operation (e.g. fault injection on the CPU).
  unsupported,
};

// The generic error functions of understudy/core/errors.hpp, found here by
// qualified calls (gpu::to_string) and by argument-dependent lookup.
using understudy::description;
using understudy::is;
using understudy::make_error;
using understudy::next_step_for;
using understudy::to_string;

} // namespace understudy::gpu

namespace understudy {

/// Declares `gpu::gpu_errc`.
template <>
struct error_traits<gpu::gpu_errc> {
  using errc = gpu::gpu_errc;
  static constexpr caf::atom_value category = caf::atom("us_gpu");
  static constexpr error_value<errc> values[] = {
      {errc::none, "none", "not an error", next_step::give_up},
      {errc::no_cuda, "no_cuda", "built without CUDA", next_step::give_up},
      {errc::no_device, "no_device", "no such CUDA device, or no device or driver",
       next_step::give_up},
      {errc::cuda_error, "cuda_error", "a CUDA call failed; the context is still usable",
       next_step::retry_now},
      {errc::sticky_cuda_error, "sticky_cuda_error", "a CUDA error poisoned the process's context",
       next_step::give_up},
      {errc::cublas_error, "cublas_error", "a cuBLAS call failed", next_step::retry_now},
      {errc::out_of_memory, "out_of_memory", "device or pinned host memory is exhausted",
       next_step::back_off},
      {errc::invalid_argument, "invalid_argument", "an operation's arguments are wrong",
       next_step::give_up},
      {errc::unsupported, "unsupported", "the backend does not implement the operation",
       next_step::give_up},
  };
};

} // namespace understudy

namespace understudy::gpu {

/// Error category atom for `gpu_errc`, as carried in `caf::error`.
constexpr caf::atom_value gpu_category = error_traits<gpu_errc>::category;

/// Registers the `gpu_errc` category (rendered by name) and the message types
/// of the GPU actor protocol (gpu_actor.hpp) with `cfg`, so that they render
/// readably and cross node and process boundaries. Call before creating the
/// actor system; local use works without it.
void register_gpu_types(caf::actor_system_config& cfg);

} // namespace understudy::gpu
