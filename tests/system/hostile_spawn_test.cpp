// A node running a training job's factories against a peer that asks for an actor the job does
// not have: a spawn request with an out-of-range index is refused by name and logged, and the
// node goes on.

#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/make_message.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>
#include <catch2/catch.hpp>

#include "support/etcd_fixture.hpp"
#include "support/free_port.hpp"
#include "support/temp_dir.hpp"
#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/cluster/memory_coordinator.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/state/runtime.hpp"

using namespace understudy;
using namespace std::chrono_literals;
using test::free_port;

TEST_CASE("a spawn request with an out-of-range index is refused and the node goes on",
          "[cluster][hostile]") {
  test::temp_dir dir{"hostile-spawn"};
  std::string text = "[cluster]\nname = \"h\"\nstate_root = \"" + dir.path +
                     "/state\"\n[cluster.security]\ndir = \"" + dir.path + "/certs\"\n";
  // n2 never runs: its port is 1, where nothing listens, so n1's attempts to reach it
  // are refused at once (over TLS, CAF's openssl manager connects synchronously, and a
  // port that some other process took meanwhile could hold it in a handshake).
  for (const char* n : {"n1", "n2"})
    text += std::string{"[[node]]\nname = \""} + n + "\"\nhost = \"127.0.0.1\"\nport = " +
            std::to_string(std::string{n} == "n1" ? free_port() : 1) + "\n";
  text += std::string{"[job]\nlayers = [64, 8, 10]\ndata = \""} + UNDERSTUDY_DIGITS_PATH +
          "\"\ndata_scale = 0.0625\nshards = 2\nloaders = 1\nworkers = 2\nsteps = 10\n";
  auto path = dir.path + "/cluster.toml";
  std::ofstream{path} << text;
  auto nc = load_node_config(path, actors::job_config_options());
  INFO((nc ? std::string{} : describe(nc.error())));
  REQUIRE(nc);
  REQUIRE(create_cluster_certificates(*nc, false));
  runtime_config rc;
  rc.log_events = false;
  caf::expected<std::vector<std::string>> prepared{std::vector<std::string>{}};
  rc.configure = [&](caf::actor_system_config& cfg) {
    prepared = cluster_node::configure(cfg, *nc, "n1");
  };
  runtime rt{rc};
  REQUIRE(prepared);
  // n2 joined the coordination service (its session outlives the test): the rogue below holds
  // its certificate, and says hello at the epoch the service gave it.
  auto service = std::make_shared<memory_coordination_service>(std::chrono::hours(1));
  auto n2_session = memory_coordinator::make(service);
  auto n2_epoch = etcd_test::join(*n2_session, "n2");
  REQUIRE(n2_epoch);
  auto node = cluster_node::start(rt, *nc, "n1", nullptr, {}, memory_coordinator::make(service));
  REQUIRE(node);
  std::mutex mtx;
  std::vector<std::string> notes;
  (*node)->on_note([&](const std::string& line) {
    std::lock_guard<std::mutex> guard{mtx};
    notes.push_back(line);
  });
  auto ct = actors::cluster_training::create(**node, *nc);
  INFO((ct ? std::string{} : describe(ct.error())));
  REQUIRE(ct);
  // A process that holds n2's certificate says it is n2 and then asks for actors.
  caf::actor_system_config conf;
  conf.load<caf::io::middleman>();
  const auto* n2 = nc->find_node("n2");
  conf.openssl_certificate = n2->cert;
  conf.openssl_key = n2->key;
  conf.openssl_cafile = nc->cluster.security->ca;
  conf.load<caf::openssl::manager>();
  caf::actor_system rogue{conf};
  auto agent = connect_to_peer(rogue, "127.0.0.1", (*node)->self().port, 10s);
  REQUIRE(agent);
  caf::scoped_actor self{rogue};
  bool admitted = false;
  self->request(*agent, 10s, caf::atom("us_nhello"), std::string{"n2"}, *n2_epoch, std::string{})
      .receive([&](const std::string&, uint64_t, const std::string&) { admitted = true; },
               [&](caf::error&) {});
  REQUIRE(admitted);
  auto spawn = [&](uint64_t index) {
    caf::expected<caf::actor> out{caf::actor{}};
    self->request(*agent, 10s, caf::atom("us_nspawn"), std::string{"training.shard"},
                  std::string{"shard-x"}, std::string{"/job/shards/shard-x"}, uint64_t{1},
                  caf::actor_cast<caf::actor>(self), uint64_t{0}, caf::make_message(index))
        .receive([&](const caf::actor& a) { out = a; },
                 [&](caf::error& err) { out = std::move(err); });
    return out;
  };
  auto res = spawn(99);
  REQUIRE_FALSE(res);
  CHECK(is(res.error(), cluster_errc::malformed_message));
  CHECK_THAT(describe(res.error()),
             Catch::Contains("training.shard 99") && Catch::Contains("the job has 2"));
  {
    std::lock_guard<std::mutex> guard{mtx};
    // One refusal, logged (the node's other notes, such as its join, are not refusals).
    std::vector<std::string> refusals;
    for (const auto& n : notes)
      if (n.find("refuses") != std::string::npos)
        refusals.push_back(n);
    REQUIRE(refusals.size() == 1);
    CHECK_THAT(refusals.front(), Catch::Contains("refuses a spawn request from n2"));
  }
  // The node goes on: it answers its status.
  std::string status;
  self->request(*agent, 10s, caf::atom("us_nstat"))
      .receive([&](const std::string& s) { status = s; }, [&](caf::error&) {});
  CHECK_THAT(status, Catch::Contains("n1"));
}
