// Persistent actors on a real actor system: state is restored from the store
// on every restart, never from the dead incarnation's memory. Waits are on
// events and replies, never sleeps.

#include "understudy/state/persistent.hpp"

#include <atomic>

#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/typed_response_promise.hpp>

#include "support/state_fixture.hpp"
#include "support/test_fixture.hpp"
#include "understudy/state/runtime.hpp"

using namespace understudy;
using test::counter_state;
using test::temp_state_dir;

namespace {

using set_atom = caf::atom_constant<caf::atom("set")>;
using save_atom = caf::atom_constant<caf::atom("save")>;
using get_atom = caf::atom_constant<caf::atom("get")>;

/// A persistent counter: `set` changes memory only, `save` checkpoints and
/// answers when durable, `get` answers the counter and the first weight.
caf::behavior counter_actor(caf::event_based_actor* self,
                            std::shared_ptr<persistent<counter_state>> st) {
  return {
      [st](set_atom, uint64_t v) {
        st->value().counter = v;
        st->value().weights.assign(1000, static_cast<float>(v));
      },

      [self, st](save_atom, uint64_t step) -> caf::result<uint64_t> {
        auto rp = self->make_response_promise<uint64_t>();
        st->checkpoint(step, [rp](caf::expected<uint64_t> res) mutable {
          if (res)
            rp.deliver(*res);
          else
            rp.deliver(res.error());
        });
        return rp;
      },
      [st](get_atom) {
        auto& v = st->value();
        return std::make_tuple(v.counter, v.weights.empty() ? -1.0f : v.weights[0],
                               st->restored_step() ? *st->restored_step() : uint64_t{0});
      },
      [](test::crash_atom) -> int { throw std::runtime_error("injected crash"); },
  };
}

struct persistent_fixture {
  explicit persistent_fixture(const std::string& dir, durability mode = durability::none)
      : log(std::make_shared<event_log>()), rt(make_config(log)) {
    auto cfg = test::test_store_config(dir);
    cfg.mode = mode;
    auto p = rt.open_state(cfg);
    if (!p)
      FAIL("open_state: " << describe(p.error()));
    state = *p;
  }

  static runtime_config make_config(std::shared_ptr<event_log> log) {
    runtime_config cfg;
    cfg.worker_threads = 2;
    cfg.events = std::move(log);
    cfg.log_events = false;
    return cfg;
  }

  supervisor_ref start_counter(const std::string& name = "job") {
    supervisor_spec spec;
    spec.name = name;
    spec.backoff.min = caf::timespan{0};
    spec.children.push_back(persistent_child<counter_state>("counter", state, counter_actor));
    auto tree = rt.start(spec);
    if (!tree)
      FAIL("start: " << describe(tree.error()));
    return *tree;
  }

  template <class T, class... Ts>
  T ask(const caf::actor& dest, Ts&&... xs) {
    caf::scoped_actor self{rt.system()};
    T result{};
    bool ok = false;
    self->request(dest, std::chrono::seconds(30), std::forward<Ts>(xs)...)
        .receive(
            [&](T& x) {
              result = std::move(x);
              ok = true;
            },
            [&](caf::error& err) { FAIL("request failed: " << describe(err)); });
    REQUIRE(ok);
    return result;
  }

  std::tuple<uint64_t, float, uint64_t> get(const caf::actor& a) {
    caf::scoped_actor self{rt.system()};
    std::tuple<uint64_t, float, uint64_t> result;
    self->request(a, std::chrono::seconds(30), get_atom::value)
        .receive(
            [&](uint64_t c, float w, uint64_t s) {
              result = {c, w, s};
            },
            [&](caf::error& err) { FAIL("get failed: " << describe(err)); });
    return result;
  }

  bool wait_for(event_kind kind, size_t n) {
    return log->wait_for(
        [&](const std::vector<supervision_event>& evs) {
          return static_cast<size_t>(std::count_if(evs.begin(), evs.end(),
                                                   [&](auto& ev) { return ev.kind == kind; })) >= n;
        },
        std::chrono::seconds(30));
  }

  std::shared_ptr<event_log> log;
  runtime rt;
  persistence state;
};

} // namespace

TEST_CASE("a restarted child has its checkpointed state, not what it changed afterwards",
          "[state][persistent]") {
  temp_state_dir dir;
  persistent_fixture f{dir.path};
  auto tree = f.start_counter();
  REQUIRE(f.wait_for(event_kind::state_fresh, 1));
  auto a = tree.resolve("counter");
  REQUIRE(a);
  caf::anon_send(*a, set_atom::value, uint64_t{10});
  CHECK(f.ask<uint64_t>(*a, save_atom::value, uint64_t{1}) == 1);
  caf::anon_send(*a, set_atom::value, uint64_t{99}); // after the checkpoint
  CHECK(std::get<0>(f.get(*a)) == 99);
  caf::anon_send(*a, test::crash_atom::value);
  REQUIRE(f.wait_for(event_kind::child_restarted, 1));
  auto b = tree.resolve("counter");
  REQUIRE(b);
  CHECK(*b != *a);
  auto [counter, weight, restored] = f.get(*b);
  CHECK(counter == 10);
  CHECK(weight == 10.0f);
  CHECK(restored == 1);
  CHECK(f.log->count(event_kind::state_restored, "counter") == 1);
  auto evs = f.log->snapshot();
  auto ev = std::find_if(evs.begin(), evs.end(),
                         [](auto& e) { return e.kind == event_kind::state_restored; });
  REQUIRE(ev != evs.end());
  CHECK(ev->action == "restored step 1");
  CHECK(ev->state_step == std::optional<uint64_t>{1});
  CHECK(ev->incarnation == 2);
  CHECK(ev->supervisor == "/job");
}

TEST_CASE("a corrupt newest version makes the restarted child load the previous one and say so",
          "[state][persistent][corruption]") {
  temp_state_dir dir;
  {
    persistent_fixture f{dir.path};
    auto tree = f.start_counter();
    auto a = tree.resolve("counter");
    REQUIRE(a);
    for (uint64_t s = 1; s <= 3; ++s) {
      caf::anon_send(*a, set_atom::value, s * 100);
      CHECK(f.ask<uint64_t>(*a, save_atom::value, s) == s);
    }
  } // runtime, writer and store closed: the node is down
  test::flip_byte_in_chunk(dir.path, "/job/counter", 3, 0, 0, 17);
  persistent_fixture f{dir.path};
  auto tree = f.start_counter();
  REQUIRE(f.wait_for(event_kind::state_fallback, 1));
  auto a = tree.resolve("counter");
  REQUIRE(a);
  auto [counter, weight, restored] = f.get(*a);
  CHECK(counter == 200);
  CHECK(weight == 200.0f);
  CHECK(restored == 2);
  auto evs = f.log->snapshot();
  auto ev = std::find_if(evs.begin(), evs.end(),
                         [](auto& e) { return e.kind == event_kind::state_fallback; });
  REQUIRE(ev != evs.end());
  CHECK(ev->action == "restored step 2");
  CHECK(ev->state_step == std::optional<uint64_t>{2});
  CHECK(ev->reason.find("skipped step 3") != std::string::npos);
  CHECK(ev->reason.find("checksum mismatch") != std::string::npos);
  CHECK(f.log->count(event_kind::state_restored) == 0);
}

TEST_CASE("a child with no saved state starts fresh and the event says so", "[state][persistent]") {
  temp_state_dir dir;
  persistent_fixture f{dir.path};
  auto tree = f.start_counter();
  REQUIRE(f.wait_for(event_kind::state_fresh, 1));
  auto evs = f.log->snapshot();
  auto ev = std::find_if(evs.begin(), evs.end(),
                         [](auto& e) { return e.kind == event_kind::state_fresh; });
  REQUIRE(ev != evs.end());
  CHECK(ev->reason == "no saved state");
  auto a = tree.resolve("counter");
  REQUIRE(a);
  CHECK(std::get<0>(f.get(*a)) == 0);
}

TEST_CASE("64 actors checkpointing at once: every acknowledged checkpoint is readable",
          "[state][persistent][group_commit]") {
  temp_state_dir dir;
  persistent_fixture f{dir.path, durability::sync_each_commit};
  constexpr size_t actors = 64;
  constexpr uint64_t steps = 5;
  caf::scoped_actor self{f.rt.system()};
  std::vector<caf::actor> writers;
  for (size_t i = 0; i < actors; ++i) {
    writers.push_back(f.rt.system().spawn([i, p = f.state](caf::event_based_actor* me) {
      persistent_identity id;
      id.path = "/job/actor-" + std::to_string(i);
      auto st = std::make_shared<persistent<counter_state>>(me, p, id);
      return counter_actor(me, st);
    }));
  }
  // All actors checkpoint each step concurrently; their acks come back through
  // the group commit.
  size_t acks = 0;
  for (uint64_t s = 1; s <= steps; ++s) {
    for (size_t i = 0; i < actors; ++i)
      self->send(writers[i], set_atom::value, s * 1000 + i);
    for (size_t i = 0; i < actors; ++i)
      self->send(writers[i], save_atom::value, s);
    for (size_t i = 0; i < actors; ++i)
      self->receive(
          [&](uint64_t step) {
            CHECK(step == s);
            ++acks;
          },
          [&](caf::error& err) { FAIL("checkpoint failed: " << describe(err)); });
  }
  CHECK(acks == actors * steps);
  for (auto& w : writers)
    self->send_exit(w, caf::exit_reason::user_shutdown);
  auto stats = f.state.store->stats();
  CHECK(stats.puts == actors * steps);
  // Batching: far fewer transactions than puts.
  CHECK(stats.commits < stats.puts);
  for (size_t i = 0; i < actors; ++i) {
    for (uint64_t s = 1; s <= steps; ++s) {
      counter_state loaded;
      auto err = f.state.store->read("/job/actor-" + std::to_string(i), s,
                                     [&](const record_view& rec) -> caf::error {
                                       state_decoder dec{rec, {}};
                                       return state_codec<counter_state>::load(dec, loaded);
                                     });
      if (s + 3 <= steps) {
        // Retention (keep_last 3) removed the oldest versions.
        CHECK(is(err, state_errc::not_found));
        continue;
      }
      REQUIRE_FALSE(err);
      CHECK(loaded.counter == s * 1000 + i);
      CHECK(loaded.weights.size() == 1000);
    }
  }
}

TEST_CASE("the writer answers each put: its step when durable, or why it was rejected",
          "[state][writer]") {
  temp_state_dir dir;
  for (auto mode : {durability::sync_each_commit, durability::periodic, durability::none}) {
    INFO("durability " << to_string(mode));
    persistent_fixture f{dir.path + "/" + to_string(mode), mode};
    caf::scoped_actor self{f.rt.system()};
    auto good = std::make_shared<const checkpoint>(test::make_checkpoint("/w/a", 7, 1000));
    auto bad = std::make_shared<const checkpoint>(test::make_checkpoint("", 8, 10));
    // Both are in the mailbox before the writer runs its flush: one transaction.
    self->send(f.state.writer, put_state_atom::value, checkpoint_ptr{good});
    self->send(f.state.writer, put_state_atom::value, checkpoint_ptr{bad});
    uint64_t acked = 0;
    caf::error rejected;
    for (int i = 0; i < 2; ++i)
      self->receive([&](uint64_t step) { acked = step; },
                    [&](caf::error& err) { rejected = std::move(err); });
    CHECK(acked == 7);
    CHECK(is(rejected, state_errc::invalid_path));
    auto w = test::read_w(*f.state.store, "/w/a", 7);
    REQUIRE(w);
    CHECK(w->size() == 1000);
    // A sync request answers once everything before it is on disk.
    uint64_t commits = 0;
    self->request(f.state.writer, std::chrono::seconds(30), sync_state_atom::value)
        .receive([&](uint64_t n) { commits = n; },
                 [&](caf::error& err) { FAIL("sync failed: " << describe(err)); });
    CHECK(commits == f.state.store->stats().commits);
    CHECK(commits >= 1);
  }
}

TEST_CASE(
    "the writer acknowledges a put only after its replica has the copy, and never "
    "replicates a replica",
    "[state][writer]") {
  temp_state_dir dir;
  runtime rt{persistent_fixture::make_config(std::make_shared<event_log>())};
  caf::scoped_actor self{rt.system()};
  // A replica that tells the test when a batch came and holds its answer
  // until the test releases it.
  using release_atom = caf::atom_constant<caf::atom("release")>;
  using held_atom = caf::atom_constant<caf::atom("held")>;
  auto copies = std::make_shared<std::vector<std::pair<std::string, uint64_t>>>();
  auto test_actor = caf::actor_cast<caf::actor>(self);
  auto replica =
      rt.system().spawn([copies, test_actor](caf::event_based_actor* r) -> caf::behavior {
        auto held = std::make_shared<std::vector<caf::typed_response_promise<uint64_t>>>();
        return {
            [r, copies, held, test_actor](replicate_atom,
                                          const checkpoint_batch& batch) -> caf::result<uint64_t> {
              for (auto& cp : batch.items)
                copies->emplace_back(cp->path, cp->step);
              auto rp = r->make_response_promise<uint64_t>();
              held->push_back(rp);
              r->send(test_actor, held_atom::value);
              return rp;
            },
            [held](release_atom) {
              for (auto& rp : *held)
                rp.deliver(uint64_t{1});
              held->clear();
            },
        };
      });
  std::atomic<int> commits{0};
  state_writer_config wc;
  wc.replica = replica;
  wc.on_commit = [&commits](std::chrono::nanoseconds d) {
    if (d.count() >= 0)
      ++commits;
  };
  auto p = rt.open_state(test::test_store_config(dir.path), wc);
  REQUIRE(p);
  auto cp = std::make_shared<const checkpoint>(test::make_checkpoint("/w/r", 3, 100));
  self->send(p->writer, put_state_atom::value, checkpoint_ptr{cp});
  // Committed locally and at the replica, which has not answered yet: the
  // first message is the replica's, not the acknowledgement.
  bool acked_early = false;
  self->receive([](held_atom) {}, [&](uint64_t) { acked_early = true; });
  CHECK_FALSE(acked_early);
  self->send(replica, release_atom::value);
  uint64_t acked = 0;
  self->receive([&](uint64_t step) { acked = step; },
                [&](caf::error& err) { FAIL("put failed: " << describe(err)); });
  CHECK(acked == 3);
  REQUIRE(copies->size() == 1);
  CHECK(copies->front() == std::make_pair(std::string{"/w/r"}, uint64_t{3}));
  // A copy of another node's checkpoint is stored, not sent on.
  auto other = std::make_shared<const checkpoint>(test::make_checkpoint("/w/other", 4, 10));
  self->request(p->writer, std::chrono::seconds(30), put_replica_atom::value, checkpoint_ptr{other})
      .receive([&](uint64_t step) { CHECK(step == 4); },
               [&](caf::error& err) { FAIL("replica put failed: " << describe(err)); });
  CHECK(copies->size() == 1);
  CHECK(test::read_w(*p->store, "/w/other", 4));
  CHECK(commits >= 2);
  self->send_exit(replica, caf::exit_reason::user_shutdown);
}

TEST_CASE("a put whose replica fails or never answers fails, naming the replica's error",
          "[state][writer][replication]") {
  temp_state_dir dir;
  runtime rt{persistent_fixture::make_config(std::make_shared<event_log>())};
  caf::scoped_actor self{rt.system()};
  // The first batch is refused as a replica target on node n2 would refuse
  // it; the second is never answered.
  auto batches = std::make_shared<std::atomic<int>>(0);
  auto replica = rt.system().spawn([batches](caf::event_based_actor* r) -> caf::behavior {
    auto held = std::make_shared<std::vector<caf::typed_response_promise<uint64_t>>>();
    return {
        [r, batches, held](replicate_atom, const checkpoint_batch&) -> caf::result<uint64_t> {
          if (++*batches == 1)
            return make_error(state_errc::disk_full, "replica of 1 checkpoints to node n2");
          held->push_back(r->make_response_promise<uint64_t>());
          return held->back();
        },
    };
  });
  state_writer_config wc;
  wc.replica = replica;
  wc.replica_timeout = std::chrono::milliseconds(200);
  auto p = rt.open_state(test::test_store_config(dir.path), wc);
  REQUIRE(p);
  auto put = [&](uint64_t step) {
    caf::expected<uint64_t> out{uint64_t{0}};
    auto cp = std::make_shared<const checkpoint>(test::make_checkpoint("/w/r", step, 100));
    self->request(p->writer, std::chrono::seconds(30), put_state_atom::value, checkpoint_ptr{cp})
        .receive([&](uint64_t s) { out = s; }, [&](caf::error& err) { out = std::move(err); });
    return out;
  };
  auto refused = put(3);
  REQUIRE_FALSE(refused);
  // Whatever the replica's cause, the put failed as not replicated (its
  // owner restarts and rewinds) and names the cause.
  CHECK(is(refused.error(), state_errc::not_replicated));
  CHECK_THAT(describe(refused.error()),
             Catch::Contains("/w/r@3 is durable on this node but not on its replica") &&
                 Catch::Contains("node n2") && Catch::Contains("disk_full"));
  auto unanswered = put(4);
  REQUIRE_FALSE(unanswered);
  CHECK(is(unanswered.error(), state_errc::not_replicated));
  CHECK_THAT(describe(unanswered.error()),
             Catch::Contains("/w/r@4") && Catch::Contains("did not answer within 200 ms"));
  CHECK(*batches == 2);
  self->send_exit(replica, caf::exit_reason::user_shutdown);
}

TEST_CASE("under periodic durability a put is acknowledged once its synced batch is on the replica",
          "[state][writer][replication]") {
  temp_state_dir dir;
  runtime rt{persistent_fixture::make_config(std::make_shared<event_log>())};
  caf::scoped_actor self{rt.system()};
  using release_atom = caf::atom_constant<caf::atom("release")>;
  using held_atom = caf::atom_constant<caf::atom("held")>;
  auto copies = std::make_shared<std::vector<uint64_t>>();
  auto test_actor = caf::actor_cast<caf::actor>(self);
  auto replica =
      rt.system().spawn([copies, test_actor](caf::event_based_actor* r) -> caf::behavior {
        auto held = std::make_shared<std::vector<caf::typed_response_promise<uint64_t>>>();
        return {
            [r, copies, held, test_actor](replicate_atom,
                                          const checkpoint_batch& batch) -> caf::result<uint64_t> {
              for (auto& cp : batch.items)
                copies->push_back(cp->step);
              held->push_back(r->make_response_promise<uint64_t>());
              r->send(test_actor, held_atom::value);
              return held->back();
            },
            [held](release_atom) {
              for (auto& rp : *held)
                rp.deliver(uint64_t{1});
              held->clear();
            },
        };
      });
  state_writer_config wc;
  wc.replica = replica;
  auto sc = test::test_store_config(dir.path);
  sc.mode = durability::periodic;
  sc.sync_interval = std::chrono::milliseconds(5);
  auto p = rt.open_state(sc, wc);
  REQUIRE(p);
  auto cp = std::make_shared<const checkpoint>(test::make_checkpoint("/w/p", 7, 100));
  self->send(p->writer, put_state_atom::value, checkpoint_ptr{cp});
  // Synced, then sent to the replica, which holds its answer: no acknowledgement yet.
  bool acked_early = false;
  self->receive([](held_atom) {}, [&](uint64_t) { acked_early = true; });
  CHECK_FALSE(acked_early);
  CHECK(*copies == std::vector<uint64_t>{7});
  self->send(replica, release_atom::value);
  uint64_t acked = 0;
  self->receive([&](uint64_t step) { acked = step; },
                [&](caf::error& err) { FAIL("put failed: " << describe(err)); });
  CHECK(acked == 7);
  self->send_exit(replica, caf::exit_reason::user_shutdown);
}

TEST_CASE("the tensor recycler hands a kept buffer only to a matching restore",
          "[state][recycle]") {
  tensor_recycler bin{size_t{8} << 20};
  std::vector<float> a(1u << 20); // 4 MiB
  auto* pa = a.data();
  bin.give(std::move(a));
  bin.give(std::vector<float>(100)); // too small to be worth keeping
  CHECK(bin.held() == size_t{4} << 20);
  CHECK(bin.take<double>(1u << 19).capacity() == 0); // another element type
  CHECK(bin.take<float>(1u << 22).capacity() == 0);  // too small for the request
  CHECK(bin.take<float>(1u << 18).capacity() == 0);  // more than twice the request
  auto b = bin.take<float>(1u << 20);
  CHECK(b.data() == pa);
  CHECK(bin.held() == 0);
  // Over the cap, the oldest buffers go first.
  bin.give(std::vector<float>(1u << 20));
  std::vector<float> c(1u << 20);
  auto* pc = c.data();
  bin.give(std::move(c));
  bin.give(std::vector<float>(1u << 20));
  CHECK(bin.held() == size_t{8} << 20);
  CHECK(bin.counts() == std::make_pair(size_t{4}, size_t{1}));
  CHECK(bin.take<float>(1u << 20).data() == pc);
}

TEST_CASE("a restore reads into the recycled buffer of a dead incarnation and overwrites it all",
          "[state][persistent][recycle]") {
  temp_state_dir dir;
  auto store = test::open_store(test::test_store_config(dir.path));
  constexpr size_t n = 1u << 19; // 2 MiB of floats
  {
    counter_state saved;
    saved.counter = 9;
    saved.weights.assign(n, 9.0f);
    state_encoder enc;
    state_codec<counter_state>::save(saved, enc);
    test::commit_all(*store, {enc.finish("/job/r", 1, capnp::typeId<schema::TensorState>(),
                                         state_codec<counter_state>::version, 1)});
  }
  auto bin = std::make_shared<tensor_recycler>();
  // What a dead incarnation leaves: a buffer of the right size full of stale values.
  std::vector<float> stale(n, -1.0f);
  auto* buffer = stale.data();
  bin->give(std::move(stale));
  persistent_identity id;
  id.path = "/job/r";
  {
    persistent<counter_state> st{nullptr, persistence{store, caf::actor{}, bin}, id};
    auto report = st.restore();
    REQUIRE(report);
    CHECK(report->step == std::optional<uint64_t>{1});
    CHECK(st.value().counter == 9);
    REQUIRE(st.value().weights.size() == n);
    CHECK(st.value().weights.data() == buffer);
    CHECK(std::count(st.value().weights.begin(), st.value().weights.end(), 9.0f) == n);
    CHECK(bin->held() == 0);
  } // this incarnation ends: its buffer goes back for the next one
  CHECK(bin->held() == n * sizeof(float));
  CHECK(bin->counts() == std::make_pair(size_t{2}, size_t{1}));
}
