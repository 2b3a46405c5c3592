#include "understudy/actors/snapshot_shipping.hpp"

#include <algorithm>
#include <any>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/after.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <nlohmann/json.hpp>

#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/metrics/metrics.hpp"
#include "understudy/state/runtime.hpp"
#include "understudy/state/snapshot.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy::actors {

namespace {

using ship_atom = caf::atom_constant<caf::atom("us_ship")>;

caf::expected<std::any> parse_snapshots(config_table& t) {
  using ms = std::chrono::milliseconds;
  snapshots_config c;
  c.line = t.line();
  if (auto d = t.str("dir", true))
    c.dir = *d;
  const bool every_set = t.has("every");
  if (auto e = t.duration("every", true))
    c.every = std::chrono::duration_cast<ms>(*e);
  if (t.has("rpo") && !t.is_integer("rpo") && !t.is_string("rpo")) {
    t.fail(config_errc::wrong_type, t.line_of("rpo"),
           "'rpo' in [snapshots] is a duration (\"30s\") or a number of steps (100)");
  } else if (t.is_integer("rpo")) {
    if (auto k = t.integer("rpo", 1, INT64_MAX))
      c.rpo_steps = static_cast<uint64_t>(*k);
  } else if (auto r = t.duration("rpo", true)) {
    c.rpo = std::chrono::duration_cast<ms>(*r);
    if (!every_set)
      c.every = std::min(c.every, std::max(ms{1}, c.rpo / 2));
    else if (c.every > c.rpo)
      t.fail(config_errc::invalid_value, t.line_of("every"),
             "[snapshots] every (" + std::to_string(c.every.count()) + " ms) is longer than rpo (" +
                 std::to_string(c.rpo.count()) +
                 " ms): the declared recovery point could not be held");
  }
  if (auto n = t.str("node")) {
    const auto& nodes = t.context().nodes();
    if (std::none_of(nodes.begin(), nodes.end(), [&](const node_spec& s) { return s.name == *n; }))
      t.fail(config_errc::unknown_node, t.line_of("node"),
             "[snapshots] node '" + *n + "' is not a node of the file");
    c.node = *n;
  } else {
    for (const auto& n : t.context().nodes())
      if (n.role == node_role::active) {
        c.node = n.name;
        break;
      }
  }
  if (auto k = t.integer("keep_last", 0, 1000000))
    c.keep_last = static_cast<uint64_t>(*k);
  if (auto k = t.integer("keep_every", 0, INT64_MAX))
    c.keep_every = static_cast<uint64_t>(*k);
  if (c.keep_every > 0 && c.keep_last == 0)
    t.fail(config_errc::invalid_value, t.line_of("keep_every"),
           "[snapshots] keep_every prunes only with keep_last (the newest snapshots to keep)");
  if (auto b = t.boolean("standby"))
    c.standby = *b;
  if (auto p = t.str("primary")) {
    std::filesystem::path path{*p};
    if (path.is_relative())
      path = std::filesystem::path{t.context().origin()}.parent_path() / path;
    c.primary = path.lexically_normal().string();
  }
  if (auto a = t.duration("promote_after", true))
    c.promote_after = std::chrono::duration_cast<ms>(*a);
  if (auto d = t.duration("drill_every", true))
    c.drill_every = std::chrono::duration_cast<ms>(*d);
  if (auto d = t.str("drill_dir"))
    c.drill_dir = *d;
  else if (!c.dir.empty())
    c.drill_dir = c.dir + "-drill";
  for (const char* key : {"primary", "promote_after", "drill_every", "drill_dir"})
    if (!c.standby && t.has(key))
      t.fail(config_errc::invalid_value, t.line_of(key),
             std::string{"[snapshots] "} + key +
                 " is a setting of a second site (standby = true), which `understudy standby` "
                 "runs");
  if (c.promote_after.count() > 0 && c.primary.empty())
    t.fail(config_errc::missing_key, t.line_of("promote_after"),
           "[snapshots] promote_after needs primary (the primary's node config file, whose "
           "nodes are probed)");
  return std::any{std::move(c)};
}

/// The shipping's metrics (all zero when the node serves none).
struct ship_metrics {
  std::shared_ptr<metric_gauge> shipped_step, behind_steps, behind_seconds, rpo_steps, rpo_seconds,
      last_ship_time;
  std::shared_ptr<metric_counter> snapshots, bytes, failures;
  /// When the oldest committed step not shipped was committed (system clock, ns since the
  /// epoch; 0: none waits), as of the shipper's last look: each scrape ages it to the moment.
  std::shared_ptr<std::atomic<int64_t>> oldest_waiting_ns =
      std::make_shared<std::atomic<int64_t>>(0);
};

ship_metrics make_ship_metrics(node_metrics* m, const snapshots_config& cfg) {
  ship_metrics out;
  if (m == nullptr)
    return out;
  out.shipped_step = m->add_gauge("understudy_dr_shipped_step",
                                  "The newest committed step shipped as a snapshot.");
  out.behind_steps = m->add_gauge(
      "understudy_dr_recovery_point_steps",
      "Committed steps not shipped yet: what losing the site now would lose, in steps.");
  out.behind_seconds = m->add_gauge(
      "understudy_dr_recovery_point_seconds",
      "How long the oldest committed step not shipped yet has waited (0: none waits).");
  out.rpo_steps =
      m->add_gauge("understudy_dr_rpo_steps", "The declared recovery point in steps (0: none).");
  out.rpo_seconds = m->add_gauge("understudy_dr_rpo_seconds",
                                 "The declared recovery point in seconds (0: none).");
  out.last_ship_time = m->add_gauge("understudy_dr_last_snapshot_timestamp_seconds",
                                    "When the newest snapshot was shipped (Unix time).");
  out.snapshots = m->add_counter("understudy_dr_snapshots_total", "Snapshots shipped.");
  out.bytes = m->add_counter("understudy_dr_shipped_bytes_total",
                             "Bytes written to the snapshot directory (new objects only).");
  out.failures = m->add_counter("understudy_dr_ship_failures_total",
                                "Rounds whose snapshot could not be written.");
  m->on_scrape([gauge = out.behind_seconds, oldest = out.oldest_waiting_ns] {
    auto at = oldest->load();
    auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    gauge->set(at == 0 || now <= at ? 0.0 : static_cast<double>(now - at) / 1e9);
  });
  out.rpo_steps->set(static_cast<double>(cfg.rpo_steps));
  out.rpo_seconds->set(std::chrono::duration<double>(cfg.rpo).count());
  return out;
}

/// The node a superseded site stops, while it exists (the part clears it).
struct node_handle {
  std::mutex mtx;
  cluster_node* node = nullptr;
};

/// How often the shipper looks at the copy (and the gatherer asks the nodes): a quarter of a
/// duration rpo, 100 ms with an rpo in steps, at most a second.
std::chrono::milliseconds ship_tick(const snapshots_config& cfg) {
  using ms = std::chrono::milliseconds;
  auto tick = std::min(cfg.every, ms{1000});
  if (cfg.rpo.count() > 0)
    tick = std::min(tick, cfg.rpo / 4);
  // A recovery point in steps: the job's pace is unknown, so look often (a job of 1,000
  // steps/s is then at most about 100 steps behind before the gathering and the shipping).
  if (cfg.rpo_steps > 0)
    tick = std::min(tick, ms{100});
  return std::max(tick, ms{20});
}

/// Writes the newest committed step of `job` in `copy` to `cfg.dir` every
/// `cfg.every`, or sooner when the recovery point reaches half the rpo.
caf::behavior ship(caf::event_based_actor* self, std::shared_ptr<state_store> copy, std::string job,
                   snapshots_config cfg, std::string me, std::string cluster,
                   std::shared_ptr<node_handle> handle, ship_metrics metrics) {
  using clock = std::chrono::steady_clock;
  auto rp = std::make_shared<recovery_point>();
  if (auto there = list_snapshots(cfg.dir); there && !there->empty())
    rp->shipped(there->back().step);
  auto last_ship = std::make_shared<clock::time_point>(clock::now());
  auto over_rpo = std::make_shared<bool>(false);
  const auto tick = ship_tick(cfg);
  auto say = [me](const std::string& line) {
    std::printf("node %s: %s\n", me.c_str(), line.c_str());
    std::fflush(stdout);
  };
  self->send(self, ship_atom::value);
  return {[=](ship_atom) {
    if (auto p = read_promotion(cfg.dir); p && p->cluster != cluster) {
      // Another site took the job over: this one drives nothing more.
      say(cfg.dir + " was promoted to cluster " + p->cluster + " at step " +
          std::to_string(p->step) + " (" + p->when +
          "): this cluster is superseded; it ships nothing more and stops");
      std::lock_guard<std::mutex> guard{handle->mtx};
      if (handle->node != nullptr) {
        handle->node->stop_peers();
        handle->node->request_stop();
      }
      self->quit();
      return;
    }
    self->delayed_send(self, tick, ship_atom::value);
    auto now = clock::now();
    auto wall = std::chrono::system_clock::now();
    auto newest = newest_committed_step(*copy, job);
    // Every committed step the copy holds past the shipped one, with its commit time.
    if (auto vs = copy->versions(job + "/trainer"))
      for (const auto& v : *vs)
        if (v.problem.empty() && newest && v.step <= *newest)
          rp->committed(v.step, v.created);
    auto report = [&] {
      if (metrics.behind_steps) {
        metrics.behind_steps->set(static_cast<double>(rp->behind_steps()));
        metrics.behind_seconds->set(std::chrono::duration<double>(rp->behind(wall)).count());
        auto oldest = rp->oldest_waiting();
        metrics.oldest_waiting_ns->store(
            oldest
                ? std::chrono::duration_cast<std::chrono::nanoseconds>(oldest->time_since_epoch())
                      .count()
                : 0);
        metrics.shipped_step->set(static_cast<double>(rp->shipped_step()));
      }
      bool over = (cfg.rpo_steps > 0 && rp->behind_steps() > cfg.rpo_steps) ||
                  (cfg.rpo.count() > 0 && rp->behind(wall) > cfg.rpo);
      if (over && !*over_rpo)
        say("the recovery point is behind its rpo: " + std::to_string(rp->behind_steps()) +
            " steps, " + std::to_string(rp->behind(wall).count()) + " ms not shipped");
      *over_rpo = over;
    };
    bool due = now - *last_ship >= cfg.every ||
               (cfg.rpo_steps > 0 && 2 * rp->behind_steps() >= cfg.rpo_steps) ||
               (cfg.rpo.count() > 0 && 2 * rp->behind(wall) >= cfg.rpo);
    if (!newest || *newest <= rp->shipped_step() || !due) {
      report();
      return;
    }
    *last_ship = now;
    auto fail = [&](const std::string& line) {
      say(line);
      if (metrics.failures)
        metrics.failures->increment();
      report();
    };
    // The newest committed step whose every record (trainer, shards, loaders) the copy
    // holds: the gatherer may have a step's trainer and shards before its loaders, and the
    // copy's retention may drop a step meanwhile; then an older one goes now.
    auto recs = read_committed_step_records(*copy, job, *newest);
    for (uint64_t below = *newest, tries = 0; !recs && is(recs.error(), state_errc::not_found) &&
                                              below > rp->shipped_step() + 1 && tries < 8;
         ++tries) {
      auto older = newest_committed_step(*copy, job, below - 1);
      if (!older || *older <= rp->shipped_step())
        break;
      below = *older;
      recs = read_committed_step_records(*copy, job, *older);
    }
    if (!recs && is(recs.error(), state_errc::not_found)) {
      // No step newer than the shipped one is complete in the copy yet: not a failure, the
      // gathering is behind (the recovery point, and its alert, show how far).
      *last_ship = now - cfg.every; // due again at the next tick
      report();
      return;
    }
    if (!recs)
      return fail("snapshot of step " + std::to_string(*newest) +
                  " not written: " + describe(recs.error()));
    auto info =
        write_snapshot(*copy, cfg.dir, job, recs->fingerprint_hex(), recs->step, recs->paths);
    if (!info && is(info.error(), state_errc::not_found)) {
      // The copy's retention dropped a record of the step while it was written (the
      // gathering moves on meanwhile): the next tick ships a newer one.
      *last_ship = now - cfg.every;
      report();
      return;
    }
    if (!info)
      return fail("snapshot of step " + std::to_string(*newest) + " not written to " + cfg.dir +
                  ": " + describe(info.error()));
    rp->shipped(info->step);
    if (metrics.snapshots) {
      metrics.snapshots->increment();
      metrics.bytes->increment(static_cast<double>(info->new_bytes));
      metrics.last_ship_time->set(
          std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
              .count());
    }
    report();
    say("snapshot " + info->name + " of " + job + " shipped to " + cfg.dir + ": " +
        std::to_string(info->records) + " records, " + std::to_string(info->new_bytes) +
        " new bytes");
    if (cfg.keep_last > 0) {
      auto pruned = prune_snapshots(cfg.dir, cfg.keep_last, cfg.keep_every);
      if (!pruned)
        say("snapshots in " + cfg.dir + " not pruned: " + describe(pruned.error()));
    }
  }};
}

/// The shipping node's part: its supervisor goes with it.
class shipping_part : public node_part {
public:
  shipping_part(caf::actor tree, std::shared_ptr<node_handle> handle)
      : tree_(std::move(tree)), handle_(std::move(handle)) {}
  ~shipping_part() override {
    {
      std::lock_guard<std::mutex> guard{handle_->mtx};
      handle_->node = nullptr;
    }
    // A ship under way (a snapshot written, then the oldest pruned to keep_last) ends before
    // the tree handles the exit: wait for it, so that a node that stops leaves no extra
    // snapshot behind (bounded: a stuck write does not hold the node's exit forever).
    caf::scoped_actor self{tree_.home_system()};
    self->monitor(tree_);
    self->send_exit(tree_, caf::exit_reason::user_shutdown);
    self->receive([](const caf::down_msg&) {}, caf::after(std::chrono::seconds(30)) >> [] {});
  }

private:
  caf::actor tree_;
  std::shared_ptr<node_handle> handle_;
};

} // namespace

config_section snapshots_section() {
  config_section s;
  s.name = "snapshots";
  for (const auto& [key, type] :
       std::vector<std::pair<const char*, const char*>>{{"dir", "string"},
                                                        {"every", "duration"},
                                                        {"node", "string"},
                                                        {"keep_last", "integer"},
                                                        {"keep_every", "integer"},
                                                        {"rpo", "duration or integer"},
                                                        {"standby", "boolean"},
                                                        {"primary", "string"},
                                                        {"promote_after", "duration"},
                                                        {"drill_every", "duration"},
                                                        {"drill_dir", "string"}})
    s.keys.push_back(config_key{"snapshots", key, type});
  s.parse = parse_snapshots;
  return s;
}

const snapshots_config* snapshots_of(const node_config& nc) {
  return nc.section<snapshots_config>("snapshots");
}

void recovery_point::committed(uint64_t step, time_point at) {
  if (step <= shipped_)
    return;
  newest_ = std::max(newest_, step);
  waiting_.emplace(step, at);
}

void recovery_point::shipped(uint64_t step) {
  if (step <= shipped_)
    return;
  shipped_ = step;
  newest_ = std::max(newest_, step);
  waiting_.erase(waiting_.begin(), waiting_.upper_bound(step));
}

std::optional<recovery_point::time_point> recovery_point::oldest_waiting() const {
  if (waiting_.empty())
    return std::nullopt;
  // The oldest commit time among the waiting steps (clocks of several nodes: not monotonic
  // in the step).
  auto oldest = waiting_.begin()->second;
  for (const auto& [step, at] : waiting_)
    oldest = std::min(oldest, at);
  return oldest;
}

std::chrono::milliseconds recovery_point::behind(time_point now) const {
  auto oldest = oldest_waiting();
  if (!oldest || now <= *oldest)
    return std::chrono::milliseconds{0};
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - *oldest);
}

caf::expected<std::unique_ptr<node_part>> attach_snapshot_shipping(cluster_node& node,
                                                                   const node_config& nc,
                                                                   node_metrics* metrics) {
  const auto* cfg = snapshots_of(nc);
  if (cfg == nullptr || cfg->node != node.self().name)
    return std::make_unique<node_part>();
  auto job = training_job_path(nc);
  if (job.empty())
    return make_error(config_errc::missing_key,
                      nc.origin + ":" + std::to_string(cfg->line) +
                          ": [snapshots] ships a training job's committed steps; the file has "
                          "no [job]");
  state_store_config sc;
  sc.directory = (std::filesystem::path{node.self().state_dir} / "snapshot-copy").string();
  sc.mode = durability::none; // a copy: gathered again after a restart
  sc.retention.keep_last = 8;
  auto copy = state_store::open(sc);
  if (!copy)
    return make_error(config_errc::invalid_value,
                      "[snapshots] cannot open " + sc.directory + ": " + describe(copy.error()));
  auto store = *copy;
  supervisor_spec spec;
  spec.name = "snapshots";
  spec.children.push_back(worker("gather", node.gatherer(store, job, ship_tick(*cfg), [store, job] {
    auto newest = newest_committed_step(*store, job);
    return newest ? *newest : uint64_t{0};
  })));
  // Once superseded it stops for good (temporary: not restarted).
  auto handle = std::make_shared<node_handle>();
  handle->node = &node;
  auto shipper = worker<caf::detached>("ship", ship, store, job, *cfg, node.self().name,
                                       nc.cluster.name, handle, make_ship_metrics(metrics, *cfg));
  shipper.restart = restart_type::temporary;
  spec.children.push_back(std::move(shipper));
  auto tree = spawn_supervisor(node.agent().home_system(), std::move(spec));
  if (!tree)
    return std::move(tree.error());
  std::printf("node %s: ships snapshots of %s to %s every %lld ms\n", node.self().name.c_str(),
              job.c_str(), cfg->dir.c_str(), static_cast<long long>(cfg->every.count()));
  std::fflush(stdout);
  return std::unique_ptr<node_part>{std::make_unique<shipping_part>(*tree, std::move(handle))};
}

namespace {

/// The job's supervision spec nested under supervisors named after the
/// leading parts of `path` (e.g. "/root/job": a "root" supervisor holding
/// the job as "job"), so that its actors' paths are those of its records.
caf::expected<supervisor_spec> spec_at(const training_job& job, const std::string& path) {
  std::vector<std::string> parts;
  for (size_t at = 1; at <= path.size();) {
    auto slash = path.find('/', at);
    parts.push_back(path.substr(at, slash == std::string::npos ? std::string::npos : slash - at));
    at = slash == std::string::npos ? path.size() + 1 : slash + 1;
  }
  if (parts.empty() || std::any_of(parts.begin(), parts.end(), [](auto& p) { return p.empty(); }))
    return make_error(config_errc::invalid_value, "no job path '" + path + "'");
  auto spec = job.spec(parts.back());
  for (size_t i = parts.size() - 1; i-- > 0;) {
    supervisor_spec outer;
    outer.name = parts[i];
    outer.children.push_back(supervisor_child(std::move(spec)));
    spec = std::move(outer);
  }
  return spec;
}

/// Imports snapshot `name` of `dir` into a fresh store at `into`.
caf::error import_into(const std::string& dir, const std::string& name, const std::string& into) {
  auto snap = read_snapshot(dir, name);
  if (!snap)
    return std::move(snap.error());
  state_store_config sc;
  sc.directory = into;
  sc.mode = durability::none;
  auto store = state_store::open(sc);
  if (!store)
    return std::move(store.error());
  return import_snapshot(*snap, **store);
}

} // namespace

caf::expected<drill_report> run_drill(const node_config& nc, const std::string& scratch) {
  using ms = std::chrono::milliseconds;
  const auto* cfg = snapshots_of(nc);
  auto job_path = training_job_path(nc);
  if (cfg == nullptr || job_path.empty())
    return make_error(config_errc::missing_key,
                      nc.origin + ": a drill restores the [job] from its [snapshots] directory");
  auto all = list_snapshots(cfg->dir);
  if (!all)
    return std::move(all.error());
  if (all->size() < 2)
    return make_error(state_errc::not_found,
                      cfg->dir + " holds " + std::to_string(all->size()) +
                          " snapshot(s); a drill replays from one to the next and needs two");
  const auto& older = (*all)[all->size() - 2];
  const auto& newer = all->back();
  drill_report out;
  out.restored_step = older.step;
  out.compared_step = newer.step;
  auto t0 = std::chrono::steady_clock::now();
  // The scratch directory is emptied first: only one a drill made (or an
  // empty or new one), never a directory holding anything else.
  std::error_code ec;
  if (std::filesystem::exists(scratch, ec)) {
    for (const auto& e : std::filesystem::directory_iterator(scratch, ec)) {
      auto name = e.path().filename().string();
      if (name != "restored" && name != "shipped")
        return make_error(config_errc::invalid_value,
                          "the drill's scratch directory " + scratch + " holds " + name +
                              ", which a drill did not write; name an empty or new directory");
    }
    std::filesystem::remove_all(scratch + "/restored", ec);
    std::filesystem::remove_all(scratch + "/shipped", ec);
  }
  const auto restored = scratch + "/restored";
  const auto shipped = scratch + "/shipped";
  // Both verified completely on the way in.
  if (auto err = import_into(cfg->dir, older.name, restored))
    return err;
  if (auto err = import_into(cfg->dir, newer.name, shipped))
    return err;
  auto tc = make_training_config(nc);
  if (!tc)
    return std::move(tc.error());
  auto net = tc->net;
  {
    state_store_config sc;
    sc.directory = shipped;
    sc.read_only = true;
    auto store = state_store::open(sc);
    if (!store)
      return std::move(store.error());
    auto params = read_committed_parameters(**store, job_path, *net, newer.step);
    if (!params)
      return std::move(params.error());
    out.shipped_digest = params_digest(params->params.data(), params->params.size());
  }
  out.restore_time = std::chrono::duration_cast<ms>(std::chrono::steady_clock::now() - t0);
  // The replay: the job from the older step to the newer one, as the primary ran it.
  auto t1 = std::chrono::steady_clock::now();
  tc->faults.clear();
  tc->steps = newer.step;
  runtime_config rc;
  rc.log_events = false;
  runtime rt{rc};
  state_store_config sc;
  sc.directory = restored;
  auto p = rt.open_state(sc);
  if (!p)
    return std::move(p.error());
  auto job = training_job::create(std::move(*tc), *p);
  if (!job)
    return std::move(job.error());
  auto spec = spec_at(*job, job_path);
  if (!spec)
    return std::move(spec.error());
  auto tree = rt.start(std::move(*spec));
  if (!tree)
    return std::move(tree.error());
  auto result = job->wait(std::chrono::minutes(30));
  rt.stop(*tree);
  if (!result)
    return std::move(result.error());
  out.replayed_digest = result->params_digest;
  out.replay_time = std::chrono::duration_cast<ms>(std::chrono::steady_clock::now() - t1);
  return out;
}

caf::error check_not_superseded(const node_config& nc) {
  const auto* cfg = snapshots_of(nc);
  if (cfg == nullptr)
    return {};
  auto p = read_promotion(cfg->dir);
  if (cfg->standby && (!p || p->cluster != nc.cluster.name))
    return make_error(config_errc::invalid_value,
                      nc.origin + ": cluster " + nc.cluster.name +
                          " is a standby site ([snapshots] standby = true): it trains once "
                          "promoted (`understudy promote`, or `understudy standby` when the "
                          "primary is lost), not before");
  if (!p || p->cluster == nc.cluster.name)
    return {};
  return make_error(config_errc::invalid_value,
                    nc.origin + ": cluster " + nc.cluster.name +
                        " is superseded: its job moved to cluster " + p->cluster + " at step " +
                        std::to_string(p->step) + " (" + p->when + ", recorded in " + cfg->dir +
                        "/PROMOTED); it drives nothing");
}

caf::expected<snapshot_info> import_into_cluster(const node_config& nc, const std::string& dir,
                                                 uint64_t step, uint64_t* resharded_step) {
  auto job_path = training_job_path(nc);
  if (job_path.empty())
    return make_error(config_errc::missing_key,
                      nc.origin +
                          ": an import into a cluster fills its [job]'s nodes; the file "
                          "has no [job]");
  auto tc = make_training_config(nc);
  if (!tc)
    return std::move(tc.error());
  char fp[17];
  std::snprintf(fp, sizeof fp, "%016llx", static_cast<unsigned long long>(fingerprint(*tc)));
  auto all = list_snapshots(dir);
  if (!all)
    return std::move(all.error());
  // The snapshot asked for, or the newest that verifies completely.
  std::string problems;
  for (auto it = all->rbegin(); it != all->rend(); ++it) {
    if (step != 0 && it->step != step)
      continue;
    if (it->job != job_path || it->fingerprint != fp)
      return make_error(config_errc::invalid_value,
                        dir + " holds snapshots of another job (" + it->job + ", fingerprint " +
                            it->fingerprint + "); " + nc.origin + "'s job is " + job_path +
                            ", fingerprint " + fp);
    auto snap = read_snapshot(dir, it->name);
    if (!snap) {
      if (step != 0)
        return std::move(snap.error());
      problems += " " + it->name + ": " + describe(snap.error()) + ";";
      continue;
    }
    // Every active node gets the whole step; with other counts of shards or
    // loaders than the snapshot's, each reshards it alike in its own store.
    for (const auto& n : nc.nodes) {
      if (n.role != node_role::active)
        continue;
      runtime_config rc; // one store per runtime: one per node
      rc.log_events = false;
      runtime rt{rc};
      state_store_config sc;
      sc.directory = n.state_dir;
      auto p = rt.open_state(sc);
      if (!p)
        return make_error(config_errc::invalid_value, "cannot open node " + n.name + "'s " +
                                                          n.state_dir + ": " + describe(p.error()));
      if (auto err = import_snapshot(*snap, *p->store))
        return err;
      auto job = training_job::create(*tc, *p);
      if (!job)
        return std::move(job.error());
      auto resharded = job->reshard_stored(job_path);
      if (!resharded)
        return make_error(state_errc::not_found,
                          "node " + n.name + ": cannot reshard " + snap->info.name +
                              " for this job's counts: " + describe(resharded.error()));
      if (resharded_step != nullptr)
        *resharded_step = *resharded;
    }
    return snap->info;
  }
  if (step != 0)
    return make_error(state_errc::not_found,
                      dir + " holds no snapshot of step " + std::to_string(step));
  return make_error(state_errc::not_found, dir + " holds no snapshot that verifies:" + problems);
}

caf::expected<snapshot_promotion> promote_site(const node_config& nc) {
  const auto* cfg = snapshots_of(nc);
  if (cfg == nullptr || training_job_path(nc).empty())
    return make_error(config_errc::missing_key,
                      nc.origin +
                          ": a promotion takes the [job] over from its [snapshots] "
                          "directory");
  if (auto p = read_promotion(cfg->dir); p && p->cluster != nc.cluster.name)
    return make_error(config_errc::invalid_value,
                      cfg->dir + " was promoted to cluster " + p->cluster + " already (step " +
                          std::to_string(p->step) + ", " + p->when + ")");
  auto info = import_into_cluster(nc, cfg->dir);
  if (!info)
    return std::move(info.error());
  return record_promotion(cfg->dir, nc.cluster.name, info->step);
}

} // namespace understudy::actors
