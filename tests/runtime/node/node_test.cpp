// A node process: run through the built `understudy` program, as launch runs it.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include <catch2/catch.hpp>

#include "support/temp_dir.hpp"

extern char** environ;

TEST_CASE("a node whose output pipe has no reader exits with its status, not SIGPIPE", "[node]") {
  test::temp_dir dir{"node"};
  // A pipe whose read end is closed: each write to it raises SIGPIPE.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  ::close(fds[0]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  // SIGPIPE at its default in the node, whatever the test runner set.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
  // A file that is no config: the node reports it on its error stream.
  std::string missing = dir.path + "/missing.toml";
  std::string prog = UNDERSTUDY_CLI_PATH;
  std::vector<std::string> args{prog, "node", missing, "--name", "n1"};
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  REQUIRE(::posix_spawn(&pid, prog.c_str(), &actions, &attr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  INFO("signalled: " << WIFSIGNALED(status) << " signal " << WTERMSIG(status));
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 2); // exit_code::bad_config
}
