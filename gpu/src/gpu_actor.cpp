#include "understudy/gpu/gpu_actor.hpp"

#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/typed_response_promise.hpp>

#include "executor.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/runtime/child_spec.hpp"

namespace understudy::gpu {

namespace {

/// `(gpu_done_atom, uint64_t seq, caf::error status)`: the stream finished
/// batch `seq`; posted by the backend's completion handler.
using gpu_done_atom = caf::atom_constant<caf::atom("gpu_done")>;

/// Host memory a batch stages its uploads and downloads in.
struct staging_block {
  void* ptr = nullptr;
  size_t bytes = 0;
};

/// A batch whose work is on the stream.
struct pending_batch {
  caf::typed_response_promise<batch_result> promise;
  staging_block staging;
  std::vector<executor::download_slot> downloads;
  /// An error that fails this batch only, delivered once the stream is done with it.
  caf::error failure;
};

/// Whether `err` from enqueueing fails only its batch; any other error fails the actor.
bool fails_batch_only(const caf::error& err) {
  return is(err, gpu_errc::invalid_argument) || is(err, gpu_errc::out_of_memory) ||
         is(err, gpu_errc::unsupported);
}

/// Everything a GPU actor owns; destroyed when the actor exits.
class gpu_state {
public:
  explicit gpu_state(std::unique_ptr<backend> be) : be_(std::move(be)), exec_(*be_) {
    // nop
  }

  gpu_state(const gpu_state&) = delete;
  gpu_state& operator=(const gpu_state&) = delete;

  ~gpu_state() {
    exec_.release_all();
    // Host memory the stream may still read or write must outlive it; an
    // actor killed mid-batch leaves those blocks to the process's exit
    // rather than wait for the device here.
    const bool idle = be_->idle();
    for (auto& block : free_)
      be_->release_host(block.ptr);
    if (idle)
      for (auto& [seq, p] : pending)
        be_->release_host(p.staging.ptr);
  }

  backend& be() { return *be_; }

  executor& exec() { return exec_; }

  /// Returns a staging block of at least `bytes` (smallest fitting free one, or a new one).
  caf::expected<staging_block> take(size_t bytes) {
    if (bytes == 0)
      return staging_block{};
    auto best = free_.end();
    for (auto i = free_.begin(); i != free_.end(); ++i)
      if (i->bytes >= bytes && (best == free_.end() || i->bytes < best->bytes))
        best = i;
    if (best != free_.end()) {
      auto result = *best;
      free_.erase(best);
      return result;
    }
    size_t size = 4096;
    while (size < bytes)
      size *= 2;
    auto ptr = be_->allocate_host(size);
    if (!ptr)
      return std::move(ptr.error());
    return staging_block{*ptr, size};
  }

  /// Returns a block that no enqueued work uses any more.
  void give(staging_block block) {
    if (block.ptr != nullptr)
      free_.push_back(block);
  }

  /// Batches on the stream by sequence number, in enqueue order.
  std::map<uint64_t, pending_batch> pending;
  uint64_t next_seq = 0;

private:
  std::unique_ptr<backend> be_;
  executor exec_;
  std::vector<staging_block> free_;
};

using state_ptr = std::shared_ptr<gpu_state>;

/// Fails every pending batch with `err` and ends the actor with it.
void fail_actor(caf::event_based_actor* self, gpu_state& st, const caf::error& err) {
  for (auto& [seq, p] : st.pending)
    p.promise.deliver(err);
  self->quit(err);
}

caf::typed_response_promise<batch_result> run_batch(caf::event_based_actor* self, gpu_state& st,
                                                    const op_batch& batch) {
  auto rp = self->make_response_promise<batch_result>();
  if (auto err = st.exec().validate(batch)) {
    rp.deliver(std::move(err));
    return rp;
  }
  auto staging = st.take(executor::staging_bytes(batch));
  if (!staging) {
    rp.deliver(staging.error());
    if (!fails_batch_only(staging.error()))
      fail_actor(self, st, staging.error());
    return rp;
  }
  pending_batch p;
  p.promise = rp;
  p.staging = *staging;
  auto err = st.exec().enqueue(batch, static_cast<std::byte*>(staging->ptr), p.downloads);
  if (err && !fails_batch_only(err)) {
    rp.deliver(err);
    fail_actor(self, st, err);
    return rp;
  }
  p.failure = std::move(err);
  const auto seq = st.next_seq++;
  caf::weak_actor_ptr weak_self = self->ctrl();
  auto on_done = [weak_self, seq](caf::error status) {
    if (auto hdl = caf::actor_cast<caf::actor>(weak_self))
      caf::anon_send(hdl, gpu_done_atom::value, seq, std::move(status));
  };
  st.pending.emplace(seq, std::move(p));
  if (auto done_err = st.be().when_done(std::move(on_done)))
    fail_actor(self, st, done_err);
  return rp;
}

void finish_batch(caf::event_based_actor* self, gpu_state& st, uint64_t seq, caf::error status) {
  auto i = st.pending.find(seq);
  if (i == st.pending.end())
    return;
  if (status) {
    fail_actor(self, st, status);
    return;
  }
  auto p = std::move(i->second);
  st.pending.erase(i);
  if (p.failure) {
    p.promise.deliver(std::move(p.failure));
  } else {
    batch_result result;
    result.downloads.reserve(p.downloads.size());
    const auto* base = static_cast<const std::byte*>(p.staging.ptr);
    for (auto& slot : p.downloads) {
      std::vector<float> values(slot.count);
      if (slot.count > 0)
        std::memcpy(values.data(), base + slot.offset, slot.count * sizeof(float));
      result.downloads.push_back(std::move(values));
    }
    p.promise.deliver(std::move(result));
  }
  st.give(p.staging);
}

caf::behavior gpu_behavior(caf::event_based_actor* self, state_ptr st) {
  capture_exceptions(self);
  return {
      [self, st](gpu_run_atom, const op_batch& batch) { return run_batch(self, *st, batch); },
      [self, st](gpu_done_atom, uint64_t seq, caf::error& status) {
        finish_batch(self, *st, seq, std::move(status));
      },
      [st](gpu_info_atom) { return st->be().describe(); },
  };
}

} // namespace

caf::actor spawn_gpu_actor(caf::actor_system& sys, std::unique_ptr<backend> be) {
  // The actor takes the backend out of the holder when it starts, so that the
  // backend dies with the actor's behavior, not with the last handle to it.
  auto holder = std::make_shared<std::unique_ptr<backend>>(std::move(be));
  return sys.spawn([holder](caf::event_based_actor* self) {
    return gpu_behavior(self, std::make_shared<gpu_state>(std::move(*holder)));
  });
}

caf::expected<caf::actor> spawn_gpu_actor(caf::actor_system& sys, gpu_actor_options opts) {
  auto be = make_backend(opts.kind, opts.device);
  if (!be)
    return std::move(be.error());
  return spawn_gpu_actor(sys, std::move(*be));
}

} // namespace understudy::gpu
