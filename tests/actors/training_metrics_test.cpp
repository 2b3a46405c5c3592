// The training job's metrics on a node's endpoint: registered at zero, steps
// counted once across a rollback, a stale rate reading zero; and the Grafana
// dashboard in step with the metric names a node running a job exposes.

#include "understudy/actors/training_metrics.hpp"

#include <regex>
#include <set>
#include <string>

#include <catch2/catch.hpp>

#include "support/metrics_test_util.hpp"

using namespace understudy;
using namespace understudy::actors;
using namespace metrics_test;
using namespace std::chrono_literals;

TEST_CASE("each worker's straggler score is a series of its own, at zero from the start",
          "[metrics][training]") {
  auto m = start_metrics("n1");
  training_metrics tm{*m, 10s, 3};
  auto xs = parse_exposition(fetch_metrics(m->port()));
  REQUIRE(find_all(xs, "understudy_training_worker_step_ratio").size() == 3);
  for (const char* w : {"worker-0", "worker-1", "worker-2"})
    CHECK(value_of(xs, "understudy_training_worker_step_ratio", {{"node", "n1"}, {"worker", w}}) ==
          0);
  // A step where worker-1 took 2.5 times the median and worker-2 was parked;
  // a ratio past the job's workers is ignored.
  tm.on_worker_ratios({1.0, 2.5, 0.0, 9.0});
  xs = parse_exposition(fetch_metrics(m->port()));
  CHECK(value_of(xs, "understudy_training_worker_step_ratio", {{"worker", "worker-0"}}) == 1.0);
  CHECK(value_of(xs, "understudy_training_worker_step_ratio", {{"worker", "worker-1"}}) == 2.5);
  CHECK(value_of(xs, "understudy_training_worker_step_ratio", {{"worker", "worker-2"}}) == 0.0);
  CHECK(find_all(xs, "understudy_training_worker_step_ratio").size() == 3);
}

TEST_CASE("training metrics exist at zero before the first step", "[metrics][training]") {
  auto m = start_metrics("n1");
  training_metrics tm{*m};
  auto xs = parse_exposition(fetch_metrics(m->port()));
  CHECK(value_of(xs, "understudy_training_steps_total", {{"node", "n1"}}) == 0);
  CHECK(value_of(xs, "understudy_training_step", {{"node", "n1"}}) == 0);
  CHECK(value_of(xs, "understudy_training_step_rate", {{"node", "n1"}}) == 0);
  CHECK(value_of(xs, "understudy_training_slowest_worker_ratio", {{"node", "n1"}}) == 0);
  CHECK(value_of(xs, "understudy_training_last_commit_timestamp_seconds", {{"node", "n1"}}) == 0);
  CHECK(value_of(xs, "understudy_training_goodput_ratio", {{"node", "n1"}}) == 0);
  tm.on_goodput(0.875);
  CHECK(value_of(parse_exposition(fetch_metrics(m->port())), "understudy_training_goodput_ratio") ==
        Approx(0.875));
  tm.on_worker_ratio(4.5);
  CHECK(value_of(parse_exposition(fetch_metrics(m->port())),
                 "understudy_training_slowest_worker_ratio") == Approx(4.5));
  auto t0 = std::chrono::steady_clock::now() - 2s;
  tm.on_step(10, t0);
  tm.on_step(20, t0 + 1s);
  tm.on_step(30, t0 + 2s);
  xs = parse_exposition(fetch_metrics(m->port()));
  CHECK(value_of(xs, "understudy_training_steps_total") == 30);
  CHECK(value_of(xs, "understudy_training_step") == 30);
  CHECK(value_of(xs, "understudy_training_step_rate") == Approx(10.0));
  // The wall-clock time of the last commit: the age of the recovery point.
  auto unix_now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto last = value_of(xs, "understudy_training_last_commit_timestamp_seconds");
  CHECK(last <= unix_now);
  CHECK(last > unix_now - 60);
}

TEST_CASE("training steps count once across a rollback and a stale step rate reads zero",
          "[metrics][training]") {
  auto m = start_metrics("n1");
  training_metrics tm{*m};
  auto now = std::chrono::steady_clock::now();
  tm.on_step(10, now - 3s);
  tm.on_step(20, now - 2s);
  auto xs = parse_exposition(m->scrape());
  CHECK(value_of(xs, "understudy_training_steps_total") == 20);
  CHECK(value_of(xs, "understudy_training_step_rate") == Approx(10.0));
  // Resuming from the last globally committed step 15: nothing counts until step 20 passes.
  tm.on_step(15, now - 1s);
  xs = parse_exposition(m->scrape());
  CHECK(value_of(xs, "understudy_training_steps_total") == 20);
  CHECK(value_of(xs, "understudy_training_step") == 15);
  CHECK(value_of(xs, "understudy_training_step_rate") == 0);
  tm.on_step(25, now);
  xs = parse_exposition(m->scrape());
  CHECK(value_of(xs, "understudy_training_steps_total") == 25);
  CHECK(value_of(xs, "understudy_training_step_rate") == Approx(10.0));

  // No step within the window (10 s by default): the rate reads zero.
  auto idle = start_metrics("n2");
  training_metrics idle_tm{*idle};
  idle_tm.on_step(1, now - 60s);
  idle_tm.on_step(11, now - 59s);
  xs = parse_exposition(idle->scrape());
  CHECK(value_of(xs, "understudy_training_steps_total") == 11);
  CHECK(value_of(xs, "understudy_training_step_rate") == 0);
}

TEST_CASE("every metric name in the grafana dashboard is exposed by a node running a job",
          "[metrics][training]") {
  auto m = start_metrics("n1");
  feed_everything(*m);
  training_metrics tm{*m};
  auto t0 = std::chrono::steady_clock::now() - 2s;
  tm.on_step(10, t0);
  tm.on_step(20, t0 + 1s);
  std::set<std::string> exposed;
  for (const auto& x : parse_exposition(fetch_metrics(m->port())))
    exposed.insert(x.name);

  auto dashboard = read_file(UNDERSTUDY_DASHBOARD_PATH);
  std::regex name_re{"understudy_[a-zA-Z0-9_:]+"};
  std::set<std::string> used;
  for (std::sregex_iterator i{dashboard.begin(), dashboard.end(), name_re}, end; i != end; ++i)
    used.insert(i->str());
  REQUIRE_FALSE(used.empty());
  for (const auto& name : used) {
    INFO(name << " is used by the dashboard");
    CHECK(exposed.count(name) == 1);
  }
  // The panels the issue asks for.
  for (const char* name :
       {"understudy_restarts_total", "understudy_recovery_seconds_bucket",
        "understudy_checkpoint_bytes_total", "understudy_checkpoint_commit_seconds_bucket",
        "understudy_training_step_rate", "understudy_node_health"}) {
    INFO(name);
    CHECK(used.count(name) == 1);
  }
}
