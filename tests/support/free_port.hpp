#pragma once

// A loopback port that the kernel handed out a moment ago, for tests that
// start a node in this process.

#include <cstdint>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/send.hpp>
#include <catch2/catch.hpp>

namespace test {

/// A port on 127.0.0.1 free a moment ago (bound by the kernel, then released).
inline uint16_t free_port() {
  caf::actor_system_config cfg;
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto a = sys.spawn([]() -> caf::behavior { return {[](int) {}}; });
  auto port = sys.middleman().publish(a, 0, "127.0.0.1", true);
  REQUIRE(port);
  auto p = *port;
  sys.middleman().unpublish(a, p);
  caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  return p;
}

} // namespace test
