#pragma once

// Serving in a cluster: the [serve] section of the node config file and the
// serving component of a node program.
//
//   [serve]
//   model = "digits"                 # the name in the API
//   layers = [64, 128, 10]           # the model's shape (an MLP, as [job] names it)
//   state_dir = "path"               # a training job's state directory to serve from
//                                    # (none: the file's own [job], gathered from the nodes)
//   job = "/digits_mlp"              # the job's path in it (default: /digits_mlp, or the
//                                    # path of the file's training job)
//   replicas = 2                     # per serving node, in rotation
//   standbys = 1                     # per serving node
//   port = 8080                      # the serving nodes' HTTP ports: port, port + 1, ...
//   nodes = ["n1", "n2"]             # the serving nodes (default: every active node)
//   replica_placement = "spread"     # or "local"
//   policy, max_batch, max_outstanding, max_attempts, request_timeout, watch_interval
//
// Each serving node runs a serving tree of its own (router, replicas,
// standbys) under a supervisor of its own, and an HTTP front end on its host at
// its port; clients may use any of them, so a node's death leaves the others
// serving. With "spread" placement a router's replicas run across the serving
// nodes (replica j of the i-th serving node's router on serving node i + j,
// cyclically), started there through the cluster (cluster_node::placed): a
// node's death moves the replicas it ran for the other routers to the next
// live serving nodes, as any placed child moves; "local" keeps each router's
// replicas beside it.
//
// Threads: as serving_tree and front_end. Errors: config_errc in the section.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "understudy/config/config_section.hpp"
#include "understudy/node/node.hpp"
#include "understudy/serving/service.hpp"

namespace understudy::serving {

/// The parse of [serve].
struct serve_section_config {
  serve_config serve;
  std::vector<size_t> layers;
  std::string state_dir;
  /// The job's path ("": /digits_mlp in a state directory, else the
  /// cluster's own training job).
  std::string job;
  uint16_t port = 8080;
  /// The serving nodes, in order (node i serves on port + i).
  std::vector<std::string> nodes;
  /// Each router's replicas across the serving nodes (false: beside it).
  bool spread = true;
  /// The lines of the keys, for messages.
  int line = 0;
};

/// The [serve] section for node_config_options.
config_section serve_section();

/// The [serve] section of `nc`, or null.
const serve_section_config* serve_of(const node_config& nc);

/// The serving component: [serve] in the config; on each serving node a
/// serving tree and its front end; the node's status shows them.
std::shared_ptr<const node_component> serving_component();

} // namespace understudy::serving
