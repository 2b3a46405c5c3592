#include "understudy/gpu/device.hpp"

#include "support/gpu_test_util.hpp"
#include "understudy/gpu/backend.hpp"
#include "understudy/gpu/errors.hpp"

namespace ug = understudy::gpu;

TEST_CASE("discover_devices lists nothing and throws nothing without CUDA or a device",
          "[gpu_ops]") {
  std::vector<ug::device_info> devices;
  REQUIRE_NOTHROW(devices = ug::discover_devices());
  if (!ug::cuda_compiled())
    REQUIRE(devices.empty());
  for (size_t i = 0; i < devices.size(); ++i) {
    REQUIRE(devices[i].ordinal == static_cast<int>(i));
    REQUIRE_FALSE(devices[i].name.empty());
    REQUIRE(devices[i].total_memory > 0);
  }
  // Asking again gives the same answer (no state left behind by a failure).
  REQUIRE(ug::discover_devices().size() == devices.size());
}

TEST_CASE("make_cuda_backend fails with no_cuda or no_device where there is no such device",
          "[gpu_ops]") {
  const int missing = static_cast<int>(ug::discover_devices().size()) + 3;
  auto be = ug::make_cuda_backend(missing);
  REQUIRE_FALSE(be);
  if (ug::cuda_compiled())
    REQUIRE(ug::is(be.error(), ug::gpu_errc::no_device));
  else
    REQUIRE(ug::is(be.error(), ug::gpu_errc::no_cuda));
  REQUIRE(understudy::describe(be.error()).find(std::to_string(missing)) != std::string::npos);
  REQUIRE_FALSE(ug::make_cuda_backend(-1));
}

TEST_CASE("device_info renders its ordinal, name, architecture and memory", "[gpu_ops]") {
  ug::device_info info;
  info.ordinal = 1;
  info.name = "NVIDIA H100 80GB HBM3";
  info.total_memory = 85ull * 1024 * 1024 * 1024;
  info.compute_major = 9;
  info.compute_minor = 0;
  info.multiprocessors = 132;
  info.pci_bus_id = "0000:3b:00.0";
  REQUIRE(ug::to_string(info) ==
          "cuda:1 NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 85.0 GiB, 0000:3b:00.0)");
}

TEST_CASE("the cuda backend describes the device it runs on", "[gpu]") {
  auto be = gpu_test::cuda_or_skip();
  if (!be)
    return;
  REQUIRE(be->kind() == ug::backend_kind::cuda);
  auto devices = ug::discover_devices();
  REQUIRE(be->describe() == ug::to_string(devices.front()));
  REQUIRE(be->idle());
  REQUIRE_FALSE(be->check());
}
