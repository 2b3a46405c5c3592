#include "understudy/actors/snapshot_shipping.hpp"

#include <algorithm>
#include <any>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/send.hpp>
#include <nlohmann/json.hpp>

#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/state/runtime.hpp"
#include "understudy/state/snapshot.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy::actors {

namespace {

using ship_atom = caf::atom_constant<caf::atom("us_ship")>;

caf::expected<std::any> parse_snapshots(config_table& t) {
  snapshots_config c;
  c.line = t.line();
  if (auto d = t.str("dir", true))
    c.dir = *d;
  if (auto e = t.duration("every", true))
    c.every = std::chrono::duration_cast<std::chrono::milliseconds>(*e);
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
  return std::any{std::move(c)};
}

/// Writes the newest committed step of `job` in `copy` to `cfg.dir` every
/// `cfg.every`, when it is newer than the last one written.
caf::behavior ship(caf::event_based_actor* self, std::shared_ptr<state_store> copy, std::string job,
                   snapshots_config cfg, std::string me, std::string cluster) {
  uint64_t shipped = 0;
  if (auto there = list_snapshots(cfg.dir); there && !there->empty())
    shipped = there->back().step;
  self->send(self, ship_atom::value);
  return {[=](ship_atom) mutable {
    if (auto p = read_promotion(cfg.dir); p && p->cluster != cluster) {
      // Another site took the job over: this one ships nothing more.
      std::printf(
          "node %s: %s was promoted to cluster %s at step %llu (%s): this cluster is "
          "superseded and ships no more snapshots\n",
          me.c_str(), cfg.dir.c_str(), p->cluster.c_str(), static_cast<unsigned long long>(p->step),
          p->when.c_str());
      std::fflush(stdout);
      self->quit();
      return;
    }
    self->delayed_send(self, cfg.every, ship_atom::value);
    auto newest = newest_committed_step(*copy, job);
    if (!newest || *newest <= shipped)
      return;
    auto say = [&](const std::string& line) {
      std::printf("node %s: %s\n", me.c_str(), line.c_str());
      std::fflush(stdout);
    };
    auto recs = read_committed_step_records(*copy, job, *newest);
    if (!recs) {
      say("snapshot of step " + std::to_string(*newest) +
          " not written: " + describe(recs.error()));
      return;
    }
    auto info =
        write_snapshot(*copy, cfg.dir, job, recs->fingerprint_hex(), recs->step, recs->paths);
    if (!info) {
      say("snapshot of step " + std::to_string(*newest) + " not written to " + cfg.dir + ": " +
          describe(info.error()));
      return;
    }
    shipped = info->step;
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
  explicit shipping_part(caf::actor tree) : tree_(std::move(tree)) {}
  ~shipping_part() override { caf::anon_send_exit(tree_, caf::exit_reason::user_shutdown); }

private:
  caf::actor tree_;
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
                                                        {"keep_every", "integer"}})
    s.keys.push_back(config_key{"snapshots", key, type});
  s.parse = parse_snapshots;
  return s;
}

const snapshots_config* snapshots_of(const node_config& nc) {
  return nc.section<snapshots_config>("snapshots");
}

caf::expected<std::unique_ptr<node_part>> attach_snapshot_shipping(cluster_node& node,
                                                                   const node_config& nc) {
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
  sc.retention.keep_last = 4;
  auto copy = state_store::open(sc);
  if (!copy)
    return make_error(config_errc::invalid_value,
                      "[snapshots] cannot open " + sc.directory + ": " + describe(copy.error()));
  auto store = *copy;
  supervisor_spec spec;
  spec.name = "snapshots";
  spec.children.push_back(worker(
      "gather", node.gatherer(store, job, std::min(cfg->every, std::chrono::milliseconds(1000)),
                              [store, job] {
                                auto newest = newest_committed_step(*store, job);
                                return newest ? *newest : uint64_t{0};
                              })));
  // Once superseded it stops for good (temporary: not restarted).
  auto shipper = worker("ship", ship, store, job, *cfg, node.self().name, nc.cluster.name);
  shipper.restart = restart_type::temporary;
  spec.children.push_back(std::move(shipper));
  auto tree = spawn_supervisor(node.agent().home_system(), std::move(spec));
  if (!tree)
    return std::move(tree.error());
  std::printf("node %s: ships snapshots of %s to %s every %lld ms\n", node.self().name.c_str(),
              job.c_str(), cfg->dir.c_str(), static_cast<long long>(cfg->every.count()));
  std::fflush(stdout);
  return std::unique_ptr<node_part>{std::make_unique<shipping_part>(*tree)};
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
  if (!p || p->cluster == nc.cluster.name)
    return {};
  return make_error(config_errc::invalid_value,
                    nc.origin + ": cluster " + nc.cluster.name +
                        " is superseded: its job moved to cluster " + p->cluster + " at step " +
                        std::to_string(p->step) + " (" + p->when + ", recorded in " + cfg->dir +
                        "/PROMOTED); it drives nothing");
}

caf::expected<snapshot_promotion> promote_site(const node_config& nc) {
  const auto* cfg = snapshots_of(nc);
  auto job_path = training_job_path(nc);
  if (cfg == nullptr || job_path.empty())
    return make_error(config_errc::missing_key,
                      nc.origin +
                          ": a promotion takes the [job] over from its [snapshots] "
                          "directory");
  if (auto p = read_promotion(cfg->dir); p && p->cluster != nc.cluster.name)
    return make_error(config_errc::invalid_value,
                      cfg->dir + " was promoted to cluster " + p->cluster + " already (step " +
                          std::to_string(p->step) + ", " + p->when + ")");
  auto tc = make_training_config(nc);
  if (!tc)
    return std::move(tc.error());
  char fp[17];
  std::snprintf(fp, sizeof fp, "%016llx", static_cast<unsigned long long>(fingerprint(*tc)));
  auto all = list_snapshots(cfg->dir);
  if (!all)
    return std::move(all.error());
  // The newest snapshot that verifies completely.
  std::string problems;
  for (auto it = all->rbegin(); it != all->rend(); ++it) {
    if (it->job != job_path || it->fingerprint != fp)
      return make_error(config_errc::invalid_value,
                        cfg->dir + " holds snapshots of another job (" + it->job +
                            ", fingerprint " + it->fingerprint + "); " + nc.origin + "'s job is " +
                            job_path + ", fingerprint " + fp);
    auto snap = read_snapshot(cfg->dir, it->name);
    if (!snap) {
      problems += " " + it->name + ": " + describe(snap.error()) + ";";
      continue;
    }
    for (const auto& n : nc.nodes) {
      if (n.role != node_role::active)
        continue;
      state_store_config sc;
      sc.directory = n.state_dir;
      auto store = state_store::open(sc);
      if (!store)
        return make_error(
            config_errc::invalid_value,
            "cannot open node " + n.name + "'s " + n.state_dir + ": " + describe(store.error()));
      if (auto err = import_snapshot(*snap, **store))
        return err;
    }
    return record_promotion(cfg->dir, nc.cluster.name, it->step);
  }
  return make_error(state_errc::not_found,
                    cfg->dir + " holds no snapshot that verifies:" + problems);
}

} // namespace understudy::actors
