// The node's membership, fencing and leadership decisions, on injected time.

#include "membership_core.hpp"

#include <algorithm>
#include <iterator>
#include <utility>

namespace understudy::cluster_detail {

std::string to_string(membership_action_kind x) {
  switch (x) {
    case membership_action_kind::send_beats:
      return "send_beats";
    case membership_action_kind::declare_dead:
      return "declare_dead";
    case membership_action_kind::campaign:
      return "campaign";
    case membership_action_kind::keep_alive:
      return "keep_alive";
    case membership_action_kind::peer_changed:
      return "peer_changed";
    case membership_action_kind::leadership_gained:
      return "leadership_gained";
    case membership_action_kind::leadership_lost:
      return "leadership_lost";
    case membership_action_kind::fenced:
      return "fenced";
    case membership_action_kind::note:
      return "note";
  }
  return "?";
}

membership_core::membership_core(membership_settings s) : s_(std::move(s)) {
  for (auto& name : s_.peers)
    if (name != s_.self)
      peers_.emplace(name, peer{s_.heartbeat_interval});
}

// -- time ------------------------------------------------------------------------------------

void membership_core::advance(time_point now) {
  if (!started_) {
    started_ = true;
    last_now_ = now;
    observed_ = now;
  } else if (now > last_now_) {
    // A gap longer than an interval is this process's own pause (nothing ran): it
    // counts as one interval, so that it never looks like the peers' silence.
    if (now - last_now_ > s_.heartbeat_interval) {
      paused_ = true;
      pause_ended_ = now;
    }
    observed_ += std::min<clock_type::duration>(now - last_now_, s_.heartbeat_interval);
    last_now_ = now;
  }
  check_lease(now);
}

void membership_core::check_lease(time_point now) {
  // The lease runs from the newest renewal the service accepted; stopping one interval
  // before it can expire leaves the successor a lease that no longer covers this node.
  if (leading_ && !fenced_ && now - renewed_sent_ > s_.session_ttl - s_.heartbeat_interval)
    fence("the leader could not renew its coordination session in time");
}

membership_core::time_point membership_core::next_tick(time_point now) const {
  auto t = now + s_.heartbeat_interval / 4;
  if (beaten_)
    t = std::min(t, last_beat_ + s_.heartbeat_interval);
  auto slack = std::chrono::microseconds(100);
  for (auto& name : watching_) {
    auto& p = peers_.at(name);
    auto last = p.detector.last();
    if (!last || (p.state != peer_state::alive && p.state != peer_state::suspected))
      continue;
    auto due = *last + s_.deadline + s_.heartbeat_interval + slack;
    t = std::min(t, now + std::max<clock_type::duration>(due - observed_, {}));
  }
  if (leading_)
    t = std::min(t, renewed_sent_ + s_.session_ttl - s_.heartbeat_interval + slack);
  return std::max(t, now + std::chrono::microseconds(100));
}

// -- inputs ----------------------------------------------------------------------------------

void membership_core::joined(uint64_t epoch, time_point sent) {
  advance(sent);
  epoch_ = epoch;
  renewed_sent_ = sent;
  last_keep_alive_ = sent;
  push({membership_action_kind::note,
        s_.self,
        epoch,
        peer_state::unknown,
        "joined the cluster as epoch " + std::to_string(epoch),
        {}});
  maybe_campaign(sent);
}

void membership_core::set_candidates(std::vector<std::string> candidates, time_point now) {
  advance(now);
  candidates_ = std::move(candidates);
  maybe_campaign(now);
}

void membership_core::tick(time_point now) {
  advance(now);
  if (fenced_ || epoch_ == 0)
    return;
  const auto interval = s_.heartbeat_interval;
  // Beats on a fixed schedule (no drift), so that a peer's deadline counts from a beat at
  // most one interval old.
  if (!beaten_ || now >= last_beat_ + interval) {
    last_beat_ = beaten_ && now - last_beat_ < 2 * interval ? last_beat_ + interval : now;
    beaten_ = true;
    update_ring();
    membership_action a{
        membership_action_kind::send_beats, {}, epoch_, peer_state::unknown, {}, {}};
    a.targets = beat_to_;
    push(std::move(a));
  }
  // Four renewals per time to live: a pause of up to a deadline (plus the
  // time since the last renewal) leaves the session a second or more.
  if (now - last_keep_alive_ >= s_.session_ttl / 4) {
    last_keep_alive_ = now;
    push({membership_action_kind::keep_alive, {}, epoch_, peer_state::unknown, {}, now});
  }
  detect(now);
  send_declares(now);
  maybe_campaign(now);
}

void membership_core::update_ring() {
  if (!ring_dirty_)
    return;
  ring_dirty_ = false;
  std::vector<std::string> old_watching(watching_.begin(), watching_.end());
  beat_to_.clear();
  watching_.clear();
  if (!ring_mode()) {
    for (auto& [name, p] : peers_) {
      watching_.insert(name);
      if (p.state != peer_state::dead)
        beat_to_.push_back(name);
    }
    return;
  }
  // The members of the coordinator's newest view, this node included, by name (peers_ is
  // ordered): every node computes the same ring from the same view. Before the first view,
  // the nodes not dead.
  auto on_ring = [this](const std::string& name, const peer& p) {
    if (!have_view_)
      return p.state != peer_state::dead;
    auto m = last_view_.members.find(name);
    return m != last_view_.members.end() && m->second > p.fenced;
  };
  std::vector<std::string> ring;
  bool placed = false;
  for (auto& [name, p] : peers_) {
    if (!placed && s_.self < name) {
      ring.push_back(s_.self);
      placed = true;
    }
    if (on_ring(name, p))
      ring.push_back(name);
  }
  if (!placed)
    ring.push_back(s_.self);
  const size_t n = ring.size();
  const size_t me =
      static_cast<size_t>(std::find(ring.begin(), ring.end(), s_.self) - ring.begin());
  const size_t k = std::min(std::max<size_t>(s_.monitors, 1), n - 1);
  for (size_t i = 1; i <= k; ++i) {
    beat_to_.push_back(ring[(me + i) % n]);
    watching_.insert(ring[(me + n - i) % n]);
  }
  // A peer newly watched has not been beating to this node: its silence counts from now.
  for (auto& name : watching_)
    if (!std::binary_search(old_watching.begin(), old_watching.end(), name)) {
      auto& p = peers_.at(name);
      if (p.state == peer_state::alive || p.state == peer_state::suspected) {
        p.detector = phi_accrual{s_.heartbeat_interval};
        p.detector.heartbeat(observed_);
      }
    }
}

void membership_core::detect(time_point now) {
  update_ring();
  const auto limit = s_.deadline + s_.heartbeat_interval;
  auto watched = [this](const std::string& name, const peer& p) {
    return (p.state == peer_state::alive || p.state == peer_state::suspected) &&
           p.detector.last().has_value() && watching_.count(name) != 0;
  };
  // A node that finds most of its peers silent at once is more likely the one cut off: it
  // reports them a deadline later, so that, if it is, the others report it first.
  size_t live = 0;
  size_t silent = 0;
  for (auto& name : watching_) {
    auto& p = peers_.at(name);
    if (watched(name, p)) {
      ++live;
      if (observed_ - *p.detector.last() > limit)
        ++silent;
    }
  }
  // (One silent peer is no such sign: in a cluster of two it would always be "most".)
  const auto report_after = silent > 1 && 2 * silent > live ? limit + s_.deadline : limit;
  // The peers a tick can change, in name order: the watched ones and the suspected ones (no
  // other peer's state depends on time).
  std::vector<std::string> due;
  std::set_union(watching_.begin(), watching_.end(), suspected_.begin(), suspected_.end(),
                 std::back_inserter(due));
  for (auto& name : due) {
    auto& p = peers_.at(name);
    if (!watched(name, p)) {
      // On a ring, a peer this node does not watch and reports no more (the coordinator kept
      // it) is alive again while the view shows it a member.
      if (ring_mode() && p.state == peer_state::suspected && p.declare_epoch == 0 && have_view_) {
        auto m = last_view_.members.find(name);
        if (m != last_view_.members.end() && m->second == p.epoch)
          set_state(name, p, peer_state::alive, "a member at epoch " + std::to_string(p.epoch));
      }
      continue;
    }
    auto last = p.detector.last();
    if (observed_ - *last > report_after) {
      want_declare(name, p, "silent past the deadline", now);
    } else if (p.detector.phi(observed_) > s_.phi_threshold) {
      set_state(name, p, peer_state::suspected, "suspected (phi above the threshold)");
    } else if (p.state == peer_state::suspected && p.declare_epoch == 0) {
      set_state(name, p, peer_state::alive, "heartbeats again");
    }
  }
}

beat_verdict membership_core::beat(const std::string& name, uint64_t epoch, time_point now) {
  advance(now);
  auto* p = find(name);
  if (p == nullptr || epoch == 0 || epoch <= p->fenced || epoch < p->epoch)
    return beat_verdict::refused;
  // Epochs are the coordinator's: a newer one counts once a view shows it (view() takes it
  // then, and fences the older incarnation). A restarted node's first beats can arrive before
  // that view; a made-up epoch never gets one.
  if (epoch > p->epoch)
    return beat_verdict::unconfirmed;
  if (fenced_)
    return beat_verdict::accepted; // this node stops; the peer did nothing wrong
  p->detector.heartbeat(observed_);
  if (p->declare_epoch != 0 && !p->declare_in_flight) {
    // The silence ended before the coordinator heard of it: nothing to declare.
    p->declare_epoch = 0;
    push({membership_action_kind::note,
          name,
          epoch,
          peer_state::unknown,
          "peer " + name + " beats again: it is not reported dead",
          {}});
  }
  if (p->state != peer_state::alive && p->declare_epoch == 0)
    set_state(name, *p, peer_state::alive, "heartbeat at epoch " + std::to_string(epoch));
  return beat_verdict::accepted;
}

void membership_core::connection_lost(const std::string& name, time_point now) {
  advance(now);
  auto* p = find(name);
  if (p == nullptr || fenced_ || epoch_ == 0)
    return;
  want_declare(name, *p, "connection lost", now);
  // Connections that close while this process was paused (or right after) were closed by
  // peers that stopped hearing from it: its own silence, not theirs. It reports them a
  // deadline later, unless they beat again meanwhile; if it was declared dead, it learns so
  // from the coordinator first.
  if (paused_ && now - pause_ended_ <= s_.deadline && p->declare_epoch != 0 &&
      !p->declare_in_flight)
    p->declare_next = std::max(p->declare_next, now + s_.deadline);
  send_declares(now);
}

void membership_core::view(const coordination_view& v, time_point now) {
  advance(now);
  if (fenced_ || (have_view_ && v.revision < revision_))
    return;
  revision_ = v.revision;
  have_view_ = true;
  last_view_ = v;
  ring_dirty_ = true;

  if (epoch_ != 0) {
    auto f = v.fenced.find(s_.self);
    auto m = v.members.find(s_.self);
    if (f != v.fenced.end() && f->second >= epoch_) {
      fence("the coordinator declared this node dead (epoch " + std::to_string(epoch_) +
            " is fenced)");
      return;
    }
    if (m != v.members.end() && m->second > epoch_) {
      fence("a newer incarnation of this node joined (epoch " + std::to_string(m->second) + ")");
      return;
    }
    if (m != v.members.end() && m->second == epoch_) {
      self_member_seen_ = true;
    } else if (self_member_seen_) {
      fence("this node is no longer a member: its coordination session ended");
      return;
    }
  }

  for (auto& [name, p] : peers_) {
    if (auto f = v.fenced.find(name); f != v.fenced.end())
      p.fenced = std::max(p.fenced, f->second);
    auto m = v.members.find(name);
    if (m != v.members.end() && m->second > p.epoch) {
      if (p.epoch != 0) {
        p.fenced = std::max(p.fenced, p.epoch);
        if (p.state == peer_state::alive || p.state == peer_state::suspected)
          set_state(name, p, peer_state::dead, "restarted as epoch " + std::to_string(m->second));
      }
      p.epoch = m->second;
      p.detector = phi_accrual{s_.heartbeat_interval};
      p.declare_epoch = 0;
    }
    if (m != v.members.end() && m->second == p.epoch)
      p.member_seen = true;
    // On a ring, a peer this node does not watch never beats to it: the view vouches for it.
    if (ring_mode() && m != v.members.end() && m->second == p.epoch && p.epoch > p.fenced &&
        (p.state == peer_state::unknown || p.state == peer_state::dead)) {
      set_state(name, p, peer_state::alive, "a member at epoch " + std::to_string(p.epoch));
      if (watching_.count(name) != 0) {
        p.detector = phi_accrual{s_.heartbeat_interval};
        p.detector.heartbeat(observed_);
      }
    }
    if (p.epoch == 0 || p.state == peer_state::dead)
      continue;
    if (p.epoch <= p.fenced) {
      auto why = p.declare_reason.empty() ? std::string{"declared dead by the coordinator"}
                                          : p.declare_reason + ", declared dead by the coordinator";
      p.declare_epoch = 0;
      set_state(name, p, peer_state::dead, why);
    } else if (m == v.members.end() && p.member_seen) {
      p.fenced = std::max(p.fenced, p.epoch);
      p.declare_epoch = 0;
      set_state(name, p, peer_state::dead, "its coordination session ended");
    }
  }

  if (v.leader == s_.self) {
    if (!leading_ && v.leader_term > term_) {
      leading_ = true;
      term_ = v.leader_term;
      leader_ = s_.self;
      push({membership_action_kind::leadership_gained,
            s_.self,
            term_,
            peer_state::unknown,
            "leads in term " + std::to_string(term_),
            {}});
      check_lease(now);
    }
    if (leading_ && v.leader_term == term_)
      leading_seen_ = true;
  } else if (leading_) {
    // A view that does not name this node after one did, or that names a later term,
    // ends its leadership; an older view (it lags the campaign's answer) does not.
    if (leading_seen_ || v.leader_term > term_) {
      leader_ = v.leader;
      fence("the coordinator no longer names this node the leader");
      return;
    }
  } else {
    leader_ = v.leader;
    term_ = v.leader_term;
  }
  maybe_campaign(now);
}

void membership_core::declared(const std::string& name, uint64_t epoch,
                               const caf::expected<bool>& result, time_point now) {
  advance(now);
  auto* p = find(name);
  if (p == nullptr || fenced_)
    return;
  if (p->declare_epoch == epoch)
    p->declare_in_flight = false;
  if (result) {
    // Declared, or the condition failed (already declared, restarted): the view tells.
    if (p->declare_epoch == epoch)
      p->declare_epoch = 0;
    return;
  }
  if (fenced_by(result.error()))
    return;
  if (p->declare_epoch == epoch) {
    p->declare_next = now + s_.heartbeat_interval;
    push({membership_action_kind::note,
          name,
          epoch,
          peer_state::unknown,
          "cannot reach the coordinator to report peer " + name + " (" + p->declare_reason +
              "): it declares nobody dead",
          {}});
  }
}

void membership_core::campaigned(const caf::expected<uint64_t>& term, time_point now) {
  advance(now);
  campaigning_ = false;
  if (fenced_)
    return;
  if (!term) {
    if (fenced_by(term.error()))
      return;
    campaign_next_ = now + s_.heartbeat_interval;
    push({membership_action_kind::note,
          s_.self,
          0,
          peer_state::unknown,
          "cannot reach the coordinator to campaign: it does not lead",
          {}});
    return;
  }
  if (*term == 0 || leading_ || (have_view_ && last_view_.leader_term > *term))
    return;
  leading_ = true;
  term_ = *term;
  leader_ = s_.self;
  push({membership_action_kind::leadership_gained,
        s_.self,
        term_,
        peer_state::unknown,
        "leads in term " + std::to_string(term_),
        {}});
  check_lease(now);
}

void membership_core::kept_alive(const caf::expected<caf::unit_t>& result, time_point sent,
                                 time_point now) {
  if (result)
    renewed_sent_ = std::max(renewed_sent_, sent);
  advance(now);
  if (fenced_ || result)
    return;
  if (fenced_by(result.error()))
    return;
  push({membership_action_kind::note,
        s_.self,
        epoch_,
        peer_state::unknown,
        "cannot renew its coordination session",
        {}});
}

// -- helpers ---------------------------------------------------------------------------------

void membership_core::want_declare(const std::string& name, peer& p, std::string why,
                                   time_point now) {
  if (p.epoch == 0 || p.state == peer_state::dead || p.declare_epoch == p.epoch)
    return;
  p.declare_epoch = p.epoch;
  declaring_.insert(name);
  p.declare_reason = std::move(why);
  p.declare_in_flight = false;
  p.declare_next = now;
  if (p.state == peer_state::alive)
    set_state(name, p, peer_state::suspected, p.declare_reason);
}

void membership_core::send_declares(time_point now) {
  for (auto i = declaring_.begin(); i != declaring_.end();) {
    auto& name = *i;
    auto& p = peers_.at(name);
    if (p.declare_epoch == 0) {
      i = declaring_.erase(i);
      continue;
    }
    ++i;
    if (!p.declare_in_flight && now >= p.declare_next) {
      p.declare_in_flight = true;
      push({membership_action_kind::declare_dead,
            name,
            p.declare_epoch,
            peer_state::unknown,
            p.declare_reason,
            {}});
    }
  }
}

void membership_core::maybe_campaign(time_point now) {
  if (fenced_ || epoch_ == 0 || !have_view_ || leading_ || campaigning_ || now < campaign_next_ ||
      !last_view_.leader.empty() || candidates_.empty())
    return;
  auto m = last_view_.members.find(s_.self);
  if (m == last_view_.members.end() || m->second != epoch_)
    return;
  // On a cold start only the first candidate may lead; afterwards the first one, in order,
  // that is a member: every node computes the same turn from the same view.
  std::string turn;
  if (!last_view_.led_before) {
    turn = candidates_.front();
  } else {
    for (auto& c : candidates_)
      if (last_view_.members.count(c) != 0) {
        turn = c;
        break;
      }
  }
  if (turn != s_.self)
    return;
  campaigning_ = true;
  push({membership_action_kind::campaign, s_.self, epoch_, peer_state::unknown, {}, {}});
}

bool membership_core::fenced_by(const caf::error& err) {
  if (!is(err, coordination_errc::session_lost))
    return false;
  fence("its coordination session expired or it was declared dead");
  return true;
}

void membership_core::fence(std::string why) {
  if (fenced_)
    return;
  fenced_ = true;
  fenced_reason_ = why;
  if (leading_) {
    leading_ = false;
    push({membership_action_kind::leadership_lost, s_.self, term_, peer_state::unknown, why, {}});
  }
  push({membership_action_kind::fenced, s_.self, epoch_, peer_state::unknown, std::move(why), {}});
}

void membership_core::set_state(const std::string& name, peer& p, peer_state s, std::string why) {
  if (p.state == s)
    return;
  if ((p.state == peer_state::dead) != (s == peer_state::dead))
    ring_dirty_ = true;
  if (s == peer_state::suspected)
    suspected_.insert(name);
  else if (p.state == peer_state::suspected)
    suspected_.erase(name);
  p.state = s;
  p.reason = why;
  push({membership_action_kind::peer_changed, name, p.epoch, s, std::move(why), {}});
}

void membership_core::push(membership_action a) {
  actions_.push_back(std::move(a));
}

membership_core::peer* membership_core::find(const std::string& name) {
  auto i = peers_.find(name);
  return i == peers_.end() ? nullptr : &i->second;
}

const membership_core::peer* membership_core::find(const std::string& name) const {
  auto i = peers_.find(name);
  return i == peers_.end() ? nullptr : &i->second;
}

// -- outputs and queries ---------------------------------------------------------------------

std::vector<membership_action> membership_core::take_actions() {
  std::vector<membership_action> out;
  out.swap(actions_);
  return out;
}

bool membership_core::accepts(const std::string& name, uint64_t epoch) const {
  auto* p = find(name);
  return p != nullptr && epoch != 0 && epoch > p->fenced && epoch == p->epoch;
}

std::vector<peer_view> membership_core::peers() const {
  std::vector<peer_view> out;
  for (auto& [name, p] : peers_)
    out.push_back({name, p.state, p.detector.phi(observed_), p.epoch, p.reason});
  return out;
}

peer_state membership_core::state_of(const std::string& name) const {
  auto* p = find(name);
  return p == nullptr ? peer_state::unknown : p->state;
}

uint64_t membership_core::epoch_of(const std::string& name) const {
  auto* p = find(name);
  return p == nullptr ? 0 : p->epoch;
}

} // namespace understudy::cluster_detail
