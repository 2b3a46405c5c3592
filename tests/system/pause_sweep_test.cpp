// Pauses swept across the failure detector's deadline window: a node stopped
// (SIGSTOP) for deadline − 2 heartbeat intervals up to deadline + 2 intervals, in
// steps of a quarter interval (100 ms beats, 1 s deadline: 800 ms to 1200 ms).
// A pause never gets a healthy node fenced, whether the paused node is a
// follower or the leader; a pause past the deadline may cost the paused node
// itself (it is then fenced and the job moves on without it); every run ends
// with the fault-free digest.

#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/cluster_test_util.hpp"
#include "support/temp_dir.hpp"

using namespace understudy;
using namespace understudy::actors;
using namespace understudy::testing;

namespace {

/// The pause lengths of the sweep, in milliseconds, from `first` to `last`.
std::vector<int> sweep(int first, int last) {
  std::vector<int> out;
  for (int ms = first; ms <= last; ms += 25)
    out.push_back(ms);
  return out;
}

/// Whether `out` (a launch's output) shows node `name` fenced, or declared
/// dead by anyone while the job ran (once the leader printed its final line
/// the nodes stop, and a peer may see another go).
bool lost(const std::string& out, const std::string& name) {
  auto end = out.find("] final: ");
  auto dead = out.find("peer " + name + " is dead");
  return out.find("node " + name + ": fenced") != std::string::npos ||
         (dead != std::string::npos && (end == std::string::npos || dead < end)) ||
         out.find("launch: node " + name + " exited with status 3") != std::string::npos;
}

} // namespace

TEST_CASE("pause sweep: pauses shorter than the deadline fence nobody, leader or follower",
          "[cluster][pause]") {
  test::temp_dir dir{"pause"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 1200);
  // 800, 825, ..., 975 ms, alternately on the leader n1 and the follower n3,
  // each one at a later step than the pause before it ended.
  std::string chaos;
  uint64_t step = 60;
  bool leader = true;
  for (int ms : sweep(800, 975)) {
    chaos += std::string{" --freeze "} + (leader ? "n1" : "n3") + "@" + std::to_string(step) + ":" +
             std::to_string(ms) + "ms";
    step += 120;
    leader = !leader;
  }
  auto out = launch_expecting(file, dir.path, chaos, 1200, "n1");
  INFO(chaos << "\n" << out);
  for (const char* n : {"n1", "n2", "n3", "s1"}) {
    INFO("node " << n);
    CHECK_FALSE(lost(out, n));
  }
  CHECK(out.find("taking over") == std::string::npos);
}

namespace {

/// The fault-free digest of the sweep's 300-step job.
uint64_t sweep_digest() {
  test::temp_dir dir{"pause"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 300);
  return config_digest(file, dir.path + "/single");
}

/// One run with a pause of `ms` on `paused`: nobody but the paused node is
/// lost, and the job ends with `expected` (on n1 unless n1 was the one paused).
void pause_once(const std::string& paused, int ms, uint64_t expected) {
  test::temp_dir dir{"pause"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << cluster_config(dir.path + "/state", 300);
  auto chaos = "--freeze " + paused + "@80:" + std::to_string(ms) + "ms";
  int status = 0;
  auto out = run_cli("launch " + file + " " + chaos, status);
  INFO(chaos << "\n" << out);
  CHECK(status == 0);
  std::smatch m;
  REQUIRE(std::regex_search(
      out, m, std::regex{R"(\[(\w+)\] final: steps=(\d+) .*params_digest=([0-9a-f]+))"}));
  CHECK(m[3] == hex(expected));
  if (paused != "n1")
    CHECK(m[1] == "n1");
  for (const char* n : {"n1", "n2", "n3", "s1"})
    if (n != paused) {
      INFO("healthy node " << n);
      CHECK_FALSE(lost(out, n));
    }
}

} // namespace

TEST_CASE("pause sweep: a follower paused at or past the deadline costs no healthy node",
          "[cluster][pause]") {
  auto expected = sweep_digest();
  for (int ms : sweep(1000, 1200)) {
    INFO("n3 paused for " << ms << " ms");
    pause_once("n3", ms, expected);
  }
}

TEST_CASE("pause sweep: a leader paused at or past the deadline costs no healthy node",
          "[cluster][pause]") {
  auto expected = sweep_digest();
  for (int ms : sweep(1000, 1200)) {
    INFO("n1 paused for " << ms << " ms");
    pause_once("n1", ms, expected);
  }
}
