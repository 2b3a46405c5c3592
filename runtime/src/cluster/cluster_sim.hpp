#pragma once

// Private to runtime/src/cluster: N membership cores and their memory_coordinators on one
// simulated clock, with a simulated network that can lose, duplicate, delay and cut (both
// ways or one way) heartbeats, and processes that can be paused (their events wait until
// they resume, as a SIGSTOPped process's mailbox does), killed and restarted. Everything
// runs on the caller's thread, in the order of (time, sequence): one schedule gives one run,
// event for event. The membership core's tests drive it by hand; simulation.cpp draws its
// faults from a seed and checks invariants on every input.
//
// Threads: one (the caller's). Errors: none; a join the service refuses ends that
// incarnation (a note in the log).

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cluster/membership_core.hpp"
#include "understudy/cluster/memory_coordinator.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::cluster_detail {

using namespace std::chrono_literals;

/// Milliseconds since the simulation's start, for messages.
inline double sim_ms(std::chrono::steady_clock::time_point t,
                     std::chrono::steady_clock::time_point origin) {
  return std::chrono::duration<double, std::milli>(t - origin).count();
}

class cluster_sim {
public:
  using clock_type = std::chrono::steady_clock;
  using time_point = clock_type::time_point;
  using kind = membership_action_kind;

  struct options {
    std::vector<std::string> names{"n1", "n2", "n3"};
    caf::timespan interval = 100ms;
    caf::timespan deadline = 1s;
    std::chrono::milliseconds ttl = 3s;
    size_t monitors = 4;
    /// Each named node's clock rate (1: exact), for every incarnation of it.
    std::map<std::string, double> rates;
    caf::timespan net_latency = 1ms;
    caf::timespan coord_latency = 1ms;
  };

  /// What a core did, as the harness saw it.
  struct record {
    time_point at;
    std::string node; // the incarnation's name
    uint64_t epoch;   // the incarnation's epoch when it acted
    membership_action action;
  };

  /// A beat in flight may be dropped (true), or gain extra delay (its second member), or be
  /// duplicated (third member).
  struct fate {
    bool drop = false;
    caf::timespan extra{};
    bool duplicate = false;
  };

  explicit cluster_sim(options o) : o_(std::move(o)) {
    service = std::make_shared<memory_coordination_service>(o_.ttl, [this] { return now; });
    for (auto& n : o_.names)
      start(n);
  }

  cluster_sim(const cluster_sim&) = delete;
  cluster_sim& operator=(const cluster_sim&) = delete;

  ~cluster_sim() {
    // Callbacks hold no coordinator; dropping the events first ends every cycle.
    events_.clear();
  }

  // -- the world -----------------------------------------------------------------------------

  time_point origin = time_point{} + std::chrono::hours(1);
  time_point now = origin;
  std::shared_ptr<memory_coordination_service> service;
  /// Every action (a deque: a large cluster's log grows by millions without moving).
  std::deque<record> log;
  /// Decides each beat's fate (default: delivered after the network latency).
  std::function<fate(const std::string& from, const std::string& to)> network;
  /// Refused beats: (receiver, sender, epoch).
  std::vector<std::tuple<std::string, std::string, uint64_t>> refused;

  /// Starts (or restarts, as a new incarnation next to the old one) node `name`.
  size_t start(const std::string& name) {
    auto id = nodes_.size();
    auto n = std::make_unique<node>();
    n->name = name;
    if (auto r = o_.rates.find(name); r != o_.rates.end())
      n->rate = r->second;
    membership_settings s;
    s.self = name;
    s.peers = o_.names;
    s.heartbeat_interval = o_.interval;
    s.deadline = o_.deadline;
    s.session_ttl = o_.ttl;
    s.monitors = o_.monitors;
    n->core = std::make_unique<membership_core>(s);
    n->coord = memory_coordinator::make(service, [this, id](std::function<void()> f) {
      post(id, now + o_.coord_latency, std::move(f));
    });
    nodes_.push_back(std::move(n));
    current_[name] = id;
    auto& c = *nodes_[id];
    c.coord->watch(
        [this, id](const coordination_view& v) { nodes_[id]->core->view(v, local(id)); });
    auto sent = local(id);
    c.coord->join(name, [this, id, sent, name](caf::expected<uint64_t> e) {
      if (!e) {
        // The service was off or cut off from this node: the process exits, and its
        // operator (the simulation's schedule) starts it again later.
        log.push_back({now, name, 0,
                       membership_action{membership_action_kind::note, "", 0, peer_state::unknown,
                                         "join failed: " + describe(e.error())}});
        nodes_[id]->killed = true;
        return;
      }
      nodes_[id]->core->joined(*e, sent);
    });
    c.core->set_candidates(o_.names, local(id));
    schedule_tick(id);
    return id;
  }

  /// Kills the current incarnation of `name`: its peers' connections to it close.
  void kill(const std::string& name) {
    auto id = current_.at(name);
    nodes_[id]->killed = true;
    close_connections(id);
  }

  /// Pauses the current incarnation of `name` now for `d`.
  void pause(const std::string& name, caf::timespan d) {
    auto id = current_.at(name);
    nodes_[id]->paused = true;
    at(now + d, [this, id] { resume(id); });
  }

  /// The clock of `name`'s current incarnation steps forward by `d` (it keeps running).
  void jump_clock(const std::string& name, caf::timespan d) {
    nodes_[current_.at(name)]->skew += d;
  }

  /// The clock of `name`'s current incarnation runs at `rate` times real time from now on.
  void set_clock_rate(const std::string& name, double rate) {
    auto& n = *nodes_[current_.at(name)];
    auto before = local(current_.at(name));
    n.rate = rate;
    n.skew = before - (origin + scaled(now - origin, rate));
  }

  /// What the clock of node incarnation `id` reads now.
  time_point local(size_t id) const {
    auto& n = *nodes_[id];
    return origin + scaled(now - origin, n.rate) + n.skew;
  }

  /// Cuts (or heals) what `from` sends to `to` (one way).
  void cut_one_way(const std::string& from, const std::string& to, bool on = true) {
    if (on)
      cuts_.insert({from, to});
    else
      cuts_.erase({from, to});
  }

  /// Heals every cut.
  void heal_all() { cuts_.clear(); }

  /// Whether the current incarnation of `name` was killed (or exited: a failed join, fenced).
  bool down(const std::string& name) const {
    auto& n = *nodes_[current_.at(name)];
    return n.killed || n.core->fenced();
  }

  /// Whether the current incarnation of `name` is paused.
  bool paused(const std::string& name) const { return nodes_[current_.at(name)]->paused; }

  /// Events run so far, and heartbeats sent.
  uint64_t events_run = 0;
  uint64_t beats_sent = 0;

  /// The current incarnation of `from` sends `to` a heartbeat that claims `epoch`, whatever
  /// its own is: a node with a valid certificate that lies in what it writes (the connection
  /// still names it). Lost if `from` is down or cut off from `to`.
  void forge_beat(const std::string& from, const std::string& to, uint64_t epoch) {
    auto src = current_.find(from);
    auto dst = current_.find(to);
    if (src == current_.end() || dst == current_.end() || from == to ||
        cuts_.count({from, to}) != 0 || nodes_[src->second]->killed)
      return;
    post(dst->second, now + o_.net_latency,
         [this, pid = dst->second, from, epoch] { receive_beat(pid, from, epoch); });
  }

  /// A message of the job (not a heartbeat) from node incarnation `from` to the current
  /// incarnation of `to`, arriving after the network latency plus `extra`: lost when the
  /// sender does not run, `to` is cut off from it, or the receiving incarnation is gone by
  /// then. `f` runs as an input of the receiver (waiting while it is paused), with its id.
  void send(size_t from, const std::string& to, caf::timespan extra,
            std::function<void(size_t to)> f) {
    auto& src = *nodes_[from];
    auto dst = current_.find(to);
    if (src.killed || src.core->fenced() || dst == current_.end() ||
        (src.name != to && cuts_.count({src.name, to}) != 0))
      return;
    const size_t pid = dst->second;
    post(pid, now + (src.name == to ? caf::timespan{0} : o_.net_latency) + extra,
         [pid, f = std::move(f)] { f(pid); });
  }

  /// Runs `f` as an input of node incarnation `id` once its own clock has advanced by `d` (a
  /// timer of its process: it waits while the process is paused, dies with it).
  void timer(size_t id, caf::timespan d, std::function<void()> f) {
    post(id, to_sim(id, local(id) + d), std::move(f));
  }

  /// Whether node incarnation `id` runs (not killed, not fenced: paused counts as running).
  bool running(size_t id) const {
    auto& n = *nodes_[id];
    return !n.killed && !n.core->fenced();
  }

  /// Called after every input a node processed (and the actions it queued were carried out),
  /// with the incarnation's id: the simulation's invariants look at the node then.
  std::function<void(size_t id)> after_input;

  /// The name of incarnation `id`.
  const std::string& name_of(size_t id) const { return nodes_[id]->name; }

  /// Cuts (or heals) the network between `a` and `b` in both directions.
  void cut(const std::string& a, const std::string& b, bool on = true) {
    if (on) {
      cuts_.insert({a, b});
      cuts_.insert({b, a});
    } else {
      cuts_.erase({a, b});
      cuts_.erase({b, a});
    }
  }

  /// Runs `f` at `t` (a world event, not a node's).
  void at(time_point t, std::function<void()> f) {
    events_.emplace(std::make_pair(t, seq_++), event{SIZE_MAX, std::move(f)});
  }

  /// Runs the simulation for `d`.
  void run_for(caf::timespan d) {
    auto end = now + d;
    while (!events_.empty() && events_.begin()->first.first <= end) {
      auto i = events_.begin();
      auto ev = std::move(i->second);
      now = i->first.first;
      events_.erase(i);
      // Sessions expire on the millisecond: the service looks at most once per simulated
      // millisecond (it does at every call of its own too).
      if (now - last_poll_ >= 1ms) {
        service->poll();
        last_poll_ = now;
      }
      ++events_run;
      if (ev.node == SIZE_MAX) {
        ev.f();
        continue;
      }
      run_on(ev.node, std::move(ev.f));
    }
    now = end;
  }

  // -- queries -------------------------------------------------------------------------------

  membership_core& core(const std::string& name) { return *nodes_[current_.at(name)]->core; }
  membership_core& incarnation(size_t id) { return *nodes_[id]->core; }
  const options& opts() const noexcept { return o_; }

  size_t current(const std::string& name) const { return current_.at(name); }
  bool stopped(const std::string& name) const {
    auto& n = *nodes_[current_.at(name)];
    return n.killed || n.core->fenced();
  }

  /// The records of `k`, optionally only those of node `who`.
  std::vector<record> of(kind k, const std::string& who = "") const {
    std::vector<record> out;
    for (auto& r : log)
      if (r.action.kind == k && (who.empty() || r.node == who))
        out.push_back(r);
    return out;
  }

  /// Whether anyone saw `peer` dead (any incarnation).
  bool seen_dead(const std::string& peer) const {
    for (auto& r : of(kind::peer_changed))
      if (r.action.peer == peer && r.action.state == peer_state::dead)
        return true;
    return false;
  }

  /// Every term and the node that first gained it.
  std::map<uint64_t, std::string> terms() const {
    std::map<uint64_t, std::string> out;
    for (auto& r : of(kind::leadership_gained))
      out.emplace(r.action.epoch, r.node);
    return out;
  }

  /// Terms gained by more than one node: "term T: n1 and n2" (empty when none).
  std::vector<std::string> term_conflicts() const {
    std::map<uint64_t, std::string> first;
    std::vector<std::string> out;
    for (auto& r : of(kind::leadership_gained)) {
      auto [i, fresh] = first.emplace(r.action.epoch, r.node);
      if (!fresh && i->second != r.node)
        out.push_back("term " + std::to_string(r.action.epoch) + ": " + i->second + " and " +
                      r.node);
    }
    return out;
  }

  /// The log as text, for failure messages.
  std::string text() const {
    std::ostringstream os;
    for (auto& r : log)
      if (r.action.kind != kind::send_beats && r.action.kind != kind::keep_alive)
        os << sim_ms(r.at, origin) << " ms " << r.node << "@" << r.epoch << " "
           << to_string(r.action.kind) << " " << r.action.peer << " " << r.action.epoch << " "
           << (r.action.kind == kind::peer_changed ? to_string(r.action.state) : "") << " "
           << r.action.text << "\n";
    return os.str();
  }

private:
  struct node {
    std::string name;
    /// Its clock: origin + (now - origin) * rate + skew.
    caf::timespan skew{0};
    double rate = 1.0;
    std::unique_ptr<membership_core> core;
    std::shared_ptr<memory_coordinator> coord;
    bool paused = false;
    bool killed = false;
    bool closed = false;
    std::vector<std::function<void()>> deferred;
  };
  struct event {
    size_t node;
    std::function<void()> f;
  };

  static clock_type::duration scaled(clock_type::duration d, double rate) {
    return std::chrono::duration_cast<clock_type::duration>(
        std::chrono::duration<double, std::nano>(static_cast<double>(d.count()) * rate));
  }

  /// The simulation's time at which node incarnation `id`'s clock reads `t` (not before now).
  time_point to_sim(size_t id, time_point t) const {
    auto& n = *nodes_[id];
    auto since = std::chrono::duration<double, std::nano>(
        static_cast<double>((t - n.skew - origin).count()) / n.rate);
    return std::max(now, origin + std::chrono::duration_cast<clock_type::duration>(since));
  }

  void post(size_t id, time_point t, std::function<void()> f) {
    events_.emplace(std::make_pair(t, seq_++), event{id, std::move(f)});
  }

  void run_on(size_t id, std::function<void()> f) {
    auto& n = *nodes_[id];
    if (n.killed || n.core->fenced())
      return;
    if (n.paused) {
      n.deferred.push_back(std::move(f));
      return;
    }
    f();
    pump(id);
    if (after_input)
      after_input(id);
  }

  void resume(size_t id) {
    auto& n = *nodes_[id];
    n.paused = false;
    auto todo = std::move(n.deferred);
    n.deferred.clear();
    for (auto& f : todo)
      run_on(id, std::move(f));
  }

  void schedule_tick(size_t id) {
    auto& c = *nodes_[id]->core;
    post(id, to_sim(id, c.next_tick(local(id))), [this, id] {
      nodes_[id]->core->tick(local(id));
      schedule_tick(id);
    });
  }

  /// The process of `id` is gone: its peers' connections to it close.
  void close_connections(size_t id) {
    auto& n = *nodes_[id];
    if (n.closed)
      return;
    n.closed = true;
    for (auto& [peer, pid] : current_)
      if (peer != n.name)
        post(pid, now + o_.net_latency, [this, pid = pid, name = n.name] {
          nodes_[pid]->core->connection_lost(name, local(pid));
        });
  }

  void send_beat(size_t from, uint64_t epoch, const std::vector<std::string>& targets) {
    auto& src = *nodes_[from];
    for (auto& peer : targets) {
      auto running = current_.find(peer);
      if (running == current_.end() || peer == src.name || cuts_.count({src.name, peer}) != 0)
        continue;
      const size_t pid = running->second;
      ++beats_sent;
      fate f = network ? network(src.name, peer) : fate{};
      if (f.drop)
        continue;
      auto deliver = [this, pid, name = src.name, epoch] { receive_beat(pid, name, epoch); };
      post(pid, now + o_.net_latency + f.extra, deliver);
      if (f.duplicate)
        post(pid, now + o_.net_latency + f.extra + 3ms, deliver);
    }
  }

  void receive_beat(size_t to, const std::string& from, uint64_t epoch) {
    // An unconfirmed epoch (newer than the receiver's view showed) is not acted on either, but
    // is no refusal: the view that shows it may still come.
    if (nodes_[to]->core->beat(from, epoch, local(to)) == beat_verdict::refused)
      refused.emplace_back(nodes_[to]->name, from, epoch);
  }

  void pump(size_t id) {
    auto& n = *nodes_[id];
    for (auto& a : n.core->take_actions()) {
      // The log keeps a beat without its targets (the bulk of a large cluster's log).
      std::vector<std::string> targets = std::move(a.targets);
      a.targets.clear();
      log.push_back({now, n.name, n.core->epoch(), a});
      switch (a.kind) {
        case kind::send_beats:
          send_beat(id, a.epoch, targets);
          break;
        case kind::declare_dead:
          n.coord->declare_dead(a.peer, a.epoch,
                                [this, id, peer = a.peer, e = a.epoch](caf::expected<bool> r) {
                                  nodes_[id]->core->declared(peer, e, r, local(id));
                                });
          break;
        case kind::campaign:
          n.coord->campaign([this, id](caf::expected<uint64_t> t) {
            nodes_[id]->core->campaigned(t, local(id));
          });
          break;
        case kind::keep_alive:
          n.coord->keep_alive([this, id, sent = a.at](caf::expected<caf::unit_t> r) {
            nodes_[id]->core->kept_alive(r, sent, local(id));
          });
          break;
        case kind::fenced:
          // A fenced node's process exits.
          close_connections(id);
          break;
        default:
          break;
      }
    }
  }

  options o_;
  std::vector<std::unique_ptr<node>> nodes_;
  std::map<std::string, size_t> current_;
  std::set<std::pair<std::string, std::string>> cuts_;
  std::map<std::pair<time_point, uint64_t>, event> events_;
  uint64_t seq_ = 0;
  time_point last_poll_{};
};

} // namespace understudy::cluster_detail
