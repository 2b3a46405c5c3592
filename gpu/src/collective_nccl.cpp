// One rank's NCCL communicator (built where NCCL was found).

#include "collective_nccl.hpp"

#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#include "cuda_errors.hpp"
#include "understudy/gpu/backend.hpp"
#include "understudy/gpu/collective.hpp"

namespace understudy::gpu {

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

/// How long an enqueue that NCCL reports as still in progress may take
/// before the rank gives up on it.
constexpr auto enqueue_limit = std::chrono::seconds(5);

} // namespace

caf::expected<std::vector<uint8_t>> make_comm_id() {
  ncclUniqueId id;
  if (auto r = ncclGetUniqueId(&id); r != ncclSuccess)
    return nccl_failure(r, "ncclGetUniqueId");
  std::vector<uint8_t> result(sizeof(id.internal));
  std::memcpy(result.data(), id.internal, result.size());
  return result;
}

namespace detail {

struct nccl_comm::impl {
  int device = 0;
  ncclComm_t comm = nullptr;
  bool joined = false;

  caf::error select() {
    if (auto e = cudaSetDevice(device); e != cudaSuccess) {
      auto err = cuda_failure(e, "cudaSetDevice", device);
      if (!is_sticky(e))
        cudaGetLastError();
      return err;
    }
    return {};
  }

  /// Waits while NCCL still enqueues a collective in the background (a
  /// non-blocking communicator may answer ncclInProgress): later work on the
  /// stream must come after it.
  caf::error settle(ncclResult_t r, const char* call) {
    const auto until = std::chrono::steady_clock::now() + enqueue_limit;
    while (r == ncclInProgress) {
      if (std::chrono::steady_clock::now() > until)
        return make_error(collective_errc::nccl_error,
                          std::string{call} + ": still being enqueued after 5 s");
      if (auto q = ncclCommGetAsyncError(comm, &r); q != ncclSuccess)
        return nccl_failure(q, "ncclCommGetAsyncError");
    }
    if (r != ncclSuccess)
      return nccl_failure(r, call);
    return {};
  }

  caf::error usable(const char* call) {
    if (comm == nullptr)
      return make_error(collective_errc::nccl_error,
                        std::string{call} + ": the communicator was aborted");
    if (!joined)
      return make_error(collective_errc::nccl_error,
                        std::string{call} + ": the communicator has not finished joining");
    return select();
  }
};

nccl_comm::nccl_comm(std::unique_ptr<impl> ptr) : impl_(std::move(ptr)) {
  // nop
}

nccl_comm::~nccl_comm() {
  abort();
}

caf::expected<std::unique_ptr<nccl_comm>> nccl_comm::join(int device,
                                                          const std::vector<uint8_t>& id,
                                                          uint32_t ranks, uint32_t rank) {
  ncclUniqueId uid;
  if (id.size() != sizeof(uid.internal))
    return make_error(collective_errc::invalid_argument,
                      "an NCCL unique id has " + std::to_string(sizeof(uid.internal)) +
                          " bytes, got " + std::to_string(id.size()));
  if (ranks == 0 || rank >= ranks)
    return make_error(collective_errc::invalid_argument,
                      "rank " + std::to_string(rank) + " of " + std::to_string(ranks));
  std::memcpy(uid.internal, id.data(), id.size());
  static std::once_flag eager;
  std::call_once(eager, [] { ::setenv("NCCL_RUNTIME_CONNECT", "0", 0); });
  auto st = std::make_unique<impl>();
  st->device = device;
  if (auto err = st->select())
    return err;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  auto r = ncclCommInitRankConfig(&st->comm, static_cast<int>(ranks), uid, static_cast<int>(rank),
                                  &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    auto err =
        nccl_failure(r, "ncclCommInitRankConfig (rank " + std::to_string(rank) + " of " +
                            std::to_string(ranks) + " on device " + std::to_string(device) + ")");
    if (st->comm != nullptr)
      ncclCommAbort(st->comm);
    st->comm = nullptr;
    return err;
  }
  return std::unique_ptr<nccl_comm>{new nccl_comm(std::move(st))};
}

caf::expected<bool> nccl_comm::ready() {
  auto& st = *impl_;
  if (st.comm == nullptr)
    return make_error(collective_errc::nccl_error, "the communicator was aborted");
  if (st.joined)
    return true;
  ncclResult_t state = ncclSuccess;
  if (auto r = ncclCommGetAsyncError(st.comm, &state); r != ncclSuccess)
    return nccl_failure(r, "ncclCommGetAsyncError");
  if (state == ncclInProgress)
    return false;
  if (state != ncclSuccess)
    return nccl_failure(state, "joining the communicator");
  st.joined = true;
  return true;
}

caf::error nccl_comm::all_reduce(float* x, size_t n, cudaStream_t stream) {
  auto& st = *impl_;
  if (auto err = st.usable("ncclAllReduce"))
    return err;
  return st.settle(ncclAllReduce(x, x, n, ncclFloat, ncclSum, st.comm, stream), "ncclAllReduce");
}

caf::error nccl_comm::broadcast(float* x, size_t n, uint32_t root, cudaStream_t stream) {
  auto& st = *impl_;
  if (auto err = st.usable("ncclBroadcast"))
    return err;
  return st.settle(ncclBroadcast(x, x, n, ncclFloat, static_cast<int>(root), st.comm, stream),
                   "ncclBroadcast");
}

void nccl_comm::abort() noexcept {
  auto& st = *impl_;
  if (st.comm == nullptr)
    return;
  static_cast<void>(st.select()); // aborts anyway: it frees what it can
  ncclCommAbort(st.comm);
  st.comm = nullptr;
  st.joined = false;
}

} // namespace detail

} // namespace understudy::gpu
