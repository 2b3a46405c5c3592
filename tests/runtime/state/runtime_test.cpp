// The embedding API on a real multi-threaded actor system: no simulated clock,
// waits are on events (never sleeps).

#include "understudy/state/runtime.hpp"

#include <caf/scoped_actor.hpp>

#include "support/test_fixture.hpp"

using namespace understudy;
using test::child;

TEST_CASE("an embedded runtime starts a tree, survives a crash and shuts down gracefully",
          "[runtime][embedding]") {
  auto log = std::make_shared<event_log>();
  auto j = test::make_journal();
  runtime_config cfg;
  cfg.worker_threads = 2;
  cfg.events = log;
  runtime rt{cfg};
  supervisor_spec spec;
  spec.name = "service";
  spec.strategy = restart_strategy::rest_for_one;
  spec.children = {child("loader", j), child("worker", j)};
  auto tree = rt.start(spec);
  REQUIRE(tree);
  auto kids = tree->which_children();
  REQUIRE(kids);
  REQUIRE(kids->size() == 2);
  CHECK((*kids)[0].status == child_status::running);
  auto counts = tree->count_children();
  REQUIRE(counts);
  CHECK(counts->active == 2);
  auto missing = tree->nested("loader-typo");
  REQUIRE_FALSE(missing);
  CHECK(is(missing.error(), supervision_errc::unknown_child));
  auto loader = tree->resolve("loader");
  REQUIRE(loader);
  caf::anon_send(*loader, test::crash_atom::value);
  REQUIRE(log->wait_for(
      [](const std::vector<supervision_event>& evs) {
        size_t n = 0;
        for (auto& ev : evs)
          if (ev.kind == event_kind::child_restarted)
            ++n;
        return n == 2; // loader and, by rest_for_one, worker
      },
      std::chrono::seconds(10)));
  auto fresh = tree->resolve("loader");
  REQUIRE(fresh);
  CHECK(*fresh != *loader);
  caf::scoped_actor self{rt.system()};
  int answer = 0;
  self->request(*fresh, std::chrono::seconds(5), 41)
      .receive([&](int x) { answer = x; }, [](caf::error&) {});
  CHECK(answer == 41);
  CHECK_FALSE(rt.stop(*tree));
  CHECK(log->count(event_kind::supervisor_stopped) == 1);
}

TEST_CASE("runtime::start reports which child failed and leaves nothing running",
          "[runtime][embedding]") {
  auto j = test::make_journal();
  runtime rt;
  child_spec bad;
  bad.id = "gpu0";
  bad.start = [](child_context&) -> caf::expected<caf::actor> {
    return make_error(supervision_errc::start_failed, "no device");
  };
  supervisor_spec spec;
  spec.children = {child("a", j), bad};
  auto tree = rt.start(spec);
  REQUIRE_FALSE(tree);
  CHECK(is(tree.error(), supervision_errc::start_failed));
  CHECK(rt.render(tree.error()).find("gpu0") != std::string::npos);
  CHECK(j->back() == "stop:a");
}

TEST_CASE("runtime::start refuses an invalid spec with the validation error",
          "[runtime][embedding]") {
  runtime rt;
  supervisor_spec spec;
  spec.intensity.max_restarts = -3;
  auto tree = rt.start(spec);
  REQUIRE_FALSE(tree);
  CHECK(is(tree.error(), supervision_errc::invalid_intensity));
}
