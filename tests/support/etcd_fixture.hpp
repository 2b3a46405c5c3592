#pragma once
// A local etcd for coordination tests, and blocking waits on a coordinator's
// callbacks (tests are not actors, so they may wait on futures).
//
// Skipping: where etcd cannot start (no etcd-server package), `available()`
// prints the warning "skipped: etcd cannot start: WHY" and returns false; the
// test then returns passing. CTest reports such tests as skipped
// (SKIP_REGULAR_EXPRESSION in tests/CMakeLists.txt).

#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/temp_dir.hpp"
#include "understudy/cluster/etcd_coordinator.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/node/local_etcd.hpp"

namespace etcd_test {

namespace us = understudy;

/// One local etcd in a scratch directory, stopped and removed with the fixture.
struct etcd_fixture {
  test::temp_dir dir{"etcd"};
  std::unique_ptr<us::local_etcd> etcd;
  std::string why_not;

  etcd_fixture() {
    us::local_etcd_options opts;
    opts.data_dir = dir.path;
    auto started = us::local_etcd::start(opts);
    if (started)
      etcd = std::move(*started);
    else
      why_not = us::describe(started.error());
  }

  /// Whether etcd runs; warns visibly if not.
  bool available() const {
    if (!etcd)
      WARN("skipped: etcd cannot start: " << why_not);
    return etcd != nullptr;
  }

  /// Settings that reach this etcd.
  us::coordination_spec spec(std::chrono::milliseconds ttl = std::chrono::seconds(1)) const {
    us::coordination_spec s;
    s.endpoints = {etcd->client_url()};
    s.session_ttl = ttl;
    return s;
  }

  /// A coordinator of node `node` in cluster "c".
  std::shared_ptr<us::etcd_coordinator> make(
      const std::string& node, std::chrono::milliseconds ttl = std::chrono::seconds(1)) const {
    auto c = us::etcd_coordinator::create(spec(ttl), "c", node);
    REQUIRE(c);
    return *c;
  }
};

/// The result of one call, waited for (at most 10 s: a hung call fails the test).
template <class T>
caf::expected<T> wait_for(std::function<void(us::coordinator::callback<T>)> call) {
  auto done = std::make_shared<std::promise<caf::expected<T>>>();
  auto result = done->get_future();
  call([done](caf::expected<T> x) { done->set_value(std::move(x)); });
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready)
    FAIL("a coordinator call did not answer within 10 s");
  return result.get();
}

inline caf::expected<uint64_t> join(us::coordinator& c, const std::string& name) {
  return wait_for<uint64_t>([&](auto cb) { c.join(name, std::move(cb)); });
}

inline caf::expected<caf::unit_t> keep_alive(us::coordinator& c) {
  return wait_for<caf::unit_t>([&](auto cb) { c.keep_alive(std::move(cb)); });
}

inline caf::expected<bool> declare_dead(us::coordinator& c, const std::string& name,
                                        uint64_t epoch) {
  return wait_for<bool>([&](auto cb) { c.declare_dead(name, epoch, std::move(cb)); });
}

inline caf::expected<uint64_t> campaign(us::coordinator& c) {
  return wait_for<uint64_t>([&](auto cb) { c.campaign(std::move(cb)); });
}

inline caf::expected<caf::unit_t> leave(us::coordinator& c) {
  return wait_for<caf::unit_t>([&](auto cb) { c.leave(std::move(cb)); });
}

/// Collects the views a coordinator's watch delivers.
struct view_log {
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<us::coordination_view> views;

  /// Watches `c`, recording into this log (which must outlive `c`).
  void watch(us::coordinator& c) {
    c.watch([this](const us::coordination_view& v) {
      std::lock_guard<std::mutex> guard{mtx};
      views.push_back(v);
      cv.notify_all();
    });
  }

  /// Waits up to `timeout` for a view that satisfies `pred`; the first such view.
  std::optional<us::coordination_view> await(
      std::function<bool(const us::coordination_view&)> pred,
      std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock<std::mutex> guard{mtx};
    std::optional<us::coordination_view> found;
    cv.wait_for(guard, timeout, [&] {
      for (const auto& v : views)
        if (pred(v)) {
          found = v;
          return true;
        }
      return false;
    });
    return found;
  }

  std::vector<us::coordination_view> snapshot() {
    std::lock_guard<std::mutex> guard{mtx};
    return views;
  }
};

} // namespace etcd_test
