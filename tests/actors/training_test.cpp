// Training actors: determinism under crashes, loader exactly-once, shard dedupe.

#include "understudy/actors/training.hpp"

#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <catch2/catch.hpp>

#include "support/state_test_util.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/numerics/dataset.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/state/runtime.hpp"
#include "understudy/state/state_writer.hpp"

using namespace understudy;
using namespace understudy::actors;

namespace {

struct state_dir {
  std::string path;
  state_dir() {
    std::string tmpl = "/tmp/understudy-training-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~state_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

const dataset& digits() {
  static const dataset d = [] {
    auto r = load_csv(UNDERSTUDY_DIGITS_PATH);
    if (!r)
      throw std::runtime_error("cannot load digits");
    return std::move(*r);
  }();
  return d;
}

training_config small_job(uint64_t seed, size_t train_samples = 400) {
  auto [train, test] = split(digits(), 0.2, seed);
  std::vector<uint32_t> first;
  for (uint32_t i = 0; i < train_samples && i < train.size(); ++i)
    first.push_back(i);
  training_config cfg;
  cfg.net = std::make_shared<mlp>(std::vector<size_t>{64, 16, 10});
  cfg.train = std::make_shared<dataset>(subset(train, first));
  cfg.test = std::make_shared<dataset>(std::move(test));
  cfg.workers = 3;
  cfg.shards = 2;
  cfg.loaders = 2;
  cfg.batch = 48;
  cfg.micro_batches = 6;
  cfg.steps = 60;
  cfg.seed = seed;
  cfg.eval_every = 20;
  cfg.optimizer.kind = optimizer_kind::momentum;
  cfg.optimizer.lr = 0.05;
  return cfg;
}

runtime_config quiet() {
  runtime_config rc;
  rc.log_events = false;
  return rc;
}

/// Opens the state store in `dir` and creates the job `cfg` on `rt`.
training_job make_job(runtime& rt, const training_config& cfg, const std::string& dir) {
  state_store_config sc;
  sc.directory = dir;
  auto p = rt.open_state(sc);
  REQUIRE(p);
  auto job = training_job::create(cfg, *p);
  REQUIRE(job);
  return std::move(*job);
}

/// Runs `cfg` to the end in `dir` and returns the result.
training_result run_job(const training_config& cfg, const std::string& dir,
                        std::shared_ptr<event_sink> events = nullptr) {
  runtime rt{quiet()};
  auto job = make_job(rt, cfg, dir);
  auto tree = rt.start(job.spec("job", std::move(events)));
  REQUIRE(tree);
  auto result = job.wait(std::chrono::seconds(120));
  REQUIRE(result);
  rt.stop(*tree);
  return std::move(*result);
}

/// Runs `cfg` without faults, then with the faults of `spec`: (clean, faulty).
std::pair<training_result, training_result> clean_and_faulty(
    training_config cfg, const std::string& spec, std::shared_ptr<event_sink> events = nullptr) {
  state_dir clean_dir;
  auto clean = run_job(cfg, clean_dir.path);
  auto faults = parse_faults(spec, cfg.workers, cfg.shards, cfg.loaders, cfg.steps, 1);
  REQUIRE(faults);
  cfg.faults = *faults;
  state_dir faulty_dir;
  auto faulty = run_job(cfg, faulty_dir.path, std::move(events));
  return {std::move(clean), std::move(faulty)};
}

} // namespace

TEST_CASE("random crashes of any role end with the fault-free parameters", "[training]") {
  for (uint64_t seed : {1u, 2u, 3u}) {
    for (uint64_t every : {1u, 4u}) {
      auto cfg = small_job(seed);
      cfg.checkpoint_every = every;
      state_dir clean_dir;
      auto clean = run_job(cfg, clean_dir.path);
      auto faults =
          parse_faults("random:5", cfg.workers, cfg.shards, cfg.loaders, cfg.steps, seed + 100);
      REQUIRE(faults);
      cfg.faults = *faults;
      state_dir faulty_dir;
      auto log = std::make_shared<event_log>();
      auto faulty = run_job(cfg, faulty_dir.path, log);
      INFO("seed " << seed << ", checkpoint every " << every);
      CHECK(clean.restarts == 0);
      CHECK(faulty.restarts >= 5);
      CHECK(log->count(event_kind::child_restarted) >= 5);
      CHECK(faulty.params_digest == clean.params_digest);
      CHECK(faulty.params == clean.params);
      CHECK(faulty.steps == cfg.steps);
      CHECK(faulty.lost_steps <= 5 * every);
      if (every == 1)
        CHECK(faulty.lost_steps <= 5);
    }
  }
}

TEST_CASE("each crash loses only the step in flight although commits overlap the next step",
          "[training]") {
  auto cfg = small_job(4);
  state_dir clean_dir;
  auto clean = run_job(cfg, clean_dir.path);
  // One crash of each role, far enough apart for the job to commit between them.
  cfg.faults = {fault{fault_target::worker, 2, 9}, fault{fault_target::shard, 1, 21},
                fault{fault_target::loader, 0, 33}, fault{fault_target::trainer, 0, 45}};
  state_dir faulty_dir;
  auto faulty = run_job(cfg, faulty_dir.path);
  CHECK(faulty.restarts == 4);
  CHECK(faulty.lost_steps == 4);
  CHECK(faulty.params_digest == clean.params_digest);
}

TEST_CASE(
    "an actor that stops answering is found by the step deadline, killed and replaced, "
    "and the job ends with the fault-free parameters",
    "[training]") {
  auto cfg = small_job(5);
  cfg.hang_floor = std::chrono::milliseconds(100);
  // One hang of each role that can hang: no crash, no exit; only the deadline
  // can end them (a hang that nothing detects stalls the job past wait()'s limit).
  auto log = std::make_shared<event_log>();
  auto [clean, faulty] =
      clean_and_faulty(cfg, "hang:worker:1@15,hang:shard:0@30,hang:loader:1@45", log);
  CHECK(clean.hangs == 0);
  CHECK(faulty.hangs == 3);
  CHECK(log->count(event_kind::hang_detected) == 3);
  for (const auto& ev : log->snapshot())
    if (ev.kind == event_kind::hang_detected)
      CHECK((ev.supervisor + "/" + ev.child == "/job/workers/worker-1" ||
             ev.supervisor + "/" + ev.child == "/job/shards/shard-0" ||
             ev.supervisor + "/" + ev.child == "/job/loaders/loader-1"));
  CHECK(faulty.restarts == 3);
  CHECK(log->count(event_kind::child_restarted) == 3);
  CHECK(faulty.params_digest == clean.params_digest);
  CHECK(faulty.steps == cfg.steps);
  // Found after the deadline (the floor here: this job's steps take far less)
  // and the time its liveness question waits: at least one floor, within the ceiling.
  CHECK(faulty.longest_hang_detection >= cfg.hang_floor);
  CHECK(faulty.longest_hang_detection < cfg.hang_ceiling);
}

TEST_CASE("a role's own hang floor lets its actors take longer to answer before they count as hung",
          "[training]") {
  auto cfg = small_job(5);
  cfg.hang_floor = std::chrono::milliseconds(100);
  // Loaders whose reads may block: not hung before 600 ms. Workers keep the job's floor.
  cfg.loader_policy.hang_floor = std::chrono::milliseconds(600);
  auto log = std::make_shared<event_log>();
  auto [clean, faulty] = clean_and_faulty(cfg, "hang:worker:1@15,hang:loader:1@45", log);
  CHECK(faulty.hangs == 2);
  CHECK(faulty.params_digest == clean.params_digest);
  size_t seen = 0;
  for (const auto& ev : log->snapshot()) {
    if (ev.kind != event_kind::hang_detected)
      continue;
    ++seen;
    INFO(ev.supervisor << "/" << ev.child << " after " << ev.duration.count() << " ns");
    if (ev.child == "loader-1")
      CHECK(ev.duration >= std::chrono::milliseconds(600));
    else
      CHECK(ev.duration < std::chrono::milliseconds(600));
  }
  CHECK(seen == 2);
  // Bounds a role cannot have: refused, naming them.
  auto bad = small_job(5);
  bad.worker_policy.hang_floor = std::chrono::milliseconds(500);
  bad.worker_policy.hang_ceiling = std::chrono::milliseconds(200);
  auto err = validate(bad);
  REQUIRE(err);
  CHECK_THAT(describe(err), Catch::Contains("the workers' hang_ceiling must be from their "
                                            "hang_floor (500 ms) to 24 h, not 200 ms"));
}

TEST_CASE(
    "a worker that stays far behind the others is restarted as a straggler, and the job "
    "ends with the fault-free parameters",
    "[training]") {
  auto cfg = small_job(6);
  cfg.straggler_steps = 5;
  // From step 10, worker-1's incarnation takes 5 times as long (at least 40 ms
  // more per step): after 5 such steps in a row it is restarted, and its new
  // incarnation is as fast as the others.
  auto log = std::make_shared<event_log>();
  auto [clean, faulty] = clean_and_faulty(cfg, "slow:worker:1@10:5", log);
  CHECK(clean.stragglers == 0);
  CHECK(faulty.stragglers == 1);
  CHECK(faulty.restarts == 1);
  CHECK(faulty.hangs == 0);
  REQUIRE(log->count(event_kind::straggler_detected) == 1);
  for (const auto& ev : log->snapshot())
    if (ev.kind == event_kind::straggler_detected) {
      CHECK(ev.supervisor + "/" + ev.child == "/job/workers/worker-1");
      CHECK(ev.duration >= std::chrono::milliseconds(40));
    }
  CHECK(faulty.params_digest == clean.params_digest);
  CHECK(faulty.steps == cfg.steps);
}

TEST_CASE("goodput is the share of wall time in kept steps, and each incident has its cost",
          "[training]") {
  auto cfg = small_job(8);
  cfg.hang_floor = std::chrono::milliseconds(100);
  // Two crashes (cheap incidents) and a hang (the deadline's cost, at least
  // the floor) that the clean run does not have.
  auto [clean, faulty] = clean_and_faulty(cfg, "worker:0@10,shard:1@20,hang:loader:0@40");
  CHECK(faulty.params_digest == clean.params_digest);
  CHECK(clean.incidents.empty());
  CHECK(clean.goodput() > 0);
  CHECK(clean.goodput() <= 1);
  REQUIRE(faulty.incidents.size() == 3);
  CHECK(faulty.incidents[2] >= cfg.hang_floor);
  std::chrono::nanoseconds lost{0};
  for (auto d : faulty.incidents) {
    CHECK(d.count() > 0);
    lost += d;
  }
  // Kept steps, incidents and the time between steps add up to the wall time.
  CHECK(faulty.kept + lost <= faulty.wall);
  CHECK(faulty.goodput() < clean.goodput());
  CHECK_THAT(describe_goodput(faulty),
             Catch::StartsWith("goodput: ") && Catch::Contains("3 incidents cost"));
}

TEST_CASE(
    "a hung trainer is killed by its supervisor's liveness deadline and its successor "
    "ends the job with the fault-free parameters",
    "[training]") {
  auto cfg = small_job(12);
  cfg.hang_floor = std::chrono::milliseconds(50);
  cfg.hang_ceiling = std::chrono::milliseconds(400);
  auto log = std::make_shared<event_log>();
  auto [clean, faulty] = clean_and_faulty(cfg, "hang:trainer@20", log);
  CHECK(faulty.params_digest == clean.params_digest);
  CHECK(faulty.restarts >= 1);
  // The job supervisor found it: no tick (progress report) within hang_ceiling.
  CHECK(log->count(event_kind::hang_detected, "trainer") == 1);
  CHECK(log->count(event_kind::child_restarted, "trainer") == 1);
  // The incident counts from the job's last progress, the hang included (the
  // supervisor counts from the trainer's last tick, up to half a floor earlier).
  REQUIRE(faulty.incidents.size() == 1);
  CHECK(faulty.incidents[0] >= cfg.hang_ceiling - cfg.hang_floor);
}

TEST_CASE("a step whose gradients were lost in transit is redone when every actor still answers",
          "[training]") {
  auto cfg = small_job(8);
  cfg.hang_floor = std::chrono::milliseconds(100);
  auto [clean, faulty] = clean_and_faulty(cfg, "lose:worker:2@20,lose:worker:0@40");
  CHECK(clean.stalls == 0);
  // Nobody is hung or restarted: the step is redone, and the result is the same.
  CHECK(faulty.stalls == 2);
  CHECK(faulty.hangs == 0);
  CHECK(faulty.restarts == 0);
  CHECK(faulty.params_digest == clean.params_digest);
  CHECK(faulty.steps == cfg.steps);
}

TEST_CASE("a job resumes from its last committed step and ends as an uninterrupted one",
          "[training]") {
  auto cfg = small_job(7);
  state_dir full_dir;
  auto full = run_job(cfg, full_dir.path);
  state_dir dir;
  auto half = cfg;
  half.steps = 25;
  auto first = run_job(half, dir.path);
  CHECK(first.steps == 25);
  auto second = run_job(cfg, dir.path);
  CHECK(second.resumed_from == 25);
  CHECK(second.params_digest == full.params_digest);
  // Another job (other batch size) refuses the directory instead of mixing.
  auto other = cfg;
  other.batch = 24;
  runtime rt{quiet()};
  auto job = make_job(rt, other, dir.path);
  auto tree = rt.start(job.spec());
  REQUIRE(tree);
  auto result = job.wait(std::chrono::seconds(60));
  REQUIRE_FALSE(result);
  CHECK_THAT(describe(result.error()), Catch::Contains("another training job"));
}

namespace {

struct counts {
  size_t workers, shards, loaders;
};

training_config with_counts(training_config cfg, counts c) {
  cfg.workers = c.workers;
  cfg.shards = c.shards;
  cfg.loaders = c.loaders;
  return cfg;
}

} // namespace

TEST_CASE("the counts of workers, shards and loaders never change the result", "[training]") {
  // The job's maths: its global batch of 48 split into 6 micro-batches.
  auto cfg = small_job(9);
  cfg.optimizer.kind = optimizer_kind::adam;
  cfg.optimizer.lr = 0.01;
  cfg.steps = 40;
  state_dir first_dir;
  auto first = run_job(with_counts(cfg, {1, 1, 1}), first_dir.path);
  for (counts c : {counts{2, 3, 2}, counts{3, 2, 1}, counts{5, 4, 3}, counts{6, 1, 6}}) {
    INFO(c.workers << " workers, " << c.shards << " shards, " << c.loaders << " loaders");
    state_dir dir;
    auto r = run_job(with_counts(cfg, c), dir.path);
    CHECK(r.params_digest == first.params_digest);
    CHECK(r.accuracy == first.accuracy);
  }
  // Crashes of any role with other counts: still the same parameters.
  auto faulty = with_counts(cfg, {5, 3, 2});
  auto faults = parse_faults("random:4", 5, 3, 2, cfg.steps, 77);
  REQUIRE(faults);
  faulty.faults = *faults;
  state_dir faulty_dir;
  auto r = run_job(faulty, faulty_dir.path);
  CHECK(r.restarts >= 4);
  CHECK(r.params_digest == first.params_digest);
  // The micro-batches are part of the maths: another split is another job.
  auto split = cfg;
  split.micro_batches = 3;
  CHECK(fingerprint(split) != fingerprint(cfg));
  CHECK(fingerprint(with_counts(cfg, {5, 4, 3})) == fingerprint(cfg));
}

TEST_CASE(
    "a state directory resumes with other counts, resharded, and ends as an uninterrupted "
    "run",
    "[training]") {
  auto cfg = small_job(13);
  cfg.optimizer.kind = optimizer_kind::adam; // both moments are resharded
  cfg.optimizer.lr = 0.01;
  cfg.checkpoint_every = 4;
  state_dir full_dir;
  auto full = run_job(with_counts(cfg, {3, 2, 2}), full_dir.path);
  state_dir dir;
  auto part = with_counts(cfg, {3, 2, 2});
  part.steps = 20;
  CHECK(run_job(part, dir.path).steps == 20);
  // More shards, fewer loaders and workers...
  part = with_counts(cfg, {2, 3, 1});
  part.steps = 41; // not a checkpoint step: the job ends there anyway
  auto second = run_job(part, dir.path);
  CHECK(second.resumed_from == 20);
  CHECK(second.steps == 41);
  // ... then fewer shards and more loaders and workers.
  auto third = run_job(with_counts(cfg, {5, 1, 3}), dir.path);
  CHECK(third.resumed_from == 41);
  CHECK(third.params_digest == full.params_digest);
  CHECK(third.params == full.params);
}

TEST_CASE(
    "a job that may not reshard refuses other counts of shards by name, and takes other "
    "workers",
    "[training]") {
  auto cfg = small_job(14);
  state_dir dir;
  auto part = with_counts(cfg, {3, 2, 2});
  part.steps = 20;
  run_job(part, dir.path);
  {
    runtime rt{quiet()};
    auto job = make_job(rt, with_counts(cfg, {3, 3, 2}), dir.path);
    job.reshard_on_resume(false); // as in a cluster
    auto tree = rt.start(job.spec());
    REQUIRE(tree);
    auto result = job.wait(std::chrono::seconds(60));
    rt.stop(*tree);
    REQUIRE_FALSE(result);
    CHECK_THAT(describe(result.error()),
               Catch::Contains("written with 2 shards and 2 loaders") &&
                   Catch::Contains("this job has 3 shards and 2 loaders") &&
                   Catch::Contains("understudy snapshot import DIR --cluster FILE"));
  }
  // Nothing was changed: the same counts with other workers go on.
  runtime rt{quiet()};
  auto job = make_job(rt, with_counts(cfg, {5, 2, 2}), dir.path);
  job.reshard_on_resume(false);
  auto tree = rt.start(job.spec());
  REQUIRE(tree);
  auto result = job.wait(std::chrono::seconds(60));
  rt.stop(*tree);
  REQUIRE(result);
  CHECK(result->resumed_from == 20);
  state_dir full_dir;
  CHECK(result->params_digest == run_job(cfg, full_dir.path).params_digest);
}

TEST_CASE(
    "a store that holds a whole committed step is resharded in place for other counts, "
    "as every node of a cluster does after an import",
    "[training]") {
  auto cfg = small_job(14);
  state_dir dir;
  auto part = with_counts(cfg, {3, 2, 2});
  part.steps = 20;
  run_job(part, dir.path);
  runtime rt{quiet()};
  auto job = make_job(rt, with_counts(cfg, {2, 3, 3}), dir.path);
  auto step = job.reshard_stored("/job");
  REQUIRE(step);
  CHECK(*step == 20);
  // Again: the counts match now, nothing to do.
  auto again = job.reshard_stored("/job");
  REQUIRE(again);
  CHECK(*again == 0);
  // A job that may not reshard (a cluster) resumes from it with the new counts.
  job.reshard_on_resume(false);
  auto tree = rt.start(job.spec());
  REQUIRE(tree);
  auto result = job.wait(std::chrono::seconds(60));
  rt.stop(*tree);
  REQUIRE(result);
  CHECK(result->resumed_from == 20);
  state_dir full_dir;
  CHECK(result->params_digest == run_job(cfg, full_dir.path).params_digest);
}

TEST_CASE("a parked worker is left out down to min_workers, and serves again once it restarts",
          "[training]") {
  auto cfg = small_job(21);
  cfg.steps = 40;
  state_dir clean_dir;
  const auto clean = run_job(cfg, clean_dir.path);
  for (size_t min_workers : {size_t{2}, size_t{3}}) {
    INFO("min_workers " << min_workers);
    cfg.min_workers = min_workers;
    // Worker 1 has no node until the job has committed step 20 (min_workers
    // 2: two workers go on meanwhile) or its stand-in has been asked 30 times
    // (min_workers 3: nothing may move while it is parked).
    std::atomic<uint64_t> committed{0}, committed_while_parked{0};
    std::atomic<int> polls{0};
    std::atomic<bool> parked{true};
    runtime rt{quiet()};
    state_dir dir;
    auto job = make_job(rt, cfg, dir.path);
    job.on_progress([&](const training_progress& p) {
      committed = p.step;
      if (parked)
        ++committed_while_parked;
    });
    auto tree =
        rt.start(job.spec("job", nullptr, [&](fault_target role, size_t index, child_spec local) {
          if (role != fault_target::worker || index != 1)
            return local;
          auto inner = local.start;
          local.start = [&, inner](child_context& ctx) -> caf::expected<caf::actor> {
            if (ctx.incarnation > 1)
              return inner(ctx);
            return spawn_parked_worker(
                ctx.system, 1,
                [&] {
                  bool free = min_workers == 2 ? committed >= 20 : ++polls > 30;
                  if (free)
                    parked = false;
                  return free;
                },
                std::chrono::milliseconds(2));
          };
          return local;
        }));
    REQUIRE(tree);
    auto result = job.wait(std::chrono::seconds(60));
    rt.stop(*tree);
    REQUIRE(result);
    CHECK(result->params_digest == clean.params_digest);
    CHECK(result->restarts >= 1); // the stand-in's exit, then the worker
    if (min_workers == 2)
      CHECK(committed_while_parked >= 20);
    else
      CHECK(committed_while_parked == 0);
  }
}

TEST_CASE("a loader serves every sample once per epoch across crashes, with bounded prefetch",
          "[training]") {
  auto cfg = small_job(5, 50);
  cfg.workers = 1;
  cfg.loaders = 1;
  cfg.shards = 1;
  cfg.batch = 7; // batches straddle epochs
  cfg.micro_batches = 1;
  cfg.steps = 40;
  cfg.prefetch = 2;
  cfg.faults = {fault{fault_target::loader, 0, 9}, fault{fault_target::loader, 0, 23}};
  state_dir dir;
  runtime rt{quiet()};
  auto job = make_job(rt, cfg, dir.path);
  supervisor_spec spec;
  spec.name = "loaders";
  spec.intensity = {10, std::chrono::seconds(10)};
  spec.children.push_back(job.loader_spec(0));
  auto tree = rt.start(spec);
  REQUIRE(tree);
  caf::scoped_actor self{rt.system()};
  uint64_t attempt = 1;
  uint64_t committed = 0;
  std::map<uint64_t, std::vector<uint32_t>> served; // committed steps only
  std::map<uint64_t, std::vector<uint32_t>> pending;
  auto loader = tree->resolve("loader-0");
  REQUIRE(loader);
  uint64_t incarnation = 1;
  auto rewind = [&] {
    bool ok = false;
    self->request(*loader, caf::infinite, rewind_atom::value, committed, attempt)
        .receive([&](uint64_t s) { ok = s == committed; }, [&](caf::error&) {});
    REQUIRE(ok);
  };
  rewind();
  size_t crashes = 0;
  for (uint64_t step = 1; step <= cfg.steps;) {
    bool failed = false;
    self->request(*loader, caf::infinite, batch_atom::value, step, size_t{0})
        .receive(
            [&](const batch_ptr& b) {
              REQUIRE(b->indices.size() == cfg.batch);
              pending[step] = b->indices;
            },
            [&](caf::error&) { failed = true; });
    if (!failed) {
      self->request(*loader, caf::infinite, stats_atom::value)
          .receive(
              [&](const loader_stats& st) {
                CHECK(st.cached_steps <= st.max_cached_steps);
                CHECK(st.max_cached_steps == cfg.prefetch + 1);
              },
              [&](caf::error&) {});
      self->request(*loader, caf::infinite, commit_atom::value, step)
          .receive([&](uint64_t) {}, [&](caf::error&) { failed = true; });
    }
    if (failed) {
      // The crashed loader restarts; resume from the last committed step.
      ++crashes;
      ++attempt;
      ++incarnation;
      caf::expected<caf::actor> next = caf::make_error(caf::sec::invalid_argument);
      self->request(tree->handle(), caf::infinite, resolve_atom::value, std::string{"loader-0"},
                    incarnation)
          .receive([&](caf::actor& a) { next = a; }, [&](caf::error& e) { next = e; });
      REQUIRE(next);
      loader = next;
      pending.clear();
      step = committed + 1;
      rewind();
      continue;
    }
    served[step] = pending[step];
    committed = step;
    ++step;
  }
  CHECK(crashes == 2);
  std::vector<uint32_t> stream;
  for (auto& [step, idx] : served)
    stream.insert(stream.end(), idx.begin(), idx.end());
  const size_t share = cfg.train->size();
  REQUIRE(stream.size() == cfg.steps * cfg.batch);
  for (size_t epoch = 0; (epoch + 1) * share <= stream.size(); ++epoch) {
    std::set<uint32_t> seen(stream.begin() + epoch * share, stream.begin() + (epoch + 1) * share);
    INFO("epoch " << epoch);
    CHECK(seen.size() == share);
  }
  rt.stop(*tree);
}

namespace {

/// Pushes gradients to a lone shard in `order` (micro-batches, repeats allowed) for
/// `steps` steps and returns its parameters and stats.
std::pair<std::vector<float>, shard_stats> drive_shard(const std::vector<size_t>& order,
                                                       uint64_t steps) {
  auto cfg = small_job(11);
  cfg.workers = 3;
  cfg.micro_batches = 3;
  cfg.shards = 1;
  cfg.loaders = 1;
  cfg.optimizer.kind = optimizer_kind::adam;
  cfg.optimizer.lr = 0.01;
  cfg.steps = steps;
  state_dir dir;
  runtime rt{quiet()};
  auto job = make_job(rt, cfg, dir.path);
  supervisor_spec spec;
  spec.name = "shards";
  spec.children.push_back(job.shard_spec(0));
  auto tree = rt.start(spec);
  REQUIRE(tree);
  auto shard = tree->resolve("shard-0");
  REQUIRE(shard);
  caf::scoped_actor self{rt.system()};
  const uint64_t attempt = 3;
  self->request(*shard, caf::infinite, rewind_atom::value, uint64_t{0}, attempt)
      .receive([](uint64_t) {}, [](caf::error& e) { FAIL(describe(e)); });
  const size_t n = cfg.net->parameter_count();
  for (uint64_t step = 1; step <= steps; ++step) {
    // A stale push from an abandoned attempt must be ignored.
    self->send(*shard, push_atom::value, step, attempt - 1, size_t{0}, std::vector<float>(n, 9.0f),
               1.0f);
    for (size_t rank : order) {
      std::vector<float> g(n);
      for (size_t i = 0; i < n; ++i)
        g[i] = 0.001f * static_cast<float>((i * 7 + rank * 13 + step * 3) % 101) - 0.05f +
               1e-7f * static_cast<float>(rank);
      self->send(*shard, push_atom::value, step, attempt, rank, std::move(g), 0.5f);
    }
    bool applied = false;
    self->receive([&](applied_atom, size_t, uint64_t s, uint64_t a, float) {
      applied = s == step && a == attempt;
    });
    REQUIRE(applied);
  }
  std::vector<float> params;
  self->request(*shard, caf::infinite, pull_atom::value)
      .receive(
          [&](uint64_t s, const slice_ptr& sl) {
            CHECK(s == steps);
            params = *sl;
          },
          [](caf::error& e) { FAIL(describe(e)); });
  shard_stats stats;
  self->request(*shard, caf::infinite, stats_atom::value)
      .receive([&](const shard_stats& st) { stats = st; }, [](caf::error&) {});
  rt.stop(*tree);
  return {params, stats};
}

} // namespace

TEST_CASE("a shard sums gradients by micro-batch: duplicate and reordered pushes change nothing",
          "[training]") {
  auto [in_order, s1] = drive_shard({0, 1, 2}, 5);
  auto [shuffled, s2] = drive_shard({2, 0, 0, 1}, 5); // micro-batch 0 twice per step
  auto [reversed, s3] = drive_shard({2, 1, 1, 2, 0}, 5);
  REQUIRE(in_order.size() == shuffled.size());
  CHECK(in_order == shuffled);
  CHECK(in_order == reversed);
  CHECK(s1.duplicates == 0);
  CHECK(s2.duplicates == 5);
  CHECK(s3.duplicates == 10);
  CHECK(s1.stale == 5);
}

TEST_CASE("fault specs are parsed and bad ones named", "[training]") {
  auto ok = parse_faults("worker:1@120,shard:0@300,loader:0@450,trainer@600", 2, 2, 1, 3000, 1);
  REQUIRE(ok);
  REQUIRE(ok->size() == 4);
  CHECK(to_string((*ok)[0]) == "worker:1@120");
  CHECK(to_string((*ok)[3]) == "trainer@600");
  auto hang = parse_faults("hang:shard:1@7,worker:0@8", 2, 2, 1, 100, 1);
  REQUIRE(hang);
  REQUIRE(hang->size() == 2);
  CHECK((*hang)[0].kind == fault_kind::hang);
  CHECK((*hang)[0].target == fault_target::shard);
  CHECK((*hang)[0].index == 1);
  CHECK(to_string((*hang)[0]) == "hang:shard:1@7");
  CHECK((*hang)[1].kind == fault_kind::crash);
  auto slow = parse_faults("slow:worker:1@7:2.5", 2, 2, 1, 100, 1);
  REQUIRE(slow);
  REQUIRE(slow->size() == 1);
  CHECK((*slow)[0].kind == fault_kind::slow);
  CHECK((*slow)[0].factor == 2.5);
  CHECK(to_string((*slow)[0]) == "slow:worker:1@7:2.5");
  auto lose = parse_faults("lose:worker:0@9", 2, 2, 1, 100, 1);
  REQUIRE(lose);
  CHECK((*lose)[0].kind == fault_kind::lose);
  CHECK(to_string((*lose)[0]) == "lose:worker:0@9");
  auto r1 = parse_faults("random:7", 2, 2, 1, 100, 9);
  auto r2 = parse_faults("random:7", 2, 2, 1, 100, 9);
  REQUIRE(r1);
  REQUIRE(r1->size() == 7);
  for (size_t i = 0; i < 7; ++i)
    CHECK(to_string((*r1)[i]) == to_string((*r2)[i]));
  for (auto [spec, msg] : std::vector<std::pair<std::string, std::string>>{
           {"gpu:0@5", "unknown target 'gpu'"},
           {"worker:2@5", "there is no worker 2"},
           {"worker:1", "missing @STEP"},
           {"shard:0@0", "step must be"},
           {"loader:x@3", "malformed index"},
           {"trainer:1@3", "no index"},
           {"random:0", "K must be"},
           {"hang:gpu:0@3", "only a worker"},
           {"hang:trainer:0@3", "the trainer can hang"},
           {"hang:worker:5@3", "no worker 5"},
           {"hang:worker:0", "missing @STEP"},
           {"slow:shard:0@3:2", "only a worker"},
           {"slow:worker:0@3", "missing :FACTOR"},
           {"slow:worker:0@3:1", "FACTOR must"},
           {"slow:worker:0@3:x", "FACTOR must"},
           {"slow:worker:4@3:2", "no worker 4"},
           {"lose:loader:0@3", "only a worker"}}) {
    auto r = parse_faults(spec, 2, 2, 1, 100, 1);
    INFO(spec);
    REQUIRE_FALSE(r);
    CHECK_THAT(describe(r.error()), Catch::Contains(msg));
  }
}

TEST_CASE("impossible job configurations are refused with the reason", "[training]") {
  auto base = small_job(1);
  auto check = [&](auto mutate, const std::string& msg) {
    auto cfg = base;
    mutate(cfg);
    auto err = validate(cfg);
    INFO(msg);
    REQUIRE(err);
    CHECK_THAT(describe(err), Catch::Contains(msg));
  };
  check([](training_config& c) { c.workers = 0; }, "workers must be");
  check([](training_config& c) { c.shards = 100000; }, "shards must be");
  check([](training_config& c) { c.loaders = 7; }, "loaders must be from 1 to 6");
  check([](training_config& c) { c.workers = 7; }, "workers must be from 1 to 6");
  check([](training_config& c) { c.batch = 0; }, "batch must be");
  check([](training_config& c) { c.micro_batches = 5; }, "micro_batches must be");
  check([](training_config& c) { c.micro_batches = 0; }, "micro_batches must be");
  check([](training_config& c) { c.min_workers = 4; }, "min_workers must be from 0 to workers (3)");
  check([](training_config& c) { c.checkpoint_every = 0; }, "checkpoint_every");
  check(
      [](training_config& c) {
        c.net = std::make_shared<mlp>(std::vector<size_t>{32, 10});
      },
      "does not fit the model");
  check(
      [](training_config& c) {
        c.faults = {fault{fault_target::shard, 5, 3}};
      },
      "fault shard:5@3");
  check([](training_config& c) { c.hang_floor = std::chrono::milliseconds(1); }, "hang_floor");
  check([](training_config& c) { c.hang_ceiling = c.hang_floor - std::chrono::milliseconds(1); },
        "hang_ceiling");
  check([](training_config& c) { c.hang_factor = 0.5; }, "hang_factor");
  check([](training_config& c) { c.straggler_ratio = 1.2; }, "straggler_ratio");
  check([](training_config& c) { c.straggler_steps = 0; }, "straggler_steps");
  CHECK_FALSE(validate(base));
}

TEST_CASE("a state store that keeps fewer than three versions cannot hold a training job",
          "[training]") {
  state_dir dir;
  runtime rt{quiet()};
  state_store_config sc;
  sc.directory = dir.path;
  sc.retention.keep_last = 2;
  auto p = rt.open_state(sc);
  REQUIRE(p);
  auto job = training_job::create(small_job(1), *p);
  REQUIRE_FALSE(job);
  CHECK_THAT(describe(job.error()), Catch::Contains("at least 3"));
}

TEST_CASE(
    "a shard that restarts without its saved state fails the job rather than rolling it "
    "back to the start",
    "[training]") {
  state_dir dir, elsewhere;
  auto cfg = small_job(11);
  cfg.steps = 40;
  cfg.checkpoint_every = 5;
  run_job(cfg, dir.path);
  // The job goes on to step 80 in the same directory, but shard-1 starts on a
  // store that holds none of its checkpoints (as on a node without its copies).
  cfg.steps = 80;
  runtime other{quiet()}; // a runtime opens one state store
  auto stranger = make_job(other, cfg, elsewhere.path);
  runtime rt{quiet()};
  auto job = make_job(rt, cfg, dir.path);
  auto tree =
      rt.start(job.spec("job", nullptr, [&](fault_target role, size_t index, child_spec local) {
        return role == fault_target::shard && index == 1 ? stranger.shard_spec(1) : local;
      }));
  REQUIRE(tree);
  auto result = job.wait(std::chrono::seconds(60));
  rt.stop(*tree);
  REQUIRE_FALSE(result);
  CHECK_THAT(describe(result.error()),
             Catch::Contains("shard-1 has no saved state") && Catch::Contains("committed step 40"));
}

TEST_CASE("a job shorter than the state directory's committed step refuses to run", "[training]") {
  state_dir dir;
  auto cfg = small_job(5);
  cfg.steps = 30;
  CHECK(run_job(cfg, dir.path).steps == 30);
  // The same job asked for fewer steps would otherwise return the longer run.
  cfg.steps = 20;
  runtime rt{quiet()};
  auto job = make_job(rt, cfg, dir.path);
  auto tree = rt.start(job.spec());
  REQUIRE(tree);
  auto result = job.wait(std::chrono::seconds(60));
  rt.stop(*tree);
  REQUIRE_FALSE(result);
  CHECK(is(result.error(), config_errc::invalid_job));
  CHECK_THAT(describe(result.error()),
             Catch::Contains("committed step 30") && Catch::Contains("last step 20"));
}

TEST_CASE(
    "a corrupt chunk in the newest shard checkpoint falls back to an older committed step "
    "and the job ends with the fault-free digest",
    "[training][state][corruption]") {
  auto cfg = small_job(13);
  state_dir full_dir;
  auto full = run_job(cfg, full_dir.path);
  state_dir dir;
  auto half = cfg;
  half.steps = 25;
  CHECK(run_job(half, dir.path).steps == 25);
  // Flip a byte in the first chunk of shard-0's newest parameters: its header
  // still reads, only a full verification notices.
  std::string shard;
  uint64_t newest = 0;
  {
    state_store_config sc;
    sc.directory = dir.path;
    auto store = state_store::open(sc);
    REQUIRE(store);
    auto paths = (*store)->paths();
    REQUIRE(paths);
    for (const auto& p : *paths)
      if (p.size() >= 8 && p.compare(p.size() - 8, 8, "/shard-0") == 0)
        shard = p;
    REQUIRE_FALSE(shard.empty());
    auto versions = (*store)->versions(shard);
    REQUIRE(versions);
    REQUIRE(versions->size() >= 2);
    newest = versions->back().step;
    REQUIRE(versions->back().tensors.at(0).name == "params");
  }
  CHECK(newest == 25);
  test::flip_byte_in_chunk(dir.path, shard, newest, 0, 0, 5);
  auto second = run_job(cfg, dir.path);
  CHECK(second.resumed_from < newest);
  CHECK(second.params_digest == full.params_digest);
}

TEST_CASE(
    "a reshard takes the newest step every old record holds intact, and refuses by name, "
    "writing nothing, when a shard has none",
    "[training][state][corruption]") {
  auto cfg = with_counts(small_job(15), {3, 2, 2});
  state_dir full_dir;
  auto full = run_job(cfg, full_dir.path);
  auto half = cfg;
  half.steps = 20;
  auto shard_path = [](const std::string& dir, size_t k) {
    state_store_config sc;
    sc.directory = dir;
    sc.read_only = true;
    auto store = state_store::open(sc);
    REQUIRE(store);
    auto paths = (*store)->paths();
    REQUIRE(paths);
    auto suffix = "/shard-" + std::to_string(k);
    for (const auto& p : *paths)
      if (p.size() >= suffix.size() &&
          p.compare(p.size() - suffix.size(), suffix.size(), suffix) == 0)
        return std::make_pair(p, *(*store)->versions(p));
    return std::make_pair(std::string{}, std::vector<version_info>{});
  };
  SECTION("a damaged newest version: the reshard falls back a step") {
    state_dir dir;
    run_job(half, dir.path);
    auto [path, versions] = shard_path(dir.path, 1);
    REQUIRE(versions.size() >= 2);
    REQUIRE(versions.back().step == 20);
    test::flip_byte_in_chunk(dir.path, path, 20, 0, 0, 5);
    auto r = run_job(with_counts(cfg, {2, 3, 1}), dir.path);
    CHECK(r.resumed_from == 19);
    CHECK(r.params_digest == full.params_digest);
  }
  SECTION("no intact version of a shard: a clear error, and nothing written") {
    state_dir dir;
    run_job(half, dir.path);
    auto [path, versions] = shard_path(dir.path, 1);
    for (const auto& v : versions)
      test::flip_byte_in_chunk(dir.path, path, v.step, 0, 0, 5);
    runtime rt{quiet()};
    auto job = make_job(rt, with_counts(cfg, {3, 3, 2}), dir.path);
    auto tree = rt.start(job.spec());
    REQUIRE(tree);
    auto result = job.wait(std::chrono::seconds(60));
    rt.stop(*tree);
    REQUIRE_FALSE(result);
    CHECK_THAT(
        describe(result.error()),
        Catch::Contains("written with 2 shards and 2 loaders, with 3 shards and 2 loaders") &&
            Catch::Contains("shard-1 has no intact checkpoint"));
    CHECK(shard_path(dir.path, 2).second.empty()); // no record of the new layout
  }
}

TEST_CASE(
    "checkpoints whose replica fails are not committed and the job ends with the "
    "fault-free digest",
    "[training][state][replication]") {
  auto cfg = small_job(17);
  cfg.steps = 30;
  state_dir full_dir;
  auto full = run_job(cfg, full_dir.path);
  state_dir dir;
  runtime rt{quiet()};
  // A replica target that refuses the 4th and the 9th batch it gets.
  auto batches = std::make_shared<std::atomic<int>>(0);
  auto replica = rt.system().spawn([batches]() -> caf::behavior {
    return {
        [batches](replicate_atom, const checkpoint_batch& b) -> caf::result<uint64_t> {
          auto n = ++*batches;
          if (n == 4 || n == 9)
            return make_error(state_errc::io_error,
                              "replica target refuses batch " + std::to_string(n));
          return static_cast<uint64_t>(b.items.size());
        },
    };
  });
  state_store_config sc;
  sc.directory = dir.path;
  state_writer_config wc;
  wc.replica = replica;
  auto p = rt.open_state(sc, wc);
  REQUIRE(p);
  auto job = training_job::create(cfg, *p);
  REQUIRE(job);
  auto tree = rt.start(job->spec());
  REQUIRE(tree);
  auto result = job->wait(std::chrono::seconds(120));
  rt.stop(*tree);
  caf::anon_send_exit(replica, caf::exit_reason::user_shutdown);
  INFO((result ? std::string{} : describe(result.error())));
  REQUIRE(result);
  CHECK(*batches > 9);
  // Each refused batch failed a put: its actor restarted and the job rewound.
  CHECK(result->restarts >= 2);
  CHECK(result->params_digest == full.params_digest);
}

TEST_CASE(
    "the last step is reported once as finished, evaluated, and a progress line shows the "
    "loss's significant digits and no accuracy before the first evaluation",
    "[training]") {
  auto cfg = small_job(23);
  cfg.steps = 30;
  cfg.eval_every = 0;
  runtime rt{quiet()};
  state_dir dir;
  auto job = make_job(rt, cfg, dir.path);
  std::mutex mtx;
  std::vector<training_progress> seen;
  job.on_progress([&](const training_progress& p) {
    std::lock_guard<std::mutex> guard{mtx};
    seen.push_back(p);
  });
  auto tree = rt.start(job.spec("job"));
  REQUIRE(tree);
  auto result = job.wait(std::chrono::seconds(60));
  rt.stop(*tree);
  REQUIRE(result);
  std::lock_guard<std::mutex> guard{mtx};
  REQUIRE(!seen.empty());
  size_t finished = 0;
  for (const auto& p : seen) {
    finished += p.finished ? 1 : 0;
    // No evaluation before the end (eval_every 0): no accuracy until then.
    if (!p.finished)
      CHECK(p.accuracy < 0);
  }
  CHECK(finished == 1);
  CHECK(seen.back().finished);
  CHECK(seen.back().step == cfg.steps);
  CHECK(seen.back().accuracy == Approx(result->accuracy));
  training_progress p;
  p.step = 3;
  p.steps = 10;
  p.loss = 0.0548731f;
  CHECK(describe_progress(p) == "step 3/10 loss 0.05487 accuracy - restarts 0 lost 0");
  p.loss = 2.5e-6f;
  p.accuracy = 0.97214;
  p.restarts = 2;
  p.lost_steps = 4;
  CHECK(describe_progress(p) == "step 3/10 loss 2.5e-06 accuracy 0.9721 restarts 2 lost 4");
}

TEST_CASE(
    "a job's committed step is read back as the job ended it, and a corrupt chunk of the "
    "newest step falls back to the one before",
    "[training]") {
  auto cfg = small_job(3);
  state_dir dir;
  auto result = run_job(cfg, dir.path);
  auto open = [&] {
    state_store_config sc;
    sc.directory = dir.path;
    sc.read_only = true;
    auto store = state_store::open(sc);
    REQUIRE(store);
    return *store;
  };
  {
    auto store = open();
    CHECK(newest_committed_step(*store, "/job") == uint64_t{60});
    auto read = read_committed_parameters(*store, "/job", *cfg.net);
    REQUIRE(read);
    CHECK(read->step == 60);
    CHECK(read->params == result.params);
    CHECK(read->eval_step == 40); // the last evaluation before the step's record
    // Another model's shape is refused, naming the shard.
    mlp other{{64, 17, 10}};
    auto wrong = read_committed_parameters(*store, "/job", other);
    REQUIRE_FALSE(wrong);
    CHECK_THAT(describe(wrong.error()),
               Catch::Contains("/job/shards@60") && Catch::Contains("another model"));
    auto none = read_committed_parameters(*store, "/elsewhere", *cfg.net);
    REQUIRE_FALSE(none);
    CHECK(is(none.error(), state_errc::not_found));
  }
  test::flip_byte_in_chunk(dir.path, "/job/shards/shard-1", 60, 0, 0, 10);
  auto store = open();
  CHECK(newest_committed_step(*store, "/job") == uint64_t{59});
  auto read = read_committed_parameters(*store, "/job", *cfg.net);
  REQUIRE(read);
  CHECK(read->step == 59);
  CHECK(read->params != result.params);
}
