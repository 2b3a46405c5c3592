// The disaster-recovery settings and decisions as plain objects: [snapshots]
// with a recovery point as steps or as time and a second site's keys, the
// live recovery point, and the automatic promotion's watch, each on an
// injected clock.

#include <chrono>
#include <string>

#include <catch2/catch.hpp>

#include "support/config_test_util.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/actors/snapshot_shipping.hpp"
#include "understudy/actors/standby.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"

using namespace understudy;
using namespace understudy::actors;
using namespace std::chrono_literals;
using namespace config_test;

namespace {

const std::string job = lines({"[job]", "layers = [4, 3]", "data = \"d.csv\""});

caf::expected<node_config> parse(const std::string& snapshots) {
  return parse_node_config(base + job + "[snapshots]\n" + snapshots, "/etc/us/site-b.toml",
                           job_config_options());
}

} // namespace

TEST_CASE("[snapshots] takes a recovery point as steps or as a duration", "[config][dr]") {
  SECTION("steps") {
    auto nc = parse(lines({"dir = \"/dr\"", "rpo = 50"}));
    REQUIRE(nc);
    const auto* s = snapshots_of(*nc);
    REQUIRE(s != nullptr);
    CHECK(s->rpo_steps == 50);
    CHECK(s->rpo == 0ms);
    CHECK(s->every == 10s);
    CHECK_FALSE(s->standby);
  }
  SECTION("a duration shorter than twice the default cadence: shipped at half of it") {
    auto nc = parse(lines({"dir = \"/dr\"", "rpo = \"4s\""}));
    REQUIRE(nc);
    CHECK(snapshots_of(*nc)->rpo == 4s);
    CHECK(snapshots_of(*nc)->every == 2s);
    CHECK(snapshots_of(*nc)->rpo_steps == 0);
  }
  SECTION("an explicit cadence within it stays") {
    auto nc = parse(lines({"dir = \"/dr\"", "every = \"1s\"", "rpo = \"4s\""}));
    REQUIRE(nc);
    CHECK(snapshots_of(*nc)->every == 1s);
  }
  SECTION("a second site: the primary's file relative to this one's directory") {
    auto nc = parse(lines({"dir = \"/dr\"", "standby = true", "primary = \"../a/site-a.toml\"",
                           "promote_after = \"30s\"", "drill_every = \"1h\""}));
    REQUIRE(nc);
    const auto* s = snapshots_of(*nc);
    CHECK(s->standby);
    CHECK(s->primary == "/etc/a/site-a.toml");
    CHECK(s->promote_after == 30s);
    CHECK(s->drill_every == 1h);
    CHECK(s->drill_dir == "/dr-drill");
  }
}

TEST_CASE("bad [snapshots] recovery and second-site settings are refused with their line",
          "[config][dr]") {
  struct bad {
    const char* what;
    std::string text;
    config_errc code;
    const char* expected;
  };
  const std::vector<bad> cases = {
      {"a cadence longer than the recovery point",
       lines({"dir = \"/dr\"", "every = \"10s\"", "rpo = \"5s\""}), config_errc::invalid_value,
       "site-b.toml:14: [snapshots] every (10000 ms) is longer than rpo (5000 ms)"},
      {"a recovery point of no steps", lines({"dir = \"/dr\"", "rpo = 0"}),
       config_errc::invalid_value, "site-b.toml:14: 'rpo' in [snapshots] must be at least 1"},
      {"a recovery point that is neither", lines({"dir = \"/dr\"", "rpo = true"}),
       config_errc::wrong_type,
       "site-b.toml:14: 'rpo' in [snapshots] is a duration (\"30s\") or a number of steps"},
      {"a primary on a site that is not a standby",
       lines({"dir = \"/dr\"", "primary = \"a.toml\""}), config_errc::invalid_value,
       "site-b.toml:14: [snapshots] primary is a setting of a second site (standby = true)"},
      {"drills on a site that is not a standby", lines({"dir = \"/dr\"", "drill_every = \"1h\""}),
       config_errc::invalid_value,
       "site-b.toml:14: [snapshots] drill_every is a setting of a second site"},
      {"an automatic promotion without a primary to probe",
       lines({"dir = \"/dr\"", "standby = true", "promote_after = \"30s\""}),
       config_errc::missing_key, "site-b.toml:15: [snapshots] promote_after needs primary"},
  };
  for (const auto& c : cases) {
    INFO(c.what << "\n" << c.text);
    auto nc = parse(c.text);
    REQUIRE_FALSE(nc);
    INFO("error: " << describe(nc.error()));
    CHECK(is(nc.error(), c.code));
    CHECK(message_of(nc.error()).find(c.expected) != std::string::npos);
  }
}

TEST_CASE("a standby site refuses to start its nodes until it is promoted", "[config][dr]") {
  auto nc = parse(lines({"dir = \"/nonexistent-dr\"", "standby = true"}));
  REQUIRE(nc);
  auto err = check_not_superseded(*nc);
  REQUIRE(err);
  CHECK(message_of(err).find("cluster t is a standby site ([snapshots] standby = true): it "
                             "trains once promoted") != std::string::npos);
  auto primary = parse(lines({"dir = \"/nonexistent-dr\""}));
  REQUIRE(primary);
  CHECK_FALSE(check_not_superseded(*primary));
}

TEST_CASE(
    "the recovery point counts the committed steps not shipped and since when the oldest "
    "was committed",
    "[dr]") {
  using tp = recovery_point::time_point;
  const tp t0{std::chrono::seconds(1000000)};
  recovery_point rp;
  CHECK(rp.behind_steps() == 0);
  CHECK(rp.behind(t0) == 0ms);
  rp.committed(10, t0);
  rp.committed(20, t0 + 300ms);
  CHECK(rp.behind_steps() == 20);
  // Since the oldest unshipped step was committed, whenever the copy saw it.
  CHECK(rp.behind(t0 + 500ms) == 500ms);
  // Shipping part of it: the oldest waiting one is now step 20.
  rp.shipped(10);
  CHECK(rp.behind_steps() == 10);
  CHECK(rp.behind(t0 + 600ms) == 300ms);
  // All of it: nothing waits; a step at or below the shipped one is no news.
  rp.shipped(20);
  CHECK(rp.behind_steps() == 0);
  CHECK(rp.behind(t0 + 700ms) == 0ms);
  rp.committed(15, t0 + 800ms);
  CHECK(rp.behind(t0 + 900ms) == 0ms);
  rp.committed(25, t0 + 800ms);
  CHECK(rp.behind(t0 + 1000ms) == 200ms);
  // Commit times from several nodes' clocks need not grow with the step.
  rp.committed(30, t0 + 750ms);
  CHECK(rp.behind(t0 + 1000ms) == 250ms);
  rp.shipped(5);
  CHECK(rp.shipped_step() == 20);
}

TEST_CASE("an automatic promotion waits until the primary was unreachable for the declared time",
          "[dr]") {
  using tp = promotion_watch::time_point;
  const tp t0{std::chrono::seconds(100)};
  promotion_watch w{3s};
  CHECK_FALSE(w.observe(true, t0));
  CHECK(w.unreachable_for(t0) == 0ms);
  CHECK_FALSE(w.observe(false, t0 + 1s));
  CHECK_FALSE(w.observe(false, t0 + 3s));
  CHECK(w.unreachable_for(t0 + 3s) == 2s);
  // Reachable once: the count starts again.
  CHECK_FALSE(w.observe(true, t0 + 3500ms));
  CHECK(w.unreachable_for(t0 + 3500ms) == 0ms);
  CHECK_FALSE(w.observe(false, t0 + 4s));
  CHECK_FALSE(w.observe(false, t0 + 6s));
  CHECK(w.observe(false, t0 + 7s));
  // One probe alone never promotes, however long ago the clock says.
  promotion_watch once{1ms};
  CHECK_FALSE(once.observe(false, t0));
  CHECK(once.observe(false, t0 + 1ms));
}
