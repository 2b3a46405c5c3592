// Parameter shards, data loaders and workers of a training job.

#include <algorithm>
#include <map>
#include <memory>
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
  caf::actor trainer;
  uint64_t attempt = 0;
  bool synced = false;
  /// Gradients of step st.step + 1 by worker rank, and their losses.
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
    pending.resize(this->s->cfg.workers);
    arrived.assign(this->s->cfg.workers, false);
    losses.assign(this->s->cfg.workers, 0.0f);
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
    // Fixed order: rank 0 + rank 1 + ... whatever order the pushes came in.
    std::copy(pending[0].begin(), pending[0].end(), sum.begin());
    for (size_t w = 1; w < pending.size(); ++w) {
      const float* g = pending[w].data();
      for (size_t i = 0; i < sum.size(); ++i)
        sum[i] += g[i];
    }
    const float scale = 1.0f / static_cast<float>(pending.size());
    for (auto& x : sum)
      x *= scale;
    float loss = 0;
    for (float l : losses)
      loss += l;
    loss *= scale;
    // A worker that pulled an earlier step, or the writer, may still hold the
    // parameters: change a copy then.
    if (params.use_count() > 1)
      params = std::make_shared<std::vector<float>>(*params);
    opt.step(params->data(), sum.data());
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
        [this](push_atom, uint64_t step, uint64_t att, size_t rank, std::vector<float>& grad,
               float loss) {
          s->maybe_crash(fault_target::shard, k, step);
          if (s->maybe_hang(self, fault_target::shard, k, step))
            return;
          if (att != attempt || !synced || step != st->value().step + 1 || rank >= pending.size() ||
              grad.size() != sum.size()) {
            ++stats.stale;
            return;
          }
          if (arrived[rank]) {
            ++stats.duplicates;
            return;
          }
          pending[rank] = std::move(grad);
          losses[rank] = loss;
          arrived[rank] = true;
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
  const std::vector<uint32_t>& share;
  size_t n_workers;
  uint64_t per_step;
  uint64_t seed;
  bool synced = false;
  /// The cursor after `base_step`: stream offset `base_offset`.
  uint64_t base_step = 0;
  uint64_t base_offset = 0;
  /// Prepared batches by step, with how many of them were served.
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
        share(this->s->loader_share[l]),
        n_workers(this->s->workers_of_loader(l)),
        per_step(static_cast<uint64_t>(n_workers) * this->s->cfg.batch),
        seed(splitmix64::at(this->s->cfg.seed, 0x10ad0000 + l)) {}

  size_t max_cached() const { return s->cfg.prefetch + 1; }

  uint64_t offset_after(uint64_t step) const { return base_offset + (step - base_step) * per_step; }

  const std::vector<uint32_t>& order(uint64_t epoch) {
    auto i = orders.find(epoch);
    if (i == orders.end()) {
      while (orders.size() >= 2)
        orders.erase(orders.begin());
      i = orders.emplace(epoch, epoch_order(share.size(), seed, epoch)).first;
    }
    return i->second;
  }

  std::vector<batch_ptr> prepare(uint64_t step) {
    const auto& data = *s->cfg.train;
    const size_t dim = data.input_dim;
    const size_t b = s->cfg.batch;
    std::vector<batch_ptr> out;
    out.reserve(n_workers);
    for (size_t j = 0; j < n_workers; ++j) {
      auto sb = std::make_shared<served_batch>();
      sb->step = step;
      sb->rank = l + j * s->cfg.loaders;
      sb->offset = offset_after(step - 1) + j * b;
      sb->share_size = share.size();
      sb->indices.resize(b);
      sb->inputs.resize(b * dim);
      sb->labels.resize(b);
      for (size_t i = 0; i < b; ++i) {
        uint64_t t = sb->offset + i;
        uint32_t idx = share[order(t / share.size())[t % share.size()]];
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
    if (v.fingerprint != s->fingerprint || v.share_size != share.size() ||
        v.position >= share.size())
      return state_error(st->identity().path + "@" + std::to_string(v.step) +
                         ": cursor belongs to another job configuration");
    base_step = v.step;
    base_offset = v.epoch * share.size() + v.position;
    synced = true;
    return {};
  }

  caf::behavior make() {
    return {
        [this](batch_atom, uint64_t step, size_t rank) -> caf::result<batch_ptr> {
          s->maybe_crash(fault_target::loader, l, step);
          if (s->maybe_hang(self, fault_target::loader, l, step))
            return caf::delegated<batch_ptr>{};
          if (!synced || step <= base_step || rank % s->cfg.loaders != l || rank >= s->cfg.workers)
            return make_error(caf::sec::invalid_argument,
                              "loader-" + std::to_string(l) + ": no batch for step " +
                                  std::to_string(step) + ", rank " + std::to_string(rank));
          highest_requested = std::max(highest_requested, step);
          // Steps before `step` are done with (a retried step is prepared again).
          while (!cache.empty() && cache.begin()->first < step)
            cache.erase(cache.begin());
          auto i = cache.find(step);
          if (i == cache.end())
            i = cache.emplace(step, std::make_pair(prepare(step), size_t{0})).first;
          auto out = i->second.first[rank / s->cfg.loaders];
          if (++i->second.second == n_workers)
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
          v.epoch = offset / share.size();
          v.position = offset % share.size();
          v.share_size = share.size();
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

caf::behavior worker_behavior(caf::event_based_actor* self, shared_ptr_t s, size_t rank) {
  auto ws = std::make_shared<worker_state>();
  const size_t n = s->cfg.net->parameter_count();
  ws->params.resize(n);
  ws->grad.resize(n);
  return {
      [=](train_step_atom, uint64_t step, uint64_t attempt, const caf::actor& loader,
          const std::vector<caf::actor>& shards) {
        s->maybe_crash(fault_target::worker, rank, step);
        if (s->maybe_hang(self, fault_target::worker, rank, step))
          return;
        if (auto factor = s->maybe_slow(fault_target::worker, rank, step))
          ws->slow = *factor;
        // A lost step: the gradients never arrive, the worker goes on answering.
        bool lose = s->fire(fault_target::worker, rank, step, fault_kind::lose);
        auto began = std::chrono::steady_clock::now();
        auto trainer = caf::actor_cast<caf::actor>(self->current_sender());
        self->request(loader, caf::infinite, batch_atom::value, step, rank)
            .then(
                [=](const batch_ptr& b) {
                  auto left = std::make_shared<size_t>(shards.size());
                  auto slices = std::make_shared<std::vector<slice_ptr>>(shards.size());
                  for (size_t k = 0; k < shards.size(); ++k) {
                    self->request(shards[k], caf::infinite, pull_atom::value)
                        .then(
                            [=](uint64_t at, const slice_ptr& slice) {
                              // Parameters of another step: an abandoned attempt.
                              if (at + 1 == step && slice->size() == s->shard_count[k])
                                (*slices)[k] = slice;
                              if (--*left != 0)
                                return;
                              for (size_t j = 0; j < shards.size(); ++j) {
                                if (!(*slices)[j])
                                  return;
                                std::copy((*slices)[j]->begin(), (*slices)[j]->end(),
                                          ws->params.begin() + s->shard_first[j]);
                              }
                              slices->clear(); // hand the snapshots back before pushing
                              batch_view view{b->inputs.data(), b->labels.data(), b->labels.size(),
                                              s->cfg.net->input_dim()};
                              float loss = s->cfg.net->loss_and_gradient(ws->params.data(), view,
                                                                         ws->grad.data());
                              // A slow incarnation delivers late (at least 10 ms per
                              // unit of slowdown, whatever its own time).
                              caf::timespan delay{0};
                              if (ws->slow > 1) {
                                auto took = std::max<caf::timespan>(
                                    std::chrono::steady_clock::now() - began,
                                    std::chrono::milliseconds(10));
                                delay = std::chrono::duration_cast<caf::timespan>(took *
                                                                                  (ws->slow - 1));
                              }
                              for (size_t j = 0; j < shards.size() && !lose; ++j) {
                                auto first = ws->grad.begin() + s->shard_first[j];
                                std::vector<float> g(first, first + s->shard_count[j]);
                                if (delay.count() > 0)
                                  self->delayed_send(shards[j], delay, push_atom::value, step,
                                                     attempt, rank, std::move(g), loss);
                                else
                                  self->send(shards[j], push_atom::value, step, attempt, rank,
                                             std::move(g), loss);
                              }
                              if (trainer) {
                                if (delay.count() > 0)
                                  self->delayed_send(trainer, delay, pushed_atom::value, step,
                                                     attempt, rank);
                                else
                                  self->send(trainer, pushed_atom::value, step, attempt, rank);
                              }
                            },
                            [=](caf::error&) { --*left; });
                  }
                },
                // A loader that died or moved on: the trainer recovers the step.
                [](caf::error&) {});
      },
      [](alive_atom) { return alive_atom::value; },
  };
}

} // namespace

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

} // namespace understudy::actors
