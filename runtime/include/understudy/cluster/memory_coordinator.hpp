#pragma once

// An in-process coordination service: what a cluster of one node uses (no etcd needed) and
// what in-process tests share between their nodes. It promises what `coordinator` promises
// (coordination.hpp), linearizably: every call is one step on one shared state, under one
// lock. Sessions are leases on an injectable clock; tests can make the whole service, or one
// node's access to it, unavailable.
//
// Threads: the service is safe from any thread. A memory_coordinator runs its callbacks and
// its watchers on the executor given at construction (default: a thread of its own, which
// also expires overdue sessions while idle), one at a time, in the order the service answered.
// A watcher that is behind gets the newest view, not each one in between.
//
// Errors: `coordination_errc::unavailable` while the service (or this node's access to it) is
// off; `coordination_errc::session_lost` once this node's session expired or it was declared
// dead.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "understudy/cluster/coordination.hpp"

namespace understudy {

class memory_coordinator;

/// The shared state of an in-process coordination service (see the top of this file).
class memory_coordination_service {
public:
  using clock_type = std::chrono::steady_clock;
  /// Reads the time the service's leases run on.
  using clock_function = std::function<clock_type::time_point()>;

  /// A service whose sessions live `ttl` unless renewed, on `clock` (default: steady_clock).
  explicit memory_coordination_service(std::chrono::milliseconds ttl = std::chrono::seconds(3),
                                       clock_function clock = {});

  memory_coordination_service(const memory_coordination_service&) = delete;
  memory_coordination_service& operator=(const memory_coordination_service&) = delete;

  /// Turns the whole service off (every call answers unavailable, no views go out; sessions
  /// do not expire while it is off, as etcd renews leases after losing its quorum) or on.
  void set_available(bool on);

  /// Cuts node `name` off the service (its calls answer unavailable, it gets no views, its
  /// session expires on time) or lets it reach the service again.
  void set_reachable(const std::string& name, bool on);

  /// Expires the sessions that are overdue on the clock. Every call does so first; a test on
  /// simulated time calls it after moving its clock.
  void poll();

  /// The current view.
  coordination_view view() const;

  /// Whether the service ever gave `node` the epoch `epoch` (a join's answer): what a
  /// simulation checks the epochs that nodes believe against.
  bool gave(const std::string& node, uint64_t epoch) const;

  /// The sessions' time to live.
  std::chrono::milliseconds ttl() const noexcept { return ttl_; }

  /// As the leader of term `term`, raises the number under `key` to `value` in one step (etcd:
  /// a transaction that compares the leader key): true if `node` leads in that term (the key
  /// then holds at least `value`), false if it does not (nothing changes). Errors:
  /// unavailable while the service, or `node`'s access to it, is off. What the simulator's
  /// training job records its committed step with.
  caf::expected<bool> leader_raise(const std::string& node, uint64_t term, const std::string& key,
                                   uint64_t value);

  /// The number under `key` (0 if none was written), read as `node`. Errors: unavailable.
  caf::expected<uint64_t> read(const std::string& node, const std::string& key) const;

private:
  friend class memory_coordinator;

  struct session {
    uint64_t epoch = 0;
    clock_type::time_point expires{};
  };

  /// A callback to run on an executor, collected under the lock and posted after it.
  struct delivery {
    std::shared_ptr<memory_coordinator> to;
    std::function<void()> run;
  };

  bool usable_locked(const std::string& node) const;
  void expire_locked(std::vector<delivery>& out);
  void changed_locked(std::vector<delivery>& out);
  bool live_locked(const std::string& node, uint64_t epoch) const;
  void remove_locked(const std::string& node);
  void watch(std::shared_ptr<memory_coordinator> c,
             std::function<void(const coordination_view&)> f);
  void deliver(std::vector<delivery>& ds);

  std::chrono::milliseconds ttl_;
  clock_function clock_;

  /// Held while a call changes the state and posts what it produced, so that every
  /// coordinator's callbacks are posted in the order the service answered.
  std::mutex post_mtx_;
  mutable std::mutex mtx_;
  bool available_ = true;
  std::set<std::string> unreachable_;
  uint64_t next_epoch_ = 0;
  /// Every epoch each node was given.
  std::map<std::string, std::set<uint64_t>> given_;
  coordination_view view_;
  std::map<std::string, session> sessions_;
  /// Numbers that leaders raise (leader_raise).
  std::map<std::string, uint64_t> numbers_;
  /// A watcher's newest undelivered view: a change while one is on its way replaces it, so a
  /// watcher that is behind gets the newest view once, not every one in between (with N
  /// nodes joining, N views to each of N watchers would be N^2).
  struct pending_view {
    std::mutex mtx;
    std::shared_ptr<const coordination_view> latest;
    bool posted = false;
  };
  struct watcher {
    std::weak_ptr<memory_coordinator> to;
    std::function<void(const coordination_view&)> f;
    /// The newest revision it was sent.
    uint64_t sent = 0;
    bool any = false;
    std::shared_ptr<pending_view> pending = std::make_shared<pending_view>();
  };
  /// The current view, shared by the deliveries of one revision.
  std::shared_ptr<const coordination_view> shared_view_;
  std::vector<watcher> watchers_;
};

/// One node's handle on a memory_coordination_service (see the top of this file). Make it with
/// `make`; it serves one node (the one that joins through it).
class memory_coordinator : public coordinator,
                           public std::enable_shared_from_this<memory_coordinator> {
public:
  /// Runs a callback later, never inline (the service posts while it holds its post lock).
  using executor = std::function<void(std::function<void()>)>;

  /// A coordinator on `service`; its callbacks run on `ex`, or on a thread of its own when
  /// `ex` is empty.
  static std::shared_ptr<memory_coordinator> make(
      std::shared_ptr<memory_coordination_service> service, executor ex = {});

  ~memory_coordinator() override;

  void join(const std::string& name, callback<uint64_t> done) override;
  void keep_alive(callback<caf::unit_t> done) override;
  void declare_dead(const std::string& name, uint64_t epoch, callback<bool> done) override;
  void campaign(callback<uint64_t> done) override;
  void leave(callback<caf::unit_t> done) override;
  void watch(std::function<void(const coordination_view&)> f) override;
  std::chrono::milliseconds session_ttl() const override;

  /// The service this coordinator talks to.
  const std::shared_ptr<memory_coordination_service>& service() const noexcept { return service_; }

  struct worker;

private:
  friend class memory_coordination_service;

  memory_coordinator(std::shared_ptr<memory_coordination_service> service, executor ex);

  /// Runs `f` on this coordinator's executor.
  void post(std::function<void()> f);

  /// One step on the service: under its locks, expires overdue sessions,
  /// takes `decide(service)`'s answer for `done`, and (if `changes_view`)
  /// queues the views it produced; then delivers them in order.
  template <class T, class F>
  void transact(callback<T> done, F decide, bool changes_view = true);

  /// unavailable or session_lost for this node's calls, else none (under the
  /// service's lock).
  caf::error session_error_locked() const;

  std::shared_ptr<memory_coordination_service> service_;
  executor ex_;
  std::shared_ptr<worker> worker_;
  /// Who this coordinator acts as (set by join, under the service's lock).
  std::string name_;
  uint64_t epoch_ = 0;
};

} // namespace understudy
