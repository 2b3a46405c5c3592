#pragma once
// Translation of CUDA runtime errors into gpu_errc at the boundary, keeping
// the original code and text as context. CUDA builds only.

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include <caf/error.hpp>

#include "understudy/gpu/errors.hpp"

namespace understudy::gpu {

/// Returns whether `e` poisons the CUDA context of the process: every later
/// call fails with it, so only a fresh process recovers.
inline bool is_sticky(cudaError_t e) noexcept {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure:
    case cudaErrorECCUncorrectable:
    case cudaErrorContextIsDestroyed:
    case cudaErrorExternalDevice:
    case cudaErrorUnknown:
      return true;
    default:
      return false;
  }
}

/// Returns the gpu_errc for `e` (not cudaSuccess).
inline gpu_errc classify(cudaError_t e) noexcept {
  if (is_sticky(e))
    return gpu_errc::sticky_cuda_error;
  switch (e) {
    case cudaErrorMemoryAllocation:
      return gpu_errc::out_of_memory;
    case cudaErrorNoDevice:
    case cudaErrorInvalidDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorStubLibrary:
    case cudaErrorDevicesUnavailable:
      return gpu_errc::no_device;
    default:
      return gpu_errc::cuda_error;
  }
}

/// Returns e.g. "cudaErrorIllegalAddress (700): an illegal memory access was
/// encountered". Only looks up strings: safe in a stream callback.
inline std::string describe_cuda(cudaError_t e) {
  std::string result = cudaGetErrorName(e);
  result += " (";
  result += std::to_string(static_cast<int>(e));
  result += "): ";
  result += cudaGetErrorString(e);
  return result;
}

/// Returns the error for `call` on `device` (-1: none) failing with `e`,
/// e.g. "cudaMemcpyAsync on device 0: cudaErrorIllegalAddress (700): ...".
inline caf::error cuda_failure(cudaError_t e, std::string_view call, int device) {
  std::string context{call};
  if (device >= 0)
    context += " on device " + std::to_string(device);
  context += ": ";
  context += describe_cuda(e);
  return make_error(classify(e), std::move(context));
}

} // namespace understudy::gpu
