// The GPU actor's protocol: on the CPU backend deterministically with CAF's
// test_coordinator (no sleeps), on the CUDA backend with a real scheduler when
// a device exists ([gpu], skipped visibly otherwise). A test double of a
// backend plays the CUDA failures that a machine without a GPU cannot produce.

#include "understudy/gpu/gpu_actor.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

#include "support/gpu_test_util.hpp"
#include "support/state_fixture.hpp"
#include "support/state_test_util.hpp"
#include "support/test_fixture.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/numerics/optimizer.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/gpu/forwarding_backend.hpp"

extern char** environ;

using namespace gpu_test;
namespace ug = understudy::gpu;

namespace {

/// Kills a test's actor at the end of the test and runs until it is gone.
struct actor_guard {
  test::fixture& f;
  caf::actor hdl;
  ~actor_guard() {
    f.self->send_exit(hdl, caf::exit_reason::kill);
    f.run();
  }
};

caf::actor spawn_cpu(test::fixture& f) {
  auto a = ug::spawn_gpu_actor(f.sys, ug::gpu_actor_options{});
  REQUIRE(a);
  f.run();
  return *a;
}

// -- an MLP training step as one batch ------------------------------------------------

/// Buffer ids of the MLP step.
constexpr ug::buffer_id params_id = 1, grad_id = 2, velocity_id = 3, inputs_id = 4, labels_id = 5,
                        loss_id = 6, act_base = 100, delta_base = 200;

/// Allocates the buffers of `net`'s training step for `batch` samples and uploads `params`.
ug::op_batch mlp_setup(const understudy::actors::mlp& net, size_t batch,
                       const std::vector<float>& params) {
  ug::op_batch b;
  const auto n = net.parameter_count();
  b.allocate(params_id, n);
  b.allocate(grad_id, n);
  b.allocate(velocity_id, n);
  b.fill(ug::whole(velocity_id, n), 0.0f);
  b.upload(ug::whole(params_id, n), params);
  b.allocate(inputs_id, batch * net.input_dim());
  b.allocate(labels_id, batch);
  b.allocate(loss_id, batch);
  for (size_t l = 0; l < net.layer_count(); ++l) {
    b.allocate(act_base + l, batch * net.layer(l).fan_out);
    b.allocate(delta_base + l, batch * net.layer(l).fan_out);
  }
  return b;
}

/// One step: upload the batch, forward, loss, backward, momentum update;
/// downloads the per-sample loss (0), the gradient (1) and the parameters (2).
ug::op_batch mlp_step(const understudy::actors::mlp& net, const std::vector<float>& inputs,
                      const std::vector<uint32_t>& labels, const ug::momentum_params& hp) {
  ug::op_batch b;
  const size_t batch = labels.size();
  const size_t layers = net.layer_count();
  const auto n = net.parameter_count();
  auto params = [&](size_t first, size_t count) { return ug::slice{params_id, first, count}; };
  auto grad = [&](size_t first, size_t count) { return ug::slice{grad_id, first, count}; };
  auto act = [&](size_t l) { // input of layer l
    return l == 0 ? ug::whole(inputs_id, batch * net.input_dim())
                  : ug::whole(act_base + l - 1, batch * net.layer(l - 1).fan_out);
  };
  auto delta = [&](size_t l) { return ug::whole(delta_base + l, batch * net.layer(l).fan_out); };
  b.upload(act(0), inputs);
  b.upload(ug::whole(labels_id, batch), labels);
  for (size_t l = 0; l < layers; ++l) {
    const auto& s = net.layer(l);
    auto out = ug::whole(act_base + l, batch * s.fan_out);
    b.gemm(false, false, batch, s.fan_out, s.fan_in, 1.0f, act(l),
           params(s.weights, s.fan_in * s.fan_out), 0.0f, out);
    b.add_bias(out, params(s.biases, s.fan_out), batch, s.fan_out);
    if (l + 1 < layers)
      b.relu(out, out);
  }
  const size_t classes = net.class_count();
  b.softmax_xent(act(layers), ug::whole(labels_id, batch), batch, classes,
                 1.0f / static_cast<float>(batch), ug::whole(loss_id, batch), delta(layers - 1));
  for (size_t l = layers; l-- > 0;) {
    const auto& s = net.layer(l);
    b.gemm(true, false, s.fan_in, s.fan_out, batch, 1.0f, act(l), delta(l), 0.0f,
           grad(s.weights, s.fan_in * s.fan_out));
    b.bias_grad(delta(l), batch, s.fan_out, grad(s.biases, s.fan_out));
    if (l > 0) {
      b.gemm(false, true, batch, s.fan_in, s.fan_out, 1.0f, delta(l),
             params(s.weights, s.fan_in * s.fan_out), 0.0f, delta(l - 1));
      b.relu_grad(act(l), delta(l - 1), delta(l - 1));
    }
  }
  b.momentum_step(ug::whole(params_id, n), ug::whole(grad_id, n), ug::whole(velocity_id, n), hp);
  b.download(ug::whole(loss_id, batch));
  b.download(ug::whole(grad_id, n));
  b.download(ug::whole(params_id, n));
  return b;
}

/// Runs two MLP training steps through a GPU actor with `ask` and checks them
/// against understudy::actors::mlp (loss and gradient within 1e-5, relative to the
/// largest magnitude) and understudy::actors::optimizer applied to the actor's own
/// gradient (parameters bit for bit).
template <class Ask>
void check_mlp_steps(Ask ask) {
  understudy::actors::mlp net{{20, 16, 12, 5}};
  const size_t batch = 9;
  std::vector<float> params(net.parameter_count());
  net.init_parameter_range(params.data(), 0, params.size(), 7);
  understudy::actors::optimizer_config cfg;
  cfg.kind = understudy::actors::optimizer_kind::momentum;
  cfg.lr = 0.05f;
  cfg.momentum = 0.9f;
  understudy::actors::optimizer opt{cfg, params.size()};
  auto setup = ask(mlp_setup(net, batch, params));
  REQUIRE(setup.downloads.empty());
  for (int step = 0; step < 2; ++step) {
    INFO("step " << step);
    auto inputs = random_floats(batch * net.input_dim(), 50 + step, 0.0f, 1.0f);
    std::vector<uint32_t> labels(batch);
    for (size_t i = 0; i < batch; ++i)
      labels[i] = static_cast<uint32_t>((i * 3 + step) % net.class_count());
    understudy::actors::batch_view view{inputs.data(), labels.data(), batch, net.input_dim()};
    std::vector<float> want_grad(params.size());
    const double want_loss = net.loss_and_gradient(params.data(), view, want_grad.data());
    auto res = ask(mlp_step(net, inputs, labels, {cfg.lr, cfg.momentum, 0.0f}));
    REQUIRE(res.downloads.size() == 3);
    double loss = 0.0;
    for (float x : res.downloads[0])
      loss += x;
    loss /= static_cast<double>(batch);
    REQUIRE(std::fabs(loss - want_loss) <= 1e-5 * std::fabs(want_loss));
    const auto& grad = res.downloads[1];
    float largest = 0.0f;
    for (float g : want_grad)
      largest = std::max(largest, std::fabs(g));
    for (size_t i = 0; i < grad.size(); ++i)
      REQUIRE(std::fabs(grad[i] - want_grad[i]) <= 1e-5f * largest);
    opt.step(params.data(), grad.data());
    REQUIRE(std::memcmp(res.downloads[2].data(), params.data(), params.size() * 4) == 0);
  }
}

// -- a backend that fails like CUDA ---------------------------------------------------

/// A CPU backend whose `inject_fault` fails the way CUDA does: the launch
/// succeeds and the stream reports a sticky error at completion (`at_completion`),
/// or the launch itself fails with a recoverable CUDA error.
class faulty_backend final : public ug::forwarding_backend {
public:
  explicit faulty_backend(bool at_completion)
      : ug::forwarding_backend(ug::make_cpu_backend()), at_completion_(at_completion) {
    // nop
  }

  static caf::error sticky() {
    return ug::make_error(ug::gpu_errc::sticky_cuda_error,
                          "stream work on device 0: cudaErrorIllegalAddress (700): an illegal "
                          "memory access was encountered");
  }

  static caf::error launch_failure() {
    return ug::make_error(ug::gpu_errc::cuda_error,
                          "inject_fault illegal_address on device 0: "
                          "cudaErrorInvalidConfiguration (9): invalid configuration argument");
  }

  ug::backend_kind kind() const noexcept override { return ug::backend_kind::cuda; }
  int device() const noexcept override { return 0; }
  std::string describe() const override { return "faulty"; }
  caf::error when_done(ug::completion_handler fn) override {
    fn(poisoned_ ? sticky() : caf::error{});
    return {};
  }
  caf::error check() override { return poisoned_ ? sticky() : caf::error{}; }
  caf::error synchronize() override { return check(); }
  caf::error inject_fault(ug::fault_kind) override {
    if (!at_completion_)
      return launch_failure();
    poisoned_ = true;
    return {};
  }

private:
  bool at_completion_;
  bool poisoned_ = false;
};

ug::op_batch fault_batch() {
  ug::op_batch b;
  b.allocate(1, 4);
  b.fill(ug::whole(1, 4), 1.0f);
  b.inject_fault(ug::fault_kind::illegal_address);
  b.download(ug::whole(1, 4));
  return b;
}

ug::op_batch small_batch(float value) {
  ug::op_batch b;
  b.allocate(9, 2);
  b.fill(ug::whole(9, 2), value);
  b.download(ug::whole(9, 2));
  b.release(9);
  return b;
}

} // namespace

TEST_CASE("a gpu actor on the cpu runs a batch and replies with its downloads",
          "[gpu_ops][gpu_actor]") {
  test::fixture f;
  actor_guard a{f, spawn_cpu(f)};
  ug::op_batch b;
  b.allocate(1, 4);
  b.upload(ug::whole(1, 4), std::vector<float>{1, -2, 3, -4});
  b.relu(ug::whole(1, 4), ug::whole(1, 4));
  b.download(ug::whole(1, 4));
  b.download(ug::whole(1, 4).sub(2, 2));
  auto res = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, b);
  REQUIRE(res);
  REQUIRE(res->downloads == std::vector<std::vector<float>>{{1, 0, 3, 0}, {3, 0}});
  SECTION("buffers live on between batches until released") {
    ug::op_batch b2;
    b2.scale(2.0f, ug::whole(1, 4));
    b2.download(ug::whole(1, 4));
    b2.release(1);
    auto res2 = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, b2);
    REQUIRE(res2);
    REQUIRE(res2->downloads == std::vector<std::vector<float>>{{2, 0, 6, 0}});
    ug::op_batch b3;
    b3.download(ug::whole(1, 4));
    auto res3 = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, b3);
    REQUIRE_FALSE(res3);
    REQUIRE(ug::is(res3.error(), ug::gpu_errc::invalid_argument));
    // The id is free again.
    ug::op_batch b4;
    b4.allocate(1, 1);
    b4.download(ug::whole(1, 1));
    REQUIRE(f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, b4));
  }
  SECTION("it names its backend") {
    auto info = f.ask<std::string>(a.hdl, ug::gpu_info_atom::value);
    REQUIRE(info);
    REQUIRE(*info == "cpu");
  }
  SECTION("an empty batch is answered with no downloads") {
    auto empty = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, ug::op_batch{});
    REQUIRE(empty);
    REQUIRE(empty->downloads.empty());
  }
}

TEST_CASE("a gpu actor rejects a bad batch as a whole and carries on", "[gpu_ops][gpu_actor]") {
  test::fixture f;
  actor_guard a{f, spawn_cpu(f)};
  ug::op_batch setup;
  setup.allocate(1, 6);
  setup.fill(ug::whole(1, 6), 1.0f);
  REQUIRE(f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, setup));
  auto reject = [&](ug::op_batch bad, const std::string& needle) {
    // Every bad batch starts with a valid op that must not run.
    ug::op_batch scale;
    scale.scale(3.0f, ug::whole(1, 6));
    bad.ops.insert(bad.ops.begin(), scale.ops[0]);
    auto res = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, bad);
    REQUIRE_FALSE(res);
    REQUIRE(ug::is(res.error(), ug::gpu_errc::invalid_argument));
    INFO(understudy::describe(res.error()));
    REQUIRE(understudy::describe(res.error()).find(needle) != std::string::npos);
  };
  ug::op_batch b;
  SECTION("an unknown buffer") {
    b.download(ug::whole(7, 1));
    reject(b, "op 1 (download): src: no buffer 7");
  }
  SECTION("a slice outside its buffer") {
    b.fill(ug::slice{1, 4, 3}, 0.0f);
    reject(b, "exceeds the buffer's 6 elements");
  }
  SECTION("a GEMM whose operands do not fit the shape") {
    b.allocate(2, 6);
    b.allocate(3, 4);
    b.gemm(false, false, 2, 2, 3, 1.0f, ug::whole(1, 6), ug::whole(2, 5), 0.0f, ug::whole(3, 4));
    reject(b, "b: buffer 2 [0, +5) has 5 elements, the shape needs 6");
  }
  SECTION("a GEMM writing into its input") {
    b.gemm(false, false, 1, 1, 1, 1.0f, ug::slice{1, 0, 1}, ug::slice{1, 1, 1}, 0.0f,
           ug::slice{1, 0, 1});
    reject(b, "c overlaps an input");
  }
  SECTION("an id allocated twice") {
    b.allocate(1, 2);
    reject(b, "buffer 1 already exists");
  }
  SECTION("an upload of the wrong size") {
    b.upload(ug::whole(1, 6), std::vector<float>{1, 2});
    reject(b, "has 6 elements, the shape needs 2");
  }
  SECTION("a buffer used after its release in the same batch") {
    b.release(1);
    b.download(ug::whole(1, 6));
    reject(b, "op 2 (download): src: no buffer 1");
  }
  SECTION("partly overlapping element-wise operands") {
    b.axpy(1.0f, ug::slice{1, 0, 4}, ug::slice{1, 2, 4});
    reject(b, "partly overlaps");
  }
  // Nothing ran: the buffer still holds ones, and the actor still serves.
  ug::op_batch check;
  check.download(ug::whole(1, 6));
  auto res = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, check);
  REQUIRE(res);
  REQUIRE(res->downloads[0] == std::vector<float>(6, 1.0f));
}

TEST_CASE("a gpu actor answers data errors and unsupported ops without failing",
          "[gpu_ops][gpu_actor]") {
  test::fixture f;
  actor_guard a{f, spawn_cpu(f)};
  ug::op_batch b;
  b.allocate(1, 4);
  b.allocate(2, 2);
  b.allocate(3, 2);
  b.upload(ug::whole(2, 2), std::vector<uint32_t>{0, 5}); // 5 is not below 2 classes
  b.softmax_xent(ug::whole(1, 4), ug::whole(2, 2), 2, 2, 0.5f, ug::whole(3, 2), ug::slice{});
  auto res = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, b);
  REQUIRE_FALSE(res);
  REQUIRE(ug::is(res.error(), ug::gpu_errc::invalid_argument));
  REQUIRE(understudy::describe(res.error()).find("label 5 of row 1") != std::string::npos);
  ug::op_batch fault;
  fault.inject_fault(ug::fault_kind::illegal_address);
  auto res2 = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, fault);
  REQUIRE_FALSE(res2);
  REQUIRE(ug::is(res2.error(), ug::gpu_errc::unsupported));
  // Buffers allocated before the failing op exist: the batch ran up to it.
  ug::op_batch after;
  after.download(ug::whole(2, 2));
  auto res3 = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, after);
  REQUIRE(res3);
  REQUIRE(res3->downloads[0].size() == 2);
}

namespace {

/// A store in a temporary directory holding version 5 of "/job/rank" with
/// the f32 tensor "w" of `n` values w_value(0.5, i) in 4 KiB chunks.
struct stored_rank {
  explicit stored_rank(size_t n) {
    auto cfg = test::test_store_config(dir.path);
    cfg.chunk_size = 4096;
    store = test::open_store(cfg);
    test::commit_all(*store, {test::make_checkpoint("/job/rank", 5, n, 0.5f)});
  }

  ug::restore_plan plan(ug::buffer_id id) const {
    return ug::restore_plan{dir.path, "/job/rank", 5, {ug::restore_target{"w", id}}};
  }

  test::temp_state_dir dir;
  std::shared_ptr<understudy::state_store> store;
};

} // namespace

TEST_CASE("a gpu actor restores a stored tensor chunk by chunk and runs later batches after it",
          "[gpu_ops][gpu_actor][state]") {
  // 40000 floats in 4 KiB chunks: 40 chunks through 4 staging blocks.
  constexpr size_t n = 40000;
  stored_rank stored{n};
  test::fixture f;
  actor_guard a{f, spawn_cpu(f)};
  ug::op_batch setup;
  setup.allocate(1, n);
  setup.fill(ug::whole(1, n), -1.0f);
  REQUIRE(f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, setup));
  // Sent together: the batch must wait for the restore's last chunk.
  ug::op_batch after;
  after.scale(2.0f, ug::whole(1, n));
  after.download(ug::whole(1, n));
  auto h1 = f.self->request(a.hdl, caf::infinite, ug::gpu_restore_atom::value, stored.plan(1));
  auto h2 = f.self->request(a.hdl, caf::infinite, ug::gpu_run_atom::value, after);
  f.run();
  uint64_t bytes = 0;
  h1.receive([&](uint64_t x) { bytes = x; },
             [&](caf::error& err) { FAIL("restore: " << understudy::describe(err)); });
  CHECK(bytes == n * sizeof(float));
  std::vector<float> got;
  h2.receive([&](ug::batch_result& r) { got = std::move(r.downloads.at(0)); },
             [&](caf::error& err) { FAIL("batch: " << understudy::describe(err)); });
  REQUIRE(got.size() == n);
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i)
    wrong += got[i] != 2.0f * test::w_value(0.5f, i) ? 1 : 0;
  CHECK(wrong == 0);
  SECTION("a second restore that arrives meanwhile waits its turn too") {
    auto r1 = f.self->request(a.hdl, caf::infinite, ug::gpu_restore_atom::value, stored.plan(1));
    auto b1 = f.self->request(a.hdl, caf::infinite, ug::gpu_run_atom::value, after);
    auto r2 = f.self->request(a.hdl, caf::infinite, ug::gpu_restore_atom::value, stored.plan(1));
    ug::op_batch read_only;
    read_only.download(ug::whole(1, n));
    auto b2 = f.self->request(a.hdl, caf::infinite, ug::gpu_run_atom::value, read_only);
    f.run();
    for (auto* h : {&r1, &r2})
      h->receive([&](uint64_t x) { CHECK(x == n * sizeof(float)); },
                 [&](caf::error& err) { FAIL("restore: " << understudy::describe(err)); });
    // b1 doubled the first restore; the second restore undid it before b2.
    for (auto* h : {&b1, &b2}) {
      const float factor = h == &b1 ? 2.0f : 1.0f;
      h->receive(
          [&](ug::batch_result& r) {
            size_t off = 0;
            for (size_t i = 0; i < n; ++i)
              off += r.downloads.at(0)[i] != factor * test::w_value(0.5f, i) ? 1 : 0;
            CHECK(off == 0);
          },
          [&](caf::error& err) { FAIL("batch: " << understudy::describe(err)); });
    }
  }
}

TEST_CASE("a gpu actor refuses a restore that does not fit and one that is corrupt, and carries on",
          "[gpu_ops][gpu_actor][state]") {
  constexpr size_t n = 5000;
  stored_rank stored{n};
  test::fixture f;
  actor_guard a{f, spawn_cpu(f)};
  ug::op_batch setup;
  setup.allocate(1, n);
  setup.allocate(2, n - 1);
  setup.fill(ug::whole(2, n - 1), 7.0f);
  REQUIRE(f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, setup));
  SECTION("a buffer of another size") {
    auto res = f.ask<uint64_t>(a.hdl, ug::gpu_restore_atom::value, stored.plan(2));
    REQUIRE_FALSE(res);
    CHECK(ug::is(res.error(), ug::gpu_errc::invalid_argument));
    CHECK(understudy::describe(res.error()).find("/job/rank@5 tensor 'w' holds 20000 bytes") !=
          std::string::npos);
  }
  SECTION("a version that is not stored") {
    auto plan = stored.plan(1);
    plan.step = 7;
    auto res = f.ask<uint64_t>(a.hdl, ug::gpu_restore_atom::value, plan);
    REQUIRE_FALSE(res);
    CHECK(understudy::is(res.error(), understudy::state_errc::not_found));
  }
  SECTION("a store that does not exist") {
    auto plan = stored.plan(1);
    plan.directory = stored.dir.path + "/nowhere";
    auto res = f.ask<uint64_t>(a.hdl, ug::gpu_restore_atom::value, plan);
    REQUIRE_FALSE(res);
    CHECK(understudy::describe(res.error()).find("data.mdb is missing") != std::string::npos);
  }
  SECTION("a tensor the version does not have") {
    auto plan = stored.plan(1);
    plan.targets[0].tensor = "v";
    auto res = f.ask<uint64_t>(a.hdl, ug::gpu_restore_atom::value, plan);
    REQUIRE_FALSE(res);
    CHECK(understudy::is(res.error(), understudy::state_errc::not_found));
  }
  SECTION("a version with a flipped byte in its third chunk") {
    // Closed first: the actor then opens the directory read-only itself.
    stored.store.reset();
    test::flip_byte_in_chunk(stored.dir.path, "/job/rank", 5, 0, 2, 100);
    auto res = f.ask<uint64_t>(a.hdl, ug::gpu_restore_atom::value, stored.plan(1));
    REQUIRE_FALSE(res);
    CHECK(understudy::is(res.error(), understudy::state_errc::corrupt_record));
    CHECK(understudy::describe(res.error()).find("/job/rank@5 tensor w chunk 2") !=
          std::string::npos);
  }
  // The actor still serves, and buffer 2 was not touched.
  ug::op_batch check;
  check.download(ug::whole(2, n - 1));
  auto res = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, check);
  REQUIRE(res);
  CHECK(res->downloads[0] == std::vector<float>(n - 1, 7.0f));
}

TEST_CASE("a gpu actor on the cpu runs an MLP training step as one message like the actors' mlp",
          "[gpu_ops][gpu_actor]") {
  test::fixture f;
  actor_guard a{f, spawn_cpu(f)};
  check_mlp_steps([&](ug::op_batch b) {
    auto res = f.ask<ug::batch_result>(a.hdl, ug::gpu_run_atom::value, std::move(b));
    REQUIRE(res);
    return std::move(*res);
  });
}

TEST_CASE("a stream fault fails every pending batch and ends the gpu actor with the cuda error",
          "[gpu_ops][gpu_actor]") {
  test::fixture f;
  auto hdl = ug::spawn_gpu_actor(f.sys, std::make_unique<faulty_backend>(true));
  f.self->monitor(hdl);
  f.run();
  // Two requests in the mailbox at once: the second is on the stream when the
  // first one's failure comes back.
  auto h1 = f.self->request(hdl, caf::infinite, ug::gpu_run_atom::value, fault_batch());
  auto h2 = f.self->request(hdl, caf::infinite, ug::gpu_run_atom::value, small_batch(2.0f));
  f.run();
  for (auto* h : {&h1, &h2}) {
    bool failed = false;
    h->receive(
        [](ug::batch_result&) { FAIL("a batch succeeded after a sticky fault"); },
        [&](caf::error& err) {
          REQUIRE(ug::is(err, ug::gpu_errc::sticky_cuda_error));
          REQUIRE(understudy::describe(err).find("cudaErrorIllegalAddress") != std::string::npos);
          failed = true;
        });
    REQUIRE(failed);
  }
  caf::error reason;
  REQUIRE(f.exited(hdl, &reason));
  REQUIRE(ug::is(reason, ug::gpu_errc::sticky_cuda_error));
}

TEST_CASE("a cuda error fails the gpu actor and its supervisor restarts it",
          "[gpu_ops][gpu_actor]") {
  test::fixture f;
  const bool at_completion = GENERATE(true, false);
  INFO((at_completion ? "fault reported at completion" : "fault reported at launch"));
  understudy::child_spec child;
  child.id = "gpu";
  child.start = [at_completion](understudy::child_context& ctx) -> caf::expected<caf::actor> {
    return ug::spawn_gpu_actor(ctx.system, std::make_unique<faulty_backend>(at_completion));
  };
  understudy::supervisor_spec spec;
  spec.name = "gpus";
  spec.children = {child};
  auto sup = f.spawn(spec);
  auto first = f.handle(sup, "gpu");
  auto res = f.ask<ug::batch_result>(first, ug::gpu_run_atom::value, fault_batch());
  REQUIRE_FALSE(res);
  const auto want = at_completion ? ug::gpu_errc::sticky_cuda_error : ug::gpu_errc::cuda_error;
  REQUIRE(ug::is(res.error(), want));
  f.run();
  REQUIRE(f.count(understudy::event_kind::child_restarted, "gpu") == 1);
  auto events = f.log->snapshot();
  bool named = false;
  for (auto& ev : events)
    if (ev.kind == understudy::event_kind::child_exited && ev.child == "gpu")
      named = ev.reason.find(at_completion ? "cudaErrorIllegalAddress"
                                           : "cudaErrorInvalidConfiguration") != std::string::npos;
  REQUIRE(named);
  auto second = f.handle(sup, "gpu");
  REQUIRE(second != first);
  auto ok = f.ask<ug::batch_result>(second, ug::gpu_run_atom::value, small_batch(4.0f));
  REQUIRE(ok);
  REQUIRE(ok->downloads[0] == std::vector<float>{4.0f, 4.0f});
}

// -- on a CUDA device ------------------------------------------------------------------

namespace {

/// The exit status of running this test binary on `filter` with its output in
/// `out`, or -1 if it could not be started.
int run_self(const std::string& filter, std::string& out) {
  char path[] = "/tmp/understudy_gpu_fault_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0)
    return -1;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fd, 1);
  posix_spawn_file_actions_adddup2(&actions, fd, 2);
  std::string exe = "/proc/self/exe";
  std::vector<char*> argv{exe.data(), const_cast<char*>(filter.c_str()), nullptr};
  pid_t pid = 0;
  int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fd);
  int status = -1;
  if (rc == 0)
    waitpid(pid, &status, 0);
  std::ifstream in{path};
  std::stringstream text;
  text << in.rdbuf();
  out = text.str();
  unlink(path);
  if (rc != 0 || !WIFEXITED(status))
    return -1;
  return WEXITSTATUS(status);
}

} // namespace

TEST_CASE("a gpu actor on cuda runs an MLP training step as one message like the actors' mlp",
          "[gpu][gpu_actor]") {
  auto probe = cuda_or_skip();
  if (!probe)
    return;
  probe.reset();
  cuda_system cs;
  auto a = ug::spawn_gpu_actor(cs.sys, {ug::backend_kind::cuda, 0});
  REQUIRE(a);
  auto info = cs.self->request(*a, std::chrono::seconds(10), ug::gpu_info_atom::value);
  info.receive([](std::string& name) { REQUIRE(name.rfind("cuda:0", 0) == 0); },
               [](caf::error& err) { FAIL(understudy::describe(err)); });
  check_mlp_steps([&](ug::op_batch b) {
    auto res = cs.run(*a, std::move(b));
    if (!res)
      FAIL(understudy::describe(res.error()));
    return std::move(*res);
  });
  cs.self->send_exit(*a, caf::exit_reason::kill);
}

TEST_CASE("an illegal address on cuda fails the gpu actor with a sticky error in a child process",
          "[gpu][gpu_actor]") {
  if (!cuda_or_skip())
    return;
  // The fault poisons the CUDA context of its process, so it runs in a fresh
  // one: this binary, on the hidden test below.
  std::string out;
  const int status = run_self("[gpu_fault_child]", out);
  INFO(out);
  REQUIRE(status == 0);
  REQUIRE(out.find("All tests passed") != std::string::npos);
}

TEST_CASE("illegal address child process", "[.][gpu_fault_child]") {
  // Runs only when selected by its tag, in the child process started above.
  auto devices = ug::discover_devices();
  REQUIRE_FALSE(devices.empty());
  cuda_system cs;
  auto a = ug::spawn_gpu_actor(cs.sys, {ug::backend_kind::cuda, devices.front().ordinal});
  REQUIRE(a);
  cs.self->monitor(*a);
  auto res = cs.run(*a, fault_batch());
  REQUIRE_FALSE(res);
  INFO(understudy::describe(res.error()));
  REQUIRE(ug::is(res.error(), ug::gpu_errc::sticky_cuda_error));
  REQUIRE(understudy::describe(res.error()).find("cudaErrorIllegalAddress") != std::string::npos);
  caf::error reason;
  cs.self->receive([&](caf::down_msg& dm) { reason = dm.reason; },
                   caf::after(std::chrono::seconds(30)) >> [] { FAIL("the gpu actor lives on"); });
  REQUIRE(ug::is(reason, ug::gpu_errc::sticky_cuda_error));
  // The process is poisoned: a fresh backend cannot even be created.
  auto fresh = ug::make_cuda_backend(devices.front().ordinal);
  REQUIRE_FALSE(fresh);
  REQUIRE(ug::is(fresh.error(), ug::gpu_errc::sticky_cuda_error));
}
