#include "understudy/node/launcher.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <regex>

#include "understudy/cluster/etcd_coordinator.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/node/local_etcd.hpp"
#include "understudy/node/run_report.hpp"

namespace understudy {

namespace {

using clock_type = std::chrono::steady_clock;

// The one signal a launcher was asked to stop by. A signal handler can reach
// only a variable of static storage, so this is process-wide (as the handlers
// of SIGINT and SIGTERM are).
volatile sig_atomic_t launch_signal = 0;

extern "C" void on_launch_signal(int sig) {
  launch_signal = sig;
}

/// The longest freeze: a year keeps `now() + duration` far inside the clock.
constexpr std::chrono::milliseconds max_freeze = std::chrono::hours(24 * 365);

/// Parses the decimal digits `digits` into `out`; false if they overflow.
bool parse_count(const std::string& digits, uint64_t& out) {
  errno = 0;
  char* end = nullptr;
  auto n = std::strtoull(digits.c_str(), &end, 10);
  if (errno == ERANGE || end == digits.c_str() || *end != '\0')
    return false;
  out = n;
  return true;
}

/// Parses "500ms" or "3s"; an error naming `s` if it is no such span, or a
/// span longer than max_freeze.
caf::expected<std::chrono::milliseconds> parse_span(const std::string& s) {
  std::smatch m;
  static const std::regex re{R"(^(\d+)(ms|s)$)"};
  if (!std::regex_match(s, m, re))
    return make_error(config_errc::invalid_value,
                      "'" + s + "' is not a duration (expected e.g. 500ms or 3s)");
  uint64_t n = 0;
  uint64_t per_unit = m[2] == "s" ? 1000 : 1;
  auto limit = static_cast<uint64_t>(max_freeze.count());
  if (!parse_count(m[1], n) || n > limit / per_unit)
    return make_error(config_errc::invalid_value, "duration '" + s + "' is too long (at most " +
                                                      std::to_string(limit / 1000) + "s)");
  return std::chrono::milliseconds(static_cast<int64_t>(n * per_unit));
}

/// A planned act of chaos and how far it got.
struct chaos_state {
  chaos_action act;
  bool done = false;
  clock_type::time_point resume_at{};
  bool resumed = false;
};

/// One node's process.
struct child {
  std::string name;
  pid_t pid = -1;
  int fd = -1;
  std::string pending;
  bool running = false;
  int status = 0;
  /// It printed the job's final line.
  bool finished = false;
  /// Its lines, also kept in STATE_DIR/node.log (opened close-on-exec: a
  /// node started later must not hold it). Shared by copies; closed with the last.
  std::shared_ptr<const int> log;
};

/// Opens `path` for appending, close-on-exec; none if it cannot.
std::shared_ptr<const int> open_node_log(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0)
    return nullptr;
  return std::shared_ptr<const int>(new int{fd}, [](const int* p) {
    ::close(*p);
    delete p;
  });
}

/// Appends `text` to the log `fd` (a short write of a full disk loses the rest).
void write_all(int fd, const std::string& text) {
  size_t at = 0;
  while (at < text.size()) {
    auto n = ::write(fd, text.data() + at, text.size() - at);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    at += static_cast<size_t>(n);
  }
}

/// One run of the launcher: its nodes' processes and its chaos plan.
class launcher {
public:
  launcher(const launch_options& opts, node_output& out, node_config nc,
           std::vector<chaos_state> plan, std::string coordination_url)
      : opts_(opts),
        out_(out),
        nc_(std::move(nc)),
        plan_(std::move(plan)),
        candidates_(leader_candidates(nc_, opts.components)),
        coordination_url_(std::move(coordination_url)) {}

  int run() {
    struct sigaction sa {};
    sa.sa_handler = on_launch_signal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    if (!spawn_all())
      return to_int(exit_code::bad_config);
    for (;;) {
      if (launch_signal != 0 && !stopping_)
        interrupt();
      resume_frozen();
      std::vector<pollfd> pfds;
      for (auto& k : kids_)
        if (k.fd >= 0)
          pfds.push_back({k.fd, POLLIN, 0});
      if (pfds.empty() &&
          std::none_of(kids_.begin(), kids_.end(), [](auto& k) { return k.running; }))
        break;
      ::poll(pfds.data(), pfds.size(), poll_timeout_ms());
      for (auto& k : kids_)
        read_from(k);
      for (auto& k : kids_)
        reap(k);
      if (stopping_ && clock_type::now() > stop_deadline_) {
        signal_all(SIGKILL);
        stop_deadline_ = clock_type::now() + std::chrono::hours(1);
      }
    }
    if (report_) {
      if (auto err = report_->write(opts_.report))
        out_.warn(opts_.label + ": " + describe(err));
      else
        out_.say("launch: report in " + opts_.report);
    }
    return result_;
  }

private:
  /// Starts every node of the file; false if a pipe cannot be made.
  bool spawn_all() {
    for (const auto& n : nc_.nodes)
      if (!spawn(n.name))
        return false;
    return true;
  }

  /// Starts node `name`'s process (again, if it ran before); false if a pipe
  /// cannot be made.
  bool spawn(const std::string& name) {
    const auto leader = candidates_.empty() ? std::string{} : candidates_.front();
    {
      const auto& n = *nc_.find_node(name);
      auto args = opts_.node_command(n.name);
      if (!coordination_url_.empty()) {
        args.push_back("--coordination");
        args.push_back(coordination_url_);
      }
      std::vector<char*> argv;
      for (auto& a : args)
        argv.push_back(a.data());
      argv.push_back(nullptr);
      // Close-on-exec: a node started later must not hold the read ends of
      // the pipes of those before it (dup2 clears the flag on its 1 and 2).
      int fds[2];
      if (::pipe2(fds, O_CLOEXEC) != 0) {
        std::perror((opts_.label + ": pipe").c_str());
        return false;
      }
      const pid_t launcher_pid = ::getpid();
      pid_t pid = ::fork();
      if (pid == 0) {
        // A node dies with the launcher, also one it froze (SIGKILL ends a
        // stopped process): none is left stopped, or running unsupervised.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != launcher_pid)
          ::_exit(127); // the launcher died before prctl
        ::dup2(fds[1], 1);
        ::dup2(fds[1], 2);
        ::close(fds[0]);
        ::close(fds[1]);
        signal(SIGINT, SIG_IGN); // Ctrl-C reaches the launcher; it stops the nodes
        ::execv(argv[0], argv.data());
        std::perror((opts_.label + ": exec").c_str());
        ::_exit(127);
      }
      ::close(fds[1]);
      auto* old = find(n.name);
      if (old != nullptr)
        *old = child{n.name, pid, fds[0], {}, true, 0, false, nullptr};
      else
        kids_.push_back(child{n.name, pid, fds[0], {}, true, 0, false, nullptr});
      // Every line the node writes also goes to node.log in its state
      // directory (appended across launches).
      std::error_code ec;
      std::filesystem::create_directories(n.state_dir, ec);
      if (auto log = open_node_log(n.state_dir + "/node.log")) {
        write_all(*log, "-- launched (pid " + std::to_string(pid) + ")\n");
        find(n.name)->log = std::move(log);
      }
      out_.say("launch: " + std::string{old != nullptr ? "restarted" : "started"} + " node " +
               n.name + " (pid " + std::to_string(pid) + ")" +
               (n.name == leader && old == nullptr ? ", the leader" : ""));
    }
    return true;
  }

  child* find(const std::string& name) {
    for (auto& k : kids_)
      if (k.name == name)
        return &k;
    return nullptr;
  }

  void signal_all(int sig) {
    for (auto& k : kids_)
      if (k.running) {
        ::kill(k.pid, sig);
        ::kill(k.pid, SIGCONT);
      }
  }

  void stop_all_in(std::chrono::seconds grace) {
    stopping_ = true;
    stop_deadline_ = clock_type::now() + grace;
    signal_all(SIGTERM);
  }

  /// Ctrl-C or SIGTERM: the leader first, which stops its tree and then asks
  /// the other nodes to stop, so that none of them leaves while the tree would
  /// still move its actors; every node 10 s later, or at once without a leader.
  void interrupt() {
    interrupted_ = true;
    // As a shell reports a command a signal ended: 128 + the signal.
    result_ = 128 + static_cast<int>(launch_signal);
    auto* leader = leader_.empty() ? nullptr : find(leader_);
    if (leader == nullptr || !leader->running) {
      out_.say("launch: stopping every node");
      stop_all_in(std::chrono::seconds(10));
      return;
    }
    out_.say("launch: stopping the leader " + leader_ + ", which stops the other nodes");
    stopping_ = true;
    stop_deadline_ = clock_type::now() + std::chrono::seconds(10);
    ::kill(leader->pid, SIGTERM);
    ::kill(leader->pid, SIGCONT);
  }

  /// How long the poll may wait: 50 ms, or less when a frozen node is due to
  /// resume sooner (so that a freeze lasts what was asked, to the millisecond).
  int poll_timeout_ms() const {
    auto wait = std::chrono::milliseconds(50);
    auto now = clock_type::now();
    for (auto& c : plan_)
      if (c.act.freeze && c.done && !c.resumed)
        wait = std::min(wait,
                        std::max(std::chrono::milliseconds(0),
                                 std::chrono::ceil<std::chrono::milliseconds>(c.resume_at - now)));
    return static_cast<int>(wait.count());
  }

  void resume_frozen() {
    auto now = clock_type::now();
    for (auto& c : plan_)
      if (c.act.freeze && c.done && !c.resumed && now >= c.resume_at) {
        c.resumed = true;
        if (auto* k = find(c.act.node); k && k->running) {
          ::kill(k->pid, SIGCONT);
          out_.say("chaos: SIGCONT " + c.act.node);
        }
      }
  }

  /// Fires the chaos planned for `step` or earlier.
  void apply_chaos(uint64_t step) {
    for (auto& c : plan_) {
      if (c.done || step < c.act.step)
        continue;
      c.done = true;
      auto* target = find(c.act.node);
      if (c.act.restart) {
        if (stopping_ || (target != nullptr && (target->running || target->fd >= 0))) {
          out_.say("chaos: " + c.act.node + " still runs at step " + std::to_string(step) +
                   ": not restarted");
          continue;
        }
        note("chaos: restarting " + c.act.node + " at step " + std::to_string(step));
        spawn(c.act.node);
        continue;
      }
      if (!target || !target->running)
        continue;
      if (c.act.freeze) {
        ::kill(target->pid, SIGSTOP);
        c.resume_at = clock_type::now() + c.act.duration;
        note("chaos: SIGSTOP " + c.act.node + " at step " + std::to_string(step) + " for " +
             std::to_string(c.act.duration.count()) + " ms");
      } else {
        ::kill(target->pid, SIGKILL);
        note("chaos: SIGKILL " + c.act.node + " at step " + std::to_string(step));
      }
    }
  }

  /// The launcher's own line, also in the report.
  void note(const std::string& line) {
    out_.say(line);
    if (report_)
      report_->add_line(line);
  }

  void on_line(child& k, const std::string& line) {
    static const std::regex step_re{R"(step (\d+)/(\d+))"};
    out_.say("[" + k.name + "] " + line);
    if (report_)
      report_->add_line(line);
    if (k.log)
      write_all(*k.log, line + '\n');
    if (line.rfind("final:", 0) == 0)
      k.finished = true;
    // Progress comes from the leader, whichever node that is now.
    std::smatch m;
    if (line.rfind("progress:", 0) == 0 || line.rfind("job: ", 0) == 0)
      leader_ = k.name;
    if (line.rfind("progress:", 0) == 0 && std::regex_search(line, m, step_re))
      apply_chaos(std::stoull(m[1]));
  }

  /// Reads what node `k` wrote, if anything; true if it read something.
  bool read_from(child& k) {
    if (k.fd < 0)
      return false;
    pollfd probe{k.fd, POLLIN, 0};
    if (::poll(&probe, 1, 0) <= 0)
      return false;
    char buf[4096];
    auto n = ::read(k.fd, buf, sizeof buf);
    if (n <= 0) {
      if (n == 0 || errno != EINTR) {
        ::close(k.fd);
        k.fd = -1;
      }
      return false;
    }
    k.pending.append(buf, static_cast<size_t>(n));
    size_t pos;
    while ((pos = k.pending.find('\n')) != std::string::npos) {
      auto line = k.pending.substr(0, pos);
      k.pending.erase(0, pos + 1);
      on_line(k, line);
    }
    return true;
  }

  /// Notices that node `k` ended and decides whether that ends the job.
  void reap(child& k) {
    if (!k.running)
      return;
    int status = 0;
    if (::waitpid(k.pid, &status, WNOHANG) != k.pid)
      return;
    k.running = false;
    k.status = status;
    while (read_from(k)) {
      // What it wrote before it ended (its final line) counts.
    }
    std::string how = WIFEXITED(status)
                          ? "exited with status " + std::to_string(WEXITSTATUS(status))
                          : "killed by signal " + std::to_string(WTERMSIG(status));
    out_.say("launch: node " + k.name + " " + how);
    if (interrupted_ &&
        !std::any_of(kids_.begin(), kids_.end(), [](const child& c) { return c.running; }))
      out_.say(nc_.tree.children.empty()
                   ? std::string{"launch: stopped; run the same command again to start it again"}
                   : std::string{"launch: stopped; run the same command again to resume the "
                                 "job from its last committed step"});
    if (interrupted_ && k.name == leader_) {
      // The leader has stopped its tree: the others may go now.
      signal_all(SIGTERM);
    }
    // The job ends with the node that finished it, or with one that could
    // not run it (a bad config, a failed job). A node lost otherwise (killed,
    // fenced) is the cluster's to survive, as long as a node that can take
    // over the tree runs.
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    bool ends = k.finished || code == to_int(exit_code::bad_config) ||
                code == to_int(exit_code::job_failed);
    bool successor = std::any_of(kids_.begin(), kids_.end(), [&](const child& c) {
      return c.running &&
             std::find(candidates_.begin(), candidates_.end(), c.name) != candidates_.end();
    });
    if (!ends && !successor && !stopping_) {
      out_.say("launch: no node left that can run the job's tree; stopping");
      code = to_int(exit_code::failure);
      ends = true;
    }
    if (ends && !stopping_) {
      result_ = code < 0 ? to_int(exit_code::failure) : code;
      stop_all_in(std::chrono::seconds(10));
    }
  }

  const launch_options& opts_;
  node_output& out_;
  node_config nc_;
  std::vector<chaos_state> plan_;
  /// The trainer's node runs the tree; when it is lost, the next candidate alive.
  std::vector<std::string> candidates_;
  std::vector<child> kids_;
  /// The run as an HTML page (launch_options::report), if asked for.
  std::unique_ptr<run_report> report_ =
      opts_.report.empty() ? nullptr
                           : std::make_unique<run_report>("understudy launch " + opts_.file);
  bool stopping_ = false;
  /// Stopping after Ctrl-C or SIGTERM, and the node that printed the job's
  /// progress last (the leader).
  bool interrupted_ = false;
  std::string leader_;
  clock_type::time_point stop_deadline_{};
  /// The exit status of the node that ended the job; failure if none did.
  int result_ = to_int(exit_code::failure);
  /// The local etcd's URL, passed to every node ("" if the file names etcd).
  std::string coordination_url_;
};

/// Where a launch keeps its local etcd: in launch_data_dir (kept across
/// launches, so that the epochs it gives keep growing: a node's store refuses
/// replicas of a lower epoch than it has seen).
std::string coordination_dir(const node_config& nc) {
  return launch_data_dir(nc) + "/etcd";
}

} // namespace

caf::expected<chaos_action> parse_chaos(const std::string& text, bool freeze) {
  static const std::regex kill_re{R"(^([A-Za-z0-9_-]+)@(\d+)$)"};
  static const std::regex freeze_re{R"(^([A-Za-z0-9_-]+)@(\d+):(\w+)$)"};
  std::smatch m;
  if (!std::regex_match(text, m, freeze ? freeze_re : kill_re))
    return make_error(
        config_errc::invalid_value,
        "'" + text + "' is not " + (freeze ? "NODE@STEP:DURATION such as n2@500:3s" : "NODE@STEP"));
  chaos_action out;
  out.node = m[1];
  if (!parse_count(m[2], out.step))
    return make_error(config_errc::invalid_value,
                      "step '" + m[2].str() + "' in '" + text + "' is too large (at most " +
                          std::to_string(std::numeric_limits<uint64_t>::max()) + ")");
  out.freeze = freeze;
  if (freeze) {
    auto span = parse_span(m[3]);
    if (!span)
      return std::move(span.error());
    out.duration = *span;
  }
  return out;
}

std::string this_program(const char* argv0) {
  std::error_code ec;
  auto self_exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string{argv0} : self_exe.string();
}

int run_launch(const launch_options& opts, node_output& out) {
  auto nc = load_config(opts.file, opts.components);
  if (!nc) {
    out.warn(opts.label + ": " + describe(nc.error()));
    return to_int(exit_code::bad_config);
  }
  // What the sections name (the job's data, its model's fit) is checked here,
  // before any node starts, rather than by each node after it started.
  for (const auto& c : opts.components)
    if (auto err = c->check(*nc)) {
      out.warn(opts.label + ": " + describe(err) + "; no node started");
      return to_int(exit_code::bad_config);
    }
  if (opts.fresh) {
    // Only what is a node's store: a state_dir that names something else
    // (a typo, a home directory) is refused, not emptied.
    for (const auto& n : nc->nodes) {
      std::error_code ec;
      if (!std::filesystem::exists(n.state_dir, ec))
        continue;
      const std::filesystem::path dir{n.state_dir};
      if (!std::filesystem::exists(dir / "data.mdb", ec) &&
          !std::filesystem::exists(dir / "node.log", ec)) {
        out.warn(opts.label + ": --fresh: " + n.state_dir + " (the state_dir of node " + n.name +
                 ") holds no node's store (no data.mdb or node.log); not removing it");
        return to_int(exit_code::bad_config);
      }
    }
    for (const auto& n : nc->nodes) {
      std::error_code ec;
      if (std::filesystem::remove_all(n.state_dir, ec) > 0)
        out.say("launch: --fresh: removed " + n.state_dir);
      if (ec) {
        out.warn(opts.label + ": --fresh: cannot remove " + n.state_dir + ": " + ec.message());
        return to_int(exit_code::bad_config);
      }
    }
  }
  // Nodes of a cluster always talk mutual TLS: a file without
  // [cluster.security] gets a CA and node certificates made for it (kept
  // beside the nodes' state, where the nodes and `understudy status` find them).
  if (nc->nodes.size() > 1 && !nc->cluster.security) {
    auto made = use_launch_credentials(*nc, true);
    if (!made) {
      out.warn(opts.label +
               ": cannot make certificates for the cluster: " + describe(made.error()));
      return to_int(exit_code::bad_config);
    }
    out.say("launch: mutual TLS with the certificates in " + launch_credentials_dir(*nc));
  }
  std::vector<chaos_state> plan;
  for (const auto& k : opts.kills) {
    auto act = parse_chaos(k, false);
    if (!act) {
      out.warn(opts.label + ": bad --kill '" + k + "': " + error_context(act.error()));
      return to_int(exit_code::bad_config);
    }
    if (nc->find_node(act->node) == nullptr) {
      out.warn(opts.label + ": bad --kill '" + k + "' (expected NODE@STEP with a node of " +
               opts.file + ")");
      return to_int(exit_code::bad_config);
    }
    plan.push_back({*act});
  }
  for (const auto& r : opts.restarts) {
    auto act = parse_chaos(r, false);
    if (!act || nc->find_node(act->node) == nullptr) {
      out.warn(opts.label + ": bad --restart '" + r + "' (expected NODE@STEP with a node of " +
               opts.file + ")");
      return to_int(exit_code::bad_config);
    }
    act->restart = true;
    plan.push_back({*act});
  }
  for (const auto& f : opts.freezes) {
    auto act = parse_chaos(f, true);
    if (!act) {
      out.warn(opts.label + ": bad --freeze '" + f + "': " + error_context(act.error()));
      return to_int(exit_code::bad_config);
    }
    if (nc->find_node(act->node) == nullptr) {
      out.warn(opts.label + ": bad --freeze '" + f +
               "' (expected NODE@STEP:DURATION such as n2@500:3s)");
      return to_int(exit_code::bad_config);
    }
    plan.push_back({*act});
  }
  // A cluster of several nodes decides through etcd: without endpoints in
  // the file, a local one for the nodes of this launch, its data beside the
  // nodes' state (declared before the launcher, so it outlives the nodes).
  std::unique_ptr<local_etcd> etcd;
  std::string coordination_url;
  if (nc->nodes.size() > 1 && nc->cluster.coordination.endpoints.empty()) {
    local_etcd_options eo;
    eo.data_dir = coordination_dir(*nc);
    auto started = local_etcd::start(eo);
    if (!started) {
      out.warn(opts.label +
               ": cannot start a local etcd for coordination: " + describe(started.error()));
      return to_int(exit_code::bad_config);
    }
    etcd = std::move(*started);
    coordination_url = etcd->client_url();
    // No node of this cluster runs yet: the first leader is the first
    // candidate, as on a cold start, whatever an earlier launch did.
    auto spec = nc->cluster.coordination;
    spec.endpoints = {coordination_url};
    auto coord = etcd_coordinator::create(spec, nc->cluster.name, nc->nodes.front().name);
    caf::error reset = coord ? (*coord)->begin_cold_start() : coord.error();
    if (reset) {
      out.warn(opts.label + ": cannot prepare the local etcd for a cold start: " + describe(reset));
      return to_int(exit_code::bad_config);
    }
    out.say("launch: coordination: local etcd at " + coordination_url + " (data in " + eo.data_dir +
            ")");
  }
  launcher l{opts, out, std::move(*nc), std::move(plan), coordination_url};
  return l.run();
}

} // namespace understudy
