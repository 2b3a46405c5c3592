#include "simulate.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <ostream>

#include <CLI/CLI.hpp>

#include "inspect.hpp"
#include "understudy/cluster/simulation.hpp"

namespace understudy::cli {

CLI::App* add_simulate_command(CLI::App& app, simulate_options& opts) {
  auto* sub = app.add_subcommand(
      "simulate",
      "run a cluster's coordination (membership, fencing, leadership) on simulated time with "
      "faults drawn from each seed, and check its invariants");
  sub->footer(
      "Every seed gives the same run, event for event. Exits 0 when every run passed, 1 when "
      "one broke an invariant (it prints how to replay it), 2 for usage errors.");
  sub->add_option("--seeds", opts.seeds, "how many seeds to run")->capture_default_str();
  sub->add_option("--first", opts.first, "the first seed")->capture_default_str();
  sub->add_option("--seed", opts.seed, "run this seed only (a replay)");
  sub->add_option("--nodes", opts.nodes, "nodes in the cluster")
      ->capture_default_str()
      ->check(CLI::Range(2, 2000));
  sub->add_option("--monitors", opts.monitors,
                  "how many peers watch each node (larger clusters watch on a ring)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  sub->add_option("--seconds", opts.seconds,
                  "simulated seconds per run (faults in the first "
                  "two thirds)")
      ->capture_default_str()
      ->check(CLI::Range(15.0, 86400.0));
  sub->add_option("--trace", opts.trace, "write the run's trace (with --seed) to this file");
  sub->add_flag("--shrink", opts.shrink, "shrink a failing run's faults to those it needs");
  sub->add_flag("--no-faults", opts.no_faults, "runs without faults");
  sub->add_flag("--no-training", opts.no_training,
                "coordination only: no training job on the cluster, no disk faults");
  return sub;
}

int run_simulate(const simulate_options& opts, std::ostream& out, std::ostream& err) {
  const std::string prog = "understudy simulate: ";
  if (!opts.trace.empty() && opts.seed == 0) {
    err << prog << "--trace writes one run's trace: name it with --seed\n";
    return exit_failure;
  }
  simulation_options so;
  so.nodes = opts.nodes;
  so.monitors = opts.monitors;
  so.duration = std::chrono::milliseconds{static_cast<int64_t>(opts.seconds * 1000)};
  so.faults = !opts.no_faults;
  so.trace = !opts.trace.empty();
  so.training = !opts.no_training;
  const uint64_t first = opts.seed != 0 ? opts.seed : opts.first;
  const uint64_t count = opts.seed != 0 ? 1 : opts.seeds;
  uint64_t passed = 0, failed = 0, events = 0;
  std::vector<double> detection, failover, finish_s;
  double led = 0, simulated = 0;
  uint64_t job_errors = 0, rounds = 0, bad_reads = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t seed = first; seed < first + count; ++seed) {
    so.seed = seed;
    auto rep = simulate(so);
    events += rep.events;
    led += rep.led_share;
    simulated += rep.simulated_s;
    if (rep.training_finished_ms > 0)
      finish_s.push_back(rep.training_finished_ms / 1000);
    if (!rep.training_error.empty())
      ++job_errors;
    rounds += rep.training_rounds;
    bad_reads += rep.bad_reads;
    detection.insert(detection.end(), rep.detection_ms.begin(), rep.detection_ms.end());
    failover.insert(failover.end(), rep.failover_ms.begin(), rep.failover_ms.end());
    if (!opts.trace.empty()) {
      std::ofstream f{opts.trace};
      f << rep.trace;
      if (!f) {
        err << prog << "cannot write " << opts.trace << '\n';
        return exit_failure;
      }
    }
    if (rep.passed()) {
      ++passed;
      if (count == 1) {
        out << "seed " << seed << ": passed";
        if (so.training)
          out << "; the training job "
              << (rep.training_error.empty()
                      ? "recorded its last step " + std::to_string(rep.training_steps) + " at " +
                            std::to_string(rep.training_finished_ms / 1000) + " s"
                      : "ended with an error: " + rep.training_error);
        out << "; faults:\n";
        for (const auto& f : rep.faults)
          out << "  " << f << '\n';
      }
      continue;
    }
    ++failed;
    out << "seed " << seed << " FAILED:\n";
    for (const auto& v : rep.violations)
      out << "  " << v << '\n';
    out << "  faults:\n";
    for (const auto& f : rep.faults)
      out << "    " << f << '\n';
    if (opts.shrink) {
      auto kept = shrink_simulation(so);
      out << "  shrunk: it fails with only the faults";
      for (auto i : kept)
        out << " #" << i;
      out << " of the schedule above\n";
    }
    out << "  replay: understudy simulate --seed " << seed << " --nodes " << opts.nodes
        << " --monitors " << opts.monitors << " --seconds " << opts.seconds << " --trace seed-"
        << seed << ".txt\n";
  }
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto median = [](std::vector<double> xs) {
    if (xs.empty())
      return 0.0;
    std::nth_element(xs.begin(), xs.begin() + static_cast<long>(xs.size() / 2), xs.end());
    return xs[xs.size() / 2];
  };
  char line[512];
  std::snprintf(line, sizeof line,
                "simulate: %zu nodes, %.0f simulated s per run, seeds %llu..%llu: %llu passed, "
                "%llu failed (%llu events, %.1f s wall, %.0f simulated s per wall s; detection "
                "median %.0f ms over %zu kills, failover median %.0f ms over %zu leader kills, "
                "a leader %.1f%% of the time)\n",
                opts.nodes, opts.seconds, static_cast<unsigned long long>(first),
                static_cast<unsigned long long>(first + count - 1),
                static_cast<unsigned long long>(passed), static_cast<unsigned long long>(failed),
                static_cast<unsigned long long>(events), wall, wall > 0 ? simulated / wall : 0.0,
                median(detection), detection.size(), median(failover), failover.size(),
                100.0 * led / static_cast<double>(count));
  out << line;
  if (so.training) {
    std::snprintf(line, sizeof line,
                  "training: %zu of %llu jobs recorded their last step with the fault-free "
                  "states (median at %.1f simulated s), %llu ended with an explicit error; %llu "
                  "recovery rounds, %llu disk reads refused (torn or corrupt)\n",
                  finish_s.size(), static_cast<unsigned long long>(count), median(finish_s),
                  static_cast<unsigned long long>(job_errors),
                  static_cast<unsigned long long>(rounds),
                  static_cast<unsigned long long>(bad_reads));
    out << line;
  }
  return failed == 0 ? exit_ok : exit_corrupt;
}

} // namespace understudy::cli
