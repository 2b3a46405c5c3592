#include "understudy/actors/numerics/model.hpp"

#include <stdexcept>
#include <vector>

#include <catch2/catch.hpp>

using namespace understudy;
using namespace understudy::actors;

namespace {

/// A model with no parameters that predicts the class of the largest input:
/// shows that accuracy and validate_batch work through the interface alone.
class argmax_model final : public model {
public:
  size_t parameter_count() const override { return 0; }
  size_t input_dim() const override { return 3; }
  size_t class_count() const override { return 3; }
  std::string describe() const override { return "argmax"; }
  void init_parameter_range(float*, size_t, size_t, uint64_t) const override {}
  float loss_and_gradient(const float*, const batch_view&, float*) const override { return 0; }
  float loss(const float*, const batch_view&) const override { return 0; }
  void predict(const float*, const float* inputs, size_t n, uint32_t* labels) const override {
    for (size_t b = 0; b < n; ++b) {
      const float* row = inputs + b * 3;
      uint32_t best = 0;
      for (uint32_t j = 1; j < 3; ++j)
        if (row[j] > row[best])
          best = j;
      labels[b] = best;
    }
  }
};

} // namespace

TEST_CASE("accuracy counts the samples a model predicts right", "[actors][model]") {
  argmax_model m;
  const std::vector<float> inputs{1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0};
  const std::vector<uint32_t> labels{0, 1, 2, 2};
  CHECK(accuracy(m, nullptr, {inputs.data(), labels.data(), 4, 3}) == 0.75);
  CHECK(accuracy(m, nullptr, {nullptr, nullptr, 0, 3}) == 0.0);
}

TEST_CASE("validate_batch names the first way a batch does not fit a model", "[actors][model]") {
  argmax_model m;
  const std::vector<float> inputs(6, 0.0f);
  const std::vector<uint32_t> labels{0, 3};
  CHECK_NOTHROW(validate_batch(m, {nullptr, nullptr, 0, 3}, "test"));
  CHECK_THROWS_WITH(validate_batch(m, {inputs.data(), labels.data(), 2, 4}, "test"),
                    "test: batch input_dim 4 does not match the model's 3 inputs (argmax)");
  CHECK_THROWS_WITH(validate_batch(m, {inputs.data(), nullptr, 2, 3}, "test"),
                    "test: batch of 2 samples has no labels");
  CHECK_THROWS_WITH(validate_batch(m, {inputs.data(), labels.data(), 2, 3}, "test"),
                    "test: label 3 of sample 1 is out of range for 3 classes");
}
