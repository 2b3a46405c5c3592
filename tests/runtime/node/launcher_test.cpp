// The launcher: its chaos specs (--kill NODE@STEP, --freeze NODE@STEP:DURATION),
// where numbers too large are errors naming the value; and, with shell
// commands standing in for nodes of a real config file, what the nodes it
// starts inherit and that they die with it, frozen or not; the local etcd it
// starts for a cluster of several nodes.

#include "understudy/node/launcher.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "support/temp_dir.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/node/local_etcd.hpp"

using namespace understudy;
using namespace std::chrono_literals;

TEST_CASE("parse_chaos reads kills and freezes", "[launcher]") {
  auto kill = parse_chaos("n1@1000", false);
  REQUIRE(kill);
  CHECK(kill->node == "n1");
  CHECK(kill->step == 1000);
  CHECK_FALSE(kill->freeze);
  auto freeze = parse_chaos("n3@2000:3s", true);
  REQUIRE(freeze);
  CHECK(freeze->step == 2000);
  CHECK(freeze->duration == 3000ms);
  auto short_freeze = parse_chaos("n3@5:250ms", true);
  REQUIRE(short_freeze);
  CHECK(short_freeze->duration == 250ms);
  auto largest = parse_chaos("n1@18446744073709551615", false);
  REQUIRE(largest);
  CHECK(largest->step == 18446744073709551615ull);
}

TEST_CASE("parse_chaos refuses malformed specs", "[launcher]") {
  for (const auto* text : {"n1", "n1@", "@5", "n1@-3", "n1@5x"}) {
    auto act = parse_chaos(text, false);
    REQUIRE_FALSE(act);
    CHECK(is(act.error(), config_errc::invalid_value));
    CHECK_THAT(error_context(act.error()), Catch::Contains(text));
  }
  auto act = parse_chaos("n1@5:3h", true);
  REQUIRE_FALSE(act);
  CHECK_THAT(error_context(act.error()), Catch::Contains("'3h'"));
}

TEST_CASE("parse_chaos refuses numbers that overflow, naming them", "[launcher]") {
  SECTION("a step beyond 64 bits") {
    auto act = parse_chaos("n1@99999999999999999999", false);
    REQUIRE_FALSE(act);
    CHECK(is(act.error(), config_errc::invalid_value));
    CHECK_THAT(error_context(act.error()), Catch::Contains("99999999999999999999"));
    auto frozen = parse_chaos("n1@18446744073709551616:1s", true);
    REQUIRE_FALSE(frozen);
    CHECK_THAT(error_context(frozen.error()), Catch::Contains("18446744073709551616"));
  }
  SECTION("a duration beyond 64 bits") {
    auto act = parse_chaos("n1@5:99999999999999999999s", true);
    REQUIRE_FALSE(act);
    CHECK(is(act.error(), config_errc::invalid_value));
    CHECK_THAT(error_context(act.error()), Catch::Contains("99999999999999999999s"));
  }
  SECTION("a duration whose milliseconds would wrap") {
    // 18446744073709552 s is 2^64 ms and a little more: it used to wrap to 384 ms.
    auto act = parse_chaos("n1@5:18446744073709552s", true);
    REQUIRE_FALSE(act);
    CHECK_THAT(error_context(act.error()), Catch::Contains("18446744073709552s"));
  }
  SECTION("a duration the clock cannot hold") {
    auto act = parse_chaos("n1@5:9223372036854775807ms", true);
    REQUIRE_FALSE(act);
    CHECK_THAT(error_context(act.error()), Catch::Contains("9223372036854775807ms"));
  }
}

namespace {

using clock_type = std::chrono::steady_clock;

/// A config file of two loopback nodes, n1 and n2, in `dir`.
std::string two_node_config(const std::string& dir) {
  auto file = dir + "/cluster.toml";
  std::ofstream{file} << "[cluster]\nname = \"t\"\n\n"
                      << "[[node]]\nname = \"n1\"\nhost = \"127.0.0.1\"\nport = 7101\n"
                      << "state_dir = \"" << dir << "/n1\"\n\n"
                      << "[[node]]\nname = \"n2\"\nhost = \"127.0.0.1\"\nport = 7102\n"
                      << "state_dir = \"" << dir << "/n2\"\n";
  return file;
}

/// A launcher run in a process of its own (it installs signal handlers, and
/// a test kills it); its output comes through `fd`.
struct launcher_process {
  pid_t pid = -1;
  int fd = -1;
  std::string output;

  explicit launcher_process(const launch_options& opts) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      ::close(fds[0]);
      ::close(fds[1]);
      node_output out{std::cout, std::cerr};
      ::_exit(run_launch(opts, out));
    }
    ::close(fds[1]);
    fd = fds[0];
  }

  ~launcher_process() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (fd >= 0)
      ::close(fd);
  }

  /// Reads output until it contains `text` or `timeout` passes; whether it does.
  bool read_until(const std::string& text, std::chrono::milliseconds timeout) {
    auto until = clock_type::now() + timeout;
    while (output.find(text) == std::string::npos) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock_type::now());
      pollfd p{fd, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0)
        return false;
      char buf[1024];
      auto n = ::read(fd, buf, sizeof buf);
      if (n <= 0)
        return false;
      output.append(buf, static_cast<size_t>(n));
    }
    return true;
  }

  /// Waits for the launcher to exit; its exit status.
  int wait() {
    read_until("\x01never printed", std::chrono::seconds(20)); // reads to the end
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    pid = -1;
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
  }

  /// The pid the launcher reported for node `name`.
  pid_t node_pid(const std::string& name) const {
    std::smatch m;
    std::regex re{"started node " + name + R"( \(pid (\d+)\))"};
    REQUIRE(std::regex_search(output, m, re));
    return static_cast<pid_t>(std::stol(m[1]));
  }
};

/// The state letter of process `pid` (R, S, T, Z, ...), or 0 if it is gone.
char process_state(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string stat;
  if (!std::getline(in, stat))
    return 0;
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? 0 : stat[close + 2];
}

/// Checks `cond` until it holds or `timeout` passes; whether it held.
template <class F>
bool eventually(F cond, std::chrono::milliseconds timeout) {
  auto until = clock_type::now() + timeout;
  while (!cond()) {
    if (clock_type::now() > until)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

} // namespace

TEST_CASE("a node the launcher starts holds no other node's pipe", "[launcher]") {
  test::temp_dir dir{"launcher"};
  launch_options opts;
  opts.file = two_node_config(dir.path);
  // Each node lists its descriptors; n1 alone ends the job ("final:"), once
  // n2's list is written (waiting at most 20 s), so the stop that its end
  // brings cannot cut either short. (n2 printing "final:" too ended the job
  // before n1 had written its list, about once in 300 runs under load.)
  opts.node_command = [&](const std::string& name) {
    const auto out = dir.path + "/" + name;
    std::string script =
        "trap '' TERM; ls /proc/$$/fd > " + out + ".tmp; mv " + out + ".tmp " + out + ".fds; ";
    if (name == "n1")
      script += "i=0; while [ ! -e " + dir.path +
                "/n2.fds ] && [ $i -lt 2000 ]; do "
                "sleep 0.01; i=$((i+1)); done; ";
    if (name == "n1")
      script += "echo final: done";
    return std::vector<std::string>{"/bin/sh", "-c", script};
  };
  launcher_process launcher{opts};
  CHECK(launcher.wait() == 0);
  INFO(launcher.output);
  auto read = [&](const std::string& name) {
    std::ifstream in{dir.path + "/" + name + ".fds"};
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  };
  auto n1 = read("n1");
  CHECK_FALSE(n1.empty());
  // n2 started after n1's pipe was made: with the pipe inherited, it lists one more.
  CHECK(read("n2") == n1);
}

TEST_CASE("nodes die with their launcher, also one it froze", "[launcher]") {
  test::temp_dir dir{"launcher"};
  launch_options opts;
  opts.file = two_node_config(dir.path);
  opts.freezes = {"n1@1:600s"};
  opts.node_command = [](const std::string& name) {
    std::string script =
        name == "n1" ? "echo 'progress: step 1/10'; exec sleep 600" : "exec sleep 600";
    return std::vector<std::string>{"/bin/sh", "-c", script};
  };
  launcher_process launcher{opts};
  REQUIRE(launcher.read_until("chaos: SIGSTOP n1", std::chrono::seconds(20)));
  auto n1 = launcher.node_pid("n1");
  auto n2 = launcher.node_pid("n2");
  CHECK(eventually([&] { return process_state(n1) == 'T'; }, std::chrono::seconds(10)));
  ::kill(launcher.pid, SIGKILL);
  REQUIRE(::waitpid(launcher.pid, nullptr, 0) == launcher.pid);
  launcher.pid = -1;
  // Gone, or a zombie its new parent has not reaped yet.
  auto dead = [](pid_t pid) {
    auto state = process_state(pid);
    return state == 0 || state == 'Z' || state == 'X';
  };
  bool n1_dead = eventually([&] { return dead(n1); }, std::chrono::seconds(10));
  bool n2_dead = eventually([&] { return dead(n2); }, std::chrono::seconds(10));
  CHECK(n1_dead);
  CHECK(n2_dead);
  for (auto [pid, gone] : {std::pair{n1, n1_dead}, std::pair{n2, n2_dead}})
    if (!gone)
      ::kill(pid, SIGKILL);
}

namespace {

/// Whether a local etcd can run here; warns visibly if not.
bool etcd_or_skip() {
  auto found = find_etcd_binary();
  if (!found)
    WARN("skipped: " << describe(found.error()));
  return static_cast<bool>(found);
}

/// Whether something accepts connections on 127.0.0.1:`port`.
bool port_open(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool open = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return open;
}

} // namespace

TEST_CASE("a launched cluster of several nodes gets a local etcd, named to every node",
          "[launcher][coordination]") {
  if (!etcd_or_skip())
    return;
  test::temp_dir dir{"launcher"};
  launch_options opts;
  opts.file = two_node_config(dir.path);
  // `sh -c SCRIPT ARGS...`: the arguments the launcher appends are $0, $1, ...
  // n1 prints its arguments, then hands over through a FIFO to n2, which
  // prints its own and ends the launch (so both lines come before the end).
  auto fifo = dir.path + "/handover";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  opts.node_command = [fifo](const std::string& name) {
    std::string script = name == "n1"
                             ? "echo \"args: $0 $1\"; echo done > " + fifo + "; read y < " + fifo
                             : "read x < " + fifo + "; echo \"args: $0 $1\"; echo final: done";
    return std::vector<std::string>{"/bin/sh", "-c", script};
  };
  launcher_process launcher{opts};
  CHECK(launcher.wait() == 0);
  INFO(launcher.output);
  std::smatch m;
  std::regex logged{
      R"(launch: coordination: local etcd at (http://127\.0\.0\.1:(\d+)) \(data in )"};
  REQUIRE(std::regex_search(launcher.output, m, logged));
  const auto url = m[1].str();
  CHECK_THAT(launcher.output, Catch::Contains("[n1] args: --coordination " + url));
  CHECK_THAT(launcher.output, Catch::Contains("[n2] args: --coordination " + url));
  // The etcd went with the launcher.
  CHECK_FALSE(port_open(std::stoi(m[2].str())));
}

TEST_CASE("a launched single node, or a file naming etcd, gets no local etcd",
          "[launcher][coordination]") {
  test::temp_dir dir{"launcher"};
  launch_options opts;
  opts.node_command = [](const std::string&) {
    return std::vector<std::string>{"/bin/sh", "-c", "echo \"args: [$0]\"; echo final: done"};
  };
  SECTION("one node") {
    opts.file = dir.path + "/one.toml";
    std::ofstream{opts.file} << "[cluster]\nname = \"t\"\n\n"
                             << "[[node]]\nname = \"n1\"\nhost = \"127.0.0.1\"\nport = 7101\n"
                             << "state_dir = \"" << dir.path << "/n1\"\n";
  }
  SECTION("endpoints in the file") {
    opts.file = two_node_config(dir.path);
    std::ofstream{opts.file, std::ios::app}
        << "\n[cluster.coordination]\nendpoints = [\"http://127.0.0.1:1\"]\n";
  }
  launcher_process launcher{opts};
  CHECK(launcher.wait() == 0);
  INFO(launcher.output);
  CHECK_THAT(launcher.output, !Catch::Contains("launch: coordination"));
  // Whichever node printed first (the first "final:" ends the launch): no URL appended.
  CHECK_THAT(launcher.output, Catch::Contains("] args: [/bin/sh]"));
}

/// Runs `understudy node ARGS` and returns its exit status (-1 if it did not exit) and its
/// output, stdout and stderr together.
std::pair<int, std::string> run_node_command(const std::string& args) {
  std::string command = std::string{UNDERSTUDY_CLI_PATH} + " node " + args + " 2>&1";
  auto* p = ::popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string output;
  char buf[512];
  while (auto n = std::fread(buf, 1, sizeof buf, p))
    output.append(buf, n);
  int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST_CASE("a node of several without etcd endpoints refuses to start, saying what to do",
          "[launcher][coordination]") {
  test::temp_dir dir{"launcher"};
  auto [status, output] = run_node_command(two_node_config(dir.path) + " --name n1");
  INFO(output);
  CHECK(status == 2); // exit_code::bad_config
  CHECK_THAT(output, Catch::Contains("needs etcd: add [cluster.coordination]") &&
                         Catch::Contains("understudy launch"));
}

TEST_CASE("a node of several without [cluster.security] refuses to start, saying what to do",
          "[launcher][security]") {
  test::temp_dir dir{"launcher"};
  // etcd endpoints given (never reached): the node stops at its transport, before it joins.
  auto [status, output] =
      run_node_command(two_node_config(dir.path) + " --name n1 --coordination http://127.0.0.1:1");
  INFO(output);
  CHECK(status == 2); // exit_code::bad_config
  CHECK_THAT(output, Catch::Contains("talks mutual TLS only") &&
                         Catch::Contains("understudy certs") &&
                         Catch::Contains("understudy launch"));
}

TEST_CASE("a --restart that names no node of the file is refused before anything starts",
          "[launcher]") {
  test::temp_dir dir{"launch-restart"};
  launch_options opts;
  opts.file = two_node_config(dir.path);
  opts.restarts = {"n9@5"};
  opts.node_command = [](const std::string&) { return std::vector<std::string>{"/bin/false"}; };
  std::ostringstream out, err;
  node_output o{out, err};
  CHECK(run_launch(opts, o) == to_int(exit_code::bad_config));
  CHECK_THAT(err.str(), Catch::Contains("bad --restart 'n9@5' (expected NODE@STEP with a node of"));
  CHECK(out.str().find("started node") == std::string::npos);
  opts.restarts = {"n2"};
  std::ostringstream out2, err2;
  node_output o2{out2, err2};
  CHECK(run_launch(opts, o2) == to_int(exit_code::bad_config));
  CHECK_THAT(err2.str(), Catch::Contains("bad --restart 'n2'"));
}
