// Supervisor behaviour, modelled on what OTP's supervisor_SUITE covers, run
// deterministically on CAF's test_coordinator with a simulated clock.

#include "understudy/supervision/supervisor.hpp"

#include <algorithm>
#include <set>

#include <caf/make_message.hpp>

#include "support/test_fixture.hpp"

using namespace understudy;
using namespace std::chrono_literals;
using test::child;
using test::fixture;

namespace {

supervisor_spec three_children(restart_strategy s, restart_type rt, const test::journal& j) {
  supervisor_spec spec;
  spec.name = "sup";
  spec.strategy = s;
  spec.intensity = {10, std::chrono::seconds(5)};
  spec.children = {child("a", j, rt), child("b", j, rt), child("c", j, rt)};
  return spec;
}

enum class exit_kind { normal, shutdown, exception, error, kill };

const char* name_of(exit_kind k) {
  switch (k) {
    case exit_kind::normal:
      return "normal";
    case exit_kind::shutdown:
      return "shutdown";
    case exit_kind::exception:
      return "exception";
    case exit_kind::error:
      return "error";
    case exit_kind::kill:
      return "kill";
  }
  return "?";
}

void make_exit(fixture& f, const caf::actor& child_handle, exit_kind k) {
  switch (k) {
    case exit_kind::normal:
      f.self->send(child_handle, test::normal_atom::value);
      break;
    case exit_kind::shutdown:
      f.self->send(child_handle, test::shutdown_atom::value);
      break;
    case exit_kind::exception:
      f.self->send(child_handle, test::crash_atom::value);
      break;
    case exit_kind::error:
      f.self->send(child_handle, test::fail_atom::value);
      break;
    case exit_kind::kill:
      f.self->send_exit(child_handle, caf::exit_reason::kill);
      break;
  }
  f.run();
}

std::vector<std::string> since(const test::journal& j, size_t from) {
  return {j->begin() + static_cast<std::ptrdiff_t>(from), j->end()};
}

} // namespace

TEST_CASE("each strategy restarts exactly the children OTP would, for every restart type and exit",
          "[runtime][supervisor]") {
  auto strategy = GENERATE(restart_strategy::one_for_one, restart_strategy::one_for_all,
                           restart_strategy::rest_for_one);
  auto rt = GENERATE(restart_type::permanent, restart_type::transient, restart_type::temporary);
  auto kind = GENERATE(exit_kind::normal, exit_kind::shutdown, exit_kind::exception,
                       exit_kind::error, exit_kind::kill);
  CAPTURE(to_string(strategy), to_string(rt), name_of(kind));
  fixture f;
  auto sup = f.spawn(three_children(strategy, rt, f.j));
  REQUIRE(*f.j == std::vector<std::string>{"start:a", "start:b", "start:c"});
  auto mark = f.j->size();
  make_exit(f, f.handle(sup, "b"), kind);
  bool abnormal =
      kind == exit_kind::exception || kind == exit_kind::error || kind == exit_kind::kill;
  bool restart = rt == restart_type::permanent || (rt == restart_type::transient && abnormal);
  auto kids = f.children(sup);
  auto find = [&](const std::string& id) {
    return std::find_if(kids.begin(), kids.end(), [&](auto& c) { return c.id == id; });
  };
  CHECK_FALSE(f.exited(sup));
  if (rt == restart_type::temporary) {
    CHECK(find("b") == kids.end());
    CHECK(kids.size() == 2);
    CHECK(since(f.j, mark) == std::vector<std::string>{"stop:b"});
  } else if (!restart) {
    REQUIRE(find("b") != kids.end());
    CHECK(find("b")->status == child_status::stopped);
    CHECK(find("b")->incarnation == 1);
    CHECK(since(f.j, mark) == std::vector<std::string>{"stop:b"});
  } else {
    std::vector<std::string> expected;
    uint64_t inc_a = 1;
    uint64_t inc_c = 1;
    switch (strategy) {
      case restart_strategy::one_for_one:
        expected = {"stop:b", "start:b"};
        break;
      case restart_strategy::one_for_all:
        expected = {"stop:b", "stop:c", "stop:a", "start:a", "start:b", "start:c"};
        inc_a = inc_c = 2;
        break;
      default:
        expected = {"stop:b", "stop:c", "start:b", "start:c"};
        inc_c = 2;
        break;
    }
    CHECK(since(f.j, mark) == expected);
    CHECK(find("a")->incarnation == inc_a);
    CHECK(find("b")->incarnation == 2);
    CHECK(find("c")->incarnation == inc_c);
    CHECK(find("b")->restarts == 1);
    for (auto& c : kids)
      CHECK(c.status == child_status::running);
    auto answer = f.ask<int>(find("b")->handle, 42);
    REQUIRE(answer);
    CHECK(*answer == 42);
    CHECK(f.count(event_kind::child_restarted, "b") == 1);
  }
}

TEST_CASE("a dynamic child is restarted or removed according to its restart type",
          "[runtime][supervisor][dynamic]") {
  auto rt = GENERATE(restart_type::permanent, restart_type::transient, restart_type::temporary);
  auto kind = GENERATE(exit_kind::normal, exit_kind::exception, exit_kind::kill);
  CAPTURE(to_string(rt), name_of(kind));
  fixture f;
  supervisor_spec spec;
  spec.strategy = restart_strategy::simple_one_for_one;
  spec.children = {child("tmpl", f.j, rt)};
  auto sup = f.spawn(spec);
  auto h = f.ask<caf::actor>(sup, start_child_atom::value, std::string{"w1"}, caf::message{});
  REQUIRE(h);
  make_exit(f, *h, kind);
  bool restart =
      rt == restart_type::permanent || (rt == restart_type::transient && kind != exit_kind::normal);
  auto kids = f.children(sup);
  if (restart) {
    REQUIRE(kids.size() == 1);
    CHECK(kids[0].incarnation == 2);
    CHECK(kids[0].status == child_status::running);
  } else if (rt == restart_type::temporary) {
    CHECK(kids.empty());
  } else {
    REQUIRE(kids.size() == 1);
    CHECK(kids[0].status == child_status::stopped);
  }
}

TEST_CASE("simple_one_for_one starts children from its template with arguments and counts them",
          "[runtime][supervisor][dynamic]") {
  fixture f;
  supervisor_spec spec;
  spec.strategy = restart_strategy::simple_one_for_one;
  child_spec tmpl;
  tmpl.id = "worker";
  auto j = f.j;
  tmpl.start = [j](child_context& ctx) -> caf::expected<caf::actor> {
    auto label = ctx.args.get_as<std::string>(0);
    return caf::actor{
        ctx.system.spawn(test::test_child, ctx.id + "=" + label, j, test::child_opts{})};
  };
  spec.children = {tmpl};
  auto sup = f.spawn(spec);
  CHECK(f.children(sup).empty());
  REQUIRE(f.ask<caf::actor>(sup, start_child_atom::value, std::string{"w1"},
                            caf::make_message(std::string{"alpha"})));
  REQUIRE(f.ask<caf::actor>(sup, start_child_atom::value, std::string{"w2"},
                            caf::make_message(std::string{"beta"})));
  CHECK(*f.j == std::vector<std::string>{"start:w1=alpha", "start:w2=beta"});
  auto counts = f.ask<child_counts>(sup, count_children_atom::value);
  REQUIRE(counts);
  CHECK(counts->specs == 2);
  CHECK(counts->active == 2);
  CHECK(counts->workers == 2);
  CHECK(counts->supervisors == 0);
  SECTION("a duplicate id is refused") {
    auto dup = f.ask<caf::actor>(sup, start_child_atom::value, std::string{"w1"},
                                 caf::make_message(std::string{"gamma"}));
    REQUIRE_FALSE(dup);
    CHECK(is(dup.error(), supervision_errc::duplicate_child_id));
  }
  SECTION("terminate_child stops and removes a dynamic child") {
    CHECK_FALSE(f.ask_ok(sup, terminate_child_atom::value, std::string{"w1"}));
    CHECK(f.j->back() == "stop:w1=alpha");
    auto kids = f.children(sup);
    REQUIRE(kids.size() == 1);
    CHECK(kids[0].id == "w2");
  }
  SECTION("an unknown child is named in the error") {
    auto err = f.ask_ok(sup, terminate_child_atom::value, std::string{"nope"});
    CHECK(is(err, supervision_errc::unknown_child));
    CHECK(describe(err).find("nope") != std::string::npos);
  }
  SECTION("static-only requests are refused with wrong_strategy") {
    CHECK(is(f.ask_ok(sup, delete_child_atom::value, std::string{"w1"}),
             supervision_errc::wrong_strategy));
    auto added = f.ask<caf::actor>(sup, add_child_atom::value, child("x", f.j));
    REQUIRE_FALSE(added);
    CHECK(is(added.error(), supervision_errc::wrong_strategy));
  }
  SECTION("dynamic children stop together when the supervisor stops") {
    f.self->send_exit(sup, caf::exit_reason::user_shutdown);
    f.run();
    caf::error reason;
    REQUIRE(f.exited(sup, &reason));
    CHECK(reason == caf::exit_reason::user_shutdown);
    std::set<std::string> stopped{f.j->begin() + 2, f.j->end()};
    CHECK(stopped == std::set<std::string>{"stop:w1=alpha", "stop:w2=beta"});
  }
}

TEST_CASE("static supervisors add, terminate, restart and delete children on request",
          "[runtime][supervisor]") {
  fixture f;
  supervisor_spec spec;
  spec.children = {child("a", f.j)};
  auto sup = f.spawn(spec);
  auto added = f.ask<caf::actor>(sup, add_child_atom::value, child("b", f.j));
  REQUIRE(added);
  CHECK(f.j->back() == "start:b");
  auto dup = f.ask<caf::actor>(sup, add_child_atom::value, child("a", f.j));
  REQUIRE_FALSE(dup);
  CHECK(is(dup.error(), supervision_errc::duplicate_child_id));
  CHECK(is(f.ask_ok(sup, delete_child_atom::value, std::string{"a"}),
           supervision_errc::child_running));
  CHECK_FALSE(f.ask_ok(sup, terminate_child_atom::value, std::string{"a"}));
  CHECK(f.info(sup, "a").status == child_status::stopped);
  // A terminated permanent child is not restarted by itself.
  f.advance(std::chrono::hours(1));
  CHECK(f.info(sup, "a").status == child_status::stopped);
  auto again = f.ask<caf::actor>(sup, start_child_atom::value, std::string{"a"});
  REQUIRE(again);
  CHECK(f.info(sup, "a").incarnation == 2);
  auto running = f.ask<caf::actor>(sup, start_child_atom::value, std::string{"a"});
  REQUIRE_FALSE(running);
  CHECK(is(running.error(), supervision_errc::child_running));
  CHECK_FALSE(f.ask_ok(sup, terminate_child_atom::value, std::string{"a"}));
  CHECK_FALSE(f.ask_ok(sup, delete_child_atom::value, std::string{"a"}));
  auto kids = f.children(sup);
  REQUIRE(kids.size() == 1);
  CHECK(kids[0].id == "b");
  CHECK(is(f.ask_ok(sup, terminate_child_atom::value, std::string{"zz"}),
           supervision_errc::unknown_child));
  CHECK(is(f.ask_ok(sup, delete_child_atom::value, std::string{"zz"}),
           supervision_errc::unknown_child));
}

TEST_CASE("one_for_all does not restart a temporary sibling it had to stop",
          "[runtime][supervisor]") {
  fixture f;
  supervisor_spec spec;
  spec.strategy = restart_strategy::one_for_all;
  spec.children = {child("a", f.j), child("t", f.j, restart_type::temporary), child("b", f.j)};
  auto sup = f.spawn(spec);
  f.self->send(f.handle(sup, "b"), test::crash_atom::value);
  f.run();
  auto kids = f.children(sup);
  REQUIRE(kids.size() == 2);
  CHECK(kids[0].id == "a");
  CHECK(kids[0].incarnation == 2);
  CHECK(kids[0].restarts == 1); // group restarts count too
  CHECK(kids[1].id == "b");
  CHECK(kids[1].incarnation == 2);
}

TEST_CASE("more restarts than the intensity allows make the supervisor exit",
          "[runtime][supervisor][intensity]") {
  fixture f;
  supervisor_spec spec;
  spec.intensity = {2, std::chrono::seconds(10)};
  spec.children = {child("a", f.j), child("b", f.j)};
  auto sup = f.spawn(spec);
  for (int i = 0; i < 2; ++i) {
    f.self->send(f.handle(sup, "a"), test::crash_atom::value);
    f.run();
  }
  CHECK_FALSE(f.exited(sup));
  CHECK(f.info(sup, "a").incarnation == 3);
  auto mark = f.j->size();
  f.self->send(f.handle(sup, "a"), test::crash_atom::value);
  f.run();
  caf::error reason;
  REQUIRE(f.exited(sup, &reason));
  CHECK(is(reason, supervision_errc::intensity_exceeded));
  CHECK(describe(reason).find("a") != std::string::npos);
  CHECK(since(f.j, mark) == std::vector<std::string>{"stop:a", "stop:b"});
  CHECK(f.count(event_kind::intensity_exceeded) == 1);
  // The exception's message travels with the exit reason into the events.
  auto evs = f.log->snapshot();
  CHECK(std::any_of(evs.begin(), evs.end(), [](const supervision_event& ev) {
    return ev.kind == event_kind::child_exited &&
           ev.reason.find("injected crash") != std::string::npos;
  }));
}

TEST_CASE("restarts spread wider than the period never exceed the intensity",
          "[runtime][supervisor][intensity]") {
  fixture f;
  supervisor_spec spec;
  spec.intensity = {2, std::chrono::seconds(10)};
  spec.children = {child("a", f.j)};
  auto sup = f.spawn(spec);
  for (int i = 0; i < 6; ++i) {
    f.self->send(f.handle(sup, "a"), test::crash_atom::value);
    f.run();
    f.advance(std::chrono::seconds(6));
  }
  CHECK_FALSE(f.exited(sup));
  CHECK(f.info(sup, "a").incarnation == 7);
}

TEST_CASE("a nested supervisor that gives up is restarted by its parent as a unit",
          "[runtime][supervisor][nested]") {
  fixture f;
  supervisor_spec inner;
  inner.name = "inner";
  inner.intensity = {1, std::chrono::seconds(10)};
  inner.children = {child("x", f.j), child("y", f.j)};
  supervisor_spec root;
  root.name = "root";
  root.intensity = {5, std::chrono::seconds(10)};
  root.children = {child("a", f.j), supervisor_child(inner), child("b", f.j)};
  auto sup = f.spawn(root);
  REQUIRE(*f.j == std::vector<std::string>{"start:a", "start:x", "start:y", "start:b"});
  auto inner1 = f.handle(sup, "inner");
  CHECK(f.info(sup, "inner").kind == child_kind::supervisor);
  f.self->send(f.handle(inner1, "x"), test::crash_atom::value);
  f.run();
  CHECK(f.info(sup, "inner").incarnation == 1);
  auto mark = f.j->size();
  f.self->send(f.handle(inner1, "x"), test::crash_atom::value);
  f.run();
  CHECK(since(f.j, mark) == std::vector<std::string>{"stop:x", "stop:y", "start:x", "start:y"});
  auto row = f.info(sup, "inner");
  CHECK(row.incarnation == 2);
  CHECK(row.status == child_status::running);
  auto inner2 = f.handle(sup, "inner");
  CHECK(inner2 != inner1);
  CHECK(f.info(inner2, "x").incarnation == 1);
  CHECK(f.info(sup, "inner").restarts == 1);
  CHECK(f.info(sup, "a").incarnation == 1);
  CHECK(f.info(sup, "b").incarnation == 1);
  // The nested supervisor's own events reach the shared sink with its path.
  auto evs = f.log->snapshot();
  CHECK(std::any_of(evs.begin(), evs.end(), [](const supervision_event& ev) {
    return ev.kind == event_kind::intensity_exceeded && ev.supervisor == "/root/inner";
  }));
  CHECK(f.count(event_kind::child_restarted, "inner") == 1);
}

TEST_CASE("an escalation that exceeds the parent's intensity too reaches the root",
          "[runtime][supervisor][nested]") {
  fixture f;
  supervisor_spec inner;
  inner.name = "inner";
  inner.intensity = {0, std::chrono::seconds(10)};
  inner.children = {child("x", f.j)};
  supervisor_spec root;
  root.name = "root";
  root.intensity = {0, std::chrono::seconds(10)};
  root.children = {child("a", f.j), supervisor_child(inner)};
  auto sup = f.spawn(root);
  f.self->send(f.handle(f.handle(sup, "inner"), "x"), test::crash_atom::value);
  f.run();
  caf::error reason;
  REQUIRE(f.exited(sup, &reason));
  CHECK(is(reason, supervision_errc::intensity_exceeded));
  CHECK(f.j->back() == "stop:a");
}

TEST_CASE("shutdown stops children in reverse start order, depth first through nested trees",
          "[runtime][supervisor][shutdown]") {
  fixture f;
  supervisor_spec inner;
  inner.name = "inner";
  inner.children = {child("x", f.j), child("y", f.j)};
  supervisor_spec root;
  root.name = "root";
  root.children = {child("a", f.j), supervisor_child(inner), child("b", f.j)};
  auto sup = f.spawn(root);
  auto mark = f.j->size();
  f.self->send_exit(sup, caf::exit_reason::user_shutdown);
  f.run();
  caf::error reason;
  REQUIRE(f.exited(sup, &reason));
  CHECK(reason == caf::exit_reason::user_shutdown);
  CHECK(since(f.j, mark) == std::vector<std::string>{"stop:b", "stop:y", "stop:x", "stop:a"});
  CHECK(f.count(event_kind::supervisor_stopped) == 2);
}

TEST_CASE("a child that ignores shutdown is killed when its timeout passes, not before",
          "[runtime][supervisor][shutdown]") {
  fixture f;
  supervisor_spec spec;
  test::child_opts stubborn;
  stubborn.stubborn = true;
  auto s = child("s", f.j, restart_type::permanent, stubborn);
  s.shutdown = shutdown_spec::after(std::chrono::seconds(2));
  spec.children = {s, child("a", f.j)};
  auto sup = f.spawn(spec);
  f.self->send_exit(sup, caf::exit_reason::user_shutdown);
  f.run();
  CHECK(f.j->back() == "stop:a");
  f.advance(std::chrono::milliseconds(1999));
  CHECK_FALSE(f.exited(sup));
  CHECK(f.j->back() == "stop:a");
  f.advance(std::chrono::milliseconds(1));
  CHECK(f.j->back() == "stop:s");
  REQUIRE(f.exited(sup));
  CHECK(f.count(event_kind::shutdown_timeout, "s") == 1);
}

TEST_CASE("brutal_kill stops a child at once and infinity waits for it without limit",
          "[runtime][supervisor][shutdown]") {
  fixture f;
  test::child_opts stubborn;
  stubborn.stubborn = true;
  auto patient = child("patient", f.j, restart_type::permanent, stubborn);
  patient.shutdown = shutdown_spec::infinite();
  auto brutal = child("brutal", f.j, restart_type::permanent, stubborn);
  brutal.shutdown = shutdown_spec::brutal();
  supervisor_spec spec;
  spec.children = {patient, brutal};
  auto sup = f.spawn(spec);
  auto patient_handle = f.handle(sup, "patient");
  f.self->send_exit(sup, caf::exit_reason::user_shutdown);
  f.run();
  CHECK(f.j->back() == "stop:brutal");
  f.advance(std::chrono::hours(24));
  CHECK_FALSE(f.exited(sup));
  f.self->send(patient_handle, test::normal_atom::value);
  f.run();
  CHECK(f.j->back() == "stop:patient");
  CHECK(f.exited(sup));
}

TEST_CASE("a child whose start function fails fails the supervisor's start after undoing it",
          "[runtime][supervisor][start]") {
  fixture f;
  child_spec bad;
  bad.id = "bad";
  bad.start = [](child_context&) -> caf::expected<caf::actor> {
    return caf::make_error(caf::sec::cannot_open_file, "missing model.bin");
  };
  supervisor_spec spec;
  spec.children = {child("a", f.j), child("b", f.j), bad, child("c", f.j)};
  auto sup = f.spawn(spec);
  caf::error reason;
  REQUIRE(f.exited(sup, &reason));
  CHECK(is(reason, supervision_errc::start_failed));
  auto text = describe(reason);
  CHECK(text.find("bad") != std::string::npos);
  CHECK(text.find("missing model.bin") != std::string::npos);
  CHECK(*f.j == std::vector<std::string>{"start:a", "start:b", "stop:b", "stop:a"});
}

TEST_CASE("a child that throws while initialising fails the start like a failing start function",
          "[runtime][supervisor][start]") {
  fixture f;
  test::child_opts broken;
  broken.fail_init = true;
  supervisor_spec spec;
  spec.children = {child("a", f.j), child("broken", f.j, restart_type::permanent, broken)};
  auto sup = f.spawn(spec);
  caf::error reason;
  REQUIRE(f.exited(sup, &reason));
  CHECK(is(reason, supervision_errc::start_failed));
  CHECK(describe(reason).find("broken") != std::string::npos);
  CHECK(*f.j == std::vector<std::string>{"start:a", "stop:a"});
}

TEST_CASE("a child that does not announce readiness within its start timeout fails to start",
          "[runtime][supervisor][start]") {
  fixture f;
  auto silent = child("silent", f.j);
  silent.announces_ready = true;
  silent.start_timeout = std::chrono::seconds(3);
  supervisor_spec spec;
  spec.children = {silent};
  auto sup = f.spawn(spec);
  CHECK_FALSE(f.exited(sup));
  CHECK(f.info(sup, "silent").status == child_status::starting);
  f.advance(std::chrono::seconds(3));
  caf::error reason;
  REQUIRE(f.exited(sup, &reason));
  CHECK(describe(reason).find("start_timeout") != std::string::npos);
}

TEST_CASE("a restart that fails to start counts against the intensity and is retried",
          "[runtime][supervisor][start]") {
  fixture f;
  auto attempts = std::make_shared<int>(0);
  child_spec flaky;
  flaky.id = "flaky";
  auto j = f.j;
  flaky.start = [attempts, j](child_context& ctx) -> caf::expected<caf::actor> {
    // Starts the first time, then fails twice, then starts again.
    auto n = ++*attempts;
    if (n == 2 || n == 3)
      return caf::make_error(caf::sec::runtime_error, "device busy");
    return caf::actor{ctx.system.spawn(test::test_child, ctx.id, j, test::child_opts{})};
  };
  supervisor_spec spec;
  spec.intensity = {5, std::chrono::seconds(10)};
  spec.children = {flaky};
  auto sup = f.spawn(spec);
  f.self->send(f.handle(sup, "flaky"), test::crash_atom::value);
  f.run();
  CHECK(*attempts == 4);
  CHECK(f.info(sup, "flaky").status == child_status::running);
  CHECK(f.count(event_kind::start_failed, "flaky") == 2);
  CHECK_FALSE(f.exited(sup));
}

TEST_CASE("backoff delays restarts exponentially up to its maximum and resets after uptime",
          "[runtime][supervisor][backoff]") {
  fixture f;
  supervisor_spec spec;
  spec.intensity = {100, std::chrono::seconds(1)};
  spec.backoff = backoff_policy::exponential(100ms, 400ms, 0.0, std::chrono::seconds(10));
  spec.children = {child("a", f.j)};
  auto sup = f.spawn(spec);
  auto crash_and_measure = [&](caf::timespan expected) {
    auto inc = f.info(sup, "a").incarnation;
    f.self->send(f.handle(sup, "a"), test::crash_atom::value);
    f.run();
    CHECK(f.info(sup, "a").status == child_status::restarting);
    f.advance(expected - 1ms);
    CHECK(f.info(sup, "a").status == child_status::restarting);
    f.advance(1ms);
    CHECK(f.info(sup, "a").status == child_status::running);
    CHECK(f.info(sup, "a").incarnation == inc + 1);
  };
  crash_and_measure(100ms);
  crash_and_measure(200ms);
  crash_and_measure(400ms);
  crash_and_measure(400ms);
  f.advance(std::chrono::seconds(10));
  crash_and_measure(100ms);
  // The restart event reports crash-to-serving time, which includes the backoff.
  auto evs = f.log->snapshot();
  auto last = std::find_if(evs.rbegin(), evs.rend(), [](const supervision_event& ev) {
    return ev.kind == event_kind::child_restarted;
  });
  REQUIRE(last != evs.rend());
  CHECK(last->duration == caf::timespan{100ms});
}

TEST_CASE("backoff jitter spreads delays within its bounds", "[runtime][supervisor][backoff]") {
  std::set<caf::timespan::rep> seen;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    fixture f;
    supervisor_spec spec;
    spec.seed = seed;
    spec.backoff = backoff_policy::exponential(100ms, 1000ms, 0.5);
    spec.children = {child("a", f.j)};
    auto sup = f.spawn(spec);
    f.self->send(f.handle(sup, "a"), test::crash_atom::value);
    f.run();
    auto evs = f.log->snapshot();
    auto ev = std::find_if(evs.begin(), evs.end(), [](const supervision_event& e) {
      return e.kind == event_kind::child_exited;
    });
    REQUIRE(ev != evs.end());
    CHECK(ev->duration >= caf::timespan{50ms});
    CHECK(ev->duration <= caf::timespan{150ms});
    seen.insert(ev->duration.count());
  }
  CHECK(seen.size() > 1);
}

TEST_CASE("resolve waits for a restarting child and returns the new incarnation",
          "[runtime][supervisor]") {
  fixture f;
  supervisor_spec spec;
  spec.backoff = backoff_policy::exponential(100ms, 100ms, 0.0);
  spec.children = {child("a", f.j)};
  auto sup = f.spawn(spec);
  auto old = f.handle(sup, "a");
  f.self->send(old, test::crash_atom::value);
  f.run();
  auto h = f.self->request(sup, caf::infinite, resolve_atom::value, std::string{"a"}, uint64_t{2});
  f.run();
  bool answered = false;
  f.self->receive([&](caf::actor&) { answered = true; }, [&](caf::error&) { answered = true; },
                  caf::after(caf::timespan{0}) >> [] {});
  CHECK_FALSE(answered);
  f.advance(100ms);
  caf::actor fresh;
  h.receive([&](caf::actor& x) { fresh = x; }, [&](caf::error& err) { FAIL(describe(err)); });
  REQUIRE(fresh);
  CHECK(fresh != old);
  auto answer = f.ask<int>(fresh, 7);
  REQUIRE(answer);
  CHECK(*answer == 7);
}

TEST_CASE("a child that reports no progress within its liveness deadline is killed and restarted",
          "[runtime][supervisor][liveness]") {
  fixture f;
  auto w = child("w", f.j);
  w.liveness_deadline = std::chrono::seconds(1);
  supervisor_spec spec;
  spec.children = {w};
  auto sup = f.spawn(spec);
  f.advance(600ms);
  f.self->send(f.handle(sup, "w"), test::work_atom::value);
  f.run();
  f.advance(600ms);
  CHECK(f.info(sup, "w").incarnation == 1);
  f.self->send(f.handle(sup, "w"), test::work_atom::value);
  f.run();
  f.advance(999ms);
  CHECK(f.info(sup, "w").incarnation == 1);
  f.advance(1ms);
  CHECK(f.info(sup, "w").incarnation == 2);
  CHECK(f.count(event_kind::hang_detected, "w") == 1);
  auto evs = f.log->snapshot();
  CHECK(std::any_of(evs.begin(), evs.end(), [](const supervision_event& ev) {
    return ev.kind == event_kind::child_exited &&
           ev.reason.find("liveness_deadline_missed") != std::string::npos;
  }));
}

TEST_CASE("a significant child's exit shuts down a supervisor with auto_shutdown",
          "[runtime][supervisor]") {
  fixture f;
  auto job = child("job", f.j, restart_type::transient);
  job.significant = true;
  supervisor_spec spec;
  spec.shutdown_policy = auto_shutdown::any_significant;
  spec.children = {child("helper", f.j), job};
  auto sup = f.spawn(spec);
  f.self->send(f.handle(sup, "job"), test::normal_atom::value);
  f.run();
  caf::error reason;
  REQUIRE(f.exited(sup, &reason));
  CHECK_FALSE(reason);
  CHECK(f.j->back() == "stop:helper");
}

TEST_CASE("supervision events record child, reason, action and recovery time",
          "[runtime][supervisor][events]") {
  fixture f;
  supervisor_spec spec;
  spec.name = "trainer";
  spec.children = {child("shard", f.j)};
  auto sup = f.spawn(spec);
  f.self->send(f.handle(sup, "shard"), test::fail_atom::value);
  f.run();
  auto evs = f.log->snapshot();
  auto exited = std::find_if(evs.begin(), evs.end(), [](const supervision_event& ev) {
    return ev.kind == event_kind::child_exited;
  });
  REQUIRE(exited != evs.end());
  CHECK(exited->supervisor == "/trainer");
  CHECK(exited->child == "shard");
  CHECK(exited->incarnation == 1);
  CHECK(exited->action == "restart");
  CHECK(exited->reason.find("runtime_error") != std::string::npos);
  auto restarted = std::find_if(evs.begin(), evs.end(), [](const supervision_event& ev) {
    return ev.kind == event_kind::child_restarted;
  });
  REQUIRE(restarted != evs.end());
  CHECK(restarted->incarnation == 2);
  CHECK(restarted->duration.count() >= 0);
  CHECK(to_string(*restarted).find("/trainer/shard#2") != std::string::npos);
}

TEST_CASE("invalid specs are refused before anything starts, naming the problem",
          "[runtime][supervisor][validation]") {
  fixture f;
  auto j = f.j;
  auto check = [&](supervisor_spec spec, supervision_errc code, const std::string& needle) {
    auto err = validate(spec);
    CAPTURE(describe(err));
    CHECK(is(err, code));
    CHECK(describe(err).find(needle) != std::string::npos);
    auto sup = spawn_supervisor(f.sys, spec);
    CHECK_FALSE(sup);
  };
  supervisor_spec dup;
  dup.children = {child("a", j), child("a", j)};
  check(dup, supervision_errc::duplicate_child_id, "'a'");
  supervisor_spec nostart;
  nostart.children = {child_spec{}};
  nostart.children[0].id = "lazy";
  check(nostart, supervision_errc::invalid_child_spec, "lazy");
  supervisor_spec neg;
  neg.intensity.max_restarts = -1;
  check(neg, supervision_errc::invalid_intensity, "max_restarts");
  supervisor_spec zero_period;
  zero_period.intensity.period = caf::timespan{0};
  check(zero_period, supervision_errc::invalid_intensity, "period");
  supervisor_spec zero_timeout;
  zero_timeout.children = {child("slow", j)};
  zero_timeout.children[0].shutdown = shutdown_spec::after(caf::timespan{0});
  check(zero_timeout, supervision_errc::invalid_timeout, "slow");
  supervisor_spec neg_deadline;
  neg_deadline.children = {child("hung", j)};
  neg_deadline.children[0].liveness_deadline = -1s;
  check(neg_deadline, supervision_errc::invalid_timeout, "liveness");
  supervisor_spec bad_backoff;
  bad_backoff.backoff = backoff_policy::exponential(2s, 1s);
  check(bad_backoff, supervision_errc::invalid_backoff, "max");
  supervisor_spec bad_jitter;
  bad_jitter.backoff = backoff_policy::exponential(1s, 2s, 1.5);
  check(bad_jitter, supervision_errc::invalid_backoff, "jitter");
  supervisor_spec two_templates;
  two_templates.strategy = restart_strategy::simple_one_for_one;
  two_templates.children = {child("a", j), child("b", j)};
  check(two_templates, supervision_errc::invalid_child_spec, "template");
  supervisor_spec permanent_significant;
  permanent_significant.children = {child("p", j)};
  permanent_significant.children[0].significant = true;
  check(permanent_significant, supervision_errc::invalid_child_spec, "significant");
}

// -- asynchronous starts ------------------------------------------------------------

namespace {

/// A child whose start completes only when the test says so: each start is
/// parked with its callback (as a start that waits on another node does).
struct parked_starts {
  struct start {
    std::string id;
    uint64_t incarnation;
    child_token token;
    start_callback done;
  };
  std::vector<start> parked;

  child_spec spec(const std::string& id) {
    child_spec cs;
    cs.id = id;
    cs.start_async = [this, id](child_context& ctx, start_callback done) {
      parked.push_back({id, ctx.incarnation, ctx.token, std::move(done)});
    };
    return cs;
  }

  /// Completes the oldest parked start with a new test child.
  void complete(caf::actor_system& sys, const test::journal& j) {
    REQUIRE_FALSE(parked.empty());
    auto s = std::move(parked.front());
    parked.erase(parked.begin());
    test::child_opts opts;
    opts.token = s.token;
    s.done(caf::actor{sys.spawn(test::test_child, s.id, j, opts)});
  }

  void fail(const std::string& why) {
    REQUIRE_FALSE(parked.empty());
    auto s = std::move(parked.front());
    parked.erase(parked.begin());
    s.done(caf::make_error(caf::sec::runtime_error, why));
  }
};

} // namespace

TEST_CASE("while an asynchronous start is at work the supervisor handles its other children",
          "[runtime][supervisor][async]") {
  fixture f;
  parked_starts p;
  supervisor_spec spec;
  spec.strategy = restart_strategy::one_for_one;
  spec.intensity = {10, std::chrono::seconds(5)};
  spec.children = {child("a", f.j), p.spec("remote"), child("c", f.j)};
  auto sup = f.spawn(spec);
  // The start of "remote" is parked: the supervisor answers, shows it as
  // starting without a handle, and restarts "a" when it crashes.
  REQUIRE(p.parked.size() == 1);
  auto remote = f.info(sup, "remote");
  CHECK(remote.status == child_status::starting);
  CHECK_FALSE(remote.handle);
  f.self->send(f.handle(sup, "a"), test::crash_atom::value);
  f.run();
  CHECK(f.count(event_kind::child_exited, "a") == 1);
  CHECK(f.info(sup, "c").status == child_status::stopped); // Not started yet: in order.
  // Completing the start brings "remote" up, then the initial start goes on
  // with "c", then the restart of "a" runs.
  p.complete(f.sys, f.j);
  f.run();
  CHECK(f.info(sup, "remote").status == child_status::running);
  CHECK(f.info(sup, "remote").incarnation == 1);
  CHECK(f.info(sup, "c").status == child_status::running);
  CHECK(f.info(sup, "a").status == child_status::running);
  CHECK(f.info(sup, "a").incarnation == 2);
  CHECK(std::count(f.j->begin(), f.j->end(), "start:a") == 2);
  CHECK_FALSE(f.exited(sup));
  // A crash of the remote child restarts it through another asynchronous start.
  f.self->send(f.handle(sup, "remote"), test::crash_atom::value);
  f.run();
  REQUIRE(p.parked.size() == 1);
  CHECK(p.parked.front().incarnation == 2);
  p.complete(f.sys, f.j);
  f.run();
  CHECK(f.info(sup, "remote").status == child_status::running);
  CHECK(f.info(sup, "remote").incarnation == 2);
  CHECK(f.count(event_kind::child_restarted, "remote") == 1);
}

TEST_CASE("an asynchronous start that fails fails the start like a failing start function",
          "[runtime][supervisor][async]") {
  fixture f;
  parked_starts p;
  supervisor_spec spec;
  spec.children = {child("a", f.j), p.spec("remote")};
  auto sup = f.spawn(spec);
  p.fail("no live node holds its checkpoints");
  f.run();
  caf::error reason;
  REQUIRE(f.exited(sup, &reason));
  CHECK(is(reason, supervision_errc::start_failed));
  auto text = describe(reason);
  CHECK(text.find("remote") != std::string::npos);
  CHECK(text.find("no live node holds its checkpoints") != std::string::npos);
  CHECK(*f.j == std::vector<std::string>{"start:a", "stop:a"});
}

TEST_CASE("a supervisor stopped during an asynchronous start kills what the start brings later",
          "[runtime][supervisor][async]") {
  fixture f;
  parked_starts p;
  supervisor_spec spec;
  spec.children = {child("a", f.j), p.spec("remote")};
  auto sup = f.spawn(spec);
  REQUIRE(p.parked.size() == 1);
  f.self->send_exit(sup, caf::exit_reason::user_shutdown);
  f.run();
  // It waits for the start in flight before it stops the others.
  CHECK_FALSE(f.exited(sup));
  CHECK(f.info(sup, "remote").status == child_status::stopping);
  p.complete(f.sys, f.j);
  f.run();
  CHECK(f.exited(sup));
  CHECK(*f.j == std::vector<std::string>{"start:a", "start:remote", "stop:remote", "stop:a"});
}

TEST_CASE("an actor handed over after its supervisor ended is killed",
          "[runtime][supervisor][async]") {
  fixture f;
  parked_starts p;
  supervisor_spec spec;
  spec.children = {p.spec("remote")};
  auto sup = f.spawn(spec);
  REQUIRE(p.parked.size() == 1);
  f.self->send_exit(sup, caf::exit_reason::kill);
  f.run();
  REQUIRE(f.exited(sup));
  p.complete(f.sys, f.j);
  f.run();
  CHECK(*f.j == std::vector<std::string>{"start:remote", "stop:remote"});
}

TEST_CASE("a child that announces itself before its asynchronous start completes is serving",
          "[runtime][supervisor][async]") {
  fixture f;
  parked_starts p;
  auto cs = p.spec("remote");
  cs.announces_ready = true;
  supervisor_spec spec;
  spec.children = {cs};
  auto sup = f.spawn(spec);
  REQUIRE(p.parked.size() == 1);
  // The new incarnation announces itself at once, before the start function's
  // answer reaches the supervisor (a remote actor's readiness can overtake it).
  announce_ready(p.parked.front().token);
  f.run();
  CHECK(f.info(sup, "remote").status == child_status::starting);
  p.complete(f.sys, f.j);
  f.run();
  CHECK(f.info(sup, "remote").status == child_status::running);
  auto ready = f.ask_ok(sup, await_ready_atom::value);
  CHECK_FALSE(ready);
}

TEST_CASE("a child spec with both a start function and an asynchronous one is refused",
          "[runtime][supervisor][async]") {
  fixture f;
  parked_starts p;
  auto cs = p.spec("both");
  cs.start = child("x", f.j).start;
  supervisor_spec spec;
  spec.children = {cs};
  auto sup = understudy::spawn_supervisor(f.sys, spec);
  REQUIRE_FALSE(sup);
  CHECK(describe(sup.error()).find("both a start function and an asynchronous one") !=
        std::string::npos);
}
