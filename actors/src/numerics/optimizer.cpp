#include "understudy/actors/numerics/optimizer.hpp"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <utility>

#include <caf/sec.hpp>

#include "understudy/core/errors.hpp"

namespace understudy::actors {

namespace {

/// Renders a float so that the value in an error message is the exact one.
std::string show(float x) {
  std::ostringstream out;
  out.precision(9);
  out << x;
  return out.str();
}

/// Returns the error for a field outside its range.
caf::error out_of_range(const char* field, const char* range, float value) {
  return caf::make_error(
      caf::sec::invalid_argument,
      std::string{"optimizer "} + field + " must be " + range + ", got " + show(value));
}

bool in_unit_interval(float x) {
  return x >= 0.0f && x < 1.0f;
}

} // namespace

std::string to_string(optimizer_kind x) {
  switch (x) {
    case optimizer_kind::sgd:
      return "sgd";
    case optimizer_kind::momentum:
      return "momentum";
    case optimizer_kind::adam:
      return "adam";
  }
  return "unknown";
}

caf::expected<optimizer_kind> parse_optimizer_kind(std::string_view name) {
  for (auto kind : {optimizer_kind::sgd, optimizer_kind::momentum, optimizer_kind::adam})
    if (name == to_string(kind))
      return kind;
  return caf::make_error(caf::sec::invalid_argument, "unknown optimizer '" + std::string{name} +
                                                         "' (expected sgd, momentum or adam)");
}

caf::error validate(const optimizer_config& config) {
  switch (config.kind) {
    case optimizer_kind::sgd:
    case optimizer_kind::momentum:
    case optimizer_kind::adam:
      break;
    default:
      return caf::make_error(caf::sec::invalid_argument,
                             "optimizer kind " + std::to_string(static_cast<int>(config.kind)) +
                                 " is not a known kind");
  }
  if (!std::isfinite(config.lr) || config.lr <= 0.0f)
    return out_of_range("lr", "finite and > 0", config.lr);
  if (!std::isfinite(config.weight_decay) || config.weight_decay < 0.0f)
    return out_of_range("weight_decay", "finite and >= 0", config.weight_decay);
  if (config.kind == optimizer_kind::momentum && !in_unit_interval(config.momentum))
    return out_of_range("momentum", "in [0, 1)", config.momentum);
  if (config.kind == optimizer_kind::adam) {
    if (!in_unit_interval(config.beta1))
      return out_of_range("beta1", "in [0, 1)", config.beta1);
    if (!in_unit_interval(config.beta2))
      return out_of_range("beta2", "in [0, 1)", config.beta2);
    if (!std::isfinite(config.epsilon) || config.epsilon <= 0.0f)
      return out_of_range("epsilon", "finite and > 0", config.epsilon);
  }
  return {};
}

namespace {

/// Returns `config` if it is valid, throws `std::invalid_argument` otherwise.
const optimizer_config& checked(const optimizer_config& config) {
  if (auto err = validate(config)) {
    std::string msg = "invalid optimizer config";
    if (auto details = error_context(err); !details.empty())
      msg += ": " + details;
    throw std::invalid_argument(msg);
  }
  return config;
}

size_t m_size(optimizer_kind kind, size_t n) {
  return kind == optimizer_kind::sgd ? 0 : n;
}

size_t v_size(optimizer_kind kind, size_t n) {
  return kind == optimizer_kind::adam ? n : 0;
}

/// `state` for writing: copied first if a snapshot (shared_m/shared_v) still holds it.
float* writable(std::shared_ptr<std::vector<float>>& state) {
  if (state.use_count() > 1)
    state = std::make_shared<std::vector<float>>(*state);
  return state->data();
}

} // namespace

optimizer::optimizer(optimizer_config config, size_t n)
    : config_(checked(config)),
      n_(n),
      m_(std::make_shared<std::vector<float>>(m_size(config.kind, n), 0.0f)),
      v_(std::make_shared<std::vector<float>>(v_size(config.kind, n), 0.0f)) {
  // nop
}

void optimizer::step(const float* in, float* params, const float* grad) {
  const float lr = config_.lr;
  const float wd = config_.weight_decay;
  const size_t n = n_;
  ++steps_;
  switch (config_.kind) {
    case optimizer_kind::sgd:
      for (size_t i = 0; i < n; ++i) {
        float g = grad[i];
        if (wd != 0.0f)
          g += wd * in[i];
        params[i] = in[i] - lr * g;
      }
      break;
    case optimizer_kind::momentum: {
      const float mu = config_.momentum;
      float* m = writable(m_);
      for (size_t i = 0; i < n; ++i) {
        float g = grad[i];
        if (wd != 0.0f)
          g += wd * in[i];
        m[i] = mu * m[i] + g;
        params[i] = in[i] - lr * m[i];
      }
      break;
    }
    case optimizer_kind::adam: {
      const float b1 = config_.beta1;
      const float b2 = config_.beta2;
      const float one_minus_b1 = 1.0f - b1;
      const float one_minus_b2 = 1.0f - b2;
      const float eps = config_.epsilon;
      const auto c1 = static_cast<float>(1.0 - power(static_cast<double>(b1), steps_));
      const auto c2 = static_cast<float>(1.0 - power(static_cast<double>(b2), steps_));
      float* m = writable(m_);
      float* v = writable(v_);
      for (size_t i = 0; i < n; ++i) {
        float g = grad[i];
        if (wd != 0.0f)
          g += wd * in[i];
        m[i] = b1 * m[i] + one_minus_b1 * g;
        v[i] = b2 * v[i] + one_minus_b2 * g * g;
        params[i] = in[i] - lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
      }
      break;
    }
  }
}

caf::error optimizer::restore(uint64_t steps, std::vector<float> m, std::vector<float> v) {
  auto want_m = m_size(config_.kind, n_);
  auto want_v = v_size(config_.kind, n_);
  if (m.size() != want_m || v.size() != want_v)
    return caf::make_error(
        caf::sec::invalid_argument,
        "optimizer state does not fit this optimizer (" + to_string(config_.kind) + ", " +
            std::to_string(n_) + " parameters): got " + std::to_string(m.size()) +
            " first-moment and " + std::to_string(v.size()) + " second-moment values, expected " +
            std::to_string(want_m) + " and " + std::to_string(want_v));
  steps_ = steps;
  m_ = std::make_shared<std::vector<float>>(std::move(m));
  v_ = std::make_shared<std::vector<float>>(std::move(v));
  return {};
}

double power(double base, uint64_t exp) noexcept {
  double result = 1.0;
  while (exp != 0) {
    if ((exp & 1) != 0)
      result *= base;
    base *= base;
    exp >>= 1;
  }
  return result;
}

} // namespace understudy::actors
