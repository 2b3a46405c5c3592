#include "understudy/actors/numerics/mlp.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include "understudy/actors/numerics/optimizer.hpp"
#include "understudy/actors/numerics/splitmix64.hpp"

using namespace understudy;
using namespace understudy::actors;

namespace {

/// Random inputs in [-1, 1) and labels for `n` samples of `net`.
struct sample_set {
  std::vector<float> inputs;
  std::vector<uint32_t> labels;

  batch_view view(size_t dim) const { return {inputs.data(), labels.data(), labels.size(), dim}; }
};

sample_set random_samples(const mlp& net, size_t n, uint64_t seed) {
  splitmix64 gen{seed};
  sample_set s;
  s.inputs.resize(n * net.input_dim());
  for (auto& x : s.inputs)
    x = 2.0f * gen.uniform01() - 1.0f;
  for (size_t b = 0; b < n; ++b)
    s.labels.push_back(static_cast<uint32_t>(gen.below(net.class_count())));
  return s;
}

/// Initialised parameters with small random biases (init sets them to zero,
/// which would leave bias gradients of dead units untested).
std::vector<double> test_parameters(const mlp& net, uint64_t seed) {
  std::vector<float> p(net.parameter_count());
  net.init_parameters(p.data(), seed);
  splitmix64 gen{seed + 1};
  for (size_t l = 0; l < net.layer_count(); ++l) {
    const auto& s = net.layer(l);
    for (size_t j = 0; j < s.fan_out; ++j)
      p[s.biases + j] = 0.2f * gen.uniform01() - 0.1f;
  }
  return {p.begin(), p.end()};
}

/// Checks the double-precision gradient of `net` against central finite
/// differences, parameter by parameter: |analytic - numeric| must not exceed
/// 1e-6 * max(|analytic|, |numeric|) + 1e-9.
void check_gradient_by_finite_differences(const mlp& net, size_t n, uint64_t seed) {
  const auto samples = random_samples(net, n, seed);
  const auto batch = samples.view(net.input_dim());
  auto params = test_parameters(net, seed);
  std::vector<double> grad(params.size());
  const double loss = net.loss_and_gradient(params.data(), batch, grad.data());
  CHECK(loss == Approx(net.loss(params.data(), batch)).epsilon(1e-15));
  constexpr double h = 1e-6;
  double worst = 0;
  size_t nonzero = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    const double saved = params[k];
    params[k] = saved + h;
    const double up = net.loss(params.data(), batch);
    params[k] = saved - h;
    const double down = net.loss(params.data(), batch);
    params[k] = saved;
    const double numeric = (up - down) / (2 * h);
    const double scale = std::max(std::abs(grad[k]), std::abs(numeric));
    const double error = std::abs(grad[k] - numeric);
    worst = std::max(worst, error / std::max(scale, 1e-3));
    if (grad[k] != 0)
      ++nonzero;
    INFO(net.describe() << ": parameter " << k << " analytic " << grad[k] << " numeric "
                        << numeric);
    CHECK(error <= 1e-6 * scale + 1e-9);
  }
  // Guard against a vacuous pass: most parameters must have a gradient.
  CHECK(nonzero > params.size() / 2);
  INFO("worst relative error " << worst);
  CHECK(worst < 1e-6);
}

} // namespace

TEST_CASE("mlp gradients match central finite differences", "[actors][mlp]") {
  SECTION("one hidden layer") {
    check_gradient_by_finite_differences(mlp{{5, 7, 3}}, 4, 11);
  }
  SECTION("two hidden layers") {
    check_gradient_by_finite_differences(mlp{{4, 6, 5, 3}}, 5, 12);
  }
  SECTION("no hidden layer (softmax regression)") {
    check_gradient_by_finite_differences(mlp{{3, 4}}, 3, 13);
  }
  SECTION("a layer wider than one kernel tile") {
    check_gradient_by_finite_differences(mlp{{3, 300, 2}}, 2, 14);
  }
}

TEST_CASE("mlp float gradients agree with the double-precision computation", "[actors][mlp]") {
  const mlp net{{8, 16, 12, 4}};
  const auto samples = random_samples(net, 16, 21);
  const auto batch = samples.view(net.input_dim());
  const auto params = test_parameters(net, 21);
  std::vector<double> grad(params.size());
  const double loss = net.loss_and_gradient(params.data(), batch, grad.data());

  const std::vector<float> params_f(params.begin(), params.end());
  std::vector<float> grad_f(params.size());
  const float loss_f = net.loss_and_gradient(params_f.data(), batch, grad_f.data());
  CHECK(loss_f == Approx(loss).epsilon(1e-6));
  double max_grad = 0;
  for (auto g : grad)
    max_grad = std::max(max_grad, std::abs(g));
  for (size_t k = 0; k < grad.size(); ++k) {
    INFO("parameter " << k);
    CHECK(std::abs(grad_f[k] - grad[k]) <= 1e-5 * max_grad);
  }
}

TEST_CASE("mlp computations are bit-identical across calls", "[actors][mlp]") {
  const mlp net{{6, 300, 5}};
  const auto samples = random_samples(net, 9, 3);
  const auto batch = samples.view(net.input_dim());
  std::vector<float> params(net.parameter_count());
  net.init_parameters(params.data(), 3);
  std::vector<float> g1(params.size());
  std::vector<float> g2(params.size(), 123.0f); // overwritten, not accumulated
  const float l1 = net.loss_and_gradient(params.data(), batch, g1.data());
  const float l2 = net.loss_and_gradient(params.data(), batch, g2.data());
  CHECK(std::memcmp(&l1, &l2, sizeof(float)) == 0);
  CHECK(std::memcmp(g1.data(), g2.data(), sizeof(float) * g1.size()) == 0);
  const float l3 = net.loss(params.data(), batch);
  CHECK(std::memcmp(&l1, &l3, sizeof(float)) == 0);
}

TEST_CASE("the loss and gradient of a tiny net match hand-computed values", "[actors][mlp]") {
  // 2-2-2: W0 = [[1, -1], [0.5, 1]], b0 = (0, -2), W1 = [[1, 0], [3, 4]], b1 = (0, 1),
  // W[i][j] connecting input i to output j.
  const mlp net{{2, 2, 2}};
  REQUIRE(net.parameter_count() == 12);
  CHECK(net.layer(0).weights == 0);
  CHECK(net.layer(0).biases == 4);
  CHECK(net.layer(1).weights == 6);
  CHECK(net.layer(1).biases == 10);
  const std::vector<float> params{1, -1, 0.5f, 1, 0, -2, 1, 0, 3, 4, 0, 1};
  // x = (1, 2), y = 0: hidden z = (2, -1), ReLU (2, 0), logits (2, 1),
  //   loss = log(e^2 + e^1) - 2 = log(1 + e^-1).
  // x = (0, 1), y = 1: hidden z = (0.5, -1), ReLU (0.5, 0), logits (0.5, 1),
  //   loss = log(e^0.5 + e^1) - 1 = log(1 + e^-0.5).
  const std::vector<float> inputs{1, 2, 0, 1};
  const std::vector<uint32_t> labels{0, 1};
  const batch_view both{inputs.data(), labels.data(), 2, 2};
  const double expected_loss = (std::log(1 + std::exp(-1.0)) + std::log(1 + std::exp(-0.5))) / 2;
  CHECK(net.loss(params.data(), both) == Approx(expected_loss).epsilon(1e-6));

  // Gradient of the first sample alone: softmax (2, 1) = (1 - q, q) with
  // q = 1 / (1 + e) = 0.26894142, so d logits = (-q, q); d W1 = h d^T with
  // h = (2, 0); d h = W1 d = (-q, q) masked by ReLU to (-q, 0); d W0 = x (-q, 0).
  const batch_view first{inputs.data(), labels.data(), 1, 2};
  std::vector<float> grad(12);
  const float loss = net.loss_and_gradient(params.data(), first, grad.data());
  CHECK(loss == Approx(std::log(1 + std::exp(-1.0))).epsilon(1e-6));
  const double q = 1 / (1 + std::exp(1.0));
  const std::vector<double> expected{-q, 0, -2 * q, 0, -q, 0, -2 * q, 2 * q, 0, 0, -q, q};
  for (size_t k = 0; k < 12; ++k) {
    INFO("parameter " << k);
    CHECK(grad[k] == Approx(expected[k]).epsilon(1e-6).margin(1e-7));
  }

  std::array<uint32_t, 2> predicted{};
  net.predict(params.data(), inputs.data(), 2, predicted.data());
  CHECK(predicted == std::array<uint32_t, 2>{0, 1});
  CHECK(accuracy(net, params.data(), both) == 1.0);
}

TEST_CASE("the loss stays finite for huge logits", "[actors][mlp]") {
  const mlp net{{1, 2}};
  // Logits (1000 x, -1000 x): a naive softmax overflows exp.
  const std::vector<float> params{1000, -1000, 0, 0};
  const std::vector<float> inputs{1, 1};
  const std::vector<uint32_t> labels{0, 1};
  std::vector<float> grad(4);
  const float loss =
      net.loss_and_gradient(params.data(), {inputs.data(), labels.data(), 2, 1}, grad.data());
  // Sample 0 is certain and right (loss 0), sample 1 certain and wrong (loss 2000).
  CHECK(loss == Approx(1000.0f));
  for (auto g : grad)
    CHECK(std::isfinite(g));
}

TEST_CASE("mlp initialisation is deterministic per seed and identical by slices", "[actors][mlp]") {
  const mlp net{{5, 7, 3}};
  const auto n = net.parameter_count();
  REQUIRE(n == 5 * 7 + 7 + 7 * 3 + 3);
  std::vector<float> a(n);
  std::vector<float> b(n);
  std::vector<float> c(n);
  net.init_parameters(a.data(), 42);
  net.init_parameters(b.data(), 42);
  net.init_parameters(c.data(), 43);
  CHECK(std::memcmp(a.data(), b.data(), sizeof(float) * n) == 0);
  size_t differing = 0;
  for (size_t k = 0; k < n; ++k)
    if (a[k] != c[k])
      ++differing;
  CHECK(differing == 35 + 21); // every weight; biases are 0 for any seed

  // Golden values: the same on every platform and standard library.
  CHECK(a[0] == 0x1.0ef8d4p-1f);   // layer 0, bound sqrt(6/5)
  CHECK(a[1] == -0x1.7d7da0p-1f);  // layer 0
  CHECK(a[42] == -0x1.68013ap-2f); // output layer, bound sqrt(6/10)

  // Shards initialise their own slices, with boundaries anywhere.
  for (size_t cut : {size_t{0}, size_t{1}, size_t{35}, size_t{38}, size_t{42}, size_t{60}, n}) {
    std::vector<float> pieces(n, -1.0f);
    net.init_parameter_range(pieces.data(), 0, cut, 42);
    net.init_parameter_range(pieces.data() + cut, cut, n - cut, 42);
    INFO("cut at " << cut);
    CHECK(std::memcmp(pieces.data(), a.data(), sizeof(float) * n) == 0);
  }
}

TEST_CASE("mlp initialisation has He scale for hidden layers and Glorot for the output",
          "[actors][mlp]") {
  const mlp net{{400, 300, 10}};
  std::vector<float> p(net.parameter_count());
  net.init_parameters(p.data(), 5);
  auto check_layer = [&](size_t l, double bound) {
    const auto& s = net.layer(l);
    const size_t count = s.fan_in * s.fan_out;
    double sum = 0;
    double sum_sq = 0;
    double largest = 0;
    for (size_t k = s.weights; k < s.weights + count; ++k) {
      largest = std::max(largest, std::abs(double{p[k]}));
      sum += p[k];
      sum_sq += double{p[k]} * p[k];
    }
    const double mean = sum / count;
    const double variance = sum_sq / count - mean * mean;
    INFO("layer " << l);
    CHECK(largest <= bound);
    CHECK(largest > 0.99 * bound);
    CHECK(std::abs(mean) < 0.02 * bound);
    CHECK(variance == Approx(bound * bound / 3).epsilon(0.04)); // uniform [-a, a]: a^2 / 3
    for (size_t j = 0; j < s.fan_out; ++j)
      CHECK(p[s.biases + j] == 0.0f);
  };
  check_layer(0, std::sqrt(6.0 / 400));        // variance 2 / fan_in
  check_layer(1, std::sqrt(6.0 / (300 + 10))); // variance 2 / (fan_in + fan_out)
}

TEST_CASE("an mlp trained with sgd separates a synthetic data set", "[actors][mlp]") {
  // Three classes in 4-D: class c lies in the box of half-width 1 around 2 e_c,
  // so argmax(x0, x1, x2) separates them.
  const mlp net{{4, 16, 3}};
  auto make = [](size_t n, uint64_t seed) {
    splitmix64 gen{seed};
    sample_set s;
    for (size_t b = 0; b < n; ++b) {
      auto c = static_cast<uint32_t>(gen.below(3));
      for (size_t i = 0; i < 4; ++i)
        s.inputs.push_back((i == c ? 2.0f : 0.0f) + 2.0f * gen.uniform01() - 1.0f);
      s.labels.push_back(c);
    }
    return s;
  };
  const auto train = make(960, 1);
  const auto test = make(300, 2);
  const auto test_view = test.view(4);

  for (auto kind : {optimizer_kind::sgd, optimizer_kind::momentum, optimizer_kind::adam}) {
    INFO("optimizer " << to_string(kind));
    optimizer_config config;
    config.kind = kind;
    config.lr = kind == optimizer_kind::sgd ? 0.1f : 0.01f;
    optimizer opt{config, net.parameter_count()};
    std::vector<float> params(net.parameter_count());
    net.init_parameters(params.data(), 7);
    std::vector<float> grad(params.size());
    const float initial_loss = net.loss(params.data(), test_view);
    constexpr size_t batch_size = 32;
    for (size_t step = 0; step < 300; ++step) {
      const size_t first = (step * batch_size) % train.labels.size();
      const batch_view batch{train.inputs.data() + first * 4, train.labels.data() + first,
                             batch_size, 4};
      net.loss_and_gradient(params.data(), batch, grad.data());
      opt.step(params.data(), grad.data());
    }
    CHECK(net.loss(params.data(), test_view) < 0.5f * initial_loss);
    CHECK(accuracy(net, params.data(), test_view) > 0.9);
  }
}

TEST_CASE("an mlp rejects impossible shapes", "[actors][mlp]") {
  CHECK_THROWS_AS(mlp({}), std::invalid_argument);
  CHECK_THROWS_WITH(mlp({64}), "mlp: needs at least 2 layer sizes (inputs and classes), got 1");
  CHECK_THROWS_WITH(mlp({64, 0, 10}), "mlp: layer size 1 is zero");
  const size_t huge = size_t{1} << 40;
  CHECK_THROWS_WITH(mlp({huge, huge, 2}), Catch::Contains("overflows"));
  CHECK(mlp({64, 128, 10}).describe() == "mlp 64-128-10");
  CHECK(mlp({64, 128, 10}).parameter_count() == 64 * 128 + 128 + 128 * 10 + 10);
}

TEST_CASE("an mlp rejects batches that do not fit it", "[actors][mlp]") {
  const mlp net{{3, 4, 2}};
  std::vector<float> params(net.parameter_count());
  std::vector<float> grad(params.size());
  const std::vector<float> inputs(6, 0.5f);
  const std::vector<uint32_t> labels{0, 1};

  const batch_view wrong_dim{inputs.data(), labels.data(), 3, 2};
  CHECK_THROWS_WITH(net.loss_and_gradient(params.data(), wrong_dim, grad.data()),
                    "mlp::loss_and_gradient: batch input_dim 2 does not match the model's 3 "
                    "inputs (mlp 3-4-2)");
  const std::vector<uint32_t> bad_labels{0, 2};
  CHECK_THROWS_WITH(net.loss(params.data(), {inputs.data(), bad_labels.data(), 2, 3}),
                    "mlp::loss: label 2 of sample 1 is out of range for 2 classes");
  CHECK_THROWS_WITH(net.loss(params.data(), {inputs.data(), labels.data(), 0, 3}),
                    Catch::Contains("empty batch"));
  CHECK_THROWS_WITH(net.loss(params.data(), {nullptr, labels.data(), 2, 3}),
                    Catch::Contains("no inputs"));
  CHECK_THROWS_WITH(
      net.loss_and_gradient(params.data(), {inputs.data(), labels.data(), 2, 3}, nullptr),
      Catch::Contains("no gradient buffer"));
  CHECK_THROWS_WITH(net.init_parameter_range(params.data(), 20, 10, 1),
                    "mlp::init_parameter_range: 10 parameters from 20 exceed the 26 "
                    "parameters of mlp 3-4-2");
  CHECK_THROWS_WITH(accuracy(net, params.data(), wrong_dim), Catch::Contains("input_dim"));
}
