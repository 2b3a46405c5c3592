// A GPU rank: a persistent actor that owns a GPU actor and restores its
// durable tensors into it on every start.

#include "understudy/gpu/gpu_rank.hpp"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/message_view.hpp>

#include "understudy/gpu/gpu_actor.hpp"
#include "understudy/schema/state.capnp.h"
#include "understudy/state/persistent.hpp"

namespace understudy {

/// A rank's state as the generic TensorState: the step, the job in the note,
/// and each tensor named "ID:NAME" (its buffer id and name).
template <>
struct state_codec<gpu::rank_state> {
  using schema = schema::TensorState;
  static constexpr uint32_t version = 1;

  static void save(const gpu::rank_state& st, state_encoder& enc) {
    auto root = enc.init_root<schema>();
    root.setStep(st.step);
    root.setNote(st.job);
    for (const auto& t : st.tensors)
      enc.add_tensor(tensor_data::share<float>(std::to_string(t.id) + ":" + t.name,
                                               element_type::f32, t.values));
  }

  static caf::error load(state_decoder& dec, gpu::rank_state& st) {
    auto root = dec.root<schema>();
    st.step = root.getStep();
    st.job = root.getNote();
    for (const auto& info : dec.record().info().tensors) {
      auto colon = info.name.find(':');
      char* end = nullptr;
      auto id = std::strtoul(info.name.c_str(), &end, 10);
      if (colon == std::string::npos || end != info.name.c_str() + colon)
        return make_error(state_errc::corrupt_record,
                          "tensor '" + info.name + "' is not named ID:NAME");
      if (info.type != element_type::f32 || info.size % sizeof(float) != 0)
        return make_error(state_errc::corrupt_record,
                          "tensor '" + info.name + "' does not hold float32 values");
      // Read later by the GPU actor itself, which verifies every chunk as it
      // copies it (the rank falls back to an older version if one is corrupt).
      st.tensors.push_back(gpu::rank_tensor{info.name.substr(colon + 1),
                                            static_cast<gpu::buffer_id>(id), nullptr,
                                            info.size / sizeof(float)});
    }
    return {};
  }

  static void recycle(gpu::rank_state&& dead, tensor_recycler& bin) {
    for (auto& t : dead.tensors)
      if (t.values && t.values.use_count() == 1)
        bin.give(std::move(*t.values));
  }
};

namespace gpu {

namespace {

class rank_actor {
public:
  rank_actor(caf::event_based_actor* self, gpu_rank_options opts,
             std::shared_ptr<persistent<rank_state>> st, caf::actor gpu, child_token token)
      : self_(self),
        opts_(std::move(opts)),
        st_(std::move(st)),
        gpu_(std::move(gpu)),
        token_(std::move(token)) {
    // nop
  }

  caf::behavior start() {
    self_->link_to(gpu_);
    auto report = st_->restore();
    if (!report)
      throw std::runtime_error("cannot load the state of " + st_->identity().path + ": " +
                               describe(report.error()));
    if (!st_->restored_step())
      start_fresh();
    else if (auto err = adopt_restored())
      throw std::runtime_error(describe(err));
    auto gpu = gpu_;
    self_->set_default_handler(
        [gpu](caf::scheduled_actor* ptr, caf::message_view& x) -> caf::result<caf::message> {
          auto rp = ptr->make_response_promise();
          rp.delegate(gpu, x.move_content_to_message());
          return rp;
        });
    // Buffers and tensors first: messages forwarded later queue behind them.
    upload_state([this](caf::error err) {
      if (err)
        return self_->quit(err);
      announce_ready(token_);
    });
    return {
        [this](rank_restore_atom, uint64_t max_step) { return restore(max_step); },
        [this](rank_checkpoint_atom, uint64_t step) { return checkpoint(step); },
        [this](rank_probe_atom) { return probe(); },
    };
  }

private:
  void start_fresh() {
    st_->value() = opts_.fresh();
    st_->value().step = 0;
    st_->value().job = opts_.job;
  }

  /// Checks that the state restore() loaded belongs to this job.
  caf::error adopt_restored() {
    if (st_->value().job != opts_.job)
      return make_error(state_errc::schema_mismatch,
                        st_->identity().path + "@" + std::to_string(st_->value().step) +
                            ": the stored state belongs to another job ('" + st_->value().job +
                            "', not '" + opts_.job + "'): use another state directory");
    return {};
  }

  /// Allocates what the GPU actor lacks, uploads the tensors that have
  /// values (moving them when no checkpoint shares them: the state keeps only
  /// their sizes then) and has the GPU actor read the restored ones from the
  /// store; `done` runs once the GPU actor has answered both.
  template <class F>
  void upload(F done) {
    op_batch b;
    for (const auto& [id, count] : opts_.scratch)
      if (allocated_.insert(id).second)
        b.allocate(id, count);
    auto& tensors = st_->value().tensors;
    counts_.clear();
    restore_plan plan;
    plan.directory = opts_.p.store->config().directory;
    plan.path = st_->identity().path;
    plan.step = st_->value().step;
    for (auto& t : tensors) {
      const uint64_t count = t.values ? t.values->size() : t.stored_count;
      counts_.push_back(count);
      if (allocated_.insert(t.id).second)
        b.allocate(t.id, count);
      if (!t.values) {
        plan.targets.push_back(restore_target{std::to_string(t.id) + ":" + t.name, t.id});
      } else if (t.values.use_count() == 1) {
        b.upload(whole(t.id, count), std::move(*t.values));
        t.values = std::make_shared<std::vector<float>>();
      } else {
        b.upload(whole(t.id, count), *t.values);
      }
    }
    auto restored = [this, done, plan = std::move(plan)]() mutable {
      if (plan.targets.empty())
        return done(caf::error{});
      self_->request(gpu_, caf::infinite, gpu_restore_atom::value, std::move(plan))
          .then([done](uint64_t) mutable { done(caf::error{}); },
                [done](caf::error& err) mutable { done(std::move(err)); });
    };
    self_->request(gpu_, caf::infinite, gpu_run_atom::value, std::move(b))
        .then([restored](batch_result&) mutable { restored(); },
              [done](caf::error& err) mutable { done(std::move(err)); });
  }

  /// Loads the newest version with step <= `max_step` (the fresh state for
  /// 0 or none), reporting `rejected` versions as skipped.
  caf::error load(uint64_t max_step, std::vector<std::pair<uint64_t, caf::error>> rejected = {}) {
    if (max_step == 0) {
      start_fresh();
      return {};
    }
    auto report = st_->restore(max_step, std::move(rejected));
    if (!report)
      return std::move(report.error());
    // restore() leaves value() alone when it finds nothing.
    if (!report->step) {
      start_fresh();
      return {};
    }
    return adopt_restored();
  }

  /// Uploads the state (upload()); when the GPU actor finds the stored
  /// version corrupt as it copies it, falls back to the next older version,
  /// as restore() does for versions the rank itself rejects.
  template <class F>
  void upload_state(F done) {
    upload([this, done](caf::error err) mutable {
      const bool lazy = std::any_of(st_->value().tensors.begin(), st_->value().tensors.end(),
                                    [](const rank_tensor& t) { return !t.values; });
      const auto bad = st_->value().step;
      if (!err || !lazy || bad == 0 ||
          !(is(err, state_errc::corrupt_record) || is(err, state_errc::truncated_chunk)))
        return done(std::move(err));
      if (auto load_err = load(bad - 1, {{bad, err}}))
        return done(std::move(load_err));
      upload_state(std::move(done));
    });
  }

  caf::result<uint64_t> restore(uint64_t max_step) {
    if (auto err = load(max_step))
      return err;
    auto rp = self_->make_response_promise<uint64_t>();
    upload_state([this, rp](caf::error err) mutable {
      if (!err) {
        rp.deliver(st_->value().step);
        return;
      }
      rp.deliver(err);
      self_->quit(err);
    });
    return rp;
  }

  caf::result<uint64_t> checkpoint(uint64_t step) {
    auto rp = self_->make_response_promise<uint64_t>();
    op_batch b;
    const auto& tensors = st_->value().tensors;
    for (size_t i = 0; i < tensors.size(); ++i)
      b.download(whole(tensors[i].id, counts_.at(i)));
    self_->request(gpu_, caf::infinite, gpu_run_atom::value, std::move(b))
        .then(
            [this, rp, step](batch_result& res) mutable {
              auto& v = st_->value();
              if (res.downloads.size() != v.tensors.size()) {
                rp.deliver(make_error(state_errc::corrupt_record,
                                      "the GPU actor answered the checkpoint's downloads with " +
                                          std::to_string(res.downloads.size()) + " tensors"));
                return;
              }
              for (size_t i = 0; i < v.tensors.size(); ++i)
                v.tensors[i].values =
                    std::make_shared<std::vector<float>>(std::move(res.downloads[i]));
              v.step = step;
              st_->checkpoint(step, [rp](caf::expected<uint64_t> r) mutable {
                if (r)
                  rp.deliver(*r);
                else
                  rp.deliver(std::move(r.error()));
              });
            },
            [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
    return rp;
  }

  caf::result<uint64_t> probe() { return st_->newest_durable_step(); }

  caf::event_based_actor* self_;
  gpu_rank_options opts_;
  std::shared_ptr<persistent<rank_state>> st_;
  caf::actor gpu_;
  child_token token_;
  /// Buffers that exist in the GPU actor.
  std::set<buffer_id> allocated_;
  /// The element count of each tensor, as uploaded.
  std::vector<uint64_t> counts_;
};

} // namespace

child_spec gpu_rank_child(std::string id, gpu_rank_options opts) {
  child_spec spec;
  spec.id = std::move(id);
  spec.announces_ready = true;
  spec.start = [opts](child_context& ctx) -> caf::expected<caf::actor> {
    auto gpu = opts.start_gpu(ctx);
    if (!gpu)
      return std::move(gpu.error());
    auto ident = persistent_identity::of(ctx);
    auto token = ctx.token;
    return caf::actor{
        ctx.system.spawn([opts, ident, gpu = *gpu, token](caf::event_based_actor* self) mutable {
          capture_exceptions(self);
          auto st = std::make_shared<persistent<rank_state>>(self, opts.p, ident);
          auto a = std::make_shared<rank_actor>(self, opts, st, gpu, token);
          self->attach_functor([a, st](const caf::error&) { st->release(); });
          return a->start();
        })};
  };
  return spec;
}

} // namespace gpu

} // namespace understudy
