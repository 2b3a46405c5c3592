#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "understudy/actors/numerics/batch_view.hpp"
#include "understudy/actors/numerics/model.hpp"

namespace understudy::actors {

/// A multi-layer perceptron classifier: dense layers with ReLU between them and
/// softmax cross-entropy on the output. CPU-only, single-threaded, deterministic.
///
/// For `layer_sizes` {n0, n1, ..., nL} (n0 inputs, nL classes) there are L dense
/// layers; layer l maps n_l features to n_{l+1}: z = a W_l + b_l, followed by
/// ReLU for every layer but the last, whose outputs are the logits.
///
/// Parameter layout (the flat vector): the layers in order, each as its weights
/// then its biases. Weights W_l are row-major [fan_in][fan_out]: the weight from
/// input i to output j of layer l is at `layer(l).weights + i * fan_out + j`;
/// bias j at `layer(l).biases + j`. Layer l starts right after layer l-1's
/// biases; `parameter_count()` = sum over l of n_l * n_{l+1} + n_{l+1}.
///
/// Loss: the mean over the batch of -log softmax(logits)[label], computed stably
/// (the row maximum is subtracted before exponentiating).
///
/// Initialisation: biases 0; weights uniform in [-a, a) with a = sqrt(6 / fan_in)
/// (He) for layers followed by ReLU and a = sqrt(6 / (fan_in + fan_out)) (Glorot)
/// for the output layer; the weight at flat index k is
/// `(2 * splitmix64::to_unit_float(splitmix64::at(seed, k)) - 1) * a`, so values
/// are identical on every platform and standard library.
///
/// Determinism: every sum runs in a fixed order (over inputs, then samples, in
/// ascending index); results are bit-identical for the same build. Builds that
/// contract multiply-adds differently (e.g. `-march=native` with FMA,
/// `-ffast-math`) or a different libm (`exp`, `log`) may differ in the last bits.
class mlp final : public model {
public:
  /// Where one dense layer's parameters lie in the flat vector.
  struct layer_slice {
    /// Flat index of W[0][0].
    size_t weights = 0;
    /// Flat index of bias 0 (= weights + fan_in * fan_out).
    size_t biases = 0;
    size_t fan_in = 0;
    size_t fan_out = 0;
  };

  /// Builds the shape {inputs, hidden..., classes}, e.g. {64, 128, 10}. Throws
  /// `std::invalid_argument` if there are fewer than 2 sizes, a size is zero, or
  /// the parameter count overflows `size_t`.
  explicit mlp(std::vector<size_t> layer_sizes);

  /// Returns the sizes given to the constructor.
  const std::vector<size_t>& layer_sizes() const noexcept { return sizes_; }

  /// Returns the number of dense layers (`layer_sizes().size() - 1`).
  size_t layer_count() const noexcept { return layers_.size(); }

  /// Returns where dense layer `l` lies in the parameter vector. Precondition:
  /// l < layer_count() (throws `std::out_of_range` otherwise).
  const layer_slice& layer(size_t l) const { return layers_.at(l); }

  size_t parameter_count() const override { return parameter_count_; }
  size_t input_dim() const override { return sizes_.front(); }
  size_t class_count() const override { return sizes_.back(); }

  /// Returns e.g. "mlp 64-128-10".
  std::string describe() const override;

  void init_parameter_range(float* out, size_t first, size_t count, uint64_t seed) const override;

  float loss_and_gradient(const float* params, const batch_view& batch, float* grad) const override;

  float loss(const float* params, const batch_view& batch) const override;

  void predict(const float* params, const float* inputs, size_t n, uint32_t* labels) const override;

  /// Same computation as the float overload, carried out in double precision
  /// (inputs are widened). For verifying gradients, e.g. against finite
  /// differences; training uses the float overload.
  double loss_and_gradient(const double* params, const batch_view& batch, double* grad) const;

  /// Same as the float `loss`, in double precision.
  double loss(const double* params, const batch_view& batch) const;

private:
  std::vector<size_t> sizes_;
  std::vector<layer_slice> layers_;
  size_t parameter_count_ = 0;
};

} // namespace understudy::actors
