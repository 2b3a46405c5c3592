#include "executor.hpp"

#include <cstring>
#include <limits>
#include <string>

#include "understudy/gpu/errors.hpp"

namespace understudy::gpu {

namespace {

constexpr size_t staging_alignment = 256;
constexpr uint64_t max_elements = std::numeric_limits<size_t>::max() / 4 / 2;

size_t aligned(size_t bytes) {
  return (bytes + staging_alignment - 1) / staging_alignment * staging_alignment;
}

bool overlaps(const slice& x, const slice& y) {
  return x.buffer == y.buffer && x.count > 0 && y.count > 0 && x.offset < y.offset + y.count &&
         y.offset < x.offset + x.count;
}

/// Element-wise operands must be the same range or not overlap at all.
bool same_or_disjoint(const slice& x, const slice& y) {
  return x == y || !overlaps(x, y);
}

/// Returns a * b, or an overflow marker that matches no slice.
uint64_t product(uint64_t a, uint64_t b) {
  if (a != 0 && b > max_elements / a)
    return std::numeric_limits<uint64_t>::max();
  return a * b;
}

std::string show(const slice& x) {
  return "buffer " + std::to_string(x.buffer) + " [" + std::to_string(x.offset) + ", +" +
         std::to_string(x.count) + ")";
}

/// Checks one op against the simulated buffer table.
class checker {
public:
  checker(const std::unordered_map<buffer_id, uint64_t>& sizes, size_t index, const op& x)
      : sizes_(sizes), index_(index), op_(x) {
    // nop
  }

  caf::error fail(const std::string& what) const {
    return make_error(gpu_errc::invalid_argument,
                      "op " + std::to_string(index_) + " (" + to_string(op_.code) + "): " + what);
  }

  caf::error shape(size_t operands, size_t sizes, size_t scalars) const {
    if (op_.operands.size() != operands || op_.sizes.size() != sizes ||
        op_.scalars.size() != scalars)
      return fail("expected " + std::to_string(operands) + " operands, " + std::to_string(sizes) +
                  " sizes and " + std::to_string(scalars) + " scalars, got " +
                  std::to_string(op_.operands.size()) + ", " + std::to_string(op_.sizes.size()) +
                  " and " + std::to_string(op_.scalars.size()));
    if (!op_.data.empty() || !op_.words.empty())
      if (op_.code != op_code::upload)
        return fail("only uploads carry data");
    return {};
  }

  /// Checks that operand `i` (named `name`) lies in a live buffer and, unless
  /// `want` is npos, holds exactly `want` elements.
  caf::error operand(size_t i, const char* name, uint64_t want = npos) const {
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

  caf::error all_operands_same_count() const {
    for (size_t i = 1; i < op_.operands.size(); ++i)
      if (op_.operands[i].count != op_.operands[0].count)
        return fail("operands differ in size (" + std::to_string(op_.operands[0].count) + " and " +
                    std::to_string(op_.operands[i].count) + ")");
    return {};
  }

  caf::error pairwise_same_or_disjoint() const {
    for (size_t i = 0; i < op_.operands.size(); ++i)
      for (size_t j = i + 1; j < op_.operands.size(); ++j)
        if (!same_or_disjoint(op_.operands[i], op_.operands[j]))
          return fail(show(op_.operands[i]) + " partly overlaps " + show(op_.operands[j]));
    return {};
  }

  static constexpr uint64_t npos = std::numeric_limits<uint64_t>::max() - 1;

private:
  const std::unordered_map<buffer_id, uint64_t>& sizes_;
  size_t index_;
  const op& op_;
};

caf::error check_elementwise(const checker& c, size_t operands, size_t scalars, size_t sizes = 0) {
  if (auto err = c.shape(operands, sizes, scalars))
    return err;
  for (size_t i = 0; i < operands; ++i)
    if (auto err = c.operand(i, "operand"))
      return err;
  if (auto err = c.all_operands_same_count())
    return err;
  return c.pairwise_same_or_disjoint();
}

caf::error check_op(std::unordered_map<buffer_id, uint64_t>& sizes, size_t index, const op& x) {
  checker c{sizes, index, x};
  switch (x.code) {
    case op_code::allocate: {
      if (auto err = c.shape(1, 0, 0))
        return err;
      const auto& s = x.operands[0];
      if (sizes.count(s.buffer) != 0)
        return c.fail("buffer " + std::to_string(s.buffer) + " already exists");
      if (s.offset != 0 || s.count == 0 || s.count > max_elements)
        return c.fail("a new buffer needs offset 0 and 1 to " + std::to_string(max_elements) +
                      " elements, got " + show(s));
      sizes.emplace(s.buffer, s.count);
      return {};
    }
    case op_code::release: {
      if (auto err = c.shape(1, 0, 0))
        return err;
      if (sizes.erase(x.operands[0].buffer) == 0)
        return c.fail("no buffer " + std::to_string(x.operands[0].buffer));
      return {};
    }
    case op_code::upload: {
      if (x.operands.size() != 1 || !x.sizes.empty() || !x.scalars.empty())
        return c.fail("expected one operand and no sizes or scalars");
      if (!x.data.empty() && !x.words.empty())
        return c.fail("carries both float and label data");
      return c.operand(0, "dst", x.data.empty() ? x.words.size() : x.data.size());
    }
    case op_code::download:
      if (auto err = c.shape(1, 0, 0))
        return err;
      return c.operand(0, "src");
    case op_code::fill:
      return check_elementwise(c, 1, 1);
    case op_code::copy:
      if (auto err = c.shape(2, 0, 0))
        return err;
      if (auto err = c.operand(0, "src"))
        return err;
      if (auto err = c.operand(1, "dst", x.operands[0].count))
        return err;
      if (overlaps(x.operands[0], x.operands[1]))
        return c.fail("source and destination overlap");
      return {};
    case op_code::gemm: {
      if (auto err = c.shape(3, 5, 2))
        return err;
      const auto m = x.sizes[0];
      const auto n = x.sizes[1];
      const auto k = x.sizes[2];
      if (x.sizes[3] > 1 || x.sizes[4] > 1)
        return c.fail("transpose flags must be 0 or 1");
      if (auto err = c.operand(0, "a", product(m, k)))
        return err;
      if (auto err = c.operand(1, "b", product(k, n)))
        return err;
      if (auto err = c.operand(2, "c", product(m, n)))
        return err;
      if (overlaps(x.operands[2], x.operands[0]) || overlaps(x.operands[2], x.operands[1]))
        return c.fail("c overlaps an input");
      return {};
    }
    case op_code::add_bias: {
      if (auto err = c.shape(2, 2, 0))
        return err;
      if (auto err = c.operand(0, "x", product(x.sizes[0], x.sizes[1])))
        return err;
      if (auto err = c.operand(1, "bias", x.sizes[1]))
        return err;
      if (overlaps(x.operands[0], x.operands[1]))
        return c.fail("x overlaps bias");
      return {};
    }
    case op_code::relu:
      return check_elementwise(c, 2, 0);
    case op_code::relu_grad:
      return check_elementwise(c, 3, 0);
    case op_code::bias_grad: {
      if (auto err = c.shape(2, 2, 0))
        return err;
      if (auto err = c.operand(0, "d", product(x.sizes[0], x.sizes[1])))
        return err;
      if (auto err = c.operand(1, "out", x.sizes[1]))
        return err;
      if (overlaps(x.operands[0], x.operands[1]))
        return c.fail("d overlaps out");
      return {};
    }
    case op_code::softmax_xent: {
      if (auto err = c.shape(4, 2, 1))
        return err;
      const auto rows = x.sizes[0];
      const auto classes = x.sizes[1];
      if (classes == 0)
        return c.fail("zero classes");
      if (auto err = c.operand(0, "logits", product(rows, classes)))
        return err;
      if (auto err = c.operand(1, "labels", rows))
        return err;
      if (auto err = c.operand(2, "loss", rows))
        return err;
      const auto& grad = x.operands[3];
      if (grad.count != 0) {
        if (auto err = c.operand(3, "grad", product(rows, classes)))
          return err;
        if (!same_or_disjoint(grad, x.operands[0]) || overlaps(grad, x.operands[1]) ||
            overlaps(grad, x.operands[2]))
          return c.fail("grad must be logits or not overlap the other operands");
      }
      if (overlaps(x.operands[2], x.operands[0]) || overlaps(x.operands[2], x.operands[1]) ||
          overlaps(x.operands[1], x.operands[0]))
        return c.fail("logits, labels and loss must not overlap");
      return {};
    }
    case op_code::axpy:
      return check_elementwise(c, 2, 1);
    case op_code::scale:
      return check_elementwise(c, 1, 1);
    case op_code::sgd_step:
      return check_elementwise(c, 2, 2);
    case op_code::momentum_step:
      return check_elementwise(c, 3, 3);
    case op_code::adam_step:
      if (auto err = check_elementwise(c, 4, 5, 1))
        return err;
      if (x.sizes[0] == 0)
        return c.fail("the step counts from 1");
      return {};
    case op_code::all_reduce:
      if (auto err = c.shape(1, 0, 0))
        return err;
      return c.operand(0, "x");
    case op_code::broadcast:
      if (auto err = c.shape(1, 1, 0))
        return err;
      return c.operand(0, "x");
    case op_code::inject_fault:
      if (auto err = c.shape(0, 1, 0))
        return err;
      if (x.sizes[0] != static_cast<uint64_t>(fault_kind::illegal_address))
        return c.fail("unknown fault kind " + std::to_string(x.sizes[0]));
      return {};
  }
  return c.fail("unknown op code " + std::to_string(static_cast<int>(x.code)));
}

} // namespace

caf::error executor::validate(const op_batch& batch) const {
  std::unordered_map<buffer_id, uint64_t> sizes;
  for (auto& [id, buf] : buffers_)
    sizes.emplace(id, buf.count);
  for (size_t i = 0; i < batch.ops.size(); ++i)
    if (auto err = check_op(sizes, i, batch.ops[i]))
      return err;
  return {};
}

size_t executor::staging_bytes(const op_batch& batch) {
  size_t total = 0;
  for (auto& x : batch.ops)
    if ((x.code == op_code::upload || x.code == op_code::download) && x.operands.size() == 1)
      total += aligned(x.operands[0].count * 4);
  return total;
}

float* executor::at(const slice& x) const {
  return static_cast<float*>(buffers_.at(x.buffer).ptr) + x.offset;
}

caf::error executor::enqueue(const op_batch& batch, std::byte* staging,
                             std::vector<download_slot>& downloads) {
  size_t staged = 0;
  for (auto& x : batch.ops) {
    const auto& s = x.operands;
    caf::error err;
    switch (x.code) {
      case op_code::allocate: {
        auto ptr = be_.allocate(s[0].count * 4);
        if (!ptr)
          return std::move(ptr.error());
        buffers_.emplace(s[0].buffer, buffer{*ptr, s[0].count});
        break;
      }
      case op_code::release: {
        auto i = buffers_.find(s[0].buffer);
        be_.release(i->second.ptr);
        buffers_.erase(i);
        break;
      }
      case op_code::upload: {
        const size_t bytes = s[0].count * 4;
        if (bytes > 0) {
          const void* src = x.data.empty() ? static_cast<const void*>(x.words.data())
                                           : static_cast<const void*>(x.data.data());
          std::memcpy(staging + staged, src, bytes);
          err = be_.upload(at(s[0]), staging + staged, bytes);
        }
        staged += aligned(bytes);
        break;
      }
      case op_code::download: {
        const size_t bytes = s[0].count * 4;
        downloads.push_back(download_slot{staged, s[0].count});
        if (bytes > 0)
          err = be_.download(staging + staged, at(s[0]), bytes);
        staged += aligned(bytes);
        break;
      }
      case op_code::fill:
        err = be_.fill(at(s[0]), s[0].count, x.scalars[0]);
        break;
      case op_code::copy:
        err = be_.copy(at(s[1]), at(s[0]), s[0].count * 4);
        break;
      case op_code::gemm: {
        const auto m = x.sizes[0];
        const auto n = x.sizes[1];
        const auto k = x.sizes[2];
        const bool ta = x.sizes[3] != 0;
        const bool tb = x.sizes[4] != 0;
        err = be_.gemm(ta, tb, m, n, k, x.scalars[0], at(s[0]), ta ? m : k, at(s[1]), tb ? k : n,
                       x.scalars[1], at(s[2]), n);
        break;
      }
      case op_code::add_bias:
        err = be_.add_bias(at(s[0]), at(s[1]), x.sizes[0], x.sizes[1]);
        break;
      case op_code::relu:
        err = be_.relu(at(s[0]), at(s[1]), s[0].count);
        break;
      case op_code::relu_grad:
        err = be_.relu_grad(at(s[0]), at(s[1]), at(s[2]), s[0].count);
        break;
      case op_code::bias_grad:
        err = be_.bias_grad(at(s[0]), x.sizes[0], x.sizes[1], at(s[1]));
        break;
      case op_code::softmax_xent: {
        auto* labels = reinterpret_cast<const uint32_t*>(at(s[1]));
        float* grad = s[3].count == 0 ? nullptr : at(s[3]);
        err = be_.softmax_xent(at(s[0]), labels, x.sizes[0], x.sizes[1], x.scalars[0], at(s[2]),
                               grad);
        break;
      }
      case op_code::axpy:
        err = be_.axpy(s[0].count, x.scalars[0], at(s[0]), at(s[1]));
        break;
      case op_code::scale:
        err = be_.scale(s[0].count, x.scalars[0], at(s[0]));
        break;
      case op_code::sgd_step:
        err = be_.sgd_step(at(s[0]), at(s[1]), s[0].count, sgd_params{x.scalars[0], x.scalars[1]});
        break;
      case op_code::momentum_step:
        err = be_.momentum_step(at(s[0]), at(s[1]), at(s[2]), s[0].count,
                                momentum_params{x.scalars[0], x.scalars[1], x.scalars[2]});
        break;
      case op_code::adam_step: {
        adam_params hp;
        hp.lr = x.scalars[0];
        hp.beta1 = x.scalars[1];
        hp.beta2 = x.scalars[2];
        hp.epsilon = x.scalars[3];
        hp.weight_decay = x.scalars[4];
        hp.step = x.sizes[0];
        err = be_.adam_step(at(s[0]), at(s[1]), at(s[2]), at(s[3]), s[0].count, hp);
        break;
      }
      case op_code::inject_fault:
        err = be_.inject_fault(static_cast<fault_kind>(x.sizes[0]));
        break;
      case op_code::all_reduce:
        err = be_.all_reduce(at(s[0]), s[0].count);
        break;
      case op_code::broadcast:
        err = be_.broadcast(at(s[0]), s[0].count, static_cast<uint32_t>(x.sizes[0]));
        break;
    }
    if (err)
      return err;
  }
  return {};
}

std::pair<float*, uint64_t> executor::buffer_of(buffer_id id) const {
  auto i = buffers_.find(id);
  if (i == buffers_.end())
    return {nullptr, 0};
  return {static_cast<float*>(i->second.ptr), i->second.count};
}

void executor::release_all() noexcept {
  for (auto& [id, buf] : buffers_)
    be_.release(buf.ptr);
  buffers_.clear();
}

} // namespace understudy::gpu
