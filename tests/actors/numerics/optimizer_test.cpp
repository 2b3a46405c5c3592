#include "understudy/actors/numerics/optimizer.hpp"

#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "understudy/actors/numerics/splitmix64.hpp"
#include "understudy/core/errors.hpp"

using namespace understudy;
using namespace understudy::actors;

namespace {

// Three steps on p = (1, -2) with these gradients; expected values below are
// worked out by hand from the formulas in optimizer.hpp (Adam's in double).
const std::array<std::array<float, 2>, 3> gradients{{{0.5f, -1.0f}, {0.25f, 0.5f}, {-1.0f, 2.0f}}};

std::array<std::array<double, 2>, 3> run_three_steps(optimizer_config config) {
  optimizer opt{config, 2};
  std::array<float, 2> p{1.0f, -2.0f};
  std::array<std::array<double, 2>, 3> result{};
  for (size_t t = 0; t < 3; ++t) {
    opt.step(p.data(), gradients[t].data());
    result[t] = {p[0], p[1]};
  }
  CHECK(opt.steps() == 3);
  return result;
}

void check_close(const std::array<std::array<double, 2>, 3>& got,
                 const std::array<std::array<double, 2>, 3>& want) {
  for (size_t t = 0; t < 3; ++t)
    for (size_t i = 0; i < 2; ++i) {
      INFO("step " << t + 1 << ", element " << i);
      CHECK(got[t][i] == Approx(want[t][i]).epsilon(1e-6));
    }
}

} // namespace

TEST_CASE("sgd updates match hand-computed values", "[actors][optimizer]") {
  optimizer_config config;
  config.kind = optimizer_kind::sgd;
  config.lr = 0.1f;
  // p -= 0.1 * g: (0.95, -1.9), (0.925, -1.95), (1.025, -2.15).
  check_close(run_three_steps(config), {{{0.95, -1.9}, {0.925, -1.95}, {1.025, -2.15}}});
}

TEST_CASE("sgd with weight decay adds the L2 term to the gradient", "[actors][optimizer]") {
  optimizer_config config;
  config.kind = optimizer_kind::sgd;
  config.lr = 0.1f;
  config.weight_decay = 0.1f;
  optimizer opt{config, 2};
  std::array<float, 2> p{1.0f, -2.0f};
  opt.step(p.data(), gradients[0].data());
  // g' = (0.5 + 0.1, -1 - 0.2) = (0.6, -1.2); p = (1 - 0.06, -2 + 0.12).
  CHECK(p[0] == Approx(0.94).epsilon(1e-6));
  CHECK(p[1] == Approx(-1.88).epsilon(1e-6));
}

TEST_CASE("momentum updates match hand-computed values", "[actors][optimizer]") {
  optimizer_config config;
  config.kind = optimizer_kind::momentum;
  config.lr = 0.1f;
  config.momentum = 0.9f;
  // m1 = g1 = (0.5, -1)                 p1 = (0.95, -1.9)
  // m2 = 0.9 m1 + g2 = (0.7, -0.4)      p2 = (0.88, -1.86)
  // m3 = 0.9 m2 + g3 = (-0.37, 1.64)    p3 = (0.917, -2.024)
  check_close(run_three_steps(config), {{{0.95, -1.9}, {0.88, -1.86}, {0.917, -2.024}}});
}

TEST_CASE("adam updates with bias correction match hand-computed values", "[actors][optimizer]") {
  optimizer_config config;
  config.kind = optimizer_kind::adam;
  config.lr = 0.1f;
  // Step 1: m/c1 = g and v/c2 = g^2, so each parameter moves by lr against the
  // sign of its gradient: (0.9, -1.9).
  // Step 2: m = (0.07, -0.04), v = (3.1225e-4, 1.249e-3), c1 = 0.19, c2 = 1.999e-3.
  // Step 3: m = (-0.037, 0.164), v = (1.31193775e-3, 5.247751e-3), c1 = 0.271,
  //         c2 = 2.997001e-3.
  check_close(run_three_steps(config), {{{0.900000002, -1.900000001},
                                         {0.8067820404774624, -1.873366297370903},
                                         {0.8274177428854115, -1.9190994760260234}}});
}

TEST_CASE("an optimizer holds the state its kind needs", "[actors][optimizer]") {
  optimizer_config config;
  config.kind = optimizer_kind::sgd;
  optimizer sgd{config, 4};
  CHECK(sgd.state_m().empty());
  CHECK(sgd.state_v().empty());
  config.kind = optimizer_kind::momentum;
  optimizer momentum{config, 4};
  CHECK(momentum.state_m().size() == 4);
  CHECK(momentum.state_v().empty());
  config.kind = optimizer_kind::adam;
  optimizer adam{config, 4};
  CHECK(adam.state_m().size() == 4);
  CHECK(adam.state_v().size() == 4);
  CHECK(adam.size() == 4);
  CHECK(adam.steps() == 0);
}

TEST_CASE("a restored optimizer continues bit-identically to an uninterrupted one",
          "[actors][optimizer]") {
  constexpr size_t n = 5;
  constexpr int total_steps = 7;
  constexpr int restore_at = 3;
  splitmix64 gen{2024};
  std::vector<std::array<float, n>> grads(total_steps);
  for (auto& g : grads)
    for (auto& x : g)
      x = 2.0f * gen.uniform01() - 1.0f;
  const std::array<float, n> start{0.5f, -0.25f, 1.5f, 0.0f, -3.0f};

  for (auto kind : {optimizer_kind::sgd, optimizer_kind::momentum, optimizer_kind::adam}) {
    INFO("optimizer " << to_string(kind));
    optimizer_config config;
    config.kind = kind;
    config.lr = 0.05f;
    config.weight_decay = 0.01f;

    optimizer straight{config, n};
    auto p_straight = start;
    for (int t = 0; t < total_steps; ++t)
      straight.step(p_straight.data(), grads[t].data());

    auto p_resumed = start;
    std::vector<float> m;
    std::vector<float> v;
    uint64_t steps = 0;
    {
      optimizer first{config, n};
      for (int t = 0; t < restore_at; ++t)
        first.step(p_resumed.data(), grads[t].data());
      steps = first.steps();
      m = first.state_m();
      v = first.state_v();
    }
    optimizer second{config, n};
    REQUIRE_FALSE(second.restore(steps, m, v));
    CHECK(second.steps() == restore_at);
    for (int t = restore_at; t < total_steps; ++t)
      second.step(p_resumed.data(), grads[t].data());

    CHECK(second.steps() == straight.steps());
    CHECK(std::memcmp(p_resumed.data(), p_straight.data(), sizeof(float) * n) == 0);
    CHECK(second.state_m() == straight.state_m());
    CHECK(second.state_v() == straight.state_v());
  }
}

TEST_CASE("a state snapshot stays as it was while the optimizer steps on", "[actors][optimizer]") {
  constexpr size_t n = 3;
  optimizer_config config;
  config.kind = optimizer_kind::adam;
  config.lr = 0.1f;
  optimizer opt{config, n};
  std::array<float, n> params{1.0f, 2.0f, 3.0f};
  const std::array<float, n> grad{0.5f, -1.0f, 0.25f};
  opt.step(params.data(), grad.data());
  auto m = opt.shared_m();
  auto v = opt.shared_v();
  const std::vector<float> m_then = *m;
  const std::vector<float> v_then = *v;
  // Without a snapshot held, a step changes the state in place (no copy).
  const float* before = opt.state_m().data();
  opt.step(params.data(), grad.data());
  CHECK(*m == m_then); // the snapshot is untouched
  CHECK(*v == v_then);
  CHECK(opt.state_m() != m_then); // the optimizer moved on in a copy
  CHECK(opt.state_m().data() != before);
  m.reset();
  v.reset();
  const float* now = opt.state_m().data();
  opt.step(params.data(), grad.data());
  CHECK(opt.state_m().data() == now);
}

TEST_CASE("optimizers over slices update like one optimizer over the whole vector",
          "[actors][optimizer]") {
  constexpr size_t n = 7;
  constexpr size_t cut = 3;
  splitmix64 gen{77};
  for (auto kind : {optimizer_kind::sgd, optimizer_kind::momentum, optimizer_kind::adam}) {
    INFO("optimizer " << to_string(kind));
    optimizer_config config;
    config.kind = kind;
    config.lr = 0.02f;
    config.weight_decay = 0.001f;
    optimizer whole{config, n};
    optimizer head{config, cut};
    optimizer tail{config, n - cut};
    std::array<float, n> p_whole{};
    for (auto& x : p_whole)
      x = gen.uniform01();
    auto p_sliced = p_whole;
    for (int t = 0; t < 5; ++t) {
      std::array<float, n> g{};
      for (auto& x : g)
        x = 2.0f * gen.uniform01() - 1.0f;
      whole.step(p_whole.data(), g.data());
      head.step(p_sliced.data(), g.data());
      tail.step(p_sliced.data() + cut, g.data() + cut);
    }
    CHECK(std::memcmp(p_whole.data(), p_sliced.data(), sizeof(float) * n) == 0);
  }
}

TEST_CASE("an out-of-place step leaves its input alone and writes what the in-place step does",
          "[actors][optimizer]") {
  constexpr size_t n = 9;
  splitmix64 gen{5};
  for (auto kind : {optimizer_kind::sgd, optimizer_kind::momentum, optimizer_kind::adam}) {
    INFO("optimizer " << to_string(kind));
    optimizer_config config;
    config.kind = kind;
    config.lr = 0.03f;
    config.weight_decay = 0.002f;
    optimizer in_place{config, n};
    optimizer out_of_place{config, n};
    std::array<float, n> p{};
    for (auto& x : p)
      x = gen.uniform01();
    auto a = p, b = p; // out_of_place alternates between two buffers
    for (int t = 0; t < 6; ++t) {
      std::array<float, n> g{};
      for (auto& x : g)
        x = 2.0f * gen.uniform01() - 1.0f;
      in_place.step(p.data(), g.data());
      auto before = a;
      out_of_place.step(a.data(), b.data(), g.data());
      CHECK(a == before);
      std::swap(a, b);
    }
    CHECK(std::memcmp(p.data(), a.data(), sizeof(float) * n) == 0);
  }
}

TEST_CASE("optimizer kinds print and parse by name", "[actors][optimizer]") {
  for (auto kind : {optimizer_kind::sgd, optimizer_kind::momentum, optimizer_kind::adam}) {
    auto parsed = parse_optimizer_kind(to_string(kind));
    REQUIRE(parsed);
    CHECK(*parsed == kind);
  }
  CHECK(to_string(optimizer_kind::momentum) == "momentum");
}

TEST_CASE("an unknown optimizer name is rejected with a message naming it", "[actors][optimizer]") {
  auto parsed = parse_optimizer_kind("rmsprop");
  REQUIRE_FALSE(parsed);
  CHECK(describe(parsed.error()) ==
        "invalid_argument: unknown optimizer 'rmsprop' (expected sgd, momentum or adam)");
  CHECK_FALSE(parse_optimizer_kind("SGD"));
  CHECK_FALSE(parse_optimizer_kind(""));
}

TEST_CASE("invalid optimizer configs are rejected naming the field", "[actors][optimizer]") {
  optimizer_config ok;
  ok.kind = optimizer_kind::adam;
  CHECK_FALSE(validate(ok));

  auto bad = ok;
  bad.lr = 0.0f;
  CHECK(describe(validate(bad)) == "invalid_argument: optimizer lr must be finite and > 0, got 0");
  bad = ok;
  bad.lr = std::numeric_limits<float>::infinity();
  CHECK_THAT(describe(validate(bad)), Catch::Contains("lr"));
  bad = ok;
  bad.beta2 = 1.0f;
  CHECK_THAT(describe(validate(bad)), Catch::Contains("beta2 must be in [0, 1), got 1"));
  bad = ok;
  bad.beta1 = -0.5f;
  CHECK_THAT(describe(validate(bad)), Catch::Contains("beta1"));
  bad = ok;
  bad.epsilon = 0.0f;
  CHECK_THAT(describe(validate(bad)), Catch::Contains("epsilon"));
  bad = ok;
  bad.weight_decay = -1.0f;
  CHECK_THAT(describe(validate(bad)), Catch::Contains("weight_decay"));

  optimizer_config momentum;
  momentum.kind = optimizer_kind::momentum;
  momentum.momentum = 1.5f;
  CHECK_THAT(describe(validate(momentum)), Catch::Contains("momentum must be in [0, 1), got 1.5"));
  // Fields a kind does not use are not checked.
  momentum.kind = optimizer_kind::sgd;
  CHECK_FALSE(validate(momentum));

  CHECK_THROWS_WITH((optimizer{bad, 3}), Catch::Contains("weight_decay"));
}

TEST_CASE("restoring state of the wrong shape fails and leaves the optimizer unchanged",
          "[actors][optimizer]") {
  optimizer_config config;
  config.kind = optimizer_kind::adam;
  optimizer opt{config, 3};
  std::array<float, 3> p{1, 2, 3};
  std::array<float, 3> g{1, 1, 1};
  opt.step(p.data(), g.data());
  auto m = opt.state_m();

  // A momentum checkpoint (no second moment) for an adam optimizer.
  auto err = opt.restore(10, m, {});
  REQUIRE(err);
  CHECK(describe(err) ==
        "invalid_argument: optimizer state does not fit this optimizer (adam, 3 "
        "parameters): got 3 first-moment and 0 second-moment values, expected "
        "3 and 3");
  CHECK(opt.steps() == 1);
  CHECK(opt.state_m() == m);
  CHECK(opt.state_v().size() == 3);
  CHECK(opt.restore(1, {1, 2}, {1, 2, 3}));
}
