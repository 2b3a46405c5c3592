#include "op_table.hpp"

#include <cstring>
#include <utility>

#include "executor.hpp"
#include "understudy/gpu/errors.hpp"

namespace understudy::gpu {

// -- op_checker -----------------------------------------------------------------------

op_checker::op_checker(buffer_sizes& sizes, size_t index, const op& x)
    : sizes_(sizes), index_(index), op_(x) {
  // nop
}

caf::error op_checker::fail(const std::string& what) const {
  return make_error(gpu_errc::invalid_argument,
                    "op " + std::to_string(index_) + " (" + to_string(op_.code) + "): " + what);
}

caf::error op_checker::shape(size_t operands, size_t sizes, size_t scalars) const {
  if (op_.operands.size() != operands || op_.sizes.size() != sizes || op_.scalars.size() != scalars)
    return fail("expected " + std::to_string(operands) + " operands, " + std::to_string(sizes) +
                " sizes and " + std::to_string(scalars) + " scalars, got " +
                std::to_string(op_.operands.size()) + ", " + std::to_string(op_.sizes.size()) +
                " and " + std::to_string(op_.scalars.size()));
  if (!op_.data.empty() || !op_.words.empty())
    if (op_.code != op_code::upload)
      return fail("only uploads carry data");
  return {};
}

caf::error op_checker::operand(size_t i, const char* name, uint64_t want) const {
  const auto& x = op_.operands[i];
  auto b = sizes_.find(x.buffer);
  if (b == sizes_.end())
    return fail(std::string{name} + ": no buffer " + std::to_string(x.buffer));
  if (x.offset > b->second || x.count > b->second - x.offset)
    return fail(std::string{name} + ": " + show(x) + " exceeds the buffer's " +
                std::to_string(b->second) + " elements");
  if (want != npos && x.count != want)
    return fail(std::string{name} + ": " + show(x) + " has " + std::to_string(x.count) +
                " elements, the shape needs " + std::to_string(want));
  return {};
}

caf::error op_checker::all_operands_same_count() const {
  for (size_t i = 1; i < op_.operands.size(); ++i)
    if (op_.operands[i].count != op_.operands[0].count)
      return fail("operands differ in size (" + std::to_string(op_.operands[0].count) + " and " +
                  std::to_string(op_.operands[i].count) + ")");
  return {};
}

caf::error op_checker::pairwise_same_or_disjoint() const {
  for (size_t i = 0; i < op_.operands.size(); ++i)
    for (size_t j = i + 1; j < op_.operands.size(); ++j)
      if (!(op_.operands[i] == op_.operands[j]) && overlaps(op_.operands[i], op_.operands[j]))
        return fail(show(op_.operands[i]) + " partly overlaps " + show(op_.operands[j]));
  return {};
}

caf::error op_checker::elementwise(size_t operands, size_t scalars, size_t sizes) const {
  if (auto err = shape(operands, sizes, scalars))
    return err;
  for (size_t i = 0; i < operands; ++i)
    if (auto err = operand(i, "operand"))
      return err;
  if (auto err = all_operands_same_count())
    return err;
  return pairwise_same_or_disjoint();
}

uint64_t op_checker::product(uint64_t a, uint64_t b) {
  if (a != 0 && b > max_elements / a)
    return std::numeric_limits<uint64_t>::max();
  return a * b;
}

bool op_checker::overlaps(const slice& x, const slice& y) {
  return x.buffer == y.buffer && x.count > 0 && y.count > 0 && x.offset < y.offset + y.count &&
         y.offset < x.offset + x.count;
}

std::string op_checker::show(const slice& x) {
  return "buffer " + std::to_string(x.buffer) + " [" + std::to_string(x.offset) + ", +" +
         std::to_string(x.count) + ")";
}

std::byte* op_run::stage(size_t bytes) {
  auto* result = staging + staged;
  staged += (bytes + staging_alignment - 1) / staging_alignment * staging_alignment;
  return result;
}

namespace {

using c = op_checker;

size_t no_staging(const op&) {
  return 0;
}

/// Uploads and downloads stage their one operand's elements.
size_t staged_operand(const op& x) {
  if (x.operands.size() != 1)
    return 0;
  return (x.operands[0].count * 4 + staging_alignment - 1) / staging_alignment * staging_alignment;
}

float* at(op_run& r, const slice& x) {
  return r.exec.at(x);
}

backend& be(op_run& r) {
  return r.exec.device();
}

// -- per op: check and enqueue ----------------------------------------------------------

caf::error check_allocate(op_checker& ck) {
  if (auto err = ck.shape(1, 0, 0))
    return err;
  const auto& s = ck.x().operands[0];
  if (ck.sizes().count(s.buffer) != 0)
    return ck.fail("buffer " + std::to_string(s.buffer) + " already exists");
  if (s.offset != 0 || s.count == 0 || s.count > c::max_elements)
    return ck.fail("a new buffer needs offset 0 and 1 to " + std::to_string(c::max_elements) +
                   " elements, got " + c::show(s));
  ck.sizes().emplace(s.buffer, s.count);
  return {};
}

caf::error run_allocate(op_run& r, const op& x) {
  return r.exec.create(x.operands[0].buffer, x.operands[0].count);
}

caf::error check_release(op_checker& ck) {
  if (auto err = ck.shape(1, 0, 0))
    return err;
  if (ck.sizes().erase(ck.x().operands[0].buffer) == 0)
    return ck.fail("no buffer " + std::to_string(ck.x().operands[0].buffer));
  return {};
}

caf::error run_release(op_run& r, const op& x) {
  r.exec.destroy(x.operands[0].buffer);
  return {};
}

caf::error check_upload(op_checker& ck) {
  const auto& x = ck.x();
  if (x.operands.size() != 1 || !x.sizes.empty() || !x.scalars.empty())
    return ck.fail("expected one operand and no sizes or scalars");
  if (!x.data.empty() && !x.words.empty())
    return ck.fail("carries both float and label data");
  return ck.operand(0, "dst", x.data.empty() ? x.words.size() : x.data.size());
}

caf::error run_upload(op_run& r, const op& x) {
  const size_t bytes = x.operands[0].count * 4;
  auto* staged = r.stage(bytes);
  if (bytes == 0)
    return {};
  const void* src = x.data.empty() ? static_cast<const void*>(x.words.data())
                                   : static_cast<const void*>(x.data.data());
  std::memcpy(staged, src, bytes);
  return be(r).upload(at(r, x.operands[0]), staged, bytes);
}

caf::error check_download(op_checker& ck) {
  if (auto err = ck.shape(1, 0, 0))
    return err;
  return ck.operand(0, "src");
}

caf::error run_download(op_run& r, const op& x) {
  const size_t bytes = x.operands[0].count * 4;
  const size_t offset = r.staged;
  auto* staged = r.stage(bytes);
  r.downloads.push_back(download_slot{offset, x.operands[0].count});
  if (bytes == 0)
    return {};
  return be(r).download(staged, at(r, x.operands[0]), bytes);
}

caf::error check_fill(op_checker& ck) {
  return ck.elementwise(1, 1);
}

caf::error run_fill(op_run& r, const op& x) {
  return be(r).fill(at(r, x.operands[0]), x.operands[0].count, x.scalars[0]);
}

caf::error check_copy(op_checker& ck) {
  const auto& x = ck.x();
  if (auto err = ck.shape(2, 0, 0))
    return err;
  if (auto err = ck.operand(0, "src"))
    return err;
  if (auto err = ck.operand(1, "dst", x.operands[0].count))
    return err;
  if (c::overlaps(x.operands[0], x.operands[1]))
    return ck.fail("source and destination overlap");
  return {};
}

caf::error run_copy(op_run& r, const op& x) {
  const auto& s = x.operands;
  return be(r).copy(at(r, s[1]), at(r, s[0]), s[0].count * 4);
}

caf::error check_gemm(op_checker& ck) {
  const auto& x = ck.x();
  if (auto err = ck.shape(3, 5, 2))
    return err;
  const auto m = x.sizes[0];
  const auto n = x.sizes[1];
  const auto k = x.sizes[2];
  if (x.sizes[3] > 1 || x.sizes[4] > 1)
    return ck.fail("transpose flags must be 0 or 1");
  if (auto err = ck.operand(0, "a", c::product(m, k)))
    return err;
  if (auto err = ck.operand(1, "b", c::product(k, n)))
    return err;
  if (auto err = ck.operand(2, "c", c::product(m, n)))
    return err;
  if (c::overlaps(x.operands[2], x.operands[0]) || c::overlaps(x.operands[2], x.operands[1]))
    return ck.fail("c overlaps an input");
  return {};
}

caf::error run_gemm(op_run& r, const op& x) {
  const auto& s = x.operands;
  const auto m = x.sizes[0];
  const auto n = x.sizes[1];
  const auto k = x.sizes[2];
  const bool ta = x.sizes[3] != 0;
  const bool tb = x.sizes[4] != 0;
  return be(r).gemm(ta, tb, m, n, k, x.scalars[0], at(r, s[0]), ta ? m : k, at(r, s[1]), tb ? k : n,
                    x.scalars[1], at(r, s[2]), n);
}

caf::error check_add_bias(op_checker& ck) {
  const auto& x = ck.x();
  if (auto err = ck.shape(2, 2, 0))
    return err;
  if (auto err = ck.operand(0, "x", c::product(x.sizes[0], x.sizes[1])))
    return err;
  if (auto err = ck.operand(1, "bias", x.sizes[1]))
    return err;
  if (c::overlaps(x.operands[0], x.operands[1]))
    return ck.fail("x overlaps bias");
  return {};
}

caf::error run_add_bias(op_run& r, const op& x) {
  return be(r).add_bias(at(r, x.operands[0]), at(r, x.operands[1]), x.sizes[0], x.sizes[1]);
}

caf::error check_relu(op_checker& ck) {
  return ck.elementwise(2, 0);
}

caf::error run_relu(op_run& r, const op& x) {
  return be(r).relu(at(r, x.operands[0]), at(r, x.operands[1]), x.operands[0].count);
}

caf::error check_relu_grad(op_checker& ck) {
  return ck.elementwise(3, 0);
}

caf::error run_relu_grad(op_run& r, const op& x) {
  const auto& s = x.operands;
  return be(r).relu_grad(at(r, s[0]), at(r, s[1]), at(r, s[2]), s[0].count);
}

caf::error check_bias_grad(op_checker& ck) {
  const auto& x = ck.x();
  if (auto err = ck.shape(2, 2, 0))
    return err;
  if (auto err = ck.operand(0, "d", c::product(x.sizes[0], x.sizes[1])))
    return err;
  if (auto err = ck.operand(1, "out", x.sizes[1]))
    return err;
  if (c::overlaps(x.operands[0], x.operands[1]))
    return ck.fail("d overlaps out");
  return {};
}

caf::error run_bias_grad(op_run& r, const op& x) {
  return be(r).bias_grad(at(r, x.operands[0]), x.sizes[0], x.sizes[1], at(r, x.operands[1]));
}

caf::error check_softmax_xent(op_checker& ck) {
  const auto& x = ck.x();
  if (auto err = ck.shape(4, 2, 1))
    return err;
  const auto rows = x.sizes[0];
  const auto classes = x.sizes[1];
  if (classes == 0)
    return ck.fail("zero classes");
  if (auto err = ck.operand(0, "logits", c::product(rows, classes)))
    return err;
  if (auto err = ck.operand(1, "labels", rows))
    return err;
  if (auto err = ck.operand(2, "loss", rows))
    return err;
  const auto& grad = x.operands[3];
  if (grad.count != 0) {
    if (auto err = ck.operand(3, "grad", c::product(rows, classes)))
      return err;
    if ((!(grad == x.operands[0]) && c::overlaps(grad, x.operands[0])) ||
        c::overlaps(grad, x.operands[1]) || c::overlaps(grad, x.operands[2]))
      return ck.fail("grad must be logits or not overlap the other operands");
  }
  if (c::overlaps(x.operands[2], x.operands[0]) || c::overlaps(x.operands[2], x.operands[1]) ||
      c::overlaps(x.operands[1], x.operands[0]))
    return ck.fail("logits, labels and loss must not overlap");
  return {};
}

caf::error run_softmax_xent(op_run& r, const op& x) {
  const auto& s = x.operands;
  auto* labels = reinterpret_cast<const uint32_t*>(at(r, s[1]));
  float* grad = s[3].count == 0 ? nullptr : at(r, s[3]);
  return be(r).softmax_xent(at(r, s[0]), labels, x.sizes[0], x.sizes[1], x.scalars[0], at(r, s[2]),
                            grad);
}

caf::error check_axpy(op_checker& ck) {
  return ck.elementwise(2, 1);
}

caf::error run_axpy(op_run& r, const op& x) {
  const auto& s = x.operands;
  return be(r).axpy(s[0].count, x.scalars[0], at(r, s[0]), at(r, s[1]));
}

caf::error check_scale(op_checker& ck) {
  return ck.elementwise(1, 1);
}

caf::error run_scale(op_run& r, const op& x) {
  return be(r).scale(x.operands[0].count, x.scalars[0], at(r, x.operands[0]));
}

caf::error check_sgd_step(op_checker& ck) {
  return ck.elementwise(2, 2);
}

caf::error run_sgd_step(op_run& r, const op& x) {
  const auto& s = x.operands;
  return be(r).sgd_step(at(r, s[0]), at(r, s[1]), s[0].count,
                        sgd_params{x.scalars[0], x.scalars[1]});
}

caf::error check_momentum_step(op_checker& ck) {
  return ck.elementwise(3, 3);
}

caf::error run_momentum_step(op_run& r, const op& x) {
  const auto& s = x.operands;
  return be(r).momentum_step(at(r, s[0]), at(r, s[1]), at(r, s[2]), s[0].count,
                             momentum_params{x.scalars[0], x.scalars[1], x.scalars[2]});
}

caf::error check_adam_step(op_checker& ck) {
  if (auto err = ck.elementwise(4, 5, 1))
    return err;
  if (ck.x().sizes[0] == 0)
    return ck.fail("the step counts from 1");
  return {};
}

caf::error run_adam_step(op_run& r, const op& x) {
  const auto& s = x.operands;
  adam_params hp;
  hp.lr = x.scalars[0];
  hp.beta1 = x.scalars[1];
  hp.beta2 = x.scalars[2];
  hp.epsilon = x.scalars[3];
  hp.weight_decay = x.scalars[4];
  hp.step = x.sizes[0];
  return be(r).adam_step(at(r, s[0]), at(r, s[1]), at(r, s[2]), at(r, s[3]), s[0].count, hp);
}

caf::error check_inject_fault(op_checker& ck) {
  if (auto err = ck.shape(0, 1, 0))
    return err;
  if (ck.x().sizes[0] != static_cast<uint64_t>(fault_kind::illegal_address))
    return ck.fail("unknown fault kind " + std::to_string(ck.x().sizes[0]));
  return {};
}

caf::error run_inject_fault(op_run& r, const op& x) {
  return be(r).inject_fault(static_cast<fault_kind>(x.sizes[0]));
}

caf::error check_all_reduce(op_checker& ck) {
  if (auto err = ck.shape(1, 0, 0))
    return err;
  return ck.operand(0, "x");
}

caf::error run_all_reduce(op_run& r, const op& x) {
  return be(r).all_reduce(at(r, x.operands[0]), x.operands[0].count);
}

caf::error check_broadcast(op_checker& ck) {
  if (auto err = ck.shape(1, 1, 0))
    return err;
  return ck.operand(0, "x");
}

caf::error run_broadcast(op_run& r, const op& x) {
  return be(r).broadcast(at(r, x.operands[0]), x.operands[0].count,
                         static_cast<uint32_t>(x.sizes[0]));
}

/// In op_code order (find_op indexes it by code).
constexpr op_spec table[] = {
    {op_code::allocate, "allocate", check_allocate, no_staging, run_allocate},
    {op_code::release, "release", check_release, no_staging, run_release},
    {op_code::upload, "upload", check_upload, staged_operand, run_upload},
    {op_code::download, "download", check_download, staged_operand, run_download},
    {op_code::fill, "fill", check_fill, no_staging, run_fill},
    {op_code::copy, "copy", check_copy, no_staging, run_copy},
    {op_code::gemm, "gemm", check_gemm, no_staging, run_gemm},
    {op_code::add_bias, "add_bias", check_add_bias, no_staging, run_add_bias},
    {op_code::relu, "relu", check_relu, no_staging, run_relu},
    {op_code::relu_grad, "relu_grad", check_relu_grad, no_staging, run_relu_grad},
    {op_code::bias_grad, "bias_grad", check_bias_grad, no_staging, run_bias_grad},
    {op_code::softmax_xent, "softmax_xent", check_softmax_xent, no_staging, run_softmax_xent},
    {op_code::axpy, "axpy", check_axpy, no_staging, run_axpy},
    {op_code::scale, "scale", check_scale, no_staging, run_scale},
    {op_code::sgd_step, "sgd_step", check_sgd_step, no_staging, run_sgd_step},
    {op_code::momentum_step, "momentum_step", check_momentum_step, no_staging, run_momentum_step},
    {op_code::adam_step, "adam_step", check_adam_step, no_staging, run_adam_step},
    {op_code::inject_fault, "inject_fault", check_inject_fault, no_staging, run_inject_fault},
    {op_code::all_reduce, "all_reduce", check_all_reduce, no_staging, run_all_reduce},
    {op_code::broadcast, "broadcast", check_broadcast, no_staging, run_broadcast},
};

constexpr size_t table_size = sizeof(table) / sizeof(table[0]);

constexpr bool in_code_order() {
  for (size_t i = 0; i < table_size; ++i)
    if (static_cast<size_t>(table[i].code) != i)
      return false;
  return true;
}

static_assert(in_code_order(), "the op table lists the ops in op_code order");

} // namespace

op_table_view op_table() noexcept {
  return {table, table_size};
}

const op_spec* find_op(op_code code) noexcept {
  const auto i = static_cast<size_t>(code);
  return i < table_size ? &table[i] : nullptr;
}

} // namespace understudy::gpu
