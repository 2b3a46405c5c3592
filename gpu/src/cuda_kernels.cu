// The element-wise kernels of the CUDA backend. Built with --fmad=false and
// IEEE division and square root (nvcc's defaults without fast-math), so the
// optimizer updates round exactly as the CPU backend and understudy::actors::optimizer.
// Sums run sequentially per output element in the CPU backend's order.

#include <cmath>

#include "cuda_kernels.hpp"

namespace understudy::gpu::kernels {

namespace {

constexpr unsigned threads = 256;
constexpr size_t max_blocks = 8192;

/// Blocks for `n` elements with a grid-stride loop.
unsigned blocks_for(size_t n) {
  size_t b = (n + threads - 1) / threads;
  if (b > max_blocks)
    b = max_blocks;
  return static_cast<unsigned>(b == 0 ? 1 : b);
}

__device__ size_t first_index() {
  return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ size_t grid_stride() {
  return static_cast<size_t>(gridDim.x) * blockDim.x;
}

__global__ void fill_kernel(float* x, size_t n, float value) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    x[i] = value;
}

__global__ void add_bias_kernel(float* x, const float* bias, size_t rows, size_t cols) {
  const size_t n = rows * cols;
  for (size_t i = first_index(); i < n; i += grid_stride())
    x[i] += bias[i % cols];
}

__global__ void relu_kernel(const float* in, float* out, size_t n) {
  for (size_t i = first_index(); i < n; i += grid_stride()) {
    const float v = in[i];
    out[i] = v < 0.0f ? 0.0f : v; // std::max(v, 0.0f): NaN and -0 pass through
  }
}

__global__ void relu_grad_kernel(const float* pre, const float* grad_out, float* grad_in,
                                 size_t n) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    grad_in[i] = pre[i] > 0.0f ? grad_out[i] : 0.0f;
}

__global__ void bias_grad_kernel(const float* d, size_t rows, size_t cols, float* out) {
  for (size_t j = first_index(); j < cols; j += grid_stride()) {
    float sum = 0.0f;
    for (size_t r = 0; r < rows; ++r)
      sum += d[r * cols + j];
    out[j] = sum;
  }
}

__global__ void softmax_xent_kernel(const float* logits, const uint32_t* labels, size_t rows,
                                    size_t classes, float grad_scale, float* loss, float* grad) {
  for (size_t r = first_index(); r < rows; r += grid_stride()) {
    const float* row = logits + r * classes;
    const uint32_t y = labels[r];
    const bool valid = y < classes;
    float max = row[0];
    for (size_t j = 1; j < classes; ++j)
      max = max < row[j] ? row[j] : max; // std::max, as the CPU backend
    const float shifted_y = valid ? row[y] - max : 0.0f;
    float sum = 0.0f;
    if (grad == nullptr) {
      for (size_t j = 0; j < classes; ++j)
        sum += expf(row[j] - max);
      loss[r] = valid ? logf(sum) - shifted_y : nanf("");
      continue;
    }
    float* out = grad + r * classes;
    for (size_t j = 0; j < classes; ++j) {
      out[j] = expf(row[j] - max);
      sum += out[j];
    }
    loss[r] = valid ? logf(sum) - shifted_y : nanf("");
    for (size_t j = 0; j < classes; ++j) {
      const float p = out[j] / sum;
      out[j] = (j == y ? p - 1.0f : p) * grad_scale;
    }
  }
}

__global__ void axpy_kernel(size_t n, float alpha, const float* x, float* y) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    y[i] += alpha * x[i];
}

__global__ void scale_kernel(size_t n, float alpha, float* x) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    x[i] *= alpha;
}

__global__ void sgd_kernel(float* p, const float* g, size_t n, float lr, float wd) {
  for (size_t i = first_index(); i < n; i += grid_stride()) {
    float gi = g[i];
    if (wd != 0.0f)
      gi += wd * p[i];
    p[i] -= lr * gi;
  }
}

__global__ void momentum_kernel(float* p, const float* g, float* m, size_t n, float lr, float mu,
                                float wd) {
  for (size_t i = first_index(); i < n; i += grid_stride()) {
    float gi = g[i];
    if (wd != 0.0f)
      gi += wd * p[i];
    const float mi = mu * m[i] + gi;
    m[i] = mi;
    p[i] -= lr * mi;
  }
}

__global__ void adam_kernel(float* p, const float* g, float* m, float* v, size_t n, float lr,
                            float b1, float b2, float one_minus_b1, float one_minus_b2, float eps,
                            float wd, float c1, float c2) {
  for (size_t i = first_index(); i < n; i += grid_stride()) {
    float gi = g[i];
    if (wd != 0.0f)
      gi += wd * p[i];
    const float mi = b1 * m[i] + one_minus_b1 * gi;
    const float vi = b2 * v[i] + one_minus_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= lr * (mi / c1) / (sqrtf(vi / c2) + eps);
  }
}

__global__ void illegal_address_kernel(int* where) {
  *reinterpret_cast<volatile int*>(where) = 1;
}

} // namespace

cudaError_t fill(cudaStream_t stream, float* x, size_t n, float value) {
  fill_kernel<<<blocks_for(n), threads, 0, stream>>>(x, n, value);
  return cudaGetLastError();
}

cudaError_t add_bias(cudaStream_t stream, float* x, const float* bias, size_t rows, size_t cols) {
  add_bias_kernel<<<blocks_for(rows * cols), threads, 0, stream>>>(x, bias, rows, cols);
  return cudaGetLastError();
}

cudaError_t relu(cudaStream_t stream, const float* in, float* out, size_t n) {
  relu_kernel<<<blocks_for(n), threads, 0, stream>>>(in, out, n);
  return cudaGetLastError();
}

cudaError_t relu_grad(cudaStream_t stream, const float* pre, const float* grad_out, float* grad_in,
                      size_t n) {
  relu_grad_kernel<<<blocks_for(n), threads, 0, stream>>>(pre, grad_out, grad_in, n);
  return cudaGetLastError();
}

cudaError_t bias_grad(cudaStream_t stream, const float* d, size_t rows, size_t cols, float* out) {
  bias_grad_kernel<<<blocks_for(cols), threads, 0, stream>>>(d, rows, cols, out);
  return cudaGetLastError();
}

cudaError_t softmax_xent(cudaStream_t stream, const float* logits, const uint32_t* labels,
                         size_t rows, size_t classes, float grad_scale, float* loss, float* grad) {
  softmax_xent_kernel<<<blocks_for(rows), threads, 0, stream>>>(logits, labels, rows, classes,
                                                                grad_scale, loss, grad);
  return cudaGetLastError();
}

cudaError_t axpy(cudaStream_t stream, size_t n, float alpha, const float* x, float* y) {
  axpy_kernel<<<blocks_for(n), threads, 0, stream>>>(n, alpha, x, y);
  return cudaGetLastError();
}

cudaError_t scale(cudaStream_t stream, size_t n, float alpha, float* x) {
  scale_kernel<<<blocks_for(n), threads, 0, stream>>>(n, alpha, x);
  return cudaGetLastError();
}

cudaError_t sgd_step(cudaStream_t stream, float* p, const float* g, size_t n, float lr, float wd) {
  sgd_kernel<<<blocks_for(n), threads, 0, stream>>>(p, g, n, lr, wd);
  return cudaGetLastError();
}

cudaError_t momentum_step(cudaStream_t stream, float* p, const float* g, float* m, size_t n,
                          float lr, float mu, float wd) {
  momentum_kernel<<<blocks_for(n), threads, 0, stream>>>(p, g, m, n, lr, mu, wd);
  return cudaGetLastError();
}

cudaError_t adam_step(cudaStream_t stream, float* p, const float* g, float* m, float* v, size_t n,
                      float lr, float b1, float b2, float one_minus_b1, float one_minus_b2,
                      float eps, float wd, float c1, float c2) {
  adam_kernel<<<blocks_for(n), threads, 0, stream>>>(p, g, m, v, n, lr, b1, b2, one_minus_b1,
                                                     one_minus_b2, eps, wd, c1, c2);
  return cudaGetLastError();
}

cudaError_t illegal_address(cudaStream_t stream) {
  // Page zero is never mapped on the device; passed as an argument so that the
  // compiler cannot see a null store and turn it into a trap.
  auto* where = reinterpret_cast<int*>(static_cast<uintptr_t>(0x100));
  illegal_address_kernel<<<1, 1, 0, stream>>>(where);
  return cudaGetLastError();
}

} // namespace understudy::gpu::kernels
