// Node config files: the example cluster, a table of bad files with their
// errors (file and line), placement resolution, and docs/config.md in step
// with the keys the parser knows.

#include "understudy/runtime/node_config.hpp"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/dataset.hpp"
#include "understudy/actors/mlp.hpp"
#include "understudy/actors/optimizer.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/runtime/errors.hpp"

using namespace understudy;
using namespace std::chrono_literals;

namespace {

/// The repository root, from the digits data path the build passes in.
std::filesystem::path project_root() {
  return std::filesystem::path{UNDERSTUDY_DIGITS_PATH}.parent_path().parent_path().parent_path();
}

std::string example_path() {
  return (project_root() / "examples" / "cluster" / "local.toml").string();
}

/// The context of a config error (`FILE:LINE: problem`).
std::string message_of(const caf::error& err) {
  const auto& ctx = err.context();
  if (ctx.size() == 1 && ctx.match_element<std::string>(0))
    return ctx.get_as<std::string>(0);
  return describe(err);
}

/// Joins lines with newlines (each line of a case is one line of the file).
std::string lines(std::initializer_list<const char*> xs) {
  std::string out;
  for (const auto* x : xs) {
    out += x;
    out += '\n';
  }
  return out;
}

/// Lines 1-8 of most cases: a cluster of one loopback node.
const std::string base = lines({
    "[cluster]",            // 1
    "name = \"t\"",         // 2
    "",                     // 3
    "[[node]]",             // 4
    "name = \"a\"",         // 5
    "host = \"127.0.0.1\"", // 6
    "port = 7001",          // 7
    "state_dir = \"s/a\"",  // 8
});

/// A second loopback node, "b", as lines 9-13 after `base`.
const std::string node_b = lines({
    "[[node]]",             // 9
    "name = \"b\"",         // 10
    "host = \"127.0.0.1\"", // 11
    "port = 7002",          // 12
    "state_dir = \"s/b\"",  // 13
});

/// A minimal job, as three lines.
const std::string job = lines({"[job]", "layers = [4, 3]", "data = \"d.csv\""});

/// The check the launcher makes with the training component: the fault spec
/// as parse_faults reads it.
std::optional<job_problem> check_with_training(const job_spec& j) {
  auto faults = parse_faults(j.faults, j.workers, j.shards, j.loaders, j.steps, j.seed);
  if (!faults)
    return job_problem{"faults", message_of(faults.error())};
  return std::nullopt;
}

struct bad_case {
  const char* what;
  std::string text;
  config_errc code;
  const char* expected;
};

} // namespace

TEST_CASE("the example cluster config parses into three nodes, a spare, the tree and the job",
          "[config]") {
  auto cfg = load_node_config(example_path());
  REQUIRE(cfg);
  CHECK(cfg->origin == example_path());
  CHECK(cfg->cluster.name == "local");
  CHECK_FALSE(cfg->cluster.security);
  REQUIRE(cfg->nodes.size() == 4);
  const char* names[] = {"n1", "n2", "n3", "s1"};
  for (size_t i = 0; i < 4; ++i) {
    const auto& n = cfg->nodes[i];
    CHECK(n.name == names[i]);
    CHECK(n.host == "127.0.0.1");
    CHECK(n.port == 4711 + i);
    CHECK(n.state_dir == std::string{".understudy/local/"} + names[i]);
    CHECK(n.metrics_port == 9470 + i);
    CHECK(n.gpus.empty());
    CHECK(n.role == (i < 3 ? node_role::active : node_role::spare));
    CHECK(n.buddy == names[(i + 1) % 4]);
    CHECK(n.cert.empty());
  }
  CHECK(cfg->cluster.metrics.enabled);
  const auto& fd = cfg->cluster.failure_detection;
  CHECK(fd.heartbeat_interval == caf::timespan{100ms});
  CHECK(fd.phi_threshold == 8.0);
  CHECK(fd.deadline == caf::timespan{1s});
  CHECK(fd.connection_timeout == caf::timespan{2s});
  // Without security the node says so in its log.
  bool loopback_note = false;
  for (const auto& note : cfg->notes)
    loopback_note |= note.find("allowed on loopback only") != std::string::npos;
  CHECK(loopback_note);
  // The tree.
  const auto& root = cfg->tree;
  CHECK(root.name == "root");
  CHECK(root.path == "/root");
  CHECK(root.is_supervisor());
  CHECK(root.strategy == restart_strategy::one_for_one);
  CHECK(root.intensity.max_restarts == 5);
  CHECK(root.intensity.period == caf::timespan{30s});
  CHECK(root.placement.policy == placement_policy::any);
  CHECK(root.placement.start == std::vector<std::string>{"n1"});
  CHECK(root.placement.failover == std::vector<std::string>{"s1", "n1", "n2", "n3"});
  REQUIRE(root.children.size() == 1);
  const auto& jc = root.children[0];
  CHECK(jc.path == "/root/job");
  CHECK(jc.type == "training_job");
  CHECK(jc.restart == restart_type::transient);
  CHECK(jc.shutdown.mode == shutdown_mode::infinity);
  // The job.
  REQUIRE(cfg->job);
  const auto& j = *cfg->job;
  CHECK(j.model == "mlp");
  CHECK(j.layers == std::vector<size_t>{64, 128, 10});
  CHECK(j.data == "examples/data/digits.csv.gz");
  CHECK(j.workers == 3);
  CHECK(j.shards == 3);
  CHECK(j.loaders == 3);
  CHECK(j.batch == 32);
  CHECK(j.steps == 3000);
  CHECK(j.seed == 1);
  CHECK(j.checkpoint_every == 5);
  CHECK(j.optimizer == "sgd");
  CHECK(j.lr == Approx(0.1));
  CHECK(j.faults == "worker:1@500,shard:0@1500");
  auto spread = std::vector<std::string>{"n1", "n2", "n3"};
  CHECK(j.shard.placement.policy == placement_policy::spread);
  CHECK(j.shard.placement.start == spread);
  CHECK(j.loader.placement.start == spread);
  CHECK(j.worker.placement.start == spread);
  CHECK(j.worker.placement.failover == std::vector<std::string>{"s1", "n1", "n2", "n3"});
  CHECK(j.worker.backoff.min == caf::timespan{10ms});
  CHECK(j.worker.backoff.max == caf::timespan{500ms});
  CHECK(j.worker.backoff.jitter == Approx(0.1));
  CHECK(j.worker.intensity.max_restarts == 20);
  CHECK(j.trainer.placement.policy == placement_policy::nodes);
  CHECK(j.trainer.placement.start == std::vector<std::string>{"n1"});
  CHECK(j.trainer.placement.failover == spread);
  CHECK(j.line_of("workers") > j.line_of(""));
}

TEST_CASE("the example job is a valid training_config for the training component", "[config]") {
  auto cfg = load_node_config(example_path(), node_config_options{{}, check_with_training});
  REQUIRE(cfg);
  // The data path is relative to the repository root, where the cluster runs.
  cfg->job->data = (project_root() / cfg->job->data).string();
  auto tc = make_training_config(*cfg);
  REQUIRE(tc);
  CHECK(tc->workers == cfg->job->workers);
  CHECK(tc->steps == cfg->job->steps);
  CHECK(tc->net->parameter_count() == 64 * 128 + 128 + 128 * 10 + 10);
  CHECK(tc->faults.size() == 2);
  CHECK_FALSE(validate(*tc));
}

TEST_CASE("job defaults are those of the training component", "[config]") {
  job_spec j;
  training_config tc;
  CHECK(j.workers == tc.workers);
  CHECK(j.shards == tc.shards);
  CHECK(j.loaders == tc.loaders);
  CHECK(j.batch == tc.batch);
  CHECK(j.steps == tc.steps);
  CHECK(j.seed == tc.seed);
  CHECK(j.checkpoint_every == tc.checkpoint_every);
  CHECK(j.eval_every == tc.eval_every);
  CHECK(j.prefetch == tc.prefetch);
  optimizer_config oc;
  CHECK(j.optimizer == to_string(oc.kind));
  CHECK(static_cast<float>(j.lr) == oc.lr);
  CHECK(static_cast<float>(j.momentum) == oc.momentum);
  CHECK(static_cast<float>(j.beta1) == oc.beta1);
  CHECK(static_cast<float>(j.beta2) == oc.beta2);
  CHECK(static_cast<float>(j.epsilon) == oc.epsilon);
  CHECK(static_cast<float>(j.weight_decay) == oc.weight_decay);
  CHECK(static_cast<float>(j.data_scale) == csv_options{}.scale);
  role_policy rp;
  for (const auto* r : {&j.worker, &j.shard, &j.loader, &j.trainer}) {
    CHECK(r->strategy == rp.strategy);
    CHECK(r->intensity.max_restarts == rp.intensity.max_restarts);
    CHECK(r->intensity.period == rp.intensity.period);
    CHECK(r->backoff.min == rp.backoff.min);
  }
}

TEST_CASE("bad config files are rejected with file, line and problem", "[config]") {
  const std::vector<bad_case> cases = {
      {"an unknown key, with a suggestion",
       base + lines({"[[node]]", "name = \"b\"", "host = \"127.0.0.1\"", "prot = 7002"}),
       config_errc::unknown_key,
       "bad.toml:12: unknown key 'prot' in [[node]] (did you mean 'port'?)"},
      {"an unknown table at the top", base + lines({"[clustr]", "x = 1"}), config_errc::unknown_key,
       "bad.toml:9: unknown key 'clustr' in the file (did you mean 'cluster'?)"},
      {"an unknown key in a job role",
       base + job + lines({"[job.worker]", "placment = \"spread\""}), config_errc::unknown_key,
       "bad.toml:13: unknown key 'placment' in [job.worker] (did you mean 'placement'?)"},
      {"an unknown key in an intensity",
       base + lines({"[tree]", "intensity = { max_restart = 3, period = \"5s\" }"}),
       config_errc::unknown_key,
       "bad.toml:10: unknown key 'max_restart' in intensity of [tree] (did you mean "
       "'max_restarts'?)"},
      {"a port given as a string",
       base + lines({"[[node]]", "name = \"b\"", "host = \"127.0.0.1\"", "port = \"7002\"",
                     "state_dir = \"s/b\""}),
       config_errc::wrong_type, "bad.toml:12: 'port' in [[node]] must be an integer, not a string"},
      {"a threshold given as a string",
       base + lines({"[cluster.failure_detection]", "phi_threshold = \"8\""}),
       config_errc::wrong_type,
       "bad.toml:10: 'phi_threshold' in [cluster.failure_detection] must be a number, not a "
       "string"},
      {"a placement given as a number", base + lines({"[tree]", "placement = 3"}),
       config_errc::wrong_type,
       "bad.toml:10: 'placement' in [tree] must be a node name, a list of node names, \"any\" or "
       "\"spread\", not an integer"},
      {"nodes given as a string", lines({"node = \"a\"", "[cluster]", "name = \"t\""}),
       config_errc::wrong_type,
       "bad.toml:1: 'node' must be a list of tables ([[node]]), not a string"},
      {"a node without a host",
       base + lines({"[[node]]", "name = \"b\"", "port = 7002", "state_dir = \"s/b\""}),
       config_errc::missing_key, "bad.toml:9: [[node]] 'b' lacks required key 'host'"},
      {"a child without a type", base + lines({"[[tree.child]]", "name = \"x\""}),
       config_errc::missing_key, "bad.toml:9: [[tree.child]] 'x' lacks required key 'type'"},
      {"a role table named like the count", base + job + lines({"[job.workers]", "gpus = 1"}),
       config_errc::wrong_type,
       "bad.toml:12: 'workers' in [job] is the number of workers; the role's own table is "
       "[job.worker]"},
      {"a node without a state directory",
       lines({"[cluster]", "name = \"t\"", "[[node]]", "name = \"a\"", "host = \"127.0.0.1\"",
              "port = 7001"}),
       config_errc::missing_key,
       "bad.toml:3: [[node]] 'a' lacks required key 'state_dir' (or set state_root in [cluster])"},
      {"no [cluster]",
       lines({"[[node]]", "name = \"a\"", "host = \"127.0.0.1\"", "port = 7001",
              "state_dir = \"s/a\""}),
       config_errc::missing_key, "bad.toml:1: missing [cluster] table"},
      {"a cluster without a name",
       lines({"[cluster]", "state_root = \"s\"", "[[node]]", "name = \"a\"", "host = \"127.0.0.1\"",
              "port = 7001"}),
       config_errc::missing_key, "bad.toml:1: [cluster] lacks required key 'name'"},
      {"no nodes", lines({"[cluster]", "name = \"t\""}), config_errc::missing_key,
       "bad.toml:1: no [[node]] entries"},
      {"a job without layers", base + lines({"[job]", "data = \"d.csv\""}),
       config_errc::missing_key, "bad.toml:9: [job] lacks required key 'layers'"},
      {"a duplicate node name",
       base + lines({"[[node]]", "name = \"a\"", "host = \"127.0.0.1\"", "port = 7002",
                     "state_dir = \"s/b\""}),
       config_errc::duplicate, "bad.toml:10: duplicate node name 'a' (first at line 5)"},
      {"a duplicate address",
       base + lines({"[[node]]", "name = \"b\"", "host = \"localhost\"", "port = 7001",
                     "state_dir = \"s/b\""}),
       config_errc::duplicate,
       "bad.toml:9: node 'b': port localhost:7001 is already used by node 'a'"},
      {"a metrics port on a node's port", base + lines({"[cluster.metrics]", "port_base = 7001"}),
       config_errc::duplicate,
       "bad.toml:4: node 'a': metrics port 127.0.0.1:7001 is already used by node 'a'"},
      {"a shared state directory",
       base + lines({"[[node]]", "name = \"b\"", "host = \"127.0.0.1\"", "port = 7002",
                     "state_dir = \"s/./a\""}),
       config_errc::duplicate, "bad.toml:9: node 'b' has the state_dir of node 'a'"},
      {"a GPU listed twice", base + node_b + lines({"gpus = [0, 0]"}), config_errc::duplicate,
       "bad.toml:14: 'gpus' of node 'b' lists device 0 twice"},
      {"duplicate child names",
       base + lines({"[[tree.child]]", "name = \"x\"", "type = \"supervisor\"", "[[tree.child]]",
                     "name = \"x\"", "type = \"supervisor\""}),
       config_errc::duplicate, "bad.toml:13: duplicate child name 'x' under /root"},
      {"a shared certificate",
       lines({"[cluster]", "name = \"t\"", "[cluster.security]", "ca = \"ca.pem\"",
              "cert = \"node.pem\"", "key = \"node.key\"", "[[node]]", "name = \"a\"",
              "host = \"127.0.0.1\"", "port = 7001", "state_dir = \"s/a\"", "[[node]]",
              "name = \"b\"", "host = \"127.0.0.1\"", "port = 7002", "state_dir = \"s/b\""}),
       config_errc::duplicate, "bad.toml:12: node 'b' uses the certificate of node 'a' (node.pem)"},
      {"a placement naming an unknown node",
       base + job + lines({"[job.worker]", "placement = [\"a\", \"bb\"]"}),
       config_errc::unknown_node, "bad.toml:13: placement of [job.worker] names no node 'bb'"},
      {"a misspelt placement", base + lines({"[tree]", "placement = \"sprad\""}),
       config_errc::unknown_node,
       "bad.toml:10: placement of '/root' names no node 'sprad' (did you mean 'spread'?)"},
      {"an unknown buddy", base + node_b + lines({"buddy = \"x\""}), config_errc::unknown_node,
       "bad.toml:14: buddy of node 'b' names no node 'x'"},
      {"a placement on a spare only",
       base + node_b + lines({"role = \"spare\""}) + job +
           lines({"[job.trainer]", "placement = \"b\""}),
       config_errc::unsatisfiable_placement,
       "bad.toml:19: placement of [job.trainer] names only spare nodes (b): a spare starts "
       "nothing until a node fails"},
      {"more GPUs than the node has", base + job + lines({"[job.worker]", "gpus = 1"}),
       config_errc::unsatisfiable_placement,
       "bad.toml:13: placement of [job.worker] cannot be satisfied: instance 0 needs 1 GPU and "
       "no candidate node has them free (a has 0 of 0)"},
      {"more GPUs than the nodes have together",
       base + node_b + lines({"gpus = [0]"}) + job +
           lines({"[job.worker]", "placement = \"b\"", "gpus = 1"}),
       config_errc::unsatisfiable_placement,
       "bad.toml:19: placement of [job.worker] cannot be satisfied: instance 1 needs 1 GPU and "
       "no candidate node has them free (b has 0 of 1)"},
      {"nodes off loopback without security", base + node_b, config_errc::none /* replaced below */,
       ""},
      {"a duration without a unit",
       base + lines({"[cluster.failure_detection]", "heartbeat_interval = \"100\""}),
       config_errc::invalid_value,
       "bad.toml:10: 'heartbeat_interval' in [cluster.failure_detection]: bad duration '100': "
       "missing unit"},
      {"a duration with an unknown unit",
       base + lines({"[cluster.failure_detection]", "deadline = \"2 s\""}),
       config_errc::invalid_value,
       "bad.toml:10: 'deadline' in [cluster.failure_detection]: bad "
       "duration '2 s': unknown unit ' s'"},
      {"a duration given as a number",
       base + lines({"[cluster.failure_detection]", "deadline = 2"}), config_errc::wrong_type,
       "bad.toml:10: 'deadline' in [cluster.failure_detection] must be a duration string such "
       "as \"100ms\", not an integer"},
      {"a deadline shorter than the heartbeat interval",
       base + lines({"[cluster.failure_detection]", "heartbeat_interval = \"500ms\"",
                     "deadline = \"200ms\""}),
       config_errc::invalid_value,
       "bad.toml:11: 'deadline' in [cluster.failure_detection] (200ms) must be longer than "
       "heartbeat_interval (500ms)"},
      {"a bad shutdown",
       base + lines({"[[tree.child]]", "name = \"x\"", "type = \"supervisor\"",
                     "shutdown = \"soon\""}),
       config_errc::invalid_value,
       "bad.toml:12: 'shutdown' of '/root/x' must be a positive duration, \"brutal_kill\" or "
       "\"infinity\""},
      {"a backoff whose max is below its min",
       base + lines({"[tree]", "backoff = { min = \"2s\", max = \"1s\" }"}),
       config_errc::invalid_value,
       "bad.toml:10: 'max' in backoff of [tree] (1s) is below 'min' (2s)"},
      {"a port out of range",
       base + lines({"[[node]]", "name = \"b\"", "host = \"127.0.0.1\"", "port = 70000",
                     "state_dir = \"s/b\""}),
       config_errc::invalid_value,
       "bad.toml:12: 'port' in [[node]] must be from 1 to 65535, not 70000"},
      {"an unknown quorum policy",
       base + lines({"[cluster.failure_detection]", "quorum = \"most\""}),
       config_errc::invalid_value,
       "bad.toml:10: 'quorum' in [cluster.failure_detection] is 'most'; expected one of none, "
       "majority"},
      {"an unknown role", base + node_b + lines({"role = \"standby\""}), config_errc::invalid_value,
       "bad.toml:14: 'role' in [[node]] is 'standby'; expected one of active, spare"},
      {"a misspelt strategy", base + lines({"[tree]", "strategy = \"one_for_al\""}),
       config_errc::invalid_value,
       "bad.toml:10: 'strategy' in [tree] is 'one_for_al'; expected one of one_for_one, "
       "one_for_all, rest_for_one, simple_one_for_one (did you mean 'one_for_all'?)"},
      {"an unknown restart type",
       base + lines({"[[tree.child]]", "name = \"x\"", "type = \"supervisor\"",
                     "restart = \"always\""}),
       config_errc::invalid_value,
       "bad.toml:12: 'restart' in [[tree.child]] is 'always'; expected one of permanent, "
       "transient, temporary"},
      {"an unknown child type",
       base + lines({"[[tree.child]]", "name = \"x\"", "type = \"wroker\""}),
       config_errc::invalid_value,
       "bad.toml:11: 'type' in [[tree.child]] is 'wroker'; expected one of supervisor, "
       "training_job, worker (did you mean 'worker'?)"},
      {"a supervisor key on the job",
       base + job +
           lines({"[[tree.child]]", "name = \"job\"", "type = \"training_job\"",
                  "strategy = \"one_for_all\""}),
       config_errc::invalid_value,
       "bad.toml:15: 'strategy' applies to supervisors only, and '/root/job' has type = "
       "\"training_job\""},
      {"simple_one_for_one with two children",
       base + lines({"[tree]", "strategy = \"simple_one_for_one\"", "[[tree.child]]",
                     "name = \"a\"", "type = \"supervisor\"", "[[tree.child]]", "name = \"b\"",
                     "type = \"supervisor\""}),
       config_errc::invalid_value,
       "bad.toml:10: supervisor '/root' uses simple_one_for_one and needs exactly one child (the "
       "template), not 2"},
      {"an empty placement list", base + lines({"[tree]", "placement = []"}),
       config_errc::invalid_value, "bad.toml:10: placement of '/root' is an empty list"},
      {"only spare nodes",
       lines({"[cluster]", "name = \"t\"", "[[node]]", "name = \"a\"", "host = \"127.0.0.1\"",
              "port = 7001", "state_dir = \"s/a\"", "role = \"spare\""}),
       config_errc::invalid_value, "bad.toml:3: every node is a spare"},
      {"a node that is its own buddy", base + node_b + lines({"buddy = \"b\""}),
       config_errc::invalid_value, "bad.toml:14: node 'b' cannot be its own buddy"},
      {"a node certificate without security", base + node_b + lines({"cert = \"b.pem\""}),
       config_errc::invalid_value,
       "bad.toml:14: 'cert' of node 'b' needs a [cluster.security] section"},
      {"a security section without a CA",
       lines({"[cluster]", "name = \"t\"", "[cluster.security]", "cert = \"{node}.pem\""}) +
           lines({"[[node]]", "name = \"a\"", "host = \"127.0.0.1\"", "port = 7001",
                  "state_dir = \"s/a\""}),
       config_errc::missing_key,
       "bad.toml:3: [cluster.security] needs 'ca' (the CA certificate) or 'dir'"},
      {"metrics without a port", base + lines({"[cluster.metrics]", "enabled = true"}),
       config_errc::missing_key,
       "bad.toml:9: [cluster.metrics] needs 'port_base' (or a metrics_port on the nodes)"},
      {"a training_job child without a job",
       base + lines({"[[tree.child]]", "name = \"job\"", "type = \"training_job\""}),
       config_errc::missing_key,
       "bad.toml:11: '/root/job' has type = \"training_job\" but the file has no [job]"},
      {"a job the tree does not start",
       base + job + lines({"[[tree.child]]", "name = \"x\"", "type = \"supervisor\""}),
       config_errc::missing_key, "bad.toml:9: [job] is not started by the tree"},
      {"more loaders than workers", base + job + lines({"workers = 2", "loaders = 3"}),
       config_errc::invalid_job, "bad.toml:13: 'loaders' in [job] is 3, more than the 2 workers"},
      {"more shards than parameters",
       base + lines({"[job]", "layers = [1, 1]", "data = \"d.csv\"", "shards = 3"}),
       config_errc::invalid_job,
       "bad.toml:12: 'shards' in [job] is 3, but the model has only 2 parameters"},
      {"a zero learning rate", base + job + lines({"lr = 0.0"}), config_errc::invalid_job,
       "bad.toml:12: 'lr' in [job] must be above 0"},
      {"a test fraction of one", base + job + lines({"test_fraction = 1.0"}),
       config_errc::invalid_job,
       "bad.toml:12: 'test_fraction' in [job] must be above 0 and below 1"},
      {"a single layer", base + lines({"[job]", "layers = [4]", "data = \"d.csv\""}),
       config_errc::invalid_job, "bad.toml:10: 'layers' in [job] needs at least two sizes"},
      {"an unknown optimizer", base + job + lines({"optimizer = \"rmsprop\""}),
       config_errc::invalid_value,
       "bad.toml:12: 'optimizer' in [job] is 'rmsprop'; expected one of sgd, momentum, adam"},
      {"a dynamic job role",
       base + job + lines({"[job.shard]", "strategy = \"simple_one_for_one\""}),
       config_errc::invalid_value,
       "bad.toml:13: 'strategy' in [job.shard] cannot be simple_one_for_one"},
      {"a fault naming no actor (the training component's check)",
       base + job + lines({"faults = \"worker:5@10\""}), config_errc::invalid_job,
       "bad.toml:12: fault 'worker:5@10'"},
      {"invalid TOML", base + lines({"[[node]]", "name = \"b"}), config_errc::syntax,
       "bad.toml:10: invalid TOML"},
      {"a key defined twice", base + lines({"port = 7002"}), config_errc::syntax,
       "bad.toml:9: invalid TOML"},
  };
  node_config_options opts;
  opts.child_types = {"worker"};
  opts.check_job = check_with_training;
  for (auto c : cases) {
    if (c.code == config_errc::none) {
      // Node b off loopback, without security.
      c.text = base + lines({"[[node]]", "name = \"b\"", "host = \"10.0.0.2\"", "port = 7002",
                             "state_dir = \"s/b\""});
      c.code = config_errc::insecure;
      c.expected =
          "bad.toml:9: node 'b' binds 10.0.0.2, which is not loopback: a cluster off loopback "
          "needs a [cluster.security] section (mutual TLS)";
    }
    INFO(c.what << "\n" << c.text);
    auto cfg = parse_node_config(c.text, "bad.toml", opts);
    REQUIRE_FALSE(cfg);
    auto msg = message_of(cfg.error());
    INFO("error: " << describe(cfg.error()));
    CHECK(to_string(static_cast<config_errc>(cfg.error().code())) == to_string(c.code));
    CHECK(is(cfg.error(), c.code));
    CHECK(msg.find(c.expected) != std::string::npos);
    CHECK(next_step_for(c.code) == next_step::give_up);
  }
}

TEST_CASE("a missing config file is reported as unreadable", "[config]") {
  auto cfg = load_node_config("/nonexistent/understudy/cluster.toml");
  REQUIRE_FALSE(cfg);
  CHECK(is(cfg.error(), config_errc::cannot_read));
  CHECK(message_of(cfg.error()).find("/nonexistent/understudy/cluster.toml: cannot open") == 0);
  CHECK(describe(cfg.error()).rfind("cannot_read: ", 0) == 0);
}

TEST_CASE("durations need a unit and may have a fraction", "[config]") {
  CHECK(parse_duration("100ms") == caf::timespan{100ms});
  CHECK(parse_duration("2s") == caf::timespan{2s});
  CHECK(parse_duration("1.5s") == caf::timespan{1500ms});
  CHECK(parse_duration("250us") == caf::timespan{250us});
  CHECK(parse_duration("7ns") == caf::timespan{7});
  CHECK(parse_duration("2m") == caf::timespan{120s});
  CHECK(parse_duration("2min") == caf::timespan{120s});
  CHECK(parse_duration("1h") == caf::timespan{3600s});
  CHECK(parse_duration("0s") == caf::timespan{0});
  for (const char* bad : {"", "100", "ms", "-1s", "1.5", "1 s", "3days", "1e3ms", "99999999999h"}) {
    INFO(bad);
    auto d = parse_duration(bad);
    REQUIRE_FALSE(d);
    CHECK(is(d.error(), config_errc::invalid_value));
  }
}

TEST_CASE("a config without [tree] runs the job under a root supervisor", "[config]") {
  auto cfg = parse_node_config(
      lines({"[cluster]", "name = \"t\"", "state_root = \"st\"", "[[node]]", "name = \"a\"",
             "host = \"localhost\"", "port = 7001", "metrics_port = 9000", "[[node]]",
             "name = \"b\"", "host = \"127.0.0.2\"", "port = 7001"}) +
          job,
      "ok.toml");
  REQUIRE(cfg);
  CHECK(cfg->nodes[0].state_dir == "st/a");
  CHECK(cfg->nodes[1].state_dir == "st/b");
  CHECK(cfg->nodes[0].metrics_port == 9000);
  CHECK(cfg->nodes[1].metrics_port == 0);
  CHECK(cfg->cluster.metrics.enabled);
  CHECK(cfg->nodes[0].buddy == "b");
  CHECK(cfg->nodes[1].buddy == "a");
  CHECK(cfg->tree.name == "root");
  REQUIRE(cfg->tree.children.size() == 1);
  CHECK(cfg->tree.children[0].type == "training_job");
  CHECK(cfg->tree.children[0].path == "/root/job");
  CHECK(cfg->tree.placement.start == std::vector<std::string>{"a"});
  CHECK(cfg->job->worker.placement.start == std::vector<std::string>{"a", "b"});
  CHECK(cfg->job->trainer.placement.start == std::vector<std::string>{"a"});
}

TEST_CASE("a security section gives every node its certificate and allows other hosts",
          "[config]") {
  auto cfg = parse_node_config(
      lines({"[cluster]", "name = \"prod\"", "[cluster.security]", "dir = \"/etc/us\"", "[[node]]",
             "name = \"a\"", "host = \"10.0.0.1\"", "port = 7001", "state_dir = \"/var/lib/us\"",
             "[[node]]", "name = \"b\"", "host = \"10.0.0.2\"", "port = 7001",
             "state_dir = \"/var/lib/us\"", "cert = \"/opt/b.crt\""}),
      "sec.toml");
  REQUIRE(cfg);
  REQUIRE(cfg->cluster.security);
  CHECK(cfg->cluster.security->ca == "/etc/us/ca.pem");
  CHECK(cfg->cluster.security->ca_key == "/etc/us/ca.key");
  CHECK(cfg->nodes[0].cert == "/etc/us/a.pem");
  CHECK(cfg->nodes[0].key == "/etc/us/a.key");
  CHECK(cfg->nodes[1].cert == "/opt/b.crt");
  CHECK(cfg->nodes[1].key == "/etc/us/b.key");
  for (const auto& note : cfg->notes)
    CHECK(note.find("loopback") == std::string::npos);
}

TEST_CASE("placements deal instances over nodes with free GPUs and note pinned children",
          "[config]") {
  auto cfg = parse_node_config(
      base +
          lines({"gpus = [0, 1]", "[[node]]", "name = \"b\"", "host = \"127.0.0.1\"", "port = 7002",
                 "state_dir = \"s/b\"", "gpus = [0]", "[[node]]", "name = \"c\"",
                 "host = \"127.0.0.1\"", "port = 7003", "state_dir = \"s/c\"", "role = \"spare\"",
                 "gpus = [0]"}) +
          lines({"[job]",
                 "layers = [4, 3]",
                 "data = \"d.csv\"",
                 "workers = 3",
                 "[job.worker]",
                 "gpus = 1",
                 "process = \"isolated\"",
                 "[job.trainer]",
                 "placement = \"b\"",
                 "[[tree.child]]",
                 "name = \"job\"",
                 "type = \"training_job\"",
                 "[[tree.child]]",
                 "name = \"pool\"",
                 "type = \"supervisor\"",
                 "strategy = \"simple_one_for_one\"",
                 "placement = [\"c\", \"b\"]",
                 "[[tree.child.child]]",
                 "name = \"probe\"",
                 "type = \"worker\"",
                 "shutdown = \"brutal_kill\"",
                 "liveness_deadline = \"2s\""}),
      "gpu.toml", node_config_options{{"worker"}, {}});
  REQUIRE(cfg);
  const auto& j = *cfg->job;
  CHECK(j.worker.placement.process == process_mode::isolated);
  CHECK(j.worker.placement.gpus == 1);
  CHECK(j.worker.placement.start == std::vector<std::string>{"a", "b", "a"});
  // Only nodes with a GPU can take a worker over; the spare first.
  CHECK(j.worker.placement.failover == std::vector<std::string>{"c", "a", "b"});
  CHECK(j.trainer.placement.start == std::vector<std::string>{"b"});
  CHECK(j.trainer.placement.failover.empty());
  const auto& pool = cfg->tree.children[1];
  CHECK(pool.strategy == restart_strategy::simple_one_for_one);
  CHECK(pool.placement.start == std::vector<std::string>{"b"});
  CHECK(pool.placement.failover == std::vector<std::string>{"c", "b"});
  REQUIRE(pool.children.size() == 1);
  const auto& probe = pool.children[0];
  CHECK(probe.path == "/root/pool/probe");
  CHECK(probe.shutdown.mode == shutdown_mode::brutal_kill);
  CHECK(probe.liveness_deadline == caf::timespan{2s});
  CHECK(probe.placement.start == std::vector<std::string>{"b"});
  bool pinned = false;
  for (const auto& note : cfg->notes)
    pinned |= note.find("[job.trainer] is pinned to node 'b'") != std::string::npos;
  CHECK(pinned);
}

TEST_CASE("docs/config.md documents exactly the keys the parser knows, with their types",
          "[config]") {
  std::ifstream in{project_root() / "docs" / "config.md"};
  REQUIRE(in);
  // Sections are headings "### `SECTION`" ("### top level" for the file);
  // keys are table rows "| `key` | type | ...".
  std::map<std::pair<std::string, std::string>, std::string> documented;
  std::string line, section;
  bool in_reference = false;
  while (std::getline(in, line)) {
    if (line.rfind("#", 0) == 0) {
      in_reference = line == "### top level" || line.rfind("### `", 0) == 0;
      if (line == "### top level")
        section.clear();
      else if (in_reference)
        section = line.substr(5, line.find('`', 5) - 5);
      continue;
    }
    if (!in_reference || line.rfind("| `", 0) != 0)
      continue;
    auto close = line.find('`', 3);
    auto key = line.substr(3, close - 3);
    auto bar = line.find('|', close);
    auto next = line.find('|', bar + 1);
    auto type = line.substr(bar + 1, next - bar - 1);
    type.erase(0, type.find_first_not_of(' '));
    type.erase(type.find_last_not_of(' ') + 1);
    documented[{section, key}] = type;
  }
  std::set<std::pair<std::string, std::string>> known;
  for (const auto& k : node_config_keys()) {
    INFO("[" << k.section << "] " << k.name);
    known.insert({k.section, k.name});
    auto it = documented.find({k.section, k.name});
    REQUIRE(it != documented.end());
    CHECK(it->second == k.type);
  }
  for (const auto& [key, type] : documented) {
    INFO("documented: [" << key.first << "] " << key.second);
    CHECK(known.count(key) == 1);
  }
}

TEST_CASE("the full example in docs/config.md is a valid config", "[config]") {
  std::ifstream in{project_root() / "docs" / "config.md"};
  REQUIRE(in);
  std::string line, text;
  bool in_section = false, in_block = false;
  while (std::getline(in, line)) {
    if (line.rfind("## ", 0) == 0)
      in_section = line == "## A full example";
    else if (in_section && line == "```toml")
      in_block = true;
    else if (in_block && line == "```")
      break;
    else if (in_block)
      text += line + "\n";
  }
  REQUIRE_FALSE(text.empty());
  auto cfg = parse_node_config(text, "config.md");
  INFO((cfg ? std::string{} : describe(cfg.error())));
  REQUIRE(cfg);
  REQUIRE(cfg->nodes.size() == 4);
  CHECK(cfg->nodes[0].state_dir == "/var/lib/understudy/gpu1");
  CHECK(cfg->nodes[0].cert == "/etc/understudy/certs/gpu1.pem");
  CHECK(cfg->nodes[3].cert == "/etc/understudy/standby/cert.pem");
  CHECK(cfg->nodes[2].metrics_port == 9999);
  CHECK(cfg->nodes[3].metrics_port == 9473);
  CHECK(cfg->nodes[1].buddy == "gpu1");
  CHECK(cfg->tree.placement.start == std::vector<std::string>{"cpu1"});
  CHECK(cfg->job->worker.placement.start ==
        std::vector<std::string>{"gpu1", "gpu2", "gpu1", "gpu2"});
  CHECK(cfg->job->optimizer == "adam");
  CHECK(cfg->tree.children[1].placement.process == process_mode::isolated);
}

TEST_CASE("every config error has a distinct name and means the file must be fixed", "[config]") {
  std::set<std::string> names;
  for (int i = 0; i <= static_cast<int>(config_errc::invalid_job); ++i) {
    auto code = static_cast<config_errc>(i);
    CHECK(to_string(code) != "unknown");
    CHECK(names.insert(to_string(code)).second);
    CHECK(next_step_for(code) == next_step::give_up);
  }
  auto err = make_error(config_errc::unknown_key, "a.toml:3: unknown key 'x' in [cluster]");
  CHECK(is(err, config_errc::unknown_key));
  CHECK_FALSE(is(err, state_errc::invalid_config));
  CHECK(describe(err) == "unknown_key: a.toml:3: unknown key 'x' in [cluster]");
}
