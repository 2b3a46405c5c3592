// bench_cluster: failure detection, failover and cross-node messaging of a cluster.
//
// 1. detect_sigkill_*: an observer node in this process, a peer `understudy node`
//    process; the peer is SIGKILLed once the observer sees it alive; time until the
//    observer's on_peer_change listener reports it dead. A fresh peer each run.
// 2. detect_sigstop_*: the same with SIGSTOP (100 ms heartbeats, 1 s deadline); also
//    when phi-accrual first suspected it. The stopped process is SIGKILLed afterwards.
// 3. partitioned_leader_acting_*: an in-process leader whose etcd is SIGSTOPped; time until
//    it fences itself (stops driving the job), against its lease. A fresh etcd each run.
// 3b. false_suspicions_loaded: observer + 2 peer processes while one spinning thread
//    per core loads the machine; every suspected/dead transition any node reports.
// 3c. etcd_rpcs_per_step: a fault-free `understudy launch`; etcd's own metrics (gRPC calls,
//    raft proposals) scraped at two of the leader's progress lines.
// 4. failover_node_death_to_serving: `understudy launch --kill n2@STEP` on a 4-node
//    training cluster; SIGKILL to the last of n2's actors serving on another node.
// 5. throughput_*: messages between two actor systems over loopback: understudy nodes
//    without and with mutual TLS vs raw CAF remote actors, same run, rotated rounds.
// Every child process is in a group of its own, killed on every exit path; a watchdog
// ends any phase that hangs.

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cluster_bench.hpp"
#include "report.hpp"

int main(int argc, char** argv) {
  using namespace cluster_bench;
  cluster_bench::init_child_handling();
  options opts;
  // Zero: not given, so quick mode's default applies (a given value is positive).
  size_t runs = 0, failover_runs = 0, load_seconds = 0, rounds = 0;
  if (auto status = bench::parse_command_line(
          argc, argv,
          {
              bench::flag_option("--quick", [&] { opts.quick = true; }),
              bench::size_option("--runs", runs),
              bench::size_option("--failover-runs", failover_runs),
              bench::size_option("--load-seconds", load_seconds),
              bench::size_option("--rounds", rounds),
              bench::string_option("--only", opts.only),
          },
          "usage: %s [--quick] [--runs N] [--failover-runs N] [--load-seconds N] [--rounds N]\n"
          "          [--only GROUPS]\n"
          "  --quick             few repetitions and a short loaded run (3, 2, 10 s, 1)\n"
          "  --runs N            runs of each detection figure (default %zu)\n"
          "  --failover-runs N   `understudy launch` runs of the failover figure (default %zu)\n"
          "  --load-seconds N    length of the loaded run (default %zu)\n"
          "  --rounds N          rounds of the throughput comparison (default %zu)\n"
          "  --only GROUPS       comma-separated: "
          "kill,stop,partition,load,steady,failover,throughput\n",
          argv[0], opts.runs, opts.failover_runs, opts.load_seconds, opts.rounds))
    return *status;
  if (opts.quick) {
    opts.runs = 3;
    opts.failover_runs = 2;
    opts.load_seconds = 10;
    opts.rounds = 1;
  }
  opts.runs = runs != 0 ? runs : opts.runs;
  opts.failover_runs = failover_runs != 0 ? failover_runs : opts.failover_runs;
  opts.load_seconds = load_seconds != 0 ? load_seconds : opts.load_seconds;
  opts.rounds = rounds != 0 ? rounds : opts.rounds;

  watchdog dog;
  std::vector<bench::figure> figs;
  std::vector<std::string> errors;
  auto add = [&](const char* group, group_result r) {
    figs.insert(figs.end(), r.figures.begin(), r.figures.end());
    if (!r.error.empty())
      errors.push_back(std::string{group} + ": " + r.error);
  };
  if (opts.wants("kill") || opts.wants("stop"))
    add("detection", measure_detection(opts, dog, opts.wants("kill"), opts.wants("stop")));
  if (opts.wants("partition"))
    add("partitioned leader", measure_partitioned_leader(opts, dog));
  if (opts.wants("load"))
    add("false suspicions", measure_false_suspicions(opts, dog));
  if (opts.wants("steady"))
    add("steady state", measure_steady_etcd(opts, dog));
  if (opts.wants("failover"))
    add("failover", measure_failover(opts, dog));
  if (opts.wants("throughput"))
    add("throughput", measure_throughput(opts, dog));
  bench::print_report("cluster", figs);
  for (auto& e : errors)
    std::fprintf(stderr, "bench_cluster: %s\n", e.c_str());
  return errors.empty() ? EXIT_SUCCESS : EXIT_FAILURE;
}
