#include "understudy/gpu/errors.hpp"

#include <utility>
#include <vector>

#include <caf/actor_system_config.hpp>
#include <caf/message.hpp>

#include "understudy/gpu/device.hpp"
#include "understudy/gpu/gpu_actor.hpp"
#include "understudy/gpu/ops.hpp"

namespace understudy::gpu {

void register_gpu_types(caf::actor_system_config& cfg) {
  register_error_category<gpu_errc>(cfg);
  cfg.add_message_type<op_batch>("understudy::gpu::op_batch");
  cfg.add_message_type<batch_result>("understudy::gpu::batch_result");
  cfg.add_message_type<restore_plan>("understudy::gpu::restore_plan");
  cfg.add_message_type<std::vector<uint8_t>>("std::vector<uint8_t>");
  cfg.add_message_type<device_info>("understudy::gpu::device_info");
  cfg.add_message_type<std::vector<device_info>>("std::vector<understudy::gpu::device_info>");
}

} // namespace understudy::gpu
