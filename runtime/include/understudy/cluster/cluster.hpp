#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/message.hpp>
#include <caf/timespan.hpp>

#include "understudy/cluster/errors.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/state/state_writer.hpp"
#include "understudy/supervision/child_spec.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy {

class runtime;
class event_sink;
class coordinator;

// -- failure detection -------------------------------------------------------------

/// The phi-accrual failure detector (Hayashibara et al., 2004) for one peer:
/// the suspicion level phi = -log10(P(a heartbeat comes later than now)),
/// with heartbeat inter-arrival times modelled as a normal distribution over
/// the last `window` intervals. phi 1 means a 10% chance that the peer is
/// still alive and only late, phi 8 one in 10^8.
class phi_accrual {
public:
  using clock = std::chrono::steady_clock;

  /// `expected_interval` seeds the statistics before real intervals arrive.
  explicit phi_accrual(caf::timespan expected_interval, size_t window = 100);

  /// Records a heartbeat arriving at `t`.
  void heartbeat(clock::time_point t);

  /// The suspicion level at `now`; 0 before the first heartbeat.
  double phi(clock::time_point now) const;

  /// When the last heartbeat arrived, if one did.
  std::optional<clock::time_point> last() const noexcept { return last_; }

private:
  double min_stddev_;
  size_t window_;
  std::deque<double> intervals_; // milliseconds
  double sum_ = 0;
  double sum_sq_ = 0;
  std::optional<clock::time_point> last_;
};

/// What a node knows about a peer.
enum class peer_state : uint8_t {
  /// Not connected yet.
  unknown,
  /// Heartbeats arrive.
  alive,
  /// phi exceeds the threshold: probably dead, not yet declared.
  suspected,
  /// Its connection closed or it was silent past the deadline: fenced. Its
  /// generation is refused from then on.
  dead,
};

/// Returns "unknown", "alive", "suspected" or "dead".
std::string to_string(peer_state x);

/// One peer as this node sees it.
struct peer_view {
  std::string name;
  peer_state state = peer_state::unknown;
  double phi = 0;
  /// The generation the peer announced (its process's); 0 before hello.
  uint64_t generation = 0;
  /// Why it changed to its state, when told to a peer_listener ("connection
  /// lost", "silent past the deadline", ...); may be empty.
  std::string reason;
};

// -- the node ------------------------------------------------------------------------

/// Starts an actor that a peer asked this node for (see cluster_node::placed).
/// `ctx` describes the child as its (remote) supervisor knows it.
using node_factory =
    std::function<caf::expected<caf::actor>(child_context& ctx, const caf::message& args)>;

/// A change in a peer's state, for the node's listeners.
using peer_listener = std::function<void(const peer_view& peer)>;

/// One node of a cluster declared in a node config file: its actor system
/// talks to the other nodes through CAF's middleman (heartbeats and connection
/// timeout on), it publishes a node agent on its configured address only, it
/// watches its peers (heartbeats, phi-accrual suspicion, a hard deadline; all of
/// them in a small cluster, a few neighbours on a ring in a large one, see
/// `failure_detection_spec::monitors`) and reports the silent or disconnected
/// ones to the cluster's coordinator, which
/// alone declares a node dead (its epoch is refused from then on), it
/// replicates every checkpoint its writer commits to its buddy node (a put is
/// acknowledged once the copy is durable there, and fails naming the node
/// otherwise), and it starts actors for supervisors on other nodes.
///
/// Build the runtime with `runtime_config::configure` calling
/// `cluster_node::configure`, then call `start`. Stop it before the runtime.
class cluster_node {
public:
  struct state;

  /// Prepares `cfg` for node `name` of `nc` (prepare_node_system_config:
  /// CAF's middleman, mutual TLS where the config has security, heartbeats),
  /// sets CAF's connection timeout to the failure detector's deadline and
  /// registers the node protocol's message types and the error categories of
  /// the cluster (`register_cluster_error_categories`) and of its child
  /// processes (`register_process_types`). Returns the notes to log, or
  /// the error (bad certificates, no security off loopback).
  static caf::expected<std::vector<std::string>> configure(caf::actor_system_config& cfg,
                                                           const node_config& nc,
                                                           const std::string& name);

  /// Starts node `name` of `nc` in `rt`: joins the cluster through `coord`
  /// (its epoch, the node's fencing token, comes from there), opens its state
  /// store (replicating to its buddy), publishes its agent on host:port,
  /// starts connecting to its peers. `coord` may be null only for a cluster of
  /// one node (an in-process service then decides). Errors:
  /// `cluster_errc::unknown_node`, `cluster_errc::cannot_listen`,
  /// `coordination_errc` (no coordinator for several nodes, the join failed),
  /// the state store's.
  /// `on_commit` (optional) hears how long each of its writer's commits took.
  static caf::expected<std::shared_ptr<cluster_node>> start(
      runtime& rt, const node_config& nc, const std::string& name,
      std::shared_ptr<event_sink> events = nullptr,
      std::function<void(std::chrono::nanoseconds)> on_commit = {},
      std::shared_ptr<coordinator> coord = nullptr);

  ~cluster_node();
  cluster_node(const cluster_node&) = delete;
  cluster_node& operator=(const cluster_node&) = delete;

  const node_spec& self() const;
  const node_config& config() const;
  /// This incarnation's epoch, given by the coordinator when it joined:
  /// greater than every epoch given before, so that a node that comes back is
  /// told apart and its older incarnation's messages and replicas are refused.
  uint64_t generation() const;
  /// The node's state store and writer (checkpoints replicate to the buddy).
  const persistence& state_store() const;
  /// The node agent (published on host:port).
  caf::actor agent() const;

  /// Lets peers start actors of `type` here.
  void add_factory(const std::string& type, node_factory f);

  /// Tells `f` about every change of a peer's state (on the agent's thread).
  void on_peer_change(peer_listener f);

  /// Tells `f` what the node does on its own account, as a line of text: e.g.
  /// "moved /job/shards/shard-0 from n1 (lost) to s1, 3 checkpoint versions
  /// copied from n2, started in 2.1 ms" (on the placement's thread).
  void on_note(std::function<void(const std::string&)> f);

  /// An asynchronous start function for a child that runs on one of the cluster's nodes
  /// (this node through the factory of `type`, another node through its
  /// agent): on `home` first, then again where it ran last while that node
  /// lives. When that node is lost, on the first live node of `failover` (the
  /// placement's failover nodes in order of preference), or, if there is none,
  /// on the first live node down its buddy chain. A `stateful` child moves
  /// with its checkpoints: the live node that holds them (where it ran last,
  /// else down the buddy chain) copies them durably to its new node first; it
  /// is never started where its checkpoints are not. The placement runs on a
  /// blocking actor of its own, never on the supervisor: waiting for the
  /// coordinator's verdict on a lost node, asking peers which holds the newest
  /// checkpoints, copying them and the agent's answer to the spawn (up to the
  /// connection timeout, longer while checkpoints are copied) leave the
  /// supervisor free to handle its other children and to answer requests.
  async_start_function placed(std::string type, caf::message args, std::string home,
                              std::vector<std::string> failover = {}, bool stateful = true);

  /// Asks every node that is alive and connected, this one included, for the
  /// verified checkpoint versions it holds at or under `prefix` newer than
  /// step `after` (its own actors' and its copies of others'): `self` sends
  /// the requests, and `each` gets, in `self`'s handlers, one answer per node:
  /// its batch, checked against its sender's checksums on receipt, or an
  /// error (a malformed or corrupt batch is one, naming the problem; so is no
  /// answer within the connection timeout plus 30 s). Nodes named in `skip`
  /// are not asked (e.g. those whose last answer has not come yet). Returns
  /// the nodes asked. For a component that reads a job's state spread over
  /// the nodes (serving a cluster's own training job does).
  std::vector<std::string> request_versions(
      caf::event_based_actor* self, const std::string& prefix, uint64_t after,
      std::function<void(const std::string& node, caf::expected<checkpoint_batch> batch)> each,
      const std::vector<std::string>& skip = {}) const;

  /// The behavior (made for each incarnation) of an actor that keeps `into`
  /// (a store of this process, not
  /// the node's own) a copy of the versions under `prefix` that the cluster's
  /// nodes hold: every `interval` it asks each live node whose last answer has
  /// come (request_versions) for the versions newer than `after()` and commits
  /// what arrives as replicated puts: each verified against its sender's
  /// checksums on receipt, only paths under `prefix`, a stored version never
  /// replaced with other contents. A slow or frozen node delays only its own
  /// share. Problems go to stderr, one line per answer. Spawn it under a
  /// supervisor of yours (serving a cluster's job and shipping its snapshots
  /// do, as a worker); the function may outlive this object.
  std::function<caf::behavior(caf::event_based_actor*)> gatherer(
      std::shared_ptr<::understudy::state_store> into, std::string prefix, caf::timespan interval,
      std::function<uint64_t()> after) const;

  /// Builds the supervision tree a node config declares (`root`, its [tree])
  /// for the leader to run: every supervisor with its strategy, intensity and
  /// backoff (supervisors run on the leader), every child with its restart
  /// type, shutdown, start timeout and liveness deadline. `custom(c)` builds
  /// the children of types the caller knows (e.g. "training_job", whose
  /// actors it places itself) and returns none for others; a child of another
  /// type starts through placed() on the node its placement names, from the
  /// factory of its type registered there (add_factory). `events` receives the
  /// tree's supervision events. Errors: a child that asks for an isolated
  /// process (only a training job's workers can be isolated).
  caf::expected<supervisor_spec> tree(
      const tree_child& root, std::shared_ptr<event_sink> events,
      const std::function<std::optional<child_spec>(const tree_child&)>& custom);

  /// Every peer as this node sees it.
  std::vector<peer_view> peers() const;

  /// Adds `provider`'s text (e.g. the supervision tree this node runs) to the
  /// node's status report.
  void set_status_provider(std::function<std::string()> provider);

  /// Adds the members of the JSON object `provider` returns (e.g. "tree" and
  /// "job") to the node's JSON status report (status_json).
  void set_status_json_provider(std::function<std::string()> provider);

  /// The node's status report as one JSON object: "node", "role", "host",
  /// "port", "epoch", "buddy", "fenced" (and "fenced_reason"), "leader",
  /// "term", "leads", "peers" (each "name", "state", "phi",
  /// "last_heartbeat_ms" or null, "epoch", "fenced_up_to"), and the provider's
  /// members. What `understudy status --json` prints per node.
  std::string status_json() const;

  /// The node's status report: itself, every peer's state and suspicion, and
  /// the status provider's text. What `understudy status` prints per node.
  std::string status() const;

  /// The name of the node an actor runs on ("" if unknown), e.g. for status.
  std::string node_of(const caf::actor& a) const;

  /// Asks the node agent at host:port for its status report, through `sys`
  /// (prepared with prepare_node_system_config). For `understudy status`.
  static caf::expected<std::string> query_status(caf::actor_system& sys, const std::string& host,
                                                 uint16_t port, caf::timespan timeout);

  /// The same as one JSON object (status_json), for `understudy status --json`.
  static caf::expected<std::string> query_status_json(caf::actor_system& sys,
                                                      const std::string& host, uint16_t port,
                                                      caf::timespan timeout);

  /// Blocks until every peer is alive or `timeout` passes; returns whether they
  /// are. Not from an actor handler.
  bool await_peers(std::chrono::milliseconds timeout) const;

  /// Blocks until each node of `names` other than this one is alive or
  /// declared dead, or `timeout` passes; returns whether each is. Not from an
  /// actor handler.
  bool await_decided(const std::vector<std::string>& names,
                     std::chrono::milliseconds timeout) const;

  /// Blocks until every connected peer says it is connected to every node that
  /// is not dead, or `timeout` passes; returns the links still missing then, as
  /// "A-B" (none: the mesh is complete). A leader asks before it starts the
  /// tree: actors on two nodes that are not connected yet talk through a third,
  /// and a message in flight when their own connection comes up can be lost.
  /// Not from an actor handler.
  std::vector<std::string> await_mesh(std::chrono::milliseconds timeout) const;

  /// Asks every connected peer to stop its process (`understudy node` exits)
  /// and waits for their answers (up to 1 s each). Not from an actor handler.
  void stop_peers();

  /// Blocks until a peer asked this node to stop (or it was fenced, or
  /// request_stop was called) or `timeout` passes; returns whether it was asked.
  bool await_stop_request(std::chrono::milliseconds timeout) const;

  /// Asks this node to stop (e.g. from a signal handling thread).
  void request_stop();

  /// Ends this node's coordination session (its membership and any
  /// leadership go at once), waiting up to `timeout` for the answer; from
  /// then on it reports no peer dead. For a node that stops in an orderly
  /// way. Not from an actor handler.
  void leave(std::chrono::milliseconds timeout);

  /// Leadership: one node runs the supervision tree (for a training job, the
  /// node that hosts the trainer). `candidates` are the nodes that may, in
  /// order of preference. The coordinator decides: on a cold start only the
  /// first candidate may campaign; once a leader has been declared dead (or
  /// its session ended), the first candidate that is a member campaigns, and
  /// the coordinator grants one term to one node. Heartbeats never change who
  /// leads. A leader that cannot renew its session in time stops (fenced)
  /// before its lease can expire. The successor starts the tree afresh:
  /// actors started for the old leader's supervisors were killed when it was
  /// declared dead.
  void set_leader_candidates(std::vector<std::string> candidates);

  /// The leader as the coordinator names it ("" while none).
  std::string leader() const;

  /// The leader's term (0 while none).
  uint64_t term() const;

  /// Blocks until the coordinator made this node the leader, a stop is
  /// requested, or `timeout` passes; returns whether it leads (and was not
  /// asked to stop). Not from an actor handler.
  bool await_leadership(std::chrono::milliseconds timeout) const;

  /// Marks this node as running the tree; false if it does not lead (any
  /// more), was fenced or was asked to stop.
  bool claim_leadership();

  /// Whether the cluster declared this node dead (it must stop: its actors'
  /// work is refused and has been restarted elsewhere).
  bool fenced() const;

private:
  explicit cluster_node(std::shared_ptr<state> st);
  std::shared_ptr<state> st_;
};

} // namespace understudy
