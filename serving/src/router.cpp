#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caf/actor_addr.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/response_promise.hpp>
#include <caf/sec.hpp>

#include "tree.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy::serving::detail {

namespace {

/// The router's notes to itself: look for a newer version; resolve a replica
/// again; try a load again.
using tick_atom = caf::atom_constant<caf::atom("sv_tick")>;
using resolve_again_atom = caf::atom_constant<caf::atom("sv_reres")>;
using load_again_atom = caf::atom_constant<caf::atom("sv_reload")>;
using parked_timeout_atom = caf::atom_constant<caf::atom("sv_parkto")>;
using hedge_atom = caf::atom_constant<caf::atom("sv_hedge")>;

/// Answers whose latency the hedging delay is taken from, and how many must be
/// in before requests are hedged.
constexpr size_t latency_window = 256;
constexpr size_t latency_min_samples = 32;

using steady = std::chrono::steady_clock;

/// How long a replica may take to load a version.
constexpr auto load_timeout = std::chrono::seconds(30);

enum class slot_state { down, loading, standby, active, draining };

const char* name_of(slot_state s) {
  switch (s) {
    case slot_state::down:
      return "down";
    case slot_state::loading:
      return "loading";
    case slot_state::standby:
      return "standby";
    case slot_state::active:
      return "active";
    case slot_state::draining:
      return "draining";
  }
  return "?";
}

struct slot {
  std::string id;
  caf::actor handle;
  /// The node it runs on (with replicas placed on a cluster's nodes).
  std::string node;
  /// The incarnation we last saw die (resolve may hand it out again until its
  /// supervisor has seen the exit too).
  caf::actor_addr dead;
  slot_state state = slot_state::down;
  uint64_t version = 0;
  size_t outstanding = 0;
  double ewma_ms = 1.0;
  uint64_t downs = 0;
  /// Bumped whenever `handle` changes: answers for an older one are stale.
  uint64_t epoch = 0;
  bool load_in_flight = false;
  /// Asked whether it still answers, after a request timed out on it.
  bool probing = false;
  /// A suspect computed alone is in flight here: no other suspect joins it,
  /// so that a crash or hang is its own.
  bool lone = false;
};

struct pending {
  caf::response_promise rp;
  predict_request req;
  steady::time_point start;
  /// The current attempt: answers of older attempts are ignored.
  uint64_t attempt_id = 0;
  size_t slot = 0;
  uint32_t attempts = 0;
  /// Incarnations tried: (slot, epoch); a restarted replica is a new one.
  std::vector<std::pair<size_t, uint64_t>> tried;
  std::string errors;
  /// Its replica crashed while it was there: it is computed alone from now
  /// on; if that crashes the replica too, it is poisonous.
  bool suspect = false;
  bool alone = false;
  /// Waiting for a replica to enter the rotation.
  bool parked = false;
  /// A hedge was sent for it.
  bool hedged = false;
};

struct session {
  size_t slot = 0;
  uint64_t min_version = 0;
};

struct router_actor {
  caf::event_based_actor* self;
  serve_config cfg;
  std::shared_ptr<model_source> source;
  std::shared_ptr<router_handle> replicas;
  std::shared_ptr<serving_metrics> metrics;
  std::function<std::string(const caf::actor&)> node_of;
  std::vector<slot> slots;
  std::unordered_map<caf::actor_addr, size_t> by_addr;
  std::unordered_map<uint64_t, pending> inflight;
  std::unordered_map<std::string, session> sessions;
  std::deque<std::string> session_order;
  std::deque<uint64_t> parked;
  /// The latencies (ms) of the last answers, a ring.
  std::vector<double> recent;
  size_t recent_next = 0;
  uint64_t target = 0;
  uint64_t next_id = 1;
  size_t rr = 0;
  std::mt19937_64 rng;
  serving_status counts;

  caf::behavior make() {
    rng.seed(cfg.seed);
    for (size_t i = 0; i < cfg.replicas + cfg.standbys; ++i) {
      slot s;
      s.id = "replica-" + std::to_string(i);
      slots.push_back(std::move(s));
    }
    self->set_down_handler([this](const caf::down_msg& dm) { on_down(dm); });
    for (size_t i = 0; i < slots.size(); ++i)
      resolve(i);
    self->send(self, tick_atom::value);
    return {
        [this](predict_atom, predict_request& req) {
          auto rp = self->make_response_promise();
          auto id = next_id++;
          auto& p = inflight[id];
          p.rp = rp;
          p.req = std::move(req);
          p.start = steady::now();
          dispatch(id, true);
          return rp;
        },
        [this](status_atom) { return status(); },
        [this](update_atom, uint64_t step) -> caf::result<uint64_t> {
          if (step == 0) {
            auto newest = source->newest();
            if (!newest)
              return std::move(newest.error());
            step = *newest;
          }
          if (step < target)
            return make_error(serving_errc::no_model, "version " + std::to_string(step) +
                                                          " is older than version " +
                                                          std::to_string(target) + " in service");
          set_target(step);
          return target;
        },
        [this](tick_atom) {
          if (auto newest = source->newest(); newest && *newest > target)
            set_target(*newest);
          if (cfg.watch_interval.count() > 0)
            self->delayed_send(self, cfg.watch_interval, tick_atom::value);
        },
        [this](resolve_again_atom, size_t i) { resolve(i); },
        [this](hedge_atom, uint64_t id, uint64_t attempt) { hedge(id, attempt); },
        [this](parked_timeout_atom, uint64_t id, uint64_t attempt) {
          auto it = inflight.find(id);
          if (it == inflight.end() || !it->second.parked || it->second.attempt_id != attempt)
            return;
          auto& p = it->second;
          ++counts.failed;
          finish(id, p.attempts == 0
                         ? make_error(serving_errc::no_replica,
                                      "no replica entered the rotation within " +
                                          std::to_string(cfg.request_timeout.count()) + " ms")
                         : make_error(serving_errc::replica_failed,
                                      "no other replica entered the rotation within " +
                                          std::to_string(cfg.request_timeout.count()) +
                                          " ms after: " + p.errors));
        },
        [this](load_again_atom, size_t i, uint64_t epoch) {
          if (slots[i].epoch == epoch)
            rebalance();
        },
    };
  }

  // -- replicas ------------------------------------------------------------------

  void resolve(size_t i) {
    auto sup = replicas->get();
    if (!sup) {
      self->delayed_send(self, std::chrono::milliseconds(10), resolve_again_atom::value, i);
      return;
    }
    self->request(sup, caf::infinite, resolve_atom::value, slots[i].id)
        .then([this, i](caf::actor a) { on_resolved(i, std::move(a)); },
              [this, i](caf::error&) {
                self->delayed_send(self, std::chrono::milliseconds(10), resolve_again_atom::value,
                                   i);
              });
  }

  void on_resolved(size_t i, caf::actor a) {
    auto& s = slots[i];
    if (!a || a.address() == s.dead || s.handle == a) {
      if (!s.handle)
        self->delayed_send(self, std::chrono::milliseconds(5), resolve_again_atom::value, i);
      return;
    }
    s.handle = a;
    s.node = node_of ? node_of(a) : std::string{};
    s.state = slot_state::loading;
    s.version = 0;
    s.outstanding = 0;
    s.load_in_flight = true;
    auto epoch = ++s.epoch;
    by_addr[a.address()] = i;
    self->monitor(a);
    self->request(a, load_timeout, status_atom::value)
        .then(
            [this, i, epoch](uint64_t v) {
              auto& s = slots[i];
              if (s.epoch != epoch)
                return;
              s.load_in_flight = false;
              s.version = v;
              if (v != 0 && v == target)
                s.state = slot_state::standby;
              rebalance();
            },
            [this, i, epoch](caf::error&) {
              if (slots[i].epoch == epoch)
                slots[i].load_in_flight = false;
            });
  }

  void on_down(const caf::down_msg& dm) {
    auto it = by_addr.find(dm.source);
    if (it == by_addr.end())
      return;
    auto i = it->second;
    by_addr.erase(it);
    auto& s = slots[i];
    if (s.handle.address() != dm.source)
      return;
    s.dead = dm.source;
    s.handle = nullptr;
    s.state = slot_state::down;
    s.version = 0;
    s.outstanding = 0;
    s.load_in_flight = false;
    s.probing = false;
    s.lone = false;
    ++s.epoch;
    ++s.downs;
    // A standby takes its place first; its requests go elsewhere now, not
    // when their timeouts pass.
    rebalance();
    std::vector<uint64_t> orphans;
    for (auto& [id, p] : inflight)
      if (p.slot == i && p.attempts > 0)
        orphans.push_back(id);
    // A replica that failed (an exception in a handler, its process ended)
    // may have failed on one of them: they are suspects, computed alone from
    // now on. One killed or stopped from outside failed on none.
    // Nor did one whose node was lost (its connection closed).
    bool crashed = dm.reason && dm.reason != caf::exit_reason::kill &&
                   dm.reason != caf::exit_reason::user_shutdown &&
                   dm.reason != caf::exit_reason::remote_link_unreachable;
    auto why = caf::make_error(caf::sec::request_receiver_down,
                               slots[i].id + " went down: " + describe(dm.reason));
    for (auto id : orphans)
      failed_attempt(id, inflight[id].attempt_id, why, crashed);
    resolve(i);
  }

  void set_target(uint64_t v) {
    if (v == target)
      return;
    target = v;
    rebalance();
  }

  void load(size_t i) {
    auto& s = slots[i];
    s.state = slot_state::loading;
    s.load_in_flight = true;
    auto epoch = s.epoch;
    auto want = target;
    self->request(s.handle, load_timeout, load_atom::value, want)
        .then(
            [this, i, epoch](uint64_t v) {
              auto& s = slots[i];
              if (s.epoch != epoch)
                return;
              s.load_in_flight = false;
              s.version = v;
              s.state = slot_state::standby;
              rebalance();
            },
            [this, i, epoch](caf::error& err) {
              auto& s = slots[i];
              if (s.epoch != epoch)
                return;
              s.load_in_flight = false;
              std::fprintf(stderr, "serving: %s cannot load version %llu: %s\n", s.id.c_str(),
                           static_cast<unsigned long long>(target), describe(err).c_str());
              self->delayed_send(self, std::chrono::milliseconds(500), load_again_atom::value, i,
                                 epoch);
            });
  }

  size_t count(slot_state st) const {
    return static_cast<size_t>(
        std::count_if(slots.begin(), slots.end(), [st](const slot& s) { return s.state == st; }));
  }

  /// Moves replicas between rotation, standby, draining and loading after any
  /// change: fills the rotation, rolls it to the target version one replica
  /// at a time, and has idle replicas load the target.
  void rebalance() {
    // Fill the rotation: standbys at the target first, then any loaded one.
    for (int pass = 0; pass < 2; ++pass)
      for (auto& s : slots) {
        if (count(slot_state::active) >= cfg.replicas)
          break;
        if (s.state == slot_state::standby && s.version != 0 && (pass == 1 || s.version == target))
          s.state = slot_state::active;
      }
    // Roll: one older replica in rotation at a time makes way for a standby at
    // the target (or, without standbys, leaves the rotation to load it).
    if (target != 0 && count(slot_state::draining) == 0) {
      auto old = std::find_if(slots.begin(), slots.end(), [this](const slot& s) {
        return s.state == slot_state::active && s.version < target;
      });
      auto fresh = std::find_if(slots.begin(), slots.end(), [this](const slot& s) {
        return s.state == slot_state::standby && s.version == target;
      });
      if (old != slots.end() && fresh != slots.end()) {
        fresh->state = slot_state::active;
        old->state = slot_state::draining;
      } else if (old != slots.end() && cfg.standbys == 0 && count(slot_state::active) > 1 &&
                 count(slot_state::loading) == 0) {
        old->state = slot_state::draining;
      }
    }
    // Idle replicas load the target.
    for (size_t i = 0; i < slots.size(); ++i) {
      auto& s = slots[i];
      if (!s.handle || s.load_in_flight || target == 0)
        continue;
      bool idle = s.state == slot_state::loading || s.state == slot_state::standby ||
                  (s.state == slot_state::draining && s.outstanding == 0);
      if (idle && s.version != target)
        load(i);
    }
    if (metrics)
      metrics->on_status(status());
    unpark();
  }

  /// Dispatches the parked requests that a replica in rotation can take now.
  void unpark() {
    for (size_t n = parked.size(); n > 0 && !parked.empty(); --n) {
      auto id = parked.front();
      parked.pop_front();
      auto it = inflight.find(id);
      if (it == inflight.end() || !it->second.parked)
        continue;
      it->second.parked = false;
      dispatch(id, false);
    }
  }

  // -- requests ------------------------------------------------------------------

  /// Whether `s` may take a request. A suspect (computed alone) may also go to
  /// a standby, idle and warm, away from the rotation.
  bool usable(const slot& s, uint64_t min_version, bool alone) const {
    bool state_ok = s.state == slot_state::active ||
                    (alone && s.state == slot_state::standby && s.version == target);
    return state_ok && s.outstanding < cfg.max_outstanding && s.version >= min_version &&
           !(alone && s.lone);
  }

  /// The replica for `p`, or slots.size() when none may take it.
  size_t choose(const pending& p, session* sess) {
    uint64_t min_version = sess ? sess->min_version : 0;
    auto tried = [&](size_t i) {
      return std::find(p.tried.begin(), p.tried.end(), std::make_pair(i, slots[i].epoch)) !=
             p.tried.end();
    };
    if (sess && sess->slot < slots.size() && !tried(sess->slot) &&
        usable(slots[sess->slot], min_version, p.suspect))
      return sess->slot;
    std::vector<size_t> c;
    for (size_t i = 0; i < slots.size(); ++i)
      if (usable(slots[i], min_version, p.suspect) && !tried(i))
        c.push_back(i);
    if (c.empty())
      return slots.size();
    switch (cfg.policy) {
      case balance_policy::round_robin:
        return c[rr++ % c.size()];
      case balance_policy::least_outstanding:
        return *std::min_element(c.begin(), c.end(), [this](size_t a, size_t b) {
          const auto& x = slots[a];
          const auto& y = slots[b];
          return x.outstanding != y.outstanding ? x.outstanding < y.outstanding
                                                : x.ewma_ms < y.ewma_ms;
        });
      case balance_policy::power_of_two:
        break;
    }
    if (c.size() == 1)
      return c[0];
    std::uniform_int_distribution<size_t> pick(0, c.size() - 1);
    auto a = c[pick(rng)];
    auto b = c[pick(rng)];
    while (b == a)
      b = c[pick(rng)];
    auto score = [this](size_t i) {
      return static_cast<double>(slots[i].outstanding + 1) * slots[i].ewma_ms;
    };
    return score(a) <= score(b) ? a : b;
  }

  session* session_of(const std::string& key) {
    if (key.empty())
      return nullptr;
    auto it = sessions.find(key);
    if (it != sessions.end())
      return &it->second;
    while (sessions.size() >= cfg.max_sessions && !session_order.empty()) {
      sessions.erase(session_order.front());
      session_order.pop_front();
    }
    session_order.push_back(key);
    auto& s = sessions[key];
    s.slot = slots.size();
    return &s;
  }

  void dispatch(uint64_t id, bool first) {
    auto& p = inflight[id];
    auto* sess = session_of(p.req.key);
    auto i = choose(p, sess);
    if (i == slots.size()) {
      bool saturated = false; // replicas in rotation, each at its limit
      for (size_t k = 0; k < slots.size(); ++k)
        saturated |= slots[k].state == slot_state::active &&
                     slots[k].version >= (sess ? sess->min_version : 0) &&
                     std::find(p.tried.begin(), p.tried.end(), std::make_pair(k, slots[k].epoch)) ==
                         p.tried.end();
      if (first && saturated) {
        ++counts.overloaded;
        finish(id, make_error(serving_errc::overloaded, "every replica in rotation has " +
                                                            std::to_string(cfg.max_outstanding) +
                                                            " requests outstanding"));
        return;
      }
      if (target == 0) {
        ++counts.failed;
        finish(id, make_error(serving_errc::no_replica, "no model version is loaded yet"));
        return;
      }
      if (parked.size() >= cfg.max_outstanding * slots.size()) {
        ++counts.overloaded;
        finish(id, make_error(serving_errc::overloaded, "no replica is in rotation and " +
                                                            std::to_string(parked.size()) +
                                                            " requests wait for one"));
        return;
      }
      // Every replica is restarting (or, for a retry, was tried): wait for
      // one to enter the rotation, within the request's timeout.
      p.parked = true;
      parked.push_back(id);
      self->delayed_send(self, cfg.request_timeout, parked_timeout_atom::value, id, p.attempt_id);
      return;
    }
    if (sess && sess->slot != i && sess->slot < slots.size() &&
        slots[sess->slot].state != slot_state::active)
      sess->slot = i; // its replica failed or left the rotation: the session moves
    else if (sess && sess->slot >= slots.size())
      sess->slot = i;
    auto& s = slots[i];
    ++s.outstanding;
    p.slot = i;
    p.tried.emplace_back(i, s.epoch);
    ++p.attempts;
    auto attempt = ++p.attempt_id;
    auto epoch = s.epoch;
    auto sent = steady::now();
    p.alone = p.suspect;
    if (p.alone)
      s.lone = true;
    const bool alone = p.alone;
    if (cfg.hedge && !alone && p.attempts == 1 && recent.size() >= latency_min_samples)
      self->delayed_send(self, hedge_delay(), hedge_atom::value, id, attempt);
    self->request(s.handle, cfg.request_timeout, predict_atom::value, p.req.in, p.alone)
        .then(
            [this, id, attempt, i, epoch, sent, alone](prediction& out) {
              auto& s = slots[i];
              if (s.epoch == epoch) {
                if (alone)
                  s.lone = false;
                if (s.outstanding > 0)
                  --s.outstanding;
                auto ms = std::chrono::duration<double, std::milli>(steady::now() - sent).count();
                s.ewma_ms = 0.8 * s.ewma_ms + 0.2 * std::max(ms, 0.01);
                record_latency(ms);
              }
              auto it = inflight.find(id);
              if (it == inflight.end() || it->second.attempt_id != attempt)
                return;
              auto& p = it->second;
              out.attempts = p.attempts;
              if (auto* sess = session_of(p.req.key))
                sess->min_version = std::max(sess->min_version, out.version);
              ++counts.answered;
              p.rp.deliver(std::move(out));
              inflight.erase(it);
              if (s.state == slot_state::draining && s.outstanding == 0)
                rebalance();
              else if (alone)
                unpark();
            },
            [this, id, attempt, i, epoch, alone](caf::error& err) {
              auto& s = slots[i];
              if (s.epoch == epoch) {
                if (alone)
                  s.lone = false;
                if (s.outstanding > 0)
                  --s.outstanding;
                if (err == caf::sec::request_timeout) {
                  s.ewma_ms = std::max(s.ewma_ms, static_cast<double>(cfg.request_timeout.count()));
                  probe(i);
                }
              }
              failed_attempt(id, attempt, err, false);
              if (s.state == slot_state::draining && s.outstanding == 0)
                rebalance();
              else if (alone)
                unpark();
            });
  }

  void record_latency(double ms) {
    if (recent.size() < latency_window) {
      recent.push_back(ms);
    } else {
      recent[recent_next] = ms;
      recent_next = (recent_next + 1) % latency_window;
    }
  }

  /// The recent p95 latency, at least 1 ms.
  caf::timespan hedge_delay() const {
    auto sorted = recent;
    auto k = sorted.size() * 95 / 100;
    std::nth_element(sorted.begin(), sorted.begin() + static_cast<long>(k), sorted.end());
    auto ms = std::max(1.0, sorted[k]);
    return std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double, std::milli>(ms));
  }

  /// Sends request `id`, still unanswered in attempt `attempt`, to a second
  /// replica as well; the first answer is taken.
  void hedge(uint64_t id, uint64_t attempt) {
    auto it = inflight.find(id);
    if (it == inflight.end() || it->second.attempt_id != attempt || it->second.hedged ||
        it->second.parked || counts.hedged * 10 >= counts.answered)
      return;
    auto& p = it->second;
    auto i = choose(p, nullptr);
    if (i == slots.size())
      return;
    auto& s = slots[i];
    p.hedged = true;
    ++counts.hedged;
    ++s.outstanding;
    auto epoch = s.epoch;
    self->request(s.handle, cfg.request_timeout, predict_atom::value, p.req.in, false)
        .then(
            [this, id, i, epoch](prediction& out) {
              if (slots[i].epoch == epoch && slots[i].outstanding > 0)
                --slots[i].outstanding;
              auto it = inflight.find(id);
              if (it == inflight.end())
                return; // the first attempt answered first
              auto& p = it->second;
              out.attempts = p.attempts + 1;
              if (auto* sess = session_of(p.req.key))
                sess->min_version = std::max(sess->min_version, out.version);
              ++counts.answered;
              ++counts.hedges_won;
              p.rp.deliver(std::move(out));
              inflight.erase(it);
            },
            [this, i, epoch](caf::error&) {
              if (slots[i].epoch == epoch && slots[i].outstanding > 0)
                --slots[i].outstanding;
            });
  }

  /// Asks replica `i`, on which a request timed out, whether it still
  /// answers; one that does not within the request timeout is killed as hung
  /// (its supervisor restarts it).
  void probe(size_t i) {
    auto& s = slots[i];
    if (s.probing || !s.handle)
      return;
    s.probing = true;
    auto epoch = s.epoch;
    self->request(s.handle, cfg.request_timeout, status_atom::value)
        .then(
            [this, i, epoch](uint64_t) {
              if (slots[i].epoch == epoch)
                slots[i].probing = false;
            },
            [this, i, epoch](caf::error&) {
              auto& s = slots[i];
              if (s.epoch != epoch || !s.handle)
                return;
              s.probing = false;
              std::fprintf(stderr, "serving: %s does not answer: killed as hung\n", s.id.c_str());
              self->send_exit(s.handle, caf::exit_reason::kill);
            });
  }

  void failed_attempt(uint64_t id, uint64_t attempt, const caf::error& err, bool crashed) {
    auto it = inflight.find(id);
    if (it == inflight.end() || it->second.attempt_id != attempt)
      return;
    auto& p = it->second;
    if (is(err, serving_errc::bad_request)) {
      finish(id, err);
      return;
    }
    if (!p.errors.empty())
      p.errors += "; ";
    p.errors += slots[p.slot].id + ": " + describe(err);
    ++p.attempt_id; // answers of this attempt are stale from now on
    bool timed_out = err == caf::sec::request_timeout;
    if (timed_out && p.alone) {
      // A lone request unanswered: it hangs replicas (the probe decides
      // whether this one still answers).
      ++counts.failed;
      finish(id, make_error(serving_errc::replica_failed,
                            "the request timed out computed alone, not retried: " + p.errors));
      return;
    }
    p.suspect |= timed_out;
    if (is(err, serving_errc::poisonous)) {
      ++counts.failed;
      finish(id, make_error(serving_errc::replica_failed,
                            "the request is poisonous, not retried: " + p.errors));
      return;
    }
    p.suspect |= crashed;
    if (p.attempts >= cfg.max_attempts) {
      ++counts.failed;
      finish(id,
             make_error(serving_errc::replica_failed,
                        std::to_string(p.attempts) + " replicas failed the request: " + p.errors));
      return;
    }
    ++counts.retried;
    if (metrics)
      metrics->on_retry();
    dispatch(id, false);
  }

  void finish(uint64_t id, caf::error err) {
    auto it = inflight.find(id);
    if (it == inflight.end())
      return;
    it->second.rp.deliver(std::move(err));
    inflight.erase(it);
  }

  serving_status status() const {
    auto st = counts;
    st.target = target;
    st.in_flight = inflight.size();
    st.waiting = static_cast<uint64_t>(std::count_if(
        inflight.begin(), inflight.end(), [](const auto& kv) { return kv.second.parked; }));
    st.replicas.clear();
    for (const auto& s : slots)
      st.replicas.push_back(replica_view{s.id, name_of(s.state), s.version, s.outstanding,
                                         s.ewma_ms, s.downs, s.node});
    return st;
  }
};

} // namespace

child_spec router_spec(const serve_config& cfg, std::shared_ptr<model_source> source,
                       std::shared_ptr<router_handle> replicas,
                       std::shared_ptr<router_handle> self_handle,
                       std::shared_ptr<serving_metrics> metrics,
                       std::function<std::string(const caf::actor&)> node_of) {
  auto spec =
      worker("router", [cfg, source, replicas, metrics, node_of](caf::event_based_actor* self) {
        auto a = std::make_shared<router_actor>();
        a->self = self;
        a->cfg = cfg;
        a->source = source;
        a->replicas = replicas;
        a->metrics = metrics;
        a->node_of = node_of;
        self->attach_functor([a](const caf::error&) {});
        return a->make();
      });
  auto inner = spec.start;
  spec.start = [inner, self_handle](child_context& ctx) -> caf::expected<caf::actor> {
    auto r = inner(ctx);
    if (r)
      self_handle->set(*r);
    return r;
  };
  return spec;
}

} // namespace understudy::serving::detail
