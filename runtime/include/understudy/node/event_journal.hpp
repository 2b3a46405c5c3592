#pragma once

// A node's persisted event log and the incident timeline built from the logs
// of every node (`understudy events`).

#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <string>

#include "understudy/node/node.hpp"
#include "understudy/supervision/supervision_event.hpp"

namespace understudy {

/// Appends a node's events, one JSON object per line, to `events.jsonl` in its
/// state directory: supervision events of the tree it runs, its cluster notes
/// ("moved ...", "leads ..."), its peers' state changes and the job's end.
/// Bounded: past `max_bytes` the file becomes `events.jsonl.1` (replacing the
/// older one) and a new one starts, so a node keeps at most twice that much.
/// Thread-safe. Every line has "t" (Unix time in ms), "node" and "kind".
class event_journal : public std::enable_shared_from_this<event_journal> {
public:
  /// Opens (creating, appending to) `dir`/events.jsonl; an error if it cannot.
  static caf::expected<std::shared_ptr<event_journal>> open(const std::string& dir,
                                                            std::string node,
                                                            uint64_t max_bytes = 4 << 20);
  ~event_journal();

  /// A supervision event (kind as to_string(event_kind)).
  void record(const supervision_event& ev);
  /// A note of the node's own ("note"), a peer's new state ("peer") or a line
  /// about the job ("job").
  void note(const std::string& text);
  void peer(const std::string& peer, const std::string& state, const std::string& reason);
  void job(const std::string& text);

  /// A sink that records every supervision event here.
  std::shared_ptr<event_sink> sink();

  const std::string& path() const noexcept { return path_; }

private:
  event_journal(std::string path, std::string node, uint64_t max_bytes);
  void append(const std::string& line);
  std::mutex mtx_;
  std::string path_;
  std::string node_;
  uint64_t max_bytes_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

/// What run_events reads and prints.
struct events_options {
  std::string file;
  /// One JSON object per event and per incident instead of text.
  bool json = false;
  /// Keep reading the logs as they grow (until interrupted).
  bool follow = false;
  /// How often --follow looks for new lines.
  std::chrono::milliseconds poll{250};
  /// With `follow`: asked after everything read so far is printed and before
  /// each look for new lines; true ends the run (ok). Unset: follow until the
  /// process is interrupted.
  std::function<bool()> stop;
  std::string label = "understudy events";
  node_components components;
};

/// Merges the event logs of every node of `opts.file` (their state
/// directories on this machine) into one timeline, oldest first, and groups
/// it into incidents: each from the first sign of trouble (a child that
/// exited to be restarted, a hang, a straggler, a peer suspected or dead) to
/// the job running again (job_resumed), with the time each stage took from the
/// start: detected, fenced (a node declared dead), moved (an actor started
/// elsewhere), restored (state loaded), resumed (and the steps lost). Lines
/// that are not valid JSON are skipped and counted. Returns ok, or bad_config
/// for a config that does not load, or failure when no node has a log.
exit_code run_events(const events_options& opts, std::ostream& out, std::ostream& err);

} // namespace understudy
