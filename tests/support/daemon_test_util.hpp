#pragma once
// Real daemons in system tests (Prometheus, Slurm, munge): finding their
// programs, starting them in process groups of their own, stopping them.

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

namespace daemon_test {

/// A program found in the usual directories ("" if none).
inline std::string find_program(const std::string& name) {
  for (const char* dir : {"/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"}) {
    auto path = std::string{dir} + "/" + name;
    if (::access(path.c_str(), X_OK) == 0)
      return path;
  }
  return {};
}

/// Starts `args` in `cwd` with its output in `log`, in a process group of
/// its own when `grouped`, with `env` ("NAME=VALUE") added; its pid.
inline pid_t spawn(const std::vector<std::string>& args, const std::string& cwd,
                   const std::string& log, bool grouped, const std::vector<std::string>& env = {}) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (grouped)
      ::setpgid(0, 0);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    if (::chdir(cwd.c_str()) != 0)
      ::_exit(126);
    for (const auto& e : env)
      ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  if (grouped)
    ::setpgid(pid, pid);
  return pid;
}

/// Runs `args` with its output in `log`, waits for it; its exit status.
inline int run_to_end(const std::vector<std::string>& args, const std::string& cwd,
                      const std::string& log, const std::vector<std::string>& env = {}) {
  int status = 0;
  ::waitpid(spawn(args, cwd, log, false, env), &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// A child process in a process group of its own, output to a file; the
/// group is killed when this goes.
class background {
public:
  background(const std::vector<std::string>& args, const std::string& log,
             const std::vector<std::string>& env = {})
      : pid_(spawn(args, std::filesystem::current_path().string(), log, true, env)) {}
  ~background() {
    if (pid_ <= 0)
      return;
    ::kill(-pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 100 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50)); // teardown, not a sync
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
  }
  background(const background&) = delete;
  background& operator=(const background&) = delete;

  /// Whether it still runs.
  bool running() const {
    int status = 0;
    return ::waitpid(pid_, &status, WNOHANG) == 0;
  }

private:
  pid_t pid_ = -1;
};

} // namespace daemon_test
