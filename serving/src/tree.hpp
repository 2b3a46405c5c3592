#pragma once

// The serving tree's actors (service.cpp assembles them).

#include <functional>
#include <memory>
#include <string>

#include <caf/actor.hpp>
#include <caf/event_based_actor.hpp>

#include "understudy/serving/front_end.hpp"
#include "understudy/serving/service.hpp"

namespace understudy::serving::detail {

/// The behavior of replica `id` of `cfg` loading from `source`.
caf::behavior replica_behavior(caf::event_based_actor* self, const serve_config& cfg,
                               std::shared_ptr<model_source> source, std::string id);

/// Replica `id` of `cfg` loading from `source` (in a process of its own with
/// `cfg.isolated`).
child_spec replica_spec(const serve_config& cfg, std::shared_ptr<model_source> source,
                        std::string id);

/// The router of `cfg`'s replicas, found through the replicas' supervisor
/// (`replicas`, kept current by the tree), with ids "replica-0" ... for
/// `cfg.replicas + cfg.standbys` replicas; `node_of` (may be empty) names
/// the node a replica runs on.
child_spec router_spec(const serve_config& cfg, std::shared_ptr<model_source> source,
                       std::shared_ptr<router_handle> replicas,
                       std::shared_ptr<router_handle> self_handle,
                       std::shared_ptr<serving_metrics> metrics,
                       std::function<std::string(const caf::actor&)> node_of);

} // namespace understudy::serving::detail
