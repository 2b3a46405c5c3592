// Benchmark: serving, next to raw baselines measured in the same run.
//
//   router_p50, router_p99    one prediction of the digits MLP (64-128-10, a memory_source
//                             with initialised parameters, 1 replica) through the router,
//                             one request at a time from a scoped_actor. Baseline: the same
//                             request sent straight to the replica actor (resolved through
//                             the tree's replicas supervisor).
//   actor_path_p50            that replica actor's p50 against a plain function call
//                             (mlp::predict on the same input, same thread): what the actor
//                             path costs at all.
//   replica_vs_caf_echo_p50   the replica actor against raw CAF: an actor that answers the
//                             same message with a ready prediction (no queue, no model).
//   throughput_N_replica(s)   N = 1, 2, 4 replicas, no standbys: closed loop through the
//                             router, 32 requests in flight from 4 client actors; requests
//                             per second. Baseline: mlp::predict of one input in a loop on
//                             one thread.
//   failover_*                understudy (one digits_serving, a replica killed) and nginx
//                             (in front of two digits_serving processes, one SIGKILLed),
//                             both under serving_loadgen at a fixed rate: failed requests,
//                             and the p99 and max of a 1-s window with the kill against a
//                             steady 1-s window of the same deployment (failover.cpp).
//
// The sides of each in-process figure run in alternating order round after round (after a
// warm-up round), so that drift on a noisy machine hits them alike; every figure is a median.
//
// Usage: bench_serving [--quick] [--only latency|throughput|failover] [--rate N]

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "report.hpp"
#include "serving_bench.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/serving/errors.hpp"
#include "understudy/serving/model_source.hpp"
#include "understudy/serving/protocol.hpp"
#include "understudy/serving/service.hpp"
#include "understudy/state/runtime.hpp"

namespace serving_bench {
namespace {

using bench::figure;
using bench::fixed;
using bench::make_figure;
using bench::median;
using bench::percentile;
using bench::rotated;
using bench::spread;
namespace sv = understudy::serving;

constexpr auto request_timeout = std::chrono::seconds(10);
/// Requests in flight in the throughput figures, and the client actors keeping them there.
constexpr size_t in_flight = 32;
constexpr size_t clients = 4;
/// Replica counts of the throughput figures; each has a serving tree of its own.
const std::vector<size_t> replica_counts{1, 2, 4};

double us_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::micro>(clock_type::now() - t0).count();
}

/// Keeps the compiler from dropping a result it could prove unused.
void do_not_optimize(const void* p) {
  asm volatile("" : : "g"(p) : "memory");
}

/// One input of 64 values in [0, 1), like a scaled digit.
std::vector<float> make_input(size_t dim) {
  std::vector<float> out(dim);
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (auto& v : out) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = static_cast<float>(x >> 40) * 0x1p-24f;
  }
  return out;
}

/// The model, its parameters and the served trees ("d1", "d2", "d4": 1, 2 and 4 replicas).
struct served {
  std::shared_ptr<understudy::actors::mlp> net =
      std::make_shared<understudy::actors::mlp>(std::vector<size_t>{64, 128, 10});
  std::vector<float> params;
  std::shared_ptr<sv::memory_source> source = std::make_shared<sv::memory_source>(net);
  std::vector<std::shared_ptr<sv::router_handle>> routers;
  understudy::supervisor_ref tree;
  sv::predict_request request;
  uint32_t expected_label = 0;

  explicit served(understudy::runtime& rt) {
    params.resize(net->parameter_count());
    net->init_parameters(params.data(), 1);
    source->add(1, params);
    auto in = make_input(net->input_dim());
    net->predict(params.data(), in.data(), 1, &expected_label);
    request.in.count = 1;
    request.in.values = std::make_shared<std::vector<float>>(std::move(in));
    understudy::supervisor_spec spec;
    spec.name = "serve";
    for (auto n : replica_counts) {
      sv::serve_config cfg;
      cfg.model = "d" + std::to_string(n);
      cfg.replicas = n;
      cfg.standbys = 0;
      cfg.watch_interval = std::chrono::milliseconds(0); // one version, no polling
      if (auto err = sv::validate(cfg))
        throw bench_failure("serve config: " + rt.render(err));
      routers.push_back(std::make_shared<sv::router_handle>());
      spec.children.push_back(sv::serving_tree(cfg, source, routers.back(), nullptr));
    }
    auto started = rt.start(std::move(spec));
    if (!started)
      throw bench_failure("start serving trees: " + rt.render(started.error()));
    tree = *started;
    caf::scoped_actor self{rt.system()};
    for (size_t i = 0; i < replica_counts.size(); ++i)
      wait_ready(rt, self, i);
  }

  /// Waits until every replica of tree `i` is in rotation with the version.
  void wait_ready(understudy::runtime& rt, caf::scoped_actor& self, size_t i) {
    auto deadline = clock_type::now() + std::chrono::seconds(20);
    std::string last = "no router";
    while (clock_type::now() < deadline) {
      if (auto router = routers[i]->get()) {
        self->request(router, request_timeout, sv::status_atom::value)
            .receive(
                [&](sv::serving_status& st) {
                  last = std::to_string(sv::active_replicas(st)) + " active, target " +
                         std::to_string(st.target);
                  if (st.target == 1 && sv::active_replicas(st) == replica_counts[i])
                    last.clear();
                },
                [&](caf::error& e) { last = rt.render(e); });
        if (last.empty())
          return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    throw bench_failure("tree d" + std::to_string(replica_counts[i]) + " not ready: " + last);
  }
};

// -- figure 1: latency -------------------------------------------------------------------

/// Sends `n` requests one at a time with `send`, appending each latency (us) to `out`.
template <class Send>
void timed_requests(size_t n, std::vector<double>* out, Send send, const served& s,
                    understudy::runtime& rt) {
  for (size_t k = 0; k < n; ++k) {
    caf::error err;
    uint32_t label = UINT32_MAX;
    auto t0 = clock_type::now();
    send().receive([&](sv::prediction& p) { label = p.labels.empty() ? UINT32_MAX : p.labels[0]; },
                   [&](caf::error& e) { err = std::move(e); });
    auto dt = us_since(t0);
    if (err)
      throw bench_failure("predict: " + rt.render(err));
    if (label != s.expected_label)
      throw bench_failure("predict answered label " + std::to_string(label) + ", expected " +
                          std::to_string(s.expected_label));
    if (out != nullptr)
      out->push_back(dt);
  }
}

void bench_latency(understudy::runtime& rt, served& s, const options& opts,
                   std::vector<figure>& figs) {
  caf::scoped_actor self{rt.system()};
  auto router = s.routers[0]->get();
  auto model = s.tree.nested("d1");
  auto reps = model ? model->nested("replicas") : model;
  if (!reps)
    throw bench_failure("replicas supervisor of d1: " + rt.render(reps.error()));
  auto replica = reps->resolve("replica-0");
  if (!replica)
    throw bench_failure("replica-0 of d1: " + rt.render(replica.error()));
  const auto& req = s.request;
  const auto& in = *req.in.values;
  // Raw CAF: an actor answering the replica's message with a ready prediction, no
  // queue and no model; what any request/response through CAF costs here.
  auto label = s.expected_label;
  auto echo = rt.system().spawn([label](caf::event_based_actor*) -> caf::behavior {
    return {[label](sv::predict_atom, const sv::instances&, bool) {
      sv::prediction p;
      p.labels = {label};
      p.version = 1;
      p.replica = "echo";
      return p;
    }};
  });
  std::vector<double> via_router, direct, raw, call;
  auto to_router = [&] {
    return self->request(router, request_timeout, sv::predict_atom::value, req);
  };
  auto to_replica = [&] {
    return self->request(*replica, request_timeout, sv::predict_atom::value, req.in, false);
  };
  auto to_echo = [&] {
    return self->request(echo, request_timeout, sv::predict_atom::value, req.in, false);
  };
  for (size_t r = 0; r < opts.latency_rounds + 1; ++r) {
    bool record = r > 0;
    rotated(
        r,
        {
            [&] {
              timed_requests(opts.per_round, record ? &via_router : nullptr, to_router, s, rt);
            },
            [&] { timed_requests(opts.per_round, record ? &direct : nullptr, to_replica, s, rt); },
            [&] { timed_requests(opts.per_round, record ? &raw : nullptr, to_echo, s, rt); },
            [&] {
              for (size_t k = 0; k < opts.per_round; ++k) {
                uint32_t label = 0;
                auto t0 = clock_type::now();
                s.net->predict(s.params.data(), in.data(), 1, &label);
                do_not_optimize(&label);
                auto dt = us_since(t0);
                if (record)
                  call.push_back(dt);
              }
            },
        });
  }
  auto n = std::to_string(via_router.size());
  auto p50 = make_figure("router_p50", "us", percentile(via_router, 0.5), percentile(direct, 0.5));
  p50.notes.push_back(
      n + " requests per side, one at a time from a scoped_actor, in " +
      std::to_string(opts.latency_rounds) + " rounds of " + std::to_string(opts.per_round) +
      " (sides rotated); baseline: (predict_atom, instances) straight to replica-0, resolved "
      "through the replicas supervisor; 1 replica, no standby, CAF's 2 scheduler threads");
  figs.push_back(p50);
  auto p99 =
      make_figure("router_p99", "us", percentile(via_router, 0.99), percentile(direct, 0.99));
  p99.notes.push_back("max: router " + fixed(percentile(via_router, 1.0), 1) + " us, direct " +
                      fixed(percentile(direct, 1.0), 1) + " us");
  figs.push_back(p99);
  auto actor =
      make_figure("actor_path_p50", "us", percentile(direct, 0.5), percentile(call, 0.5), 2);
  actor.notes.push_back(
      "replica actor (request + blocking receive) vs mlp::predict of the same "
      "input called on the bench thread: p99 " +
      fixed(percentile(direct, 0.99), 2) + " vs " + fixed(percentile(call, 0.99), 2) + " us");
  figs.push_back(actor);
  auto floor = make_figure("replica_vs_caf_echo_p50", "us", percentile(direct, 0.5),
                           percentile(raw, 0.5), 2);
  floor.notes.push_back(
      "the replica actor vs raw CAF: an event-based actor answering the same message with a "
      "ready prediction (no queue, no model), from the same scoped_actor: p99 " +
      fixed(percentile(direct, 0.99), 2) + " vs " + fixed(percentile(raw, 0.99), 2) + " us");
  figs.push_back(floor);
  caf::anon_send_exit(echo, caf::exit_reason::user_shutdown);
}

// -- figure 2: throughput ----------------------------------------------------------------

/// Counts shared by the client actors of one measurement.
struct load_counts {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ok{0};
  std::atomic<uint64_t> overloaded{0};
  std::atomic<uint64_t> failed{0};
  std::atomic<size_t> finished{0};
};

using never_atom = caf::atom_constant<caf::atom("b_never")>;

/// A client keeping `depth` requests in flight at the router until told to stop.
struct client_actor {
  caf::event_based_actor* self = nullptr;
  caf::actor router;
  sv::predict_request req;
  std::shared_ptr<load_counts> counts;
  size_t outstanding = 0;

  void send_one() {
    ++outstanding;
    self->request(router, request_timeout, sv::predict_atom::value, req)
        .then(
            [this](sv::prediction&) {
              counts->ok.fetch_add(1, std::memory_order_relaxed);
              done();
            },
            [this](caf::error& err) {
              if (understudy::is(err, sv::serving_errc::overloaded))
                counts->overloaded.fetch_add(1, std::memory_order_relaxed);
              else
                counts->failed.fetch_add(1, std::memory_order_relaxed);
              done();
            });
  }

  void done() {
    --outstanding;
    if (!counts->stop.load(std::memory_order_relaxed))
      send_one();
    else if (outstanding == 0) {
      counts->finished.fetch_add(1);
      self->quit();
    }
  }
};

struct load_result {
  double per_s = 0;
  uint64_t overloaded = 0;
  uint64_t failed = 0;
};

/// Closed loop through `router` for `seconds` (after a short warm-up): answers per second.
load_result closed_loop(caf::actor_system& sys, const caf::actor& router,
                        const sv::predict_request& req, double seconds) {
  auto counts = std::make_shared<load_counts>();
  for (size_t c = 0; c < clients; ++c) {
    sys.spawn([router, req, counts](caf::event_based_actor* self) -> caf::behavior {
      auto a = std::make_shared<client_actor>();
      a->self = self;
      a->router = router;
      a->req = req;
      a->counts = counts;
      for (size_t k = 0; k < in_flight / clients; ++k)
        a->send_one();
      return {[a](never_atom) {}};
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto c0 = counts->ok.load();
  auto t0 = clock_type::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  auto c1 = counts->ok.load();
  auto t1 = clock_type::now();
  counts->stop = true;
  auto deadline = clock_type::now() + std::chrono::seconds(30);
  while (counts->finished.load() < clients) {
    if (clock_type::now() > deadline)
      throw bench_failure("client actors did not finish");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  load_result out;
  out.per_s = static_cast<double>(c1 - c0) / seconds_between(t0, t1);
  out.overloaded = counts->overloaded.load();
  out.failed = counts->failed.load();
  return out;
}

/// mlp::predict of `batch` inputs in a loop on this thread for `seconds`: inputs per second.
double plain_loop(const served& s, size_t batch, double seconds) {
  std::vector<float> in;
  for (size_t b = 0; b < batch; ++b)
    in.insert(in.end(), s.request.in.values->begin(), s.request.in.values->end());
  std::vector<uint32_t> labels(batch);
  uint64_t n = 0;
  auto t0 = clock_type::now();
  auto end = t0 + std::chrono::duration<double>(seconds);
  clock_type::time_point now;
  do {
    for (int k = 0; k < 16; ++k) {
      s.net->predict(s.params.data(), in.data(), batch, labels.data());
      do_not_optimize(labels.data());
    }
    n += 16 * batch;
    now = clock_type::now();
  } while (now < end);
  return static_cast<double>(n) / seconds_between(t0, now);
}

void bench_throughput(understudy::runtime& rt, served& s, const options& opts,
                      std::vector<figure>& figs) {
  std::vector<std::vector<double>> rates(replica_counts.size());
  std::vector<double> plain, plain_batched;
  uint64_t overloaded = 0, failed = 0;
  std::vector<std::function<void()>> sides;
  bool record = false;
  for (size_t i = 0; i < replica_counts.size(); ++i)
    sides.push_back([&, i] {
      auto r = closed_loop(rt.system(), s.routers[i]->get(), s.request, opts.throughput_seconds);
      if (record) {
        rates[i].push_back(r.per_s);
        overloaded += r.overloaded;
        failed += r.failed;
      }
    });
  sides.push_back([&] {
    auto x = plain_loop(s, 1, opts.throughput_seconds);
    if (record)
      plain.push_back(x);
  });
  for (size_t r = 0; r < opts.throughput_rounds + 1; ++r) {
    record = r > 0;
    rotated(r, sides);
  }
  for (size_t r = 0; r < opts.throughput_rounds; ++r)
    plain_batched.push_back(plain_loop(s, in_flight, opts.throughput_seconds / 2));
  for (size_t i = 0; i < replica_counts.size(); ++i) {
    auto n = replica_counts[i];
    auto f = make_figure("throughput_" + std::to_string(n) + (n == 1 ? "_replica" : "_replicas"),
                         "req/s", median(rates[i]), median(plain), 0);
    f.notes.push_back("runs " + spread(rates[i], 0) + " req/s");
    figs.push_back(f);
  }
  figs[figs.size() - replica_counts.size()].notes.push_back(
      "closed loop through the router: " + std::to_string(in_flight) + " requests in flight from " +
      std::to_string(clients) + " client actors (1 input each), " +
      fixed(opts.throughput_seconds, 1) + " s per side per round, " +
      std::to_string(opts.throughput_rounds) +
      " rounds (sides rotated), no standbys, max_batch 64; baseline: mlp::predict of 1 input "
      "in a loop on one thread (runs " +
      spread(plain, 0) + " calls/s; of " + std::to_string(in_flight) +
      " inputs at once: " + fixed(median(plain_batched), 0) + " inputs/s)");
  figs[figs.size() - replica_counts.size()].notes.push_back(
      "this machine has " + std::to_string(std::thread::hardware_concurrency()) +
      " cores: clients, router and replicas share CAF's scheduler threads, so more replicas "
      "add no cores; overloaded answers " +
      std::to_string(overloaded) + ", failed " + std::to_string(failed));
}

// -- main --------------------------------------------------------------------------------

int run(const options& opts) {
  std::vector<figure> figs;
  try {
    if (opts.runs("latency") || opts.runs("throughput")) {
      understudy::runtime_config rc;
      rc.log_events = false;
      rc.configure = [](caf::actor_system_config& cfg) { sv::register_serving_types(cfg); };
      understudy::runtime rt{rc};
      {
        served s{rt};
        if (opts.runs("latency"))
          bench_latency(rt, s, opts, figs);
        if (opts.runs("throughput"))
          bench_throughput(rt, s, opts, figs);
        if (auto err = rt.stop(s.tree))
          throw bench_failure("stop trees: " + rt.render(err));
      }
    }
    if (opts.runs("failover"))
      bench_failover(opts, figs);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_serving: error: %s\n", e.what());
    return EXIT_FAILURE;
  }
  if (!figs.empty() && opts.quick)
    figs.front().notes.push_back("--quick: few repetitions, figures are rough");
  bench::print_report("serving", figs);
  return EXIT_SUCCESS;
}

} // namespace
} // namespace serving_bench

int main(int argc, char** argv) {
  serving_bench::init_child_handling();
  serving_bench::options opts;
  if (auto status = bench::parse_command_line(
          argc, argv,
          {
              bench::flag_option("--quick", [&] { opts.make_quick(); }),
              {"--only", true,
               [&](const char* value) {
                 opts.only = value;
                 return opts.only == "latency" || opts.only == "throughput" ||
                        opts.only == "failover";
               }},
              {"--rate", true,
               [&](const char* value) {
                 size_t r = 0;
                 if (!bench::parse_size(value, r))
                   return false;
                 opts.rate = static_cast<double>(r);
                 return true;
               }},
          },
          "usage: %s [--quick] [--only latency|throughput|failover] [--rate N]\n"
          "  --quick     few repetitions (a smoke run)\n"
          "  --only X    only the latency, throughput or failover figures\n"
          "  --rate N    requests per second of the failover load (default %.0f)\n",
          argv[0], serving_bench::options{}.rate))
    return *status;
  return serving_bench::run(opts);
}
