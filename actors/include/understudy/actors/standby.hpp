#pragma once

// A second site on standby (`understudy standby FILE`): the cluster of FILE
// ([snapshots] standby = true, the same [job] and snapshot directory as the
// primary) trains nothing while the primary ships; its standby process
//   - watches the snapshot directory (the newest snapshot's step and age),
//   - runs restore drills on a schedule (drill_every) and reports them as
//     metrics (understudy_dr_drills_*) and events (the standby node's journal),
//   - probes the primary's nodes, and promotes this site once none of them has
//     accepted a connection for promote_after (automatic promotion), after
//     which `understudy standby` launches it.
// A primary that comes back finds the promotion recorded in the directory and
// stops (snapshot_shipping.hpp).

#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "understudy/config/node_config.hpp"
#include "understudy/state/snapshot.hpp"

namespace understudy {
class event_journal;
class node_metrics;
} // namespace understudy

namespace understudy::actors {

/// Decides an automatic promotion from probes of the primary. A plain object
/// driven by its caller's clock.
class promotion_watch {
public:
  using time_point = std::chrono::steady_clock::time_point;
  /// Promote once the primary was unreachable this long (positive).
  explicit promotion_watch(std::chrono::milliseconds after) : after_(after) {}
  /// One probe round at `now`: whether any node of the primary accepted a
  /// connection. Returns true once every probe since the first that found it
  /// unreachable did so, for at least `after`, over at least two probes; a
  /// reachable probe starts the count again.
  bool observe(bool reachable, time_point now);
  /// How long the primary has been unreachable (zero when it is not).
  std::chrono::milliseconds unreachable_for(time_point now) const;

private:
  std::chrono::milliseconds after_;
  std::optional<time_point> since_;
  uint64_t probes_ = 0;
};

/// Whether something accepts TCP connections at host:port within `timeout`.
bool accepts_connections(const std::string& host, uint16_t port, std::chrono::milliseconds timeout);

/// A node of the primary, as its file names it.
struct primary_node {
  std::string name;
  std::string host;
  uint16_t port = 0;
};

/// How run_standby runs.
struct standby_options {
  /// The primary's nodes; empty: no automatic promotion.
  std::vector<primary_node> primary;
  /// Gets the understudy_dr_* standby metrics (may be null).
  node_metrics* metrics = nullptr;
  /// Records drills and the promotion (may be null).
  std::shared_ptr<event_journal> journal;
  /// Lines for the operator.
  std::ostream* out = nullptr;
  /// Polled every round: return true to stop watching.
  std::function<bool()> stop_requested;
  /// How often the directory is looked at and the primary probed.
  std::chrono::milliseconds round{1000};
};

/// What run_standby ended with: the promotion, or none when asked to stop.
struct standby_result {
  std::optional<snapshot_promotion> promoted;
  uint64_t drills_passed = 0;
  uint64_t drills_failed = 0;
};

/// Watches, drills and promotes as the header says, until this site is
/// promoted (automatically: [snapshots] promote_after with primary nodes) or
/// stop_requested. Errors: missing_key (no [job], no [snapshots] standby =
/// true), invalid_value (the directory was promoted to another cluster),
/// those of promote_site.
caf::expected<standby_result> run_standby(const node_config& nc, const standby_options& opts);

} // namespace understudy::actors
