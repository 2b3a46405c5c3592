#pragma once

// Errors: one small `enum class` per subsystem, declared once through
// `error_traits` (its category atom and, value by value, its name, a one-line
// description and what the caller should do next). The plumbing is written
// once, here, for every enum that has traits: `to_string`, `description`,
// `next_step_for`, `make_error`, `is` and the renderer that
// `register_error_category` gives CAF.
//
// Errors travel in `caf::error` (and `caf::expected<T>`), so they cross actor,
// process and node boundaries. An error made by `make_error` names itself: its
// context message holds the value's name, then the details (`(name)` or
// `(name, context)`), so `describe` renders it by name in any process, even
// one that has never heard of its category. Read the details with
// `error_context`.
//
// Threads: everything here is a pure function; call it from any thread.
// Errors: none of these functions fail; a code outside its enum (from a newer
// peer) is named "unknown" and classified `give_up`.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/fwd.hpp>

namespace understudy {

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

// -- declaring an error enum ------------------------------------------------------------

/// One value of an error enum as its traits declare it.
template <class E>
struct error_value {
  /// The value; entry `i` of `error_traits<E>::values` holds the value `i`.
  E code;
  /// Its name as users see it, e.g. "corrupt_record".
  std::string_view name;
  /// What it means, in one line.
  std::string_view description;
  /// What the caller should do next.
  next_step next;
};

/// Declares the error enum `E`. Specialize it once, next to `E`, with
/// - `static constexpr caf::atom_value category`: the category in `caf::error`;
/// - `static constexpr error_value<E> values[]`: every value of `E`, in order from 0.
/// The functions below then work for `E`; register its category with
/// `register_error_category<E>` where its component registers its types.
template <class E>
struct error_traits;

namespace detail {

template <class E, class = void>
struct has_error_traits : std::false_type {};

template <class E>
struct has_error_traits<
    E, std::void_t<decltype(error_traits<E>::category), decltype(error_traits<E>::values)>>
    : std::is_enum<E> {};

template <class E>
constexpr bool values_in_order() {
  size_t i = 0;
  for (const auto& v : error_traits<E>::values)
    if (static_cast<size_t>(v.code) != i++)
      return false;
  return i > 0 && i <= 256;
}

/// Returns a `caf::error` whose context is `(name)`.
caf::error make_named_error(uint8_t code, caf::atom_value category, std::string_view name);

/// Returns a `caf::error` whose context is `(name, context)`.
caf::error make_named_error(uint8_t code, caf::atom_value category, std::string_view name,
                            std::string context);

/// Registers a renderer for `category` that names codes with `name_of`.
void add_error_renderer(caf::actor_system_config& cfg, caf::atom_value category,
                        std::string (*name_of)(uint8_t));

} // namespace detail

/// Whether `E` is an error enum declared through `error_traits`.
template <class E>
constexpr bool is_error_enum_v = detail::has_error_traits<E>::value;

/// Enables a function for error enums only.
template <class E, class R = void>
using enable_if_error_enum_t = std::enable_if_t<is_error_enum_v<E>, R>;

/// Returns the traits entry of `x`, or nullptr for a code outside the enum.
template <class E>
constexpr enable_if_error_enum_t<E, const error_value<E>*> error_value_of(E x) noexcept {
  static_assert(detail::values_in_order<E>(),
                "error_traits<E>::values must list every value of E in order from 0");
  constexpr auto& values = error_traits<E>::values;
  auto i = static_cast<size_t>(x);
  return i < std::size(values) ? &values[i] : nullptr;
}

/// Returns the name of `x`, e.g. "corrupt_record" ("unknown" outside the enum).
template <class E>
enable_if_error_enum_t<E, std::string> to_string(E x) {
  const auto* v = error_value_of(x);
  return v ? std::string{v->name} : std::string{"unknown"};
}

/// Returns what `x` means, in one line.
template <class E>
enable_if_error_enum_t<E, std::string_view> description(E x) noexcept {
  const auto* v = error_value_of(x);
  return v ? v->description : std::string_view{"a code this build does not know"};
}

/// Classifies `x` by what the caller should do next (`give_up` outside the enum).
template <class E>
constexpr enable_if_error_enum_t<E, next_step> next_step_for(E x) noexcept {
  const auto* v = error_value_of(x);
  return v ? v->next : next_step::give_up;
}

/// Wraps `x` into a `caf::error` that names itself and crosses actor, process
/// and node boundaries. Code 0 (`none`) makes the empty error, as CAF's own.
template <class E>
enable_if_error_enum_t<E, caf::error> make_error(E x) {
  return detail::make_named_error(static_cast<uint8_t>(x), error_traits<E>::category,
                                  error_value_of(x) ? error_value_of(x)->name : "unknown");
}

/// Wraps `x` into a `caf::error` with a context message describing the details.
template <class E>
enable_if_error_enum_t<E, caf::error> make_error(E x, std::string context) {
  return detail::make_named_error(static_cast<uint8_t>(x), error_traits<E>::category,
                                  error_value_of(x) ? error_value_of(x)->name : "unknown",
                                  std::move(context));
}

/// Returns whether `err` is of `E`'s category with code `x`; an empty error
/// (CAF's "no error") is only `E`'s `none` (code 0).
template <class E>
enable_if_error_enum_t<E, bool> is(const caf::error& err, E x) noexcept {
  if (!err)
    return static_cast<uint8_t>(x) == 0;
  return err.category() == error_traits<E>::category && err.code() == static_cast<uint8_t>(x);
}

/// Registers `E`'s category with `cfg` so that `caf::actor_system::render`
/// prints its errors by name with their context. Call once per category and
/// config, from the registration function of `E`'s component.
template <class E>
enable_if_error_enum_t<E> register_error_category(caf::actor_system_config& cfg) {
  detail::add_error_renderer(cfg, error_traits<E>::category,
                             [](uint8_t code) { return to_string(static_cast<E>(code)); });
}

// -- reading any error ------------------------------------------------------------------

/// Renders any error readably: ours by name with their context (also those of
/// categories this process does not know, as they name themselves), CAF's own
/// (`exit_reason`, `sec`) as CAF renders them. Safe to call from any thread.
std::string describe(const caf::error& err);

/// Returns the details of `err` without its name: the `context` given to
/// `make_error`, or CAF's context rendered; empty if there is none.
std::string error_context(const caf::error& err);

/// Returns `err` with `prefix` put before its details: the same category and
/// code, so that `is` and `next_step_for` still see what it is. One of CAF's
/// own errors (`sec`, `exit_reason`) or one without a name keeps its code and
/// category too, its rendering becoming the details. The empty error stays empty.
caf::error with_context(const caf::error& err, const std::string& prefix);

// -- the core's errors ------------------------------------------------------------------

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

/// Declares `supervision_errc`.
template <>
struct error_traits<supervision_errc> {
  static constexpr caf::atom_value category = caf::atom("us_superv");
  static constexpr error_value<supervision_errc> values[] = {
      {supervision_errc::none, "none", "not an error", next_step::retry_now},
      {supervision_errc::duplicate_child_id, "duplicate_child_id",
       "two children of one supervisor share an id", next_step::give_up},
      {supervision_errc::unknown_child, "unknown_child", "the supervisor has no child of that id",
       next_step::give_up},
      {supervision_errc::start_failed, "start_failed",
       "a child failed to start or died before it was serving", next_step::back_off},
      {supervision_errc::start_timeout, "start_timeout",
       "a child did not become ready within its start timeout", next_step::retry_now},
      {supervision_errc::invalid_intensity, "invalid_intensity",
       "max_restarts is negative or period is not positive", next_step::give_up},
      {supervision_errc::invalid_timeout, "invalid_timeout",
       "a shutdown, start or liveness timeout is not positive", next_step::give_up},
      {supervision_errc::invalid_backoff, "invalid_backoff", "the backoff bounds are inconsistent",
       next_step::give_up},
      {supervision_errc::invalid_child_spec, "invalid_child_spec",
       "a child spec is incomplete or combines incompatible options", next_step::give_up},
      {supervision_errc::intensity_exceeded, "intensity_exceeded",
       "too many restarts within the period: the supervisor gave up", next_step::back_off},
      {supervision_errc::liveness_deadline_missed, "liveness_deadline_missed",
       "a child made no progress within its liveness deadline", next_step::reconnect},
      {supervision_errc::wrong_strategy, "wrong_strategy",
       "the request does not fit the supervisor's strategy", next_step::give_up},
      {supervision_errc::child_running, "child_running", "the request needs the child stopped",
       next_step::give_up},
      {supervision_errc::child_not_running, "child_not_running",
       "the request needs a running child", next_step::back_off},
      {supervision_errc::supervisor_stopping, "supervisor_stopping",
       "the supervisor is shutting down", next_step::reconnect},
      {supervision_errc::timeout, "timeout", "a blocking call did not complete in time",
       next_step::retry_now},
  };
};

/// Error category atom for `supervision_errc`, as carried in `caf::error`.
constexpr caf::atom_value supervision_category = error_traits<supervision_errc>::category;

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
  /// A replicated version differs from the version already stored at its path
  /// and step: refused, the stored one stays.
  version_conflict,
  /// A replica comes from a sender epoch lower than one already stored from
  /// that sender (a node that was replaced and came back): refused.
  stale_epoch,
  /// A checkpoint is durable on its node but its replica did not become durable
  /// (the replica target failed or did not answer in time): the put fails.
  not_replicated,
};

/// Declares `state_errc`.
template <>
struct error_traits<state_errc> {
  static constexpr caf::atom_value category = caf::atom("us_state");
  static constexpr error_value<state_errc> values[] = {
      {state_errc::none, "none", "not an error", next_step::retry_now},
      {state_errc::io_error, "io_error", "an LMDB or operating-system call failed",
       next_step::retry_now},
      {state_errc::disk_full, "disk_full", "the disk is full", next_step::back_off},
      {state_errc::map_size_limit, "map_size_limit", "the map reached max_map_size and cannot grow",
       next_step::back_off},
      {state_errc::locked, "locked", "the state directory is in use by another store",
       next_step::back_off},
      {state_errc::invalid_config, "invalid_config", "a state store setting is impossible",
       next_step::give_up},
      {state_errc::invalid_path, "invalid_path", "an actor path is empty or contains a NUL byte",
       next_step::give_up},
      {state_errc::payload_too_large, "payload_too_large",
       "a checkpoint's payload exceeds the payload limit", next_step::give_up},
      {state_errc::corrupt_record, "corrupt_record", "a record failed verification",
       next_step::give_up},
      {state_errc::truncated_chunk, "truncated_chunk",
       "a tensor chunk is missing or shorter than its header says", next_step::give_up},
      {state_errc::not_found, "not_found", "the requested version does not exist",
       next_step::give_up},
      {state_errc::schema_mismatch, "schema_mismatch",
       "a record's schema is not the one the state type reads", next_step::give_up},
      {state_errc::read_only, "read_only", "the store was opened read-only", next_step::give_up},
      {state_errc::writer_stopped, "writer_stopped",
       "the state writer stopped before the checkpoint was durable", next_step::reconnect},
      {state_errc::version_conflict, "version_conflict",
       "another version is stored at that path and step", next_step::give_up},
      {state_errc::stale_epoch, "stale_epoch",
       "a replica comes from an older epoch of its sender than one stored", next_step::give_up},
      {state_errc::not_replicated, "not_replicated",
       "the checkpoint is durable on its node but not on its replica", next_step::back_off},
  };
};

/// Error category atom for `state_errc`, as carried in `caf::error`.
constexpr caf::atom_value state_category = error_traits<state_errc>::category;

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

/// Declares `config_errc`.
template <>
struct error_traits<config_errc> {
  static constexpr caf::atom_value category = caf::atom("us_config");
  static constexpr error_value<config_errc> values[] = {
      {config_errc::none, "none", "not an error", next_step::give_up},
      {config_errc::cannot_read, "cannot_read", "the file cannot be opened or read",
       next_step::give_up},
      {config_errc::syntax, "syntax", "the file is not valid TOML", next_step::give_up},
      {config_errc::unknown_key, "unknown_key", "a key the table does not have",
       next_step::give_up},
      {config_errc::wrong_type, "wrong_type", "a value of the wrong type", next_step::give_up},
      {config_errc::missing_key, "missing_key", "a required key or table is missing",
       next_step::give_up},
      {config_errc::invalid_value, "invalid_value",
       "a value outside its range, a bad duration or an unknown name", next_step::give_up},
      {config_errc::duplicate, "duplicate", "two nodes or two children share a name or address",
       next_step::give_up},
      {config_errc::unknown_node, "unknown_node", "a placement or buddy names no node of the file",
       next_step::give_up},
      {config_errc::unsatisfiable_placement, "unsatisfiable_placement",
       "a placement cannot be satisfied", next_step::give_up},
      {config_errc::insecure, "insecure", "nodes off loopback without [cluster.security]",
       next_step::give_up},
      {config_errc::invalid_job, "invalid_job", "the training job is invalid", next_step::give_up},
  };
};

/// Error category atom for `config_errc`, as carried in `caf::error`.
constexpr caf::atom_value config_category = error_traits<config_errc>::category;

/// Registers the core's error categories (`supervision_errc`, `state_errc`,
/// `config_errc`) with `cfg` so that `caf::actor_system::render` prints them by
/// name; `runtime` does so for the systems it builds. Each mechanism above
/// registers its own: `register_process_types` (process_errc),
/// `register_cluster_error_categories` (security and cluster errors).
void register_error_categories(caf::actor_system_config& cfg);

} // namespace understudy
