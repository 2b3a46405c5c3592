#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/deserializer.hpp>
#include <caf/fwd.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/serializer.hpp>
#include <caf/timespan.hpp>

#include "understudy/runtime/state_store.hpp"
#include "understudy/runtime/tensor_recycler.hpp"

namespace understudy {

/// A checkpoint on its way to the writer (shared, immutable).
using checkpoint_ptr = std::shared_ptr<const checkpoint>;

/// Committed checkpoints on their way to a replica: shared within a process,
/// serialized with their tensors' bytes when sent to another node.
struct checkpoint_batch {
  std::vector<checkpoint_ptr> items;
};

/// Writes every checkpoint of `x` with its tensors' bytes.
caf::error inspect(caf::serializer& f, checkpoint_batch& x);
/// Reads checkpoints written by the serializer overload (tensors owned by them).
caf::error inspect(caf::deserializer& f, checkpoint_batch& x);
/// For printing (CAF's to_string): the number of checkpoints.
template <class Inspector>
std::enable_if_t<!std::is_base_of<caf::serializer, Inspector>::value &&
                     !std::is_base_of<caf::deserializer, Inspector>::value,
                 typename Inspector::result_type>
inspect(Inspector& f, checkpoint_batch& x) {
  auto n = x.items.size();
  return f(caf::meta::type_name("checkpoint_batch"), n);
}

/// Request to the writer: `(put_state_atom, checkpoint_ptr)` → `uint64_t` (the
/// step) once the checkpoint is durable (per the store's durability mode), or
/// the error that rejected it.
using put_state_atom = caf::atom_constant<caf::atom("us_put")>;
/// Request to the writer: `(sync_state_atom)` → `uint64_t` (commits so far) once
/// everything acknowledged or pending is on disk.
using sync_state_atom = caf::atom_constant<caf::atom("us_sync")>;
/// Request to the writer: `(put_replica_atom, checkpoint_ptr)` → `uint64_t`: as
/// put_state_atom, for a copy of another node's checkpoint, which is not
/// replicated again.
using put_replica_atom = caf::atom_constant<caf::atom("us_putrep")>;
/// Request to a writer's replica target: `(replicate_atom, checkpoint_batch)` →
/// `uint64_t` (how many it stored) once the copies are durable where they went.
using replicate_atom = caf::atom_constant<caf::atom("us_repl")>;

/// Limits of one group commit.
struct state_writer_config {
  /// At most this many puts per transaction.
  size_t max_batch_puts = 1024;
  /// At most this many bytes per transaction (a single larger put still commits alone).
  size_t max_batch_bytes = size_t{256} << 20;
  /// When the previous transaction carried several puts (others checkpoint
  /// too) and fewer are waiting now, wait up to this long for the rest before
  /// committing, as PostgreSQL's commit_delay. Zero: commit at once.
  caf::timespan commit_delay = std::chrono::microseconds(200);
  /// Where committed checkpoints are copied (a node's replicator, see
  /// cluster.hpp): each batch of committed puts goes there as a replicate_atom
  /// request, and the puts are acknowledged once it answers; when it answers
  /// with an error, they are acknowledged anyway (the copy is lost, not the
  /// checkpoint). Null: no replication.
  caf::actor replica;
  /// Called on the writer's thread after each transaction with how long the
  /// commit took (durable per the store's mode), e.g. for a metrics histogram.
  std::function<void(std::chrono::nanoseconds)> on_commit;
};

/// What persistent actors need: the node's store (to load from) and its writer
/// (to checkpoint through). Build it once in main() (or take it from
/// runtime::open_state) and pass it to the children's specs.
struct persistence {
  std::shared_ptr<state_store> store;
  caf::actor writer;
  /// Tensor buffers of dead incarnations, for codecs that recycle (may be null).
  std::shared_ptr<tensor_recycler> recycler;
  explicit operator bool() const noexcept { return store && writer; }
};

/// Spawns the single writer of `store`: a detached actor that batches the puts
/// waiting in its mailbox into one transaction (group commit) and answers each
/// put when its data is durable. One writer per store. It stops with the
/// actor system or on an exit message; pending puts then get `writer_stopped`.
caf::actor spawn_state_writer(caf::actor_system& sys, std::shared_ptr<state_store> store,
                              state_writer_config cfg = {});

} // namespace understudy

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(understudy::checkpoint_ptr)
