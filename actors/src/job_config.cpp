#include "understudy/actors/job_config.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "understudy/actors/snapshot_shipping.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::actors {

int job_config::line_of(const std::string& key) const {
  if (auto i = lines.find(key); i != lines.end())
    return i->second;
  if (auto i = lines.find(""); i != lines.end())
    return i->second;
  return 1;
}

namespace {

const char* const role_names[] = {"shard", "loader", "worker", "trainer"};

struct role_ref {
  role_policy* policy;
  placement_spec* placement;
};

role_ref role_of(job_config& j, const std::string& role) {
  auto& tc = j.training;
  if (role == "shard")
    return {&tc.shard_policy, &j.shard_placement};
  if (role == "loader")
    return {&tc.loader_policy, &j.loader_placement};
  if (role == "worker")
    return {&tc.worker_policy, &j.worker_placement};
  return {&tc.trainer_policy, &j.trainer_placement};
}

void parse_role(config_table& job, const std::string& role, job_config& j) {
  auto [policy, placement] = role_of(j, role);
  placement->policy = role == "trainer" ? placement_policy::inherit : placement_policy::spread;
  auto r = job.sub_table(role, "[job." + role + "]", "job.<role>");
  if (!r || r->failed())
    return;
  j.lines[role] = r->line();
  for (const auto& [key, line] : r->keys_in_order())
    j.lines[role + "." + key] = line;
  policy->strategy = r->strategy("strategy").value_or(policy->strategy);
  if (policy->strategy == restart_strategy::simple_one_for_one) {
    r->fail(config_errc::invalid_value, r->line_of("strategy"),
            "'strategy' in [job." + role +
                "] cannot be simple_one_for_one: a job role has static children");
    return;
  }
  policy->intensity = r->intensity(policy->intensity);
  policy->backoff = r->backoff();
  for (const char* key : {"hang_floor", "hang_ceiling"}) {
    if (!r->has(key))
      continue;
    if (role == "trainer") {
      r->fail(config_errc::invalid_value, r->line_of(key),
              std::string{"'"} + key +
                  "' in [job.trainer]: the trainer's own deadline is [job] hang_ceiling; "
                  "a role's bounds are for shards, loaders and workers");
      return;
    }
    if (auto x = r->duration(key, true))
      (std::string{key} == "hang_floor" ? policy->hang_floor : policy->hang_ceiling) =
          std::chrono::duration_cast<std::chrono::milliseconds>(*x);
  }
  if (auto [key, err] = check_liveness(j.training); err) {
    std::string k = key;
    if (k.rfind(role + ".", 0) == 0) {
      r->fail(config_errc::invalid_job, r->line_of(k.substr(role.size() + 1)), describe(err));
      return;
    }
  }
  *placement = r->placement("[job." + role + "]", placement->policy);
}

void check_counts(config_table& r, const job_config& j) {
  const auto& tc = j.training;
  size_t params = 0;
  for (size_t l = 0; l + 1 < j.layers.size(); ++l)
    params += j.layers[l] * j.layers[l + 1] + j.layers[l + 1];
  if (tc.shards > params)
    r.fail(config_errc::invalid_job, r.line_of("shards"),
           "'shards' in [job] is " + std::to_string(tc.shards) + ", but the model has only " +
               std::to_string(params) + " parameters (at least one per shard)");
  else if (tc.batch % tc.micro_batches != 0)
    r.fail(config_errc::invalid_job, r.line_of(r.has("micro_batches") ? "micro_batches" : "batch"),
           "'micro_batches' in [job] is " + std::to_string(tc.micro_batches) +
               ", which does not divide the batch of " + std::to_string(tc.batch) +
               " into equal micro-batches");
  else if (tc.min_workers > tc.workers)
    r.fail(config_errc::invalid_job, r.line_of("min_workers"),
           "'min_workers' in [job] is " + std::to_string(tc.min_workers) + ", more than the " +
               std::to_string(tc.workers) + " workers");
  else
    for (auto [key, n] : {std::pair{"workers", tc.workers}, std::pair{"loaders", tc.loaders}})
      if (n > tc.micro_batches) {
        r.fail(config_errc::invalid_job, r.line_of(key),
               "'" + std::string{key} + "' in [job] is " + std::to_string(n) + ", more than the " +
                   std::to_string(tc.micro_batches) + " micro-batches (each " +
                   std::string{key == std::string{"workers"} ? "computes" : "serves"} +
                   " at least one per step)");
        break;
      }
}

caf::expected<std::any> parse_job(config_table& r) {
  job_config j;
  auto& tc = j.training;
  j.lines[""] = r.line();
  for (const auto& [key, line] : r.keys_in_order())
    j.lines[key] = line;
  constexpr int64_t max_i64 = std::numeric_limits<int64_t>::max();
  for (const char* key : {"workers", "shards", "loaders"}) {
    if (r.is_table(key)) {
      std::string role{key, std::strlen(key) - 1};
      r.fail(config_errc::wrong_type, r.line_of(key),
             "'" + std::string{key} + "' in [job] is the number of " + key +
                 "; the role's own table is [job." + role + "]");
      return std::any{};
    }
  }
  if (auto m = r.str("model")) {
    if (*m != "mlp")
      r.bad_name("model", *m, {"mlp"});
    j.model = *m;
  }
  if (auto layers = r.int_list("layers", 1, 65536, true)) {
    if (layers->size() < 2)
      r.fail(config_errc::invalid_job, r.line_of("layers"),
             "'layers' in [job] needs at least two sizes: inputs and classes");
    for (auto x : *layers)
      j.layers.push_back(static_cast<size_t>(x));
  }
  j.data = r.str("data", true).value_or("");
  if (auto x = r.real("data_scale")) {
    if (*x <= 0)
      r.fail(config_errc::invalid_job, r.line_of("data_scale"),
             "'data_scale' in [job] must be above 0");
    j.data_scale = *x;
  }
  if (auto x = r.real("test_fraction")) {
    if (*x <= 0 || *x >= 1)
      r.fail(config_errc::invalid_job, r.line_of("test_fraction"),
             "'test_fraction' in [job] must be above 0 and below 1 (the job evaluates on "
             "held-out data)");
    j.test_fraction = *x;
  }
  auto count = [&](const char* key, size_t& out, int64_t lo, int64_t hi) {
    if (auto x = r.integer(key, lo, hi))
      out = static_cast<size_t>(*x);
  };
  auto count64 = [&](const char* key, uint64_t& out, int64_t lo) {
    if (auto x = r.integer(key, lo, max_i64))
      out = static_cast<uint64_t>(*x);
  };
  count("workers", tc.workers, 1, 1024);
  count("shards", tc.shards, 1, 1024);
  count("loaders", tc.loaders, 1, 1024);
  count("batch", tc.batch, 1, 1 << 20);
  count("micro_batches", tc.micro_batches, 1, 4096);
  count("min_workers", tc.min_workers, 0, 1024);
  count64("steps", tc.steps, 1);
  count64("seed", tc.seed, 0);
  count64("checkpoint_every", tc.checkpoint_every, 1);
  count64("eval_every", tc.eval_every, 0);
  count("prefetch", tc.prefetch, 0, 64);
  if (auto o = r.str("optimizer")) {
    if (auto kind = parse_optimizer_kind(*o))
      tc.optimizer.kind = *kind;
    else
      r.bad_name("optimizer", *o, {"sgd", "momentum", "adam"});
  }
  auto hyper = [&](const char* key, float& out, double lo, bool lo_open, double hi, bool hi_open,
                   const char* range) {
    auto x = r.real(key);
    if (!x)
      return;
    bool ok = (lo_open ? *x > lo : *x >= lo) && (hi_open ? *x < hi : *x <= hi);
    if (!ok)
      r.fail(config_errc::invalid_job, r.line_of(key),
             "'" + std::string{key} + "' in [job] must be " + range);
    out = static_cast<float>(*x);
  };
  const double inf = std::numeric_limits<double>::infinity();
  auto& oc = tc.optimizer;
  hyper("lr", oc.lr, 0, true, inf, false, "above 0");
  hyper("momentum", oc.momentum, 0, false, 1, true, "at least 0 and below 1");
  hyper("beta1", oc.beta1, 0, false, 1, true, "at least 0 and below 1");
  hyper("beta2", oc.beta2, 0, false, 1, true, "at least 0 and below 1");
  hyper("epsilon", oc.epsilon, 0, true, inf, false, "above 0");
  hyper("weight_decay", oc.weight_decay, 0, false, inf, false, "at least 0");
  j.faults = r.str("faults", false, true).value_or("");
  // Step deadlines (training_config::hang_floor); checked together by validate().
  auto millis = [](caf::timespan t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t);
  };
  if (auto x = r.duration("hang_floor", true))
    tc.hang_floor = millis(*x);
  if (auto x = r.duration("hang_ceiling", true))
    tc.hang_ceiling = millis(*x);
  if (auto x = r.real("hang_factor"))
    tc.hang_factor = *x;
  if (auto x = r.real("straggler_ratio"))
    tc.straggler_ratio = *x;
  count64("straggler_steps", tc.straggler_steps, 1);
  if (auto x = r.duration("straggler_lag", false))
    tc.straggler_lag = millis(*x);
  if (auto [key, err] = check_liveness(tc); err)
    r.fail(config_errc::invalid_job, r.line_of(key), describe(err));
  if (r.failed())
    return std::any{};
  check_counts(r, j);
  for (const char* role : role_names)
    parse_role(r, role, j);
  return std::any{std::move(j)};
}

void place_job(std::any& value, config_context& ctx, const std::string& node) {
  auto& j = std::any_cast<job_config&>(value);
  const auto& tc = j.training;
  const size_t instances[] = {tc.shards, tc.loaders, tc.workers, 1};
  for (size_t i = 0; i < 4; ++i) {
    std::string role = role_names[i];
    int line = j.line_of(role);
    for (const char* key : {".gpus", ".placement"})
      if (auto it = j.lines.find(role + key); it != j.lines.end())
        line = it->second;
    ctx.place(*role_of(j, role).placement, node, instances[i], 0, "[job." + role + "]", line);
    if (ctx.failed())
      return;
  }
}

void check_job(std::any& value, config_context& ctx) {
  auto& j = std::any_cast<job_config&>(value);
  auto& tc = j.training;
  auto faults = parse_faults(j.faults, tc.workers, tc.shards, tc.loaders, tc.steps, tc.seed);
  if (!faults) {
    ctx.fail(config_errc::invalid_job, j.line_of("faults"), describe(faults.error()));
    return;
  }
  tc.faults = std::move(*faults);
  // Shards, loaders and the trainer write the node's state store, which only
  // the node's process opens.
  for (auto [key, p] :
       {std::pair{"shard", &j.shard_placement}, std::pair{"loader", &j.loader_placement},
        std::pair{"trainer", &j.trainer_placement}})
    if (p->process == process_mode::isolated) {
      ctx.fail(config_errc::invalid_job, j.line_of(key),
               std::string{"[job."} + key +
                   "] process = \"isolated\" is not supported: its actors write the node's "
                   "state store, which only the node's process opens; isolate workers "
                   "([job.worker])");
      return;
    }
}

std::vector<config_key> job_keys() {
  std::vector<config_key> keys;
  auto add = [&keys](const char* section,
                     std::initializer_list<std::pair<const char*, const char*>> entries) {
    for (const auto& [name, type] : entries)
      keys.push_back(config_key{section, name, type});
  };
  add("job", {{"model", "string"},
              {"layers", "integer list"},
              {"data", "string"},
              {"data_scale", "float"},
              {"test_fraction", "float"},
              {"workers", "integer"},
              {"shards", "integer"},
              {"loaders", "integer"},
              {"batch", "integer"},
              {"micro_batches", "integer"},
              {"min_workers", "integer"},
              {"steps", "integer"},
              {"seed", "integer"},
              {"checkpoint_every", "integer"},
              {"eval_every", "integer"},
              {"prefetch", "integer"},
              {"optimizer", "string"},
              {"lr", "float"},
              {"momentum", "float"},
              {"beta1", "float"},
              {"beta2", "float"},
              {"epsilon", "float"},
              {"weight_decay", "float"},
              {"faults", "string"},
              {"hang_floor", "duration"},
              {"hang_ceiling", "duration"},
              {"hang_factor", "float"},
              {"straggler_ratio", "float"},
              {"straggler_steps", "integer"},
              {"straggler_lag", "duration"},
              {"worker", "table"},
              {"shard", "table"},
              {"loader", "table"},
              {"trainer", "table"}});
  add("job.<role>", {{"strategy", "string"},
                     {"intensity", "table"},
                     {"backoff", "table"},
                     {"placement", "placement"},
                     {"process", "string"},
                     {"gpus", "integer"},
                     {"hang_floor", "duration"},
                     {"hang_ceiling", "duration"}});
  return keys;
}

} // namespace

config_section job_section() {
  config_section s;
  s.name = "job";
  s.keys = job_keys();
  s.parse = parse_job;
  s.child_type = "training_job";
  s.child_restart = restart_type::transient;
  s.place = place_job;
  s.check = check_job;
  return s;
}

namespace {

std::string job_path_in(const tree_child& t) {
  if (t.type == "training_job")
    return t.path;
  for (const auto& c : t.children)
    if (auto p = job_path_in(c); !p.empty())
      return p;
  return {};
}

} // namespace

std::string training_job_path(const node_config& nc) {
  return job_path_in(nc.tree);
}

node_config_options job_config_options() {
  node_config_options opts;
  opts.sections.push_back(job_section());
  opts.sections.push_back(snapshots_section());
  return opts;
}

const job_config* job_of(const node_config& nc) {
  return nc.section<job_config>("job");
}

job_config* job_of(node_config& nc) {
  return nc.section<job_config>("job");
}

} // namespace understudy::actors
