// Cluster: real node processes on loopback, started by `understudy launch`.

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include <catch2/catch.hpp>

#include "understudy/actors/cluster_training.hpp"
#include "understudy/runtime/runtime.hpp"

using namespace understudy;

namespace {

struct temp_dir {
  std::string path;
  temp_dir() {
    std::string tmpl = "/tmp/understudy-cluster-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

/// A 4-node cluster (three active nodes and a spare) on loopback; ports derived
/// from the process id so that parallel test runs do not collide, and below
/// Linux's ephemeral range (32768 up), where another test's outgoing
/// connection could hold one.
std::string cluster_config(const std::string& dir, uint64_t steps,
                           const std::string& worker_extra = "") {
  auto base = 20000 + (static_cast<unsigned>(::getpid()) % 3000) * 4;
  std::string nodes;
  const char* names[] = {"n1", "n2", "n3", "s1"};
  for (int i = 0; i < 4; ++i) {
    nodes += "[[node]]\nname = \"" + std::string{names[i]} +
             "\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(base + i) + "\nstate_dir = \"" +
             dir + "/" + names[i] + "\"\n" + (i == 3 ? "role = \"spare\"\n" : "") + "\n";
  }
  return "[cluster]\nname = \"test\"\n\n[cluster.failure_detection]\n"
         "heartbeat_interval = \"100ms\"\ndeadline = \"1s\"\nconnection_timeout = \"2s\"\n\n" +
         nodes +
         "[job]\nlayers = [64, 32, 10]\ndata = \"" UNDERSTUDY_DIGITS_PATH
         "\"\n"
         "workers = 3\nshards = 3\nloaders = 3\nbatch = 16\nsteps = " +
         std::to_string(steps) +
         "\nseed = 5\ncheckpoint_every = 5\neval_every = 0\nlr = 0.1\n"
         "faults = \"worker:0@30\"\n\n"
         "[job.shard]\nplacement = \"spread\"\n[job.loader]\nplacement = \"spread\"\n"
         "[job.worker]\nplacement = \"spread\"\n" +
         worker_extra + "[job.trainer]\nplacement = [\"n1\", \"n2\"]\n";
}

/// The digest the job's config gives in one process, without faults.
uint64_t fault_free_digest(const node_config& nc, const std::string& dir) {
  auto tc = make_training_config(nc);
  REQUIRE(tc);
  tc->faults.clear();
  runtime_config rc;
  rc.log_events = false;
  runtime rt{rc};
  state_store_config sc;
  sc.directory = dir;
  auto p = rt.open_state(sc);
  REQUIRE(p);
  auto job = training_job::create(std::move(*tc), *p);
  REQUIRE(job);
  auto tree = rt.start(job->spec());
  REQUIRE(tree);
  auto result = job->wait(std::chrono::minutes(2));
  REQUIRE(result);
  rt.stop(*tree);
  return result->params_digest;
}

/// Runs `understudy` with `args` and returns its output (stdout and stderr).
std::string run_cli(const std::string& args, int& status) {
  std::string cmd = std::string{"timeout 180 "} + UNDERSTUDY_CLI_PATH + " " + args + " 2>&1";
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  REQUIRE(f != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
    out.append(buf, n);
  status = ::pclose(f);
  return out;
}

std::string hex(uint64_t x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, x);
  return buf;
}

} // namespace

TEST_CASE(
    "a cluster job ends with the fault-free digest after a node is killed and another "
    "frozen past its deadline",
    "[cluster]") {
  temp_dir dir;
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 300);
  node_config_options opts;
  opts.check_job = check_training_job;
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
  // n2 was killed; n3 was declared dead and fenced, its actors restarted
  // elsewhere; the spare and the leader were never fenced.
  CHECK(out.find("chaos: SIGKILL n2") != std::string::npos);
  CHECK(out.find("chaos: SIGSTOP n3") != std::string::npos);
  CHECK(std::regex_search(out, std::regex{R"(\[n1\] node n1: peer n3 is dead)"}));
  CHECK(out.find("launch: node s1 exited with status 0") != std::string::npos);
  CHECK(out.find("node s1: fenced") == std::string::npos);
  CHECK(out.find("node n1: fenced") == std::string::npos);
  // A crash restarts only the crashed actor: worker-0 restarted in place.
  CHECK(out.find("child_restarted /root/job/workers/worker-0#2") != std::string::npos);
}

namespace {

/// Launches the cluster of `file` with `chaos` and checks that the job ends
/// with the fault-free digest, printed by `finisher`. Returns the output.
std::string launch_expecting(const std::string& file, const std::string& dir,
                             const std::string& chaos, uint64_t steps,
                             const std::string& finisher) {
  node_config_options opts;
  opts.check_job = check_training_job;
  auto nc = load_node_config(file, opts);
  REQUIRE(nc);
  auto expected = fault_free_digest(*nc, dir + "/single");
  int status = 0;
  auto out = run_cli("launch " + file + " " + chaos, status);
  INFO(out);
  CHECK(status == 0);
  std::smatch m;
  REQUIRE(std::regex_search(
      out, m, std::regex{R"(\[(\w+)\] final: steps=(\d+) .*params_digest=([0-9a-f]+))"}));
  CHECK(m[1] == finisher);
  CHECK(m[2] == std::to_string(steps));
  CHECK(m[3] == hex(expected));
  return out;
}

} // namespace

TEST_CASE(
    "when the leader's node is killed the next candidate runs the tree and the digest is "
    "unchanged",
    "[cluster]") {
  temp_dir dir;
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
    "a leader frozen past its deadline is replaced and fenced and its return changes "
    "nothing",
    "[cluster]") {
  temp_dir dir;
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
    "isolated workers run in processes of their own and a process that aborts is restarted "
    "without harm to its node",
    "[cluster]") {
  temp_dir dir;
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 300, "process = \"isolated\"\n");
  // worker:0@30 aborts worker-0's process (SIGABRT), as a native crash would.
  auto out = launch_expecting(file, dir.path, "", 300, "n1");
  INFO(out);
  CHECK_THAT(out, Catch::Contains("[n1] isolated worker: injected fault worker:0@30: aborting"));
  CHECK(std::regex_search(
      out,
      std::regex{
          R"(child_exited /root/job/workers/worker-0#1 action=restart reason="crashed: )"
          R"(/root/job/workers/worker-0 \(isolated, on n1\) \(pid \d+\) was killed by signal 6)"}));
  CHECK_THAT(out, Catch::Contains("child_restarted /root/job/workers/worker-0#2"));
  // The fault fired once: its successor went on past step 30.
  CHECK(out.find("child_exited /root/job/workers/worker-0#2") == std::string::npos);
  CHECK_THAT(out, Catch::Contains("launch: node n1 exited with status 0"));
}

TEST_CASE(
    "over mutual TLS a cluster survives its leader's SIGKILL and a frozen node with the "
    "fault-free digest",
    "[cluster]") {
  temp_dir dir;
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
  temp_dir dir;
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
  temp_dir dir;
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 1200);
  auto at = text.find("placement = [\"n1\", \"n2\"]");
  REQUIRE(at != std::string::npos);
  text.replace(at, std::string{"placement = [\"n1\", \"n2\"]"}.size(),
               "placement = [\"n1\", \"n2\", \"n3\"]");
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

TEST_CASE("with quorum = majority a node that sees only a minority fences and moves nothing",
          "[cluster]") {
  temp_dir dir;
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 1200);
  auto at = text.find("connection_timeout = \"2s\"\n");
  REQUIRE(at != std::string::npos);
  text.insert(at, "quorum = \"majority\"\n");
  std::ofstream{file} << text;
  // n2 and n3 freeze together: n1 and s1 see 2 of 4 nodes, no majority.
  auto out =
      launch_expecting(file, dir.path, "--freeze n2@100:2500ms --freeze n3@100:2500ms", 1200, "n1");
  INFO(out);
  auto lost = out.find("[n1] node n1: no quorum: sees 2 of 4 nodes");
  REQUIRE(lost != std::string::npos);
  auto regained = out.find("[n1] node n1: sees a majority of the nodes again", lost);
  REQUIRE(regained != std::string::npos);
  // n1 moved nothing while it saw only a minority (its own lines come in
  // order; other nodes' lines interleave freely).
  auto between = out.substr(lost, regained - lost);
  CHECK(between.find("[n1] node n1: moved") == std::string::npos);
}

TEST_CASE("isolating shards, loaders or the trainer is refused naming the table", "[cluster]") {
  temp_dir dir;
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 100);
  text.replace(text.find("[job.shard]\nplacement = \"spread\"\n"),
               std::string{"[job.shard]\nplacement = \"spread\"\n"}.size(),
               "[job.shard]\nplacement = \"spread\"\nprocess = \"isolated\"\n");
  std::ofstream{file} << text;
  node_config_options opts;
  opts.check_job = check_training_job;
  auto nc = load_node_config(file, opts);
  REQUIRE_FALSE(nc);
  CHECK_THAT(describe(nc.error()), Catch::Contains("cluster.toml:") &&
                                       Catch::Contains("[job.shard] process = \"isolated\" is "
                                                       "not supported"));
}

TEST_CASE("a node refuses to start with a config naming no such node", "[cluster]") {
  temp_dir dir;
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 100);
  int status = 0;
  auto out = run_cli("node " + file + " --name n9", status);
  CHECK(WEXITSTATUS(status) == 2);
  CHECK_THAT(out, Catch::Contains("no node named 'n9'"));
}

TEST_CASE("understudy status prints each node's peers and the leader's live tree with placement",
          "[cluster]") {
  temp_dir dir;
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
  CHECK_THAT(seen, Catch::Contains("final: steps=600"));
}

TEST_CASE("understudy status says which nodes cannot be reached", "[cluster]") {
  temp_dir dir;
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 100);
  int status = 0;
  auto out = run_cli("status " + file, status);
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(out, Catch::Contains("node n1 at 127.0.0.1"));
  CHECK_THAT(out, Catch::Contains("unreachable"));
}
