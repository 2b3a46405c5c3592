// bench_gpu: what GPU actors cost on a CUDA device. Without one it says so in
// one line and exits 0.
//
// 1. Added latency of an operation (scale 1024 floats) submitted through a GPU
//    actor — request, enqueue, stream callback, reply — vs the same launch
//    directly on a backend's stream with its completion callback waking the
//    caller; median of alternating rounds. Target: <= 10 us added.
// 2. Restore of a 100 MiB state from LMDB to device memory: a GPU rank's
//    restore (the rank picks the version, its GPU actor streams the chunks
//    from LMDB through pinned blocks to the device) and the direct path (LMDB
//    chunks into pinned memory, one copy to the device) vs a pinned
//    cudaMemcpy of 100 MiB. Target: >= 0.8 of its bandwidth.
// 3. Training steps/s of gpu_mlp (cuda, one GPU actor) vs digits_mlp on the
//    CPU (one worker, shard and loader), same model, batch and steps; and the
//    GPU's utilisation meanwhile: NVML's, where libnvidia-ml loads, and the
//    busy fraction estimated from the device time of one training step.
//
//   bench_gpu [--rounds 2000] [--mib 100] [--steps 400] [--restores 5] [--cpu]
//
// --cpu runs the same measurements on the CPU backend, to check the bench on a
// machine without a device (its figures mean nothing for a GPU).

#include <dlfcn.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

#include "report.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/gpu/backend.hpp"
#include "understudy/gpu/device.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/gpu/gpu_actor.hpp"
#include "understudy/gpu/gpu_rank.hpp"
#include "understudy/state/state_store.hpp"
#include "understudy/state/state_writer.hpp"
#include "understudy/state/tensor_recycler.hpp"
#include "understudy/supervision/supervisor.hpp"

extern char** environ;

namespace {

using namespace understudy;
using namespace understudy::actors;
namespace ug = understudy::gpu;
using clock_type = std::chrono::steady_clock;

struct options {
  size_t rounds = 2000;
  size_t mib = 100;
  size_t steps = 400;
  size_t restores = 5;
  ug::backend_kind kind = ug::backend_kind::cuda;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_gpu: %s\n", what.c_str());
  std::exit(1);
}

double micros(clock_type::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

std::string scratch(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("understudy-bench-gpu-" + name);
  std::filesystem::remove_all(dir);
  return dir.string();
}

/// An actor system with the runtime's scheduler settings (idle threads poll
/// every 50 us for 0.5 ms, then sleep), or with threads that spin for long
/// before they sleep (`spinning`): lower latency, more CPU.
struct bench_system {
  static caf::actor_system_config& init(caf::actor_system_config& cfg, bool spinning) {
    cfg.set("logger.console-verbosity", caf::atom("quiet"));
    cfg.set("logger.file-verbosity", caf::atom("quiet"));
    cfg.set("work-stealing.moderate-sleep-duration", caf::timespan{std::chrono::microseconds(50)});
    cfg.set("work-stealing.moderate-poll-attempts", size_t{10});
    if (spinning)
      cfg.set("work-stealing.aggressive-poll-attempts", size_t{1000000});
    register_error_categories(cfg);
    ug::register_gpu_types(cfg);
    return cfg;
  }
  explicit bench_system(bool spinning = false) : sys(init(cfg, spinning)), self(sys) {}

  template <class T, class... Ts>
  T ask(const caf::actor& a, Ts&&... xs) {
    caf::expected<T> result{caf::sec::request_timeout};
    self->request(a, std::chrono::seconds(120), std::forward<Ts>(xs)...)
        .receive([&](T& r) { result = std::move(r); },
                 [&](caf::error& err) { result = std::move(err); });
    if (!result)
      die(sys.render(result.error()));
    return std::move(*result);
  }

  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;
};

std::unique_ptr<ug::backend> backend_or_die(ug::backend_kind kind, int device) {
  auto be = ug::make_backend(kind, device);
  if (!be)
    die(describe(be.error()));
  return std::move(*be);
}

// -- 1. latency -----------------------------------------------------------------------

bench::figure op_latency(bench_system& bs, int device, const options& opt, bool spinning) {
  constexpr size_t n = 1024;
  // Direct: the launch on a backend's stream, its callback waking this thread.
  auto be = backend_or_die(opt.kind, device);
  auto buf = be->allocate(n * sizeof(float));
  if (!buf)
    die(describe(buf.error()));
  auto* x = static_cast<float*>(*buf);
  if (auto err = be->fill(x, n, 1.0f))
    die(describe(err));
  std::mutex mtx;
  std::condition_variable cv;
  bool done = false;
  auto direct = [&] {
    auto t0 = clock_type::now();
    if (auto err = be->scale(n, 1.0f, x))
      die(describe(err));
    {
      std::lock_guard<std::mutex> guard{mtx};
      done = false;
    }
    auto err = be->when_done([&](caf::error) {
      std::lock_guard<std::mutex> guard{mtx};
      done = true;
      cv.notify_one();
    });
    if (err)
      die(describe(err));
    std::unique_lock<std::mutex> guard{mtx};
    cv.wait(guard, [&] { return done; });
    return micros(clock_type::now() - t0);
  };
  // Through a GPU actor: one batch of the same op, request to reply.
  auto actor = ug::spawn_gpu_actor(bs.sys, {opt.kind, device});
  if (!actor)
    die(describe(actor.error()));
  ug::op_batch setup;
  setup.allocate(1, n);
  setup.fill(ug::whole(1, n), 1.0f);
  bs.ask<ug::batch_result>(*actor, ug::gpu_run_atom::value, setup);
  ug::op_batch one;
  one.scale(1.0f, ug::whole(1, n));
  auto through = [&] {
    auto t0 = clock_type::now();
    bs.ask<ug::batch_result>(*actor, ug::gpu_run_atom::value, one);
    return micros(clock_type::now() - t0);
  };
  for (size_t i = 0; i < 200; ++i) {
    direct();
    through();
  }
  std::vector<double> d, a;
  for (size_t r = 0; r < opt.rounds; ++r)
    bench::in_order(
        r, [&] { d.push_back(direct()); }, [&] { a.push_back(through()); });
  bs.self->send_exit(*actor, caf::exit_reason::user_shutdown);
  be->release(x);
  be->synchronize();
  auto f = bench::make_figure(
      spinning ? "op_latency_through_actor_spinning_scheduler" : "op_latency_through_actor", "us",
      bench::median(a), bench::median(d), 1);
  const double added = f.value - f.baseline;
  f.target = "<= 10 us added";
  f.met = added <= 10.0;
  f.notes.push_back("scale of " + std::to_string(n) + " floats; added " + bench::fixed(added, 1) +
                    " us (median); p90 " + bench::fixed(bench::percentile(a, 0.9), 1) +
                    " us through the actor, " + bench::fixed(bench::percentile(d, 0.9), 1) +
                    " us direct; " + std::to_string(opt.rounds) + " rounds each" +
                    (spinning ? "; scheduler threads spin 10^6 polls before they sleep"
                              : "; the runtime's scheduler settings"));
  return f;
}

// -- 2. restore -----------------------------------------------------------------------

std::vector<bench::figure> restore(bench_system& bs, int device, const options& opt) {
  const size_t count = opt.mib * (size_t{1} << 20) / sizeof(float);
  const size_t bytes = count * sizeof(float);
  const double gb = static_cast<double>(bytes) / 1e9;
  auto dir = scratch("restore");
  state_store_config scfg;
  scfg.directory = dir;
  scfg.mode = durability::none;
  auto store = state_store::open(scfg);
  if (!store)
    die(describe(store.error()));
  persistence p;
  p.store = *store;
  p.writer = spawn_state_writer(bs.sys, *store);
  p.recycler = std::make_shared<tensor_recycler>();
  ug::gpu_rank_options ro;
  ro.p = p;
  ro.job = "bench_gpu";
  ro.fresh = [count] {
    ug::rank_state st;
    std::vector<float> values(count);
    for (size_t i = 0; i < count; ++i)
      values[i] = static_cast<float>(i % 1000) * 0.5f;
    st.tensors.push_back({"w", 1, std::make_shared<std::vector<float>>(std::move(values))});
    return st;
  };
  ro.start_gpu = [device, kind = opt.kind](child_context& ctx) {
    return ug::spawn_gpu_actor(ctx.system, ug::gpu_actor_options{kind, device});
  };
  supervisor_spec spec;
  spec.name = "bench";
  spec.children = {ug::gpu_rank_child("rank-0", ro)};
  auto sup = spawn_supervisor(bs.sys, spec);
  if (!sup)
    die(describe(sup.error()));
  bs.ask<caf::ok_atom>(*sup, await_ready_atom::value);
  auto rank = bs.ask<caf::actor>(*sup, resolve_atom::value, std::string{"rank-0"});
  bs.ask<uint64_t>(rank, ug::rank_checkpoint_atom::value, uint64_t{1});
  // Direct: LMDB into pinned memory, one copy to the device; and the baseline.
  auto be = backend_or_die(opt.kind, device);
  auto pinned = be->allocate_host(bytes);
  auto dev = be->allocate(bytes);
  if (!pinned || !dev)
    die("cannot allocate " + std::to_string(opt.mib) + " MiB on the device or pinned host memory");
  std::memset(*pinned, 0, bytes);
  auto upload = [&] {
    if (auto err = be->upload(*dev, *pinned, bytes))
      die(describe(err));
    if (auto err = be->synchronize())
      die(describe(err));
  };
  upload();
  auto direct = [&] {
    auto err = (*store)->read("/bench/rank-0", 1, [&](const record_view& rec) -> caf::error {
      auto idx = rec.find_tensor("1:w");
      if (!idx)
        return make_error(state_errc::not_found, "tensor 1:w");
      return rec.copy_tensor(*idx, *pinned, bytes);
    });
    if (err)
      die(describe(err));
    upload();
  };
  std::vector<double> through_actor, direct_s, memcpy_s;
  for (size_t r = 0; r < opt.restores; ++r) {
    bench::rotated(
        r, {
               [&] {
                 auto t0 = clock_type::now();
                 bs.ask<uint64_t>(rank, ug::rank_restore_atom::value, uint64_t{1});
                 through_actor.push_back(
                     std::chrono::duration<double>(clock_type::now() - t0).count());
               },
               [&] {
                 auto t0 = clock_type::now();
                 direct();
                 direct_s.push_back(std::chrono::duration<double>(clock_type::now() - t0).count());
               },
               [&] {
                 auto t0 = clock_type::now();
                 upload();
                 memcpy_s.push_back(std::chrono::duration<double>(clock_type::now() - t0).count());
               },
           });
  }
  be->release(*dev);
  be->synchronize();
  be->release_host(*pinned);
  bs.self->send_exit(*sup, caf::exit_reason::user_shutdown);
  const double base = gb / bench::median(memcpy_s);
  auto rank_fig = bench::make_figure("restore_" + std::to_string(opt.mib) + "mib_gpu_rank", "GB/s",
                                     gb / bench::median(through_actor), base, 2);
  rank_fig.target = ">= 0.8x pinned cudaMemcpy";
  rank_fig.met = rank_fig.ratio() >= 0.8;
  rank_fig.notes.push_back(
      "the rank picks the version, its GPU actor streams it: LMDB chunks copied and "
      "verified into 4-8 pinned blocks at once (one per core), each sent to the device "
      "as it fills; median of " +
      std::to_string(opt.restores));
  auto direct_fig = bench::make_figure("restore_" + std::to_string(opt.mib) + "mib_direct", "GB/s",
                                       gb / bench::median(direct_s), base, 2);
  direct_fig.target = ">= 0.8x pinned cudaMemcpy";
  direct_fig.met = direct_fig.ratio() >= 0.8;
  direct_fig.notes.push_back("LMDB chunks verified into pinned memory, one cudaMemcpyAsync");
  std::filesystem::remove_all(dir);
  return {rank_fig, direct_fig};
}

// -- 3. training ----------------------------------------------------------------------

#if defined(UNDERSTUDY_GPU_MLP_PATH) && defined(UNDERSTUDY_DIGITS_MLP_PATH)

/// NVML, loaded at run time (libnvidia-ml ships with the driver).
class nvml {
public:
  nvml() {
    lib_ = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (lib_ == nullptr)
      return;
    init_ = reinterpret_cast<int (*)()>(dlsym(lib_, "nvmlInit_v2"));
    by_bus_ = reinterpret_cast<int (*)(const char*, void**)>(
        dlsym(lib_, "nvmlDeviceGetHandleByPciBusId_v2"));
    by_index_ =
        reinterpret_cast<int (*)(unsigned, void**)>(dlsym(lib_, "nvmlDeviceGetHandleByIndex_v2"));
    util_ =
        reinterpret_cast<int (*)(void*, unsigned*)>(dlsym(lib_, "nvmlDeviceGetUtilizationRates"));
    if (init_ == nullptr || by_bus_ == nullptr || util_ == nullptr || init_() != 0)
      util_ = nullptr;
  }

  /// The device with PCI bus id `bus` (else NVML's device `index`), or null.
  void* device(const std::string& bus, int index) const {
    void* dev = nullptr;
    if (util_ == nullptr)
      return nullptr;
    if (by_bus_(bus.c_str(), &dev) == 0)
      return dev;
    if (by_index_ != nullptr && index >= 0 && by_index_(static_cast<unsigned>(index), &dev) == 0)
      return dev;
    return nullptr;
  }

  /// The percentage of the last sample period in which a kernel ran; -1 on failure.
  int utilisation(void* dev) const {
    unsigned rates[2] = {0, 0}; // nvmlUtilization_t: gpu, memory
    if (util_ == nullptr || dev == nullptr || util_(dev, rates) != 0)
      return -1;
    return static_cast<int>(rates[0]);
  }

private:
  void* lib_ = nullptr;
  int (*init_)() = nullptr;
  int (*by_bus_)(const char*, void**) = nullptr;
  int (*by_index_)(unsigned, void**) = nullptr;
  int (*util_)(void*, unsigned*) = nullptr;
};

/// Runs `argv` with its output captured; returns the output (empty on failure).
std::string run_program(std::vector<std::string> argv, const std::function<bool()>& during = {}) {
  char path[] = "/tmp/understudy_bench_gpu_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0)
    return {};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fd, 1);
  posix_spawn_file_actions_adddup2(&actions, fd, 2);
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fd);
  if (rc == 0) {
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      // Sample while the program runs (NVML's utilisation), at most every 20 ms.
      if (!during || !during())
        waitpid(pid, &status, 0);
      else
        continue;
      break;
    }
  }
  std::ifstream in{path};
  std::stringstream text;
  text << in.rdbuf();
  unlink(path);
  return text.str();
}

/// `name` next to this program (as in a bundle for a GPU host), else `built`
/// (where the build put it).
std::string program_path(const std::string& name, const std::string& built) {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    auto beside = self.parent_path() / name;
    if (access(beside.c_str(), X_OK) == 0)
      return beside.string();
  }
  return built;
}

/// The rate of the last progress line ("... N steps/s"), or 0.
double steps_per_s(const std::string& output) {
  std::regex re{"([0-9.]+) steps/s"};
  double last = 0;
  for (auto it = std::sregex_iterator(output.begin(), output.end(), re);
       it != std::sregex_iterator(); ++it)
    last = std::stod((*it)[1]);
  return last;
}

/// Device time of one gpu_mlp step's operations (64-128-10, batch 32, SGD),
/// enqueued back to back on a backend: what the GPU is busy with per step.
double step_device_seconds(ug::backend_kind kind, int device) {
  auto be = backend_or_die(kind, device);
  mlp net{{64, 128, 10}};
  const size_t batch = 32, n = net.parameter_count();
  auto alloc = [&](size_t count) {
    auto p = be->allocate(count * sizeof(float));
    if (!p)
      die(describe(p.error()));
    return static_cast<float*>(*p);
  };
  float* params = alloc(n);
  float* grad = alloc(n);
  float* in = alloc(batch * 64);
  float* h = alloc(batch * 128);
  float* z = alloc(batch * 10);
  float* dh = alloc(batch * 128);
  float* loss = alloc(batch);
  auto* labels = reinterpret_cast<uint32_t*>(alloc(batch));
  be->fill(params, n, 0.01f);
  be->fill(in, batch * 64, 0.5f);
  be->fill(reinterpret_cast<float*>(labels), batch, 0.0f); // label 0 (bits of 0.0f)
  const auto& l0 = net.layer(0);
  const auto& l1 = net.layer(1);
  auto step = [&] {
    be->gemm(false, false, batch, 128, 64, 1.0f, in, 64, params + l0.weights, 128, 0.0f, h, 128);
    be->add_bias(h, params + l0.biases, batch, 128);
    be->relu(h, h, batch * 128);
    be->gemm(false, false, batch, 10, 128, 1.0f, h, 128, params + l1.weights, 10, 0.0f, z, 10);
    be->add_bias(z, params + l1.biases, batch, 10);
    be->softmax_xent(z, labels, batch, 10, 1.0f / batch, loss, z);
    be->gemm(true, false, 128, 10, batch, 1.0f, h, 128, z, 10, 0.0f, grad + l1.weights, 10);
    be->bias_grad(z, batch, 10, grad + l1.biases);
    be->gemm(false, true, batch, 128, 10, 1.0f, z, 10, params + l1.weights, 10, 0.0f, dh, 128);
    be->relu_grad(h, dh, dh, batch * 128);
    be->gemm(true, false, 64, 128, batch, 1.0f, in, 64, dh, 128, 0.0f, grad + l0.weights, 128);
    be->bias_grad(dh, batch, 128, grad + l0.biases);
    be->scale(n, 0.5f, grad);
    be->sgd_step(params, grad, n, ug::sgd_params{0.001f, 0.0f});
  };
  for (int i = 0; i < 20; ++i)
    step();
  be->synchronize();
  constexpr int k = 500;
  auto t0 = clock_type::now();
  for (int i = 0; i < k; ++i)
    step();
  if (auto err = be->synchronize())
    die(describe(err));
  return std::chrono::duration<double>(clock_type::now() - t0).count() / k;
}

#endif

std::vector<bench::figure> training(const ug::device_info& dev, const options& opt) {
  std::vector<bench::figure> figs;
#if defined(UNDERSTUDY_GPU_MLP_PATH) && defined(UNDERSTUDY_DIGITS_MLP_PATH)
  const auto steps = std::to_string(opt.steps);
  auto gdir = scratch("gpu_mlp");
  auto ddir = scratch("digits_mlp");
  nvml ml;
  void* handle = ml.device(dev.pci_bus_id, dev.ordinal);
  std::vector<double> samples;
  auto sample = [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20)); // the sampling period
    int u = ml.utilisation(handle);
    if (u >= 0)
      samples.push_back(u);
    return true;
  };
  auto gout = run_program(
      {program_path("gpu_mlp", UNDERSTUDY_GPU_MLP_PATH), "--backend", ug::to_string(opt.kind),
       "--workers", "1", "--steps", steps, "--eval-every", "0", "--state-dir", gdir},
      handle != nullptr ? std::function<bool()>{sample} : nullptr);
  auto dout = run_program({program_path("digits_mlp", UNDERSTUDY_DIGITS_MLP_PATH), "--workers", "1",
                           "--shards", "1", "--loaders", "1", "--steps", steps, "--eval-every", "0",
                           "--state-dir", ddir});
  std::filesystem::remove_all(gdir);
  std::filesystem::remove_all(ddir);
  const double g = steps_per_s(gout);
  const double d = steps_per_s(dout);
  if (g <= 0 || d <= 0) {
    std::fprintf(stderr, "bench_gpu: a training run failed:\n%s\n%s\n", gout.c_str(), dout.c_str());
    std::exit(1);
  }
  auto f = bench::make_figure("train_steps_per_s_gpu_mlp_vs_digits_mlp", "steps/s", g, d, 0);
  f.notes.push_back(
      "mlp 64-128-10, batch 32, 1 GPU actor (own process, checkpoint every step) "
      "vs 1 worker, 1 shard, 1 loader on the CPU; " +
      steps + " steps");
  figs.push_back(f);
  const double device_s = step_device_seconds(opt.kind, dev.ordinal);
  bench::figure busy;
  busy.name = "gpu_busy_fraction_per_step";
  busy.unit = "%";
  busy.value = std::min(100.0, 100.0 * device_s * g);
  busy.has_baseline = false;
  busy.notes.push_back("device time of one step's kernels " + bench::fixed(device_s * 1e6, 1) +
                       " us x gpu_mlp's steps/s (an estimate)");
  figs.push_back(busy);
  if (!samples.empty()) {
    bench::figure util;
    util.name = "gpu_utilisation_nvml";
    util.unit = "%";
    util.value = bench::median(samples);
    util.has_baseline = false;
    util.notes.push_back("NVML utilisation.gpu sampled every 20 ms during gpu_mlp, median of " +
                         std::to_string(samples.size()));
    figs.push_back(util);
  } else {
    figs.back().notes.push_back("NVML not available (libnvidia-ml.so.1): no sampled utilisation");
  }
#else
  static_cast<void>(dev);
  static_cast<void>(opt);
  std::printf("bench_gpu: examples not built: no training figures\n");
#endif
  return figs;
}

} // namespace

int main(int argc, char** argv) {
  options opt;
  if (auto status = bench::parse_command_line(
          argc, argv,
          {bench::size_option("--rounds", opt.rounds), bench::size_option("--mib", opt.mib),
           bench::size_option("--steps", opt.steps), bench::size_option("--restores", opt.restores),
           bench::flag_option("--cpu", [&opt] { opt.kind = ug::backend_kind::cpu; })},
          "usage: bench_gpu [--rounds %zu] [--mib %zu] [--steps %zu] [--restores %zu] [--cpu]\n",
          opt.rounds, opt.mib, opt.steps, opt.restores))
    return *status;
  auto devices = ug::discover_devices();
  if (opt.kind == ug::backend_kind::cpu) {
    ug::device_info cpu;
    cpu.ordinal = -1;
    cpu.name = "the CPU backend (--cpu: a check of the bench, not a GPU figure)";
    devices = {cpu};
  } else if (devices.empty()) {
    std::printf("bench_gpu: no CUDA device (%s): nothing to measure\n",
                ug::cuda_compiled() ? "built with CUDA" : "built without CUDA");
    return 0;
  }
  const auto& dev = devices.front();
  std::printf("bench_gpu: %s\n",
              opt.kind == ug::backend_kind::cpu ? dev.name.c_str() : ug::to_string(dev).c_str());
  std::fflush(stdout);
  std::vector<bench::figure> figs;
  {
    bench_system bs;
    figs.push_back(op_latency(bs, dev.ordinal, opt, false));
    for (auto& f : restore(bs, dev.ordinal, opt))
      figs.push_back(std::move(f));
  }
  {
    bench_system bs{true};
    figs.push_back(op_latency(bs, dev.ordinal, opt, true));
  }
  for (auto& f : training(dev, opt))
    figs.push_back(std::move(f));
  bench::print_report("gpu", figs);
  return 0;
}
