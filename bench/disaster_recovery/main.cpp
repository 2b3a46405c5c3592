// bench_disaster_recovery: what shipping a training job's snapshots to a second site costs,
// how far behind the shipped copy stays, and how long a second site takes to resume the job
// after the first is lost.
//
// 1. shipping_cost_steps_per_s: a 4-node `understudy launch` training job (n1, n2, n3 and
//    a spare; digits, layers [64, 128, 10], 1500 steps, a checkpoint every 5) with
//    [snapshots] (node n2, rpo 2 s: shipped every second) against the same job without it, rotated
//    over --rounds rounds, a fresh state directory each run. Steps/s = steps over the time
//    from the arrival of n1's "job: fresh start" to its "final:" line. Median with
//    shipping against median without; the final params_digest must be the same both ways.
// 2. shipping_throughput_MBps: write_snapshot of one committed step of an in-process job
//    with a larger model (layers [64, 2048, 2048, 10], momentum) into a fresh directory
//    (every object new), against a plain copy of the same files (read, write, fsync each,
//    fsync the directory) into another fresh directory; median over rounds.
//    snapshot_series_on_disk_MB: a series of 5 snapshots of consecutive committed steps in
//    one directory (content addressing stores a chunk once) against 5 full copies.
// 3. recovery_point_under_load_s: during the runs with shipping of figure 1, n2's metrics
//    endpoint is scraped every 100 ms (and n1's, in both kinds of runs, so that both carry
//    the same load): the max of understudy_dr_recovery_point_seconds against the declared
//    rpo; its baseline is the recovery point the same scrapes show from outside (how long
//    the oldest committed step past n2's shipped step has been committed on n1).
// 4. recovery_time_site_loss_to_resumed_s: site A trains and ships every second; after two
//    "shipped to" lines its whole process group is SIGKILLed and the clock starts;
//    `understudy promote B --primary A`, then `understudy launch B` until its n1 says "job:
//    resuming from committed step". Baseline: a cold `understudy launch` of a fresh copy of
//    site B's job (no snapshots) to its "job: fresh start" line, the fixed cost of starting
//    a cluster. Median over --recovery-runs runs.
// Every child process is in a group of its own, killed on every exit path; a watchdog
// ends any phase that hangs.

#include <curl/curl.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cluster_bench.hpp"
#include "report.hpp"
#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/state/runtime.hpp"
#include "understudy/state/snapshot.hpp"
#include "understudy/state/state_store.hpp"

namespace {

using cluster_bench::child_process;
using cluster_bench::clock_type;
using cluster_bench::scratch_dir;
using cluster_bench::watchdog;
namespace fs = std::filesystem;

/// The command line, resolved: quick mode's defaults applied where no value was given.
struct options {
  bool quick = false;
  /// Rounds of the shipping cost comparison (each side once per round, rotated).
  size_t rounds = 7;
  /// Site losses of the recovery figure.
  size_t recovery_runs = 3;
  /// Rounds of the throughput comparison.
  size_t throughput_rounds = 7;
  /// Figure groups to run ("cost,throughput,recovery"); empty: all.
  std::string only;

  /// Whether group `name` runs.
  [[nodiscard]] bool wants(const std::string& name) const { return bench::in_list(only, name); }
};

// -- the jobs -------------------------------------------------------------------------------

constexpr uint64_t cost_steps = 1500;
constexpr uint64_t checkpoint_every = 5;
constexpr const char* cost_layers = "[64, 128, 10]";
constexpr double declared_rpo_s = 2.0;
/// Site A of the recovery figure trains until it is killed.
constexpr uint64_t endless_steps = 1000000;

double seconds_between(clock_type::time_point from, clock_type::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

/// A 4-node cluster on loopback (n1, n2, n3 active, s1 a spare) training the digits MLP,
/// as bench_cluster's failover config; `ports` holds the 4 nodes' ports and, when it has 8,
/// their metrics ports after them.
std::string cluster_config(const std::string& name, const std::string& state_dir,
                           const std::vector<uint16_t>& ports, uint64_t steps,
                           const std::string& snapshots = "") {
  std::string text = "[cluster]\nname = \"" + name +
                     "\"\n\n[cluster.failure_detection]\n"
                     "heartbeat_interval = \"100ms\"\ndeadline = \"1s\"\n"
                     "connection_timeout = \"2s\"\n\n";
  const char* names[] = {"n1", "n2", "n3", "s1"};
  for (size_t i = 0; i < 4; ++i) {
    text += std::string{"[[node]]\nname = \""} + names[i] +
            "\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(ports[i]) + "\nstate_dir = \"" +
            state_dir + "/" + names[i] + "\"\n" + (i == 3 ? "role = \"spare\"\n" : "");
    if (ports.size() >= 8)
      text += "metrics_port = " + std::to_string(ports[4 + i]) + "\n";
    text += "\n";
  }
  text += std::string{"[job]\nlayers = "} + cost_layers +
          "\ndata = \"" UNDERSTUDY_DIGITS_PATH
          "\"\nworkers = 3\nshards = 3\nloaders = 3\nbatch = 48\nmicro_batches = 3\nsteps = " +
          std::to_string(steps) +
          "\nseed = 5\ncheckpoint_every = " + std::to_string(checkpoint_every) +
          "\neval_every = 0\nlr = 0.1\n\n"
          "[job.shard]\nplacement = \"spread\"\n[job.loader]\nplacement = \"spread\"\n"
          "[job.worker]\nplacement = \"spread\"\n[job.trainer]\nplacement = [\"n1\", \"n2\"]\n";
  if (!snapshots.empty())
    text += "\n" + snapshots;
  return text;
}

/// The [snapshots] section of the runs with shipping.
std::string snapshots_section(const std::string& dir) {
  // No `every`: the shipping cadence follows from the rpo (half of it).
  return "[snapshots]\ndir = \"" + dir + "\"\nnode = \"n2\"\nrpo = \"" +
         std::to_string(static_cast<int>(declared_rpo_s)) + "s\"\n";
}

// -- child output ---------------------------------------------------------------------------

/// One output line of a child and when it arrived.
struct stamped_line {
  std::string text;
  clock_type::time_point at;
};

/// Reads a child's output pipe line by line, stamping each line on arrival (one steady
/// clock for every line; the pipe hop costs well under a millisecond). Keeps the last
/// lines for error messages. Owned by one thread.
class line_reader {
public:
  explicit line_reader(int fd) : fd_(fd) {}

  /// The next line, or none at EOF or once `deadline` passed.
  std::optional<stamped_line> next(clock_type::time_point deadline) {
    while (ready_.empty() && !eof_) {
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
      if (left.count() <= 0)
        return std::nullopt;
      pollfd pfd{fd_, POLLIN, 0};
      auto r = ::poll(&pfd, 1, static_cast<int>(std::min<long>(left.count(), 200)));
      if (r < 0 && errno != EINTR) {
        eof_ = true;
        break;
      }
      if (r <= 0)
        continue;
      char buf[8192];
      auto n = ::read(fd_, buf, sizeof buf);
      if (n < 0 && errno == EINTR)
        continue;
      auto now = clock_type::now();
      if (n <= 0) {
        eof_ = true;
        if (!pending_.empty())
          ready_.push_back({std::move(pending_), now});
        pending_.clear();
        break;
      }
      pending_.append(buf, static_cast<size_t>(n));
      size_t pos;
      while ((pos = pending_.find('\n')) != std::string::npos) {
        ready_.push_back({pending_.substr(0, pos), now});
        pending_.erase(0, pos + 1);
      }
    }
    if (ready_.empty())
      return std::nullopt;
    auto line = std::move(ready_.front());
    ready_.pop_front();
    recent_.push_back(line.text);
    if (recent_.size() > 25)
      recent_.pop_front();
    return line;
  }

  /// The last lines read, indented, for an error message.
  [[nodiscard]] std::string tail() const {
    std::string out;
    for (const auto& l : recent_)
      out += "    | " + l + "\n";
    return out;
  }

private:
  int fd_;
  std::string pending_;
  std::deque<stamped_line> ready_;
  std::deque<std::string> recent_;
  bool eof_ = false;
};

/// Starts `understudy ARGS...` with its output on a pipe; SIGTERM reaches it if the bench
/// dies (the launcher then stops its nodes itself).
std::unique_ptr<child_process> spawn_cli(const std::vector<std::string>& args, std::string& error) {
  std::vector<std::string> argv{UNDERSTUDY_CLI_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  return child_process::spawn(argv, "", SIGTERM, error);
}

// -- metrics --------------------------------------------------------------------------------

/// The value of the single series of `metric` in Prometheus text `body`; none if absent.
std::optional<double> metric_value(const std::string& body, const std::string& metric) {
  size_t pos = 0;
  while (pos < body.size()) {
    auto end = body.find('\n', pos);
    if (end == std::string::npos)
      end = body.size();
    if (body.compare(pos, metric.size(), metric) == 0 && end > pos + metric.size() &&
        (body[pos + metric.size()] == ' ' || body[pos + metric.size()] == '{')) {
      auto line = body.substr(pos, end - pos);
      auto sp = line.rfind(' ');
      if (sp != std::string::npos)
        return std::strtod(line.c_str() + sp + 1, nullptr);
    }
    pos = end + 1;
  }
  return std::nullopt;
}

/// A GET of one URL, the connection kept between calls. Owned by one thread.
class http_getter {
public:
  explicit http_getter(std::string url) : url_(std::move(url)), curl_(curl_easy_init()) {
    if (curl_ == nullptr)
      return;
    curl_easy_setopt(curl_, CURLOPT_URL, url_.c_str());
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(
        curl_, CURLOPT_WRITEFUNCTION, +[](char* data, size_t size, size_t n, void* out) {
          static_cast<std::string*>(out)->append(data, size * n);
          return size * n;
        });
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &body_);
  }
  ~http_getter() {
    if (curl_ != nullptr)
      curl_easy_cleanup(curl_);
  }
  http_getter(const http_getter&) = delete;
  http_getter& operator=(const http_getter&) = delete;

  /// The body, or none if the request failed.
  std::optional<std::string> get() {
    if (curl_ == nullptr)
      return std::nullopt;
    body_.clear();
    if (curl_easy_perform(curl_) != CURLE_OK)
      return std::nullopt;
    return body_;
  }

private:
  std::string url_;
  CURL* curl_;
  std::string body_;
};

/// One scrape of n1 and n2; NaN where a value was not served.
struct scrape_sample {
  clock_type::time_point at;
  /// n1's understudy_training_step (the trainer is on n1).
  double n1_step = NAN;
  /// n2, the shipping node: the understudy_dr_* gauges and counters.
  double rp_seconds = NAN;
  double rp_steps = NAN;
  double shipped_step = NAN;
  double snapshots = NAN;
  double failures = NAN;
  double bytes = NAN;
};

/// Scrapes n1's and n2's metrics endpoints every `every` on a thread of its own, from
/// construction until stop().
class metrics_scraper {
public:
  metrics_scraper(std::string n1_url, std::string n2_url, std::chrono::milliseconds every)
      : thread_([this, n1 = std::move(n1_url), n2 = std::move(n2_url), every] {
          run(n1, n2, every);
        }) {}
  ~metrics_scraper() { stop(); }
  metrics_scraper(const metrics_scraper&) = delete;
  metrics_scraper& operator=(const metrics_scraper&) = delete;

  /// Stops the thread; returns the samples taken.
  std::vector<scrape_sample> stop() {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable())
      thread_.join();
    return std::move(samples_);
  }

private:
  void run(const std::string& n1_url, const std::string& n2_url, std::chrono::milliseconds every) {
    http_getter n1{n1_url};
    http_getter n2{n2_url};
    auto next = clock_type::now();
    std::unique_lock<std::mutex> guard{mtx_};
    while (!stop_) {
      guard.unlock();
      scrape_sample s;
      s.at = clock_type::now();
      if (auto body = n2.get()) {
        auto get = [&](const char* name) { return metric_value(*body, name).value_or(NAN); };
        s.rp_seconds = get("understudy_dr_recovery_point_seconds");
        s.rp_steps = get("understudy_dr_recovery_point_steps");
        s.shipped_step = get("understudy_dr_shipped_step");
        s.snapshots = get("understudy_dr_snapshots_total");
        s.failures = get("understudy_dr_ship_failures_total");
        s.bytes = get("understudy_dr_shipped_bytes_total");
      }
      if (auto body = n1.get())
        s.n1_step = metric_value(*body, "understudy_training_step").value_or(NAN);
      guard.lock();
      samples_.push_back(s);
      next += every;
      if (next < clock_type::now())
        next = clock_type::now();
      cv_.wait_until(guard, next, [this] { return stop_; });
    }
  }

  std::mutex mtx_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<scrape_sample> samples_;
  std::thread thread_;
};

// -- figure 1 and 3: the cost of shipping, the recovery point under load ---------------------

/// What one training run showed.
struct cost_run {
  double steps_per_s = 0;
  uint64_t steps = 0;
  std::string digest;
  std::string final_line;
  size_t shipped_lines = 0;
  size_t failed_lines = 0;
  std::string first_failure;
  /// The failed rounds by the record found missing: "loaders", "shards", "trainer", "other".
  std::map<std::string, size_t> failures_by_record;
  /// The scrapes taken between "job: fresh start" and "final:".
  std::vector<scrape_sample> samples;
};

std::optional<cost_run> cost_once(const std::string& dir, size_t run, bool shipping,
                                  std::string& error) {
  auto ports = cluster_bench::free_ports(8);
  if (ports.empty()) {
    error = "no free ports";
    return std::nullopt;
  }
  auto run_dir = dir + "/" + (shipping ? "on-" : "off-") + std::to_string(run);
  auto snaps = run_dir + "/snapshots";
  auto config = run_dir + ".toml";
  if (!cluster_bench::write_file(config,
                                 cluster_config("bench", run_dir + "/state", ports, cost_steps,
                                                shipping ? snapshots_section(snaps) : ""))) {
    error = "cannot write " + config;
    return std::nullopt;
  }
  auto launcher = spawn_cli({"launch", config}, error);
  if (!launcher)
    return std::nullopt;
  // Both kinds of runs are scraped alike: the off runs' n2 serves no understudy_dr_*.
  metrics_scraper scraper{"http://127.0.0.1:" + std::to_string(ports[4]) + "/metrics",
                          "http://127.0.0.1:" + std::to_string(ports[5]) + "/metrics",
                          std::chrono::milliseconds(100)};
  line_reader reader{launcher->output_fd()};
  static const std::regex final_re{R"(^\[n1\] final: steps=(\d+) .*params_digest=([0-9a-f]+))"};
  std::optional<clock_type::time_point> fresh, done;
  cost_run out;
  auto deadline = clock_type::now() + std::chrono::seconds(80);
  while (!done) {
    auto line = reader.next(deadline);
    if (!line)
      break;
    const auto& text = line->text;
    if (!fresh && text.rfind("[n1] job: fresh start", 0) == 0)
      fresh = line->at;
    if (text.find(" shipped to " + snaps) != std::string::npos)
      ++out.shipped_lines;
    if (text.find(" not written to " + snaps) != std::string::npos ||
        text.find(" not written: ") != std::string::npos) {
      if (out.failed_lines++ == 0)
        out.first_failure = text;
      static const std::regex missing_re{R"(no version /root/job/(loaders|shards|trainer)\b)"};
      std::smatch m;
      ++out.failures_by_record[std::regex_search(text, m, missing_re) ? m[1].str() : "other"];
    }
    std::smatch m;
    if (std::regex_search(text, m, final_re)) {
      done = line->at;
      out.steps = std::stoull(m[1].str());
      out.digest = m[2].str();
      out.final_line = text.substr(5);
    }
  }
  auto samples = scraper.stop();
  // Everything needed has been read; killing the group is the one stop that cannot hang.
  launcher->kill_group();
  if (!fresh || !done) {
    error = std::string{shipping ? "run with" : "run without"} + " shipping " +
            std::to_string(run + 1) + ": " +
            (!fresh ? "n1 never said \"job: fresh start\"" : "the job did not finish") +
            "; the launcher's last lines:\n" + reader.tail();
    return std::nullopt;
  }
  out.steps_per_s = static_cast<double>(out.steps) / seconds_between(*fresh, *done);
  for (const auto& s : samples)
    if (s.at >= *fresh && s.at <= *done)
      out.samples.push_back(s);
  return out;
}

/// The committed step that n1's understudy_training_step implies: documented as the last
/// committed step, it shows steps between checkpoints too, so it is rounded down to the
/// last checkpoint (a step is committed only at a multiple of checkpoint_every).
double committed_of(const scrape_sample& s) {
  auto every = static_cast<double>(checkpoint_every);
  return std::floor(s.n1_step / every) * every;
}

/// The recovery point as seen from outside at each sample of `samples` (one run, in
/// order): 0 when n1's committed step is n2's shipped step, else the time since a sample
/// first showed a committed step past the shipped one (a lower bound, to one scrape
/// interval). NaN where a value was missing.
std::vector<double> outside_recovery_points(const std::vector<scrape_sample>& samples) {
  std::vector<double> out;
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& s = samples[i];
    if (std::isnan(s.n1_step) || std::isnan(s.shipped_step)) {
      out.push_back(NAN);
      continue;
    }
    if (committed_of(s) <= s.shipped_step) {
      out.push_back(0);
      continue;
    }
    size_t j = 0;
    while (j < i && !(committed_of(samples[j]) > s.shipped_step))
      ++j;
    out.push_back(seconds_between(samples[j].at, s.at));
  }
  return out;
}

void measure_cost(const options& opts, watchdog& dog, std::string& error,
                  std::vector<bench::figure>& cost_figs, std::vector<bench::figure>& point_figs) {
  scratch_dir dir{"dr-cost"};
  if (dir.path.empty()) {
    error = "no scratch directory";
    return;
  }
  std::vector<double> on, off;
  std::vector<cost_run> on_runs;
  std::set<std::string> on_digests, off_digests;
  std::string off_final;
  for (size_t r = 0; r < opts.rounds && error.empty(); ++r) {
    auto side = [&](bool shipping) {
      return [&, shipping] {
        if (!error.empty())
          return;
        dog.arm(std::string{"disaster recovery: cost round "} + std::to_string(r + 1) +
                    (shipping ? " with" : " without") + " shipping",
                std::chrono::seconds(100));
        auto run = cost_once(dir.path, r, shipping, error);
        dog.disarm();
        if (!run)
          return;
        (shipping ? on : off).push_back(run->steps_per_s);
        (shipping ? on_digests : off_digests).insert(run->digest);
        if (shipping)
          on_runs.push_back(std::move(*run));
        else
          off_final = run->final_line;
      };
    };
    bench::rotated(r, {side(true), side(false)});
  }
  if (!error.empty())
    return;

  // Figure 1.
  auto f = bench::make_figure("shipping_cost_steps_per_s", "steps/s", bench::median(on),
                              bench::median(off), 1);
  bool same_digest = on_digests.size() == 1 && off_digests == on_digests;
  f.target = ">= 0.98x";
  f.met = f.ratio() >= 0.98 && same_digest;
  f.notes.push_back(std::to_string(opts.rounds) + " rounds, each a 4-node `understudy launch` of " +
                    std::to_string(cost_steps) + " steps (layers " + cost_layers +
                    ", a checkpoint every 5) with and without [snapshots] (node n2, rpo 2 s: "
                    "shipped every second), rotated, a fresh state directory each: with " +
                    bench::spread(on, 1) + " steps/s, without " + bench::spread(off, 1) +
                    " steps/s (fresh start to final line)");
  std::vector<double> shipped, failed, mbytes, counted, counted_failures;
  std::string first_failure;
  std::map<std::string, size_t> by_record;
  for (const auto& r : on_runs) {
    for (const auto& [kind, n] : r.failures_by_record)
      by_record[kind] += n;
    shipped.push_back(static_cast<double>(r.shipped_lines));
    failed.push_back(static_cast<double>(r.failed_lines));
    if (!r.samples.empty() && !std::isnan(r.samples.back().bytes)) {
      mbytes.push_back(r.samples.back().bytes / 1e6);
      counted.push_back(r.samples.back().snapshots);
      counted_failures.push_back(r.samples.back().failures);
    }
    if (first_failure.empty())
      first_failure = r.first_failure;
  }
  f.notes.push_back("per run with shipping, from n2's log lines: snapshots shipped median " +
                    bench::fixed(bench::median(shipped), 0) + " (" + bench::spread(shipped, 0) +
                    "), rounds whose snapshot was not written median " +
                    bench::fixed(bench::median(failed), 0) + " (" + bench::spread(failed, 0) +
                    "); from its metrics at the last scrape before the final line: "
                    "understudy_dr_snapshots_total median " +
                    bench::fixed(bench::median(counted), 0) +
                    ", understudy_dr_ship_failures_total median " +
                    bench::fixed(bench::median(counted_failures), 0) +
                    ", understudy_dr_shipped_bytes_total median " +
                    bench::fixed(bench::median(mbytes), 2) + " MB");
  if (!first_failure.empty()) {
    std::string kinds;
    for (const auto& [kind, n] : by_record)
      kinds += (kinds.empty() ? "" : ", ") + std::to_string(n) + " " +
               (kind == "other"
                    ? std::string{"for another reason"}
                    : "missing a version of a " +
                          (kind == "trainer" ? kind : kind.substr(0, kind.size() - 1)) + " record");
    f.notes.push_back("snapshots not written, all runs with shipping: " + kinds +
                      "; the first: " + first_failure);
  }
  if (same_digest) {
    f.notes.push_back("final params_digest identical in all " +
                      std::to_string(on.size() + off.size()) +
                      " runs, with and without shipping: " + *on_digests.begin());
  } else {
    std::string with, without;
    for (const auto& d : on_digests)
      with += " " + d;
    for (const auto& d : off_digests)
      without += " " + d;
    f.notes.push_back("final params_digest DIFFERS: with shipping" + with + "; without" + without);
  }
  f.notes.push_back("last run without shipping: " + off_final);
  cost_figs.push_back(f);

  // Figure 3.
  std::vector<double> metric_s, outside_s, metric_steps, outside_steps;
  size_t missing = 0, off_grid = 0, n1_seen = 0;
  for (const auto& r : on_runs) {
    auto outside = outside_recovery_points(r.samples);
    for (size_t i = 0; i < r.samples.size(); ++i) {
      const auto& s = r.samples[i];
      if (!std::isnan(s.n1_step)) {
        ++n1_seen;
        if (committed_of(s) != s.n1_step)
          ++off_grid;
      }
      if (std::isnan(s.rp_seconds) || std::isnan(outside[i])) {
        ++missing;
        continue;
      }
      metric_s.push_back(s.rp_seconds);
      outside_s.push_back(outside[i]);
      metric_steps.push_back(s.rp_steps);
      outside_steps.push_back(std::max(0.0, committed_of(s) - s.shipped_step));
    }
  }
  auto max_of = [](const std::vector<double>& xs) {
    return xs.empty() ? 0.0 : *std::max_element(xs.begin(), xs.end());
  };
  auto g = bench::make_figure("recovery_point_under_load_s", "s", max_of(metric_s),
                              max_of(outside_s), 2);
  g.target = "max <= rpo (" + bench::fixed(declared_rpo_s, 0) + " s)";
  g.met = !metric_s.empty() && g.value <= declared_rpo_s;
  g.notes.push_back(
      std::to_string(metric_s.size()) + " scrapes every 100 ms of n2's and n1's metrics during " +
      std::to_string(on_runs.size()) + " runs with shipping (fresh start to final line" +
      (missing > 0 ? ", " + std::to_string(missing) + " without a value left out" : "") +
      "): understudy_dr_recovery_point_seconds max " + bench::fixed(max_of(metric_s), 2) +
      " s, p99 " + bench::fixed(bench::percentile(metric_s, 0.99), 2) + " s, median " +
      bench::fixed(bench::median(metric_s), 2) + " s");
  g.notes.push_back(
      "baseline, the same scrapes from outside: how long n1's committed step has been past "
      "n2's understudy_dr_shipped_step (to one scrape, a lower bound): max " +
      bench::fixed(max_of(outside_s), 2) + " s, p99 " +
      bench::fixed(bench::percentile(outside_s, 0.99), 2) + " s, median " +
      bench::fixed(bench::median(outside_s), 2) + " s");
  g.notes.push_back(
      "in steps: understudy_dr_recovery_point_steps max " + bench::fixed(max_of(metric_steps), 0) +
      ", p99 " + bench::fixed(bench::percentile(metric_steps, 0.99), 0) +
      "; n1's committed minus n2's shipped step max " + bench::fixed(max_of(outside_steps), 0) +
      ", p99 " + bench::fixed(bench::percentile(outside_steps, 0.99), 0));
  g.notes.push_back(
      "n1's understudy_training_step, documented as the last committed step, was between "
      "checkpoints (not a multiple of checkpoint_every = " +
      std::to_string(checkpoint_every) + ") in " + std::to_string(off_grid) + " of " +
      std::to_string(n1_seen) +
      " scrapes; n1's committed step here is it rounded down to the last checkpoint");
  point_figs.push_back(g);
}

// -- figure 2: write_snapshot against a plain copy ------------------------------------------

constexpr const char* throughput_layers = "[64, 2048, 2048, 10]";

/// A job's state in this process: its store and its committed steps, oldest first.
struct source_state {
  std::shared_ptr<understudy::state_store> store;
  std::string job;
  std::vector<uint64_t> committed;
};

/// Runs a short job with a large model in this process into `dir`, a checkpoint every step,
/// every version kept.
std::optional<source_state> make_source_state(const std::string& dir, std::string& error) {
  using namespace understudy;
  auto config = dir + "/source.toml";
  if (!cluster_bench::write_file(
          config, std::string{"[cluster]\nname = \"bench\"\n\n[[node]]\nname = \"n1\"\nhost = "
                              "\"127.0.0.1\"\nport = 1\nstate_dir = \""} +
                      dir + "/n1\"\n\n[job]\nlayers = " + throughput_layers +
                      "\ndata = \"" UNDERSTUDY_DIGITS_PATH
                      "\"\nworkers = 2\nshards = 2\nloaders = 1\nbatch = 16\nmicro_batches = 2\n"
                      "steps = 7\nseed = 5\ncheckpoint_every = 1\neval_every = 0\n"
                      "optimizer = \"momentum\"\nlr = 0.01\n")) {
    error = "cannot write " + config;
    return std::nullopt;
  }
  auto nc = load_node_config(config, actors::job_config_options());
  auto tc =
      nc ? actors::make_training_config(*nc) : caf::expected<actors::training_config>{nc.error()};
  if (!tc) {
    error = "source job: " + describe(tc.error());
    return std::nullopt;
  }
  source_state out;
  {
    runtime_config rc;
    rc.log_events = false;
    runtime rt{rc};
    state_store_config sc;
    sc.directory = dir + "/state";
    sc.retention.keep_last = 16;
    auto p = rt.open_state(sc);
    auto job = p ? actors::training_job::create(std::move(*tc), *p)
                 : caf::expected<actors::training_job>{p.error()};
    if (!job) {
      error = "source job: " + describe(job.error());
      return std::nullopt;
    }
    auto tree = rt.start(job->spec());
    if (!tree) {
      error = "source job: " + describe(tree.error());
      return std::nullopt;
    }
    auto result = job->wait(std::chrono::minutes(2));
    rt.stop(*tree);
    if (!result) {
      error = "source job: " + describe(result.error());
      return std::nullopt;
    }
    out.store = p->store;
  }
  auto paths = out.store->paths();
  if (!paths) {
    error = "source job: " + describe(paths.error());
    return std::nullopt;
  }
  const std::string suffix = "/trainer";
  for (const auto& p : *paths)
    if (p.size() > suffix.size() && p.compare(p.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.job = p.substr(0, p.size() - suffix.size());
  auto versions = out.job.empty()
                      ? caf::expected<std::vector<version_info>>{std::vector<version_info>{}}
                      : out.store->versions(out.job + suffix);
  if (versions)
    for (const auto& v : *versions)
      out.committed.push_back(v.step);
  std::sort(out.committed.begin(), out.committed.end());
  if (out.committed.size() < 5) {
    error = "source job: " + std::to_string(out.committed.size()) +
            " committed steps of its trainer found (5 needed)";
    return std::nullopt;
  }
  return out;
}

/// The regular files under `dir` and their total size.
std::vector<fs::path> files_under(const std::string& dir, uint64_t& bytes) {
  std::vector<fs::path> out;
  bytes = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_regular_file(ec)) {
      out.push_back(it->path());
      bytes += it->file_size(ec);
    }
  }
  return out;
}

/// Copies `files` into the fresh directory `into`: each read, written, fsynced; then the
/// directory fsynced. False with the reason on failure.
bool plain_copy(const std::vector<fs::path>& files, const std::string& into, std::string& error) {
  if (::mkdir(into.c_str(), 0755) != 0) {
    error = "mkdir " + into + ": " + std::strerror(errno);
    return false;
  }
  std::vector<char> buf;
  size_t i = 0;
  for (const auto& file : files) {
    int in = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (in < 0 || ::fstat(in, &st) != 0) {
      error = "read " + file.string() + ": " + std::strerror(errno);
      if (in >= 0)
        ::close(in);
      return false;
    }
    buf.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < buf.size()) {
      auto n = ::read(in, buf.data() + got, buf.size() - got);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      got += static_cast<size_t>(n);
    }
    ::close(in);
    auto target = into + "/" + std::to_string(i++);
    int out = ::open(target.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
      error = "write " + target + ": " + std::strerror(errno);
      return false;
    }
    size_t put = 0;
    while (put < got) {
      auto n = ::write(out, buf.data() + put, got - put);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      put += static_cast<size_t>(n);
    }
    bool ok = put == got && ::fsync(out) == 0;
    ok = ::close(out) == 0 && ok;
    if (!ok) {
      error = "write " + target + ": " + std::strerror(errno);
      return false;
    }
  }
  int d = ::open(into.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0 || ::fsync(d) != 0) {
    error = "fsync " + into + ": " + std::strerror(errno);
    if (d >= 0)
      ::close(d);
    return false;
  }
  ::close(d);
  return true;
}

void measure_throughput(const options& opts, watchdog& dog, std::string& error,
                        std::vector<bench::figure>& figs) {
  using namespace understudy;
  scratch_dir dir{"dr-throughput"};
  if (dir.path.empty()) {
    error = "no scratch directory";
    return;
  }
  dog.arm("disaster recovery: the source job", std::chrono::seconds(150));
  auto src = make_source_state(dir.path, error);
  dog.disarm();
  if (!src)
    return;
  const uint64_t step = src->committed.back();
  auto recs = actors::read_committed_step_records(*src->store, src->job, step);
  if (!recs) {
    error = "committed step " + std::to_string(step) + ": " + describe(recs.error());
    return;
  }
  dog.arm("disaster recovery: throughput rounds", std::chrono::seconds(150));
  std::vector<double> snap_mbps, copy_mbps;
  uint64_t bytes = 0;
  size_t files = 0;
  snapshot_info info;
  for (size_t r = 0; r < opts.throughput_rounds && error.empty(); ++r) {
    auto snap_dir = dir.path + "/snap-" + std::to_string(r);
    auto copy_dir = dir.path + "/copy-" + std::to_string(r);
    // The copy copies what the snapshot wrote: the snapshot goes first into a directory
    // of its own when the copy runs first in this round.
    auto seed_dir = dir.path + "/seed-" + std::to_string(r);
    auto snapshot = [&] {
      if (!error.empty())
        return;
      auto t0 = clock_type::now();
      auto i = write_snapshot(*src->store, snap_dir, src->job, recs->fingerprint_hex(), recs->step,
                              recs->paths);
      auto t1 = clock_type::now();
      if (!i) {
        error = "write_snapshot: " + describe(i.error());
        return;
      }
      info = *i;
      uint64_t b = 0;
      files = files_under(snap_dir, b).size();
      bytes = b;
      snap_mbps.push_back(static_cast<double>(b) / 1e6 / seconds_between(t0, t1));
    };
    auto copy = [&] {
      if (!error.empty())
        return;
      std::string from = snap_dir;
      if (!fs::exists(snap_dir)) {
        auto i = write_snapshot(*src->store, seed_dir, src->job, recs->fingerprint_hex(),
                                recs->step, recs->paths);
        if (!i) {
          error = "write_snapshot: " + describe(i.error());
          return;
        }
        from = seed_dir;
      }
      uint64_t b = 0;
      auto list = files_under(from, b);
      auto t0 = clock_type::now();
      if (!plain_copy(list, copy_dir, error))
        return;
      auto t1 = clock_type::now();
      copy_mbps.push_back(static_cast<double>(b) / 1e6 / seconds_between(t0, t1));
    };
    bench::in_order(r, snapshot, copy);
    std::error_code ec;
    for (const auto& d : {snap_dir, copy_dir, seed_dir})
      fs::remove_all(d, ec);
  }
  if (!error.empty()) {
    dog.disarm();
    return;
  }
  auto f = bench::make_figure("shipping_throughput_MBps", "MB/s", bench::median(snap_mbps),
                              bench::median(copy_mbps), 1);
  f.notes.push_back(
      std::to_string(opts.throughput_rounds) +
      " rounds, alternating: write_snapshot of committed step " + std::to_string(step) + " (" +
      std::to_string(info.records) + " records, " + std::to_string(files) + " files, " +
      bench::fixed(static_cast<double>(bytes) / 1e6, 2) + " MB with the manifest; layers " +
      throughput_layers +
      ", momentum, 2 shards) into a fresh directory, against reading and copying the same "
      "files (write, fsync each, fsync the directory) into another: " +
      bench::spread(snap_mbps, 1) + " MB/s against " + bench::spread(copy_mbps, 1) + " MB/s");
  f.notes.emplace_back(
      "write_snapshot also reads and verifies each record from the store, hashes every "
      "object (SHA-256), and writes each through a temporary name, renamed, its directory "
      "synced; the copy reads files the page cache holds");
  figs.push_back(f);

  // A series of 5 consecutive committed steps in one directory against 5 full copies.
  auto series_dir = dir.path + "/series";
  uint64_t full = 0, added = 0;
  std::vector<std::string> per_step;
  const auto& c = src->committed;
  for (size_t i = c.size() - 5; i < c.size() && error.empty(); ++i) {
    auto r = actors::read_committed_step_records(*src->store, src->job, c[i]);
    if (!r) {
      error = "committed step " + std::to_string(c[i]) + ": " + describe(r.error());
      break;
    }
    auto s =
        write_snapshot(*src->store, series_dir, src->job, r->fingerprint_hex(), r->step, r->paths);
    if (!s) {
      error = "write_snapshot: " + describe(s.error());
      break;
    }
    // A full copy: every object it refers to and its manifest.
    std::error_code ec;
    auto manifest = fs::file_size(series_dir + "/manifests/" + s->name + ".json", ec);
    full += s->bytes + (ec ? 0 : manifest);
    added += s->new_bytes;
    per_step.push_back("step " + std::to_string(s->step) + " " +
                       bench::fixed(static_cast<double>(s->new_bytes) / 1e6, 2) + " of " +
                       bench::fixed(static_cast<double>(s->bytes) / 1e6, 2));
  }
  dog.disarm();
  if (!error.empty())
    return;
  uint64_t on_disk = 0;
  files_under(series_dir, on_disk);
  auto g =
      bench::make_figure("snapshot_series_on_disk_MB", "MB", static_cast<double>(on_disk) / 1e6,
                         static_cast<double>(full) / 1e6, 2);
  std::string steps_text;
  for (const auto& s : per_step)
    steps_text += (steps_text.empty() ? "" : ", ") + s;
  g.notes.push_back(
      "5 snapshots of consecutive committed steps in one directory (every file on disk) "
      "against 5 full copies (each snapshot's objects and manifest); new MB of objects per "
      "snapshot: " +
      steps_text + ". Shared by content addressing: " +
      bench::fixed(static_cast<double>(full > on_disk ? full - on_disk : 0) / 1e6, 2) +
      " MB. Every step of this job changes every parameter and the momentum, so no tensor "
      "chunk repeats; only records that did not change could be shared");
  figs.push_back(g);
}

// -- figure 4: site loss to resumed on a second site -----------------------------------------

/// What one site loss showed.
struct recovery_run {
  double recovery_s = 0;
  double promote_s = 0;
  double launch_s = 0;
  uint64_t promoted_step = 0;
  uint64_t committed_a = 0;
};

/// The newest step of `job`'s trainer that any node store of site A under `state` holds.
uint64_t newest_committed_of(const std::string& state) {
  uint64_t out = 0;
  for (const char* n : {"n1", "n2", "n3", "s1"}) {
    understudy::state_store_config sc;
    sc.directory = state + "/" + n;
    sc.read_only = true;
    if (!fs::exists(sc.directory + "/data.mdb"))
      continue;
    auto store = understudy::state_store::open(sc);
    if (!store)
      continue;
    if (auto c = (*store)->newest_intact("/root/job/trainer"))
      out = std::max(out, *c);
  }
  return out;
}

/// A cold `understudy launch` of a fresh copy of site B's job (no snapshots): seconds to
/// its n1's "job: fresh start".
std::optional<double> cold_once(const std::string& dir, size_t run, std::string& error) {
  auto ports = cluster_bench::free_ports(4);
  if (ports.empty()) {
    error = "no free ports";
    return std::nullopt;
  }
  auto run_dir = dir + "/cold-" + std::to_string(run);
  auto config = run_dir + ".toml";
  if (!cluster_bench::write_file(config, cluster_config("site-b", run_dir, ports, endless_steps))) {
    error = "cannot write " + config;
    return std::nullopt;
  }
  auto t0 = clock_type::now();
  auto launcher = spawn_cli({"launch", config}, error);
  if (!launcher)
    return std::nullopt;
  line_reader reader{launcher->output_fd()};
  auto deadline = clock_type::now() + std::chrono::seconds(40);
  while (auto line = reader.next(deadline)) {
    if (line->text.rfind("[n1] job: fresh start", 0) == 0) {
      launcher->kill_group();
      return seconds_between(t0, line->at);
    }
  }
  launcher->kill_group();
  error = "cold launch " + std::to_string(run + 1) +
          ": n1 never said \"job: fresh start\"; the launcher's last lines:\n" + reader.tail();
  return std::nullopt;
}

std::optional<recovery_run> recovery_once(const std::string& dir, size_t run, std::string& error) {
  auto ports_a = cluster_bench::free_ports(4);
  auto ports_b = cluster_bench::free_ports(4);
  if (ports_a.empty() || ports_b.empty() || ports_a == ports_b) {
    error = "no free ports";
    return std::nullopt;
  }
  auto run_dir = dir + "/run-" + std::to_string(run);
  auto dr = run_dir + "/dr";
  auto file_a = run_dir + "-site-a.toml";
  auto file_b = run_dir + "-site-b.toml";
  if (!cluster_bench::write_file(file_a, cluster_config("site-a", run_dir + "/a", ports_a,
                                                        endless_steps, snapshots_section(dr))) ||
      !cluster_bench::write_file(file_b, cluster_config("site-b", run_dir + "/b", ports_b,
                                                        endless_steps, snapshots_section(dr)))) {
    error = "cannot write the sites' files";
    return std::nullopt;
  }
  auto prefix = "site loss " + std::to_string(run + 1) + ": ";
  // Site A trains until it shipped twice.
  auto a = spawn_cli({"launch", file_a}, error);
  if (!a)
    return std::nullopt;
  {
    line_reader reader{a->output_fd()};
    size_t shipped = 0;
    auto deadline = clock_type::now() + std::chrono::seconds(40);
    while (shipped < 2) {
      auto line = reader.next(deadline);
      if (!line)
        break;
      if (line->text.find(" shipped to " + dr + ":") != std::string::npos)
        ++shipped;
    }
    if (shipped < 2) {
      a->kill_group();
      error = prefix + "site A shipped " + std::to_string(shipped) +
              " snapshot(s); its launcher's last lines:\n" + reader.tail();
      return std::nullopt;
    }
  }
  // The site is lost: every process of it at once.
  recovery_run out;
  auto lost = clock_type::now();
  a->kill_group();
  auto p = spawn_cli({"promote", file_b, "--primary", file_a}, error);
  if (!p)
    return std::nullopt;
  static const std::regex promoted_re{R"(takes \S+ over at committed step (\d+))"};
  std::optional<uint64_t> promoted;
  line_reader promote_out{p->output_fd()};
  auto deadline = clock_type::now() + std::chrono::seconds(40);
  while (auto line = promote_out.next(deadline)) {
    std::smatch m;
    if (std::regex_search(line->text, m, promoted_re))
      promoted = std::stoull(m[1].str());
  }
  auto status = p->wait_for(std::chrono::seconds(5));
  auto promoted_at = clock_type::now();
  p->kill_group();
  if (!promoted || !status || !WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    error = prefix + "`understudy promote` " +
            (status && WIFEXITED(*status) ? "exited " + std::to_string(WEXITSTATUS(*status))
                                          : std::string{"did not exit"}) +
            "; its output:\n" + promote_out.tail();
    return std::nullopt;
  }
  out.promoted_step = *promoted;
  auto b = spawn_cli({"launch", file_b}, error);
  if (!b)
    return std::nullopt;
  line_reader reader{b->output_fd()};
  const std::string resumed = "[n1] job: resuming from committed step ";
  std::optional<clock_type::time_point> resumed_at;
  uint64_t resumed_step = 0;
  deadline = clock_type::now() + std::chrono::seconds(40);
  while (auto line = reader.next(deadline)) {
    if (line->text.rfind(resumed, 0) == 0) {
      resumed_at = line->at;
      resumed_step = std::strtoull(line->text.c_str() + resumed.size(), nullptr, 10);
      break;
    }
  }
  b->kill_group();
  if (!resumed_at) {
    error = prefix + "site B never resumed the job; its launcher's last lines:\n" + reader.tail();
    return std::nullopt;
  }
  if (resumed_step != out.promoted_step) {
    error = prefix + "site B resumed from step " + std::to_string(resumed_step) +
            ", promoted at step " + std::to_string(out.promoted_step);
    return std::nullopt;
  }
  out.recovery_s = seconds_between(lost, *resumed_at);
  out.promote_s = seconds_between(lost, promoted_at);
  out.launch_s = seconds_between(promoted_at, *resumed_at);
  out.committed_a = newest_committed_of(run_dir + "/a");
  return out;
}

void measure_recovery(const options& opts, watchdog& dog, std::string& error,
                      std::vector<bench::figure>& figs) {
  scratch_dir dir{"dr-recovery"};
  if (dir.path.empty()) {
    error = "no scratch directory";
    return;
  }
  std::vector<double> recovery, cold, promote, launch, lost_steps;
  for (size_t run = 0; run < opts.recovery_runs && error.empty(); ++run) {
    auto loss = [&] {
      if (!error.empty())
        return;
      dog.arm("disaster recovery: site loss " + std::to_string(run + 1), std::chrono::seconds(150));
      auto r = recovery_once(dir.path, run, error);
      dog.disarm();
      if (!r)
        return;
      recovery.push_back(r->recovery_s);
      promote.push_back(r->promote_s);
      launch.push_back(r->launch_s);
      lost_steps.push_back(r->committed_a >= r->promoted_step
                               ? static_cast<double>(r->committed_a - r->promoted_step)
                               : 0.0);
    };
    auto baseline = [&] {
      if (!error.empty())
        return;
      dog.arm("disaster recovery: cold launch " + std::to_string(run + 1),
              std::chrono::seconds(60));
      auto c = cold_once(dir.path, run, error);
      dog.disarm();
      if (c)
        cold.push_back(*c);
    };
    bench::in_order(run, loss, baseline);
  }
  if (!error.empty())
    return;
  auto f = bench::make_figure("recovery_time_site_loss_to_resumed_s", "s", bench::median(recovery),
                              bench::median(cold), 2);
  f.target = "<= 10 s";
  f.met = f.value <= 10;
  f.notes.push_back(
      std::to_string(recovery.size()) +
      " site losses (site A SIGKILLed whole after shipping twice, every second): to site B's "
      "n1 resuming " +
      bench::spread(recovery, 2) + " s; of it `understudy promote B --primary A` median " +
      bench::fixed(bench::median(promote), 2) + " s (" + bench::spread(promote, 2) +
      "), then `understudy launch B` to \"job: resuming\" median " +
      bench::fixed(bench::median(launch), 2) + " s");
  f.notes.push_back(
      "baseline: a cold `understudy launch` of site B's job (fresh state, no "
      "snapshots) to \"job: fresh start\": " +
      bench::spread(cold, 2) + " s");
  f.notes.push_back(
      "committed steps lost (site A's newest committed step in its stores after the kill, "
      "minus the step site B resumed from): " +
      bench::spread(lost_steps, 0) + ", median " + bench::fixed(bench::median(lost_steps), 0));
  figs.push_back(f);
}

} // namespace

int main(int argc, char** argv) {
  cluster_bench::init_child_handling();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  options opts;
  // Zero: not given, so quick mode's default applies (a given value is positive).
  size_t rounds = 0, recovery_runs = 0;
  if (auto status = bench::parse_command_line(
          argc, argv,
          {
              bench::flag_option("--quick", [&] { opts.quick = true; }),
              bench::size_option("--rounds", rounds),
              bench::size_option("--recovery-runs", recovery_runs),
              bench::string_option("--only", opts.only),
          },
          "usage: %s [--quick] [--rounds N] [--recovery-runs N] [--only GROUPS]\n"
          "  --quick             few repetitions (1 round, 1 recovery run, 3 throughput "
          "rounds)\n"
          "  --rounds N          rounds of the shipping cost comparison (default %zu)\n"
          "  --recovery-runs N   site losses of the recovery figure (default %zu)\n"
          "  --only GROUPS       comma-separated: cost,throughput,recovery\n",
          argv[0], opts.rounds, opts.recovery_runs))
    return *status;
  if (opts.quick) {
    opts.rounds = 1;
    opts.recovery_runs = 1;
    opts.throughput_rounds = 3;
  }
  opts.rounds = rounds != 0 ? rounds : opts.rounds;
  opts.recovery_runs = recovery_runs != 0 ? recovery_runs : opts.recovery_runs;

  watchdog dog;
  std::vector<bench::figure> cost, throughput, point, recovery;
  std::vector<std::string> errors;
  auto check = [&](const char* group, const std::string& error) {
    if (!error.empty())
      errors.push_back(std::string{group} + ": " + error);
  };
  if (opts.wants("cost")) {
    std::string error;
    measure_cost(opts, dog, error, cost, point);
    check("shipping cost", error);
  }
  if (opts.wants("throughput")) {
    std::string error;
    measure_throughput(opts, dog, error, throughput);
    check("throughput", error);
  }
  if (opts.wants("recovery")) {
    std::string error;
    measure_recovery(opts, dog, error, recovery);
    check("recovery", error);
  }
  std::vector<bench::figure> figs;
  for (auto* part : {&cost, &throughput, &point, &recovery})
    figs.insert(figs.end(), part->begin(), part->end());
  bench::print_report("disaster_recovery", figs);
  for (auto& e : errors)
    std::fprintf(stderr, "bench_disaster_recovery: %s\n", e.c_str());
  curl_global_cleanup();
  return errors.empty() ? EXIT_SUCCESS : EXIT_FAILURE;
}
