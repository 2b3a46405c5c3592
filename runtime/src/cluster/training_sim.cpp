#include "cluster/training_sim.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "cluster/cluster_sim.hpp"
#include "understudy/state/step_commit.hpp"

namespace understudy::cluster_detail {

namespace {

using ms = std::chrono::milliseconds;

uint64_t mix(uint64_t h, uint64_t x) {
  uint64_t z = h ^ (x + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// The coordination service's key under which the driver records the committed step.
const std::string commit_key = "job/committed";

} // namespace

struct training_sim::impl {
  cluster_sim& sim;
  training_sim_options o;
  std::function<void(const std::string&)> violation;
  std::mt19937_64 rng;
  size_t parts;
  std::vector<std::string> names;
  /// The fault-free run: each participant's state after each step.
  std::vector<std::vector<uint64_t>> expected;
  /// The sample order: a permutation of the data set per epoch.
  std::map<uint64_t, std::vector<uint64_t>> perms;
  /// The samples the shards were sent for each step (by any driver): one list per step.
  std::map<uint64_t, std::vector<uint64_t>> ids_sent;

  // -- disks ----------------------------------------------------------------------------------
  struct record {
    uint64_t value = 0;
    uint64_t sum = 0;
    bool synced = false;
  };
  using versions = std::map<uint64_t, record>;
  /// Node -> participant -> step -> record: what each machine's disk holds.
  std::map<std::string, std::map<size_t, versions>> disks;

  // -- processes ------------------------------------------------------------------------------
  struct part_state {
    uint64_t step = 0;
    uint64_t value = 0;
    uint64_t attempt = 0;
  };
  struct sender {
    size_t id = 0; // node incarnation
    std::string node;
    uint64_t epoch = 0;
    uint64_t attempt = 0;
  };
  struct pending_ack {
    bool local = false;
    bool replica = false;
    sender driver;
  };
  struct process {
    std::map<size_t, part_state> parts;
    /// Per participant: the newest attempt whose rollback it took.
    std::map<size_t, uint64_t> newest_attempt;
    std::map<std::pair<size_t, uint64_t>, pending_ack> acks;
  };
  std::map<size_t, process> procs;

  // -- drivers --------------------------------------------------------------------------------
  enum class phase { probing, waiting, rewinding, running };
  struct driver {
    sender me;
    uint64_t term = 0;
    uint64_t round = 0;
    phase ph = phase::probing;
    step_commit ledger;
    std::set<std::string> awaiting;
    size_t asked = 0;
    /// Per participant: step -> the nodes whose disks hold it (verified).
    std::vector<std::map<uint64_t, std::vector<std::string>>> holders;
    std::optional<uint64_t> recorded;
    std::vector<std::string> host;
    std::vector<bool> rewound;
    size_t rewound_count = 0;
    uint64_t resume_at = 0;
    uint64_t done = 0;
    uint64_t cur = 0;
    std::vector<std::optional<std::vector<uint64_t>>> batch;
    size_t batch_got = 0;
    std::vector<bool> applied;
    size_t applied_count = 0;
    /// Per step: the participants' states as they reported them (the commit check).
    std::map<uint64_t, std::vector<std::optional<uint64_t>>> values;
    /// The newest step this driver saw commit (durable everywhere), and recorded.
    uint64_t durable_commit = 0;
    uint64_t recorded_by_me = 0;
    cluster_sim::time_point progress_at{};
    std::string waiting_for;
    /// Tells this driver's tick chain from an earlier driver's on the same process.
    uint64_t serial = 0;
    explicit driver(size_t n) : ledger(n) {}
  };
  std::map<size_t, std::unique_ptr<driver>> drivers;
  uint64_t serials = 0;

  // -- the run --------------------------------------------------------------------------------
  uint64_t acked = 0;
  uint64_t committed_seen = 0;
  bool finished = false;
  double finished_ms = 0;
  std::string error;
  uint64_t rounds = 0;
  uint64_t applied_steps = 0;
  uint64_t bad_reads = 0;
  std::string trace;
  /// When the job first committed each step past the newest one before (simulated ms).
  std::vector<double> commit_times;

  impl(cluster_sim& s, training_sim_options opts, std::function<void(const std::string&)> v)
      : sim(s),
        o(std::move(opts)),
        violation(std::move(v)),
        rng(o.disk_seed),
        parts(o.shards + o.loaders),
        names(s.opts().names) {
    fault_free();
  }

  // -- the numerics' stand-in -----------------------------------------------------------------

  bool is_loader(size_t p) const { return p >= o.shards; }

  std::string part_name(size_t p) const {
    return is_loader(p) ? "loader-" + std::to_string(p - o.shards) : "shard-" + std::to_string(p);
  }

  uint64_t initial(size_t p) const { return is_loader(p) ? 0 : mix(o.data_seed, p + 1); }

  uint64_t sample(uint64_t pos) {
    auto epoch = pos / o.epoch_samples;
    auto& perm = perms[epoch];
    if (perm.empty()) {
      perm.resize(o.epoch_samples);
      for (uint64_t i = 0; i < o.epoch_samples; ++i)
        perm[i] = i;
      std::mt19937_64 r{mix(o.data_seed, epoch + 1000)};
      for (uint64_t i = o.epoch_samples - 1; i > 0; --i)
        std::swap(perm[i], perm[r() % (i + 1)]);
    }
    return perm[pos % o.epoch_samples];
  }

  /// Loader `l` at `cursor` hands out its part of a batch: (ids, new cursor).
  std::vector<uint64_t> loader_ids(size_t l, uint64_t cursor) {
    std::vector<uint64_t> ids;
    const uint64_t n = o.batch / o.loaders;
    for (uint64_t i = 0; i < n; ++i)
      ids.push_back(sample((cursor + i) * o.loaders + l));
    return ids;
  }

  static uint64_t fold(uint64_t v, uint64_t step, const std::vector<uint64_t>& ids) {
    v = mix(v, step);
    for (auto id : ids)
      v = mix(v, id);
    return v;
  }

  void fault_free() {
    expected.assign(o.steps + 1, std::vector<uint64_t>(parts));
    for (size_t p = 0; p < parts; ++p)
      expected[0][p] = initial(p);
    for (uint64_t s = 1; s <= o.steps; ++s) {
      std::vector<uint64_t> ids;
      for (size_t l = 0; l < o.loaders; ++l) {
        auto part = loader_ids(l, expected[s - 1][o.shards + l]);
        ids.insert(ids.end(), part.begin(), part.end());
        expected[s][o.shards + l] = expected[s - 1][o.shards + l] + o.batch / o.loaders;
      }
      for (size_t k = 0; k < o.shards; ++k)
        expected[s][k] = fold(expected[s - 1][k], s, ids);
      // The fault-free order consumes every sample exactly once per epoch.
      ids_sent[s] = std::move(ids);
    }
    check_epochs("the fault-free run");
    ids_sent.clear();
  }

  /// Every sample at most once per epoch, and every epoch that the steps cover in full has
  /// each sample exactly once.
  void check_epochs(const std::string& who) {
    const uint64_t per_epoch = o.epoch_samples / o.batch;
    for (uint64_t e = 0; e * per_epoch < o.steps; ++e) {
      std::vector<unsigned> seen(o.epoch_samples, 0);
      bool full = true;
      for (uint64_t s = e * per_epoch + 1; s <= (e + 1) * per_epoch; ++s) {
        auto i = ids_sent.find(s);
        if (i == ids_sent.end()) {
          full = false;
          continue;
        }
        for (auto id : i->second)
          if (id < seen.size())
            ++seen[id];
      }
      for (uint64_t id = 0; id < seen.size(); ++id)
        if (seen[id] > 1 || (full && seen[id] == 0)) {
          violation(who + " consumed sample " + std::to_string(id) + " " +
                    std::to_string(seen[id]) + " times in epoch " + std::to_string(e));
          return;
        }
    }
  }

  // -- helpers --------------------------------------------------------------------------------

  void note(const std::string& line) {
    char head[32];
    std::snprintf(head, sizeof head, "%10.1f ms ", sim_ms(sim.now, sim.origin));
    trace += head + line + "\n";
  }

  static uint64_t checksum(size_t p, uint64_t step, uint64_t value) {
    return mix(mix(value, step), p + 77);
  }

  /// Whether node incarnation `to` acts on a message of `from`: its own process, or a peer
  /// whose epoch its membership core accepts (epochs are fencing tokens).
  bool accepts(size_t to, const sender& from) const {
    if (sim.name_of(to) == from.node)
      return to == from.id;
    return sim.incarnation(to).accepts(from.node, from.epoch);
  }

  /// The versions of participant `p` on `node`'s disk (null: none).
  versions* on_disk(const std::string& node, size_t p) {
    auto d = disks.find(node);
    if (d == disks.end())
      return nullptr;
    auto v = d->second.find(p);
    return v == d->second.end() ? nullptr : &v->second;
  }

  /// Reads version `s` of participant `p` on `node`'s disk, verifying its checksum: a torn
  /// record never reads; a corrupt read is read again (up to 8 times).
  std::optional<uint64_t> read(const std::string& node, size_t p, uint64_t s) {
    auto* v = on_disk(node, p);
    if (v == nullptr)
      return std::nullopt;
    auto r = v->find(s);
    if (r == v->end())
      return std::nullopt;
    if (r->second.sum != checksum(p, s, r->second.value)) {
      ++bad_reads;
      return std::nullopt;
    }
    std::uniform_real_distribution<double> u(0, 1);
    for (int i = 0; i < 8; ++i) {
      if (o.corrupt_reads > 0 && u(rng) < o.corrupt_reads) {
        ++bad_reads;
        continue;
      }
      return r->second.value;
    }
    return std::nullopt;
  }

  /// Writes version `s` of `p` on `node`'s disk (unsynced). `own`: the participant's own
  /// write, which drops the versions above it (an abandoned attempt's); a replica never
  /// deletes or outranks versions. Both keep the newest `keep_last` up to `s`.
  void write(const std::string& node, size_t p, uint64_t s, uint64_t value, bool own) {
    auto& v = disks[node][p];
    if (own)
      v.erase(v.upper_bound(s), v.end());
    v[s] = record{value, checksum(p, s, value), false};
    if (s + 1 > o.keep_last)
      v.erase(v.begin(), v.lower_bound(s + 1 - o.keep_last));
  }

  /// How long an fsync takes: from `fsync` to 30 times that, log-uniform (a checkpoint's
  /// size, the disk's queue).
  caf::timespan fsync_time() {
    std::uniform_real_distribution<double> u(0, std::log(30.0));
    return std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double, std::milli>(
        static_cast<double>(o.fsync.count()) * std::exp(u(rng))));
  }

  void sync(const std::string& node, size_t p, uint64_t s, uint64_t value) {
    auto* v = on_disk(node, p);
    if (v == nullptr)
      return;
    auto r = v->find(s);
    if (r != v->end() && r->second.value == value)
      r->second.synced = true;
  }

  template <class F>
  void to_driver(size_t from, const sender& d, F f) {
    sim.send(from, d.node, caf::timespan{0}, [this, d, f = std::move(f)](size_t to) mutable {
      auto i = drivers.find(to);
      if (to != d.id || i == drivers.end() || i->second->me.attempt != d.attempt)
        return;
      f(*i->second);
    });
  }

  // -- participants (in the process of the node that runs them) -------------------------------

  void on_probe(size_t to, const sender& d) {
    if (!accepts(to, d))
      return;
    const auto& node = sim.name_of(to);
    std::vector<std::vector<uint64_t>> held(parts);
    for (size_t p = 0; p < parts; ++p)
      if (auto* v = on_disk(node, p)) {
        std::vector<uint64_t> steps;
        for (const auto& kv : *v)
          steps.push_back(kv.first);
        for (auto s : steps)
          if (read(node, p, s))
            held[p].push_back(s);
      }
    to_driver(to, d, [this, node, held](driver& dr) { on_probe_answer(dr, node, held); });
  }

  void on_rewind(size_t to, const sender& d, size_t p, uint64_t step) {
    if (!accepts(to, d))
      return;
    auto& pr = procs[to];
    auto& newest = pr.newest_attempt[p];
    if (newest > d.attempt)
      return; // an older driver's round
    newest = d.attempt;
    const auto& node = sim.name_of(to);
    uint64_t value = initial(p);
    if (step != 0) {
      auto v = read(node, p, step);
      if (!v)
        return; // the driver's round times out and asks again
      value = *v;
    }
    // The rollback the current leader ordered: versions above it are an abandoned attempt's.
    if (auto* v = on_disk(node, p))
      v->erase(v->upper_bound(step), v->end());
    pr.parts[p] = part_state{step, value, d.attempt};
    // The state it resumes from may have one copy (its buddy's was lost, or never made):
    // it is copied to the buddy again, and durable once there.
    if (step != 0)
      checkpoint(to, d, p, step, value, true);
    to_driver(to, d, [this, p](driver& dr) { on_rewound(dr, p); });
  }

  part_state* running_part(size_t to, const sender& d, size_t p, uint64_t step) {
    if (!accepts(to, d))
      return nullptr;
    auto& pr = procs[to];
    auto i = pr.parts.find(p);
    if (i == pr.parts.end() || i->second.attempt != d.attempt || i->second.step + 1 != step)
      return nullptr;
    return &i->second;
  }

  void on_next_batch(size_t to, const sender& d, size_t p, uint64_t step) {
    auto* st = running_part(to, d, p, step);
    if (st == nullptr)
      return;
    auto ids = loader_ids(p - o.shards, st->value);
    st->value += o.batch / o.loaders;
    st->step = step;
    ++applied_steps;
    checkpoint(to, d, p, step, st->value);
    to_driver(to, d, [this, p, step, ids, value = st->value](driver& dr) {
      on_batch(dr, p, step, ids, value);
    });
  }

  void on_apply(size_t to, const sender& d, size_t k, uint64_t step,
                const std::vector<uint64_t>& ids) {
    if (running_part(to, d, k, step) == nullptr)
      return;
    sim.timer(to, o.compute, [this, to, d, k, step, ids] {
      auto* st = running_part(to, d, k, step);
      if (st == nullptr)
        return;
      st->value = fold(st->value, step, ids);
      st->step = step;
      ++applied_steps;
      checkpoint(to, d, k, step, st->value);
      to_driver(to, d,
                [this, k, step, value = st->value](driver& dr) { on_applied(dr, k, step, value); });
    });
  }

  /// The participant's state after `step` goes to its node's disk and to the buddy; it says
  /// "durable" to the driver once both copies are.
  void checkpoint(size_t to, const sender& d, size_t p, uint64_t step, uint64_t value,
                  bool on_disk = false) {
    const auto& node = sim.name_of(to);
    auto& ack = procs[to].acks[{p, step}];
    ack = pending_ack{on_disk, false, d};
    if (!on_disk) {
      write(node, p, step, value, true);
      sim.timer(to, fsync_time(), [this, to, node, p, step, value] {
        sync(node, p, step, value);
        acknowledged(to, p, step, true);
      });
    }
    // The buddy: the next node in name order that this node sees alive.
    auto& core = sim.incarnation(to);
    auto self = std::find(names.begin(), names.end(), node) - names.begin();
    for (size_t i = 1; i < names.size(); ++i) {
      const auto& b = names[(static_cast<size_t>(self) + i) % names.size()];
      if (core.state_of(b) != peer_state::alive)
        continue;
      sender host{to, node, core.epoch(), d.attempt};
      sim.send(to, b, o.transfer,
               [this, host, p, step, value](size_t at) { on_replica(at, host, p, step, value); });
      return;
    }
  }

  void on_replica(size_t at, const sender& host, size_t p, uint64_t step, uint64_t value) {
    if (!sim.incarnation(at).accepts(host.node, host.epoch))
      return;
    const auto& node = sim.name_of(at);
    write(node, p, step, value, false);
    auto reply = [this, at, host, p, step] {
      sim.send(at, host.node, caf::timespan{0}, [this, host, p, step](size_t to) {
        if (to == host.id)
          acknowledged(to, p, step, false);
      });
    };
    sim.timer(at, fsync_time(), [this, node, p, step, value, reply] {
      sync(node, p, step, value);
      reply();
    });
  }

  void acknowledged(size_t to, size_t p, uint64_t step, bool local) {
    auto& acks = procs[to].acks;
    auto i = acks.find({p, step});
    if (i == acks.end())
      return;
    (local ? i->second.local : i->second.replica) = true;
    if (!i->second.local || !i->second.replica)
      return;
    auto d = i->second.driver;
    acks.erase(i);
    to_driver(to, d, [this, p, step](driver& dr) { on_durable(dr, p, step); });
  }

  // -- the driver (in the leader's process) ---------------------------------------------------

  void start_round(driver& d) {
    ++d.round;
    ++rounds;
    d.me.attempt = (d.term << 24) | d.round;
    d.ph = phase::probing;
    d.holders.assign(parts, {});
    d.recorded.reset();
    d.awaiting.clear();
    d.cur = 0;
    d.values.clear();
    d.progress_at = sim.local(d.me.id);
    auto& core = sim.incarnation(d.me.id);
    for (const auto& n : names)
      if (n == d.me.node || core.state_of(n) == peer_state::alive)
        d.awaiting.insert(n);
    d.asked = d.awaiting.size();
    for (const auto& n : d.awaiting)
      sim.send(d.me.id, n, caf::timespan{0}, [this, s = d.me](size_t to) { on_probe(to, s); });
    // The committed step, as the coordination service recorded it.
    sim.timer(d.me.id, ms{1}, [this, s = d.me] {
      auto i = drivers.find(s.id);
      if (i == drivers.end() || i->second->me.attempt != s.attempt)
        return;
      auto r = sim.service->read(s.node, commit_key);
      if (!r)
        return; // unavailable: the round times out and starts again
      i->second->recorded = *r;
      maybe_decide(*i->second);
    });
  }

  void on_probe_answer(driver& d, const std::string& node,
                       const std::vector<std::vector<uint64_t>>& held) {
    if (d.ph != phase::probing || d.awaiting.erase(node) == 0)
      return;
    for (size_t p = 0; p < parts; ++p)
      for (auto s : held[p])
        d.holders[p][s].push_back(node);
    maybe_decide(d);
  }

  void maybe_decide(driver& d) {
    if (d.ph != phase::probing || !d.awaiting.empty() || !d.recorded)
      return;
    std::vector<std::optional<uint64_t>> newest(parts);
    for (size_t p = 0; p < parts; ++p)
      newest[p] = d.holders[p].empty() ? 0 : d.holders[p].rbegin()->first;
    auto r = step_commit::resume(newest, *d.recorded, 1, o.steps);
    // The trainer's participants each hold an unbroken run of versions (one store), so the
    // lowest newest one is held by all; versions gathered from several disks can have gaps (a
    // copy lost on its way), so the job resumes from the newest step that every participant
    // holds somewhere.
    uint64_t common = r.step;
    while (common > 0 && !std::all_of(d.holders.begin(), d.holders.end(),
                                      [&](const auto& h) { return h.count(common) != 0; }))
      --common;
    r.step = common;
    if (r.step < *d.recorded || r.lost) {
      // The newest copies of some participant are on nodes this driver cannot see (down, or
      // not declared dead yet): it waits for them rather than roll back a committed step.
      size_t p = 0;
      if (r.lost)
        p = *r.lost;
      else
        while (p + 1 < parts && d.holders[p].count(r.step + 1) != 0)
          ++p;
      std::string where;
      for (const auto& [s, nodes] : d.holders[p])
        for (const auto& n : nodes)
          where += (where.empty() ? "" : ", ") + std::to_string(s) + "@" + n;
      d.waiting_for = part_name(p) + " holds step " + std::to_string(newest[p].value_or(0)) +
                      " on the nodes that answered (" + (where.empty() ? "none" : where) +
                      "); the committed step is " + std::to_string(*d.recorded);
      if (d.asked == names.size()) {
        // Every node of the cluster answered: the step is on no disk. Lost after it was
        // acknowledged is a broken promise; lost before (nothing recorded yet) ends the job
        // with an explicit error, as the trainer does.
        error =
            (*d.recorded != 0 ? "acknowledged step " + std::to_string(*d.recorded) + " is lost: "
                              : "a participant lost its state: ") +
            d.waiting_for;
        if (*d.recorded != 0)
          violation(error);
        note(d.me.node + ": " + error);
        drivers.clear();
        return;
      }
      d.ph = phase::waiting;
      return;
    }
    if (r.past_last) {
      violation("a recovery found step " + std::to_string(r.step) + " past the last step");
      d.ph = phase::waiting;
      return;
    }
    const uint64_t c = r.step;
    if (c < acked)
      violation("a recovery resumed from step " + std::to_string(c) +
                ", below the acknowledged committed step " + std::to_string(acked));
    // Each participant runs where it holds step c (its current node when that holds it),
    // spread from its home node (participant p's home: node p mod N).
    d.host.resize(parts);
    std::string placed;
    for (size_t p = 0; p < parts; ++p) {
      std::vector<std::string> cand;
      if (c == 0) {
        for (const auto& n : names)
          if (d.awaiting.count(n) == 0)
            cand.push_back(n); // every node that answered
      } else {
        cand = d.holders[p][c];
      }
      if (std::find(cand.begin(), cand.end(), d.host[p]) == cand.end()) {
        std::string best;
        for (size_t i = 0; i < names.size() && best.empty(); ++i) {
          const auto& n = names[(p + i) % names.size()];
          if (std::find(cand.begin(), cand.end(), n) != cand.end())
            best = n;
        }
        if (c == 0 && best.empty())
          best = d.me.node;
        d.host[p] = best;
      }

      placed += " " + part_name(p) + "@" + d.host[p];
    }
    note(d.me.node + " round " + std::to_string(d.round) + " of term " + std::to_string(d.term) +
         ": resumes from step " + std::to_string(c) + " (recorded " + std::to_string(*d.recorded) +
         ");" + placed);
    d.resume_at = c;
    d.recorded_by_me = std::max(d.recorded_by_me, *d.recorded);
    // Step c commits again once every participant's state after it is durable on its node and
    // its buddy (copied again on the rollback); only then is it acknowledged (recorded).
    d.ledger.resumed(c);
    if (c != 0) {
      d.ledger.open(c);
      d.ledger.applied(c);
    }
    d.ph = phase::rewinding;
    d.rewound.assign(parts, false);
    d.rewound_count = 0;
    d.progress_at = sim.local(d.me.id);
    for (size_t p = 0; p < parts; ++p)
      sim.send(d.me.id, d.host[p], caf::timespan{0},
               [this, s = d.me, p, c](size_t to) { on_rewind(to, s, p, c); });
  }

  void on_rewound(driver& d, size_t p) {
    if (d.ph != phase::rewinding || d.rewound[p])
      return;
    d.rewound[p] = true;
    if (++d.rewound_count != parts)
      return;
    committed_seen = std::max(committed_seen, d.resume_at);
    d.done = d.resume_at;
    d.cur = 0;
    d.ph = phase::running;
    d.progress_at = sim.local(d.me.id);
    next_step(d);
  }

  void next_step(driver& d) {
    // Disks keep each participant's last keep_last versions: the job runs no further ahead of
    // its acknowledged (recorded) step than they keep, so that step is never pruned.
    if (d.ph != phase::running || d.cur != 0 || !d.ledger.may_start_after(d.done) ||
        d.done >= o.steps || d.done + 1 > d.recorded_by_me + o.keep_last - 1)
      return;
    const uint64_t s = d.done + 1;
    d.cur = s;
    d.ledger.open(s);
    d.batch.assign(o.loaders, std::nullopt);
    d.batch_got = 0;
    d.applied.assign(o.shards, false);
    d.applied_count = 0;
    d.values[s].assign(parts, std::nullopt);
    for (size_t l = 0; l < o.loaders; ++l) {
      const size_t p = o.shards + l;
      sim.send(d.me.id, d.host[p], caf::timespan{0},
               [this, sd = d.me, p, s](size_t to) { on_next_batch(to, sd, p, s); });
    }
  }

  void on_batch(driver& d, size_t p, uint64_t step, const std::vector<uint64_t>& ids,
                uint64_t value) {
    const size_t l = p - o.shards;
    if (d.ph != phase::running || step != d.cur || d.batch[l])
      return;
    d.batch[l] = ids;
    d.values[step][p] = value;
    if (++d.batch_got != o.loaders)
      return;
    std::vector<uint64_t> all;
    for (auto& b : d.batch)
      all.insert(all.end(), b->begin(), b->end());
    auto [i, fresh] = ids_sent.emplace(step, all);
    if (!fresh && i->second != all)
      violation(d.me.node + " sends step " + std::to_string(step) +
                " other samples than an earlier attempt did");
    for (size_t k = 0; k < o.shards; ++k)
      sim.send(d.me.id, d.host[k], caf::timespan{0},
               [this, sd = d.me, k, step, all](size_t to) { on_apply(to, sd, k, step, all); });
  }

  void on_applied(driver& d, size_t k, uint64_t step, uint64_t value) {
    if (d.ph != phase::running || step != d.cur || d.applied[k])
      return;
    d.applied[k] = true;
    d.values[step][k] = value;
    if (++d.applied_count != o.shards)
      return;
    d.done = step;
    d.cur = 0;
    d.progress_at = sim.local(d.me.id);
    if (d.ledger.applied(step))
      on_commit(d, step);
    next_step(d);
  }

  void on_durable(driver& d, size_t p, uint64_t step) {
    if (d.ph != phase::running && d.ph != phase::rewinding)
      return;
    if (d.ledger.durable(step, p)) {
      on_commit(d, step);
      next_step(d);
    }
  }

  void on_commit(driver& d, uint64_t c) {
    d.progress_at = sim.local(d.me.id);
    d.durable_commit = std::max(d.durable_commit, c);
    if (c > committed_seen)
      commit_times.push_back(sim_ms(sim.now, sim.origin));
    committed_seen = std::max(committed_seen, c);
    if (auto v = d.values.find(c); v != d.values.end()) {
      for (size_t p = 0; p < parts; ++p)
        if (!v->second[p] || *v->second[p] != expected[c][p]) {
          violation(d.me.node + " committed step " + std::to_string(c) + " with " + part_name(p) +
                    "'s state " +
                    (v->second[p] ? "differing from the fault-free run's" : "unknown"));
          break;
        }
    }
    d.values.erase(d.values.begin(), d.values.upper_bound(c));
    if (c % 50 == 0 || c == o.steps)
      note(d.me.node + " commits step " + std::to_string(c));
    record_commit(d);
  }

  /// The committed step goes to the coordination service (as the leader of the driver's term):
  /// only then is it acknowledged.
  void record_commit(driver& d) {
    const uint64_t c = d.durable_commit;
    if (c <= d.recorded_by_me)
      return;
    sim.timer(d.me.id, ms{1}, [this, s = d.me, term = d.term, c] {
      auto i = drivers.find(s.id);
      if (i == drivers.end() || i->second->term != term)
        return;
      auto r = sim.service->leader_raise(s.node, term, commit_key, c);
      if (!r || !*r)
        return; // tried again on the driver's next tick
      i->second->recorded_by_me = std::max(i->second->recorded_by_me, c);
      acked = std::max(acked, c);
      next_step(*i->second);
      if (c >= o.steps && !finished) {
        finished = true;
        finished_ms = sim_ms(sim.now, sim.origin);
        note(s.node + " recorded the last step: the job is done");
      }
    });
  }

  void tick(size_t id, uint64_t serial) {
    auto i = drivers.find(id);
    if (i == drivers.end() || i->second->serial != serial)
      return;
    auto& d = *i->second;
    auto& core = sim.incarnation(id);
    if (!core.leads() || core.term() != d.term) {
      drivers.erase(i);
      return;
    }
    record_commit(d);
    bool stalled = sim.local(id) - d.progress_at >= o.progress_deadline;
    bool host_gone = false;
    if (d.ph == phase::running)
      for (const auto& h : d.host)
        if (h != d.me.node && core.state_of(h) != peer_state::alive)
          host_gone = true;
    bool idle = d.ph == phase::running && d.done >= o.steps && d.ledger.idle();
    if (!idle && (stalled || host_gone)) {
      if (d.ph == phase::waiting)
        note(d.me.node + " waits: " + d.waiting_for);
      start_round(d);
    }
    sim.timer(id, ms{100}, [this, id, serial] { tick(id, serial); });
  }

  void after_input(size_t id) {
    auto& core = sim.incarnation(id);
    auto i = drivers.find(id);
    if (!core.leads() || core.fenced()) {
      if (i != drivers.end())
        drivers.erase(i);
      return;
    }
    if (i != drivers.end() && i->second->term == core.term())
      return;
    auto d = std::make_unique<driver>(parts);
    d->me = sender{id, sim.name_of(id), core.epoch(), 0};
    d->term = core.term();
    d->serial = ++serials;
    auto& ref = *d;
    drivers[id] = std::move(d);
    if (!error.empty())
      return; // the job ended with an explicit error
    note(ref.me.node + "@" + std::to_string(ref.me.epoch) + " drives the job in term " +
         std::to_string(ref.term));
    start_round(ref);
    sim.timer(id, ms{100}, [this, id, serial = ref.serial] { tick(id, serial); });
  }

  /// At the end of a finished run: every step's samples were sent, each sample exactly once
  /// per epoch.
  void check_end() {
    if (!finished)
      return;
    for (uint64_t s = 1; s <= o.steps; ++s)
      if (ids_sent.count(s) == 0) {
        violation("step " + std::to_string(s) + " of the finished job was never sent samples");
        return;
      }
    check_epochs("the job");
  }
};

training_sim::training_sim(cluster_sim& sim, training_sim_options o,
                           std::function<void(const std::string&)> violation)
    : d_(std::make_unique<impl>(sim, std::move(o), std::move(violation))) {}

training_sim::~training_sim() = default;

void training_sim::after_input(size_t id) {
  d_->after_input(id);
}

void training_sim::power_loss(const std::string& node) {
  auto disk = d_->disks.find(node);
  if (disk == d_->disks.end())
    return;
  for (auto& [p, v] : disk->second)
    for (auto r = v.begin(); r != v.end();) {
      if (r->second.synced) {
        ++r;
      } else if (d_->rng() % 2 == 0) {
        r = v.erase(r); // never reached the disk
      } else {
        r->second.sum ^= 1; // torn: written in part
        ++r;
      }
    }
}

void training_sim::check_end() {
  d_->check_end();
}

void training_sim::lose_disk(const std::string& node) {
  d_->disks.erase(node);
}

bool training_sim::finished() const {
  return d_->finished;
}
double training_sim::finished_ms() const {
  return d_->finished_ms;
}
const std::string& training_sim::error() const {
  return d_->error;
}
uint64_t training_sim::committed() const {
  return d_->acked;
}
uint64_t training_sim::rounds() const {
  return d_->rounds;
}
uint64_t training_sim::applied_steps() const {
  return d_->applied_steps;
}
uint64_t training_sim::bad_reads() const {
  return d_->bad_reads;
}
std::pair<double, double> training_sim::commit_gaps() const {
  const auto& t = d_->commit_times;
  std::vector<double> gaps;
  for (size_t i = 1; i < t.size(); ++i)
    gaps.push_back(t[i] - t[i - 1]);
  if (gaps.empty())
    return {0, 0};
  auto longest = *std::max_element(gaps.begin(), gaps.end());
  std::nth_element(gaps.begin(), gaps.begin() + static_cast<long>(gaps.size() / 2), gaps.end());
  return {longest, gaps[gaps.size() / 2]};
}

const std::string& training_sim::trace() const {
  return d_->trace;
}

} // namespace understudy::cluster_detail
