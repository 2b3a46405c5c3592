// Tests for `understudy simulate` (cli/src/simulate.cpp): the seeded simulation from the
// command line.

#include <fstream>
#include <iterator>
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
  CHECK_THAT(run.out, Catch::Contains("training: 4 of 4 jobs recorded their last step with the "
                                      "fault-free states"));
}

TEST_CASE(
    "simulate replays one seed with its training job and writes its trace, and --no-training "
    "runs the coordination alone",
    "[cli]") {
  scratch_dir scratch;
  const std::string trace = scratch.path + "/seed-5.txt";
  auto run =
      run_cli({"simulate", "--seed", "5", "--seconds", "20", "--trace", trace}, scratch.path);
  INFO(run.out << run.err);
  CHECK(run.status == 0);
  CHECK_THAT(run.out, Catch::Contains("seed 5: passed; the training job recorded its last step"));
  std::ifstream f{trace};
  std::string text{std::istreambuf_iterator<char>(f), {}};
  CHECK_THAT(text, Catch::Contains("training job:"));
  CHECK_THAT(text, Catch::Contains("drives the job in term"));
  CHECK_THAT(text, Catch::Contains("recorded the last step: the job is done"));
  run = run_cli({"simulate", "--seeds", "2", "--seconds", "20", "--no-training"}, scratch.path);
  INFO(run.out << run.err);
  CHECK(run.status == 0);
  CHECK_THAT(run.out, !Catch::Contains("training:"));
}

TEST_CASE("simulate refuses a ring without watchers", "[cli]") {
  scratch_dir scratch;
  auto run = run_cli({"simulate", "--monitors", "0"}, scratch.path);
  INFO(run.out << run.err);
  CHECK(run.status == 2);
  CHECK_THAT(run.err, Catch::Contains("--monitors"));
}
