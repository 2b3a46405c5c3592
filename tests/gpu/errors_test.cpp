#include "understudy/gpu/errors.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <catch2/catch.hpp>

namespace ug = understudy::gpu;
using understudy::next_step;

TEST_CASE("gpu errors have names, a next step and render with their context", "[gpu_ops]") {
  REQUIRE(ug::to_string(ug::gpu_errc::sticky_cuda_error) == "sticky_cuda_error");
  REQUIRE(ug::to_string(ug::gpu_errc::invalid_argument) == "invalid_argument");
  REQUIRE(ug::next_step_for(ug::gpu_errc::cuda_error) == next_step::retry_now);
  REQUIRE(ug::next_step_for(ug::gpu_errc::out_of_memory) == next_step::back_off);
  REQUIRE(ug::next_step_for(ug::gpu_errc::sticky_cuda_error) == next_step::give_up);
  REQUIRE(ug::next_step_for(ug::gpu_errc::invalid_argument) == next_step::give_up);
  auto err = ug::make_error(ug::gpu_errc::cuda_error, "cudaMemcpyAsync on device 0: boom");
  REQUIRE(ug::is(err, ug::gpu_errc::cuda_error));
  REQUIRE_FALSE(ug::is(err, ug::gpu_errc::sticky_cuda_error));
  REQUIRE(err.category() == ug::gpu_category);
  REQUIRE(understudy::describe(err).find("cudaMemcpyAsync on device 0: boom") != std::string::npos);
}

TEST_CASE("register_gpu_types makes the actor system render gpu errors by name", "[gpu_ops]") {
  caf::actor_system_config cfg;
  cfg.set("scheduler.policy", caf::atom("testing"));
  cfg.set("logger.console-verbosity", caf::atom("quiet"));
  cfg.set("logger.file-verbosity", caf::atom("quiet"));
  ug::register_gpu_types(cfg);
  caf::actor_system sys{cfg};
  auto err = ug::make_error(ug::gpu_errc::sticky_cuda_error, "stream work on device 0: x");
  REQUIRE(sys.render(err) == "sticky_cuda_error: stream work on device 0: x");
}
