// Figures 1-3 of bench_cluster: failure detection as an observer node sees it.
//
// The observer ("obs") runs in this process, built as `understudy node` builds a node
// (a runtime whose configure calls cluster_node::configure, then cluster_node::start);
// its peers are real `understudy node` processes. Its on_peer_change listener records
// every state change with the time it was told, which is what a supervisor acting on
// the change would see.

#include <curl/curl.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <caf/actor_system_config.hpp>

#include "cluster_bench.hpp"
#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/etcd_coordinator.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/node/local_etcd.hpp"
#include "understudy/state/runtime.hpp"

namespace cluster_bench {

namespace {

using namespace understudy;
using namespace understudy::actors;

/// Heartbeats, deadline and connect timeout of every detection config (the issue's
/// targets are stated for 100 ms heartbeats and a 1 s deadline).
constexpr const char* failure_detection_toml =
    "[cluster.failure_detection]\n"
    "heartbeat_interval = \"100ms\"\n"
    "deadline = \"1s\"\n"
    "connection_timeout = \"2s\"\n\n";

/// A local etcd for a cluster of this bench, its data under `dir`; null and `error` if it
/// cannot start.
std::unique_ptr<local_etcd> start_etcd(const std::string& dir, std::string& error) {
  local_etcd_options eo;
  eo.data_dir = dir + "/etcd";
  auto started = local_etcd::start(eo);
  if (!started) {
    error = "etcd: " + describe(started.error());
    return nullptr;
  }
  return std::move(*started);
}

/// A cluster of "obs" and `peers` on loopback, coordinated by the etcd at `etcd_url`. The job is
/// required by `understudy node`; its trainer (and so the whole tree) is placed on obs, which never
/// starts it, so the peer processes only run their node agents.
std::string detection_config(const std::string& dir, const std::vector<std::string>& peers,
                             const std::vector<uint16_t>& ports, const std::string& etcd_url) {
  std::string text = "[cluster]\nname = \"bench\"\n\n";
  // Nodes of several talk mutual TLS only (`understudy node` refuses otherwise).
  text += "[cluster.security]\ndir = \"" + dir + "/certs\"\n\n";
  text += failure_detection_toml;
  text += "[cluster.coordination]\nendpoints = [\"" + etcd_url + "\"]\n\n";
  std::vector<std::string> names{"obs"};
  names.insert(names.end(), peers.begin(), peers.end());
  for (size_t i = 0; i < names.size(); ++i)
    text += "[[node]]\nname = \"" + names[i] +
            "\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(ports[i]) + "\nstate_dir = \"" +
            dir + "/state/" + names[i] + "\"\n\n";
  text += "[job]\nlayers = [64, 32, 10]\ndata = \"" UNDERSTUDY_DIGITS_PATH
          "\"\n\n[job.trainer]\nplacement = [\"obs\"]\n";
  return text;
}

/// Writes the cluster config `text` to `path` and makes its CA and node certificates; false
/// and `error` if that fails.
bool write_cluster_config(const std::string& path, const std::string& text, std::string& error) {
  if (!write_file(path, text)) {
    error = "cannot write " + path;
    return false;
  }
  node_config_options nopts;
  nopts.sections.push_back(job_section());
  auto nc = load_node_config(path, nopts);
  if (!nc) {
    error = describe(nc.error());
    return false;
  }
  if (auto made = create_cluster_certificates(*nc, true); !made) {
    error = "certificates: " + describe(made.error());
    return false;
  }
  return true;
}

/// A change of a peer's state as the observer's listener was told it.
struct transition {
  std::string peer;
  peer_state state = peer_state::unknown;
  clock_type::time_point at;
  std::string reason;
};

/// The listener's record; shared with the listener, which may outlive the observer's
/// other members during shutdown.
struct journal {
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<transition> items;
};

/// Node "obs" of a config, running in this process.
class observer {
public:
  static std::unique_ptr<observer> start(const std::string& config_path, std::string& error) {
    std::unique_ptr<observer> obs{new observer};
    node_config_options nopts;
    nopts.sections.push_back(job_section());
    auto nc = load_node_config(config_path, nopts);
    if (!nc) {
      error = describe(nc.error());
      return nullptr;
    }
    obs->nc_ = std::move(*nc);
    runtime_config rc;
    rc.log_events = false;
    caf::expected<std::vector<std::string>> prepared{std::vector<std::string>{}};
    rc.configure = [&](caf::actor_system_config& cfg) {
      prepared = cluster_node::configure(cfg, obs->nc_, "obs");
      register_training_types(cfg);
    };
    obs->rt_ = std::make_unique<runtime>(rc);
    if (!prepared) {
      error = describe(prepared.error());
      return nullptr;
    }
    auto coord =
        etcd_coordinator::create(obs->nc_.cluster.coordination, obs->nc_.cluster.name, "obs");
    if (!coord) {
      error = describe(coord.error());
      return nullptr;
    }
    obs->coord_ = *coord;
    auto node = cluster_node::start(*obs->rt_, obs->nc_, "obs", nullptr, {}, *coord);
    if (!node) {
      error = describe(node.error());
      return nullptr;
    }
    obs->node_ = std::move(*node);
    obs->node_->on_peer_change([j = obs->journal_](const peer_view& p) {
      auto now = clock_type::now();
      {
        std::lock_guard<std::mutex> guard{j->mtx};
        j->items.push_back({p.name, p.state, now, p.reason});
      }
      j->cv.notify_all();
    });
    return obs;
  }

  ~observer() {
    // The node before its runtime, as cluster_node requires.
    node_.reset();
    rt_.reset();
  }

  /// Makes the observer the leader (its only candidate) and claims it; false if
  /// etcd did not grant it within `timeout`.
  bool lead(std::chrono::milliseconds timeout) {
    node_->set_leader_candidates({"obs"});
    return node_->await_leadership(timeout) && node_->claim_leadership();
  }

  /// Whether the observer was fenced (it stopped acting: as the leader, it
  /// stopped driving the job).
  bool fenced() const { return node_->fenced(); }

  /// The coordination session's time to live (a leader's lease).
  std::chrono::milliseconds session_ttl() const { return nc_.cluster.coordination.session_ttl; }

  /// HTTP requests the observer's coordinator has sent to etcd so far.
  uint64_t etcd_requests() const { return coord_->requests_sent(); }

  /// The number of transitions so far: later calls look at those after it.
  size_t mark() {
    std::lock_guard<std::mutex> guard{journal_->mtx};
    return journal_->items.size();
  }

  /// Waits until `peer` changes to `state` after mark `from`, or until `deadline`.
  std::optional<transition> wait_for(const std::string& peer, peer_state state, size_t from,
                                     clock_type::time_point deadline) {
    std::unique_lock<std::mutex> guard{journal_->mtx};
    std::optional<transition> found;
    journal_->cv.wait_until(guard, deadline, [&] {
      for (size_t i = from; i < journal_->items.size(); ++i)
        if (journal_->items[i].peer == peer && journal_->items[i].state == state) {
          found = journal_->items[i];
          return true;
        }
      return false;
    });
    return found;
  }

  /// The transitions after mark `from`.
  std::vector<transition> since(size_t from) {
    std::lock_guard<std::mutex> guard{journal_->mtx};
    return {journal_->items.begin() + static_cast<std::ptrdiff_t>(from), journal_->items.end()};
  }

  /// The highest suspicion level of any peer now.
  double max_phi() const {
    double phi = 0;
    for (auto& p : node_->peers())
      phi = std::max(phi, p.phi);
    return phi;
  }

private:
  std::shared_ptr<etcd_coordinator> coord_;
  observer() = default;
  std::shared_ptr<journal> journal_ = std::make_shared<journal>();
  node_config nc_;
  std::unique_ptr<runtime> rt_;
  std::shared_ptr<cluster_node> node_;
};

/// Starts `understudy node CONFIG --name NAME`, output to `log`; killed with the bench.
std::unique_ptr<child_process> start_node(const std::string& config, const std::string& name,
                                          const std::string& log, std::string& error) {
  return child_process::spawn({UNDERSTUDY_CLI_PATH, "node", config, "--name", name}, log, SIGKILL,
                              error);
}

/// One detection: what the observer saw after the peer got its signal.
struct detection {
  double dead_ms = 0;
  /// When it was first suspected, if it was before it was declared dead.
  std::optional<double> suspected_ms;
  std::string reason;
};

/// Starts a fresh peer process, waits until the observer sees it alive and settled, sends
/// it `sig` and waits until the observer declares it dead. The peer is gone afterwards.
std::optional<detection> detect_once(observer& obs, const std::string& dir,
                                     const std::string& config, int sig, size_t run,
                                     std::string& error) {
  auto log = dir + "/peer-" + (sig == SIGKILL ? "kill-" : "stop-") + std::to_string(run) + ".log";
  auto from = obs.mark();
  auto peer = start_node(config, "peer", log, error);
  if (!peer)
    return std::nullopt;
  if (!obs.wait_for("peer", peer_state::alive, from,
                    clock_type::now() + std::chrono::seconds(30))) {
    error = "the peer process did not become alive within 30 s; its log:\n" + tail_of(log);
    return std::nullopt;
  }
  // Let real heartbeat intervals replace the detector's seed, as in a running
  // cluster. The signal then comes at a point of the heartbeat cycle that
  // varies from run to run (evenly over one 100 ms interval, by run number):
  // a fixed wait would always hit the same point, e.g. just after a beat.
  std::this_thread::sleep_for(std::chrono::milliseconds(500 + (run * 37) % 100));
  auto before = obs.mark();
  for (auto& t : obs.since(from))
    if (t.state != peer_state::alive) {
      error = "the peer was " + to_string(t.state) + " before it got a signal (" + t.reason + ")";
      return std::nullopt;
    }
  auto t0 = clock_type::now();
  peer->signal(sig);
  auto dead = obs.wait_for("peer", peer_state::dead, before, t0 + std::chrono::seconds(10));
  // A stopped process still dies of SIGKILL; kill_group reaps it.
  peer->kill_group();
  if (!dead) {
    error = "the observer did not declare the peer dead within 10 s";
    return std::nullopt;
  }
  detection d;
  d.dead_ms = ms_between(t0, dead->at);
  d.reason = dead->reason;
  for (auto& t : obs.since(before))
    if (t.peer == "peer" && t.state == peer_state::suspected && t.at <= dead->at) {
      d.suspected_ms = ms_between(t0, t.at);
      break;
    }
  return d;
}

/// "N x reason, ..." of the detections' reasons.
std::string reasons_of(const std::vector<detection>& ds) {
  std::map<std::string, size_t> counts;
  for (auto& d : ds)
    counts[d.reason.empty() ? "-" : d.reason]++;
  std::string out;
  for (auto& [reason, n] : counts)
    out += (out.empty() ? "" : ", ") + std::to_string(n) + " x " + reason;
  return out;
}

/// A figure in milliseconds without a baseline.
/// Requests per second one plain libcurl client gets answered by the etcd at `url`:
/// serial range reads of one key over one kept-alive connection, for `span`.
double raw_etcd_requests_per_s(const std::string& url, std::chrono::milliseconds span) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr)
    return 0;
  std::string sink;
  const std::string body = R"({"key":"cmF3"})"; // "raw"
  curl_easy_setopt(curl, CURLOPT_URL, (url + "/v3/kv/range").c_str());
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(
      curl, CURLOPT_WRITEFUNCTION, +[](char* data, size_t size, size_t n, void* out) {
        static_cast<std::string*>(out)->append(data, size * n);
        return size * n;
      });
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
  size_t done = 0;
  auto start = std::chrono::steady_clock::now();
  auto end = start + span;
  while (std::chrono::steady_clock::now() < end) {
    sink.clear();
    if (curl_easy_perform(curl) != CURLE_OK)
      break;
    ++done;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  curl_easy_cleanup(curl);
  return secs > 0 ? static_cast<double>(done) / secs : 0;
}

bench::figure ms_figure(std::string name, double value) {
  bench::figure f;
  f.name = std::move(name);
  f.unit = "ms";
  f.value = value;
  f.has_baseline = false;
  f.decimals = 1;
  return f;
}

} // namespace

group_result measure_detection(const options& opts, watchdog& dog, bool kill, bool stop) {
  group_result out;
  scratch_dir dir{"detect"};
  auto ports = free_ports(2);
  if (dir.path.empty() || ports.empty()) {
    out.error = "no scratch directory or no free ports";
    return out;
  }
  auto etcd = start_etcd(dir.path, out.error);
  if (!etcd)
    return out;
  auto config = dir.path + "/detect.toml";
  if (!write_cluster_config(config, detection_config(dir.path, {"peer"}, ports, etcd->client_url()),
                            out.error))
    return out;
  dog.arm("starting the observer node", std::chrono::seconds(30));
  std::string error;
  auto obs = observer::start(config, error);
  if (!obs) {
    out.error = "observer: " + error;
    return out;
  }
  {
    // Steady state: what one node asks of etcd while nothing fails (its
    // session's renewals and its watch), against what etcd answers one
    // plain client asking as fast as it can.
    dog.arm("measuring etcd requests at steady state", std::chrono::seconds(30));
    const auto span = std::chrono::seconds(opts.quick ? 3 : 10);
    auto before = obs->etcd_requests();
    auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(span);
    auto n = obs->etcd_requests() - before;
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bench::figure f;
    f.name = "etcd_requests_per_node_per_s";
    f.unit = "req/s";
    f.value = static_cast<double>(n) / secs;
    f.decimals = 2;
    f.baseline = raw_etcd_requests_per_s(etcd->client_url(), std::chrono::seconds(1));
    f.has_baseline = f.baseline > 0;
    f.notes.push_back(std::to_string(n) + " requests in " + bench::fixed(secs, 1) +
                      " s from one idle node (session renewals and its watch; a committed "
                      "step asks nothing of etcd); baseline: serial range reads of one plain "
                      "libcurl client against the same etcd, so the ratio is the share of one "
                      "client's rate that a node uses");
    out.figures.push_back(f);
  }
  for (int sig : {SIGKILL, SIGSTOP}) {
    if ((sig == SIGKILL && !kill) || (sig == SIGSTOP && !stop))
      continue;
    std::vector<detection> ds;
    for (size_t run = 0; run < opts.runs; ++run) {
      dog.arm(std::string{"detection of a "} + (sig == SIGKILL ? "SIGKILLed" : "SIGSTOPped") +
                  " node, run " + std::to_string(run + 1),
              std::chrono::seconds(60));
      auto d = detect_once(*obs, dir.path, config, sig, run, error);
      if (!d) {
        out.error = error;
        break;
      }
      ds.push_back(*d);
    }
    if (!out.error.empty())
      break;
    std::vector<double> dead, suspected;
    for (auto& d : ds) {
      dead.push_back(d.dead_ms);
      if (d.suspected_ms)
        suspected.push_back(*d.suspected_ms);
    }
    auto runs = std::to_string(ds.size()) + " runs, a fresh peer process each";
    if (sig == SIGKILL) {
      auto med = ms_figure("detect_sigkill_median", bench::median(dead));
      med.target = "<= 50 ms";
      med.met = med.value <= 50;
      med.notes.push_back(runs + ", SIGKILL to the observer's peer_state::dead: " +
                          bench::spread(dead, 1) + " ms; " + reasons_of(ds));
      out.figures.push_back(med);
      auto p90 = ms_figure("detect_sigkill_p90", bench::percentile(dead, 0.9));
      out.figures.push_back(p90);
    } else {
      auto med = ms_figure("detect_sigstop_median", bench::median(dead));
      // A frozen peer is reported a deadline after the beat that was due (so
      // that a pause shorter than the deadline never is) and declared by etcd:
      // the coordination issue's target for a frozen node is 1.2 s.
      med.target = "<= 1200 ms";
      med.met = med.value <= 1200;
      med.notes.push_back(runs +
                          ", 100 ms heartbeats, 1 s deadline; SIGSTOP to "
                          "peer_state::dead: " +
                          bench::spread(dead, 1) + " ms; " + reasons_of(ds));
      out.figures.push_back(med);
      out.figures.push_back(ms_figure("detect_sigstop_p90", bench::percentile(dead, 0.9)));
      auto sus = ms_figure("detect_sigstop_suspected_median", bench::median(suspected));
      sus.notes.push_back("SIGSTOP to peer_state::suspected (phi > 8) in " +
                          std::to_string(suspected.size()) + " of " + std::to_string(ds.size()) +
                          " runs: " + bench::spread(suspected, 1) + " ms");
      out.figures.push_back(sus);
    }
  }
  dog.arm("stopping the observer node", std::chrono::seconds(30));
  obs.reset();
  dog.disarm();
  return out;
}

group_result measure_partitioned_leader(const options& opts, watchdog& dog) {
  group_result out;
  std::vector<double> acting;
  std::chrono::milliseconds ttl{0};
  for (size_t run = 0; run < opts.runs; ++run) {
    scratch_dir dir{"partition"};
    auto ports = free_ports(1);
    if (dir.path.empty() || ports.empty()) {
      out.error = "no scratch directory or no free ports";
      return out;
    }
    dog.arm("starting a leader, run " + std::to_string(run + 1), std::chrono::seconds(60));
    auto etcd = start_etcd(dir.path, out.error);
    if (!etcd)
      return out;
    auto config = dir.path + "/partition.toml";
    if (!write_cluster_config(config, detection_config(dir.path, {}, ports, etcd->client_url()),
                              out.error))
      return out;
    std::string error;
    auto obs = observer::start(config, error);
    if (!obs) {
      out.error = "leader: " + error;
      return out;
    }
    if (!obs->lead(std::chrono::seconds(10))) {
      out.error = "etcd did not make the node the leader within 10 s";
      return out;
    }
    ttl = obs->session_ttl();
    // The leader loses etcd (frozen, so no request of its own fails fast):
    // it must stop acting before its lease can expire.
    dog.arm("a leader cut off from etcd, run " + std::to_string(run + 1),
            std::chrono::duration_cast<std::chrono::seconds>(ttl * 3) + std::chrono::seconds(5));
    auto t0 = clock_type::now();
    ::kill(etcd->pid(), SIGSTOP);
    while (!obs->fenced() && clock_type::now() - t0 < ttl * 2)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    auto t1 = clock_type::now();
    bool fenced = obs->fenced();
    ::kill(etcd->pid(), SIGCONT);
    if (!fenced) {
      out.error = "a leader cut off from etcd still acted after twice its lease";
      return out;
    }
    acting.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    dog.arm("stopping the leader", std::chrono::seconds(30));
    obs.reset();
    etcd->stop();
  }
  dog.disarm();
  auto med = ms_figure("partitioned_leader_acting_median", bench::median(acting));
  auto ttl_ms = static_cast<double>(ttl.count());
  med.target = "<= lease (" + bench::fixed(ttl_ms, 0) + " ms)";
  med.met = bench::percentile(acting, 1.0) <= ttl_ms;
  med.notes.push_back(std::to_string(acting.size()) +
                      " runs, a fresh etcd and leader each: etcd SIGSTOPped under a leader, "
                      "time until the leader fenced itself (stopped driving the job): " +
                      bench::spread(acting, 1) +
                      " ms; met when even the slowest run stopped within the lease");
  out.figures.push_back(med);
  return out;
}

group_result measure_false_suspicions(const options& opts, watchdog& dog) {
  group_result out;
  scratch_dir dir{"load"};
  auto ports = free_ports(3);
  if (dir.path.empty() || ports.empty()) {
    out.error = "no scratch directory or no free ports";
    return out;
  }
  auto etcd = start_etcd(dir.path, out.error);
  if (!etcd)
    return out;
  auto config = dir.path + "/load.toml";
  if (!write_cluster_config(
          config, detection_config(dir.path, {"p1", "p2"}, ports, etcd->client_url()), out.error))
    return out;
  dog.arm("starting the loaded cluster", std::chrono::seconds(60));
  std::string error;
  auto obs = observer::start(config, error);
  if (!obs) {
    out.error = "observer: " + error;
    return out;
  }
  auto from = obs->mark();
  std::vector<std::string> names{"p1", "p2"};
  std::vector<std::unique_ptr<child_process>> peers;
  for (auto& name : names) {
    auto p = start_node(config, name, dir.path + "/" + name + ".log", error);
    if (!p) {
      out.error = error;
      return out;
    }
    peers.push_back(std::move(p));
  }
  for (auto& name : names)
    if (!obs->wait_for(name, peer_state::alive, from,
                       clock_type::now() + std::chrono::seconds(30))) {
      out.error = "peer " + name + " did not become alive within 30 s; its log:\n" +
                  tail_of(dir.path + "/" + name + ".log");
      return out;
    }
  // The peers see each other too; give them a moment to connect and settle.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  std::map<std::string, std::streamoff> log_start;
  for (auto& name : names)
    log_start[name] =
        static_cast<std::streamoff>(std::filesystem::file_size(dir.path + "/" + name + ".log"));
  auto mark = obs->mark();
  dog.arm("the loaded run", std::chrono::seconds(opts.load_seconds + 60));
  // One spinning thread per core, at the same priority as the nodes.
  auto load_start = clock_type::now();
  std::atomic<bool> spin{true};
  std::vector<std::thread> spinners;
  auto cores = std::max(2u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < cores; ++i)
    spinners.emplace_back([&spin] {
      volatile double x = 1;
      while (spin.load(std::memory_order_relaxed))
        x = x * 1.0000001 + 1e-9;
    });
  // phi peaks just before each heartbeat arrives: sampled often enough to see the peaks.
  double max_phi = 0;
  auto end = clock_type::now() + std::chrono::seconds(opts.load_seconds);
  while (clock_type::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    max_phi = std::max(max_phi, obs->max_phi());
  }
  spin = false;
  for (auto& t : spinners)
    t.join();
  // Count before anything stops: stopping the peers changes states on purpose.
  std::vector<std::string> seen;
  for (auto& t : obs->since(mark))
    if (t.state == peer_state::suspected || t.state == peer_state::dead)
      seen.push_back("obs: peer " + t.peer + " is " + to_string(t.state) + " at +" +
                     bench::fixed(ms_between(load_start, t.at) / 1000, 1) + " s");
  size_t by_obs = seen.size();
  std::map<std::string, size_t> by_peer;
  for (auto& name : names) {
    std::ifstream in{dir.path + "/" + name + ".log"};
    in.seekg(log_start[name]);
    std::string line;
    while (std::getline(in, line))
      if (line.find(" is suspected") != std::string::npos ||
          line.find(" is dead") != std::string::npos) {
        ++by_peer[name];
        seen.push_back(name + ": " + line);
      }
  }
  for (size_t i = 0; i < peers.size(); ++i)
    if (peers[i]->wait_for(std::chrono::milliseconds(0))) {
      out.error = "peer " + names[i] + " exited during the loaded run; its log:\n" +
                  tail_of(dir.path + "/" + names[i] + ".log");
      return out;
    }
  bench::figure f;
  f.name = "false_suspicions_loaded";
  f.unit = "count";
  f.value = static_cast<double>(seen.size());
  f.has_baseline = false;
  f.decimals = 0;
  f.target = "0";
  f.met = seen.empty();
  f.notes.push_back(std::to_string(opts.load_seconds) + " s, obs in this process + 2 peer " +
                    "processes, " + std::to_string(cores) + " spinning threads on " +
                    std::to_string(std::thread::hardware_concurrency()) +
                    " cores; suspected/dead transitions seen by obs " + std::to_string(by_obs) +
                    ", by p1 " + std::to_string(by_peer["p1"]) + ", by p2 " +
                    std::to_string(by_peer["p2"]) +
                    "; highest phi seen by obs (sampled every 5 ms) " + bench::fixed(max_phi, 2) +
                    " (threshold 8)");
  for (size_t i = 0; i < seen.size() && i < 10; ++i)
    f.notes.push_back(seen[i]);
  out.figures.push_back(f);
  dog.arm("stopping the loaded cluster", std::chrono::seconds(30));
  // A clean stop first (SIGTERM: the node leaves), then whatever is left is killed.
  for (auto& p : peers)
    p->signal(SIGTERM);
  for (auto& p : peers)
    p->wait_for(std::chrono::seconds(5));
  peers.clear();
  obs.reset();
  dog.disarm();
  return out;
}

} // namespace cluster_bench
