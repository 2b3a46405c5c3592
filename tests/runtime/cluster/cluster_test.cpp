// The failure detector of cluster.hpp (the node processes are tested in tests/cluster).

#include "understudy/cluster/cluster.hpp"

#include <chrono>

#include <catch2/catch.hpp>

using namespace understudy;
using namespace std::chrono_literals;

TEST_CASE("phi stays low while heartbeats keep their rhythm and climbs with silence",
          "[cluster][phi]") {
  phi_accrual d{100ms};
  phi_accrual::clock::time_point t{};
  CHECK(d.phi(t) == 0.0); // no heartbeat yet: nothing to suspect
  for (int i = 0; i < 50; ++i) {
    t += 100ms;
    d.heartbeat(t);
  }
  // On time: no suspicion.
  CHECK(d.phi(t + 100ms) < 1.0);
  // Suspicion grows with the silence and passes the default threshold (8)
  // halfway to the 1 s deadline, not after one late heartbeat.
  double last = 0;
  for (auto gap : {110ms, 120ms, 130ms, 140ms}) {
    auto phi = d.phi(t + gap);
    CHECK(phi > last);
    last = phi;
  }
  CHECK(d.phi(t + 200ms) < 8.0);
  CHECK(d.phi(t + 500ms) > 8.0);
  CHECK(d.phi(t + 800ms) >= d.phi(t + 500ms));
}

TEST_CASE("phi adapts to jittery heartbeats", "[cluster][phi]") {
  phi_accrual steady{100ms};
  phi_accrual jittery{100ms};
  phi_accrual::clock::time_point a{}, b{};
  for (int i = 0; i < 100; ++i) {
    a += 100ms;
    steady.heartbeat(a);
    b += (i % 2 == 0) ? 40ms : 160ms; // same mean, wide spread
    jittery.heartbeat(b);
  }
  // The same silence is less suspicious where heartbeats are known to wander.
  CHECK(jittery.phi(b + 250ms) < steady.phi(a + 250ms));
  REQUIRE(jittery.last());
  CHECK(*jittery.last() == b);
}

TEST_CASE("peer states print by name", "[cluster]") {
  CHECK(to_string(peer_state::unknown) == "unknown");
  CHECK(to_string(peer_state::alive) == "alive");
  CHECK(to_string(peer_state::suspected) == "suspected");
  CHECK(to_string(peer_state::dead) == "dead");
}
