#pragma once

#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/fwd.hpp>

namespace understudy {

/// Error category atom for `supervision_errc`, as carried in `caf::error`.
constexpr caf::atom_value supervision_category = caf::atom("us_superv");

/// Error category atom for `state_errc`, as carried in `caf::error`.
constexpr caf::atom_value state_category = caf::atom("us_state");

/// Error category atom for `config_errc`, as carried in `caf::error`.
constexpr caf::atom_value config_category = caf::atom("us_config");

/// What a caller should do next after a failure: the same question a supervisor
/// and a client ask, so every error answers it.
enum class next_step : uint8_t {
  /// Try again right away: the condition was transient.
  retry_now,
  /// Try again later: the target is busy or restarting.
  back_off,
  /// Resolve the peer again (it restarted or moved) and retry.
  reconnect,
  /// Do not retry: the request or configuration is wrong and must be fixed.
  give_up,
};

/// Returns a human-readable name for `x`.
std::string to_string(next_step x);

/// Failures of supervisors and of requests made to them.
enum class supervision_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// Two children of one supervisor share an id (the context names the id).
  duplicate_child_id,
  /// A request names a child the supervisor does not have.
  unknown_child,
  /// A child's start function returned an error or the new child died before
  /// it was serving; the context names the child and the reason.
  start_failed,
  /// A child did not become ready within its `start_timeout`.
  start_timeout,
  /// `max_restarts` negative or `period` not positive.
  invalid_intensity,
  /// A shutdown, start or liveness timeout is zero or negative.
  invalid_timeout,
  /// Backoff bounds are inconsistent (min > max, multiplier < 1, jitter outside [0, 1]).
  invalid_backoff,
  /// A child spec lacks an id or a start function, or combines incompatible options.
  invalid_child_spec,
  /// More than `max_restarts` restarts within `period`: the supervisor gave up and
  /// exits with this reason so that its parent applies its own strategy.
  intensity_exceeded,
  /// A child reported no progress within its liveness deadline and was killed.
  liveness_deadline_missed,
  /// The request is not valid for this supervisor's strategy (e.g. start_child
  /// with arguments on a supervisor that is not `simple_one_for_one`).
  wrong_strategy,
  /// The child is running; the request needs it stopped (e.g. delete_child).
  child_running,
  /// The child is stopped or not yet started; the request needs a running child.
  child_not_running,
  /// The supervisor is shutting down and accepts no new work.
  supervisor_stopping,
  /// A blocking call on the runtime did not complete within its timeout.
  timeout,
};

/// Failures of the state store (state_store.hpp) and of persistent actors.
enum class state_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// An LMDB or operating-system call failed; the context names the call, the
  /// directory and the original code (`MDB_*` or errno) with its text.
  io_error,
  /// The disk is full (ENOSPC): the transaction was aborted, nothing committed is lost.
  disk_full,
  /// The map reached `max_map_size` and cannot grow further.
  map_size_limit,
  /// The state directory is in use by another store (this or another process).
  locked,
  /// A configuration value is impossible (e.g. zero chunk size, keep_last of 0).
  invalid_config,
  /// An actor path is empty or contains a NUL byte.
  invalid_path,
  /// A checkpoint's payload exceeds the payload limit (put large data in tensors).
  payload_too_large,
  /// A record failed verification: checksum mismatch, malformed Cap'n Proto
  /// data, or a header that does not match its key. The context names the record.
  corrupt_record,
  /// A tensor chunk of a record is missing or shorter than its header says.
  truncated_chunk,
  /// The requested version does not exist.
  not_found,
  /// A record's schema id or version is not the one the state type reads.
  schema_mismatch,
  /// A write was attempted on a store opened read-only.
  read_only,
  /// The state writer stopped before the checkpoint was durable.
  writer_stopped,
};

/// Failures of reading a node config file (node_config.hpp). Every error's
/// context is one message naming the file and line: `FILE:LINE: problem`.
/// All of them mean the file must be fixed (`give_up`).
enum class config_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// The file cannot be opened or read; the context has the OS reason.
  cannot_read,
  /// The file is not valid TOML.
  syntax,
  /// A key the table does not have (the context suggests the closest one).
  unknown_key,
  /// A value of the wrong type, e.g. a string where an integer belongs.
  wrong_type,
  /// A required key or table is missing.
  missing_key,
  /// A value outside its range, a bad duration or an unknown name.
  invalid_value,
  /// Two nodes share a name, an address or a state directory, or two
  /// children of one supervisor share a name.
  duplicate,
  /// A placement or buddy names no node of the file.
  unknown_node,
  /// A placement cannot be satisfied (only spare nodes, not enough GPUs).
  unsatisfiable_placement,
  /// Nodes off loopback without a `[cluster.security]` section.
  insecure,
  /// The training job is invalid (as the training component judges it).
  invalid_job,
};

/// Returns the name of `x`, e.g. "unknown_key".
std::string to_string(config_errc x);

/// Classifies `x` by what the caller should do next: always `give_up`.
next_step next_step_for(config_errc x);

/// Wraps `x` into a `caf::error` with a context message `FILE:LINE: problem`.
caf::error make_error(config_errc x, std::string context);

/// Returns whether `err` is of category `config_category` with code `x`.
bool is(const caf::error& err, config_errc x);

/// Returns the name of `x`, e.g. "corrupt_record".
std::string to_string(state_errc x);

/// Classifies `x` by what the caller should do next.
next_step next_step_for(state_errc x);

/// Wraps `x` into a `caf::error`.
caf::error make_error(state_errc x);

/// Wraps `x` into a `caf::error` with a context message describing the details.
caf::error make_error(state_errc x, std::string context);

/// Returns whether `err` is of category `state_category` with code `x`.
bool is(const caf::error& err, state_errc x);

/// Returns the name of `x`, e.g. "duplicate_child_id".
std::string to_string(supervision_errc x);

/// Classifies `x` by what the caller should do next.
next_step next_step_for(supervision_errc x);

/// Wraps `x` into a `caf::error` so that it crosses actor and node boundaries.
caf::error make_error(supervision_errc x);

/// Wraps `x` into a `caf::error` with a context message describing the details.
caf::error make_error(supervision_errc x, std::string context);

/// Returns whether `err` is of category `supervision_category` with code `x`.
bool is(const caf::error& err, supervision_errc x);

/// Renders any error readably: our categories by name with their context, CAF's
/// own (`exit_reason`, `sec`) as CAF renders them. Safe to call from any thread.
std::string describe(const caf::error& err);

/// Registers understudy's error categories with `cfg` so that
/// `caf::actor_system::render` prints them by name.
void register_error_categories(caf::actor_system_config& cfg);

} // namespace understudy
