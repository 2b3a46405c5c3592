#include "understudy/actors/recovery.hpp"

#include <memory>
#include <optional>
#include <vector>

#include <caf/event_based_actor.hpp>

#include "support/test_fixture.hpp"

namespace {

/// What a driver saw of its recovery rounds.
struct driver_log {
  std::vector<uint64_t> resumed;
  std::vector<uint64_t> rewound_to;
  std::vector<caf::error> failures;
  caf::actor b; // participant "b" as last resolved
};

/// A driver whose stateful participants a and b answer probes with the step
/// they hold (a: 7, b: 5; test children echo ints) and g is stateless. With
/// `veto`, its `probed` hook refuses the step all hold.
caf::behavior driver(caf::event_based_actor* self, caf::actor sup, std::shared_ptr<driver_log> log,
                     bool veto) {
  using rp = understudy::actors::recovery_protocol;
  std::vector<rp::participant> parts;
  parts.push_back({"a", sup, true, {}, 0, true, false});
  parts.push_back({"b", sup, true, {}, 0, true, false});
  parts.push_back({"g", sup, false, {}, 0, true, false});
  rp::hooks h;
  h.probe = [self](size_t i, const caf::actor& hdl, rp::step_callback done) {
    self->request(hdl, caf::infinite, i == 0 ? 7 : 5)
        .then([done](int x) { done(static_cast<uint64_t>(x)); },
              [done](caf::error& err) { done(std::move(err)); });
  };
  h.rewind = [self, log](size_t, const caf::actor& hdl, uint64_t step, rp::step_callback done) {
    log->rewound_to.push_back(step);
    self->request(hdl, caf::infinite, static_cast<int>(step))
        .then([done](int x) { done(static_cast<uint64_t>(x)); },
              [done](caf::error& err) { done(std::move(err)); });
  };
  auto protocol = std::make_shared<std::unique_ptr<rp>>();
  h.resume = [log, protocol](uint64_t committed) {
    log->resumed.push_back(committed);
    log->b = (*protocol)->handle(1);
  };
  h.failed = [log](caf::error err) { log->failures.push_back(std::move(err)); };
  if (veto)
    h.probed = [](uint64_t lowest, const std::vector<std::optional<uint64_t>>& newest) {
      if (lowest == 5 && newest.size() == 3 && newest[0] == uint64_t{7} &&
          newest[1] == uint64_t{5} && !newest[2])
        return caf::make_error(caf::sec::invalid_argument, "vetoed step 5");
      return caf::error{};
    };
  *protocol = std::make_unique<rp>(self, std::move(parts), std::move(h), 0);
  self->set_down_handler([protocol](caf::down_msg& dm) { (*protocol)->on_down(dm); });
  (*protocol)->recover();
  self->attach_functor([protocol](const caf::error&) {});
  return {[](int) {}};
}

} // namespace

TEST_CASE(
    "the recovery protocol resumes from the lowest step of its stateful participants and "
    "again after one of them crashes",
    "[actors][training]") {
  test::fixture f;
  understudy::supervisor_spec spec;
  spec.name = "parts";
  for (auto* id : {"a", "b", "g"})
    spec.children.push_back(test::child(id, f.j));
  auto sup = f.spawn(std::move(spec));
  auto log = std::make_shared<driver_log>();
  auto d = f.sys.spawn(driver, sup, log, false);
  f.run();
  REQUIRE(log->failures.empty());
  REQUIRE(log->resumed == std::vector<uint64_t>{5});
  CHECK(log->rewound_to == std::vector<uint64_t>{5, 5});
  auto first_b = log->b;
  // b crashes: its supervisor restarts it, the driver resolves the new one,
  // probes and rewinds both again, and resumes.
  f.self->send(log->b, test::crash_atom::value);
  f.run();
  REQUIRE(log->failures.empty());
  CHECK(log->resumed == std::vector<uint64_t>{5, 5});
  CHECK(log->rewound_to.size() == 4);
  CHECK(log->b != first_b);
  f.self->send_exit(d, caf::exit_reason::kill);
  f.run();
}

TEST_CASE(
    "the recovery protocol's probed hook sees each participant's step and can refuse the "
    "committed step, which ends the job without a rewind",
    "[actors][training]") {
  test::fixture f;
  understudy::supervisor_spec spec;
  spec.name = "parts";
  for (auto* id : {"a", "b", "g"})
    spec.children.push_back(test::child(id, f.j));
  auto sup = f.spawn(std::move(spec));
  auto log = std::make_shared<driver_log>();
  auto d = f.sys.spawn(driver, sup, log, true);
  f.run();
  REQUIRE(log->failures.size() == 1);
  CHECK(log->failures[0] == caf::sec::invalid_argument);
  CHECK(log->rewound_to.empty());
  CHECK(log->resumed.empty());
  f.self->send_exit(d, caf::exit_reason::kill);
  f.run();
}
