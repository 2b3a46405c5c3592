#pragma once

// Private to runtime/src/cluster: the node's membership, fencing and leadership decisions as
// plain code (the way CAF's BASP `instance` is driven by the broker that owns it). The core
// reads no clock, starts no thread and holds no lock: its owner (the agent, or a test on
// simulated time) feeds it what happened, with the time it happened, and executes the actions
// it queues.
//
// What it promises:
// - It detects, the coordinator decides: a peer silent past the deadline, or whose connection
//   closed, is only *reported* to the coordinator (declare_dead); it is dead when the
//   coordinator's view says so, never before. A node that cannot reach the coordinator
//   therefore declares nobody dead.
// - Each node watches a few peers, not all: in a cluster of more than `monitors` + 1 nodes,
//   the members of the coordinator's newest view form a ring ordered by name (so that every
//   node computes the same ring), each node beats to the `monitors` nodes
//   after it and watches the `monitors` before it, so a node's beats and checks per interval
//   do not grow with the cluster. A peer it does not watch is alive while the coordinator's
//   view shows it a member (its watchers report it otherwise). When a view changes the ring,
//   a newly watched peer gets one deadline of grace from then: it learns of the change from
//   the same view. Smaller clusters are watched all to all.
// - Its own pauses are not the peers' silence: silence is measured on an observed time that
//   advances by each gap between inputs, capped at one heartbeat interval, so a freeze of this
//   process (SIGSTOP, GC, VM steal) counts as at most one interval. The deadline counts from
//   the beat that was due: a peer is silent past it after deadline + one interval without a
//   beat, so that a peer frozen for less than the deadline is never declared dead. A node that
//   finds most of its peers (two or more) silent at once waits one more deadline before it reports
//   them: if it is the one cut off, its peers report it first. A connection that closes within a
//   deadline after this process's own pause is reported a deadline later too (the peer closed
//   it because it stopped hearing from this node), unless the peer beats again meanwhile.
// - Epochs are fencing tokens, and only the coordinator gives them: a message from an
//   incarnation older than the newest one known, or at or below the highest fenced one, is
//   refused (accepts()); a newer epoch is believed only once the coordinator's view shows it
//   (a restart: the old incarnation is fenced then). Until then a message at that epoch is
//   not yet acted on (beat_verdict::unconfirmed): a node with a valid certificate that writes
//   a made-up epoch into its messages cannot fence its own live incarnation at its peers.
// - Leadership is the coordinator's: a node campaigns only when the view has no leader and it
//   is the candidate whose turn it is; a leader whose last successful renewal was sent more
//   than ttl − one heartbeat interval ago stops (fenced) before its lease can expire, and so
//   does a node that the view shows fenced or no longer a member.
//
// Threads: none; call it from one thread at a time (it is not synchronised).
// Errors: none of its own; the coordinator's answers arrive as `caf::expected`.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <caf/timespan.hpp>
#include <caf/unit.hpp>

#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/coordination.hpp"

namespace understudy::cluster_detail {

/// What a membership core knows from the start.
struct membership_settings {
  /// This node's name.
  std::string self;
  /// The other nodes of the cluster.
  std::vector<std::string> peers;
  /// Heartbeats go out this often; also the cap on how far one input advances observed time.
  caf::timespan heartbeat_interval = std::chrono::milliseconds(100);
  /// A peer whose phi exceeds this is suspected (suspicion alone declares nothing).
  double phi_threshold = 8.0;
  /// A peer silent this long past its due beat is reported to the coordinator.
  caf::timespan deadline = std::chrono::seconds(1);
  /// The coordinator's session time to live (coordinator::session_ttl).
  caf::timespan session_ttl = std::chrono::seconds(3);
  /// How many peers watch each node (see the top of this file); at least 1.
  size_t monitors = 4;
};

/// What the core asks its owner to do.
enum class membership_action_kind : uint8_t {
  /// Send a heartbeat carrying `epoch` (this node's) to each peer of `targets`.
  send_beats,
  /// Call coordinator::declare_dead(peer, epoch) and report with declared().
  declare_dead,
  /// Call coordinator::campaign() and report with campaigned().
  campaign,
  /// Call coordinator::keep_alive() and report with kept_alive(…, sent = `at`).
  keep_alive,
  /// `peer` changed to `state` (its epoch: `epoch`) because of `text`.
  peer_changed,
  /// This node leads, in term `epoch`: it may drive the job.
  leadership_gained,
  /// This node no longer leads (it stops driving the job at once).
  leadership_lost,
  /// This node must stop: `text` says why. Nothing follows it.
  fenced,
  /// A line to log.
  note,
};

/// Returns the name of `x`, e.g. "declare_dead".
std::string to_string(membership_action_kind x);

/// What the core made of a message that proves a peer lives (membership_core::beat).
enum class beat_verdict {
  /// The peer's current incarnation: it lives.
  accepted,
  /// An unknown peer, or an epoch older than its newest or fenced: refused for good.
  refused,
  /// An epoch newer than the coordinator's view has shown for the peer: not acted on yet.
  unconfirmed,
};

/// One action of the core (the fields its kind names; the others stay empty).
struct membership_action {
  membership_action_kind kind = membership_action_kind::note;
  std::string peer;
  uint64_t epoch = 0;
  peer_state state = peer_state::unknown;
  std::string text;
  /// keep_alive: when it was asked for (pass it back to kept_alive).
  std::chrono::steady_clock::time_point at{};
  /// send_beats: the peers to beat to.
  std::vector<std::string> targets{};
};

/// Membership, fencing and leadership of one node, on injected time (see the top of this file).
class membership_core {
public:
  using clock_type = std::chrono::steady_clock;
  using time_point = clock_type::time_point;

  explicit membership_core(membership_settings s);

  // -- inputs ----------------------------------------------------------------------------

  /// The node joined as `epoch`; the join was sent at `sent` (its session runs from then).
  void joined(uint64_t epoch, time_point sent);

  /// The candidates for leadership, in order of preference (empty: nobody leads).
  void set_candidates(std::vector<std::string> candidates, time_point now);

  /// Time passes: beats, detection, renewals and the leader's lease check when due. Call it at
  /// least four times per heartbeat interval (next_tick says when next).
  void tick(time_point now);

  /// A heartbeat from `peer` (the name its connection authenticated) at `epoch`: accepted,
  /// refused (stale or fenced epoch, unknown peer: the owner logs it), or unconfirmed (an epoch
  /// newer than the coordinator's view shows: not acted on; ask again after the next view).
  beat_verdict beat(const std::string& peer, uint64_t epoch, time_point now);

  /// The connection to `peer` closed: it is reported to the coordinator.
  void connection_lost(const std::string& peer, time_point now);

  /// A view of the coordination service (older revisions than one seen are ignored).
  void view(const coordination_view& v, time_point now);

  /// The answer to a declare_dead action.
  void declared(const std::string& peer, uint64_t epoch, const caf::expected<bool>& result,
                time_point now);

  /// The answer to a campaign action.
  void campaigned(const caf::expected<uint64_t>& term, time_point now);

  /// The answer to a keep_alive action asked for at `sent`.
  void kept_alive(const caf::expected<caf::unit_t>& result, time_point sent, time_point now);

  // -- outputs ---------------------------------------------------------------------------

  /// The actions queued since the last call, in order.
  std::vector<membership_action> take_actions();

  /// When the next tick is due: a quarter interval after `now`, or the first deadline before it.
  time_point next_tick(time_point now) const;

  // -- queries ---------------------------------------------------------------------------

  /// Whether a message from `peer` at `epoch` may be acted on: a known peer, its newest
  /// incarnation that the coordinator's view showed, above its fenced epoch.
  bool accepts(const std::string& peer, uint64_t epoch) const;

  /// Every peer: its state, epoch, suspicion and why it last changed.
  std::vector<peer_view> peers() const;

  /// One peer's state (unknown for a name not in the cluster).
  peer_state state_of(const std::string& peer) const;

  /// The newest epoch known of `peer` (0: none yet).
  uint64_t epoch_of(const std::string& peer) const;

  /// This node's epoch (0 before joined).
  uint64_t epoch() const noexcept { return epoch_; }

  /// The leader as far as this node knows ("" while none).
  const std::string& leader() const noexcept { return leader_; }

  /// The leader's term (0 while none).
  uint64_t term() const noexcept { return term_; }

  /// Whether this node leads.
  bool leads() const noexcept { return leading_; }

  /// Whether this node was fenced (it must stop).
  bool fenced() const noexcept { return fenced_; }

  /// Why it was fenced ("" if it was not).
  const std::string& fenced_reason() const noexcept { return fenced_reason_; }

  /// The peers this node beats to (its watchers), in ring order.
  const std::vector<std::string>& beat_targets() const noexcept { return beat_to_; }

  /// Whether this node watches `peer` (checks its heartbeats against the deadline).
  bool watches(const std::string& peer) const { return watching_.count(peer) != 0; }

  /// This node's observed time (see the top of this file).
  time_point observed() const noexcept { return observed_; }

  const membership_settings& settings() const noexcept { return s_; }

private:
  struct peer {
    explicit peer(caf::timespan interval) : detector(interval) {}
    phi_accrual detector;
    peer_state state = peer_state::unknown;
    /// The newest incarnation known (0: none).
    uint64_t epoch = 0;
    /// Incarnations up to this one are fenced.
    uint64_t fenced = 0;
    /// The view showed it a member at `epoch`.
    bool member_seen = false;
    std::string reason;
    /// A declaration wanted for `declare_epoch` (0: none), why, in flight, next try.
    uint64_t declare_epoch = 0;
    std::string declare_reason;
    bool declare_in_flight = false;
    time_point declare_next{};
  };

  void advance(time_point now);
  void check_lease(time_point now);
  void set_state(const std::string& name, peer& p, peer_state s, std::string why);
  void want_declare(const std::string& name, peer& p, std::string why, time_point now);
  void send_declares(time_point now);
  void detect(time_point now);
  /// Recomputes whom this node beats to and watches, if the ring changed.
  void update_ring();
  /// Whether nodes are watched on a ring rather than all to all.
  bool ring_mode() const noexcept { return peers_.size() > std::max<size_t>(s_.monitors, 1); }
  void maybe_campaign(time_point now);
  void fence(std::string why);
  /// Fences this node if `err` says its session is lost; whether it did.
  bool fenced_by(const caf::error& err);
  void push(membership_action a);
  peer* find(const std::string& name);
  const peer* find(const std::string& name) const;

  membership_settings s_;
  std::map<std::string, peer> peers_;
  std::vector<std::string> candidates_;
  std::vector<membership_action> actions_;
  /// The ring: whom this node beats to and whom it watches; recomputed when dirty.
  std::vector<std::string> beat_to_;
  std::set<std::string> watching_;
  /// The peers suspected now (set_state keeps it), and a superset of those with a declaration
  /// wanted (want_declare adds, send_declares drops the rest): what a tick looks at besides the
  /// watched peers, so that a tick costs the watched peers, not the whole cluster.
  std::set<std::string> suspected_;
  std::set<std::string> declaring_;
  bool ring_dirty_ = true;

  uint64_t epoch_ = 0;
  bool started_ = false;
  time_point last_now_{};
  time_point observed_{};
  /// This process was paused (a gap between inputs longer than an interval), ending then.
  bool paused_ = false;
  time_point pause_ended_{};
  time_point last_beat_{};
  bool beaten_ = false;
  time_point last_keep_alive_{};
  /// When the newest successful renewal (or the join) was sent.
  time_point renewed_sent_{};

  uint64_t revision_ = 0;
  bool have_view_ = false;
  coordination_view last_view_;
  bool self_member_seen_ = false;

  std::string leader_;
  uint64_t term_ = 0;
  bool leading_ = false;
  bool leading_seen_ = false;
  bool campaigning_ = false;
  time_point campaign_next_{};

  bool fenced_ = false;
  std::string fenced_reason_;
};

} // namespace understudy::cluster_detail
