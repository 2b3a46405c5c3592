#include "understudy/gpu/gpu_actor.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/typed_response_promise.hpp>

#include "executor.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/state/state_store.hpp"
#include "understudy/supervision/child_spec.hpp"

namespace understudy::gpu {

namespace {

/// `(gpu_done_atom, uint64_t seq, caf::error status)`: the stream finished
/// batch `seq`; posted by the backend's completion handler.
using gpu_done_atom = caf::atom_constant<caf::atom("gpu_done")>;

/// `(gpu_restored_atom, uint64_t slot, caf::error status)`: the stream has
/// copied staging block `slot` of the running restore to the device.
using gpu_restored_atom = caf::atom_constant<caf::atom("gpu_rsdone")>;

/// `(gpu_comm_poll_atom, uint64_t join)`: time to ask the backend whether
/// join number `join` has completed.
using gpu_comm_poll_atom = caf::atom_constant<caf::atom("gpu_cpoll")>;

/// How often a joining communicator is polled.
constexpr auto comm_poll_interval = std::chrono::microseconds(500);

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

/// `(gpu_staged_atom, uint64_t slot, uint64_t piece, caf::error)`: a helper
/// has copied (and verified) piece `piece` of the running restore into
/// staging block `slot`, or failed to.
using gpu_staged_atom = caf::atom_constant<caf::atom("gpu_staged")>;

/// Staging blocks a restore streams through: helpers copy chunks into several
/// of them at once (on the scheduler's threads) while the stream transfers
/// the others. Up to 8, one per core, at least 4.
size_t restore_slots() {
  return std::clamp<size_t>(std::thread::hardware_concurrency(), 4, 8);
}

/// One chunk of a restore: record tensor `tensor`'s chunk `chunk` goes to `dst`.
struct restore_piece {
  size_t tensor = 0;
  uint32_t chunk = 0;
  std::byte* dst = nullptr;
  size_t bytes = 0;
};

/// A restore whose chunks are being staged and transferred.
struct restore_job {
  caf::typed_response_promise<uint64_t> promise;
  std::shared_ptr<state_store> store;
  std::string path;
  uint64_t step = 0;
  std::vector<restore_piece> pieces;
  /// The next piece to stage.
  size_t next = 0;
  std::vector<staging_block> slots;
  /// Indexes into `slots` that no copy or transfer uses.
  std::vector<size_t> free;
  /// Blocks a helper is copying into.
  size_t staging = 0;
  uint64_t bytes = 0;
  /// Set when staging failed: no further piece is staged, and the request
  /// fails with it once the transfers in flight are done.
  caf::error failure;

  bool finished() const {
    return free.size() == slots.size() && (failure || next == pieces.size());
  }
};

/// A request that arrived while a restore ran; it runs after it, in order.
struct deferred_batch {
  caf::typed_response_promise<batch_result> promise;
  op_batch batch;
};
struct deferred_restore {
  caf::typed_response_promise<uint64_t> promise;
  restore_plan plan;
};
using deferred_request = std::variant<deferred_batch, deferred_restore>;

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
    if (idle) {
      for (auto& [seq, p] : pending)
        be_->release_host(p.staging.ptr);
      // Blocks a helper still copies into are left to the process's exit.
      if (restoring && restoring->staging == 0)
        for (auto& block : restoring->slots)
          be_->release_host(block.ptr);
    }
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

  /// The store in `directory`: opened read-only on first use and kept (in a
  /// process that has it open already, that store).
  caf::expected<std::shared_ptr<state_store>> store(const std::string& directory) {
    if (auto i = stores_.find(directory); i != stores_.end())
      return i->second;
    state_store_config cfg;
    cfg.directory = directory;
    cfg.read_only = true;
    auto opened = state_store::open(cfg);
    if (!opened)
      return std::move(opened.error());
    stores_.emplace(directory, *opened);
    return *opened;
  }

  /// Batches on the stream by sequence number, in enqueue order.
  std::map<uint64_t, pending_batch> pending;
  uint64_t next_seq = 0;
  /// The restore in progress, if any, and the requests waiting for it.
  std::unique_ptr<restore_job> restoring;
  std::deque<deferred_request> deferred;
  /// The join in progress (answered once the backend's communicator is ready).
  uint64_t join_seq = 0;
  caf::typed_response_promise<caf::ok_atom> join_promise;
  bool joining = false;

private:
  std::unique_ptr<backend> be_;
  executor exec_;
  std::vector<staging_block> free_;
  std::map<std::string, std::shared_ptr<state_store>> stores_;
};

using state_ptr = std::shared_ptr<gpu_state>;

/// Fails every pending request with `err` and ends the actor with it.
void fail_actor(caf::event_based_actor* self, gpu_state& st, const caf::error& err) {
  for (auto& [seq, p] : st.pending)
    p.promise.deliver(err);
  if (st.restoring)
    st.restoring->promise.deliver(err);
  for (auto& req : st.deferred)
    std::visit([&err](auto& x) { x.promise.deliver(err); }, req);
  st.deferred.clear();
  self->quit(err);
}

void run_batch(caf::event_based_actor* self, gpu_state& st, const op_batch& batch,
               caf::typed_response_promise<batch_result> rp) {
  if (auto err = st.exec().validate(batch)) {
    rp.deliver(std::move(err));
    return;
  }
  auto staging = st.take(executor::staging_bytes(batch));
  if (!staging) {
    rp.deliver(staging.error());
    if (!fails_batch_only(staging.error()))
      fail_actor(self, st, staging.error());
    return;
  }
  pending_batch p;
  p.promise = rp;
  p.staging = *staging;
  auto err = st.exec().enqueue(batch, static_cast<std::byte*>(staging->ptr), p.downloads);
  if (err && !fails_batch_only(err)) {
    rp.deliver(err);
    fail_actor(self, st, err);
    return;
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

// -- restores --------------------------------------------------------------------------

void start_restore(caf::event_based_actor* self, gpu_state& st, const restore_plan& plan,
                   caf::typed_response_promise<uint64_t> rp);

/// Runs the requests that waited for a restore, up to the next restore.
void run_deferred(caf::event_based_actor* self, gpu_state& st) {
  // A batch that fails the actor clears `deferred`.
  while (!st.restoring && !st.deferred.empty()) {
    auto req = std::move(st.deferred.front());
    st.deferred.pop_front();
    if (auto* b = std::get_if<deferred_batch>(&req))
      run_batch(self, st, b->batch, b->promise);
    else
      start_restore(self, st, std::get<deferred_restore>(req).plan,
                    std::get<deferred_restore>(req).promise);
  }
}

/// Answers a restore whose transfers are all done, and runs what waited for it.
void finish_restore(caf::event_based_actor* self, gpu_state& st) {
  auto job = std::move(st.restoring);
  for (auto& block : job->slots)
    st.give(block);
  if (job->failure)
    job->promise.deliver(std::move(job->failure));
  else
    job->promise.deliver(job->bytes);
  run_deferred(self, st);
}

/// Hands pieces to helpers, one per free block: each copies its chunk from
/// the store into the block (verifying it) on a scheduler thread and reports
/// back with `gpu_staged_atom`.
void pump_restore(caf::event_based_actor* self, gpu_state& st) {
  auto& job = *st.restoring;
  caf::weak_actor_ptr weak_self = self->ctrl();
  while (!job.failure && job.next < job.pieces.size() && !job.free.empty()) {
    const size_t slot = job.free.back();
    job.free.pop_back();
    const size_t index = job.next++;
    ++job.staging;
    self->system().spawn([weak_self, store = job.store, path = job.path, step = job.step,
                          piece = job.pieces[index], block = job.slots[slot].ptr, slot, index] {
      auto err = store->read(path, step, [&](const record_view& rec) {
        return rec.copy_chunk(piece.tensor, piece.chunk, block);
      });
      if (auto hdl = caf::actor_cast<caf::actor>(weak_self))
        caf::anon_send(hdl, gpu_staged_atom::value, uint64_t{slot}, uint64_t{index},
                       std::move(err));
    });
  }
}

/// A helper has filled block `slot` with piece `index`: its transfer goes
/// on the stream, followed by a callback that frees the block again.
void staged_piece(caf::event_based_actor* self, gpu_state& st, uint64_t slot, uint64_t index,
                  caf::error err) {
  if (!st.restoring)
    return;
  auto& job = *st.restoring;
  --job.staging;
  if (err) {
    if (!job.failure)
      job.failure = std::move(err);
    job.free.push_back(static_cast<size_t>(slot));
    if (job.finished())
      finish_restore(self, st);
    return;
  }
  const auto& piece = job.pieces[index];
  if (auto launch_err = st.be().upload(piece.dst, job.slots[slot].ptr, piece.bytes))
    return fail_actor(self, st, launch_err);
  caf::weak_actor_ptr weak_self = self->ctrl();
  auto done_err = st.be().when_done([weak_self, slot](caf::error status) {
    if (auto hdl = caf::actor_cast<caf::actor>(weak_self))
      caf::anon_send(hdl, gpu_restored_atom::value, slot, std::move(status));
  });
  if (done_err)
    return fail_actor(self, st, done_err);
  job.bytes += piece.bytes;
}

/// Checks `plan` against the stored version and the buffers, lists its
/// pieces, and starts streaming them.
void start_restore(caf::event_based_actor* self, gpu_state& st, const restore_plan& plan,
                   caf::typed_response_promise<uint64_t> rp) {
  auto store = st.store(plan.directory);
  if (!store) {
    rp.deliver(std::move(store.error()));
    return;
  }
  auto job = std::make_unique<restore_job>();
  job->promise = rp;
  job->store = *store;
  job->path = plan.path;
  job->step = plan.step;
  size_t largest = 0;
  auto err = (*store)->read(plan.path, plan.step, [&](const record_view& rec) -> caf::error {
    const auto where = plan.path + "@" + std::to_string(plan.step);
    for (const auto& target : plan.targets) {
      auto idx = rec.find_tensor(target.tensor);
      if (!idx)
        return make_error(state_errc::not_found, where + " has no tensor '" + target.tensor + "'");
      const auto& info = rec.info().tensors[*idx];
      auto [dst, count] = st.exec().buffer_of(target.buffer);
      if (dst == nullptr)
        return make_error(gpu_errc::invalid_argument, "restore of " + where + " tensor '" +
                                                          target.tensor + "': no buffer " +
                                                          std::to_string(target.buffer));
      if (info.type != element_type::f32 || info.size != count * sizeof(float))
        return make_error(
            gpu_errc::invalid_argument,
            where + " tensor '" + target.tensor + "' holds " + std::to_string(info.size) +
                " bytes" + (info.type != element_type::f32 ? " not of float32" : "") + "; buffer " +
                std::to_string(target.buffer) + " holds " + std::to_string(count) + " floats");
      for (uint32_t c = 0; c < info.chunks; ++c) {
        const uint64_t offset = uint64_t{c} * info.chunk_size;
        const size_t bytes =
            static_cast<size_t>(std::min<uint64_t>(info.chunk_size, info.size - offset));
        job->pieces.push_back(
            restore_piece{*idx, c, reinterpret_cast<std::byte*>(dst) + offset, bytes});
        largest = std::max(largest, bytes);
      }
    }
    return {};
  });
  if (err) {
    rp.deliver(std::move(err));
    return;
  }
  for (size_t i = 0; i < std::min(restore_slots(), job->pieces.size()); ++i) {
    auto block = st.take(largest);
    if (!block) {
      for (auto& b : job->slots)
        st.give(b);
      rp.deliver(block.error());
      if (!fails_batch_only(block.error()))
        fail_actor(self, st, block.error());
      return;
    }
    job->free.push_back(job->slots.size());
    job->slots.push_back(*block);
  }
  st.restoring = std::move(job);
  if (st.restoring->pieces.empty())
    return finish_restore(self, st);
  pump_restore(self, st);
}

void restored_piece(caf::event_based_actor* self, gpu_state& st, uint64_t slot, caf::error status) {
  if (!st.restoring)
    return;
  if (status)
    return fail_actor(self, st, status);
  st.restoring->free.push_back(static_cast<size_t>(slot));
  if (st.restoring->finished())
    return finish_restore(self, st);
  pump_restore(self, st);
}

// -- collective groups ----------------------------------------------------------------

void poll_join(caf::event_based_actor* self, gpu_state& st, uint64_t seq) {
  if (!st.joining || seq != st.join_seq)
    return;
  auto ready = st.be().comm_ready();
  if (ready && !*ready) {
    self->delayed_send(self, comm_poll_interval, gpu_comm_poll_atom::value, seq);
    return;
  }
  st.joining = false;
  if (ready)
    st.join_promise.deliver(caf::ok_atom::value);
  else
    st.join_promise.deliver(std::move(ready.error()));
}

void join_group(caf::event_based_actor* self, gpu_state& st, const std::vector<uint8_t>& id,
                uint32_t ranks, uint32_t rank, caf::typed_response_promise<caf::ok_atom> rp) {
  if (st.joining)
    st.join_promise.deliver(
        make_error(gpu_errc::invalid_argument, "replaced by a later join before it completed"));
  st.joining = false;
  if (auto err = st.be().comm_join(id, ranks, rank)) {
    rp.deliver(std::move(err));
    return;
  }
  st.joining = true;
  st.join_promise = rp;
  poll_join(self, st, ++st.join_seq);
}

void abort_group(gpu_state& st) {
  st.be().comm_abort();
  if (st.joining) {
    st.joining = false;
    st.join_promise.deliver(
        make_error(gpu_errc::invalid_argument, "the join was aborted by the collective group"));
  }
}

caf::behavior gpu_behavior(caf::event_based_actor* self, state_ptr st) {
  capture_exceptions(self);
  return {
      [self, st](gpu_run_atom, op_batch& batch) {
        auto rp = self->make_response_promise<batch_result>();
        if (st->restoring)
          st->deferred.emplace_back(deferred_batch{rp, std::move(batch)});
        else
          run_batch(self, *st, batch, rp);
        return rp;
      },
      [self, st](gpu_restore_atom, restore_plan& plan) {
        auto rp = self->make_response_promise<uint64_t>();
        if (st->restoring)
          st->deferred.emplace_back(deferred_restore{rp, std::move(plan)});
        else
          start_restore(self, *st, plan, rp);
        return rp;
      },
      [self, st](gpu_done_atom, uint64_t seq, caf::error& status) {
        finish_batch(self, *st, seq, std::move(status));
      },
      [self, st](gpu_staged_atom, uint64_t slot, uint64_t index, caf::error& err) {
        staged_piece(self, *st, slot, index, std::move(err));
      },
      [self, st](gpu_restored_atom, uint64_t slot, caf::error& status) {
        restored_piece(self, *st, slot, std::move(status));
      },
      [self, st](gpu_comm_join_atom, const std::vector<uint8_t>& id, uint32_t ranks,
                 uint32_t rank) {
        auto rp = self->make_response_promise<caf::ok_atom>();
        join_group(self, *st, id, ranks, rank, rp);
        return rp;
      },
      [self, st](gpu_comm_poll_atom, uint64_t seq) { poll_join(self, *st, seq); },
      [st](gpu_comm_abort_atom) { abort_group(*st); },
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
