#pragma once
// Multi-node tests: a small cluster config on loopback, the job's fault-free
// digest computed in one process, and `understudy` run as a command.

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <regex>
#include <string>

#include <catch2/catch.hpp>

#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/state/runtime.hpp"

namespace understudy::testing {

using namespace understudy::actors;

/// A 4-node cluster (three active nodes and a spare) on loopback; ports derived
/// from the process id so that parallel test runs do not collide, and below
/// Linux's ephemeral range (32768 up), where another test's outgoing
/// connection could hold one.
inline std::string cluster_config(const std::string& dir, uint64_t steps,
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

/// Replaces the first `from` in `text` (which must hold it) by `to`.
inline void replace_once(std::string& text, const std::string& from, const std::string& to) {
  auto at = text.find(from);
  REQUIRE(at != std::string::npos);
  text.replace(at, from.size(), to);
}

/// The digest the job's config gives in one process, without faults (after
/// `steps` steps, if given, instead of the configured number).
inline uint64_t fault_free_digest(const node_config& nc, const std::string& dir,
                                  uint64_t steps = 0) {
  auto tc = make_training_config(nc);
  REQUIRE(tc);
  tc->faults.clear();
  if (steps > 0)
    tc->steps = steps;
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

/// The fault-free digest of the job in the cluster config `file` (with its [job]).
inline uint64_t config_digest(const std::string& file, const std::string& dir) {
  auto nc = load_node_config(file, job_config_options());
  REQUIRE(nc);
  return fault_free_digest(*nc, dir);
}

/// Runs `program` with `args` (up to 180 s) and returns its output (stdout and stderr).
inline std::string run_program(const std::string& program, const std::string& args, int& status) {
  std::string cmd = "timeout 90 " + program + " " + args + " 2>&1";
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

/// Runs `understudy` with `args` and returns its output (stdout and stderr).
inline std::string run_cli(const std::string& args, int& status) {
  return run_program(UNDERSTUDY_CLI_PATH, args, status);
}

inline std::string hex(uint64_t x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, x);
  return buf;
}

/// Launches the cluster of `file` with `chaos` and checks that the job ends
/// with the fault-free digest, printed by `finisher`. Returns the output.
inline std::string launch_expecting(const std::string& file, const std::string& dir,
                                    const std::string& chaos, uint64_t steps,
                                    const std::string& finisher) {
  auto expected = config_digest(file, dir + "/single");
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

} // namespace understudy::testing
