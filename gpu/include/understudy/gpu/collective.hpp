#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/timespan.hpp>

#include "understudy/core/errors.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/gpu/ops.hpp"
#include "understudy/supervision/child_spec.hpp"

namespace understudy::gpu {

// -- errors -------------------------------------------------------------------------------

/// Failures of a collective group. The context names the collective (its kind
/// and number), the ranks concerned and, for a rank's or NCCL's failure, the
/// original error. `invalid_argument` gives up; the others resolve the
/// restarted group (and ranks) again (`reconnect`).
enum class collective_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// A collective did not finish within the group's deadline (a rank did not
  /// answer, or NCCL hung): it was aborted and the group exited with this
  /// error, so that its supervisor starts a fresh group.
  deadline_exceeded,
  /// A rank failed during a collective or exited: the ranks' buffers may be
  /// inconsistent, so the group exited with this error.
  rank_failed,
  /// The request is malformed (a slice per rank is needed, all of one size;
  /// a root that is a rank); nothing ran and the group carries on.
  invalid_argument,
  /// An NCCL call failed (the context has the ncclResult_t by name and number).
  nccl_error,
};

} // namespace understudy::gpu

namespace understudy {

/// Declares `gpu::collective_errc`.
template <>
struct error_traits<gpu::collective_errc> {
  using errc = gpu::collective_errc;
  static constexpr caf::atom_value category = caf::atom("us_coll");
  static constexpr error_value<errc> values[] = {
      {errc::none, "none", "not an error", next_step::give_up},
      {errc::deadline_exceeded, "deadline_exceeded",
       "a collective did not finish within the group's deadline", next_step::reconnect},
      {errc::rank_failed, "rank_failed", "a rank failed during a collective", next_step::reconnect},
      {errc::invalid_argument, "invalid_argument", "the collective request is malformed",
       next_step::give_up},
      {errc::nccl_error, "nccl_error", "an NCCL call failed", next_step::reconnect},
  };
};

} // namespace understudy

namespace understudy::gpu {

/// Error category atom for `collective_errc`, as carried in `caf::error`.
constexpr caf::atom_value collective_category = error_traits<collective_errc>::category;

/// Registers the `collective_errc` category (rendered by name) and the
/// protocol's message types with `cfg`, so that they render readably and cross
/// process boundaries. Call before creating the actor system.
void register_collective_types(caf::actor_system_config& cfg);

// -- the group ----------------------------------------------------------------------------

/// How a group moves data between its ranks.
enum class collective_path : uint8_t {
  /// Through the ranks' own protocol: each rank's slice is downloaded, the
  /// group sums them on the host in rank order (0 + 1 + ... with float adds,
  /// as `backend::axpy` with alpha 1), and uploads the result to every rank.
  /// Works with any GPU actors (CPU backend, several on one device, in other
  /// processes); the sum is bit-identical whatever order the ranks answer in.
  local,
  /// NCCL in place: when the group starts, every rank (a GPU actor on CUDA,
  /// in this process or in a device process of its own) joins one fresh
  /// communicator (`gpu_comm_join_atom`); each collective is then one batch
  /// per rank with an `all_reduce` or `broadcast` op, which NCCL runs on the
  /// rank's own stream over the slice in its device buffer: no copy to the
  /// host, and no CUDA context in the group's process. Needs a build with
  /// NCCL and ranks on distinct devices; sums are NCCL's (not necessarily in
  /// rank order).
  nccl,
};

/// Returns "local" or "nccl".
std::string to_string(collective_path x);

/// Returns whether this build has NCCL (found next to CUDA at build time).
bool nccl_compiled() noexcept;

/// `(all_reduce_atom, std::vector<slice>)` -> `caf::ok_atom`: sums the slices,
/// slice r on rank r, and leaves the sum in every one of them.
using all_reduce_atom = caf::atom_constant<caf::atom("us_allred")>;

/// `(broadcast_atom, uint32_t root, std::vector<slice>)` -> `caf::ok_atom`:
/// copies rank root's slice into the slices of the other ranks.
using broadcast_atom = caf::atom_constant<caf::atom("us_bcast")>;

/// `(collective_info_atom)` -> `std::string`: the path, the ranks and, where a
/// requested NCCL path fell back to the local one, why.
using collective_info_atom = caf::atom_constant<caf::atom("us_cinfo")>;

/// What a collective group works on.
struct collective_options {
  /// The ranks, in rank order: GPU actors (gpu_actor.hpp) or anything that
  /// answers `(gpu_run_atom, op_batch)` like one (a gpu_rank, a device process).
  std::vector<caf::actor> ranks;
  /// Alternatively the ranks by id under `rank_supervisor`, resolved when the
  /// group starts (`resolve_atom`: waits while a rank restarts). Used when
  /// `ranks` is empty; `collective_child` defaults the supervisor to the
  /// group's own (the ranks are its siblings).
  caf::actor rank_supervisor;
  std::vector<std::string> rank_ids;
  /// A collective that has not finished this long after it started is aborted
  /// and the group fails with `collective_errc::deadline_exceeded`.
  caf::timespan deadline = std::chrono::seconds(30);
  /// The requested path; `nccl` falls back to `local` (and says so in
  /// `collective_info_atom` and `plan_collective`) where NCCL is not compiled
  /// in, no devices are named (CPU ranks) or ranks share a device.
  collective_path path = collective_path::local;
  /// For `nccl`: the CUDA device of each rank, in rank order.
  std::vector<int> devices;
};

/// The path a group with `opts` takes, and why where it is not the requested one.
struct collective_plan {
  collective_path path = collective_path::local;
  /// Empty, or e.g. "NCCL requested, but understudy was built without NCCL".
  std::string fallback_reason;
};

/// Returns the path a group with `opts` takes (no side effects).
collective_plan plan_collective(const collective_options& opts);

/// Spawns a collective group over `opts.ranks` (or the resolved `rank_ids`).
///
/// Protocol: `all_reduce_atom`, `broadcast_atom`, `collective_info_atom` (see
/// there). Collectives run one at a time in arrival order, each watched by
/// `opts.deadline`. A bad request (wrong number of slices, sizes that differ,
/// a root that is no rank, a slice a rank rejects as `invalid_argument` before
/// anything changed) fails only itself. Any other failure — the deadline
/// passing (NCCL communicators are aborted with ncclCommAbort), a rank failing
/// or exiting — is replied to every pending request and the group exits with
/// it, so that its supervisor starts a fresh group (with fresh NCCL
/// communicators). The group monitors its ranks: a rank's exit ends it too.
///
/// On the NCCL path the ranks join when the group starts (within the
/// deadline; collectives wait for it), and a failing group aborts the ranks'
/// communicators (`gpu_comm_abort_atom`), so that a collective stuck on a
/// dead peer returns; the buffers it wrote must be restored before use.
///
/// Errors: `collective_errc::invalid_argument` if there are no ranks, or
/// `devices` does not name one device per rank for the NCCL path.
caf::expected<caf::actor> spawn_collective_group(caf::actor_system& sys, collective_options opts);

/// A child spec for a collective group (permanent): every incarnation is a
/// fresh group with `opts` (ranks resolved again when given by id; without a
/// `rank_supervisor`, under the group's own supervisor).
child_spec collective_child(std::string id, collective_options opts);

} // namespace understudy::gpu
