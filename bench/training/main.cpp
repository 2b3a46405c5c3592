// bench_training: what supervision and checkpoints cost a training job.
//
// 1. Steps/s of a 784-1024-1024-10 MLP on synthetic data (1 worker, 1 shard, 1 loader,
//    batch 32 in one micro-batch) with a checkpoint every step vs checkpoints off (only the last
//    step), and the same forward/backward + SGD as a plain loop without actors (the raw baseline),
//    alone and with a thread writing each step's parameters to a file (pwrite +
//    fdatasync): what the bare checkpoint I/O costs any program on this machine.
//    Rounds rotate the order of the four; medians over rounds.
// 2. Recovery per fault type: a job with --faults crashes of one type (worker, shard,
//    loader, trainer) at spaced steps; the time from each crash (child_exited event) to
//    the job's next committed step; median. Also how many actors were restarted per fault.
// 3. Hang detection on digits_mlp's shape and defaults (64-128-10, 2 workers, 2 shards,
//    1 loader, batch 64 in 8 micro-batches, default step deadline): one hang of each role per
//    round; the time from the job's last progress to the kill (the hang_detected event's `waited`);
//    median and largest over rounds, against the 1 s. No baseline: the job's own
//    median step time, which the deadline scales, is in the notes.

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "report.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/numerics/splitmix64.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/state/runtime.hpp"

namespace {

using namespace understudy;
using namespace understudy::actors;
using clock_type = std::chrono::steady_clock;

struct options {
  size_t steps = 100;
  size_t rounds = 5;
  size_t faults = 20;
  size_t hidden = 1024;
};

std::shared_ptr<dataset> synthetic(size_t n, size_t dim, uint64_t seed) {
  auto d = std::make_shared<dataset>();
  d->input_dim = dim;
  d->class_count = 10;
  splitmix64 rng{seed};
  d->inputs.resize(n * dim);
  for (auto& x : d->inputs)
    x = static_cast<float>(rng.uniform01());
  d->labels.resize(n);
  for (auto& y : d->labels)
    y = static_cast<uint32_t>(rng.below(10));
  return d;
}

std::string scratch(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("understudy-bench-training-" + name);
  std::filesystem::remove_all(dir);
  return dir.string();
}

/// What one run measured: steps/s between the first committed step and the
/// last, the crash and commit times, restarts and lost steps.
struct run_record {
  double steps_per_s = 0;
  std::vector<clock_type::time_point> crashes;
  std::vector<clock_type::time_point> commits;
  uint64_t restarts = 0;
  uint64_t lost_steps = 0;
  /// For each hang the trainer found: how long the job had not moved (ms).
  std::vector<double> hang_waits;
};

/// Runs `cfg` on a fresh state directory (removed afterwards).
run_record run_job(const training_config& cfg, const std::string& name) {
  run_record rec;
  std::mutex mtx;
  runtime_config rc;
  rc.log_events = false;
  auto dir = scratch(name);
  {
    runtime rt{rc};
    state_store_config sc;
    sc.directory = dir;
    auto p = rt.open_state(sc);
    if (!p) {
      std::fprintf(stderr, "bench_training: %s\n", rt.render(p.error()).c_str());
      std::exit(1);
    }
    auto job = training_job::create(cfg, *p);
    if (!job) {
      std::fprintf(stderr, "bench_training: %s\n", rt.render(job.error()).c_str());
      std::exit(1);
    }
    job->on_progress([&](const training_progress&) {
      std::lock_guard<std::mutex> guard{mtx};
      rec.commits.push_back(clock_type::now());
    });
    auto events = std::make_shared<callback_sink>([&](const supervision_event& ev) {
      if (ev.kind == event_kind::child_exited && ev.reason != "normal") {
        std::lock_guard<std::mutex> guard{mtx};
        rec.crashes.push_back(ev.time);
      }
      if (ev.kind == event_kind::hang_detected) {
        std::lock_guard<std::mutex> guard{mtx};
        rec.hang_waits.push_back(std::chrono::duration<double, std::milli>(ev.duration).count());
      }
    });
    auto tree = rt.start(job->spec("job", events));
    if (!tree) {
      std::fprintf(stderr, "bench_training: %s\n", rt.render(tree.error()).c_str());
      std::exit(1);
    }
    auto result = job->wait(std::chrono::minutes(30));
    rt.stop(*tree);
    if (!result) {
      std::fprintf(stderr, "bench_training: %s\n", rt.render(result.error()).c_str());
      std::exit(1);
    }
    rec.restarts = result->restarts;
    rec.lost_steps = result->lost_steps;
  }
  std::filesystem::remove_all(dir);
  if (rec.commits.size() >= 2) {
    double secs = std::chrono::duration<double>(rec.commits.back() - rec.commits.front()).count();
    rec.steps_per_s = static_cast<double>(rec.commits.size() - 1) / secs;
  }
  return rec;
}

/// Writes snapshots of the parameters on a thread of its own, as a plain
/// program would checkpoint: copy, then pwrite + fdatasync over one file while
/// the next step computes; at most one snapshot in flight.
class raw_checkpointer {
public:
  raw_checkpointer(const std::string& file, size_t n) : snapshot_(n) {
    fd_ = ::open(file.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd_ < 0) {
      std::perror("bench_training: raw checkpoint file");
      std::exit(1);
    }
    thread_ = std::thread([this] { run(); });
  }
  ~raw_checkpointer() {
    {
      std::unique_lock<std::mutex> guard{mtx_};
      cv_.wait(guard, [this] { return !busy_; });
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    ::close(fd_);
  }
  /// Waits for the previous snapshot to be durable, then hands over `params`.
  void write(const std::vector<float>& params) {
    std::unique_lock<std::mutex> guard{mtx_};
    cv_.wait(guard, [this] { return !busy_; });
    std::copy(params.begin(), params.end(), snapshot_.begin());
    busy_ = true;
    cv_.notify_all();
  }

private:
  void run() {
    std::unique_lock<std::mutex> guard{mtx_};
    for (;;) {
      cv_.wait(guard, [this] { return busy_ || stop_; });
      if (stop_)
        return;
      guard.unlock();
      auto bytes = snapshot_.size() * sizeof(float);
      auto* p = reinterpret_cast<const char*>(snapshot_.data());
      for (size_t done = 0; done < bytes;) {
        auto r = ::pwrite(fd_, p + done, bytes - done, static_cast<off_t>(done));
        if (r < 0 && errno != EINTR) {
          std::perror("bench_training: raw checkpoint write");
          std::exit(1);
        }
        done += r > 0 ? static_cast<size_t>(r) : 0;
      }
      ::fdatasync(fd_);
      guard.lock();
      busy_ = false;
      cv_.notify_all();
    }
  }
  std::vector<float> snapshot_;
  int fd_ = -1;
  std::mutex mtx_;
  std::condition_variable cv_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;
};

/// The same forward/backward and SGD update as one worker + one shard, no
/// actors; with `checkpoint_file`, a raw_checkpointer writes every step.
double raw_loop(const training_config& cfg, const std::string& checkpoint_file = {}) {
  const auto& net = *cfg.net;
  std::vector<float> params(net.parameter_count()), grad(net.parameter_count());
  net.init_parameters(params.data(), cfg.seed);
  optimizer opt{cfg.optimizer, params.size()};
  std::unique_ptr<raw_checkpointer> ckpt;
  if (!checkpoint_file.empty())
    ckpt = std::make_unique<raw_checkpointer>(checkpoint_file, params.size());
  const auto& d = *cfg.train;
  auto order = epoch_order(d.size(), cfg.seed, 0);
  std::vector<float> inputs(cfg.batch * d.input_dim);
  std::vector<uint32_t> labels(cfg.batch);
  clock_type::time_point start;
  for (size_t step = 0; step <= cfg.steps; ++step) {
    if (step == 1)
      start = clock_type::now(); // as the job: from the first step's end
    for (size_t i = 0; i < cfg.batch; ++i) {
      auto idx = order[(step * cfg.batch + i) % d.size()];
      std::copy_n(d.inputs.data() + size_t{idx} * d.input_dim, d.input_dim,
                  inputs.data() + i * d.input_dim);
      labels[i] = d.labels[idx];
    }
    batch_view view{inputs.data(), labels.data(), cfg.batch, d.input_dim};
    net.loss_and_gradient(params.data(), view, grad.data());
    opt.step(params.data(), grad.data());
    if (ckpt)
      ckpt->write(params);
  }
  auto secs = std::chrono::duration<double>(clock_type::now() - start).count();
  ckpt.reset();
  if (!checkpoint_file.empty())
    std::filesystem::remove(checkpoint_file);
  return static_cast<double>(cfg.steps) / secs;
}

} // namespace

int main(int argc, char** argv) {
  options opts;
  if (auto status = bench::parse_command_line(
          argc, argv,
          {
              bench::size_option("--steps", opts.steps),
              bench::size_option("--rounds", opts.rounds),
              bench::size_option("--faults", opts.faults),
              bench::size_option("--hidden", opts.hidden),
          },
          "usage: %s [--steps N] [--rounds N] [--faults N] [--hidden N]\n"
          "  --steps N   steps per overhead run (default %zu)\n"
          "  --rounds N  alternating rounds of the overhead runs (default %zu)\n"
          "  --faults N  crashes per fault type in the recovery runs (default %zu)\n"
          "  --hidden N  units of both hidden layers of the big model (default %zu)\n",
          argv[0], opts.steps, opts.rounds, opts.faults, opts.hidden))
    return *status;

  training_config big;
  big.net = std::make_shared<mlp>(std::vector<size_t>{784, opts.hidden, opts.hidden, 10});
  big.train = synthetic(4096, 784, 1);
  big.test = synthetic(256, 784, 2);
  big.workers = big.shards = big.loaders = 1;
  big.batch = 32;
  big.micro_batches = 1; // the raw loop's maths: one batch of 32
  big.steps = opts.steps;
  big.eval_every = 0;
  big.optimizer.lr = 0.01;

  std::vector<double> with_ckpt, without_ckpt, raw, raw_io;
  auto raw_file = scratch("raw") + ".bin";
  for (size_t r = 0; r < opts.rounds; ++r) {
    std::vector<std::function<void()>> sides{
        [&] {
          auto cfg = big;
          cfg.checkpoint_every = 1;
          with_ckpt.push_back(run_job(cfg, "ckpt").steps_per_s);
        },
        [&] {
          auto cfg = big;
          cfg.checkpoint_every = cfg.steps; // only the last step
          without_ckpt.push_back(run_job(cfg, "nockpt").steps_per_s);
        },
        [&] { raw.push_back(raw_loop(big)); },
        [&] { raw_io.push_back(raw_loop(big, raw_file)); },
    };
    bench::rotated(r, sides);
  }
  std::vector<bench::figure> figs;
  auto overhead = bench::make_figure("steps_per_s_checkpoint_every_step", "steps/s",
                                     bench::median(with_ckpt), bench::median(without_ckpt), 1);
  overhead.target = ">= 0.97x checkpoints off";
  overhead.met = overhead.ratio() >= 0.97;
  overhead.notes.push_back(big.net->describe() + ", batch 32, rounds: with " +
                           bench::spread(with_ckpt, 1) + ", off " + bench::spread(without_ckpt, 1));
  figs.push_back(overhead);
  // What the bare I/O of a checkpoint per step costs a plain loop on this
  // machine: the floor for any checkpointing runtime's overhead here.
  auto bare = bench::make_figure("steps_per_s_raw_loop_with_raw_checkpoint_io", "steps/s",
                                 bench::median(raw_io), bench::median(raw), 1);
  bare.notes.push_back(
      "plain loop + a thread writing each step's parameters (copy, pwrite, "
      "fdatasync; one in flight) vs the plain loop; rounds " +
      bench::spread(raw_io, 1));
  figs.push_back(bare);
  auto vs_raw = bench::make_figure("steps_per_s_actors_vs_raw_loop", "steps/s",
                                   bench::median(without_ckpt), bench::median(raw), 1);
  vs_raw.notes.push_back("1 worker, 1 shard, 1 loader vs a plain loop; raw rounds " +
                         bench::spread(raw, 1));
  figs.push_back(vs_raw);

  // Recovery per fault type on a mid-size model (steps of about a millisecond).
  training_config mid = big;
  mid.net = std::make_shared<mlp>(std::vector<size_t>{784, 256, 10});
  mid.workers = 2;
  mid.shards = 2;
  mid.loaders = 1;
  mid.batch = 64;
  mid.micro_batches = 2;
  mid.checkpoint_every = 1;
  const uint64_t spacing = 5;
  mid.steps = 10 + spacing * opts.faults;
  for (auto target :
       {fault_target::worker, fault_target::shard, fault_target::loader, fault_target::trainer}) {
    auto cfg = mid;
    cfg.faults.clear();
    for (size_t i = 0; i < opts.faults; ++i)
      cfg.faults.push_back(fault{target,
                                 i % (target == fault_target::worker  ? cfg.workers
                                      : target == fault_target::shard ? cfg.shards
                                                                      : 1),
                                 10 + spacing * i});
    cfg.trainer_policy.intensity = {static_cast<int>(opts.faults) + 5, std::chrono::seconds(60)};
    cfg.worker_policy.intensity = cfg.shard_policy.intensity = cfg.loader_policy.intensity =
        cfg.trainer_policy.intensity;
    auto rec = run_job(cfg, "recovery");
    std::vector<double> ms;
    for (auto crash : rec.crashes) {
      auto next = std::upper_bound(rec.commits.begin(), rec.commits.end(), crash);
      if (next != rec.commits.end())
        ms.push_back(std::chrono::duration<double, std::milli>(*next - crash).count());
    }
    bench::figure f;
    f.name = "recovery_" + to_string(target) + "_crash_to_commit";
    f.unit = "ms";
    f.value = bench::median(ms);
    f.has_baseline = false;
    f.decimals = 2;
    if (target == fault_target::worker) {
      f.target = "<= 25 ms, 1 restart per fault";
      f.met = f.value <= 25 && rec.restarts == opts.faults;
    }
    f.notes.push_back(std::to_string(ms.size()) + " crashes, p90 " +
                      bench::fixed(bench::percentile(ms, 0.9), 2) + " ms, restarts " +
                      std::to_string(rec.restarts) + ", lost steps " +
                      std::to_string(rec.lost_steps) + " (" + mid.net->describe() + ")");
    figs.push_back(f);
  }
  // Hang detection on digits_mlp's defaults.
  training_config digits;
  digits.net = std::make_shared<mlp>(std::vector<size_t>{64, 128, 10});
  digits.train = synthetic(1438, 64, 3);
  digits.test = synthetic(359, 64, 4);
  digits.workers = 2;
  digits.shards = 2;
  digits.loaders = 1;
  digits.batch = 64;
  digits.micro_batches = 8;
  digits.optimizer.lr = 0.1f;
  digits.steps = 400;
  auto hangs = parse_faults("hang:worker:1@100,hang:shard:0@200,hang:loader:0@300", digits.workers,
                            digits.shards, digits.loaders, digits.steps, 1);
  if (!hangs) {
    std::fprintf(stderr, "bench_training: %s\n", describe(hangs.error()).c_str());
    return 1;
  }
  digits.faults = *hangs;
  std::vector<double> waits;
  std::vector<double> step_ms;
  for (size_t round = 0; round < opts.rounds; ++round) {
    auto rec = run_job(digits, "hangs");
    waits.insert(waits.end(), rec.hang_waits.begin(), rec.hang_waits.end());
    for (size_t i = 1; i < rec.commits.size(); ++i)
      step_ms.push_back(
          std::chrono::duration<double, std::milli>(rec.commits[i] - rec.commits[i - 1]).count());
  }
  bench::figure hang;
  hang.name = "hang_detection_digits_defaults";
  hang.unit = "ms";
  hang.value = bench::median(waits);
  hang.has_baseline = false;
  hang.decimals = 0;
  hang.target = "<= 1000 ms (every hang)";
  double largest = waits.empty() ? 0 : *std::max_element(waits.begin(), waits.end());
  hang.met = waits.size() == 3 * opts.rounds && largest <= 1000;
  hang.notes.push_back(std::to_string(waits.size()) + " hangs (worker, shard, loader per round), " +
                       "largest " + bench::fixed(largest, 0) + " ms; median step " +
                       bench::fixed(bench::median(step_ms), 2) + " ms (" + digits.net->describe() +
                       ", floor " + std::to_string(digits.hang_floor.count()) + " ms)");
  figs.push_back(hang);
  bench::print_report("training", figs);
  return 0;
}
