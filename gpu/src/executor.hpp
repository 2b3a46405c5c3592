#pragma once
// Runs op batches (ops.hpp) on a backend through the op table (op_table.hpp):
// checks a batch as a whole, then enqueues its operations, staging uploads and
// downloads in host memory.

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caf/error.hpp>

#include "op_table.hpp"
#include "understudy/gpu/backend.hpp"
#include "understudy/gpu/ops.hpp"

namespace understudy::gpu {

/// Owns the buffers of one GPU actor by id and turns ops into backend calls.
/// Used by one actor; not thread-safe.
class executor {
public:
  using download_slot = gpu::download_slot;

  explicit executor(backend& be) : be_(be) {
    // nop
  }

  executor(const executor&) = delete;
  executor& operator=(const executor&) = delete;

  ~executor() { release_all(); }

  /// Checks every op of `batch` against the buffers as they will be when it
  /// runs (including its own allocations and releases): ids, bounds, sizes
  /// against shapes, operand counts, aliasing. Returns
  /// `gpu_errc::invalid_argument` naming the op's index, code and problem.
  caf::error validate(const op_batch& batch) const;

  /// Returns the host staging bytes `batch` needs for its uploads and downloads.
  static size_t staging_bytes(const op_batch& batch);

  /// Enqueues the ops of a validated `batch` in order. Uploads are copied into
  /// `staging` first; downloads land there at the offsets appended to
  /// `downloads`. `staging` must hold `staging_bytes(batch)` bytes and stay
  /// alive until the backend reports the work done. Returns the first error;
  /// the ops before it were enqueued.
  caf::error enqueue(const op_batch& batch, std::byte* staging,
                     std::vector<download_slot>& downloads);

  /// Releases every buffer (stream-ordered).
  void release_all() noexcept;

  /// Returns buffer `id`'s memory and element count, or {nullptr, 0} if there is none.
  std::pair<float*, uint64_t> buffer_of(buffer_id id) const;

  /// Returns the number of live buffers.
  size_t buffer_count() const noexcept { return buffers_.size(); }

  // -- for the op table's enqueue functions -----------------------------------------------

  /// Returns the backend the ops run on.
  backend& device() noexcept { return be_; }

  /// Returns the memory of `x`, whose buffer exists (a validated op's operand).
  float* at(const slice& x) const;

  /// Allocates buffer `id` of `count` elements; the backend's error otherwise.
  caf::error create(buffer_id id, uint64_t count);

  /// Releases buffer `id`, which exists (stream-ordered).
  void destroy(buffer_id id) noexcept;

private:
  struct buffer {
    void* ptr = nullptr;
    uint64_t count = 0;
  };

  backend& be_;
  std::unordered_map<buffer_id, buffer> buffers_;
};

} // namespace understudy::gpu
