// A program of its own as cluster nodes (examples/custom_node): real node
// processes on loopback, started by its own launcher (understudy/node/).

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

#include "support/cluster_test_util.hpp"
#include "support/temp_dir.hpp"

namespace {

#if defined(UNDERSTUDY_CUSTOM_NODE_PATH) && defined(UNDERSTUDY_CUSTOM_NODE_CONFIG)

using test::temp_dir;

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
}

/// The example's own config with its state under `dir` and its ports derived
/// from the process id, below Linux's ephemeral range (32768 up).
std::string example_config(const std::string& dir) {
  std::ifstream in{UNDERSTUDY_CUSTOM_NODE_CONFIG};
  std::stringstream text;
  text << in.rdbuf();
  auto out = text.str();
  auto base = 20000 + (static_cast<unsigned>(::getpid()) % 3000) * 4;
  for (int i = 0; i < 3; ++i)
    replace_all(out, "port = " + std::to_string(4721 + i), "port = " + std::to_string(base + i));
  replace_all(out, ".understudy/custom", dir);
  return out;
}

/// Runs `custom_node` with `args` and returns its output (stdout and stderr).
std::string run_custom_node(const std::string& args, int& status) {
  return understudy::testing::run_program(UNDERSTUDY_CUSTOM_NODE_PATH, args, status);
}

#endif

} // namespace

TEST_CASE(
    "a custom node's persistent actor moves with its state when its node is killed and "
    "counts on from its persisted value",
    "[cluster][custom_node]") {
#if !defined(UNDERSTUDY_CUSTOM_NODE_PATH) || !defined(UNDERSTUDY_CUSTOM_NODE_CONFIG)
  WARN("skipped: the examples are not built (UNDERSTUDY_ENABLE_EXAMPLES=OFF)");
#else
  temp_dir dir{"custom-node-test"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << example_config(dir.path + "/state");
  int status = 0;
  // n2 hosts the counter; the leader n1 sends it 100 increments.
  auto out = run_custom_node("launch " + file + " --kill n2@40", status);
  INFO(out);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_THAT(out, Catch::Contains("chaos: SIGKILL n2 at step 40"));
  CHECK_THAT(out, Catch::Contains("[n1] node n1: moved /root/counter from n2 (lost) to n3"));
  // Every answer counts each increment once: the count is the increment's number.
  std::regex progress{R"(\[n1\] progress: step (\d+)/100 count (\d+) on (n\d))"};
  bool on_n2 = false;
  uint64_t first_on_n3 = 0;
  for (auto it = std::sregex_iterator(out.begin(), out.end(), progress);
       it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    CHECK(m[1] == m[2]);
    if (m[3] == "n2")
      on_n2 = true;
    if (m[3] == "n3" && first_on_n3 == 0)
      first_on_n3 = std::stoull(m[2]);
  }
  CHECK(on_n2);
  // On n3 the counter went on from what it persisted on n2 (replicated to
  // n3), not from 0: at least the 40 increments n2 had answered.
  CHECK(first_on_n3 > 40);
  CHECK_THAT(out, Catch::Contains("[n1] final: ticks=100 count=100 on n3"));
  CHECK_THAT(out, Catch::Contains("launch: node n1 exited with status 0"));
#endif
}

TEST_CASE("a custom node refuses a config with a child type no component registered",
          "[cluster][custom_node]") {
#if !defined(UNDERSTUDY_CUSTOM_NODE_PATH) || !defined(UNDERSTUDY_CUSTOM_NODE_CONFIG)
  WARN("skipped: the examples are not built (UNDERSTUDY_ENABLE_EXAMPLES=OFF)");
#else
  temp_dir dir{"custom-node-test"};
  auto file = dir.path + "/cluster.toml";
  auto text = example_config(dir.path + "/state");
  replace_all(text, "type = \"counter\"", "type = \"ledger\"");
  std::ofstream{file} << text;
  int status = 0;
  auto out = run_custom_node("node " + file + " --name n1", status);
  INFO(out);
  CHECK(WEXITSTATUS(status) == 2);
  CHECK_THAT(out, Catch::Contains("custom_node node: ") && Catch::Contains("ledger"));
#endif
}
