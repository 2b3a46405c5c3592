#include "understudy/gpu/errors.hpp"

#include <utility>
#include <vector>

#include <caf/actor_system_config.hpp>
#include <caf/message.hpp>

#include "understudy/gpu/device.hpp"
#include "understudy/gpu/gpu_actor.hpp"
#include "understudy/gpu/ops.hpp"

namespace understudy::gpu {

std::string to_string(gpu_errc x) {
  switch (x) {
    case gpu_errc::none:
      return "none";
    case gpu_errc::no_cuda:
      return "no_cuda";
    case gpu_errc::no_device:
      return "no_device";
    case gpu_errc::cuda_error:
      return "cuda_error";
    case gpu_errc::sticky_cuda_error:
      return "sticky_cuda_error";
    case gpu_errc::cublas_error:
      return "cublas_error";
    case gpu_errc::out_of_memory:
      return "out_of_memory";
    case gpu_errc::invalid_argument:
      return "invalid_argument";
    case gpu_errc::unsupported:
      return "unsupported";
  }
  return "unknown";
}

next_step next_step_for(gpu_errc x) {
  switch (x) {
    case gpu_errc::cuda_error:
    case gpu_errc::cublas_error:
      return next_step::retry_now;
    case gpu_errc::out_of_memory:
      return next_step::back_off;
    case gpu_errc::none:
    case gpu_errc::no_cuda:
    case gpu_errc::no_device:
    case gpu_errc::sticky_cuda_error:
    case gpu_errc::invalid_argument:
    case gpu_errc::unsupported:
      return next_step::give_up;
  }
  return next_step::give_up;
}

caf::error make_error(gpu_errc x, std::string context) {
  return caf::error{static_cast<uint8_t>(x), gpu_category, caf::make_message(std::move(context))};
}

bool is(const caf::error& err, gpu_errc x) {
  return err.category() == gpu_category && err.code() == static_cast<uint8_t>(x);
}

void register_gpu_types(caf::actor_system_config& cfg) {
  cfg.add_error_category(gpu_category, [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    auto result = to_string(static_cast<gpu_errc>(code));
    if (ctx.size() == 1 && ctx.match_element<std::string>(0))
      result += ": " + ctx.get_as<std::string>(0);
    else if (!ctx.empty())
      result += ": " + to_string(ctx);
    return result;
  });
  cfg.add_message_type<op_batch>("understudy::gpu::op_batch");
  cfg.add_message_type<batch_result>("understudy::gpu::batch_result");
  cfg.add_message_type<restore_plan>("understudy::gpu::restore_plan");
  cfg.add_message_type<std::vector<uint8_t>>("std::vector<uint8_t>");
  cfg.add_message_type<device_info>("understudy::gpu::device_info");
  cfg.add_message_type<std::vector<device_info>>("std::vector<understudy::gpu::device_info>");
}

} // namespace understudy::gpu
