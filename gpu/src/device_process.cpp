// One GPU actor per process, on the runtime's process host
// (understudy/process/process_host.hpp).

#include "understudy/gpu/device_process.hpp"

#include <cstdlib>
#include <memory>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/exit_reason.hpp>

#include "understudy/gpu/collective.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/gpu/forwarding_backend.hpp"

namespace understudy::gpu {

namespace {

// -- a backend whose faults act like sticky CUDA errors -------------------------------

/// Test hook for machines without a device: a CPU backend whose inject_fault
/// succeeds at launch and fails the stream at completion with a sticky error,
/// as an illegal address does on CUDA.
class sticky_fault_backend final : public forwarding_backend {
public:
  using forwarding_backend::forwarding_backend;

  std::string describe() const override {
    return inner().describe() + " (simulated sticky faults)";
  }
  caf::error when_done(completion_handler fn) override {
    if (!poisoned_)
      return inner().when_done(std::move(fn));
    fn(sticky());
    return {};
  }
  caf::error check() override { return poisoned_ ? sticky() : inner().check(); }
  caf::error synchronize() override { return poisoned_ ? sticky() : inner().synchronize(); }
  caf::error inject_fault(fault_kind) override {
    poisoned_ = true;
    return {};
  }

private:
  static caf::error sticky() {
    return make_error(gpu_errc::sticky_cuda_error,
                      "stream work (simulated on the CPU backend): an illegal memory access");
  }

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
