#include "understudy/gpu/forwarding_backend.hpp"

#include <stdexcept>
#include <utility>

namespace understudy::gpu {

forwarding_backend::forwarding_backend(std::unique_ptr<backend> inner) : inner_(std::move(inner)) {
  if (!inner_)
    throw std::invalid_argument("forwarding_backend: no inner backend");
}

forwarding_backend::~forwarding_backend() = default;

backend_kind forwarding_backend::kind() const noexcept {
  return inner_->kind();
}

int forwarding_backend::device() const noexcept {
  return inner_->device();
}

std::string forwarding_backend::describe() const {
  return inner_->describe();
}

caf::expected<void*> forwarding_backend::allocate(size_t bytes) {
  return inner_->allocate(bytes);
}

void forwarding_backend::release(void* ptr) noexcept {
  inner_->release(ptr);
}

caf::expected<void*> forwarding_backend::allocate_host(size_t bytes) {
  return inner_->allocate_host(bytes);
}

void forwarding_backend::release_host(void* ptr) noexcept {
  inner_->release_host(ptr);
}

caf::error forwarding_backend::upload(void* dst, const void* src, size_t bytes) {
  return inner_->upload(dst, src, bytes);
}

caf::error forwarding_backend::download(void* dst, const void* src, size_t bytes) {
  return inner_->download(dst, src, bytes);
}

caf::error forwarding_backend::copy(void* dst, const void* src, size_t bytes) {
  return inner_->copy(dst, src, bytes);
}

caf::error forwarding_backend::fill(float* x, size_t n, float value) {
  return inner_->fill(x, n, value);
}

caf::error forwarding_backend::gemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k,
                                    float alpha, const float* a, size_t lda, const float* b,
                                    size_t ldb, float beta, float* c, size_t ldc) {
  return inner_->gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

caf::error forwarding_backend::add_bias(float* x, const float* bias, size_t rows, size_t cols) {
  return inner_->add_bias(x, bias, rows, cols);
}

caf::error forwarding_backend::relu(const float* in, float* out, size_t n) {
  return inner_->relu(in, out, n);
}

caf::error forwarding_backend::relu_grad(const float* pre, const float* grad_out, float* grad_in,
                                         size_t n) {
  return inner_->relu_grad(pre, grad_out, grad_in, n);
}

caf::error forwarding_backend::bias_grad(const float* d, size_t rows, size_t cols, float* out) {
  return inner_->bias_grad(d, rows, cols, out);
}

caf::error forwarding_backend::softmax_xent(const float* logits, const uint32_t* labels,
                                            size_t rows, size_t classes, float grad_scale,
                                            float* loss, float* grad) {
  return inner_->softmax_xent(logits, labels, rows, classes, grad_scale, loss, grad);
}

caf::error forwarding_backend::axpy(size_t n, float alpha, const float* x, float* y) {
  return inner_->axpy(n, alpha, x, y);
}

caf::error forwarding_backend::scale(size_t n, float alpha, float* x) {
  return inner_->scale(n, alpha, x);
}

caf::error forwarding_backend::sgd_step(float* p, const float* g, size_t n, const sgd_params& hp) {
  return inner_->sgd_step(p, g, n, hp);
}

caf::error forwarding_backend::momentum_step(float* p, const float* g, float* m, size_t n,
                                             const momentum_params& hp) {
  return inner_->momentum_step(p, g, m, n, hp);
}

caf::error forwarding_backend::adam_step(float* p, const float* g, float* m, float* v, size_t n,
                                         const adam_params& hp) {
  return inner_->adam_step(p, g, m, v, n, hp);
}

caf::error forwarding_backend::comm_join(const std::vector<uint8_t>& id, uint32_t ranks,
                                         uint32_t rank) {
  return inner_->comm_join(id, ranks, rank);
}

caf::expected<bool> forwarding_backend::comm_ready() {
  return inner_->comm_ready();
}

caf::error forwarding_backend::all_reduce(float* x, size_t n) {
  return inner_->all_reduce(x, n);
}

caf::error forwarding_backend::broadcast(float* x, size_t n, uint32_t root) {
  return inner_->broadcast(x, n, root);
}

void forwarding_backend::comm_abort() noexcept {
  inner_->comm_abort();
}

caf::error forwarding_backend::when_done(completion_handler fn) {
  return inner_->when_done(std::move(fn));
}

caf::error forwarding_backend::check() {
  return inner_->check();
}

bool forwarding_backend::idle() {
  return inner_->idle();
}

caf::error forwarding_backend::synchronize() {
  return inner_->synchronize();
}

caf::error forwarding_backend::inject_fault(fault_kind x) {
  return inner_->inject_fault(x);
}

} // namespace understudy::gpu
