#pragma once
// The argument checks of backend operations (backend.hpp), shared by every
// backend: what a call with nothing to do, a null pointer or an impossible
// shape answers is decided here once. Device limits (cuBLAS's int sizes) stay
// with the backend that has them.

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include <caf/error.hpp>

#include "understudy/gpu/errors.hpp"

namespace understudy::gpu::checks {

/// The verdict on one call's arguments: run it, or return `err` at once
/// (none for a call with nothing to do, `gpu_errc::invalid_argument` naming
/// the operation and the problem for bad arguments).
struct verdict {
  bool run = true;
  caf::error err;
};

inline verdict run() {
  return {};
}

inline verdict nothing_to_do() {
  return {false, caf::error{}};
}

inline verdict refuse(const char* op, const std::string& what) {
  return {false, make_error(gpu_errc::invalid_argument, std::string{op} + ": " + what)};
}

/// `n` elements through `ptrs`: nothing to do for 0, refused if a pointer is null.
inline verdict elementwise(const char* op, size_t n, std::initializer_list<const void*> ptrs) {
  if (n == 0)
    return nothing_to_do();
  for (auto* ptr : ptrs)
    if (ptr == nullptr)
      return refuse(op, "null pointer");
  return run();
}

/// upload, download, copy: `bytes` from `src` to `dst`.
inline verdict transfer(const char* op, const void* dst, const void* src, size_t bytes) {
  return elementwise(op, bytes, {dst, src});
}

inline verdict gemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, const float* a,
                    size_t lda, const float* b, size_t ldb, const float* c, size_t ldc) {
  if (m == 0 || n == 0)
    return nothing_to_do();
  if (c == nullptr || (k > 0 && (a == nullptr || b == nullptr)))
    return refuse("gemm", "null pointer");
  if (lda < (trans_a ? m : k) || ldb < (trans_b ? k : n) || ldc < n)
    return refuse("gemm", "a leading dimension is smaller than its row");
  return run();
}

inline verdict add_bias(const float* x, const float* bias, size_t rows, size_t cols) {
  if (rows == 0 || cols == 0)
    return nothing_to_do();
  return elementwise("add_bias", 1, {x, bias});
}

/// Runs with `rows` 0 too: `out` becomes zeros.
inline verdict bias_grad(const float* d, size_t rows, size_t cols, const float* out) {
  if (cols == 0)
    return nothing_to_do();
  if (out == nullptr || (rows > 0 && d == nullptr))
    return refuse("bias_grad", "null pointer");
  return run();
}

/// The labels' range is the backend's to check (they live in device memory).
inline verdict softmax_xent(const float* logits, const uint32_t* labels, size_t rows,
                            size_t classes, const float* loss) {
  if (rows == 0)
    return nothing_to_do();
  if (classes == 0)
    return refuse("softmax_xent", "zero classes");
  return elementwise("softmax_xent", rows, {logits, labels, loss});
}

} // namespace understudy::gpu::checks
