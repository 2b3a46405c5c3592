#pragma once

// The messages of serving: what the front end asks the router, what the
// router asks replicas. Every type here has a CAF `inspect` and is registered
// by register_serving_types, so it may cross processes and nodes.
//
//   router  (predict_atom, predict_request) -> prediction | serving_errc
//           (status_atom)                   -> serving_status
//           (update_atom, uint64_t step)    -> ok (roll the replicas to `step`)
//   replica (predict_atom, instances, bool alone) -> prediction (batched with
//           others, or computed alone after what is queued when `alone`)
//           (load_atom, uint64_t step)      -> uint64_t (the loaded version)
//           (status_atom)                   -> uint64_t (its version, 0: none)

#include <cstdint>
#include <string>
#include <vector>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>
#include <caf/meta/type_name.hpp>

#include "understudy/core/shared_value.hpp"

namespace understudy::serving {

using predict_atom = caf::atom_constant<caf::atom("sv_pred")>;
using load_atom = caf::atom_constant<caf::atom("sv_load")>;
using status_atom = caf::atom_constant<caf::atom("sv_stat")>;
using update_atom = caf::atom_constant<caf::atom("sv_upd")>;

/// `count` inputs of the model's input size each, row-major. Shared without a
/// copy between the front end, the router and a replica of one process.
struct instances {
  shared_value<std::vector<float>> values;
  uint32_t count = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, instances& x) {
  return f(caf::meta::type_name("understudy::serving::instances"), x.values, x.count);
}

/// A request to the router.
struct predict_request {
  /// A session key: requests with the same key go to the same replica while it
  /// lives, and never see an older model version than they saw. "" for none.
  std::string key;
  instances in;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, predict_request& x) {
  return f(caf::meta::type_name("understudy::serving::predict_request"), x.key, x.in);
}

/// The answer to a prediction.
struct prediction {
  /// The predicted class of each input, in order.
  std::vector<uint32_t> labels;
  /// The model version that computed them.
  uint64_t version = 0;
  /// The replica that answered, e.g. "replica-1".
  std::string replica;
  /// Replicas the router tried (1 when the first answered).
  uint32_t attempts = 1;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, prediction& x) {
  return f(caf::meta::type_name("understudy::serving::prediction"), x.labels, x.version, x.replica,
           x.attempts);
}

/// One replica as the router sees it.
struct replica_view {
  std::string id;
  /// "active" (in rotation), "standby" (loaded, warm, out of rotation),
  /// "loading", "draining" (out of rotation, finishing its requests) or
  /// "down" (restarting).
  std::string state;
  uint64_t version = 0;
  uint64_t outstanding = 0;
  /// Recent latency (exponentially weighted), milliseconds.
  double latency_ms = 0;
  /// Times the router saw it go down.
  uint64_t downs = 0;
  /// The node it runs on, where its replicas are placed on a cluster's nodes
  /// ("" otherwise).
  std::string node;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, replica_view& x) {
  return f(caf::meta::type_name("understudy::serving::replica_view"), x.id, x.state, x.version,
           x.outstanding, x.latency_ms, x.downs, x.node);
}

/// The router's answer to status_atom.
struct serving_status {
  /// The version the replicas are rolled to (0: none yet).
  uint64_t target = 0;
  std::vector<replica_view> replicas;
  /// Requests answered, failed (retry budget spent, or no replica), refused as
  /// overloaded, and re-sent to another replica, since the router started.
  uint64_t answered = 0;
  uint64_t failed = 0;
  uint64_t overloaded = 0;
  uint64_t retried = 0;
  /// Hedges sent (serve_config::hedge) and those that answered first.
  uint64_t hedged = 0;
  uint64_t hedges_won = 0;
  /// Requests in flight now, and those of them waiting for a replica.
  uint64_t in_flight = 0;
  uint64_t waiting = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, serving_status& x) {
  return f(caf::meta::type_name("understudy::serving::serving_status"), x.target, x.replicas,
           x.answered, x.failed, x.overloaded, x.retried, x.hedged, x.hedges_won, x.in_flight,
           x.waiting);
}

/// Replicas in rotation in `st` ("active").
size_t active_replicas(const serving_status& st);

/// Registers the serving messages and `serving_errc` with `cfg`.
void register_serving_types(caf::actor_system_config& cfg);

} // namespace understudy::serving
