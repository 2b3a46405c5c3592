// Any actor in a child process: the keeper on the parent's side, the host on
// the child's side. The children are this test binary, on the hidden test case
// at the end. A real actor system with CAF's middleman (processes talk over
// loopback); every wait is for an event, bounded only to fail instead of hang.

#include "understudy/process/process_host.hpp"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/after.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <catch2/catch.hpp>

#include "support/process_test_util.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace {

// The hosted test actor's protocol.
/// `(ph_put_atom, std::string)`: appends to its text.
using ph_put_atom = caf::atom_constant<caf::atom("ph_put")>;
/// `(ph_text_atom) -> std::string`: its text so far.
using ph_text_atom = caf::atom_constant<caf::atom("ph_text")>;
/// `(ph_role_atom, std::string key) -> std::string`: the value of its role's key.
using ph_role_atom = caf::atom_constant<caf::atom("ph_role")>;
/// `(ph_pid_atom) -> int32_t`: the pid of its process.
using ph_pid_atom = caf::atom_constant<caf::atom("ph_pid")>;
/// `(ph_stop_atom)`: exits normally.
using ph_stop_atom = caf::atom_constant<caf::atom("ph_stop")>;
/// `(ph_fail_atom)`: exits with an error (its process with `host_status::failed`).
using ph_fail_atom = caf::atom_constant<caf::atom("ph_fail")>;
/// `(ph_poison_atom)`: exits with the error its host maps to `host_status::poisoned`.
using ph_poison_atom = caf::atom_constant<caf::atom("ph_poison")>;
/// `(ph_exit_atom, int32_t status)`: ends its process at once with `status`.
using ph_exit_atom = caf::atom_constant<caf::atom("ph_exit")>;
/// `(ph_kill_atom)`: its process kills itself with SIGKILL.
using ph_kill_atom = caf::atom_constant<caf::atom("ph_kill")>;

/// The error a hosted actor exits with for `ph_poison_atom`.
caf::error poison_reason() {
  return understudy::make_error(understudy::state_errc::disk_full, "test: process unusable");
}

/// The actor that the children host.
caf::behavior hosted_actor(caf::event_based_actor* self, understudy::actor_host_role role) {
  auto text = std::make_shared<std::string>();
  return {
      [text](ph_put_atom, const std::string& x) { *text += x; },
      [text](ph_text_atom) { return *text; },
      [role](ph_role_atom, const std::string& key) { return role.get(key, "(none)"); },
      [](ph_pid_atom) { return static_cast<int32_t>(getpid()); },
      [self](ph_stop_atom) { self->quit(); },
      [self](ph_fail_atom) {
        self->quit(understudy::make_error(understudy::state_errc::io_error, "test: actor failed"));
      },
      [self](ph_poison_atom) { self->quit(poison_reason()); },
      [](ph_exit_atom, int32_t status) { std::_Exit(status); },
      [](ph_kill_atom) { raise(SIGKILL); },
  };
}

/// The host's exit status for the hosted actor's exit `reason`.
int hosted_status(const caf::error& reason) {
  if (!reason || reason == caf::exit_reason::normal)
    return 0;
  if (understudy::is(reason, understudy::state_errc::disk_full))
    return understudy::host_status::poisoned;
  return understudy::host_status::failed;
}

/// Children run this binary on the hidden test case below, quietly.
understudy::process_spec host_spec(std::string name, std::string actor = "test") {
  understudy::process_spec spec;
  spec.name = std::move(name);
  spec.args = {"[process_host_child]", "-o", "/dev/null"};
  spec.role["actor"] = std::move(actor);
  spec.role["color"] = "teal";
  return spec;
}

using understudy::testing::process_system;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

} // namespace

TEST_CASE("a process host serves its actor from a child process through the keeper",
          "[runtime][process_host]") {
  process_system ps;
  auto keeper = ps.start(host_spec("host-1"));
  // Sent before the child is connected: these wait, then run in order.
  ps.self->send(keeper, ph_put_atom::value, std::string{"a"});
  ps.self->send(keeper, ph_put_atom::value, std::string{"b"});
  auto text = ps.ask<std::string>(keeper, ph_text_atom::value);
  REQUIRE(text);
  REQUIRE(*text == "ab");
  ps.self->send(keeper, ph_put_atom::value, std::string{"c"});
  REQUIRE(ps.ask<std::string>(keeper, ph_text_atom::value) == std::string{"abc"});
  REQUIRE(ps.ask<std::string>(keeper, ph_role_atom::value, std::string{"color"}) ==
          std::string{"teal"});
  REQUIRE(ps.ask<std::string>(keeper, ph_role_atom::value, std::string{"size"}) ==
          std::string{"(none)"});
  auto pid = ps.ask<int32_t>(keeper, ph_pid_atom::value);
  REQUIRE(pid);
  REQUIRE(*pid != static_cast<int32_t>(getpid()));
  // `ps` names the process by the actor it hosts.
  std::ifstream cmdline{"/proc/" + std::to_string(*pid) + "/cmdline"};
  std::string argv0;
  std::getline(cmdline, argv0, '\0');
  CHECK(argv0 == "understudy-actor: host-1");
  // An exit message to the keeper ends it with that reason (and kills the child).
  ps.self->send_exit(keeper, caf::exit_reason::user_shutdown);
  REQUIRE(ps.down_reason(keeper) == caf::exit_reason::user_shutdown);
}

TEST_CASE("a process host's exit status decides how its keeper exits", "[runtime][process_host]") {
  process_system ps;
  auto keeper = ps.start(host_spec("host-2"));
  REQUIRE(ps.ask<int32_t>(keeper, ph_pid_atom::value));
  SECTION("its actor exits normally: the keeper exits normally") {
    ps.self->send(keeper, ph_stop_atom::value);
    auto reason = ps.down_reason(keeper);
    INFO(understudy::describe(reason));
    REQUIRE((!reason || reason == caf::exit_reason::normal));
  }
  SECTION("its actor fails: status 71, actor_failed with the actor's reason") {
    ps.self->send(keeper, ph_fail_atom::value);
    auto reason = ps.down_reason(keeper);
    auto text = understudy::describe(reason);
    INFO(text);
    REQUIRE(understudy::is(reason, understudy::process_errc::actor_failed));
    REQUIRE(contains(text, "actor_failed: host-2 (pid "));
    REQUIRE(contains(text, "exited with status 71 (its actor failed)"));
    REQUIRE(contains(text, "io_error: test: actor failed"));
  }
  SECTION("its host maps the actor's reason to poisoned: status 70, poisoned") {
    ps.self->send(keeper, ph_poison_atom::value);
    auto reason = ps.down_reason(keeper);
    auto text = understudy::describe(reason);
    INFO(text);
    REQUIRE(understudy::is(reason, understudy::process_errc::poisoned));
    REQUIRE(contains(text, "exited with status 70"));
    REQUIRE(contains(text, "disk_full: test: process unusable"));
    // Rendered by name through the actor system too.
    REQUIRE(ps.sys.render(reason).rfind("poisoned: host-2 (pid ", 0) == 0);
  }
  SECTION("its process exits with another status: crashed") {
    ps.self->send(keeper, ph_exit_atom::value, int32_t{3});
    auto reason = ps.down_reason(keeper);
    auto text = understudy::describe(reason);
    INFO(text);
    REQUIRE(understudy::is(reason, understudy::process_errc::crashed));
    REQUIRE(contains(text, "exited with status 3 (unexpected status)"));
  }
  SECTION("its process is killed by a signal: crashed") {
    ps.self->send(keeper, ph_kill_atom::value);
    auto reason = ps.down_reason(keeper);
    auto text = understudy::describe(reason);
    INFO(text);
    REQUIRE(understudy::is(reason, understudy::process_errc::crashed));
    REQUIRE(contains(text, "was killed by signal 9"));
  }
}

TEST_CASE("a process host that cannot start fails its keeper", "[runtime][process_host]") {
  process_system ps;
  SECTION("a program that does not exist") {
    auto spec = host_spec("host-x");
    spec.program = "/nonexistent/understudy-child";
    auto keeper = ps.start(spec);
    auto reason = ps.down_reason(keeper);
    INFO(understudy::describe(reason));
    REQUIRE(understudy::is(reason, understudy::process_errc::spawn_failed));
    REQUIRE(contains(understudy::describe(reason), "posix_spawn /nonexistent/understudy-child"));
  }
  SECTION("a program that exits before it reports an actor") {
    auto spec = host_spec("host-y");
    spec.program = "/bin/false";
    spec.args.clear();
    auto keeper = ps.start(spec);
    auto reason = ps.down_reason(keeper);
    INFO(understudy::describe(reason));
    REQUIRE(understudy::is(reason, understudy::process_errc::start_failed));
    REQUIRE(contains(understudy::describe(reason),
                     "exited with status 1 before it reported its actor"));
  }
  SECTION("a child whose actor cannot start reports why") {
    auto keeper = ps.start(host_spec("host-u", "unknown"));
    auto reason = ps.down_reason(keeper);
    auto text = understudy::describe(reason);
    INFO(text);
    REQUIRE(understudy::is(reason, understudy::process_errc::start_failed));
    REQUIRE(contains(text, "exited with status 71 before it reported its actor"));
    REQUIRE(contains(text, "cannot start the hosted actor"));
    REQUIRE(contains(text, "no such actor: unknown"));
  }
  SECTION("a child that does not report its actor in time is killed") {
    auto spec = host_spec("host-s", "silent");
    spec.start_timeout = std::chrono::milliseconds(300);
    auto keeper = ps.start(spec);
    auto reason = ps.down_reason(keeper);
    INFO(understudy::describe(reason));
    REQUIRE(understudy::is(reason, understudy::process_errc::start_failed));
    REQUIRE(contains(understudy::describe(reason), "did not report its actor within 300 ms"));
  }
  SECTION("an actor system without a middleman") {
    caf::actor_system_config cfg;
    cfg.set("logger.console-verbosity", caf::atom("quiet"));
    caf::actor_system plain{cfg};
    auto keeper = understudy::spawn_process_actor(plain, host_spec("host-z"));
    REQUIRE_FALSE(keeper);
    REQUIRE(understudy::is(keeper.error(), understudy::process_errc::no_middleman));
  }
}

TEST_CASE("a supervisor restarts an actor hosted in a process with a fresh process",
          "[runtime][process_host][supervisor]") {
  process_system ps;
  auto log = std::make_shared<understudy::event_log>();
  understudy::child_spec cs;
  cs.id = "hosted";
  cs.start = [](understudy::child_context& ctx) {
    return understudy::spawn_process_actor(ctx.system, host_spec(ctx.path));
  };
  understudy::supervisor_spec spec;
  spec.name = "hosts";
  spec.events = log;
  spec.children = {cs};
  auto sup = understudy::spawn_supervisor(ps.sys, spec);
  REQUIRE(sup);
  REQUIRE(ps.ask<caf::ok_atom>(*sup, understudy::await_ready_atom::value));
  auto first = ps.ask<caf::actor>(*sup, understudy::resolve_atom::value, std::string{"hosted"});
  REQUIRE(first);
  auto first_pid = ps.ask<int32_t>(*first, ph_pid_atom::value);
  REQUIRE(first_pid);
  ps.self->send(*first, ph_poison_atom::value);
  auto second =
      ps.ask<caf::actor>(*sup, understudy::resolve_atom::value, std::string{"hosted"}, uint64_t{2});
  REQUIRE(second);
  REQUIRE(*second != *first);
  auto second_pid = ps.ask<int32_t>(*second, ph_pid_atom::value);
  REQUIRE(second_pid);
  REQUIRE(*second_pid != *first_pid);
  bool named = false;
  for (const auto& ev : log->snapshot())
    if (ev.kind == understudy::event_kind::child_exited && ev.child == "hosted")
      named = contains(ev.reason, "poisoned") && contains(ev.reason, "exited with status 70");
  REQUIRE(named);
  REQUIRE(log->count(understudy::event_kind::child_restarted, "hosted") == 1);
  ps.self->monitor(*sup);
  ps.self->send_exit(*sup, caf::exit_reason::user_shutdown);
  ps.down_reason(*sup);
}

TEST_CASE("process errors have names, next steps and render by name",
          "[runtime][process_host][errors]") {
  using understudy::process_errc;
  for (auto code : {process_errc::spawn_failed, process_errc::no_middleman})
    CHECK(understudy::next_step_for(code) == understudy::next_step::give_up);
  for (auto code : {process_errc::start_failed, process_errc::poisoned, process_errc::actor_failed,
                    process_errc::crashed})
    CHECK(understudy::next_step_for(code) == understudy::next_step::retry_now);
  CHECK(understudy::to_string(process_errc::no_middleman) == "no_middleman");
  auto err = understudy::make_error(process_errc::crashed, "w-1 (pid 7) was killed by signal 9");
  CHECK(understudy::is(err, process_errc::crashed));
  CHECK_FALSE(understudy::is(err, process_errc::poisoned));
  CHECK(err.category() == understudy::process_category);
  CHECK(understudy::describe(err) == "crashed: w-1 (pid 7) was killed by signal 9");
  CHECK(understudy::host_status::poisoned == 70);
  CHECK(understudy::host_status::failed == 71);
  CHECK(understudy::host_status::orphaned == 72);
}

TEST_CASE("a process not started by a process host has no host role", "[runtime][process_host]") {
  REQUIRE_FALSE(understudy::actor_host_role_from_env());
  understudy::actor_host_role role;
  role.values["a"] = "1";
  REQUIRE(role.get("a") == "1");
  REQUIRE(role.get("b").empty());
  REQUIRE(role.get("b", "2") == "2");
}

TEST_CASE("process host child", "[.][process_host_child]") {
  // Runs only when selected by its tag, in a child started by the tests above.
  auto role = understudy::actor_host_role_from_env();
  REQUIRE(role);
  if (role->get("actor") == "silent")
    for (;;)
      pause(); // killed by the keeper when its start timeout passes
  auto make = [&role](caf::actor_system& sys) -> caf::expected<caf::actor> {
    if (role->get("actor") != "test")
      return understudy::make_error(understudy::supervision_errc::invalid_child_spec,
                                    "no such actor: " + role->get("actor"));
    return sys.spawn(hosted_actor, *role);
  };
  std::_Exit(understudy::run_actor_host(*role, nullptr, make, hosted_status));
}
