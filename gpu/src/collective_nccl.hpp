#pragma once
// One rank's NCCL communicator, owned by the CUDA backend of a GPU actor:
// collectives run in place on the actor's own buffers and stream. Compiled
// where NCCL was found (UNDERSTUDY_GPU_HAS_NCCL).

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace understudy::gpu::detail {

/// A non-blocking NCCL communicator (ncclConfig_t::blocking = 0) on one
/// device. Not thread-safe: its GPU actor uses it.
class nccl_comm {
public:
  /// Starts joining rank `rank` of `ranks` under unique id `id` on `device`
  /// (ncclCommInitRankConfig) and returns at once; `ready` tells when it has
  /// connected. Connections to the peers are made while joining
  /// (NCCL_RUNTIME_CONNECT=0 unless the environment says otherwise), so that
  /// no collective blocks on a peer later. Errors:
  /// `collective_errc::invalid_argument` for an id of the wrong size or a rank
  /// not below `ranks`, `collective_errc::nccl_error`.
  static caf::expected<std::unique_ptr<nccl_comm>> join(int device, const std::vector<uint8_t>& id,
                                                        uint32_t ranks, uint32_t rank);

  /// Aborts the communicator (never waits for its peers).
  ~nccl_comm();
  nccl_comm(const nccl_comm&) = delete;
  nccl_comm& operator=(const nccl_comm&) = delete;

  /// True once joined, false while joining, or the error that failed it.
  caf::expected<bool> ready();

  /// Enqueues an in-place all-reduce (sum) of x[0 .. n) on `stream`.
  caf::error all_reduce(float* x, size_t n, cudaStream_t stream);

  /// Enqueues an in-place broadcast of rank `root`'s x[0 .. n) on `stream`.
  caf::error broadcast(float* x, size_t n, uint32_t root, cudaStream_t stream);

  /// Aborts the communicator (ncclCommAbort): kernels waiting on a peer
  /// return. Every later call fails.
  void abort() noexcept;

  struct impl;

private:
  explicit nccl_comm(std::unique_ptr<impl> ptr);
  std::unique_ptr<impl> impl_;
};

} // namespace understudy::gpu::detail
