#include "understudy/actors/standby.hpp"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <future>
#include <ostream>
#include <thread>

#include "understudy/actors/job_config.hpp"
#include "understudy/actors/snapshot_shipping.hpp"
#include "understudy/metrics/metrics.hpp"
#include "understudy/node/event_journal.hpp"

namespace understudy::actors {

bool promotion_watch::observe(bool reachable, time_point now) {
  if (reachable) {
    since_.reset();
    probes_ = 0;
    return false;
  }
  if (!since_)
    since_ = now;
  ++probes_;
  return probes_ >= 2 && now - *since_ >= after_;
}

std::chrono::milliseconds promotion_watch::unreachable_for(time_point now) const {
  if (!since_ || now <= *since_)
    return std::chrono::milliseconds{0};
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - *since_);
}

bool accepts_connections(const std::string& host, uint16_t port,
                         std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0)
    return false;
  bool ok = false;
  for (auto* a = res; a != nullptr && !ok; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
      continue;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      ok = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int soerr = 0;
      socklen_t len = sizeof soerr;
      ok = ::poll(&p, 1, static_cast<int>(timeout.count())) == 1 &&
           ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0;
    }
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return ok;
}

namespace {

using clock_type = std::chrono::steady_clock;

/// Seconds since the epoch of an ISO 8601 UTC time ("2026-12-07T16:40:00Z"), or -1.
double unix_seconds(const std::string& iso) {
  std::tm tm{};
  if (::strptime(iso.c_str(), "%Y-%m-%dT%H:%M:%S", &tm) == nullptr)
    return -1;
  return static_cast<double>(::timegm(&tm));
}

double now_unix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

/// The standby's metrics (null members when the process serves none).
struct standby_metrics {
  std::shared_ptr<metric_gauge> snapshot_step, snapshot_age, primary_reachable, primary_unreachable,
      last_drill_failed, last_drill_time, last_drill_recovery;
  std::shared_ptr<metric_counter> drills_passed, drills_failed;

  explicit standby_metrics(node_metrics* m) {
    if (m == nullptr)
      return;
    snapshot_step = m->add_gauge("understudy_dr_standby_snapshot_step",
                                 "The newest snapshot's step in the standby's directory.");
    snapshot_age = m->add_gauge("understudy_dr_standby_snapshot_age_seconds",
                                "How old the newest snapshot in the directory is.");
    primary_reachable = m->add_gauge(
        "understudy_dr_primary_reachable",
        "1 when a node of the primary accepted a connection at the last probe, else 0.");
    primary_unreachable =
        m->add_gauge("understudy_dr_primary_unreachable_seconds",
                     "How long no node of the primary has accepted a connection.");
    last_drill_failed =
        m->add_gauge("understudy_dr_last_drill_failed",
                     "1 when the last restore drill failed (a damaged file, a replay that "
                     "differs, a restore that fails), else 0.");
    last_drill_time = m->add_gauge("understudy_dr_last_drill_timestamp_seconds",
                                   "When the last restore drill ended (Unix time).");
    last_drill_recovery =
        m->add_gauge("understudy_dr_last_drill_recovery_seconds",
                     "The last drill's restore (verification and import) and replay time.");
    drills_passed = m->add_counter("understudy_dr_drills_passed_total",
                                   "Restore drills whose replay was bit-exact.");
    drills_failed =
        m->add_counter("understudy_dr_drills_failed_total", "Restore drills that failed.");
  }
};

} // namespace

caf::expected<standby_result> run_standby(const node_config& nc, const standby_options& opts) {
  const auto* cfg = snapshots_of(nc);
  if (cfg == nullptr || !cfg->standby || training_job_path(nc).empty())
    return make_error(
        config_errc::missing_key,
        nc.origin + ": a standby site has a [job] and [snapshots] with standby = true");
  std::ostream& out = *opts.out;
  auto say = [&](const std::string& line) { out << "standby: " << line << std::endl; };
  standby_metrics m{opts.metrics};
  standby_result result;
  const bool automatic = cfg->promote_after.count() > 0 && !opts.primary.empty();
  promotion_watch watch{std::max(cfg->promote_after, std::chrono::milliseconds{1})};
  auto next_drill = clock_type::now() + cfg->drill_every;
  std::future<caf::expected<drill_report>> drill;
  uint64_t newest_step = 0, drilled_step = 0;
  say("cluster " + nc.cluster.name + " stands by for " + training_job_path(nc) + " from " +
      cfg->dir +
      (automatic ? ", promoted once the primary was unreachable for " +
                       std::to_string(cfg->promote_after.count()) + " ms"
                 : ", promoted by `understudy promote`") +
      (cfg->drill_every.count() > 0
           ? ", a drill every " + std::to_string(cfg->drill_every.count()) + " ms"
           : std::string{}));
  auto finish_drill = [&] {
    auto r = drill.get();
    bool passed = r && r->passed();
    if (r && r->restored_step == 0 && r->compared_step == 0)
      return; // nothing to drill yet
    std::string line;
    if (!r) {
      line = "drill failed: " + describe(r.error());
    } else {
      char buf[320];
      std::snprintf(buf, sizeof buf,
                    "drill of step %llu from step %llu: restore %lld ms, replay %lld ms, "
                    "parameters %016llx vs shipped %016llx: %s",
                    static_cast<unsigned long long>(r->compared_step),
                    static_cast<unsigned long long>(r->restored_step),
                    static_cast<long long>(r->restore_time.count()),
                    static_cast<long long>(r->replay_time.count()),
                    static_cast<unsigned long long>(r->replayed_digest),
                    static_cast<unsigned long long>(r->shipped_digest),
                    passed ? "bit-exact, passed" : "DIFFERENT, failed");
      line = buf;
    }
    say(line);
    if (opts.journal)
      opts.journal->note(line);
    (passed ? result.drills_passed : result.drills_failed)++;
    if (m.drills_passed) {
      (passed ? m.drills_passed : m.drills_failed)->increment();
      m.last_drill_failed->set(passed ? 0 : 1);
      m.last_drill_time->set(now_unix());
      if (r)
        m.last_drill_recovery->set(
            std::chrono::duration<double>(r->restore_time + r->replay_time).count());
    }
  };
  while (!(opts.stop_requested && opts.stop_requested())) {
    auto now = clock_type::now();
    if (auto p = read_promotion(cfg->dir)) {
      if (p->cluster != nc.cluster.name)
        return make_error(config_errc::invalid_value,
                          cfg->dir + " was promoted to cluster " + p->cluster + " (step " +
                              std::to_string(p->step) + ", " + p->when +
                              "): this standby has nothing left to take over");
      say("cluster " + nc.cluster.name + " was promoted already (step " + std::to_string(p->step) +
          ", " + p->when + ")");
      result.promoted = *p;
      break;
    }
    // The directory: the newest snapshot and how old it is.
    if (auto all = list_snapshots(cfg->dir); all && !all->empty()) {
      const auto& newest = all->back();
      newest_step = newest.step;
      if (m.snapshot_step) {
        m.snapshot_step->set(static_cast<double>(newest.step));
        if (auto t = unix_seconds(newest.created); t >= 0)
          m.snapshot_age->set(std::max(0.0, now_unix() - t));
      }
    }
    // A scheduled drill, off this loop's thread.
    if (drill.valid() && drill.wait_for(std::chrono::seconds(0)) == std::future_status::ready)
      finish_drill();
    if (cfg->drill_every.count() > 0 && !drill.valid() && now >= next_drill &&
        newest_step != drilled_step) {
      next_drill = now + cfg->drill_every;
      drilled_step = newest_step; // the same newest snapshot is not drilled twice
      drill = std::async(std::launch::async,
                         [&nc, dir = cfg->drill_dir]() -> caf::expected<drill_report> {
                           auto r = run_drill(nc, dir);
                           if (!r && is(r.error(), state_errc::not_found))
                             return drill_report{}; // fewer than two snapshots yet
                           return r;
                         });
    }
    // The primary.
    if (!opts.primary.empty()) {
      bool reachable = false;
      std::string where;
      for (const auto& n : opts.primary)
        if (accepts_connections(n.host, n.port,
                                std::min(opts.round, std::chrono::milliseconds{1000}))) {
          reachable = true;
          where = n.name;
          break;
        }
      now = clock_type::now();
      bool was_unreachable = watch.unreachable_for(now).count() > 0;
      bool promote = watch.observe(reachable, now);
      if (m.primary_reachable) {
        m.primary_reachable->set(reachable ? 1 : 0);
        m.primary_unreachable->set(
            std::chrono::duration<double>(watch.unreachable_for(now)).count());
      }
      if (!reachable && !was_unreachable)
        say("no node of the primary accepts connections");
      else if (reachable && was_unreachable)
        say("the primary is reachable again (node " + where + ")");
      if (automatic && promote) {
        if (drill.valid())
          finish_drill();
        say("the primary has been unreachable for " +
            std::to_string(watch.unreachable_for(now).count()) + " ms: promoting cluster " +
            nc.cluster.name);
        auto p = promote_site(nc);
        if (!p)
          return std::move(p.error());
        std::string line = "cluster " + nc.cluster.name + " takes " + training_job_path(nc) +
                           " over at committed step " + std::to_string(p->step) + " (" + p->when +
                           ")";
        say(line);
        if (opts.journal)
          opts.journal->job("promoted: " + line);
        result.promoted = *p;
        break;
      }
    }
    std::this_thread::sleep_until(now + opts.round);
  }
  if (drill.valid())
    finish_drill();
  return result;
}

} // namespace understudy::actors
