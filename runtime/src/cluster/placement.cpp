// Placement: where a child of the tree starts (cluster_node::placed) and the tree itself.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/blocking_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>

#include "agent.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/core/errors.hpp"

namespace understudy {

namespace cluster_detail {

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

/// The start function of a child placed by cluster_node::placed. Copies share
/// where the child ran last.
class placement {
public:
  placement(state_ptr st, std::string type, caf::message args, const std::string& home,
            std::vector<std::string> failover, bool stateful)
      : st_(std::move(st)),
        type_(std::move(type)),
        args_(std::move(args)),
        failover_(std::move(failover)),
        stateful_(stateful),
        last_(std::make_shared<std::string>(home)) {}

  /// The asynchronous start function: runs the placement on a blocking
  /// actor of its own, so that the supervisor never waits on other nodes or
  /// the coordinator, and hands the outcome to `done`.
  void operator()(child_context& ctx, start_callback done) const;

private:
  /// Places one incarnation: waits as long as its placement needs (on the
  /// placement's own thread), then starts it here or on a peer.
  caf::expected<caf::actor> place(child_context& ctx) const;

  /// An error if this node may not start anything (the coordinator fenced it).
  caf::error await_permission(const child_context& ctx) const;

  /// Waits until the node the child ran on is reachable again or declared
  /// dead (or this node is fenced); an error if neither happens in time.
  caf::error await_verdict(const child_context& ctx) const;

  /// This node, or a peer that is alive and still connected.
  bool usable(const std::string& name) const;

  /// The node that holds the child's newest checkpoints ("" if none does).
  caf::expected<std::string> find_source(child_context& ctx) const;

  /// Copies the child's checkpoints from `source` to `name`, durably.
  caf::expected<uint64_t> copy_checkpoints(child_context& ctx, const std::string& source,
                                           const std::string& name) const;

  /// Asks peer `name` to start the child: a null actor, and `why`, if it does not.
  caf::actor spawn_on(child_context& ctx, const std::string& name, std::string& why) const;

  state_ptr st_;
  std::string type_;
  caf::message args_;
  std::vector<std::string> failover_;
  bool stateful_;
  /// Where the child ran last: its checkpoints are there and, copied, on that
  /// node's buddy.
  std::shared_ptr<std::string> last_;
  /// Whether an incarnation was started by this placement (in this process):
  /// until then `last_` is only the child's home, whose checkpoints may be
  /// older than another node's (the child moved in an earlier run).
  std::shared_ptr<bool> started_ = std::make_shared<bool>(false);
};

caf::error placement::await_permission(const child_context& ctx) const {
  const auto& st = st_;
  std::unique_lock<std::mutex> guard{st->mtx};
  if (!st->fenced)
    return {};
  // The node must end (its process stops on learning it): hold the
  // supervisor here rather than let it spin through restarts that all
  // fail, for up to a connection timeout.
  st->cv.wait_for(guard, st->fd().connection_timeout, [] { return false; });
  return make_error(cluster_errc::fenced, "node " + st->self.name + " does not start " + ctx.path +
                                              ": the coordinator fenced it (" + st->fenced_reason +
                                              ")");
}

bool placement::usable(const std::string& name) const {
  // A peer whose connection just closed may not be declared dead yet, but its
  // agent's proxy ended with the connection (as the lost child's did), and a
  // request to it would go unanswered.
  std::lock_guard<std::mutex> guard{st_->mtx};
  if (name == st_->self.name)
    return true;
  auto i = st_->peers.find(name);
  return i != st_->peers.end() && st_->up_locked(name) && i->second.agent &&
         !i->second.agent->getf(caf::abstract_actor::is_terminated_flag);
}

caf::expected<std::string> placement::find_source(child_context& ctx) const {
  const auto& st = st_;
  // Where it ran last while that node lives; else the live node that holds
  // the newest step of it (asked in the order of the buddy chain from there,
  // then the others: a child's copies are on the buddy of the node it ran on
  // or, while that buddy was dead, further down its chain).
  // Once started here, where it ran last wrote its newest checkpoints. A first
  // start (a cold start of the cluster) asks every node instead: in an
  // earlier run the child may have moved from its home and gone on there.
  if (usable(*last_) && (*started_ || !stateful_))
    return *last_;
  if (!stateful_)
    return std::string{};
  std::vector<std::string> chain{*last_};
  for (auto h = st->cfg.find_node(*last_); h != nullptr && !h->buddy.empty();
       h = st->cfg.find_node(h->buddy)) {
    if (std::find(chain.begin(), chain.end(), h->buddy) != chain.end())
      break;
    chain.push_back(h->buddy);
  }
  for (const auto& n : st->cfg.nodes)
    if (std::find(chain.begin(), chain.end(), n.name) == chain.end())
      chain.push_back(n.name);
  std::string source;
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
    return make_error(cluster_errc::no_live_node, "cannot start " + ctx.path +
                                                      ": no node that could hold its "
                                                      "checkpoints is alive (it ran last on " +
                                                      *last_ + ")");
  // No live node holds any. Its copies are on the node it ran on and on that
  // node's buddy: when both are gone, its checkpoints may be lost with them,
  // and starting it fresh would silently drop them.
  if (best == 0 && chain.size() > 1 && !usable(chain[0]) && !usable(chain[1]))
    return make_error(cluster_errc::no_live_node,
                      "cannot start " + ctx.path + ": its checkpoints are on " + chain[0] +
                          " and its buddy " + chain[1] +
                          ", and neither is alive; it is not started without them");
  // A child that never checkpointed starts fresh.
  return source;
}

caf::expected<uint64_t> placement::copy_checkpoints(child_context& ctx, const std::string& source,
                                                    const std::string& name) const {
  const auto& st = st_;
  caf::actor from;
  if (source == st->self.name) {
    from = st->agent;
  } else {
    std::lock_guard<std::mutex> guard{st->mtx};
    auto i = st->peers.find(source);
    if (i != st->peers.end() && i->second.state != peer_state::dead)
      from = i->second.agent;
  }
  if (!from)
    return make_error(cluster_errc::peer_unreachable, source + " is gone");
  caf::expected<uint64_t> copied{uint64_t{0}};
  caf::scoped_actor self{ctx.system};
  self->request(from, st->fd().connection_timeout + std::chrono::seconds(30), transfer_atom::value,
                ctx.path, name)
      .receive([&](uint64_t n) { copied = n; }, [&](caf::error& err) { copied = std::move(err); });
  return copied;
}

caf::actor placement::spawn_on(child_context& ctx, const std::string& name,
                               std::string& why) const {
  const auto& st = st_;
  caf::actor a;
  {
    std::lock_guard<std::mutex> guard{st->mtx};
    auto i = st->peers.find(name);
    if (i != st->peers.end() && i->second.state != peer_state::dead)
      a = i->second.agent;
  }
  if (!a) {
    why = "dead or not connected";
    return {};
  }
  caf::expected<caf::actor> result{caf::actor{}};
  caf::scoped_actor self{ctx.system};
  // A node whose connection just closed may not be declared dead yet, and
  // a request to its dead proxy goes unanswered: its agent's proxy ended
  // with the connection (as the child's did), or the middleman knows no
  // route to it any more.
  if (a->getf(caf::abstract_actor::is_terminated_flag) || !connected(ctx.system, a)) {
    why = "connection lost";
    return {};
  }
  // A spawn is answered at once.
  auto wait = std::min<caf::timespan>(st->fd().connection_timeout, std::chrono::milliseconds(500));
  self->request(a, wait, spawn_atom::value, type_, ctx.id, ctx.path, ctx.incarnation,
                ctx.token.supervisor, ctx.token.slot, args_)
      .receive([&](caf::actor& h) { result = std::move(h); },
               [&](caf::error& err) { result = std::move(err); });
  if (result && *result)
    return *result;
  why = result ? std::string{"no actor"} : describe(result.error());
  return {};
}

caf::error placement::await_verdict(const child_context& ctx) const {
  const auto& st = st_;
  const auto& name = *last_;
  if (name == st->self.name)
    return {};
  // Reconnected, declared dead by the coordinator, or this node fenced or
  // stopping. A verdict comes within the lost node's session time to live
  // (its lease lapses) while this node reaches the coordinator; while it
  // does not, this node's own session lapses first and it is fenced.
  const auto& fd = st->fd();
  auto limit = fd.connection_timeout + fd.deadline + fd.heartbeat_interval +
               2 * std::chrono::duration_cast<caf::timespan>(st->coord->session_ttl());
  auto decided = [&] {
    auto i = st->peers.find(name);
    // A node never seen (it did not join) cannot be running the child.
    return st->fenced || st->stop_requested || i == st->peers.end() ||
           i->second.state == peer_state::dead || i->second.state == peer_state::unknown ||
           (i->second.agent && !i->second.agent->getf(caf::abstract_actor::is_terminated_flag));
  };
  std::unique_lock<std::mutex> guard{st->mtx};
  if (st->cv.wait_for(guard, limit, decided))
    return {};
  return make_error(cluster_errc::peer_unreachable,
                    "node " + st->self.name + " does not restart " + ctx.path +
                        " elsewhere: " + name +
                        ", where it ran, is unreachable but the coordinator has not "
                        "declared it dead");
}

void placement::operator()(child_context& ctx, start_callback done) const {
  // The context refers to the supervisor's state: copy what the placement uses.
  struct request {
    std::string id;
    std::string path;
    uint64_t incarnation;
    caf::message args;
    child_token token;
    std::shared_ptr<event_sink> events;
  };
  auto req = std::make_shared<request>(
      request{ctx.id, ctx.path, ctx.incarnation, ctx.args, ctx.token, ctx.events});
  ctx.system.spawn([p = *this, req, done = std::move(done)](caf::blocking_actor* self) {
    child_context c{self->system(), req->id,    req->path,  req->incarnation,
                    req->args,      req->token, req->events};
    caf::expected<caf::actor> out{caf::actor{}};
    try {
      out = p.place(c);
    } catch (const std::exception& e) {
      out = make_error(cluster_errc::no_live_node,
                       "placing " + req->path + " failed: " + std::string{e.what()});
    }
    done(std::move(out));
  });
}

caf::expected<caf::actor> placement::place(child_context& ctx) const {
  const auto& st = st_;
  if (auto err = await_permission(ctx))
    return err;
  // A child whose node is unreachable moves only once the coordinator has
  // declared that node dead (its actors there are then orphans, killed): a
  // node cut off from the others must not start a second copy of it.
  if (auto err = await_verdict(ctx))
    return err;
  if (auto err = await_permission(ctx))
    return err;
  auto source = find_source(ctx);
  if (!source)
    return source.error();
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
  if (usable(*last_))
    add(*last_);
  for (auto& name : failover_)
    add(name);
  if (!source->empty())
    add(*source);
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
    if (stateful_ && !source->empty() && name != *source) {
      // Copy its checkpoints from the node that holds them, durably, first.
      auto copied = copy_checkpoints(ctx, *source, name);
      if (!copied) {
        note(name, "cannot copy its checkpoints from " + *source + ": " + describe(copied.error()));
        continue;
      }
      copied_note = ", " + std::to_string(*copied) + " checkpoint versions copied from " + *source;
    }
    auto moved = [&] {
      *started_ = true;
      if (name == *last_)
        return;
      char ms[32];
      std::snprintf(ms, sizeof ms, "%.1f",
                    std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
      st->announce("moved " + ctx.path + " from " + *last_ + " (lost) to " + name + copied_note +
                   ", started in " + ms + " ms");
      *last_ = name;
    };
    if (name == st->self.name) {
      node_factory f;
      {
        std::lock_guard<std::mutex> guard{st->mtx};
        auto i = st->factories.find(type_);
        if (i != st->factories.end())
          f = i->second;
      }
      if (!f)
        return make_error(cluster_errc::no_factory,
                          "no factory for '" + type_ + "' on node " + name);
      auto r = f(ctx, args_);
      if (r)
        moved();
      return r;
    }
    std::string why;
    if (auto a = spawn_on(ctx, name, why)) {
      moved();
      return a;
    }
    note(name, why);
  }
  return make_error(cluster_errc::no_live_node,
                    "cannot start " + ctx.path + " (" + type_ + ") on any node: " + tried);
}

} // namespace

} // namespace cluster_detail

async_start_function cluster_node::placed(std::string type, caf::message args, std::string home,
                                          std::vector<std::string> failover, bool stateful) {
  return cluster_detail::placement(st_, std::move(type), std::move(args), home, std::move(failover),
                                   stateful);
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
        return make_error(cluster_errc::unsupported_placement,
                          st_->cfg.origin + ":" + std::to_string(c.line) + ": " + c.path +
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
        cs.start_async = placed(c.type, caf::message{}, home, c.placement.failover, true);
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

} // namespace understudy
