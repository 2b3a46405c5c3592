// The op table (gpu/src/op_table.hpp, private): every op has a name, a check
// that refuses bad arguments with a clear error, and an enqueue that reaches
// the backend.

#include "op_table.hpp"

#include <cstddef>
#include <map>
#include <vector>

#include <catch2/catch.hpp>

#include "executor.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/gpu/backend.hpp"
#include "understudy/gpu/errors.hpp"

namespace ug = understudy::gpu;

namespace {

/// One valid op of each code, on buffers 1..4 (4 floats), 5 (2 labels) and 9.
std::map<ug::op_code, ug::op> samples() {
  ug::op_batch b;
  b.allocate(10, 4);
  b.release(9);
  b.upload(ug::whole(1, 4), std::vector<float>{1, -2, 3, -4});
  b.download(ug::whole(1, 4));
  b.fill(ug::whole(1, 4), 2.0f);
  b.copy(ug::whole(1, 4), ug::whole(2, 4));
  b.gemm(false, false, 2, 2, 2, 1.0f, ug::whole(1, 4), ug::whole(2, 4), 0.0f, ug::whole(3, 4));
  b.add_bias(ug::whole(1, 4), ug::slice{2, 0, 2}, 2, 2);
  b.relu(ug::whole(1, 4), ug::whole(2, 4));
  b.relu_grad(ug::whole(1, 4), ug::whole(2, 4), ug::whole(3, 4));
  b.bias_grad(ug::whole(1, 4), 2, 2, ug::slice{2, 0, 2});
  b.softmax_xent(ug::whole(1, 4), ug::whole(5, 2), 2, 2, 0.5f, ug::slice{3, 0, 2}, ug::whole(4, 4));
  b.axpy(0.5f, ug::whole(1, 4), ug::whole(2, 4));
  b.scale(2.0f, ug::whole(1, 4));
  b.sgd_step(ug::whole(1, 4), ug::whole(2, 4), ug::sgd_params{});
  b.momentum_step(ug::whole(1, 4), ug::whole(2, 4), ug::whole(3, 4), ug::momentum_params{});
  b.adam_step(ug::whole(1, 4), ug::whole(2, 4), ug::whole(3, 4), ug::whole(4, 4),
              ug::adam_params{});
  b.inject_fault(ug::fault_kind::illegal_address);
  b.all_reduce(ug::whole(1, 4));
  b.broadcast(ug::whole(1, 4), 0);
  std::map<ug::op_code, ug::op> out;
  for (auto& x : b.ops)
    out.emplace(x.code, x);
  return out;
}

ug::buffer_sizes sizes_of(const ug::executor& exec) {
  ug::buffer_sizes out;
  for (ug::buffer_id id : {1u, 2u, 3u, 4u, 5u, 9u, 10u})
    if (auto [ptr, count] = exec.buffer_of(id); ptr != nullptr)
      out.emplace(id, count);
  return out;
}

} // namespace

TEST_CASE("the op table has one entry per op code, in order, named as to_string names it",
          "[gpu_ops]") {
  auto table = ug::op_table();
  REQUIRE(table.size == static_cast<size_t>(ug::op_code::broadcast) + 1);
  size_t i = 0;
  for (const auto& spec : table) {
    CHECK(static_cast<size_t>(spec.code) == i++);
    CHECK(!spec.name.empty());
    CHECK(ug::to_string(spec.code) == spec.name);
    CHECK(spec.check != nullptr);
    CHECK(spec.staging != nullptr);
    CHECK(spec.enqueue != nullptr);
    CHECK(ug::find_op(spec.code) == &spec);
  }
  CHECK(ug::find_op(static_cast<ug::op_code>(200)) == nullptr);
  CHECK(ug::to_string(static_cast<ug::op_code>(200)) == "unknown");
}

TEST_CASE("every op's check refuses bad arguments with an error naming the op and the problem",
          "[gpu_ops]") {
  auto good = samples();
  REQUIRE(good.size() == ug::op_table().size);
  ug::buffer_sizes sizes{{1, 4}, {2, 4}, {3, 4}, {4, 4}, {5, 2}, {9, 4}};
  for (const auto& spec : ug::op_table()) {
    INFO(spec.name);
    // No operands, sizes or scalars at all.
    ug::op empty;
    empty.code = spec.code;
    auto copy = sizes;
    ug::op_checker c{copy, 3, empty};
    auto err = spec.check(c);
    REQUIRE(err);
    CHECK(ug::is(err, ug::gpu_errc::invalid_argument));
    auto text = understudy::describe(err);
    CHECK(text.find("op 3 (" + std::string{spec.name} + "): ") != std::string::npos);
    CHECK(text.find("expected") != std::string::npos);
    // The valid sample passes.
    auto ok = sizes;
    ug::op_checker g{ok, 0, good.at(spec.code)};
    CHECK(!spec.check(g));
    // A payload on anything but an upload.
    if (spec.code != ug::op_code::upload) {
      auto x = good.at(spec.code);
      x.data = {1.0f};
      auto more = sizes;
      ug::op_checker d{more, 0, x};
      auto bad = spec.check(d);
      REQUIRE(bad);
      CHECK(understudy::describe(bad).find("only uploads carry data") != std::string::npos);
    }
    // An operand in a buffer that does not exist.
    if (!good.at(spec.code).operands.empty() && spec.code != ug::op_code::allocate) {
      auto x = good.at(spec.code);
      x.operands[0].buffer = 77;
      auto more = sizes;
      ug::op_checker d{more, 0, x};
      auto bad = spec.check(d);
      REQUIRE(bad);
      CHECK(understudy::describe(bad).find("no buffer 77") != std::string::npos);
    }
  }
}

TEST_CASE("every op's enqueue reaches the backend", "[gpu_ops]") {
  auto be = ug::make_cpu_backend();
  ug::executor exec{*be};
  ug::op_batch setup;
  for (ug::buffer_id id : {1u, 2u, 3u, 4u, 9u})
    setup.allocate(id, 4);
  setup.allocate(5, 2);
  setup.upload(ug::whole(5, 2), std::vector<uint32_t>{0, 1});
  for (ug::buffer_id id : {1u, 2u, 3u, 4u})
    setup.fill(ug::whole(id, 4), 0.25f);
  REQUIRE(!exec.validate(setup));
  std::vector<std::byte> setup_staging(ug::executor::staging_bytes(setup));
  std::vector<ug::download_slot> none;
  REQUIRE(!exec.enqueue(setup, setup_staging.data(), none));

  auto good = samples();
  for (const auto& spec : ug::op_table()) {
    INFO(spec.name);
    const auto& x = good.at(spec.code);
    auto sizes = sizes_of(exec);
    ug::op_checker c{sizes, 0, x};
    REQUIRE(!spec.check(c));
    std::vector<std::byte> staging(spec.staging(x));
    std::vector<ug::download_slot> downloads;
    ug::op_run run{exec, staging.data(), downloads};
    auto err = spec.enqueue(run, x);
    CHECK(run.staged == staging.size());
    switch (spec.code) {
      case ug::op_code::inject_fault:
      case ug::op_code::all_reduce:
      case ug::op_code::broadcast:
        // The CPU backend has no device to fault and runs no collectives.
        CHECK(ug::is(err, ug::gpu_errc::unsupported));
        break;
      default:
        CHECK(!err);
    }
    switch (spec.code) {
      case ug::op_code::allocate:
        CHECK(exec.buffer_of(10).second == 4);
        break;
      case ug::op_code::release:
        CHECK(exec.buffer_of(9).first == nullptr);
        break;
      case ug::op_code::download: {
        REQUIRE(downloads.size() == 1);
        const auto* got = reinterpret_cast<const float*>(staging.data() + downloads[0].offset);
        CHECK(std::vector<float>(got, got + 4) == std::vector<float>{1, -2, 3, -4});
        break;
      }
      case ug::op_code::fill:
        CHECK(exec.buffer_of(1).first[3] == 2.0f);
        break;
      default:
        break;
    }
  }
}
