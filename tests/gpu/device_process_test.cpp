// GPU actors in child processes, and GPU ranks that restore their state into a
// fresh process. The children are this test binary, on the hidden test case
// at the end. A real actor system with CAF's middleman (processes talk over
// loopback); every wait is for an event, bounded only to fail instead of hang.

#include "understudy/gpu/device_process.hpp"

#include <chrono>
#include <filesystem>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <catch2/catch.hpp>

#include "support/process_test_util.hpp"
#include "support/state_test_util.hpp"
#include "understudy/gpu/collective.hpp"
#include "understudy/gpu/device.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/gpu/gpu_rank.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace ug = understudy::gpu;

namespace {

/// Children run this binary on the hidden test case below, quietly.
ug::device_process_options child_options(bool sticky = true) {
  ug::device_process_options opts;
  opts.simulate_sticky_faults = sticky;
  opts.args = {"[device_process_child]", "-o", "/dev/null"};
  return opts;
}

/// The parent's system, with the GPU actor's and collectives' types.
struct process_system : understudy::testing::process_system {
  process_system()
      : understudy::testing::process_system([](caf::actor_system_config& cfg) {
          ug::register_gpu_types(cfg);
          ug::register_collective_types(cfg);
        }) {
    // nop
  }
};

ug::op_batch fault_batch() {
  ug::op_batch b;
  b.inject_fault(ug::fault_kind::illegal_address);
  return b;
}

std::vector<float> download(process_system& ps, const caf::actor& a, ug::slice s) {
  ug::op_batch b;
  b.download(s);
  auto res = ps.ask<ug::batch_result>(a, ug::gpu_run_atom::value, b);
  if (!res)
    FAIL(understudy::describe(res.error()));
  return res->downloads.at(0);
}

} // namespace

TEST_CASE("a device process serves the gpu actor protocol from a child process",
          "[gpu_ops][device_process]") {
  process_system ps;
  auto keeper = ug::spawn_device_process(ps.sys, child_options(false), "gpu-test");
  REQUIRE(keeper);
  ps.self->monitor(*keeper);
  // Sent before the child is connected: these wait, then run in order.
  ug::op_batch b;
  b.allocate(1, 3);
  b.upload(ug::whole(1, 3), std::vector<float>{1, -2, 3});
  b.relu(ug::whole(1, 3), ug::whole(1, 3));
  b.download(ug::whole(1, 3));
  auto res = ps.ask<ug::batch_result>(*keeper, ug::gpu_run_atom::value, b);
  if (!res)
    FAIL(understudy::describe(res.error()));
  REQUIRE(res->downloads.at(0) == std::vector<float>{1, 0, 3});
  auto info = ps.ask<std::string>(*keeper, ug::gpu_info_atom::value);
  REQUIRE(info);
  REQUIRE(*info == "cpu");
  SECTION("a bad batch crosses the boundary as an error and the actor carries on") {
    ug::op_batch bad;
    bad.download(ug::whole(9, 1));
    auto err = ps.ask<ug::batch_result>(*keeper, ug::gpu_run_atom::value, bad);
    REQUIRE_FALSE(err);
    REQUIRE(ug::is(err.error(), ug::gpu_errc::invalid_argument));
    REQUIRE(download(ps, *keeper, ug::whole(1, 3)) == std::vector<float>{1, 0, 3});
  }
  SECTION("an unsupported fault on the cpu fails only its batch") {
    auto err = ps.ask<ug::batch_result>(*keeper, ug::gpu_run_atom::value, fault_batch());
    REQUIRE_FALSE(err);
    REQUIRE(ug::is(err.error(), ug::gpu_errc::unsupported));
  }
  ps.self->send_exit(*keeper, caf::exit_reason::user_shutdown);
  REQUIRE(ps.down_reason(*keeper) == caf::exit_reason::user_shutdown);
}

TEST_CASE("a sticky fault ends its device process with status 70 and the keeper names it",
          "[gpu_ops][device_process]") {
  process_system ps;
  auto keeper = ug::spawn_device_process(ps.sys, child_options(true), "gpu-3");
  REQUIRE(keeper);
  ps.self->monitor(*keeper);
  // Like any remote actor's, a request in flight when the process dies may go
  // unanswered: the down message is what tells.
  ps.self->send(*keeper, ug::gpu_run_atom::value, fault_batch());
  auto reason = ps.down_reason(*keeper);
  INFO(understudy::describe(reason));
  REQUIRE(understudy::is(reason, understudy::process_errc::poisoned));
  auto text = understudy::describe(reason);
  REQUIRE(text.find("gpu-3 (pid ") != std::string::npos);
  REQUIRE(text.find("exited with status 70") != std::string::npos);
  REQUIRE(text.find("sticky_cuda_error") != std::string::npos);
  REQUIRE(understudy::next_step_for(understudy::process_errc::poisoned) ==
          understudy::next_step::retry_now);
}

TEST_CASE("a gpu rank in a device process restores its state into a fresh process after a crash",
          "[gpu_ops][device_process][gpu_rank]") {
  process_system ps;
  auto dir = test::make_temp_dir();
  understudy::state_store_config scfg;
  scfg.directory = dir;
  scfg.mode = understudy::durability::none;
  auto store = understudy::state_store::open(scfg);
  REQUIRE(store);
  understudy::persistence p;
  p.store = *store;
  p.writer = understudy::spawn_state_writer(ps.sys, *store);
  constexpr ug::buffer_id w_id = 1, scratch_id = 2;
  ug::gpu_rank_options opts;
  opts.p = p;
  opts.job = "device-process-test";
  opts.scratch = {{scratch_id, 4}};
  opts.fresh = [] {
    ug::rank_state st;
    st.tensors.push_back(
        {"w", w_id, std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4})});
    return st;
  };
  opts.start_gpu = [](understudy::child_context& ctx) {
    return ug::spawn_device_process(ctx.system, child_options(true), ctx.path);
  };
  auto log = std::make_shared<understudy::event_log>();
  understudy::supervisor_spec spec;
  spec.name = "gpus";
  spec.events = log;
  spec.children = {ug::gpu_rank_child("rank-0", opts)};
  auto sup = understudy::spawn_supervisor(ps.sys, spec);
  REQUIRE(sup);
  REQUIRE(ps.ask<caf::ok_atom>(*sup, understudy::await_ready_atom::value));
  auto first = ps.ask<caf::actor>(*sup, understudy::resolve_atom::value, std::string{"rank-0"});
  REQUIRE(first);
  // Fresh state on the device, then step 1 (w * 2) checkpointed, then w * 3 not.
  REQUIRE(download(ps, *first, ug::whole(w_id, 4)) == std::vector<float>{1, 2, 3, 4});
  ug::op_batch twice;
  twice.scale(2.0f, ug::whole(w_id, 4));
  REQUIRE(ps.ask<ug::batch_result>(*first, ug::gpu_run_atom::value, twice));
  auto stored = ps.ask<uint64_t>(*first, ug::rank_checkpoint_atom::value, uint64_t{1});
  REQUIRE(stored);
  REQUIRE(*stored == 1);
  REQUIRE(ps.ask<uint64_t>(*first, ug::rank_probe_atom::value) == uint64_t{1});
  ug::op_batch thrice;
  thrice.scale(3.0f, ug::whole(w_id, 4));
  REQUIRE(ps.ask<ug::batch_result>(*first, ug::gpu_run_atom::value, thrice));
  REQUIRE(download(ps, *first, ug::whole(w_id, 4)) == std::vector<float>{6, 12, 18, 24});
  // The fault poisons the child process: it exits with 70, the rank with it,
  // and the supervisor starts a rank with a fresh process.
  ps.self->send(*first, ug::gpu_run_atom::value, fault_batch());
  auto second =
      ps.ask<caf::actor>(*sup, understudy::resolve_atom::value, std::string{"rank-0"}, uint64_t{2});
  REQUIRE(second);
  REQUIRE(*second != *first);
  // It serves step 1's state, uploaded before it announced itself.
  REQUIRE(download(ps, *second, ug::whole(w_id, 4)) == std::vector<float>{2, 4, 6, 8});
  REQUIRE(download(ps, *second, ug::whole(scratch_id, 4)).size() == 4);
  ug::op_batch next;
  next.scale(3.0f, ug::whole(w_id, 4));
  next.download(ug::whole(w_id, 4));
  auto res = ps.ask<ug::batch_result>(*second, ug::gpu_run_atom::value, next);
  REQUIRE(res);
  REQUIRE(res->downloads.at(0) == std::vector<float>{6, 12, 18, 24});
  bool named = false;
  for (const auto& ev : log->snapshot())
    if (ev.kind == understudy::event_kind::child_exited && ev.child == "rank-0")
      named = ev.reason.find("poisoned") != std::string::npos &&
              ev.reason.find("exited with status 70") != std::string::npos;
  REQUIRE(named);
  REQUIRE(log->count(understudy::event_kind::child_restarted, "rank-0") == 1);
  REQUIRE(log->count(understudy::event_kind::state_restored, "rank-0") >= 1);
  SECTION("a rank rewinds to an older step or to the fresh state on request") {
    REQUIRE(ps.ask<uint64_t>(*second, ug::rank_checkpoint_atom::value, uint64_t{2}) == uint64_t{2});
    REQUIRE(ps.ask<uint64_t>(*second, ug::rank_restore_atom::value, uint64_t{1}) == uint64_t{1});
    REQUIRE(download(ps, *second, ug::whole(w_id, 4)) == std::vector<float>{2, 4, 6, 8});
    REQUIRE(ps.ask<uint64_t>(*second, ug::rank_restore_atom::value, uint64_t{0}) == uint64_t{0});
    REQUIRE(download(ps, *second, ug::whole(w_id, 4)) == std::vector<float>{1, 2, 3, 4});
    REQUIRE(ps.ask<uint64_t>(*second, ug::rank_restore_atom::value, uint64_t{5}) == uint64_t{2});
    REQUIRE(download(ps, *second, ug::whole(w_id, 4)) == std::vector<float>{6, 12, 18, 24});
  }
  SECTION("a version that the child finds corrupt as it copies it is skipped for the one before") {
    REQUIRE(ps.ask<uint64_t>(*second, ug::rank_checkpoint_atom::value, uint64_t{2}) == uint64_t{2});
    auto paths = (*store)->paths();
    REQUIRE(paths);
    REQUIRE(paths->size() == 1);
    // The store maps its file writable (MDB_WRITEMAP): flip a byte of version
    // 2's tensor where it lies in the file, which the child reads too.
    auto err = (*store)->read(paths->front(), 2, [](const understudy::record_view& rec) {
      auto chunks = rec.tensor_chunks(0);
      REQUIRE(chunks);
      const_cast<std::byte*>(chunks->at(0).data)[5] ^= std::byte{0x40};
      return caf::error{};
    });
    REQUIRE_FALSE(err);
    REQUIRE(ps.ask<uint64_t>(*second, ug::rank_restore_atom::value, uint64_t{5}) == uint64_t{1});
    REQUIRE(download(ps, *second, ug::whole(w_id, 4)) == std::vector<float>{2, 4, 6, 8});
    bool reported = false;
    for (const auto& ev : log->snapshot())
      if (ev.kind == understudy::event_kind::state_fallback && ev.child == "rank-0")
        reported = ev.reason.find("skipped step 2") != std::string::npos &&
                   ev.reason.find("checksum mismatch") != std::string::npos;
    REQUIRE(reported);
  }
  ps.self->monitor(*sup);
  ps.self->send_exit(*sup, caf::exit_reason::user_shutdown);
  ps.down_reason(*sup);
  ps.self->send_exit(p.writer, caf::exit_reason::user_shutdown);
  std::filesystem::remove_all(dir);
}

TEST_CASE(
    "a real illegal address ends a cuda device process with status 70 and its rank "
    "restores into a fresh process",
    "[gpu][device_process][gpu_rank]") {
  if (ug::discover_devices().empty()) {
    WARN("skipped: no CUDA device"
         << (ug::cuda_compiled() ? " (built with CUDA)" : " (built without CUDA)"));
    return;
  }
  process_system ps;
  auto dir = test::make_temp_dir();
  understudy::state_store_config scfg;
  scfg.directory = dir;
  scfg.mode = understudy::durability::none;
  auto store = understudy::state_store::open(scfg);
  REQUIRE(store);
  understudy::persistence p;
  p.store = *store;
  p.writer = understudy::spawn_state_writer(ps.sys, *store);
  const size_t n = 1 << 20;
  ug::gpu_rank_options opts;
  opts.p = p;
  opts.job = "cuda-device-process-test";
  opts.fresh = [n] {
    ug::rank_state st;
    st.tensors.push_back({"w", 1, std::make_shared<std::vector<float>>(n, 1.5f)});
    return st;
  };
  opts.start_gpu = [](understudy::child_context& ctx) {
    auto o = child_options(false);
    o.gpu = ug::gpu_actor_options{ug::backend_kind::cuda, 0};
    return ug::spawn_device_process(ctx.system, o, ctx.path);
  };
  auto log = std::make_shared<understudy::event_log>();
  understudy::supervisor_spec spec;
  spec.name = "gpus";
  spec.events = log;
  spec.children = {ug::gpu_rank_child("rank-0", opts)};
  auto sup = understudy::spawn_supervisor(ps.sys, spec);
  REQUIRE(sup);
  REQUIRE(ps.ask<caf::ok_atom>(*sup, understudy::await_ready_atom::value));
  auto first = ps.ask<caf::actor>(*sup, understudy::resolve_atom::value, std::string{"rank-0"});
  REQUIRE(first);
  auto info = ps.ask<std::string>(*first, ug::gpu_info_atom::value);
  REQUIRE(info);
  REQUIRE(info->rfind("cuda:0", 0) == 0);
  ug::op_batch twice;
  twice.scale(2.0f, ug::whole(1, n));
  REQUIRE(ps.ask<ug::batch_result>(*first, ug::gpu_run_atom::value, twice));
  REQUIRE(ps.ask<uint64_t>(*first, ug::rank_checkpoint_atom::value, uint64_t{1}) == uint64_t{1});
  REQUIRE(ps.ask<ug::batch_result>(*first, ug::gpu_run_atom::value, twice));
  ps.self->send(*first, ug::gpu_run_atom::value, fault_batch());
  auto second =
      ps.ask<caf::actor>(*sup, understudy::resolve_atom::value, std::string{"rank-0"}, uint64_t{2});
  REQUIRE(second);
  auto w = download(ps, *second, ug::whole(1, n));
  REQUIRE(w == std::vector<float>(n, 3.0f));
  bool named = false;
  for (const auto& ev : log->snapshot())
    if (ev.kind == understudy::event_kind::child_exited && ev.child == "rank-0") {
      INFO(ev.reason);
      named = ev.reason.find("exited with status 70") != std::string::npos &&
              ev.reason.find("cudaErrorIllegalAddress") != std::string::npos;
    }
  REQUIRE(named);
  ps.self->monitor(*sup);
  ps.self->send_exit(*sup, caf::exit_reason::user_shutdown);
  ps.down_reason(*sup);
  ps.self->send_exit(p.writer, caf::exit_reason::user_shutdown);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a process without a device process role runs as itself", "[gpu_ops][device_process]") {
  REQUIRE_FALSE(ug::run_device_process_if_requested());
  REQUIRE(ug::device_exit_status(caf::error{}) == 0);
  REQUIRE(ug::device_exit_status(ug::make_error(ug::gpu_errc::sticky_cuda_error, "x")) ==
          understudy::host_status::poisoned);
  REQUIRE(ug::device_exit_status(ug::make_error(ug::gpu_errc::cuda_error, "x")) ==
          understudy::host_status::failed);
}

TEST_CASE("device process child", "[.][device_process_child]") {
  // Runs only when selected by its tag, in a child started by the tests above.
  auto status = ug::run_device_process_if_requested();
  REQUIRE(status);
  std::_Exit(*status);
}
