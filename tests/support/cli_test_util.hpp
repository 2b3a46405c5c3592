#pragma once
// Running the built `understudy` program from the CLI tests.

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/state_test_util.hpp"

extern char** environ;

namespace cli_test {

/// A temporary directory, removed at the end of the test.
struct scratch_dir {
  std::string path = ::test::make_temp_dir();
  ~scratch_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

/// What a run of the CLI printed and how it exited.
struct cli_run {
  /// The exit status, or -1 if it did not exit normally.
  int status = -1;
  std::string out;
  std::string err;
};

inline std::string slurp(const std::string& file) {
  std::ifstream in{file, std::ios::binary};
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

/// Runs the built `understudy` with `args`, its output going to files in `scratch`.
inline cli_run run_cli(const std::vector<std::string>& args, const std::string& scratch) {
  std::vector<std::string> argv_storage{UNDERSTUDY_CLI_PATH};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  auto out_file = scratch + "/cli.out";
  auto err_file = scratch + "/cli.err";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_file.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_file.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(rc == 0);
  int wstatus = 0;
  REQUIRE(waitpid(pid, &wstatus, 0) == pid);
  cli_run result;
  if (WIFEXITED(wstatus))
    result.status = WEXITSTATUS(wstatus);
  result.out = slurp(out_file);
  result.err = slurp(err_file);
  UNSCOPED_INFO("understudy " << (args.empty() ? "" : args[0]) << " exited " << result.status
                              << "\nstdout:\n"
                              << result.out << "stderr:\n"
                              << result.err);
  return result;
}

} // namespace cli_test
