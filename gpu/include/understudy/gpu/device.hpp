#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/meta/type_name.hpp>

#include "understudy/gpu/config.hpp"

namespace understudy::gpu {

/// What `discover_devices` reports about one CUDA device. A plain value that
/// crosses nodes (it has an `inspect` overload).
struct device_info {
  /// The CUDA device ordinal, as passed to `make_cuda_backend`.
  int ordinal = 0;
  /// The marketing name, e.g. "NVIDIA H100 80GB HBM3".
  std::string name;
  /// Global memory in bytes.
  uint64_t total_memory = 0;
  /// Compute capability, e.g. 9 and 0 for an H100.
  int compute_major = 0;
  int compute_minor = 0;
  /// Number of streaming multiprocessors.
  int multiprocessors = 0;
  /// PCI address, e.g. "0000:3b:00.0"; identifies the device across processes
  /// whatever CUDA_VISIBLE_DEVICES says.
  std::string pci_bus_id;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, device_info& x) {
  return f(caf::meta::type_name("understudy::gpu::device_info"), x.ordinal, x.name, x.total_memory,
           x.compute_major, x.compute_minor, x.multiprocessors, x.pci_bus_id);
}

/// Returns whether this build has the CUDA backend (`UNDERSTUDY_GPU_HAS_CUDA`).
constexpr bool cuda_compiled() noexcept {
  return UNDERSTUDY_GPU_HAS_CUDA != 0;
}

/// Lists the CUDA devices this process can use, in ordinal order. Returns an
/// empty list, never an error, where there are none: built without CUDA, no
/// driver, no device, or CUDA_VISIBLE_DEVICES hides them all. Safe to call from
/// any thread; initialises the CUDA runtime where it is compiled in (so call it
/// after any `fork()`, never before).
std::vector<device_info> discover_devices();

/// Renders `x` for logs, e.g. "cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 132 SMs,
/// 79.1 GiB, 0000:3b:00.0)".
std::string to_string(const device_info& x);

} // namespace understudy::gpu
