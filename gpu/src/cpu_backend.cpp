// The CPU backend: every operation runs on the calling thread when it is
// enqueued, in the summation orders the header documents, without FMA
// contraction (see CMakeLists.txt), so results are deterministic.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "backend_checks.hpp"
#include "understudy/gpu/backend.hpp"
#include "understudy/gpu/errors.hpp"

namespace understudy::gpu {

namespace {

constexpr size_t alignment = 256;

class cpu_backend final : public backend {
public:
  backend_kind kind() const noexcept override { return backend_kind::cpu; }

  int device() const noexcept override { return -1; }

  std::string describe() const override { return "cpu"; }

  caf::expected<void*> allocate(size_t bytes) override { return allocate_aligned(bytes); }

  void release(void* ptr) noexcept override { std::free(ptr); }

  caf::expected<void*> allocate_host(size_t bytes) override { return allocate_aligned(bytes); }

  void release_host(void* ptr) noexcept override { std::free(ptr); }

  caf::error upload(void* dst, const void* src, size_t bytes) override {
    return copy_bytes("upload", dst, src, bytes);
  }

  caf::error download(void* dst, const void* src, size_t bytes) override {
    return copy_bytes("download", dst, src, bytes);
  }

  caf::error copy(void* dst, const void* src, size_t bytes) override {
    return copy_bytes("copy", dst, src, bytes);
  }

  caf::error fill(float* x, size_t n, float value) override {
    if (auto ck = checks::elementwise("fill", n, {x}); !ck.run)
      return std::move(ck.err);
    std::fill(x, x + n, value);
    return {};
  }

  caf::error gemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                  const float* a, size_t lda, const float* b, size_t ldb, float beta, float* c,
                  size_t ldc) override {
    if (auto ck = checks::gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc); !ck.run)
      return std::move(ck.err);
    acc_.assign(n, 0.0f);
    for (size_t i = 0; i < m; ++i) {
      std::fill(acc_.begin(), acc_.end(), 0.0f);
      float* acc = acc_.data();
      for (size_t p = 0; p < k; ++p) {
        const float aip = trans_a ? a[p * lda + i] : a[i * lda + p];
        if (trans_b) {
          for (size_t j = 0; j < n; ++j)
            acc[j] += aip * b[j * ldb + p];
        } else {
          const float* b_row = b + p * ldb;
          for (size_t j = 0; j < n; ++j)
            acc[j] += aip * b_row[j];
        }
      }
      float* c_row = c + i * ldc;
      if (beta == 0.0f) {
        for (size_t j = 0; j < n; ++j)
          c_row[j] = alpha * acc[j];
      } else {
        for (size_t j = 0; j < n; ++j)
          c_row[j] = alpha * acc[j] + beta * c_row[j];
      }
    }
    return {};
  }

  caf::error add_bias(float* x, const float* bias, size_t rows, size_t cols) override {
    if (auto ck = checks::add_bias(x, bias, rows, cols); !ck.run)
      return std::move(ck.err);
    for (size_t r = 0; r < rows; ++r) {
      float* row = x + r * cols;
      for (size_t j = 0; j < cols; ++j)
        row[j] += bias[j];
    }
    return {};
  }

  caf::error relu(const float* in, float* out, size_t n) override {
    if (auto ck = checks::elementwise("relu", n, {in, out}); !ck.run)
      return std::move(ck.err);
    for (size_t i = 0; i < n; ++i)
      out[i] = std::max(in[i], 0.0f);
    return {};
  }

  caf::error relu_grad(const float* pre, const float* grad_out, float* grad_in, size_t n) override {
    if (auto ck = checks::elementwise("relu_grad", n, {pre, grad_out, grad_in}); !ck.run)
      return std::move(ck.err);
    for (size_t i = 0; i < n; ++i)
      grad_in[i] = pre[i] > 0.0f ? grad_out[i] : 0.0f;
    return {};
  }

  caf::error bias_grad(const float* d, size_t rows, size_t cols, float* out) override {
    if (auto ck = checks::bias_grad(d, rows, cols, out); !ck.run)
      return std::move(ck.err);
    std::fill(out, out + cols, 0.0f);
    for (size_t r = 0; r < rows; ++r) {
      const float* row = d + r * cols;
      for (size_t j = 0; j < cols; ++j)
        out[j] += row[j];
    }
    return {};
  }

  caf::error softmax_xent(const float* logits, const uint32_t* labels, size_t rows, size_t classes,
                          float grad_scale, float* loss, float* grad) override {
    if (auto ck = checks::softmax_xent(logits, labels, rows, classes, loss); !ck.run)
      return std::move(ck.err);
    for (size_t r = 0; r < rows; ++r)
      if (labels[r] >= classes)
        return make_error(gpu_errc::invalid_argument,
                          "softmax_xent: label " + std::to_string(labels[r]) + " of row " +
                              std::to_string(r) + " is not below the class count " +
                              std::to_string(classes));
    for (size_t r = 0; r < rows; ++r) {
      const float* row = logits + r * classes;
      const auto y = labels[r];
      float max = row[0];
      for (size_t j = 1; j < classes; ++j)
        max = std::max(max, row[j]);
      const float shifted_y = row[y] - max;
      float sum = 0.0f;
      if (grad == nullptr) {
        for (size_t j = 0; j < classes; ++j)
          sum += std::exp(row[j] - max);
        loss[r] = std::log(sum) - shifted_y;
        continue;
      }
      float* out =
          grad + r * classes; // may alias row: each row[j] is read before out[j] is written
      for (size_t j = 0; j < classes; ++j) {
        out[j] = std::exp(row[j] - max);
        sum += out[j];
      }
      loss[r] = std::log(sum) - shifted_y;
      for (size_t j = 0; j < classes; ++j) {
        const float p = out[j] / sum;
        out[j] = (j == y ? p - 1.0f : p) * grad_scale;
      }
    }
    return {};
  }

  caf::error axpy(size_t n, float alpha, const float* x, float* y) override {
    if (auto ck = checks::elementwise("axpy", n, {x, y}); !ck.run)
      return std::move(ck.err);
    for (size_t i = 0; i < n; ++i)
      y[i] += alpha * x[i];
    return {};
  }

  caf::error scale(size_t n, float alpha, float* x) override {
    if (auto ck = checks::elementwise("scale", n, {x}); !ck.run)
      return std::move(ck.err);
    for (size_t i = 0; i < n; ++i)
      x[i] *= alpha;
    return {};
  }

  caf::error sgd_step(float* p, const float* g, size_t n, const sgd_params& hp) override {
    if (auto ck = checks::elementwise("sgd_step", n, {p, g}); !ck.run)
      return std::move(ck.err);
    const float lr = hp.lr;
    const float wd = hp.weight_decay;
    for (size_t i = 0; i < n; ++i) {
      float gi = g[i];
      if (wd != 0.0f)
        gi += wd * p[i];
      p[i] -= lr * gi;
    }
    return {};
  }

  caf::error momentum_step(float* p, const float* g, float* m, size_t n,
                           const momentum_params& hp) override {
    if (auto ck = checks::elementwise("momentum_step", n, {p, g, m}); !ck.run)
      return std::move(ck.err);
    const float lr = hp.lr;
    const float mu = hp.momentum;
    const float wd = hp.weight_decay;
    for (size_t i = 0; i < n; ++i) {
      float gi = g[i];
      if (wd != 0.0f)
        gi += wd * p[i];
      m[i] = mu * m[i] + gi;
      p[i] -= lr * m[i];
    }
    return {};
  }

  caf::error adam_step(float* p, const float* g, float* m, float* v, size_t n,
                       const adam_params& hp) override {
    if (auto ck = checks::elementwise("adam_step", n, {p, g, m, v}); !ck.run)
      return std::move(ck.err);
    const float lr = hp.lr;
    const float wd = hp.weight_decay;
    const float b1 = hp.beta1;
    const float b2 = hp.beta2;
    const float one_minus_b1 = 1.0f - b1;
    const float one_minus_b2 = 1.0f - b2;
    const float eps = hp.epsilon;
    const auto [c1, c2] = adam_bias_corrections(b1, b2, hp.step);
    for (size_t i = 0; i < n; ++i) {
      float gi = g[i];
      if (wd != 0.0f)
        gi += wd * p[i];
      m[i] = b1 * m[i] + one_minus_b1 * gi;
      v[i] = b2 * v[i] + one_minus_b2 * gi * gi;
      p[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
    }
    return {};
  }

  caf::error when_done(completion_handler fn) override {
    if (fn)
      fn(caf::error{});
    return {};
  }

  caf::error check() override { return {}; }

  bool idle() override { return true; }

  caf::error synchronize() override { return {}; }

  caf::error inject_fault(fault_kind x) override {
    return make_error(gpu_errc::unsupported,
                      "inject_fault " + to_string(x) + ": the CPU backend has no device to fault");
  }

private:
  static caf::expected<void*> allocate_aligned(size_t bytes) {
    if (bytes == 0)
      return static_cast<void*>(nullptr);
    const size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    void* ptr = std::aligned_alloc(alignment, rounded);
    if (ptr == nullptr)
      return make_error(gpu_errc::out_of_memory,
                        "cpu allocate: " + std::to_string(bytes) + " bytes not available");
    return ptr;
  }

  static caf::error copy_bytes(const char* op, void* dst, const void* src, size_t bytes) {
    if (auto ck = checks::transfer(op, dst, src, bytes); !ck.run)
      return std::move(ck.err);
    std::memmove(dst, src, bytes);
    return {};
  }

  /// One row of gemm's accumulators, reused between calls.
  std::vector<float> acc_;
};

} // namespace

std::unique_ptr<backend> make_cpu_backend() {
  return std::make_unique<cpu_backend>();
}

} // namespace understudy::gpu
