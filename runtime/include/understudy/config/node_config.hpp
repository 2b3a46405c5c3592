#pragma once

#include <any>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>
#include <caf/timespan.hpp>

#include "understudy/config/config_section.hpp"
#include "understudy/supervision/restart_policy.hpp"

namespace understudy {

// A node config file (TOML) declares a cluster: its nodes, its security and
// failure-detection settings, the supervision tree, and sections that other
// components own and register (config_section.hpp), such as the training
// component's [job].
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
  /// Each node sends a heartbeat to the peers that watch it this often.
  caf::timespan heartbeat_interval = std::chrono::milliseconds(100);
  /// A peer whose phi-accrual suspicion level exceeds this is suspected.
  double phi_threshold = 8.0;
  /// A peer silent for this long past its due heartbeat is reported to the
  /// coordinator, which declares it dead and fenced, whatever phi says.
  caf::timespan deadline = std::chrono::seconds(1);
  /// Connecting to a peer (and CAF's middleman connection timeout) gives up
  /// after this long.
  caf::timespan connection_timeout = std::chrono::seconds(2);
  /// How many peers watch each node: in a cluster of more than monitors + 1
  /// nodes, each node beats to the `monitors` nodes after it on a ring of the
  /// live nodes by name (smaller clusters watch all to all).
  size_t monitors = 4;
};

/// `[cluster.coordination]`: the etcd cluster that decides membership, epochs
/// and leadership (see understudy/cluster/coordination.hpp). Paths are as written.
struct coordination_spec {
  /// Client URLs of etcd members (http:// or https://), tried in order; empty:
  /// none configured (`understudy launch` then starts a local etcd).
  std::vector<std::string> endpoints;
  /// TLS to etcd: the CA that signed etcd's certificate ("": the system's CAs),
  /// and the client certificate and key this node presents (both or neither).
  std::string ca;
  std::string cert;
  std::string key;
  /// A node that does not renew its session within this long loses it (at least 1s).
  std::chrono::milliseconds session_ttl = std::chrono::seconds(3);
  /// The cluster's keys live under PREFIX/CLUSTER/ (no trailing '/').
  std::string prefix = "/understudy";
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
  coordination_spec coordination;
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
  /// "supervisor", the child type of a registered section (e.g.
  /// "training_job") or a type the caller registered.
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

/// A parsed and validated node config file.
struct node_config {
  /// The file name used in messages.
  std::string origin;
  cluster_spec cluster;
  /// In file order.
  std::vector<node_spec> nodes;
  /// The root supervisor; `[tree]` or, without it, a root with a child for
  /// each registered section that the tree starts.
  tree_child tree;
  /// The registered sections present in the file (config_section::name), as
  /// their parse functions read them.
  std::map<std::string, std::any> sections;
  /// Things worth a log line that do not stop the node, as `FILE[:LINE]: text`,
  /// e.g. that a config without security is allowed on loopback only.
  std::vector<std::string> notes;

  /// Returns the node named `name`, or null.
  const node_spec* find_node(std::string_view name) const;

  /// The nodes `p` may run on, in order of preference: its start nodes, then
  /// its failover nodes, each once; without any, the first active node.
  std::vector<std::string> preferred_nodes(const placement_spec& p) const;

  /// Returns section `name` as a `T`, or null if absent or of another type.
  template <class T>
  const T* section(const std::string& name) const {
    auto i = sections.find(name);
    return i == sections.end() ? nullptr : std::any_cast<T>(&i->second);
  }

  template <class T>
  T* section(const std::string& name) {
    auto i = sections.find(name);
    return i == sections.end() ? nullptr : std::any_cast<T>(&i->second);
  }
};

/// Options of `parse_node_config`.
struct node_config_options {
  /// Child types the node can start besides "supervisor" and the sections'.
  std::vector<std::string> child_types;
  /// The sections that components own (e.g. the training component's
  /// `[job]`), in the order they are parsed.
  std::vector<config_section> sections;
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

/// Returns every key the parser accepts with `options`' sections, by section
/// in documentation order: [cluster], [[node]] and [tree] first.
std::vector<config_key> node_config_keys(const node_config_options& options = {});

} // namespace understudy
