// Collective groups: the local path deterministically on CPU GPU actors with
// CAF's test_coordinator (no sleeps; deadlines fire when the test advances the
// clock), the CUDA and NCCL paths on a device where one exists ([gpu]).

#include "understudy/gpu/collective.hpp"

#include <chrono>
#include <cstring>
#include <memory>
#include <tuple>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

#include "support/gpu_test_util.hpp"
#include "support/test_fixture.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/gpu/gpu_actor.hpp"

using namespace gpu_test;
namespace ug = understudy::gpu;

namespace {

constexpr ug::buffer_id data_id = 1;

/// A CPU GPU actor whose buffer `data_id` holds `values`.
caf::actor cpu_rank(test::fixture& f, const std::vector<float>& values) {
  auto a = ug::spawn_gpu_actor(f.sys, ug::gpu_actor_options{});
  REQUIRE(a);
  ug::op_batch b;
  b.allocate(data_id, values.size());
  b.upload(ug::whole(data_id, values.size()), values);
  REQUIRE(f.ask<ug::batch_result>(*a, ug::gpu_run_atom::value, std::move(b)));
  return *a;
}

std::vector<float> read(test::fixture& f, const caf::actor& a, size_t n) {
  ug::op_batch b;
  b.download(ug::whole(data_id, n));
  auto res = f.ask<ug::batch_result>(a, ug::gpu_run_atom::value, std::move(b));
  REQUIRE(res);
  return res->downloads.at(0);
}

std::vector<ug::slice> slices(size_t ranks, size_t n) {
  return std::vector<ug::slice>(ranks, ug::whole(data_id, n));
}

/// Values of very different magnitudes, so that the order of a sum matters.
std::vector<float> rank_values(size_t rank, size_t n) {
  auto xs = random_floats(n, 900 + rank);
  const float scales[] = {1e8f, 1.0f, 1e-3f, 3e7f};
  for (size_t i = 0; i < n; ++i)
    xs[i] *= scales[(rank + i) % 4];
  return xs;
}

bool same_bits(const std::vector<float>& x, const std::vector<float>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

/// A rank that takes requests and never answers them.
caf::behavior silent_rank(caf::event_based_actor* self) {
  auto held = std::make_shared<std::vector<caf::response_promise>>();
  return {
      [self, held](ug::gpu_run_atom, const ug::op_batch&) {
        held->push_back(self->make_response_promise());
      },
  };
}

struct group_guard {
  test::fixture& f;
  caf::actor hdl;
  ~group_guard() {
    f.self->send_exit(hdl, caf::exit_reason::kill);
    f.run();
  }
};

caf::actor spawn_group(test::fixture& f, ug::collective_options opts) {
  auto g = ug::spawn_collective_group(f.sys, std::move(opts));
  REQUIRE(g);
  f.run();
  return *g;
}

} // namespace

TEST_CASE("a collective group sums every slice in rank order whatever order the ranks answer in",
          "[gpu_ops][collective]") {
  test::fixture f;
  const size_t ranks = 4, n = 64;
  std::vector<std::vector<float>> inputs;
  std::vector<float> want(n), reversed(n);
  ug::collective_options opts;
  for (size_t r = 0; r < ranks; ++r) {
    inputs.push_back(rank_values(r, n));
    opts.ranks.push_back(cpu_rank(f, inputs.back()));
  }
  for (size_t i = 0; i < n; ++i) {
    float acc = inputs[0][i];
    for (size_t r = 1; r < ranks; ++r)
      acc = acc + inputs[r][i];
    want[i] = acc;
    float back = inputs[ranks - 1][i];
    for (size_t r = ranks - 1; r-- > 0;)
      back = back + inputs[r][i];
    reversed[i] = back;
  }
  // The data is such that summing in arrival order would show.
  REQUIRE_FALSE(same_bits(want, reversed));
  group_guard g{f, spawn_group(f, opts)};
  const bool lifo = GENERATE(false, true);
  INFO((lifo ? "the last rank answers first" : "the first rank answers first"));
  auto h = f.self->request(g.hdl, caf::infinite, ug::all_reduce_atom::value, slices(ranks, n));
  if (lifo) {
    while (f.sched.try_run_once_lifo()) {
      // run the newest job first: the ranks answer in reverse order
    }
  } else {
    f.run();
  }
  bool ok = false;
  h.receive([&](caf::ok_atom) { ok = true; },
            [](caf::error& err) { FAIL(understudy::describe(err)); });
  REQUIRE(ok);
  for (size_t r = 0; r < ranks; ++r)
    REQUIRE(same_bits(read(f, opts.ranks[r], n), want));
  SECTION("the next collective sees the sums") {
    auto again = f.ask<caf::ok_atom>(g.hdl, ug::all_reduce_atom::value, slices(ranks, n));
    REQUIRE(again);
    auto x = read(f, opts.ranks[2], n);
    for (size_t i = 0; i < n; ++i) {
      float acc = want[i];
      for (size_t r = 1; r < ranks; ++r)
        acc = acc + want[i];
      REQUIRE(same_bits(x[i], acc));
    }
  }
}

TEST_CASE("a collective group broadcasts the root's slice to every other rank",
          "[gpu_ops][collective]") {
  test::fixture f;
  ug::collective_options opts;
  for (size_t r = 0; r < 3; ++r)
    opts.ranks.push_back(cpu_rank(f, rank_values(r, 8)));
  group_guard g{f, spawn_group(f, opts)};
  // Slices at different offsets: rank 2 receives into the second half of a bigger buffer.
  ug::op_batch grow;
  grow.allocate(7, 16);
  grow.fill(ug::whole(7, 16), -1.0f);
  REQUIRE(f.ask<ug::batch_result>(opts.ranks[2], ug::gpu_run_atom::value, grow));
  std::vector<ug::slice> s{ug::whole(data_id, 8), ug::whole(data_id, 8), ug::slice{7, 8, 8}};
  REQUIRE(f.ask<caf::ok_atom>(g.hdl, ug::broadcast_atom::value, uint32_t{1}, s));
  const auto root = rank_values(1, 8);
  REQUIRE(same_bits(read(f, opts.ranks[0], 8), root));
  REQUIRE(same_bits(read(f, opts.ranks[1], 8), root));
  ug::op_batch b;
  b.download(ug::whole(7, 16));
  auto res = f.ask<ug::batch_result>(opts.ranks[2], ug::gpu_run_atom::value, b);
  REQUIRE(res);
  REQUIRE(same_bits(std::vector<float>(res->downloads[0].begin(), res->downloads[0].begin() + 8),
                    std::vector<float>(8, -1.0f)));
  REQUIRE(
      same_bits(std::vector<float>(res->downloads[0].begin() + 8, res->downloads[0].end()), root));
}

TEST_CASE("a bad collective request fails only itself and the group carries on",
          "[gpu_ops][collective]") {
  test::fixture f;
  ug::collective_options opts;
  for (size_t r = 0; r < 2; ++r)
    opts.ranks.push_back(cpu_rank(f, {1.0f, 2.0f}));
  group_guard g{f, spawn_group(f, opts)};
  auto reject = [&](caf::message request, const std::string& needle) {
    caf::expected<caf::ok_atom> res{caf::sec::request_timeout};
    auto h = f.self->request(g.hdl, caf::infinite, std::move(request));
    f.run();
    h.receive([&](caf::ok_atom x) { res = x; }, [&](caf::error& err) { res = std::move(err); });
    REQUIRE_FALSE(res);
    INFO(understudy::describe(res.error()));
    REQUIRE(ug::is(res.error(), ug::collective_errc::invalid_argument));
    REQUIRE(understudy::describe(res.error()).find(needle) != std::string::npos);
  };
  SECTION("a slice short") {
    reject(caf::make_message(ug::all_reduce_atom::value, slices(1, 2)),
           "expected one slice per rank (2), got 1");
  }
  SECTION("slices of different sizes") {
    reject(caf::make_message(ug::all_reduce_atom::value,
                             std::vector<ug::slice>{ug::whole(data_id, 2), ug::whole(data_id, 1)}),
           "slices differ in size");
  }
  SECTION("a root that is no rank") {
    reject(caf::make_message(ug::broadcast_atom::value, uint32_t{2}, slices(2, 2)),
           "root 2 is no rank");
  }
  SECTION("a slice outside a rank's buffer") {
    reject(
        caf::make_message(ug::all_reduce_atom::value,
                          std::vector<ug::slice>{ug::whole(data_id, 2), ug::slice{data_id, 1, 2}}),
        "rank 1 rejected its slice");
  }
  REQUIRE(f.ask<caf::ok_atom>(g.hdl, ug::all_reduce_atom::value, slices(2, 2)));
  REQUIRE(read(f, opts.ranks[0], 2) == std::vector<float>{2.0f, 4.0f});
  auto info = f.ask<std::string>(g.hdl, ug::collective_info_atom::value);
  REQUIRE(info);
  REQUIRE(info->find("local") == 0);
  REQUIRE(info->find("2 ranks") != std::string::npos);
}

TEST_CASE("a rank that never answers makes the group miss its deadline and fail",
          "[gpu_ops][collective]") {
  test::fixture f;
  ug::collective_options opts;
  opts.ranks.push_back(cpu_rank(f, {1.0f}));
  opts.ranks.push_back(f.sys.spawn(silent_rank));
  opts.deadline = std::chrono::milliseconds(50);
  auto group = spawn_group(f, opts);
  f.self->monitor(group);
  auto h1 = f.self->request(group, caf::infinite, ug::all_reduce_atom::value, slices(2, 1));
  auto h2 =
      f.self->request(group, caf::infinite, ug::broadcast_atom::value, uint32_t{0}, slices(2, 1));
  f.run();
  // Nothing has happened yet: the deadline is 50 ms away on the test clock.
  f.advance(std::chrono::milliseconds(49));
  caf::error reason;
  REQUIRE_FALSE(f.exited(group, &reason));
  f.advance(std::chrono::milliseconds(1));
  for (auto* h : {&h1, &h2}) {
    bool failed = false;
    h->receive([](caf::ok_atom) { FAIL("a collective succeeded without its rank"); },
               [&](caf::error& err) {
                 REQUIRE(ug::is(err, ug::collective_errc::deadline_exceeded));
                 failed = true;
               });
    REQUIRE(failed);
  }
  REQUIRE(f.exited(group, &reason));
  INFO(understudy::describe(reason));
  REQUIRE(ug::is(reason, ug::collective_errc::deadline_exceeded));
  REQUIRE(understudy::describe(reason).find(
              "all_reduce #1 over 2 ranks not finished within 50 ms") != std::string::npos);
  REQUIRE(understudy::describe(reason).find("waiting for rank 1") != std::string::npos);
  f.self->send_exit(opts.ranks[0], caf::exit_reason::kill);
  f.self->send_exit(opts.ranks[1], caf::exit_reason::kill);
  f.run();
}

TEST_CASE("a failed group is restarted by its supervisor and resolves its ranks again",
          "[gpu_ops][collective]") {
  test::fixture f;
  // Ranks under their own supervisor: rank-1 hangs in its first incarnation.
  auto make_rank = [](std::string id, bool hang_first) {
    understudy::child_spec spec;
    spec.id = std::move(id);
    spec.start = [hang_first](understudy::child_context& ctx) -> caf::expected<caf::actor> {
      if (hang_first && ctx.incarnation == 1)
        return caf::actor{ctx.system.spawn(silent_rank)};
      return ug::spawn_gpu_actor(ctx.system, ug::gpu_actor_options{});
    };
    return spec;
  };
  understudy::supervisor_spec ranks_spec;
  ranks_spec.name = "ranks";
  ranks_spec.children = {make_rank("rank-0", false), make_rank("rank-1", true)};
  auto ranks_sup = f.spawn(ranks_spec);
  ug::collective_options opts;
  opts.rank_supervisor = ranks_sup;
  opts.rank_ids = {"rank-0", "rank-1"};
  opts.deadline = std::chrono::seconds(1);
  understudy::supervisor_spec group_spec;
  group_spec.name = "groups";
  group_spec.children = {ug::collective_child("group", opts)};
  auto group_sup = f.spawn(group_spec);
  auto first = f.handle(group_sup, "group");
  auto setup = [&](const std::string& id, float value) {
    ug::op_batch b;
    b.allocate(data_id, 3);
    b.fill(ug::whole(data_id, 3), value);
    REQUIRE(f.ask<ug::batch_result>(f.handle(ranks_sup, id), ug::gpu_run_atom::value, b));
  };
  setup("rank-0", 1.0f);
  // 1. The collective waits for the hanging rank until the deadline.
  auto h = f.self->request(first, caf::infinite, ug::all_reduce_atom::value, slices(2, 3));
  f.run();
  f.advance(std::chrono::seconds(1));
  h.receive([](caf::ok_atom) { FAIL("the collective succeeded"); },
            [](caf::error& err) { REQUIRE(ug::is(err, ug::collective_errc::deadline_exceeded)); });
  REQUIRE(f.count(understudy::event_kind::child_restarted, "group") == 1);
  auto second = f.handle(group_sup, "group");
  REQUIRE(second != first);
  // 2. The hanging rank is restarted (as a liveness deadline would); the
  //    group, which resolved the old one, fails and is restarted once more.
  f.self->send_exit(f.handle(ranks_sup, "rank-1"), caf::exit_reason::kill);
  f.run();
  REQUIRE(f.count(understudy::event_kind::child_restarted, "rank-1") == 1);
  REQUIRE(f.count(understudy::event_kind::child_restarted, "group") == 2);
  bool named = false;
  for (auto& ev : f.log->snapshot())
    if (ev.kind == understudy::event_kind::child_exited && ev.child == "group")
      named = ev.reason.find("rank 1 exited") != std::string::npos;
  REQUIRE(named);
  // 3. The third group works with the new rank.
  setup("rank-1", 2.0f);
  auto third = f.handle(group_sup, "group");
  REQUIRE(f.ask<caf::ok_atom>(third, ug::all_reduce_atom::value, slices(2, 3)));
  REQUIRE(read(f, f.handle(ranks_sup, "rank-1"), 3) == std::vector<float>(3, 3.0f));
}

TEST_CASE(
    "a collective group plans nccl only where it is compiled and ranks have devices of "
    "their own",
    "[gpu_ops][collective]") {
  ug::collective_options opts;
  REQUIRE(ug::plan_collective(opts).path == ug::collective_path::local);
  REQUIRE(ug::plan_collective(opts).fallback_reason.empty());
  opts.path = ug::collective_path::nccl;
  if (ug::nccl_compiled())
    REQUIRE(ug::plan_collective(opts).fallback_reason ==
            "NCCL requested, but the ranks have no CUDA devices");
  opts.devices = {0, 0};
  auto shared = ug::plan_collective(opts);
  REQUIRE(shared.path == ug::collective_path::local);
  if (ug::nccl_compiled()) {
    REQUIRE(shared.fallback_reason == "NCCL requested, but ranks share a device");
    opts.devices = {0, 1};
    REQUIRE(ug::plan_collective(opts).path == ug::collective_path::nccl);
  } else {
    REQUIRE(shared.fallback_reason == "NCCL requested, but understudy was built without NCCL");
  }
  SECTION("a group needs ranks") {
    test::fixture f;
    auto g = ug::spawn_collective_group(f.sys, ug::collective_options{});
    REQUIRE_FALSE(g);
    REQUIRE(ug::is(g.error(), ug::collective_errc::invalid_argument));
  }
  SECTION("the fallback is named in the group's description") {
    test::fixture f;
    ug::collective_options two;
    two.path = ug::collective_path::nccl;
    two.devices = {0, 0};
    two.ranks = {cpu_rank(f, {1.0f}), cpu_rank(f, {2.0f})};
    group_guard g{f, spawn_group(f, two)};
    auto info = f.ask<std::string>(g.hdl, ug::collective_info_atom::value);
    REQUIRE(info);
    REQUIRE(info->find(shared.fallback_reason) != std::string::npos);
    for (auto& r : two.ranks)
      f.self->send_exit(r, caf::exit_reason::kill);
  }
}

namespace {

/// What a scripted NCCL rank was asked to do.
struct rank_script {
  /// Each join: the id, the rank count and the rank.
  std::vector<std::tuple<std::vector<uint8_t>, uint32_t, uint32_t>> joins;
  std::vector<ug::op_batch> batches;
  size_t aborts = 0;
  /// Holds run requests without answering them (a collective stuck on a peer).
  bool stuck = false;
};

/// A rank that plays a CUDA GPU actor's side of the NCCL path (join, one
/// batch per collective, abort) and records it; the ops themselves are the
/// backend's (tested on a device).
caf::behavior scripted_rank(caf::event_based_actor* self, std::shared_ptr<rank_script> script) {
  auto held = std::make_shared<std::vector<caf::response_promise>>();
  return {
      [script](ug::gpu_comm_join_atom, const std::vector<uint8_t>& id, uint32_t ranks,
               uint32_t rank) {
        script->joins.emplace_back(id, ranks, rank);
        return caf::ok_atom::value;
      },
      [self, script, held](ug::gpu_run_atom,
                           const ug::op_batch& b) -> caf::result<ug::batch_result> {
        script->batches.push_back(b);
        if (script->stuck) {
          held->push_back(self->make_response_promise());
          return held->back();
        }
        return ug::batch_result{};
      },
      [script](ug::gpu_comm_abort_atom) { ++script->aborts; },
  };
}

/// Makes `opts` an NCCL group over `n` scripted ranks on devices 0 .. n - 1,
/// rank `stuck` (if any) holding its collectives; returns their scripts.
std::vector<std::shared_ptr<rank_script>> scripted_nccl_ranks(test::fixture& f,
                                                              ug::collective_options& opts, int n,
                                                              int stuck = -1) {
  std::vector<std::shared_ptr<rank_script>> scripts;
  opts.path = ug::collective_path::nccl;
  for (int r = 0; r < n; ++r) {
    scripts.push_back(std::make_shared<rank_script>());
    scripts.back()->stuck = r == stuck;
    opts.devices.push_back(r);
    opts.ranks.push_back(f.sys.spawn(scripted_rank, scripts.back()));
  }
  return scripts;
}

} // namespace

TEST_CASE("an nccl group has every rank join one communicator and runs collectives in place",
          "[gpu_ops][collective]") {
  if (!ug::nccl_compiled()) {
    WARN("skipped: built without NCCL");
    return;
  }
  test::fixture f;
  ug::collective_options opts;
  auto scripts = scripted_nccl_ranks(f, opts, 2);
  group_guard g{f, spawn_group(f, opts)};
  for (uint32_t r = 0; r < 2; ++r) {
    REQUIRE(scripts[r]->joins.size() == 1);
    CHECK(std::get<0>(scripts[r]->joins[0]).size() == 128); // an ncclUniqueId
    CHECK(std::get<0>(scripts[r]->joins[0]) == std::get<0>(scripts[0]->joins[0]));
    CHECK(std::get<1>(scripts[r]->joins[0]) == 2);
    CHECK(std::get<2>(scripts[r]->joins[0]) == r);
  }
  auto info = f.ask<std::string>(g.hdl, ug::collective_info_atom::value);
  REQUIRE(info);
  CHECK(info->find("nccl: in place on the ranks' buffers and streams") == 0);
  // Each rank gets one batch with the op on its own slice: nothing goes
  // through the host or the group.
  std::vector<ug::slice> sl{ug::whole(1, 8), ug::slice{2, 4, 8}};
  REQUIRE(f.ask<caf::ok_atom>(g.hdl, ug::all_reduce_atom::value, sl));
  REQUIRE(f.ask<caf::ok_atom>(g.hdl, ug::broadcast_atom::value, uint32_t{1}, sl));
  for (size_t r = 0; r < 2; ++r) {
    REQUIRE(scripts[r]->batches.size() == 2);
    const auto& reduce = scripts[r]->batches[0].ops;
    REQUIRE(reduce.size() == 1);
    CHECK(reduce[0].code == ug::op_code::all_reduce);
    CHECK(reduce[0].operands == std::vector<ug::slice>{sl[r]});
    const auto& bcast = scripts[r]->batches[1].ops;
    REQUIRE(bcast.size() == 1);
    CHECK(bcast[0].code == ug::op_code::broadcast);
    CHECK(bcast[0].operands == std::vector<ug::slice>{sl[r]});
    CHECK(bcast[0].sizes == std::vector<uint64_t>{1});
    CHECK(scripts[r]->aborts == 0);
  }
  for (auto& r : opts.ranks)
    f.self->send_exit(r, caf::exit_reason::kill);
}

TEST_CASE("a stuck nccl collective misses its deadline and the group aborts every communicator",
          "[gpu_ops][collective]") {
  if (!ug::nccl_compiled()) {
    WARN("skipped: built without NCCL");
    return;
  }
  test::fixture f;
  ug::collective_options opts;
  opts.deadline = std::chrono::milliseconds(50);
  auto scripts = scripted_nccl_ranks(f, opts, 3, 2);
  auto group = spawn_group(f, opts);
  f.self->monitor(group);
  auto h = f.self->request(group, caf::infinite, ug::all_reduce_atom::value, slices(3, 4));
  f.run();
  for (auto& sc : scripts)
    CHECK(sc->aborts == 0);
  f.advance(std::chrono::milliseconds(50));
  bool failed = false;
  h.receive([](caf::ok_atom) { FAIL("the collective succeeded without rank 2"); },
            [&](caf::error& err) {
              CHECK(ug::is(err, ug::collective_errc::deadline_exceeded));
              failed = true;
            });
  REQUIRE(failed);
  caf::error reason;
  REQUIRE(f.exited(group, &reason));
  INFO(understudy::describe(reason));
  CHECK(understudy::describe(reason).find("in NCCL on the ranks' streams; waiting for rank 2") !=
        std::string::npos);
  for (auto& sc : scripts)
    CHECK(sc->aborts == 1);
  for (auto& r : opts.ranks)
    f.self->send_exit(r, caf::exit_reason::kill);
  f.run();
}

TEST_CASE("a cpu rank cannot join an nccl group, which fails naming it", "[gpu_ops][collective]") {
  test::fixture f;
  auto cpu = cpu_rank(f, {1.0f, 2.0f});
  // Collective ops without a communicator fail only their batch.
  ug::op_batch b;
  b.all_reduce(ug::whole(data_id, 2));
  auto res = f.ask<ug::batch_result>(cpu, ug::gpu_run_atom::value, b);
  REQUIRE_FALSE(res);
  CHECK(ug::is(res.error(), ug::gpu_errc::unsupported));
  CHECK(read(f, cpu, 2) == std::vector<float>{1.0f, 2.0f});
  if (!ug::nccl_compiled()) {
    WARN("skipped the group part: built without NCCL");
    f.self->send_exit(cpu, caf::exit_reason::kill);
    f.run();
    return;
  }
  auto script = std::make_shared<rank_script>();
  ug::collective_options opts;
  opts.path = ug::collective_path::nccl;
  opts.devices = {0, 1};
  opts.ranks = {f.sys.spawn(scripted_rank, script), cpu};
  auto spawned = ug::spawn_collective_group(f.sys, opts);
  REQUIRE(spawned);
  auto group = *spawned;
  f.self->monitor(group);
  f.run();
  caf::error reason;
  REQUIRE(f.exited(group, &reason));
  INFO(understudy::describe(reason));
  CHECK(ug::is(reason, ug::collective_errc::rank_failed));
  CHECK(understudy::describe(reason).find("rank 1 could not join") != std::string::npos);
  CHECK(understudy::describe(reason).find("the cpu backend runs no collectives") !=
        std::string::npos);
  CHECK(script->aborts == 1);
  for (auto& r : opts.ranks)
    f.self->send_exit(r, caf::exit_reason::kill);
  f.run();
}

TEST_CASE("collective errors render by name and say what to do next", "[gpu_ops][collective]") {
  caf::actor_system_config cfg;
  ug::register_collective_types(cfg);
  caf::actor_system sys{cfg};
  auto err = ug::make_error(ug::collective_errc::deadline_exceeded, "all_reduce #3");
  REQUIRE(sys.render(err).find("deadline_exceeded") != std::string::npos);
  REQUIRE(sys.render(err).find("all_reduce #3") != std::string::npos);
  REQUIRE(ug::next_step_for(ug::collective_errc::deadline_exceeded) ==
          understudy::next_step::reconnect);
  REQUIRE(ug::next_step_for(ug::collective_errc::invalid_argument) ==
          understudy::next_step::give_up);
  REQUIRE(ug::to_string(ug::collective_errc::nccl_error) == "nccl_error");
}

// -- on CUDA devices -------------------------------------------------------------------

namespace {

/// Sets up `ranks` CUDA actors on `devices` (in rank order) holding rank_values.
std::vector<caf::actor> cuda_ranks(cuda_system& cs, const std::vector<int>& devices, size_t n) {
  std::vector<caf::actor> out;
  for (size_t r = 0; r < devices.size(); ++r) {
    auto a = ug::spawn_gpu_actor(cs.sys, {ug::backend_kind::cuda, devices[r]});
    REQUIRE(a);
    ug::op_batch b;
    b.allocate(data_id, n);
    b.upload(ug::whole(data_id, n), rank_values(r, n));
    auto res = cs.ask<ug::batch_result>(*a, ug::gpu_run_atom::value, b);
    if (!res)
      FAIL(understudy::describe(res.error()));
    out.push_back(*a);
  }
  return out;
}

std::vector<float> cuda_read(cuda_system& cs, const caf::actor& a, size_t n) {
  ug::op_batch b;
  b.download(ug::whole(data_id, n));
  auto res = cs.ask<ug::batch_result>(a, ug::gpu_run_atom::value, b);
  if (!res)
    FAIL(understudy::describe(res.error()));
  return res->downloads.at(0);
}

} // namespace

TEST_CASE("several cuda actors on one device reduce locally with the bits of the cpu path",
          "[gpu][collective]") {
  auto probe = cuda_or_skip();
  if (!probe)
    return;
  probe.reset();
  const size_t n = 1000;
  cuda_system cs;
  ug::collective_options opts;
  opts.path = ug::collective_path::nccl; // falls back: the ranks share device 0
  opts.devices = {0, 0, 0};
  opts.ranks = cuda_ranks(cs, opts.devices, n);
  auto g = ug::spawn_collective_group(cs.sys, opts);
  REQUIRE(g);
  auto info = cs.ask<std::string>(*g, ug::collective_info_atom::value);
  REQUIRE(info);
  INFO(*info);
  REQUIRE(info->find("local") == 0);
  auto ok = cs.ask<caf::ok_atom>(*g, ug::all_reduce_atom::value, slices(3, n));
  if (!ok)
    FAIL(understudy::describe(ok.error()));
  std::vector<float> want = rank_values(0, n);
  for (size_t r = 1; r < 3; ++r) {
    auto x = rank_values(r, n);
    for (size_t i = 0; i < n; ++i)
      want[i] = want[i] + x[i];
  }
  for (auto& r : opts.ranks)
    REQUIRE(same_bits(cuda_read(cs, r, n), want));
  cs.self->send_exit(*g, caf::exit_reason::kill);
  for (auto& r : opts.ranks)
    cs.self->send_exit(r, caf::exit_reason::kill);
}

TEST_CASE("an nccl group with one rank per device all-reduces and broadcasts",
          "[gpu][collective]") {
  auto probe = cuda_or_skip();
  if (!probe)
    return;
  probe.reset();
  if (!ug::nccl_compiled()) {
    WARN(skip_message << " (built without NCCL)");
    return;
  }
  std::vector<int> devices;
  for (auto& d : ug::discover_devices())
    if (devices.size() < 4)
      devices.push_back(d.ordinal);
  const size_t n = 4096;
  cuda_system cs;
  ug::collective_options opts;
  opts.path = ug::collective_path::nccl;
  opts.devices = devices;
  opts.ranks = cuda_ranks(cs, devices, n);
  auto g = ug::spawn_collective_group(cs.sys, opts);
  REQUIRE(g);
  auto info = cs.ask<std::string>(*g, ug::collective_info_atom::value);
  REQUIRE(info);
  INFO(*info);
  REQUIRE(info->find("nccl: in place") == 0);
  auto ok = cs.ask<caf::ok_atom>(*g, ug::all_reduce_atom::value, slices(devices.size(), n));
  if (!ok)
    FAIL(understudy::describe(ok.error()));
  // NCCL's order of summation is its own: within a relative 1e-5 of the
  // largest magnitude, and the same bits on every rank.
  std::vector<double> want(n, 0.0);
  double largest = 0;
  for (size_t r = 0; r < devices.size(); ++r) {
    auto x = rank_values(r, n);
    for (size_t i = 0; i < n; ++i) {
      want[i] += x[i];
      largest = std::max(largest, std::fabs(static_cast<double>(x[i])));
    }
  }
  auto first = cuda_read(cs, opts.ranks[0], n);
  for (size_t i = 0; i < n; ++i)
    REQUIRE(std::fabs(first[i] - want[i]) <= 1e-5 * largest * static_cast<double>(devices.size()));
  for (auto& r : opts.ranks)
    REQUIRE(same_bits(cuda_read(cs, r, n), first));
  // Broadcast rank 0's (new) values.
  ok = cs.ask<caf::ok_atom>(*g, ug::broadcast_atom::value, uint32_t{0}, slices(devices.size(), n));
  if (!ok)
    FAIL(understudy::describe(ok.error()));
  for (auto& r : opts.ranks)
    REQUIRE(same_bits(cuda_read(cs, r, n), first));
  cs.self->send_exit(*g, caf::exit_reason::kill);
  for (auto& r : opts.ranks)
    cs.self->send_exit(r, caf::exit_reason::kill);
}
