// examples/gpu_mlp end to end on the CPU backend: its GPU actors in processes
// of their own, crashed on request, must end with the digest of a run without
// crashes, and a run resumed from its state directory with the digest of one
// that never stopped.

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/state_test_util.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/gpu/device.hpp"

extern char** environ;

namespace {

struct run_result {
  int status = -1;
  std::string output;
  std::string final_line;
  std::string digest;
  uint64_t steps = 0;
  uint64_t restarts = 0;
  uint64_t lost_steps = 0;
};

/// gpu_mlp next to this binary (as in a bundle for a GPU host), else where the build put it.
[[maybe_unused]] std::string gpu_mlp_path() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec && access((self.parent_path() / "gpu_mlp").c_str(), X_OK) == 0)
    return (self.parent_path() / "gpu_mlp").string();
#ifdef UNDERSTUDY_GPU_MLP_PATH
  return UNDERSTUDY_GPU_MLP_PATH;
#else
  return {};
#endif
}

/// Runs gpu_mlp with `args` (output captured) and parses its final line.
run_result run_gpu_mlp([[maybe_unused]] const std::vector<std::string>& args) {
  run_result r;
#ifdef UNDERSTUDY_GPU_MLP_PATH
  char path[] = "/tmp/understudy_gpu_mlp_XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fd, 1);
  posix_spawn_file_actions_adddup2(&actions, fd, 2);
  std::vector<std::string> all{gpu_mlp_path()};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, all[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fd);
  int status = 0;
  if (rc == 0)
    waitpid(pid, &status, 0);
  std::ifstream in{path};
  std::stringstream text;
  text << in.rdbuf();
  r.output = text.str();
  unlink(path);
  r.status = rc == 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::smatch m;
  std::regex final_re{
      "final: steps=([0-9]+) accuracy=[0-9.]+ params_digest=([0-9a-f]{16}) restarts=([0-9]+) "
      "lost_steps=([0-9]+)"};
  if (std::regex_search(r.output, m, final_re)) {
    r.final_line = m[0];
    r.steps = std::stoull(m[1]);
    r.digest = m[2];
    r.restarts = std::stoull(m[3]);
    r.lost_steps = std::stoull(m[4]);
  }
#endif
  return r;
}

std::vector<std::string> common_args(const std::string& dir, const std::string& steps) {
  return {"--backend",   "cpu",  "--workers", "2",    "--steps",      steps, "--batch",     "16",
          "--optimizer", "adam", "--lr",      "0.01", "--eval-every", "0",   "--state-dir", dir};
}

} // namespace

TEST_CASE("gpu_mlp on the cpu survives process and rank crashes with the fault-free digest",
          "[gpu_ops][gpu_mlp]") {
#ifndef UNDERSTUDY_GPU_MLP_PATH
  WARN("skipped: gpu_mlp was not built (UNDERSTUDY_ENABLE_EXAMPLES=OFF)");
  return;
#endif
  auto base = test::make_temp_dir();
  // Sections run the test case again from the top: one fault-free run for all.
  static const run_result clean = run_gpu_mlp(common_args(base + "/clean", "24"));
  INFO(clean.output);
  REQUIRE(clean.status == 0);
  REQUIRE(clean.steps == 24);
  REQUIRE(clean.restarts == 0);
  REQUIRE(clean.lost_steps == 0);
  SECTION("a device fault, a rank crash and a trainer crash, checkpoints every 4 steps") {
    auto args = common_args(base + "/faulty", "24");
    args.insert(args.end(),
                {"--checkpoint-every", "4", "--fault", "gpu:1@7,worker:0@14,trainer@19"});
    auto faulty = run_gpu_mlp(args);
    INFO(faulty.output);
    REQUIRE(faulty.status == 0);
    REQUIRE(faulty.steps == 24);
    REQUIRE(faulty.digest == clean.digest);
    REQUIRE(faulty.restarts >= 3);
    REQUIRE(faulty.lost_steps > 0);
    // The device fault ended the GPU actor's process: its status is named.
    REQUIRE(faulty.output.find("crash: /gpu_mlp/ranks/rank-1") != std::string::npos);
    REQUIRE(faulty.output.find("exited with status 70") != std::string::npos);
  }
  SECTION("a job stopped at step 12 resumes from its state directory") {
    auto first = run_gpu_mlp(common_args(base + "/resumed", "12"));
    INFO(first.output);
    REQUIRE(first.status == 0);
    REQUIRE(first.steps == 12);
    auto second = run_gpu_mlp(common_args(base + "/resumed", "24"));
    INFO(second.output);
    REQUIRE(second.status == 0);
    REQUIRE(second.output.find("resuming from committed step 12") != std::string::npos);
    REQUIRE(second.digest == clean.digest);
  }
  SECTION("a state directory of another job is refused") {
    auto first = run_gpu_mlp(common_args(base + "/other", "4"));
    REQUIRE(first.status == 0);
    auto args = common_args(base + "/other", "4");
    args[9] = "sgd"; // --optimizer
    auto other = run_gpu_mlp(args);
    INFO(other.output);
    REQUIRE(other.status != 0);
    REQUIRE(other.output.find("belongs to another job") != std::string::npos);
  }
  std::filesystem::remove_all(base);
}

TEST_CASE("gpu_mlp on cuda survives a real illegal address with the fault-free digest",
          "[gpu][gpu_mlp]") {
#ifndef UNDERSTUDY_GPU_MLP_PATH
  WARN("skipped: gpu_mlp was not built (UNDERSTUDY_ENABLE_EXAMPLES=OFF)");
  return;
#endif
  if (understudy::gpu::discover_devices().empty()) {
    WARN("skipped: no CUDA device"
         << (understudy::gpu::cuda_compiled() ? " (built with CUDA)" : " (built without CUDA)"));
    return;
  }
  auto base = test::make_temp_dir();
  auto args = common_args(base + "/clean", "60");
  args[1] = "cuda"; // --backend
  auto clean = run_gpu_mlp(args);
  INFO(clean.output);
  REQUIRE(clean.status == 0);
  REQUIRE(clean.steps == 60);
  args = common_args(base + "/faulty", "60");
  args[1] = "cuda";
  args.insert(args.end(), {"--checkpoint-every", "5", "--fault", "gpu:0@23,gpu:1@41"});
  auto faulty = run_gpu_mlp(args);
  INFO(faulty.output);
  REQUIRE(faulty.status == 0);
  REQUIRE(faulty.digest == clean.digest);
  REQUIRE(faulty.output.find("exited with status 70") != std::string::npos);
  REQUIRE(faulty.output.find("cudaErrorIllegalAddress") != std::string::npos);
  std::filesystem::remove_all(base);
}

TEST_CASE("gpu_mlp rejects faults it cannot inject", "[gpu_ops][gpu_mlp]") {
#ifndef UNDERSTUDY_GPU_MLP_PATH
  WARN("skipped: gpu_mlp was not built (UNDERSTUDY_ENABLE_EXAMPLES=OFF)");
  return;
#endif
  auto base = test::make_temp_dir();
  auto args = common_args(base, "10");
  SECTION("a shard: gpu_mlp has none") {
    args.insert(args.end(), {"--fault", "shard:0@3"});
    auto r = run_gpu_mlp(args);
    REQUIRE(r.status == 2);
    REQUIRE(r.output.find("there is no shard 0") != std::string::npos);
  }
  SECTION("a device fault without a process to poison") {
    args.insert(args.end(), {"--fault", "gpu:0@3", "--isolation", "none"});
    auto r = run_gpu_mlp(args);
    REQUIRE(r.status == 2);
    REQUIRE(r.output.find("needs --isolation process") != std::string::npos);
  }
  std::filesystem::remove_all(base);
}

TEST_CASE("parse_faults takes gpu faults only where there are gpus to fault",
          "[gpu_ops][gpu_mlp]") {
  using understudy::actors::fault_target;
  auto faults = understudy::actors::parse_faults("gpu:1@5,worker:0@7,trainer@9", 2, 0, 0, 10, 1, 2);
  REQUIRE(faults);
  REQUIRE(faults->size() == 3);
  REQUIRE(faults->at(0).target == fault_target::gpu);
  REQUIRE(faults->at(0).index == 1);
  REQUIRE(faults->at(0).step == 5);
  REQUIRE(understudy::actors::to_string(faults->at(0)) == "gpu:1@5");
  auto missing = understudy::actors::parse_faults("gpu:2@5", 2, 0, 0, 10, 1, 2);
  REQUIRE_FALSE(missing);
  REQUIRE(understudy::describe(missing.error()).find("there is no gpu 2 (the job has 2)") !=
          std::string::npos);
  // A training job without GPU actors knows no gpu target.
  auto plain = understudy::actors::parse_faults("gpu:0@5", 2, 2, 1, 10, 1);
  REQUIRE_FALSE(plain);
  REQUIRE(understudy::describe(plain.error()).find("unknown target 'gpu'") != std::string::npos);
  // Random faults draw only among the kinds the job has: here no shard or loader.
  auto random = understudy::actors::parse_faults("random:200", 3, 0, 0, 50, 7, 3);
  REQUIRE(random);
  bool gpu = false;
  for (const auto& f : *random) {
    REQUIRE(f.target != fault_target::shard);
    REQUIRE(f.target != fault_target::loader);
    gpu = gpu || f.target == fault_target::gpu;
    if (f.target == fault_target::gpu || f.target == fault_target::worker)
      REQUIRE(f.index < 3);
  }
  REQUIRE(gpu);
  // Without gpus, random faults are those of before (no gpu target drawn).
  auto legacy = understudy::actors::parse_faults("random:200", 3, 2, 1, 50, 7);
  REQUIRE(legacy);
  for (const auto& f : *legacy)
    REQUIRE(f.target != fault_target::gpu);
}
