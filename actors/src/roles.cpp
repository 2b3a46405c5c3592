// Parameter shards, data loaders and workers of a training job.

#include <algorithm>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/typed_response_promise.hpp>

#include "training_shared.hpp"
#include "understudy/actors/numerics/splitmix64.hpp"
#include "understudy/schema/training.capnp.h"
#include "understudy/state/persistent.hpp"

namespace understudy::actors {

// -- state and codecs ------------------------------------------------------------------

/// A shard's checkpoint. The vectors are shared with the shard (no copies): the
/// shard replaces a buffer that a checkpoint still holds instead of changing it.
struct shard_state {
  using buffer = std::shared_ptr<const std::vector<float>>;
  uint64_t step = 0;
  uint64_t first = 0;
  uint64_t count = 0;
  uint64_t optimizer_steps = 0;
  uint64_t fingerprint = 0;
  buffer params;
  buffer m;
  buffer v;
};

} // namespace understudy::actors

namespace understudy {

template <>
struct state_codec<actors::shard_state> {
  using shard_state = actors::shard_state;
  using schema = schema::ShardState;
  static constexpr uint32_t version = 1;
  static void save(const shard_state& st, state_encoder& enc) {
    auto root = enc.init_root<schema>();
    root.setStep(st.step);
    root.setFirst(st.first);
    root.setCount(st.count);
    root.setOptimizerSteps(st.optimizer_steps);
    root.setFingerprint(st.fingerprint);
    enc.add_tensor(tensor_data::share("params", element_type::f32, st.params));
    enc.add_tensor(tensor_data::share("m", element_type::f32, st.m));
    enc.add_tensor(tensor_data::share("v", element_type::f32, st.v));
  }
  static caf::error load(state_decoder& dec, shard_state& st) {
    auto root = dec.root<schema>();
    st.step = root.getStep();
    st.first = root.getFirst();
    st.count = root.getCount();
    st.optimizer_steps = root.getOptimizerSteps();
    st.fingerprint = root.getFingerprint();
    std::vector<float> params, m, v;
    if (auto err = dec.read_tensor("params", params))
      return err;
    if (auto err = dec.read_tensor("m", m))
      return err;
    if (auto err = dec.read_tensor("v", v))
      return err;
    st.params = std::make_shared<const std::vector<float>>(std::move(params));
    st.m = std::make_shared<const std::vector<float>>(std::move(m));
    st.v = std::make_shared<const std::vector<float>>(std::move(v));
    return {};
  }
};

} // namespace understudy

namespace understudy::actors {

struct loader_state {
  uint64_t step = 0;
  uint64_t epoch = 0;
  uint64_t position = 0;
  uint64_t share_size = 0;
  uint64_t fingerprint = 0;
};

} // namespace understudy::actors

namespace understudy {

template <>
struct state_codec<actors::loader_state> {
  using loader_state = actors::loader_state;
  using schema = schema::LoaderState;
  static constexpr uint32_t version = 1;
  static void save(const loader_state& st, state_encoder& enc) {
    auto root = enc.init_root<schema>();
    root.setStep(st.step);
    root.setEpoch(st.epoch);
    root.setPosition(st.position);
    root.setShareSize(st.share_size);
    root.setFingerprint(st.fingerprint);
  }
  static caf::error load(state_decoder& dec, loader_state& st) {
    auto root = dec.root<schema>();
    st.step = root.getStep();
    st.epoch = root.getEpoch();
    st.position = root.getPosition();
    st.share_size = root.getShareSize();
    st.fingerprint = root.getFingerprint();
    return {};
  }
};

} // namespace understudy

namespace understudy::actors {

namespace {

using shared_ptr_t = std::shared_ptr<training_job::shared>;

/// A loader's note to itself: prepare the next batch ahead.
using prefetch_atom = caf::atom_constant<caf::atom("us_prefet")>;

caf::error state_error(const std::string& what) {
  return make_error(state_errc::schema_mismatch, what);
}

// -- parameter shard -------------------------------------------------------------------

struct shard_actor {
  caf::event_based_actor* self;
  shared_ptr_t s;
  size_t k;
  std::shared_ptr<persistent<shard_state>> st;
  optimizer opt;
  /// Parameters after st->value().step, shared with pulling workers.
  std::shared_ptr<std::vector<float>> params;
  /// The parameters before the last out-of-place update, reused for the next
  /// one once the checkpoint or worker holding them lets go.
  std::shared_ptr<std::vector<float>> spare;
  caf::actor trainer;
  uint64_t attempt = 0;
  bool synced = false;
  /// Gradients of step st.step + 1 by micro-batch, and their losses.
  std::vector<std::vector<float>> pending;
  std::vector<bool> arrived;
  std::vector<float> losses;
  size_t arrived_count = 0;
  std::vector<float> sum;
  shard_stats stats;

  shard_actor(caf::event_based_actor* self, shared_ptr_t s, size_t k,
              std::shared_ptr<persistent<shard_state>> st)
      : self(self),
        s(std::move(s)),
        k(k),
        st(std::move(st)),
        opt(this->s->cfg.optimizer, this->s->shard_count[k]) {
    pending.resize(this->s->cfg.micro_batches);
    arrived.assign(this->s->cfg.micro_batches, false);
    losses.assign(this->s->cfg.micro_batches, 0.0f);
    sum.assign(this->s->shard_count[k], 0.0f);
  }

  void clear_pending() {
    std::fill(arrived.begin(), arrived.end(), false);
    arrived_count = 0;
  }

  void init_fresh() {
    auto& v = st->value();
    v = shard_state{};
    v.first = s->shard_first[k];
    v.count = s->shard_count[k];
    v.fingerprint = s->fingerprint;
    params = std::make_shared<std::vector<float>>(v.count);
    s->cfg.net->init_parameter_range(params->data(), v.first, v.count, s->cfg.seed);
    opt = optimizer{s->cfg.optimizer, v.count};
  }

  /// Makes the shard's state the one after `step`: kept if it is, else loaded.
  caf::error rewind(uint64_t step) {
    clear_pending();
    if (synced && st->value().step == step)
      return {};
    synced = false;
    if (step == 0) {
      init_fresh();
      synced = true;
      return {};
    }
    auto report = st->restore(step);
    if (!report)
      return report.error();
    auto& v = st->value();
    if (!st->restored_step() || v.step != step)
      return make_error(
          state_errc::not_found,
          st->identity().path + ": no checkpoint of committed step " + std::to_string(step) +
              " (newest valid: " + (st->restored_step() ? std::to_string(v.step) : "none") + ")");
    if (v.fingerprint != s->fingerprint || v.first != s->shard_first[k] ||
        v.count != s->shard_count[k] || v.params->size() != v.count)
      return state_error(st->identity().path + "@" + std::to_string(step) +
                         ": checkpoint belongs to another job configuration");
    opt = optimizer{s->cfg.optimizer, v.count};
    if (auto err = opt.restore(v.optimizer_steps, *v.m, *v.v))
      return err;
    params = std::make_shared<std::vector<float>>(*v.params);
    release_buffers();
    synced = true;
    return {};
  }

  /// Drops the state's references to the buffers, so that the next step changes
  /// them in place unless the writer (or a worker) still holds them.
  void release_buffers() {
    auto& v = st->value();
    v.params.reset();
    v.m.reset();
    v.v.reset();
  }

  void apply(uint64_t step) {
    auto& v = st->value();
    // Fixed order: micro-batch 0 + 1 + ... whichever worker computed each and
    // whatever order the pushes came in: the sum does not depend on the workers.
    // Micro-batch 0's buffer becomes the sum (no copy; its old buffer waits
    // in pending[0] for the next push).
    sum.swap(pending[0]);
    for (size_t m = 1; m < pending.size(); ++m) {
      const float* g = pending[m].data();
      for (size_t i = 0; i < sum.size(); ++i)
        sum[i] += g[i];
    }
    const float scale = 1.0f / static_cast<float>(pending.size());
    if (pending.size() > 1) // x * 1 is x: one micro-batch needs no pass
      for (auto& x : sum)
        x *= scale;
    float loss = 0;
    for (float l : losses)
      loss += l;
    loss *= scale;
    // A worker that pulled an earlier step, or the writer, may still hold the
    // parameters: the update goes out of place then, into the spare buffer
    // once nobody holds that any more (no copy first).
    if (params.use_count() > 1) {
      auto out = spare && spare.use_count() == 1 && spare->size() == params->size()
                     ? std::move(spare)
                     : std::make_shared<std::vector<float>>(params->size());
      opt.step(params->data(), out->data(), sum.data());
      spare = std::exchange(params, std::move(out));
    } else {
      opt.step(params->data(), sum.data());
    }
    clear_pending();
    v.step = step;
    stats.step = step;
    if (s->checkpoint_step(step)) {
      // The writer gets the buffers themselves; the trainer hears when they are
      // durable, and goes on with the next step meanwhile.
      v.params = params;
      v.m = opt.shared_m();
      v.v = opt.shared_v();
      v.optimizer_steps = opt.steps();
      auto att = attempt;
      st->checkpoint(step, [this, step, att](caf::expected<uint64_t> r) {
        if (!r)
          throw std::runtime_error(st->identity().path +
                                   ": checkpoint failed: " + describe(r.error()));
        if (att == attempt && trainer)
          self->send(trainer, stored_atom::value, k, step, att);
      });
      release_buffers();
    }
    if (trainer)
      self->send(trainer, applied_atom::value, k, step, attempt, loss);
  }

  caf::behavior make() {
    return {
        [this](pull_atom) -> caf::result<uint64_t, slice_ptr> {
          if (!synced)
            return make_error(state_errc::not_found, "shard not rewound yet");
          return {st->value().step, slice_ptr{params}};
        },
        [this](push_atom, uint64_t step, uint64_t att, size_t micro, std::vector<float>& grad,
               float loss) {
          s->maybe_crash(fault_target::shard, k, step);
          if (s->maybe_hang(self, fault_target::shard, k, step))
            return;
          if (att != attempt || !synced || step != st->value().step + 1 ||
              micro >= pending.size() || grad.size() != sum.size()) {
            ++stats.stale;
            return;
          }
          if (arrived[micro]) {
            ++stats.duplicates;
            return;
          }
          pending[micro] = std::move(grad);
          losses[micro] = loss;
          arrived[micro] = true;
          if (++arrived_count == pending.size())
            apply(step);
        },
        [this](rewind_atom, uint64_t step, uint64_t att) -> caf::result<uint64_t> {
          trainer = caf::actor_cast<caf::actor>(self->current_sender());
          attempt = att;
          if (auto err = rewind(step))
            return err;
          stats.step = step;
          return step;
        },
        [this](probe_atom) { return st->newest_durable_step(); },
        [this](stats_atom) { return stats; },
        [](alive_atom) { return alive_atom::value; },
    };
  }
};

// -- data loader ---------------------------------------------------------------------

struct loader_actor {
  caf::event_based_actor* self;
  shared_ptr_t s;
  size_t l;
  std::shared_ptr<persistent<loader_state>> st;
  /// Samples per epoch (the whole training set, in one global order).
  uint64_t epoch_size;
  /// Micro-batches this loader serves per step: l, l + loaders, ...
  size_t n_micro;
  uint64_t per_step;
  uint64_t seed;
  bool synced = false;
  /// The cursor after `base_step`: stream offset `base_offset`.
  uint64_t base_step = 0;
  uint64_t base_offset = 0;
  /// Prepared micro-batches by step, with how many of them were served.
  std::map<uint64_t, std::pair<std::vector<batch_ptr>, size_t>> cache;
  std::map<uint64_t, std::vector<uint32_t>> orders;
  uint64_t highest_requested = 0;
  bool prefetch_scheduled = false;

  loader_actor(caf::event_based_actor* self, shared_ptr_t s, size_t l,
               std::shared_ptr<persistent<loader_state>> st)
      : self(self),
        s(std::move(s)),
        l(l),
        st(std::move(st)),
        epoch_size(this->s->cfg.train->size()),
        n_micro(this->s->micros_of_loader(l)),
        per_step(this->s->cfg.batch),
        // One order per epoch for the whole job, whatever the loader.
        seed(splitmix64::at(this->s->cfg.seed, 0x10ad0000)) {}

  size_t max_cached() const { return s->cfg.prefetch + 1; }

  uint64_t offset_after(uint64_t step) const { return base_offset + (step - base_step) * per_step; }

  const std::vector<uint32_t>& order(uint64_t epoch) {
    auto i = orders.find(epoch);
    if (i == orders.end()) {
      while (orders.size() >= 2)
        orders.erase(orders.begin());
      i = orders.emplace(epoch, epoch_order(epoch_size, seed, epoch)).first;
    }
    return i->second;
  }

  std::vector<batch_ptr> prepare(uint64_t step) {
    const auto& data = *s->cfg.train;
    const size_t dim = data.input_dim;
    const size_t b = s->micro_size();
    std::vector<batch_ptr> out;
    out.reserve(n_micro);
    for (size_t j = 0; j < n_micro; ++j) {
      auto sb = std::make_shared<served_batch>();
      sb->step = step;
      sb->micro = l + j * s->cfg.loaders;
      sb->offset = offset_after(step - 1) + sb->micro * b;
      sb->epoch_size = epoch_size;
      sb->indices.resize(b);
      sb->inputs.resize(b * dim);
      sb->labels.resize(b);
      for (size_t i = 0; i < b; ++i) {
        uint64_t t = sb->offset + i;
        uint32_t idx = order(t / epoch_size)[t % epoch_size];
        sb->indices[i] = idx;
        sb->labels[i] = data.labels[idx];
        std::copy_n(data.inputs.data() + size_t{idx} * dim, dim, sb->inputs.data() + i * dim);
      }
      out.push_back(std::move(sb));
    }
    return out;
  }

  void schedule_prefetch() {
    if (prefetch_scheduled)
      return;
    prefetch_scheduled = true;
    self->send(self, prefetch_atom::value);
  }

  void prefetch_one() {
    prefetch_scheduled = false;
    if (!synced || cache.size() >= max_cached())
      return;
    uint64_t next = std::max(highest_requested, base_step + 1);
    while (cache.count(next) != 0)
      ++next;
    if (next > s->cfg.steps || next > highest_requested + s->cfg.prefetch)
      return;
    cache.emplace(next, std::make_pair(prepare(next), size_t{0}));
    schedule_prefetch();
  }

  caf::error rewind(uint64_t step) {
    cache.clear();
    highest_requested = step;
    if (synced && base_step <= step)
      return {};
    synced = false;
    if (step == 0) {
      base_step = 0;
      base_offset = 0;
      synced = true;
      return {};
    }
    auto report = st->restore(step);
    if (!report)
      return report.error();
    const auto& v = st->value();
    if (!st->restored_step())
      return make_error(state_errc::not_found, st->identity().path +
                                                   ": no checkpoint at or before committed step " +
                                                   std::to_string(step));
    // The cursor after step s is s x batch: one that is not belongs to
    // another job (or is damaged).
    if (v.fingerprint != s->fingerprint || v.share_size != epoch_size || v.position >= epoch_size ||
        v.epoch * epoch_size + v.position != v.step * per_step)
      return state_error(st->identity().path + "@" + std::to_string(v.step) +
                         ": cursor belongs to another job configuration");
    base_step = v.step;
    base_offset = v.epoch * epoch_size + v.position;
    synced = true;
    return {};
  }

  caf::behavior make() {
    return {
        [this](batch_atom, uint64_t step, size_t micro) -> caf::result<batch_ptr> {
          s->maybe_crash(fault_target::loader, l, step);
          if (s->maybe_hang(self, fault_target::loader, l, step))
            return caf::delegated<batch_ptr>{};
          if (!synced || step <= base_step || micro % s->cfg.loaders != l ||
              micro >= s->cfg.micro_batches)
            return make_error(caf::sec::invalid_argument,
                              "loader-" + std::to_string(l) + ": no micro-batch for step " +
                                  std::to_string(step) + ", micro-batch " + std::to_string(micro));
          highest_requested = std::max(highest_requested, step);
          // Steps before `step` are done with (a retried step is prepared again).
          while (!cache.empty() && cache.begin()->first < step)
            cache.erase(cache.begin());
          auto i = cache.find(step);
          if (i == cache.end())
            i = cache.emplace(step, std::make_pair(prepare(step), size_t{0})).first;
          auto out = i->second.first[micro / s->cfg.loaders];
          if (++i->second.second == n_micro)
            cache.erase(i);
          schedule_prefetch();
          return out;
        },
        [this](prefetch_atom) { prefetch_one(); },
        [this](rewind_atom, uint64_t step, uint64_t) -> caf::result<uint64_t> {
          if (auto err = rewind(step))
            return err;
          return step;
        },
        [this](probe_atom) { return st->newest_durable_step(); },
        [this](commit_atom, uint64_t step) -> caf::result<uint64_t> {
          if (!synced || step < base_step)
            return make_error(
                caf::sec::invalid_argument,
                "loader-" + std::to_string(l) + ": cannot commit step " + std::to_string(step));
          auto offset = offset_after(step);
          auto& v = st->value();
          v.step = step;
          v.epoch = offset / epoch_size;
          v.position = offset % epoch_size;
          v.share_size = epoch_size;
          v.fingerprint = s->fingerprint;
          auto rp = self->make_response_promise<uint64_t>();
          st->checkpoint(step, [rp](caf::expected<uint64_t> r) mutable {
            if (r)
              rp.deliver(*r);
            else
              rp.deliver(std::move(r.error()));
          });
          return rp;
        },
        [this](stats_atom) {
          return loader_stats{cache.size(), max_cached()};
        },
        [](alive_atom) { return alive_atom::value; },
    };
  }
};

// -- worker --------------------------------------------------------------------------

struct worker_state {
  std::vector<float> params;
  std::vector<float> grad;
  /// Above 1 after a slow fault fired: this incarnation's steps take that
  /// many times as long.
  double slow = 1;
};

/// What a worker gathers for one step: its micro-batches and every slice.
struct step_inputs {
  std::vector<size_t> micros;
  std::vector<batch_ptr> batches;
  std::vector<slice_ptr> slices;
  size_t left = 0;
  bool failed = false;
};

caf::behavior worker_behavior(caf::event_based_actor* self, shared_ptr_t s, size_t rank) {
  auto ws = std::make_shared<worker_state>();
  const size_t n = s->cfg.net->parameter_count();
  ws->params.resize(n);
  ws->grad.resize(n);
  // Computes every micro-batch of `in` in order and pushes its gradient
  // slices; then tells the trainer.
  auto compute = [=](uint64_t step, uint64_t attempt, const std::vector<caf::actor>& shards,
                     const caf::actor& trainer, step_inputs& in,
                     std::chrono::steady_clock::time_point began, bool lose) {
    // One shard holds every parameter: its snapshot is the model's input and
    // each micro-batch's gradient goes to it whole (no copies).
    const bool whole = shards.size() == 1;
    const float* params = in.slices[0]->data();
    if (!whole) {
      for (size_t j = 0; j < shards.size(); ++j)
        std::copy(in.slices[j]->begin(), in.slices[j]->end(),
                  ws->params.begin() + s->shard_first[j]);
      params = ws->params.data();
    }
    std::vector<std::pair<size_t, float>> losses;
    std::vector<std::vector<std::vector<float>>> grads; // [micro][shard]
    for (size_t i = 0; i < in.micros.size(); ++i) {
      const auto& b = in.batches[i];
      batch_view view{b->inputs.data(), b->labels.data(), b->labels.size(),
                      s->cfg.net->input_dim()};
      auto& per_shard = grads.emplace_back();
      if (whole) {
        auto& g = per_shard.emplace_back(ws->grad.size());
        losses.emplace_back(in.micros[i], s->cfg.net->loss_and_gradient(params, view, g.data()));
        continue;
      }
      float loss = s->cfg.net->loss_and_gradient(params, view, ws->grad.data());
      losses.emplace_back(in.micros[i], loss);
      for (size_t j = 0; j < shards.size(); ++j) {
        auto first = ws->grad.begin() + s->shard_first[j];
        per_shard.emplace_back(first, first + s->shard_count[j]);
      }
    }
    in.slices.clear(); // hand the snapshots back before pushing
    in.batches.clear();
    // A slow incarnation delivers late (at least 10 ms per unit of
    // slowdown, whatever its own time).
    caf::timespan delay{0};
    if (ws->slow > 1) {
      auto took = std::max<caf::timespan>(std::chrono::steady_clock::now() - began,
                                          std::chrono::milliseconds(10));
      delay = std::chrono::duration_cast<caf::timespan>(took * (ws->slow - 1));
    }
    auto send = [&](const caf::actor& to, auto&&... xs) {
      if (delay.count() > 0)
        self->delayed_send(to, delay, std::forward<decltype(xs)>(xs)...);
      else
        self->send(to, std::forward<decltype(xs)>(xs)...);
    };
    for (size_t i = 0; i < losses.size() && !lose; ++i)
      for (size_t j = 0; j < shards.size(); ++j)
        send(shards[j], push_atom::value, step, attempt, losses[i].first, std::move(grads[i][j]),
             losses[i].second);
    if (trainer)
      send(trainer, pushed_atom::value, step, attempt, rank);
  };
  return {
      [=](train_step_atom, uint64_t step, uint64_t attempt, size_t slot, size_t stride,
          const std::vector<caf::actor>& loaders, const std::vector<caf::actor>& shards) {
        s->maybe_crash(fault_target::worker, rank, step);
        if (s->maybe_hang(self, fault_target::worker, rank, step))
          return;
        if (auto factor = s->maybe_slow(fault_target::worker, rank, step))
          ws->slow = *factor;
        // A lost step: the gradients never arrive, the worker goes on answering.
        bool lose = s->fire(fault_target::worker, rank, step, fault_kind::lose);
        auto began = std::chrono::steady_clock::now();
        auto trainer = caf::actor_cast<caf::actor>(self->current_sender());
        auto in = std::make_shared<step_inputs>();
        for (size_t m = slot; stride > 0 && m < s->cfg.micro_batches; m += stride)
          in->micros.push_back(m);
        if (in->micros.empty() || loaders.size() != s->cfg.loaders ||
            shards.size() != s->cfg.shards)
          return;
        in->batches.resize(in->micros.size());
        in->slices.resize(shards.size());
        in->left = in->micros.size() + shards.size();
        // Once everything has arrived (or anything failed: then the trainer
        // recovers the step, as for a loader that died or moved on).
        auto arrived = [=] {
          if (--in->left != 0 || in->failed)
            return;
          compute(step, attempt, shards, trainer, *in, began, lose);
        };
        auto failed = [=](caf::error&) {
          in->failed = true;
          arrived();
        };
        for (size_t i = 0; i < in->micros.size(); ++i)
          self->request(loaders[s->loader_of(in->micros[i])], caf::infinite, batch_atom::value,
                        step, in->micros[i])
              .then(
                  [=](const batch_ptr& b) {
                    if (b->micro == in->micros[i] && b->indices.size() == s->micro_size())
                      in->batches[i] = b;
                    else
                      in->failed = true;
                    arrived();
                  },
                  failed);
        for (size_t k = 0; k < shards.size(); ++k)
          self->request(shards[k], caf::infinite, pull_atom::value)
              .then(
                  [=](uint64_t at, const slice_ptr& slice) {
                    // Parameters of another step: an abandoned attempt.
                    if (at + 1 == step && slice->size() == s->shard_count[k])
                      in->slices[k] = slice;
                    else
                      in->failed = true;
                    arrived();
                  },
                  failed);
      },
      [](alive_atom) { return alive_atom::value; },
  };
}

} // namespace

caf::actor spawn_parked_worker(caf::actor_system& sys, size_t index,
                               std::function<bool()> node_free, caf::timespan poll) {
  using poll_atom = caf::atom_constant<caf::atom("us_ppoll")>;
  return sys.spawn([index, node_free = std::move(node_free),
                    poll](caf::event_based_actor* self) -> caf::behavior {
    self->delayed_send(self, poll, poll_atom::value);
    return {
        [=](train_step_atom, uint64_t step, uint64_t attempt, size_t, size_t,
            const std::vector<caf::actor>&, const std::vector<caf::actor>&) {
          if (auto trainer = caf::actor_cast<caf::actor>(self->current_sender()))
            self->send(trainer, parked_atom::value, step, attempt, index);
        },
        [](alive_atom) { return alive_atom::value; },
        [=](poll_atom) {
          if (node_free()) {
            self->quit(caf::make_error(
                caf::sec::runtime_error,
                "worker-" + std::to_string(index) + " was parked and a node is free for it again"));
            return;
          }
          self->delayed_send(self, poll, poll_atom::value);
        },
    };
  });
}

child_spec make_shard_spec(shared_ptr_t s, size_t k) {
  return persistent_child<shard_state>(
      "shard-" + std::to_string(k), s->p,
      [s, k](caf::event_based_actor* self, std::shared_ptr<persistent<shard_state>> st) {
        auto a = std::make_shared<shard_actor>(self, s, k, std::move(st));
        self->attach_functor([a](const caf::error&) {});
        return a->make();
      });
}

child_spec make_loader_spec(shared_ptr_t s, size_t l) {
  return persistent_child<loader_state>(
      "loader-" + std::to_string(l), s->p,
      [s, l](caf::event_based_actor* self, std::shared_ptr<persistent<loader_state>> st) {
        auto a = std::make_shared<loader_actor>(self, s, l, std::move(st));
        self->attach_functor([a](const caf::error&) {});
        return a->make();
      });
}

child_spec make_worker_spec(shared_ptr_t s, size_t w) {
  // Detached: a step computes for long, and must not hold up a scheduler
  // thread that shards, loaders and the trainer need meanwhile.
  return worker<caf::detached>("worker-" + std::to_string(w), worker_behavior, s, w);
}

// -- resharding ------------------------------------------------------------------------

namespace {

template <class State>
checkpoint encode_record(const State& st, const std::string& path, uint64_t step) {
  using codec = state_codec<State>;
  state_encoder enc;
  codec::save(st, enc);
  return enc.finish(path, step, capnp::typeId<typename codec::schema>(), codec::version, 0);
}

} // namespace

caf::error gather_shards(const state_store& store, const std::string& job_path, size_t shards,
                         uint64_t step, size_t n, uint64_t fingerprint, gathered_shards& out) {
  auto shard_path = [&](size_t k) { return job_path + "/shards/shard-" + std::to_string(k); };
  out.params.assign(n, 0.0f);
  out.m.clear();
  out.v.clear();
  std::vector<char> covered(n, 0);
  std::optional<uint64_t> optimizer_steps;
  for (size_t k = 0; k < shards; ++k) {
    auto path = shard_path(k);
    auto at = path + "@" + std::to_string(step);
    shard_state st;
    if (auto err = read_record(store, path, step, st))
      return err;
    if ((fingerprint != 0 && st.fingerprint != fingerprint) || st.step != step)
      return state_error(at + ": belongs to another job");
    if (st.first > n || st.count > n - st.first || !st.params || st.params->size() != st.count)
      return state_error(at + ": parameters [" + std::to_string(st.first) + ", +" +
                         std::to_string(st.count) + ") do not fit the model's " +
                         std::to_string(n));
    if (optimizer_steps && *optimizer_steps != st.optimizer_steps)
      return state_error(at + ": optimizer steps differ from the other shards'");
    optimizer_steps = st.optimizer_steps;
    for (auto [buf, full] : {std::pair{st.m.get(), &out.m}, std::pair{st.v.get(), &out.v}}) {
      if (buf == nullptr || buf->empty())
        continue;
      if (buf->size() != st.count)
        return state_error(at + ": optimizer state does not match its parameters");
      full->resize(n);
      std::copy(buf->begin(), buf->end(), full->begin() + static_cast<long>(st.first));
    }
    for (size_t i = st.first; i < st.first + st.count; ++i) {
      if (covered[i])
        return state_error(at + ": parameter " + std::to_string(i) + " is held twice");
      covered[i] = 1;
    }
    std::copy(st.params->begin(), st.params->end(),
              out.params.begin() + static_cast<long>(st.first));
  }
  if (auto gap = std::find(covered.begin(), covered.end(), 0); gap != covered.end()) {
    auto held = static_cast<size_t>(std::count(covered.begin(), covered.end(), 1));
    return state_error(job_path + "/shards@" + std::to_string(step) +
                       ": no shard holds parameter " + std::to_string(gap - covered.begin()) +
                       " of the model's " + std::to_string(n) + " (the shards hold " +
                       std::to_string(held) + (held < n ? "; another model?)" : ")"));
  }
  out.optimizer_steps = optimizer_steps.value_or(0);
  return {};
}

caf::expected<uint64_t> reshard_committed(
    const training_job::shared& s, const std::string& job_path, size_t old_shards,
    size_t old_loaders, const std::function<checkpoint(uint64_t)>& trainer_record) {
  auto& store = *s.p.store;
  auto shard_path = [&](size_t k) { return job_path + "/shards/shard-" + std::to_string(k); };
  auto loader_path = [&](size_t l) { return job_path + "/loaders/loader-" + std::to_string(l); };
  // The committed step: the newest one that every shard and loader of the old
  // counts has intact, as the recovery protocol finds it.
  std::vector<std::string> old_paths;
  for (size_t k = 0; k < old_shards; ++k)
    old_paths.push_back(shard_path(k));
  for (size_t l = 0; l < old_loaders; ++l)
    old_paths.push_back(loader_path(l));
  uint64_t step = std::numeric_limits<uint64_t>::max();
  for (const auto& path : old_paths) {
    auto newest = store.newest_intact(path);
    if (!newest)
      return newest.error();
    if (*newest == 0)
      return make_error(state_errc::not_found, path + " has no intact checkpoint");
    step = std::min(step, *newest);
  }
  // The old shards' slices, put together (each parameter exactly once).
  const size_t n = s.cfg.net->parameter_count();
  gathered_shards g;
  if (auto err = gather_shards(store, job_path, old_shards, step, n, s.fingerprint, g))
    return err;
  auto& params = g.params;
  auto& m = g.m;
  auto& v = g.v;
  auto optimizer_steps = g.optimizer_steps;
  for (size_t l = 0; l < old_loaders; ++l) {
    loader_state ls;
    if (auto err = read_record(store, loader_path(l), step, ls))
      return err;
    if (ls.fingerprint != s.fingerprint || ls.step != step ||
        ls.epoch * ls.share_size + ls.position != step * s.cfg.batch)
      return state_error(loader_path(l) + "@" + std::to_string(step) +
                         ": cursor belongs to another job");
  }
  // The new counts' records, with the trainer's, in one transaction.
  std::vector<checkpoint> out;
  auto slice = [](const std::vector<float>& full, size_t first, size_t count) {
    if (full.empty())
      return std::make_shared<const std::vector<float>>();
    return std::make_shared<const std::vector<float>>(
        full.begin() + static_cast<long>(first), full.begin() + static_cast<long>(first + count));
  };
  for (size_t k = 0; k < s.cfg.shards; ++k) {
    shard_state st;
    st.step = step;
    st.first = s.shard_first[k];
    st.count = s.shard_count[k];
    st.optimizer_steps = optimizer_steps;
    st.fingerprint = s.fingerprint;
    st.params = slice(params, st.first, st.count);
    st.m = slice(m, st.first, st.count);
    st.v = slice(v, st.first, st.count);
    out.push_back(encode_record(st, shard_path(k), step));
  }
  const uint64_t offset = step * s.cfg.batch;
  const uint64_t epoch_size = s.cfg.train->size();
  for (size_t l = 0; l < s.cfg.loaders; ++l) {
    loader_state ls;
    ls.step = step;
    ls.epoch = offset / epoch_size;
    ls.position = offset % epoch_size;
    ls.share_size = epoch_size;
    ls.fingerprint = s.fingerprint;
    out.push_back(encode_record(ls, loader_path(l), step));
  }
  out.push_back(trainer_record(step));
  std::vector<const checkpoint*> batch;
  for (const auto& cp : out)
    batch.push_back(&cp);
  std::vector<caf::error> results;
  if (auto err = store.commit(batch, results))
    return err;
  for (auto& err : results)
    if (err)
      return err;
  if (store.config().mode == durability::periodic)
    if (auto err = store.sync())
      return err;
  return step;
}

} // namespace understudy::actors
