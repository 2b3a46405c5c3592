// The CUDA backend: one device, one non-blocking stream and one cuBLAS handle.
// Every operation selects the device on the calling thread, enqueues its work
// and returns; completion is reported by a stream callback.

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <utility>

#include "backend_checks.hpp"
#include "cuda_errors.hpp"
#include "cuda_kernels.hpp"
#if UNDERSTUDY_GPU_HAS_NCCL
#include "collective_nccl.hpp"
#endif
#include "understudy/gpu/backend.hpp"
#include "understudy/gpu/device.hpp"
#include "understudy/gpu/errors.hpp"

namespace understudy::gpu {

namespace {

/// What a stream callback needs; owned by the callback once enqueued.
struct callback_data {
  completion_handler fn;
  int device;
};

/// Runs on a CUDA-internal thread once the work before it is done (or failed:
/// cudaStreamAddCallback, unlike cudaLaunchHostFunc, also runs after a device
/// error and hands it over, so a fault is reported instead of a silence).
void CUDART_CB on_stream_done(cudaStream_t, cudaError_t status, void* user) {
  std::unique_ptr<callback_data> data{static_cast<callback_data*>(user)};
  caf::error err;
  if (status != cudaSuccess)
    err = cuda_failure(status, "stream work", data->device);
  try {
    data->fn(std::move(err));
  } catch (...) {
    // Nothing can be done about it on this thread; the handler only posts a message.
  }
}

bool fits_int(size_t x) {
  return x <= static_cast<size_t>(INT_MAX);
}

class cuda_backend final : public backend {
public:
  cuda_backend(int device, std::string description, bool pools)
      : device_(device), description_(std::move(description)), pools_(pools) {
    // nop
  }

  ~cuda_backend() override {
#if UNDERSTUDY_GPU_HAS_NCCL
    comm_.reset(); // aborted: collectives waiting for peers return
#endif
    if (cudaSetDevice(device_) != cudaSuccess)
      cudaGetLastError();
    if (blas_ != nullptr)
      cublasDestroy(blas_);
    if (stream_ != nullptr)
      cudaStreamDestroy(stream_); // returns at once; the driver frees it when its work is done
    cudaGetLastError();
  }

  /// Creates the stream and the cuBLAS handle.
  caf::error init() {
    if (auto err = select())
      return err;
    if (auto e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking); e != cudaSuccess)
      return cuda_failure(e, "cudaStreamCreateWithFlags", device_);
    if (auto st = cublasCreate(&blas_); st != CUBLAS_STATUS_SUCCESS) {
      blas_ = nullptr;
      return blas_failure(st, "cublasCreate");
    }
    if (auto st = cublasSetStream(blas_, stream_); st != CUBLAS_STATUS_SUCCESS)
      return blas_failure(st, "cublasSetStream");
    // Plain FP32 (no TF32 tensor cores), no atomics: reproducible sums.
    if (auto st = cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH); st != CUBLAS_STATUS_SUCCESS)
      return blas_failure(st, "cublasSetMathMode");
    if (auto st = cublasSetAtomicsMode(blas_, CUBLAS_ATOMICS_NOT_ALLOWED);
        st != CUBLAS_STATUS_SUCCESS)
      return blas_failure(st, "cublasSetAtomicsMode");
    return {};
  }

  backend_kind kind() const noexcept override {
    return backend_kind::cuda;
  }

  int device() const noexcept override {
    return device_;
  }

  std::string describe() const override {
    return description_;
  }

  caf::expected<void*> allocate(size_t bytes) override {
    if (bytes == 0)
      return static_cast<void*>(nullptr);
    if (auto err = select())
      return err;
    void* ptr = nullptr;
    auto e = pools_ ? cudaMallocAsync(&ptr, bytes, stream_) : cudaMalloc(&ptr, bytes);
    if (e != cudaSuccess) {
      auto err = cuda_failure(e, pools_ ? "cudaMallocAsync" : "cudaMalloc", device_);
      if (!is_sticky(e))
        cudaGetLastError();
      return err;
    }
    return ptr;
  }

  void release(void* ptr) noexcept override {
    if (ptr == nullptr || select())
      return;
    auto e = pools_ ? cudaFreeAsync(ptr, stream_) : cudaFree(ptr);
    if (e != cudaSuccess && !is_sticky(e))
      cudaGetLastError();
  }

  caf::expected<void*> allocate_host(size_t bytes) override {
    if (bytes == 0)
      return static_cast<void*>(nullptr);
    if (auto err = select())
      return err;
    void* ptr = nullptr;
    if (auto e = cudaMallocHost(&ptr, bytes); e != cudaSuccess) {
      auto err = cuda_failure(e, "cudaMallocHost", device_);
      if (!is_sticky(e))
        cudaGetLastError();
      return err;
    }
    return ptr;
  }

  void release_host(void* ptr) noexcept override {
    if (ptr == nullptr || select())
      return;
    if (auto e = cudaFreeHost(ptr); e != cudaSuccess && !is_sticky(e))
      cudaGetLastError();
  }

  caf::error upload(void* dst, const void* src, size_t bytes) override {
    return memcpy_async(dst, src, bytes, cudaMemcpyHostToDevice, "upload");
  }

  caf::error download(void* dst, const void* src, size_t bytes) override {
    return memcpy_async(dst, src, bytes, cudaMemcpyDeviceToHost, "download");
  }

  caf::error copy(void* dst, const void* src, size_t bytes) override {
    return memcpy_async(dst, src, bytes, cudaMemcpyDeviceToDevice, "copy");
  }

  caf::error fill(float* x, size_t n, float value) override {
    if (auto ck = checks::elementwise("fill", n, {x}); !ck.run)
      return std::move(ck.err);
    return launch("fill", [&] { return kernels::fill(stream_, x, n, value); });
  }

  caf::error gemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                  const float* a, size_t lda, const float* b, size_t ldb, float beta, float* c,
                  size_t ldc) override {
    if (auto ck = checks::gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc); !ck.run)
      return std::move(ck.err);
    lda = std::max<size_t>(lda, 1);
    ldb = std::max<size_t>(ldb, 1);
    if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) ||
        !fits_int(ldc))
      return make_error(gpu_errc::invalid_argument, "gemm: a dimension exceeds INT_MAX");
    if (auto err = select())
      return err;
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the
    // memory of a row-major matrix read column-major is its transpose, so
    // cuBLAS gets B first, then A, with the same transpose flags and m, n swapped.
    auto st = cublasSgemm(
        blas_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b,
        static_cast<int>(ldb), a, static_cast<int>(lda), &beta, c, static_cast<int>(ldc));
    if (st != CUBLAS_STATUS_SUCCESS)
      return blas_failure(st, "cublasSgemm");
    return {};
  }

  caf::error add_bias(float* x, const float* bias, size_t rows, size_t cols) override {
    if (auto ck = checks::add_bias(x, bias, rows, cols); !ck.run)
      return std::move(ck.err);
    return launch("add_bias", [&] { return kernels::add_bias(stream_, x, bias, rows, cols); });
  }

  caf::error relu(const float* in, float* out, size_t n) override {
    if (auto ck = checks::elementwise("relu", n, {in, out}); !ck.run)
      return std::move(ck.err);
    return launch("relu", [&] { return kernels::relu(stream_, in, out, n); });
  }

  caf::error relu_grad(const float* pre, const float* grad_out, float* grad_in, size_t n) override {
    if (auto ck = checks::elementwise("relu_grad", n, {pre, grad_out, grad_in}); !ck.run)
      return std::move(ck.err);
    return launch("relu_grad",
                  [&] { return kernels::relu_grad(stream_, pre, grad_out, grad_in, n); });
  }

  caf::error bias_grad(const float* d, size_t rows, size_t cols, float* out) override {
    if (auto ck = checks::bias_grad(d, rows, cols, out); !ck.run)
      return std::move(ck.err);
    return launch("bias_grad", [&] { return kernels::bias_grad(stream_, d, rows, cols, out); });
  }

  caf::error softmax_xent(const float* logits, const uint32_t* labels, size_t rows, size_t classes,
                          float grad_scale, float* loss, float* grad) override {
    if (auto ck = checks::softmax_xent(logits, labels, rows, classes, loss); !ck.run)
      return std::move(ck.err);
    return launch("softmax_xent", [&] {
      return kernels::softmax_xent(stream_, logits, labels, rows, classes, grad_scale, loss, grad);
    });
  }

  caf::error axpy(size_t n, float alpha, const float* x, float* y) override {
    if (auto ck = checks::elementwise("axpy", n, {x, y}); !ck.run)
      return std::move(ck.err);
    return launch("axpy", [&] { return kernels::axpy(stream_, n, alpha, x, y); });
  }

  caf::error scale(size_t n, float alpha, float* x) override {
    if (auto ck = checks::elementwise("scale", n, {x}); !ck.run)
      return std::move(ck.err);
    return launch("scale", [&] { return kernels::scale(stream_, n, alpha, x); });
  }

  caf::error sgd_step(float* p, const float* g, size_t n, const sgd_params& hp) override {
    if (auto ck = checks::elementwise("sgd_step", n, {p, g}); !ck.run)
      return std::move(ck.err);
    return launch("sgd_step",
                  [&] { return kernels::sgd_step(stream_, p, g, n, hp.lr, hp.weight_decay); });
  }

  caf::error momentum_step(float* p, const float* g, float* m, size_t n,
                           const momentum_params& hp) override {
    if (auto ck = checks::elementwise("momentum_step", n, {p, g, m}); !ck.run)
      return std::move(ck.err);
    return launch("momentum_step", [&] {
      return kernels::momentum_step(stream_, p, g, m, n, hp.lr, hp.momentum, hp.weight_decay);
    });
  }

  caf::error adam_step(float* p, const float* g, float* m, float* v, size_t n,
                       const adam_params& hp) override {
    if (auto ck = checks::elementwise("adam_step", n, {p, g, m, v}); !ck.run)
      return std::move(ck.err);
    const auto corr = adam_bias_corrections(hp.beta1, hp.beta2, hp.step);
    const float one_minus_b1 = 1.0f - hp.beta1;
    const float one_minus_b2 = 1.0f - hp.beta2;
    return launch("adam_step", [&] {
      return kernels::adam_step(stream_, p, g, m, v, n, hp.lr, hp.beta1, hp.beta2, one_minus_b1,
                                one_minus_b2, hp.epsilon, hp.weight_decay, corr.c1, corr.c2);
    });
  }

#if UNDERSTUDY_GPU_HAS_NCCL
  caf::error comm_join(const std::vector<uint8_t>& id, uint32_t ranks, uint32_t rank) override {
    comm_.reset(); // aborts an earlier one
    auto comm = detail::nccl_comm::join(device_, id, ranks, rank);
    if (!comm)
      return std::move(comm.error());
    comm_ = std::move(*comm);
    return {};
  }

  caf::expected<bool> comm_ready() override {
    if (!comm_)
      return no_comm("comm_ready");
    return comm_->ready();
  }

  caf::error all_reduce(float* x, size_t n) override {
    if (!comm_)
      return no_comm("all_reduce");
    if (auto ck = checks::elementwise("all_reduce", n, {x}); !ck.run)
      return std::move(ck.err);
    return comm_->all_reduce(x, n, stream_);
  }

  caf::error broadcast(float* x, size_t n, uint32_t root) override {
    if (!comm_)
      return no_comm("broadcast");
    if (auto ck = checks::elementwise("broadcast", n, {x}); !ck.run)
      return std::move(ck.err);
    return comm_->broadcast(x, n, root, stream_);
  }

  void comm_abort() noexcept override {
    if (comm_)
      comm_->abort();
  }
#endif

  caf::error when_done(completion_handler fn) override {
    if (auto err = select())
      return err;
    auto data = std::make_unique<callback_data>(callback_data{std::move(fn), device_});
    if (auto e = cudaStreamAddCallback(stream_, on_stream_done, data.get(), 0); e != cudaSuccess)
      return failed(e, "cudaStreamAddCallback");
    data.release(); // on_stream_done owns it now
    return {};
  }

  caf::error check() override {
    if (auto err = select())
      return err;
    auto e = cudaStreamQuery(stream_);
    if (e == cudaSuccess || e == cudaErrorNotReady)
      return {};
    return failed(e, "cudaStreamQuery");
  }

  bool idle() override {
    if (select())
      return true; // the device is gone: nothing of ours runs any more
    auto e = cudaStreamQuery(stream_);
    if (e == cudaErrorNotReady)
      return false;
    if (e != cudaSuccess && !is_sticky(e))
      cudaGetLastError();
    return true;
  }

  caf::error synchronize() override {
    if (auto err = select())
      return err;
    if (auto e = cudaStreamSynchronize(stream_); e != cudaSuccess)
      return failed(e, "cudaStreamSynchronize");
    return {};
  }

  caf::error inject_fault(fault_kind x) override {
    switch (x) {
      case fault_kind::illegal_address:
        return launch("inject_fault illegal_address",
                      [&] { return kernels::illegal_address(stream_); });
    }
    return make_error(gpu_errc::unsupported, "inject_fault: unknown fault kind");
  }

private:
  static caf::error no_comm(const char* op) {
    return make_error(gpu_errc::invalid_argument,
                      std::string{op} + ": this GPU actor has joined no collective group");
  }

  /// Makes `device_` current on the calling thread (cheap; actors move between threads).
  caf::error select() {
    if (auto e = cudaSetDevice(device_); e != cudaSuccess)
      return failed(e, "cudaSetDevice");
    return {};
  }

  /// Returns the error for `call` failing with `e`, clearing it unless sticky.
  caf::error failed(cudaError_t e, const char* call) {
    auto err = cuda_failure(e, call, device_);
    if (!is_sticky(e))
      cudaGetLastError();
    return err;
  }

  template <class F>
  caf::error launch(const char* op, F enqueue) {
    if (auto err = select())
      return err;
    if (auto e = enqueue(); e != cudaSuccess)
      return failed(e, op);
    return {};
  }

  caf::error memcpy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind dir,
                          const char* op) {
    if (auto ck = checks::transfer(op, dst, src, bytes); !ck.run)
      return std::move(ck.err);
    if (auto err = select())
      return err;
    if (auto e = cudaMemcpyAsync(dst, src, bytes, dir, stream_); e != cudaSuccess)
      return failed(e, "cudaMemcpyAsync");
    return {};
  }

  /// Returns the error for a failed cuBLAS call. cuBLAS reports a poisoned
  /// context as an execution failure; the stream's sticky error is the better
  /// answer then.
  caf::error blas_failure(cublasStatus_t st, const char* call) {
    if (stream_ != nullptr) {
      auto e = cudaStreamQuery(stream_);
      if (is_sticky(e))
        return cuda_failure(e, call, device_);
    }
    std::string context = std::string{call} + " on device " + std::to_string(device_) + ": " +
                          cublasGetStatusName(st) + " (" + std::to_string(static_cast<int>(st)) +
                          "): " + cublasGetStatusString(st);
    return make_error(
        st == CUBLAS_STATUS_ALLOC_FAILED ? gpu_errc::out_of_memory : gpu_errc::cublas_error,
        std::move(context));
  }

  int device_;
  std::string description_;
  /// Whether the device has stream-ordered memory pools (cudaMallocAsync).
  bool pools_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
#if UNDERSTUDY_GPU_HAS_NCCL
  /// This rank's communicator, once a group has had it join.
  std::unique_ptr<detail::nccl_comm> comm_;
#endif
};

} // namespace

caf::expected<std::unique_ptr<backend>> make_cuda_backend(int device) {
  int count = 0;
  if (auto e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    cudaGetLastError();
    return make_error(gpu_errc::no_device,
                      "cannot use CUDA device " + std::to_string(device) + ": " + describe_cuda(e));
  }
  if (device < 0 || device >= count)
    return make_error(gpu_errc::no_device, "no CUDA device " + std::to_string(device) + " (" +
                                               std::to_string(count) + " present)");
  std::string description = "cuda:" + std::to_string(device);
  for (auto& info : discover_devices())
    if (info.ordinal == device)
      description = to_string(info);
  if (auto e = cudaSetDevice(device); e != cudaSuccess) {
    auto err = cuda_failure(e, "cudaSetDevice", device);
    cudaGetLastError();
    return err;
  }
  int pools = 0;
  if (cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
    cudaGetLastError();
    pools = 0;
  }
  auto result = std::make_unique<cuda_backend>(device, std::move(description), pools != 0);
  if (auto err = result->init())
    return err;
  return std::unique_ptr<backend>{std::move(result)};
}

} // namespace understudy::gpu
