#pragma once

// A whole cluster's coordination in one process, on simulated time, with faults drawn from a
// seed (`understudy simulate`). N nodes run the real membership core (membership, fencing,
// leadership: runtime/src/cluster/membership_core.hpp) against the real in-memory coordination
// service (linearizable, with leases on the simulated clock); the network, the processes and
// the service fail as the seed decides:
// - fault sites, each enabled for a run with probability one half (FoundationDB style, so
//   that rare combinations happen): node kills (restarted later as a new incarnation), pauses
//   of any length (SIGSTOP, GC, VM steal), two-way partitions of a node from others, one-way
//   cuts, heartbeats lost, duplicated, delayed and replayed seconds late (stale epochs), the
//   coordination service down, one node cut off from it, clocks drifting up to 1% fast or slow
//   and jumping ahead (each node reads a clock of its own), and forged heartbeats: a node with
//   a valid certificate writes an epoch it was never given into what it sends;
// - faults happen in the first two thirds of the run; then everything heals, stopped nodes
//   start again, and the cluster must settle.
// Invariants, checked on every input a node processes:
// - no term is gained by two nodes; a node that acts as leader (processes an input while it
//   leads) of a term older than one another node has acted as leader of (it was paused or cut
//   off and has not heard yet) is refused by every node that knows the newer term: its epoch is
//   fenced there, so nothing it sends is acted on (no split brain);
// - no node takes a peer for an epoch that the coordinator never gave it (checked in runs of
//   up to 64 nodes, and in every run with forged heartbeats) (epochs are fencing tokens: believing
//   a made-up one fences the real incarnation);
// - once the faults stop, within a bound (ttl + 2 deadlines + 2 s): exactly one leader, which
//   every running node knows, and every running node sees every other alive; from then on
//   nobody is declared dead or fenced.
// One seed decides everything: the same seed gives the same run, event for event (its trace).
//
// Past `monitors` + 1 nodes the nodes watch each other on a ring (membership_core.hpp).
//
// With `training` (the default), the cluster also runs a training job whose commit rule is the
// trainer's (state/step_commit.hpp), with simulated disks (runtime/src/cluster/training_sim.hpp):
// power loss at one node or all at once (unsynced writes lost or torn), corrupt reads, one
// machine replaced with an empty disk. Its invariants: no acknowledged (recorded) step lost,
// committed steps never go back, every committed step has the fault-free run's states, every
// sample consumed exactly once per epoch, and the job finishes within a bound once the faults
// stop.
//
// Not simulated: the trainer's and placement's own code (they run on CAF: the simulator's job
// is a model of them around the shared commit rule), and messages forged under another node's
// name (the transport authenticates every message by its connection; see hostile_peer_test).
//
// Threads: simulate() runs on the caller's thread. Errors: none (a run reports violations).

#include <chrono>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace understudy {

/// What one simulated run is.
struct simulation_options {
  uint64_t seed = 1;
  /// Nodes n1..nN.
  size_t nodes = 3;
  /// Simulated time: faults in its first two thirds.
  std::chrono::milliseconds duration{60000};
  std::chrono::milliseconds heartbeat_interval{100};
  std::chrono::milliseconds deadline{1000};
  std::chrono::milliseconds session_ttl{3000};
  /// How many peers watch each node (membership_settings::monitors; the nodes' default).
  size_t monitors = 4;
  /// Draw faults (false: a fault-free run).
  bool faults = true;
  /// Faults of the schedule to leave out (by index): for shrinking a failing schedule.
  std::set<size_t> skip;
  /// Kill the leader at this simulated time and start it again a second later (0: not), on
  /// top of the drawn faults: the detection and failover figures of a fault-free run.
  std::chrono::milliseconds kill_leader_at{0};
  /// If not zero: at this time the leader freezes (its connections stay open, it goes silent)
  /// for three deadlines; detection and failover are measured from the freeze.
  std::chrono::milliseconds freeze_leader_at{0};
  /// Keep the trace (every fault and every action but heartbeats and renewals).
  bool trace = false;
  /// Run the training job on the cluster (runtime/src/cluster/training_sim.hpp), with disk
  /// faults among the drawn ones: its steps (0: as many as take half the run without faults).
  bool training = true;
  uint64_t training_steps = 0;
};

/// What one simulated run did and found.
struct simulation_report {
  uint64_t seed = 0;
  size_t nodes = 0;
  /// The invariants it broke (empty: passed), each with its simulated time.
  std::vector<std::string> violations;
  /// The fault schedule the seed drew, in order (index: its place in the schedule).
  std::vector<std::string> faults;
  /// The trace (with simulation_options::trace).
  std::string trace;
  /// Simulated seconds, events run, heartbeats sent.
  double simulated_s = 0;
  uint64_t events = 0;
  uint64_t beats = 0;
  /// Terms gained (leader elections), and peers declared dead.
  size_t terms = 0;
  size_t deaths = 0;
  /// Distinct nodes some node reported to the coordinator (declare_dead): in a run whose only
  /// fault is one node killed or frozen, more than one is a false suspicion.
  size_t reported = 0;
  /// Kill of a node to the coordinator declaring it dead (per kill detected), and kill of the
  /// leader to the next leader gaining its term (per leader kill), in milliseconds.
  std::vector<double> detection_ms;
  std::vector<double> failover_ms;
  /// Each input an old leader processed after a newer term's leader had acted: how long after
  /// (the window its fencing had to cover).
  std::vector<double> stale_leader_ms;
  /// Share of the simulated time in which some node led (acted as leader within the last
  /// heartbeat interval).
  double led_share = 0;
  /// The training job: its steps, the step the coordination service last recorded committed,
  /// when the last step was recorded (simulated ms; 0: never), the explicit error that ended
  /// it ("" if none), recovery rounds, participant steps applied (redone ones included), and
  /// reads its disks refused (torn or corrupt records).
  uint64_t training_steps = 0;
  uint64_t training_committed = 0;
  double training_finished_ms = 0;
  std::string training_error;
  uint64_t training_rounds = 0;
  uint64_t training_applied = 0;
  uint64_t bad_reads = 0;
  /// The longest time the job went without committing a new step, and its median step time
  /// (simulated ms): what an interruption cost it is the difference.
  double training_stall_ms = 0;
  double training_step_ms = 0;
  bool passed() const noexcept { return violations.empty(); }
};

/// Runs one simulation (see the top of this file).
simulation_report simulate(const simulation_options& opts);

/// Shrinks the fault schedule of a failing run: leaves out faults one at a time while the run
/// still fails, and returns the indices of the faults it kept (a failing run with fewer
/// faults; the run itself if nothing could go).
std::vector<size_t> shrink_simulation(const simulation_options& opts);

} // namespace understudy
