#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "understudy/state/state_store.hpp"
#include "understudy/supervision/supervision_event.hpp"

namespace understudy {

/// Where and as whom a node serves its Prometheus metrics.
struct metrics_config {
  /// The node's name: the value of the `node` label on every metric.
  std::string node;
  /// The address the HTTP endpoint binds (a node's `host`); IPv6 without brackets.
  std::string host = "127.0.0.1";
  /// The port to bind; 0 picks a free one (see node_metrics::port).
  uint16_t port = 0;
};

/// A counter that a component registered (node_metrics::add_counter).
/// Thread-safe; it keeps the metrics' registry, so it may outlive its node_metrics.
class metric_counter {
public:
  virtual ~metric_counter() = default;
  /// Adds `by` (not negative).
  virtual void increment(double by = 1.0) = 0;
  virtual double value() const = 0;
};

/// A gauge that a component registered (node_metrics::add_gauge). Thread-safe;
/// it keeps the metrics' registry, so it may outlive its node_metrics.
class metric_gauge {
public:
  virtual ~metric_gauge() = default;
  virtual void set(double x) = 0;
  virtual double value() const = 0;
};

/// How a node sees a peer, as its failure detector judges it.
enum class peer_health : uint8_t {
  /// Declared dead (and fenced): gauge value 0.
  dead,
  /// Suspected (phi above its threshold, deadline not passed): gauge value 0.5.
  suspected,
  /// Heartbeats arrive in time: gauge value 1.
  alive,
};

/// Returns the name of `x`, e.g. "suspected".
std::string to_string(peer_health x);

/// The upper bounds (seconds) of the buckets of every duration histogram:
/// 100 µs to 10 s, about three per decade.
const std::vector<double>& metrics_duration_buckets();

/// One node's Prometheus metrics and the HTTP endpoint (`/metrics`) serving them.
///
/// Ownership: build one per node process in main() (or the embedding service)
/// and pass it down; nothing about it is global. Every metric is named
/// `understudy_*` and carries the label `node`. Threads: every member function
/// is thread-safe and cheap (a mutex or an atomic add), so actors may call them
/// from handlers; the HTTP server runs on a thread of its own. Destroying it
/// stops the endpoint; sinks handed out by sink() stay valid and keep counting.
class node_metrics {
public:
  /// Binds `cfg.host:cfg.port` and starts serving `GET /metrics` (Prometheus
  /// text format) on an http::server with one thread of its own, which serves
  /// up to 32 clients at once and closes a client that has not sent its whole
  /// request within 2 s (or read its response within 5 s), so a slow client
  /// delays no other.
  /// Errors: `caf::sec::cannot_open_port`, with a context naming the address
  /// and the reason (e.g. "metrics endpoint cannot bind 127.0.0.1:9470:
  /// Address already in use");
  /// `caf::sec::invalid_argument` for an empty node name.
  static caf::expected<std::unique_ptr<node_metrics>> start(metrics_config cfg);

  ~node_metrics();
  node_metrics(const node_metrics&) = delete;
  node_metrics& operator=(const node_metrics&) = delete;

  /// The port the endpoint listens on (the chosen one when `cfg.port` was 0).
  uint16_t port() const noexcept;

  /// The URL to scrape, e.g. "http://127.0.0.1:9464/metrics".
  std::string url() const;

  /// The node label.
  const std::string& node() const noexcept;

  /// An event sink that feeds the supervision metrics: restarts by child path
  /// and reason, exits, recovery time, hangs, failed starts, escalations and
  /// state restores. Combine it with others through fanout_sink. It shares the
  /// metrics' state, so it may outlive this object.
  std::shared_ptr<event_sink> sink() const;

  /// Records one supervision event (what sink() does).
  void on_event(const supervision_event& ev);

  /// Brings the checkpoint counters up to the store's counters `s` (cumulative
  /// since the store opened; counters that went down mean a new store and
  /// count from zero again).
  void update_from(const state_store_stats& s);

  /// Calls `fn` at every scrape and passes its result to update_from, so the
  /// checkpoint counters are current without polling; e.g.
  /// `[store] { return store->stats(); }`. `fn` runs on an HTTP server thread
  /// and must be thread-safe. An empty function removes the source.
  void set_state_source(std::function<state_store_stats()> fn);

  /// Records one checkpoint commit: put to durable, as the checkpointing actor
  /// saw it.
  void observe_commit_latency(std::chrono::nanoseconds latency);

  /// Registers a component's counter `name` (e.g. "understudy_training_steps_total")
  /// with `help` and the label `node`, at zero, so that scrapes show it from now
  /// on; the same name again gives the same counter. A name registered as
  /// another kind of metric is a bug (std::invalid_argument).
  std::shared_ptr<metric_counter> add_counter(const std::string& name, const std::string& help);

  /// Registers a component's gauge, as add_counter does a counter.
  std::shared_ptr<metric_gauge> add_gauge(const std::string& name, const std::string& help);

  /// The series of gauge `name` with `labels` besides `node` (e.g. {"worker",
  /// "worker-1"}), at zero: one family, a series per distinct set of labels.
  std::shared_ptr<metric_gauge> add_gauge(const std::string& name, const std::string& help,
                                          const std::map<std::string, std::string>& labels);

  /// Calls `fn` at every scrape, before the metrics are read (e.g. to zero a
  /// rate that went stale). `fn` runs on an HTTP server thread and must be
  /// thread-safe.
  void on_scrape(std::function<void()> fn);

  /// Sets the health of peer node `peer`.
  void set_peer_health(const std::string& peer, peer_health level);

  /// Sets the health of peer node `peer` to `level`, clamped to [0, 1]
  /// (1 alive, 0.5 suspected, 0 dead).
  void set_peer_health(const std::string& peer, double level);

  /// Records that this node took over the children of the failed node `peer`.
  void on_failover(const std::string& peer);

  /// Sets the node_up gauge (1 after start; set it to 0 while shutting down).
  void set_up(bool up);

  /// Sets the cluster_leader gauge: 1 while this node leads the cluster (runs
  /// the supervision tree), 0 otherwise (the default).
  void set_leader(bool leads);

  /// Renders every metric in Prometheus' text format, as a scrape would.
  std::string scrape() const;

private:
  struct impl;
  explicit node_metrics(std::unique_ptr<impl> ptr);
  std::unique_ptr<impl> impl_;
};

} // namespace understudy
