#include "understudy/gpu/errors.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <catch2/catch.hpp>

#include "understudy/gpu/collective.hpp"

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
  REQUIRE(understudy::describe(err) == "cuda_error: cudaMemcpyAsync on device 0: boom");
  REQUIRE(understudy::error_context(err) == "cudaMemcpyAsync on device 0: boom");
}

TEST_CASE("gpu and collective errors are declared once through the shared traits", "[gpu_ops]") {
  for (const auto& v : understudy::error_traits<ug::gpu_errc>::values) {
    REQUIRE(to_string(v.code) == v.name);
    REQUIRE(next_step_for(v.code) == v.next);
    if (v.code != ug::gpu_errc::none)
      REQUIRE(understudy::describe(make_error(v.code)) == v.name);
  }
  REQUIRE_FALSE(make_error(ug::gpu_errc::none));
  REQUIRE(ug::description(ug::gpu_errc::sticky_cuda_error) ==
          "a CUDA error poisoned the process's context");
  REQUIRE(ug::next_step_for(ug::collective_errc::rank_failed) == next_step::reconnect);
  auto err = ug::make_error(ug::collective_errc::deadline_exceeded, "all_reduce #3: rank 1");
  REQUIRE(err.category() == ug::collective_category);
  REQUIRE(understudy::describe(err) == "deadline_exceeded: all_reduce #3: rank 1");
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
