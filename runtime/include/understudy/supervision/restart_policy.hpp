#pragma once

#include <cstdint>
#include <string>

#include <caf/timespan.hpp>

namespace understudy {

/// How a supervisor reacts when one of its children must be restarted.
enum class restart_strategy : uint8_t {
  /// Restart only the child that exited.
  one_for_one,
  /// Stop all other children (reverse start order), then restart all of them.
  one_for_all,
  /// Stop the children started after the one that exited, then restart it and them.
  rest_for_one,
  /// Dynamic children from one template spec, added with start_child; each
  /// restarts on its own like `one_for_one`.
  simple_one_for_one,
};

/// Whether a child is restarted at all after it exits.
enum class restart_type : uint8_t {
  /// Always restarted, also after a normal exit.
  permanent,
  /// Restarted only after an abnormal exit (not `normal`, not `user_shutdown`).
  transient,
  /// Never restarted; removed from the supervisor when it exits.
  temporary,
};

/// How a child is stopped by its supervisor.
enum class shutdown_mode : uint8_t {
  /// Asked to stop with `user_shutdown`; killed when the timeout passes.
  timeout,
  /// Killed at once, without a chance to clean up.
  brutal_kill,
  /// Asked to stop and waited for without limit (the default for supervisors).
  infinity,
};

/// When a supervisor stops by itself because significant children exited.
enum class auto_shutdown : uint8_t {
  /// Never (the default): significant flags are ignored.
  never,
  /// As soon as any significant child exits without being restarted.
  any_significant,
  /// When all significant children have exited without being restarted.
  all_significant,
};

/// How a child is stopped and how long it may take.
struct shutdown_spec {
  shutdown_mode mode = shutdown_mode::timeout;
  /// Only for `shutdown_mode::timeout`: grace period before the kill.
  caf::timespan timeout = std::chrono::seconds(5);

  /// Ask to stop, kill after `t`.
  static shutdown_spec after(caf::timespan t) { return {shutdown_mode::timeout, t}; }
  /// Kill at once.
  static shutdown_spec brutal() { return {shutdown_mode::brutal_kill, caf::timespan{0}}; }
  /// Ask to stop and wait without limit.
  static shutdown_spec infinite() { return {shutdown_mode::infinity, caf::timespan{0}}; }
};

/// Restart intensity: more than `max_restarts` restarts within `period` make
/// the supervisor give up and exit with `supervision_errc::intensity_exceeded`.
struct restart_intensity {
  int max_restarts = 3;
  caf::timespan period = std::chrono::seconds(5);
};

/// Delay before a restart: `min` after the first crash, multiplied by
/// `multiplier` for each further crash, capped at `max`, spread by +/- `jitter`
/// (a fraction of the delay). A child that stayed up for `reset_after` starts
/// again at `min`. All zero (the default) restarts at once.
struct backoff_policy {
  caf::timespan min{0};
  caf::timespan max{0};
  double multiplier = 2.0;
  double jitter = 0.0;
  caf::timespan reset_after = std::chrono::seconds(30);

  /// Returns whether restarts are delayed at all.
  bool enabled() const noexcept { return min.count() > 0; }

  /// Exponential backoff from `min` to `max` with `jitter`.
  static backoff_policy exponential(caf::timespan min, caf::timespan max, double jitter = 0.1,
                                    caf::timespan reset_after = std::chrono::seconds(30)) {
    return {min, max, 2.0, jitter, reset_after};
  }
};

/// Returns the name of `x`, e.g. "one_for_all".
std::string to_string(restart_strategy x);
/// Returns the name of `x`, e.g. "transient".
std::string to_string(restart_type x);
/// Returns the name of `x`, e.g. "brutal_kill".
std::string to_string(shutdown_mode x);

} // namespace understudy
