#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "understudy/gpu/backend.hpp"

namespace understudy::gpu {

/// A backend that forwards every operation to an inner backend: the base of
/// decorators, which override only what they change (e.g. how a fault
/// surfaces) and inherit the rest.
///
/// Owns the inner backend; same threading as `backend` (one thread at a
/// time). A new virtual of `backend` gets its forwarder here, once.
class forwarding_backend : public backend {
public:
  /// Wraps `inner`, which must not be null.
  explicit forwarding_backend(std::unique_ptr<backend> inner);

  ~forwarding_backend() override;

  backend_kind kind() const noexcept override;
  int device() const noexcept override;
  std::string describe() const override;

  caf::expected<void*> allocate(size_t bytes) override;
  void release(void* ptr) noexcept override;
  caf::expected<void*> allocate_host(size_t bytes) override;
  void release_host(void* ptr) noexcept override;

  caf::error upload(void* dst, const void* src, size_t bytes) override;
  caf::error download(void* dst, const void* src, size_t bytes) override;
  caf::error copy(void* dst, const void* src, size_t bytes) override;

  caf::error fill(float* x, size_t n, float value) override;
  caf::error gemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                  const float* a, size_t lda, const float* b, size_t ldb, float beta, float* c,
                  size_t ldc) override;
  caf::error add_bias(float* x, const float* bias, size_t rows, size_t cols) override;
  caf::error relu(const float* in, float* out, size_t n) override;
  caf::error relu_grad(const float* pre, const float* grad_out, float* grad_in, size_t n) override;
  caf::error bias_grad(const float* d, size_t rows, size_t cols, float* out) override;
  caf::error softmax_xent(const float* logits, const uint32_t* labels, size_t rows, size_t classes,
                          float grad_scale, float* loss, float* grad) override;
  caf::error axpy(size_t n, float alpha, const float* x, float* y) override;
  caf::error scale(size_t n, float alpha, float* x) override;

  caf::error sgd_step(float* p, const float* g, size_t n, const sgd_params& hp) override;
  caf::error momentum_step(float* p, const float* g, float* m, size_t n,
                           const momentum_params& hp) override;
  caf::error adam_step(float* p, const float* g, float* m, float* v, size_t n,
                       const adam_params& hp) override;

  caf::error comm_join(const std::vector<uint8_t>& id, uint32_t ranks, uint32_t rank) override;
  caf::expected<bool> comm_ready() override;
  caf::error all_reduce(float* x, size_t n) override;
  caf::error broadcast(float* x, size_t n, uint32_t root) override;
  void comm_abort() noexcept override;

  caf::error when_done(completion_handler fn) override;
  caf::error check() override;
  bool idle() override;
  caf::error synchronize() override;

  caf::error inject_fault(fault_kind x) override;

protected:
  /// Returns the backend every call goes to.
  backend& inner() noexcept { return *inner_; }
  const backend& inner() const noexcept { return *inner_; }

private:
  std::unique_ptr<backend> inner_;
};

} // namespace understudy::gpu
