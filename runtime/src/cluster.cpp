#include "understudy/runtime/cluster.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/spawn_options.hpp>
#include <caf/typed_response_promise.hpp>

#include "understudy/runtime/errors.hpp"
#include "understudy/runtime/runtime.hpp"
#include "understudy/runtime/security.hpp"
#include "understudy/runtime/supervision_event.hpp"

namespace understudy {

// -- phi accrual -----------------------------------------------------------------------

phi_accrual::phi_accrual(caf::timespan expected_interval, size_t window)
    // A floor on the spread: with a tight one, a loaded machine's scheduling
    // jitter alone looks like a failing peer (half the interval: phi 8 after
    // a silence of about 3.3 intervals).
    : min_stddev_(std::max(
          1.0, std::chrono::duration<double, std::milli>(expected_interval).count() / 2.0)),
      window_(std::max<size_t>(window, 2)) {
  // Seed with the expected interval, so that phi means something from the
  // second heartbeat on.
  auto ms = std::chrono::duration<double, std::milli>(expected_interval).count();
  for (int i = 0; i < 2; ++i) {
    intervals_.push_back(ms);
    sum_ += ms;
    sum_sq_ += ms * ms;
  }
}

void phi_accrual::heartbeat(clock::time_point t) {
  if (last_) {
    double ms = std::chrono::duration<double, std::milli>(t - *last_).count();
    intervals_.push_back(ms);
    sum_ += ms;
    sum_sq_ += ms * ms;
    while (intervals_.size() > window_) {
      auto old = intervals_.front();
      intervals_.pop_front();
      sum_ -= old;
      sum_sq_ -= old * old;
    }
  }
  last_ = t;
}

double phi_accrual::phi(clock::time_point now) const {
  if (!last_)
    return 0;
  double n = static_cast<double>(intervals_.size());
  double mean = sum_ / n;
  double var = std::max(0.0, sum_sq_ / n - mean * mean);
  double stddev = std::max(std::sqrt(var), min_stddev_);
  double elapsed = std::chrono::duration<double, std::milli>(now - *last_).count();
  // P(interval > elapsed) for a normal distribution, via the logistic
  // approximation of its CDF (as Akka and Cassandra do).
  double y = (elapsed - mean) / stddev;
  double e = std::exp(-y * (1.5976 + 0.070566 * y * y));
  double p_later = elapsed > mean ? e / (1.0 + e) : 1.0 - 1.0 / (1.0 + e);
  return -std::log10(std::max(p_later, 1e-300));
}

std::string to_string(peer_state x) {
  switch (x) {
    case peer_state::unknown:
      return "unknown";
    case peer_state::alive:
      return "alive";
    case peer_state::suspected:
      return "suspected";
    case peer_state::dead:
      return "dead";
  }
  return "?";
}

// -- protocol --------------------------------------------------------------------------

namespace {

using clock_type = std::chrono::steady_clock;

/// (hello, name, generation, leader) -> (name, generation, leader) or an error
/// if fenced; `leader`: the node each believes runs the tree.
using hello_atom = caf::atom_constant<caf::atom("us_nhello")>;
/// (beat, name, generation, leader): a heartbeat.
using beat_atom = caf::atom_constant<caf::atom("us_nbeat")>;
/// (fence, name, generation, from, from_generation): the node `name` is dead up
/// to `generation`, says `from`. Ignored when `from` is itself fenced (a node
/// that was frozen and comes back must not fence the healthy ones).
using fence_atom = caf::atom_constant<caf::atom("us_nfence")>;
/// (spawn, type, id, path, incarnation, supervisor, slot, args) -> actor.
using spawn_atom = caf::atom_constant<caf::atom("us_nspawn")>;
/// (replica, name, generation, checkpoint_batch) -> count, once durable here.
using replica_atom = caf::atom_constant<caf::atom("us_nrepl")>;
/// (transfer, path, to) -> count: copies every version of the actors at or
/// under `path` that this node holds to node `to` (durably, as replicas there),
/// for an actor that restarts on `to`.
using transfer_atom = caf::atom_constant<caf::atom("us_nxfer")>;
/// (holds, path) -> step: the newest step this node holds of the actors at or
/// under `path` (0: none).
using holds_atom = caf::atom_constant<caf::atom("us_nholds")>;
/// (status) -> std::string: the node's status report.
using status_atom = caf::atom_constant<caf::atom("us_nstat")>;
/// (stop): the peer asks this node's process to end.
using stop_atom = caf::atom_constant<caf::atom("us_nstop")>;
/// Local: the connector reached a peer: (up, name, agent).
using up_atom = caf::atom_constant<caf::atom("us_nup")>;
/// Local: heartbeat and detection round; connector round.
using tick_atom = caf::atom_constant<caf::atom("us_ntick")>;
/// Local: a factory was added; spawn requests waiting for it go on.
using factory_atom = caf::atom_constant<caf::atom("us_nfact")>;

/// A spawn request that came before the node registered the factory.
struct pending_spawn {
  std::string type;
  std::string id;
  std::string path;
  uint64_t incarnation;
  caf::actor supervisor;
  uint64_t slot;
  caf::message args;
  caf::typed_response_promise<caf::actor> rp;
};

caf::error cluster_error(const std::string& what) {
  return make_error(state_errc::invalid_config, what);
}

} // namespace

/// An actor started here for a supervisor on another node.
struct spawned_actor {
  caf::actor handle;
  /// The node of its supervisor.
  std::string from;
  /// Its path in the tree: a newer incarnation replaces it.
  std::string path;
};

struct peer_entry {
  node_spec spec;
  caf::actor agent;
  phi_accrual detector;
  peer_state state = peer_state::unknown;
  uint64_t generation = 0;
  /// Generations up to this one are fenced (0: none).
  uint64_t fenced = 0;

  peer_entry(node_spec s, caf::timespan interval) : spec(std::move(s)), detector(interval) {}
};

struct cluster_node::state {
  runtime* rt = nullptr;
  node_config cfg;
  node_spec self;
  uint64_t generation = 0;
  persistence p;
  std::shared_ptr<event_sink> events;
  caf::actor agent;
  caf::actor connector;

  mutable std::mutex mtx;
  mutable std::condition_variable cv;
  std::map<std::string, peer_entry> peers;
  std::map<std::string, node_factory> factories;
  std::vector<peer_listener> listeners;
  /// Hear what the node does on its own account (e.g. an actor it moved).
  std::vector<std::function<void(const std::string&)>> note_listeners;

  void announce(const std::string& text) {
    std::vector<std::function<void(const std::string&)>> ls;
    {
      std::lock_guard<std::mutex> guard{mtx};
      ls = note_listeners;
    }
    for (auto& f : ls)
      f(text);
  }
  bool stop_requested = false;
  bool fenced = false;
  /// This process was paused past the deadline: its own view of the peers is
  /// stale, so it fences nobody and believes a peer that says it is fenced,
  /// until a peer accepts its hello again.
  bool paused = false;
  /// When the pause was noticed.
  clock_type::time_point paused_at{};
  /// The agent's last detection round: a gap longer than the deadline means
  /// that the process was paused.
  clock_type::time_point last_tick{};
  std::function<std::string()> status_provider;
  /// Actors started here for supervisors elsewhere: stopped with the node,
  /// or when the node of their supervisor is declared dead (orphans).
  std::vector<spawned_actor> spawned;
  /// The nodes that may run the tree, in order of preference (see
  /// cluster_node::set_leader_candidates); empty: no leader.
  std::vector<std::string> candidates;
  /// The node this one believes runs the tree.
  std::string leader;
  /// This node runs the tree: its belief no longer changes.
  bool leading = false;
  /// It saw a majority and lost it (quorum = "majority").
  bool quorum_lost = false;

  const failure_detection_spec& fd() const { return cfg.cluster.failure_detection; }

  /// Notices that this process was paused (SIGSTOP, a VM freeze) since the
  /// agent's last round: the silence is ours, not the peers'. Restarts their
  /// clocks; until a peer accepts this node again (or says that it is fenced)
  /// the node fences nobody and starts nothing. Called with mtx held.
  void notice_pause_locked(clock_type::time_point now) {
    if (last_tick == clock_type::time_point{} || now - last_tick <= fd().deadline)
      return;
    if (!paused)
      paused_at = now;
    paused = true;
    for (auto& [name, e] : peers)
      if (e.state == peer_state::alive || e.state == peer_state::suspected)
        e.detector.heartbeat(now);
  }

  bool knows(const std::string& name) const {
    std::lock_guard<std::mutex> guard{mtx};
    return peers.count(name) != 0;
  }

  bool is_paused() const {
    std::lock_guard<std::mutex> guard{mtx};
    return paused;
  }

  peer_view view(const peer_entry& e) const {
    return {e.spec.name, e.state, e.detector.phi(clock_type::now()), e.generation, {}};
  }

  /// Changes a peer's state and tells the listeners (called without mtx held).
  void set_state(const std::string& name, peer_state s, const std::string& why) {
    peer_view v;
    std::vector<peer_listener> ls;
    std::vector<caf::actor> orphans;
    std::string quorum_note;
    {
      std::lock_guard<std::mutex> guard{mtx};
      auto i = peers.find(name);
      if (i == peers.end() || i->second.state == s)
        return;
      bool had_quorum = has_quorum_locked();
      i->second.state = s;
      if (s == peer_state::dead) {
        i->second.agent = nullptr;
        // Acting on the death needs a quorum (quorum = "majority"): a node
        // on the minority side of a partition must not fence the majority
        // or restart its actors.
        if (has_quorum_locked()) {
          i->second.fenced = std::max(i->second.fenced, i->second.generation);
          // Their supervisor is gone: its successor starts them afresh.
          auto orphan = [&](const spawned_actor& a) { return a.from == name; };
          for (auto& a : spawned)
            if (orphan(a))
              orphans.push_back(a.handle);
          spawned.erase(std::remove_if(spawned.begin(), spawned.end(), orphan), spawned.end());
          if (name == leader)
            succeed_locked();
        }
      }
      // Told when lost and when regained (not when first reached at start).
      if (had_quorum && !has_quorum_locked() && s == peer_state::dead) {
        quorum_lost = true;
        quorum_note = "no quorum: sees " + quorum_text_locked() +
                      "; it fences nobody and starts nothing until it sees a majority";
      } else if (!had_quorum && has_quorum_locked() && quorum_lost) {
        quorum_lost = false;
        quorum_note = "sees a majority of the nodes again (" + quorum_text_locked() + ")";
      }
      v = view(i->second);
      v.reason = why;
      ls = listeners;
    }
    for (auto& a : orphans)
      caf::anon_send_exit(a, caf::exit_reason::kill);
    for (auto& f : ls)
      f(v);
    if (!quorum_note.empty())
      announce(quorum_note);
    cv.notify_all();
  }

  /// How many nodes this node sees alive, itself included.
  size_t alive_locked() const {
    size_t n = 1;
    for (auto& [name, e] : peers)
      if (e.state == peer_state::alive || e.state == peer_state::suspected)
        ++n;
    return n;
  }

  std::string quorum_text_locked() const {
    return std::to_string(alive_locked()) + " of " + std::to_string(cfg.nodes.size()) + " nodes";
  }

  /// Whether this node may act on the deaths it sees (see quorum_policy).
  bool has_quorum_locked() const {
    return fd().quorum == quorum_policy::none || 2 * alive_locked() > cfg.nodes.size();
  }

  /// Whether `name` (a peer or this node) may lead: alive as far as this
  /// node knows.
  bool may_lead_locked(const std::string& name) const {
    if (name == self.name)
      return true;
    auto i = peers.find(name);
    return i != peers.end() &&
           (i->second.state == peer_state::alive || i->second.state == peer_state::suspected);
  }

  /// The leader was declared dead: the next candidate after it that is alive
  /// (or this node) leads. Called with mtx held.
  void succeed_locked() {
    // A paused node's view is stale: it follows what its peers say later.
    if (leading || paused || candidates.empty() || !has_quorum_locked())
      return;
    auto at = std::find(candidates.begin(), candidates.end(), leader);
    size_t first = at == candidates.end() ? 0 : static_cast<size_t>(at - candidates.begin()) + 1;
    for (size_t k = 0; k < candidates.size(); ++k) {
      const auto& c = candidates[(first + k) % candidates.size()];
      if (c != leader && may_lead_locked(c)) {
        leader = c;
        return;
      }
    }
  }

  std::string current_leader() const {
    std::lock_guard<std::mutex> guard{mtx};
    return leader;
  }
};

namespace {

using state_ptr = std::shared_ptr<cluster_node::state>;

std::string render_status(const cluster_node::state& st) {
  std::string out;
  std::function<std::string()> provider;
  {
    std::lock_guard<std::mutex> guard{st.mtx};
    const auto& me = st.self;
    out += "node " + me.name + " (" + to_string(me.role) + ") at " + me.host + ":" +
           std::to_string(me.port) + ", generation " + std::to_string(st.generation) +
           (me.buddy.empty() ? "" : ", replicating to " + me.buddy) +
           (st.leader.empty()      ? ""
            : st.leader == me.name ? (st.leading ? ", runs the tree" : ", about to run the tree")
                                   : ", the tree runs on " + st.leader) +
           (st.paused ? ", PAUSED (waiting to hear whether it was fenced)" : "") +
           (st.has_quorum_locked() ? "" : ", NO QUORUM (sees " + st.quorum_text_locked() + ")") +
           "\n";
    auto now = clock_type::now();
    for (auto& [name, e] : st.peers) {
      char phi[32];
      std::snprintf(phi, sizeof phi, "%.2f", e.detector.phi(now));
      std::string last = "never";
      if (auto l = e.detector.last())
        last = std::to_string(
                   std::chrono::duration_cast<std::chrono::milliseconds>(now - *l).count()) +
               " ms ago";
      out += "  peer " + name + ": " + to_string(e.state) + ", phi " + phi + ", last heartbeat " +
             last + (e.fenced != 0 ? ", fenced up to generation " + std::to_string(e.fenced) : "") +
             "\n";
    }
    provider = st.status_provider;
  }
  if (provider)
    out += provider();
  return out;
}

/// The newest step of the actors at or under `path` in `store` (0: none).
uint64_t newest_held(const state_store& store, const std::string& path) {
  uint64_t newest = 0;
  auto paths = store.paths();
  if (!paths)
    return 0;
  for (const auto& p : *paths) {
    if (p != path && p.rfind(path + "/", 0) != 0)
      continue;
    if (auto versions = store.versions(p))
      for (const auto& v : *versions)
        if (v.problem.empty())
          newest = std::max(newest, v.step);
  }
  return newest;
}

/// Every verified version of the actors at or under `path` in `store`, as
/// checkpoints (tensors copied out of the map).
caf::expected<checkpoint_batch> export_versions(const state_store& store, const std::string& path) {
  checkpoint_batch out;
  auto paths = store.paths();
  if (!paths)
    return paths.error();
  for (const auto& p : *paths) {
    if (p != path && p.rfind(path + "/", 0) != 0)
      continue;
    auto versions = store.versions(p);
    if (!versions)
      return versions.error();
    for (const auto& v : *versions) {
      if (!v.problem.empty())
        continue; // a damaged version stays behind; restore skips it too
      auto cp = std::make_shared<checkpoint>();
      auto err = store.read(p, v.step, [&](const record_view& r) -> caf::error {
        const auto& info = r.info();
        cp->path = p;
        cp->step = info.step;
        cp->schema_id = info.schema_id;
        cp->schema_version = info.schema_version;
        cp->incarnation = info.incarnation;
        cp->payload = r.payload_copy();
        for (size_t t = 0; t < info.tensors.size(); ++t) {
          const auto& ti = info.tensors[t];
          auto bytes = std::make_shared<std::vector<std::byte>>(ti.size);
          if (auto e = r.copy_tensor(t, bytes->data(), bytes->size()))
            return e;
          tensor_data td;
          td.name = ti.name;
          td.type = ti.type;
          td.shape = ti.shape;
          td.data = bytes->data();
          td.size = bytes->size();
          td.owner = std::move(bytes);
          cp->tensors.push_back(std::move(td));
        }
        return {};
      });
      if (err)
        continue; // as above
      out.items.push_back(std::move(cp));
    }
  }
  return out;
}

/// Connects to peers not connected yet; detached, because remote_actor blocks.
caf::behavior connector_actor(caf::event_based_actor* self, state_ptr st) {
  self->send(self, tick_atom::value);
  return {
      [self, st](tick_atom) {
        std::vector<node_spec> todo;
        {
          // One connection per pair of nodes: the node earlier in the file
          // connects, the later one answers (two connections of one pair, made
          // at once from both ends, make CAF's TLS transport drop the route).
          std::lock_guard<std::mutex> guard{st->mtx};
          auto pos = [&](const std::string& n) {
            for (size_t i = 0; i < st->cfg.nodes.size(); ++i)
              if (st->cfg.nodes[i].name == n)
                return i;
            return st->cfg.nodes.size();
          };
          auto mine = pos(st->self.name);
          for (auto& [name, e] : st->peers)
            if (!e.agent && (e.state == peer_state::unknown || e.state == peer_state::dead) &&
                pos(name) > mine)
              todo.push_back(e.spec);
        }
        for (auto& spec : todo) {
          auto h = connect_to_peer(self->home_system(), spec.host, spec.port,
                                   st->fd().connection_timeout);
          if (h)
            self->send(st->agent, up_atom::value, spec.name, *h);
        }
        self->delayed_send(
            self, todo.empty() ? std::chrono::milliseconds(1000) : std::chrono::milliseconds(100),
            tick_atom::value);
      },
  };
}

caf::behavior agent_actor(caf::event_based_actor* self, state_ptr st) {
  auto beat = [self, st] {
    std::vector<caf::actor> to;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      for (auto& [name, e] : st->peers)
        if (e.agent && e.state != peer_state::dead)
          to.push_back(e.agent);
    }
    auto leader = st->current_leader();
    for (auto& a : to)
      self->send(a, beat_atom::value, st->self.name, st->generation, leader);
  };
  auto detect = [st] {
    auto now = clock_type::now();
    std::vector<std::pair<std::string, peer_state>> changes;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      for (auto& [name, e] : st->peers) {
        if (e.state != peer_state::alive && e.state != peer_state::suspected)
          continue;
        auto last = e.detector.last();
        if (last && now - *last > st->fd().deadline)
          changes.emplace_back(name, peer_state::dead);
        else if (e.detector.phi(now) > st->fd().phi_threshold)
          changes.emplace_back(name, peer_state::suspected);
        else if (e.state == peer_state::suspected)
          changes.emplace_back(name, peer_state::alive);
      }
    }
    return changes;
  };
  auto fence_everywhere = [self, st](const std::string& name) {
    uint64_t gen = 0;
    std::vector<caf::actor> to;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      gen = st->peers.at(name).fenced;
      for (auto& [n, e] : st->peers)
        if (e.agent && n != name)
          to.push_back(e.agent);
    }
    for (auto& a : to)
      self->send(a, fence_atom::value, name, gen, st->self.name, st->generation);
  };
  auto declare_dead = [st, fence_everywhere](const std::string& name, const std::string& why) {
    bool paused = false;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      paused = st->paused;
    }
    st->set_state(name, peer_state::dead, why);
    bool quorum = false;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      quorum = st->has_quorum_locked();
    }
    if (!paused && quorum)
      fence_everywhere(name);
  };
  self->set_down_handler([st, declare_dead](caf::down_msg& dm) {
    std::string name;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      // After a pause, the peers closed their connections to this node: the
      // pause must be noticed before their loss is judged.
      st->notice_pause_locked(clock_type::now());
      for (auto& [n, e] : st->peers)
        if (e.agent && e.agent.address() == dm.source && e.state != peer_state::dead)
          name = n;
    }
    if (!name.empty())
      declare_dead(name, "connection lost");
  });
  self->send(self, tick_atom::value);
  /// Records a peer's agent and generation, and the leader it names; false if
  /// it is fenced.
  auto admit = [self, st](const std::string& name, uint64_t gen, const caf::actor& a,
                          const std::string& leader) {
    bool fresh = false;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      auto i = st->peers.find(name);
      if (i == st->peers.end() || gen <= i->second.fenced)
        return false;
      auto& e = i->second;
      if (e.state == peer_state::dead) // a new generation of a node declared dead
        e = peer_entry{e.spec, st->fd().heartbeat_interval};
      e.generation = gen;
      if (!e.agent && a) {
        e.agent = a;
        self->monitor(a);
      }
      e.detector.heartbeat(clock_type::now());
      fresh = e.state == peer_state::unknown;
      // Before the peer counts as alive, so that a node waiting for its peers
      // knows the leader they name when it wakes.
      if (!st->leading && !leader.empty() && leader != st->leader &&
          (leader == name || st->may_lead_locked(leader))) {
        st->leader = leader;
        st->cv.notify_all();
      }
    }
    if (fresh)
      st->set_state(name, peer_state::alive, "");
    return true;
  };
  /// Over TLS, checks that the certificate the peer `who` presented names the
  /// node `name` it claims to be (CAF checks only that the cluster CA signed
  /// it), then calls `k` with the error or none. Without TLS, calls it at once.
  auto check_peer = [self, st](const caf::actor& who, const std::string& name,
                               std::function<void(caf::error)> k) {
    if (!st->cfg.cluster.security || !who || !self->home_system().has_openssl_manager()) {
      k(caf::error{});
      return;
    }
    auto mm = self->home_system().openssl_manager().actor_handle();
    self->request(mm, st->fd().connection_timeout, caf::get_atom::value, who.node())
        .then(
            [name, k](const caf::node_id&, const std::string& host, uint16_t port) {
              auto cn = tls_peer_name(host, port);
              if (cn && *cn == name)
                k(caf::error{});
              else
                k(cluster_error("the peer at " + host + ":" + std::to_string(port) +
                                " says it is node " + name + " but its certificate names " +
                                (cn ? "'" + *cn + "'" : std::string{"no node"}) + ": refused"));
            },
            [k](caf::error& err) { k(std::move(err)); });
  };
  auto last_beat = std::make_shared<clock_type::time_point>();
  // Spawn requests wait here until the factory of their type is registered (a
  // node registers its factories after it starts listening).
  auto pending = std::make_shared<std::vector<pending_spawn>>();
  auto run_spawn = [self, st, pending] {
    std::vector<pending_spawn> waiting;
    for (auto& ps : *pending) {
      node_factory f;
      {
        std::lock_guard<std::mutex> guard{st->mtx};
        auto i = st->factories.find(ps.type);
        if (i != st->factories.end())
          f = i->second;
      }
      if (!f) {
        waiting.push_back(std::move(ps));
        continue;
      }
      // The supervisor's node: refused once it is fenced (its successor has
      // started, or will start, the child afresh).
      std::string from;
      std::vector<caf::actor> replaced;
      {
        std::lock_guard<std::mutex> guard{st->mtx};
        if (ps.supervisor && ps.supervisor.node() == self->node())
          from = st->self.name;
        for (auto& [n, e] : st->peers)
          if (e.agent && e.state != peer_state::dead && ps.supervisor &&
              e.agent.node() == ps.supervisor.node())
            from = n;
      }
      if (from.empty()) {
        ps.rp.deliver(cluster_error("node " + st->self.name + " refuses to start " + ps.path +
                                    ": its supervisor's node is fenced or unknown"));
        continue;
      }
      child_context ctx{
          self->home_system(), ps.id,   ps.path,
          ps.incarnation,      ps.args, child_token{ps.supervisor, ps.slot, ps.incarnation},
          st->events};
      auto r = f(ctx, ps.args);
      if (r) {
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          auto gone = [&](const spawned_actor& a) {
            if (a.path == ps.path && a.handle != *r) {
              replaced.push_back(a.handle); // an older incarnation of the same child
              return true;
            }
            return a.handle->getf(caf::abstract_actor::is_terminated_flag);
          };
          st->spawned.erase(std::remove_if(st->spawned.begin(), st->spawned.end(), gone),
                            st->spawned.end());
          st->spawned.push_back({*r, from, ps.path});
        }
        for (auto& a : replaced)
          self->send_exit(a, caf::exit_reason::kill);
        ps.rp.deliver(*r);
      } else {
        ps.rp.deliver(r.error());
      }
    }
    *pending = std::move(waiting);
  };
  return {
      [self, st, admit, check_peer](up_atom, const std::string& dialed, const caf::actor& a) {
        // Fenced, or no answer: the connector tries again while it is unknown.
        self->request(a, st->fd().connection_timeout, hello_atom::value, st->self.name,
                      st->generation, st->current_leader())
            .then(
                [st, admit, check_peer, a, dialed](const std::string& peer, uint64_t gen,
                                                   const std::string& leader) {
                  // The node at the address of `dialed` must be `dialed`, and
                  // over TLS its certificate must say so.
                  check_peer(a, peer, [st, admit, a, peer, gen, leader, dialed](caf::error err) {
                    if (!err && peer != dialed)
                      err = cluster_error("the node at the address of " + dialed + " says it is " +
                                          peer);
                    if (err) {
                      std::fprintf(stderr, "node %s: %s\n", st->self.name.c_str(),
                                   describe(err).c_str());
                      return;
                    }
                    {
                      std::lock_guard<std::mutex> guard{st->mtx};
                      st->paused = false; // a peer accepts this node: it is not fenced
                      st->cv.notify_all();
                    }
                    admit(peer, gen, a, leader);
                  });
                },
                [](caf::error&) {});
      },
      [self, st, admit, check_peer](
          hello_atom, const std::string& name, uint64_t gen,
          const std::string& leader) -> caf::result<std::string, uint64_t, std::string> {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        if (!st->knows(name))
          return cluster_error("unknown peer '" + name + "': node " + st->self.name +
                               " of cluster '" + st->cfg.cluster.name + "' has no such node in " +
                               st->cfg.origin);
        auto rp = self->make_response_promise<std::string, uint64_t, std::string>();
        check_peer(
            sender, name, [self, st, admit, rp, name, gen, leader, sender](caf::error err) mutable {
              if (err) {
                rp.deliver(std::move(err));
                return;
              }
              if (!admit(name, gen, sender, leader)) {
                // Tell a fenced node that it is: it stops itself.
                if (sender && !st->is_paused())
                  self->send(sender, fence_atom::value, name, gen, st->self.name, st->generation);
                rp.deliver(cluster_error("node " + name + " generation " + std::to_string(gen) +
                                         " is fenced: it was declared dead"));
                return;
              }
              rp.deliver(st->self.name, st->generation, st->current_leader());
            });
        return rp;
      },
      [self, st, admit](beat_atom, const std::string& name, uint64_t gen,
                        const std::string& leader) {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        if (!st->knows(name))
          return;
        if (admit(name, gen, sender, leader)) {
          // A peer that still beats to this node well after its pause has not
          // fenced it (a peer stops beating to a node it declared dead).
          std::lock_guard<std::mutex> guard{st->mtx};
          if (st->paused && clock_type::now() - st->paused_at > 2 * st->fd().heartbeat_interval) {
            st->paused = false;
            st->cv.notify_all();
          }
          return;
        }
        if (sender && !st->is_paused())
          // Tell a fenced node that it is: it stops itself.
          self->send(sender, fence_atom::value, name, gen, st->self.name, st->generation);
      },
      [self, st, beat, detect, declare_dead, last_beat](tick_atom) {
        auto now = clock_type::now();
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          st->notice_pause_locked(now);
          st->last_tick = now;
        }
        // Heartbeats on a fixed schedule (every interval, without drift), so
        // that a peer's deadline counts from a beat at most one interval old.
        const auto interval = st->fd().heartbeat_interval;
        if (now - *last_beat >= interval - std::chrono::milliseconds(1)) {
          *last_beat = now - *last_beat < 2 * interval ? *last_beat + interval : now;
          beat();
        }
        for (auto& [name, s] : detect()) {
          if (s == peer_state::dead)
            declare_dead(name, "silent past the deadline");
          else
            st->set_state(name, s, "");
        }
        // The peers are judged four times an interval, and again the moment
        // the first deadline passes, so that a silent peer is declared dead
        // on time rather than up to a quarter interval late.
        auto next = now + interval / 4;
        next = std::min(next, *last_beat + interval);
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          for (auto& [name, e] : st->peers)
            if (auto last = e.detector.last();
                last && (e.state == peer_state::alive || e.state == peer_state::suspected))
              next = std::min(next, *last + st->fd().deadline + std::chrono::microseconds(100));
        }
        auto wait =
            std::max<caf::timespan>(next - clock_type::now(), std::chrono::microseconds(200));
        self->delayed_send(self, wait, tick_atom::value);
      },
      [st](fence_atom, const std::string& name, uint64_t gen, const std::string& from,
           uint64_t from_gen) {
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          auto i = st->peers.find(from);
          if (i == st->peers.end())
            return;
          bool trusted = from_gen > i->second.fenced || (st->paused && name == st->self.name);
          if (!trusted)
            return;
        }
        if (name == st->self.name) {
          if (gen >= st->generation) {
            std::lock_guard<std::mutex> guard{st->mtx};
            st->fenced = true;
            st->stop_requested = true;
            st->cv.notify_all();
          }
          return;
        }
        bool newly = false;
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          auto i = st->peers.find(name);
          if (i == st->peers.end())
            return;
          i->second.fenced = std::max(i->second.fenced, gen);
          newly = i->second.state != peer_state::dead && i->second.generation <= gen;
        }
        if (newly)
          st->set_state(name, peer_state::dead, "fenced by a peer");
      },
      [self, st, pending, run_spawn](spawn_atom, const std::string& type, const std::string& id,
                                     const std::string& path, uint64_t incarnation,
                                     const caf::actor& supervisor, uint64_t slot,
                                     const caf::message& args) -> caf::result<caf::actor> {
        auto rp = self->make_response_promise<caf::actor>();
        pending->push_back({type, id, path, incarnation, supervisor, slot, args, rp});
        run_spawn();
        return rp;
      },
      [run_spawn](factory_atom) { run_spawn(); },
      [self, st](replicate_atom, checkpoint_batch& batch) -> caf::result<uint64_t> {
        // From the local writer: copy to the buddy or, while it is dead, to
        // the first live node down its buddy chain, so that every commit has
        // a copy on a live node (where a successor looks for it).
        caf::actor buddy;
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          std::vector<std::string> seen{st->self.name};
          for (auto h = st->cfg.find_node(st->self.buddy); h != nullptr && !buddy;
               h = st->cfg.find_node(h->buddy)) {
            if (std::find(seen.begin(), seen.end(), h->name) != seen.end())
              break;
            seen.push_back(h->name);
            auto i = st->peers.find(h->name);
            if (i != st->peers.end() && i->second.state != peer_state::dead && i->second.agent)
              buddy = i->second.agent;
          }
        }
        if (!buddy)
          return cluster_error("no live node to replicate to");
        auto rp = self->make_response_promise<uint64_t>();
        self->request(buddy, st->fd().connection_timeout, replica_atom::value, st->self.name,
                      st->generation, std::move(batch))
            .then([rp](uint64_t n) mutable { rp.deliver(n); },
                  [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
        return rp;
      },
      [self, st](replica_atom, const std::string& from, uint64_t gen,
                 checkpoint_batch& batch) -> caf::result<uint64_t> {
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          auto i = st->peers.find(from);
          if (i == st->peers.end() || gen <= i->second.fenced)
            return cluster_error("replica from " + from + " generation " + std::to_string(gen) +
                                 " refused: the node is fenced");
        }
        auto rp = self->make_response_promise<uint64_t>();
        auto left = std::make_shared<size_t>(batch.items.size());
        auto n = batch.items.size();
        if (n == 0) {
          rp.deliver(uint64_t{0});
          return rp;
        }
        for (auto& cp : batch.items)
          self->request(st->p.writer, caf::infinite, put_replica_atom::value, cp)
              .then(
                  [rp, left, n](uint64_t) mutable {
                    if (--*left == 0)
                      rp.deliver(static_cast<uint64_t>(n));
                  },
                  [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
        return rp;
      },
      [self, st](transfer_atom, const std::string& path,
                 const std::string& to) -> caf::result<uint64_t> {
        caf::actor target;
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          auto i = st->peers.find(to);
          if (i != st->peers.end() && i->second.state != peer_state::dead)
            target = i->second.agent;
        }
        if (!target)
          return cluster_error("node " + st->self.name + " cannot copy " + path + " to " + to +
                               ": no connection to it");
        // Reading and sending may take long for a large state: not on the
        // agent, whose heartbeats must go on.
        auto rp = self->make_response_promise<uint64_t>();
        self->spawn<caf::detached>([st, path, target, rp](caf::event_based_actor* w) mutable {
          auto batch = export_versions(*st->p.store, path);
          if (!batch) {
            rp.deliver(batch.error());
            w->quit();
            return;
          }
          if (batch->items.empty()) {
            rp.deliver(uint64_t{0});
            w->quit();
            return;
          }
          w->request(target, caf::infinite, replica_atom::value, st->self.name, st->generation,
                     std::move(*batch))
              .then(
                  [w, rp](uint64_t n) mutable {
                    rp.deliver(n);
                    w->quit();
                  },
                  [w, rp](caf::error& err) mutable {
                    rp.deliver(std::move(err));
                    w->quit();
                  });
        });
        return rp;
      },
      [st](holds_atom, const std::string& path) -> uint64_t {
        return newest_held(*st->p.store, path);
      },
      [st](status_atom) { return render_status(*st); },
      [st](stop_atom) {
        std::lock_guard<std::mutex> guard{st->mtx};
        st->stop_requested = true;
        st->cv.notify_all();
      },
  };
}

} // namespace

// -- cluster_node ----------------------------------------------------------------------

caf::expected<std::vector<std::string>> cluster_node::configure(caf::actor_system_config& cfg,
                                                                const node_config& nc,
                                                                const std::string& name) {
  auto notes = prepare_node_system_config(cfg, nc, name);
  if (!notes)
    return notes;
  // CAF closes a connection that stays silent for this long, which ends every
  // proxy of the peer (down messages for its actors): at the detector's deadline.
  const auto& fd = nc.cluster.failure_detection;
  cfg.set("middleman.connection-timeout", std::min(fd.deadline, fd.connection_timeout));
  cfg.add_message_type<checkpoint_batch>("understudy::checkpoint_batch");
  return notes;
}

cluster_node::cluster_node(std::shared_ptr<state> st) : st_(std::move(st)) {
  // nop
}

cluster_node::~cluster_node() {
  std::vector<spawned_actor> spawned;
  {
    std::lock_guard<std::mutex> guard{st_->mtx};
    spawned.swap(st_->spawned);
  }
  // Their supervisors are on other nodes: nothing else stops them here.
  for (auto& a : spawned)
    caf::anon_send_exit(a.handle, caf::exit_reason::user_shutdown);
  if (st_->agent)
    caf::anon_send_exit(st_->agent, caf::exit_reason::user_shutdown);
  if (st_->connector)
    caf::anon_send_exit(st_->connector, caf::exit_reason::user_shutdown);
  // The actors' behaviors hold the state: drop the handles it holds, so that
  // no reference cycle keeps a (detached) actor from being destroyed.
  std::lock_guard<std::mutex> guard{st_->mtx};
  st_->agent = nullptr;
  st_->connector = nullptr;
  for (auto& [name, e] : st_->peers)
    e.agent = nullptr;
  st_->factories.clear();
  st_->status_provider = nullptr;
}

caf::expected<std::shared_ptr<cluster_node>> cluster_node::start(
    runtime& rt, const node_config& nc, const std::string& name, std::shared_ptr<event_sink> events,
    std::function<void(std::chrono::nanoseconds)> on_commit) {
  auto me = nc.find_node(name);
  if (me == nullptr)
    return cluster_error(nc.origin + ": no node named '" + name + "'");
  auto st = std::make_shared<state>();
  st->rt = &rt;
  st->cfg = nc;
  st->self = *me;
  st->events = std::move(events);
  st->generation = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count());
  for (auto& n : nc.nodes)
    if (n.name != name)
      st->peers.emplace(n.name, peer_entry{n, nc.cluster.failure_detection.heartbeat_interval});
  auto& sys = rt.system();
  st->agent = sys.spawn(agent_actor, st);
  state_store_config sc;
  sc.directory = me->state_dir;
  state_writer_config wc;
  wc.on_commit = std::move(on_commit);
  if (!me->buddy.empty())
    wc.replica = st->agent;
  auto p = rt.open_state(sc, wc);
  if (!p) {
    caf::anon_send_exit(st->agent, caf::exit_reason::user_shutdown);
    return p.error();
  }
  st->p = *p;
  auto port = publish_at(sys, st->agent, me->host, me->port);
  if (!port) {
    caf::anon_send_exit(st->agent, caf::exit_reason::user_shutdown);
    return cluster_error("node " + name + " cannot listen on " + me->host + ":" +
                         std::to_string(me->port) + ": " + describe(port.error()));
  }
  st->connector = sys.spawn<caf::detached>(connector_actor, st);
  return std::shared_ptr<cluster_node>{new cluster_node(st)};
}

const node_spec& cluster_node::self() const {
  return st_->self;
}

const node_config& cluster_node::config() const {
  return st_->cfg;
}

uint64_t cluster_node::generation() const {
  return st_->generation;
}

const persistence& cluster_node::state_store() const {
  return st_->p;
}

caf::actor cluster_node::agent() const {
  return st_->agent;
}

void cluster_node::add_factory(const std::string& type, node_factory f) {
  {
    std::lock_guard<std::mutex> guard{st_->mtx};
    st_->factories[type] = std::move(f);
  }
  caf::anon_send(st_->agent, factory_atom::value);
}

void cluster_node::on_note(std::function<void(const std::string&)> f) {
  std::lock_guard<std::mutex> guard{st_->mtx};
  st_->note_listeners.push_back(std::move(f));
}

void cluster_node::on_peer_change(peer_listener f) {
  std::lock_guard<std::mutex> guard{st_->mtx};
  st_->listeners.push_back(std::move(f));
}

namespace {

/// Whether this node still has a connection to the node of `a` (CAF's
/// middleman knows a route to it).
bool connected(caf::actor_system& sys, const caf::actor& a) {
  auto mm = sys.has_openssl_manager() ? sys.openssl_manager().actor_handle()
                                      : sys.middleman().actor_handle();
  bool routed = false;
  caf::scoped_actor self{sys};
  self->request(mm, std::chrono::milliseconds(500), caf::get_atom::value, a.node())
      .receive([&](const caf::node_id&, const std::string&, uint16_t) { routed = true; },
               [&](caf::error&) { routed = false; });
  return routed;
}

} // namespace

start_function cluster_node::placed(std::string type, caf::message args, std::string home,
                                    std::vector<std::string> failover, bool stateful) {
  auto st = st_;
  // Where the child ran last: its checkpoints are there and, copied, on that
  // node's buddy.
  auto last = std::make_shared<std::string>(home);
  return [st, type, args, home, failover, stateful,
          last](child_context& ctx) -> caf::expected<caf::actor> {
    {
      // A node that was paused past its deadline may have been declared dead
      // and replaced: it starts nothing until a peer accepts it again (or says
      // that it is fenced), which takes a heartbeat or a reconnection.
      std::unique_lock<std::mutex> guard{st->mtx};
      st->notice_pause_locked(clock_type::now());
      if (st->paused)
        st->cv.wait_for(guard, st->fd().connection_timeout,
                        [&] { return !st->paused || st->fenced || st->stop_requested; });
      if (st->fenced)
        // The node must end (its process stops on learning it): hold the
        // supervisor here rather than let it spin through restarts that all
        // fail, for up to a connection timeout.
        st->cv.wait_for(guard, st->fd().connection_timeout, [] { return false; });
      // On the minority side (quorum = "majority"): wait until a majority is
      // seen again, however long that takes; acting now could split the job.
      while (!st->has_quorum_locked() && !st->fenced && !st->stop_requested)
        st->cv.wait_for(guard, st->fd().connection_timeout);
      if (st->fenced || st->paused)
        return cluster_error("node " + st->self.name + " does not start " + ctx.path + ": " +
                             (st->fenced ? "the cluster declared it dead (fenced)"
                                         : "it was paused past its deadline and no peer has "
                                           "accepted it since"));
    }
    // This node, or a peer that is alive and still connected: a peer whose
    // connection just closed may not be declared dead yet, but its agent's
    // proxy ended with the connection (as the lost child's did), and a request
    // to it would go unanswered.
    auto usable = [&](const std::string& name) {
      std::lock_guard<std::mutex> guard{st->mtx};
      if (name == st->self.name)
        return true;
      auto i = st->peers.find(name);
      return i != st->peers.end() && st->may_lead_locked(name) && i->second.agent &&
             !i->second.agent->getf(caf::abstract_actor::is_terminated_flag);
    };
    // The node that holds the child's newest checkpoints: where it ran last
    // while that node lives; else the live node that holds the newest step of
    // it (asked in the order of the buddy chain from there, then the others:
    // a child's copies are on the buddy of the node it ran on or, while that
    // buddy was dead, further down its chain).
    std::vector<std::string> chain{*last};
    for (auto h = st->cfg.find_node(*last); h != nullptr && !h->buddy.empty();
         h = st->cfg.find_node(h->buddy)) {
      if (std::find(chain.begin(), chain.end(), h->buddy) != chain.end())
        break;
      chain.push_back(h->buddy);
    }
    for (const auto& n : st->cfg.nodes)
      if (std::find(chain.begin(), chain.end(), n.name) == chain.end())
        chain.push_back(n.name);
    std::string source;
    if (usable(*last)) {
      source = *last;
    } else if (stateful) {
      uint64_t best = 0;
      bool any_alive = false;
      for (auto& name : chain) {
        if (!usable(name))
          continue;
        any_alive = true;
        uint64_t held = 0;
        if (name == st->self.name) {
          held = newest_held(*st->p.store, ctx.path);
        } else {
          caf::actor a;
          {
            std::lock_guard<std::mutex> guard{st->mtx};
            a = st->peers.at(name).agent;
          }
          caf::scoped_actor self{ctx.system};
          self->request(a, st->fd().connection_timeout, holds_atom::value, ctx.path)
              .receive([&](uint64_t step) { held = step; }, [](caf::error&) {});
        }
        if (held > best) {
          best = held;
          source = name;
        }
      }
      if (!any_alive)
        return cluster_error("cannot start " + ctx.path +
                             ": no node that could hold its "
                             "checkpoints is alive (it ran last on " +
                             *last + ")");
      // No live node holds any: a child that never checkpointed starts fresh.
    }
    // Where it goes: back where it ran last while that node lives (a crash
    // restarts in place); when that node is lost, the first live node its
    // placement allows (spares first for "any" and "spread"), which gets a
    // copy of its checkpoints first; without such a list, the node that holds
    // them.
    std::vector<std::string> order;
    auto add = [&](const std::string& name) {
      if (std::find(order.begin(), order.end(), name) == order.end())
        order.push_back(name);
    };
    if (usable(*last))
      add(*last);
    for (auto& name : failover)
      add(name);
    if (!source.empty())
      add(source);
    std::string tried;
    auto note = [&](const std::string& name, const std::string& why) {
      tried += (tried.empty() ? "" : ", ") + name + " (" + why + ")";
    };
    for (auto& name : order) {
      if (!usable(name)) {
        note(name, "dead or not connected");
        continue;
      }
      auto t0 = clock_type::now();
      std::string copied_note;
      if (stateful && !source.empty() && name != source) {
        // Copy its checkpoints from the node that holds them, durably, first.
        caf::actor from;
        if (source == st->self.name) {
          from = st->agent;
        } else {
          std::lock_guard<std::mutex> guard{st->mtx};
          auto i = st->peers.find(source);
          if (i != st->peers.end() && i->second.state != peer_state::dead)
            from = i->second.agent;
        }
        caf::expected<uint64_t> copied{uint64_t{0}};
        if (!from) {
          copied = cluster_error(source + " is gone");
        } else {
          caf::scoped_actor self{ctx.system};
          self->request(from, st->fd().connection_timeout + std::chrono::seconds(30),
                        transfer_atom::value, ctx.path, name)
              .receive([&](uint64_t n) { copied = n; },
                       [&](caf::error& err) { copied = std::move(err); });
        }
        if (!copied) {
          note(name,
               "cannot copy its checkpoints from " + source + ": " + describe(copied.error()));
          continue;
        }
        copied_note = ", " + std::to_string(*copied) + " checkpoint versions copied from " + source;
      }
      auto moved = [&] {
        if (name == *last)
          return;
        char ms[32];
        std::snprintf(ms, sizeof ms, "%.1f",
                      std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
        st->announce("moved " + ctx.path + " from " + *last + " (lost) to " + name + copied_note +
                     ", started in " + ms + " ms");
        *last = name;
      };
      if (name == st->self.name) {
        node_factory f;
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          auto i = st->factories.find(type);
          if (i != st->factories.end())
            f = i->second;
        }
        if (!f)
          return cluster_error("no factory for '" + type + "' on node " + name);
        auto r = f(ctx, args);
        if (r)
          moved();
        return r;
      }
      caf::actor a;
      {
        std::lock_guard<std::mutex> guard{st->mtx};
        auto i = st->peers.find(name);
        if (i != st->peers.end() && i->second.state != peer_state::dead)
          a = i->second.agent;
      }
      if (!a) {
        note(name, "dead or not connected");
        continue;
      }
      caf::expected<caf::actor> result{caf::actor{}};
      caf::scoped_actor self{ctx.system};
      // A node whose connection just closed may not be declared dead yet, and
      // a request to its dead proxy goes unanswered: its agent's proxy ended
      // with the connection (as the child's did), or the middleman knows no
      // route to it any more.
      if (a->getf(caf::abstract_actor::is_terminated_flag) || !connected(ctx.system, a)) {
        note(name, "connection lost");
        continue;
      }
      // A spawn is answered at once.
      auto wait =
          std::min<caf::timespan>(st->fd().connection_timeout, std::chrono::milliseconds(500));
      self->request(a, wait, spawn_atom::value, type, ctx.id, ctx.path, ctx.incarnation,
                    ctx.token.supervisor, ctx.token.slot, args)
          .receive([&](caf::actor& h) { result = std::move(h); },
                   [&](caf::error& err) { result = std::move(err); });
      if (result && *result) {
        moved();
        return result;
      }
      note(name, result ? std::string{"no actor"} : describe(result.error()));
    }
    return cluster_error("cannot start " + ctx.path + " (" + type + ") on any node: " + tried);
  };
}

caf::expected<supervisor_spec> cluster_node::tree(
    const tree_child& root, std::shared_ptr<event_sink> events,
    const std::function<std::optional<child_spec>(const tree_child&)>& custom) {
  std::function<caf::expected<supervisor_spec>(const tree_child&)> build;
  build = [&](const tree_child& s) -> caf::expected<supervisor_spec> {
    supervisor_spec sup;
    sup.name = s.name;
    sup.strategy = s.strategy;
    sup.intensity = s.intensity;
    sup.backoff = s.backoff;
    for (const auto& c : s.children) {
      if (c.placement.process == process_mode::isolated)
        return cluster_error(st_->cfg.origin + ":" + std::to_string(c.line) + ": " + c.path +
                             ": process = \"isolated\" is supported for a training job's "
                             "workers only ([job.worker])");
      child_spec cs;
      if (c.is_supervisor()) {
        auto sub = build(c);
        if (!sub)
          return sub.error();
        cs = supervisor_child(std::move(*sub), c.restart);
      } else if (auto made = custom ? custom(c) : std::nullopt) {
        cs = std::move(*made);
      } else {
        cs.id = c.name;
        auto home = c.placement.start.empty() ? st_->self.name : c.placement.start.front();
        cs.start = placed(c.type, caf::message{}, home, c.placement.failover, true);
      }
      cs.id = c.name;
      cs.restart = c.restart;
      cs.shutdown = c.shutdown;
      cs.start_timeout = c.start_timeout;
      cs.liveness_deadline = c.liveness_deadline;
      sup.children.push_back(std::move(cs));
    }
    return sup;
  };
  auto out = build(root);
  if (out)
    out->events = std::move(events);
  return out;
}

std::vector<peer_view> cluster_node::peers() const {
  std::lock_guard<std::mutex> guard{st_->mtx};
  std::vector<peer_view> out;
  for (auto& [name, e] : st_->peers)
    out.push_back(st_->view(e));
  return out;
}

bool cluster_node::await_peers(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> guard{st_->mtx};
  return st_->cv.wait_for(guard, timeout, [this] {
    for (auto& [name, e] : st_->peers)
      if (e.state != peer_state::alive)
        return false;
    return true;
  });
}

void cluster_node::stop_peers() {
  std::vector<caf::actor> to;
  {
    std::lock_guard<std::mutex> guard{st_->mtx};
    for (auto& [name, e] : st_->peers)
      if (e.agent && e.state != peer_state::dead)
        to.push_back(e.agent);
  }
  // Waits for each answer: a node that ends right after this call must not
  // take the requests down with its connections (a peer that missed it would
  // see the leader die and take over a finished job).
  caf::scoped_actor self{st_->rt->system()};
  for (auto& a : to)
    self->request(a, std::chrono::seconds(1), stop_atom::value).receive([] {}, [](caf::error&) {});
}

bool cluster_node::await_stop_request(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> guard{st_->mtx};
  return st_->cv.wait_for(guard, timeout, [this] { return st_->stop_requested; });
}

void cluster_node::request_stop() {
  std::lock_guard<std::mutex> guard{st_->mtx};
  st_->stop_requested = true;
  st_->cv.notify_all();
}

void cluster_node::set_leader_candidates(std::vector<std::string> candidates) {
  std::lock_guard<std::mutex> guard{st_->mtx};
  st_->candidates = std::move(candidates);
  if (st_->leader.empty() && !st_->candidates.empty())
    st_->leader = st_->candidates.front();
  st_->cv.notify_all();
}

std::string cluster_node::leader() const {
  return st_->current_leader();
}

bool cluster_node::await_leadership(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> guard{st_->mtx};
  st_->cv.wait_for(guard, timeout,
                   [this] { return st_->stop_requested || st_->leader == st_->self.name; });
  return !st_->stop_requested && st_->leader == st_->self.name;
}

bool cluster_node::claim_leadership() {
  std::lock_guard<std::mutex> guard{st_->mtx};
  if (st_->stop_requested || st_->paused || st_->leader != st_->self.name ||
      !st_->has_quorum_locked())
    return false;
  st_->leading = true;
  return true;
}

bool cluster_node::fenced() const {
  std::lock_guard<std::mutex> guard{st_->mtx};
  return st_->fenced;
}

void cluster_node::set_status_provider(std::function<std::string()> provider) {
  std::lock_guard<std::mutex> guard{st_->mtx};
  st_->status_provider = std::move(provider);
}

std::string cluster_node::status() const {
  return render_status(*st_);
}

std::string cluster_node::node_of(const caf::actor& a) const {
  if (!a)
    return {};
  if (a.node() == st_->agent.node())
    return st_->self.name;
  std::lock_guard<std::mutex> guard{st_->mtx};
  for (auto& [name, e] : st_->peers)
    if (e.agent && e.agent.node() == a.node())
      return name;
  return {};
}

caf::expected<std::string> cluster_node::query_status(caf::actor_system& sys,
                                                      const std::string& host, uint16_t port,
                                                      caf::timespan timeout) {
  auto agent = connect_to_peer(sys, host, port, timeout);
  if (!agent)
    return agent.error();
  caf::expected<std::string> result{std::string{}};
  caf::scoped_actor self{sys};
  self->request(*agent, timeout, status_atom::value)
      .receive([&](std::string& text) { result = std::move(text); },
               [&](caf::error& err) { result = std::move(err); });
  return result;
}

} // namespace understudy
