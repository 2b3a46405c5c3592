#pragma once

// The cluster's one arbiter: membership, each node's epoch (its fencing token)
// and the leader live in a consensus service (etcd in a real cluster, an
// in-memory one in tests and single-node clusters). Nodes detect failures
// themselves (connection loss, phi-accrual, a deadline), but declaring a node
// dead, fencing it and taking over are transactions of this service: a node
// that cannot reach it decides nothing.
//
// Threads: every call returns at once; its callback (and a watcher) runs on a
// thread of the coordinator's, never on the caller's: post the result to an
// actor. Callbacks of one coordinator run one at a time, in the order the
// service answered.
//
// Errors: `coordination_errc` in the callbacks' `caf::expected`.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <caf/atom.hpp>
#include <caf/expected.hpp>

#include "understudy/core/errors.hpp"

namespace understudy {

/// Failures of the coordination service.
enum class coordination_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// The service cannot be reached, or has no quorum: nothing was decided.
  unavailable,
  /// The node's session expired or the node was declared dead: it must stop.
  session_lost,
  /// The service answered something this client cannot read.
  bad_answer,
  /// The coordination settings are unusable (no endpoint, a bad URL, TLS files missing).
  invalid_config,
};

/// Declares `coordination_errc`.
template <>
struct error_traits<coordination_errc> {
  static constexpr caf::atom_value category = caf::atom("us_coord");
  static constexpr error_value<coordination_errc> values[] = {
      {coordination_errc::none, "none", "not an error", next_step::give_up},
      {coordination_errc::unavailable, "unavailable",
       "the coordination service cannot be reached or has no quorum", next_step::back_off},
      {coordination_errc::session_lost, "session_lost",
       "the node's coordination session expired or it was declared dead", next_step::give_up},
      {coordination_errc::bad_answer, "bad_answer",
       "the coordination service answered something unreadable", next_step::back_off},
      {coordination_errc::invalid_config, "invalid_config",
       "the coordination settings are unusable", next_step::give_up},
  };
};

/// What the coordination service holds about a cluster, as of one revision.
struct coordination_view {
  /// The service's revision this view was read at; views only move forward.
  uint64_t revision = 0;
  /// The live members: node name -> the epoch of its current incarnation.
  std::map<std::string, uint64_t> members;
  /// Per node, the highest epoch declared dead: an incarnation at or below it is fenced.
  std::map<std::string, uint64_t> fenced;
  /// The node that leads ("" while none does) and the epoch of its term.
  std::string leader;
  uint64_t leader_term = 0;
  /// Whether the cluster ever had a leader (a cold start has not).
  bool led_before = false;
};

/// The arbiter of membership, epochs and leadership (see the top of this file).
class coordinator {
public:
  template <class T>
  using callback = std::function<void(caf::expected<T>)>;

  virtual ~coordinator();

  /// Joins the cluster as `name`: a new epoch, greater than every epoch the
  /// service gave before, in a session that expires unless renewed within the
  /// session's time to live. An older incarnation of `name` that is still a
  /// member is fenced by the join (a node that restarts replaces itself). One
  /// coordinator object serves one node: its other calls act as that node.
  virtual void join(const std::string& name, callback<uint64_t> done) = 0;

  /// Renews this node's session; session_lost once it expired or the node was
  /// declared dead. Call it at least three times per time to live.
  virtual void keep_alive(callback<caf::unit_t> done) = 0;

  /// Declares `name` at `epoch` dead, on behalf of this node (a member): in one
  /// transaction, if `name`'s current epoch is `epoch` and this node is still a
  /// member, removes it, records it fenced up to `epoch` and clears the leader
  /// if it led. true if this call declared it, false if the condition failed
  /// (already declared, or restarted with a newer epoch); session_lost if this
  /// node is no member any more.
  virtual void declare_dead(const std::string& name, uint64_t epoch, callback<bool> done) = 0;

  /// Becomes the leader if none leads and this node is a member: the term (an
  /// epoch) on success, 0 if another node leads.
  virtual void campaign(callback<uint64_t> done) = 0;

  /// Ends this node's session (its member key and its leadership go at once).
  virtual void leave(callback<caf::unit_t> done) = 0;

  /// Calls `f` with the current view, then with newer ones as they come: each
  /// is newer than the one before, and a watcher that is behind may get only
  /// the newest of several (the in-memory service coalesces them).
  virtual void watch(std::function<void(const coordination_view&)> f) = 0;

  /// The session's time to live.
  virtual std::chrono::milliseconds session_ttl() const = 0;
};

} // namespace understudy
