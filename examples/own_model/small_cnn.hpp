#pragma once
// A model of your own: a small convolutional network for 8x8 images, written
// against understudy's model interface (understudy/actors/numerics/model.hpp).
//
//   input 8x8 -> conv 3x3, `filters` filters, valid (6x6 each) -> ReLU
//             -> dense (filters*36 -> classes) -> softmax cross-entropy
//
// Everything the interface asks of a model is here: the parameters are one flat
// float vector (conv weights, conv biases, dense weights, dense biases), every
// member is const and deterministic (fixed loop order, no threads), and the
// initial value of parameter i depends only on (seed, i), so that each
// parameter shard initialises its own slice.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <understudy/actors/numerics/model.hpp>
#include <understudy/actors/numerics/splitmix64.hpp>

namespace own_model {

class small_cnn : public understudy::actors::model {
public:
  static constexpr size_t side = 8;          // input images are side x side
  static constexpr size_t kernel = 3;        // 3x3 kernels
  static constexpr size_t out = side - 2;    // 6x6 outputs per filter (valid)
  static constexpr size_t cells = out * out; // 36

  explicit small_cnn(size_t filters = 8, size_t classes = 10)
      : filters_(filters), classes_(classes) {
    if (filters == 0 || classes < 2)
      throw std::invalid_argument("small_cnn: needs at least one filter and two classes");
  }

  size_t parameter_count() const override { return dense_b() + classes_; }
  size_t input_dim() const override { return side * side; }
  size_t class_count() const override { return classes_; }
  std::string describe() const override {
    return "cnn 8x8 conv3x3x" + std::to_string(filters_) + " dense " + std::to_string(features()) +
           "-" + std::to_string(classes_);
  }

  void init_parameter_range(float* dst, size_t first, size_t count, uint64_t seed) const override {
    if (first > parameter_count() || count > parameter_count() - first)
      throw std::invalid_argument("small_cnn::init_parameter_range: out of range");
    for (size_t k = first; k < first + count; ++k) {
      double fan = 0;
      if (k < conv_b())
        fan = kernel * kernel; // a conv weight
      else if (k >= dense_w() && k < dense_b())
        fan = static_cast<double>(features() + classes_); // a dense weight
      if (fan == 0) {
        dst[k - first] = 0.0f; // biases start at zero
        continue;
      }
      const float u = understudy::actors::splitmix64::to_unit_float(
          understudy::actors::splitmix64::at(seed, k));
      dst[k - first] = (2.0f * u - 1.0f) * static_cast<float>(std::sqrt(6.0 / fan));
    }
  }

  float loss_and_gradient(const float* params, const understudy::actors::batch_view& batch,
                          float* grad) const override {
    check(params, batch, "small_cnn::loss_and_gradient");
    if (grad == nullptr)
      throw std::invalid_argument("small_cnn::loss_and_gradient: no gradient buffer");
    std::fill(grad, grad + parameter_count(), 0.0f);
    return run(params, batch, grad);
  }

  float loss(const float* params, const understudy::actors::batch_view& batch) const override {
    check(params, batch, "small_cnn::loss");
    return run(params, batch, nullptr);
  }

  void predict(const float* params, const float* inputs, size_t n,
               uint32_t* labels) const override {
    std::vector<float> hidden(features()), logits(classes_);
    for (size_t i = 0; i < n; ++i) {
      forward(params, inputs + i * input_dim(), hidden.data(), logits.data());
      size_t best = 0;
      for (size_t c = 1; c < classes_; ++c)
        if (logits[c] > logits[best])
          best = c;
      labels[i] = static_cast<uint32_t>(best);
    }
  }

private:
  size_t features() const { return filters_ * cells; }
  // Where each part of the flat parameter vector starts.
  size_t conv_b() const { return filters_ * kernel * kernel; }
  size_t dense_w() const { return conv_b() + filters_; }
  size_t dense_b() const { return dense_w() + classes_ * features(); }

  void check(const float* params, const understudy::actors::batch_view& batch,
             const char* who) const {
    if (params == nullptr)
      throw std::invalid_argument(std::string{who} + ": no parameters");
    understudy::actors::validate_batch(*this, batch, who);
    if (batch.size == 0)
      throw std::invalid_argument(std::string{who} + ": an empty batch");
  }

  /// hidden = ReLU(conv(x)), logits = dense(hidden).
  void forward(const float* p, const float* x, float* hidden, float* logits) const {
    for (size_t f = 0; f < filters_; ++f)
      for (size_t r = 0; r < out; ++r)
        for (size_t c = 0; c < out; ++c) {
          float sum = p[conv_b() + f];
          for (size_t i = 0; i < kernel; ++i)
            for (size_t j = 0; j < kernel; ++j)
              sum += p[f * kernel * kernel + i * kernel + j] * x[(r + i) * side + c + j];
          hidden[f * cells + r * out + c] = sum > 0 ? sum : 0.0f;
        }
    for (size_t k = 0; k < classes_; ++k) {
      float sum = p[dense_b() + k];
      const float* w = p + dense_w() + k * features();
      for (size_t h = 0; h < features(); ++h)
        sum += w[h] * hidden[h];
      logits[k] = sum;
    }
  }

  /// The mean cross-entropy over the batch; with `grad`, adds its gradient.
  float run(const float* p, const understudy::actors::batch_view& batch, float* grad) const {
    std::vector<float> hidden(features()), logits(classes_), dlogit(classes_), dhidden(features());
    const float scale = 1.0f / static_cast<float>(batch.size);
    double total = 0;
    for (size_t s = 0; s < batch.size; ++s) {
      const float* x = batch.inputs + s * input_dim();
      forward(p, x, hidden.data(), logits.data());
      float top = logits[0];
      for (size_t k = 1; k < classes_; ++k)
        top = std::max(top, logits[k]);
      double z = 0;
      for (size_t k = 0; k < classes_; ++k)
        z += std::exp(static_cast<double>(logits[k] - top));
      const uint32_t label = batch.labels[s];
      total += std::log(z) - static_cast<double>(logits[label] - top);
      if (grad == nullptr)
        continue;
      // d loss / d logit = softmax - one-hot, scaled to the batch mean.
      for (size_t k = 0; k < classes_; ++k)
        dlogit[k] = (static_cast<float>(std::exp(static_cast<double>(logits[k] - top)) / z) -
                     (k == label ? 1.0f : 0.0f)) *
                    scale;
      std::fill(dhidden.begin(), dhidden.end(), 0.0f);
      for (size_t k = 0; k < classes_; ++k) {
        float* gw = grad + dense_w() + k * features();
        const float* w = p + dense_w() + k * features();
        for (size_t h = 0; h < features(); ++h) {
          gw[h] += dlogit[k] * hidden[h];
          dhidden[h] += dlogit[k] * w[h];
        }
        grad[dense_b() + k] += dlogit[k];
      }
      // Back through the ReLU into the convolution.
      for (size_t f = 0; f < filters_; ++f)
        for (size_t r = 0; r < out; ++r)
          for (size_t c = 0; c < out; ++c) {
            const size_t h = f * cells + r * out + c;
            if (hidden[h] <= 0)
              continue;
            const float d = dhidden[h];
            grad[conv_b() + f] += d;
            for (size_t i = 0; i < kernel; ++i)
              for (size_t j = 0; j < kernel; ++j)
                grad[f * kernel * kernel + i * kernel + j] += d * x[(r + i) * side + c + j];
          }
    }
    return static_cast<float>(total / static_cast<double>(batch.size));
  }

  size_t filters_;
  size_t classes_;
};

} // namespace own_model
