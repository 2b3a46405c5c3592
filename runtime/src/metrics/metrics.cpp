#include "understudy/metrics/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <sstream>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/sec.hpp>

#include "understudy/http/server.hpp"

namespace understudy {

std::string to_string(peer_health x) {
  switch (x) {
    case peer_health::dead:
      return "dead";
    case peer_health::suspected:
      return "suspected";
    case peer_health::alive:
      return "alive";
  }
  return "unknown";
}

const std::vector<double>& metrics_duration_buckets() {
  static const std::vector<double> buckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                           0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                           1.0,    2.5,     5.0,    10.0};
  return buckets;
}

namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

double seconds_of(std::chrono::nanoseconds d) {
  return std::chrono::duration<double>(d).count();
}

/// A bounded label value for a rendered error: its name, the text before the
/// first ':' (describe() renders "name: context"), e.g. "runtime_error".
std::string reason_label(const std::string& reason) {
  auto end = reason.find(':');
  std::string name = reason.substr(0, end);
  auto first = name.find_first_not_of(" \t");
  auto last = name.find_last_not_of(" \t");
  if (first == std::string::npos)
    return "unknown";
  name = name.substr(first, last - first + 1);
  if (name.size() > 64)
    name.resize(64);
  return name;
}

/// The first word of a supervisor's action ("restart one_for_all" → "restart").
std::string action_label(const std::string& action) {
  auto word = action.substr(0, action.find(' '));
  return word.empty() ? "none" : word;
}

/// The child's path in the tree, e.g. "/root/job/worker-1".
std::string child_path(const supervision_event& ev) {
  if (ev.child.empty())
    return ev.supervisor;
  return ev.supervisor + "/" + ev.child;
}

/// Brings counter `c` from the source value `last` to `now` (a source value
/// that went down restarted from zero).
void advance(Counter& c, uint64_t& last, uint64_t now) {
  c.Increment(static_cast<double>(now >= last ? now - last : now));
  last = now;
}

/// Everything the metrics count, shared by node_metrics, its sinks and its
/// HTTP endpoint.
struct metrics_state {
  explicit metrics_state(const metrics_config& cfg)
      : node(cfg.node),
        registry(std::make_shared<prometheus::Registry>()),
        restarts(family<Counter>(prometheus::BuildCounter(), "understudy_restarts_total",
                                 "Children restarted, by child path and exit reason")),
        exits(family<Counter>(prometheus::BuildCounter(), "understudy_child_exits_total",
                              "Children that exited, by child path, reason and the "
                              "supervisor's action (restart, ignore, remove, escalate)")),
        hangs(family<Counter>(prometheus::BuildCounter(), "understudy_hangs_detected_total",
                              "Children killed for missing their liveness deadline")),
        stragglers(family<Counter>(prometheus::BuildCounter(),
                                   "understudy_stragglers_restarted_total",
                                   "Training workers restarted for staying far behind the others")),
        start_failures(family<Counter>(prometheus::BuildCounter(),
                                       "understudy_start_failures_total",
                                       "Failed start or restart attempts, by child path")),
        escalations(family<Counter>(prometheus::BuildCounter(), "understudy_escalations_total",
                                    "Supervisors that exceeded their restart intensity")),
        recovery(family<Histogram>(prometheus::BuildHistogram(), "understudy_recovery_seconds",
                                   "Crash to the new incarnation serving, in seconds")
                     .Add({}, metrics_duration_buckets())),
        restores(family<Counter>(prometheus::BuildCounter(), "understudy_state_restores_total",
                                 "State loads of persistent children, by outcome "
                                 "(restored, fallback, fresh)")),
        restore_time(family<Histogram>(prometheus::BuildHistogram(),
                                       "understudy_state_restore_seconds",
                                       "Time to load a persistent child's state, in seconds")
                         .Add({}, metrics_duration_buckets())),
        checkpoints(family<Counter>(prometheus::BuildCounter(),
                                    "understudy_checkpoints_written_total",
                                    "Checkpoints (puts) committed to the state store")
                        .Add({})),
        commits(family<Counter>(prometheus::BuildCounter(), "understudy_checkpoint_commits_total",
                                "State store transactions (group commits)")
                    .Add({})),
        checkpoint_bytes(family<Counter>(prometheus::BuildCounter(),
                                         "understudy_checkpoint_bytes_total",
                                         "Bytes written to the state store")
                             .Add({})),
        versions_deleted(family<Counter>(prometheus::BuildCounter(),
                                         "understudy_checkpoint_versions_deleted_total",
                                         "Old state versions deleted by retention")
                             .Add({})),
        map_growths(family<Counter>(prometheus::BuildCounter(),
                                    "understudy_state_map_growths_total",
                                    "Times the state store's LMDB map grew")
                        .Add({})),
        commit_latency(family<Histogram>(prometheus::BuildHistogram(),
                                         "understudy_checkpoint_commit_seconds",
                                         "Checkpoint put to durable, in seconds")
                           .Add({}, metrics_duration_buckets())),
        health(family<Gauge>(prometheus::BuildGauge(), "understudy_node_health",
                             "Health of each peer node: 1 alive, 0.5 suspected, 0 dead")),
        up(family<Gauge>(prometheus::BuildGauge(), "understudy_node_up",
                         "1 while this node is serving")
               .Add({})),
        leader(family<Gauge>(prometheus::BuildGauge(), "understudy_cluster_leader",
                             "1 while this node leads the cluster (runs the tree)")
                   .Add({})),
        failovers(family<Counter>(prometheus::BuildCounter(), "understudy_failovers_total",
                                  "Failovers this node performed, by the failed peer")) {
    up.Set(1);
  }

  template <class T, class Builder>
  Family<T>& family(Builder&& b, const char* name, const char* help) {
    return b.Name(name).Help(help).Labels({{"node", node}}).Register(*registry);
  }

  void on_event(const supervision_event& ev) {
    switch (ev.kind) {
      case event_kind::child_exited: {
        auto path = child_path(ev);
        auto reason = reason_label(ev.reason);
        auto action = action_label(ev.action);
        exits.Add({{"child", path}, {"reason", reason}, {"action", action}}).Increment();
        if (action == "restart")
          restarts.Add({{"child", path}, {"reason", reason}}).Increment();
        break;
      }
      case event_kind::supervisor_started:
        // At zero from the start, so that a dashboard or an alert finds the series
        // before the first escalation.
        escalations.Add({{"supervisor", ev.supervisor}});
        break;
      case event_kind::child_started:
        hangs.Add({{"child", child_path(ev)}});
        break;
      case event_kind::child_restarted:
        recovery.Observe(seconds_of(ev.duration));
        break;
      case event_kind::hang_detected:
        hangs.Add({{"child", child_path(ev)}}).Increment();
        break;
      case event_kind::straggler_detected:
        stragglers.Add({{"child", child_path(ev)}}).Increment();
        break;
      case event_kind::start_failed:
        start_failures.Add({{"child", child_path(ev)}}).Increment();
        break;
      case event_kind::intensity_exceeded:
        escalations.Add({{"supervisor", ev.supervisor}}).Increment();
        break;
      case event_kind::state_restored:
        restores.Add({{"outcome", "restored"}}).Increment();
        restore_time.Observe(seconds_of(ev.duration));
        break;
      case event_kind::state_fallback:
        restores.Add({{"outcome", "fallback"}}).Increment();
        restore_time.Observe(seconds_of(ev.duration));
        break;
      case event_kind::state_fresh:
        restores.Add({{"outcome", "fresh"}}).Increment();
        break;
      default:
        break;
    }
  }

  void update_from(const state_store_stats& s) {
    std::lock_guard<std::mutex> guard{stats_mtx};
    advance(checkpoints, last_stats.puts, s.puts);
    advance(commits, last_stats.commits, s.commits);
    advance(checkpoint_bytes, last_stats.bytes_written, s.bytes_written);
    advance(versions_deleted, last_stats.versions_deleted, s.versions_deleted);
    advance(map_growths, last_stats.map_growths, s.map_growths);
  }

  /// Called at each scrape: pulls the store's counters, runs the components' hooks.
  void refresh() {
    std::function<state_store_stats()> fn;
    std::vector<std::function<void()>> hooks;
    {
      std::lock_guard<std::mutex> guard{source_mtx};
      fn = state_source;
      hooks = scrape_hooks;
    }
    if (fn)
      update_from(fn());
    for (const auto& hook : hooks)
      hook();
  }

  std::vector<prometheus::MetricFamily> collect() {
    refresh();
    return registry->Collect();
  }

  const std::string node;
  std::shared_ptr<prometheus::Registry> registry;
  Family<Counter>& restarts;
  Family<Counter>& exits;
  Family<Counter>& hangs;
  Family<Counter>& stragglers;
  Family<Counter>& start_failures;
  Family<Counter>& escalations;
  Histogram& recovery;
  Family<Counter>& restores;
  Histogram& restore_time;
  Counter& checkpoints;
  Counter& commits;
  Counter& checkpoint_bytes;
  Counter& versions_deleted;
  Counter& map_growths;
  Histogram& commit_latency;
  Family<Gauge>& health;
  Gauge& up;
  Gauge& leader;
  Family<Counter>& failovers;

  std::mutex stats_mtx;
  state_store_stats last_stats;

  std::mutex source_mtx;
  std::function<state_store_stats()> state_source;
  std::vector<std::function<void()>> scrape_hooks;
};

/// A counter a component registered; keeps the registry it lives in.
class registered_counter final : public metric_counter {
public:
  registered_counter(std::shared_ptr<metrics_state> st, Counter& c) : st_(std::move(st)), c_(&c) {}
  void increment(double by) override { c_->Increment(by); }
  double value() const override { return c_->Value(); }

private:
  std::shared_ptr<metrics_state> st_;
  Counter* c_;
};

/// A gauge a component registered; keeps the registry it lives in.
class registered_gauge final : public metric_gauge {
public:
  registered_gauge(std::shared_ptr<metrics_state> st, Gauge& g) : st_(std::move(st)), g_(&g) {}
  void set(double x) override { g_->Set(x); }
  double value() const override { return g_->Value(); }

private:
  std::shared_ptr<metrics_state> st_;
  Gauge* g_;
};

/// The event sink node_metrics hands out.
class metrics_sink : public event_sink {
public:
  explicit metrics_sink(std::shared_ptr<metrics_state> st) : st_(std::move(st)) {}
  void on_event(const supervision_event& ev) override { st_->on_event(ev); }

private:
  std::shared_ptr<metrics_state> st_;
};

/// `host:port`, IPv6 addresses in brackets.
std::string host_port(const std::string& host, uint16_t port) {
  bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string serialize(const std::vector<prometheus::MetricFamily>& families) {
  std::ostringstream out;
  prometheus::TextSerializer{}.Serialize(out, families);
  return out.str();
}

/// The endpoint's server: one thread; a client must send its whole request
/// within 2 s and read its response within 5 s; up to 32 clients at once.
http::server_config endpoint_config(const metrics_config& cfg) {
  http::server_config out;
  out.name = "metrics endpoint";
  out.host = cfg.host;
  out.port = cfg.port;
  out.threads = 1;
  out.request_deadline = std::chrono::seconds(2);
  out.reply_deadline = std::chrono::seconds(5);
  out.max_header_bytes = 8192;
  out.max_body_bytes = 8192;
  out.max_connections = 32;
  return out;
}

/// Answers `GET /metrics` (and HEAD) with a scrape of `st`.
void serve_metrics(metrics_state& st, const http::request& req, const http::responder& reply) {
  if (req.method != "GET" && req.method != "HEAD") {
    auto r = http::response::text(405, "only GET and HEAD\n");
    r.headers.emplace_back("Allow", "GET, HEAD");
    return reply(std::move(r));
  }
  if (req.path != "/metrics")
    return reply(http::response::text(404, "metrics are at /metrics\n"));
  http::response r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = serialize(st.collect());
  reply(std::move(r));
}

} // namespace

struct node_metrics::impl {
  metrics_config cfg;
  std::shared_ptr<metrics_state> st;
  /// Declared last: stops serving before the rest goes.
  std::unique_ptr<http::server> endpoint;
};

caf::expected<std::unique_ptr<node_metrics>> node_metrics::start(metrics_config cfg) {
  if (cfg.node.empty())
    return caf::make_error(caf::sec::invalid_argument,
                           std::string{"node_metrics: the node name is empty"});
  auto ptr = std::make_unique<impl>();
  ptr->st = std::make_shared<metrics_state>(cfg);
  auto ep = http::server::start(
      endpoint_config(cfg),
      [st = ptr->st](http::request req, http::responder reply) { serve_metrics(*st, req, reply); });
  if (!ep)
    return std::move(ep.error());
  ptr->endpoint = std::move(*ep);
  ptr->cfg = std::move(cfg);
  return std::unique_ptr<node_metrics>{new node_metrics(std::move(ptr))};
}

node_metrics::node_metrics(std::unique_ptr<impl> ptr) : impl_(std::move(ptr)) {}

node_metrics::~node_metrics() = default;

uint16_t node_metrics::port() const noexcept {
  return impl_->endpoint->port();
}

std::string node_metrics::url() const {
  return "http://" + host_port(impl_->cfg.host, port()) + "/metrics";
}

const std::string& node_metrics::node() const noexcept {
  return impl_->cfg.node;
}

std::shared_ptr<event_sink> node_metrics::sink() const {
  return std::make_shared<metrics_sink>(impl_->st);
}

void node_metrics::on_event(const supervision_event& ev) {
  impl_->st->on_event(ev);
}

void node_metrics::update_from(const state_store_stats& s) {
  impl_->st->update_from(s);
}

void node_metrics::set_state_source(std::function<state_store_stats()> fn) {
  std::lock_guard<std::mutex> guard{impl_->st->source_mtx};
  impl_->st->state_source = std::move(fn);
}

void node_metrics::observe_commit_latency(std::chrono::nanoseconds latency) {
  impl_->st->commit_latency.Observe(seconds_of(latency));
}

std::shared_ptr<metric_counter> node_metrics::add_counter(const std::string& name,
                                                          const std::string& help) {
  auto& st = *impl_->st;
  auto& c = st.family<Counter>(prometheus::BuildCounter(), name.c_str(), help.c_str()).Add({});
  return std::make_shared<registered_counter>(impl_->st, c);
}

std::shared_ptr<metric_gauge> node_metrics::add_gauge(const std::string& name,
                                                      const std::string& help) {
  auto& st = *impl_->st;
  auto& g = st.family<Gauge>(prometheus::BuildGauge(), name.c_str(), help.c_str()).Add({});
  return std::make_shared<registered_gauge>(impl_->st, g);
}

std::shared_ptr<metric_gauge> node_metrics::add_gauge(
    const std::string& name, const std::string& help,
    const std::map<std::string, std::string>& labels) {
  auto& st = *impl_->st;
  auto& g = st.family<Gauge>(prometheus::BuildGauge(), name.c_str(), help.c_str()).Add(labels);
  return std::make_shared<registered_gauge>(impl_->st, g);
}

void node_metrics::on_scrape(std::function<void()> fn) {
  std::lock_guard<std::mutex> guard{impl_->st->source_mtx};
  impl_->st->scrape_hooks.push_back(std::move(fn));
}

void node_metrics::set_peer_health(const std::string& peer, peer_health level) {
  switch (level) {
    case peer_health::dead:
      set_peer_health(peer, 0.0);
      break;
    case peer_health::suspected:
      set_peer_health(peer, 0.5);
      break;
    case peer_health::alive:
      set_peer_health(peer, 1.0);
      break;
  }
}

void node_metrics::set_peer_health(const std::string& peer, double level) {
  impl_->st->health.Add({{"peer", peer}}).Set(std::clamp(level, 0.0, 1.0));
}

void node_metrics::on_failover(const std::string& peer) {
  impl_->st->failovers.Add({{"peer", peer}}).Increment();
}

void node_metrics::set_up(bool up) {
  impl_->st->up.Set(up ? 1 : 0);
}

void node_metrics::set_leader(bool leads) {
  impl_->st->leader.Set(leads ? 1 : 0);
}

std::string node_metrics::scrape() const {
  return serialize(impl_->st->collect());
}

} // namespace understudy
