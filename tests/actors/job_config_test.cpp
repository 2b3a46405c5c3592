// The training component's [job] section of node config files: the example
// cluster, a table of bad files with their errors (file and line), the
// placement of the job's roles, and docs/config.md in step with the keys the
// parser knows with [job] registered.

#include "understudy/actors/job_config.hpp"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/config_test_util.hpp"
#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/numerics/dataset.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/numerics/optimizer.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/serving/serving_component.hpp"

using namespace understudy;
using namespace understudy::actors;
using namespace std::chrono_literals;
using namespace config_test;

namespace {

/// The repository root, from the digits data path the build passes in.
std::filesystem::path project_root() {
  return std::filesystem::path{UNDERSTUDY_DIGITS_PATH}.parent_path().parent_path().parent_path();
}

std::string example_path() {
  return (project_root() / "examples" / "cluster" / "local.toml").string();
}

/// A minimal job, as three lines.
const std::string job = lines({"[job]", "layers = [4, 3]", "data = \"d.csv\""});

struct bad_case {
  const char* what;
  std::string text;
  config_errc code;
  const char* expected;
};

} // namespace

TEST_CASE("the example cluster config parses into three nodes, a spare, the tree and the job",
          "[config][job]") {
  auto cfg = load_node_config(example_path(), job_config_options());
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
  // Without security the node says that a cluster of several needs certificates.
  bool tls_note = false;
  for (const auto& note : cfg->notes)
    tls_note |=
        note.find("without TLS a cluster of several nodes does not start") != std::string::npos;
  CHECK(tls_note);
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
  const auto* jp = job_of(*cfg);
  REQUIRE(jp);
  const auto& j = *jp;
  CHECK(j.model == "mlp");
  CHECK(j.layers == std::vector<size_t>{64, 128, 10});
  CHECK(j.data == "examples/data/digits.csv.gz");
  CHECK(j.training.workers == 3);
  CHECK(j.training.shards == 3);
  CHECK(j.training.loaders == 3);
  CHECK(j.training.batch == 96);
  CHECK(j.training.micro_batches == 6);
  CHECK(j.training.steps == 3000);
  CHECK(j.training.seed == 1);
  CHECK(j.training.checkpoint_every == 5);
  CHECK(j.training.optimizer.kind == optimizer_kind::sgd);
  CHECK(j.training.optimizer.lr == Approx(0.1f));
  CHECK(j.faults == "worker:1@500,shard:0@1500");
  auto spread = std::vector<std::string>{"n1", "n2", "n3"};
  CHECK(j.shard_placement.policy == placement_policy::spread);
  CHECK(j.shard_placement.start == spread);
  CHECK(j.loader_placement.start == spread);
  CHECK(j.worker_placement.start == spread);
  CHECK(j.worker_placement.failover == std::vector<std::string>{"s1", "n1", "n2", "n3"});
  CHECK(j.training.worker_policy.backoff.min == caf::timespan{10ms});
  CHECK(j.training.worker_policy.backoff.max == caf::timespan{500ms});
  CHECK(j.training.worker_policy.backoff.jitter == Approx(0.1));
  CHECK(j.training.worker_policy.intensity.max_restarts == 20);
  CHECK(j.trainer_placement.policy == placement_policy::nodes);
  CHECK(j.trainer_placement.start == std::vector<std::string>{"n1"});
  CHECK(j.trainer_placement.failover == spread);
  CHECK(j.line_of("workers") > j.line_of(""));
}

TEST_CASE("the example job is a valid training_config for the training component",
          "[config][job]") {
  auto cfg = load_node_config(example_path(), job_config_options());
  REQUIRE(cfg);
  // The data path is relative to the repository root, where the cluster runs.
  job_of(*cfg)->data = (project_root() / job_of(*cfg)->data).string();
  auto tc = make_training_config(*cfg);
  REQUIRE(tc);
  CHECK(tc->workers == job_of(*cfg)->training.workers);
  CHECK(tc->steps == job_of(*cfg)->training.steps);
  CHECK(tc->net->parameter_count() == 64 * 128 + 128 + 128 * 10 + 10);
  CHECK(tc->faults.size() == 2);
  CHECK_FALSE(validate(*tc));
  // Several nodes, [job] without hang_floor: the step deadline starts past the
  // failure detector's (1 s + 2 heartbeats of 100 ms), so that a paused node
  // is the detector's to judge; set in [job], the floor is the file's.
  CHECK(tc->hang_floor == std::chrono::milliseconds(1200));
  job_of(*cfg)->training.hang_floor = std::chrono::milliseconds(300);
  job_of(*cfg)->lines["hang_floor"] = 1;
  auto set = make_training_config(*cfg);
  REQUIRE(set);
  CHECK(set->hang_floor == std::chrono::milliseconds(300));
}

TEST_CASE("a minimal [job] keeps the training component's defaults", "[config][job]") {
  auto cfg = parse_node_config(base + job, "min.toml", job_config_options());
  REQUIRE(cfg);
  const auto* j = job_of(*cfg);
  REQUIRE(j);
  training_config tc;
  CHECK(j->training.workers == tc.workers);
  CHECK(j->training.shards == tc.shards);
  CHECK(j->training.loaders == tc.loaders);
  CHECK(j->training.batch == tc.batch);
  CHECK(j->training.steps == tc.steps);
  CHECK(j->training.seed == tc.seed);
  CHECK(j->training.checkpoint_every == tc.checkpoint_every);
  CHECK(j->training.eval_every == tc.eval_every);
  CHECK(j->training.prefetch == tc.prefetch);
  CHECK(j->training.optimizer.kind == tc.optimizer.kind);
  CHECK(j->training.optimizer.lr == tc.optimizer.lr);
  CHECK(j->training.faults.empty());
  CHECK(j->training.hang_floor == tc.hang_floor);
  CHECK(j->training.hang_ceiling == tc.hang_ceiling);
  CHECK(j->training.hang_factor == tc.hang_factor);
  CHECK(j->data_scale == Approx(csv_options{}.scale));
  CHECK(j->layers == std::vector<size_t>{4, 3});
  CHECK(j->data == "d.csv");
  CHECK(j->line_of("") == 9);
  CHECK(j->line_of("data") == 11);
  CHECK(j->line_of("steps") == 9);
  role_policy rp;
  for (const auto* r : {&j->training.worker_policy, &j->training.shard_policy,
                        &j->training.loader_policy, &j->training.trainer_policy}) {
    CHECK(r->strategy == rp.strategy);
    CHECK(r->intensity.max_restarts == rp.intensity.max_restarts);
    CHECK(r->intensity.period == rp.intensity.period);
  }
  CHECK(j->worker_placement.policy == placement_policy::spread);
  CHECK(j->trainer_placement.policy == placement_policy::inherit);
}

TEST_CASE("without the [job] section registered, [job] is an unknown key", "[config][job]") {
  auto cfg = parse_node_config(base + job, "bare.toml");
  REQUIRE_FALSE(cfg);
  CHECK(is(cfg.error(), config_errc::unknown_key));
  CHECK(message_of(cfg.error()).find("bare.toml:9: unknown key 'job' in the file") == 0);
}

TEST_CASE("bad [job] sections are rejected with file, line and problem", "[config][job]") {
  const std::vector<bad_case> cases = {
      {"an unknown key in a job role",
       base + job + lines({"[job.worker]", "placment = \"spread\""}), config_errc::unknown_key,
       "bad.toml:13: unknown key 'placment' in [job.worker] (did you mean 'placement'?)"},
      {"a role table named like the count", base + job + lines({"[job.workers]", "gpus = 1"}),
       config_errc::wrong_type,
       "bad.toml:12: 'workers' in [job] is the number of workers; the role's own table is "
       "[job.worker]"},
      {"a job without layers", base + lines({"[job]", "data = \"d.csv\""}),
       config_errc::missing_key, "bad.toml:9: [job] lacks required key 'layers'"},
      {"a placement naming an unknown node",
       base + job + lines({"[job.worker]", "placement = [\"a\", \"bb\"]"}),
       config_errc::unknown_node, "bad.toml:13: placement of [job.worker] names no node 'bb'"},
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
      {"a training_job child without a job",
       base + lines({"[[tree.child]]", "name = \"job\"", "type = \"training_job\""}),
       config_errc::missing_key,
       "bad.toml:11: '/root/job' has type = \"training_job\" but the file has no [job]"},
      {"a job the tree does not start",
       base + job + lines({"[[tree.child]]", "name = \"x\"", "type = \"supervisor\""}),
       config_errc::missing_key, "bad.toml:9: [job] is not started by the tree"},
      {"more loaders than micro-batches",
       base + job + lines({"micro_batches = 2", "workers = 2", "loaders = 3"}),
       config_errc::invalid_job,
       "bad.toml:14: 'loaders' in [job] is 3, more than the 2 micro-batches"},
      {"more workers than micro-batches", base + job + lines({"workers = 9"}),
       config_errc::invalid_job,
       "bad.toml:12: 'workers' in [job] is 9, more than the 8 micro-batches"},
      {"more min_workers than workers", base + job + lines({"workers = 2", "min_workers = 3"}),
       config_errc::invalid_job,
       "bad.toml:13: 'min_workers' in [job] is 3, more than the 2 workers"},
      {"micro-batches that do not divide the batch",
       base + job + lines({"batch = 30", "micro_batches = 4"}), config_errc::invalid_job,
       "bad.toml:13: 'micro_batches' in [job] is 4, which does not divide the batch of 30"},
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
       "bad.toml:12: invalid_argument: fault 'worker:5@10'"},
      {"a step deadline floor too short to mean anything",
       base + job + lines({"hang_floor = \"5ms\""}), config_errc::invalid_job,
       "bad.toml:12: invalid_argument: training: hang_floor must be at least 10 ms, not 5 ms"},
      {"a step deadline ceiling below its floor",
       base + job + lines({"hang_floor = \"2s\"", "hang_ceiling = \"1s\""}),
       config_errc::invalid_job, "bad.toml:13: invalid_argument: training: hang_ceiling must be"},
      {"a step deadline factor below one", base + job + lines({"hang_factor = 0.5"}),
       config_errc::invalid_job, "bad.toml:12: invalid_argument: training: hang_factor must be"},
      {"a role's hang ceiling below its floor",
       base + job + lines({"[job.loader]", "hang_floor = \"2s\"", "hang_ceiling = \"1s\""}),
       config_errc::invalid_job,
       "bad.toml:14: invalid_argument: training: the loaders' hang_ceiling must be from their "
       "hang_floor (2000 ms) to 24 h, not 1000 ms"},
      {"hang bounds for the trainer", base + job + lines({"[job.trainer]", "hang_floor = \"2s\""}),
       config_errc::invalid_value,
       "bad.toml:13: 'hang_floor' in [job.trainer]: the trainer's own deadline is [job] "
       "hang_ceiling"},
      {"an isolated shard (its actors write the node's state store)",
       base + job + lines({"[job.shard]", "process = \"isolated\""}), config_errc::invalid_job,
       "bad.toml:12: [job.shard] process = \"isolated\" is not supported"},
  };
  auto opts = job_config_options();
  opts.child_types = {"worker"};
  for (const auto& c : cases) {
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

TEST_CASE("a config without [tree] runs the job under a root supervisor", "[config][job]") {
  auto cfg = parse_node_config(
      lines({"[cluster]", "name = \"t\"", "state_root = \"st\"", "[[node]]", "name = \"a\"",
             "host = \"localhost\"", "port = 7001", "metrics_port = 9000", "[[node]]",
             "name = \"b\"", "host = \"127.0.0.2\"", "port = 7001"}) +
          job,
      "ok.toml", job_config_options());
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
  CHECK(job_of(*cfg)->worker_placement.start == std::vector<std::string>{"a", "b"});
  CHECK(job_of(*cfg)->trainer_placement.start == std::vector<std::string>{"a"});
}

TEST_CASE("placements deal instances over nodes with free GPUs and note pinned children",
          "[config][job]") {
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
      "gpu.toml", [] {
        auto opts = job_config_options();
        opts.child_types = {"worker"};
        return opts;
      }());
  REQUIRE(cfg);
  const auto& j = *job_of(*cfg);
  CHECK(j.worker_placement.process == process_mode::isolated);
  CHECK(j.worker_placement.gpus == 1);
  CHECK(j.worker_placement.start == std::vector<std::string>{"a", "b", "a"});
  // Only nodes with a GPU can take a worker over; the spare first.
  CHECK(j.worker_placement.failover == std::vector<std::string>{"c", "a", "b"});
  CHECK(j.trainer_placement.start == std::vector<std::string>{"b"});
  CHECK(j.trainer_placement.failover.empty());
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
          "[config][job]") {
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
  // The training component's [job] and the serving component's [serve].
  auto options = job_config_options();
  options.sections.push_back(serving::serve_section());
  for (const auto& k : node_config_keys(options)) {
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

TEST_CASE("the serving example configs parse, and one serves the cluster's own training job",
          "[config][job][serving]") {
  auto options = job_config_options();
  options.sections.push_back(serving::serve_section());
  for (const char* name : {"serve.toml", "train_serve.toml"}) {
    INFO(name);
    auto path = (project_root() / "examples" / "cluster" / name).string();
    auto cfg = load_node_config(path, options);
    REQUIRE(cfg);
    const auto* serve = serving::serve_of(*cfg);
    REQUIRE(serve != nullptr);
    CHECK(serve->serve.model == "digits");
    // Without a state_dir the job served is the file's own ([job] under /root).
    CHECK(serve->state_dir.empty() == (std::string{name} == "train_serve.toml"));
  }
  // A [serve] without a state_dir in a file that trains nothing is refused by
  // the serving component's check, naming what to add.
  auto text = lines({"[cluster]", "name = \"s\"", "[[node]]", "name = \"n1\"",
                     "host = \"127.0.0.1\"", "port = 7001", "state_dir = \"/tmp/s\"", "[serve]",
                     "model = \"m\"", "layers = [4, 3]"});
  auto cfg = parse_node_config(text, "lonely.toml", options);
  REQUIRE(cfg);
  auto err = serving::serving_component()->check(*cfg);
  REQUIRE(err);
  CHECK_THAT(describe(err), Catch::Contains("lonely.toml:8: [serve] has no state_dir and the "
                                            "file runs no training job"));
}

TEST_CASE("the full example in docs/config.md is a valid config", "[config][job]") {
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
  auto cfg = parse_node_config(text, "config.md", job_config_options());
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
  CHECK(job_of(*cfg)->worker_placement.start ==
        std::vector<std::string>{"gpu1", "gpu2", "gpu1", "gpu2"});
  CHECK(job_of(*cfg)->training.optimizer.kind == optimizer_kind::adam);
  CHECK(job_of(*cfg)->training.hang_floor == std::chrono::milliseconds(500));
  CHECK(cfg->tree.children[1].placement.process == process_mode::isolated);
}
