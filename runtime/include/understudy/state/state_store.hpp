#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace understudy {

/// When a committed transaction reaches the disk.
enum class durability : uint8_t {
  /// Every commit is synced before it is acknowledged (the default): an
  /// acknowledged checkpoint survives a killed process and a power loss.
  sync_each_commit,
  /// Commits are synced every `sync_interval`; a checkpoint is acknowledged
  /// only after the sync that covers it. Fewer syncs, later acknowledgements.
  /// The environment runs with MDB_NOSYNC: a power loss (not a killed
  /// process) between syncs can, as LMDB documents, damage the environment.
  periodic,
  /// Never synced explicitly; acknowledged at commit. Survives a killed process
  /// but not a power loss. For tests and throwaway jobs.
  none,
};

/// Returns "sync_each_commit", "periodic" or "none".
std::string to_string(durability x);

/// Which versions of an actor's state to keep.
struct retention_policy {
  /// Keep the newest `keep_last` versions (at least 1; 2 or more lets a corrupt
  /// newest version fall back to the previous one).
  uint32_t keep_last = 3;
  /// Also keep every version whose step is a multiple of `keep_every` (0: none).
  uint64_t keep_every = 0;
};

/// Settings of a state store.
struct state_store_config {
  /// Directory of the LMDB environment; created if missing.
  std::string directory = ".understudy/state";
  durability mode = durability::sync_each_commit;
  /// For durability::periodic.
  std::chrono::milliseconds sync_interval{100};
  retention_policy retention;
  /// Initial size of the memory map; it doubles on MDB_MAP_FULL up to `max_map_size`.
  size_t initial_map_size = size_t{1} << 30;
  size_t max_map_size = size_t{1} << 40;
  /// Tensors are stored in chunks of this many bytes (a multiple of 4096).
  size_t chunk_size = size_t{8} << 20;
  /// Largest accepted state payload (the Cap'n Proto message without tensors).
  size_t max_payload = size_t{64} << 20;
  /// Open for reading only (e.g. `understudy inspect` next to a running node).
  bool read_only = false;
  /// Write tensors straight into the memory map (MDB_WRITEMAP) and start their
  /// writeback while later chunks are copied. Off: LMDB's default write path.
  bool write_map = true;
};

/// Element type of a tensor (mirrors schema::ElementType).
enum class element_type : uint8_t { bytes, f32, f64, i32, i64, u8, u32, u64, f16, bf16 };

/// Returns the size in bytes of one element of `x` (1 for bytes).
size_t element_size(element_type x);

/// Returns the name of `x`, e.g. "f32".
std::string to_string(element_type x);

/// The bytes of one tensor of a checkpoint. The data stays owned by `owner`
/// until the checkpoint is durable, so the actor may go on working meanwhile.
struct tensor_data {
  std::string name;
  element_type type = element_type::bytes;
  std::vector<uint64_t> shape;
  /// Keeps `data` alive.
  std::shared_ptr<const void> owner;
  const std::byte* data = nullptr;
  size_t size = 0;

  /// A tensor that shares `values` (no copy): the caller must not change them
  /// until the checkpoint is acknowledged.
  template <class T>
  static tensor_data share(std::string name, element_type type,
                           std::shared_ptr<const std::vector<T>> values) {
    tensor_data t;
    t.name = std::move(name);
    t.type = type;
    t.shape = {static_cast<uint64_t>(values->size())};
    t.data = reinterpret_cast<const std::byte*>(values->data());
    t.size = values->size() * sizeof(T);
    t.owner = std::move(values);
    return t;
  }

  /// A tensor holding a copy of `values`.
  template <class T>
  static tensor_data copy_of(std::string name, element_type type, const std::vector<T>& values) {
    return share<T>(std::move(name), type, std::make_shared<const std::vector<T>>(values));
  }
};

/// One version of one actor's state, ready to be committed.
struct checkpoint {
  /// The actor's path in the tree (no NUL bytes).
  std::string path;
  /// The version: the step this state belongs to.
  uint64_t step = 0;
  /// The state type's Cap'n Proto root type id and its version.
  uint64_t schema_id = 0;
  uint32_t schema_version = 0;
  /// Incarnation of the writing actor (informational).
  uint64_t incarnation = 0;
  /// The state's Cap'n Proto message as a flat array (capnp::messageToFlatArray).
  std::vector<uint64_t> payload;
  std::vector<tensor_data> tensors;

  /// Total bytes of payload and tensors.
  size_t byte_size() const;
};

/// Describes a stored tensor.
struct tensor_info {
  std::string name;
  element_type type = element_type::bytes;
  std::vector<uint64_t> shape;
  uint64_t size = 0;
  uint64_t chunk_size = 0;
  uint32_t chunks = 0;
};

/// Describes one stored version (from its header; not yet verified).
struct version_info {
  std::string path;
  uint64_t step = 0;
  uint64_t schema_id = 0;
  uint32_t schema_version = 0;
  uint64_t incarnation = 0;
  uint64_t payload_size = 0;
  /// Sum of the tensors' sizes.
  uint64_t tensor_size = 0;
  std::chrono::system_clock::time_point created;
  std::vector<tensor_info> tensors;
  /// Why the header could not be read (then only path and step are set);
  /// empty when it was read and its checksum matched.
  std::string problem;
};

/// A contiguous piece of stored bytes, pointing into the memory map.
struct byte_span {
  const std::byte* data = nullptr;
  size_t size = 0;
};

/// A stored version inside a read transaction. Valid only during the callback
/// it is passed to (the transaction ends when the callback returns). Every
/// accessor verifies what it returns; tensor data is verified chunk by chunk.
class record_view {
public:
  const version_info& info() const noexcept { return info_; }

  /// An owned copy of the state's payload (a Cap'n Proto flat array).
  const std::vector<uint64_t>& payload_copy() const;
  /// The payload as words, zero-copy: a pointer into the memory map when the
  /// record is 8-byte aligned there (always for records of a page or more),
  /// else into an aligned copy held by this view.
  const uint64_t* payload_words() const noexcept { return payload_words_; }
  size_t payload_word_count() const noexcept { return payload_size_ / 8; }

  /// Index of the tensor named `name`, or none.
  std::optional<size_t> find_tensor(std::string_view name) const;

  /// Copies tensor `index` into `dst` (exactly its size), verifying each
  /// chunk's checksum as it goes. Errors: truncated_chunk, corrupt_record.
  caf::error copy_tensor(size_t index, void* dst, size_t size) const;

  /// Copies chunk `chunk` of tensor `index` (`info().tensors[index]`: bytes
  /// [chunk * chunk_size, min(size, (chunk + 1) * chunk_size))) into `dst`,
  /// verifying its checksum as it goes: streams a tensor piece by piece into
  /// staging memory (e.g. pinned memory on its way to a GPU). Errors:
  /// not_found (no such tensor or chunk), truncated_chunk, corrupt_record.
  caf::error copy_chunk(size_t index, uint32_t chunk, void* dst) const;

  /// The verified chunks of tensor `index`, zero-copy (pointers into the map).
  caf::expected<std::vector<byte_span>> tensor_chunks(size_t index) const;

  /// Verifies every chunk of every tensor without copying.
  caf::error verify_tensors() const;

private:
  friend class state_store;
  struct access;
  version_info info_;
  const uint64_t* payload_words_ = nullptr;
  size_t payload_size_ = 0;
  mutable std::vector<uint64_t> payload_copy_;
  /// The record, copied when it is not 8-byte aligned in the map.
  std::vector<uint64_t> record_copy_;
  const void* txn_ = nullptr;
  const class state_store* store_ = nullptr;
  std::vector<std::vector<uint64_t>> chunk_checksums_;
};

/// Outcome of restore_newest: which version was loaded and which were skipped.
struct restore_report {
  /// The step loaded, or none for a fresh start.
  std::optional<uint64_t> step;
  /// Versions newer than the loaded one that failed verification or loading,
  /// newest first, with the reason.
  std::vector<std::pair<uint64_t, caf::error>> skipped;
  /// Time spent, including verification and the load callback.
  std::chrono::nanoseconds duration{0};
};

/// Where a replicated put comes from: the node that sent it and that node's
/// epoch when it sent it.
struct replica_origin {
  /// Empty: unknown, no epoch is checked or recorded.
  std::string sender;
  uint64_t epoch = 0;
};

/// Counters of a store, for benchmarks and metrics.
struct state_store_stats {
  uint64_t commits = 0;
  uint64_t puts = 0;
  uint64_t bytes_written = 0;
  uint64_t map_growths = 0;
  uint64_t versions_deleted = 0;
};

/// The node's state store: one LMDB environment under `directory` holding
/// every version of every persistent actor's state.
///
/// Ownership and threads: open it once per process (a second open of the same
/// directory, here or in another process, fails with `locked`; read-only opens
/// are always allowed, and one in a process that already has the directory
/// open shares that store, since LMDB must not open one environment twice in
/// a process) and share the pointer. `commit` is for the single writer
/// (spawn_state_writer); the read functions may be called from any thread,
/// each in one go: their transaction begins and ends inside the call, as LMDB
/// requires of transactions inside message handlers.
class state_store : public std::enable_shared_from_this<state_store> {
public:
  /// Opens (creating if needed) the store. Errors: invalid_config, locked,
  /// io_error (with the MDB code), corrupt_record (not an LMDB environment).
  static caf::expected<std::shared_ptr<state_store>> open(state_store_config cfg);

  ~state_store();
  state_store(const state_store&) = delete;
  state_store& operator=(const state_store&) = delete;

  const state_store_config& config() const noexcept;

  /// Commits `batch` in one transaction (each put also applies retention for
  /// its path) and, under sync_each_commit, syncs before returning. `results`
  /// gets one entry per put: none, or why that put was rejected (invalid path,
  /// payload too large) while the others commit. Grows the map on
  /// MDB_MAP_FULL. Returns the error that failed the whole transaction.
  /// `replicated[i]` (all false when empty) marks put i as a copy of another
  /// node's checkpoint, which never deletes or replaces a version: retention
  /// keeps the versions newer than it (removing them is a local rollback's
  /// rule), and where a version of its path and step is stored already it is
  /// not written again, and refused (`version_conflict`) unless identical.
  /// `origins[i]` (none when shorter) names the sender and epoch of replicated
  /// put i: refused (`stale_epoch`, naming both epochs) when the epoch is lower
  /// than the highest one stored from that sender, else that highest epoch is
  /// raised to it in the same transaction, so it survives a restart.
  caf::error commit(const std::vector<const checkpoint*>& batch, std::vector<caf::error>& results,
                    const std::vector<bool>& replicated = {},
                    const std::vector<replica_origin>& origins = {});

  /// Flushes committed data to disk (for durability::periodic).
  caf::error sync();

  /// Every actor path with at least one version, sorted.
  caf::expected<std::vector<std::string>> paths() const;

  /// The versions of `path`, oldest first (headers only, unverified).
  caf::expected<std::vector<version_info>> versions(const std::string& path) const;

  /// Runs `fn` on version `step` of `path` inside a read transaction after
  /// verifying its header checksum. Errors: not_found, corrupt_record, and
  /// whatever `fn` returns.
  caf::error read(const std::string& path, uint64_t step,
                  const std::function<caf::error(const record_view&)>& fn) const;

  /// Loads the newest version of `path` with step <= `max_step` that verifies
  /// and that `load` accepts, trying older versions when one fails. `load` gets
  /// each candidate and returns an error to reject it (e.g. a tensor checksum
  /// mismatch from copy_tensor); it must leave its target untouched then.
  /// No acceptable version is a fresh start (report.step empty), not an error;
  /// an error is an I/O failure.
  caf::expected<restore_report> restore_newest(
      const std::string& path, const std::function<caf::error(const record_view&)>& load,
      uint64_t max_step = UINT64_MAX) const;

  /// Verifies version `step` of `path` completely (header and every chunk).
  caf::error verify(const std::string& path, uint64_t step) const;

  /// The newest step <= `max_step` of `path` whose version verifies completely
  /// (header and every chunk, all that a restore verifies before it decodes):
  /// 0 when none does. Errors: I/O only.
  caf::expected<uint64_t> newest_intact(const std::string& path,
                                        uint64_t max_step = UINT64_MAX) const;

  /// The highest epoch of `sender` among the replicas stored from it (0: none).
  caf::expected<uint64_t> replica_epoch(const std::string& sender) const;

  /// Current size of the memory map in bytes.
  size_t map_size() const;

  state_store_stats stats() const;

private:
  struct impl;
  explicit state_store(std::unique_ptr<impl> ptr);
  /// Whether the replica `cp` may be written in the write transaction `txn` (an
  /// MDB_txn): none and `stored` false when no version of its path and step is
  /// stored, none and `stored` true when the same one is, else why not.
  caf::error replica_conflict(void* txn, const checkpoint& cp, bool& stored) const;
  std::unique_ptr<impl> impl_;
  friend class record_view;
};

} // namespace understudy
