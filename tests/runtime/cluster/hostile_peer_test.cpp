// A node's agent against hostile peers: forged and malformed messages sent to a real node on
// loopback from a second actor system that holds a valid certificate of another node of the
// cluster (a process without one cannot connect at all: security_test). Each is refused with
// a cluster_errc error, logged through the node's note callback, and the node goes on, with
// its stored versions unchanged.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/after.hpp>
#include <caf/deserializer.hpp>
#include <caf/io/middleman.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/serializer.hpp>
#include <catch2/catch.hpp>

#include "support/etcd_fixture.hpp"
#include "support/free_port.hpp"
#include "support/state_test_util.hpp"
#include "support/temp_dir.hpp"
#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/cluster/memory_coordinator.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/state/runtime.hpp"
#include "understudy/supervision/supervisor.hpp"

using namespace understudy;
using namespace std::chrono_literals;
using test::free_port;

namespace {

/// What a forged replica declares: one checkpoint at `path` and `step` with one tensor that
/// claims `declared` bytes and carries `carried` of them.
struct forged_batch {
  std::string path = "/job/shard-0";
  uint64_t step = 1;
  uint64_t declared = 0;
  uint64_t carried = 0;
  /// The tensor's one chunk checksum as sent.
  uint64_t chunk_sum = 0;
};

caf::error inspect(caf::serializer& f, forged_batch& x) {
  size_t n = 1;
  size_t tensors = 1;
  uint64_t schema_id = 0;
  uint32_t schema_version = 0;
  uint64_t incarnation = 1;
  std::vector<uint64_t> payload;
  std::string name = "w";
  uint8_t type = 0;
  std::vector<uint64_t> shape{x.declared};
  std::vector<char> bytes(x.carried, 'x');
  if (auto err = f.begin_sequence(n))
    return err;
  uint64_t chunk = uint64_t{8} << 20;
  if (auto err = f(x.path, x.step, schema_id, schema_version, incarnation, payload, chunk))
    return err;
  if (auto err = f.begin_sequence(tensors))
    return err;
  if (auto err = f(name, type, shape, x.declared))
    return err;
  if (!bytes.empty())
    if (auto err = f.apply_raw(bytes.size(), bytes.data()))
      return err;
  std::vector<uint64_t> sums{x.chunk_sum};
  if (auto err = f(sums))
    return err;
  if (auto err = f.end_sequence())
    return err;
  uint64_t record_sum = 0;
  if (auto err = f(record_sum))
    return err;
  return f.end_sequence();
}

caf::error inspect(caf::deserializer&, forged_batch&) {
  return caf::make_error(caf::sec::runtime_error, "forged batches are only sent");
}

template <class Inspector>
std::enable_if_t<!std::is_base_of<caf::serializer, Inspector>::value &&
                     !std::is_base_of<caf::deserializer, Inspector>::value,
                 typename Inspector::result_type>
inspect(Inspector& f, forged_batch& x) {
  return f(caf::meta::type_name("forged_batch"), x.step);
}

/// Node n1 of a two-node loopback cluster with mutual TLS (certificates made for it),
/// started in this process, recording its notes.
struct target_node {
  test::temp_dir dir{"hostile"};
  // Sessions that outlive every test: n2 joins once and never renews.
  std::shared_ptr<memory_coordination_service> service =
      std::make_shared<memory_coordination_service>(std::chrono::hours(1));
  /// n2 as the coordinator knows it (it joined before n1 started): the epoch it gave n2. The
  /// hostile peers below hold n2's certificate; what they send is n2's as far as any
  /// connection can tell.
  std::vector<std::shared_ptr<memory_coordinator>> n2_sessions;
  uint64_t n2_epoch = 0;
  node_config nc;
  std::unique_ptr<runtime> rt;
  std::shared_ptr<cluster_node> node;
  std::mutex mtx;
  std::vector<std::string> notes;

  /// `n2_port`: where n2 is said to listen (by default 1, where nothing does).
  explicit target_node(uint16_t n2_port = 1) {
    // A deadline that no test reaches: a hostile peer that said hello never beats.
    std::string text = "[cluster]\nname = \"h\"\nstate_root = \"" + dir.path +
                       "/state\"\n[cluster.security]\ndir = \"" + dir.path +
                       "/certs\"\n[cluster.failure_detection]\ndeadline = \"60s\"\n";
    // n2 never runs: its port is 1, where nothing listens, so n1's attempts to reach it
    // are refused at once (over TLS, CAF's openssl manager connects synchronously, and a
    // port that some other process took meanwhile could hold it in a handshake).
    for (const char* n : {"n1", "n2"})
      text += std::string{"[[node]]\nname = \""} + n + "\"\nhost = \"127.0.0.1\"\nport = " +
              std::to_string(std::string{n} == "n1" ? free_port() : n2_port) + "\n";
    auto path = dir.path + "/cluster.toml";
    std::ofstream{path} << text;
    auto loaded = load_node_config(path);
    REQUIRE(loaded);
    nc = std::move(*loaded);
    REQUIRE(create_cluster_certificates(nc, false));
    runtime_config rc;
    rc.log_events = false;
    caf::expected<std::vector<std::string>> prepared{std::vector<std::string>{}};
    rc.configure = [&](caf::actor_system_config& cfg) {
      prepared = cluster_node::configure(cfg, nc, "n1");
    };
    rt = std::make_unique<runtime>(rc);
    REQUIRE(prepared);
    // n1 in an in-process coordination service, where n2 joined first.
    n2_epoch = join_n2();
    auto started =
        cluster_node::start(*rt, nc, "n1", nullptr, {}, memory_coordinator::make(service));
    REQUIRE(started);
    node = std::move(*started);
    node->on_note([this](const std::string& text) {
      std::lock_guard<std::mutex> guard{mtx};
      notes.push_back(text);
    });
  }
  ~target_node() { node.reset(); }

  /// n2 joins (again) in the coordination service: its new epoch (an older one is fenced).
  uint64_t join_n2() {
    auto c = memory_coordinator::make(service);
    auto e = etcd_test::join(*c, "n2");
    REQUIRE(e);
    n2_sessions.push_back(c);
    return *e;
  }

  std::string all_notes() {
    std::lock_guard<std::mutex> guard{mtx};
    std::string out;
    for (auto& n : notes)
      out += n + "\n";
    return out;
  }

  /// The node still answers: its status names it.
  bool alive(caf::actor_system& from, const caf::actor& agent) {
    bool ok = false;
    caf::scoped_actor self{from};
    self->request(agent, 10s, caf::atom("us_nstat"))
        .receive([&](const std::string& text) { ok = text.find("n1") != std::string::npos; },
                 [&](caf::error&) {});
    return ok;
  }
};

/// Loads CAF's middleman and its openssl module with the certificate of node `as` of `nc`:
/// a local process holding that node's certificate (the hostile peers below).
void load_node_credentials(caf::actor_system_config& conf, const node_config& nc, const char* as) {
  const auto* n = nc.find_node(as);
  REQUIRE(n != nullptr);
  conf.load<caf::io::middleman>();
  conf.openssl_certificate = n->cert;
  conf.openssl_key = n->key;
  conf.openssl_cafile = nc.cluster.security->ca;
  conf.load<caf::openssl::manager>();
}

/// A local process with node n2's certificate and the forged batch type, registered under
/// the name of the real one so that the node reads it as a checkpoint batch.
struct forger {
  caf::actor_system_config conf;
  std::unique_ptr<caf::actor_system> sys;
  explicit forger(const node_config& nc) {
    load_node_credentials(conf, nc, "n2");
    conf.add_message_type<forged_batch>("understudy::checkpoint_batch");
    sys = std::make_unique<caf::actor_system>(conf);
  }
  caf::actor connect(uint16_t port) {
    auto agent = connect_to_peer(*sys, "127.0.0.1", port, 10s);
    REQUIRE(agent);
    return *agent;
  }
};

/// A local process with node n2's certificate and the real checkpoint batch type. It says
/// hello from `me`, which lives as long as it does: the node takes the actor that said hello
/// for n2's agent, and its end for n2's.
struct replicator {
  caf::actor_system_config conf;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<caf::scoped_actor> me;
  explicit replicator(const node_config& nc) {
    load_node_credentials(conf, nc, "n2");
    conf.add_message_type<checkpoint_batch>("understudy::checkpoint_batch");
    sys = std::make_unique<caf::actor_system>(conf);
    me = std::make_unique<caf::scoped_actor>(*sys);
  }
  ~replicator() { me.reset(); }
  caf::actor connect(uint16_t port) {
    auto agent = connect_to_peer(*sys, "127.0.0.1", port, 10s);
    REQUIRE(agent);
    return *agent;
  }
};

/// A checkpoint of `path` at `step` with one tensor of 64 bytes of `fill`.
checkpoint_ptr make_checkpoint(const std::string& path, uint64_t step, char fill) {
  auto cp = std::make_shared<checkpoint>();
  cp->path = path;
  cp->step = step;
  cp->incarnation = 1;
  cp->payload = test::tensor_state_payload(step);
  auto bytes = std::make_shared<std::vector<std::byte>>(64, static_cast<std::byte>(fill));
  tensor_data t;
  t.name = "w";
  t.type = element_type::f32;
  t.shape = {16};
  t.data = bytes->data();
  t.size = bytes->size();
  t.owner = bytes;
  cp->tensors.push_back(std::move(t));
  return cp;
}

/// Every stored version of `path` as (step, first tensor byte, header checksum-verified).
std::vector<std::pair<uint64_t, int>> stored(const state_store& store, const std::string& path) {
  std::vector<std::pair<uint64_t, int>> out;
  auto versions = store.versions(path);
  REQUIRE(versions);
  for (const auto& v : *versions) {
    int first = -1;
    auto err = store.read(path, v.step, [&](const record_view& r) -> caf::error {
      std::vector<std::byte> bytes(r.info().tensors.at(0).size);
      if (auto e = r.copy_tensor(0, bytes.data(), bytes.size()))
        return e;
      first = static_cast<int>(bytes.at(0));
      return {};
    });
    CHECK_FALSE(err);
    out.emplace_back(v.step, first);
  }
  return out;
}

/// Sends (replica, from, gen, epoch, batch) and returns the answer.
template <class Batch>
caf::expected<uint64_t> send_replica(caf::actor_system& sys, const caf::actor& agent,
                                     const std::string& from, Batch batch, uint64_t gen,
                                     uint64_t epoch) {
  caf::expected<uint64_t> out{uint64_t{0}};
  caf::scoped_actor self{sys};
  self->request(agent, 10s, caf::atom("us_nrepl"), from, gen, epoch, std::move(batch))
      .receive([&](uint64_t n) { out = n; }, [&](caf::error& err) { out = std::move(err); });
  return out;
}

/// The same, from the incarnation at epoch `gen`.
template <class Batch>
caf::expected<uint64_t> send_replica(caf::actor_system& sys, const caf::actor& agent,
                                     const std::string& from, Batch batch, uint64_t gen) {
  return send_replica(sys, agent, from, std::move(batch), gen, gen);
}

/// Says hello to `agent` as n2 at `epoch`: the node's answer (its epoch), or why it refused.
/// The node answers once its coordinator's view shows that epoch, so a replica sent after a
/// successful hello meets a node that knows it.
caf::expected<uint64_t> greet(replicator& r, const caf::actor& agent, uint64_t epoch) {
  caf::expected<uint64_t> out{uint64_t{0}};
  auto& self = *r.me;
  self->request(agent, 10s, caf::atom("us_nhello"), std::string{"n2"}, epoch, std::string{})
      .receive([&](const std::string&, uint64_t e, const std::string&) { out = e; },
               [&](caf::error& err) { out = std::move(err); });
  return out;
}

} // namespace

TEST_CASE("a replica whose tensor declares 2^62 bytes is refused and the node goes on",
          "[cluster][hostile]") {
  target_node n;
  forger f{n.nc};
  auto agent = f.connect(n.node->self().port);
  forged_batch huge;
  huge.declared = uint64_t{1} << 62;
  huge.carried = 16;
  auto res = send_replica(*f.sys, agent, "n2", huge, n.n2_epoch);
  REQUIRE_FALSE(res);
  CHECK(is(res.error(), cluster_errc::malformed_message));
  CHECK_THAT(describe(res.error()), Catch::Contains("4611686018427387904 bytes"));
  CHECK_THAT(n.all_notes(),
             Catch::Contains("refuses a replica") && Catch::Contains("4611686018427387904 bytes"));
  CHECK(n.alive(*f.sys, agent));
  // Nothing was stored.
  auto paths = n.node->state_store().store->paths();
  REQUIRE(paths);
  CHECK(paths->empty());
  // A tensor that declares more bytes than the message carries, within the bound, too.
  forged_batch short_one;
  short_one.declared = 1 << 20;
  short_one.carried = 8;
  auto res2 = send_replica(*f.sys, agent, "n2", short_one, n.n2_epoch);
  REQUIRE_FALSE(res2);
  CHECK(is(res2.error(), cluster_errc::malformed_message));
  CHECK(n.alive(*f.sys, agent));
}

TEST_CASE("a replica whose bytes do not match its checksums is refused and nothing is stored",
          "[cluster][hostile]") {
  target_node n;
  forger f{n.nc};
  auto agent = f.connect(n.node->self().port);
  forged_batch changed;
  changed.declared = 16;
  changed.carried = 16;
  changed.chunk_sum = 12345; // not the XXH3 of the 16 bytes sent
  auto res = send_replica(*f.sys, agent, "n2", changed, n.n2_epoch);
  REQUIRE_FALSE(res);
  CHECK(is(res.error(), cluster_errc::replica_refused));
  CHECK_THAT(describe(res.error()), Catch::Contains("chunk 0: checksum mismatch"));
  CHECK_THAT(n.all_notes(),
             Catch::Contains("refuses a replica") && Catch::Contains("checksum mismatch"));
  auto paths = n.node->state_store().store->paths();
  REQUIRE(paths);
  CHECK(paths->empty());
  CHECK(n.alive(*f.sys, agent));
}

TEST_CASE("a replica at a lower step deletes no stored version", "[cluster][hostile][state]") {
  target_node n;
  auto& store = *n.node->state_store().store;
  // Versions 5 and 6 written locally.
  auto v5 = make_checkpoint("/job/shard-0", 5, 'a');
  auto v6 = make_checkpoint("/job/shard-0", 6, 'b');
  std::vector<caf::error> results;
  REQUIRE_FALSE(store.commit({v5.get(), v6.get()}, results));
  using versions = std::vector<std::pair<uint64_t, int>>;
  REQUIRE(stored(store, "/job/shard-0") == versions{{5, 'a'}, {6, 'b'}});
  replicator r{n.nc};
  auto agent = r.connect(n.node->self().port);
  REQUIRE(greet(r, agent, n.n2_epoch));
  checkpoint_batch old;
  old.items.push_back(make_checkpoint("/job/shard-0", 2, 'z'));
  auto res = send_replica(*r.sys, agent, "n2", old, n.n2_epoch);
  INFO((res ? std::string{} : describe(res.error())));
  REQUIRE(res);
  // Versions 5 and 6 stay: a replica never rolls an actor back.
  CHECK(stored(store, "/job/shard-0") == versions{{2, 'z'}, {5, 'a'}, {6, 'b'}});
  // A local write at a lower step still removes the newer versions (a rollback).
  auto v3 = make_checkpoint("/job/shard-0", 3, 'c');
  REQUIRE_FALSE(store.commit({v3.get()}, results));
  CHECK(stored(store, "/job/shard-0") == versions{{2, 'z'}, {3, 'c'}});
}

TEST_CASE("an export request answers the verified versions under its prefix newer than its step",
          "[cluster][hostile][state]") {
  target_node n;
  auto& store = *n.node->state_store().store;
  auto a5 = make_checkpoint("/job/shard-0", 5, 'a');
  auto a6 = make_checkpoint("/job/shard-0", 6, 'b');
  auto t6 = make_checkpoint("/job/trainer", 6, 't');
  auto other = make_checkpoint("/jobs/x", 6, 'o');
  std::vector<caf::error> results;
  REQUIRE_FALSE(store.commit({a5.get(), a6.get(), t6.get(), other.get()}, results));
  replicator r{n.nc};
  auto agent = r.connect(n.node->self().port);
  caf::scoped_actor self{*r.sys};
  auto ask = [&](const std::string& prefix, uint64_t after) {
    std::vector<std::pair<std::string, uint64_t>> got;
    self->request(agent, 10s, caf::atom("us_nexport"), prefix, after)
        .receive(
            [&](checkpoint_batch& b) {
              CHECK(b.problem.empty());
              for (auto& cp : b.items)
                got.emplace_back(cp->path, cp->step);
            },
            [&](caf::error& err) { FAIL(describe(err)); });
    std::sort(got.begin(), got.end());
    return got;
  };
  using list = std::vector<std::pair<std::string, uint64_t>>;
  // Under /job (not /jobs), newer than step 5, checked against their
  // checksums on the way (the batch arrived without a problem).
  CHECK(ask("/job", 5) == list{{"/job/shard-0", 6}, {"/job/trainer", 6}});
  CHECK(ask("/job", 0) == list{{"/job/shard-0", 5}, {"/job/shard-0", 6}, {"/job/trainer", 6}});
  CHECK(ask("/job", 6).empty());
  // A huge prefix exports nothing, and the node goes on.
  CHECK(ask("/" + std::string(1 << 20, 'p'), 0).empty());
  CHECK(n.alive(*r.sys, agent));
}

TEST_CASE("a replica never replaces a stored version with other contents",
          "[cluster][hostile][state]") {
  target_node n;
  auto& store = *n.node->state_store().store;
  auto v6 = make_checkpoint("/job/shard-0", 6, 'b');
  std::vector<caf::error> results;
  REQUIRE_FALSE(store.commit({v6.get()}, results));
  using versions = std::vector<std::pair<uint64_t, int>>;
  auto created = store.versions("/job/shard-0")->at(0).created;
  replicator r{n.nc};
  auto agent = r.connect(n.node->self().port);
  REQUIRE(greet(r, agent, n.n2_epoch));
  checkpoint_batch other;
  other.items.push_back(make_checkpoint("/job/shard-0", 6, 'x'));
  auto res = send_replica(*r.sys, agent, "n2", other, n.n2_epoch);
  REQUIRE_FALSE(res);
  CHECK(is(res.error(), state_errc::version_conflict));
  CHECK_THAT(n.all_notes(),
             Catch::Contains("refuses a replica") && Catch::Contains("/job/shard-0@6"));
  CHECK(stored(store, "/job/shard-0") == versions{{6, 'b'}});
  // The same contents again are accepted and leave the stored version as it was.
  checkpoint_batch same;
  same.items.push_back(make_checkpoint("/job/shard-0", 6, 'b'));
  auto again = send_replica(*r.sys, agent, "n2", same, n.n2_epoch);
  INFO((again ? std::string{} : describe(again.error())));
  REQUIRE(again);
  CHECK(stored(store, "/job/shard-0") == versions{{6, 'b'}});
  CHECK(store.versions("/job/shard-0")->at(0).created == created);
}

TEST_CASE(
    "a replica from an epoch the coordinator replaced, or one it never gave, is refused and "
    "changes nothing",
    "[cluster][hostile][state][replication]") {
  target_node n;
  auto& store = *n.node->state_store().store;
  replicator r{n.nc};
  auto agent = r.connect(n.node->self().port);
  const auto e1 = n.n2_epoch;
  REQUIRE(greet(r, agent, e1));
  checkpoint_batch first;
  first.items.push_back(make_checkpoint("/job/shard-0", 5, 'a'));
  auto res = send_replica(*r.sys, agent, "n2", first, e1);
  INFO((res ? std::string{} : describe(res.error())));
  REQUIRE(res);
  CHECK(*store.replica_epoch("n2") == e1);
  using versions = std::vector<std::pair<uint64_t, int>>;
  auto newer = [] {
    checkpoint_batch b;
    b.items.push_back(make_checkpoint("/job/shard-0", 6, 'z'));
    return b;
  };
  // An epoch written higher than the incarnation's own, to make the store refuse the real
  // n2's replicas from then on: malformed.
  auto lifted = send_replica(*r.sys, agent, "n2", newer(), e1, e1 + 1000);
  REQUIRE_FALSE(lifted);
  CHECK(is(lifted.error(), cluster_errc::malformed_message));
  CHECK_THAT(describe(lifted.error()), Catch::Contains("not its incarnation's"));
  // An incarnation the coordinator never gave: not acted on.
  auto made_up = send_replica(*r.sys, agent, "n2", newer(), e1 + 1000);
  REQUIRE_FALSE(made_up);
  CHECK(is(made_up.error(), cluster_errc::peer_unreachable));
  CHECK_THAT(describe(made_up.error()), Catch::Contains("has not shown that epoch"));
  CHECK(stored(store, "/job/shard-0") == versions{{5, 'a'}});
  CHECK(*store.replica_epoch("n2") == e1);
  // n2 restarts (a new epoch from the coordinator): its new incarnation's replicas land, and
  // the replaced one's are refused as fenced.
  const auto e2 = n.join_n2();
  REQUIRE(e2 > e1);
  REQUIRE(greet(r, agent, e2));
  auto fresh = send_replica(*r.sys, agent, "n2", newer(), e2);
  INFO((fresh ? std::string{} : describe(fresh.error())));
  REQUIRE(fresh);
  CHECK(*store.replica_epoch("n2") == e2);
  checkpoint_batch stale;
  stale.items.push_back(make_checkpoint("/job/shard-0", 7, 'y'));
  auto refused = send_replica(*r.sys, agent, "n2", stale, e1);
  REQUIRE_FALSE(refused);
  CHECK(is(refused.error(), cluster_errc::fenced));
  CHECK_THAT(describe(refused.error()), Catch::Contains("epoch " + std::to_string(e1)));
  CHECK(stored(store, "/job/shard-0") == versions{{5, 'a'}, {6, 'z'}});
  CHECK(n.alive(*r.sys, agent));
}

TEST_CASE("a hello at an epoch the coordinator never gave is not admitted, and the real one is",
          "[cluster][hostile]") {
  target_node n;
  replicator r{n.nc};
  auto agent = r.connect(n.node->self().port);
  // Made up: the node waits for a view that would show it, then says it has none.
  auto forged = greet(r, agent, n.n2_epoch + 7);
  REQUIRE_FALSE(forged);
  CHECK(is(forged.error(), cluster_errc::peer_unreachable));
  CHECK_THAT(describe(forged.error()), Catch::Contains("has not shown that epoch"));
  // It fenced nothing: n2's real incarnation is admitted, and is alive at its own epoch.
  auto real = greet(r, agent, n.n2_epoch);
  INFO((real ? std::string{} : describe(real.error())));
  REQUIRE(real);
  CHECK(*real == n.node->generation());
  bool seen = false;
  for (const auto& p : n.node->peers())
    if (p.name == "n2") {
      seen = true;
      CHECK(p.state == peer_state::alive);
    }
  CHECK(seen);
  // A heartbeat at a made-up epoch changes nothing either.
  caf::scoped_actor self{*r.sys};
  self->send(agent, caf::atom("us_nbeat"), std::string{"n2"}, n.n2_epoch + 9, std::string{});
  auto again = greet(r, agent, n.n2_epoch);
  CHECK(again);
  CHECK(n.alive(*r.sys, agent));
}

TEST_CASE("a checkpoint whose buddy is not alive is not acknowledged: the put fails naming it",
          "[cluster][replication]") {
  // n1's buddy n2 was never started, and no other node is down its chain.
  target_node n;
  auto p = n.node->state_store();
  caf::scoped_actor self{n.rt->system()};
  auto cp = make_checkpoint("/job/shard-0", 3, 'a');
  caf::error err;
  self->request(p.writer, 30s, put_state_atom::value, cp)
      .receive([](uint64_t) {}, [&](caf::error& e) { err = std::move(e); });
  REQUIRE(err);
  CHECK(is(err, state_errc::not_replicated));
  CHECK_THAT(describe(err), Catch::Contains("/job/shard-0@3") && Catch::Contains("no_live_node") &&
                                Catch::Contains("not on its replica") &&
                                Catch::Contains("buddy chain (n2) has no live node"));
}

TEST_CASE("spawn requests for a type the node never registers wait in a bounded queue",
          "[cluster][hostile]") {
  target_node n;
  replicator r{n.nc};
  auto agent = r.connect(n.node->self().port);
  caf::scoped_actor self{*r.sys};
  auto spawn = [&](int i) {
    return caf::make_message(caf::atom("us_nspawn"), std::string{"no-such-type"},
                             "c" + std::to_string(i), "/job/c" + std::to_string(i), uint64_t{1},
                             caf::actor{}, uint64_t{0}, caf::message{});
  };
  // 256 wait for a factory that never comes (their answers never arrive).
  for (int i = 0; i < 256; ++i)
    self->send(agent, spawn(i));
  // The next one is refused at once, naming why; the node goes on.
  caf::error err;
  self->request(agent, 10s, spawn(256))
      .receive([](const caf::actor&) {}, [&](caf::error& e) { err = std::move(e); });
  REQUIRE(err);
  INFO("the node's notes: " << n.all_notes().substr(0, 3000));
  CHECK(is(err, cluster_errc::no_factory));
  CHECK_THAT(describe(err), Catch::Contains("refuses to start /job/c256") &&
                                Catch::Contains("256 spawn requests already wait"));
  // A request for a type the node does register is not held back by the full
  // queue: it goes on to the supervisor check (this one names no supervisor).
  n.node->add_factory("known",
                      [](child_context&, const caf::message&) -> caf::expected<caf::actor> {
                        return caf::make_error(caf::sec::runtime_error, "not reached");
                      });
  caf::error known_err;
  self->request(agent, 10s,
                caf::make_message(caf::atom("us_nspawn"), std::string{"known"}, std::string{"k"},
                                  std::string{"/job/k"}, uint64_t{1}, caf::actor{}, uint64_t{0},
                                  caf::message{}))
      .receive([](const caf::actor&) {}, [&](caf::error& e) { known_err = std::move(e); });
  REQUIRE(known_err);
  CHECK(is(known_err, cluster_errc::fenced));
  CHECK_THAT(describe(known_err), Catch::Contains("its supervisor's node is fenced or unknown"));
  CHECK(n.alive(*r.sys, agent));
}

TEST_CASE("a hello or a replica that claims a huge node name is refused without echoing it",
          "[cluster][hostile]") {
  target_node n;
  replicator r{n.nc};
  auto agent = r.connect(n.node->self().port);
  caf::scoped_actor self{*r.sys};
  const std::string huge(1 << 20, 'n');
  caf::error hello_err;
  self->request(agent, 10s, caf::atom("us_nhello"), huge, uint64_t{1}, std::string{})
      .receive([](const std::string&, uint64_t, const std::string&) {},
               [&](caf::error& e) { hello_err = std::move(e); });
  REQUIRE(hello_err);
  // No node of the cluster has that name (checked before the certificate).
  CHECK(is(hello_err, cluster_errc::unknown_node));
  CHECK_THAT(describe(hello_err), Catch::Contains("... (1048576 bytes)"));
  CHECK(describe(hello_err).size() < 1024);
  checkpoint_batch batch;
  batch.items.push_back(make_checkpoint("/job/shard-0", 1, 'a'));
  auto res = send_replica(*r.sys, agent, huge, batch, n.n2_epoch);
  REQUIRE_FALSE(res);
  // n2's certificate does not name it.
  CHECK(is(res.error(), cluster_errc::identity_mismatch));
  CHECK(describe(res.error()).size() < 1024);
  // A heartbeat from it changes nothing; the node goes on, nothing stored.
  self->send(agent, caf::atom("us_nbeat"), huge, uint64_t{1}, huge);
  CHECK(n.alive(*r.sys, agent));
  CHECK(n.all_notes().size() < 4096);
  auto paths = n.node->state_store().store->paths();
  REQUIRE(paths);
  CHECK(paths->empty());
}

TEST_CASE("a node says which peers it is not connected to, and its mesh wait names the links",
          "[cluster]") {
  target_node n;
  // n2 never starts: n1's own link to it is missing, after the wait's bound.
  auto missing = n.node->await_mesh(50ms);
  CHECK(missing == std::vector<std::string>{"n1-n2"});
  // Asked over the network, n1 names n2 as a peer it has no connection to.
  replicator r{n.nc};
  auto agent = r.connect(n.node->self().port);
  caf::scoped_actor self{*r.sys};
  std::vector<std::string> unconnected;
  self->request(agent, 10s, caf::atom("us_nmesh"))
      .receive([&](const std::vector<std::string>& names) { unconnected = names; },
               [](caf::error&) {});
  CHECK(unconnected == std::vector<std::string>{"n2"});
}

TEST_CASE("a node that other processes connected to shuts down without waiting on them",
          "[cluster][shutdown]") {
  // A detached agent used to keep its thread, and so the actor system's
  // destructor, waiting for a reference that CAF's network layer kept to it
  // after a remote process had seen it: about one shutdown in thirty hung.
  for (int round = 0; round < 40; ++round) {
    INFO("round " << round);
    target_node n;
    forger f{n.nc};
    auto agent = f.connect(n.node->self().port);
    CHECK(n.alive(*f.sys, agent));
  }
}

TEST_CASE("a supervisor answers while a placement waits, and the placement's error fails the start",
          "[cluster][placement]") {
  target_node n;
  // Another member of the coordination service declares n1 dead: n1 is fenced,
  // and a placement on a fenced node holds for a connection timeout (so that
  // its supervisor does not spin through restarts) before it fails.
  auto other = memory_coordinator::make(n.service);
  std::promise<bool> declared;
  other->join("n2", [&](caf::expected<uint64_t> epoch) {
    REQUIRE(epoch);
    other->declare_dead("n1", n.node->generation(),
                        [&](caf::expected<bool> done) { declared.set_value(done && *done); });
  });
  REQUIRE(declared.get_future().get());
  REQUIRE(n.node->await_stop_request(10s));
  REQUIRE(n.node->fenced());
  supervisor_spec spec;
  spec.name = "root";
  child_spec placed;
  placed.id = "placed";
  placed.start_async = n.node->placed("counter", caf::message{}, "n1");
  spec.children = {placed};
  auto& sys = n.rt->system();
  auto sup = spawn_supervisor(sys, spec);
  REQUIRE(sup);
  caf::scoped_actor self{sys};
  self->monitor(*sup);
  // Answered while the placement waits: the child is starting, without a
  // handle. A supervisor that waited in the start function would answer only
  // after the start failed, when it has ended.
  std::vector<child_info> kids;
  std::string why;
  self->request(*sup, 30s, which_children_atom::value)
      .receive([&](std::vector<child_info>& xs) { kids = std::move(xs); },
               [&](caf::error& err) { why = describe(err); });
  INFO(why);
  REQUIRE(kids.size() == 1);
  CHECK(kids[0].status == child_status::starting);
  CHECK_FALSE(kids[0].handle);
  // Then the placement's error fails the supervisor's start, naming why.
  caf::error reason;
  self->receive([&](caf::down_msg& dm) { reason = dm.reason; },
                caf::after(std::chrono::seconds(60)) >> [] { FAIL("the start never ended"); });
  CHECK(is(reason, supervision_errc::start_failed));
  CHECK_THAT(describe(reason), Catch::Contains("fenced"));
}

TEST_CASE("holds and transfer requests with huge paths or an unknown target change nothing",
          "[cluster][hostile]") {
  target_node n;
  replicator r{n.nc};
  auto agent = r.connect(n.node->self().port);
  caf::scoped_actor self{*r.sys};
  const std::string huge(1 << 20, 'p');
  // holds: nothing is held under a path nobody stored.
  uint64_t held = 99;
  self->request(agent, 10s, caf::atom("us_nholds"), "/" + huge)
      .receive([&](uint64_t step) { held = step; }, [](caf::error&) {});
  CHECK(held == 0);
  // A transfer from a connection that never said hello: refused (it is no incarnation of a
  // live peer).
  caf::error err;
  self->request(agent, 10s, caf::atom("us_nxfer"), "/" + huge, std::string{"n2"})
      .receive([](uint64_t) {}, [&](caf::error& e) { err = std::move(e); });
  CHECK(is(err, cluster_errc::fenced));
  // Admitted, a transfer to a node this node has no connection to (a huge name): refused, the
  // error short.
  REQUIRE(greet(r, agent, n.n2_epoch));
  err = caf::error{};
  self->request(agent, 10s, caf::atom("us_nxfer"), "/" + huge, huge)
      .receive([](uint64_t) {}, [&](caf::error& e) { err = std::move(e); });
  REQUIRE(err);
  CHECK(is(err, cluster_errc::peer_unreachable));
  CHECK(describe(err).size() < 1024);
  CHECK(n.alive(*r.sys, agent));
  CHECK(n.all_notes().size() < 4096);
  auto paths = n.node->state_store().store->paths();
  REQUIRE(paths);
  CHECK(paths->empty());
}

TEST_CASE(
    "stop and transfer requests are heard only from the current incarnation of a live "
    "peer",
    "[cluster][hostile]") {
  target_node n;
  auto stop = [](caf::actor_system& sys, const caf::actor& agent) {
    caf::error err;
    caf::scoped_actor self{sys};
    self->request(agent, 10s, caf::atom("us_nstop"))
        .receive([] {}, [&](caf::error& e) { err = std::move(e); });
    return err;
  };
  auto transfer = [](caf::actor_system& sys, const caf::actor& agent) {
    caf::error err;
    caf::scoped_actor self{sys};
    self->request(agent, 10s, caf::atom("us_nxfer"), std::string{"/job/shard-0"}, std::string{"n2"})
        .receive([](uint64_t) {}, [&](caf::error& e) { err = std::move(e); });
    return err;
  };
  // n2's first incarnation (a process with its certificate): before its hello nothing it asks
  // is acted on.
  replicator old_n2{n.nc};
  auto old_agent = old_n2.connect(n.node->self().port);
  CHECK(is(stop(*old_n2.sys, old_agent), cluster_errc::fenced));
  REQUIRE(greet(old_n2, old_agent, n.n2_epoch));
  // n2 restarts: a new epoch, a new process, admitted in its turn.
  const auto e2 = n.join_n2();
  replicator new_n2{n.nc};
  auto new_agent = new_n2.connect(n.node->self().port);
  REQUIRE(greet(new_n2, new_agent, e2));
  // The replaced incarnation (woken from a pause, say) stops nothing and moves nothing.
  auto refused = stop(*old_n2.sys, old_agent);
  CHECK(is(refused, cluster_errc::fenced));
  CHECK_THAT(describe(refused), Catch::Contains("refuses a stop request"));
  CHECK(is(transfer(*old_n2.sys, old_agent), cluster_errc::fenced));
  CHECK_FALSE(n.node->await_stop_request(0ms));
  CHECK_THAT(n.all_notes(), Catch::Contains("refuses a transfer request"));
  // The current one is heard.
  CHECK_FALSE(stop(*new_n2.sys, new_agent));
  CHECK(n.node->await_stop_request(0ms));
}

TEST_CASE("a peer address that accepts but never completes TLS does not stall identity checks",
          "[cluster][security]") {
  // Something listens on n2's port and never answers: n1's connector reaches it
  // and waits in its TLS handshake.
  int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(lfd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(lfd, 8) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  std::vector<int> accepted;
  {
    target_node n{ntohs(addr.sin_port)};
    pollfd pfd{lfd, POLLIN, 0};
    REQUIRE(::poll(&pfd, 1, 20000) == 1);
    accepted.push_back(::accept(lfd, nullptr, nullptr));
    // A holder of n2's certificate is still heard: its identity is checked
    // without waiting for the handshake that hangs.
    replicator r{n.nc};
    auto agent = r.connect(n.node->self().port);
    CHECK(n.alive(*r.sys, agent));
    uint64_t held = 99;
    caf::scoped_actor self{*r.sys};
    self->request(agent, 10s, caf::atom("us_nholds"), std::string{"/job"})
        .receive([&](uint64_t step) { held = step; }, [](caf::error&) {});
    CHECK(held == 0);
    // Let the hanging handshake end before the node stops.
    for (int fd : accepted)
      ::close(fd);
    accepted.clear();
  }
  ::close(lfd);
}
