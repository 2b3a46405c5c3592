// examples/own_model: a model written against the public model interface (a
// small convolutional network) computes true gradients, initialises slices as
// the whole, and trains as a fault-tolerant job to the fault-free digest.

#include <cmath>
#include <regex>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "own_model/small_cnn.hpp"
#include "support/cluster_test_util.hpp"
#include "support/temp_dir.hpp"

using own_model::small_cnn;
using understudy::actors::batch_view;

TEST_CASE("small_cnn's gradient matches finite differences of its loss", "[own_model]") {
  small_cnn net{3, 4};
  std::vector<float> params(net.parameter_count());
  net.init_parameters(params.data(), 7);
  // Biases start at zero; give them values so that their gradients are tested too.
  for (size_t k = 0; k < params.size(); ++k)
    if (params[k] == 0.0f)
      params[k] = 0.05f * static_cast<float>(k % 7) - 0.1f;
  std::vector<float> inputs(3 * 64);
  for (size_t i = 0; i < inputs.size(); ++i)
    inputs[i] = static_cast<float>((i * 37) % 17) / 16.0f;
  std::vector<uint32_t> labels{0, 3, 1};
  batch_view batch{inputs.data(), labels.data(), 3, 64};
  std::vector<float> grad(params.size());
  const float loss = net.loss_and_gradient(params.data(), batch, grad.data());
  CHECK(loss == Approx(net.loss(params.data(), batch)));
  // Central differences in double over a sample of every part of the vector.
  size_t checked = 0;
  for (size_t k = 0; k < params.size(); k += 3) {
    auto p = params;
    const float h = 2e-3f;
    p[k] = params[k] + h;
    const double up = net.loss(p.data(), batch);
    p[k] = params[k] - h;
    const double down = net.loss(p.data(), batch);
    INFO("parameter " << k);
    CHECK(grad[k] == Approx((up - down) / (2.0 * h)).margin(3e-3));
    ++checked;
  }
  CHECK(checked > 100);
}

TEST_CASE("small_cnn initialises any slice exactly as the whole vector", "[own_model]") {
  small_cnn net;
  std::vector<float> whole(net.parameter_count());
  net.init_parameters(whole.data(), 3);
  std::vector<float> slice(100);
  net.init_parameter_range(slice.data(), 50, slice.size(), 3);
  CHECK(std::equal(slice.begin(), slice.end(), whole.begin() + 50));
  CHECK_THROWS_AS(net.init_parameter_range(slice.data(), net.parameter_count() - 10, 20, 3),
                  std::invalid_argument);
}

TEST_CASE("own_model trains its network to the same digest with actors crashing",
          "[own_model][training]") {
  test::temp_dir dir{"own-model"};
  auto digest = [&](const std::string& name, const std::string& faults, std::string& out) {
    int status = 0;
    out = understudy::testing::run_program(UNDERSTUDY_OWN_MODEL_PATH,
                                           "--steps 600 --state-dir " + dir.path + "/" + name +
                                               (faults.empty() ? "" : " --fault " + faults),
                                           status);
    CHECK(status == 0);
    std::smatch m;
    return std::regex_search(
               out, m,
               std::regex{
                   R"(final: steps=600 accuracy=(\S+) params_digest=([0-9a-f]+) restarts=(\d+))"})
               ? m[2].str() + " after " + m[3].str() + " restarts"
               : std::string{};
  };
  std::string clean_out, faulty_out;
  auto clean = digest("clean", "", clean_out);
  auto faulty = digest("faulty", "worker:1@100,shard:0@250,trainer@400,loader:0@500", faulty_out);
  INFO(clean_out << faulty_out);
  REQUIRE_FALSE(clean.empty());
  REQUIRE_FALSE(faulty.empty());
  CHECK(clean.substr(0, 16) == faulty.substr(0, 16));
  CHECK_THAT(clean, Catch::EndsWith("after 0 restarts"));
  CHECK_THAT(faulty, Catch::EndsWith("after 4 restarts"));
  CHECK_THAT(clean_out, Catch::Contains("own_model: cnn 8x8 conv3x3x8 dense 288-10"));
}
