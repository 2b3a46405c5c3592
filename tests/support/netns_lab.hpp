#pragma once
// Hosts in network namespaces of their own, joined by veth pairs to one bridge,
// for tests of what crosses a real network: partitions by taking a host's link
// down (both ways) or by nftables drop rules in a host's namespace (one way).
// Needs root and iproute2/nftables; `netns_lab::available()` tells whether this
// machine permits it, so that a test can say so and skip visibly.
//
// Every name carries the test process's id, and everything is removed when the
// lab goes (processes started in it first).

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace test {

/// The warning that marks a test as skipped; CTest matches "skipped: ".
constexpr const char* netns_skip_message = "skipped: no network namespaces (needs root, ip, nft)";

class netns_lab {
public:
  /// One host: its namespace, its address on the lab's bridge, its host-side link.
  struct host {
    std::string ns;
    std::string ip;
    std::string link; // the veth end on the bridge
  };

  /// Whether this process may make namespaces, bridges and nftables rules.
  static bool available() {
    if (::geteuid() != 0)
      return false;
    auto probe = "us-probe-" + std::to_string(::getpid());
    bool ok = run("ip netns add " + probe) == 0 &&
              run("ip netns exec " + probe + " nft list tables") == 0;
    run("ip netns del " + probe);
    return ok;
  }

  netns_lab() : tag_(next_tag()) {
    // A /24 per test process, in 10.200.0.0/16 .. 10.249.0.0/16.
    auto n = static_cast<unsigned>(::getpid());
    subnet_ = "10." + std::to_string(200 + n % 50) + "." + std::to_string((n / 50) % 250) + ".";
    bridge_ = "usb" + tag_;
    must("ip link add " + bridge_ + " type bridge");
    must("ip link set " + bridge_ + " up");
  }

  netns_lab(const netns_lab&) = delete;
  netns_lab& operator=(const netns_lab&) = delete;

  ~netns_lab() {
    for (auto& [pid, _] : procs_) {
      ::kill(pid, SIGCONT);
      ::kill(pid, SIGKILL);
    }
    for (auto& [pid, _] : procs_)
      ::waitpid(pid, nullptr, 0);
    for (auto& [name, h] : hosts_)
      run("ip netns del " + h.ns);
    run("ip link del " + bridge_);
  }

  /// Adds host `name` with address subnet.`index` (1..250).
  const host& add(const std::string& name, unsigned index) {
    host h;
    h.ns = "us" + tag_ + "-" + name;
    h.ip = subnet_ + std::to_string(index);
    h.link = "usv" + tag_ + "x" + std::to_string(index);
    auto inner = "usi" + tag_ + "x" + std::to_string(index);
    // Recorded first, so that the destructor removes what a failed step left.
    hosts_[name] = h;
    must("ip netns add " + h.ns);
    must("ip link add " + h.link + " type veth peer name " + inner);
    must("ip link set " + inner + " netns " + h.ns);
    must("ip link set " + h.link + " master " + bridge_);
    must("ip link set " + h.link + " up");
    must("ip -n " + h.ns + " addr add " + h.ip + "/24 dev " + inner);
    must("ip -n " + h.ns + " link set " + inner + " up");
    must("ip -n " + h.ns + " link set lo up");
    must("ip netns exec " + h.ns + " nft add table inet lab");
    must("ip netns exec " + h.ns +
         " nft add chain inet lab out '{ type filter hook output priority 0 ; }'");
    must("ip netns exec " + h.ns +
         " nft add chain inet lab in '{ type filter hook input priority 0 ; }'");
    return hosts_[name];
  }

  const host& at(const std::string& name) const { return hosts_.at(name); }

  /// Starts `argv` in `name`'s namespace with stdout and stderr to `log`.
  pid_t start(const std::string& name, const std::vector<std::string>& argv,
              const std::string& log) {
    std::vector<std::string> full{"ip", "netns", "exec", at(name).ns};
    full.insert(full.end(), argv.begin(), argv.end());
    std::vector<char*> args;
    for (auto& a : full)
      args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = 0;
    int rc = posix_spawnp(&pid, "ip", &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
      throw std::runtime_error("cannot start a process in " + at(name).ns);
    procs_[pid] = name;
    return pid;
  }

  /// Waits up to `timeout` for `pid` to end; its exit status, or -1 if it still runs.
  int wait_exit(pid_t pid, std::chrono::milliseconds timeout) {
    // waitpid(0 or -1) would reap (and lose) every other child's status.
    if (pid <= 0)
      return -1;
    auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        procs_.erase(pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (std::chrono::steady_clock::now() >= until)
        return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  /// Cuts `name` from every other host, both ways (its link goes down).
  void cut(const std::string& name) { must("ip link set " + at(name).link + " down"); }
  void heal(const std::string& name) { must("ip link set " + at(name).link + " up"); }

  /// Drops what `from` sends to `to` (one way; `to` still reaches `from`).
  void drop(const std::string& from, const std::string& to) {
    must("ip netns exec " + at(from).ns + " nft add rule inet lab out ip daddr " + at(to).ip +
         " drop");
  }
  /// Drops everything `name` sends to or receives from `other`.
  void isolate_from(const std::string& name, const std::string& other) {
    drop(name, other);
    must("ip netns exec " + at(name).ns + " nft add rule inet lab in ip saddr " + at(other).ip +
         " drop");
  }
  /// Removes every drop rule of `name`.
  void clear_rules(const std::string& name) {
    must("ip netns exec " + at(name).ns + " nft flush chain inet lab out");
    must("ip netns exec " + at(name).ns + " nft flush chain inet lab in");
  }

  static int run(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

private:
  /// This lab's part of every name: the process (5 digits) and a letter per lab in it,
  /// because the kernel removes a deleted namespace's links after a while, and the next
  /// lab in the same test process must not collide with them (names stay within 15
  /// characters: "usv" + tag + "x" + index).
  static std::string next_tag() {
    static std::atomic<unsigned> labs{0};
    return std::to_string(::getpid() % 100000) + static_cast<char>('a' + labs++ % 26);
  }

  static void must(const std::string& cmd) {
    if (run(cmd) != 0)
      throw std::runtime_error("netns_lab: failed: " + cmd);
  }

  std::string tag_;
  std::string subnet_;
  std::string bridge_;
  std::map<std::string, host> hosts_;
  std::map<pid_t, std::string> procs_;
};

/// The whole text of `path` ("" if it cannot be read).
inline std::string read_text(const std::string& path) {
  std::ifstream in{path};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Waits up to `timeout` for `path` to contain `what`; whether it does. Polls the
/// file: the event is another process's output.
inline bool await_text(const std::string& path, const std::string& what,
                       std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (read_text(path).find(what) == std::string::npos) {
    if (std::chrono::steady_clock::now() >= until)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

} // namespace test
