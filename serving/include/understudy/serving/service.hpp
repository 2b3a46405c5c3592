#pragma once

// Serving: model replicas behind a router, with hot standbys.
//
// Promises: a client never sees a failure that a retry could have hidden. A
// request in flight on a replica that crashes or times out is sent to another
// replica (predictions are idempotent), up to `max_attempts` replicas. A
// request whose replica crashed is retried alone (not batched with others), so
// the innocent requests of a crashed batch are answered, and one that crashes
// a replica while computed alone is poisonous: it is failed at once. So one
// poisonous request takes down at most two replicas. A request that times out
// is treated the same way (a replica that leaves a lone request, or three in a
// row, unanswered is killed as hung and restarted by its supervisor). When
// every replica in rotation is at `max_outstanding`, the router answers
// `overloaded` at once instead of queueing without bound. A failed replica's
// place is taken by a hot standby at once, while its supervisor restarts it;
// the restarted one loads the current version and becomes a standby. Newer
// versions roll in through the standbys one replica at a time, and a session
// (a request key) never sees an older version than it has seen. Every answer
// names the version that computed it.
//
// Threads: replicas and the router are event-based actors of the caller's
// actor system; a replica computes a batch in one handler. The model source is
// read from replica handlers (loads) and the router's (newest version polls).
//
// Errors: serving_errc (errors.hpp) in the router's answers.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/expected.hpp>

#include "understudy/serving/errors.hpp"
#include "understudy/serving/model_source.hpp"
#include "understudy/serving/protocol.hpp"
#include "understudy/supervision/child_spec.hpp"

namespace understudy {
struct process_spec;
class node_component;
} // namespace understudy

namespace understudy::serving {

/// How the router picks a replica for a request without a live session.
enum class balance_policy : uint8_t {
  /// Power of two choices: two random replicas in rotation, the one with fewer
  /// outstanding requests weighted by its recent latency.
  power_of_two,
  round_robin,
  /// The replica with the fewest outstanding requests (ties: lower latency).
  least_outstanding,
};

/// In a program that serves with `isolated` replicas: when this process was
/// started to host a replica (its environment says so), runs it and returns
/// the process's exit status; none otherwise. Call it first in main(), before
/// anything starts threads or opens LMDB. A replica of a cluster node
/// (`[serve] isolated`) reads the node's config file with what `components`
/// accept (those of the node program: every section its file may hold) and
/// talks mutual TLS with its node when the cluster does.
std::optional<int> run_replica_process_if_requested(
    const std::vector<std::shared_ptr<const node_component>>& components = {});

/// Returns "power_of_two", "round_robin" or "least_outstanding".
std::string to_string(balance_policy x);

/// Parses a policy name as to_string writes it (also "p2c").
caf::expected<balance_policy> parse_balance_policy(const std::string& name);

class serving_metrics;

/// Settings of one served model.
struct serve_config {
  /// The model's name in the API (`POST /v1/models/NAME:predict`).
  std::string model = "model";
  /// Replicas in rotation, and hot standbys beside them.
  size_t replicas = 2;
  size_t standbys = 1;
  balance_policy policy = balance_policy::power_of_two;
  /// A replica computes at most this many inputs in one batch.
  size_t max_batch = 64;
  /// How long a replica waits for more requests before computing a batch that
  /// is not full; 0 computes at once what has queued meanwhile.
  std::chrono::microseconds max_delay{0};
  /// Requests outstanding on one replica beyond which it takes no more; when
  /// every replica in rotation is there, requests are refused as overloaded.
  size_t max_outstanding = 32;
  /// Replicas one request may be sent to (the first and its retries).
  size_t max_attempts = 3;
  /// A replica that has not answered within this long is given up for the
  /// request, which goes to another one.
  std::chrono::milliseconds request_timeout{2000};
  /// How often the router looks for a newer version in the source (0: only
  /// when told with update_atom).
  std::chrono::milliseconds watch_interval{500};
  /// Hedged requests: a request not answered within the recent p95 latency
  /// (of the last 256 answers, once 32 are in; at least 1 ms) is also sent to
  /// another replica in rotation, and the first answer is taken. At most one
  /// hedge per request, and no more hedges than a tenth of the answers, so a
  /// slow deployment is not sent twice the load.
  bool hedge = false;
  /// Sessions remembered at most (the oldest are forgotten beyond).
  size_t max_sessions = 100000;
  /// Each replica in an OS process of its own (runtime/process): a replica
  /// that brings its process down (or a process killed) costs only that
  /// replica. The source must say how to open it there (process_role), the
  /// program must call run_replica_process_if_requested first in main(), and
  /// the actor system needs CAF's middleman. The processes talk plain TCP on
  /// loopback.
  bool isolated = false;
  /// With `isolated`: completes each replica process's spec before it starts
  /// (the serving component adds its node's config file, name and TLS).
  std::function<void(process_spec&)> prepare_process;
  /// Fault injection for tests and demos: a request whose first input value
  /// equals this crashes the replica that computes it (with its batch).
  std::optional<float> poison;
  /// Fault injection: a request whose first input value equals this makes the
  /// replica that computes it hang (it answers nothing from then on).
  std::optional<float> stall;
  /// Seeds the power-of-two choices.
  uint64_t seed = 1;
};

/// Checks `cfg`: replicas >= 1, max_batch >= 1, max_outstanding >= 1,
/// max_attempts >= 1, request_timeout > 0, a model name of letters, digits,
/// '_', '-' and '.'. Returns the first problem (config_errc::invalid_value).
caf::error validate(const serve_config& cfg);

/// The router of a serving tree as it runs now: the tree's start functions
/// set it, the front end reads it. Thread-safe.
class router_handle {
public:
  caf::actor get() const;
  void set(caf::actor a);

private:
  mutable std::mutex mtx_;
  caf::actor router_;
};

/// Where a serving tree's replicas run when not in the tree's own actor
/// system, e.g. on a cluster's nodes (cluster_node::placed): `start(i)` is
/// the start function of replica i, `node_of` names the node an actor runs on
/// (for status). Both empty: replicas run beside the router.
struct replica_placement {
  std::function<async_start_function(size_t index)> start;
  std::function<std::string(const caf::actor&)> node_of;
};

/// The serving tree for `cfg` as a child of a supervisor (id `cfg.model`): a
/// one_for_one supervisor holding a supervisor of `replicas + standbys`
/// replicas ("replica-0", ...) and the router. `router` is kept pointing at
/// the current router; `metrics` (may be null) gets the router's counts;
/// `where` places the replicas (default: beside the router).
child_spec serving_tree(serve_config cfg, std::shared_ptr<model_source> source,
                        std::shared_ptr<router_handle> router,
                        std::shared_ptr<serving_metrics> metrics, replica_placement where = {});

/// Replica `id` of `cfg` loading from `source`, started by `ctx` in its own
/// actor system (a node's factory for replicas placed there).
caf::expected<caf::actor> start_replica(child_context& ctx, const serve_config& cfg,
                                        std::shared_ptr<model_source> source);

} // namespace understudy::serving
