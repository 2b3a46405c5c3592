#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace understudy::actors {

/// The update rule of an `optimizer`.
enum class optimizer_kind : uint8_t {
  /// Plain stochastic gradient descent.
  sgd,
  /// SGD with (heavy-ball) momentum, as in PyTorch's SGD with dampening 0.
  momentum,
  /// Adam with bias correction (Kingma and Ba), weight decay as L2 in the gradient.
  adam,
};

/// Returns the name of `x`: "sgd", "momentum" or "adam".
std::string to_string(optimizer_kind x);

/// Parses a name as printed by `to_string` (exact, lower case). On failure
/// returns `caf::sec::invalid_argument` whose context names the bad value and
/// the accepted ones, e.g. "unknown optimizer 'rmsprop' (expected sgd, momentum
/// or adam)".
caf::expected<optimizer_kind> parse_optimizer_kind(std::string_view name);

/// Hyperparameters of an `optimizer`. Fields that the kind does not use are
/// ignored (`momentum` only for momentum; `beta1`, `beta2`, `epsilon` only for adam).
struct optimizer_config {
  optimizer_kind kind = optimizer_kind::sgd;
  /// Learning rate, > 0.
  float lr = 0.01f;
  /// Momentum coefficient mu, in [0, 1).
  float momentum = 0.9f;
  /// Adam's decay rates, each in [0, 1).
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  /// Adam's denominator term, > 0.
  float epsilon = 1e-8f;
  /// L2 penalty coefficient, >= 0, added to the gradient (not decoupled).
  float weight_decay = 0.0f;
};

/// Checks that every field `config.kind` uses is finite and in its range. On
/// failure returns `caf::sec::invalid_argument` whose context names the field and
/// its value, e.g. "optimizer lr must be finite and > 0, got 0".
caf::error validate(const optimizer_config& config);

/// Applies one optimizer's updates to a slice of `n` parameters and owns that
/// slice's optimizer state; a parameter shard owns one per slice.
///
/// The update of step t (t = steps() + 1, counted from 1), per element i, all in
/// float arithmetic in this order (g the gradient, p the parameter):
///   g' = g + weight_decay * p                     (only if weight_decay != 0)
///   sgd:      p = p - lr * g'
///   momentum: m = mu * m + g';  p = p - lr * m
///   adam:     m = beta1 * m + (1 - beta1) * g'
///             v = beta2 * v + (1 - beta2) * g' * g'
///             p = p - lr * (m / c1) / (sqrt(v / c2) + epsilon)
///             with c1 = 1 - beta1^t and c2 = 1 - beta2^t computed in double
///             (beta^t by repeated squaring, no libm) and rounded to float.
/// m and v start at zero. `1 - beta` is computed in float.
///
/// Deterministic: the same config, state and gradients give bit-identical
/// parameters; a restored optimizer continues exactly as the original would
/// have. Every update is element-wise, so optimizers over the slices of a vector
/// give bit-identically the result of one optimizer over the whole vector,
/// however it is cut. Not thread-safe; owned by one actor.
class optimizer {
public:
  /// Creates the optimizer for `n` parameters with zero state and step 0.
  /// Throws `std::invalid_argument` with `validate`'s message if `config` is
  /// invalid (validate configs from users first).
  optimizer(optimizer_config config, size_t n);

  /// Applies one update to `params[0 .. n)` using `grad[0 .. n)` and advances
  /// `steps()`. The arrays may not overlap.
  void step(float* params, const float* grad) { step(params, params, grad); }

  /// The same update out of place: reads `in[0 .. n)`, writes the updated
  /// parameters to `out[0 .. n)` (bit for bit what the in-place step gives);
  /// `out` may be `in`. For a caller whose old parameters are still being
  /// read elsewhere (a checkpoint on its way to disk): no copy first.
  void step(const float* in, float* out, const float* grad);

  /// Returns the number of updates applied (including restored ones).
  uint64_t steps() const noexcept { return steps_; }

  /// Returns the number of parameters this optimizer updates.
  size_t size() const noexcept { return n_; }

  /// Returns the configuration.
  const optimizer_config& config() const noexcept { return config_; }

  /// First-moment state for checkpointing: `n` floats for momentum (the
  /// velocity) and adam, empty for sgd.
  const std::vector<float>& state_m() const noexcept { return *m_; }

  /// Second-moment state for checkpointing: `n` floats for adam, empty otherwise.
  const std::vector<float>& state_v() const noexcept { return *v_; }

  /// `state_m()` and `state_v()` as immutable snapshots that share memory with
  /// the optimizer: the next `step()` copies a state that a snapshot still holds
  /// instead of changing it. For checkpoints that cost no copy when the writer
  /// is done with them before the next step.
  std::shared_ptr<const std::vector<float>> shared_m() const noexcept { return m_; }
  std::shared_ptr<const std::vector<float>> shared_v() const noexcept { return v_; }

  /// Replaces the state with a checkpointed one (as read from `steps()`,
  /// `state_m()` and `state_v()`). The sizes must be those `state_m()` and
  /// `state_v()` have for this kind and `n`; otherwise returns
  /// `caf::sec::invalid_argument` naming the mismatch (e.g. a checkpoint taken
  /// with another optimizer kind) and leaves the state unchanged.
  [[nodiscard]] caf::error restore(uint64_t steps, std::vector<float> m, std::vector<float> v);

private:
  optimizer_config config_;
  size_t n_;
  uint64_t steps_ = 0;
  std::shared_ptr<std::vector<float>> m_;
  std::shared_ptr<std::vector<float>> v_;
};

/// Returns `base^exp` in double by repeated squaring, without libm, so that it
/// is the same bits on every machine. Adam's bias corrections use it here and
/// on the gpu backends: CPU/GPU bit-identity depends on there being one.
double power(double base, uint64_t exp) noexcept;

} // namespace understudy::actors
