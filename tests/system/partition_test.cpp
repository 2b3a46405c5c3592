// Real partitions: three nodes and the etcd members each in a network namespace
// of their own, joined by veth pairs to a bridge, with mutual TLS between the
// nodes. A partition takes a host's link down or adds nftables drop rules in its
// namespace. Each scenario must end with the fault-free digest (or an explicit
// error and no wrong digest), with distinct leadership terms, and with the
// nodes that were cut off fenced rather than acting on.
//
// Needs root (CI runs as root); where namespaces are not permitted each test
// says so and skips visibly.

#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "support/cluster_test_util.hpp"
#include "support/netns_lab.hpp"
#include "support/temp_dir.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/config/node_config.hpp"

using namespace understudy;
using namespace understudy::actors;

namespace {

using namespace std::chrono_literals;
using test::netns_lab;
using understudy::testing::hex;

const std::vector<std::string> node_names{"n1", "n2", "n3"};

/// The job: long enough to partition it in the middle.
std::string job_text(uint64_t steps) {
  return "[job]\nlayers = [64, 32, 10]\ndata = \"" UNDERSTUDY_DIGITS_PATH
         "\"\nworkers = 3\nshards = 3\nloaders = 3\nbatch = 16\nsteps = " +
         std::to_string(steps) +
         "\nseed = 7\ncheckpoint_every = 5\neval_every = 0\nlr = 0.1\n\n"
         "[job.shard]\nplacement = \"spread\"\n[job.loader]\nplacement = \"spread\"\n"
         "[job.worker]\nplacement = \"spread\"\n[job.trainer]\nplacement = [\"n1\", \"n2\", "
         "\"n3\"]\n";
}

/// A lab with the etcd members e1..eN and the nodes n1..n3, their config with
/// certificates, and the fault-free digest of its job.
struct partition_lab {
  test::temp_dir dir{"partition"};
  netns_lab lab;
  std::vector<std::string> etcd_members;
  std::string config;
  std::string endpoints;
  std::map<std::string, pid_t> pids;
  uint64_t digest = 0;

  explicit partition_lab(size_t etcds, uint64_t steps = 3000) {
    for (size_t i = 0; i < etcds; ++i) {
      etcd_members.push_back("e" + std::to_string(i + 1));
      lab.add(etcd_members.back(), static_cast<unsigned>(100 + i));
    }
    for (size_t i = 0; i < node_names.size(); ++i)
      lab.add(node_names[i], static_cast<unsigned>(1 + i));
    std::string text = "[cluster]\nname = \"part\"\n\n[cluster.security]\ndir = \"" + dir.path +
                       "/certs\"\n\n[cluster.failure_detection]\nheartbeat_interval = "
                       "\"100ms\"\ndeadline = \"1s\"\nconnection_timeout = \"2s\"\n\n";
    for (size_t i = 0; i < node_names.size(); ++i)
      text += "[[node]]\nname = \"" + node_names[i] + "\"\nhost = \"" + lab.at(node_names[i]).ip +
              "\"\nport = 4700\nstate_dir = \"" + dir.path + "/" + node_names[i] + "\"\n\n";
    text += job_text(steps);
    config = dir.path + "/cluster.toml";
    std::ofstream{config} << text;
    REQUIRE(std::system((std::string{UNDERSTUDY_CLI_PATH} + " certs " + config + " >/dev/null 2>&1")
                            .c_str()) == 0);
    digest = understudy::testing::config_digest(config, dir.path + "/fault-free");
  }

  std::string log(const std::string& name) const { return dir.path + "/" + name + ".log"; }

  void start_etcd() {
    std::string initial;
    for (auto& e : etcd_members)
      initial += (initial.empty() ? "" : ",") + e + "=http://" + lab.at(e).ip + ":2380";
    for (auto& e : etcd_members) {
      auto ip = lab.at(e).ip;
      pids[e] = lab.start(e,
                          {"etcd",
                           "--name",
                           e,
                           "--data-dir",
                           dir.path + "/" + e + ".etcd",
                           "--listen-client-urls",
                           "http://" + ip + ":2379",
                           "--advertise-client-urls",
                           "http://" + ip + ":2379",
                           "--listen-peer-urls",
                           "http://" + ip + ":2380",
                           "--initial-advertise-peer-urls",
                           "http://" + ip + ":2380",
                           "--initial-cluster",
                           initial,
                           "--initial-cluster-state",
                           "new",
                           "--heartbeat-interval",
                           "10",
                           "--election-timeout",
                           "100"},
                          log(e));
      endpoints += (endpoints.empty() ? "" : ",") + std::string{"http://"} + ip + ":2379";
    }
    for (auto& e : etcd_members)
      REQUIRE(test::await_text(log(e), "ready to serve client requests", 20s));
  }

  /// Starts etcd and the nodes and waits until the job makes progress.
  void start() {
    start_etcd();
    start_nodes();
    REQUIRE(test::await_text(log("n1"), "progress: step", 60s));
  }

  void start_nodes() {
    for (auto& n : node_names)
      pids[n] = lab.start(
          n, {UNDERSTUDY_CLI_PATH, "node", config, "--name", n, "--coordination", endpoints},
          log(n));
  }

  /// Waits for every node to end; their exit statuses.
  std::map<std::string, int> await_nodes(std::chrono::seconds timeout) {
    std::map<std::string, int> status;
    auto until = std::chrono::steady_clock::now() + timeout;
    for (auto& n : node_names) {
      auto i = pids.find(n);
      if (i == pids.end())
        continue; // waited for already
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      status[n] = lab.wait_exit(i->second, std::max(left, std::chrono::milliseconds(1)));
    }
    return status;
  }

  std::string all_logs() const {
    std::string out;
    for (auto& n : node_names)
      out += "---- " + n + "\n" + test::read_text(log(n));
    return out;
  }

  /// The node whose log holds the final line, and that line's digest.
  std::pair<std::string, std::string> final_line() const {
    static const std::regex digest_re{"final: .*params_digest=([0-9a-f]{16})"};
    std::pair<std::string, std::string> found;
    for (auto& n : node_names) {
      auto text = test::read_text(log(n));
      std::smatch m;
      if (std::regex_search(text, m, digest_re))
        found = {n, m[1]};
    }
    return found;
  }

  /// Every leadership term each node announced ("leads (term T)").
  std::map<uint64_t, std::set<std::string>> terms() const {
    static const std::regex term_re{"node (n[0-9]+): leads \\(term ([0-9]+)\\)"};
    std::map<uint64_t, std::set<std::string>> out;
    for (auto& n : node_names) {
      auto text = test::read_text(log(n));
      for (std::sregex_iterator i{text.begin(), text.end(), term_re}, end; i != end; ++i)
        out[std::stoull((*i)[2])].insert((*i)[1]);
    }
    return out;
  }

  /// Checks the outcome every scenario must have: the fault-free digest on
  /// exactly one node's final line, and one node per leadership term.
  void check_outcome(const std::map<std::string, int>& status) {
    INFO(all_logs());
    auto [who, d] = final_line();
    CHECK(d == hex(digest));
    for (auto& [term, nodes] : terms()) {
      INFO("term " << term);
      CHECK(nodes.size() == 1);
    }
    for (auto& [n, s] : status) {
      INFO("node " << n << " status " << s);
      CHECK(s >= 0);             // every node ended
      CHECK(s < 128);            // none of a signal
      CHECK((s == 0 || s == 3)); // done, or fenced
    }
  }
};

#define SKIP_WITHOUT_NETNS()        \
  if (!netns_lab::available()) {    \
    WARN(test::netns_skip_message); \
    return;                         \
  }

} // namespace

TEST_CASE("partition: a leader cut from everyone stops and another node finishes the job",
          "[cluster][partition]") {
  SKIP_WITHOUT_NETNS();
  partition_lab p{1};
  p.start();
  p.lab.cut("n1");
  // n1 must notice that it cannot renew and end before its lease lapses; the
  // others take over once etcd lets its session go.
  auto n1 = p.lab.wait_exit(p.pids["n1"], 20s);
  p.lab.heal("n1");
  p.pids.erase("n1");
  auto status = p.await_nodes(120s);
  status["n1"] = n1;
  p.check_outcome(status);
  CHECK(n1 == 3);
  CHECK(p.final_line().first != "n1");
}

TEST_CASE("partition: a leader cut from etcd only hands the job over before its lease ends",
          "[cluster][partition]") {
  SKIP_WITHOUT_NETNS();
  partition_lab p{1};
  p.start();
  p.lab.isolate_from("n1", "e1");
  auto n1 = p.lab.wait_exit(p.pids["n1"], 20s);
  p.pids.erase("n1");
  auto status = p.await_nodes(120s);
  status["n1"] = n1;
  p.check_outcome(status);
  CHECK(n1 == 3);
  CHECK(p.final_line().first != "n1");
}

TEST_CASE("partition: a one-way partition between two nodes fences one of them, not both",
          "[cluster][partition]") {
  SKIP_WITHOUT_NETNS();
  partition_lab p{1};
  p.start();
  p.lab.drop("n2", "n1");
  auto status = p.await_nodes(150s);
  p.check_outcome(status);
  INFO(p.all_logs());
  // The cut pair cannot both go on: exactly one of n1 and n2 was fenced.
  CHECK((status["n1"] == 3) != (status["n2"] == 3));
  CHECK(status["n3"] == 0);
}

TEST_CASE("partition: a follower cut off and healed is fenced and the job goes on without it",
          "[cluster][partition]") {
  SKIP_WITHOUT_NETNS();
  partition_lab p{1};
  p.start();
  p.lab.cut("n3");
  REQUIRE(test::await_text(p.log("n1"), "peer n3 is dead", 20s));
  p.lab.heal("n3");
  auto status = p.await_nodes(150s);
  p.check_outcome(status);
  CHECK(status["n3"] == 3);
  CHECK(p.final_line().first == "n1");
}

TEST_CASE("partition: losing one of three etcd members changes nothing for the job",
          "[cluster][partition]") {
  SKIP_WITHOUT_NETNS();
  partition_lab p{3};
  p.start();
  p.lab.cut("e3");
  auto status = p.await_nodes(150s);
  p.check_outcome(status);
  for (auto& n : node_names)
    CHECK(status[n] == 0);
  CHECK(p.final_line().first == "n1");
}
