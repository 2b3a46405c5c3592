// NCCL communicators of a collective group (built where NCCL was found).

#include "collective_nccl.hpp"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>
#include <utility>

#include "cuda_errors.hpp"
#include "understudy/gpu/collective.hpp"

namespace understudy::gpu::detail {

namespace {

/// Returns e.g. "ncclAllReduce: unhandled cuda error (1)", with NCCL's last
/// message where it has one.
caf::error nccl_failure(ncclResult_t r, const std::string& call) {
  std::string context =
      call + ": " + ncclGetErrorString(r) + " (" + std::to_string(static_cast<int>(r)) + ")";
  if (const char* last = ncclGetLastError(nullptr); last != nullptr && *last != '\0')
    context += ": " + std::string{last};
  return make_error(collective_errc::nccl_error, std::move(context));
}

/// Returns the error of a failed CUDA call, clearing it unless it is sticky.
caf::error cuda_call_failed(cudaError_t e, const char* call, int device) {
  auto err = cuda_failure(e, call, device);
  if (!is_sticky(e))
    cudaGetLastError();
  return err;
}

/// What a stream callback needs; owned by the callback once enqueued.
struct callback_data {
  rank_done_handler fn;
  size_t rank;
  int device;
};

void CUDART_CB on_rank_done(cudaStream_t, cudaError_t status, void* user) {
  std::unique_ptr<callback_data> data{static_cast<callback_data*>(user)};
  caf::error err;
  if (status != cudaSuccess)
    err = cuda_failure(status, "collective stream work", data->device);
  try {
    data->fn(data->rank, std::move(err));
  } catch (...) {
    // Nothing to do on this thread; the handler only posts a message.
  }
}

} // namespace

struct nccl_ranks::impl {
  struct rank {
    int device = 0;
    cudaStream_t stream = nullptr;
    ncclComm_t comm = nullptr;
    float* dev = nullptr;
    float* host = nullptr;
    size_t capacity = 0;
  };

  std::vector<rank> ranks;
  size_t count = 0;
  bool aborted = false;

  /// Whether every stream has finished its work (so buffers may be freed).
  bool idle() {
    for (auto& r : ranks) {
      if (r.stream == nullptr)
        continue;
      if (cudaSetDevice(r.device) != cudaSuccess) {
        cudaGetLastError();
        continue;
      }
      auto e = cudaStreamQuery(r.stream);
      if (e == cudaErrorNotReady)
        return false;
      if (e != cudaSuccess && !is_sticky(e))
        cudaGetLastError();
    }
    return true;
  }

  /// Grows rank `r`'s staging buffers to `n` floats (no work of it outstanding).
  caf::error reserve(rank& r, size_t n) {
    if (r.capacity >= n)
      return {};
    if (r.dev != nullptr)
      cudaFree(r.dev);
    if (r.host != nullptr)
      cudaFreeHost(r.host);
    r.dev = nullptr;
    r.host = nullptr;
    r.capacity = 0;
    if (auto e = cudaMalloc(reinterpret_cast<void**>(&r.dev), n * sizeof(float)); e != cudaSuccess)
      return cuda_call_failed(e, "cudaMalloc (collective staging)", r.device);
    if (auto e = cudaMallocHost(reinterpret_cast<void**>(&r.host), n * sizeof(float));
        e != cudaSuccess)
      return cuda_call_failed(e, "cudaMallocHost (collective staging)", r.device);
    r.capacity = n;
    return {};
  }

  ~impl() {
    const bool quiet = idle();
    for (auto& r : ranks) {
      if (cudaSetDevice(r.device) != cudaSuccess) {
        cudaGetLastError();
        continue;
      }
      if (r.comm != nullptr) {
        // A communicator with work in flight is aborted rather than waited for.
        if (quiet)
          ncclCommDestroy(r.comm);
        else
          ncclCommAbort(r.comm);
      }
      // Memory the stream may still use is left to the process's exit.
      if (quiet) {
        cudaFree(r.dev);
        cudaFreeHost(r.host);
      }
      if (r.stream != nullptr)
        cudaStreamDestroy(r.stream);
      cudaGetLastError();
    }
  }
};

nccl_ranks::nccl_ranks(std::unique_ptr<impl> ptr) : impl_(std::move(ptr)) {
  // nop
}

nccl_ranks::~nccl_ranks() = default;

caf::expected<std::unique_ptr<nccl_ranks>> nccl_ranks::create(const std::vector<int>& devices) {
  auto st = std::make_unique<impl>();
  st->ranks.resize(devices.size());
  for (size_t i = 0; i < devices.size(); ++i) {
    auto& r = st->ranks[i];
    r.device = devices[i];
    if (auto e = cudaSetDevice(r.device); e != cudaSuccess)
      return cuda_call_failed(e, "cudaSetDevice", r.device);
    if (auto e = cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking); e != cudaSuccess)
      return cuda_call_failed(e, "cudaStreamCreateWithFlags", r.device);
  }
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  if (auto res = ncclCommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data());
      res != ncclSuccess)
    return nccl_failure(res, "ncclCommInitAll");
  for (size_t i = 0; i < devices.size(); ++i)
    st->ranks[i].comm = comms[i];
  return std::unique_ptr<nccl_ranks>{new nccl_ranks(std::move(st))};
}

caf::error nccl_ranks::enqueue(int root, const std::vector<std::vector<float>>& inputs,
                               rank_done_handler done) {
  auto& st = *impl_;
  if (st.aborted)
    return make_error(collective_errc::nccl_error, "the communicators were aborted");
  const size_t n = inputs.empty() ? 0 : inputs.front().size();
  st.count = n;
  for (size_t i = 0; i < st.ranks.size(); ++i) {
    auto& r = st.ranks[i];
    if (auto e = cudaSetDevice(r.device); e != cudaSuccess)
      return cuda_call_failed(e, "cudaSetDevice", r.device);
    if (auto err = st.reserve(r, n))
      return err;
    std::memcpy(r.host, inputs[i].data(), n * sizeof(float));
    if (auto e =
            cudaMemcpyAsync(r.dev, r.host, n * sizeof(float), cudaMemcpyHostToDevice, r.stream);
        e != cudaSuccess)
      return cuda_call_failed(e, "cudaMemcpyAsync (collective input)", r.device);
  }
  if (auto res = ncclGroupStart(); res != ncclSuccess)
    return nccl_failure(res, "ncclGroupStart");
  for (auto& r : st.ranks) {
    auto res = root < 0 ? ncclAllReduce(r.dev, r.dev, n, ncclFloat, ncclSum, r.comm, r.stream)
                        : ncclBroadcast(r.dev, r.dev, n, ncclFloat, root, r.comm, r.stream);
    if (res != ncclSuccess) {
      ncclGroupEnd();
      return nccl_failure(res, root < 0 ? "ncclAllReduce" : "ncclBroadcast");
    }
  }
  if (auto res = ncclGroupEnd(); res != ncclSuccess)
    return nccl_failure(res, "ncclGroupEnd");
  for (size_t i = 0; i < st.ranks.size(); ++i) {
    auto& r = st.ranks[i];
    if (auto e = cudaSetDevice(r.device); e != cudaSuccess)
      return cuda_call_failed(e, "cudaSetDevice", r.device);
    if (auto e =
            cudaMemcpyAsync(r.host, r.dev, n * sizeof(float), cudaMemcpyDeviceToHost, r.stream);
        e != cudaSuccess)
      return cuda_call_failed(e, "cudaMemcpyAsync (collective result)", r.device);
    auto data = std::make_unique<callback_data>(callback_data{done, i, r.device});
    if (auto e = cudaStreamAddCallback(r.stream, on_rank_done, data.get(), 0); e != cudaSuccess)
      return cuda_call_failed(e, "cudaStreamAddCallback", r.device);
    data.release(); // on_rank_done owns it now
  }
  return {};
}

const float* nccl_ranks::result(size_t r) const {
  return impl_->ranks.at(r).host;
}

void nccl_ranks::abort() noexcept {
  auto& st = *impl_;
  for (auto& r : st.ranks) {
    if (r.comm == nullptr)
      continue;
    if (cudaSetDevice(r.device) != cudaSuccess)
      cudaGetLastError();
    ncclCommAbort(r.comm);
    r.comm = nullptr;
  }
  st.aborted = true;
}

std::string nccl_ranks::describe() const {
  int version = 0;
  std::string result = "NCCL";
  if (ncclGetVersion(&version) == ncclSuccess) {
    // Since 2.9: major * 10000 + minor * 100 + patch.
    result += " " + std::to_string(version / 10000) + "." + std::to_string(version / 100 % 100) +
              "." + std::to_string(version % 100);
  }
  result += " over device";
  result += impl_->ranks.size() == 1 ? " " : "s ";
  for (size_t i = 0; i < impl_->ranks.size(); ++i)
    result += (i == 0 ? "" : ", ") + std::to_string(impl_->ranks[i].device);
  return result;
}

} // namespace understudy::gpu::detail
