// Tests for `understudy simulate` (cli/src/simulate.cpp): the seeded simulation from the
// command line.

#include <string>

#include <catch2/catch.hpp>

#include "support/cli_test_util.hpp"

namespace {

using namespace cli_test;

} // namespace

TEST_CASE("simulate runs seeds of a cluster watched on a ring and says how many passed", "[cli]") {
  scratch_dir scratch;
  auto run = run_cli({"simulate", "--seeds", "4", "--first", "7", "--nodes", "8", "--monitors", "2",
                      "--seconds", "20"},
                     scratch.path);
  INFO(run.out << run.err);
  CHECK(run.status == 0);
  CHECK_THAT(run.out, Catch::Contains("simulate: 8 nodes, 20 simulated s per run, seeds 7..10: 4 "
                                      "passed, 0 failed"));
}

TEST_CASE("simulate refuses a ring without watchers", "[cli]") {
  scratch_dir scratch;
  auto run = run_cli({"simulate", "--monitors", "0"}, scratch.path);
  INFO(run.out << run.err);
  CHECK(run.status == 2);
  CHECK_THAT(run.err, Catch::Contains("--monitors"));
}
