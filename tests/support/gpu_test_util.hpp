#pragma once
// Helpers for the gpu tests: backends to run an operation test on, blocking
// transfers (tests are not actors, so they may wait), and seeded data.
//
// Skipping: a test that needs a CUDA device calls `cuda_or_skip()`; without a
// device it prints the warning "skipped: no CUDA device" and the test returns
// passing. CTest reports such tests as skipped (SKIP_REGULAR_EXPRESSION in
// tests/CMakeLists.txt); run directly, the warning shows in Catch's output.

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <catch2/catch.hpp>

#include "understudy/actors/numerics/splitmix64.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/gpu/backend.hpp"
#include "understudy/gpu/collective.hpp"
#include "understudy/gpu/device.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/gpu/gpu_actor.hpp"

namespace gpu_test {

namespace ug = understudy::gpu;

/// A real actor system (CUDA callbacks arrive on CUDA threads, which the
/// test_coordinator cannot take) and a blocking requester.
struct cuda_system {
  static caf::actor_system_config& init(caf::actor_system_config& cfg) {
    cfg.set("logger.console-verbosity", caf::atom("quiet"));
    cfg.set("logger.file-verbosity", caf::atom("quiet"));
    cfg.set("scheduler.max-threads", 2);
    understudy::register_error_categories(cfg);
    ug::register_gpu_types(cfg);
    ug::register_collective_types(cfg);
    return cfg;
  }

  cuda_system() : sys(init(cfg)), self(sys) {
    // nop
  }

  template <class T, class... Ts>
  caf::expected<T> ask(const caf::actor& a, Ts&&... xs) {
    caf::expected<T> result{caf::sec::request_timeout};
    self->request(a, std::chrono::seconds(60), std::forward<Ts>(xs)...)
        .receive([&](T& r) { result = std::move(r); },
                 [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  /// Runs `b` on GPU actor `a`.
  caf::expected<ug::batch_result> run(const caf::actor& a, ug::op_batch b) {
    return ask<ug::batch_result>(a, ug::gpu_run_atom::value, std::move(b));
  }

  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;
};

/// The warning that marks a test as skipped; CTest matches it.
constexpr const char* skip_message = "skipped: no CUDA device";

/// Returns a CUDA backend on the first device, or null after warning that the
/// test is skipped (no device, or built without CUDA).
inline std::unique_ptr<ug::backend> cuda_or_skip() {
  auto devices = ug::discover_devices();
  if (devices.empty()) {
    WARN(skip_message << (ug::cuda_compiled() ? " (built with CUDA)" : " (built without CUDA)"));
    return nullptr;
  }
  auto be = ug::make_cuda_backend(devices.front().ordinal);
  if (!be)
    FAIL("make_cuda_backend: " << understudy::describe(be.error()));
  return std::move(*be);
}

/// A device buffer owned by a test; freed (stream-ordered) on destruction.
class device_buffer {
public:
  device_buffer(ug::backend& be, size_t bytes) : be_(&be), bytes_(bytes) {
    auto ptr = be.allocate(bytes);
    REQUIRE(ptr);
    ptr_ = *ptr;
  }

  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;

  ~device_buffer() { be_->release(ptr_); }

  float* f() const { return static_cast<float*>(ptr_); }
  uint32_t* u() const { return static_cast<uint32_t*>(ptr_); }
  size_t bytes() const { return bytes_; }

private:
  ug::backend* be_;
  void* ptr_ = nullptr;
  size_t bytes_;
};

/// Uploads `values` into a new device buffer and waits for it.
template <class T>
std::unique_ptr<device_buffer> to_device(ug::backend& be, const std::vector<T>& values) {
  auto buf = std::make_unique<device_buffer>(be, values.size() * sizeof(T));
  if (!values.empty()) {
    auto staging = be.allocate_host(buf->bytes());
    REQUIRE(staging);
    std::memcpy(*staging, values.data(), buf->bytes());
    REQUIRE_FALSE(be.upload(buf->f(), *staging, buf->bytes()));
    REQUIRE_FALSE(be.synchronize());
    be.release_host(*staging);
  }
  return buf;
}

/// Waits for the backend and downloads `n` floats of `src`.
inline std::vector<float> to_host(ug::backend& be, const float* src, size_t n) {
  std::vector<float> result(n);
  if (n == 0)
    return result;
  auto staging = be.allocate_host(n * sizeof(float));
  REQUIRE(staging);
  REQUIRE_FALSE(be.download(*staging, src, n * sizeof(float)));
  auto err = be.synchronize();
  if (err)
    FAIL("synchronize: " << understudy::describe(err));
  std::memcpy(result.data(), *staging, n * sizeof(float));
  be.release_host(*staging);
  return result;
}

/// Returns `n` floats uniform in [lo, hi), reproducible from `seed`.
inline std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::vector<float> result(n);
  for (size_t i = 0; i < n; ++i)
    result[i] = lo + (hi - lo) * understudy::actors::splitmix64::to_unit_float(
                                     understudy::actors::splitmix64::at(seed, i));
  return result;
}

/// Returns whether `x` and `y` hold the same bits (so NaN equals NaN, -0 differs from 0).
inline bool same_bits(float x, float y) {
  return std::memcmp(&x, &y, sizeof(float)) == 0;
}

} // namespace gpu_test
