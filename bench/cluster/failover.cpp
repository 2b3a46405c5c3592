// Figure 4 of bench_cluster: failover time, node death to all its actors serving
// elsewhere with their state restored; and the leader's node's death to its
// successor's trainer resuming the job.
//
// `understudy launch FILE --kill n2@STEP` runs a 4-node training cluster (three active
// nodes and a spare, shards, loaders and workers spread over the active ones) and
// SIGKILLs n2's process when the leader reports that step. The bench reads the
// launcher's output as it comes and stamps each line on arrival: the launcher prints
// "chaos: SIGKILL n2" right after kill(2), the leader logs child_exited ...
// reason="remote_link_unreachable" for each of n2's actors and child_restarted once its
// new incarnation, which loads its state from the replica before it serves, is serving
// on another node. Failover = SIGKILL line to the last of those child_restarted lines.
// (The lines' own timestamps have millisecond resolution and the wall clock; arrival
// stamps share one steady clock, and the pipe hop costs well under a millisecond.)

#include <curl/curl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <regex>

#include "cluster_bench.hpp"
#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/state/runtime.hpp"

namespace cluster_bench {

namespace {

constexpr uint64_t job_steps = 200;
constexpr uint64_t kill_step = 60;

/// As tests/cluster's config: n1 leads (hosts the trainer), n2 is killed, its buddy
/// n3 takes over its checkpoints' copies, s1 is a spare.
std::string failover_config(const std::string& dir, const std::vector<uint16_t>& ports,
                            uint64_t steps = job_steps) {
  std::string text =
      "[cluster]\nname = \"bench\"\n\n[cluster.failure_detection]\n"
      "heartbeat_interval = \"100ms\"\ndeadline = \"1s\"\nconnection_timeout = \"2s\"\n\n";
  const char* names[] = {"n1", "n2", "n3", "s1"};
  for (size_t i = 0; i < 4; ++i)
    text += std::string{"[[node]]\nname = \""} + names[i] +
            "\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(ports[i]) + "\nstate_dir = \"" +
            dir + "/state/" + names[i] + "\"\n" + (i == 3 ? "role = \"spare\"\n" : "") + "\n";
  text += "[job]\nlayers = [64, 32, 10]\ndata = \"" UNDERSTUDY_DIGITS_PATH
          "\"\nworkers = 3\nshards = 3\nloaders = 3\nbatch = 48\nmicro_batches = 3\nsteps = " +
          std::to_string(steps) +
          "\nseed = 5\ncheckpoint_every = 5\neval_every = 0\nlr = 0.1\n\n"
          "[job.shard]\nplacement = \"spread\"\n[job.loader]\nplacement = \"spread\"\n"
          "[job.worker]\nplacement = \"spread\"\n[job.trainer]\nplacement = [\"n1\", \"n2\"]\n";
  return text;
}

/// One output line of the launcher and when it arrived.
struct stamped_line {
  std::string text;
  clock_type::time_point at;
};

/// What one launch run showed.
struct failover_run {
  double failover_ms = 0;
  double detect_ms = 0;
  size_t actors = 0;
  /// The supervisor's own recovery times (its child_exited to serving), one per actor.
  std::vector<double> recovery_ms;
  std::string final_line;
};

/// Reads the launcher's output until the leader's final line, EOF or `deadline`.
std::vector<stamped_line> read_output(int fd, clock_type::time_point deadline) {
  std::vector<stamped_line> lines;
  std::string pending;
  char buf[8192];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    if (left.count() <= 0)
      break;
    pollfd pfd{fd, POLLIN, 0};
    auto r = ::poll(&pfd, 1, static_cast<int>(std::min<long>(left.count(), 200)));
    if (r < 0 && errno != EINTR)
      break;
    if (r <= 0)
      continue;
    auto n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    auto now = clock_type::now();
    pending.append(buf, static_cast<size_t>(n));
    size_t pos;
    bool final_seen = false;
    while ((pos = pending.find('\n')) != std::string::npos) {
      lines.push_back({pending.substr(0, pos), now});
      pending.erase(0, pos + 1);
      if (lines.back().text.find("] final:") != std::string::npos)
        final_seen = true;
    }
    if (final_seen)
      break;
  }
  return lines;
}

std::string last_lines(const std::vector<stamped_line>& lines, size_t n = 20) {
  std::string out;
  for (size_t i = lines.size() > n ? lines.size() - n : 0; i < lines.size(); ++i)
    out += "    | " + lines[i].text + "\n";
  return out;
}

/// What one run of the leader's failover showed.
struct leader_run {
  double resumed_ms = 0;
  double detect_ms = 0;
  size_t moved = 0;
  std::string final_line;
};

/// Kills the leader n1 and measures until its successor n2's trainer has
/// resumed: every actor of the tree started afresh on n2's orders (n1's moved
/// with their checkpoints copied), all restored and probed.
std::optional<leader_run> leader_once(const std::string& dir, size_t run, std::string& error) {
  auto ports = free_ports(4);
  if (ports.empty()) {
    error = "no free ports";
    return std::nullopt;
  }
  auto run_dir = dir + "/leader-" + std::to_string(run);
  auto config = run_dir + ".toml";
  if (!write_file(config, failover_config(run_dir, ports))) {
    error = "cannot write " + config;
    return std::nullopt;
  }
  auto launcher = child_process::spawn(
      {UNDERSTUDY_CLI_PATH, "launch", config, "--kill", "n1@" + std::to_string(kill_step)}, "",
      SIGTERM, error);
  if (!launcher)
    return std::nullopt;
  auto lines = read_output(launcher->output_fd(), clock_type::now() + std::chrono::seconds(90));
  launcher->kill_group();
  std::optional<clock_type::time_point> killed, detected, resumed;
  leader_run out;
  for (auto& l : lines) {
    if (!killed) {
      if (l.text.rfind("chaos: SIGKILL n1", 0) == 0)
        killed = l.at;
      continue;
    }
    if (!detected && l.text.find("[n2] node n2: peer n1 is dead") == 0)
      detected = l.at;
    if (!resumed && l.text.find("[n2] job: resuming from committed step") == 0)
      resumed = l.at;
    if (l.text.find("[n2] node n2: moved ") == 0)
      ++out.moved;
    if (l.text.rfind("[n2] final:", 0) == 0)
      out.final_line = l.text.substr(5);
  }
  if (!killed || !resumed || out.final_line.empty()) {
    error = std::string{"leader run "} + std::to_string(run + 1) + ": " +
            (!killed    ? "n1 was never killed"
             : !resumed ? "n2 never resumed the job"
                        : "the job did not finish on n2") +
            "; the launcher's last lines:\n" + last_lines(lines);
    return std::nullopt;
  }
  out.resumed_ms = ms_between(*killed, *resumed);
  out.detect_ms = detected ? ms_between(*killed, *detected) : -1;
  return out;
}

std::optional<failover_run> launch_once(const std::string& dir, size_t run, std::string& error) {
  auto ports = free_ports(4);
  if (ports.empty()) {
    error = "no free ports";
    return std::nullopt;
  }
  auto run_dir = dir + "/run-" + std::to_string(run);
  auto config = run_dir + ".toml";
  if (!write_file(config, failover_config(run_dir, ports))) {
    error = "cannot write " + config;
    return std::nullopt;
  }
  // SIGTERM if the bench dies: the launcher then stops its nodes itself.
  auto launcher = child_process::spawn(
      {UNDERSTUDY_CLI_PATH, "launch", config, "--kill", "n2@" + std::to_string(kill_step)}, "",
      SIGTERM, error);
  if (!launcher)
    return std::nullopt;
  auto lines = read_output(launcher->output_fd(), clock_type::now() + std::chrono::seconds(90));
  // Everything needed has been read; the leader has nothing left to report, and
  // killing the group is the one stop that cannot hang.
  launcher->kill_group();

  static const std::regex exited_re{R"(child_exited (\S+)#\d+ .*reason="remote_link_unreachable")"};
  static const std::regex restarted_re{R"(child_restarted (\S+)#\d+ .*recovery=([0-9.]+)us)"};
  std::optional<clock_type::time_point> killed, detected;
  std::map<std::string, clock_type::time_point> exited;
  std::map<std::string, std::pair<clock_type::time_point, double>> restarted;
  failover_run out;
  for (auto& l : lines) {
    if (!killed) {
      if (l.text.rfind("chaos: SIGKILL n2", 0) == 0)
        killed = l.at;
      continue;
    }
    std::smatch m;
    if (!detected && l.text.find("[n1] node n1: peer n2 is dead") == 0)
      detected = l.at;
    if (l.text.rfind("[n1] ", 0) != 0)
      continue;
    if (std::regex_search(l.text, m, exited_re)) {
      exited.emplace(m[1].str(), l.at);
    } else if (std::regex_search(l.text, m, restarted_re) && exited.count(m[1].str()) != 0 &&
               restarted.count(m[1].str()) == 0) {
      restarted[m[1].str()] = {l.at, std::stod(m[2].str()) / 1000.0};
    } else if (l.text.rfind("[n1] final:", 0) == 0) {
      out.final_line = l.text.substr(5);
    }
  }
  if (!killed || exited.empty() || out.final_line.empty() || restarted.size() != exited.size()) {
    error = std::string{"run "} + std::to_string(run + 1) + ": " +
            (!killed                             ? "n2 was never killed"
             : exited.empty()                    ? "no actor of n2 was reported lost"
             : restarted.size() != exited.size() ? "not every actor of n2 was restarted"
                                                 : "the job did not finish") +
            "; the launcher's last lines:\n" + last_lines(lines);
    return std::nullopt;
  }
  clock_type::time_point last = *killed;
  for (auto& [path, r] : restarted) {
    last = std::max(last, r.first);
    out.recovery_ms.push_back(r.second);
  }
  out.failover_ms = ms_between(*killed, last);
  out.detect_ms = detected ? ms_between(*killed, *detected) : -1;
  out.actors = exited.size();
  return out;
}

/// The sum over every label set of `metric` in the Prometheus text that etcd at `url`
/// serves on /metrics; nullopt if it cannot be read.
std::optional<double> etcd_metric_sum(const std::string& url, const std::string& metric) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr)
    return std::nullopt;
  std::string body;
  curl_easy_setopt(curl, CURLOPT_URL, (url + "/metrics").c_str());
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
  curl_easy_setopt(
      curl, CURLOPT_WRITEFUNCTION, +[](char* data, size_t size, size_t n, void* out) {
        static_cast<std::string*>(out)->append(data, size * n);
        return size * n;
      });
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  auto rc = curl_easy_perform(curl);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK)
    return std::nullopt;
  // Sample lines are "NAME VALUE" or "NAME{LABELS} VALUE".
  double sum = 0;
  bool any = false;
  size_t pos = 0;
  while (pos < body.size()) {
    auto end = body.find('\n', pos);
    if (end == std::string::npos)
      end = body.size();
    std::string line = body.substr(pos, end - pos);
    pos = end + 1;
    if (line.compare(0, metric.size(), metric) != 0 || line.size() <= metric.size() ||
        (line[metric.size()] != ' ' && line[metric.size()] != '{'))
      continue;
    auto sp = line.rfind(' ');
    if (sp == std::string::npos)
      continue;
    sum += std::strtod(line.c_str() + sp + 1, nullptr);
    any = true;
  }
  if (!any)
    return std::nullopt;
  return sum;
}

/// What etcd served while a fault-free job ran between two of its progress lines.
struct steady_run {
  uint64_t steps = 0;
  double seconds = 0;
  double rpcs = 0;
  double proposals = 0;
};

/// A fault-free `understudy launch` of the 4-node job: etcd's RPCs (every gRPC call,
/// the JSON gateway's included) and raft proposals between the leader's first
/// progress line and one at least half the job later.
std::optional<steady_run> steady_once(const std::string& dir, std::string& error) {
  constexpr uint64_t steps = 1200;
  auto ports = free_ports(4);
  if (ports.empty()) {
    error = "no free ports";
    return std::nullopt;
  }
  auto run_dir = dir + "/steady";
  auto config = run_dir + ".toml";
  if (!write_file(config, failover_config(run_dir, ports, steps))) {
    error = "cannot write " + config;
    return std::nullopt;
  }
  auto launcher = child_process::spawn({UNDERSTUDY_CLI_PATH, "launch", config}, "", SIGTERM, error);
  if (!launcher)
    return std::nullopt;
  static const std::regex etcd_re{R"(launch: coordination: local etcd at (\S+))"};
  static const std::regex progress_re{R"(^\[n1\] progress: step (\d+)/)"};
  std::string url;
  struct sample {
    uint64_t step;
    clock_type::time_point at;
    double rpcs;
    double proposals;
  };
  std::optional<sample> first, last;
  std::vector<stamped_line> seen;
  std::string pending;
  char buf[8192];
  auto deadline = clock_type::now() + std::chrono::seconds(90);
  bool done = false;
  while (!done && clock_type::now() < deadline) {
    pollfd pfd{launcher->output_fd(), POLLIN, 0};
    auto r = ::poll(&pfd, 1, 200);
    if (r < 0 && errno != EINTR)
      break;
    if (r <= 0)
      continue;
    auto n = ::read(launcher->output_fd(), buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    pending.append(buf, static_cast<size_t>(n));
    size_t pos;
    while ((pos = pending.find('\n')) != std::string::npos) {
      seen.push_back({pending.substr(0, pos), clock_type::now()});
      pending.erase(0, pos + 1);
      const auto& text = seen.back().text;
      std::smatch m;
      if (url.empty() && std::regex_search(text, m, etcd_re))
        url = m[1].str();
      if (!url.empty() && std::regex_search(text, m, progress_re)) {
        auto rpcs = etcd_metric_sum(url, "grpc_server_started_total");
        auto props = etcd_metric_sum(url, "etcd_server_proposals_committed_total");
        if (rpcs && props) {
          sample s{std::stoull(m[1].str()), seen.back().at, *rpcs, *props};
          if (!first)
            first = s;
          else
            last = s;
          if (last && last->step - first->step >= steps / 2)
            done = true;
        }
      }
      if (text.find("] final:") != std::string::npos)
        done = true;
    }
  }
  launcher->kill_group();
  if (!first || !last) {
    error = "steady run: " +
            std::string{url.empty() ? "the launcher named no local etcd"
                                    : "no two progress lines with etcd's metrics"} +
            "; the launcher's last lines:\n" + last_lines(seen);
    return std::nullopt;
  }
  steady_run out;
  out.steps = last->step - first->step;
  out.seconds = std::chrono::duration<double>(last->at - first->at).count();
  out.rpcs = last->rpcs - first->rpcs;
  out.proposals = last->proposals - first->proposals;
  return out;
}

/// The same job as the cluster's (the [job] of `config`, without faults) in one
/// process with the same counts: steps/s between its first progress report and
/// its last, as the cluster's is measured between progress lines.
std::optional<double> one_process_steps_per_s(const std::string& config, const std::string& dir,
                                              std::string& error) {
  using namespace understudy;
  node_config_options opts;
  opts.sections.push_back(actors::job_section());
  auto nc = load_node_config(config, opts);
  auto tc =
      nc ? actors::make_training_config(*nc) : caf::expected<actors::training_config>{nc.error()};
  if (!tc) {
    error = "one process: " + describe(tc.error());
    return std::nullopt;
  }
  tc->faults.clear();
  runtime_config rc;
  rc.log_events = false;
  runtime rt{rc};
  state_store_config sc;
  sc.directory = dir + "/one-process";
  auto p = rt.open_state(sc);
  auto job =
      p ? actors::training_job::create(*tc, *p) : caf::expected<actors::training_job>{p.error()};
  if (!job) {
    error = "one process: " + describe(job.error());
    return std::nullopt;
  }
  std::mutex mtx;
  std::optional<std::pair<uint64_t, clock_type::time_point>> first, last;
  job->on_progress([&](const actors::training_progress& pr) {
    std::lock_guard<std::mutex> guard{mtx};
    auto now = std::make_pair(pr.step, clock_type::now());
    if (!first)
      first = now;
    else if (pr.step > first->first)
      last = now;
  });
  auto tree = rt.start(job->spec());
  if (!tree) {
    error = "one process: " + describe(tree.error());
    return std::nullopt;
  }
  auto result = job->wait(std::chrono::minutes(2));
  rt.stop(*tree);
  std::lock_guard<std::mutex> guard{mtx};
  if (!result || !first || !last) {
    error = "one process: " + (result ? std::string{"no progress"} : describe(result.error()));
    return std::nullopt;
  }
  return static_cast<double>(last->first - first->first) /
         std::chrono::duration<double>(last->second - first->second).count();
}

} // namespace

group_result measure_steady_etcd(const options&, watchdog& dog) {
  group_result out;
  scratch_dir dir{"steady"};
  if (dir.path.empty()) {
    out.error = "no scratch directory";
    return out;
  }
  dog.arm("steady run", std::chrono::seconds(120));
  auto r = steady_once(dir.path, out.error);
  dog.disarm();
  if (!r)
    return out;
  bench::figure per_step;
  per_step.name = "etcd_rpcs_per_step";
  per_step.unit = "req/step";
  per_step.value = r->steps > 0 ? r->rpcs / static_cast<double>(r->steps) : 0;
  per_step.has_baseline = false;
  per_step.decimals = 3;
  per_step.notes.push_back(
      "a fault-free `understudy launch` (4 nodes, a checkpoint every 5 steps, every one "
      "replicated): etcd's gRPC calls (grpc_server_started_total, the JSON gateway's "
      "included) over " +
      std::to_string(r->steps) + " steps in " + bench::fixed(r->seconds, 1) +
      " s: " + bench::fixed(r->rpcs, 0) + " calls, " + bench::fixed(r->rpcs / r->seconds, 1) +
      " per second for the whole cluster, " +
      bench::fixed(r->rpcs * 5 / static_cast<double>(r->steps), 3) +
      " per committed checkpoint; raft proposals (writes): " + bench::fixed(r->proposals, 0) +
      ". Commits ask etcd nothing: these are the nodes' session renewals and watches, which "
      "go with time, not with steps");
  out.figures.push_back(per_step);
  // The same run's pace against the same job in one process.
  dog.arm("one-process run", std::chrono::seconds(150));
  auto one = one_process_steps_per_s(dir.path + "/steady.toml", dir.path, out.error);
  dog.disarm();
  if (!one)
    return out;
  auto pace = bench::make_figure("cluster_steps_per_s_vs_one_process", "steps/s",
                                 static_cast<double>(r->steps) / r->seconds, *one, 1);
  pace.notes.push_back(
      "the fault-free `understudy launch` above (4 nodes over mutual TLS, 3 workers, 3 shards "
      "and 3 loaders spread over 3 of them, every checkpoint replicated to a buddy) against "
      "the same [job] in one process (the same counts, its own state store, nothing "
      "replicated), both between their first and last progress reports");
  out.figures.push_back(pace);
  return out;
}

group_result measure_failover(const options& opts, watchdog& dog) {
  group_result out;
  scratch_dir dir{"failover"};
  if (dir.path.empty()) {
    out.error = "no scratch directory";
    return out;
  }
  std::vector<double> failover, detect, recovery;
  size_t actors = 0;
  std::string final_line;
  for (size_t run = 0; run < opts.failover_runs; ++run) {
    dog.arm("failover run " + std::to_string(run + 1), std::chrono::seconds(120));
    std::string error;
    auto r = launch_once(dir.path, run, error);
    if (!r) {
      out.error = error;
      break;
    }
    failover.push_back(r->failover_ms);
    if (r->detect_ms >= 0)
      detect.push_back(r->detect_ms);
    recovery.insert(recovery.end(), r->recovery_ms.begin(), r->recovery_ms.end());
    actors = r->actors;
    final_line = r->final_line;
  }
  dog.disarm();
  if (!out.error.empty())
    return out;
  bench::figure f;
  f.name = "failover_node_death_to_serving";
  f.unit = "ms";
  f.value = bench::median(failover);
  f.has_baseline = false;
  f.decimals = 1;
  // The coordination issue's target: the median, with etcd's transaction in the path.
  f.target = "<= 50 ms";
  f.met = f.value <= 50;
  f.notes.push_back(std::to_string(failover.size()) + " runs of `understudy launch --kill n2@" +
                    std::to_string(kill_step) + "` (4 nodes, " + std::to_string(actors) +
                    " actors on n2): SIGKILL to the last of its actors serving on another " +
                    "node: " + bench::spread(failover, 1) + " ms, p90 " +
                    bench::fixed(bench::percentile(failover, 0.9), 1) + " ms");
  f.notes.push_back("SIGKILL to the leader's `peer n2 is dead`: median " +
                    bench::fixed(bench::median(detect), 1) +
                    " ms; the supervisor's recovery (child_exited to serving) per actor: median " +
                    bench::fixed(bench::median(recovery), 1) + " ms, " +
                    bench::spread(recovery, 1) + " ms; over 1 s: " +
                    std::to_string(std::count_if(recovery.begin(), recovery.end(),
                                                 [](double ms) { return ms > 1000; })) +
                    " of " + std::to_string(recovery.size()));
  f.notes.push_back("last run's result: " + final_line);
  out.figures.push_back(f);
  // The leader's node: its successor restarts the whole tree.
  std::vector<double> resumed, leader_detect;
  size_t moved = 0;
  for (size_t run = 0; run < opts.failover_runs; ++run) {
    dog.arm("leader failover run " + std::to_string(run + 1), std::chrono::seconds(120));
    std::string error;
    auto r = leader_once(dir.path, run, error);
    if (!r) {
      out.error = error;
      break;
    }
    resumed.push_back(r->resumed_ms);
    if (r->detect_ms >= 0)
      leader_detect.push_back(r->detect_ms);
    moved = r->moved;
    final_line = r->final_line;
  }
  dog.disarm();
  if (!out.error.empty())
    return out;
  bench::figure g;
  g.name = "failover_leader_death_to_resumed";
  g.unit = "ms";
  g.value = bench::median(resumed);
  g.has_baseline = false;
  g.decimals = 1;
  g.target = "<= 2000 ms";
  g.met = g.value <= 2000;
  g.notes.push_back(std::to_string(resumed.size()) + " runs of `understudy launch --kill n1@" +
                    std::to_string(kill_step) +
                    "` (n1 runs the tree and the trainer): SIGKILL to n2's trainer resuming " +
                    "(the whole tree restarted on n2's orders, " + std::to_string(moved) +
                    " actors moved off n1 with their checkpoints copied, all restored): " +
                    bench::spread(resumed, 1) + " ms, p90 " +
                    bench::fixed(bench::percentile(resumed, 0.9), 1) + " ms");
  g.notes.push_back("SIGKILL to n2's `peer n1 is dead`: median " +
                    bench::fixed(bench::median(leader_detect), 1) +
                    " ms; last run's result: " + final_line);
  out.figures.push_back(g);
  return out;
}

} // namespace cluster_bench
