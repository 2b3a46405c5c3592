#include "understudy/cluster/simulation.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <tuple>

#include "cluster/cluster_sim.hpp"
#include "cluster/training_sim.hpp"

namespace understudy {

namespace {

using namespace cluster_detail;
using ms = std::chrono::milliseconds;
using kind = membership_action_kind;

/// One fault of a schedule: when, what (for the trace) and how it acts on the simulation.
struct scheduled_fault {
  ms at{0};
  std::string what;
  /// A kill's victim (for the detection and failover figures).
  std::string killed;
  std::function<void(cluster_sim&)> apply;
};

std::string node_name(size_t i) {
  return "n" + std::to_string(i + 1);
}

/// In `after`, starts again each of `names` that is down then (its operator restarts it).
void start_again(cluster_sim& sim, std::vector<std::string> names, ms after) {
  sim.at(sim.now + after, [&sim, names = std::move(names)] {
    for (const auto& n : names)
      if (sim.down(n))
        sim.start(n);
  });
}

std::string fmt_ms(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f ms", x);
  return buf;
}

/// The faults `seed` draws for a run (see simulation.hpp): which sites are on, then each
/// site's faults at random times before `fault_end`.
std::vector<scheduled_fault> draw_faults(std::mt19937_64& rng, const simulation_options& o,
                                         ms fault_end) {
  std::vector<scheduled_fault> out;
  auto uniform = [&](double a, double b) {
    return std::uniform_real_distribution<double>(a, b)(rng);
  };
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  auto when = [&] {
    return ms{static_cast<int64_t>(uniform(1000, static_cast<double>(fault_end.count())))};
  };
  // Log-uniform lengths: short ones as often as long ones.
  auto length = [&](double lo, double hi) {
    return ms{static_cast<int64_t>(std::exp(uniform(std::log(lo), std::log(hi))))};
  };
  auto bounded = [&](ms at, ms len) { return std::min(len, fault_end - at); };
  const size_t n = o.nodes;
  enum site { kill, pause, partition, one_way, service_down, service_cut, sites };
  bool on[sites];
  for (auto& s : on)
    s = o.faults && (rng() % 2 == 0);
  for (int s = 0; s < sites; ++s) {
    if (!on[s])
      continue;
    auto count = 1 + pick(5);
    for (size_t k = 0; k < count; ++k) {
      auto at = when();
      auto vi = pick(n);
      auto victim = node_name(vi);
      // Another node than the victim.
      auto other = [&] { return node_name((vi + 1 + pick(n - 1)) % n); };
      scheduled_fault f;
      f.at = at;
      switch (s) {
        case kill: {
          auto back = length(200, 8000);
          f.what =
              "kill " + victim + ", start it again after " + std::to_string(back.count()) + " ms";
          f.killed = victim;
          f.apply = [victim, back](cluster_sim& sim) {
            if (sim.down(victim))
              return;
            sim.kill(victim);
            start_again(sim, {victim}, back);
          };
          break;
        }
        case pause: {
          auto len = bounded(at, length(5, 6000));
          f.what = "pause " + victim + " for " + std::to_string(len.count()) + " ms";
          f.apply = [victim, len](cluster_sim& sim) {
            if (!sim.down(victim) && !sim.paused(victim))
              sim.pause(victim, len);
          };
          break;
        }
        case partition: {
          std::vector<std::string> others;
          for (size_t i = 0; i < n; ++i)
            if (node_name(i) != victim && rng() % 2 == 0)
              others.push_back(node_name(i));
          if (others.empty())
            others.push_back(other());
          auto len = bounded(at, length(100, 8000));
          f.what = "partition " + victim + " from";
          for (auto& x : others)
            f.what += " " + x;
          f.what += " for " + std::to_string(len.count()) + " ms";
          f.apply = [victim, others, len](cluster_sim& sim) {
            for (auto& x : others)
              sim.cut(victim, x);
            sim.at(sim.now + len, [&sim, victim, others] {
              for (auto& x : others)
                sim.cut(victim, x, false);
            });
          };
          break;
        }
        case one_way: {
          auto to = other();
          auto len = bounded(at, length(100, 8000));
          f.what = "drop what " + victim + " sends to " + to + " for " +
                   std::to_string(len.count()) + " ms";
          f.apply = [victim, to, len](cluster_sim& sim) {
            sim.cut_one_way(victim, to);
            sim.at(sim.now + len, [&sim, victim, to] { sim.cut_one_way(victim, to, false); });
          };
          break;
        }
        case service_down: {
          auto len = bounded(at, length(100, 6000));
          f.what = "the coordination service down for " + std::to_string(len.count()) + " ms";
          f.apply = [len](cluster_sim& sim) {
            sim.service->set_available(false);
            sim.at(sim.now + len, [&sim] { sim.service->set_available(true); });
          };
          break;
        }
        case service_cut: {
          auto len = bounded(at, length(100, 8000));
          f.what = "cut " + victim + " off the coordination service for " +
                   std::to_string(len.count()) + " ms";
          f.apply = [victim, len](cluster_sim& sim) {
            sim.service->set_reachable(victim, false);
            sim.at(sim.now + len, [&sim, victim] { sim.service->set_reachable(victim, true); });
          };
          break;
        }
        default:
          break;
      }
      if (f.apply)
        out.push_back(std::move(f));
    }
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const scheduled_fault& a, const scheduled_fault& b) { return a.at < b.at; });
  return out;
}

/// Lines of the log from `from` on, as the trace shows them.
std::string trace_of(const cluster_sim& sim, size_t from) {
  std::string out;
  for (size_t i = from; i < sim.log.size(); ++i) {
    const auto& r = sim.log[i];
    if (r.action.kind == kind::send_beats || r.action.kind == kind::keep_alive)
      continue;
    char head[64];
    std::snprintf(head, sizeof head, "%10.1f ms ", sim_ms(r.at, sim.origin));
    out += head + r.node + "@" + std::to_string(r.epoch) + " " + to_string(r.action.kind);
    if (!r.action.peer.empty())
      out += " " + r.action.peer;
    if (r.action.epoch != 0)
      out += " " + std::to_string(r.action.epoch);
    if (r.action.kind == kind::peer_changed)
      out += " " + to_string(r.action.state);
    if (!r.action.text.empty())
      out += " (" + r.action.text + ")";
    out += "\n";
  }
  return out;
}

} // namespace

simulation_report simulate(const simulation_options& opts) {
  simulation_report rep;
  rep.seed = opts.seed;
  rep.nodes = opts.nodes;
  cluster_sim::options o;
  o.names.clear();
  for (size_t i = 0; i < opts.nodes; ++i)
    o.names.push_back(node_name(i));
  o.interval = opts.heartbeat_interval;
  o.deadline = opts.deadline;
  o.ttl = opts.session_ttl;
  o.monitors = opts.monitors;
  // The clocks' faults come from a stream of their own, so that the other faults a seed draws
  // stay as they were before clocks were simulated: each node's clock drifting up to 1% fast or
  // slow (every incarnation of it: its hardware), and forward jumps.
  std::mt19937_64 clock_rng{opts.seed ^ 0x5bd1e9955bd1e995ULL};
  std::uniform_real_distribution<double> clock_u(0, 1);
  const bool drift = opts.faults && clock_u(clock_rng) < 0.5;
  const bool jumps = opts.faults && clock_u(clock_rng) < 0.5;
  std::string drifts;
  if (drift)
    for (size_t i = 0; i < opts.nodes; ++i) {
      const double rate = 1.0 + (2 * clock_u(clock_rng) - 1) * 0.01;
      o.rates[node_name(i)] = rate;
      char buf[48];
      std::snprintf(buf, sizeof buf, "%s%s %+.3f%%", drifts.empty() ? "" : ", ",
                    node_name(i).c_str(), (rate - 1) * 100);
      drifts += buf;
    }
  cluster_sim sim(o);
  const auto origin = sim.origin;
  const ms fault_end = opts.duration * 2 / 3;
  const ms settle = opts.session_ttl + 2 * opts.deadline + ms{2000};
  auto at_ms = [&](cluster_sim::time_point t) { return fmt_ms(sim_ms(t, origin)); };
  auto violation = [&](const std::string& what) {
    if (rep.violations.size() < 20)
      rep.violations.push_back("at " + at_ms(sim.now) + ": " + what);
  };
  // The schedule, and the network's own faults from a second stream (so that leaving out a
  // fault when shrinking keeps the others as they were).
  std::mt19937_64 rng{opts.seed};
  auto schedule = draw_faults(rng, opts, fault_end);
  if (jumps) {
    auto count = 1 + clock_rng() % 5;
    for (size_t k = 0; k < count; ++k) {
      scheduled_fault f;
      f.at = ms{static_cast<int64_t>(1000 + clock_u(clock_rng) *
                                                static_cast<double>(fault_end.count() - 1000))};
      auto victim = node_name(clock_rng() % opts.nodes);
      auto d = ms{static_cast<int64_t>(
          std::exp(std::log(50.0) + clock_u(clock_rng) * (std::log(5000.0) - std::log(50.0))))};
      f.what = "the clock of " + victim + " jumps " + std::to_string(d.count()) + " ms ahead";
      f.apply = [victim, d](cluster_sim& sim) {
        if (!sim.down(victim))
          sim.jump_clock(victim, d);
      };
      schedule.push_back(std::move(f));
    }
    std::stable_sort(
        schedule.begin(), schedule.end(),
        [](const scheduled_fault& a, const scheduled_fault& b) { return a.at < b.at; });
  }
  // Forged heartbeats, from a stream of their own as well: a node that holds a valid
  // certificate (compromised, or broken) writes an epoch the coordinator never gave it into
  // heartbeats to every peer. Its connection still names it, so only the epoch can lie.
  std::mt19937_64 forge_rng{opts.seed ^ 0xc2b2ae3d27d4eb4fULL};
  const bool forging = opts.faults && forge_rng() % 2 == 0;
  if (forging) {
    auto count = 1 + forge_rng() % 5;
    for (size_t k = 0; k < count; ++k) {
      scheduled_fault f;
      f.at = ms{static_cast<int64_t>(1000 + static_cast<double>(forge_rng() % 1000000) / 1e6 *
                                                static_cast<double>(fault_end.count() - 1000))};
      auto liar = node_name(forge_rng() % opts.nodes);
      // Far above any epoch a run gives out (a join each): never a real one.
      const uint64_t lift = 1000 + forge_rng() % 1000;
      f.what =
          liar + " claims its epoch + " + std::to_string(lift) + " in heartbeats to every peer";
      f.apply = [liar, lift, names = o.names](cluster_sim& sim) {
        if (sim.down(liar))
          return;
        const auto forged = sim.core(liar).epoch() + lift;
        for (const auto& to : names)
          sim.forge_beat(liar, to, forged);
      };
      schedule.push_back(std::move(f));
    }
    std::stable_sort(
        schedule.begin(), schedule.end(),
        [](const scheduled_fault& a, const scheduled_fault& b) { return a.at < b.at; });
  }
  // The training job, and the disks' faults: a stream of their own again.
  std::mt19937_64 disk_rng{opts.seed ^ 0x632be59bd9b4e019ULL};
  std::unique_ptr<training_sim> job;
  training_sim_options to;
  if (opts.training) {
    std::uniform_real_distribution<double> u(0, 1);
    const auto per_step = to.compute + ms{6};
    to.steps = opts.training_steps != 0
                   ? opts.training_steps
                   : std::max<uint64_t>(10, static_cast<uint64_t>(opts.duration / 2 / per_step));
    to.data_seed = opts.seed;
    to.disk_seed = disk_rng();
    const bool corrupt = opts.faults && u(disk_rng) < 0.5;
    const bool power = opts.faults && u(disk_rng) < 0.5;
    const bool blackout = opts.faults && u(disk_rng) < 0.25;
    const bool replace = opts.faults && u(disk_rng) < 0.5;
    if (corrupt) {
      to.corrupt_reads = 0.2 * u(disk_rng);
      rep.faults.push_back("disk reads corrupt with probability " +
                           std::to_string(to.corrupt_reads));
    }
    job = std::make_unique<training_sim>(sim, to, violation);
    auto at_random = [&] {
      return ms{
          static_cast<int64_t>(1000 + u(disk_rng) * static_cast<double>(fault_end.count() - 1000))};
    };
    auto length = [&](double lo, double hi) {
      return ms{static_cast<int64_t>(
          std::exp(std::log(lo) + u(disk_rng) * (std::log(hi) - std::log(lo))))};
    };
    auto* j = job.get();
    if (power) {
      auto count = 1 + disk_rng() % 3;
      for (size_t k = 0; k < count; ++k) {
        scheduled_fault f;
        f.at = at_random();
        auto victim = node_name(disk_rng() % opts.nodes);
        auto back = length(200, 8000);
        f.what = "power loss at " + victim + " (unsynced writes lost or torn), back after " +
                 std::to_string(back.count()) + " ms";
        f.apply = [j, victim, back](cluster_sim& sim) {
          if (sim.down(victim))
            return;
          j->power_loss(victim);
          sim.kill(victim);
          start_again(sim, {victim}, back);
        };
        schedule.push_back(std::move(f));
      }
    }
    if (blackout) {
      scheduled_fault f;
      f.at = at_random();
      auto back = length(500, 5000);
      f.what =
          "power loss at every node at once, back after " + std::to_string(back.count()) + " ms";
      f.apply = [j, back, names = o.names](cluster_sim& sim) {
        for (const auto& n : names)
          if (!sim.down(n)) {
            j->power_loss(n);
            sim.kill(n);
          }
        start_again(sim, names, back);
      };
      schedule.push_back(std::move(f));
    }
    if (replace) {
      // One machine replaced: its disk comes back empty (with one buddy copy of each
      // checkpoint, a second lost disk could take an acknowledged step with it).
      scheduled_fault f;
      f.at = at_random();
      auto victim = node_name(disk_rng() % opts.nodes);
      auto back = length(1000, 8000);
      f.what = "the machine of " + victim + " replaced (its disk empty), back after " +
               std::to_string(back.count()) + " ms";
      f.apply = [j, victim, back](cluster_sim& sim) {
        if (!sim.down(victim))
          sim.kill(victim);
        j->lose_disk(victim);
        start_again(sim, {victim}, back);
      };
      schedule.push_back(std::move(f));
    }
    std::stable_sort(
        schedule.begin(), schedule.end(),
        [](const scheduled_fault& a, const scheduled_fault& b) { return a.at < b.at; });
  }
  if (drift)
    rep.faults.push_back("clocks drift: " + drifts);
  std::mt19937_64 net_rng{opts.seed ^ 0x9e3779b97f4a7c15ULL};
  double p_drop = 0, p_dup = 0, p_delay = 0, p_stale = 0;
  if (opts.faults) {
    std::uniform_real_distribution<double> u(0, 1);
    if (u(rng) < 0.5)
      p_drop = 0.2 * u(rng);
    if (u(rng) < 0.5)
      p_dup = 0.1 * u(rng);
    if (u(rng) < 0.5)
      p_delay = 0.2 * u(rng);
    if (u(rng) < 0.5)
      p_stale = 0.02 * u(rng);
  }
  if (p_drop > 0)
    rep.faults.push_back("heartbeats lost with probability " + std::to_string(p_drop));
  if (p_dup > 0)
    rep.faults.push_back("heartbeats duplicated with probability " + std::to_string(p_dup));
  if (p_delay > 0)
    rep.faults.push_back("heartbeats delayed up to 300 ms with probability " +
                         std::to_string(p_delay));
  if (p_stale > 0)
    rep.faults.push_back(
        "heartbeats replayed 1 to 10 s late (stale epochs after restarts) with "
        "probability " +
        std::to_string(p_stale));
  sim.network = [&](const std::string&, const std::string&) {
    cluster_sim::fate f;
    if (sim.now - origin >= fault_end)
      return f;
    std::uniform_real_distribution<double> u(0, 1);
    f.drop = u(net_rng) < p_drop;
    f.duplicate = u(net_rng) < p_dup;
    if (u(net_rng) < p_delay)
      f.extra = std::chrono::duration_cast<caf::timespan>(
          std::chrono::microseconds(static_cast<int64_t>(u(net_rng) * 300000)));
    if (u(net_rng) < p_stale) {
      // A beat that arrives long after it was sent (a stale copy replayed, a connection's
      // buffer flushed late): by then its sender may be a newer incarnation, or fenced.
      f.duplicate = true;
      f.extra = std::chrono::duration_cast<caf::timespan>(
          std::chrono::microseconds(static_cast<int64_t>(1e6 + u(net_rng) * 9e6)));
    }
    return f;
  };
  // Kills and leadership for the detection and failover figures.
  std::map<std::pair<std::string, uint64_t>, cluster_sim::time_point> killed_at;
  std::optional<cluster_sim::time_point> leader_killed_at;
  for (size_t i = 0; i < schedule.size(); ++i) {
    auto& f = schedule[i];
    rep.faults.push_back("#" + std::to_string(i) + " " + fmt_ms(static_cast<double>(f.at.count())) +
                         ": " + f.what + (opts.skip.count(i) != 0 ? " (left out)" : ""));
    if (opts.skip.count(i) != 0)
      continue;
    sim.at(origin + f.at,
           [&sim, &killed_at, &leader_killed_at, apply = f.apply, victim = f.killed] {
             if (!victim.empty()) {
               if (!sim.down(victim)) {
                 killed_at[{victim, sim.core(victim).epoch()}] = sim.now;
                 if (sim.core(victim).leads())
                   leader_killed_at = sim.now;
               }
             }
             apply(sim);
           });
  }
  if (opts.kill_leader_at.count() > 0) {
    rep.faults.push_back(fmt_ms(static_cast<double>(opts.kill_leader_at.count())) +
                         ": kill the leader, start it again after 1000 ms");
    sim.at(origin + opts.kill_leader_at, [&] {
      for (const auto& n : o.names)
        if (!sim.down(n) && sim.core(n).leads()) {
          killed_at[{n, sim.core(n).epoch()}] = sim.now;
          leader_killed_at = sim.now;
          sim.kill(n);
          sim.at(sim.now + ms{1000}, [&sim, n] {
            if (sim.down(n))
              sim.start(n);
          });
          return;
        }
    });
  }
  if (opts.freeze_leader_at.count() > 0) {
    const auto len = std::chrono::duration_cast<ms>(3 * opts.deadline);
    rep.faults.push_back(fmt_ms(static_cast<double>(opts.freeze_leader_at.count())) +
                         ": freeze the leader for " + std::to_string(len.count()) + " ms");
    sim.at(origin + opts.freeze_leader_at, [&sim, &o, &killed_at, &leader_killed_at, len] {
      for (const auto& n : o.names)
        if (!sim.down(n) && sim.core(n).leads()) {
          killed_at[{n, sim.core(n).epoch()}] = sim.now;
          leader_killed_at = sim.now;
          sim.pause(n, len);
          return;
        }
    });
  }
  // A node that exits (fenced, or its join refused) is started again by its operator.
  std::set<size_t> restarting;
  // Invariants on every input.
  uint64_t newest_term = 0;
  std::string newest_leader;
  cluster_sim::time_point newest_at{};
  bool settled = false;
  size_t log_seen = 0;
  sim.after_input = [&](size_t id) {
    if (job)
      job->after_input(id);
    const auto& name = sim.name_of(id);
    auto& core = sim.incarnation(id);
    // Epochs are the coordinator's alone: no node believes a peer at one it never gave that
    // peer (a lookup per node and input: in every run of up to 64 nodes, and at any size
    // where heartbeats lie).
    if (forging || o.names.size() <= 64)
      for (const auto& y : o.names)
        if (auto e = core.epoch_of(y); e != 0 && !sim.service->gave(y, e))
          violation(name + "@" + std::to_string(core.epoch()) + " takes " + y + " for epoch " +
                    std::to_string(e) + ", which the coordinator never gave it");
    if (core.leads() && !core.fenced()) {
      if (core.term() < newest_term && newest_leader != name) {
        // A leader of an older term that has not heard of the newer one yet (paused, cut
        // off): allowed only while every node that knows the newer term refuses its epoch,
        // so that nothing it sends is acted on (epochs are fencing tokens).
        rep.stale_leader_ms.push_back(sim_ms(sim.now, newest_at));
        for (const auto& y : o.names)
          if (y != name && !sim.down(y) && sim.core(y).term() > core.term() &&
              sim.core(y).accepts(name, core.epoch()))
            violation(name + "@" + std::to_string(core.epoch()) + " acts as leader of term " +
                      std::to_string(core.term()) + " after " + newest_leader +
                      " acted as leader of term " + std::to_string(newest_term) + ", and " + y +
                      ", which knows that term, still accepts its messages");
      }
      if (core.term() >= newest_term) {
        newest_term = core.term();
        newest_leader = name;
        newest_at = sim.now;
      }
    }
    for (; log_seen < sim.log.size(); ++log_seen) {
      const auto& r = sim.log[log_seen];
      if (r.action.kind == kind::peer_changed && r.action.state == peer_state::dead) {
        auto k = killed_at.find({r.action.peer, r.action.epoch});
        if (k != killed_at.end()) {
          rep.detection_ms.push_back(sim_ms(sim.now, k->second));
          killed_at.erase(k);
        }
        if (settled)
          violation(r.node + " saw " + r.action.peer + " dead after the cluster settled");
      }
      if (r.action.kind == kind::leadership_gained && leader_killed_at) {
        rep.failover_ms.push_back(sim_ms(sim.now, *leader_killed_at));
        leader_killed_at.reset();
      }
      if (r.action.kind == kind::fenced && settled)
        violation(r.node + " was fenced after the cluster settled: " + r.action.text);
    }
    if (sim.current(name) == id && sim.down(name) && restarting.insert(id).second)
      sim.at(sim.now + ms{2000}, [&sim, name, id] {
        if (sim.current(name) == id && sim.down(name))
          sim.start(name);
      });
  };
  // Who leads, sampled every interval.
  uint64_t samples = 0, led = 0;
  std::function<void()> sample = [&] {
    ++samples;
    for (const auto& n : o.names)
      if (!sim.down(n) && !sim.paused(n) && sim.core(n).leads()) {
        ++led;
        break;
      }
    sim.at(sim.now + opts.heartbeat_interval, sample);
  };
  sim.at(origin + opts.heartbeat_interval, sample);
  // The faults end: everything heals and every stopped node starts again.
  sim.at(origin + fault_end, [&] {
    sim.heal_all();
    sim.service->set_available(true);
    for (const auto& n : o.names) {
      sim.service->set_reachable(n, true);
      if (sim.down(n))
        sim.start(n);
    }
  });
  // Settled within the bound: one leader that every running node knows; all alive.
  sim.at(origin + fault_end + settle, [&] {
    std::vector<std::string> leaders;
    for (const auto& n : o.names)
      if (!sim.down(n) && sim.core(n).leads())
        leaders.push_back(n);
    if (leaders.size() != 1) {
      std::string who;
      for (auto& l : leaders)
        who += " " + l;
      violation(std::to_string(leaders.size()) + " leaders (" + (who.empty() ? " none" : who) +
                " ) " + std::to_string(settle.count()) + " ms after the faults ended");
    }
    for (const auto& n : o.names) {
      if (sim.down(n)) {
        violation(n + " is not running " + std::to_string(settle.count()) +
                  " ms after the faults ended");
        continue;
      }
      if (leaders.size() == 1 && sim.core(n).leader() != leaders[0])
        violation(n + " takes " + (sim.core(n).leader().empty() ? "nobody" : sim.core(n).leader()) +
                  " for the leader, not " + leaders[0]);
      for (const auto& p : sim.core(n).peers())
        if (p.state != peer_state::alive)
          violation(n + " sees " + p.name + " " + to_string(p.state) + " " +
                    std::to_string(settle.count()) + " ms after the faults ended");
    }
    settled = true;
  });
  sim.run_for(opts.duration);
  if (job) {
    // Liveness: once the faults stop, the job ends within a bound (its steps at twice the
    // fault-free pace after the cluster settled).
    const auto bound = fault_end + settle + 2 * to.steps * (to.compute + ms{6}) + ms{5000};
    while (!job->finished() && job->error().empty() && sim.now - origin < bound)
      sim.run_for(std::chrono::seconds(1));
    if (!job->finished() && job->error().empty())
      violation("the training job did not finish " + fmt_ms(sim_ms(sim.now, origin + fault_end)) +
                " after the faults ended (committed step " + std::to_string(job->committed()) +
                " of " + std::to_string(to.steps) + ")");
    job->check_end();
    rep.training_steps = to.steps;
    rep.training_committed = job->committed();
    rep.training_finished_ms = job->finished_ms();
    rep.training_error = job->error();
    rep.training_rounds = job->rounds();
    rep.training_applied = job->applied_steps();
    rep.bad_reads = job->bad_reads();
    std::tie(rep.training_stall_ms, rep.training_step_ms) = job->commit_gaps();
  }
  for (const auto& c : sim.term_conflicts())
    violation("a term gained by two nodes: " + c);
  rep.simulated_s = std::chrono::duration<double>(sim.now - origin).count();
  rep.events = sim.events_run;
  rep.beats = sim.beats_sent;
  rep.terms = sim.terms().size();
  std::set<std::string> reported;
  for (const auto& r : sim.log) {
    if (r.action.kind == kind::peer_changed && r.action.state == peer_state::dead)
      ++rep.deaths;
    if (r.action.kind == kind::declare_dead)
      reported.insert(r.action.peer);
  }
  rep.reported = reported.size();
  rep.led_share = samples == 0 ? 0 : static_cast<double>(led) / static_cast<double>(samples);
  if (opts.trace) {
    for (const auto& f : rep.faults)
      rep.trace += "fault " + f + "\n";
    rep.trace += trace_of(sim, 0);
    if (job)
      rep.trace += "training job:\n" + job->trace();
  }
  return rep;
}

std::vector<size_t> shrink_simulation(const simulation_options& opts) {
  auto first = simulate(opts);
  std::vector<size_t> kept;
  // The schedule's faults are the entries numbered "#I" (not the network's probabilities).
  size_t scheduled = 0;
  for (const auto& f : first.faults)
    if (f.rfind("#", 0) == 0)
      ++scheduled;
  if (first.passed())
    return kept;
  auto o = opts;
  for (size_t i = 0; i < scheduled; ++i) {
    if (o.skip.count(i) != 0)
      continue;
    o.skip.insert(i);
    if (simulate(o).passed())
      o.skip.erase(i); // needed to fail
  }
  for (size_t i = 0; i < scheduled; ++i)
    if (o.skip.count(i) == 0)
      kept.push_back(i);
  return kept;
}

} // namespace understudy
