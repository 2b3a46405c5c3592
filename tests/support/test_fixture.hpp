#pragma once
// Deterministic test setup: CAF's test_coordinator runs actors only when a test
// says so, and time moves only when a test advances the clock.

#include <memory>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/after.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <caf/scoped_actor.hpp>
#include <catch2/catch.hpp>

#include "understudy/core/errors.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace test {

using crash_atom = caf::atom_constant<caf::atom("crash")>;
using fail_atom = caf::atom_constant<caf::atom("fail")>;
using normal_atom = caf::atom_constant<caf::atom("normal")>;
using shutdown_atom = caf::atom_constant<caf::atom("shutdown")>;
using work_atom = caf::atom_constant<caf::atom("work")>;

/// Shared record of starts and stops, in the order they happened.
using journal = std::shared_ptr<std::vector<std::string>>;

inline journal make_journal() {
  return std::make_shared<std::vector<std::string>>();
}

/// Options of the test child.
struct child_opts {
  /// Ignore shutdown requests (trap exits); only a kill stops it.
  bool stubborn = false;
  /// Throw from its initialization (a failure before serving).
  bool fail_init = false;
  /// Report progress on each work message.
  understudy::child_token token;
};

/// A child that answers ints, crashes or exits on request, and journals its life.
inline caf::behavior test_child(caf::event_based_actor* self, std::string name, journal j,
                                child_opts opts) {
  understudy::capture_exceptions(self);
  if (opts.fail_init)
    throw std::runtime_error("init failed for " + name);
  j->push_back("start:" + name);
  self->attach_functor([j, name](const caf::error&) { j->push_back("stop:" + name); });
  if (opts.stubborn)
    self->set_exit_handler([](caf::exit_msg&) {});
  return {
      [](int x) { return x; },
      [](crash_atom) -> int { throw std::runtime_error("injected crash"); },
      [self](fail_atom) { self->quit(caf::sec::runtime_error); },
      [self](normal_atom) { self->quit(); },
      [self](shutdown_atom) { self->quit(caf::exit_reason::user_shutdown); },
      [opts](work_atom) { understudy::report_progress(opts.token); },
  };
}

/// A child spec running test_child.
inline understudy::child_spec child(
    std::string id, journal j, understudy::restart_type rt = understudy::restart_type::permanent,
    child_opts opts = {}) {
  understudy::child_spec spec;
  spec.id = id;
  spec.restart = rt;
  spec.start = [id, j, opts](understudy::child_context& ctx) -> caf::expected<caf::actor> {
    auto o = opts;
    o.token = ctx.token;
    return caf::actor{ctx.system.spawn(test_child, id, j, o)};
  };
  return spec;
}

struct fixture {
  static caf::actor_system_config& init(caf::actor_system_config& cfg) {
    cfg.set("scheduler.policy", caf::atom("testing"));
    cfg.set("logger.file-verbosity", caf::atom("quiet"));
    cfg.set("logger.console-verbosity", caf::atom("quiet"));
    cfg.set("middleman.heartbeat-interval", caf::timespan{0});
    understudy::register_error_categories(cfg);
    return cfg;
  }

  fixture()
      : sys(init(cfg)),
        self(sys, true),
        sched(dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler())),
        log(std::make_shared<understudy::event_log>()),
        j(make_journal()) {
    sched.clock().current_time += std::chrono::hours(1);
  }

  ~fixture() {
    for (auto& sup : roots)
      self->send_exit(sup, caf::exit_reason::kill);
    run();
  }

  /// Runs every actor until no messages are left (time stands still).
  void run() { sched.run(); }

  /// Moves the clock forward, firing due timers, then runs.
  void advance(caf::timespan t) {
    sched.advance_time(t);
    run();
  }

  /// Spawns a root supervisor and runs it until idle.
  caf::actor spawn(understudy::supervisor_spec spec) {
    if (!spec.events)
      spec.events = log;
    auto sup = understudy::spawn_supervisor(sys, std::move(spec));
    REQUIRE(sup);
    roots.push_back(*sup);
    self->monitor(*sup);
    run();
    return *sup;
  }

  /// Sends a request, runs until idle, returns the answer or the error.
  template <class T, class... Ts>
  caf::expected<T> ask(const caf::actor& dest, Ts&&... xs) {
    caf::expected<T> result{caf::sec::request_timeout};
    auto h = self->request(dest, caf::infinite, std::forward<Ts>(xs)...);
    run();
    bool got = false;
    h.receive(
        [&](T& x) {
          result = std::move(x);
          got = true;
        },
        [&](caf::error& err) {
          result = std::move(err);
          got = true;
        });
    REQUIRE(got);
    if (!result)
      UNSCOPED_INFO("request failed: " << understudy::describe(result.error()));
    return result;
  }

  template <class... Ts>
  caf::error ask_ok(const caf::actor& dest, Ts&&... xs) {
    auto res = ask<caf::ok_atom>(dest, std::forward<Ts>(xs)...);
    return res ? caf::error{} : res.error();
  }

  std::vector<understudy::child_info> children(const caf::actor& sup) {
    auto res =
        ask<std::vector<understudy::child_info>>(sup, understudy::which_children_atom::value);
    REQUIRE(res);
    return *res;
  }

  understudy::child_info info(const caf::actor& sup, const std::string& id) {
    for (auto& c : children(sup))
      if (c.id == id)
        return c;
    FAIL("no child " << id);
    return {};
  }

  caf::actor handle(const caf::actor& sup, const std::string& id) {
    auto h = info(sup, id).handle;
    REQUIRE(h);
    return h;
  }

  /// Whether `sup` has exited, and with which reason (from its down message).
  bool exited(const caf::actor& sup, caf::error* reason = nullptr) {
    bool down = false;
    for (;;) {
      bool got = false;
      self->receive(
          [&](caf::down_msg& dm) {
            got = true;
            if (dm.source == sup.address()) {
              down = true;
              if (reason != nullptr)
                *reason = dm.reason;
              downs.push_back(dm);
            }
          },
          caf::after(caf::timespan{0}) >> [] {});
      if (!got)
        break;
    }
    for (auto& dm : downs)
      if (dm.source == sup.address()) {
        down = true;
        if (reason != nullptr)
          *reason = dm.reason;
      }
    return down;
  }

  size_t count(understudy::event_kind k, const std::string& child = {}) {
    return log->count(k, child);
  }

  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;
  caf::scheduler::test_coordinator& sched;
  std::shared_ptr<understudy::event_log> log;
  journal j;
  std::vector<caf::actor> roots;
  std::vector<caf::down_msg> downs;
};

} // namespace test
