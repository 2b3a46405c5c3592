#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>
#include <caf/timespan.hpp>

#include "understudy/runtime/restart_policy.hpp"

namespace understudy {

// A node config file (TOML) declares a cluster: its nodes, its security and
// failure-detection settings, the supervision tree and the training job.
// docs/config.md documents every key; examples/cluster/local.toml is a full
// example. Parsing validates everything that can be checked without starting
// anything, and every error names `FILE:LINE: problem`.

/// Whether a node runs children from the start or waits to take over.
enum class node_role : uint8_t {
  /// Starts the children placed on it.
  active,
  /// Starts nothing; children of a failed node may restart on it.
  spare,
};

/// Returns "active" or "spare".
std::string to_string(node_role x);

/// How the node for a child (or each actor of a job role) is chosen.
enum class placement_policy : uint8_t {
  /// On its supervisor's node, moving with it (the default).
  inherit,
  /// Spread over the listed nodes (one node pins it there); restarts on
  /// another listed node when its node is lost.
  nodes,
  /// Starts on its supervisor's node; may restart on any node.
  any,
  /// Dealt round-robin over the active nodes; may restart on any node.
  spread,
};

/// Returns "inherit", "nodes", "any" or "spread".
std::string to_string(placement_policy x);

/// Whether a child shares its node's main process.
enum class process_mode : uint8_t {
  /// Runs in the node's process.
  shared,
  /// Runs in an OS process of its own on its node, so that a crash of the
  /// process (e.g. a sticky CUDA error) takes down nothing else.
  isolated,
};

/// Returns "shared" or "isolated".
std::string to_string(process_mode x);

/// When a node may act on its own judgment that peers are dead.
enum class quorum_policy : uint8_t {
  /// Always: a node that sees peers die fences them and restarts their
  /// actors, even when it sees fewer than half of the nodes (the cluster
  /// survives losing all nodes but one; a network partition can leave two
  /// sides acting).
  none,
  /// Only while it sees a strict majority of the nodes alive (itself
  /// included): a minority side of a partition fences nobody, takes over
  /// nothing and restarts nothing until it sees a majority again.
  majority,
};

/// Returns "none" or "majority".
std::string to_string(quorum_policy x);

/// Where a child, or each actor of a job role, runs.
struct placement_spec {
  placement_policy policy = placement_policy::inherit;
  /// For `placement_policy::nodes`: the candidates in order of preference.
  std::vector<std::string> nodes;
  process_mode process = process_mode::shared;
  /// GPUs each instance needs on its node.
  size_t gpus = 0;
  /// Resolved by the parser: the node each instance starts on (one entry for a
  /// child, one per actor for a job role).
  std::vector<std::string> start;
  /// Resolved by the parser: the nodes an instance may restart on when its node
  /// is lost, in order of preference. Empty: it restarts only where its
  /// supervisor runs (inherit) or not at all (pinned to one node).
  std::vector<std::string> failover;
};

/// `[cluster.security]`: mutual TLS with a per-cluster CA. Paths are as
/// written, with `{node}` replaced per node in the node's own cert and key.
struct security_spec {
  /// The CA certificate every node trusts.
  std::string ca;
  /// The CA's private key (needed only to issue certificates).
  std::string ca_key;
  /// Certificate and key patterns; `{node}` stands for the node's name.
  std::string cert;
  std::string key;
};

/// `[cluster.metrics]`: Prometheus endpoints of the nodes.
struct metrics_spec {
  bool enabled = false;
  /// Node number i (file order, from 0) serves on port_base + i unless it sets
  /// its own metrics_port. 0: only nodes with a metrics_port serve metrics.
  uint16_t port_base = 0;
};

/// `[cluster.failure_detection]`: how nodes watch each other.
struct failure_detection_spec {
  /// Each node sends a heartbeat to every peer this often.
  caf::timespan heartbeat_interval = std::chrono::milliseconds(100);
  /// A peer whose phi-accrual suspicion level exceeds this is suspected.
  double phi_threshold = 8.0;
  /// A peer silent for this long is declared dead and fenced, whatever phi says.
  caf::timespan deadline = std::chrono::seconds(1);
  /// Connecting to a peer (and CAF's middleman connection timeout) gives up
  /// after this long.
  caf::timespan connection_timeout = std::chrono::seconds(2);
  /// Whether acting on a peer's death needs a majority of the nodes.
  quorum_policy quorum = quorum_policy::none;
};

/// `[cluster]`.
struct cluster_spec {
  std::string name;
  /// Default parent of the nodes' state directories ("" if not set).
  std::string state_root;
  /// Absent: no TLS, allowed only when every node is on loopback.
  std::optional<security_spec> security;
  metrics_spec metrics;
  failure_detection_spec failure_detection;
};

/// One `[[node]]`.
struct node_spec {
  std::string name;
  /// The address the node binds and peers connect to.
  std::string host;
  uint16_t port = 0;
  /// The node's state directory (its LMDB environment).
  std::string state_dir;
  /// CUDA device ids the node may use.
  std::vector<int> gpus;
  node_role role = node_role::active;
  /// Where it serves Prometheus metrics; 0: it does not.
  uint16_t metrics_port = 0;
  /// The node its checkpoints are replicated to ("" for a cluster of one).
  std::string buddy;
  /// Its TLS certificate and key, resolved ("" without security).
  std::string cert;
  std::string key;
  /// Line of its `[[node]]` header.
  int line = 0;
};

/// A supervisor or child of the supervision tree (`[tree]` and `[[tree.child]]`).
struct tree_child {
  std::string name;
  /// "supervisor", "training_job" or a type the caller registered.
  std::string type = "supervisor";
  /// The path in the tree, e.g. "/root/job".
  std::string path;
  restart_type restart = restart_type::permanent;
  shutdown_spec shutdown = shutdown_spec::infinite();
  /// Zero: no check.
  caf::timespan liveness_deadline{0};
  caf::timespan start_timeout{0};
  placement_spec placement;
  /// For supervisors only.
  restart_strategy strategy = restart_strategy::one_for_one;
  restart_intensity intensity;
  backoff_policy backoff;
  std::vector<tree_child> children;
  /// Line of its table header.
  int line = 0;

  /// Returns whether this is a supervisor with children of its own.
  bool is_supervisor() const noexcept { return type == "supervisor"; }
};

/// The supervisor of one role of the training job (`[job.worker]` etc.); as
/// the training component's `role_policy`, plus the placement of its actors.
struct job_role_spec {
  restart_strategy strategy = restart_strategy::one_for_one;
  restart_intensity intensity{20, std::chrono::seconds(10)};
  backoff_policy backoff;
  placement_spec placement;
};

/// `[job]`: a synchronous data-parallel training job, field for field what the
/// training component's `training_config` needs (the launcher loads the data,
/// builds the model and calls its `validate`).
struct job_spec {
  /// "mlp" with `layers` = {inputs, hidden..., classes}.
  std::string model = "mlp";
  std::vector<size_t> layers;
  /// A CSV file (plain or gzip), last column the label; inputs scaled by `data_scale`.
  std::string data;
  double data_scale = 0.0625;
  /// The share of samples held out for evaluation, split by `seed`.
  double test_fraction = 0.2;
  size_t workers = 2;
  size_t shards = 2;
  size_t loaders = 1;
  size_t batch = 32;
  uint64_t steps = 3000;
  uint64_t seed = 1;
  uint64_t checkpoint_every = 1;
  uint64_t eval_every = 250;
  size_t prefetch = 2;
  /// "sgd", "momentum" or "adam", with its hyperparameters.
  std::string optimizer = "sgd";
  double lr = 0.01;
  double momentum = 0.9;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double weight_decay = 0.0;
  /// A fault spec as the training component's `parse_faults` reads it.
  std::string faults;
  job_role_spec worker;
  job_role_spec shard;
  job_role_spec loader;
  job_role_spec trainer;
  /// Source lines of the keys set in the file: "data", "faults",
  /// "worker.placement", ...; the `[job]` header under "".
  std::map<std::string, int> lines;

  /// Returns the line of `key` (see `lines`), or that of `[job]` if not set there.
  int line_of(const std::string& key) const;
};

/// A parsed and validated node config file.
struct node_config {
  /// The file name used in messages.
  std::string origin;
  cluster_spec cluster;
  /// In file order.
  std::vector<node_spec> nodes;
  /// The root supervisor; `[tree]` or, without it, a root with the job.
  tree_child tree;
  std::optional<job_spec> job;
  /// Things worth a log line that do not stop the node, as `FILE[:LINE]: text`,
  /// e.g. that a config without security is allowed on loopback only.
  std::vector<std::string> notes;

  /// Returns the node named `name`, or null.
  const node_spec* find_node(std::string_view name) const;
};

/// A problem with `[job]` found by a check the runtime cannot make itself.
struct job_problem {
  /// The `[job]` key at fault as in `job_spec::lines` ("" for the table).
  std::string key;
  std::string problem;
};

/// Options of `parse_node_config`.
struct node_config_options {
  /// Child types the node can start besides "supervisor" and "training_job".
  std::vector<std::string> child_types;
  /// Extra validation of the job after everything else passed (e.g. the
  /// training component's parse_faults and validate); its problem is reported
  /// at the line of its key. May be empty.
  std::function<std::optional<job_problem>(const job_spec&)> check_job;
};

/// Parses and validates the node config in `text`; `origin` names it in
/// messages (usually the file name). Errors are `config_errc` values whose
/// context reads `ORIGIN:LINE: problem`; the first problem found is reported.
/// Thread-safe; does not touch the file system.
caf::expected<node_config> parse_node_config(std::string_view text, std::string origin,
                                             const node_config_options& options = {});

/// Reads the file at `path` and parses it as `parse_node_config(text, path)`;
/// `config_errc::cannot_read` if the file cannot be read.
caf::expected<node_config> load_node_config(const std::string& path,
                                            const node_config_options& options = {});

/// Parses a duration: a non-negative number with a unit (ns, us, ms, s, m, h),
/// e.g. "100ms" or "1.5s". `config_errc::invalid_value` otherwise.
caf::expected<caf::timespan> parse_duration(std::string_view text);

/// One key the parser accepts, as docs/config.md lists it.
struct config_key {
  /// The table: "" (top level), "cluster", "cluster.security", "node",
  /// "tree", "tree.child", "job", "job.<role>", "intensity", "backoff", ...
  std::string section;
  std::string name;
  /// What the value is, e.g. "string", "integer", "duration", "placement".
  std::string type;
};

/// Returns every key the parser accepts, by section in documentation order.
std::vector<config_key> node_config_keys();

} // namespace understudy
