// Every operation of the backends against a straightforward reference. Each
// test runs on the CPU backend ([gpu_ops], everywhere) and on the CUDA backend
// ([gpu], skipped visibly without a device; see gpu_test_util.hpp).
//
// Tolerances: GEMM within (k + 2) * FLT_EPSILON * (|alpha| sum |a||b| + |beta c|)
// of a double reference (a bound on any summation order), and on the CPU bit
// for bit equal to the naive float loop in ascending k; softmax cross-entropy
// within 1e-6 (relative, or absolute below 1) of hand-computed values; ReLU,
// bias, bias gradient, axpy, scale, fill, copy and the optimizer updates bit
// for bit (the optimizers against understudy::actors::optimizer); the assembled MLP
// within 1e-5 of understudy::actors::mlp (relative to the largest magnitude).

#include "understudy/gpu/backend.hpp"

#include <cfloat>
#include <cmath>
#include <limits>

#include "support/gpu_test_util.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/numerics/optimizer.hpp"
#include "understudy/gpu/errors.hpp"

using namespace gpu_test;
namespace ug = understudy::gpu;

#define BACKEND_TEST(title, fn)                      \
  TEST_CASE("the cpu backend " title, "[gpu_ops]") { \
    auto be = ug::make_cpu_backend();                \
    fn(*be);                                         \
  }                                                  \
  TEST_CASE("the cuda backend " title, "[gpu]") {    \
    if (auto be = cuda_or_skip())                    \
      fn(*be);                                       \
  }

namespace {

struct gemm_case {
  size_t m, n, k;
  size_t pad; // extra elements per row of a, b and c
};

void check_gemm(ug::backend& be) {
  const gemm_case cases[] = {
      {1, 1, 1, 0}, {5, 7, 3, 0}, {33, 17, 65, 3}, {8, 64, 128, 0}, {3, 2, 0, 1}};
  uint64_t seed = 1;
  for (const auto& cs : cases) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        for (float beta : {0.0f, 0.5f}) {
          const float alpha = 1.5f;
          const size_t m = cs.m, n = cs.n, k = cs.k;
          // Stored shapes: A is m x k (k x m if transposed), B k x n (n x k).
          const size_t a_rows = ta ? k : m, a_cols = ta ? m : k;
          const size_t b_rows = tb ? n : k, b_cols = tb ? k : n;
          const size_t lda = a_cols + cs.pad, ldb = b_cols + cs.pad, ldc = n + cs.pad;
          auto a = random_floats(a_rows * lda, ++seed);
          auto b = random_floats(b_rows * ldb, ++seed);
          auto c0 = random_floats(m * ldc, ++seed);
          if (beta == 0.0f)
            for (size_t i = 0; i < m; ++i)
              for (size_t j = 0; j < n; ++j)
                c0[i * ldc + j] = std::numeric_limits<float>::quiet_NaN(); // must be ignored
          auto A = [&](size_t i, size_t p) { return ta ? a[p * lda + i] : a[i * lda + p]; };
          auto B = [&](size_t p, size_t j) { return tb ? b[j * ldb + p] : b[p * ldb + j]; };
          auto da = to_device(be, a);
          auto db = to_device(be, b);
          auto dc = to_device(be, c0);
          INFO("m " << m << " n " << n << " k " << k << " pad " << cs.pad << " trans_a " << ta
                    << " trans_b " << tb << " beta " << beta);
          REQUIRE_FALSE(
              be.gemm(ta, tb, m, n, k, alpha, da->f(), lda, db->f(), ldb, beta, dc->f(), ldc));
          auto c = to_host(be, dc->f(), m * ldc);
          for (size_t i = 0; i < m; ++i) {
            for (size_t j = 0; j < ldc; ++j) {
              const size_t at = i * ldc + j;
              if (j >= n) { // padding: never written
                REQUIRE(same_bits(c[at], c0[at]));
                continue;
              }
              double ref = 0.0, magnitude = 0.0;
              float naive = 0.0f;
              for (size_t p = 0; p < k; ++p) {
                ref += static_cast<double>(A(i, p)) * B(p, j);
                magnitude += std::fabs(static_cast<double>(A(i, p)) * B(p, j));
                naive += A(i, p) * B(p, j);
              }
              ref *= alpha;
              magnitude *= std::fabs(alpha);
              if (beta != 0.0f) {
                ref += static_cast<double>(beta) * c0[at];
                magnitude += std::fabs(static_cast<double>(beta) * c0[at]);
                naive = alpha * naive + beta * c0[at];
              } else {
                naive = alpha * naive;
              }
              const double bound = (k + 2) * static_cast<double>(FLT_EPSILON) * magnitude + 1e-30;
              INFO("c[" << i << "][" << j << "] = " << c[at] << ", reference " << ref);
              REQUIRE(std::isfinite(c[at]));
              REQUIRE(std::fabs(c[at] - ref) <= bound);
              if (be.kind() == ug::backend_kind::cpu)
                REQUIRE(same_bits(c[at], naive));
            }
          }
        }
      }
    }
  }
}

void check_transfers(ug::backend& be) {
  auto values = random_floats(1000, 7);
  auto d = to_device(be, values);
  auto back = to_host(be, d->f(), values.size());
  REQUIRE(back == values);
  // Labels travel as raw 4-byte words.
  std::vector<uint32_t> labels{0, 1, 7, 0xffffffffu, 42};
  auto dl = to_device(be, labels);
  auto raw = to_host(be, reinterpret_cast<const float*>(dl->u()), labels.size());
  REQUIRE(std::memcmp(raw.data(), labels.data(), labels.size() * 4) == 0);
  // copy and fill
  device_buffer other{be, values.size() * 4};
  REQUIRE_FALSE(be.copy(other.f(), d->f(), values.size() * 4));
  REQUIRE(to_host(be, other.f(), values.size()) == values);
  REQUIRE_FALSE(be.fill(other.f() + 10, 20, -2.5f));
  auto filled = to_host(be, other.f(), values.size());
  for (size_t i = 0; i < values.size(); ++i)
    REQUIRE(filled[i] == (i >= 10 && i < 30 ? -2.5f : values[i]));
  // Zero sizes are no-ops, also with null pointers.
  REQUIRE_FALSE(be.fill(nullptr, 0, 1.0f));
  REQUIRE_FALSE(be.copy(nullptr, nullptr, 0));
  auto none = be.allocate(0);
  REQUIRE(none);
  REQUIRE(*none == nullptr);
}

void check_elementwise(ug::backend& be) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x{-2.0f, -0.0f, 0.0f, 1e-30f, 3.5f, nan, inf, -inf};
  auto grads = random_floats(x.size(), 11);
  SECTION("relu keeps positive values, zeroes negative ones and passes NaN and -0 through") {
    auto dx = to_device(be, x);
    device_buffer out{be, x.size() * 4};
    REQUIRE_FALSE(be.relu(dx->f(), out.f(), x.size()));
    auto y = to_host(be, out.f(), x.size());
    for (size_t i = 0; i < x.size(); ++i)
      REQUIRE(same_bits(y[i], std::max(x[i], 0.0f)));
    REQUIRE_FALSE(be.relu(dx->f(), dx->f(), x.size())); // in place
    REQUIRE(std::memcmp(to_host(be, dx->f(), x.size()).data(), y.data(), y.size() * 4) == 0);
  }
  SECTION("relu_grad passes the gradient where the pre-activation is positive") {
    auto dx = to_device(be, x);
    auto dg = to_device(be, grads);
    device_buffer out{be, x.size() * 4};
    REQUIRE_FALSE(be.relu_grad(dx->f(), dg->f(), out.f(), x.size()));
    auto y = to_host(be, out.f(), x.size());
    for (size_t i = 0; i < x.size(); ++i)
      REQUIRE(same_bits(y[i], x[i] > 0.0f ? grads[i] : 0.0f));
    REQUIRE_FALSE(be.relu_grad(dx->f(), dg->f(), dg->f(), x.size())); // in place
    auto z = to_host(be, dg->f(), x.size());
    REQUIRE(std::memcmp(z.data(), y.data(), y.size() * 4) == 0);
  }
  SECTION("add_bias adds the bias to every row and bias_grad sums the columns") {
    const size_t rows = 37, cols = 300;
    auto m = random_floats(rows * cols, 12);
    auto bias = random_floats(cols, 13);
    auto dm = to_device(be, m);
    auto dbias = to_device(be, bias);
    REQUIRE_FALSE(be.add_bias(dm->f(), dbias->f(), rows, cols));
    auto y = to_host(be, dm->f(), m.size());
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < cols; ++c)
        REQUIRE(same_bits(y[r * cols + c], m[r * cols + c] + bias[c]));
    device_buffer sums{be, cols * 4};
    REQUIRE_FALSE(be.bias_grad(dm->f(), rows, cols, sums.f()));
    auto s = to_host(be, sums.f(), cols);
    for (size_t c = 0; c < cols; ++c) {
      float ref = 0.0f;
      for (size_t r = 0; r < rows; ++r)
        ref += y[r * cols + c];
      REQUIRE(same_bits(s[c], ref));
    }
  }
  SECTION("axpy and scale round like the plain float expressions") {
    const size_t n = 5000;
    auto xs = random_floats(n, 14);
    auto ys = random_floats(n, 15);
    auto dx = to_device(be, xs);
    auto dy = to_device(be, ys);
    REQUIRE_FALSE(be.axpy(n, 0.37f, dx->f(), dy->f()));
    REQUIRE_FALSE(be.scale(n, -1.25f, dx->f()));
    auto y = to_host(be, dy->f(), n);
    auto s = to_host(be, dx->f(), n);
    for (size_t i = 0; i < n; ++i) {
      const float product = 0.37f * xs[i];
      REQUIRE(same_bits(y[i], ys[i] + product));
      REQUIRE(same_bits(s[i], xs[i] * -1.25f));
    }
  }
}

void check_softmax_xent(ug::backend& be) {
  // Row 0: logits 1, 2, 3, label 2; row 1: all equal, label 0; row 2: logits
  // far apart (stable only if the maximum is subtracted), label 1.
  std::vector<float> logits{1.0f, 2.0f, 3.0f, 0.0f, 0.0f, 0.0f, 1000.0f, 0.0f, -1000.0f};
  std::vector<uint32_t> labels{2, 0, 1};
  const size_t rows = 3, classes = 3;
  const double e1 = std::exp(-1.0), e2 = std::exp(-2.0), z = 1.0 + e1 + e2;
  const double want_loss[] = {std::log(z), std::log(3.0), 1000.0};
  const double third = 1.0 / 3.0;
  const double want_softmax[] = {e2 / z, e1 / z, 1.0 / z, third, third, third, 1.0, 0.0, 0.0};
  const float scale = 1.0f / rows;
  auto close = [](double got, double want) {
    return std::fabs(got - want) <= 1e-6 * std::max(1.0, std::fabs(want));
  };
  auto dlogits = to_device(be, logits);
  auto dlabels = to_device(be, labels);
  device_buffer loss{be, rows * 4};
  device_buffer grad{be, logits.size() * 4};
  SECTION("loss and gradient match hand-computed values") {
    REQUIRE_FALSE(
        be.softmax_xent(dlogits->f(), dlabels->u(), rows, classes, scale, loss.f(), grad.f()));
    auto l = to_host(be, loss.f(), rows);
    auto g = to_host(be, grad.f(), logits.size());
    for (size_t r = 0; r < rows; ++r) {
      INFO("row " << r);
      REQUIRE(close(l[r], want_loss[r]));
      for (size_t j = 0; j < classes; ++j) {
        const double onehot = j == labels[r] ? 1.0 : 0.0;
        REQUIRE(close(g[r * classes + j], (want_softmax[r * classes + j] - onehot) * scale));
      }
    }
    SECTION("in place, the gradient replaces the logits with the same values") {
      REQUIRE_FALSE(be.softmax_xent(dlogits->f(), dlabels->u(), rows, classes, scale, loss.f(),
                                    dlogits->f()));
      REQUIRE(to_host(be, dlogits->f(), logits.size()) == g);
      REQUIRE(to_host(be, loss.f(), rows) == l);
    }
    SECTION("without a gradient buffer only the loss is computed") {
      device_buffer loss2{be, rows * 4};
      REQUIRE_FALSE(
          be.softmax_xent(dlogits->f(), dlabels->u(), rows, classes, scale, loss2.f(), nullptr));
      REQUIRE(to_host(be, loss2.f(), rows) == l);
    }
  }
  SECTION("a label outside the classes is an error on the cpu and a NaN loss on cuda") {
    std::vector<uint32_t> bad{2, 3, 1};
    auto dbad = to_device(be, bad);
    REQUIRE_FALSE(be.fill(loss.f(), rows, 7.0f));
    auto err = be.softmax_xent(dlogits->f(), dbad->u(), rows, classes, scale, loss.f(), grad.f());
    auto l = to_host(be, loss.f(), rows);
    if (be.kind() == ug::backend_kind::cpu) {
      REQUIRE(ug::is(err, ug::gpu_errc::invalid_argument));
      REQUIRE(understudy::describe(err).find("label 3 of row 1") != std::string::npos);
      REQUIRE(l == std::vector<float>(rows, 7.0f));
    } else {
      REQUIRE_FALSE(err);
      REQUIRE(std::isnan(l[1]));
      REQUIRE(close(l[0], want_loss[0]));
    }
  }
}

/// Applies `steps` updates with understudy::actors::optimizer and with the backend
/// from the same start and gradients; they must agree bit for bit.
void check_optimizer(ug::backend& be, const understudy::actors::optimizer_config& cfg) {
  const size_t n = 4099;
  const int steps = 5;
  auto params = random_floats(n, 21);
  understudy::actors::optimizer ref{cfg, n};
  auto ref_params = params;
  auto dp = to_device(be, params);
  device_buffer dm{be, n * 4};
  device_buffer dv{be, n * 4};
  REQUIRE_FALSE(be.fill(dm.f(), n, 0.0f));
  REQUIRE_FALSE(be.fill(dv.f(), n, 0.0f));
  for (int s = 0; s < steps; ++s) {
    auto grad = random_floats(n, 100 + s, -0.5f, 0.5f);
    ref.step(ref_params.data(), grad.data());
    auto dg = to_device(be, grad);
    switch (cfg.kind) {
      case understudy::actors::optimizer_kind::sgd:
        REQUIRE_FALSE(be.sgd_step(dp->f(), dg->f(), n, ug::sgd_params{cfg.lr, cfg.weight_decay}));
        break;
      case understudy::actors::optimizer_kind::momentum:
        REQUIRE_FALSE(
            be.momentum_step(dp->f(), dg->f(), dm.f(), n,
                             ug::momentum_params{cfg.lr, cfg.momentum, cfg.weight_decay}));
        break;
      case understudy::actors::optimizer_kind::adam: {
        ug::adam_params hp;
        hp.lr = cfg.lr;
        hp.beta1 = cfg.beta1;
        hp.beta2 = cfg.beta2;
        hp.epsilon = cfg.epsilon;
        hp.weight_decay = cfg.weight_decay;
        hp.step = ref.steps();
        REQUIRE_FALSE(be.adam_step(dp->f(), dg->f(), dm.f(), dv.f(), n, hp));
        break;
      }
    }
    auto got = to_host(be, dp->f(), n);
    INFO("step " << s + 1);
    REQUIRE(std::memcmp(got.data(), ref_params.data(), n * 4) == 0);
    if (cfg.kind != understudy::actors::optimizer_kind::sgd)
      REQUIRE(std::memcmp(to_host(be, dm.f(), n).data(), ref.state_m().data(), n * 4) == 0);
    if (cfg.kind == understudy::actors::optimizer_kind::adam)
      REQUIRE(std::memcmp(to_host(be, dv.f(), n).data(), ref.state_v().data(), n * 4) == 0);
  }
}

void check_optimizers(ug::backend& be) {
  for (auto kind :
       {understudy::actors::optimizer_kind::sgd, understudy::actors::optimizer_kind::momentum,
        understudy::actors::optimizer_kind::adam}) {
    for (float wd : {0.0f, 0.01f}) {
      understudy::actors::optimizer_config cfg;
      cfg.kind = kind;
      cfg.lr = kind == understudy::actors::optimizer_kind::adam ? 0.003f : 0.05f;
      cfg.weight_decay = wd;
      INFO(understudy::actors::to_string(kind) << " weight_decay " << wd);
      check_optimizer(be, cfg);
    }
  }
}

/// Runs understudy::actors::mlp's forward and backward pass with backend operations.
/// Returns the mean loss; writes the gradient in the mlp's parameter layout.
double mlp_on_backend(ug::backend& be, const understudy::actors::mlp& net,
                      const std::vector<float>& params, const std::vector<float>& inputs,
                      const std::vector<uint32_t>& labels, std::vector<float>& grad) {
  const size_t batch = labels.size();
  const size_t layers = net.layer_count();
  auto dparams = to_device(be, params);
  auto dlabels = to_device(be, labels);
  device_buffer dgrad{be, params.size() * 4};
  // acts[0] = inputs, acts[l] = output of layer l (after ReLU but for the last).
  std::vector<std::unique_ptr<device_buffer>> acts;
  acts.push_back(to_device(be, inputs));
  for (size_t l = 0; l < layers; ++l) {
    const auto& s = net.layer(l);
    auto out = std::make_unique<device_buffer>(be, batch * s.fan_out * 4);
    REQUIRE_FALSE(be.gemm(false, false, batch, s.fan_out, s.fan_in, 1.0f, acts[l]->f(), s.fan_in,
                          dparams->f() + s.weights, s.fan_out, 0.0f, out->f(), s.fan_out));
    REQUIRE_FALSE(be.add_bias(out->f(), dparams->f() + s.biases, batch, s.fan_out));
    if (l + 1 < layers)
      REQUIRE_FALSE(be.relu(out->f(), out->f(), batch * s.fan_out));
    acts.push_back(std::move(out));
  }
  const size_t classes = net.class_count();
  device_buffer loss{be, batch * 4};
  auto d = std::make_unique<device_buffer>(be, batch * classes * 4);
  REQUIRE_FALSE(be.softmax_xent(acts[layers]->f(), dlabels->u(), batch, classes,
                                1.0f / static_cast<float>(batch), loss.f(), d->f()));
  for (size_t l = layers; l-- > 0;) {
    const auto& s = net.layer(l);
    REQUIRE_FALSE(be.gemm(true, false, s.fan_in, s.fan_out, batch, 1.0f, acts[l]->f(), s.fan_in,
                          d->f(), s.fan_out, 0.0f, dgrad.f() + s.weights, s.fan_out));
    REQUIRE_FALSE(be.bias_grad(d->f(), batch, s.fan_out, dgrad.f() + s.biases));
    if (l > 0) {
      auto prev = std::make_unique<device_buffer>(be, batch * s.fan_in * 4);
      REQUIRE_FALSE(be.gemm(false, true, batch, s.fan_in, s.fan_out, 1.0f, d->f(), s.fan_out,
                            dparams->f() + s.weights, s.fan_out, 0.0f, prev->f(), s.fan_in));
      REQUIRE_FALSE(be.relu_grad(acts[l]->f(), prev->f(), prev->f(), batch * s.fan_in));
      d = std::move(prev);
    }
  }
  grad = to_host(be, dgrad.f(), params.size());
  auto l = to_host(be, loss.f(), batch);
  double total = 0.0;
  for (float x : l)
    total += x;
  return total / static_cast<double>(batch);
}

void check_mlp(ug::backend& be) {
  understudy::actors::mlp net{{20, 16, 12, 5}};
  const size_t batch = 9;
  std::vector<float> params(net.parameter_count());
  net.init_parameter_range(params.data(), 0, params.size(), 42);
  auto inputs = random_floats(batch * net.input_dim(), 43, 0.0f, 1.0f);
  for (size_t i = 0; i < inputs.size(); i += 3)
    inputs[i] = 0.0f; // sparse inputs, as in digits
  std::vector<uint32_t> labels(batch);
  for (size_t b = 0; b < batch; ++b)
    labels[b] = static_cast<uint32_t>(b % net.class_count());
  understudy::actors::batch_view view{inputs.data(), labels.data(), batch, net.input_dim()};
  std::vector<float> want_grad(params.size());
  const double want_loss = net.loss_and_gradient(params.data(), view, want_grad.data());
  std::vector<float> grad;
  const double loss = mlp_on_backend(be, net, params, inputs, labels, grad);
  REQUIRE(std::fabs(loss - want_loss) <= 1e-5 * std::fabs(want_loss));
  float largest = 0.0f;
  for (float g : want_grad)
    largest = std::max(largest, std::fabs(g));
  REQUIRE(largest > 0.0f);
  for (size_t i = 0; i < grad.size(); ++i) {
    INFO("gradient " << i << ": " << grad[i] << ", mlp " << want_grad[i]);
    REQUIRE(std::fabs(grad[i] - want_grad[i]) <= 1e-5f * largest);
  }
}

void check_completion(ug::backend& be) {
  auto values = random_floats(64, 5);
  auto d = to_device(be, values);
  REQUIRE_FALSE(be.scale(values.size(), 2.0f, d->f()));
  bool called = false;
  caf::error status = ug::make_error(ug::gpu_errc::none, "not called");
  REQUIRE_FALSE(be.when_done([&](caf::error err) {
    status = std::move(err);
    called = true;
  }));
  REQUIRE_FALSE(be.synchronize()); // on cuda the callback ran before the stream drained
  REQUIRE(called);
  REQUIRE_FALSE(status);
  REQUIRE(be.idle());
  REQUIRE_FALSE(be.check());
}

} // namespace

BACKEND_TEST("computes GEMM for every transpose combination within the float error bound",
             check_gemm)

BACKEND_TEST("uploads, downloads, copies and fills buffers exactly", check_transfers)

BACKEND_TEST("computes ReLU, its gradient, bias, bias gradient, axpy and scale exactly",
             check_elementwise)

BACKEND_TEST("computes softmax cross-entropy and its gradient as hand-computed", check_softmax_xent)

BACKEND_TEST("applies sgd, momentum and adam bit for bit like the actors' optimizer",
             check_optimizers)

BACKEND_TEST("runs the MLP's forward and backward pass like understudy::actors::mlp", check_mlp)

BACKEND_TEST("reports completion through when_done", check_completion)

TEST_CASE("the cpu backend rejects bad arguments and cannot inject a fault", "[gpu_ops]") {
  auto be = ug::make_cpu_backend();
  REQUIRE(be->kind() == ug::backend_kind::cpu);
  REQUIRE(be->device() == -1);
  REQUIRE(be->describe() == "cpu");
  float x[4] = {};
  REQUIRE(ug::is(be->relu(nullptr, x, 4), ug::gpu_errc::invalid_argument));
  REQUIRE(ug::is(be->gemm(false, false, 2, 2, 2, 1.0f, x, 1, x, 2, 0.0f, x, 2),
                 ug::gpu_errc::invalid_argument));
  auto err = be->inject_fault(ug::fault_kind::illegal_address);
  REQUIRE(ug::is(err, ug::gpu_errc::unsupported));
  REQUIRE(understudy::describe(err).find("illegal_address") != std::string::npos);
}

TEST_CASE("adam's bias corrections are those of the actors' optimizer", "[gpu_ops]") {
  auto c = ug::adam_bias_corrections(0.9f, 0.999f, 1);
  REQUIRE(c.c1 == static_cast<float>(1.0 - static_cast<double>(0.9f)));
  REQUIRE(c.c2 == static_cast<float>(1.0 - static_cast<double>(0.999f)));
  auto c3 = ug::adam_bias_corrections(0.5f, 0.25f, 3);
  REQUIRE(c3.c1 == 0.875f);
  REQUIRE(c3.c2 == static_cast<float>(1.0 - 0.25 * 0.25 * 0.25));
}

TEST_CASE("backend kinds print and parse", "[gpu_ops]") {
  REQUIRE(ug::to_string(ug::backend_kind::cpu) == "cpu");
  REQUIRE(ug::to_string(ug::backend_kind::cuda) == "cuda");
  REQUIRE(ug::parse_backend_kind("cuda") == ug::backend_kind::cuda);
  auto bad = ug::parse_backend_kind("tpu");
  REQUIRE_FALSE(bad);
  REQUIRE(understudy::describe(bad.error()).find("'tpu'") != std::string::npos);
  auto be = ug::make_backend(ug::backend_kind::cpu, 0);
  REQUIRE(be);
  REQUIRE((*be)->kind() == ug::backend_kind::cpu);
}
