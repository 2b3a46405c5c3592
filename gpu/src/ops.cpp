#include "understudy/gpu/ops.hpp"

#include <utility>

#include "op_table.hpp"

namespace understudy::gpu {

std::string to_string(op_code x) {
  auto* spec = find_op(x);
  return spec != nullptr ? std::string{spec->name} : "unknown";
}

namespace {

op make(op_code code, std::vector<slice> operands, std::vector<uint64_t> sizes = {},
        std::vector<float> scalars = {}) {
  op result;
  result.code = code;
  result.operands = std::move(operands);
  result.sizes = std::move(sizes);
  result.scalars = std::move(scalars);
  return result;
}

} // namespace

void op_batch::allocate(buffer_id id, uint64_t count) {
  ops.push_back(make(op_code::allocate, {slice{id, 0, count}}));
}

void op_batch::release(buffer_id id) {
  ops.push_back(make(op_code::release, {slice{id, 0, 0}}));
}

void op_batch::upload(slice dst, std::vector<float> values) {
  auto x = make(op_code::upload, {dst});
  x.data = std::move(values);
  ops.push_back(std::move(x));
}

void op_batch::upload(slice dst, std::vector<uint32_t> values) {
  auto x = make(op_code::upload, {dst});
  x.words = std::move(values);
  ops.push_back(std::move(x));
}

size_t op_batch::download(slice src) {
  size_t index = 0;
  for (auto& x : ops)
    if (x.code == op_code::download)
      ++index;
  ops.push_back(make(op_code::download, {src}));
  return index;
}

void op_batch::fill(slice x, float value) {
  ops.push_back(make(op_code::fill, {x}, {}, {value}));
}

void op_batch::copy(slice src, slice dst) {
  ops.push_back(make(op_code::copy, {src, dst}));
}

void op_batch::gemm(bool trans_a, bool trans_b, uint64_t m, uint64_t n, uint64_t k, float alpha,
                    slice a, slice b, float beta, slice c) {
  ops.push_back(make(op_code::gemm, {a, b, c}, {m, n, k, trans_a ? 1u : 0u, trans_b ? 1u : 0u},
                     {alpha, beta}));
}

void op_batch::add_bias(slice x, slice bias, uint64_t rows, uint64_t cols) {
  ops.push_back(make(op_code::add_bias, {x, bias}, {rows, cols}));
}

void op_batch::relu(slice in, slice out) {
  ops.push_back(make(op_code::relu, {in, out}));
}

void op_batch::relu_grad(slice pre, slice grad_out, slice grad_in) {
  ops.push_back(make(op_code::relu_grad, {pre, grad_out, grad_in}));
}

void op_batch::bias_grad(slice d, uint64_t rows, uint64_t cols, slice out) {
  ops.push_back(make(op_code::bias_grad, {d, out}, {rows, cols}));
}

void op_batch::softmax_xent(slice logits, slice labels, uint64_t rows, uint64_t classes,
                            float grad_scale, slice loss, slice grad) {
  ops.push_back(
      make(op_code::softmax_xent, {logits, labels, loss, grad}, {rows, classes}, {grad_scale}));
}

void op_batch::axpy(float alpha, slice x, slice y) {
  ops.push_back(make(op_code::axpy, {x, y}, {}, {alpha}));
}

void op_batch::scale(float alpha, slice x) {
  ops.push_back(make(op_code::scale, {x}, {}, {alpha}));
}

void op_batch::sgd_step(slice p, slice g, const sgd_params& hp) {
  ops.push_back(make(op_code::sgd_step, {p, g}, {}, {hp.lr, hp.weight_decay}));
}

void op_batch::momentum_step(slice p, slice g, slice m, const momentum_params& hp) {
  ops.push_back(make(op_code::momentum_step, {p, g, m}, {}, {hp.lr, hp.momentum, hp.weight_decay}));
}

void op_batch::adam_step(slice p, slice g, slice m, slice v, const adam_params& hp) {
  ops.push_back(make(op_code::adam_step, {p, g, m, v}, {hp.step},
                     {hp.lr, hp.beta1, hp.beta2, hp.epsilon, hp.weight_decay}));
}

void op_batch::inject_fault(fault_kind x) {
  ops.push_back(make(op_code::inject_fault, {}, {static_cast<uint64_t>(x)}));
}

void op_batch::all_reduce(slice x) {
  ops.push_back(make(op_code::all_reduce, {x}));
}

void op_batch::broadcast(slice x, uint32_t root) {
  ops.push_back(make(op_code::broadcast, {x}, {root}));
}

} // namespace understudy::gpu
