#include "understudy/actors/cluster_training.hpp"

#include <algorithm>

#include <caf/make_message.hpp>

#include "understudy/actors/mlp.hpp"
#include "understudy/runtime/errors.hpp"

namespace understudy {

namespace {

caf::error job_error(const node_config& nc, const std::string& key, const std::string& what) {
  return make_error(config_errc::invalid_job,
                    nc.origin + ":" + std::to_string(nc.job->line_of(key)) + ": " + what);
}

role_policy policy_of(const job_role_spec& r) {
  return role_policy{r.strategy, r.intensity, r.backoff};
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

std::optional<job_problem> check_training_job(const job_spec& j) {
  auto faults = parse_faults(j.faults, j.workers, j.shards, j.loaders, j.steps, j.seed);
  if (!faults)
    return job_problem{"faults", describe(faults.error())};
  return std::nullopt;
}

caf::expected<training_config> make_training_config(const node_config& nc) {
  if (!nc.job)
    return make_error(config_errc::missing_key, nc.origin + ": the config has no [job]");
  const auto& j = *nc.job;
  if (j.layers.size() < 2)
    return job_error(nc, "layers", "the model needs at least an input and an output layer");
  auto data = load_csv(j.data, csv_options{csv_options::last_column,
                                           static_cast<float>(j.data_scale), j.layers.back()});
  if (!data)
    return job_error(nc, "data", describe(data.error()));
  auto [train, test] = split(*data, j.test_fraction, j.seed);
  training_config tc;
  tc.net = std::make_shared<mlp>(j.layers);
  tc.train = std::make_shared<dataset>(std::move(train));
  tc.test = std::make_shared<dataset>(std::move(test));
  tc.workers = j.workers;
  tc.shards = j.shards;
  tc.loaders = j.loaders;
  tc.batch = j.batch;
  tc.steps = j.steps;
  tc.seed = j.seed;
  tc.checkpoint_every = j.checkpoint_every;
  tc.eval_every = j.eval_every;
  tc.prefetch = j.prefetch;
  auto kind = parse_optimizer_kind(j.optimizer);
  if (!kind)
    return job_error(nc, "optimizer", describe(kind.error()));
  tc.optimizer.kind = *kind;
  tc.optimizer.lr = static_cast<float>(j.lr);
  tc.optimizer.momentum = static_cast<float>(j.momentum);
  tc.optimizer.beta1 = static_cast<float>(j.beta1);
  tc.optimizer.beta2 = static_cast<float>(j.beta2);
  tc.optimizer.epsilon = static_cast<float>(j.epsilon);
  tc.optimizer.weight_decay = static_cast<float>(j.weight_decay);
  auto faults = parse_faults(j.faults, j.workers, j.shards, j.loaders, j.steps, j.seed);
  if (!faults)
    return job_error(nc, "faults", describe(faults.error()));
  tc.faults = *faults;
  tc.worker_policy = policy_of(j.worker);
  tc.shard_policy = policy_of(j.shard);
  tc.loader_policy = policy_of(j.loader);
  tc.trainer_policy = policy_of(j.trainer);
  if (auto err = validate(tc))
    return job_error(nc, "", describe(err));
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
  const placement_spec* p = nc.job ? &nc.job->trainer.placement : nullptr;
  if (p == nullptr || p->policy == placement_policy::inherit) {
    const auto* job = find_job_child(nc.tree);
    p = job != nullptr && job->placement.policy != placement_policy::inherit ? &job->placement
                                                                             : &nc.tree.placement;
  }
  std::vector<std::string> out;
  auto add = [&](const std::string& n) {
    if (!n.empty() && std::find(out.begin(), out.end(), n) == out.end())
      out.push_back(n);
  };
  for (const auto& n : p->start)
    add(n);
  for (const auto& n : p->failover)
    add(n);
  if (out.empty())
    for (const auto& n : nc.nodes)
      if (n.role == node_role::active) {
        add(n.name);
        break;
      }
  return out;
}

cluster_training::cluster_training(cluster_node& node, const node_config& nc, training_job job)
    : node_(node), spec_(*nc.job), job_(std::move(job)), candidates_(leader_candidates(nc)) {
  node.set_leader_candidates(candidates_);
}

caf::expected<std::unique_ptr<cluster_training>> cluster_training::create(cluster_node& node,
                                                                          const node_config& nc) {
  auto tc = make_training_config(nc);
  if (!tc)
    return tc.error();
  auto job = training_job::create(std::move(*tc), node.state_store());
  if (!job)
    return job.error();
  std::unique_ptr<cluster_training> ct{new cluster_training(node, nc, std::move(*job))};
  // Peers start this node's share of the actors through these.
  for (auto role : {fault_target::shard, fault_target::loader, fault_target::worker}) {
    auto* self = ct.get();
    node.add_factory(
        type_of(role),
        [self, role](child_context& ctx, const caf::message& args) -> caf::expected<caf::actor> {
          if (args.size() != 1 || !args.match_element<uint64_t>(0))
            return make_error(config_errc::invalid_value, "bad arguments for " + ctx.path);
          auto index = static_cast<size_t>(args.get_as<uint64_t>(0));
          auto& job = self->job_;
          child_spec local = role == fault_target::shard    ? job.shard_spec(index)
                             : role == fault_target::loader ? job.loader_spec(index)
                                                            : job.worker_spec(index);
          return local.start(ctx);
        });
  }
  return ct;
}

supervisor_spec cluster_training::spec(std::shared_ptr<event_sink> events) const {
  auto* node = &node_;
  const auto& j = spec_;
  auto placer = [node, &j](fault_target role, size_t index, child_spec local) {
    const auto& p = role == fault_target::shard    ? j.shard.placement
                    : role == fault_target::loader ? j.loader.placement
                                                   : j.worker.placement;
    auto home = index < p.start.size() ? p.start[index] : node->self().name;
    local.start =
        node->placed(type_of(role), caf::make_message(static_cast<uint64_t>(index)), home);
    return local;
  };
  return job_.spec("job", std::move(events), placer);
}

} // namespace understudy
