// Cluster: real node processes on loopback, started by `understudy launch`.

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/cluster_test_util.hpp"
#include "support/temp_dir.hpp"
#include "understudy/actors/cluster_training.hpp"
#include "understudy/state/runtime.hpp"

using namespace understudy;
using namespace understudy::actors;

using test::temp_dir;
using namespace understudy::testing;

TEST_CASE(
    "a cluster job ends with the fault-free digest after a node is killed and another "
    "frozen past its deadline",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 300);
  node_config_options opts;
  opts.sections.push_back(job_section());
  auto nc = load_node_config(file, opts);
  REQUIRE(nc);
  auto expected = fault_free_digest(*nc, dir.path + "/single");
  int status = 0;
  auto out = run_cli("launch " + file + " --kill n2@60 --freeze n3@150:2s", status);
  INFO(out);
  CHECK(status == 0);
  // The leader's result: every step, the digest of the run without faults.
  std::smatch m;
  REQUIRE(
      std::regex_search(out, m, std::regex{R"(final: steps=(\d+) .*params_digest=([0-9a-f]+))"}));
  CHECK(m[1] == "300");
  CHECK(m[2] == hex(expected));
  // The last progress line once, with the final evaluation's accuracy.
  std::regex last{R"(progress: step 300/300 loss \S+ accuracy (\d\.\d{4}) )"};
  CHECK(std::distance(std::sregex_iterator(out.begin(), out.end(), last), std::sregex_iterator()) ==
        1);
  // n2 was killed; n3 was declared dead and fenced, its actors restarted
  // elsewhere; the spare and the leader were never fenced.
  CHECK(out.find("chaos: SIGKILL n2") != std::string::npos);
  // The file has no [cluster.security]: the launch made certificates, and
  // every node talks mutual TLS with them.
  CHECK_THAT(out, Catch::Contains("launch: mutual TLS with the certificates in " + dir.path +
                                  "/state/certs"));
  for (const char* n : {"n1", "n2", "n3", "s1"})
    CHECK_THAT(out, Catch::Contains(std::string{"["} + n + "] note: node '" + n +
                                    "': mutual TLS with certificate"));
  CHECK(out.find("chaos: SIGSTOP n3") != std::string::npos);
  CHECK(std::regex_search(out, std::regex{R"(\[n1\] node n1: peer n3 is dead)"}));
  CHECK(out.find("launch: node s1 exited with status 0") != std::string::npos);
  CHECK(out.find("node s1: fenced") == std::string::npos);
  CHECK(out.find("node n1: fenced") == std::string::npos);
  // A crash restarts only the crashed actor: worker-0 restarted in place.
  CHECK(out.find("child_restarted /root/job/workers/worker-0#2") != std::string::npos);
  // Every node's event log, merged: the lost node is an incident from its
  // detection to the job running again, with the node fenced and its actors
  // moved on the way.
  int events_status = 0;
  auto timeline = run_cli("events " + file, events_status);
  INFO(timeline);
  CHECK(events_status == 0);
  CHECK(std::regex_search(timeline,
                          std::regex{R"(incident \d+ at [\d:.]+, [\d.]+ ms until resumed)"}));
  CHECK(std::regex_search(timeline, std::regex{R"(fenced   \[\w+\] peer n2 is dead)"}));
  CHECK(std::regex_search(
      timeline, std::regex{R"(moved    \[n1\] note moved /root/job/\S+ from n2 \(lost\))"}));
  CHECK(std::regex_search(timeline,
                          std::regex{R"(resumed  \[n1\] job_resumed /root/job/trainer#\d+)"}));
  // After the final line, the goodput with what the incidents cost.
  CHECK(std::regex_search(
      out,
      std::regex{
          R"(\[n1\] goodput: \d+\.\d% of \d+\.\d+ s in committed steps; \d+ incidents cost \d+ ms)"}));
}

TEST_CASE(
    "when the leader's node is killed the next candidate runs the tree and the digest is "
    "unchanged",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 300);
  // n3 is frozen too, while n2 leads: n2 moves n3's actors as n1 did.
  auto out = launch_expecting(file, dir.path, "--kill n1@100 --freeze n3@200:2s", 300, "n2");
  INFO(out);
  CHECK(out.find("chaos: SIGKILL n1") != std::string::npos);
  CHECK_THAT(out, Catch::Contains("[n2] node n2: taking over the job's tree"));
  // n1's stateful actors went to the spare first ("spread": spares first),
  // with their checkpoints copied from n1's buddy n2, which held the replicas.
  CHECK_THAT(out,
             Catch::Contains("[n2] node n2: moved /root/job/shards/shard-0 from n1 (lost) to s1, "
                             "3 checkpoint versions copied from n2"));
  CHECK_THAT(out,
             Catch::Contains("[n2] node n2: moved /root/job/loaders/loader-0 from n1 (lost) to s1, "
                             "3 checkpoint versions copied from n2"));
  // It resumes from what the shards and loaders have on disk (replicas of n1's
  // included), not from the start.
  std::smatch m;
  REQUIRE(
      std::regex_search(out, m, std::regex{R"(\[n2\] job: resuming from committed step (\d+))"}));
  CHECK(std::stoull(m[1]) >= 95);
  CHECK(std::regex_search(out, std::regex{R"(\[n2\] node n2: peer n3 is dead)"}));
  // n3 and s1 followed n2: neither started a tree of its own.
  CHECK(out.find("[n3] node n3: taking over") == std::string::npos);
  CHECK(out.find("[s1] node s1: taking over") == std::string::npos);
  CHECK(out.find("node n2: fenced") == std::string::npos);
}

TEST_CASE(
    "nodes watched on a ring (monitors = 1) find a killed leader and a frozen node, and the "
    "digest is unchanged",
    "[cluster]") {
  // Four nodes with one watcher each: every node beats to the next one on the ring of etcd's
  // members only, and knows the others alive from etcd.
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 300);
  replace_once(text, "connection_timeout = \"2s\"\n",
               "connection_timeout = \"2s\"\nmonitors = 1\n");
  std::ofstream{file} << text;
  auto out = launch_expecting(file, dir.path, "--kill n1@100 --freeze n3@200:2s", 300, "n2");
  INFO(out);
  CHECK_THAT(out, Catch::Contains("[n2] node n2: taking over the job's tree"));
  CHECK(std::regex_search(out, std::regex{R"(\[n2\] node n2: peer n3 is dead)"}));
  CHECK(out.find("node n2: fenced") == std::string::npos);
  CHECK(out.find("[s1] node s1: taking over") == std::string::npos);
}

TEST_CASE(
    "an elastic job that loses two nodes with one spare parks a worker, goes on with the others, "
    "takes a node that comes back and ends with the fault-free digest",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 1500);
  replace_once(text, "faults = ", "min_workers = 1\nfaults = ");
  std::ofstream{file} << text;
  auto out =
      launch_expecting(file, dir.path, "--kill n2@60 --kill n3@150 --restart n2@250", 1500, "n1");
  INFO(out);
  // n2's worker moved to the spare, the only node without a worker; when n3
  // was lost too, its worker had nowhere to go and was parked.
  CHECK(std::regex_search(
      out, std::regex{R"(\[n1\] job: /root/job/workers/worker-1 moved from n2 to s1)"}));
  CHECK_THAT(out, Catch::Contains("[n1] job: /root/job/workers/worker-2 parked"));
  CHECK(std::regex_search(out, std::regex{R"(\[n1\] trainer: step \d+ runs on 2 of 3 workers)"}));
  CHECK(out.find("fewer than min_workers") == std::string::npos);
  // n2 came back as a new epoch: the parked worker started there, and the
  // job ran on three workers again.
  CHECK_THAT(out, Catch::Contains("chaos: restarting n2"));
  CHECK_THAT(out, Catch::Contains("[n1] job: /root/job/workers/worker-2 starts on n2"));
  CHECK(std::regex_search(out, std::regex{R"(\[n1\] trainer: step \d+ runs on 3 of 3 workers)"}));
}

TEST_CASE(
    "an elastic job restarts a straggling worker on a free node and ends with the fault-free "
    "digest",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 400);
  replace_once(text, "faults = \"worker:0@30\"",
               "min_workers = 1\nfaults = \"worker:0@30,slow:worker:1@40:5\"");
  std::ofstream{file} << text;
  auto out = launch_expecting(file, dir.path, "", 400, "n1");
  INFO(out);
  // worker-1 on n2 stayed far behind the others; the trainer restarted it,
  // and it started again on the spare, the node free of the job's workers.
  CHECK(std::regex_search(out, std::regex{R"(straggler_detected /root/job/workers/worker-1#1)"}));
  CHECK_THAT(out, Catch::Contains("[n1] job: /root/job/workers/worker-1 moved from n2 to s1"));
}

TEST_CASE(
    "a leader frozen past its deadline is replaced and fenced and its return changes "
    "nothing",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 2000);
  auto out = launch_expecting(file, dir.path, "--freeze n1@100:2s", 2000, "n2");
  INFO(out);
  CHECK_THAT(out, Catch::Contains("[n2] node n2: taking over the job's tree"));
  // n1 came back while n2 ran the job: it learnt that it was fenced, started
  // nothing (its late spawn requests and replicas were refused) and exited 3.
  CHECK_THAT(out, Catch::Contains("chaos: SIGCONT n1"));
  CHECK_THAT(out, Catch::Contains("[n1] node n1: fenced"));
  CHECK_THAT(out, Catch::Contains("launch: node n1 exited with status 3"));
  CHECK(out.find("[n1] final:") == std::string::npos);
}

TEST_CASE(
    "a hung isolated worker and a hung shard on other nodes are found by the step deadline, "
    "killed and replaced, and the digest is unchanged",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 300, "process = \"isolated\"\n");
  replace_once(text, "faults = \"worker:0@30\"", "faults = \"hang:worker:1@60,hang:shard:2@120\"");
  std::ofstream{file} << text;
  // Neither exits: only the leader's trainer, asking who still answers over
  // the network, can find them.
  auto out = launch_expecting(file, dir.path, "", 300, "n1");
  INFO(out);
  std::smatch m;
  for (const char* who : {"workers/worker-1", "shards/shard-2"}) {
    std::regex found{std::string{R"(\[n1\] .*hang_detected /root/job/)"} + who +
                     R"(#\d+ action=kill waited=\d+\.\dus reason="did not answer for (\d+) ms)"};
    REQUIRE(std::regex_search(out, m, found));
    // The floor (250 ms) and the wait for an answer, far below the 10 s ceiling.
    CHECK(std::stoul(m[1]) >= 250);
    CHECK(std::stoul(m[1]) < 10000);
  }
  // The worker's process was killed with it and a fresh one went on past step 60.
  CHECK(std::regex_search(out, std::regex{R"(child_restarted /root/job/workers/worker-1#\d+)"}));
  CHECK(std::regex_search(out, std::regex{R"(child_restarted /root/job/shards/shard-2#\d+)"}));
  CHECK_THAT(out, Catch::Contains("launch: node n1 exited with status 0"));
}

TEST_CASE(
    "isolated workers run in processes of their own and a process that aborts is restarted "
    "without harm to its node",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 300, "process = \"isolated\"\n");
  // worker:0@30 aborts worker-0's process (SIGABRT), as a native crash would.
  auto out = launch_expecting(file, dir.path, "", 300, "n1");
  INFO(out);
  CHECK_THAT(out, Catch::Contains("[n1] isolated worker: injected fault worker:0@30: aborting"));
  // The incarnation that reached step 30 (the first, unless a start under
  // load failed and was retried) crashed of the abort, and the next one went
  // on past step 30: the fault fired once.
  std::regex aborted{
      R"(child_exited /root/job/workers/worker-0#(\d+) action=restart reason="crashed: )"
      R"(/root/job/workers/worker-0 \(isolated, on n1\) \(pid \d+\) was killed by signal 6)"};
  std::smatch m;
  REQUIRE(std::regex_search(out, m, aborted));
  auto next = std::to_string(std::stoi(m[1]) + 1);
  CHECK_THAT(out, Catch::Contains("child_restarted /root/job/workers/worker-0#" + next));
  CHECK(std::distance(std::sregex_iterator{out.begin(), out.end(), aborted},
                      std::sregex_iterator{}) == 1);
  CHECK_THAT(out, Catch::Contains("launch: node n1 exited with status 0"));
}

TEST_CASE(
    "over mutual TLS a cluster survives its leader's SIGKILL and a frozen node with the "
    "fault-free digest",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 300, "process = \"isolated\"\n");
  text.replace(text.find("[cluster.failure_detection]"), 0,
               "[cluster.security]\ndir = \"" + dir.path + "/certs\"\n\n");
  std::ofstream{file} << text;
  int status = 0;
  auto certs = run_cli("certs " + file, status);
  INFO(certs);
  REQUIRE(status == 0);
  // A killed node's connection fails with an OpenSSL error; CAF's TLS
  // transport must not let it take the other nodes' connections down.
  auto out = launch_expecting(file, dir.path, "--kill n1@100 --freeze n3@200:2s", 300, "n2");
  INFO(out);
  CHECK_THAT(out, Catch::Contains("mutual TLS"));
  CHECK_THAT(out, Catch::Contains("[n2] node n2: taking over the job's tree"));
  CHECK(std::regex_search(out, std::regex{R"(\[n2\] node n2: peer n3 is dead)"}));
  // Only n1 and n3 were lost while the job ran: n2 and s1, which were never
  // killed or frozen, kept their connection until the final line.
  auto before = out.substr(0, out.find("final:"));
  CHECK(before.find("node n2: peer s1 is dead") == std::string::npos);
  CHECK(before.find("node s1: peer n2 is dead") == std::string::npos);
}

TEST_CASE("the leader runs the tree the config declares, the job nested where [tree] puts it",
          "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 300);
  text.replace(text.find("[job]\n"), 0,
               "[tree]\nname = \"top\"\nstrategy = \"one_for_all\"\n"
               "intensity = { max_restarts = 3, period = \"10s\" }\n\n"
               "[[tree.child]]\nname = \"group\"\ntype = \"supervisor\"\n\n"
               "[[tree.child.child]]\nname = \"digits\"\ntype = \"training_job\"\n"
               "restart = \"transient\"\n\n");
  std::ofstream{file} << text;
  auto out = launch_expecting(file, dir.path, "", 300, "n1");
  INFO(out);
  // The job's actors live under the declared supervisors: worker-0's crash
  // (worker:0@30) restarts it at /top/group/digits/workers/worker-0.
  CHECK_THAT(out, Catch::Contains("child_restarted /top/group/digits/workers/worker-0#2"));
  CHECK_THAT(out, Catch::Contains("supervisor_started /top/group "));
}

TEST_CASE(
    "after its buddy is killed a leader replicates further down the chain, so its "
    "freezing loses nothing",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 1200);
  replace_once(text, "placement = [\"n1\", \"n2\"]", "placement = [\"n1\", \"n2\", \"n3\"]");
  std::ofstream{file} << text;
  // n2 (n1's buddy) dies; n1 then copies its commits to n3, n2's buddy. When
  // n1 (the leader) freezes, n3 takes over and finds n1's actors' newest
  // checkpoints on itself.
  auto out = launch_expecting(file, dir.path, "--kill n2@60 --freeze n1@150:2s", 1200, "n3");
  INFO(out);
  CHECK_THAT(out, Catch::Contains("[n3] node n3: taking over the job's tree"));
  CHECK_THAT(out, Catch::Contains("[n3] node n3: moved /root/job/shards/shard-0 from n1 (lost) to "
                                  "s1, 3 checkpoint versions copied from n3"));
  CHECK_THAT(out, Catch::Contains("launch: node n1 exited with status 3"));
}

TEST_CASE("isolating shards, loaders or the trainer is refused naming the table", "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 100);
  text.replace(text.find("[job.shard]\nplacement = \"spread\"\n"),
               std::string{"[job.shard]\nplacement = \"spread\"\n"}.size(),
               "[job.shard]\nplacement = \"spread\"\nprocess = \"isolated\"\n");
  std::ofstream{file} << text;
  node_config_options opts;
  opts.sections.push_back(job_section());
  auto nc = load_node_config(file, opts);
  REQUIRE_FALSE(nc);
  CHECK_THAT(describe(nc.error()), Catch::Contains("cluster.toml:") &&
                                       Catch::Contains("[job.shard] process = \"isolated\" is "
                                                       "not supported"));
}

TEST_CASE("a node refuses to start with a config naming no such node", "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 100);
  int status = 0;
  auto out = run_cli("node " + file + " --name n9", status);
  CHECK(WEXITSTATUS(status) == 2);
  CHECK_THAT(out, Catch::Contains("no node named 'n9'"));
}

TEST_CASE("understudy status prints each node's peers and the leader's live tree with placement",
          "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 600);
  std::string cmd = std::string{"timeout 180 "} + UNDERSTUDY_CLI_PATH + " launch " + file + " 2>&1";
  FILE* launch = ::popen(cmd.c_str(), "r");
  REQUIRE(launch != nullptr);
  // Wait until the job runs: the leader reports progress.
  std::string seen;
  char line[4096];
  while (std::fgets(line, sizeof line, launch) != nullptr) {
    seen += line;
    if (std::string{line}.find("progress: step") != std::string::npos)
      break;
  }
  int status = 0;
  auto out = run_cli("status " + file, status);
  int json_status = 0;
  auto json_out = run_cli("status --json " + file, json_status);
  // Let the job finish.
  while (std::fgets(line, sizeof line, launch) != nullptr)
    seen += line;
  ::pclose(launch);
  INFO(out << "\n---- launch output\n" << seen);
  CHECK(status == 0);
  CHECK_THAT(out, Catch::Contains("node n1 (active) at 127.0.0.1"));
  CHECK_THAT(out, Catch::Contains("node s1 (spare)"));
  CHECK_THAT(out, Catch::Contains("peer n2: alive"));
  CHECK(std::regex_search(
      out, std::regex{R"(/root/job/shards/shard-0  running, incarnation 1, restarts \d+, on n1)"}));
  CHECK(std::regex_search(
      out,
      std::regex{R"(/root/job/shards/shard-1  running, incarnation \d+, restarts \d+, on n2)"}));
  CHECK_THAT(out, Catch::Contains("recent events:"));
  // The job's part: its step and goodput so far.
  CHECK(std::regex_search(
      out,
      std::regex{
          R"(job: step \d+/600 \(committed \d+\), \d+ steps/s, loss \d\S*, accuracy (-|\d\.\d{4}), restarts \d+, lost steps \d+, goodput \d+\.\d%)"}));
  CHECK_THAT(seen, Catch::Contains("final: steps=600"));
  // --json: one object per node and line, the same facts.
  INFO(json_out);
  CHECK(json_status == 0);
  std::map<std::string, nlohmann::json> nodes;
  std::istringstream lines{json_out};
  for (std::string l; std::getline(lines, l);) {
    auto j = nlohmann::json::parse(l, nullptr, false);
    REQUIRE(j.is_object());
    nodes[j.value("node", "")] = j;
  }
  REQUIRE(nodes.size() == 4);
  for (const auto& [name, j] : nodes) {
    CHECK(j.value("reachable", false));
    CHECK(j.value("leader", "") == "n1");
    CHECK(j["peers"].size() == 3);
  }
  CHECK(nodes["s1"].value("role", "") == "spare");
  CHECK(nodes["n1"].value("leads", false));
  CHECK_FALSE(nodes["n2"].value("leads", true));
  bool shard1_on_n2 = false;
  for (const auto& c : nodes["n1"]["tree"])
    if (c.value("path", "") == "/root/job/shards/shard-1")
      shard1_on_n2 = c.value("node", "") == "n2" && c.value("status", "") == "running";
  CHECK(shard1_on_n2);
  const auto& job = nodes["n1"]["job"];
  CHECK(job.value("steps", 0) == 600);
  CHECK(job.value("step", uint64_t{0}) >= job.value("committed", uint64_t{0}));
  CHECK(job.value("goodput", -1.0) >= 0);
  CHECK_FALSE(nodes["n2"].contains("job"));
}

TEST_CASE("understudy status says which nodes cannot be reached", "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 100);
  int status = 0;
  auto out = run_cli("status " + file, status);
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(out, Catch::Contains("node n1 at 127.0.0.1"));
  CHECK_THAT(out, Catch::Contains("unreachable"));
  auto json_out = run_cli("status --json " + file, status);
  INFO(json_out);
  CHECK(WEXITSTATUS(status) == 1);
  auto first = nlohmann::json::parse(json_out.substr(0, json_out.find('\n')), nullptr, false);
  REQUIRE(first.is_object());
  CHECK(first.value("node", "") == "n1");
  CHECK_FALSE(first.value("reachable", true));
  CHECK_FALSE(first.value("error", "").empty());
}

TEST_CASE(
    "a stateful actor whose node and buddy are both killed is not started fresh: the job "
    "fails naming it",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 2000);
  // n2's checkpoints are on n2 and on its buddy n3: killed together, they
  // take every copy with them.
  int status = 0;
  auto out = run_cli("launch " + file + " --kill n2@100 --kill n3@100", status);
  INFO(out);
  CHECK(status != 0);
  // Either no live node holds any copy, and the child is refused; or, when n2
  // replicated its first commits further down its chain while n3 was not
  // connected yet, the leader holds copies of an early step only, and the
  // trainer cannot roll every participant back that far. Both end the job
  // with an error naming the lost state.
  bool refused = std::regex_search(
      out, std::regex{R"(cannot start /root/job/(shards|loaders)/\w+-\d: its checkpoints are on )"
                      R"(n2 and its buddy n3, and neither is alive; it is not started without )"
                      R"(them)"});
  bool too_old = std::regex_search(
      out, std::regex{R"(the job failed: not_found: /root/job/\w+/\w+-\d: no checkpoint of )"
                      R"(committed step \d+)"});
  CHECK((refused || too_old));
  if (refused)
    CHECK_THAT(out, Catch::Contains("the tree /root ended before the work did"));
  // No result at all rather than a wrong one: the leader says the job failed
  // and exits as a failed job (4) at once.
  CHECK(out.find("final:") == std::string::npos);
  CHECK_THAT(out, Catch::Contains("[n1] understudy node: the job failed: "));
  CHECK_THAT(out, Catch::Contains("launch: node n1 exited with status 4"));
}

TEST_CASE(
    "launch refuses a missing data file and a model that does not fit its data before "
    "any node starts",
    "[cluster]") {
  temp_dir dir{"cluster-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 100);
  SECTION("a data file that is not there") {
    replace_once(text, UNDERSTUDY_DIGITS_PATH, dir.path + "/missing.csv.gz");
    std::ofstream{file} << text;
    int status = 0;
    auto out = run_cli("launch " + file, status);
    INFO(out);
    CHECK(WEXITSTATUS(status) == 2);
    CHECK_THAT(out, Catch::Contains(dir.path + "/missing.csv.gz: cannot open"));
    CHECK_THAT(out, Catch::Contains("; no node started"));
    CHECK(out.find("launch: started node") == std::string::npos);
  }
  SECTION("a model whose inputs are not the data's") {
    replace_once(text, "layers = [64, 32, 10]", "layers = [32, 32, 10]");
    std::ofstream{file} << text;
    int status = 0;
    auto out = run_cli("launch " + file, status);
    INFO(out);
    CHECK(WEXITSTATUS(status) == 2);
    CHECK_THAT(out, Catch::Contains("does not fit the model"));
    CHECK(out.find("launch: started node") == std::string::npos);
  }
  CHECK_FALSE(std::filesystem::exists(dir.path + "/state/n1"));
}
