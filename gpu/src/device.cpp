#include "understudy/gpu/device.hpp"

#include <cstdio>

#if UNDERSTUDY_GPU_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace understudy::gpu {

std::vector<device_info> discover_devices() {
  std::vector<device_info> result;
#if UNDERSTUDY_GPU_HAS_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError(); // no driver or no device: not an error for discovery
    return result;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    device_info info;
    info.ordinal = i;
    info.name = prop.name;
    info.total_memory = prop.totalGlobalMem;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.multiprocessors = prop.multiProcessorCount;
    char bus_id[32] = {};
    if (cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), i) == cudaSuccess)
      info.pci_bus_id = bus_id;
    else
      cudaGetLastError();
    result.push_back(std::move(info));
  }
#endif
  return result;
}

std::string to_string(const device_info& x) {
  char memory[32];
  std::snprintf(memory, sizeof(memory), "%.1f GiB",
                static_cast<double>(x.total_memory) / (1024.0 * 1024.0 * 1024.0));
  std::string result = "cuda:" + std::to_string(x.ordinal) + " " + x.name + " (sm_" +
                       std::to_string(x.compute_major) + std::to_string(x.compute_minor) + ", " +
                       std::to_string(x.multiprocessors) + " SMs, " + memory;
  if (!x.pci_bus_id.empty())
    result += ", " + x.pci_bus_id;
  result += ")";
  return result;
}

} // namespace understudy::gpu
