// Child processes, the signal handlers and the watchdog of bench_cluster (and
// bench_disaster_recovery, which links this file too), scratch space.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>

#include "child_groups.hpp"
#include "cluster_bench.hpp"

namespace cluster_bench {

bool options::wants(const std::string& name) const {
  return bench::in_list(only, name);
}

namespace {

extern "C" void on_fatal_signal(int sig) {
  bench::kill_child_groups();
  ::_exit(128 + sig);
}

/// Closes every descriptor from 3 up in a freshly forked child (async-signal-safe), so
/// that a node process holds none of the observer's sockets: an inherited connection
/// would stay open after the observer closed it.
void close_inherited_fds() {
#ifdef SYS_close_range
  if (::syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
    return;
#endif
  for (int fd = 3; fd < 65536; ++fd)
    ::close(fd);
}

} // namespace

void init_child_handling() {
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP})
    ::sigaction(sig, &sa, nullptr);
  // When a killed `understudy launch` leaves its nodes, they become our children and
  // kill_group reaps them, instead of zombies that keep the group alive.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
}

// -- child_process ---------------------------------------------------------------------------

std::unique_ptr<child_process> child_process::spawn(const std::vector<std::string>& argv,
                                                    const std::string& log_file,
                                                    int parent_death_signal, std::string& error) {
  // Everything the child needs is prepared before fork: between fork and exec a child of
  // a multithreaded process may only make async-signal-safe calls.
  std::vector<char*> args;
  for (const auto& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int out = -1;
  int pipe_read = -1;
  if (!log_file.empty()) {
    out = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
      error = "cannot open " + log_file + ": " + std::strerror(errno);
      return nullptr;
    }
  } else {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      error = std::string{"pipe: "} + std::strerror(errno);
      return nullptr;
    }
    pipe_read = fds[0];
    out = fds[1];
  }
  pid_t parent = ::getpid();
  sigset_t none;
  sigemptyset(&none);
  pid_t pid = ::fork();
  if (pid < 0) {
    error = std::string{"fork: "} + std::strerror(errno);
    ::close(out);
    if (pipe_read >= 0)
      ::close(pipe_read);
    return nullptr;
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, parent_death_signal);
    if (::getppid() != parent) // the bench died before prctl took effect
      ::_exit(127);
    ::dup2(out, STDOUT_FILENO);
    ::dup2(out, STDERR_FILENO);
    close_inherited_fds();
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  // Both sides set the group, so that it exists whichever runs first.
  ::setpgid(pid, pid);
  bench::add_child_group(pid);
  ::close(out);
  std::unique_ptr<child_process> child{new child_process};
  child->pid_ = pid;
  child->out_fd_ = pipe_read;
  return child;
}

child_process::~child_process() {
  kill_group();
}

void child_process::signal(int sig) const {
  if (!reaped_)
    ::kill(pid_, sig);
}

std::optional<int> child_process::wait_for(std::chrono::milliseconds timeout) {
  auto deadline = clock_type::now() + timeout;
  for (;;) {
    int status = 0;
    auto r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      return status;
    }
    if (r < 0 && errno != EINTR)
      return std::nullopt;
    if (clock_type::now() >= deadline)
      return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void child_process::kill_group() {
  if (pid_ <= 0)
    return;
  ::kill(-pid_, SIGKILL);
  if (!reaped_) {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
  }
  // Grandchildren (the nodes of `understudy launch`) were reparented to this process,
  // the subreaper: reap them until the group is gone.
  auto deadline = clock_type::now() + std::chrono::seconds(2);
  while (clock_type::now() < deadline) {
    int status = 0;
    while (::waitpid(-pid_, &status, WNOHANG) > 0) {
    }
    if (::kill(-pid_, 0) != 0 && errno == ESRCH)
      break;
    ::kill(-pid_, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  bench::remove_child_group(pid_);
  if (out_fd_ >= 0) {
    ::close(out_fd_);
    out_fd_ = -1;
  }
  pid_ = -1;
}

// -- watchdog ------------------------------------------------------------------------------

watchdog::watchdog() : thread_([this] { run(); }) {
  // nop
}

watchdog::~watchdog() {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void watchdog::arm(std::string phase, std::chrono::seconds limit) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    phase_ = std::move(phase);
    deadline_ = clock_type::now() + limit;
  }
  cv_.notify_all();
}

void watchdog::disarm() {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    deadline_.reset();
  }
  cv_.notify_all();
}

void watchdog::run() {
  std::unique_lock<std::mutex> guard{mtx_};
  while (!stop_) {
    if (!deadline_) {
      cv_.wait(guard);
      continue;
    }
    auto deadline = *deadline_;
    if (cv_.wait_until(guard, deadline) == std::cv_status::timeout && deadline_ &&
        *deadline_ == deadline) {
      std::fprintf(stderr, "%s: %s did not finish in time; giving up\n",
                   program_invocation_short_name, phase_.c_str());
      std::fflush(stdout);
      bench::kill_child_groups();
      ::_exit(1);
    }
  }
}

// -- scratch space ---------------------------------------------------------------------------

scratch_dir::scratch_dir(const std::string& name) {
  auto tmpl =
      (std::filesystem::temp_directory_path() / ("understudy-bench-" + name + "-XXXXXX")).string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::perror("mkdtemp");
    return;
  }
  path = tmpl;
}

scratch_dir::~scratch_dir() {
  std::error_code ec;
  if (!path.empty())
    std::filesystem::remove_all(path, ec);
}

std::vector<uint16_t> free_ports(size_t n) {
  std::vector<int> fds;
  std::vector<uint16_t> ports;
  for (size_t i = 0; i < n; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      break;
    fds.push_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      break;
    ports.push_back(ntohs(addr.sin_port));
  }
  // All are held open until every port is known, so that none repeats.
  for (int fd : fds)
    ::close(fd);
  if (ports.size() != n)
    ports.clear();
  return ports;
}

bool write_file(const std::string& path, const std::string& text) {
  std::ofstream out{path};
  out << text;
  return static_cast<bool>(out.flush());
}

std::string tail_of(const std::string& path, size_t max_lines) {
  std::ifstream in{path};
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(line);
    if (lines.size() > max_lines)
      lines.pop_front();
  }
  std::string out;
  for (auto& l : lines)
    out += "    | " + l + "\n";
  return out;
}

} // namespace cluster_bench
