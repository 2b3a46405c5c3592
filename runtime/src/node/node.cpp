#include "understudy/node/node.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <mutex>
#include <thread>

#include <caf/actor_system_config.hpp>
#include <nlohmann/json.hpp>

#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/etcd_coordinator.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/metrics/metrics.hpp"
#include "understudy/node/event_journal.hpp"
#include "understudy/state/runtime.hpp"

namespace understudy {

// -- output, parts and components ------------------------------------------------------

void node_output::say(const std::string& line) {
  std::lock_guard<std::mutex> guard{mtx_};
  out_ << line << std::endl;
}

void node_output::warn(const std::string& line) {
  std::lock_guard<std::mutex> guard{mtx_};
  err_ << line << '\n';
  err_.flush();
}

node_part::~node_part() = default;

std::string node_part::takeover_reason() const {
  return "the leader's node is lost";
}

void node_part::before_tree(leader_context&) {}

std::optional<child_spec> node_part::make_child(const tree_child&,
                                                const std::shared_ptr<event_sink>&) {
  return std::nullopt;
}

void node_part::after_tree(leader_context&, const supervisor_ref&) {}

bool node_part::has_end() const {
  return false;
}

std::optional<work_end> node_part::await_end(std::chrono::milliseconds) {
  return std::nullopt;
}

void node_part::stop() {}

std::string node_part::status() const {
  return {};
}

std::string node_part::node_status() const {
  return {};
}

std::string node_part::node_status_json() const {
  return {};
}

std::string node_part::status_json() const {
  return {};
}

std::string node_part::stopped_note() const {
  return {};
}

node_component::~node_component() = default;

void node_component::prepare_loading(node_config_options&) const {}

void node_component::register_types(caf::actor_system_config&) const {}

std::vector<std::string> node_component::leader_candidates(const node_config&) const {
  return {};
}

caf::error node_component::check(const node_config&) const {
  return {};
}

caf::expected<std::string> node_name_from(const node_config& nc, const std::string& source,
                                          const std::string& hostname,
                                          const std::function<const char*(const char*)>& getenv) {
  auto bad = [&](const std::string& why) {
    return make_error(config_errc::invalid_value,
                      "--name-from " + source + ": " + why + " (" + nc.origin + " has " +
                          std::to_string(nc.nodes.size()) + " nodes, ordinals 0 to " +
                          std::to_string(nc.nodes.size() - 1) + ")");
  };
  std::string digits;
  if (source == "hostname") {
    auto end = hostname.find('.'); // a pod's FQDN: its first label
    auto label = hostname.substr(0, end);
    auto at = label.find_last_not_of("0123456789");
    digits = at == std::string::npos ? label : label.substr(at + 1);
    if (digits.empty() || (at != std::string::npos && label[at] != '-'))
      return bad("hostname '" + hostname +
                 "' does not end in -ORDINAL, as a StatefulSet's pods do");
  } else if (source.rfind("env:", 0) == 0 && source.size() > 4) {
    const char* value = getenv(source.c_str() + 4);
    if (value == nullptr)
      return bad(source.substr(4) + " is not set");
    digits = value;
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
      return bad(source.substr(4) + "='" + digits + "' is not an ordinal");
  } else {
    return make_error(config_errc::invalid_value,
                      "--name-from '" + source + "': expected hostname or env:VAR");
  }
  if (digits.size() > 6 || std::stoul(digits) >= nc.nodes.size())
    return bad("ordinal " + digits + " names no node");
  return nc.nodes[std::stoul(digits)].name;
}

caf::expected<node_config> load_config(const std::string& file, const node_components& components) {
  node_config_options opts;
  for (const auto& c : components)
    c->prepare_loading(opts);
  auto nc = load_node_config(file, opts);
  if (!nc)
    return nc;
  if (auto used = use_launch_credentials(*nc, false); !used)
    return used.error();
  return nc;
}

std::string launch_data_dir(const node_config& nc) {
  auto parent = std::filesystem::path(nc.nodes.front().state_dir).parent_path();
  return parent.empty() ? std::string{"."} : parent.string();
}

std::string launch_credentials_dir(const node_config& nc) {
  return launch_data_dir(nc) + "/certs";
}

caf::expected<bool> use_launch_credentials(node_config& nc, bool create) {
  if (nc.cluster.security || nc.nodes.empty())
    return false;
  const auto dir = launch_credentials_dir(nc);
  auto exists = [](const std::string& path) {
    std::error_code ec;
    return std::filesystem::exists(path, ec);
  };
  if (!create && !exists(dir + "/ca.pem"))
    return false;
  auto with = nc;
  with.cluster.security =
      security_spec{dir + "/ca.pem", dir + "/ca.key", dir + "/{node}.pem", dir + "/{node}.key"};
  bool complete = exists(dir + "/ca.pem") && exists(dir + "/ca.key");
  for (auto& n : with.nodes) {
    n.cert = dir + "/" + n.name + ".pem";
    n.key = dir + "/" + n.name + ".key";
    complete = complete && exists(n.cert) && exists(n.key);
  }
  if (create && !complete)
    if (auto made = create_cluster_certificates(with, true); !made)
      return made.error();
  // The notes that say it talks in the clear no longer hold.
  auto& notes = with.notes;
  notes.erase(std::remove_if(
                  notes.begin(), notes.end(),
                  [](const std::string& n) { return n.find("without TLS") != std::string::npos; }),
              notes.end());
  notes.push_back(nc.origin +
                  ": no [cluster.security]: mutual TLS with the certificates that "
                  "`understudy launch` made in " +
                  dir);
  nc = std::move(with);
  return true;
}

std::vector<std::string> leader_candidates(const node_config& nc,
                                           const node_components& components) {
  for (const auto& c : components)
    if (auto preferred = c->leader_candidates(nc); !preferred.empty())
      return preferred;
  return nc.preferred_nodes(nc.tree.placement);
}

// -- understudy node -------------------------------------------------------------------

namespace {

/// The leader's status text: the live tree with placement, incarnations and
/// restarts, then the recent supervision events.
/// The tree and its recent events as JSON members "tree" (every child with its
/// path, status, incarnation, restarts and node) and "recent_events".
nlohmann::json tree_status_json(const cluster_node& node, const supervisor_ref& root,
                                const std::string& root_path, const event_log& recent) {
  using nlohmann::json;
  json children = json::array();
  std::function<void(const supervisor_ref&, const std::string&)> walk =
      [&](const supervisor_ref& sup, const std::string& path) {
        auto kids = sup.which_children(std::chrono::seconds(2));
        if (!kids) {
          children.push_back({{"path", path}, {"error", describe(kids.error())}});
          return;
        }
        for (const auto& c : *kids) {
          auto where = node.node_of(c.handle);
          children.push_back({{"path", path + "/" + c.id},
                              {"status", to_string(c.status)},
                              {"supervisor", c.kind == child_kind::supervisor},
                              {"incarnation", c.incarnation},
                              {"restarts", c.restarts},
                              {"node", where.empty() ? json(nullptr) : json(where)}});
          if (c.kind == child_kind::supervisor)
            if (auto sub = sup.nested(c.id, std::chrono::seconds(2)))
              walk(*sub, path + "/" + c.id);
        }
      };
  walk(root, root_path);
  json events = json::array();
  auto snapshot = recent.snapshot();
  auto first = snapshot.size() > 12 ? snapshot.size() - 12 : 0;
  for (size_t i = first; i < snapshot.size(); ++i) {
    const auto& ev = snapshot[i];
    events.push_back({{"kind", to_string(ev.kind)},
                      {"path", ev.supervisor + (ev.child.empty() ? "" : "/" + ev.child)},
                      {"incarnation", ev.incarnation},
                      {"action", ev.action},
                      {"reason", ev.reason}});
  }
  return json{{"tree", std::move(children)}, {"recent_events", std::move(events)}};
}

/// The same as text, for `understudy status`: a line per child, indented by
/// its depth below the root, then the recent events.
std::string tree_status(const nlohmann::json& doc, const std::string& root_path) {
  auto depth = [](const std::string& path) { return std::count(path.begin(), path.end(), '/'); };
  const auto root_depth = depth(root_path);
  std::string out = "  supervision tree:\n";
  for (const auto& c : doc["tree"]) {
    const auto path = c.value("path", "");
    if (c.contains("error")) {
      // A supervisor that did not answer: where its children would be.
      out +=
          std::string((depth(path) - root_depth) * 2 + 4, ' ') + "(" + c.value("error", "") + ")\n";
      continue;
    }
    out += std::string((depth(path) - root_depth - 1) * 2 + 4, ' ') + path + "  " +
           c.value("status", "") + ", incarnation " +
           std::to_string(c.value("incarnation", uint64_t{0})) + ", restarts " +
           std::to_string(c.value("restarts", uint64_t{0})) +
           (c["node"].is_string() ? ", on " + c["node"].get<std::string>() : "") + "\n";
  }
  out += "  recent events:\n";
  for (const auto& ev : doc["recent_events"]) {
    const auto action = ev.value("action", "");
    const auto reason = ev.value("reason", "");
    out += "    " + ev.value("kind", "") + " " + ev.value("path", "") + "#" +
           std::to_string(ev.value("incarnation", uint64_t{0})) +
           (action.empty() ? "" : " " + action) + (reason.empty() ? "" : " (" + reason + ")") +
           "\n";
  }
  return out;
}

/// One run of a node: from loading its config to ending its process.
class node_session {
public:
  node_session(const node_options& opts, node_output& out) : opts_(opts), out_(out) {
    // A node writes to its launcher's pipe and to peers' sockets: a reader that
    // went away is an EPIPE error, not the death of the node. Process-wide, as
    // signal dispositions are.
    ::signal(SIGPIPE, SIG_IGN);
    // Signals go to one thread that asks the node to stop. SIGINT only when
    // this process did not inherit it ignored: `understudy launch` starts its
    // nodes so, because a Ctrl-C in a terminal reaches every process of the
    // group at once, and the launcher must stop the leader first (a blocked
    // signal is delivered to sigwait even while its disposition is SIG_IGN).
    sigemptyset(&sigs_);
    struct sigaction inherited {};
    if (::sigaction(SIGINT, nullptr, &inherited) != 0 || inherited.sa_handler != SIG_IGN)
      sigaddset(&sigs_, SIGINT);
    sigaddset(&sigs_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs_, nullptr);
  }

  exit_code run() {
    if (auto failed = start())
      return *failed;
    if (auto failed = attach())
      finish(*failed);
    lead(follow());
  }

private:
  void fail(const std::string& what) { out_.warn(opts_.label + ": " + what); }
  void say(const std::string& line) { out_.say(line); }
  const std::string& me() const { return node_->self().name; }

  /// Makes the coordinator where etcd endpoints are known (--coordination,
  /// else [cluster.coordination]); a cluster of more than one node needs them.
  std::optional<exit_code> make_coordinator() {
    auto spec = nc_.cluster.coordination;
    if (!opts_.coordination_endpoints.empty())
      spec.endpoints = opts_.coordination_endpoints;
    if (spec.endpoints.empty()) {
      if (nc_.nodes.size() <= 1)
        return std::nullopt;
      fail(opts_.file + ": a cluster of " + std::to_string(nc_.nodes.size()) +
           " nodes needs etcd: add [cluster.coordination] with its endpoints, or start the "
           "cluster with `understudy launch`");
      return exit_code::bad_config;
    }
    auto made = etcd_coordinator::create(spec, nc_.cluster.name, opts_.name);
    if (!made) {
      fail(describe(made.error()));
      return exit_code::bad_config;
    }
    coordinator_ = std::move(*made);
    return std::nullopt;
  }

  /// Loads the config and starts the runtime, the metrics and the cluster
  /// node; the error's exit code if that fails.
  std::optional<exit_code> start() {
    auto nc = load_config(opts_.file, opts_.components);
    if (!nc) {
      fail(describe(nc.error()));
      return exit_code::bad_config;
    }
    nc_ = std::move(*nc);
    if (nc_.find_node(opts_.name) == nullptr) {
      fail(opts_.file + ": no node named '" + opts_.name + "'");
      return exit_code::bad_config;
    }
    for (const auto& note : nc_.notes)
      out_.warn("note: " + note);
    if (auto failed = make_coordinator())
      return failed;
    runtime_config rc;
    rc.log_level = opts_.log_level;
    caf::expected<std::vector<std::string>> prepared{std::vector<std::string>{}};
    rc.configure = [this, &prepared](caf::actor_system_config& cfg) {
      prepared = cluster_node::configure(cfg, nc_, opts_.name);
      for (const auto& c : opts_.components)
        c->register_types(cfg);
    };
    rt_ = std::make_unique<runtime>(rc);
    if (!prepared) {
      fail(describe(prepared.error()));
      return exit_code::bad_config;
    }
    for (const auto& note : *prepared)
      out_.warn("note: " + note);
    start_metrics();
    std::function<void(std::chrono::nanoseconds)> on_commit;
    if (metrics_)
      on_commit = [mp = metrics_.get()](std::chrono::nanoseconds d) {
        mp->observe_commit_latency(d);
      };
    auto node = cluster_node::start(*rt_, nc_, opts_.name, nullptr, on_commit, coordinator_);
    if (!node) {
      fail(describe(node.error()));
      return exit_code::bad_config;
    }
    node_ = std::move(*node);
    waiter_ = std::thread{[this] {
      int sig = 0;
      if (sigwait(&sigs_, &sig) == 0 && sig != 0) {
        signalled_ = true;
        node_->request_stop();
      }
    }};
    return std::nullopt;
  }

  /// Prometheus metrics where the config gives the node a metrics port. A
  /// port that cannot be bound costs the metrics, not the node.
  void start_metrics() {
    const auto* spec = nc_.find_node(opts_.name);
    if (spec->metrics_port == 0)
      return;
    metrics_config mc;
    mc.node = spec->name;
    mc.host = spec->host;
    mc.port = spec->metrics_port;
    if (auto m = node_metrics::start(mc))
      metrics_ = std::move(*m);
    else
      out_.warn("warning: node " + spec->name + ": no metrics: " + describe(m.error()));
  }

  /// Announces the node, hooks its notes and peer changes, attaches the
  /// components and sets the leader candidates.
  std::optional<exit_code> attach() {
    const auto& self = node_->self();
    say("node " + self.name + ": listening on " + self.host + ":" + std::to_string(self.port) +
        ", state in " + self.state_dir +
        (self.buddy.empty() ? "" : ", replicating to " + self.buddy) + ", generation " +
        std::to_string(node_->generation()));
    auto* mp = metrics_.get();
    if (mp != nullptr) {
      auto store = node_->state_store().store;
      mp->set_state_source([store] { return store->stats(); });
      say("node " + self.name + ": metrics on " + mp->url());
    }
    // The node's persisted event log (`understudy events`); a node that cannot
    // write one says so and goes on.
    if (auto j = event_journal::open(self.state_dir, self.name))
      journal_ = std::move(*j);
    else
      out_.warn("warning: node " + self.name + ": no event log: " + describe(j.error()));
    node_->on_note([this, name = self.name](const std::string& text) {
      say("node " + name + ": " + text);
      if (journal_)
        journal_->note(text);
    });
    node_->on_peer_change([this, name = self.name, mp](const peer_view& p) {
      say("node " + name + ": peer " + p.name + " is " + to_string(p.state) +
          (p.reason.empty() ? "" : " (" + p.reason + ")"));
      if (journal_)
        journal_->peer(p.name, to_string(p.state), p.reason);
      if (mp != nullptr)
        mp->set_peer_health(p.name, p.state == peer_state::alive       ? peer_health::alive
                                    : p.state == peer_state::suspected ? peer_health::suspected
                                                                       : peer_health::dead);
    });
    for (const auto& c : opts_.components) {
      auto part = c->attach(*node_, nc_, mp);
      if (!part) {
        fail(describe(part.error()));
        return exit_code::bad_config;
      }
      parts_.push_back(std::move(*part));
    }
    candidates_ = leader_candidates(nc_, opts_.components);
    node_->set_leader_candidates(candidates_);
    // Every node reports its parts' own shares; the leader adds its tree.
    node_->set_status_provider([this] { return parts_node_status(); });
    node_->set_status_json_provider([this] { return parts_node_status_json(); });
    return std::nullopt;
  }

  /// The parts' lines on this node's own share (node_part::node_status).
  std::string parts_node_status() const {
    std::string text;
    for (const auto& p : parts_)
      text += p->node_status();
    return text;
  }

  /// The same as one JSON object.
  std::string parts_node_status_json() const {
    nlohmann::json doc = nlohmann::json::object();
    for (const auto& p : parts_)
      merge_json(doc, p->node_status_json());
    return doc.dump();
  }

  /// Adds the members of the JSON object `more` (if it is one) to `doc`.
  static void merge_json(nlohmann::json& doc, const std::string& more) {
    auto parsed = nlohmann::json::parse(more, nullptr, false);
    if (parsed.is_object())
      for (auto& [key, value] : parsed.items())
        doc[key] = value;
  }

  /// Follows until this node leads: at once for the first candidate, or when
  /// the leader dies and this node is next. Returns whether it took over from
  /// a lost leader; ends the process when it must stop instead.
  bool follow() {
    const bool first = !candidates_.empty() && candidates_.front() == me();
    bool waited = false;
    bool followed = false;
    for (;;) {
      if (node_->await_leadership(std::chrono::seconds(1))) {
        if (first && !waited) {
          // A cold start: wait for every node (a node that restarts while
          // another leads hears so from its peers meanwhile).
          waited = true;
          await_cold_start();
        }
        if (node_->claim_leadership())
          return !first || followed;
        continue;
      }
      followed = true;
      if (!node_->await_stop_request(std::chrono::milliseconds(0)))
        continue;
      if (node_->fenced()) {
        say("node " + me() + ": fenced: the cluster declared this node dead; exiting");
        finish(exit_code::fenced);
      }
      say("node " + me() + ": stopping");
      finish(exit_code::ok);
    }
  }

  /// Waits for every peer before the first leader starts the tree; ends the
  /// process if they stay unreachable while this node still leads.
  void await_cold_start() {
    auto wait_for = std::chrono::duration_cast<std::chrono::milliseconds>(
                        nc_.cluster.failure_detection.connection_timeout) *
                    5;
    if (node_->await_peers(std::max(wait_for, std::chrono::milliseconds(10000)))) {
      // Then until the peers are connected to each other too: actors the
      // tree places on two of them talk directly, and a message sent while
      // their connection comes up could be lost (the step waiting for it
      // would never end).
      auto missing = node_->await_mesh(std::max(wait_for, std::chrono::milliseconds(10000)));
      if (!missing.empty()) {
        std::string links;
        for (auto& l : missing)
          links += " " + l;
        say("node " + me() + ": starting the tree although these links are not up:" + links);
      }
      return;
    }
    if (node_->leader() != me())
      return;
    std::string missing;
    for (auto& p : node_->peers())
      if (p.state != peer_state::alive)
        missing += " " + p.name;
    fail("nodes not reachable:" + missing);
    finish(exit_code::bad_config);
  }

  /// The sink of the tree's events: recent events for the status report and,
  /// with metrics, the supervision metrics (and failovers counted).
  std::shared_ptr<event_sink> tree_sink(const std::shared_ptr<event_log>& recent) {
    auto* mp = metrics_.get();
    std::shared_ptr<event_sink> journal = journal_ ? journal_->sink() : nullptr;
    if (mp == nullptr)
      return std::make_shared<fanout_sink>(
          std::vector<std::shared_ptr<event_sink>>{recent, journal});
    node_->on_peer_change([mp](const peer_view& p) {
      if (p.state == peer_state::dead)
        mp->on_failover(p.name); // the leader restarts its actors elsewhere
    });
    return std::make_shared<fanout_sink>(
        std::vector<std::shared_ptr<event_sink>>{recent, mp->sink(), journal});
  }

  /// Runs the tree the config declares until the work ends or the node must
  /// stop; ends the process.
  [[noreturn]] void lead(bool took_over) {
    if (took_over)
      say("node " + me() + ": taking over the job's tree (" +
          (parts_.empty() ? node_part{}.takeover_reason() : parts_.front()->takeover_reason()) +
          ")");
    if (metrics_)
      metrics_->set_leader(true);
    leader_context ctx{*node_, *rt_, out_, metrics_.get(), took_over};
    for (auto& p : parts_)
      p->before_tree(ctx);
    auto recent = std::make_shared<event_log>(64);
    auto sink = tree_sink(recent);
    // A supervisor a component builds keeps its own sink (e.g. to count
    // restarts): it logs too.
    std::shared_ptr<event_sink> built_sink = sink;
    if (auto log = rt_->log_sink())
      built_sink =
          std::make_shared<fanout_sink>(std::vector<std::shared_ptr<event_sink>>{sink, log});
    auto declared = node_->tree(nc_.tree, sink, [this, built_sink](const tree_child& c) {
      for (auto& p : parts_)
        if (auto made = p->make_child(c, built_sink))
          return made;
      return std::optional<child_spec>{};
    });
    if (!declared) {
      fail("cannot start the tree: " + describe(declared.error()));
      node_->stop_peers();
      finish(exit_code::bad_config);
    }
    const auto root_path = "/" + declared->name;
    auto tree = rt_->start(std::move(*declared));
    if (!tree) {
      fail("cannot start the job: " + describe(tree.error()));
      node_->stop_peers();
      finish(exit_code::job_failed);
    }
    node_->set_status_provider([this, nodep = node_.get(), root = *tree, recent, root_path] {
      auto text = tree_status(tree_status_json(*nodep, root, root_path, *recent), root_path);
      for (const auto& p : parts_)
        text += p->status();
      return text + parts_node_status();
    });
    node_->set_status_json_provider([this, nodep = node_.get(), root = *tree, recent, root_path] {
      auto doc = tree_status_json(*nodep, root, root_path, *recent);
      for (const auto& p : parts_)
        merge_json(doc, p->status_json());
      merge_json(doc, parts_node_status_json());
      return doc.dump();
    });
    // The root supervisor ends on its own only when its restarts could not
    // keep the tree up (its intensity exceeded, a child that cannot start):
    // then the work cannot end either, and the node says so and exits.
    auto root_exit = std::make_shared<tree_exit>();
    tree->handle()->attach_functor([root_exit](const caf::error& reason) {
      std::lock_guard<std::mutex> guard{root_exit->mtx};
      root_exit->reason = reason;
      root_exit->ended = true;
    });
    for (auto& p : parts_)
      p->after_tree(ctx, *tree);
    auto end = await_work(*root_exit, root_path);
    finish(conclude(end, *tree));
  }

  /// How the root supervisor of the leader's tree ended, once it has.
  struct tree_exit {
    std::mutex mtx;
    bool ended = false;
    caf::error reason;
  };

  /// Waits for the first part whose work ends, for a stop request (none), or
  /// for the tree to end without the work (a failed end naming why).
  std::optional<work_end> await_work(tree_exit& root_exit, const std::string& root_path) {
    auto worker = std::find_if(parts_.begin(), parts_.end(), [](auto& p) { return p->has_end(); });
    auto tree_ended = [&]() -> std::optional<work_end> {
      std::lock_guard<std::mutex> guard{root_exit.mtx};
      if (!root_exit.ended)
        return std::nullopt;
      auto what = "the tree " + root_path + " ended before the work did";
      return work_end{root_exit.reason
                          ? with_context(root_exit.reason, what)
                          : make_error(supervision_errc::start_failed, what + " (no reason given)"),
                      "",
                      {}};
    };
    for (;;) {
      if (worker == parts_.end()) {
        if (node_->await_stop_request(std::chrono::seconds(1)))
          return std::nullopt;
        if (auto end = tree_ended())
          return end;
        continue;
      }
      if (auto end = (*worker)->await_end(std::chrono::milliseconds(200)))
        return end;
      if (node_->await_stop_request(std::chrono::milliseconds(0)))
        return std::nullopt;
      if (auto end = tree_ended())
        return end;
    }
  }

  /// Reports how the leader's work ended and stops the tree and the peers;
  /// returns the exit code.
  exit_code conclude(const std::optional<work_end>& end, const supervisor_ref& tree) {
    if (node_->fenced()) {
      // Declared dead while it ran the tree (a pause past the deadline): its
      // successor runs the job; this node's view of it is void, and so is its
      // tree's work: no orderly stop.
      say("node " + me() +
          ": fenced: the cluster declared this node dead and another node runs "
          "the job; exiting");
      return exit_code::fenced;
    }
    auto code = exit_code::ok;
    if (end && !end->error) {
      say("final: " + end->summary);
      for (const auto& line : end->after)
        say(line);
      if (journal_) {
        journal_->job("final: " + end->summary);
        for (const auto& line : end->after)
          journal_->job(line);
      }
    } else if (end) {
      fail("the job failed: " + describe(end->error));
      code = exit_code::job_failed;
    } else {
      bool unfinished =
          std::any_of(parts_.begin(), parts_.end(), [](auto& p) { return p->has_end(); });
      say("node " + me() + (unfinished ? ": stopping (job not finished)" : ": stopping"));
    }
    for (auto& p : parts_)
      p->stop();
    // After stop(): a part may have brought its work to a point to resume from.
    if (!end)
      for (auto& p : parts_)
        if (auto note = p->stopped_note(); !note.empty())
          say(note);
    // The tree first, so that its actors on other nodes stop as its children
    // (not as the victims of their nodes ending), then the other nodes.
    rt_->stop(tree, std::chrono::seconds(10));
    node_->stop_peers();
    return code;
  }

  /// Ends the process with `code` (see run_node: no teardown of the actor
  /// system, which would wait for actors referenced from the network).
  [[noreturn]] void finish(exit_code code) {
    // An orderly end leaves the cluster at once (its peers see it go rather
    // than reporting it dead); a fenced node's session is already gone.
    if (node_ && code != exit_code::fenced && !node_->fenced())
      node_->leave(std::chrono::milliseconds(500));
    if (!signalled_) {
      // Wake the signal thread so that it can be joined.
      signalled_ = true;
      ::kill(::getpid(), SIGTERM);
    }
    waiter_.join();
    std::cout.flush();
    std::cerr.flush();
    std::_Exit(to_int(code));
  }

  const node_options& opts_;
  node_output& out_;
  sigset_t sigs_;
  node_config nc_;
  /// The cluster's arbiter (null for a node alone without etcd endpoints).
  std::shared_ptr<coordinator> coordinator_;
  std::unique_ptr<runtime> rt_;
  std::unique_ptr<node_metrics> metrics_;
  std::shared_ptr<event_journal> journal_;
  std::shared_ptr<cluster_node> node_;
  std::vector<std::unique_ptr<node_part>> parts_;
  std::vector<std::string> candidates_;
  std::atomic<bool> signalled_{false};
  std::thread waiter_;
};

} // namespace

exit_code run_node(const node_options& opts, node_output& out) {
  if (opts.name_from.empty()) {
    node_session session{opts, out};
    return session.run();
  }
  // The name from the scheduler's ordinal (a pod's hostname, a task's rank).
  auto nc = load_config(opts.file, opts.components);
  if (!nc) {
    out.warn(opts.label + ": " + describe(nc.error()));
    return exit_code::bad_config;
  }
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  auto name =
      node_name_from(*nc, opts.name_from, host, [](const char* var) { return std::getenv(var); });
  if (!name) {
    out.warn(opts.label + ": " + describe(name.error()));
    return exit_code::bad_config;
  }
  auto named = opts;
  named.name = *name;
  named.name_from.clear();
  node_session session{named, out};
  return session.run();
}

// -- understudy status ---------------------------------------------------------------

exit_code run_status(const status_options& opts, std::ostream& out, std::ostream& err) {
  auto nc = load_config(opts.file, opts.components);
  if (!nc) {
    err << opts.label << ": " << describe(nc.error()) << '\n';
    return exit_code::bad_config;
  }
  // The status reader's credential: nodes answer its status requests and
  // nothing else.
  runtime_config rc;
  rc.log_events = false;
  caf::error prepared;
  rc.configure = [&](caf::actor_system_config& cfg) {
    prepared = prepare_status_reader_config(cfg, *nc);
  };
  runtime rt{rc};
  if (prepared) {
    err << opts.label << ": " << describe(prepared) << '\n';
    return exit_code::bad_config;
  }
  size_t unreachable = 0;
  for (const auto& n : nc->nodes) {
    const auto timeout = nc->cluster.failure_detection.connection_timeout;
    if (opts.json) {
      // One JSON object per line and node; an unreachable node says why.
      auto doc = cluster_node::query_status_json(rt.system(), n.host, n.port, timeout);
      if (!doc) {
        ++unreachable;
        out << nlohmann::json{{"node", n.name},
                              {"host", n.host},
                              {"port", n.port},
                              {"reachable", false},
                              {"error", describe(doc.error())}}
                   .dump()
            << '\n';
        continue;
      }
      auto parsed = nlohmann::json::parse(*doc, nullptr, false);
      if (parsed.is_object())
        parsed["reachable"] = true;
      out << (parsed.is_object() ? parsed.dump() : *doc) << '\n';
      continue;
    }
    auto text = cluster_node::query_status(rt.system(), n.host, n.port, timeout);
    if (!text) {
      ++unreachable;
      out << "node " << n.name << " at " << n.host << ":" << n.port << ": unreachable ("
          << describe(text.error()) << ")\n";
      continue;
    }
    out << *text;
  }
  return unreachable == nc->nodes.size() ? exit_code::failure : exit_code::ok;
}

} // namespace understudy
