#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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

#include "understudy/state/state_store.hpp"
#include "understudy/state/tensor_recycler.hpp"

namespace understudy {

/// A checkpoint on its way to the writer (shared, immutable).
using checkpoint_ptr = std::shared_ptr<const checkpoint>;

/// The most bytes one received tensor may declare, whatever the message holds
/// (64 GiB): bounds what a peer can make a node allocate.
constexpr uint64_t max_received_tensor_bytes = uint64_t{1} << 36;

/// Committed checkpoints on their way to a replica: shared within a process,
/// serialized with their tensors' bytes when sent to another node.
struct checkpoint_batch {
  std::vector<checkpoint_ptr> items;
  /// Set when the received bytes were malformed (a size, count or element type
  /// out of range): what is wrong, e.g. "tensor 'w' of /job/shard-0 declares
  /// 4611686018427387904 bytes but the message holds 120 more". `items` is then
  /// empty and the batch must be refused. Empty for a well-formed batch.
  std::string problem;
  /// The problem is a checksum mismatch: the checkpoint's bytes are not the
  /// ones its sender's checksums describe.
  bool corrupt = false;
};

/// Writes every checkpoint of `x` with its tensors' bytes and the checksums its
/// receiver verifies: the XXH3-64 of each 8 MiB chunk of every tensor and one
/// over the header fields, the payload and those chunk checksums.
caf::error inspect(caf::serializer& f, checkpoint_batch& x);
/// Reads checkpoints written by the serializer overload (tensors owned by them).
/// Every size and count is checked against the bytes left in the message before
/// anything is allocated, and every checksum against the bytes received; a malformed batch is not
/// an error here (CAF would drop the message silently) but comes back empty with `problem` set and
/// the rest of the message skipped, so that its receiver can refuse it by name. The batch must
/// therefore be the last element of a message.
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
/// Request to the writer: `(put_replica_atom, checkpoint_ptr)` or
/// `(put_replica_atom, checkpoint_ptr, std::string sender, uint64_t epoch)` →
/// `uint64_t`: as put_state_atom, for a copy of another node's checkpoint, which
/// is not replicated again. With a sender, it is refused (`stale_epoch`) when
/// `epoch` is lower than the highest epoch stored from that sender (see
/// state_store::commit).
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
  /// cluster.hpp): each batch of committed puts (under durability::periodic,
  /// each batch a sync made durable) goes there as a replicate_atom request,
  /// and the puts are acknowledged once it answers that the copies are
  /// durable. When it answers with an error, or not within `replica_timeout`,
  /// the puts fail (the replica target's error, or `not_replicated`, naming
  /// the checkpoint): the version stays on this node's disk but is not
  /// acknowledged, so its step must not be committed. Null: no replication.
  caf::actor replica;
  /// How long the replica target may take to answer a batch.
  caf::timespan replica_timeout = std::chrono::seconds(30);
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
