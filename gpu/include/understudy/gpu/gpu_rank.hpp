#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/expected.hpp>

#include "understudy/gpu/ops.hpp"
#include "understudy/state/state_writer.hpp"
#include "understudy/supervision/child_spec.hpp"

namespace understudy::gpu {

/// One tensor of a GPU rank's durable state: buffer `id` of its GPU actor holds `values`.
struct rank_tensor {
  /// Unique within the state, e.g. "params"; no ':' in it.
  std::string name;
  buffer_id id = 0;
  /// Shared with checkpoints in flight, and never changed while shared. The
  /// rank moves the values into its GPU actor when it holds the only
  /// reference, and hands a dead incarnation's to the persistence's
  /// tensor_recycler, so that the next restore reuses their memory.
  std::shared_ptr<std::vector<float>> values;
  /// Null `values` with this many elements: a restored tensor, which the GPU
  /// actor reads from the stored version itself (gpu_restore_atom), so that
  /// the state never passes through the rank or between processes.
  uint64_t stored_count = 0;
};

/// What a GPU rank persists (as the generic TensorState schema): the tensors
/// its GPU actor holds, e.g. parameters and optimizer moments.
struct rank_state {
  /// The version: the step the tensors belong to.
  uint64_t step = 0;
  /// The job the state belongs to (see gpu_rank_options::job).
  std::string job;
  std::vector<rank_tensor> tensors;
};

/// `(rank_restore_atom, uint64_t max_step)` -> `uint64_t`: loads the newest
/// valid version with step <= max_step (the fresh state for 0 or where there is
/// none), uploads it into the GPU actor's buffers, and answers its step (0 for
/// the fresh state) once the upload has completed.
using rank_restore_atom = caf::atom_constant<caf::atom("us_rrest")>;

/// `(rank_checkpoint_atom, uint64_t step)` -> `uint64_t`: downloads the
/// tensors from the GPU actor and checkpoints them as version `step`; answers
/// the step once it is durable.
using rank_checkpoint_atom = caf::atom_constant<caf::atom("us_rckpt")>;

/// `(rank_probe_atom)` -> `uint64_t`: the newest step of the rank's state on
/// disk (0 if none), once every checkpoint sent to the writer before (also by
/// a dead incarnation) is durable.
using rank_probe_atom = caf::atom_constant<caf::atom("us_rprobe")>;

/// How a GPU rank starts.
struct gpu_rank_options {
  /// Where its state is stored (the key is the child's path).
  persistence p;
  /// Starts the GPU actor of one incarnation: spawn_gpu_actor, or a process of
  /// its own (spawn_device_process). Called from the rank's start function.
  std::function<caf::expected<caf::actor>(child_context&)> start_gpu;
  /// The state when none is stored (or when rewinding to step 0).
  std::function<rank_state()> fresh;
  /// Buffers a new GPU actor gets besides the tensors' (gradients,
  /// activations): (id, element count).
  std::vector<std::pair<buffer_id, uint64_t>> scratch;
  /// Names the job; stored with every version. A rank whose newest stored
  /// version belongs to another job fails to start (schema_mismatch).
  std::string job;
};

/// A child spec for a GPU rank: a persistent actor that owns one GPU actor
/// (linked: either's exit ends the other) and keeps the GPU actor's durable
/// tensors in the state store.
///
/// Every incarnation starts a fresh GPU actor with `start_gpu`, picks the
/// newest version of its state that verifies (or the fresh one), allocates the
/// tensors' and the scratch buffers in the GPU actor, has the GPU actor read
/// the stored tensors straight from the state store into them (or uploads the
/// fresh ones), and only then announces itself ready: a rank that a supervisor restarted after its
/// GPU actor died (a sticky error, a crashed process) serves with the state it last checkpointed,
/// already on the device.
///
/// Protocol: `rank_restore_atom`, `rank_checkpoint_atom`, `rank_probe_atom`;
/// every other message (`gpu_run_atom`, `gpu_info_atom`) is forwarded to the
/// GPU actor, so a rank can stand wherever a GPU actor does (e.g. as a rank of
/// a collective group). A failure of the GPU actor ends the rank with the GPU
/// actor's exit reason (e.g. a process that exited with status 70).
child_spec gpu_rank_child(std::string id, gpu_rank_options opts);

} // namespace understudy::gpu
