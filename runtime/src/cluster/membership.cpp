// The node's membership as a thin dispatcher around its membership core (membership_core.hpp):
// the connector, hello and heartbeats in, the core's actions out (beats, the coordinator's
// transactions, peer changes, leadership, fencing).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/openssl/manager.hpp>

#include "agent.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::cluster_detail {

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
            if (!e.agent && pos(name) > mine)
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

namespace {

using time_point = clock_type::time_point;

/// Posts `f` to the agent `agent` (if it still runs), to be applied to its core there.
void post(const caf::weak_actor_ptr& agent, std::function<void(membership_core&, time_point)> f) {
  if (auto a = agent.lock())
    caf::anon_send(caf::actor_cast<caf::actor>(a), core_atom::value, core_input{std::move(f)});
}

/// Carries out what the core asked for, then mirrors its leader into the shared state.
void run_actions(caf::event_based_actor* self, const state_ptr& st) {
  auto& core = *st->core;
  caf::weak_actor_ptr me{self->ctrl()};
  for (auto& a : core.take_actions()) {
    switch (a.kind) {
      case membership_action_kind::send_beats: {
        std::vector<caf::actor> to;
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          for (auto& name : a.targets)
            if (auto e = st->peers.find(name); e != st->peers.end() && e->second.agent)
              to.push_back(e->second.agent);
        }
        for (auto& h : to)
          self->send(h, beat_atom::value, st->self.name, a.epoch, core.leader());
        break;
      }
      case membership_action_kind::declare_dead: {
        // A node that is stopping (its work done, or asked to) reports
        // nobody: its peers stop too.
        bool stopping = false;
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          stopping = st->stop_requested;
        }
        if (stopping)
          break;
        auto peer = a.peer;
        auto epoch = a.epoch;
        st->announce("reports peer " + peer + " (epoch " + std::to_string(epoch) +
                     ") to the coordinator: " + a.text);
        st->coord->declare_dead(peer, epoch, [me, peer, epoch](caf::expected<bool> r) {
          post(me, [peer, epoch, r](membership_core& c, time_point now) {
            c.declared(peer, epoch, r, now);
          });
        });
        break;
      }
      case membership_action_kind::campaign:
        st->coord->campaign([me](caf::expected<uint64_t> r) {
          post(me, [r](membership_core& c, time_point now) { c.campaigned(r, now); });
        });
        break;
      case membership_action_kind::keep_alive: {
        auto sent = a.at;
        st->coord->keep_alive([me, sent](caf::expected<caf::unit_t> r) {
          post(me, [r, sent](membership_core& c, time_point now) { c.kept_alive(r, sent, now); });
        });
        break;
      }
      case membership_action_kind::peer_changed: {
        peer_view v;
        std::vector<peer_listener> ls;
        std::vector<caf::actor> orphans;
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          auto i = st->peers.find(a.peer);
          if (i == st->peers.end())
            break;
          auto& e = i->second;
          e.state = a.state;
          e.generation = std::max(e.generation, a.epoch);
          if (a.state == peer_state::dead) {
            // Declared dead by the coordinator (or replaced by a newer incarnation): its
            // epoch is fenced here too, and the actors its supervisors started here are
            // orphans (its successor starts them afresh).
            e.fenced = std::max(e.fenced, a.epoch);
            e.agent = nullptr;
            auto orphan = [&](const spawned_actor& s) { return s.from == a.peer; };
            for (auto& s : st->spawned)
              if (orphan(s))
                orphans.push_back(s.handle);
            st->spawned.erase(std::remove_if(st->spawned.begin(), st->spawned.end(), orphan),
                              st->spawned.end());
          }
          v = st->view(e);
          v.reason = a.text;
          ls = st->listeners;
        }
        for (auto& o : orphans)
          caf::anon_send_exit(o, caf::exit_reason::kill);
        for (auto& f : ls)
          f(v);
        st->cv.notify_all();
        break;
      }
      case membership_action_kind::leadership_gained: {
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          st->leads = true;
          st->leader = st->self.name;
          st->term = a.epoch;
        }
        st->cv.notify_all();
        st->announce("leads (term " + std::to_string(a.epoch) + ")");
        break;
      }
      case membership_action_kind::leadership_lost:
        // Its tree may be running: the process ends (the fenced action follows).
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          st->leads = false;
        }
        st->announce("no longer leads (term " + std::to_string(a.epoch) + "): " + a.text);
        break;
      case membership_action_kind::fenced: {
        {
          std::lock_guard<std::mutex> guard{st->mtx};
          // A node that is stopping in an orderly way (it left, or was asked
          // to stop) ends with its own status: the end of its session is no news.
          if (st->stop_requested && !st->fenced && !st->leads)
            break;
          st->fenced = true;
          st->fenced_reason = a.text;
          st->leads = false;
          st->stop_requested = true;
        }
        st->cv.notify_all();
        st->announce("fenced: " + a.text);
        break;
      }
      case membership_action_kind::note:
        st->announce(a.text);
        break;
    }
  }
  std::lock_guard<std::mutex> guard{st->mtx};
  if (!st->leads && (st->leader != core.leader() || st->term != core.term())) {
    st->leader = core.leader();
    st->term = core.term();
    st->cv.notify_all();
  }
}

/// A peer's agent ended (its connection closed): reported to the core.
void on_down(caf::event_based_actor* self, const state_ptr& st, const caf::down_msg& dm) {
  std::string name;
  {
    std::lock_guard<std::mutex> guard{st->mtx};
    // Its connection closed: a new one is asked about again.
    st->tls_names.erase(dm.source.node());
    for (auto& [n, e] : st->peers)
      if (e.agent && e.agent.address() == dm.source) {
        name = n;
        e.agent = nullptr;
      }
  }
  if (name.empty())
    return;
  st->core->connection_lost(name, clock_type::now());
  run_actions(self, st);
}

/// A message from `name` at `epoch` that proves it lives (hello, heartbeat): what the core made
/// of it (refused: a fenced epoch, one older than known, an unknown peer; unconfirmed: newer
/// than the coordinator's view shows here yet). Once accepted, records its agent.
beat_verdict admit(caf::event_based_actor* self, const state_ptr& st, const std::string& name,
                   uint64_t epoch, const caf::actor& a) {
  auto now = clock_type::now();
  auto verdict = st->core->beat(name, epoch, now);
  if (verdict != beat_verdict::accepted) {
    run_actions(self, st);
    return verdict;
  }
  {
    std::lock_guard<std::mutex> guard{st->mtx};
    auto i = st->peers.find(name);
    if (i != st->peers.end()) {
      auto& e = i->second;
      if (a && (!e.agent || e.agent != a)) {
        e.agent = a;
        self->monitor(a);
        st->cv.notify_all(); // a placement may wait for it
      }
      e.detector.heartbeat(now);
    }
  }
  run_actions(self, st);
  return beat_verdict::accepted;
}

/// Whether a certificate naming `cn` (none: no name) may send a message that
/// claims to come from node `name` ("": any node of the cluster, or with
/// `reader_ok` the status reader too): none, or the refusal.
caf::error judge_peer(const state_ptr& st, const std::string& name, bool reader_ok,
                      const std::optional<std::string>& cn, const std::string& where) {
  auto any = [&] { return st->knows(*cn) || (reader_ok && *cn == status_reader_name); };
  if (cn && (name.empty() ? any() : *cn == name))
    return {};
  auto named = cn ? "'" + *cn + "'" : std::string{"no node"};
  if (name.empty())
    return make_error(cluster_errc::identity_mismatch,
                      "the peer at " + where +
                          " has no certificate of a node of the cluster (it "
                          "names " +
                          named + "): refused");
  return make_error(cluster_errc::identity_mismatch,
                    "the peer at " + where + " says it is node " + shown(name) +
                        " but its certificate names " + named + ": refused");
}

/// Over TLS, checks that the certificate the peer `who` presented names the
/// node `name` it claims to be (CAF checks only that the cluster CA signed
/// it), then calls `k` with the error or none. Without TLS, calls it at once.
/// A connection's certificate is asked of CAF's openssl manager once and
/// remembered by the peer's node id: the manager blocks while it connects to
/// an unreachable peer, which must not stall the checks of the others.
void check_peer(caf::event_based_actor* self, const state_ptr& st, const caf::actor& who,
                const std::string& name, std::function<void(caf::error)> k,
                bool reader_ok = false) {
  if (!st->cfg.cluster.security || !who || !self->home_system().has_openssl_manager()) {
    k(caf::error{});
    return;
  }
  auto peer = who.node();
  std::optional<std::pair<std::optional<std::string>, std::string>> known;
  {
    std::lock_guard<std::mutex> guard{st->mtx};
    if (auto i = st->tls_names.find(peer); i != st->tls_names.end())
      known = i->second;
  }
  if (known) {
    k(judge_peer(st, name, reader_ok, known->first, known->second));
    return;
  }
  // The messages of one peer are judged in the order they arrived: while a
  // lookup of its certificate is under way, later ones wait behind it (had
  // they been judged from the cache the first answer fills, they would
  // overtake the earlier ones).
  auto judge = [st, name, reader_ok, k](const std::optional<std::string>& cn,
                                        const std::string& where, const caf::error& err) {
    if (err)
      k(err);
    else
      k(judge_peer(st, name, reader_ok, cn, where));
  };
  {
    std::lock_guard<std::mutex> guard{st->mtx};
    auto& waiting = st->tls_waiting[peer];
    waiting.push_back(std::move(judge));
    if (waiting.size() > 1)
      return; // A lookup is under way.
  }
  auto finish = [st, peer](const std::optional<std::string>& cn, const std::string& where,
                           const caf::error& err) {
    decltype(st->tls_waiting)::mapped_type waiting;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      if (cn)
        st->tls_names[peer] = {cn, where};
      auto i = st->tls_waiting.find(peer);
      if (i != st->tls_waiting.end()) {
        waiting = std::move(i->second);
        st->tls_waiting.erase(i);
      }
    }
    for (auto& w : waiting)
      w(cn, where, err);
  };
  auto mm = self->home_system().openssl_manager().actor_handle();
  self->request(mm, st->fd().connection_timeout, caf::get_atom::value, peer)
      .then(
          [finish](const caf::node_id&, const std::string& host, uint16_t port) {
            finish(tls_peer_name(host, port), host + ":" + std::to_string(port), caf::error{});
          },
          [finish](caf::error& err) { finish(std::nullopt, std::string{}, err); });
}

} // namespace

void authenticate(caf::event_based_actor* self, const state_ptr& st, const caf::actor& sender,
                  const std::string& claimed, std::function<void(caf::error)> k, bool reader_ok) {
  if (sender && sender.node() == self->node()) {
    k(caf::error{}); // from this process
    return;
  }
  auto refused = [st, k](caf::error err) {
    if (err)
      st->announce("node " + st->self.name + " refuses a message: " + describe(err));
    k(std::move(err));
  };
  const bool tls = st->cfg.cluster.security && self->home_system().has_openssl_manager();
  if (tls && !sender) {
    refused(
        make_error(cluster_errc::identity_mismatch,
                   "an anonymous message" +
                       (claimed.empty() ? std::string{} : " said to be from " + shown(claimed)) +
                       " has no connection to verify: refused"));
    return;
  }
  check_peer(self, st, sender, claimed, std::move(refused), reader_ok);
}

void authenticate_current(caf::event_based_actor* self, const state_ptr& st,
                          const caf::actor& sender, const std::string& what,
                          std::function<void(caf::error)> k) {
  authenticate(self, st, sender, "", [self, st, sender, what, k](caf::error err) {
    if (err || (sender && sender.node() == self->node())) {
      k(std::move(err));
      return;
    }
    std::string from;
    {
      std::lock_guard<std::mutex> guard{st->mtx};
      for (auto& [name, e] : st->peers)
        if (sender && e.agent && e.state != peer_state::dead && e.agent.node() == sender.node())
          from = name;
    }
    if (!from.empty()) {
      k(caf::error{});
      return;
    }
    const auto why = "node " + st->self.name + " refuses " + what +
                     ": it comes from no incarnation of a live peer (one fenced, replaced, or "
                     "never admitted)";
    // (Logged as the refusal it is: the note does not read as this node being fenced.)
    st->announce(why);
    k(make_error(cluster_errc::fenced, why));
  });
}

namespace {

/// The connector reached `dialed`: says hello to it and admits it once it
/// answered as `dialed` (and its certificate says so).
void on_up(caf::event_based_actor* self, const state_ptr& st, const std::string& dialed,
           const caf::actor& a) {
  // Refused (a fenced epoch), or no answer: the connector tries again.
  self->request(a, st->fd().connection_timeout, hello_atom::value, st->self.name, st->generation,
                st->current_leader())
      .then(
          [self, st, a, dialed](const std::string& peer, uint64_t epoch, const std::string&) {
            // The node at the address of `dialed` must be `dialed`, and
            // over TLS its certificate must say so.
            check_peer(self, st, a, peer, [self, st, a, peer, epoch, dialed](caf::error err) {
              if (!err && peer != dialed)
                err = make_error(cluster_errc::identity_mismatch,
                                 "the node at the address of " + dialed + " says it is " + peer);
              if (err) {
                st->announce(describe(err));
                return;
              }
              // Unconfirmed (it restarted, and the view showing so has not come yet): the
              // connector dials it again.
              auto verdict = admit(self, st, peer, epoch, a);
              if (verdict == beat_verdict::refused)
                st->announce("peer " + peer + " answers as epoch " + std::to_string(epoch) +
                             ", which is fenced or stale: not admitted");
              else if (verdict == beat_verdict::unconfirmed)
                st->announce("peer " + peer + " answers as epoch " + std::to_string(epoch) +
                             ", which the coordinator has not shown here yet: not admitted yet");
            });
          },
          [](caf::error&) {});
}

/// A peer says hello: answered with this node's name, epoch and leader, or an
/// error if the peer is unknown, not who it says, or its epoch is fenced.
caf::result<std::string, uint64_t, std::string> on_hello(caf::event_based_actor* self,
                                                         const state_ptr& st,
                                                         const std::string& name, uint64_t epoch) {
  auto sender = caf::actor_cast<caf::actor>(self->current_sender());
  if (!st->knows(name))
    return make_error(cluster_errc::unknown_node, "unknown peer '" + shown(name) + "': node " +
                                                      st->self.name + " of cluster '" +
                                                      st->cfg.cluster.name +
                                                      "' has no such node in " + st->cfg.origin);
  auto rp = self->make_response_promise<std::string, uint64_t, std::string>();
  check_peer(self, st, sender, name, [self, st, rp, name, epoch, sender](caf::error err) mutable {
    if (err) {
      rp.deliver(std::move(err));
      return;
    }
    // An epoch the coordinator's view has not shown here yet (the peer restarted, and its
    // hello outran the view) waits for the next views, up to the connection timeout.
    auto until = clock_type::now() + st->fd().connection_timeout;
    auto answer = [self, st, rp, name, epoch, sender, until]() mutable {
      auto verdict = admit(self, st, name, epoch, sender);
      if (verdict == beat_verdict::unconfirmed && clock_type::now() < until)
        return false;
      if (verdict == beat_verdict::accepted)
        rp.deliver(st->self.name, st->generation, st->current_leader());
      else if (verdict == beat_verdict::refused)
        rp.deliver(
            make_error(cluster_errc::fenced, "node " + name + " epoch " + std::to_string(epoch) +
                                                 " is fenced: it was declared dead or replaced"));
      else
        rp.deliver(make_error(cluster_errc::peer_unreachable,
                              "node " + name + " epoch " + std::to_string(epoch) +
                                  ": the coordinator has not shown that epoch to node " +
                                  st->self.name + " yet; say hello again"));
      return true;
    };
    if (!answer())
      st->pending_hellos.emplace_back(std::move(answer));
  });
  return rp;
}

/// Tries the hellos that wait for a view again (see cluster_node::state::pending_hellos).
void answer_pending_hellos(const state_ptr& st) {
  auto todo = std::move(st->pending_hellos);
  st->pending_hellos.clear();
  for (auto& f : todo)
    if (!f())
      st->pending_hellos.push_back(std::move(f));
}

/// One round of the core: beats, detection, renewals when due; schedules the next.
void on_tick(caf::event_based_actor* self, const state_ptr& st) {
  auto now = clock_type::now();
  st->core->tick(now);
  run_actions(self, st);
  answer_pending_hellos(st); // those past their deadline are answered
  auto next = st->core->next_tick(clock_type::now());
  auto wait = std::max<caf::timespan>(next - clock_type::now(), std::chrono::microseconds(200));
  self->delayed_send(self, wait, tick_atom::value);
}

} // namespace

caf::message_handler membership_handlers(caf::event_based_actor* self, const state_ptr& st) {
  self->set_down_handler([self, st](caf::down_msg& dm) { on_down(self, st, dm); });
  // The coordinator's views go to the core on this actor's thread.
  caf::weak_actor_ptr me{self->ctrl()};
  st->coord->watch([me](const coordination_view& v) {
    post(me, [v](membership_core& c, time_point now) { c.view(v, now); });
  });
  self->send(self, tick_atom::value);
  return {
      [self, st](up_atom, const std::string& dialed, const caf::actor& a) {
        if (from_here(self))
          on_up(self, st, dialed, a);
      },
      [self, st](hello_atom, const std::string& name, uint64_t epoch,
                 const std::string&) -> caf::result<std::string, uint64_t, std::string> {
        return on_hello(self, st, name, epoch);
      },
      [self, st](beat_atom, const std::string& name, uint64_t epoch, const std::string&) {
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        authenticate(self, st, sender, name, [self, st, name, epoch, sender](caf::error err) {
          if (!err && st->knows(name))
            admit(self, st, name, epoch, sender);
        });
      },
      [self, st](tick_atom) {
        if (from_here(self))
          on_tick(self, st);
      },
      // Posted by this process only (anonymously, from the coordinator's
      // threads): a core_input cannot be deserialized, so none comes from the network.
      [self, st](core_atom, const core_input& in) {
        if (!in.apply)
          return;
        in.apply(*st->core, clock_type::now());
        run_actions(self, st);
        answer_pending_hellos(st);
      },
  };
}

} // namespace understudy::cluster_detail
