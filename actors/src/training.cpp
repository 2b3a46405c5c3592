// A training job: configuration, faults, and its supervision tree.

#include "understudy/actors/training.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include <caf/actor_system_config.hpp>

#include "training_shared.hpp"
#include "understudy/actors/numerics/splitmix64.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::actors {

std::string to_string(fault_target x) {
  switch (x) {
    case fault_target::worker:
      return "worker";
    case fault_target::shard:
      return "shard";
    case fault_target::loader:
      return "loader";
    case fault_target::trainer:
      return "trainer";
    case fault_target::gpu:
      return "gpu";
  }
  return "?";
}

std::string to_string(const fault& f) {
  std::string kind = f.kind == fault_kind::hang   ? "hang:"
                     : f.kind == fault_kind::slow ? "slow:"
                     : f.kind == fault_kind::lose ? "lose:"
                                                  : "";
  if (f.target == fault_target::trainer)
    return kind + "trainer@" + std::to_string(f.step);
  auto out =
      kind + to_string(f.target) + ":" + std::to_string(f.index) + "@" + std::to_string(f.step);
  if (f.kind == fault_kind::slow) {
    char buf[32];
    std::snprintf(buf, sizeof buf, ":%g", f.factor);
    out += buf;
  }
  return out;
}

namespace {

caf::error bad_config(std::string what) {
  return caf::make_error(caf::sec::invalid_argument, std::move(what));
}

bool parse_u64(const std::string& text, uint64_t& out) {
  if (text.empty() || text.size() > 19)
    return false;
  out = 0;
  for (char c : text) {
    if (c < '0' || c > '9')
      return false;
    out = out * 10 + static_cast<uint64_t>(c - '0');
  }
  return true;
}

} // namespace

caf::expected<std::vector<fault>> parse_faults(const std::string& spec, size_t workers,
                                               size_t shards, size_t loaders, uint64_t steps,
                                               uint64_t seed, size_t gpus) {
  std::vector<fault> out;
  size_t pos = 0;
  while (pos <= spec.size() && !spec.empty()) {
    auto comma = spec.find(',', pos);
    auto item = spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? spec.size() + 1 : comma + 1;
    auto bad = [&](const std::string& why) {
      return bad_config("fault '" + item + "': " + why +
                        " (expected worker:I@S, shard:I@S, loader:I@S, trainer@S" +
                        std::string{gpus > 0 ? ", gpu:I@S" : ""} + ", hang:ROLE:I@S or random:K)");
    };
    if (item.rfind("random:", 0) == 0) {
      uint64_t k = 0;
      if (!parse_u64(item.substr(7), k) || k == 0 || k > 10000)
        return bad("K must be a number from 1 to 10000");
      splitmix64 rng{splitmix64::at(seed, 0xfa017)};
      // Jobs with GPU actors draw among the kinds they have; the others as
      // always among the first four (the same faults for the same seed).
      std::vector<fault_target> kinds;
      for (auto t : {fault_target::worker, fault_target::shard, fault_target::loader,
                     fault_target::trainer, fault_target::gpu}) {
        size_t n = t == fault_target::worker   ? workers
                   : t == fault_target::shard  ? shards
                   : t == fault_target::loader ? loaders
                   : t == fault_target::gpu    ? gpus
                                               : 1;
        if (gpus == 0 ? t != fault_target::gpu : n > 0)
          kinds.push_back(t);
      }
      for (uint64_t i = 0; i < k; ++i) {
        fault f;
        f.target = kinds[static_cast<size_t>(rng.below(kinds.size()))];
        size_t count = f.target == fault_target::worker   ? workers
                       : f.target == fault_target::shard  ? shards
                       : f.target == fault_target::loader ? loaders
                       : f.target == fault_target::gpu    ? gpus
                                                          : 1;
        f.index = f.target == fault_target::trainer ? 0 : static_cast<size_t>(rng.below(count));
        f.step = 1 + rng.below(steps);
        out.push_back(f);
      }
      continue;
    }
    fault f;
    std::string body = item;
    if (body.rfind("hang:", 0) == 0) {
      f.kind = fault_kind::hang;
      body = body.substr(5);
      if (body.rfind("worker:", 0) != 0 && body.rfind("shard:", 0) != 0 &&
          body.rfind("loader:", 0) != 0 && body.rfind("trainer@", 0) != 0)
        return bad(
            "only a worker, shard, loader or the trainer can hang (hang:ROLE:I@S, "
            "hang:trainer@S)");
    } else if (body.rfind("lose:", 0) == 0) {
      f.kind = fault_kind::lose;
      body = body.substr(5);
      if (body.rfind("worker:", 0) != 0)
        return bad("only a worker's gradients can be lost (lose:worker:I@S)");
    } else if (body.rfind("slow:", 0) == 0) {
      f.kind = fault_kind::slow;
      body = body.substr(5);
      if (body.rfind("worker:", 0) != 0)
        return bad("only a worker can be slow (slow:worker:I@S:F)");
      auto colon = body.rfind(':');
      auto at = body.find('@');
      if (at == std::string::npos || colon < at)
        return bad("missing :FACTOR (slow:worker:I@S:F)");
      auto text = body.substr(colon + 1);
      char* end = nullptr;
      f.factor = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || !(f.factor >= 1.5) ||
          !(f.factor <= 1000))
        return bad("FACTOR must be a number from 1.5 to 1000");
      body = body.substr(0, colon);
    }
    auto at = body.find('@');
    if (at == std::string::npos)
      return bad("missing @STEP");
    auto target = body.substr(0, at);
    if (!parse_u64(body.substr(at + 1), f.step) || f.step == 0 || f.step > steps)
      return bad("step must be a number from 1 to " + std::to_string(steps));
    size_t count = 1;
    std::string name = target;
    std::string index;
    if (auto colon = target.find(':'); colon != std::string::npos) {
      name = target.substr(0, colon);
      index = target.substr(colon + 1);
    }
    if (name == "worker") {
      f.target = fault_target::worker;
      count = workers;
    } else if (name == "shard") {
      f.target = fault_target::shard;
      count = shards;
    } else if (name == "loader") {
      f.target = fault_target::loader;
      count = loaders;
    } else if (name == "trainer") {
      f.target = fault_target::trainer;
      if (!index.empty())
        return bad("the trainer has no index");
    } else if (name == "gpu" && gpus > 0) {
      f.target = fault_target::gpu;
      count = gpus;
    } else {
      return bad("unknown target '" + name + "'");
    }
    if (f.target != fault_target::trainer) {
      uint64_t i = 0;
      if (!parse_u64(index, i))
        return bad("missing or malformed index");
      if (i >= count)
        return bad("there is no " + name + " " + std::to_string(i) + " (the job has " +
                   std::to_string(count) + ")");
      f.index = static_cast<size_t>(i);
    }
    out.push_back(f);
  }
  return out;
}

std::pair<const char*, caf::error> check_liveness(const training_config& cfg) {
  if (cfg.hang_floor < std::chrono::milliseconds(10))
    return {"hang_floor", bad_config("training: hang_floor must be at least 10 ms, not " +
                                     std::to_string(cfg.hang_floor.count()) + " ms")};
  if (cfg.hang_ceiling < cfg.hang_floor || cfg.hang_ceiling > std::chrono::hours(24))
    return {"hang_ceiling",
            bad_config("training: hang_ceiling must be from hang_floor (" +
                       std::to_string(cfg.hang_floor.count()) + " ms) to 24 h, not " +
                       std::to_string(cfg.hang_ceiling.count()) + " ms")};
  struct role_bounds {
    const char* name;
    const char* floor_key;
    const char* ceiling_key;
    const role_policy* policy;
  };
  for (const auto& r :
       {role_bounds{"shard", "shard.hang_floor", "shard.hang_ceiling", &cfg.shard_policy},
        role_bounds{"loader", "loader.hang_floor", "loader.hang_ceiling", &cfg.loader_policy},
        role_bounds{"worker", "worker.hang_floor", "worker.hang_ceiling", &cfg.worker_policy}}) {
    const auto& p = *r.policy;
    if (p.hang_floor.count() == 0 && p.hang_ceiling.count() == 0)
      continue;
    auto floor = p.hang_floor.count() > 0 ? p.hang_floor : cfg.hang_floor;
    auto ceiling = p.hang_ceiling.count() > 0 ? p.hang_ceiling : cfg.hang_ceiling;
    if (floor < std::chrono::milliseconds(10))
      return {r.floor_key, bad_config(std::string{"training: the "} + r.name +
                                      "s' hang_floor must be at least 10 ms, not " +
                                      std::to_string(floor.count()) + " ms")};
    if (ceiling < floor || ceiling > std::chrono::hours(24))
      return {p.hang_ceiling.count() > 0 ? r.ceiling_key : r.floor_key,
              bad_config(std::string{"training: the "} + r.name +
                         "s' hang_ceiling must be from their hang_floor (" +
                         std::to_string(floor.count()) + " ms) to 24 h, not " +
                         std::to_string(ceiling.count()) + " ms")};
  }
  if (!(cfg.hang_factor >= 1.0 && cfg.hang_factor <= 1000.0))
    return {"hang_factor", bad_config("training: hang_factor must be from 1 to 1000, not " +
                                      std::to_string(cfg.hang_factor))};
  if (!(cfg.straggler_ratio == 0 || (cfg.straggler_ratio >= 1.5 && cfg.straggler_ratio <= 1000.0)))
    return {"straggler_ratio",
            bad_config("training: straggler_ratio must be 0 (off) or from 1.5 to 1000, not " +
                       std::to_string(cfg.straggler_ratio))};
  if (cfg.straggler_steps < 1 || cfg.straggler_steps > 1000000)
    return {"straggler_steps", bad_config("training: straggler_steps must be from 1 to 1000000")};
  if (cfg.straggler_lag < std::chrono::milliseconds(0) || cfg.straggler_lag > std::chrono::hours(1))
    return {"straggler_lag", bad_config("training: straggler_lag must be from 0 to 1 h")};
  return {"", caf::error{}};
}

caf::error validate(const training_config& cfg) {
  if (!cfg.net)
    return bad_config("training: no model");
  if (!cfg.train || cfg.train->size() == 0)
    return bad_config("training: no training data");
  if (!cfg.test || cfg.test->size() == 0)
    return bad_config("training: no held-out data");
  for (const auto* d : {cfg.train.get(), cfg.test.get()})
    if (d->input_dim != cfg.net->input_dim() || d->class_count > cfg.net->class_count())
      return bad_config("training: the data (" + std::to_string(d->input_dim) + " inputs, " +
                        std::to_string(d->class_count) + " classes) does not fit the model " +
                        cfg.net->describe());
  const size_t params = cfg.net->parameter_count();
  if (cfg.batch == 0 || cfg.batch > 1u << 20)
    return bad_config("training: batch must be from 1 to 1048576, not " +
                      std::to_string(cfg.batch));
  if (cfg.micro_batches == 0 || cfg.micro_batches > 4096 || cfg.batch % cfg.micro_batches != 0)
    return bad_config("training: micro_batches must be from 1 to 4096 and divide the batch (" +
                      std::to_string(cfg.batch) + ") into equal micro-batches, not " +
                      std::to_string(cfg.micro_batches));
  if (cfg.workers == 0 || cfg.workers > std::min<size_t>(cfg.micro_batches, 1024))
    return bad_config("training: workers must be from 1 to " +
                      std::to_string(std::min<size_t>(cfg.micro_batches, 1024)) +
                      " (each computes at least one of the " + std::to_string(cfg.micro_batches) +
                      " micro-batches), not " + std::to_string(cfg.workers));
  if (cfg.min_workers > cfg.workers)
    return bad_config("training: min_workers must be from 0 to workers (" +
                      std::to_string(cfg.workers) + "), not " + std::to_string(cfg.min_workers));
  if (cfg.shards == 0 || cfg.shards > params || cfg.shards > 1024)
    return bad_config("training: shards must be from 1 to " +
                      std::to_string(std::min<size_t>(params, 1024)) +
                      " (one parameter per shard at least), not " + std::to_string(cfg.shards));
  if (cfg.loaders == 0 || cfg.loaders > cfg.micro_batches)
    return bad_config("training: loaders must be from 1 to " + std::to_string(cfg.micro_batches) +
                      " (each serves at least one micro-batch), not " +
                      std::to_string(cfg.loaders));
  if (cfg.steps == 0)
    return bad_config("training: steps must be at least 1");
  if (cfg.checkpoint_every == 0)
    return bad_config("training: checkpoint_every must be at least 1");
  if (cfg.prefetch > 64)
    return bad_config("training: prefetch must be at most 64");
  if (auto err = check_liveness(cfg).second)
    return err;
  if (auto err = validate(cfg.optimizer))
    return err;
  for (const auto& f : cfg.faults) {
    // A training job has no GPU actors: no GPU fault names one of them.
    size_t count = f.target == fault_target::worker   ? cfg.workers
                   : f.target == fault_target::shard  ? cfg.shards
                   : f.target == fault_target::loader ? cfg.loaders
                   : f.target == fault_target::gpu    ? 0
                                                      : 1;
    if (f.index >= count || f.step == 0 || f.step > cfg.steps)
      return bad_config("training: fault " + to_string(f) + " names no actor or step of the job");
  }
  return {};
}

std::string describe_progress(const training_progress& p) {
  char acc[16] = "-";
  if (p.accuracy >= 0)
    std::snprintf(acc, sizeof acc, "%.4f", p.accuracy);
  char buf[192];
  std::snprintf(buf, sizeof buf,
                "step %" PRIu64 "/%" PRIu64 " loss %.4g accuracy %s restarts %" PRIu64
                " lost %" PRIu64,
                p.step, p.steps, static_cast<double>(p.loss), acc, p.restarts, p.lost_steps);
  return buf;
}

std::string describe_final(const training_result& r) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "final: steps=%" PRIu64 " accuracy=%.4f params_digest=%016" PRIx64
                " restarts=%" PRIu64 " lost_steps=%" PRIu64,
                r.steps, r.accuracy, r.params_digest, r.restarts, r.lost_steps);
  return buf;
}

std::string describe_goodput(const training_result& r) {
  auto ms = [](std::chrono::nanoseconds d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f", std::chrono::duration<double, std::milli>(d).count());
    return std::string{buf};
  };
  char head[96];
  std::snprintf(head, sizeof head, "goodput: %.1f%% of %.2f s in committed steps; ",
                100.0 * r.goodput(), std::chrono::duration<double>(r.wall).count());
  std::string out = head;
  if (r.incidents.empty())
    return out + "no incidents; the rest went between steps";
  std::chrono::nanoseconds total{0};
  std::string each;
  for (size_t i = 0; i < r.incidents.size(); ++i) {
    total += r.incidents[i];
    if (i < 10)
      each += (i == 0 ? "" : ", ") + ms(r.incidents[i]);
  }
  if (r.incidents.size() > 10)
    each += ", ...";
  return out + std::to_string(r.incidents.size()) +
         (r.incidents.size() == 1 ? " incident cost " : " incidents cost ") + ms(total) + " ms (" +
         each + " ms); the rest went between steps";
}

uint64_t params_digest(const float* params, size_t n) {
  return XXH3_64bits(params, n * sizeof(float));
}

uint64_t fingerprint(const training_config& cfg) {
  XXH3_state_t* h = XXH3_createState();
  XXH3_64bits_reset(h);
  auto add = [h](const void* p, size_t n) { XXH3_64bits_update(h, p, n); };
  auto add_u64 = [&](uint64_t x) { add(&x, sizeof x); };
  auto name = cfg.net ? cfg.net->describe() : std::string{};
  add(name.data(), name.size());
  add_u64(cfg.net ? cfg.net->parameter_count() : 0);
  for (const auto* d : {cfg.train.get()}) {
    if (d == nullptr)
      continue;
    add(d->inputs.data(), d->inputs.size() * sizeof(float));
    add(d->labels.data(), d->labels.size() * sizeof(uint32_t));
  }
  // The counts of workers, shards and loaders are not part of the maths.
  for (uint64_t x :
       {uint64_t{cfg.batch}, uint64_t{cfg.micro_batches}, cfg.seed, uint64_t(cfg.optimizer.kind)})
    add_u64(x);
  for (double x : {cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.beta1,
                   cfg.optimizer.beta2, cfg.optimizer.epsilon, cfg.optimizer.weight_decay})
    add(&x, sizeof x);
  auto out = XXH3_64bits_digest(h);
  XXH3_freeState(h);
  return out;
}

// -- training_job ----------------------------------------------------------------------

training_job::training_job(std::shared_ptr<shared> s) : s_(std::move(s)) {}

void register_training_types(caf::actor_system_config& cfg) {
  register_error_category<data_errc>(cfg);
  cfg.add_message_type<loader_stats>("understudy::loader_stats");
  cfg.add_message_type<shard_stats>("understudy::shard_stats");
  cfg.add_message_type<served_batch>("understudy::served_batch");
  cfg.add_message_type<batch_ptr>("understudy::batch_ptr");
  cfg.add_message_type<slice_ptr>("understudy::slice_ptr");
  cfg.add_message_type<std::vector<caf::actor>>("std::vector<caf::actor>");
  cfg.add_message_type<std::vector<float>>("std::vector<float>");
}

caf::expected<training_job> training_job::create(training_config cfg, persistence p) {
  if (auto err = validate(cfg))
    return err;
  if (!p.store || !p.writer)
    return bad_config("training: no state store (open one with runtime::open_state)");
  // A participant may be up to two checkpoint steps past the committed one
  // (the step applied last and the one in flight): rolling back needs three.
  if (auto keep = p.store->config().retention.keep_last; keep < 3)
    return bad_config("training: the state store keeps the last " + std::to_string(keep) +
                      " versions per actor, a training job needs at least 3 (retention.keep_last)");
  return make(std::move(cfg), std::move(p));
}

caf::expected<training_job> training_job::create_for_workers(training_config cfg) {
  if (auto err = validate(cfg))
    return err;
  return make(std::move(cfg), persistence{});
}

std::vector<size_t> training_job::fired_faults() const {
  std::vector<size_t> out;
  for (size_t i = 0; i < s_->cfg.faults.size(); ++i)
    if (s_->fired[i].load())
      out.push_back(i);
  return out;
}

void training_job::on_fault(std::function<void(size_t)> fn) {
  s_->on_fire = std::move(fn);
}

void training_job::mark_fired(size_t i) {
  if (i < s_->cfg.faults.size())
    s_->fired[i] = true;
}

training_job training_job::make(training_config cfg, persistence p) {
  auto s = std::make_shared<shared>();
  s->cfg = std::move(cfg);
  s->p = std::move(p);
  s->fingerprint = fingerprint(s->cfg);
  const size_t n = s->cfg.net->parameter_count();
  for (size_t k = 0, first = 0; k < s->cfg.shards; ++k) {
    size_t count = n / s->cfg.shards + (k < n % s->cfg.shards ? 1 : 0);
    s->shard_first.push_back(first);
    s->shard_count.push_back(count);
    first += count;
  }
  s->fired = std::make_unique<std::atomic<bool>[]>(s->cfg.faults.size());
  for (size_t i = 0; i < s->cfg.faults.size(); ++i)
    s->fired[i] = false;
  return training_job{std::move(s)};
}

const training_config& training_job::config() const {
  return s_->cfg;
}

child_spec training_job::shard_spec(size_t k) const {
  return make_shard_spec(s_, k);
}

child_spec training_job::loader_spec(size_t l) const {
  return make_loader_spec(s_, l);
}

child_spec training_job::worker_spec(size_t w) const {
  return make_worker_spec(s_, w);
}

void training_job::on_straggler(std::function<void(size_t)> fn) {
  s_->straggler = std::move(fn);
}

void training_job::reshard_on_resume(bool enabled) {
  s_->reshard_locally = enabled;
}

void training_job::on_progress(std::function<void(const training_progress&)> fn) {
  s_->progress = std::move(fn);
}

void training_job::on_start(std::function<void(uint64_t)> fn) {
  s_->started = std::move(fn);
}

supervisor_spec training_job::spec(
    std::string name, std::shared_ptr<event_sink> events,
    std::function<child_spec(fault_target role, size_t index, child_spec local)> placer) const {
  auto place = [&placer](fault_target role, size_t index, child_spec local) {
    return placer ? placer(role, index, std::move(local)) : std::move(local);
  };
  auto role = [](std::string id, const role_policy& pol, std::vector<child_spec> children) {
    supervisor_spec sup;
    sup.name = std::move(id);
    sup.strategy = pol.strategy;
    sup.intensity = pol.intensity;
    sup.backoff = pol.backoff;
    sup.children = std::move(children);
    return supervisor_child(std::move(sup));
  };
  const auto& cfg = s_->cfg;
  std::vector<child_spec> shards, loaders, workers;
  for (size_t k = 0; k < cfg.shards; ++k)
    shards.push_back(place(fault_target::shard, k, shard_spec(k)));
  for (size_t l = 0; l < cfg.loaders; ++l)
    loaders.push_back(place(fault_target::loader, l, loader_spec(l)));
  for (size_t w = 0; w < cfg.workers; ++w)
    workers.push_back(place(fault_target::worker, w, worker_spec(w)));
  supervisor_spec job;
  job.name = std::move(name);
  job.strategy = restart_strategy::one_for_one;
  job.intensity = cfg.trainer_policy.intensity;
  job.backoff = cfg.trainer_policy.backoff;
  job.children.push_back(role("shards", cfg.shard_policy, std::move(shards)));
  job.children.push_back(role("loaders", cfg.loader_policy, std::move(loaders)));
  job.children.push_back(role("workers", cfg.worker_policy, std::move(workers)));
  job.children.push_back(make_trainer_spec(s_));
  auto s = s_;
  auto counter = std::make_shared<callback_sink>([s](const supervision_event& ev) {
    if (ev.kind == event_kind::child_restarted)
      ++s->restarts;
  });
  if (events)
    job.events = std::make_shared<fanout_sink>(
        std::vector<std::shared_ptr<event_sink>>{counter, std::move(events)});
  else
    job.events = counter;
  s_->events = job.events;
  return job;
}

void training_job::request_stop() {
  s_->stop_requested = true;
}

uint64_t training_job::committed_step() const {
  return s_->committed.load();
}

caf::expected<training_result> training_job::wait(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> guard{s_->mtx};
  if (!s_->cv.wait_for(guard, timeout, [this] { return s_->outcome.has_value(); }))
    return caf::make_error(caf::sec::request_timeout, "training did not finish within " +
                                                          std::to_string(timeout.count()) + " ms");
  return *s_->outcome;
}

} // namespace understudy::actors
