#pragma once
// NCCL communicators of a collective group: one rank per device, each with a
// stream and staging buffers of its own. Compiled where NCCL was found
// (UNDERSTUDY_GPU_HAS_NCCL); collective.cpp uses it only then.

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace understudy::gpu::detail {

/// Called once per rank when its part of a collective has completed, with the
/// stream's error; runs on a CUDA-internal thread, so it should only post a message.
using rank_done_handler = std::function<void(size_t rank, caf::error status)>;

/// One NCCL communicator per device, all in this process. Used by one actor
/// (not thread-safe); every call selects the rank's device first.
class nccl_ranks {
public:
  /// Creates the communicators with ncclCommInitAll over `devices` (a fresh
  /// unique id every time), and a non-blocking stream per device. Blocks while
  /// NCCL connects the ranks. Errors: `collective_errc::nccl_error` or the CUDA error.
  static caf::expected<std::unique_ptr<nccl_ranks>> create(const std::vector<int>& devices);

  ~nccl_ranks();
  nccl_ranks(const nccl_ranks&) = delete;
  nccl_ranks& operator=(const nccl_ranks&) = delete;

  /// Enqueues, on every rank's stream: the upload of `inputs[r]` into the
  /// rank's device buffer, then in one ncclGroupStart/End an all-reduce (sum)
  /// when `root` is negative or a broadcast from rank `root`, then the
  /// download of the result, then a stream callback that calls `done(r, err)`.
  /// All inputs have the same size. Precondition: no collective outstanding.
  caf::error enqueue(int root, const std::vector<std::vector<float>>& inputs,
                     rank_done_handler done);

  /// The result of rank `r`, `count` floats, valid once its handler has run
  /// without an error and until the next `enqueue`.
  const float* result(size_t r) const;

  /// Aborts every communicator (ncclCommAbort): kernels waiting on a peer
  /// return, and the group cannot be used any more.
  void abort() noexcept;

  /// Returns e.g. "NCCL 2.28.9 over devices 0, 1".
  std::string describe() const;

  struct impl;

private:
  explicit nccl_ranks(std::unique_ptr<impl> ptr);
  std::unique_ptr<impl> impl_;
};

} // namespace understudy::gpu::detail
