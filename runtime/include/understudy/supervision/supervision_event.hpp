#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <caf/timespan.hpp>

namespace understudy {

/// What happened in a supervision event.
enum class event_kind : uint8_t {
  /// A child's first incarnation is serving.
  child_started,
  /// A child exited (any reason); `action` says what the supervisor does about it.
  child_exited,
  /// A restarted child is serving again; `recovery_time` is crash to serving.
  child_restarted,
  /// A start or restart attempt failed; `reason` says why.
  start_failed,
  /// A child missed its liveness deadline and was killed.
  hang_detected,
  /// A worker of a training job stayed far behind the others and was killed
  /// to be restarted (reported by the job's trainer).
  straggler_detected,
  /// A child ignored its shutdown request and was killed when its timeout passed.
  shutdown_timeout,
  /// A child was stopped by its supervisor (shutdown, terminate_child, group restart).
  child_stopped,
  /// More than max_restarts within period: the supervisor gives up.
  intensity_exceeded,
  /// The supervisor finished starting all its children.
  supervisor_started,
  /// The supervisor stopped; `reason` is its exit reason.
  supervisor_stopped,
  /// A persistent child loaded its newest version; `action` names the step,
  /// `duration` is the load time.
  state_restored,
  /// A persistent child skipped newer versions that failed verification and
  /// loaded an older one; `reason` names each skipped version and why.
  state_fallback,
  /// A persistent child found no valid version and starts fresh; `reason` says
  /// whether there was none or all were corrupt.
  state_fresh,
  /// A job's driver (a training job's trainer) runs again after an incident;
  /// `reason` says from which committed step and how many steps were lost,
  /// `duration` what the incident cost.
  job_resumed,
};

/// Returns the name of `x`, e.g. "child_restarted".
std::string to_string(event_kind x);

/// One supervision event: who, why, what was done, how long recovery took.
struct supervision_event {
  event_kind kind = event_kind::child_exited;
  /// Path of the supervisor that recorded the event, e.g. "/job/workers".
  std::string supervisor;
  /// The child's id (empty for events about the supervisor itself).
  std::string child;
  /// The child's incarnation the event is about.
  uint64_t incarnation = 0;
  /// Exit or failure reason, rendered.
  std::string reason;
  /// What the supervisor did: "restart", "restart one_for_all", "ignore",
  /// "remove", "escalate", "kill", "stop", ...
  std::string action;
  /// For child_restarted: time from the crash being observed to the new
  /// incarnation serving. For the backoff of a pending restart: the delay.
  /// For hang_detected reported by a training job's trainer: how long the job
  /// waited without progress before the kill; for straggler_detected: the
  /// straggler's time to deliver its last step.
  caf::timespan duration{0};
  /// For state_restored and state_fallback: the step that was loaded.
  std::optional<uint64_t> state_step;
  /// When the event was recorded (supervisor's clock).
  std::chrono::steady_clock::time_point time;
  /// Wall-clock time of the event, for logs.
  std::chrono::system_clock::time_point wall_time;
};

/// Renders `ev` as one log line.
std::string to_string(const supervision_event& ev);

/// Receives supervision events. Called from supervisor actors on CAF scheduler
/// threads, possibly concurrently: implementations must be thread-safe and fast.
class event_sink {
public:
  virtual ~event_sink();
  /// Called once per event.
  virtual void on_event(const supervision_event& ev) = 0;
};

/// A thread-safe, bounded in-memory event log that the embedding program can
/// query or wait on.
class event_log : public event_sink {
public:
  /// Keeps at most `capacity` events (oldest dropped first).
  explicit event_log(size_t capacity = 10000);

  void on_event(const supervision_event& ev) override;

  /// Copies the events currently held.
  std::vector<supervision_event> snapshot() const;

  /// Returns how many events were ever recorded (including dropped ones).
  uint64_t total() const;

  /// Blocks until `pred(events)` holds or `timeout` passes; returns whether it
  /// held. For embedding programs; never call from an actor handler.
  bool wait_for(const std::function<bool(const std::vector<supervision_event>&)>& pred,
                std::chrono::milliseconds timeout) const;

  /// Returns how many held events are of `kind` (and for `child`, when non-empty).
  size_t count(event_kind kind, const std::string& child = {}) const;

private:
  mutable std::mutex mtx_;
  mutable std::condition_variable cv_;
  std::deque<supervision_event> events_;
  size_t capacity_;
  uint64_t total_ = 0;
};

/// Forwards each event to a function (e.g. to print it). The function must be
/// thread-safe.
class callback_sink : public event_sink {
public:
  explicit callback_sink(std::function<void(const supervision_event&)> fn);
  void on_event(const supervision_event& ev) override;

private:
  std::function<void(const supervision_event&)> fn_;
};

/// Sends each event to several sinks, in order. Null sinks are skipped.
class fanout_sink : public event_sink {
public:
  explicit fanout_sink(std::vector<std::shared_ptr<event_sink>> sinks);
  void on_event(const supervision_event& ev) override;

private:
  std::vector<std::shared_ptr<event_sink>> sinks_;
};

/// Writes each event as one line to stderr through a new spdlog logger named
/// `logger_name` (not registered globally): restarts and stops at info, crashes, hangs
/// and failed starts at warn, escalations at error. Events below `level`
/// ("debug", "info", "warn", "error" or "off") are not written.
std::shared_ptr<event_sink> make_log_sink(const std::string& logger_name = "understudy",
                                          const std::string& level = "info");

/// Whether `level` names a log level make_log_sink takes.
bool valid_log_level(const std::string& level);

} // namespace understudy
