// The public API of cluster_node but placement: configuring, starting, peers, leadership, status.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/defaults.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/spawn_options.hpp>
#include <nlohmann/json.hpp>

#include "agent.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/cluster/memory_coordinator.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/process/process_host.hpp"
#include "understudy/state/runtime.hpp"

namespace understudy {

namespace cluster_detail {

std::string render_status(const cluster_node::state& st) {
  std::string out;
  std::function<std::string()> provider;
  {
    std::lock_guard<std::mutex> guard{st.mtx};
    const auto& me = st.self;
    out += "node " + me.name + " (" + to_string(me.role) + ") at " + me.host + ":" +
           std::to_string(me.port) + ", epoch " + std::to_string(st.generation) +
           (me.buddy.empty() ? "" : ", replicating to " + me.buddy) +
           (st.fenced  ? ", FENCED (" + st.fenced_reason + ")"
            : st.leads ? (st.leading ? ", runs the tree" : ", about to run the tree") +
                             std::string{" (term "} + std::to_string(st.term) + ")"
            : st.leader.empty()
                ? ", no leader yet"
                : ", the tree runs on " + st.leader + " (term " + std::to_string(st.term) + ")") +
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
             last + (e.generation != 0 ? ", epoch " + std::to_string(e.generation) : "") +
             (e.fenced != 0 ? ", fenced up to epoch " + std::to_string(e.fenced) : "") + "\n";
    }
    provider = st.status_provider;
  }
  if (provider)
    out += provider();
  return out;
}

std::string render_status_json(const cluster_node::state& st) {
  using nlohmann::json;
  json out;
  std::function<std::string()> provider;
  {
    std::lock_guard<std::mutex> guard{st.mtx};
    const auto& me = st.self;
    out["node"] = me.name;
    out["role"] = to_string(me.role);
    out["host"] = me.host;
    out["port"] = me.port;
    out["epoch"] = st.generation;
    out["buddy"] = me.buddy.empty() ? json(nullptr) : json(me.buddy);
    out["fenced"] = st.fenced;
    if (st.fenced)
      out["fenced_reason"] = st.fenced_reason;
    out["leads"] = st.leads && st.leading;
    out["leader"] = st.leads ? json(me.name) : st.leader.empty() ? json(nullptr) : json(st.leader);
    out["term"] = st.term;
    auto now = clock_type::now();
    json peers = json::array();
    for (auto& [name, e] : st.peers) {
      json p;
      p["name"] = name;
      p["state"] = to_string(e.state);
      p["phi"] = e.detector.phi(now);
      if (auto l = e.detector.last())
        p["last_heartbeat_ms"] =
            std::chrono::duration_cast<std::chrono::milliseconds>(now - *l).count();
      else
        p["last_heartbeat_ms"] = nullptr;
      p["epoch"] = e.generation;
      p["fenced_up_to"] = e.fenced;
      peers.push_back(std::move(p));
    }
    out["peers"] = std::move(peers);
    provider = st.status_json_provider;
  }
  if (provider) {
    auto more = json::parse(provider(), nullptr, false);
    if (more.is_object())
      for (auto& [key, value] : more.items())
        out[key] = value;
  }
  return out.dump();
}

} // namespace cluster_detail

caf::expected<std::vector<std::string>> cluster_node::configure(caf::actor_system_config& cfg,
                                                                const node_config& nc,
                                                                const std::string& name) {
  auto notes = prepare_node_system_config(cfg, nc, name);
  if (!notes)
    return notes;
  // CAF closes a connection that stays silent for this long, which ends every
  // proxy of the peer (down messages for its actors): two heartbeat intervals
  // past the detector's deadline, so that a peer paused for less than the
  // deadline (its last beat up to an interval before the pause) keeps its
  // connection, and the detector, not the transport, reports a longer silence.
  const auto& fd = nc.cluster.failure_detection;
  cfg.set("middleman.connection-timeout", caf::timespan{fd.deadline + 2 * fd.heartbeat_interval});
  cfg.add_message_type<checkpoint_batch>("understudy::checkpoint_batch");
  register_cluster_error_categories(cfg);
  // The node hosts isolated children in processes of their own.
  register_process_types(cfg);
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
  st_->status_json_provider = nullptr;
}

namespace {

/// Joins `coord` as `name`, waiting up to `timeout`: the epoch and when the join was sent.
caf::expected<std::pair<uint64_t, cluster_detail::clock_type::time_point>> join(
    coordinator& coord, const std::string& name, std::chrono::milliseconds timeout) {
  auto answer = std::make_shared<std::promise<caf::expected<uint64_t>>>();
  auto future = answer->get_future();
  auto sent = cluster_detail::clock_type::now();
  coord.join(name, [answer](caf::expected<uint64_t> r) { answer->set_value(std::move(r)); });
  if (future.wait_for(timeout) != std::future_status::ready)
    return make_error(coordination_errc::unavailable,
                      "node " + name +
                          " cannot join the cluster: the coordination service did "
                          "not answer within " +
                          std::to_string(timeout.count()) + " ms");
  auto epoch = future.get();
  if (!epoch)
    return with_context(epoch.error(), "node " + name + " cannot join the cluster");
  return std::make_pair(*epoch, sent);
}

} // namespace

caf::expected<std::shared_ptr<cluster_node>> cluster_node::start(
    runtime& rt, const node_config& nc, const std::string& name, std::shared_ptr<event_sink> events,
    std::function<void(std::chrono::nanoseconds)> on_commit, std::shared_ptr<coordinator> coord) {
  auto me = nc.find_node(name);
  if (me == nullptr)
    return make_error(cluster_errc::unknown_node, nc.origin + ": no node named '" + name + "'");
  if (!coord) {
    if (nc.nodes.size() > 1)
      return make_error(coordination_errc::invalid_config,
                        nc.origin + ": a cluster of " + std::to_string(nc.nodes.size()) +
                            " nodes needs a coordinator (etcd: [cluster.coordination])");
    // A node alone: an in-process service decides for it.
    coord = memory_coordinator::make(
        std::make_shared<memory_coordination_service>(nc.cluster.coordination.session_ttl));
  }
  auto st = std::make_shared<state>();
  st->rt = &rt;
  st->cfg = nc;
  st->self = *me;
  st->events = std::move(events);
  st->coord = coord;
  const auto& fd = nc.cluster.failure_detection;
  auto joined =
      join(*coord, name,
           std::max(std::chrono::duration_cast<std::chrono::milliseconds>(fd.connection_timeout),
                    std::chrono::milliseconds(10000)));
  if (!joined)
    return joined.error();
  st->generation = joined->first;
  cluster_detail::membership_settings ms;
  ms.self = name;
  for (auto& n : nc.nodes)
    if (n.name != name) {
      st->peers.emplace(n.name, peer_entry{n, fd.heartbeat_interval});
      ms.peers.push_back(n.name);
    }
  ms.heartbeat_interval = fd.heartbeat_interval;
  ms.phi_threshold = fd.phi_threshold;
  ms.deadline = fd.deadline;
  ms.monitors = fd.monitors;
  ms.session_ttl = coord->session_ttl();
  st->core = std::make_unique<cluster_detail::membership_core>(ms);
  st->core->joined(joined->first, joined->second);
  auto& sys = rt.system();
  // A scheduled actor, not a detached one: CAF 0.17 ends a detached actor's
  // thread only once the actor is destroyed, and the BASP layer can hold a
  // reference to an actor that remote nodes saw past the system's shutdown,
  // so a detached agent sometimes kept the process from exiting. Nothing that
  // waits runs on the scheduler: placed() waits on blocking actors of its own.
  st->agent = sys.spawn(cluster_detail::agent_actor, st);
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
    return make_error(cluster_errc::cannot_listen, "node " + name + " cannot listen on " +
                                                       me->host + ":" + std::to_string(me->port) +
                                                       ": " + describe(port.error()));
  }
  st->connector = sys.spawn<caf::detached>(cluster_detail::connector_actor, st);
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
  caf::anon_send(st_->agent, cluster_detail::factory_atom::value);
}

void cluster_node::on_note(std::function<void(const std::string&)> f) {
  std::lock_guard<std::mutex> guard{st_->mtx};
  st_->note_listeners.push_back(std::move(f));
}

void cluster_node::on_peer_change(peer_listener f) {
  std::lock_guard<std::mutex> guard{st_->mtx};
  st_->listeners.push_back(std::move(f));
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

bool cluster_node::await_decided(const std::vector<std::string>& names,
                                 std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> guard{st_->mtx};
  return st_->cv.wait_for(guard, timeout, [&] {
    for (const auto& name : names) {
      if (name == st_->self.name)
        continue;
      auto i = st_->peers.find(name);
      if (i == st_->peers.end() ||
          (i->second.state != peer_state::alive && i->second.state != peer_state::dead))
        return false;
    }
    return true;
  });
}

std::vector<std::string> cluster_node::await_mesh(std::chrono::milliseconds timeout) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  caf::scoped_actor self{st_->rt->system()};
  for (;;) {
    std::vector<std::pair<std::string, caf::actor>> ask;
    std::vector<std::string> missing;
    {
      std::lock_guard<std::mutex> guard{st_->mtx};
      for (auto& [name, e] : st_->peers) {
        if (e.state == peer_state::dead)
          continue;
        if (st_->connected_locked(name))
          ask.emplace_back(name, e.agent);
        else
          missing.push_back(st_->self.name + "-" + name);
      }
    }
    for (auto& [name, agent] : ask) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        missing.push_back(name + "-?");
        continue;
      }
      bool answered = false;
      self->request(agent, left, cluster_detail::mesh_atom::value)
          .receive(
              [&, peer = name](const std::vector<std::string>& unconnected) {
                answered = true;
                for (auto& u : unconnected)
                  missing.push_back(peer + "-" + u);
              },
              [](caf::error&) {});
      if (!answered)
        missing.push_back(name + "-?");
    }
    if (missing.empty() || std::chrono::steady_clock::now() >= deadline)
      return missing;
    // Peers connect to each other on their own (every 100 ms while one is
    // missing): ask again shortly, or at once when a peer of this node changes.
    std::unique_lock<std::mutex> guard{st_->mtx};
    st_->cv.wait_for(guard, std::chrono::milliseconds(20));
  }
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
    self->request(a, std::chrono::seconds(1), cluster_detail::stop_atom::value)
        .receive([] {}, [](caf::error&) {});
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

void cluster_node::leave(std::chrono::milliseconds timeout) {
  {
    std::lock_guard<std::mutex> guard{st_->mtx};
    st_->stop_requested = true;
    st_->cv.notify_all();
  }
  auto answer = std::make_shared<std::promise<void>>();
  auto done = answer->get_future();
  st_->coord->leave([answer](caf::expected<caf::unit_t>) { answer->set_value(); });
  done.wait_for(timeout);
}

void cluster_node::set_leader_candidates(std::vector<std::string> candidates) {
  {
    std::lock_guard<std::mutex> guard{st_->mtx};
    st_->candidates = candidates;
  }
  caf::anon_send(st_->agent, cluster_detail::core_atom::value,
                 cluster_detail::core_input{
                     [names = std::move(candidates)](cluster_detail::membership_core& core,
                                                     cluster_detail::clock_type::time_point now) {
                       core.set_candidates(names, now);
                     }});
}

std::string cluster_node::leader() const {
  return st_->current_leader();
}

uint64_t cluster_node::term() const {
  std::lock_guard<std::mutex> guard{st_->mtx};
  return st_->term;
}

bool cluster_node::await_leadership(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> guard{st_->mtx};
  st_->cv.wait_for(guard, timeout, [this] { return st_->stop_requested || st_->leads; });
  return !st_->stop_requested && st_->leads;
}

bool cluster_node::claim_leadership() {
  std::lock_guard<std::mutex> guard{st_->mtx};
  if (st_->stop_requested || st_->fenced || !st_->leads)
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

void cluster_node::set_status_json_provider(std::function<std::string()> provider) {
  std::lock_guard<std::mutex> guard{st_->mtx};
  st_->status_json_provider = std::move(provider);
}

std::string cluster_node::status_json() const {
  return cluster_detail::render_status_json(*st_);
}

std::string cluster_node::status() const {
  return cluster_detail::render_status(*st_);
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

namespace {

/// Asks the node agent at host:port for `what` (a status atom): its answer.
template <class Atom>
caf::expected<std::string> ask_status(caf::actor_system& sys, const std::string& host,
                                      uint16_t port, caf::timespan timeout, Atom what) {
  auto agent = connect_to_peer(sys, host, port, timeout);
  if (!agent)
    return agent.error();
  caf::expected<std::string> result{std::string{}};
  caf::scoped_actor self{sys};
  self->request(*agent, timeout, what)
      .receive([&](std::string& text) { result = std::move(text); },
               [&](caf::error& err) { result = std::move(err); });
  return result;
}

} // namespace

caf::expected<std::string> cluster_node::query_status(caf::actor_system& sys,
                                                      const std::string& host, uint16_t port,
                                                      caf::timespan timeout) {
  return ask_status(sys, host, port, timeout, cluster_detail::status_atom::value);
}

caf::expected<std::string> cluster_node::query_status_json(caf::actor_system& sys,
                                                           const std::string& host, uint16_t port,
                                                           caf::timespan timeout) {
  return ask_status(sys, host, port, timeout, cluster_detail::status_json_atom::value);
}

} // namespace understudy
