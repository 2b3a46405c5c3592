#pragma once

// An actor system for tests of actors in child processes (process_host and
// the GPU device processes): the middleman, quiet logs, understudy's error
// categories and process errors, plus whatever `extra` registers.

#include <chrono>
#include <functional>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/after.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <catch2/catch.hpp>

#include "understudy/core/errors.hpp"
#include "understudy/process/process_host.hpp"

namespace understudy::testing {

/// How long a test waits for a child process's answer or end.
constexpr auto process_patience = std::chrono::seconds(60);

struct process_system {
  using configure_fn = std::function<void(caf::actor_system_config&)>;

  static caf::actor_system_config& init(caf::actor_system_config& cfg, const configure_fn& extra) {
    cfg.load<caf::io::middleman>();
    cfg.set("logger.console-verbosity", caf::atom("quiet"));
    cfg.set("logger.file-verbosity", caf::atom("quiet"));
    cfg.set("scheduler.max-threads", 2);
    register_error_categories(cfg);
    register_process_types(cfg);
    if (extra)
      extra(cfg);
    return cfg;
  }

  explicit process_system(const configure_fn& extra = {}) : sys(init(cfg, extra)), self(sys) {
    // nop
  }

  template <class T, class... Ts>
  caf::expected<T> ask(const caf::actor& a, Ts&&... xs) {
    caf::expected<T> result{caf::sec::request_timeout};
    self->request(a, process_patience, std::forward<Ts>(xs)...)
        .receive([&](T& r) { result = std::move(r); },
                 [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  /// Waits for the down message of `a` (monitored) and returns its reason.
  caf::error down_reason(const caf::actor& a) {
    caf::error reason = caf::sec::request_timeout;
    bool got = false;
    while (!got) {
      self->receive(
          [&](caf::down_msg& dm) {
            if (dm.source == a.address()) {
              reason = dm.reason;
              got = true;
            }
          },
          caf::after(process_patience) >> [&] { FAIL("no down message within a minute"); });
    }
    return reason;
  }

  /// Starts a child for `spec`, monitored, and returns its keeper.
  caf::actor start(process_spec spec) {
    auto keeper = spawn_process_actor(sys, std::move(spec));
    REQUIRE(keeper);
    self->monitor(*keeper);
    return *keeper;
  }

  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;
};

} // namespace understudy::testing
