// Node config files: a table of bad files with their errors (file and line),
// placement resolution, and a section that a component registers (a toy
// [probe]; the training component's [job] is tested in
// tests/actors/job_config_test.cpp).

#include "understudy/config/node_config.hpp"

#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <caf/message.hpp>
#include <catch2/catch.hpp>

#include "support/config_test_util.hpp"
#include "understudy/core/errors.hpp"

using namespace understudy;
using namespace std::chrono_literals;
using namespace config_test;

namespace {

/// A component's section: `[probe]` with `count` actors placed like a job
/// role; its tree child type is "probe_job".
struct probe_config {
  size_t count = 1;
  placement_spec placement;
  int line = 0;
};

config_section probe_section() {
  config_section s;
  s.name = "probe";
  s.keys = {{"probe", "count", "integer"},
            {"probe", "placement", "placement"},
            {"probe", "gpus", "integer"},
            {"probe", "process", "string"}};
  s.parse = [](config_table& t) -> caf::expected<std::any> {
    probe_config p;
    p.line = t.line();
    if (auto n = t.integer("count", 0, 16))
      p.count = static_cast<size_t>(*n);
    if (p.count == 0)
      return make_error(
          config_errc::invalid_value,
          t.context().origin() + ":" + std::to_string(t.line_of("count")) + ": a probe of nothing");
    p.placement = t.placement("[probe]", placement_policy::spread);
    return std::any{p};
  };
  s.child_type = "probe_job";
  s.child_restart = restart_type::temporary;
  s.place = [](std::any& v, config_context& ctx, const std::string& node) {
    auto& p = std::any_cast<probe_config&>(v);
    ctx.place(p.placement, node, p.count, 0, "[probe]", p.line);
  };
  s.check = [](std::any& v, config_context& ctx) {
    const auto& p = std::any_cast<probe_config&>(v);
    if (p.count == 13)
      ctx.fail(config_errc::invalid_value, p.line, "13 probes bring bad luck");
  };
  return s;
}

/// A minimal probe, as two lines.
const std::string probe = lines({"[probe]", "count = 2"});

struct bad_case {
  const char* what;
  std::string text;
  config_errc code;
  const char* expected;
};

} // namespace

TEST_CASE("bad config files are rejected with file, line and problem", "[config]") {
  const std::vector<bad_case> cases = {
      {"an unknown key, with a suggestion",
       base + lines({"[[node]]", "name = \"b\"", "host = \"127.0.0.1\"", "prot = 7002"}),
       config_errc::unknown_key,
       "bad.toml:12: unknown key 'prot' in [[node]] (did you mean 'port'?)"},
      {"an unknown table at the top", base + lines({"[clustr]", "x = 1"}), config_errc::unknown_key,
       "bad.toml:9: unknown key 'clustr' in the file (did you mean 'cluster'?)"},
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
      {"no peer watching each node", base + lines({"[cluster.failure_detection]", "monitors = 0"}),
       config_errc::invalid_value,
       "bad.toml:10: 'monitors' in [cluster.failure_detection] must be from 1 to 64, not 0"},
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
      {"a misspelt placement", base + lines({"[tree]", "placement = \"sprad\""}),
       config_errc::unknown_node,
       "bad.toml:10: placement of '/root' names no node 'sprad' (did you mean 'spread'?)"},
      {"an unknown buddy", base + node_b + lines({"buddy = \"x\""}), config_errc::unknown_node,
       "bad.toml:14: buddy of node 'b' names no node 'x'"},
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
      {"a heartbeat interval below 1 ms",
       base + lines({"[cluster.failure_detection]", "heartbeat_interval = \"1ns\""}),
       config_errc::invalid_value,
       "bad.toml:10: 'heartbeat_interval' in [cluster.failure_detection] (1ns) must be at "
       "least 1ms"},
      {"a heartbeat interval above half the deadline",
       base + lines({"[cluster.failure_detection]", "heartbeat_interval = \"600ms\"",
                     "deadline = \"1s\""}),
       config_errc::invalid_value,
       "bad.toml:10: 'heartbeat_interval' in [cluster.failure_detection] (600ms) must be at "
       "most half the deadline (1s)"},
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
      {"the quorum setting, which etcd replaced",
       base + lines({"[cluster.failure_detection]", "quorum = \"majority\""}),
       config_errc::unknown_key,
       "bad.toml:10: 'quorum' in [cluster.failure_detection] is no longer a setting: the "
       "coordination service (etcd, [cluster.coordination]) decides who is dead and who leads; "
       "remove it"},
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
      {"invalid TOML", base + lines({"[[node]]", "name = \"b"}), config_errc::syntax,
       "bad.toml:10: invalid TOML"},
      {"a key defined twice", base + lines({"port = 7002"}), config_errc::syntax,
       "bad.toml:9: invalid TOML"},
      {"an unknown key in a section, with a suggestion", base + lines({"[probe]", "cont = 2"}),
       config_errc::unknown_key,
       "bad.toml:10: unknown key 'cont' in [probe] (did you mean 'count'?)"},
      {"a section's own value check", base + lines({"[probe]", "count = 20"}),
       config_errc::invalid_value, "bad.toml:10: 'count' in [probe] must be from 0 to 16, not 20"},
      {"an error a section's parse returns", base + lines({"[probe]", "count = 0"}),
       config_errc::invalid_value, "bad.toml:10: a probe of nothing"},
      {"a section's check after placement", base + lines({"[probe]", "count = 13"}),
       config_errc::invalid_value, "bad.toml:9: 13 probes bring bad luck"},
      {"a section's placement that cannot be satisfied", base + lines({"[probe]", "gpus = 1"}),
       config_errc::unsatisfiable_placement,
       "bad.toml:9: placement of [probe] cannot be satisfied: it needs 1 GPU and no candidate "
       "node has them free (a has 0 of 0)"},
      {"an unknown child type",
       base + lines({"[[tree.child]]", "name = \"x\"", "type = \"wroker\""}),
       config_errc::invalid_value,
       "bad.toml:11: 'type' in [[tree.child]] is 'wroker'; expected one of supervisor, "
       "probe_job, worker (did you mean 'worker'?)"},
      {"a section child without its section",
       base + lines({"[[tree.child]]", "name = \"p\"", "type = \"probe_job\""}),
       config_errc::missing_key,
       "bad.toml:11: '/root/p' has type = \"probe_job\" but the file has no [probe]"},
      {"a section the tree does not start",
       base + probe + lines({"[[tree.child]]", "name = \"x\"", "type = \"supervisor\""}),
       config_errc::missing_key,
       "bad.toml:9: [probe] is not started by the tree: add a [[tree.child]] with type = "
       "\"probe_job\""},
      {"a second child of a section's type",
       base + probe +
           lines({"[[tree.child]]", "name = \"p\"", "type = \"probe_job\"", "[[tree.child]]",
                  "name = \"q\"", "type = \"probe_job\""}),
       config_errc::duplicate,
       "bad.toml:14: a second child of type probe_job ('/root/q'); the file has one [probe]"},
      {"a supervisor key on a section's child",
       base + probe +
           lines({"[[tree.child]]", "name = \"p\"", "type = \"probe_job\"",
                  "strategy = \"one_for_all\""}),
       config_errc::invalid_value,
       "bad.toml:14: 'strategy' applies to supervisors only, and '/root/p' has type = "
       "\"probe_job\""},
  };
  node_config_options opts;
  opts.child_types = {"worker"};
  opts.sections.push_back(probe_section());
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

TEST_CASE("deeply nested arrays and inline tables are an error, not a stack overflow", "[config]") {
  const size_t levels = 20000;
  SECTION("arrays") {
    auto text =
        base + "[probe]\ncount = " + std::string(levels, '[') + std::string(levels, ']') + "\n";
    auto cfg = parse_node_config(text, "deep.toml");
    REQUIRE_FALSE(cfg);
    CHECK(is(cfg.error(), config_errc::syntax));
    CHECK(message_of(cfg.error()) ==
          "deep.toml:10: arrays and inline tables nested more than 128 deep");
  }
  SECTION("inline tables") {
    std::string value;
    for (size_t i = 0; i < levels; ++i)
      value += "{ a = ";
    value += "1";
    for (size_t i = 0; i < levels; ++i)
      value += " }";
    auto cfg = parse_node_config(base + "\n[probe]\nx = " + value + "\n", "deep.toml");
    REQUIRE_FALSE(cfg);
    CHECK(is(cfg.error(), config_errc::syntax));
    CHECK(message_of(cfg.error()) ==
          "deep.toml:11: arrays and inline tables nested more than 128 deep");
  }
  SECTION("brackets in strings and comments do not count") {
    auto many = std::string(levels, '[');
    auto text = "# " + many + "\n" + lines({"[cluster]", "name = \"t\"", "[[node]]"}) +
                "name = 'a' # " + many + "\n" + lines({"host = \"127.0.0.1\"", "port = 7001"}) +
                "state_dir = \"\"\"s/a\"\"\"\n" + "x = \"\\\"" + many + "\"\n" + "y = '''\n" +
                many + "'''\n" + "z = [[1], [[2]], { a = [3] }]\n";
    auto cfg = parse_node_config(text, "strings.toml");
    REQUIRE_FALSE(cfg);
    // The depth check passes; the parser then finds the unknown keys.
    CHECK(is(cfg.error(), config_errc::unknown_key));
    CHECK(message_of(cfg.error()).rfind("strings.toml:9: unknown key 'x'", 0) == 0);
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

TEST_CASE("a config without [tree] starts each registered section under a root supervisor",
          "[config]") {
  node_config_options opts;
  opts.sections.push_back(probe_section());
  auto cfg = parse_node_config(
      lines({"[cluster]", "name = \"t\"", "state_root = \"st\"", "[[node]]", "name = \"a\"",
             "host = \"localhost\"", "port = 7001", "metrics_port = 9000", "[[node]]",
             "name = \"b\"", "host = \"127.0.0.2\"", "port = 7001"}) +
          lines({"[probe]", "count = 3"}),
      "ok.toml", opts);
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
  const auto& c = cfg->tree.children[0];
  CHECK(c.type == "probe_job");
  CHECK(c.path == "/root/probe");
  CHECK(c.restart == restart_type::temporary);
  CHECK(c.shutdown.mode == shutdown_mode::infinity);
  CHECK(c.line == 13);
  CHECK(cfg->tree.placement.start == std::vector<std::string>{"a"});
  const auto* p = cfg->section<probe_config>("probe");
  REQUIRE(p);
  CHECK(p->count == 3);
  CHECK(p->placement.start == std::vector<std::string>{"a", "b", "a"});
  CHECK(p->placement.failover == std::vector<std::string>{"a", "b"});
  CHECK(cfg->section<int>("probe") == nullptr);
  CHECK(cfg->section<probe_config>("job") == nullptr);
}

TEST_CASE("a registered section is placed where the tree starts its child", "[config]") {
  node_config_options opts;
  opts.sections.push_back(probe_section());
  auto cfg =
      parse_node_config(base + node_b + lines({"gpus = [0]"}) +
                            lines({"[probe]", "count = 1", "gpus = 1", "[[tree.child]]",
                                   "name = \"p\"", "type = \"probe_job\"", "placement = \"b\""}),
                        "placed.toml", opts);
  REQUIRE(cfg);
  REQUIRE(cfg->tree.children.size() == 1);
  CHECK(cfg->tree.children[0].restart == restart_type::temporary);
  CHECK(cfg->tree.children[0].placement.start == std::vector<std::string>{"b"});
  const auto* p = cfg->section<probe_config>("probe");
  REQUIRE(p);
  // Spread over the active nodes, on the one with a free GPU.
  CHECK(p->placement.gpus == 1);
  CHECK(p->placement.start == std::vector<std::string>{"b"});
  CHECK(p->placement.failover == std::vector<std::string>{"b"});
}

TEST_CASE("a section's keys join the parser's keys", "[config]") {
  node_config_options opts;
  opts.sections.push_back(probe_section());
  auto keys = node_config_keys(opts);
  auto has = [&](const std::string& section, const std::string& name) {
    for (const auto& k : keys)
      if (k.section == section && k.name == name)
        return true;
    return false;
  };
  CHECK(has("", "probe"));
  CHECK(has("probe", "count"));
  CHECK(has("tree.child", "type"));
  for (const auto& k : node_config_keys())
    CHECK(k.section.rfind("probe", 0) != 0);
  CHECK_FALSE(has("", "job"));
}

TEST_CASE("a config with nothing to run says so", "[config]") {
  auto cfg = parse_node_config(base, "empty.toml");
  REQUIRE(cfg);
  CHECK(cfg->tree.children.empty());
  bool nothing = false;
  for (const auto& note : cfg->notes)
    nothing |= note == "empty.toml: nothing to run: the tree has no children";
  CHECK(nothing);
  // A section that runs beside the tree (no tree child of its own, as
  // [serve]) is something to run.
  auto beside = probe_section();
  beside.child_type.clear();
  node_config_options opts;
  opts.sections.push_back(beside);
  auto served = parse_node_config(base + probe, "beside.toml", opts);
  REQUIRE(served);
  CHECK(served->tree.children.empty());
  for (const auto& note : served->notes)
    CHECK(note.find("nothing to run") == std::string::npos);
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

TEST_CASE("monitors sets how many peers watch each node, 4 unless set", "[config]") {
  auto plain = parse_node_config(base, "ok.toml");
  REQUIRE(plain);
  CHECK(plain->cluster.failure_detection.monitors == 4);
  auto seven =
      parse_node_config(base + lines({"[cluster.failure_detection]", "monitors = 7"}), "ok.toml");
  REQUIRE(seven);
  CHECK(seven->cluster.failure_detection.monitors == 7);
}
