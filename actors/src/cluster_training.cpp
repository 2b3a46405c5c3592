#include "understudy/actors/cluster_training.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <utility>

#include <caf/actor_system_config.hpp>
#include <caf/make_message.hpp>

#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/training_component.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/node/node.hpp"
#include "understudy/process/process_host.hpp"

namespace understudy::actors {

namespace {

caf::error job_error(const node_config& nc, const job_config& j, const std::string& key,
                     const std::string& what) {
  return make_error(config_errc::invalid_job,
                    nc.origin + ":" + std::to_string(j.line_of(key)) + ": " + what);
}

const char* type_of(fault_target role) {
  switch (role) {
    case fault_target::shard:
      return "training.shard";
    case fault_target::loader:
      return "training.loader";
    default:
      return "training.worker";
  }
}

} // namespace

namespace {

/// What an isolated worker's process is told to host.
constexpr const char* isolated_worker = "training.worker";

std::string join_indices(const std::vector<size_t>& xs) {
  std::string out;
  for (auto x : xs)
    out += (out.empty() ? "" : ",") + std::to_string(x);
  return out;
}

std::vector<size_t> split_indices(const std::string& text) {
  std::vector<size_t> out;
  size_t pos = 0;
  while (pos < text.size()) {
    auto end = text.find(',', pos);
    if (end == std::string::npos)
      end = text.size();
    out.push_back(static_cast<size_t>(std::stoull(text.substr(pos, end - pos))));
    pos = end + 1;
  }
  return out;
}

/// The faults that fired in isolated workers' processes on this node, one
/// index per line: a process that crashed cannot say so otherwise.
std::vector<size_t> read_fault_log(const std::string& path) {
  std::vector<size_t> out;
  std::ifstream in{path};
  size_t i = 0;
  while (in >> i)
    out.push_back(i);
  return out;
}

/// Starts worker `index` in an OS process of its own (this program, hosting
/// it through host_isolated_training_actor) and returns the process's keeper.
caf::expected<caf::actor> start_isolated_worker(child_context& ctx, training_job& job,
                                                const std::string& config, const node_spec& node,
                                                size_t index) {
  auto log = (std::filesystem::path{node.state_dir} / "isolated-faults.log").string();
  for (auto i : read_fault_log(log))
    job.mark_fired(i);
  process_spec ps;
  ps.name = ctx.path + " (isolated, on " + node.name + ")";
  ps.role = {{"actor", isolated_worker},
             {"config", config},
             {"index", std::to_string(index)},
             {"id", ctx.id},
             {"path", ctx.path},
             {"incarnation", std::to_string(ctx.incarnation)},
             {"fired", join_indices(job.fired_faults())},
             {"fault_log", log},
             {"node", node.name}};
  ps.start_timeout = std::chrono::seconds(30);
  // A node with [cluster.security] talks to its workers' processes over
  // mutual TLS too (the child holds the node's own certificate): no other
  // local process can reach them.
  ps.tls = ctx.system.has_openssl_manager();
  return spawn_process_actor(ctx.system, ps);
}

} // namespace

std::optional<int> host_isolated_training_actor(
    const std::vector<std::shared_ptr<const node_component>>& components) {
  auto role = actor_host_role_from_env();
  if (!role || role->get("actor") != isolated_worker)
    return std::nullopt;
  auto fail = [](const std::string& what) {
    std::fprintf(stderr, "isolated worker: %s\n", what.c_str());
    return host_status::failed;
  };
  // As the node read it (with every section the node program knows): a file
  // without [cluster.security] whose launch made certificates uses them (its
  // node talks to this process over TLS then).
  auto nc = load_config(role->get("config"),
                        components.empty() ? node_components{training_component()} : components);
  if (!nc)
    return fail(describe(nc.error()));
  auto tc = make_training_config(*nc);
  if (!tc)
    return fail(describe(tc.error()));
  auto job = training_job::create_for_workers(std::move(*tc));
  if (!job)
    return fail(describe(job.error()));
  size_t index = 0;
  uint64_t incarnation = 1;
  try {
    index = static_cast<size_t>(std::stoull(role->get("index")));
    incarnation = std::stoull(role->get("incarnation", "1"));
    for (auto i : split_indices(role->get("fired")))
      job->mark_fired(i);
  } catch (const std::exception&) {
    return fail("bad role: index '" + role->get("index") + "', fired '" + role->get("fired") + "'");
  }
  // An injected crash crashes the whole process, as a native crash would;
  // the log tells the node that it fired, so that its successor goes on (and
  // does not hang or slow down again at the same step).
  job->on_fault([log = role->get("fault_log"), faults = job->config().faults](size_t i) {
    if (FILE* f = std::fopen(log.c_str(), "a")) {
      std::fprintf(f, "%zu\n", i);
      std::fclose(f);
    }
    // A hang, a slowdown or a loss is the actor's own (the node's trainer finds it).
    if (faults[i].kind != fault_kind::crash)
      return;
    std::fprintf(stderr, "isolated worker: injected fault %s: aborting the process\n",
                 to_string(faults[i]).c_str());
    std::abort();
  });
  auto id = role->get("id");
  auto path = role->get("path");
  auto node = role->get("node");
  if (nc->cluster.security)
    if (auto err = check_node_certificate(*nc, node))
      return fail(describe(err));
  return run_actor_host(
      *role,
      [&nc, &node](caf::actor_system_config& cfg) {
        // The node closes connections that stay silent past its deadline:
        // this process beats like a node, also while its worker waits.
        cfg.set("middleman.heartbeat-interval",
                caf::timespan{nc->cluster.failure_detection.heartbeat_interval});
        register_training_types(cfg);
        // Mutual TLS with the node when it has security (checked above).
        (void)prepare_hosted_process_tls(cfg, *nc, node);
      },
      [&](caf::actor_system& sys) -> caf::expected<caf::actor> {
        caf::message no_args;
        std::shared_ptr<event_sink> no_events;
        child_context ctx{sys, id, path, incarnation, no_args, child_token{}, no_events};
        return job->worker_spec(index).start(ctx);
      },
      [](const caf::error& reason) { return reason ? host_status::failed : 0; });
}

caf::expected<training_config> make_training_config(const node_config& nc) {
  const auto* jp = job_of(nc);
  if (jp == nullptr)
    return make_error(config_errc::missing_key, nc.origin + ": the config has no [job]");
  const auto& j = *jp;
  if (j.layers.size() < 2)
    return job_error(nc, j, "layers", "the model needs at least an input and an output layer");
  auto data = load_csv(j.data, csv_options{csv_options::last_column,
                                           static_cast<float>(j.data_scale), j.layers.back()});
  if (!data)
    return job_error(nc, j, "data", describe(data.error()));
  auto [train, test] = split(*data, j.test_fraction, j.training.seed);
  training_config tc = j.training;
  // In a cluster of several nodes a whole node's pause is the failure
  // detector's to judge (by its deadline), not a hang: unless [job] sets
  // hang_floor, the step deadline starts past the detector's.
  if (nc.nodes.size() > 1 && j.lines.count("hang_floor") == 0) {
    const auto& fd = nc.cluster.failure_detection;
    auto past = std::chrono::duration_cast<std::chrono::milliseconds>(fd.deadline +
                                                                      2 * fd.heartbeat_interval);
    tc.hang_floor = std::max(tc.hang_floor, past);
    tc.hang_ceiling = std::max(tc.hang_ceiling, tc.hang_floor);
  }
  tc.net = std::make_shared<mlp>(j.layers);
  tc.train = std::make_shared<dataset>(std::move(train));
  tc.test = std::make_shared<dataset>(std::move(test));
  if (auto err = validate(tc))
    return job_error(nc, j, "", describe(err));
  return tc;
}

namespace {

const tree_child* find_job_child(const tree_child& c) {
  if (c.type == "training_job")
    return &c;
  for (const auto& k : c.children)
    if (const auto* f = find_job_child(k))
      return f;
  return nullptr;
}

} // namespace

std::vector<std::string> leader_candidates(const node_config& nc) {
  // The trainer's placement; a trainer that goes with its supervisor (the
  // default) goes where the job's tree child may, or the root.
  const auto* j = job_of(nc);
  const placement_spec* p = j != nullptr ? &j->trainer_placement : nullptr;
  if (p == nullptr || p->policy == placement_policy::inherit) {
    const auto* job = find_job_child(nc.tree);
    p = job != nullptr && job->placement.policy != placement_policy::inherit ? &job->placement
                                                                             : &nc.tree.placement;
  }
  return nc.preferred_nodes(*p);
}

struct cluster_training::worker_nodes {
  std::mutex mtx;
  std::vector<std::string> at;
  /// Where each worker last started ("" parked), for the log.
  std::vector<std::string> last;
  /// Workers restarted as stragglers: their next start avoids this node
  /// while another is free.
  std::vector<std::string> avoid;

  /// A live node for worker `index` that runs no other worker of the job:
  /// where it runs now, else its home, its failover nodes, any node; "" if none.
  /// With `claim`, it becomes the worker's node at once (none: it is parked).
  std::string pick(const cluster_node& node, const placement_spec& p, size_t index,
                   bool claim = false) {
    std::vector<std::string> alive{node.self().name};
    for (const auto& peer : node.peers())
      if (peer.state == peer_state::alive)
        alive.push_back(peer.name);
    std::vector<std::string> order;
    std::lock_guard<std::mutex> guard{mtx};
    if (!at[index].empty())
      order.push_back(at[index]);
    if (index < p.start.size())
      order.push_back(p.start[index]);
    order.insert(order.end(), p.failover.begin(), p.failover.end());
    for (const auto& n : node.config().nodes)
      order.push_back(n.name);
    // A straggler's node goes last: another free node first.
    if (index < avoid.size() && !avoid[index].empty()) {
      auto slow = std::find(order.begin(), order.end(), avoid[index]);
      while (slow != order.end()) {
        order.erase(slow);
        slow = std::find(order.begin(), order.end(), avoid[index]);
      }
      order.push_back(avoid[index]);
      if (claim)
        avoid[index].clear();
    }
    for (const auto& name : order) {
      if (std::find(alive.begin(), alive.end(), name) == alive.end())
        continue;
      bool taken = false;
      for (size_t j = 0; j < at.size() && !taken; ++j)
        taken = j != index && at[j] == name;
      if (!taken) {
        if (claim)
          at[index] = name;
        return name;
      }
    }
    if (claim)
      at[index].clear();
    return {};
  }

  /// Worker `index` is restarted as a straggler: its next start goes to
  /// another free node where there is one.
  void straggler(size_t index) {
    std::lock_guard<std::mutex> guard{mtx};
    if (index < at.size())
      avoid[index] = at[index];
  }

  /// Worker `index` started on `name` ("": parked; none: the start failed);
  /// returns what to log ("" for a start where it ran before).
  std::string started(const std::string& path, size_t index, std::optional<std::string> name) {
    std::lock_guard<std::mutex> guard{mtx};
    if (!name) {
      at[index].clear();
      return {};
    }
    auto before = std::exchange(last[index], *name);
    if (name->empty())
      return path +
             " parked: no live node is free of the job's workers; the job goes on "
             "without it";
    if (before == *name)
      return {};
    return path + (before.empty() ? " starts on " : " moved from " + before + " to ") + *name;
  }
};

cluster_training::cluster_training(cluster_node& node, const node_config& nc, training_job job)
    : node_(node),
      placements_{job_of(nc)->shard_placement, job_of(nc)->loader_placement,
                  job_of(nc)->worker_placement},
      job_(std::move(job)),
      candidates_(leader_candidates(nc)),
      worker_nodes_(std::make_shared<worker_nodes>()) {
  node.set_leader_candidates(candidates_);
  // Elastic workers run one per node: a straggler moves to a free one.
  job_.on_straggler([nodes = worker_nodes_](size_t w) { nodes->straggler(w); });
}

caf::expected<std::unique_ptr<cluster_training>> cluster_training::create(cluster_node& node,
                                                                          const node_config& nc) {
  auto tc = make_training_config(nc);
  if (!tc)
    return tc.error();
  auto job = training_job::create(std::move(*tc), node.state_store());
  if (!job)
    return job.error();
  // The shards' and loaders' records are on several nodes: no local reshard.
  job->reshard_on_resume(false);
  std::unique_ptr<cluster_training> ct{new cluster_training(node, nc, std::move(*job))};
  // Peers start this node's share of the actors through these.
  const bool isolate_workers = job_of(nc)->worker_placement.process == process_mode::isolated;
  for (auto role : {fault_target::shard, fault_target::loader, fault_target::worker}) {
    auto* self = ct.get();
    node.add_factory(
        type_of(role),
        [self, role, isolate_workers, config = nc.origin](
            child_context& ctx, const caf::message& args) -> caf::expected<caf::actor> {
          if (args.size() != 1 || !args.match_element<uint64_t>(0))
            return make_error(config_errc::invalid_value, "bad arguments for " + ctx.path);
          auto index = args.get_as<uint64_t>(0);
          auto& job = self->job_;
          const auto& tc = job.config();
          const size_t count = role == fault_target::shard    ? tc.shards
                               : role == fault_target::loader ? tc.loaders
                                                              : tc.workers;
          if (index >= count)
            return make_error(cluster_errc::malformed_message,
                              std::string{"spawn of "} + type_of(role) + " " +
                                  std::to_string(index) + " for " + ctx.path +
                                  " refused: the job has " + std::to_string(count) +
                                  " (indices 0 to " + std::to_string(count - 1) + ")");
          if (role == fault_target::worker && isolate_workers)
            return start_isolated_worker(ctx, job, config, self->node_.self(), index);
          child_spec local = role == fault_target::shard    ? job.shard_spec(index)
                             : role == fault_target::loader ? job.loader_spec(index)
                                                            : job.worker_spec(index);
          return local.start(ctx);
        });
  }
  return ct;
}

supervisor_spec cluster_training::spec(std::shared_ptr<event_sink> events, std::string name) const {
  auto* node = &node_;
  const auto& pl = placements_;
  const auto& tc = job_.config();
  const bool elastic = tc.min_workers > 0 && tc.min_workers < tc.workers;
  auto nodes = worker_nodes_;
  {
    std::lock_guard<std::mutex> guard{nodes->mtx};
    nodes->at.assign(tc.workers, std::string{});
    nodes->last = nodes->at;
    nodes->avoid = nodes->at;
  }
  auto placer = [node, &pl, elastic, nodes](fault_target role, size_t index, child_spec local) {
    const auto& p = role == fault_target::shard    ? pl.shard
                    : role == fault_target::loader ? pl.loader
                                                   : pl.worker;
    if (role == fault_target::worker && elastic) {
      // One worker per node: to a free live node, or parked until there is one.
      local.start = {};
      local.start_async = [node, &p, nodes, index](child_context& ctx, start_callback done) {
        auto log = [nodes, index, path = ctx.path](std::optional<std::string> name) {
          auto line = nodes->started(path, index, std::move(name));
          if (!line.empty())
            std::fprintf(stderr, "job: %s\n", line.c_str());
        };
        auto target = nodes->pick(*node, p, index, true);
        if (target.empty()) {
          log(std::string{});
          auto free = [node, &p, nodes, index] { return !nodes->pick(*node, p, index).empty(); };
          done(spawn_parked_worker(ctx.system, index, free, std::chrono::milliseconds(250)));
          return;
        }
        auto start =
            node->placed(type_of(fault_target::worker),
                         caf::make_message(static_cast<uint64_t>(index)), target, {}, false);
        start(ctx, [log, target, done](caf::expected<caf::actor> r) {
          log(r ? std::optional<std::string>{target} : std::nullopt);
          done(std::move(r));
        });
      };
      return local;
    }
    auto home = index < p.start.size() ? p.start[index] : node->self().name;
    // Workers keep no state: they move without copying any.
    local.start = {};
    local.start_async = node->placed(type_of(role), caf::make_message(static_cast<uint64_t>(index)),
                                     home, p.failover, role != fault_target::worker);
    return local;
  };
  return job_.spec(std::move(name), std::move(events), placer);
}

} // namespace understudy::actors
