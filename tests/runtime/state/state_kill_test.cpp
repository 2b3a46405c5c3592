// SIGKILL at random points during durable commits: after reopening, the newest
// checkpoint is intact and no older than the last one acknowledged.
//
// The child is this test binary in its `--checkpoint-crasher DIR` mode
// (tests/main.cpp). It commits ever larger steps and reports each
// acknowledged step on stdout; the parent kills it at a random moment.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "support/state_fixture.hpp"

using namespace understudy;

namespace test {

namespace {

/// Store settings shared by the crasher and the checker: durable commits,
/// small chunks (so one commit writes many chunks), a small map that grows.
state_store_config crash_store_config(const std::string& dir) {
  state_store_config cfg;
  cfg.directory = dir;
  cfg.mode = durability::sync_each_commit;
  cfg.chunk_size = size_t{64} << 10;
  cfg.initial_map_size = size_t{2} << 20;
  cfg.retention.keep_last = 3;
  return cfg;
}

/// The tensor of `step`: its length varies so that commits differ in size.
std::vector<float> tensor_for(uint64_t step) {
  std::vector<float> w(1000 + (step % 7) * 60000);
  for (size_t i = 0; i < w.size(); ++i)
    w[i] = static_cast<float>(step) + static_cast<float>(i % 1024) * 0.5f;
  return w;
}

checkpoint checkpoint_for(uint64_t step) {
  checkpoint cp;
  cp.path = "/job/crasher";
  cp.step = step;
  cp.schema_id = capnp::typeId<schema::TensorState>();
  cp.schema_version = 1;
  cp.payload = tensor_state_payload(step);
  cp.tensors.push_back(tensor_data::copy_of("w", element_type::f32, tensor_for(step)));
  return cp;
}

/// The newest step of the crasher's path, or 0.
uint64_t newest_step(const state_store& st) {
  auto vs = st.versions("/job/crasher");
  return vs && !vs->empty() ? vs->back().step : 0;
}

} // namespace

int checkpoint_crasher_main(const char* dir) {
  auto st = state_store::open(crash_store_config(dir));
  if (!st) {
    std::fprintf(stderr, "crasher: %s\n", describe(st.error()).c_str());
    return 3;
  }
  for (auto step = newest_step(**st) + 1;; ++step) {
    auto cp = checkpoint_for(step);
    std::vector<caf::error> results;
    if (auto err = (*st)->commit({&cp}, results); err || results[0]) {
      std::fprintf(stderr, "crasher: %s\n", describe(err ? err : results[0]).c_str());
      return 4;
    }
    // Acknowledged: the commit returned after its sync.
    auto line = std::to_string(step) + "\n";
    if (::write(STDOUT_FILENO, line.data(), line.size()) < 0)
      return 5;
  }
}

} // namespace test

namespace {

/// Runs the crasher on `dir` until it acknowledged `acks_before_kill` commits,
/// waits `extra` more, kills it with SIGKILL and returns how many commits it
/// acknowledged in all and the last acknowledged step.
std::pair<int, uint64_t> run_crasher(const std::string& dir, int acks_before_kill,
                                     std::chrono::microseconds extra) {
  int out[2];
  REQUIRE(::pipe(out) == 0);
  auto pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[0]);
    ::close(out[1]);
    ::execl("/proc/self/exe", "understudy_tests", "--checkpoint-crasher", dir.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  uint64_t last_acked = 0;
  int acks = 0;
  std::string pending;
  char buf[256];
  auto consume = [&] {
    for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
      last_acked = std::stoull(pending.substr(0, nl));
      pending.erase(0, nl + 1);
      ++acks;
    }
  };
  while (acks < acks_before_kill) {
    auto n = ::read(out[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    pending.append(buf, static_cast<size_t>(n));
    consume();
  }
  // Busy-wait (not a sleep: nothing is waited for) to spread the kill point
  // over the next commit, which the crasher starts right away.
  auto until = std::chrono::steady_clock::now() + extra;
  while (std::chrono::steady_clock::now() < until) {
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  // Acks that reached the pipe before the kill count too.
  for (;;) {
    auto n = ::read(out[0], buf, sizeof(buf));
    if (n <= 0)
      break;
    pending.append(buf, static_cast<size_t>(n));
  }
  consume();
  ::close(out[0]);
  CHECK(WIFSIGNALED(status));
  return {acks, last_acked};
}

} // namespace

TEST_CASE("SIGKILL during commits never loses an acknowledged checkpoint",
          "[state][store][crash]") {
  int kills = 50;
  if (const char* env = std::getenv("UNDERSTUDY_KILL_LOOPS"))
    kills = std::max(1, std::atoi(env));
  test::temp_state_dir dir;
  std::mt19937_64 rng{std::random_device{}()};
  uint64_t total_acked = 0;
  for (int round = 0; round < kills; ++round) {
    auto acks_before_kill = std::uniform_int_distribution<int>{1, 6}(rng);
    auto extra = std::chrono::microseconds{std::uniform_int_distribution<int>{0, 3000}(rng)};
    auto [acks, last_acked] = run_crasher(dir.path, acks_before_kill, extra);
    INFO("round " << round << ", last acknowledged step " << last_acked);
    REQUIRE(acks > 0);
    total_acked += static_cast<uint64_t>(acks);

    auto st = test::open_store(test::crash_store_config(dir.path));
    auto newest = test::newest_step(*st);
    CHECK(newest >= last_acked);
    auto vs = st->versions("/job/crasher");
    REQUIRE(vs);
    for (auto& v : *vs) {
      INFO("version " << v.step);
      CHECK(v.problem.empty());
      CHECK_FALSE(st->verify("/job/crasher", v.step));
    }
    auto w = test::read_w(*st, "/job/crasher", newest);
    REQUIRE(w);
    CHECK(*w == test::tensor_for(newest));
  }
  CHECK(total_acked >= static_cast<uint64_t>(kills));
}

TEST_CASE("a read-only store keeps reading after a writer process grew the map",
          "[state][store][crash]") {
  test::temp_state_dir dir;
  auto first = run_crasher(dir.path, 1, std::chrono::microseconds{0});
  REQUIRE(first.first > 0);
  auto cfg = test::crash_store_config(dir.path);
  cfg.read_only = true;
  auto reader = test::open_store(cfg);
  auto before = reader->map_size();
  // The writer commits until its map has grown well past the reader's.
  auto second = run_crasher(dir.path, 30, std::chrono::microseconds{0});
  REQUIRE(second.first >= 30);
  auto newest = test::newest_step(*reader);
  CHECK(newest >= second.second);
  CHECK(reader->map_size() > before);
  auto w = test::read_w(*reader, "/job/crasher", newest);
  REQUIRE(w);
  CHECK(*w == test::tensor_for(newest));
}
