#pragma once
// The node program as a library: what `understudy node FILE --name N` and
// `understudy status FILE` do, for any program that runs cluster nodes.
//
// Promises. run_node starts node N of a node config file: its actor system
// with CAF's middleman (mutual TLS where the file has security), its state
// store replicating to its buddy, its metrics endpoint where the file gives it
// a port. It follows the leader its peers name until it leads itself (at once
// for the first leader candidate, once every peer is reachable; later when
// the leader is declared dead and this node is next), then builds the
// supervision tree of the file's [tree], runs it and serves it in the node's
// status report (placement, incarnations, restarts, recent events). It stops
// when its components' work ends (a training job's last step), when a peer or
// a signal asks it to, or when the cluster fences it.
//
// Components plug in what the runtime does not know (the training job, a
// service's own actors) through node_component: the child types they start,
// their message types, their leader preferences, the children of the tree they
// build themselves, and the work the leader waits for.
//
// Threads. run_node blocks SIGINT and SIGTERM in the calling thread (call it
// from main() before starting other threads) and waits for them on a thread
// of its own. Components' hooks run on run_node's thread unless they say
// otherwise; node_output may be used from any thread.
//
// Errors. Problems are reported as lines on the error stream naming the file,
// node or step at fault, and summed up in the exit code (exit_code); a node
// that started ends its process (see run_node).

#include <chrono>
#include <functional>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "understudy/config/node_config.hpp"
#include "understudy/supervision/child_spec.hpp"
#include "understudy/supervision/supervision_event.hpp"

namespace understudy {

class cluster_node;
class node_metrics;
class runtime;
class supervisor_ref;

/// The exit codes of the node programs (`node`, `status`, `launch`).
enum class exit_code : int {
  /// node: its work is done or it was asked to stop; status: a node answered.
  ok = 0,
  /// status: no node could be reached; launch: no node ended the job (none
  /// left that could run the tree).
  failure = 1,
  /// A bad config or option, or the node could not start (its port, its state
  /// store, its peers unreachable at a cold start, a tree that cannot be built).
  bad_config = 2,
  /// The cluster declared this node dead: another node took over its work.
  fenced = 3,
  /// The leader's work (e.g. the training job) failed.
  job_failed = 4,
};

/// The exit status for `code`.
constexpr int to_int(exit_code code) noexcept {
  return static_cast<int>(code);
}

/// Where a node program writes its lines. Lines are written whole (one lock
/// for both streams), so that lines of several threads do not interleave.
/// Thread-safe; owned by the caller of run_node, which outlives it.
class node_output {
public:
  node_output(std::ostream& out, std::ostream& err) : out_(out), err_(err) {}

  node_output(const node_output&) = delete;
  node_output& operator=(const node_output&) = delete;

  /// Writes `line` to the output stream and flushes it (launch reads it at once).
  void say(const std::string& line);

  /// Writes `line` to the error stream.
  void warn(const std::string& line);

private:
  std::mutex mtx_;
  std::ostream& out_;
  std::ostream& err_;
};

/// How a component's work on the leader ended.
struct work_end {
  /// Set if it failed (the node exits with exit_code::job_failed).
  caf::error error;
  /// What it achieved, printed as "final: SUMMARY" (launch ends the cluster
  /// when a node prints such a line).
  std::string summary;
  /// Lines printed after the final line (e.g. the job's goodput).
  std::vector<std::string> after;
};

/// What a leading node offers its components.
struct leader_context {
  cluster_node& node;
  runtime& rt;
  node_output& out;
  /// The node's metrics, or null where it serves none.
  node_metrics* metrics = nullptr;
  /// This node took over from a leader that was lost (not a cold start).
  bool took_over = false;
};

/// A component's part on one started node, made by node_component::attach.
/// Its hooks run on run_node's thread.
class node_part {
public:
  virtual ~node_part();

  /// Why a node that did not lead at first takes over, for the line "taking
  /// over the job's tree (REASON)".
  virtual std::string takeover_reason() const;

  /// On the leader, before the tree is built: e.g. hooks its progress lines.
  virtual void before_tree(leader_context& ctx);

  /// The child for `c`, a child of the tree of a type this component builds
  /// itself (e.g. a nested supervisor); none for other types, which start
  /// through the factories registered with cluster_node::add_factory. `events`
  /// receives the events of a supervisor it builds (the tree's sinks and the
  /// log).
  virtual std::optional<child_spec> make_child(const tree_child& c,
                                               const std::shared_ptr<event_sink>& events);

  /// On the leader, once the tree serves (`tree` is its root).
  virtual void after_tree(leader_context& ctx, const supervisor_ref& tree);

  /// Whether its work on the leader ends (a training job's last step); the
  /// leader then waits for the first such part to end.
  virtual bool has_end() const;

  /// Blocks up to `timeout` for its work to end; none while it goes on.
  virtual std::optional<work_end> await_end(std::chrono::milliseconds timeout);

  /// On the leader, before the tree is stopped (the node is about to end).
  virtual void stop();

  /// Lines it adds to the leader's status report (`understudy status`), e.g.
  /// the job's progress; none by default.
  virtual std::string status() const;

  /// The same as a JSON object whose members join the leader's JSON status
  /// (`understudy status --json`), e.g. {"job": {...}}; none ("") by default.
  virtual std::string status_json() const;

  /// Lines on this node's own share (e.g. the replicas it serves), in every
  /// node's status report, leader or not; none by default.
  virtual std::string node_status() const;

  /// The same as a JSON object whose members join every node's JSON status;
  /// none ("") by default.
  virtual std::string node_status_json() const;

  /// On the leader stopped before its work ended (Ctrl-C, SIGTERM): a line on
  /// where the work stands and how it resumes, e.g. the committed step; none
  /// by default.
  virtual std::string stopped_note() const;
};

/// What a program adds to its nodes: stateless, shared by every node it runs.
class node_component {
public:
  virtual ~node_component();

  /// Tells config loading what this component accepts or checks (e.g. the
  /// child types it starts, the config sections it owns such as [job]).
  virtual void prepare_loading(node_config_options& opts) const;

  /// Registers its message types; called while the actor system is configured.
  virtual void register_types(caf::actor_system_config& cfg) const;

  /// The nodes that may lead (run the tree), in order of preference; empty
  /// for no preference of its own.
  virtual std::vector<std::string> leader_candidates(const node_config& nc) const;

  /// Checks what its sections name beyond their syntax (files to read, a
  /// model that must fit its data) so that `understudy launch` can refuse a
  /// config before any node starts; none by default.
  virtual caf::error check(const node_config& nc) const;

  /// Joins the started `node`: registers the factories of its child types
  /// (cluster_node::add_factory) and its own metrics with `metrics` (null
  /// where the node serves none). Errors stop the node (exit_code::bad_config).
  virtual caf::expected<std::unique_ptr<node_part>> attach(cluster_node& node,
                                                           const node_config& nc,
                                                           node_metrics* metrics) const = 0;
};

/// The components of a node program, in the order their hooks run.
using node_components = std::vector<std::shared_ptr<const node_component>>;

/// Loads the node config file at `file` with what `components` accept. A file
/// without [cluster.security] whose launch made certificates (see
/// use_launch_credentials) gets them: its nodes talk mutual TLS.
caf::expected<node_config> load_config(const std::string& file, const node_components& components);

/// The name of the [[node]] a process is, from its ordinal (counting the
/// file's [[node]] tables from 0), for schedulers that start one process per
/// node: `source` "hostname" takes the trailing number of `hostname` (a
/// Kubernetes StatefulSet's pod "understudy-2" is ordinal 2), "env:VAR" the
/// value of environment variable VAR as `getenv` reads it (e.g.
/// env:SLURM_PROCID). Errors (config_errc::invalid_value) name the source, the
/// value and the file's node count.
caf::expected<std::string> node_name_from(const node_config& nc, const std::string& source,
                                          const std::string& hostname,
                                          const std::function<const char*(const char*)>& getenv);

/// Where `understudy launch` keeps what it makes for a cluster (its local
/// etcd's data, certificates): the directory of the first node's state
/// directory ("." if that has none).
std::string launch_data_dir(const node_config& nc);

/// Where `understudy launch` keeps the certificates it makes for a cluster
/// whose file has no [cluster.security]: `certs/` in launch_data_dir.
std::string launch_credentials_dir(const node_config& nc);

/// Gives `nc`, when it has no [cluster.security], the CA and node
/// certificates in launch_credentials_dir: with `create` (the launcher) it
/// makes them first where they are missing (a CA, a key and certificate per
/// node, as `understudy certs` does; all of them again if a node's is
/// missing); without, it uses them only if they are there. Returns whether
/// `nc` now uses them (false: it has security of its own, or there are none).
/// Errors: those of create_cluster_certificates.
caf::expected<bool> use_launch_credentials(node_config& nc, bool create);

/// The nodes that may lead, in order: the first component's preference, else
/// the root's placement (its first node, then its failover nodes), else the
/// first active node.
std::vector<std::string> leader_candidates(const node_config& nc,
                                           const node_components& components);

/// What run_node starts.
struct node_options {
  /// The node config file.
  std::string file;
  /// Which [[node]] of it this is.
  std::string name;
  /// Where to take the name from instead (see node_name_from): "hostname" or
  /// "env:VAR". Empty: `name`.
  std::string name_from;
  /// Starts the error lines, e.g. "understudy node".
  std::string label = "understudy node";
  node_components components;
  /// etcd client URLs that replace the file's [cluster.coordination]
  /// endpoints (`understudy launch` passes its local etcd's). A cluster of
  /// more than one node needs endpoints from here or from the file.
  std::vector<std::string> coordination_endpoints;
  /// The lowest level of the supervision events the node logs (see
  /// runtime_config::log_level).
  std::string log_level = "info";
};

/// Runs node `opts.name` of `opts.file` until its work ends (the leader), a
/// peer or a signal stops it, or the cluster fences it. Returns only before
/// the node started (exit_code::bad_config); once it started, it ends the
/// process with its exit code (std::_Exit after flushing the standard
/// streams): everything it acknowledged is durable and its tree is stopped,
/// but actors that peers started here may still be referenced from the
/// network, and CAF would wait for them.
exit_code run_node(const node_options& opts, node_output& out);

/// What run_status queries.
struct status_options {
  std::string file;
  /// One JSON object per node and line (cluster_node::status_json, plus
  /// "reachable", and "error" for a node that cannot be reached).
  bool json = false;
  /// Starts the error lines, e.g. "understudy status".
  std::string label = "understudy status";
  node_components components;
};

/// Prints every node's status report to `out` (health of its peers, and on
/// the leader the supervision tree with placement, incarnations, restarts and
/// recent events). Returns ok, failure (no node reachable) or bad_config.
exit_code run_status(const status_options& opts, std::ostream& out, std::ostream& err);

} // namespace understudy
