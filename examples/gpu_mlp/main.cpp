// gpu_mlp: trains the digits_mlp MLP data-parallel on GPU actors — one per
// device on CUDA, or N of them on the CPU backend — each in a process of its
// own, while crashing them on request (a real illegal-address kernel on CUDA,
// a simulated one that poisons the process on the CPU), and ends with the same
// parameters as a run without crashes on the same device.
//
//   gpu_mlp [--workers N] [--steps 3000] [--batch 32] [--lr 0.1]
//           [--optimizer sgd|momentum|adam] [--seed 1] [--checkpoint-every 1]
//           [--eval-every 250] [--hidden 128] [--state-dir .understudy/gpu_mlp]
//           [--data examples/data/digits.csv.gz | synthetic:N] [--fault SPEC]
//           [--backend cpu|cuda] [--isolation process|none] [--collective local|nccl]
//
// SPEC: gpu:I@S (a device fault in GPU actor I at step S), worker:I@S (GPU
// actor I's host-side rank crashes), trainer@S, or random:K.
// Each step: every GPU actor computes the gradient of its own batch (the
// batches digits_mlp serves with --loaders 1), a collective group sums the
// gradients in rank order, and every GPU actor applies the mean with the
// optimizer; checkpoint steps store every GPU actor's parameters and optimizer
// state in LMDB. The last line is
// `final: steps=S accuracy=A params_digest=HEX restarts=R lost_steps=L`.
// Exit codes: 0 done, 1 the job failed, 2 bad options or input.

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>

#include "../common/digits_path.hpp"
#include "../common/interrupt.hpp"
#include "../common/progress_printer.hpp"
#include "../common/report_feed.hpp"
#include "understudy/actors/numerics/dataset.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/numerics/splitmix64.hpp"
#include "understudy/actors/recovery.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/gpu/collective.hpp"
#include "understudy/gpu/device.hpp"
#include "understudy/gpu/device_process.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/gpu/gpu_actor.hpp"
#include "understudy/gpu/gpu_rank.hpp"
#include "understudy/state/state_store.hpp"
#include "understudy/state/state_writer.hpp"
#include "understudy/state/tensor_recycler.hpp"
#include "understudy/supervision/supervision_event.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace {

using namespace understudy;
using namespace understudy::actors;
using understudy::examples::interrupt_watch;
using understudy::examples::progress_printer;
using understudy::examples::report_feed;
namespace ug = understudy::gpu;
using clock_type = std::chrono::steady_clock;

// -- output -----------------------------------------------------------------------------

// -- data -------------------------------------------------------------------------------

/// `n` samples of 64 features in [0, 1) labelled by a seeded random linear
/// teacher (the class with the largest score): learnable, as large as asked.
dataset synthetic(size_t n, uint64_t seed) {
  constexpr size_t dim = 64, classes = 10;
  dataset d;
  d.input_dim = dim;
  d.class_count = classes;
  splitmix64 rng{splitmix64::at(seed, 0x5e7)};
  std::vector<float> teacher(dim * classes);
  for (auto& w : teacher)
    w = 2.0f * rng.uniform01() - 1.0f;
  d.inputs.resize(n * dim);
  d.labels.resize(n);
  for (size_t i = 0; i < n; ++i) {
    float* x = d.inputs.data() + i * dim;
    for (size_t k = 0; k < dim; ++k)
      x[k] = rng.uniform01();
    uint32_t best = 0;
    float best_score = 0;
    for (size_t c = 0; c < classes; ++c) {
      float score = 0;
      for (size_t k = 0; k < dim; ++k)
        score += x[k] * teacher[k * classes + c];
      if (c == 0 || score > best_score) {
        best = static_cast<uint32_t>(c);
        best_score = score;
      }
    }
    d.labels[i] = best;
  }
  return d;
}

// -- the job ----------------------------------------------------------------------------

/// Buffer ids in every GPU actor.
struct buffers {
  static constexpr ug::buffer_id params = 1, grad = 2, m = 3, v = 4, inputs = 5, labels = 6,
                                 loss = 7, act_base = 100, delta_base = 200;
};

enum class isolation_mode { process, none };

/// Everything the job's actors share with main().
struct job_shared {
  std::shared_ptr<const mlp> net;
  std::shared_ptr<const dataset> train;
  std::shared_ptr<const dataset> test;
  size_t workers = 2;
  size_t batch = 32;
  uint64_t steps = 3000;
  uint64_t seed = 1;
  uint64_t checkpoint_every = 1;
  uint64_t eval_every = 250;
  optimizer_config opt;
  std::vector<fault> faults;
  ug::backend_kind kind = ug::backend_kind::cpu;
  std::vector<int> devices; // of each rank (CUDA)
  isolation_mode isolation = isolation_mode::process;
  ug::collective_path collective = ug::collective_path::local;
  std::string job;
  persistence p;

  std::unique_ptr<std::atomic<bool>[]> fired;
  std::atomic<uint64_t> restarts{0};
  std::atomic<uint64_t> lost_steps{0};
  std::atomic<uint64_t> inflight{0};
  /// Ctrl-C: the trainer starts no new step and ends at its committed one.
  std::atomic<bool> stop_requested{false};
  std::function<void(const training_progress&)> progress;
  std::function<void(uint64_t)> started;
  std::atomic<bool> announced{false};

  std::mutex mtx;
  std::condition_variable cv;
  std::optional<caf::expected<training_result>> outcome;

  bool fire(fault_target target, size_t index, uint64_t step) {
    for (size_t i = 0; i < faults.size(); ++i) {
      const auto& f = faults[i];
      if (f.target == target && f.index == index && f.step == step && !fired[i].exchange(true))
        return true;
    }
    return false;
  }

  void finish(caf::expected<training_result> r) {
    std::lock_guard<std::mutex> guard{mtx};
    if (!outcome)
      outcome = std::move(r);
    cv.notify_all();
  }

  bool checkpoint_step(uint64_t step) const {
    return step % checkpoint_every == 0 || step == steps;
  }

  std::string rank_id(size_t r) const { return "rank-" + std::to_string(r); }
};

using shared_ptr_t = std::shared_ptr<job_shared>;

/// The persistent tensors of the optimizer in use.
std::vector<std::pair<std::string, ug::buffer_id>> persistent_tensors(const job_shared& s) {
  std::vector<std::pair<std::string, ug::buffer_id>> out{{"params", buffers::params}};
  if (s.opt.kind != optimizer_kind::sgd)
    out.emplace_back("m", buffers::m);
  if (s.opt.kind == optimizer_kind::adam)
    out.emplace_back("v", buffers::v);
  return out;
}

ug::rank_state fresh_state(const job_shared& s) {
  ug::rank_state st;
  const size_t n = s.net->parameter_count();
  for (const auto& [name, id] : persistent_tensors(s)) {
    std::vector<float> values(n, 0.0f);
    if (id == buffers::params)
      s.net->init_parameters(values.data(), s.seed);
    st.tensors.push_back({name, id, std::make_shared<std::vector<float>>(std::move(values))});
  }
  return st;
}

std::vector<std::pair<ug::buffer_id, uint64_t>> scratch_buffers(const job_shared& s) {
  const auto& net = *s.net;
  std::vector<std::pair<ug::buffer_id, uint64_t>> out{{buffers::grad, net.parameter_count()},
                                                      {buffers::inputs, s.batch * net.input_dim()},
                                                      {buffers::labels, s.batch},
                                                      {buffers::loss, s.batch}};
  for (size_t l = 0; l < net.layer_count(); ++l) {
    out.emplace_back(buffers::act_base + l, s.batch * net.layer(l).fan_out);
    out.emplace_back(buffers::delta_base + l, s.batch * net.layer(l).fan_out);
  }
  return out;
}

/// Forward and backward of one batch into the gradient buffer; downloads the
/// per-sample loss. With `fault`, a device fault first.
ug::op_batch gradient_batch(const job_shared& s, std::vector<float> inputs,
                            std::vector<uint32_t> labels, bool fault) {
  const auto& net = *s.net;
  const size_t batch = s.batch;
  const size_t layers = net.layer_count();
  ug::op_batch b;
  if (fault)
    b.inject_fault(ug::fault_kind::illegal_address);
  auto params = [](size_t first, size_t count) { return ug::slice{buffers::params, first, count}; };
  auto grad = [](size_t first, size_t count) { return ug::slice{buffers::grad, first, count}; };
  auto act = [&](size_t l) { // the input of layer l
    return l == 0 ? ug::whole(buffers::inputs, batch * net.input_dim())
                  : ug::whole(buffers::act_base + l - 1, batch * net.layer(l - 1).fan_out);
  };
  auto delta = [&](size_t l) {
    return ug::whole(buffers::delta_base + l, batch * net.layer(l).fan_out);
  };
  b.upload(act(0), std::move(inputs));
  b.upload(ug::whole(buffers::labels, batch), std::move(labels));
  for (size_t l = 0; l < layers; ++l) {
    const auto& ls = net.layer(l);
    auto out = ug::whole(buffers::act_base + l, batch * ls.fan_out);
    b.gemm(false, false, batch, ls.fan_out, ls.fan_in, 1.0f, act(l),
           params(ls.weights, ls.fan_in * ls.fan_out), 0.0f, out);
    b.add_bias(out, params(ls.biases, ls.fan_out), batch, ls.fan_out);
    if (l + 1 < layers)
      b.relu(out, out);
  }
  b.softmax_xent(act(layers), ug::whole(buffers::labels, batch), batch, net.class_count(),
                 1.0f / static_cast<float>(batch), ug::whole(buffers::loss, batch),
                 delta(layers - 1));
  for (size_t l = layers; l-- > 0;) {
    const auto& ls = net.layer(l);
    b.gemm(true, false, ls.fan_in, ls.fan_out, batch, 1.0f, act(l), delta(l), 0.0f,
           grad(ls.weights, ls.fan_in * ls.fan_out));
    b.bias_grad(delta(l), batch, ls.fan_out, grad(ls.biases, ls.fan_out));
    if (l > 0) {
      b.gemm(false, true, batch, ls.fan_in, ls.fan_out, 1.0f, delta(l),
             params(ls.weights, ls.fan_in * ls.fan_out), 0.0f, delta(l - 1));
      b.relu_grad(act(l), delta(l - 1), delta(l - 1));
    }
  }
  b.download(ug::whole(buffers::loss, batch));
  return b;
}

/// The mean of the summed gradients, then the optimizer's update of `step`
/// (as a parameter shard of digits_mlp applies it).
ug::op_batch update_batch(const job_shared& s, uint64_t step) {
  const size_t n = s.net->parameter_count();
  auto p = ug::whole(buffers::params, n);
  auto g = ug::whole(buffers::grad, n);
  ug::op_batch b;
  b.scale(1.0f / static_cast<float>(s.workers), g);
  const auto& o = s.opt;
  switch (o.kind) {
    case optimizer_kind::sgd:
      b.sgd_step(p, g, ug::sgd_params{o.lr, o.weight_decay});
      break;
    case optimizer_kind::momentum:
      b.momentum_step(p, g, ug::whole(buffers::m, n),
                      ug::momentum_params{o.lr, o.momentum, o.weight_decay});
      break;
    case optimizer_kind::adam: {
      ug::adam_params hp;
      hp.lr = o.lr;
      hp.beta1 = o.beta1;
      hp.beta2 = o.beta2;
      hp.epsilon = o.epsilon;
      hp.weight_decay = o.weight_decay;
      hp.step = step;
      b.adam_step(p, g, ug::whole(buffers::m, n), ug::whole(buffers::v, n), hp);
      break;
    }
  }
  return b;
}

/// The samples of rank `r` at `step`: those digits_mlp's single loader serves
/// worker r (stream positions ((step - 1) * workers + r) * batch onwards, each
/// epoch in its seeded order).
std::pair<std::vector<float>, std::vector<uint32_t>> batch_of(
    const job_shared& s, uint64_t step, size_t r,
    std::map<uint64_t, std::vector<uint32_t>>& orders) {
  const auto& data = *s.train;
  const size_t dim = data.input_dim;
  const uint64_t size = data.size();
  const uint64_t seed = splitmix64::at(s.seed, 0x10ad0000);
  std::vector<float> inputs(s.batch * dim);
  std::vector<uint32_t> labels(s.batch);
  const uint64_t offset = ((step - 1) * s.workers + r) * s.batch;
  for (size_t i = 0; i < s.batch; ++i) {
    const uint64_t t = offset + i;
    const uint64_t epoch = t / size;
    auto it = orders.find(epoch);
    if (it == orders.end()) {
      while (orders.size() >= 2)
        orders.erase(orders.begin());
      it = orders.emplace(epoch, epoch_order(size, seed, epoch)).first;
    }
    const uint32_t idx = it->second[t % size];
    labels[i] = data.labels[idx];
    std::copy_n(data.inputs.data() + size_t{idx} * dim, dim, inputs.data() + i * dim);
  }
  return {std::move(inputs), std::move(labels)};
}

// -- the trainer ------------------------------------------------------------------------

/// `(start_atom)`: the trainer's first message to itself.
using start_atom = caf::atom_constant<caf::atom("gm_start")>;

/// Drives the steps; recovers through the training component's recovery
/// protocol (understudy/actors/recovery.hpp): the ranks are its stateful
/// participants, the collective group a stateless one.
class trainer_actor {
public:
  trainer_actor(caf::event_based_actor* self, shared_ptr_t s, caf::actor job, uint64_t incarnation)
      : self_(self), s_(std::move(s)), job_(std::move(job)), incarnation_(incarnation) {
    // nop
  }

  caf::behavior make() {
    self_->set_down_handler([this](caf::down_msg& dm) {
      if (rp_)
        rp_->on_down(dm);
    });
    self_->send(self_, start_atom::value);
    return {
        [this](start_atom) {
          self_->request(job_, caf::infinite, resolve_atom::value, std::string{"ranks"})
              .then([this](const caf::actor& sup) { start(sup); },
                    [](caf::error& err) {
                      throw std::runtime_error("cannot find the ranks: " + describe(err));
                    });
        },
    };
  }

private:
  size_t group_index() const { return s_->workers; }

  const caf::actor& rank(size_t r) const { return rp_->handle(r); }

  uint64_t attempt() const { return rp_->attempt(); }

  // -- recovery ---------------------------------------------------------------------------

  void start(const caf::actor& ranks_sup) {
    std::vector<recovery_protocol::participant> parts;
    for (size_t r = 0; r < s_->workers; ++r)
      parts.push_back({s_->rank_id(r), ranks_sup, true, {}, 0, true, false});
    parts.push_back({"group", ranks_sup, false, {}, 0, true, false});
    recovery_protocol::hooks h;
    h.probe = [this](size_t, const caf::actor& hdl, recovery_protocol::step_callback done) {
      self_->request(hdl, caf::infinite, ug::rank_probe_atom::value)
          .then([done](uint64_t newest) { done(newest); },
                [done](caf::error& err) { done(std::move(err)); });
    };
    h.rewind = [this](size_t, const caf::actor& hdl, uint64_t step,
                      recovery_protocol::step_callback done) {
      self_->request(hdl, caf::infinite, ug::rank_restore_atom::value, step)
          .then([done](uint64_t restored) { done(restored); },
                [done](caf::error& err) { done(std::move(err)); });
    };
    h.resume = [this](uint64_t committed) {
      set_committed(committed);
      cur_ = 0;
      next();
    };
    h.failed = [this](caf::error err) { fail(std::move(err)); };
    h.exits_by_itself = exits_by_itself;
    rp_ = std::make_unique<recovery_protocol>(self_, std::move(parts), std::move(h),
                                              incarnation_ << 32);
    rp_->recover();
  }

  void set_committed(uint64_t step) {
    committed_ = step;
    done_ = step;
    auto inflight = s_->inflight.load();
    if (inflight > committed_) {
      s_->lost_steps += inflight - committed_;
      s_->inflight = committed_;
    }
    if (!s_->announced.exchange(true) && s_->started)
      s_->started(committed_);
  }

  /// Whether a participant that answered `err` exits by itself: a GPU actor
  /// after a CUDA error (its process after a sticky one), a group after a
  /// failed collective, or one that is gone already.
  static bool exits_by_itself(const caf::error& err) {
    return ug::is(err, ug::gpu_errc::sticky_cuda_error) || ug::is(err, ug::gpu_errc::cuda_error) ||
           ug::is(err, ug::gpu_errc::cublas_error) || err == caf::sec::request_receiver_down ||
           (err.category() == ug::collective_category &&
            !ug::is(err, ug::collective_errc::invalid_argument)) ||
           err.category() == process_category;
  }

  void on_error(uint64_t att, size_t i, const caf::error& err) {
    if (!finished_)
      rp_->on_error(att, i, err);
  }

  void fail(caf::error err) {
    if (finished_)
      return;
    finished_ = true;
    rp_->stop();
    s_->finish(std::move(err));
    self_->quit();
  }

  // -- steps ------------------------------------------------------------------------------

  void next() {
    if (rp_->recovering() || finished_ || cur_ != 0)
      return;
    if (done_ >= s_->steps)
      return finish();
    if (s_->stop_requested)
      return halt();
    const uint64_t step = done_ + 1;
    s_->inflight = step;
    if (s_->fire(fault_target::trainer, 0, step))
      throw std::runtime_error("injected fault trainer@" + std::to_string(step));
    cur_ = step;
    auto att = attempt();
    for (size_t r = 0; r < s_->workers; ++r)
      if (s_->fire(fault_target::worker, r, step))
        self_->send_exit(rank(r), make_error(caf::sec::runtime_error,
                                             "injected fault worker:" + std::to_string(r) + "@" +
                                                 std::to_string(step)));
    auto left = std::make_shared<size_t>(s_->workers);
    auto loss = std::make_shared<double>(0.0);
    for (size_t r = 0; r < s_->workers; ++r) {
      auto [inputs, labels] = batch_of(*s_, step, r, orders_);
      const bool fault = s_->fire(fault_target::gpu, r, step);
      self_
          ->request(rank(r), caf::infinite, ug::gpu_run_atom::value,
                    gradient_batch(*s_, std::move(inputs), std::move(labels), fault))
          .then(
              [this, att, step, left, loss](ug::batch_result& res) {
                if (att != attempt() || step != cur_)
                  return;
                double sum = 0;
                for (float x : res.downloads.at(0))
                  sum += x;
                *loss += sum / static_cast<double>(s_->batch);
                if (--*left == 0)
                  reduce(step, static_cast<float>(*loss / static_cast<double>(s_->workers)));
              },
              [this, att, r](caf::error& err) { on_error(att, r, err); });
    }
  }

  void reduce(uint64_t step, float loss) {
    auto att = attempt();
    std::vector<ug::slice> grads(s_->workers, ug::whole(buffers::grad, s_->net->parameter_count()));
    self_
        ->request(rp_->handle(group_index()), caf::infinite, ug::all_reduce_atom::value,
                  std::move(grads))
        .then(
            [this, att, step, loss](caf::ok_atom) {
              if (att == attempt() && step == cur_)
                update(step, loss);
            },
            [this, att](caf::error& err) { on_error(att, group_index(), err); });
  }

  void update(uint64_t step, float loss) {
    auto att = attempt();
    auto left = std::make_shared<size_t>(s_->workers);
    for (size_t r = 0; r < s_->workers; ++r)
      self_->request(rank(r), caf::infinite, ug::gpu_run_atom::value, update_batch(*s_, step))
          .then(
              [this, att, step, loss, left](ug::batch_result&) {
                if (att != attempt() || step != cur_ || --*left != 0)
                  return;
                applied(step, loss);
              },
              [this, att, r](caf::error& err) { on_error(att, r, err); });
  }

  void applied(uint64_t step, float loss) {
    done_ = step;
    last_loss_ = loss;
    if (!s_->checkpoint_step(step)) {
      report(step);
      return evaluate_then_next(step);
    }
    auto att = attempt();
    auto left = std::make_shared<size_t>(s_->workers);
    for (size_t r = 0; r < s_->workers; ++r)
      self_->request(rank(r), caf::infinite, ug::rank_checkpoint_atom::value, step)
          .then(
              [this, att, step, left](uint64_t) {
                if (att != attempt() || step != cur_ || --*left != 0)
                  return;
                committed_ = step;
                rp_->committed();
                report(step);
                evaluate_then_next(step);
              },
              [this, att, r](caf::error& err) { on_error(att, r, err); });
  }

  void evaluate_then_next(uint64_t step) {
    cur_ = 0;
    if (s_->eval_every == 0 || step % s_->eval_every != 0 || step == s_->steps)
      return next();
    auto att = attempt();
    pull_params(0, [this, att](std::vector<float> params) {
      if (att != attempt())
        return;
      accuracy_ = accuracy(*s_->net, params.data(), s_->test->view());
      next();
    });
  }

  template <class F>
  void pull_params(size_t r, F then) {
    auto att = attempt();
    ug::op_batch b;
    b.download(ug::whole(buffers::params, s_->net->parameter_count()));
    self_->request(rank(r), caf::infinite, ug::gpu_run_atom::value, std::move(b))
        .then([then](ug::batch_result& res) mutable { then(std::move(res.downloads.at(0))); },
              [this, att, r](caf::error& err) { on_error(att, r, err); });
  }

  void report(uint64_t step) {
    if (!s_->progress)
      return;
    training_progress p;
    p.step = step;
    p.steps = s_->steps;
    p.loss = last_loss_;
    p.accuracy = accuracy_;
    p.restarts = s_->restarts.load();
    p.lost_steps = s_->lost_steps.load();
    s_->progress(p);
  }

  /// Reads every rank's parameters: they must be the same bits on all.
  void finish() {
    auto att = attempt();
    auto all = std::make_shared<std::vector<std::vector<float>>>(s_->workers);
    auto left = std::make_shared<size_t>(s_->workers);
    for (size_t r = 0; r < s_->workers; ++r)
      pull_params(r, [this, att, all, left, r](std::vector<float> params) {
        if (att != attempt() || finished_)
          return;
        (*all)[r] = std::move(params);
        if (--*left != 0)
          return;
        for (size_t q = 1; q < all->size(); ++q)
          if ((*all)[q] != (*all)[0])
            return fail(make_error(
                caf::sec::runtime_error,
                "gpu_mlp: the parameters of rank 0 and rank " + std::to_string(q) + " differ"));
        training_result res;
        res.steps = committed_;
        res.accuracy = accuracy(*s_->net, (*all)[0].data(), s_->test->view());
        res.params_digest = params_digest((*all)[0].data(), (*all)[0].size());
        res.restarts = s_->restarts.load();
        res.lost_steps = s_->lost_steps.load();
        res.params = std::move((*all)[0]);
        accuracy_ = res.accuracy;
        report(committed_);
        finished_ = true;
        rp_->stop();
        s_->finish(std::move(res));
        self_->quit();
      });
  }

  /// Ends the job at its committed step, unevaluated (training_result::stopped).
  void halt() {
    training_result res;
    res.stopped = true;
    res.steps = committed_;
    res.restarts = s_->restarts.load();
    res.lost_steps = s_->lost_steps.load();
    finished_ = true;
    rp_->stop();
    s_->finish(std::move(res));
    self_->quit();
  }

  caf::event_based_actor* self_;
  shared_ptr_t s_;
  caf::actor job_;
  uint64_t incarnation_;
  std::unique_ptr<recovery_protocol> rp_;
  uint64_t committed_ = 0;
  uint64_t done_ = 0;
  uint64_t cur_ = 0;
  bool finished_ = false;
  float last_loss_ = 0;
  double accuracy_ = -1;
  std::map<uint64_t, std::vector<uint32_t>> orders_;
};

child_spec trainer_spec(shared_ptr_t s) {
  child_spec spec;
  spec.id = "trainer";
  spec.restart = restart_type::transient;
  spec.start = [s](child_context& ctx) -> caf::expected<caf::actor> {
    auto job = ctx.token.supervisor;
    auto incarnation = ctx.incarnation;
    return caf::actor{ctx.system.spawn([s, job, incarnation](caf::event_based_actor* self) {
      capture_exceptions(self);
      auto t = std::make_shared<trainer_actor>(self, s, job, incarnation);
      self->attach_functor([t](const caf::error&) {});
      return t->make();
    })};
  };
  return spec;
}

child_spec rank_spec(shared_ptr_t s, size_t r) {
  ug::gpu_rank_options opts;
  opts.p = s->p;
  opts.job = s->job;
  opts.scratch = scratch_buffers(*s);
  opts.fresh = [s] { return fresh_state(*s); };
  const auto kind = s->kind;
  const int device = s->devices.empty() ? 0 : s->devices[r];
  const auto isolation = s->isolation;
  opts.start_gpu = [kind, device, isolation, r](child_context& ctx) -> caf::expected<caf::actor> {
    if (isolation == isolation_mode::none)
      return ug::spawn_gpu_actor(ctx.system, ug::gpu_actor_options{kind, device});
    ug::device_process_options o;
    o.gpu = ug::gpu_actor_options{kind, device};
    // On the CPU a GPU fault poisons the process as an illegal address would.
    o.simulate_sticky_faults = kind == ug::backend_kind::cpu;
    return ug::spawn_device_process(ctx.system, o, "gpu-" + std::to_string(r));
  };
  return ug::gpu_rank_child(s->rank_id(r), std::move(opts));
}

supervisor_spec job_spec(shared_ptr_t s, std::shared_ptr<event_sink> events) {
  supervisor_spec ranks;
  ranks.name = "ranks";
  ranks.intensity = restart_intensity{100, std::chrono::seconds(10)};
  for (size_t r = 0; r < s->workers; ++r)
    ranks.children.push_back(rank_spec(s, r));
  // The group resolves its ranks under its own supervisor (ranks), again in
  // every incarnation.
  ug::collective_options copts;
  for (size_t r = 0; r < s->workers; ++r)
    copts.rank_ids.push_back(s->rank_id(r));
  copts.path = s->collective;
  copts.devices = s->devices;
  copts.deadline = std::chrono::seconds(60);
  ranks.children.push_back(ug::collective_child("group", copts));
  supervisor_spec job;
  job.name = "gpu_mlp";
  job.intensity = restart_intensity{100, std::chrono::seconds(10)};
  job.children.push_back(supervisor_child(std::move(ranks)));
  job.children.push_back(trainer_spec(s));
  auto counter = std::make_shared<callback_sink>([s](const supervision_event& ev) {
    if (ev.kind == event_kind::child_restarted)
      ++s->restarts;
  });
  job.events = std::make_shared<fanout_sink>(
      std::vector<std::shared_ptr<event_sink>>{counter, std::move(events)});
  return job;
}

std::string hex(uint64_t x) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, x);
  return buf;
}

/// Waits for a request's answer from a non-actor thread.
template <class T, class... Ts>
caf::expected<T> ask(caf::scoped_actor& self, const caf::actor& dest, std::chrono::seconds timeout,
                     Ts&&... xs) {
  caf::expected<T> result{caf::sec::request_timeout};
  self->request(dest, timeout, std::forward<Ts>(xs)...)
      .receive([&](T& x) { result = std::move(x); },
               [&](caf::error& err) { result = std::move(err); });
  return result;
}

} // namespace

int main(int argc, char** argv) {
  // A child started to host one GPU actor runs that and nothing else.
  if (auto status = ug::run_device_process_if_requested())
    return *status;
  // Before any thread starts: Ctrl-C stops the job in order (see run below).
  interrupt_watch interrupt;

  CLI::App app{"gpu_mlp: fault-tolerant data-parallel training of an MLP on GPU actors", "gpu_mlp"};
  size_t workers = 0, batch = 32, hidden = 128;
  uint64_t steps = 3000, seed = 1, checkpoint_every = 1, eval_every = 250;
  double lr = 0.1;
  std::string optimizer_name = "sgd", state_dir = ".understudy/gpu_mlp", data_spec, fault_spec;
  std::string report_path;
  std::string backend_name, isolation_name = "process", collective_name = "local";
  app.add_option("--workers", workers,
                 "GPU actors (default: one per device on cuda, 2 on cpu); one batch each per step");
  app.add_option("--steps", steps, "synchronous steps")->capture_default_str();
  app.add_option("--batch", batch, "samples per GPU actor and step")->capture_default_str();
  app.add_option("--hidden", hidden, "units of the hidden layer")->capture_default_str();
  app.add_option("--lr", lr, "learning rate")->capture_default_str();
  app.add_option("--optimizer", optimizer_name, "sgd, momentum or adam")->capture_default_str();
  app.add_option("--seed", seed, "seeds the split, initialisation, shuffles and random faults")
      ->capture_default_str();
  app.add_option("--checkpoint-every", checkpoint_every,
                 "commit every this many steps (a crash loses at most these)")
      ->capture_default_str();
  app.add_option("--eval-every", eval_every, "held-out evaluation interval (0: at the end)")
      ->capture_default_str();
  app.add_option("--state-dir", state_dir, "where the GPU actors persist their state")
      ->capture_default_str();
  app.add_option("--data", data_spec,
                 "digits CSV (gzip or plain), or synthetic:N for N generated samples")
      ->default_str("examples/data/digits.csv.gz");
  app.add_option("--report", report_path,
                 "FILE.html: write the run as one page (loss and accuracy curves with each crash "
                 "marked) when it ends");
  app.add_option("--fault", fault_spec,
                 "crash: gpu:I@S (device fault), worker:I@S (rank host), trainer@S or random:K");
  app.add_option("--backend", backend_name,
                 "cpu or cuda (default: cuda where a device exists, else cpu)");
  app.add_option("--isolation", isolation_name,
                 "process: each GPU actor in a process of its own; none: in this process")
      ->capture_default_str();
  app.add_option("--collective", collective_name,
                 "local: host copies summed in rank order (bit-identical); nccl: NCCL in place "
                 "on the ranks' streams, where ranks have devices of their own")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto usage = [](const std::string& what) {
    std::fprintf(stderr, "gpu_mlp: %s\n", what.c_str());
    return 2;
  };

  auto s = std::make_shared<job_shared>();
  // Backend and devices.
  auto devices = ug::discover_devices();
  if (backend_name.empty())
    backend_name = devices.empty() ? "cpu" : "cuda";
  auto kind = ug::parse_backend_kind(backend_name);
  if (!kind)
    return usage(describe(kind.error()));
  s->kind = *kind;
  if (s->kind == ug::backend_kind::cuda) {
    if (devices.empty())
      return usage(std::string{"--backend cuda: no CUDA device"} +
                   (ug::cuda_compiled() ? "" : " (built without CUDA)"));
    if (workers == 0)
      workers = devices.size();
    for (size_t r = 0; r < workers; ++r)
      s->devices.push_back(devices[r % devices.size()].ordinal);
  } else if (workers == 0) {
    workers = 2;
  }
  if (isolation_name == "process")
    s->isolation = isolation_mode::process;
  else if (isolation_name == "none")
    s->isolation = isolation_mode::none;
  else
    return usage("--isolation must be process or none, not '" + isolation_name + "'");
  if (collective_name == "local")
    s->collective = ug::collective_path::local;
  else if (collective_name == "nccl")
    s->collective = ug::collective_path::nccl;
  else
    return usage("--collective must be local or nccl, not '" + collective_name + "'");

  // Data.
  dataset data;
  if (data_spec.rfind("synthetic:", 0) == 0) {
    char* end = nullptr;
    auto n = std::strtoull(data_spec.c_str() + 10, &end, 10);
    if (end == data_spec.c_str() + 10 || *end != '\0' || n < 10 || n > 100000000)
      return usage("--data synthetic:N needs N from 10 to 100000000");
    data = synthetic(static_cast<size_t>(n), seed);
  } else {
    if (data_spec.empty())
      data_spec = understudy::examples::default_digits_path();
    auto loaded = load_csv(data_spec, csv_options{csv_options::last_column, 1.0f / 16.0f, 10});
    if (!loaded)
      return usage("cannot load the data set: " + describe(loaded.error()));
    if (loaded->input_dim != 64)
      return usage(data_spec + ": expected 64 pixel columns and a label, found " +
                   std::to_string(loaded->input_dim) + " inputs");
    data = std::move(*loaded);
  }
  auto [train, test] = split(data, 0.2, seed);

  auto opt_kind = parse_optimizer_kind(optimizer_name);
  if (!opt_kind)
    return usage(describe(opt_kind.error()));
  if (hidden == 0 || hidden > 65536)
    return usage("--hidden must be from 1 to 65536");
  auto faults = parse_faults(fault_spec, workers, 0, 0, steps, seed, workers);
  if (!faults)
    return usage(describe(faults.error()));
  for (const auto& f : *faults)
    if (f.target == fault_target::gpu && s->isolation != isolation_mode::process)
      return usage("fault " + to_string(f) +
                   ": a device fault poisons its process: it needs --isolation process");

  // The checks and the fingerprint of the training layer (one shard and one
  // loader: the same batches), plus the backend: another backend rounds differently.
  training_config cfg;
  cfg.net = std::make_shared<mlp>(std::vector<size_t>{64, hidden, 10});
  cfg.train = std::make_shared<dataset>(std::move(train));
  cfg.test = std::make_shared<dataset>(std::move(test));
  cfg.workers = workers;
  cfg.shards = 1;
  cfg.loaders = 1;
  cfg.batch = batch;
  cfg.steps = steps;
  cfg.seed = seed;
  cfg.checkpoint_every = checkpoint_every;
  cfg.eval_every = eval_every;
  cfg.optimizer.kind = *opt_kind;
  cfg.optimizer.lr = static_cast<float>(lr);
  if (auto err = validate(cfg))
    return usage(describe(err));
  s->net = std::static_pointer_cast<const mlp>(cfg.net);
  s->train = cfg.train;
  s->test = cfg.test;
  s->workers = workers;
  s->batch = batch;
  s->steps = steps;
  s->seed = seed;
  s->checkpoint_every = checkpoint_every;
  s->eval_every = eval_every;
  s->opt = cfg.optimizer;
  s->faults = std::move(*faults);
  s->fired = std::make_unique<std::atomic<bool>[]>(s->faults.size());
  s->job = "gpu_mlp/" + ug::to_string(s->kind) + "/" + hex(fingerprint(cfg));

  // The actor system: CAF's middleman for the GPU actors' processes.
  caf::actor_system_config acfg;
  acfg.load<caf::io::middleman>();
  acfg.set("logger.console-verbosity", caf::atom("quiet"));
  acfg.set("logger.file-verbosity", caf::atom("quiet"));
  acfg.set("work-stealing.moderate-sleep-duration", caf::timespan{std::chrono::microseconds(50)});
  acfg.set("work-stealing.moderate-poll-attempts", size_t{10});
  register_error_categories(acfg);
  ug::register_gpu_types(acfg);
  ug::register_collective_types(acfg);
  register_process_types(acfg);
  caf::actor_system sys{acfg};
  auto render = [&sys](const caf::error& err) { return sys.render(err); };

  state_store_config scfg;
  scfg.directory = state_dir;
  auto store = state_store::open(scfg);
  if (!store)
    return usage("cannot open the state directory " + state_dir + ": " + render(store.error()));
  s->p.store = *store;
  s->p.writer = spawn_state_writer(sys, *store);
  // A restarted rank restores into its dead incarnation's buffers.
  s->p.recycler = std::make_shared<tensor_recycler>();

  progress_printer printer{isatty(STDOUT_FILENO) != 0};
  std::printf(
      "gpu_mlp: %s, %zu train / %zu held-out samples, %zu GPU actors on %s (%s), batch "
      "%zu, %s lr %g, seed %" PRIu64 "\n",
      cfg.net->describe().c_str(), cfg.train->size(), cfg.test->size(), workers,
      ug::to_string(s->kind).c_str(),
      s->isolation == isolation_mode::process ? "a process each" : "in this process", batch,
      optimizer_name.c_str(), lr, seed);
  ug::collective_options plan_opts;
  plan_opts.path = s->collective;
  plan_opts.devices = s->devices;
  auto plan = ug::plan_collective(plan_opts);
  std::printf("collective: %s%s\n", ug::to_string(plan.path).c_str(),
              plan.fallback_reason.empty() ? "" : (" (" + plan.fallback_reason + ")").c_str());
  if (!s->faults.empty()) {
    std::string list;
    for (const auto& f : s->faults)
      list += (list.empty() ? "" : ",") + to_string(f);
    std::printf("faults: %s\n", list.c_str());
  }
  std::fflush(stdout);
  s->started = [&](uint64_t committed) {
    if (committed == 0)
      printer.note("state: " + state_dir + " holds no committed step of this job: fresh start");
    else
      printer.note("state: resuming from committed step " + std::to_string(committed) + " in " +
                   state_dir);
  };
  // --report: the progress and the crashes, also into the page.
  report_feed report{report_path, "gpu_mlp: " + cfg.net->describe() + " on " +
                                      ug::to_string(s->kind) + ", seed " + std::to_string(seed) +
                                      (fault_spec.empty() ? "" : ", faults " + fault_spec)};
  auto feed = [&](const std::string& line) { report.add(line); };
  auto write_report = [&] { report.write("gpu_mlp"); };
  s->progress = [&](const training_progress& pr) {
    printer.update(pr);
    feed(describe_progress(pr));
  };
  auto events = std::make_shared<callback_sink>([&](const supervision_event& ev) {
    auto who = ev.supervisor + "/" + ev.child;
    if (ev.kind == event_kind::child_exited && ev.reason != "normal" &&
        ev.reason.find("user_shutdown") == std::string::npos) {
      printer.note("crash: " + who + ": " + ev.reason);
      feed("crash: " + who + ": " + ev.reason);
    } else if (ev.kind == event_kind::child_restarted) {
      printer.note("restart: " + who + " incarnation " + std::to_string(ev.incarnation));
    } else if (ev.kind == event_kind::state_fallback || ev.kind == event_kind::intensity_exceeded ||
               ev.kind == event_kind::start_failed) {
      printer.note(to_string(ev));
    }
  });

  auto run = [&]() -> int {
    caf::scoped_actor self{sys};
    auto tree = spawn_supervisor(sys, job_spec(s, events));
    if (!tree) {
      std::fprintf(stderr, "gpu_mlp: cannot start the job: %s\n", render(tree.error()).c_str());
      self->send_exit(s->p.writer, caf::exit_reason::user_shutdown);
      return 1;
    }
    // A tree that gives up (restart intensity exceeded) ends the job too.
    (*tree)->attach_functor([s](const caf::error& reason) {
      s->finish(caf::make_error(caf::sec::runtime_error,
                                "the job's supervisor stopped: " + describe(reason)));
    });
    self->monitor(*tree);
    auto ready = ask<caf::ok_atom>(self, *tree, std::chrono::seconds(300), await_ready_atom::value);
    if (!ready) {
      std::fprintf(stderr, "gpu_mlp: cannot start the job: %s\n", render(ready.error()).c_str());
      self->send_exit(*tree, caf::exit_reason::kill);
      self->send_exit(s->p.writer, caf::exit_reason::user_shutdown);
      return 1;
    }
    caf::expected<training_result> result{caf::sec::request_timeout};
    {
      std::unique_lock<std::mutex> guard{s->mtx};
      while (!s->outcome && interrupt.signal() == 0)
        s->cv.wait_for(guard, std::chrono::milliseconds(100));
      if (!s->outcome) {
        // Interrupted: the step in flight ends, no new one starts, and the job
        // ends at the step the same command resumes from.
        s->stop_requested = true;
        s->cv.wait_for(guard, std::chrono::seconds(30), [&] { return s->outcome.has_value(); });
      }
      if (s->outcome)
        result = *s->outcome;
    }
    printer.end();
    self->send_exit(*tree, caf::exit_reason::user_shutdown);
    self->receive(
        [](caf::down_msg&) {},
        caf::after(std::chrono::seconds(60)) >>
            [] { std::fprintf(stderr, "gpu_mlp: the job did not stop within a minute\n"); });
    self->send_exit(s->p.writer, caf::exit_reason::user_shutdown);
    if (interrupt.signal() != 0 && (!result || result->stopped)) {
      std::printf("interrupted: stopped at committed step %s of %" PRIu64
                  "; run the same command again to resume from it\n",
                  result ? std::to_string(result->steps).c_str() : "(unknown: it did not stop)",
                  s->steps);
      write_report();
      return 128 + interrupt.signal();
    }
    if (!result) {
      std::fprintf(stderr, "gpu_mlp: the job failed: %s\n", render(result.error()).c_str());
      return 1;
    }
    const auto final_line = describe_final(*result);
    std::printf("%s\n", final_line.c_str());
    feed(final_line);
    write_report();
    return 0;
  };
  const int rc = run();
  std::fflush(stdout);
  // The actor system waits for its detached actors (the state writer) to be
  // released: drop the job's handles first.
  s->p.writer = caf::actor{};
  s->p = persistence{};
  return rc;
}
