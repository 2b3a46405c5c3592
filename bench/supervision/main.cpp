// Benchmark: the cost of supervision, next to raw CAF measured in the same run.
//
//   restart_latency_*   a supervised child crashes; time until its restarted
//                       incarnation answered a request. Baseline: a hand-written
//                       manager actor that monitors its child and respawns it on
//                       the down message, answering the same "incarnation >= n"
//                       request.
//   message_throughput  messages per second into a supervised counting actor
//                       (sent to its handle, not through the supervisor) versus
//                       the same actor spawned directly.
//
// Both sides run in alternating rounds (A B, B A, A B, ...) after a warm-up
// round, so that drift on a noisy machine hits both alike.
//
// Usage: bench_supervision [--restarts N] [--messages N] [--rounds N]

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scheduled_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/sec.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/system_messages.hpp>
#include <caf/typed_response_promise.hpp>

#include "report.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/state/runtime.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace {

using bench::figure;
using bench::fixed;
using bench::in_order;
using bench::make_figure;
using bench::median;
using bench::percentile;

using clock_type = std::chrono::steady_clock;

using crash_atom = caf::atom_constant<caf::atom("b_crash")>;
/// The baseline manager's equivalent of understudy::resolve_atom.
using base_resolve_atom = caf::atom_constant<caf::atom("b_resolve")>;
/// Flow control of the throughput driver: answered with ok_atom.
using sync_atom = caf::atom_constant<caf::atom("b_sync")>;

/// Requests inside the timed loops carry no timeout: a finite one arms a timer
/// in CAF's clock thread per request (a mutex and a thread wake-up), which would
/// dominate both sides. The main thread watches each round instead.
constexpr auto request_timeout = caf::infinite;
/// A round that takes longer than this failed (a hung request).
constexpr auto round_deadline = std::chrono::seconds(120);
const std::string crasher_id = "crasher";
const std::string counter_id = "counter";

// -- the children ------------------------------------------------------------------------

struct crash_error : std::runtime_error {
  crash_error() : std::runtime_error("crash requested") {
    // Nothing to do.
  }
};

/// Echoes ints; throws on crash_atom. The exception handler only keeps CAF's
/// default handler from printing one line per crash; the actor still exits
/// abnormally (sec::runtime_error), as with the default handler.
caf::behavior crasher(caf::event_based_actor* self) {
  self->set_exception_handler([](caf::scheduled_actor*, std::exception_ptr&) -> caf::error {
    return caf::sec::runtime_error;
  });
  return {
      [](int x) { return x; },
      [](crash_atom) { throw crash_error{}; },
  };
}

struct counter_state {
  uint64_t count = 0;
};

/// Adds every int it gets; get_atom returns the sum so far and resets it;
/// sync_atom just answers (the driver's flow control).
caf::behavior counting_actor(caf::stateful_actor<counter_state>* self) {
  return {
      [self](int x) { self->state.count += static_cast<uint64_t>(x); },
      [](sync_atom) { return caf::ok_atom::value; },
      [self](caf::get_atom) {
        auto result = self->state.count;
        self->state.count = 0;
        return result;
      },
  };
}

// -- the raw CAF baseline for restarts ---------------------------------------------------

struct waiter {
  uint64_t min_incarnation;
  caf::typed_response_promise<caf::actor> rp;
};

struct manager_state {
  caf::actor child;
  uint64_t incarnation = 0;
  std::vector<waiter> waiters;
};

/// Monitors one crasher and respawns it on its down message, by hand.
caf::behavior baseline_manager(caf::stateful_actor<manager_state>* self) {
  auto start = [self] {
    auto& st = self->state;
    st.child = self->system().spawn(crasher);
    ++st.incarnation;
    self->monitor(st.child);
    auto keep = std::partition(st.waiters.begin(), st.waiters.end(),
                               [&](const waiter& w) { return w.min_incarnation > st.incarnation; });
    for (auto i = keep; i != st.waiters.end(); ++i)
      i->rp.deliver(st.child);
    st.waiters.erase(keep, st.waiters.end());
  };
  start();
  self->set_down_handler([self, start](caf::down_msg& msg) {
    if (msg.source == self->state.child.address())
      start();
  });
  self->set_exit_handler([self](caf::exit_msg& msg) {
    if (self->state.child)
      self->send_exit(self->state.child, caf::exit_reason::kill);
    self->quit(msg.reason);
  });
  return {
      [self](base_resolve_atom, const std::string&,
             uint64_t min_incarnation) -> caf::result<caf::actor> {
        auto& st = self->state;
        if (st.incarnation >= min_incarnation)
          return st.child;
        auto rp = self->make_response_promise<caf::actor>();
        st.waiters.push_back({min_incarnation, rp});
        return rp;
      },
  };
}

// -- restart latency driver --------------------------------------------------------------

struct latency_round {
  /// Crash to answer of the new incarnation, in microseconds.
  std::vector<double> samples_us;
  /// Incarnation serving at the end of the round.
  uint64_t incarnation = 0;
  /// Empty on success.
  std::string error;
};

struct latency_driver_state {
  caf::actor manager;
  caf::actor child;
  uint64_t incarnation = 0;
  size_t remaining = 0;
  int probe = 0;
  clock_type::time_point t0;
  std::promise<latency_round>* done = nullptr;
  latency_round result;
};

using latency_driver_actor = caf::stateful_actor<latency_driver_state>;

void finish_latency(latency_driver_actor* self, std::string error = {}) {
  auto& st = self->state;
  st.result.incarnation = st.incarnation;
  st.result.error = std::move(error);
  st.done->set_value(std::move(st.result));
  self->quit();
}

std::function<void(caf::error&)> fail_with(latency_driver_actor* self, std::string what) {
  return [self, what = std::move(what)](caf::error& err) {
    finish_latency(self, what + ": " + understudy::describe(err));
  };
}

/// One restart: crash the current child, ask the manager for the next
/// incarnation, get an answer from it. `ResolveAtom` picks the manager's protocol.
template <class ResolveAtom>
void restart_once(latency_driver_actor* self) {
  auto& st = self->state;
  if (st.remaining == 0) {
    finish_latency(self);
    return;
  }
  --st.remaining;
  st.t0 = clock_type::now();
  auto old = st.child;
  self->send(old, crash_atom::value);
  self->request(st.manager, request_timeout, ResolveAtom::value, crasher_id, st.incarnation + 1)
      .then(
          [self, old](caf::actor& fresh) {
            auto& st = self->state;
            if (!fresh || fresh == old) {
              finish_latency(self, "resolve returned the crashed incarnation or none");
              return;
            }
            st.child = std::move(fresh);
            ++st.incarnation;
            auto probe = ++st.probe;
            self->request(st.child, request_timeout, probe)
                .then(
                    [self, probe](int answer) {
                      auto t1 = clock_type::now();
                      auto& st = self->state;
                      if (answer != probe) {
                        finish_latency(self, "new incarnation answered " + std::to_string(answer) +
                                                 " to " + std::to_string(probe));
                        return;
                      }
                      st.result.samples_us.push_back(
                          std::chrono::duration<double, std::micro>(t1 - st.t0).count());
                      restart_once<ResolveAtom>(self);
                    },
                    fail_with(self, "request to the new incarnation"));
          },
          fail_with(self, "resolve"));
}

/// Runs `restarts` restarts of the child currently at `incarnation`.
template <class ResolveAtom>
caf::behavior latency_driver(latency_driver_actor* self, caf::actor manager, uint64_t incarnation,
                             size_t restarts, std::promise<latency_round>* done) {
  auto& st = self->state;
  st.manager = std::move(manager);
  st.incarnation = incarnation;
  st.remaining = restarts;
  st.done = done;
  st.result.samples_us.reserve(restarts);
  // Untimed: fetch the handle of the serving incarnation.
  self->request(st.manager, request_timeout, ResolveAtom::value, crasher_id, incarnation)
      .then(
          [self](caf::actor& child) {
            self->state.child = std::move(child);
            restart_once<ResolveAtom>(self);
          },
          fail_with(self, "initial resolve"));
  return {
      [](caf::ok_atom) {
        // Never sent; keeps the driver alive between responses.
      },
  };
}

/// Waits for a round; a round past its deadline hangs on a request that will
/// never be answered, and the actor system could not shut down: exit at once.
template <class T>
void await_round(std::future<T>& fut) {
  if (fut.wait_for(round_deadline) != std::future_status::ready) {
    std::fprintf(stderr, "bench_supervision: error: a round did not finish within %lld s\n",
                 static_cast<long long>(round_deadline.count()));
    std::fflush(nullptr);
    std::_Exit(EXIT_FAILURE);
  }
}

template <class ResolveAtom>
latency_round run_latency_round(caf::actor_system& sys, const caf::actor& manager,
                                uint64_t incarnation, size_t restarts) {
  std::promise<latency_round> done;
  auto fut = done.get_future();
  sys.spawn(latency_driver<ResolveAtom>, manager, incarnation, restarts, &done);
  await_round(fut);
  return fut.get();
}

// -- throughput driver -------------------------------------------------------------------

struct throughput_round {
  double msgs_per_s = 0;
  std::string error;
};

/// Messages per batch and batches in flight: the driver never has more than
/// batch_size * window messages queued at the counter, so the mailbox stays
/// small (no hundreds of MiB of queued messages, less noise from the allocator)
/// while the counter never runs dry.
constexpr size_t batch_size = 4096;
constexpr size_t window = 4;

struct throughput_driver_state {
  caf::actor counter;
  size_t total = 0;
  size_t sent = 0;
  size_t in_flight = 0;
  clock_type::time_point t0;
  std::promise<throughput_round>* done = nullptr;
};

using throughput_driver_actor = caf::stateful_actor<throughput_driver_state>;

void finish_throughput(throughput_driver_actor* self, throughput_round r) {
  self->state.done->set_value(std::move(r));
  self->quit();
}

void finish_count(throughput_driver_actor* self) {
  auto& st = self->state;
  self->request(st.counter, request_timeout, caf::get_atom::value)
      .then(
          [self](uint64_t count) {
            auto t1 = clock_type::now();
            auto& st = self->state;
            throughput_round r;
            if (count != st.total)
              r.error = "counter saw " + std::to_string(count) + " of " + std::to_string(st.total);
            else
              r.msgs_per_s =
                  static_cast<double>(st.total) / std::chrono::duration<double>(t1 - st.t0).count();
            finish_throughput(self, std::move(r));
          },
          [self](caf::error& err) {
            throughput_round r;
            r.error = "count request: " + understudy::describe(err);
            finish_throughput(self, std::move(r));
          });
}

/// Sends the next batch followed by a sync request; its answer sends the next.
void send_batch(throughput_driver_actor* self) {
  auto& st = self->state;
  auto n = std::min(batch_size, st.total - st.sent);
  for (size_t i = 0; i < n; ++i)
    self->send(st.counter, 1);
  st.sent += n;
  ++st.in_flight;
  self->request(st.counter, request_timeout, sync_atom::value)
      .then(
          [self](caf::ok_atom) {
            auto& st = self->state;
            --st.in_flight;
            if (st.sent < st.total)
              send_batch(self);
            else if (st.in_flight == 0)
              finish_count(self);
          },
          [self](caf::error& err) {
            throughput_round r;
            r.error = "sync request: " + understudy::describe(err);
            finish_throughput(self, std::move(r));
          });
}

/// Sends `n` ints to `counter` (in batches), then asks for the sum; rate = n /
/// elapsed from the first send to the sum's arrival.
caf::behavior throughput_driver(throughput_driver_actor* self, caf::actor counter, size_t n,
                                std::promise<throughput_round>* done) {
  auto& st = self->state;
  st.counter = std::move(counter);
  st.total = n;
  st.done = done;
  st.t0 = clock_type::now();
  for (size_t i = 0; i < window && st.sent < st.total; ++i)
    send_batch(self);
  return {
      [](caf::ok_atom) {
        // Never sent; keeps the driver alive between responses.
      },
  };
}

throughput_round run_throughput_round(caf::actor_system& sys, const caf::actor& counter, size_t n) {
  std::promise<throughput_round> done;
  auto fut = done.get_future();
  sys.spawn(throughput_driver, counter, n, &done);
  await_round(fut);
  return fut.get();
}

// -- command line ------------------------------------------------------------------------

struct options {
  /// Measured restarts per side (in total over all rounds).
  size_t restarts = 4000;
  /// Messages per throughput run.
  size_t messages = 300000;
  /// A/B rounds per figure.
  size_t rounds = 16;
};

/// Stops `x` with user_shutdown and waits until it is gone (a supervisor: with
/// all its children), so that nothing of one round runs into the next.
void stop_and_wait(caf::actor_system& sys, const caf::actor& x) {
  caf::scoped_actor self{sys};
  self->monitor(x);
  self->send_exit(x, caf::exit_reason::user_shutdown);
  self->receive([](const caf::down_msg&) {
    // Gone.
  });
}

/// Returns a spec for a root supervisor that restarts at once and never gives up.
understudy::supervisor_spec bench_spec(std::string name, understudy::child_spec child) {
  understudy::supervisor_spec spec;
  spec.name = std::move(name);
  spec.strategy = understudy::restart_strategy::one_for_one;
  spec.intensity.max_restarts = INT_MAX;
  spec.intensity.period = std::chrono::seconds(1);
  spec.children.push_back(std::move(child));
  return spec;
}

int run(caf::actor_system& sys, const options& opts) {
  auto fail = [](const std::string& what) {
    std::fprintf(stderr, "bench_supervision: error: %s\n", what.c_str());
    return EXIT_FAILURE;
  };
  auto rounds = opts.rounds;
  // Round r (1-based) gets its share of opts.restarts; the shares add up exactly.
  auto share = [&](size_t r) {
    return opts.restarts / rounds + (r <= opts.restarts % rounds ? 1 : 0);
  };
  std::vector<figure> figs;

  // -- restart latency --
  understudy::child_spec crasher_spec;
  crasher_spec.id = crasher_id;
  crasher_spec.start = [](understudy::child_context& ctx) -> caf::expected<caf::actor> {
    return caf::actor{ctx.system.spawn(crasher)};
  };
  auto sup = understudy::spawn_supervisor(sys, bench_spec("bench_restart", crasher_spec));
  if (!sup)
    return fail("spawn_supervisor: " + understudy::describe(sup.error()));
  auto manager = sys.spawn(baseline_manager);
  uint64_t ours_inc = 1;
  uint64_t base_inc = 1;
  std::vector<double> ours_us;
  std::vector<double> base_us;
  // A warm-up round (not recorded), then the alternating rounds.
  for (size_t r = 0; r <= rounds; ++r) {
    auto n = r == 0 ? std::max<size_t>(opts.restarts / rounds / 5, 50) : share(r);
    latency_round a;
    latency_round b;
    auto run_a = [&] { a = run_latency_round<understudy::resolve_atom>(sys, *sup, ours_inc, n); };
    auto run_b = [&] { b = run_latency_round<base_resolve_atom>(sys, manager, base_inc, n); };
    in_order(r, run_a, run_b);
    if (!a.error.empty())
      return fail("supervised restart: " + a.error);
    if (!b.error.empty())
      return fail("baseline restart: " + b.error);
    ours_inc = a.incarnation;
    base_inc = b.incarnation;
    if (r > 0) {
      ours_us.insert(ours_us.end(), a.samples_us.begin(), a.samples_us.end());
      base_us.insert(base_us.end(), b.samples_us.begin(), b.samples_us.end());
    }
  }
  // The supervisor must have counted every crash as a restart.
  understudy::supervisor_ref ref{sys, *sup};
  auto kids = ref.which_children();
  if (!kids)
    return fail("which_children: " + understudy::describe(kids.error()));
  if (kids->size() != 1 || kids->front().incarnation != ours_inc ||
      kids->front().restarts != ours_inc - 1)
    return fail("supervisor reports an unexpected incarnation or restart count");

  auto med = make_figure("restart_latency_median", "us", median(ours_us), median(base_us));
  med.target = "<= 1.5x baseline, <= 100 us";
  med.met = med.value <= 1.5 * med.baseline && med.value <= 100.0;
  med.notes.push_back(std::to_string(ours_us.size()) + " restarts per side in " +
                      std::to_string(rounds) +
                      " alternating rounds; latency ratio: lower is better");
  auto p99 = make_figure("restart_latency_p99", "us", percentile(ours_us, 0.99),
                         percentile(base_us, 0.99));
  figs.push_back(med);
  figs.push_back(p99);

  // -- message throughput --
  // Fresh actors every round, spawned in the order they run: an actor spawned
  // earlier in a process tends to run a few percent faster here (placement and
  // heap history), which a pair of long-lived actors would turn into a bias.
  std::vector<double> ours_rate;
  std::vector<double> base_rate;
  std::vector<double> pair_ratios;
  for (size_t r = 0; r <= rounds; ++r) {
    auto n = r == 0 ? std::max<size_t>(opts.messages / 10, 1000) : opts.messages;
    caf::actor tsup;
    caf::actor supervised_counter;
    caf::actor plain_counter;
    std::string spawn_error;
    in_order(
        r,
        [&] {
          auto x = understudy::spawn_supervisor(
              sys, bench_spec("bench_throughput", understudy::worker(counter_id, counting_actor)));
          if (!x) {
            spawn_error = "spawn_supervisor: " + understudy::describe(x.error());
            return;
          }
          tsup = *x;
          auto child = understudy::supervisor_ref{sys, tsup}.resolve(counter_id);
          if (!child) {
            spawn_error = "resolve counter: " + understudy::describe(child.error());
            return;
          }
          supervised_counter = *child;
        },
        [&] { plain_counter = caf::actor{sys.spawn(counting_actor)}; });
    if (!spawn_error.empty()) {
      if (tsup)
        stop_and_wait(sys, tsup);
      stop_and_wait(sys, plain_counter);
      return fail(spawn_error);
    }
    throughput_round a;
    throughput_round b;
    in_order(
        r, [&] { a = run_throughput_round(sys, supervised_counter, n); },
        [&] { b = run_throughput_round(sys, plain_counter, n); });
    supervised_counter = nullptr;
    stop_and_wait(sys, tsup);
    stop_and_wait(sys, plain_counter);
    if (!a.error.empty())
      return fail("supervised throughput: " + a.error);
    if (!b.error.empty())
      return fail("plain throughput: " + b.error);
    if (r > 0) {
      pair_ratios.push_back(a.msgs_per_s / b.msgs_per_s);
      ours_rate.push_back(a.msgs_per_s);
      base_rate.push_back(b.msgs_per_s);
    }
  }
  auto tput = make_figure("message_throughput", "msgs/s", median(ours_rate), median(base_rate));
  tput.decimals = 0;
  tput.target = ">= 0.95x baseline";
  tput.met = tput.ratio() >= 0.95;
  // The spread of the per-round ratios shows how much of a miss is noise.
  tput.notes.push_back(std::to_string(opts.messages) + " messages per run, median of " +
                       std::to_string(rounds) + " alternating rounds; ratio: higher is better; " +
                       "per-round ratios " + bench::spread(pair_ratios, 3) + " (median " +
                       fixed(median(pair_ratios), 3) + ")");
  figs.push_back(tput);

  // -- shutdown --
  caf::anon_send_exit(*sup, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(manager, caf::exit_reason::user_shutdown);

  bench::print_report("supervision", figs);
  return EXIT_SUCCESS;
}

} // namespace

int main(int argc, char** argv) {
  options opts;
  if (auto status = bench::parse_command_line(
          argc, argv,
          {
              bench::size_option("--restarts", opts.restarts),
              bench::size_option("--messages", opts.messages),
              bench::size_option("--rounds", opts.rounds),
          },
          "usage: %s [--restarts N] [--messages N] [--rounds N]\n"
          "  --restarts N  measured restarts per side, over all rounds (default %zu)\n"
          "  --messages N  messages per throughput run (default %zu)\n"
          "  --rounds N    alternating A/B rounds per figure (default %zu)\n",
          argv[0], options{}.restarts, options{}.messages, options{}.rounds))
    return *status;
  caf::actor_system_config cfg;
  understudy::register_error_categories(cfg);
  caf::actor_system sys{cfg};
  return run(sys, opts);
}
