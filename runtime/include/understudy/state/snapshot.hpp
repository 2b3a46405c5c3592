#pragma once

// Portable snapshots: versions of a store's records copied to a directory on
// any filesystem, each with its checksums, to be verified and imported into
// another store (a fresh state directory, another site).
//
// A snapshot directory holds the snapshots of one job:
//   objects/ab/abcdef...   content-addressed objects (named by the SHA-256 of
//                          their bytes): each record's payload and each 8 MiB
//                          chunk of its tensors
//   manifests/step-N.json  one per snapshot: the job, its fingerprint, the
//                          step, every record with the objects it consists of,
//                          and the SHA-256 of the manifest itself
// An object already there is not written again, so a series of snapshots
// stores only the chunks that changed. Objects and manifests are written to a
// temporary name, synced and renamed: a crash leaves no half-written file
// under its final name.
//
// Promises: read_snapshot verifies every object and the manifest before it
// returns anything, so an import writes nothing from a damaged snapshot.
// Nothing here changes a store. Threads: any; each call works alone (do not
// write one directory from two calls at once). Errors: state_errc
// (corrupt_record naming the file and what it belongs to, not_found,
// invalid_config for a snapshot of another job or bad arguments, io_error).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "understudy/state/state_store.hpp"

namespace understudy {

/// One snapshot as its manifest describes it.
struct snapshot_info {
  /// Its name in the directory, e.g. "step-1200".
  std::string name;
  /// The job's path in its store (e.g. "/digits_mlp") and its fingerprint (an
  /// opaque identity of the job's maths; snapshots of one directory share it).
  std::string job;
  std::string fingerprint;
  uint64_t step = 0;
  size_t records = 0;
  /// Bytes of the objects it refers to, and of those no older snapshot of the
  /// directory refers to (what it added).
  uint64_t bytes = 0;
  uint64_t new_bytes = 0;
  /// When it was written (UTC, ISO 8601).
  std::string created;
};

/// Writes the versions at `step` of `paths` in `store` as the snapshot
/// "step-STEP" of job `job` (with `fingerprint`) into `dir` (created if
/// missing), each record read and verified from the store first. Errors:
/// invalid_config when `dir` holds snapshots of another fingerprint or job, or
/// already a snapshot of `step` with other contents; not_found / corrupt_record
/// from the store.
caf::expected<snapshot_info> write_snapshot(const state_store& store, const std::string& dir,
                                            const std::string& job, const std::string& fingerprint,
                                            uint64_t step, const std::vector<std::string>& paths);

/// The snapshots in `dir`, oldest step first (each manifest checked against
/// its own checksum; objects are not read). Errors: not_found (no snapshot
/// directory), corrupt_record naming a damaged manifest.
caf::expected<std::vector<snapshot_info>> list_snapshots(const std::string& dir);

/// Verifies snapshot `name` of `dir` (every snapshot when empty): its manifest
/// and every object it refers to (present, of its size, of its SHA-256).
/// Returns the problems found, one line each naming the file and the record it
/// belongs to; empty when everything verifies. Errors: not_found.
caf::expected<std::vector<std::string>> verify_snapshots(const std::string& dir,
                                                         const std::string& name = "");

/// A snapshot read back, every byte verified: its records as checkpoints
/// ready to commit (tensors owned by them).
struct loaded_snapshot {
  snapshot_info info;
  std::vector<std::shared_ptr<checkpoint>> records;
};

/// Reads snapshot `name` of `dir` (the newest step when empty), verifying the
/// manifest and every object before it returns. Errors: not_found,
/// corrupt_record naming the first damaged file and the record it belongs to.
caf::expected<loaded_snapshot> read_snapshot(const std::string& dir, const std::string& name = "");

/// Writes the records of `snap` into `store` in one transaction, as copies
/// (replicated puts): a version already stored is kept, and refused
/// (version_conflict) when its contents differ; nothing newer is removed.
/// Returns the first problem, naming the record (the records without one are
/// stored all the same). For a store no writer actor uses at the same time.
caf::error import_snapshot(const loaded_snapshot& snap, state_store& store);

/// What prune_snapshots removed.
struct prune_report {
  std::vector<std::string> removed;
  size_t objects_removed = 0;
  uint64_t bytes_removed = 0;
};

/// Keeps the newest `keep_last` snapshots of `dir` (at least 1) and every one
/// whose step is a multiple of `keep_every` (0: none), removes the others'
/// manifests, then the objects no kept snapshot refers to.
caf::expected<prune_report> prune_snapshots(const std::string& dir, size_t keep_last,
                                            uint64_t keep_every = 0);

/// A second site's takeover of the job whose snapshots `dir` holds, as the
/// directory records it (`dir`/PROMOTED).
struct snapshot_promotion {
  /// The cluster that took the job over, and from which snapshot step.
  std::string cluster;
  uint64_t step = 0;
  /// When (UTC, ISO 8601).
  std::string when;
};

/// Records in `dir` that `cluster` took the job over at `step` (written to a
/// temporary name, synced, renamed). Returns what it recorded.
caf::expected<snapshot_promotion> record_promotion(const std::string& dir,
                                                   const std::string& cluster, uint64_t step);

/// The promotion `dir` records, if any (an unreadable record still counts:
/// its cluster then names the file).
std::optional<snapshot_promotion> read_promotion(const std::string& dir);

} // namespace understudy
