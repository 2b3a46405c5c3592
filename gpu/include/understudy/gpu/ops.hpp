#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <caf/meta/type_name.hpp>

#include "understudy/gpu/backend.hpp"

namespace understudy::gpu {

/// Names a buffer of one GPU actor. The client chooses ids (allocate) so that a
/// whole setup or training step fits in one `op_batch`.
using buffer_id = uint32_t;

/// A range of 4-byte elements (float or uint32 labels) of one buffer.
struct slice {
  buffer_id buffer = 0;
  /// First element.
  uint64_t offset = 0;
  /// Number of elements.
  uint64_t count = 0;

  /// Returns the `count` elements from `offset` on, relative to this slice.
  slice sub(uint64_t first, uint64_t n) const noexcept { return {buffer, offset + first, n}; }

  friend bool operator==(const slice& x, const slice& y) noexcept {
    return x.buffer == y.buffer && x.offset == y.offset && x.count == y.count;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, slice& x) {
  return f(caf::meta::type_name("understudy::gpu::slice"), x.buffer, x.offset, x.count);
}

/// Returns the first `count` elements of buffer `id`.
inline slice whole(buffer_id id, uint64_t count) noexcept {
  return {id, 0, count};
}

/// What an `op` does; the builder functions of `op_batch` document each one.
enum class op_code : uint8_t {
  allocate,
  release,
  upload,
  download,
  fill,
  copy,
  gemm,
  add_bias,
  relu,
  relu_grad,
  bias_grad,
  softmax_xent,
  axpy,
  scale,
  sgd_step,
  momentum_step,
  adam_step,
  inject_fault,
  all_reduce,
  broadcast,
};

/// Returns the name of `x`, e.g. "softmax_xent".
std::string to_string(op_code x);

/// One operation of a batch, in a serialisable form. Build ops with the
/// `op_batch` functions; the fields' meaning depends on `code`.
struct op {
  op_code code = op_code::fill;
  /// The buffers read and written.
  std::vector<slice> operands;
  /// Sizes (shapes, counts, flags, the optimizer step).
  std::vector<uint64_t> sizes;
  /// Scalars (alpha, beta, hyperparameters, the fill value).
  std::vector<float> scalars;
  /// Payload of a float upload.
  std::vector<float> data;
  /// Payload of a label (uint32) upload.
  std::vector<uint32_t> words;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, op& x) {
  return f(caf::meta::type_name("understudy::gpu::op"), x.code, x.operands, x.sizes, x.scalars,
           x.data, x.words);
}

/// A list of operations that a GPU actor runs in order on its stream, as one
/// message: a whole training step (upload the batch, forward, backward,
/// optimizer update, download the loss) is one request and one reply.
///
/// Shapes are dense row-major; every slice must lie inside its buffer and have
/// exactly the element count its shape implies. A batch is checked as a whole
/// before anything runs (buffer ids and bounds, including buffers allocated
/// and released earlier in the same batch).
struct op_batch {
  std::vector<op> ops;

  /// Creates buffer `id` of `count` elements (uninitialised). The id must not
  /// be in use.
  void allocate(buffer_id id, uint64_t count);

  /// Frees buffer `id`; later batches may reuse the id.
  void release(buffer_id id);

  /// Copies `values` into `dst` (dst.count == values.size()).
  void upload(slice dst, std::vector<float> values);

  /// Copies labels into `dst` (dst.count == values.size()).
  void upload(slice dst, std::vector<uint32_t> values);

  /// Reads `src` back; returns the index of the values in `batch_result::downloads`.
  /// A label slice comes back bit for bit (read it with std::memcpy).
  size_t download(slice src);

  /// Sets every element of `x` to `value`.
  void fill(slice x, float value);

  /// Copies `src` to `dst` (same count; no overlap within one buffer).
  void copy(slice src, slice dst);

  /// c = alpha * op(a) * op(b) + beta * c with op(a) m x k, op(b) k x n, c m x n
  /// (see backend::gemm); a holds m * k elements, b k * n, c m * n.
  void gemm(bool trans_a, bool trans_b, uint64_t m, uint64_t n, uint64_t k, float alpha, slice a,
            slice b, float beta, slice c);

  /// x (rows x cols) += bias (cols) in every row.
  void add_bias(slice x, slice bias, uint64_t rows, uint64_t cols);

  /// out = max(in, 0); `out` may be `in`.
  void relu(slice in, slice out);

  /// grad_in = pre > 0 ? grad_out : 0; `grad_in` may be `grad_out`.
  void relu_grad(slice pre, slice grad_out, slice grad_in);

  /// out (cols) = column sums of d (rows x cols).
  void bias_grad(slice d, uint64_t rows, uint64_t cols, slice out);

  /// loss (rows) = per-row cross-entropy of logits (rows x classes) against
  /// labels (rows, uint32); if `grad.count` is not 0, grad (rows x classes) =
  /// (softmax - onehot) * grad_scale. `grad` may be `logits`.
  void softmax_xent(slice logits, slice labels, uint64_t rows, uint64_t classes, float grad_scale,
                    slice loss, slice grad);

  /// y += alpha * x.
  void axpy(float alpha, slice x, slice y);

  /// x *= alpha.
  void scale(float alpha, slice x);

  /// SGD on parameters p with gradient g (same count).
  void sgd_step(slice p, slice g, const sgd_params& hp);

  /// Momentum on p with gradient g and velocity m.
  void momentum_step(slice p, slice g, slice m, const momentum_params& hp);

  /// Adam on p with gradient g and moments m, v.
  void adam_step(slice p, slice g, slice m, slice v, const adam_params& hp);

  /// Triggers a real fault (CUDA only; a CPU actor answers `unsupported`).
  void inject_fault(fault_kind x);

  /// x = the sum of x over the ranks of the collective group this GPU actor
  /// has joined (`backend::all_reduce`); every rank runs it with the same
  /// count. Sent by the group, not by users: a rank that joined none answers
  /// `invalid_argument` (`unsupported` on the CPU backend).
  void all_reduce(slice x);

  /// x = rank `root`'s x, in the group this GPU actor has joined.
  void broadcast(slice x, uint32_t root);
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, op_batch& x) {
  return f(caf::meta::type_name("understudy::gpu::op_batch"), x.ops);
}

/// The reply to an `op_batch`.
struct batch_result {
  /// The values of each download, in batch order.
  std::vector<std::vector<float>> downloads;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, batch_result& x) {
  return f(caf::meta::type_name("understudy::gpu::batch_result"), x.downloads);
}

} // namespace understudy::gpu
