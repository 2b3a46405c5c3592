// Ctrl-C: digits_mlp, gpu_mlp and `understudy launch` stop in order, say at which
// committed step, and the same command resumes from it to the digest of a run
// that was never interrupted.

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "support/cli_test_util.hpp"
#include "support/cluster_test_util.hpp"
#include "support/daemon_test_util.hpp"
#include "support/temp_dir.hpp"

using namespace understudy::testing;
using cli_test::slurp;

namespace {

/// Waits (up to 90 s, reading `log` every 50 ms) until a line of `log`
/// matches `re` with a step (its first group) of at least `step`.
bool await_step(const std::string& log, const std::regex& re, uint64_t step) {
  for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(90);
       std::chrono::steady_clock::now() < until;) {
    auto text = slurp(log);
    for (std::sregex_iterator it{text.begin(), text.end(), re}, end; it != end; ++it)
      if (std::stoull((*it)[1]) >= step)
        return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50)); // polls a file
  }
  return false;
}

/// Sends SIGINT to `pid` (with `group`, to its whole process group, as Ctrl-C
/// in a terminal does) and waits for it: its exit status, -1 if a signal
/// ended it.
int interrupt(pid_t pid, bool group = false) {
  REQUIRE(::kill(group ? -pid : pid, SIGINT) == 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string digest_in(const std::string& out) {
  std::smatch m;
  return std::regex_search(out, m, std::regex{R"(final: steps=\d+ .*params_digest=([0-9a-f]+))"})
             ? m[1].str()
             : "";
}

} // namespace

TEST_CASE(
    "Ctrl-C on digits_mlp or gpu_mlp stops at a committed step that the same command "
    "resumes",
    "[interrupt]") {
  // Each program with a run long enough to be interrupted at a fifth of it.
  std::string program = UNDERSTUDY_DIGITS_MLP_PATH;
  uint64_t steps = 3000;
  SECTION("digits_mlp") {}
  SECTION("gpu_mlp (its CPU backend)") {
    program = UNDERSTUDY_GPU_MLP_PATH;
    steps = 600;
  }
  test::temp_dir dir{"interrupt"};
  const auto total = std::to_string(steps);
  const std::string args = " --steps " + total + " --state-dir ";
  int status = 0;
  auto whole = run_program(program, args + dir.path + "/whole", status);
  REQUIRE(status == 0);
  const auto log = dir.path + "/first.log";
  auto pid = daemon_test::spawn({program, "--steps", total, "--state-dir", dir.path + "/cut"},
                                dir.path, log, false);
  REQUIRE(await_step(log, std::regex{"step (\\d+)/" + total}, steps / 5));
  CHECK(interrupt(pid) == 128 + SIGINT);
  auto first = slurp(log);
  INFO(first);
  std::smatch m;
  REQUIRE(std::regex_search(first, m,
                            std::regex{"interrupted: stopped at committed step (\\d+) of " + total +
                                       "; run the same command again to resume from it"}));
  auto committed = m[1].str();
  CHECK(std::stoull(committed) >= steps / 5);
  CHECK(first.find("final:") == std::string::npos);
  auto second = run_program(program, args + dir.path + "/cut", status);
  INFO(second);
  CHECK(status == 0);
  CHECK_THAT(second, Catch::Contains("state: resuming from committed step " + committed));
  CHECK(digest_in(second) == digest_in(whole));
  CHECK_FALSE(digest_in(whole).empty());
}

TEST_CASE(
    "Ctrl-C on understudy launch stops the leader first: nothing fails over, and the "
    "same command resumes from the committed step it names",
    "[interrupt][cluster]") {
  test::temp_dir dir{"interrupt-launch"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 600);
  const auto log = dir.path + "/launch.log";
  // In a process group of its own, which Ctrl-C signals as a whole: the
  // launcher and every node get the SIGINT.
  auto pid = daemon_test::spawn({UNDERSTUDY_CLI_PATH, "launch", file}, dir.path, log, true);
  REQUIRE(await_step(log, std::regex{R"(progress: step (\d+)/600)"}, 150));
  CHECK(interrupt(pid, true) == 128 + SIGINT);
  auto first = slurp(log);
  INFO(first);
  CHECK_THAT(first, Catch::Contains("launch: stopping the leader n1, which stops the other nodes"));
  std::smatch m;
  REQUIRE(std::regex_search(first, m,
                            std::regex{R"(\[n1\] job: stopped at committed step (\d+) of 600)"}));
  auto committed = m[1].str();
  // No node left while the tree still ran: nothing was moved, nothing failed to start.
  CHECK(first.find("start_failed") == std::string::npos);
  CHECK(first.find("moved /root") == std::string::npos);
  for (const char* n : {"n1", "n2", "n3", "s1"})
    CHECK_THAT(first, Catch::Contains(std::string{"launch: node "} + n + " exited with status 0"));
  CHECK_THAT(first, Catch::Contains("launch: stopped; run the same command again to resume the "
                                    "job from its last committed step"));
  auto second = launch_expecting(file, dir.path, "", 600, "n1");
  CHECK_THAT(second, Catch::Contains("[n1] job: resuming from committed step " + committed));
}

TEST_CASE(
    "launch --fresh starts the job over, and refuses a state_dir that holds no node's "
    "store",
    "[interrupt][cluster]") {
  test::temp_dir dir{"fresh-launch"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 100);
  launch_expecting(file, dir.path, "", 100, "n1");
  auto again = launch_expecting(file, dir.path, "--fresh --log-level warn", 100, "n1");
  for (const char* n : {"n1", "n2", "n3", "s1"})
    CHECK_THAT(again, Catch::Contains("launch: --fresh: removed " + dir.path + "/state/" + n));
  CHECK_THAT(again, Catch::Contains("[n1] job: fresh start"));
  // --log-level warn: the worker's crash (the config's fault) is logged, the
  // routine starts are not.
  CHECK_THAT(again, Catch::Contains("[warning] child_exited /root/job/workers/worker-0"));
  CHECK(again.find("[info] child_started") == std::string::npos);
  // Each node's lines are also in its state directory, from this launch only
  // (--fresh removed the first one's).
  auto n1_log = slurp(dir.path + "/state/n1/node.log");
  CHECK_THAT(n1_log, Catch::Contains("final: steps=100"));
  CHECK(n1_log.find("-- launched") == n1_log.rfind("-- launched"));
  // A state_dir that is something else (here: a directory with a file of
  // its own) is neither emptied nor started.
  std::filesystem::remove_all(dir.path + "/state/n2");
  std::filesystem::create_directories(dir.path + "/state/n2");
  std::ofstream{dir.path + "/state/n2/notes.txt"} << "mine\n";
  int status = 0;
  auto refused = run_cli("launch " + file + " --fresh", status);
  INFO(refused);
  CHECK(WEXITSTATUS(status) == 2);
  CHECK_THAT(refused, Catch::Contains("--fresh: " + dir.path +
                                      "/state/n2 (the state_dir of node n2) holds no node's "
                                      "store (no data.mdb or node.log); not removing it"));
  CHECK(std::filesystem::exists(dir.path + "/state/n2/notes.txt"));
  CHECK(std::filesystem::exists(dir.path + "/state/n1/data.mdb"));
}
