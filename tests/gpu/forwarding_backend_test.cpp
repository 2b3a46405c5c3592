#include "understudy/gpu/forwarding_backend.hpp"

#include <vector>

#include <catch2/catch.hpp>

#include "understudy/core/errors.hpp"
#include "understudy/gpu/errors.hpp"

namespace ug = understudy::gpu;

namespace {

/// Overrides one operation (fill writes twice the value); inherits the rest.
class doubling_fill final : public ug::forwarding_backend {
public:
  using ug::forwarding_backend::forwarding_backend;

  caf::error fill(float* x, size_t n, float value) override {
    ++fills;
    return inner().fill(x, n, 2.0f * value);
  }

  int fills = 0;
};

} // namespace

TEST_CASE("a decorator overriding one backend method forwards all the others", "[gpu]") {
  doubling_fill be{ug::make_cpu_backend()};
  CHECK(be.kind() == ug::backend_kind::cpu);
  CHECK(be.device() == -1);
  CHECK(be.describe() == "cpu");
  auto x = be.allocate(4 * sizeof(float));
  auto y = be.allocate(4 * sizeof(float));
  auto host = be.allocate_host(4 * sizeof(float));
  REQUIRE(x);
  REQUIRE(y);
  REQUIRE(host);
  auto* xf = static_cast<float*>(*x);
  auto* yf = static_cast<float*>(*y);
  std::vector<float> ones{1, 1, 1, 1};
  REQUIRE(!be.upload(yf, ones.data(), 4 * sizeof(float)));
  REQUIRE(!be.fill(xf, 4, 1.5f));
  CHECK(be.fills == 1);
  REQUIRE(!be.axpy(4, 2.0f, xf, yf)); // y = 1 + 2 * 3
  REQUIRE(!be.scale(4, 0.5f, yf));
  REQUIRE(!be.download(*host, yf, 4 * sizeof(float)));
  bool done = false;
  REQUIRE(!be.when_done([&](caf::error err) { done = !err; }));
  CHECK(done);
  CHECK(!be.check());
  CHECK(be.idle());
  CHECK(!be.synchronize());
  auto* got = static_cast<float*>(*host);
  CHECK(std::vector<float>(got, got + 4) == std::vector<float>{3.5f, 3.5f, 3.5f, 3.5f});
  // The inner backend's answers, not the base class defaults.
  auto fault = be.inject_fault(ug::fault_kind::illegal_address);
  CHECK(ug::is(fault, ug::gpu_errc::unsupported));
  CHECK(understudy::describe(fault).find("CPU backend") != std::string::npos);
  auto join = be.comm_join({}, 2, 0);
  CHECK(understudy::describe(join).find("the cpu backend runs no collectives") !=
        std::string::npos);
  // Argument checks are the inner backend's.
  CHECK(ug::is(be.relu(nullptr, xf, 4), ug::gpu_errc::invalid_argument));
  be.release(*x);
  be.release(*y);
  be.release_host(*host);
}
