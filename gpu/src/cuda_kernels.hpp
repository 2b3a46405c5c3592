#pragma once
// Launchers of the element-wise kernels (cuda_kernels.cu). Each enqueues one
// kernel on `stream` and returns the launch's error (cudaGetLastError). Device
// pointers; the semantics are those of the same-named backend operations.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace understudy::gpu::kernels {

cudaError_t fill(cudaStream_t stream, float* x, size_t n, float value);

cudaError_t add_bias(cudaStream_t stream, float* x, const float* bias, size_t rows, size_t cols);

cudaError_t relu(cudaStream_t stream, const float* in, float* out, size_t n);

cudaError_t relu_grad(cudaStream_t stream, const float* pre, const float* grad_out, float* grad_in,
                      size_t n);

cudaError_t bias_grad(cudaStream_t stream, const float* d, size_t rows, size_t cols, float* out);

cudaError_t softmax_xent(cudaStream_t stream, const float* logits, const uint32_t* labels,
                         size_t rows, size_t classes, float grad_scale, float* loss, float* grad);

cudaError_t axpy(cudaStream_t stream, size_t n, float alpha, const float* x, float* y);

cudaError_t scale(cudaStream_t stream, size_t n, float alpha, float* x);

cudaError_t sgd_step(cudaStream_t stream, float* p, const float* g, size_t n, float lr, float wd);

cudaError_t momentum_step(cudaStream_t stream, float* p, const float* g, float* m, size_t n,
                          float lr, float mu, float wd);

/// `one_minus_b1` and `one_minus_b2` are 1 - beta computed in float by the
/// caller; `c1` and `c2` the bias corrections (adam_bias_corrections).
cudaError_t adam_step(cudaStream_t stream, float* p, const float* g, float* m, float* v, size_t n,
                      float lr, float b1, float b2, float one_minus_b1, float one_minus_b2,
                      float eps, float wd, float c1, float c2);

/// Stores to an unmapped device address: the stream fails with
/// cudaErrorIllegalAddress when the kernel runs.
cudaError_t illegal_address(cudaStream_t stream);

} // namespace understudy::gpu::kernels
