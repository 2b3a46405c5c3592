#include "understudy/gpu/backend.hpp"

#include <utility>

#include "understudy/actors/numerics/optimizer.hpp"
#include "understudy/gpu/errors.hpp"

namespace understudy::gpu {

backend::~backend() = default;

std::string to_string(backend_kind x) {
  switch (x) {
    case backend_kind::cpu:
      return "cpu";
    case backend_kind::cuda:
      return "cuda";
  }
  return "unknown";
}

caf::expected<backend_kind> parse_backend_kind(std::string_view name) {
  for (auto kind : {backend_kind::cpu, backend_kind::cuda})
    if (name == to_string(kind))
      return kind;
  return make_error(gpu_errc::invalid_argument,
                    "unknown backend '" + std::string{name} + "' (expected cpu or cuda)");
}

std::string to_string(fault_kind x) {
  switch (x) {
    case fault_kind::illegal_address:
      return "illegal_address";
  }
  return "unknown";
}

adam_corrections adam_bias_corrections(float beta1, float beta2, uint64_t step) noexcept {
  adam_corrections result;
  result.c1 = static_cast<float>(1.0 - understudy::actors::power(static_cast<double>(beta1), step));
  result.c2 = static_cast<float>(1.0 - understudy::actors::power(static_cast<double>(beta2), step));
  return result;
}

namespace {

caf::error no_collectives(const backend& be, const char* op) {
  return make_error(gpu_errc::unsupported,
                    std::string{op} + ": the " + to_string(be.kind()) + " backend" +
                        (be.kind() == backend_kind::cuda ? " of this build has no NCCL"
                                                         : " runs no collectives") +
                        "; groups of such ranks reduce locally");
}

} // namespace

caf::error backend::comm_join(const std::vector<uint8_t>&, uint32_t, uint32_t) {
  return no_collectives(*this, "comm_join");
}

caf::expected<bool> backend::comm_ready() {
  return no_collectives(*this, "comm_ready");
}

caf::error backend::all_reduce(float*, size_t) {
  return no_collectives(*this, "all_reduce");
}

caf::error backend::broadcast(float*, size_t, uint32_t) {
  return no_collectives(*this, "broadcast");
}

void backend::comm_abort() noexcept {
  // No communicator.
}

#if !UNDERSTUDY_GPU_HAS_NCCL
caf::expected<std::vector<uint8_t>> make_comm_id() {
  return make_error(gpu_errc::unsupported, "make_comm_id: understudy was built without NCCL");
}
#endif

#if !UNDERSTUDY_GPU_HAS_CUDA
caf::expected<std::unique_ptr<backend>> make_cuda_backend(int device) {
  return make_error(gpu_errc::no_cuda, "cannot use CUDA device " + std::to_string(device) +
                                           ": understudy was built without CUDA");
}
#endif

caf::expected<std::unique_ptr<backend>> make_backend(backend_kind kind, int device) {
  if (kind == backend_kind::cpu)
    return make_cpu_backend();
  return make_cuda_backend(device);
}

} // namespace understudy::gpu
