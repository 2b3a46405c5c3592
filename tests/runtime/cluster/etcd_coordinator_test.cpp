// The etcd coordinator against a real local etcd: epochs and fencing on join,
// declaring nodes dead, elections, sessions that end, the watch, and etcd
// going away. Each test starts its own etcd (tests/support/etcd_fixture.hpp).

#include "understudy/cluster/etcd_coordinator.hpp"

#include <atomic>
#include <chrono>
#include <future>
#include <string>

#include <catch2/catch.hpp>

#include "support/etcd_fixture.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/node/local_etcd.hpp"

using namespace understudy;
using namespace std::chrono_literals;
using namespace etcd_test;

namespace {

using steady = std::chrono::steady_clock;

} // namespace

TEST_CASE("bad coordination settings are refused before etcd is contacted",
          "[cluster][coordination]") {
  coordination_spec spec;
  auto none = etcd_coordinator::create(spec, "c", "a");
  REQUIRE_FALSE(none);
  CHECK(is(none.error(), coordination_errc::invalid_config));
  CHECK(error_context(none.error()).find("no etcd endpoint") != std::string::npos);
  spec.endpoints = {"etcd:2379"};
  auto bad_url = etcd_coordinator::create(spec, "c", "a");
  REQUIRE_FALSE(bad_url);
  CHECK(error_context(bad_url.error()).find("'etcd:2379' is neither http:// nor https://") !=
        std::string::npos);
  spec.endpoints = {"https://127.0.0.1:2379"};
  spec.ca = "/nonexistent/ca.pem";
  auto no_ca = etcd_coordinator::create(spec, "c", "a");
  REQUIRE_FALSE(no_ca);
  CHECK(error_context(no_ca.error()).find("/nonexistent/ca.pem") != std::string::npos);
  spec.ca.clear();
  spec.session_ttl = 200ms;
  CHECK_FALSE(etcd_coordinator::create(spec, "c", "a"));
}

TEST_CASE("a missing etcd binary is an error naming the package", "[cluster][coordination]") {
  test::temp_dir dir{"etcd-missing"};
  local_etcd_options opts;
  opts.data_dir = dir.path;
  opts.binary = dir.path + "/no-etcd-here";
  auto e = local_etcd::start(opts);
  REQUIRE_FALSE(e);
  CHECK(is(e.error(), coordination_errc::invalid_config));
  CHECK(error_context(e.error()).find("etcd-server") != std::string::npos);
}

TEST_CASE("epochs increase across joins and a rejoin fences the older incarnation",
          "[cluster][coordination]") {
  etcd_fixture fx;
  if (!fx.available())
    return;
  view_log log; // outlives the coordinators it watches
  auto a1 = fx.make("a");
  auto b = fx.make("b");
  auto ea1 = join(*a1, "a");
  REQUIRE(ea1);
  auto eb = join(*b, "b");
  REQUIRE(eb);
  CHECK(*eb > *ea1);
  // "a" restarts: a new process, a new coordinator.
  auto a2 = fx.make("a");
  auto ea2 = join(*a2, "a");
  REQUIRE(ea2);
  CHECK(*ea2 > *eb);
  // The old incarnation is fenced and learns it at its next renewal.
  auto old = keep_alive(*a1);
  REQUIRE_FALSE(old);
  CHECK(is(old.error(), coordination_errc::session_lost));
  CHECK(keep_alive(*a2));
  log.watch(*b);
  auto v = log.await([&](const coordination_view& x) { return x.members.count("a") == 1; });
  REQUIRE(v);
  CHECK(v->members.at("a") == *ea2);
  CHECK(v->members.at("b") == *eb);
  CHECK(v->fenced.at("a") == *ea1);
  CHECK(v->fenced.count("b") == 0);
  CHECK_FALSE(v->led_before);
  // A coordinator serves the node it was made for only.
  auto other = join(*b, "z");
  REQUIRE_FALSE(other);
  CHECK(is(other.error(), coordination_errc::invalid_config));
}

TEST_CASE("declare_dead succeeds once, fails for a stale epoch and clears a dead leader",
          "[cluster][coordination]") {
  etcd_fixture fx;
  if (!fx.available())
    return;
  view_log log; // outlives the coordinators it watches
  auto a = fx.make("a");
  auto b = fx.make("b");
  auto ea = join(*a, "a");
  auto eb = join(*b, "b");
  REQUIRE(ea);
  REQUIRE(eb);
  auto term = campaign(*b);
  REQUIRE(term);
  CHECK(*term > *eb);
  // b leads; a cannot campaign while it does.
  auto lost = campaign(*a);
  REQUIRE(lost);
  CHECK(*lost == 0);
  // A stale epoch of b declares nothing.
  auto stale = declare_dead(*a, "b", *eb - 1);
  REQUIRE(stale);
  CHECK_FALSE(*stale);
  auto first = declare_dead(*a, "b", *eb);
  REQUIRE(first);
  CHECK(*first);
  auto second = declare_dead(*a, "b", *eb);
  REQUIRE(second);
  CHECK_FALSE(*second);
  log.watch(*a);
  auto v = log.await([](const coordination_view& x) { return x.members.count("b") == 0; });
  REQUIRE(v);
  CHECK(v->leader.empty());
  CHECK(v->leader_term == 0);
  CHECK(v->fenced.at("b") == *eb);
  CHECK(v->led_before);
  CHECK(v->members.at("a") == *ea);
  // The dead node learns it; it can neither renew, campaign nor declare.
  auto renew = keep_alive(*b);
  REQUIRE_FALSE(renew);
  CHECK(is(renew.error(), coordination_errc::session_lost));
  auto dead_declares = declare_dead(*b, "a", *ea);
  REQUIRE_FALSE(dead_declares);
  CHECK(is(dead_declares.error(), coordination_errc::session_lost));
  auto dead_campaigns = campaign(*b);
  REQUIRE_FALSE(dead_campaigns);
  CHECK(is(dead_campaigns.error(), coordination_errc::session_lost));
  // With the leader gone, a takes over.
  auto next = campaign(*a);
  REQUIRE(next);
  CHECK(*next > *term);
}

TEST_CASE("of two nodes campaigning at once exactly one wins", "[cluster][coordination]") {
  etcd_fixture fx;
  if (!fx.available())
    return;
  for (int round = 0; round < 5; ++round) {
    view_log log;
    auto a = fx.make("a");
    auto b = fx.make("b");
    REQUIRE(join(*a, "a"));
    REQUIRE(join(*b, "b"));
    std::promise<caf::expected<uint64_t>> pa;
    std::promise<caf::expected<uint64_t>> pb;
    a->campaign([&](caf::expected<uint64_t> x) { pa.set_value(std::move(x)); });
    b->campaign([&](caf::expected<uint64_t> x) { pb.set_value(std::move(x)); });
    auto ta = pa.get_future().get();
    auto tb = pb.get_future().get();
    REQUIRE(ta);
    REQUIRE(tb);
    INFO("round " << round << ": a " << *ta << ", b " << *tb);
    CHECK(((*ta == 0) != (*tb == 0)));
    log.watch(*a);
    auto v = log.await([](const coordination_view& x) { return !x.leader.empty(); });
    REQUIRE(v);
    CHECK(v->leader == (*ta != 0 ? "a" : "b"));
    CHECK(v->leader_term == std::max(*ta, *tb));
    // Leaving ends the leadership at once.
    REQUIRE(leave(*a));
    REQUIRE(leave(*b));
    CHECK(log.await([](const coordination_view& x) { return x.members.empty(); }));
  }
}

TEST_CASE("a session whose renewals stop expires", "[cluster][coordination]") {
  etcd_fixture fx;
  if (!fx.available())
    return;
  view_log log; // outlives the coordinators it watches
  auto quiet = fx.make("quiet", 1s);
  auto watcher = fx.make("watcher", 1s);
  auto eq = join(*quiet, "quiet");
  REQUIRE(eq);
  REQUIRE(campaign(*quiet));
  log.watch(*watcher);
  REQUIRE(log.await([](const coordination_view& x) { return x.leader == "quiet"; }));
  const auto began = steady::now();
  // No keep_alive: etcd drops the lease after its TTL (1 s, plus etcd's
  // checking interval), taking the member key and the leader key with it.
  auto gone = log.await(
      [](const coordination_view& x) { return x.members.count("quiet") == 0 && x.leader.empty(); },
      10s);
  REQUIRE(gone);
  CHECK(steady::now() - began >= 900ms);
  CHECK(gone->led_before);
  auto renew = keep_alive(*quiet);
  REQUIRE_FALSE(renew);
  CHECK(is(renew.error(), coordination_errc::session_lost));
}

TEST_CASE("a renewed session outlives its time to live", "[cluster][coordination]") {
  etcd_fixture fx;
  if (!fx.available())
    return;
  view_log log; // outlives the coordinators it watches
  auto a = fx.make("a", 1s);
  CHECK(a->requests_sent() == 0); // made, not yet asked anything
  REQUIRE(join(*a, "a"));
  auto after_join = a->requests_sent();
  CHECK(after_join > 0);
  // Renew well past the TTL: every renewal waits on etcd's answer, no sleeps.
  const auto until = steady::now() + 2500ms;
  int renewals = 0;
  while (steady::now() < until) {
    auto r = keep_alive(*a);
    REQUIRE(r);
    ++renewals;
  }
  CHECK(renewals > 3);
  // Each renewal is counted (a renewal is one or more requests).
  CHECK(a->requests_sent() >= after_join + static_cast<uint64_t>(renewals));
  log.watch(*a);
  CHECK(log.await([](const coordination_view& x) { return x.members.count("a") == 1; }));
}

TEST_CASE("watch views arrive with increasing revisions", "[cluster][coordination]") {
  etcd_fixture fx;
  if (!fx.available())
    return;
  view_log log; // outlives the coordinators it watches
  view_log late;
  auto a = fx.make("a");
  log.watch(*a);
  REQUIRE(log.await([](const coordination_view&) { return true; }));
  auto ea = join(*a, "a");
  REQUIRE(ea);
  auto b = fx.make("b");
  auto eb = join(*b, "b");
  REQUIRE(eb);
  REQUIRE(campaign(*a));
  auto last = log.await([](const coordination_view& x) { return !x.leader.empty(); });
  REQUIRE(last);
  CHECK(last->members.size() == 2);
  auto views = log.snapshot();
  REQUIRE(views.size() >= 2);
  for (size_t i = 1; i < views.size(); ++i)
    CHECK(views[i].revision > views[i - 1].revision);
  // A second watcher starts with the current view.
  late.watch(*a);
  auto first = late.await([](const coordination_view&) { return true; });
  REQUIRE(first);
  CHECK(first->revision >= last->revision);
  CHECK(first->leader == "a");
}

TEST_CASE("with etcd stopped every call is unavailable within its deadline",
          "[cluster][coordination]") {
  etcd_fixture fx;
  if (!fx.available())
    return;
  view_log log; // outlives the coordinators it watches
  auto a = fx.make("a", 2s);
  auto ea = join(*a, "a");
  REQUIRE(ea);
  fx.etcd->stop();
  const auto deadline = a->session_ttl() / 2 + 500ms;
  auto timed = [&](auto&& call) {
    auto began = steady::now();
    auto r = call();
    CHECK(steady::now() - began < deadline);
    REQUIRE_FALSE(r);
    INFO(describe(r.error()));
    CHECK(is(r.error(), coordination_errc::unavailable));
  };
  timed([&] { return keep_alive(*a); });
  timed([&] { return campaign(*a); });
  timed([&] { return declare_dead(*a, "b", 1); });
  timed([&] { return join(*a, "a"); });
  timed([&] { return leave(*a); });
}

TEST_CASE("a coordinator destroyed during calls ends them promptly", "[cluster][coordination]") {
  etcd_fixture fx;
  if (!fx.available())
    return;
  view_log log; // outlives the coordinators it watches
  std::atomic<int> answered{0};
  const auto began = steady::now();
  {
    auto a = fx.make("a", 2s);
    REQUIRE(join(*a, "a"));
    log.watch(*a);
    REQUIRE(log.await([](const coordination_view&) { return true; }));
    for (int i = 0; i < 20; ++i)
      a->keep_alive([&](caf::expected<caf::unit_t>) { ++answered; });
  }
  CHECK(steady::now() - began < 3s);
  CHECK(answered == 20);
}
