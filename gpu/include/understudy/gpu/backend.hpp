#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "understudy/gpu/config.hpp"

namespace understudy::gpu {

/// Where a backend runs its operations.
enum class backend_kind : uint8_t {
  /// On the calling thread, in host memory: runs everywhere.
  cpu,
  /// On one CUDA stream of one device, with cuBLAS for GEMM.
  cuda,
};

/// Returns "cpu" or "cuda".
std::string to_string(backend_kind x);

/// Parses a name as printed by `to_string`. On failure returns
/// `gpu_errc::invalid_argument` naming the bad value and the accepted ones.
caf::expected<backend_kind> parse_backend_kind(std::string_view name);

/// A fault that `backend::inject_fault` triggers for real.
enum class fault_kind : uint8_t {
  /// A kernel stores to an unmapped device address: the stream fails with
  /// cudaErrorIllegalAddress, which is sticky (poisons the process's context).
  illegal_address,
};

/// Returns "illegal_address".
std::string to_string(fault_kind x);

/// Hyperparameters of `backend::sgd_step` (see understudy::actors::optimizer).
struct sgd_params {
  float lr = 0.01f;
  float weight_decay = 0.0f;
};

/// Hyperparameters of `backend::momentum_step` (see understudy::actors::optimizer).
struct momentum_params {
  float lr = 0.01f;
  float momentum = 0.9f;
  float weight_decay = 0.0f;
};

/// Hyperparameters of `backend::adam_step` (see understudy::actors::optimizer).
struct adam_params {
  float lr = 0.001f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float epsilon = 1e-8f;
  float weight_decay = 0.0f;
  /// The step being applied, counted from 1 (the optimizer's steps() + 1).
  uint64_t step = 1;
};

/// Adam's bias corrections c1 = 1 - beta1^t and c2 = 1 - beta2^t, computed in
/// double with beta^t by repeated squaring and rounded to float, exactly as
/// understudy::actors::optimizer does.
struct adam_corrections {
  float c1 = 1.0f;
  float c2 = 1.0f;
};

/// Returns the bias corrections of Adam's step `step` (counted from 1).
adam_corrections adam_bias_corrections(float beta1, float beta2, uint64_t step) noexcept;

/// Called once when the work enqueued before it has completed, with the
/// stream's error (none if all of it succeeded).
using completion_handler = std::function<void(caf::error)>;

/// Runs float32 tensor operations on one device and one stream, or on the CPU.
///
/// Every operation is enqueued and returns at once: on the CUDA backend it runs
/// later, in enqueue order, on the backend's stream; on the CPU backend it has
/// already run when the call returns. Completion is observed with `when_done`,
/// never by blocking (`synchronize` exists for tests and tools only). Pointers
/// passed to operations are device memory from `allocate` (host memory for the
/// CPU backend) unless documented otherwise; matrices are row-major.
///
/// The returned error of an operation reports what is known when it is
/// enqueued: bad arguments (`gpu_errc::invalid_argument`, nothing was enqueued)
/// or a launch that failed. A fault while the work runs surfaces in the next
/// call, in `check` and in the `when_done` handler. Sticky CUDA errors are
/// `gpu_errc::sticky_cuda_error`.
///
/// Not thread-safe: one thread at a time (its owning actor) uses a backend.
/// Destroying it releases its stream and handles; buffers still allocated are
/// freed with it.
class backend {
public:
  virtual ~backend();

  /// Returns the kind of this backend.
  virtual backend_kind kind() const noexcept = 0;

  /// Returns the CUDA device ordinal, or -1 for the CPU backend.
  virtual int device() const noexcept = 0;

  /// Returns e.g. "cpu" or "cuda:0 NVIDIA H100 80GB HBM3 (sm_90, ...)".
  virtual std::string describe() const = 0;

  // -- memory ---------------------------------------------------------------------------

  /// Allocates `bytes` of device memory (uninitialised, aligned to at least 256
  /// bytes), usable by operations enqueued after this call. Returns nullptr for
  /// 0 bytes; `gpu_errc::out_of_memory` if the device is full.
  virtual caf::expected<void*> allocate(size_t bytes) = 0;

  /// Frees memory from `allocate` once the work enqueued before this call is
  /// done (stream-ordered: never waits). Ignores nullptr.
  virtual void release(void* ptr) noexcept = 0;

  /// Allocates `bytes` of page-locked host memory, which `upload` and
  /// `download` transfer without blocking the calling thread.
  virtual caf::expected<void*> allocate_host(size_t bytes) = 0;

  /// Frees memory from `allocate_host`. Precondition: no transfer that uses it
  /// is outstanding (its `when_done` handler has run, or `idle()` holds).
  virtual void release_host(void* ptr) noexcept = 0;

  // -- transfers ------------------------------------------------------------------------

  /// Copies `bytes` from host memory `src` to device memory `dst`. `src` must
  /// stay unchanged until the work completes; memory from `allocate_host`
  /// never blocks the caller, other host memory may.
  virtual caf::error upload(void* dst, const void* src, size_t bytes) = 0;

  /// Copies `bytes` from device memory `src` to host memory `dst`, readable
  /// once the work completes. `dst` must be memory from `allocate_host` on the
  /// CUDA backend (pageable memory would block the calling thread).
  virtual caf::error download(void* dst, const void* src, size_t bytes) = 0;

  /// Copies `bytes` from device memory `src` to device memory `dst` (no overlap).
  virtual caf::error copy(void* dst, const void* src, size_t bytes) = 0;

  // -- dense math -----------------------------------------------------------------------

  /// Sets `x[0 .. n)` to `value`.
  virtual caf::error fill(float* x, size_t n, float value) = 0;

  /// C = alpha * op(A) * op(B) + beta * C, row-major, with op(A) m x k, op(B)
  /// k x n and C m x n. `lda`, `ldb`, `ldc` are the row strides of A, B and C
  /// as stored (A is k x m when `trans_a`, B is n x k when `trans_b`). With
  /// `beta == 0` C is only written (it may hold garbage). The CPU backend sums
  /// over k in ascending order; the CUDA backend uses cuBLAS (FP32, no TF32).
  virtual caf::error gemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                          const float* a, size_t lda, const float* b, size_t ldb, float beta,
                          float* c, size_t ldc) = 0;

  /// x[r][c] += bias[c] for a `rows` x `cols` matrix x.
  virtual caf::error add_bias(float* x, const float* bias, size_t rows, size_t cols) = 0;

  /// out[i] = max(in[i], 0) (NaN stays NaN); `out` may be `in`.
  virtual caf::error relu(const float* in, float* out, size_t n) = 0;

  /// grad_in[i] = pre[i] > 0 ? grad_out[i] : 0, where `pre` is the ReLU's input
  /// (or its output: the mask is the same). `grad_in` may be `grad_out`.
  virtual caf::error relu_grad(const float* pre, const float* grad_out, float* grad_in,
                               size_t n) = 0;

  /// out[c] = sum over r ascending of d[r][c], for a `rows` x `cols` matrix d:
  /// the gradient of a bias added to every row.
  virtual caf::error bias_grad(const float* d, size_t rows, size_t cols, float* out) = 0;

  /// Softmax cross-entropy of `rows` x `classes` logits against `labels`
  /// (device memory, one uint32 per row): loss[r] = log(sum_j exp(z_j - max))
  /// - (z_y - max), computed as understudy::actors::mlp does (max subtracted, sums in
  /// ascending j). If `grad` is not null it receives (softmax - onehot(y)) *
  /// `grad_scale` (use 1/rows for the mean loss); `grad` may be `logits`.
  /// A label not below `classes`: the CPU backend returns invalid_argument (no
  /// row written), the CUDA backend writes NaN as that row's loss.
  virtual caf::error softmax_xent(const float* logits, const uint32_t* labels, size_t rows,
                                  size_t classes, float grad_scale, float* loss, float* grad) = 0;

  /// y[i] += alpha * x[i] (two roundings, no FMA): sums gradients.
  virtual caf::error axpy(size_t n, float alpha, const float* x, float* y) = 0;

  /// x[i] *= alpha.
  virtual caf::error scale(size_t n, float alpha, float* x) = 0;

  // -- optimizer updates ----------------------------------------------------------------
  // Element-wise, in float, in the order understudy::actors::optimizer::step documents,
  // without FMA: the same inputs give bit-identical results on both backends
  // and to understudy::actors::optimizer.

  /// p -= lr * g', g' = g + weight_decay * p (only if weight_decay != 0).
  virtual caf::error sgd_step(float* p, const float* g, size_t n, const sgd_params& hp) = 0;

  /// m = momentum * m + g'; p -= lr * m.
  virtual caf::error momentum_step(float* p, const float* g, float* m, size_t n,
                                   const momentum_params& hp) = 0;

  /// Adam step `hp.step` with bias correction (adam_bias_corrections).
  virtual caf::error adam_step(float* p, const float* g, float* m, float* v, size_t n,
                               const adam_params& hp) = 0;

  // -- collectives ----------------------------------------------------------------------
  // One rank of a collective group (collective.hpp), in place on this
  // backend's buffers and stream: NCCL on the CUDA backend (where it was built
  // with NCCL). The defaults, and the CPU backend, answer `unsupported`.

  /// Starts joining the group with unique id `id` (from `make_comm_id`) as
  /// rank `rank` of `ranks`, without blocking: poll `comm_ready`. A
  /// communicator joined earlier is aborted first.
  virtual caf::error comm_join(const std::vector<uint8_t>& id, uint32_t ranks, uint32_t rank);

  /// Returns true once the join has completed, false while it is under way,
  /// or the error that failed it (`gpu_errc::nccl_error`).
  virtual caf::expected<bool> comm_ready();

  /// Enqueues x[0 .. n) = the sum of every rank's x[0 .. n). Every rank
  /// enqueues the same collectives with the same `n`, in the same order.
  virtual caf::error all_reduce(float* x, size_t n);

  /// Enqueues x[0 .. n) = rank `root`'s x[0 .. n).
  virtual caf::error broadcast(float* x, size_t n, uint32_t root);

  /// Aborts the communicator (ncclCommAbort), never blocking: collectives
  /// waiting for a peer that is gone return, the stream carries on, and the
  /// buffers they wrote hold garbage. A new `comm_join` is needed afterwards.
  /// Does nothing without a communicator.
  virtual void comm_abort() noexcept;

  // -- completion -----------------------------------------------------------------------

  /// Calls `fn` once all work enqueued before this call has completed, with the
  /// stream's error. CPU backend: right away, on the calling thread. CUDA
  /// backend: later, on a CUDA-internal thread, also after a failure; `fn` must
  /// not call CUDA and should only post a message (e.g. `caf::anon_send`).
  /// Returns an error (and never calls `fn`) if the callback cannot be enqueued.
  virtual caf::error when_done(completion_handler fn) = 0;

  /// Returns, without blocking, the error of failed earlier work (none while
  /// work runs or after it succeeded).
  virtual caf::error check() = 0;

  /// Returns, without blocking, whether all enqueued work has finished.
  virtual bool idle() = 0;

  /// Blocks the calling thread until all enqueued work has finished and returns
  /// its error. For tests and tools; never call it from an actor's handler.
  virtual caf::error synchronize() = 0;

  // -- faults ---------------------------------------------------------------------------

  /// Enqueues a real fault of kind `x`. CUDA backend: the stream fails when it
  /// runs, with a sticky error (the process must be restarted). CPU backend:
  /// returns `gpu_errc::unsupported`.
  virtual caf::error inject_fault(fault_kind x) = 0;
};

/// Returns a fresh unique id for a collective group's communicators
/// (ncclGetUniqueId), which every rank passes to `backend::comm_join`.
/// Errors: `gpu_errc::unsupported` if built without NCCL, `nccl_error`.
caf::expected<std::vector<uint8_t>> make_comm_id();

/// Returns a CPU backend (always available).
std::unique_ptr<backend> make_cpu_backend();

/// Returns a backend on CUDA device `device` with its own stream and cuBLAS
/// handle. Errors: `gpu_errc::no_cuda` if built without CUDA, `no_device` if
/// the device does not exist (or there is no driver), otherwise the failing
/// CUDA or cuBLAS call. Every call selects the device on the calling thread
/// first, so the backend may move between threads (as actors do).
caf::expected<std::unique_ptr<backend>> make_cuda_backend(int device);

/// Returns `make_cpu_backend()` or `make_cuda_backend(device)`.
caf::expected<std::unique_ptr<backend>> make_backend(backend_kind kind, int device);

} // namespace understudy::gpu
