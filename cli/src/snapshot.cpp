#include "snapshot.hpp"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "inspect.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/actors/snapshot_shipping.hpp"
#include "understudy/actors/standby.hpp"
#include "understudy/actors/training_component.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/metrics/metrics.hpp"
#include "understudy/node/event_journal.hpp"
#include "understudy/node/node.hpp"
#include "understudy/serving/serving_component.hpp"
#include "understudy/state/snapshot.hpp"
#include "understudy/state/state_store.hpp"

namespace understudy::cli {

namespace {

/// 1 for damaged data, 2 for the rest.
int code_of(const caf::error& err) {
  return is(err, state_errc::corrupt_record) || is(err, state_errc::truncated_chunk) ? exit_corrupt
                                                                                     : exit_failure;
}

int run_export(const snapshot_options& o, std::ostream& out, std::ostream& err) {
  const std::string prog = "understudy snapshot export: ";
  std::error_code ec;
  if (!std::filesystem::is_directory(o.first, ec)) {
    err << prog << "no state directory '" << o.first << "'\n";
    return exit_failure;
  }
  state_store_config sc;
  sc.directory = o.first;
  sc.read_only = true; // next to a job that is still writing it
  auto store = state_store::open(sc);
  if (!store) {
    err << prog << "cannot open '" << o.first << "': " << describe(store.error()) << '\n';
    return exit_failure;
  }
  auto recs = actors::read_committed_step_records(**store, o.job, o.step);
  if (!recs) {
    err << prog << o.first << ": " << describe(recs.error()) << '\n';
    return code_of(recs.error());
  }
  auto info =
      write_snapshot(**store, o.second, o.job, recs->fingerprint_hex(), recs->step, recs->paths);
  if (!info) {
    err << prog << describe(info.error()) << '\n';
    return code_of(info.error());
  }
  out << "snapshot " << info->name << " of " << info->job << " (fingerprint " << info->fingerprint
      << "): " << info->records << " records, " << format_bytes(info->bytes) << ", "
      << format_bytes(info->new_bytes) << " new in " << o.second << '\n';
  return exit_ok;
}

int run_import_cluster(const snapshot_options& o, std::ostream& out, std::ostream& err) {
  const std::string prog = "understudy snapshot import: ";
  auto nc = load_config(o.cluster, {actors::training_component(), serving::serving_component()});
  if (!nc) {
    err << prog << describe(nc.error()) << "; nothing imported\n";
    return exit_failure;
  }
  // Its stores are written: only while none of its nodes runs.
  for (const auto& n : nc->nodes)
    if (actors::accepts_connections(n.host, n.port, std::chrono::seconds(1))) {
      err << prog << "node " << n.name << " of " << o.cluster << " runs (" << n.host << ":"
          << n.port << " accepts connections): stop the cluster first; nothing imported\n";
      return exit_failure;
    }
  uint64_t resharded = 0;
  auto info = actors::import_into_cluster(*nc, o.first, o.step, &resharded);
  if (!info) {
    err << prog << describe(info.error())
        << " (the nodes before it may hold the step now: an import writes copies only and "
           "may be run again)\n";
    return code_of(info.error());
  }
  out << "imported " << info->name << " of " << info->job << " (" << info->records
      << " records, every checksum verified) into every active node of " << o.cluster
      << "; understudy launch " << o.cluster << " resumes it from step " << info->step << '\n';
  if (resharded != 0)
    out << "resharded step " << resharded
        << " on every node for the counts of shards and "
           "loaders of "
        << o.cluster << '\n';
  return exit_ok;
}

int run_import(const snapshot_options& o, std::ostream& out, std::ostream& err) {
  const std::string prog = "understudy snapshot import: ";
  if (!o.cluster.empty() && !o.second.empty()) {
    err << prog << "name a STATE_DIR or --cluster FILE, not both\n";
    return exit_failure;
  }
  if (!o.cluster.empty())
    return run_import_cluster(o, out, err);
  if (o.second.empty()) {
    err << prog << "name the STATE_DIR to fill, or --cluster FILE\n";
    return exit_failure;
  }
  // Every byte is verified before anything is written.
  auto snap = read_snapshot(o.first, o.step == 0 ? "" : "step-" + std::to_string(o.step));
  if (!snap) {
    err << prog << describe(snap.error()) << "; nothing imported\n";
    return code_of(snap.error());
  }
  state_store_config sc;
  sc.directory = o.second;
  auto store = state_store::open(sc);
  if (!store) {
    err << prog << "cannot open '" << o.second << "': " << describe(store.error()) << '\n';
    return exit_failure;
  }
  // A state directory of another job is refused (one of this job takes the
  // snapshot beside its own steps).
  const auto& job = snap->info.job;
  auto versions = (*store)->versions(job + "/trainer");
  if (versions && !versions->empty()) {
    auto there = actors::read_committed_step_records(**store, job, 0);
    if (there && there->fingerprint_hex() != snap->info.fingerprint) {
      err << prog << o.second << " holds another job at " << job << " (fingerprint "
          << there->fingerprint_hex() << ", the snapshot's " << snap->info.fingerprint
          << "); nothing imported\n";
      return exit_failure;
    }
  }
  // As copies: a version already stored is never replaced with other
  // contents, and nothing newer is removed.
  if (auto e = import_snapshot(*snap, **store)) {
    err << prog << describe(e) << " (the records that did not conflict are stored)\n";
    return exit_failure;
  }
  out << "imported " << snap->info.name << " of " << job << " (" << snap->info.records
      << " records, every checksum verified) into " << o.second << '\n';
  return exit_ok;
}

int run_list(const snapshot_options& o, std::ostream& out, std::ostream& err) {
  auto all = list_snapshots(o.first);
  if (!all) {
    err << "understudy snapshot list: " << describe(all.error()) << '\n';
    return code_of(all.error());
  }
  if (o.json) {
    for (const auto& s : *all)
      out << nlohmann::json{{"name", s.name},
                            {"job", s.job},
                            {"fingerprint", s.fingerprint},
                            {"step", s.step},
                            {"records", s.records},
                            {"bytes", s.bytes},
                            {"new_bytes", s.new_bytes},
                            {"created", s.created}}
                 .dump()
          << '\n';
    return exit_ok;
  }
  uint64_t stored = 0;
  out << "SNAPSHOT            STEP  RECORDS       SIZE        NEW  CREATED\n";
  for (const auto& s : *all) {
    char line[256];
    std::snprintf(line, sizeof line, "%-16s %7llu %8zu %10s %10s  %s\n", s.name.c_str(),
                  static_cast<unsigned long long>(s.step), s.records, format_bytes(s.bytes).c_str(),
                  format_bytes(s.new_bytes).c_str(), s.created.c_str());
    out << line;
    stored += s.new_bytes;
  }
  out << all->size() << " snapshots";
  if (!all->empty())
    out << " of " << all->front().job << " (fingerprint " << all->front().fingerprint << ")";
  out << ", " << format_bytes(stored) << " stored\n";
  return exit_ok;
}

int run_verify(const snapshot_options& o, std::ostream& out, std::ostream& err) {
  auto problems = verify_snapshots(o.first, o.step == 0 ? "" : "step-" + std::to_string(o.step));
  if (!problems) {
    err << "understudy snapshot verify: " << describe(problems.error()) << '\n';
    return code_of(problems.error());
  }
  for (const auto& p : *problems)
    err << "understudy snapshot verify: " << p << '\n';
  if (!problems->empty())
    return exit_corrupt;
  out << "every snapshot checked verifies\n";
  return exit_ok;
}

int run_prune(const snapshot_options& o, std::ostream& out, std::ostream& err) {
  auto r = prune_snapshots(o.first, static_cast<size_t>(o.keep_last), o.keep_every);
  if (!r) {
    err << "understudy snapshot prune: " << describe(r.error()) << '\n';
    return code_of(r.error());
  }
  out << "removed " << r->removed.size() << " snapshots";
  for (const auto& n : r->removed)
    out << " " << n;
  out << "; " << r->objects_removed << " objects (" << format_bytes(r->bytes_removed)
      << ") no kept snapshot used\n";
  return exit_ok;
}

} // namespace

CLI::App* add_snapshot_command(CLI::App& app, snapshot_options& opts) {
  auto* sub = app.add_subcommand(
      "snapshot",
      "portable snapshots of a training job's committed steps: export, import, list, "
      "verify, prune");
  sub->require_subcommand(1);
  sub->footer(
      "Exits 0 on success, 1 when a snapshot or record is damaged (each problem named on "
      "stderr), 2 for usage errors, another job's snapshot and I/O failures.");
  auto* ex = sub->add_subcommand(
      "export",
      "write a committed step of the job in STATE_DIR to SNAPSHOT_DIR (only the chunks "
      "no earlier snapshot there holds)");
  ex->add_option("STATE_DIR", opts.first, "the job's state directory (it may still be training)")
      ->required();
  ex->add_option("SNAPSHOT_DIR", opts.second, "the snapshot directory (created if missing)")
      ->required();
  ex->add_option("--job", opts.job, "the job's path in the state directory")->capture_default_str();
  ex->add_option("--step", opts.step, "the committed step (default: the newest)");
  ex->callback([&opts] { opts.action = "export"; });
  auto* im = sub->add_subcommand(
      "import",
      "verify a snapshot completely, then write it into STATE_DIR, from which the job "
      "resumes");
  im->add_option("SNAPSHOT_DIR", opts.first, "the snapshot directory")->required();
  im->add_option("STATE_DIR", opts.second, "the state directory to fill (created if missing)");
  im->add_option("--cluster", opts.cluster,
                 "instead, fill every active node of the (stopped) cluster of this node config "
                 "file, whose [job] must be the snapshot's");
  im->add_option("--step", opts.step,
                 "the snapshot's step (default: the newest; with --cluster, the newest that "
                 "verifies)");
  im->callback([&opts] { opts.action = "import"; });
  auto* ls = sub->add_subcommand("list", "list the snapshots of SNAPSHOT_DIR with their sizes");
  ls->add_option("SNAPSHOT_DIR", opts.first, "the snapshot directory")->required();
  ls->add_flag("--json", opts.json, "one JSON object per snapshot");
  ls->callback([&opts] { opts.action = "list"; });
  auto* ve = sub->add_subcommand("verify", "verify every file of the snapshots in SNAPSHOT_DIR");
  ve->add_option("SNAPSHOT_DIR", opts.first, "the snapshot directory")->required();
  ve->add_option("--step", opts.step, "only the snapshot of this step");
  ve->callback([&opts] { opts.action = "verify"; });
  auto* pr = sub->add_subcommand(
      "prune",
      "keep the newest snapshots and every K-th, remove the others and what only they "
      "used");
  pr->add_option("SNAPSHOT_DIR", opts.first, "the snapshot directory")->required();
  pr->add_option("--keep-last", opts.keep_last, "keep the newest N snapshots (at least 1)")
      ->required();
  pr->add_option("--keep-every", opts.keep_every,
                 "also keep every snapshot whose step is a "
                 "multiple of K");
  pr->callback([&opts] { opts.action = "prune"; });
  return sub;
}

int run_snapshot(const snapshot_options& opts, std::ostream& out, std::ostream& err) {
  if (opts.action == "export")
    return run_export(opts, out, err);
  if (opts.action == "import")
    return run_import(opts, out, err);
  if (opts.action == "list")
    return run_list(opts, out, err);
  if (opts.action == "verify")
    return run_verify(opts, out, err);
  if (opts.action == "prune")
    return run_prune(opts, out, err);
  err << "understudy snapshot: export, import, list, verify or prune\n";
  return exit_failure;
}

CLI::App* add_drill_command(CLI::App& app, drill_options& opts) {
  auto* sub = app.add_subcommand(
      "drill",
      "restore the job of FILE from its [snapshots] directory and check that replaying "
      "from the next-newest snapshot reproduces the newest bit for bit");
  sub->footer(
      "Exits 0 when the replay matches, 1 when it does not or a snapshot file is damaged, "
      "2 for usage errors and failures to run.");
  sub->add_option("FILE", opts.file, "the node config file with [job] and [snapshots]")->required();
  sub->add_option("--scratch", opts.scratch,
                  "where the restore goes (emptied first; default: DIR-drill beside the "
                  "snapshot directory DIR)");
  return sub;
}

int run_drill(const drill_options& opts, std::ostream& out, std::ostream& err) {
  const std::string prog = "understudy drill: ";
  auto nc = load_config(opts.file, {actors::training_component(), serving::serving_component()});
  if (!nc) {
    err << prog << describe(nc.error()) << '\n';
    return exit_failure;
  }
  const auto* snaps = actors::snapshots_of(*nc);
  if (snaps == nullptr) {
    err << prog << opts.file << " has no [snapshots] to restore from\n";
    return exit_failure;
  }
  auto scratch = opts.scratch.empty() ? snaps->dir + "-drill" : opts.scratch;
  auto report = actors::run_drill(*nc, scratch);
  if (!report) {
    err << prog << describe(report.error()) << '\n';
    return code_of(report.error());
  }
  char line[512];
  std::snprintf(line, sizeof line,
                "drill: restored step %llu from %s (every file verified) in %lld ms, replayed to "
                "step %llu in %lld ms: parameters %016llx, shipped step %llu %016llx: %s\n",
                static_cast<unsigned long long>(report->restored_step), snaps->dir.c_str(),
                static_cast<long long>(report->restore_time.count()),
                static_cast<unsigned long long>(report->compared_step),
                static_cast<long long>(report->replay_time.count()),
                static_cast<unsigned long long>(report->replayed_digest),
                static_cast<unsigned long long>(report->compared_step),
                static_cast<unsigned long long>(report->shipped_digest),
                report->passed() ? "bit-exact, passed" : "DIFFERENT, failed");
  (report->passed() ? out : err) << line;
  return report->passed() ? exit_ok : exit_corrupt;
}

namespace {

/// The nodes of the primary's file (only their addresses are needed: parsed
/// without the components' checks, which a superseded file would fail).
caf::expected<std::vector<actors::primary_node>> primary_nodes(const std::string& file,
                                                               const node_components& components) {
  node_config_options popts;
  for (const auto& c : components)
    c->prepare_loading(popts);
  auto primary = load_node_config(file, popts);
  if (!primary)
    return std::move(primary.error());
  std::vector<actors::primary_node> out;
  for (const auto& n : primary->nodes)
    out.push_back(actors::primary_node{n.name, n.host, n.port});
  return out;
}

/// Parsed without checks: [snapshots] primary of `file`, if it names one.
std::string configured_primary(const std::string& file, const node_components& components) {
  node_config_options opts;
  for (const auto& c : components)
    c->prepare_loading(opts);
  auto nc = load_node_config(file, opts);
  if (!nc)
    return {};
  const auto* s = actors::snapshots_of(*nc);
  return s == nullptr ? std::string{} : s->primary;
}

std::atomic<bool> standby_stop{false};

void on_standby_signal(int) {
  standby_stop = true;
}

} // namespace

CLI::App* add_promote_command(CLI::App& app, promote_options& opts) {
  auto* sub = app.add_subcommand(
      "promote",
      "make the cluster of FILE (a second site) take the job over from the newest "
      "snapshot the primary shipped to its [snapshots] directory");
  sub->footer(
      "Then start it with `understudy launch FILE`. The primary, if it comes back, "
      "refuses to start (it is superseded). Exits 0 when promoted, 1 when no snapshot "
      "verifies, 2 when the primary is still reachable, for another job's snapshots and "
      "usage errors.");
  sub->add_option("FILE", opts.file, "the second site's node config file")->required();
  sub->add_option("--primary", opts.primary,
                  "the primary's node config file: promote only if none of its nodes accepts "
                  "connections");
  sub->add_flag("--force", opts.force, "promote without checking the primary");
  return sub;
}

int run_promote(const promote_options& opts, std::ostream& out, std::ostream& err) {
  const std::string prog = "understudy promote: ";
  const node_components components{actors::training_component(), serving::serving_component()};
  auto primary_file =
      opts.primary.empty() ? configured_primary(opts.file, components) : opts.primary;
  if (primary_file.empty() && !opts.force) {
    err << prog
        << "name the primary's file (--primary FILE, or [snapshots] primary) so that its "
           "nodes can be checked to be down, or pass --force\n";
    return exit_failure;
  }
  if (!primary_file.empty() && !opts.force) {
    auto primary = primary_nodes(primary_file, components);
    if (!primary) {
      err << prog << describe(primary.error()) << '\n';
      return exit_failure;
    }
    for (const auto& n : *primary)
      if (actors::accepts_connections(n.host, n.port, std::chrono::seconds(1))) {
        err << prog << "the primary is alive and reachable: its node " << n.name << " at " << n.host
            << ":" << n.port << " accepts connections; stop it (a promotion while it "
            << "drives the job would run it twice), nothing promoted\n";
        return exit_failure;
      }
  }
  auto nc = load_config(opts.file, components);
  if (!nc) {
    err << prog << describe(nc.error()) << '\n';
    return exit_failure;
  }
  auto p = actors::promote_site(*nc);
  if (!p) {
    err << prog << describe(p.error()) << '\n';
    return is(p.error(), state_errc::not_found) ? exit_corrupt : exit_failure;
  }
  out << "promote: cluster " << p->cluster << " takes " << actors::training_job_path(*nc)
      << " over at committed step " << p->step << " (" << p->when
      << "), imported into every active node; start it with understudy launch " << opts.file
      << '\n';
  return exit_ok;
}

} // namespace understudy::cli

namespace understudy::cli {

CLI::App* add_standby_command(CLI::App& app, standby_cli_options& opts) {
  auto* sub = app.add_subcommand(
      "standby",
      "keep the cluster of FILE (a second site, [snapshots] standby = true) ready to take "
      "the job over: watch the snapshots, drill on a schedule, promote it when the primary "
      "is lost ([snapshots] promote_after) and launch it");
  sub->footer(
      "Runs until the site is promoted (then it runs `understudy launch FILE`, unless "
      "--no-launch) or Ctrl-C. Exits 2 for usage errors and a directory promoted to "
      "another cluster.");
  sub->add_option("FILE", opts.file, "the second site's node config file")->required();
  sub->add_option("--primary", opts.primary,
                  "the primary's node config file (default: [snapshots] primary)");
  sub->add_option("--metrics", opts.metrics,
                  "serve the standby's metrics (understudy_dr_*) at HOST:PORT");
  sub->add_flag("--no-launch", opts.no_launch, "exit 0 once promoted instead of launching");
  return sub;
}

int run_standby(standby_cli_options& opts, std::ostream& out, std::ostream& err) {
  const std::string prog = "understudy standby: ";
  const node_components components{actors::training_component(), serving::serving_component()};
  // Loaded without the components' checks: a standby site refuses to start
  // its nodes, which this command must not.
  node_config_options lopts;
  for (const auto& c : components)
    c->prepare_loading(lopts);
  auto nc = load_node_config(opts.file, lopts);
  if (!nc) {
    err << prog << describe(nc.error()) << '\n';
    return exit_failure;
  }
  const auto* snaps = actors::snapshots_of(*nc);
  if (snaps == nullptr || !snaps->standby) {
    err << prog << opts.file << " is not a standby site: it needs [snapshots] standby = true\n";
    return exit_failure;
  }
  actors::standby_options so;
  auto primary_file = opts.primary.empty() ? snaps->primary : opts.primary;
  if (!primary_file.empty()) {
    auto primary = primary_nodes(primary_file, components);
    if (!primary) {
      err << prog << describe(primary.error()) << '\n';
      return exit_failure;
    }
    so.primary = std::move(*primary);
  }
  std::unique_ptr<node_metrics> metrics;
  if (!opts.metrics.empty()) {
    auto colon = opts.metrics.rfind(':');
    metrics_config mc;
    mc.node = snaps->node;
    int port = -1;
    if (colon != std::string::npos) {
      mc.host = opts.metrics.substr(0, colon);
      try {
        port = std::stoi(opts.metrics.substr(colon + 1));
      } catch (const std::exception&) {
        port = -1;
      }
    }
    if (port < 0 || port > 65535 || mc.host.empty()) {
      err << prog << "--metrics takes HOST:PORT, not '" << opts.metrics << "'\n";
      return exit_failure;
    }
    mc.port = static_cast<uint16_t>(port);
    auto m = node_metrics::start(mc);
    if (!m) {
      err << prog << describe(m.error()) << '\n';
      return exit_failure;
    }
    metrics = std::move(*m);
    out << "standby: metrics at http://" << mc.host << ":" << metrics->port() << "/metrics"
        << std::endl;
  }
  for (const auto& n : nc->nodes)
    if (n.name == snaps->node) {
      std::error_code ec;
      std::filesystem::create_directories(n.state_dir, ec);
      auto j = event_journal::open(n.state_dir, n.name);
      if (!j) {
        err << prog << "no event journal in " << n.state_dir << ": " << describe(j.error()) << '\n';
        return exit_failure;
      }
      so.journal = *j;
    }
  so.metrics = metrics.get();
  so.out = &out;
  standby_stop = false;
  struct sigaction sa {};
  sa.sa_handler = on_standby_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  so.stop_requested = [] { return standby_stop.load(); };
  auto r = actors::run_standby(*nc, so);
  if (!r) {
    err << prog << describe(r.error()) << '\n';
    return exit_failure;
  }
  if (!r->promoted) {
    out << "standby: stopped, not promoted (" << r->drills_passed << " drills passed, "
        << r->drills_failed << " failed)\n";
    return exit_ok;
  }
  opts.promoted = true;
  return exit_ok;
}

} // namespace understudy::cli
