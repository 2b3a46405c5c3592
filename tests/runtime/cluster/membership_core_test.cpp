// Tests for runtime/src/cluster/membership_core.cpp and memory_coordinator.cpp: the cluster's
// membership, fencing and leadership decisions on simulated time. The harness
// (cluster/cluster_sim.hpp) runs N cores against one memory_coordination_service on a
// simulated clock, with a simulated network that can lose, duplicate, delay and cut
// heartbeats, and processes that can be paused (their events wait until they resume, as a
// SIGSTOPped process's mailbox does), killed and restarted.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "cluster/cluster_sim.hpp"
#include "understudy/cluster/memory_coordinator.hpp"

using namespace understudy;
using namespace understudy::cluster_detail;
using namespace std::chrono_literals;

namespace {

using clock_type = std::chrono::steady_clock;
using time_point = clock_type::time_point;
using kind = membership_action_kind;

/// Every term and the node that gained it; fails the test if a term had two.
std::map<uint64_t, std::string> checked_terms(const cluster_sim& sim) {
  auto conflicts = sim.term_conflicts();
  for (auto& c : conflicts)
    FAIL_CHECK("a term with two leaders: " << c);
  return sim.terms();
}

/// A cluster of n1, n2, n3 that has settled: every node sees the others alive, n1 leads.
std::unique_ptr<cluster_sim> settled(cluster_sim::options o = {}) {
  auto sim = std::make_unique<cluster_sim>(std::move(o));
  sim->run_for(2s);
  INFO(sim->text());
  for (auto& n : {"n1", "n2", "n3"}) {
    REQUIRE(sim->core(n).epoch() != 0);
    REQUIRE(sim->core(n).leader() == "n1");
    for (auto& p : sim->core(n).peers())
      REQUIRE(p.state == peer_state::alive);
  }
  REQUIRE(sim->core("n1").leads());
  return sim;
}

} // namespace

// -- the core on simulated time ------------------------------------------------------------------

TEST_CASE("membership core: a cold start elects the first candidate only, once",
          "[cluster][membership_core]") {
  auto sim = settled();
  auto campaigns = sim->of(kind::campaign);
  REQUIRE(campaigns.size() == 1);
  CHECK(campaigns[0].node == "n1");
  auto terms = checked_terms(*sim);
  REQUIRE(terms.size() == 1);
  CHECK(terms.begin()->second == "n1");
  CHECK(sim->core("n2").term() == terms.begin()->first);
  CHECK(sim->of(kind::declare_dead).empty());
}

TEST_CASE("membership core: pauses swept across the deadline window fence no healthy node",
          "[cluster][membership_core][pause]") {
  // Pauses from deadline - 2 intervals to deadline + 2 intervals in quarter-interval steps,
  // starting at every quarter of the paused node's heartbeat cycle, on the leader and on a
  // follower.
  for (std::string victim : {"n1", "n3"})
    for (int offset = 0; offset < 100; offset += 25)
      for (int length = 800; length <= 1200; length += 25) {
        auto sim = settled();
        auto start = sim->log.size();
        // The victim's last beat: its next one is due an interval later.
        time_point last_beat{};
        for (auto& r : sim->of(kind::send_beats, victim))
          last_beat = r.at;
        // Offset 0 pauses it just before its next beat (the longest silence), 25 just after it.
        auto pause_at = last_beat + 100ms + std::chrono::milliseconds(offset) - 1us;
        sim->at(pause_at,
                [&sim, victim, length] { sim->pause(victim, std::chrono::milliseconds(length)); });
        sim->run_for(5s);
        INFO("victim " << victim << ", pause of " << length << " ms at " << offset
                       << " ms into its cycle\n"
                       << sim->text());
        std::set<std::string> dead;
        for (size_t i = start; i < sim->log.size(); ++i) {
          auto& r = sim->log[i];
          if (r.action.kind == kind::peer_changed && r.action.state == peer_state::dead)
            dead.insert(r.action.peer);
          if (r.action.kind == kind::fenced)
            CHECK(r.node == victim);
          if (r.action.kind == kind::declare_dead)
            CHECK(r.action.peer == victim);
        }
        for (auto& n : {"n1", "n2", "n3"})
          if (n != victim) {
            CHECK(dead.count(n) == 0);
            CHECK_FALSE(sim->core(n).fenced());
          }
        if (length < 1000) {
          // Shorter than the deadline: nobody is even reported.
          CHECK(dead.empty());
          CHECK_FALSE(sim->core(victim).fenced());
          CHECK(sim->of(kind::declare_dead).empty());
          CHECK(checked_terms(*sim).size() == 1);
        } else if (length > 1100) {
          // Silent past deadline + the beat that was due: declared dead, and it knows.
          CHECK(dead.count(victim) == 1);
          CHECK(sim->core(victim).fenced());
        }
        // Never half-dead: declared dead by the coordinator if and only if fenced.
        CHECK(dead.count(victim) == (sim->core(victim).fenced() ? 1u : 0u));
        auto terms = checked_terms(*sim);
        if (victim == "n1" && sim->core("n1").fenced()) {
          // The next candidate that is a member took over, in a newer term.
          REQUIRE(terms.size() == 2);
          CHECK(terms.rbegin()->second == "n2");
          CHECK(sim->core("n2").leads());
          CHECK(sim->core("n3").leader() == "n2");
        } else {
          CHECK(terms.size() == 1);
          CHECK(sim->core("n1").leads());
        }
      }
}

TEST_CASE("membership core: a killed node is declared dead within the deadline",
          "[cluster][membership_core]") {
  auto sim = settled();
  auto killed_at = sim->now;
  sim->kill("n3");
  sim->run_for(1s);
  INFO(sim->text());
  for (auto& n : {"n1", "n2"}) {
    CHECK(sim->core(n).state_of("n3") == peer_state::dead);
    std::optional<time_point> when;
    for (auto& r : sim->of(kind::peer_changed, n))
      if (r.action.peer == "n3" && r.action.state == peer_state::dead)
        when = r.at;
    REQUIRE(when);
    // The closed connection is reported at once: well within the deadline.
    CHECK(*when - killed_at < 50ms);
    CHECK_FALSE(sim->core(n).accepts("n3", sim->core(n).epoch_of("n3")));
  }
  CHECK(sim->core("n1").leads());
}

TEST_CASE("membership core: a silent node is declared dead after the deadline and knows it",
          "[cluster][membership_core]") {
  auto sim = settled();
  auto cut_at = sim->now;
  sim->cut("n3", "n1");
  sim->cut("n3", "n2");
  sim->run_for(3s);
  INFO(sim->text());
  std::optional<time_point> first;
  for (auto& r : sim->of(kind::peer_changed))
    if (r.action.peer == "n3" && r.action.state == peer_state::dead && !first)
      first = r.at;
  REQUIRE(first);
  // The deadline counts from the beat that was due (an interval after the last one).
  CHECK(*first - cut_at >= 1s);
  CHECK(*first - cut_at <= 1s + 100ms + 100ms + 25ms);
  CHECK(sim->core("n3").fenced());
  CHECK_FALSE(sim->core("n1").fenced());
  CHECK_FALSE(sim->core("n2").fenced());
}

TEST_CASE("membership core: a flapping peer is suspected, never declared dead",
          "[cluster][membership_core]") {
  auto sim = settled();
  // n3's beats are lost for 600 ms, then delivered for 400 ms, ten times over.
  bool silent = false;
  sim->network = [&silent](const std::string& from, const std::string&) {
    return cluster_sim::fate{silent && from == "n3", {}, false};
  };
  for (int i = 0; i < 10; ++i) {
    silent = true;
    sim->run_for(600ms);
    silent = false;
    sim->run_for(400ms);
  }
  INFO(sim->text());
  CHECK(sim->of(kind::declare_dead).empty());
  CHECK_FALSE(sim->seen_dead("n3"));
  size_t suspected = 0;
  for (auto& r : sim->of(kind::peer_changed))
    if (r.action.peer == "n3" && r.action.state == peer_state::suspected)
      ++suspected;
  CHECK(suspected > 0);
  CHECK(sim->core("n1").state_of("n3") == peer_state::alive);
}

TEST_CASE("membership core: lost, duplicated and reordered beats declare nobody dead",
          "[cluster][membership_core]") {
  auto sim = settled();
  std::mt19937_64 rng{42};
  sim->network = [&rng](const std::string&, const std::string&) {
    std::uniform_real_distribution<double> u{0, 1};
    cluster_sim::fate f;
    f.drop = u(rng) < 0.3;
    f.duplicate = u(rng) < 0.2;
    // Up to 150 ms of extra delay: beats overtake each other.
    f.extra = std::chrono::microseconds(static_cast<int64_t>(u(rng) * 150'000));
    return f;
  };
  sim->run_for(20s);
  INFO(sim->text());
  CHECK(sim->of(kind::declare_dead).empty());
  CHECK(sim->of(kind::fenced).empty());
  for (auto& n : {"n1", "n2", "n3"})
    for (auto& p : sim->core(n).peers())
      CHECK(p.state != peer_state::dead);
  CHECK(sim->refused.empty());
}

TEST_CASE("membership core: a restarted node's newer epoch is accepted, its old one fenced",
          "[cluster][membership_core]") {
  auto sim = settled();
  auto old_id = sim->current("n3");
  auto old_epoch = sim->incarnation(old_id).epoch();
  // A second incarnation joins while the first still runs (a restart the first missed).
  auto new_id = sim->start("n3");
  sim->run_for(1s);
  INFO(sim->text());
  auto new_epoch = sim->incarnation(new_id).epoch();
  REQUIRE(new_epoch > old_epoch);
  CHECK(sim->incarnation(old_id).fenced());
  CHECK_FALSE(sim->incarnation(new_id).fenced());
  for (auto& n : {"n1", "n2"}) {
    auto& c = sim->core(n);
    CHECK(c.epoch_of("n3") == new_epoch);
    CHECK(c.state_of("n3") == peer_state::alive);
    CHECK(c.accepts("n3", new_epoch));
    CHECK_FALSE(c.accepts("n3", old_epoch));
    // A stale message of the old incarnation arriving late is refused.
    CHECK(c.beat("n3", old_epoch, sim->now) == beat_verdict::refused);
  }
  CHECK_FALSE(sim->core("n1").accepts("n3", 0));
  CHECK_FALSE(sim->core("n1").accepts("nobody", new_epoch));
  // The new incarnation learned the others' epochs and accepts them.
  CHECK(sim->incarnation(new_id).accepts("n1", sim->core("n1").epoch()));
}

TEST_CASE("membership core: stale epochs are refused after a node was declared dead",
          "[cluster][membership_core]") {
  auto sim = settled();
  auto e3 = sim->core("n3").epoch();
  sim->kill("n3");
  sim->run_for(500ms);
  INFO(sim->text());
  REQUIRE(sim->core("n1").state_of("n3") == peer_state::dead);
  auto before = sim->refused.size();
  CHECK(sim->core("n1").beat("n3", e3, sim->now) == beat_verdict::refused);
  CHECK(sim->core("n1").beat("n3", e3 - 1, sim->now) == beat_verdict::refused);
  CHECK(sim->core("n1").state_of("n3") == peer_state::dead);
  (void)before;
  // The node comes back: its new epoch is accepted.
  auto id = sim->start("n3");
  sim->run_for(1s);
  auto e3b = sim->incarnation(id).epoch();
  CHECK(e3b > e3);
  CHECK(sim->core("n1").state_of("n3") == peer_state::alive);
  CHECK(sim->core("n1").accepts("n3", e3b));
  CHECK_FALSE(sim->core("n1").accepts("n3", e3));
}

TEST_CASE(
    "membership core: a heartbeat at an epoch the coordinator never showed is not believed and "
    "fences nobody",
    "[cluster][membership_core]") {
  auto sim = settled();
  const auto e3 = sim->core("n3").epoch();
  // n3 holds a valid certificate and writes a made-up epoch into a heartbeat: the old rule
  // took any newer epoch for a restart and fenced the live incarnation e3.
  for (auto& n : {"n1", "n2"}) {
    auto& c = sim->core(n);
    CHECK(c.beat("n3", e3 + 50, sim->now) == beat_verdict::unconfirmed);
    CHECK(c.epoch_of("n3") == e3);
    CHECK(c.accepts("n3", e3));
    CHECK_FALSE(c.accepts("n3", e3 + 50));
    CHECK(c.state_of("n3") == peer_state::alive);
  }
  sim->run_for(5s);
  INFO(sim->text());
  CHECK(sim->of(kind::declare_dead).empty());
  CHECK(sim->of(kind::fenced).empty());
  CHECK_FALSE(sim->core("n3").fenced());
  CHECK(sim->core("n1").state_of("n3") == peer_state::alive);
  // A real restart: its beats may come before the view, which alone makes its epoch count.
  auto id = sim->start("n3");
  sim->run_for(1s);
  const auto e3b = sim->incarnation(id).epoch();
  CHECK(sim->core("n1").epoch_of("n3") == e3b);
  CHECK(sim->core("n1").accepts("n3", e3b));
  CHECK(sim->core("n1").state_of("n3") == peer_state::alive);
}

TEST_CASE("membership core: exactly one leader per term across failovers",
          "[cluster][membership_core]") {
  auto sim = settled();
  sim->kill("n1");
  sim->run_for(1s);
  {
    INFO(sim->text());
    CHECK(sim->core("n2").leads());
    CHECK(sim->core("n3").leader() == "n2");
  }
  sim->start("n1"); // back, as a follower: n2 leads
  sim->run_for(1s);
  CHECK(sim->core("n1").leader() == "n2");
  CHECK_FALSE(sim->core("n1").leads());
  sim->kill("n2");
  sim->run_for(1s);
  {
    INFO(sim->text());
    // The first candidate that is a member takes over: n1 again.
    CHECK(sim->core("n1").leads());
    CHECK(sim->core("n3").leader() == "n1");
  }
  auto terms = checked_terms(*sim);
  CHECK(terms.size() == 3);
  std::vector<std::string> order;
  for (auto& [term, who] : terms)
    order.push_back(who);
  CHECK(order == std::vector<std::string>{"n1", "n2", "n1"});
  size_t leading = 0;
  for (auto& n : {"n1", "n2", "n3"})
    if (!sim->stopped(n) && sim->core(n).leads())
      ++leading;
  CHECK(leading == 1);
}

TEST_CASE("membership core: a leader cut from the coordinator stops before its lease expires",
          "[cluster][membership_core]") {
  cluster_sim::options o;
  o.ttl = 2s;
  auto sim = settled(o);
  // The time of n1's last renewal that the service accepted, before the cut.
  time_point renewed{};
  for (auto& r : sim->of(kind::keep_alive, "n1"))
    renewed = r.at;
  sim->service->set_reachable("n1", false);
  sim->run_for(4s);
  INFO(sim->text());
  auto fenced = sim->of(kind::fenced, "n1");
  REQUIRE(fenced.size() == 1);
  auto lost = sim->of(kind::leadership_lost, "n1");
  REQUIRE(lost.size() == 1);
  // It stopped one interval before its lease could run out...
  CHECK(lost[0].at <= renewed + 2s - 100ms + 25ms);
  CHECK(lost[0].at < renewed + 2s);
  // ... and so before anyone else led (its process exited: the others took over at once).
  auto gained = sim->of(kind::leadership_gained, "n2");
  REQUIRE(gained.size() == 1);
  CHECK(lost[0].at < gained[0].at);
  auto terms = checked_terms(*sim);
  CHECK(terms.size() == 2);
}

TEST_CASE("membership core: a node that cannot reach the coordinator declares nobody dead",
          "[cluster][membership_core]") {
  auto sim = settled();
  sim->service->set_available(false);
  auto out_at = sim->now;
  sim->kill("n3");
  // An outage shorter than the leader's lease, past the deadline.
  sim->run_for(1500ms);
  {
    INFO(sim->text());
    // They asked, and were told the coordinator is unreachable: n3 stays undecided.
    CHECK_FALSE(sim->of(kind::declare_dead).empty());
    CHECK_FALSE(sim->seen_dead("n3"));
    CHECK(sim->core("n1").state_of("n3") == peer_state::suspected);
    CHECK(sim->core("n1").leads());
  }
  sim->service->set_available(true);
  sim->run_for(500ms);
  INFO(sim->text());
  CHECK(sim->core("n1").state_of("n3") == peer_state::dead);
  CHECK(sim->core("n2").state_of("n3") == peer_state::dead);
  CHECK(sim->core("n1").leads());
  CHECK_FALSE(sim->core("n1").fenced());
  (void)out_at;
}

TEST_CASE("membership core: a node cut from the coordinator and its peers decides nothing",
          "[cluster][membership_core]") {
  auto sim = settled();
  sim->service->set_reachable("n3", false);
  sim->cut("n3", "n1");
  sim->cut("n3", "n2");
  sim->run_for(5s);
  INFO(sim->text());
  // n3 saw n1 and n2 fall silent, asked and could not be heard: they are not dead to it.
  for (auto& r : sim->of(kind::peer_changed, "n3"))
    CHECK(r.action.state != peer_state::dead);
  CHECK_FALSE(sim->core("n1").fenced());
  CHECK_FALSE(sim->core("n2").fenced());
  // The others declared it dead: when it hears of it, or its session ends, it stops.
  CHECK(sim->core("n1").state_of("n3") == peer_state::dead);
  sim->service->set_reachable("n3", true);
  sim->run_for(100ms);
  CHECK(sim->core("n3").fenced());
}

// -- one core, driven by hand -------------------------------------------------------------------

namespace {

/// Node n3 of n1, n2, n3, joined as epoch 3 and seeing n1 (epoch 1) and n2 (epoch 2) members
/// that have beaten regularly for a second: the time is `t`.
struct lone_core {
  time_point t = time_point{} + 1h;
  membership_core core{[] {
    membership_settings s;
    s.self = "n3";
    s.peers = {"n1", "n2", "n3"};
    return s;
  }()};

  lone_core() {
    core.joined(3, t);
    coordination_view v;
    v.revision = 10;
    v.members = {{"n1", 1}, {"n2", 2}, {"n3", 3}};
    v.leader = "n1";
    v.leader_term = 4;
    v.led_before = true;
    core.view(v, t);
    for (int i = 0; i < 10; ++i)
      step(100ms, true, true);
    core.take_actions();
  }

  /// Time passes by `d` in quarter intervals (ticks), with beats from n1 and n2 at its end.
  void step(caf::timespan d, bool n1, bool n2) {
    for (auto left = d; left > caf::timespan{}; left -= 25ms) {
      t += std::min<caf::timespan>(left, 25ms);
      core.tick(t);
    }
    if (n1)
      CHECK(core.beat("n1", 1, t) == beat_verdict::accepted);
    if (n2)
      CHECK(core.beat("n2", 2, t) == beat_verdict::accepted);
  }

  std::vector<std::string> declared() {
    std::vector<std::string> out;
    for (auto& a : core.take_actions())
      if (a.kind == kind::declare_dead)
        out.push_back(a.peer);
    return out;
  }
};

} // namespace

TEST_CASE("membership core: its own pause is not its peers' silence",
          "[cluster][membership_core][pause]") {
  lone_core n;
  // Frozen for 1.05 s: when it resumes, n2's queued beat is handled first, then its tick.
  n.t += 1050ms;
  CHECK(n.core.beat("n2", 2, n.t) == beat_verdict::accepted);
  n.core.tick(n.t);
  CHECK(n.declared().empty());
  CHECK(n.core.observed() < n.t - 900ms);
  // n1 really is silent from now on: reported after the deadline and the beat that was due.
  n.step(1000ms, false, true);
  CHECK(n.declared().empty());
  n.step(200ms, false, true);
  CHECK(n.declared() == std::vector<std::string>{"n1"});
  CHECK(n.core.state_of("n1") == peer_state::suspected);
}

TEST_CASE(
    "membership core: connections that close during its own pause are reported a "
    "deadline later, and not at all if the peer beats again",
    "[cluster][membership_core][pause]") {
  lone_core n;
  // Frozen for 1.05 s; its peers closed their connections meanwhile, which it
  // learns as it resumes.
  n.t += 1050ms;
  n.core.connection_lost("n1", n.t);
  n.core.connection_lost("n2", n.t);
  CHECK(n.declared().empty());
  CHECK(n.core.state_of("n1") == peer_state::suspected);
  // n2 reconnects and beats: not reported at all.
  n.step(300ms, false, true);
  CHECK(n.declared().empty());
  CHECK(n.core.state_of("n2") == peer_state::alive);
  // n1 stays away: reported once a deadline has passed since the loss.
  n.step(600ms, false, true);
  CHECK(n.declared().empty());
  n.step(200ms, false, true);
  CHECK(n.declared() == std::vector<std::string>{"n1"});
}

TEST_CASE("membership core: a connection lost without a pause of its own is reported at once",
          "[cluster][membership_core]") {
  lone_core n;
  n.step(50ms, true, true);
  n.core.connection_lost("n1", n.t);
  CHECK(n.declared() == std::vector<std::string>{"n1"});
}

TEST_CASE("membership core: a node with one peer reports it after the deadline, not later",
          "[cluster][membership_core]") {
  auto t = time_point{} + 1h;
  membership_settings s;
  s.self = "a";
  s.peers = {"a", "b"};
  membership_core core{s};
  core.joined(2, t);
  coordination_view v;
  v.revision = 3;
  v.members = {{"a", 2}, {"b", 1}};
  core.view(v, t);
  CHECK(core.beat("b", 1, t) == beat_verdict::accepted);
  core.take_actions();
  auto declared = [&] {
    for (auto& a : core.take_actions())
      if (a.kind == kind::declare_dead)
        return true;
    return false;
  };
  // b beats once, then is silent: reported once the deadline and the beat that
  // was due have passed (1.1 s), not a deadline later.
  for (int i = 0; i < 43; ++i) {
    t += 25ms;
    core.tick(t);
  }
  CHECK_FALSE(declared());
  for (int i = 0; i < 4; ++i) {
    t += 25ms;
    core.tick(t);
  }
  CHECK(declared());
}

TEST_CASE("membership core: a node that finds most peers silent reports them a deadline later",
          "[cluster][membership_core]") {
  lone_core n;
  n.step(1200ms, false, false);
  // Both peers silent past the deadline: probably cut off itself; it waits.
  CHECK(n.declared().empty());
  n.step(1000ms, false, false);
  auto d = n.declared();
  std::sort(d.begin(), d.end());
  CHECK(d == std::vector<std::string>{"n1", "n2"});
  // Nothing is dead until the coordinator says so.
  CHECK(n.core.state_of("n1") == peer_state::suspected);
  coordination_view v;
  v.revision = 11;
  v.members = {{"n2", 2}, {"n3", 3}};
  v.fenced = {{"n1", 1}};
  v.led_before = true;
  n.core.view(v, n.t);
  CHECK(n.core.state_of("n1") == peer_state::dead);
  CHECK(n.core.state_of("n2") == peer_state::suspected);
  // A view of an older revision changes nothing.
  v.revision = 5;
  v.fenced = {{"n2", 2}};
  n.core.view(v, n.t);
  CHECK(n.core.state_of("n2") == peer_state::suspected);
}

TEST_CASE("membership core: the view fences this node when it is declared dead or replaced",
          "[cluster][membership_core]") {
  lone_core n;
  coordination_view v;
  v.revision = 11;
  v.members = {{"n1", 1}, {"n2", 2}};
  v.fenced = {{"n3", 3}};
  v.leader = "n1";
  v.leader_term = 4;
  v.led_before = true;
  n.core.view(v, n.t);
  CHECK(n.core.fenced());
  auto acts = n.core.take_actions();
  REQUIRE_FALSE(acts.empty());
  CHECK(acts.back().kind == kind::fenced);
  // Nothing follows a fence.
  n.step(2000ms, false, false);
  CHECK(n.core.take_actions().empty());

  lone_core m;
  v.fenced.clear();
  v.members["n3"] = 7; // a newer incarnation of n3 joined
  m.core.view(v, m.t);
  CHECK(m.core.fenced());
}

// -- the memory coordinator ----------------------------------------------------------------------

namespace {

/// Callbacks queued by a manual executor, run by the test.
struct manual_executor {
  std::vector<std::function<void()>> queue;
  memory_coordinator::executor get() {
    return [this](std::function<void()> f) { queue.push_back(std::move(f)); };
  }
  void drain() {
    while (!queue.empty()) {
      auto q = std::move(queue);
      queue.clear();
      for (auto& f : q)
        f();
    }
  }
};

template <class T>
caf::expected<T> call(manual_executor& ex,
                      const std::function<void(coordinator::callback<T>)>& op) {
  std::optional<caf::expected<T>> out;
  op([&out](caf::expected<T> r) { out = std::move(r); });
  ex.drain();
  REQUIRE(out);
  return std::move(*out);
}

} // namespace

TEST_CASE("memory coordinator: joins, declarations and campaigns are transactions",
          "[cluster][memory_coordinator]") {
  auto now = time_point{} + 1h;
  auto svc = std::make_shared<memory_coordination_service>(1000ms, [&now] { return now; });
  manual_executor ex;
  auto a = memory_coordinator::make(svc, ex.get());
  auto b = memory_coordinator::make(svc, ex.get());
  std::vector<coordination_view> seen;
  a->watch([&seen](const coordination_view& v) { seen.push_back(v); });
  auto ea = call<uint64_t>(ex, [&](auto k) { a->join("a", k); });
  auto eb = call<uint64_t>(ex, [&](auto k) { b->join("b", k); });
  REQUIRE(ea);
  REQUIRE(eb);
  CHECK(*eb > *ea);
  REQUIRE_FALSE(seen.empty());
  CHECK(seen.back().members == std::map<std::string, uint64_t>{{"a", *ea}, {"b", *eb}});
  for (size_t i = 1; i < seen.size(); ++i)
    CHECK(seen[i].revision > seen[i - 1].revision);

  // One leader: the second campaign loses.
  auto ta = call<uint64_t>(ex, [&](auto k) { a->campaign(k); });
  auto tb = call<uint64_t>(ex, [&](auto k) { b->campaign(k); });
  REQUIRE(ta);
  REQUIRE(tb);
  CHECK(*ta > 0);
  CHECK(*tb == 0);
  CHECK(svc->view().leader == "a");
  CHECK(svc->view().led_before);

  // A stale declaration fails; the right one removes a, fences its epoch, clears the leader.
  CHECK(*call<bool>(ex, [&](auto k) { b->declare_dead("a", *ea + 100, k); }) == false);
  CHECK(*call<bool>(ex, [&](auto k) { b->declare_dead("a", *ea, k); }) == true);
  auto v = svc->view();
  CHECK(v.members.count("a") == 0);
  CHECK(v.fenced.at("a") == *ea);
  CHECK(v.leader.empty());
  CHECK(seen.back().revision == v.revision);
  // a is done: every call of its session says so.
  auto ka = call<caf::unit_t>(ex, [&](auto k) { a->keep_alive(k); });
  REQUIRE_FALSE(ka);
  CHECK(is(ka.error(), coordination_errc::session_lost));
  auto da = call<bool>(ex, [&](auto k) { a->declare_dead("b", *eb, k); });
  REQUIRE_FALSE(da);
  CHECK(is(da.error(), coordination_errc::session_lost));
  // b leads in a newer term.
  auto tb2 = call<uint64_t>(ex, [&](auto k) { b->campaign(k); });
  REQUIRE(tb2);
  CHECK(*tb2 > *ta);
}

TEST_CASE("memory coordinator: sessions expire on the injected clock unless renewed",
          "[cluster][memory_coordinator]") {
  auto now = time_point{} + 1h;
  auto svc = std::make_shared<memory_coordination_service>(1000ms, [&now] { return now; });
  manual_executor ex;
  auto a = memory_coordinator::make(svc, ex.get());
  auto b = memory_coordinator::make(svc, ex.get());
  auto ea = call<uint64_t>(ex, [&](auto k) { a->join("a", k); });
  call<uint64_t>(ex, [&](auto k) { b->join("b", k); });
  call<uint64_t>(ex, [&](auto k) { a->campaign(k); });
  for (int i = 0; i < 5; ++i) {
    now += 600ms;
    CHECK(call<caf::unit_t>(ex, [&](auto k) { b->keep_alive(k); }));
  }
  svc->poll();
  auto v = svc->view();
  CHECK(v.members.count("a") == 0); // not renewed for 3 s
  CHECK(v.members.count("b") == 1);
  CHECK(v.leader.empty());
  // Expiry fences nothing by itself (as an etcd lease); a's session is simply gone.
  CHECK(v.fenced.count("a") == 0);
  auto ka = call<caf::unit_t>(ex, [&](auto k) { a->keep_alive(k); });
  REQUIRE_FALSE(ka);
  CHECK(is(ka.error(), coordination_errc::session_lost));
  // A rejoin gets a newer epoch.
  auto ea2 = call<uint64_t>(ex, [&](auto k) { a->join("a", k); });
  CHECK(*ea2 > *ea);
}

TEST_CASE("memory coordinator: an unavailable service decides nothing",
          "[cluster][memory_coordinator]") {
  auto now = time_point{} + 1h;
  auto svc = std::make_shared<memory_coordination_service>(1000ms, [&now] { return now; });
  manual_executor ex;
  auto a = memory_coordinator::make(svc, ex.get());
  auto b = memory_coordinator::make(svc, ex.get());
  call<uint64_t>(ex, [&](auto k) { a->join("a", k); });
  auto eb = call<uint64_t>(ex, [&](auto k) { b->join("b", k); });
  size_t views = 0;
  a->watch([&views](const coordination_view&) { ++views; });
  ex.drain();
  auto before = views;

  svc->set_reachable("a", false);
  auto d = call<bool>(ex, [&](auto k) { a->declare_dead("b", *eb, k); });
  REQUIRE_FALSE(d);
  CHECK(is(d.error(), coordination_errc::unavailable));
  CHECK(svc->view().members.count("b") == 1);
  // b's changes do not reach a while it is cut off; it catches up after.
  call<uint64_t>(ex, [&](auto k) { b->campaign(k); });
  CHECK(views == before);
  svc->set_reachable("a", true);
  ex.drain();
  CHECK(views == before + 1);

  // The whole service off: nothing is decided, and no session expires meanwhile.
  svc->set_available(false);
  auto c = call<uint64_t>(ex, [&](auto k) { a->campaign(k); });
  REQUIRE_FALSE(c);
  CHECK(is(c.error(), coordination_errc::unavailable));
  now += 5s;
  svc->poll();
  svc->set_available(true);
  CHECK(svc->view().members.size() == 2);
  CHECK(call<caf::unit_t>(ex, [&](auto k) { a->keep_alive(k); }));
}

TEST_CASE("memory coordinator: without an executor, callbacks run on a thread of its own",
          "[cluster][memory_coordinator]") {
  auto svc = std::make_shared<memory_coordination_service>(1000ms);
  auto a = memory_coordinator::make(svc);
  std::promise<std::pair<uint64_t, std::thread::id>> joined;
  a->join("a", [&joined](caf::expected<uint64_t> e) {
    joined.set_value({e ? *e : 0, std::this_thread::get_id()});
  });
  auto [epoch, thread] = joined.get_future().get();
  CHECK(epoch > 0);
  CHECK(thread != std::this_thread::get_id());
  CHECK(a->session_ttl() == 1000ms);
}

// -- watching on a ring --------------------------------------------------------------------------

namespace {

/// Twelve nodes, n01 .. n12, each watched by three: settled, every node sees every other alive.
std::unique_ptr<cluster_sim> settled_ring() {
  cluster_sim::options o;
  o.names.clear();
  for (int i = 1; i <= 12; ++i)
    o.names.push_back(std::string{i < 10 ? "n0" : "n"} + std::to_string(i));
  o.monitors = 3;
  auto sim = std::make_unique<cluster_sim>(o);
  sim->run_for(3s);
  INFO(sim->text());
  for (auto& n : o.names) {
    REQUIRE(sim->core(n).epoch() != 0);
    REQUIRE(sim->core(n).leader() == "n01");
    for (auto& p : sim->core(n).peers())
      REQUIRE(p.state == peer_state::alive);
  }
  REQUIRE(sim->of(kind::declare_dead).empty());
  return sim;
}

} // namespace

TEST_CASE("membership core: on a ring of twelve each node beats to the three after it only",
          "[cluster][membership_core]") {
  auto sim = settled_ring();
  const auto beats_before = sim->beats_sent;
  sim->run_for(10s);
  INFO(sim->text());
  CHECK(sim->of(kind::declare_dead).empty());
  // 12 nodes x 3 watchers x 10 beats a second, not 12 x 11 x 10.
  CHECK(sim->beats_sent - beats_before <= 12 * 3 * 10 * 10 + 12 * 3);
  CHECK(sim->beats_sent - beats_before >= 12 * 3 * 10 * 10 - 12 * 3);
  CHECK(sim->core("n05").beat_targets() == std::vector<std::string>{"n06", "n07", "n08"});
  CHECK(sim->core("n11").beat_targets() == std::vector<std::string>{"n12", "n01", "n02"});
  CHECK(sim->core("n05").watches("n02"));
  CHECK(sim->core("n05").watches("n04"));
  CHECK_FALSE(sim->core("n05").watches("n06"));
  CHECK_FALSE(sim->core("n05").watches("n01"));
}

TEST_CASE(
    "membership core: on a ring a silent node is reported by its watchers, and the ring "
    "closes over it without a false suspicion",
    "[cluster][membership_core]") {
  auto sim = settled_ring();
  auto cut_at = sim->now;
  for (auto& other : sim->opts().names)
    if (other != "n05")
      sim->cut("n05", other);
  sim->run_for(5s);
  INFO(sim->text());
  std::optional<time_point> first;
  for (auto& r : sim->of(kind::peer_changed))
    if (r.action.peer == "n05" && r.action.state == peer_state::dead && !first)
      first = r.at;
  REQUIRE(first);
  CHECK(*first - cut_at <= 1s + 100ms + 100ms + 25ms);
  // Only the nodes n05 beat to watched it, so only they reported it.
  std::set<std::string> reporters;
  for (auto& r : sim->of(kind::declare_dead))
    if (r.action.peer == "n05")
      reporters.insert(r.node);
  CHECK_FALSE(reporters.empty());
  for (auto& r : reporters)
    CHECK((r == "n06" || r == "n07" || r == "n08"));
  CHECK(sim->core("n05").fenced());
  // The ring closed: n04 beats to n06 .. n08 now, and n08 watches n04 (after a grace).
  CHECK(sim->core("n04").beat_targets() == std::vector<std::string>{"n06", "n07", "n08"});
  CHECK(sim->core("n08").watches("n04"));
  sim->run_for(20s);
  for (auto& r : sim->of(kind::declare_dead))
    CHECK(r.action.peer == "n05");
  for (auto& n : sim->opts().names) {
    if (n == "n05")
      continue;
    CHECK_FALSE(sim->core(n).fenced());
    for (auto& p : sim->core(n).peers())
      CHECK(p.state == (p.name == "n05" ? peer_state::dead : peer_state::alive));
  }
}
