// One GPU actor per process, on the runtime's process host
// (understudy/runtime/process_host.hpp).

#include "understudy/gpu/device_process.hpp"

#include <cstdlib>
#include <memory>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/exit_reason.hpp>

#include "understudy/gpu/collective.hpp"
#include "understudy/gpu/errors.hpp"

namespace understudy::gpu {

namespace {

// -- a backend whose faults act like sticky CUDA errors -------------------------------

/// Test hook for machines without a device: a CPU backend whose inject_fault
/// succeeds at launch and fails the stream at completion with a sticky error,
/// as an illegal address does on CUDA.
class sticky_fault_backend final : public backend {
public:
  explicit sticky_fault_backend(std::unique_ptr<backend> inner) : in_(std::move(inner)) {
    // nop
  }

  backend_kind kind() const noexcept override { return in_->kind(); }
  int device() const noexcept override { return in_->device(); }
  std::string describe() const override { return in_->describe() + " (simulated sticky faults)"; }
  caf::expected<void*> allocate(size_t bytes) override { return in_->allocate(bytes); }
  void release(void* ptr) noexcept override { in_->release(ptr); }
  caf::expected<void*> allocate_host(size_t bytes) override { return in_->allocate_host(bytes); }
  void release_host(void* ptr) noexcept override { in_->release_host(ptr); }
  caf::error upload(void* d, const void* s, size_t n) override { return in_->upload(d, s, n); }
  caf::error download(void* d, const void* s, size_t n) override { return in_->download(d, s, n); }
  caf::error copy(void* d, const void* s, size_t n) override { return in_->copy(d, s, n); }
  caf::error fill(float* x, size_t n, float v) override { return in_->fill(x, n, v); }
  caf::error gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a,
                  size_t lda, const float* b, size_t ldb, float beta, float* c,
                  size_t ldc) override {
    return in_->gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  caf::error add_bias(float* x, const float* b, size_t r, size_t c) override {
    return in_->add_bias(x, b, r, c);
  }
  caf::error relu(const float* in, float* out, size_t n) override { return in_->relu(in, out, n); }
  caf::error relu_grad(const float* p, const float* go, float* gi, size_t n) override {
    return in_->relu_grad(p, go, gi, n);
  }
  caf::error bias_grad(const float* d, size_t r, size_t c, float* out) override {
    return in_->bias_grad(d, r, c, out);
  }
  caf::error softmax_xent(const float* z, const uint32_t* y, size_t r, size_t c, float s,
                          float* loss, float* grad) override {
    return in_->softmax_xent(z, y, r, c, s, loss, grad);
  }
  caf::error axpy(size_t n, float a, const float* x, float* y) override {
    return in_->axpy(n, a, x, y);
  }
  caf::error scale(size_t n, float a, float* x) override { return in_->scale(n, a, x); }
  caf::error sgd_step(float* p, const float* g, size_t n, const sgd_params& hp) override {
    return in_->sgd_step(p, g, n, hp);
  }
  caf::error momentum_step(float* p, const float* g, float* m, size_t n,
                           const momentum_params& hp) override {
    return in_->momentum_step(p, g, m, n, hp);
  }
  caf::error adam_step(float* p, const float* g, float* m, float* v, size_t n,
                       const adam_params& hp) override {
    return in_->adam_step(p, g, m, v, n, hp);
  }
  caf::error when_done(completion_handler fn) override {
    if (!poisoned_)
      return in_->when_done(std::move(fn));
    fn(sticky());
    return {};
  }
  caf::error check() override { return poisoned_ ? sticky() : in_->check(); }
  bool idle() override { return in_->idle(); }
  caf::error synchronize() override { return poisoned_ ? sticky() : in_->synchronize(); }
  caf::error inject_fault(fault_kind) override {
    poisoned_ = true;
    return {};
  }

private:
  static caf::error sticky() {
    return make_error(gpu_errc::sticky_cuda_error,
                      "stream work (simulated on the CPU backend): an illegal memory access");
  }

  std::unique_ptr<backend> in_;
  bool poisoned_ = false;
};

} // namespace

// -- a GPU actor per process ----------------------------------------------------------

int device_exit_status(const caf::error& reason) {
  if (!reason || reason == caf::exit_reason::normal)
    return 0;
  if (is(reason, gpu_errc::sticky_cuda_error))
    return host_status::poisoned;
  return host_status::failed;
}

caf::expected<caf::actor> spawn_device_process(caf::actor_system& sys, device_process_options opts,
                                               std::string name) {
  process_spec spec;
  spec.name = std::move(name);
  spec.program = std::move(opts.program);
  spec.args = std::move(opts.args);
  spec.start_timeout = opts.start_timeout;
  spec.role["actor"] = "gpu";
  spec.role["kind"] = to_string(opts.gpu.kind);
  spec.role["device"] = std::to_string(opts.gpu.device);
  if (opts.simulate_sticky_faults)
    spec.role["sticky"] = "1";
  return spawn_process_actor(sys, std::move(spec));
}

child_spec device_process_child(std::string id, device_process_options opts) {
  child_spec spec;
  spec.id = std::move(id);
  spec.start = [opts](child_context& ctx) {
    return spawn_device_process(ctx.system, opts, ctx.path);
  };
  return spec;
}

std::optional<int> run_device_process_if_requested() {
  auto role = actor_host_role_from_env();
  if (!role || role->get("actor") != "gpu")
    return std::nullopt;
  auto configure = [](caf::actor_system_config& cfg) {
    register_gpu_types(cfg);
    register_collective_types(cfg);
  };
  auto make = [&role](caf::actor_system& sys) -> caf::expected<caf::actor> {
    auto kind = parse_backend_kind(role->get("kind", "cpu"));
    if (!kind)
      return std::move(kind.error());
    auto be = make_backend(*kind, std::atoi(role->get("device", "0").c_str()));
    if (!be)
      return std::move(be.error());
    std::unique_ptr<backend> owned = std::move(*be);
    if (role->get("sticky") == "1" && owned->kind() == backend_kind::cpu)
      owned = std::make_unique<sticky_fault_backend>(std::move(owned));
    return spawn_gpu_actor(sys, std::move(owned));
  };
  return run_actor_host(*role, configure, make, device_exit_status);
}

} // namespace understudy::gpu
