#pragma once
// The op table: per op code, its name, the check of its arguments within a
// batch, the host staging it needs and how it is enqueued on a backend. The
// executor runs batches through it; a new op is one entry here, its builder in
// ops.hpp and its backend operation (backend.hpp, the backends' kernels).

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <caf/error.hpp>

#include "understudy/gpu/ops.hpp"

namespace understudy::gpu {

class executor;

/// The buffers of a GPU actor as they will be when an op runs: id -> elements.
using buffer_sizes = std::unordered_map<buffer_id, uint64_t>;

/// Checks op number `index` of a batch against `sizes`, which allocate and
/// release update. Every refusal is `gpu_errc::invalid_argument` naming the
/// op's index, its name and the problem.
class op_checker {
public:
  /// Marks an element count that matches no slice (an overflowing shape).
  static constexpr uint64_t npos = std::numeric_limits<uint64_t>::max() - 1;

  /// The most elements a buffer may have (its bytes and twice that fit size_t).
  static constexpr uint64_t max_elements = std::numeric_limits<size_t>::max() / 4 / 2;

  op_checker(buffer_sizes& sizes, size_t index, const op& x);

  const op& x() const noexcept { return op_; }

  buffer_sizes& sizes() noexcept { return sizes_; }

  /// Returns the refusal of this op for `what`.
  caf::error fail(const std::string& what) const;

  /// Refuses other counts of operands, sizes and scalars, and data outside uploads.
  caf::error shape(size_t operands, size_t sizes, size_t scalars) const;

  /// Refuses operand `i` (called `name`) unless it lies in a live buffer and,
  /// unless `want` is npos, holds exactly `want` elements.
  caf::error operand(size_t i, const char* name, uint64_t want = npos) const;

  /// Refuses operands of different counts.
  caf::error all_operands_same_count() const;

  /// Refuses operands that partly overlap (the same range is fine).
  caf::error pairwise_same_or_disjoint() const;

  /// `operands` element-wise operands of one count, `scalars` and `sizes`.
  caf::error elementwise(size_t operands, size_t scalars, size_t sizes = 0) const;

  /// Returns a * b, or npos on overflow.
  static uint64_t product(uint64_t a, uint64_t b);

  static bool overlaps(const slice& x, const slice& y);

  static std::string show(const slice& x);

private:
  buffer_sizes& sizes_;
  size_t index_;
  const op& op_;
};

/// Where one download of a batch lands in its staging block.
struct download_slot {
  size_t offset = 0;
  size_t count = 0;
};

/// What an op is enqueued on: an executor's backend and buffers, and the
/// batch's host staging block (uploads are copied into it, downloads land in
/// it at the slots appended to `downloads`).
struct op_run {
  executor& exec;
  std::byte* staging;
  std::vector<download_slot>& downloads;
  /// Bytes of `staging` used by the ops before.
  size_t staged = 0;

  /// Reserves staging for `bytes` (aligned) and returns its start.
  std::byte* stage(size_t bytes);
};

/// One entry of the op table.
struct op_spec {
  op_code code;
  std::string_view name;
  /// Checks the op within its batch (see op_checker).
  caf::error (*check)(op_checker& c);
  /// Host staging bytes the op needs (0 for most).
  size_t (*staging)(const op& x);
  /// Enqueues a checked op.
  caf::error (*enqueue)(op_run& run, const op& x);
};

/// The entries, in op_code order.
struct op_table_view {
  const op_spec* first;
  size_t size;
  const op_spec* begin() const noexcept { return first; }
  const op_spec* end() const noexcept { return first + size; }
};

/// Returns every op's entry.
op_table_view op_table() noexcept;

/// Returns the entry of `code`, or nullptr for a value outside op_code.
const op_spec* find_op(op_code code) noexcept;

/// Staging blocks are cut in pieces of this alignment.
constexpr size_t staging_alignment = 256;

} // namespace understudy::gpu
