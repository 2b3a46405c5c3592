#include "executor.hpp"

#include <string>
#include <utility>

namespace understudy::gpu {

caf::error executor::validate(const op_batch& batch) const {
  buffer_sizes sizes;
  for (auto& [id, buf] : buffers_)
    sizes.emplace(id, buf.count);
  for (size_t i = 0; i < batch.ops.size(); ++i) {
    const auto& x = batch.ops[i];
    op_checker c{sizes, i, x};
    auto* spec = find_op(x.code);
    if (spec == nullptr)
      return c.fail("unknown op code " + std::to_string(static_cast<int>(x.code)));
    if (auto err = spec->check(c))
      return err;
  }
  return {};
}

size_t executor::staging_bytes(const op_batch& batch) {
  size_t total = 0;
  for (auto& x : batch.ops)
    if (auto* spec = find_op(x.code))
      total += spec->staging(x);
  return total;
}

float* executor::at(const slice& x) const {
  return static_cast<float*>(buffers_.at(x.buffer).ptr) + x.offset;
}

caf::error executor::create(buffer_id id, uint64_t count) {
  auto ptr = be_.allocate(count * 4);
  if (!ptr)
    return std::move(ptr.error());
  buffers_.emplace(id, buffer{*ptr, count});
  return {};
}

void executor::destroy(buffer_id id) noexcept {
  auto i = buffers_.find(id);
  be_.release(i->second.ptr);
  buffers_.erase(i);
}

caf::error executor::enqueue(const op_batch& batch, std::byte* staging,
                             std::vector<download_slot>& downloads) {
  op_run run{*this, staging, downloads};
  for (auto& x : batch.ops)
    if (auto err = find_op(x.code)->enqueue(run, x))
      return err;
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
