#include "understudy/actors/numerics/mlp.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "understudy/actors/numerics/splitmix64.hpp"

namespace understudy::actors {

namespace {

/// Output columns per tile in the dense kernels: a tile of activations or
/// deltas for a batch (batch x tile_columns values) stays in L1/L2 while the
/// weights stream through once.
constexpr size_t tile_columns = 256;

/// Returns the dot product of `a` and `b` with 8 partial sums combined in a
/// fixed order: vectorisable without reassociating, so the result is the same
/// with and without SIMD.
template <class T>
T dot(const T* a, const T* b, size_t n) {
  T acc[8] = {};
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (size_t r = 0; r < 8; ++r)
      acc[r] += a[k + r] * b[k + r];
  T tail = 0;
  for (; k < n; ++k)
    tail += a[k] * b[k];
  return (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail;
}

/// out[b][j] = bias[j] + sum over i ascending of in[b][i] * w[i][j].
template <class T>
void dense_forward(const T* in, size_t batch, size_t n_in, size_t n_out, const T* w, const T* bias,
                   T* out) {
  for (size_t b = 0; b < batch; ++b)
    std::copy(bias, bias + n_out, out + b * n_out);
  for (size_t j0 = 0; j0 < n_out; j0 += tile_columns) {
    const size_t jn = std::min(tile_columns, n_out - j0);
    for (size_t i = 0; i < n_in; ++i) {
      const T* w_row = w + i * n_out + j0;
      for (size_t b = 0; b < batch; ++b) {
        const T a = in[b * n_in + i];
        if (a == T{0}) // ReLU outputs and sparse inputs: nothing to add
          continue;
        T* o = out + b * n_out + j0;
        for (size_t j = 0; j < jn; ++j)
          o[j] += a * w_row[j];
      }
    }
  }
}

/// gw[i][j] = sum over b ascending of in[b][i] * d[b][j]; gb[j] = sum over b of d[b][j].
template <class T>
void dense_backward_params(const T* in, const T* d, size_t batch, size_t n_in, size_t n_out, T* gw,
                           T* gb) {
  std::fill(gb, gb + n_out, T{0});
  for (size_t b = 0; b < batch; ++b) {
    const T* d_row = d + b * n_out;
    for (size_t j = 0; j < n_out; ++j)
      gb[j] += d_row[j];
  }
  std::fill(gw, gw + n_in * n_out, T{0});
  for (size_t j0 = 0; j0 < n_out; j0 += tile_columns) {
    const size_t jn = std::min(tile_columns, n_out - j0);
    for (size_t i = 0; i < n_in; ++i) {
      T* g = gw + i * n_out + j0;
      for (size_t b = 0; b < batch; ++b) {
        const T a = in[b * n_in + i];
        if (a == T{0})
          continue;
        const T* d_row = d + b * n_out + j0;
        for (size_t j = 0; j < jn; ++j)
          g[j] += a * d_row[j];
      }
    }
  }
}

/// d_in[b][i] = (act[b][i] > 0) ? sum over j of w[i][j] * d[b][j] : 0, i.e. the
/// delta of the previous layer's pre-activations through its ReLU.
template <class T>
void dense_backward_inputs(const T* w, const T* d, const T* act, size_t batch, size_t n_in,
                           size_t n_out, T* d_in) {
  for (size_t i = 0; i < n_in; ++i) {
    const T* w_row = w + i * n_out;
    for (size_t b = 0; b < batch; ++b) {
      const size_t at = b * n_in + i;
      d_in[at] = act[at] > T{0} ? dot(w_row, d + b * n_out, n_out) : T{0};
    }
  }
}

/// The activations of one forward pass: a_0 (the inputs) to a_L (the logits).
template <class T>
struct activations {
  std::vector<T> widened_input; // only when T is not float
  const T* input = nullptr;
  std::vector<std::vector<T>> layers; // a_1 .. a_L

  const T* at(size_t l) const { return l == 0 ? input : layers[l - 1].data(); }
};

template <class T>
void forward(const std::vector<size_t>& sizes, const std::vector<mlp::layer_slice>& layers,
             const T* params, const float* x, size_t batch, activations<T>& acts) {
  if constexpr (std::is_same_v<T, float>) {
    acts.input = x;
  } else {
    acts.widened_input.assign(x, x + batch * sizes.front());
    acts.input = acts.widened_input.data();
  }
  acts.layers.resize(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& s = layers[l];
    auto& out = acts.layers[l];
    out.resize(batch * s.fan_out);
    dense_forward(acts.at(l), batch, s.fan_in, s.fan_out, params + s.weights, params + s.biases,
                  out.data());
    if (l + 1 < layers.size())
      for (auto& v : out)
        v = std::max(v, T{0});
  }
}

/// Returns the summed cross-entropy of the logits (batch x classes, in place).
/// With `want_delta`, replaces each logit by (softmax - onehot) * scale.
template <class T>
double softmax_cross_entropy(T* logits, const uint32_t* labels, size_t batch, size_t classes,
                             bool want_delta, T scale) {
  double total = 0.0;
  for (size_t b = 0; b < batch; ++b) {
    T* row = logits + b * classes;
    const auto y = labels[b];
    T max = row[0];
    for (size_t j = 1; j < classes; ++j)
      max = std::max(max, row[j]);
    const T shifted_y = row[y] - max;
    T sum = 0;
    for (size_t j = 0; j < classes; ++j) {
      row[j] = std::exp(row[j] - max);
      sum += row[j];
    }
    total += static_cast<double>(std::log(sum) - shifted_y);
    if (want_delta) {
      for (size_t j = 0; j < classes; ++j) {
        const T p = row[j] / sum;
        row[j] = (j == y ? p - T{1} : p) * scale;
      }
    }
  }
  return total;
}

/// Computes the mean loss and, if `grad` is not null, its gradient.
template <class T>
double run(const std::vector<size_t>& sizes, const std::vector<mlp::layer_slice>& layers,
           const T* params, const batch_view& batch, T* grad) {
  activations<T> acts;
  forward(sizes, layers, params, batch.inputs, batch.size, acts);
  const auto n = batch.size;
  auto& delta = acts.layers.back(); // becomes d loss / d logits
  const T scale = T{1} / static_cast<T>(n);
  const double total =
      softmax_cross_entropy(delta.data(), batch.labels, n, sizes.back(), grad != nullptr, scale);
  if (grad != nullptr) {
    std::vector<T> d = std::move(delta);
    std::vector<T> d_prev;
    for (size_t l = layers.size(); l-- > 0;) {
      const auto& s = layers[l];
      dense_backward_params(acts.at(l), d.data(), n, s.fan_in, s.fan_out, grad + s.weights,
                            grad + s.biases);
      if (l > 0) {
        d_prev.resize(n * s.fan_in);
        dense_backward_inputs(params + s.weights, d.data(), acts.at(l), n, s.fan_in, s.fan_out,
                              d_prev.data());
        std::swap(d, d_prev);
      }
    }
  }
  return total / static_cast<double>(n);
}

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument(what);
}

void check_call(const mlp& net, const void* params, const batch_view& batch, const char* who) {
  if (params == nullptr)
    fail(std::string{who} + ": no parameters");
  validate_batch(net, batch, who);
  if (batch.size == 0)
    fail(std::string{who} + ": empty batch (the mean loss needs at least one sample)");
}

void check_grad(const void* grad, const char* who) {
  if (grad == nullptr)
    fail(std::string{who} + ": no gradient buffer");
}

} // namespace

mlp::mlp(std::vector<size_t> layer_sizes) : sizes_(std::move(layer_sizes)) {
  if (sizes_.size() < 2)
    fail("mlp: needs at least 2 layer sizes (inputs and classes), got " +
         std::to_string(sizes_.size()));
  for (size_t l = 0; l < sizes_.size(); ++l)
    if (sizes_[l] == 0)
      fail("mlp: layer size " + std::to_string(l) + " is zero");
  constexpr auto max = std::numeric_limits<size_t>::max();
  size_t offset = 0;
  for (size_t l = 0; l + 1 < sizes_.size(); ++l) {
    layer_slice s;
    s.fan_in = sizes_[l];
    s.fan_out = sizes_[l + 1];
    if (s.fan_in > max / s.fan_out || s.fan_in * s.fan_out > max - s.fan_out ||
        s.fan_in * s.fan_out + s.fan_out > max - offset)
      fail("mlp: parameter count of " + describe() + " overflows size_t");
    s.weights = offset;
    s.biases = offset + s.fan_in * s.fan_out;
    offset = s.biases + s.fan_out;
    layers_.push_back(s);
  }
  parameter_count_ = offset;
}

std::string mlp::describe() const {
  std::string result = "mlp ";
  for (size_t l = 0; l < sizes_.size(); ++l) {
    if (l > 0)
      result += '-';
    result += std::to_string(sizes_[l]);
  }
  return result;
}

void mlp::init_parameter_range(float* out, size_t first, size_t count, uint64_t seed) const {
  if (first > parameter_count_ || count > parameter_count_ - first)
    fail("mlp::init_parameter_range: " + std::to_string(count) + " parameters from " +
         std::to_string(first) + " exceed the " + std::to_string(parameter_count_) +
         " parameters of " + describe());
  if (count > 0 && out == nullptr)
    fail("mlp::init_parameter_range: no output buffer");
  const size_t end = first + count;
  size_t k = first;
  for (size_t l = 0; l < layers_.size() && k < end; ++l) {
    const auto& s = layers_[l];
    const size_t layer_end = s.biases + s.fan_out;
    if (k >= layer_end)
      continue;
    const bool is_output = l + 1 == layers_.size();
    const auto fan = static_cast<double>(is_output ? s.fan_in + s.fan_out : s.fan_in);
    const auto bound = static_cast<float>(std::sqrt(6.0 / fan));
    for (; k < std::min(s.biases, end); ++k) {
      const float u = splitmix64::to_unit_float(splitmix64::at(seed, k));
      out[k - first] = (2.0f * u - 1.0f) * bound;
    }
    for (; k < std::min(layer_end, end); ++k)
      out[k - first] = 0.0f;
  }
}

float mlp::loss_and_gradient(const float* params, const batch_view& batch, float* grad) const {
  check_call(*this, params, batch, "mlp::loss_and_gradient");
  check_grad(grad, "mlp::loss_and_gradient");
  return static_cast<float>(run<float>(sizes_, layers_, params, batch, grad));
}

double mlp::loss_and_gradient(const double* params, const batch_view& batch, double* grad) const {
  check_call(*this, params, batch, "mlp::loss_and_gradient");
  check_grad(grad, "mlp::loss_and_gradient");
  return run<double>(sizes_, layers_, params, batch, grad);
}

float mlp::loss(const float* params, const batch_view& batch) const {
  check_call(*this, params, batch, "mlp::loss");
  return static_cast<float>(run<float>(sizes_, layers_, params, batch, nullptr));
}

double mlp::loss(const double* params, const batch_view& batch) const {
  check_call(*this, params, batch, "mlp::loss");
  return run<double>(sizes_, layers_, params, batch, nullptr);
}

void mlp::predict(const float* params, const float* inputs, size_t n, uint32_t* labels) const {
  if (n == 0)
    return;
  if (params == nullptr || inputs == nullptr || labels == nullptr)
    fail("mlp::predict: null parameters, inputs or labels");
  // Bounded scratch memory however many samples are passed.
  constexpr size_t chunk = 256;
  const size_t dim = input_dim();
  const size_t classes = class_count();
  activations<float> acts;
  for (size_t first = 0; first < n; first += chunk) {
    const size_t count = std::min(chunk, n - first);
    forward(sizes_, layers_, params, inputs + first * dim, count, acts);
    const float* logits = acts.layers.back().data();
    for (size_t b = 0; b < count; ++b) {
      const float* row = logits + b * classes;
      labels[first + b] = static_cast<uint32_t>(std::max_element(row, row + classes) - row);
    }
  }
}

} // namespace understudy::actors
