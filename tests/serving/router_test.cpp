// The router and its replicas on CAF's test coordinator: balancing, retries of
// a crashed replica's requests, hot standbys, admission control, sessions and
// rolling updates. Time moves only when a test advances it.

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/test_fixture.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/serving/service.hpp"

using namespace understudy;
using namespace understudy::serving;

namespace {

constexpr size_t dim = 4;

/// A model of 4 inputs and 3 classes with versions 1..n (different parameters each).
struct model_versions {
  std::shared_ptr<actors::mlp> net = std::make_shared<actors::mlp>(std::vector<size_t>{dim, 5, 3});
  std::shared_ptr<memory_source> source = std::make_shared<memory_source>(net);
  std::map<uint64_t, std::vector<float>> params;

  void add(uint64_t v) {
    std::vector<float> p(net->parameter_count());
    net->init_parameters(p.data(), v);
    params[v] = p;
    source->add(v, std::move(p));
  }

  /// The model's own predictions of version `v` for `in`.
  std::vector<uint32_t> expected(uint64_t v, const std::vector<float>& in) const {
    std::vector<uint32_t> out(in.size() / dim);
    net->predict(params.at(v).data(), in.data(), out.size(), out.data());
    return out;
  }
};

/// `n` inputs made from `seed`.
std::vector<float> inputs(size_t n, int seed) {
  std::vector<float> v(n * dim);
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<float>(((seed * 131 + static_cast<int>(i) * 17) % 23) - 11) / 4.0f;
  return v;
}

predict_request make_request(std::vector<float> in, std::string key = {}) {
  predict_request r;
  r.key = std::move(key);
  r.in.count = static_cast<uint32_t>(in.size() / dim);
  r.in.values = std::make_shared<std::vector<float>>(std::move(in));
  return r;
}

struct serving_fixture : test::fixture {
  model_versions m;
  std::shared_ptr<router_handle> router = std::make_shared<router_handle>();
  caf::actor root;

  void start(serve_config cfg) {
    REQUIRE_FALSE(validate(cfg));
    supervisor_spec spec;
    spec.name = "serve";
    spec.children.push_back(serving_tree(cfg, m.source, router, nullptr));
    root = spawn(std::move(spec));
    run();
    REQUIRE(router->get());
  }

  serving_status status() {
    auto st = ask<serving_status>(router->get(), status_atom::value);
    REQUIRE(st);
    return *st;
  }

  std::map<std::string, size_t> states() {
    std::map<std::string, size_t> out;
    for (const auto& r : status().replicas)
      ++out[r.state];
    return out;
  }

  caf::actor replicas_supervisor() {
    auto tree = handle(root, "digits");
    return handle(tree, "replicas");
  }

  /// Sends requests without running anything, then runs; returns the answers.
  std::vector<caf::expected<prediction>> send_all(const std::vector<predict_request>& reqs) {
    std::vector<caf::expected<prediction>> out(reqs.size(), caf::sec::request_timeout);
    std::vector<caf::response_handle<caf::blocking_actor, caf::message, true>> hs;
    for (const auto& r : reqs)
      hs.push_back(self->request(router->get(), caf::infinite, predict_atom::value, r));
    run();
    auto st = status();
    INFO("router: " << st.in_flight << " in flight, " << st.waiting << " waiting");
    REQUIRE(st.in_flight == 0);
    for (size_t i = 0; i < hs.size(); ++i)
      hs[i].receive([&](prediction& p) { out[i] = std::move(p); },
                    [&](caf::error& e) { out[i] = std::move(e); });
    return out;
  }
};

serve_config config(size_t replicas, size_t standbys) {
  serve_config cfg;
  cfg.model = "digits";
  cfg.replicas = replicas;
  cfg.standbys = standbys;
  cfg.watch_interval = std::chrono::milliseconds(0);
  return cfg;
}

} // namespace

TEST_CASE_METHOD(serving_fixture,
                 "replicas load the newest version and answer with the model's own predictions",
                 "[serving]") {
  m.add(1);
  m.add(2);
  start(config(2, 1));
  CHECK(states() == std::map<std::string, size_t>{{"active", 2}, {"standby", 1}});
  CHECK(status().target == 2);
  auto in = inputs(3, 7);
  auto out = send_all({make_request(in)});
  REQUIRE(out[0]);
  CHECK(out[0]->labels == m.expected(2, in));
  CHECK(out[0]->version == 2);
  CHECK(out[0]->attempts == 1);
}

TEST_CASE_METHOD(serving_fixture, "without a version the router answers no_replica at once",
                 "[serving]") {
  start(config(1, 0));
  auto out = send_all({make_request(inputs(1, 1))});
  REQUIRE_FALSE(out[0]);
  CHECK(is(out[0].error(), serving_errc::no_replica));
  // A version appears and is rolled in on request.
  m.add(5);
  REQUIRE(ask<uint64_t>(router->get(), update_atom::value, uint64_t{0}) == uint64_t{5});
  run();
  out = send_all({make_request(inputs(1, 1))});
  REQUIRE(out[0]);
  CHECK(out[0]->version == 5);
}

TEST_CASE_METHOD(serving_fixture,
                 "requests are spread over the replicas in rotation and never sent to a standby",
                 "[serving]") {
  m.add(1);
  auto cfg = config(3, 1);
  cfg.policy = balance_policy::round_robin;
  start(cfg);
  std::vector<predict_request> reqs;
  for (int i = 0; i < 12; ++i)
    reqs.push_back(make_request(inputs(1, i)));
  auto out = send_all(reqs);
  std::map<std::string, int> by_replica;
  for (size_t i = 0; i < out.size(); ++i) {
    REQUIRE(out[i]);
    CHECK(out[i]->labels == m.expected(1, *reqs[i].in.values));
    ++by_replica[out[i]->replica];
  }
  CHECK(by_replica ==
        std::map<std::string, int>{{"replica-0", 4}, {"replica-1", 4}, {"replica-2", 4}});
}

TEST_CASE_METHOD(serving_fixture,
                 "a poisonous request is failed after two replicas, its batch's other requests "
                 "are answered, a standby takes over and the crashed replicas come back",
                 "[serving]") {
  m.add(1);
  auto cfg = config(1, 2);
  cfg.poison = 99.0f;
  start(cfg);
  auto poison = inputs(1, 3);
  poison[0] = 99.0f;
  std::vector<predict_request> reqs{make_request(inputs(1, 1)), make_request(poison),
                                    make_request(inputs(2, 2)), make_request(inputs(1, 4))};
  auto out = send_all(reqs);
  REQUIRE_FALSE(out[1]);
  CHECK(is(out[1].error(), serving_errc::replica_failed));
  CHECK_THAT(describe(out[1].error()), Catch::Contains("poisonous"));
  for (size_t i : {0u, 2u, 3u}) {
    REQUIRE(out[i]);
    CHECK(out[i]->labels == m.expected(1, *reqs[i].in.values));
    // Its batch's replica crashed under it; then it was computed alone (and
    // perhaps once more, if it waited behind the poisonous one).
    CHECK(out[i]->attempts >= 2);
    CHECK(out[i]->attempts <= 3);
  }
  auto st = status();
  uint64_t downs = 0;
  for (const auto& r : st.replicas)
    downs += r.downs;
  CHECK(downs == 2);
  CHECK(st.failed == 1);
  CHECK(states() == std::map<std::string, size_t>{{"active", 1}, {"standby", 2}});
  // The replicas serve again.
  out = send_all({make_request(inputs(1, 9))});
  CHECK(out[0]);
}

TEST_CASE_METHOD(serving_fixture,
                 "a replica killed with requests queued: they are answered by another replica",
                 "[serving]") {
  m.add(1);
  auto cfg = config(1, 1);
  start(cfg);
  auto victim = handle(replicas_supervisor(), "replica-0");
  std::vector<caf::response_handle<caf::blocking_actor, caf::message, true>> hs;
  std::vector<std::vector<float>> ins;
  for (int i = 0; i < 5; ++i) {
    ins.push_back(inputs(1, 20 + i));
    hs.push_back(
        self->request(router->get(), caf::infinite, predict_atom::value, make_request(ins.back())));
  }
  // The router forwards them; the replica dies before it computes any.
  while (sched.prioritize(router->get()) && sched.try_run_once())
    ;
  self->send_exit(victim, caf::exit_reason::kill);
  run();
  for (size_t i = 0; i < hs.size(); ++i) {
    bool ok = false;
    hs[i].receive(
        [&](prediction& p) {
          ok = true;
          CHECK(p.replica == "replica-1");
          CHECK(p.labels == m.expected(1, ins[i]));
        },
        [&](caf::error& e) { FAIL(describe(e)); });
    CHECK(ok);
  }
  CHECK(status().replicas[0].downs == 1);
  CHECK(states() == std::map<std::string, size_t>{{"active", 1}, {"standby", 1}});
}

TEST_CASE_METHOD(serving_fixture,
                 "when every replica in rotation is at its limit the router answers overloaded "
                 "at once",
                 "[serving]") {
  m.add(1);
  auto cfg = config(2, 0);
  cfg.max_outstanding = 2;
  start(cfg);
  std::vector<predict_request> reqs;
  for (int i = 0; i < 7; ++i)
    reqs.push_back(make_request(inputs(1, i)));
  auto out = send_all(reqs);
  size_t ok = 0;
  size_t overloaded = 0;
  for (auto& o : out) {
    if (o)
      ++ok;
    else if (is(o.error(), serving_errc::overloaded))
      ++overloaded;
  }
  CHECK(ok == 4);
  CHECK(overloaded == 3);
  CHECK(status().overloaded == 3);
}

TEST_CASE_METHOD(serving_fixture,
                 "a session stays on its replica while it lives and moves when it goes down",
                 "[serving]") {
  m.add(1);
  start(config(3, 0));
  auto first = send_all({make_request(inputs(1, 1), "alice")});
  REQUIRE(first[0]);
  auto home = first[0]->replica;
  for (int i = 0; i < 5; ++i) {
    auto again = send_all({make_request(inputs(1, i), "alice")});
    REQUIRE(again[0]);
    CHECK(again[0]->replica == home);
  }
  self->send_exit(handle(replicas_supervisor(), home), caf::exit_reason::kill);
  run();
  auto moved = send_all({make_request(inputs(1, 1), "alice")});
  REQUIRE(moved[0]);
  auto second = moved[0]->replica;
  // It stays on its new replica, even once the old one is back in rotation.
  for (int i = 0; i < 5; ++i) {
    auto again = send_all({make_request(inputs(1, i), "alice")});
    REQUIRE(again[0]);
    CHECK(again[0]->replica == second);
  }
}

TEST_CASE_METHOD(serving_fixture,
                 "a rolling update swaps the replicas through the standbys with no failed "
                 "request and a session's versions never go backwards",
                 "[serving]") {
  m.add(1);
  auto cfg = config(2, 1);
  cfg.watch_interval = std::chrono::milliseconds(100);
  start(cfg);
  m.add(2);
  // Requests keep coming while the router notices version 2 and rolls it in.
  uint64_t last = 0;
  std::map<uint64_t, int> versions;
  for (int round = 0; round < 20; ++round) {
    std::vector<predict_request> reqs;
    for (int i = 0; i < 4; ++i)
      reqs.push_back(make_request(inputs(1, round * 4 + i), "s"));
    reqs.push_back(make_request(inputs(1, round), ""));
    auto out = send_all(reqs);
    for (size_t i = 0; i < out.size(); ++i) {
      REQUIRE(out[i]);
      CHECK(out[i]->labels == m.expected(out[i]->version, *reqs[i].in.values));
      ++versions[out[i]->version];
      if (i < 4) {
        CHECK(out[i]->version >= last);
        last = out[i]->version;
      }
    }
    sched.advance_time(std::chrono::milliseconds(50));
    run();
  }
  CHECK(versions[1] > 0);
  CHECK(versions[2] > 0);
  auto st = status();
  CHECK(st.target == 2);
  CHECK(st.failed == 0);
  for (const auto& r : st.replicas)
    CHECK(r.version == 2);
  CHECK(states() == std::map<std::string, size_t>{{"active", 2}, {"standby", 1}});
}

TEST_CASE_METHOD(serving_fixture,
                 "without standbys a rolling update takes one replica out at a time", "[serving]") {
  m.add(1);
  start(config(2, 0));
  m.add(2);
  REQUIRE(ask<uint64_t>(router->get(), update_atom::value, uint64_t{2}));
  for (const auto& r : status().replicas)
    CHECK(r.version == 2);
  CHECK(states() == std::map<std::string, size_t>{{"active", 2}});
  auto older = ask<uint64_t>(router->get(), update_atom::value, uint64_t{1});
  REQUIRE_FALSE(older);
  CHECK(is(older.error(), serving_errc::no_model));
}

TEST_CASE("a serve config is checked", "[serving]") {
  serve_config cfg;
  CHECK_FALSE(validate(cfg));
  cfg.model = "a/b";
  CHECK_THAT(describe(validate(cfg)), Catch::Contains("model name"));
  cfg.model = "m";
  cfg.replicas = 0;
  CHECK_THAT(describe(validate(cfg)), Catch::Contains("replicas"));
  CHECK(parse_balance_policy("p2c") == balance_policy::power_of_two);
  CHECK_FALSE(parse_balance_policy("random"));
}

TEST_CASE_METHOD(serving_fixture,
                 "a request that hangs its replica times out, is retried alone, and fails when "
                 "it hangs that one too: both hung replicas are killed and come back",
                 "[serving]") {
  m.add(1);
  auto cfg = config(2, 1);
  cfg.policy = balance_policy::round_robin;
  cfg.stall = 77.0f;
  cfg.request_timeout = std::chrono::milliseconds(100);
  start(cfg);
  auto stall = inputs(1, 5);
  stall[0] = 77.0f;
  std::vector<predict_request> reqs{make_request(stall), make_request(inputs(1, 1)),
                                    make_request(inputs(1, 2)), make_request(inputs(1, 3))};
  std::vector<caf::response_handle<caf::blocking_actor, caf::message, true>> hs;
  for (const auto& r : reqs)
    hs.push_back(self->request(router->get(), caf::infinite, predict_atom::value, r));
  run();
  // Timeouts, retries alone, probes: each round of 100 ms moves it on.
  for (int i = 0; i < 6; ++i)
    advance(std::chrono::milliseconds(100));
  std::vector<caf::expected<prediction>> out(hs.size(), caf::sec::request_timeout);
  for (size_t i = 0; i < hs.size(); ++i)
    hs[i].receive([&](prediction& p) { out[i] = std::move(p); },
                  [&](caf::error& e) { out[i] = std::move(e); });
  REQUIRE_FALSE(out[0]);
  CHECK(is(out[0].error(), serving_errc::replica_failed));
  CHECK_THAT(describe(out[0].error()), Catch::Contains("timed out computed alone"));
  for (size_t i = 1; i < out.size(); ++i) {
    INFO(i << ": " << (out[i] ? std::string{} : describe(out[i].error())));
    REQUIRE(out[i]);
    CHECK(out[i]->labels == m.expected(1, *reqs[i].in.values));
  }
  uint64_t downs = 0;
  for (const auto& r : status().replicas)
    downs += r.downs;
  CHECK(downs == 2);
  CHECK(states() == std::map<std::string, size_t>{{"active", 2}, {"standby", 1}});
}

TEST_CASE_METHOD(serving_fixture,
                 "with hedging a request stuck on a hung replica is answered by its hedge long "
                 "before its timeout",
                 "[serving]") {
  m.add(1);
  auto cfg = config(2, 0);
  cfg.policy = balance_policy::round_robin; // after 40 requests the next goes to replica-0
  cfg.hedge = true;
  cfg.stall = 77.0f;
  start(cfg);
  // Latencies to take the p95 from.
  std::vector<predict_request> warm;
  for (int i = 0; i < 40; ++i)
    warm.push_back(make_request(inputs(1, i)));
  for (auto& o : send_all(warm))
    REQUIRE(o);
  // replica-0 hangs, which the router does not know yet.
  auto stall = inputs(1, 5);
  stall[0] = 77.0f;
  instances in;
  in.count = 1;
  in.values = std::make_shared<std::vector<float>>(stall);
  self->send(handle(replicas_supervisor(), "replica-0"), predict_atom::value, in, false);
  run();
  auto req = make_request(inputs(1, 9));
  auto h = self->request(router->get(), caf::infinite, predict_atom::value, req);
  run();
  advance(std::chrono::milliseconds(2)); // past the p95 (at least 1 ms), far below the 2 s timeout
  bool answered = false;
  h.receive(
      [&](prediction& p) {
        answered = true;
        CHECK(p.replica == "replica-1");
        CHECK(p.labels == m.expected(1, *req.in.values));
      },
      [&](caf::error& e) { FAIL(describe(e)); });
  CHECK(answered);
  auto st = status();
  CHECK(st.hedged == 1);
  CHECK(st.hedges_won == 1);
}
