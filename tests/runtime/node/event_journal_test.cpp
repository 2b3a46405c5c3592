// A node's event log (bounded, rotated), `understudy events`' incident timeline,
// and node names from a scheduler's ordinal.

#include "understudy/node/event_journal.hpp"

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/cluster_test_util.hpp"
#include "support/temp_dir.hpp"
#include "understudy/actors/training_component.hpp"

using namespace understudy;

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in{path};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

} // namespace

TEST_CASE("a node's event log is bounded: past its size it rotates and keeps the newest",
          "[node][events]") {
  test::temp_dir dir{"journal"};
  auto j = event_journal::open(dir.path, "n1", 2000);
  REQUIRE(j);
  for (int i = 0; i < 300; ++i)
    (*j)->note("note number " + std::to_string(i));
  supervision_event ev;
  ev.kind = event_kind::child_exited;
  ev.supervisor = "/root/job/workers";
  ev.child = "worker-1";
  ev.incarnation = 2;
  ev.action = "restart";
  ev.reason = "kill";
  (*j)->sink()->on_event(ev);
  auto current = read_all(dir.path + "/events.jsonl");
  auto older = read_all(dir.path + "/events.jsonl.1");
  CHECK(current.size() <= 2000);
  CHECK(older.size() <= 2000);
  CHECK(older.size() > 1000);
  CHECK_THAT(current, Catch::Contains("\"child\":\"/root/job/workers/worker-1\""));
  CHECK_THAT(older + current, Catch::Contains("note number 299"));
  CHECK_THAT(older + current, !Catch::Contains("note number 0\""));
  // Every line is one JSON object with its time, node and kind.
  std::istringstream lines{current};
  std::string line;
  size_t n = 0;
  while (std::getline(lines, line)) {
    auto obj = nlohmann::json::parse(line);
    CHECK(obj["node"] == "n1");
    CHECK(obj["t"].is_number());
    CHECK(obj.contains("kind"));
    ++n;
  }
  CHECK(n > 5);
}

TEST_CASE("understudy events merges the nodes' logs into incidents with the time of each stage",
          "[node][events]") {
  test::temp_dir dir{"events"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << testing::cluster_config(dir.path + "/state", 100);
  // Two nodes' logs: n2 is lost; n1 sees it, n3 holds the copies.
  auto write = [&](const std::string& node, const std::vector<std::string>& lines) {
    std::filesystem::create_directories(dir.path + "/state/" + node);
    std::ofstream out{dir.path + "/state/" + node + "/events.jsonl"};
    for (const auto& l : lines)
      out << l << "\n";
  };
  write(
      "n1",
      {R"({"t":1000.0,"node":"n1","kind":"child_started","child":"/root/job/trainer","incarnation":1})",
       R"({"t":2000.0,"node":"n1","kind":"child_exited","child":"/root/job/shards/shard-1","incarnation":1,"action":"restart","reason":"remote_link_unreachable"})",
       R"({"t":2012.5,"node":"n1","kind":"peer","peer":"n2","state":"dead","reason":"declared dead by the coordinator"})",
       R"({"t":2020.0,"node":"n1","kind":"note","text":"moved /root/job/shards/shard-1 from n2 (lost) to s1, 3 checkpoint versions copied from n3, started in 4.0 ms"})",
       R"({"t":2031.0,"node":"n1","kind":"job_resumed","child":"/root/job/trainer","incarnation":1,"reason":"resumed from committed step 95; 3 steps lost","duration_ms":40.0})",
       "this line is not an event"});
  write(
      "s1",
      {R"({"t":2025.0,"node":"s1","kind":"state_restored","child":"/root/job/shards/shard-1","incarnation":2,"action":"restored step 95","step":95})"});
  events_options opts;
  opts.file = file;
  opts.components = {actors::training_component()};
  std::ostringstream out, err;
  REQUIRE(run_events(opts, out, err) == exit_code::ok);
  auto text = out.str();
  INFO(text);
  CHECK_THAT(err.str(), Catch::Contains("skipped 1 lines that are not events"));
  CHECK_THAT(text, Catch::Contains("incident 1 at "));
  CHECK_THAT(text, Catch::Contains("31.0 ms until resumed, 3 steps lost"));
  // The stages in order, each with its time from the start.
  auto at = [&](const std::string& s) { return text.find(s); };
  CHECK(at("+      0.0 ms  detected [n1] child_exited /root/job/shards/shard-1#1") !=
        std::string::npos);
  CHECK(at("+     12.5 ms  fenced   [n1] peer n2 is dead") != std::string::npos);
  CHECK(at("+     20.0 ms  moved    [n1] note moved /root/job/shards/shard-1") !=
        std::string::npos);
  CHECK(at("+     25.0 ms  restored [s1] state_restored") != std::string::npos);
  CHECK(at("+     31.0 ms  resumed  [n1] job_resumed") != std::string::npos);
  CHECK(at("fenced   [n1]") < at("moved    [n1]"));
  CHECK_THAT(text, Catch::Contains("6 events from 4 nodes, 1 incident"));
  // --json: one object per event and one per incident.
  opts.json = true;
  std::ostringstream js;
  REQUIRE(run_events(opts, js, err) == exit_code::ok);
  std::istringstream lines{js.str()};
  std::string line;
  size_t events = 0;
  nlohmann::json incident;
  while (std::getline(lines, line)) {
    auto obj = nlohmann::json::parse(line);
    if (obj["type"] == "event")
      ++events;
    else if (obj["type"] == "incident")
      incident = obj;
  }
  CHECK(events == 6);
  REQUIRE(incident.is_object());
  CHECK(incident["steps_lost"] == 3);
  CHECK(incident["duration_ms"] == Approx(31.0));
  REQUIRE(incident["stages"].size() == 5);
  CHECK(incident["stages"][1]["stage"] == "fenced");
  CHECK(incident["stages"][3]["node"] == "s1");
  // --follow prints what the nodes log later.
  {
    opts.json = false;
    opts.follow = true;
    opts.poll = std::chrono::milliseconds(20);
    std::ostringstream followed, ferr;
    std::mutex mtx;
    std::condition_variable cv;
    bool caught_up = false;
    size_t looks = 0;
    opts.stop = [&] {
      {
        std::lock_guard<std::mutex> guard{mtx};
        caught_up = true;
      }
      cv.notify_all();
      // Until the later line is printed (or a bound, so a failure cannot hang).
      return followed.str().find("a later note") != std::string::npos || ++looks > 2000;
    };
    std::thread follower{[&] { run_events(opts, followed, ferr); }};
    {
      std::unique_lock<std::mutex> guard{mtx};
      cv.wait(guard, [&] { return caught_up; });
    }
    std::ofstream{dir.path + "/state/n1/events.jsonl", std::ios::app}
        << R"({"t":3000.0,"node":"n1","kind":"note","text":"a later note"})"
        << "\n";
    follower.join();
    CHECK_THAT(followed.str(), Catch::Contains("[n1] note a later note"));
    CHECK(looks <= 2000);
    opts.follow = false;
    opts.stop = {};
  }
  // A file without logs: the error says so.
  test::temp_dir empty{"events-empty"};
  std::ofstream{empty.path + "/cluster.toml"} << testing::cluster_config(empty.path + "/s", 100);
  opts.file = empty.path + "/cluster.toml";
  opts.json = false;
  std::ostringstream none, why;
  CHECK(run_events(opts, none, why) == exit_code::failure);
  CHECK_THAT(why.str(), Catch::Contains("has an event log"));
}

TEST_CASE("a scheduler's ordinal names the node: a StatefulSet pod's hostname or a task's rank",
          "[node]") {
  test::temp_dir dir{"name-from"};
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << testing::cluster_config(dir.path + "/state", 100);
  auto nc = load_config(file, {actors::training_component()});
  REQUIRE(nc);
  std::map<std::string, std::string> env{{"SLURM_PROCID", "3"}, {"RANK", "x1"}};
  auto getenv = [&](const char* var) -> const char* {
    auto i = env.find(var);
    return i == env.end() ? nullptr : i->second.c_str();
  };
  auto name = [&](const std::string& source, const std::string& host) {
    return node_name_from(*nc, source, host, getenv);
  };
  // The file's nodes in order: n1, n2, n3, s1.
  CHECK(name("hostname", "understudy-0").value() == "n1");
  CHECK(name("hostname", "understudy-2.understudy.default.svc.cluster.local").value() == "n3");
  CHECK(name("env:SLURM_PROCID", "whatever").value() == "s1");
  auto fails = [&](const std::string& source, const std::string& host, const std::string& why) {
    auto r = name(source, host);
    INFO(source << " " << host);
    REQUIRE_FALSE(r);
    CHECK_THAT(describe(r.error()), Catch::Contains(why));
  };
  fails("hostname", "understudy-4", "ordinal 4 names no node");
  fails("hostname", "understudy-4", "has 4 nodes, ordinals 0 to 3");
  fails("hostname", "understudy", "does not end in -ORDINAL");
  fails("hostname", "web2", "does not end in -ORDINAL");
  fails("env:RANK", "h", "RANK='x1' is not an ordinal");
  fails("env:MISSING", "h", "MISSING is not set");
  fails("rank", "h", "expected hostname or env:VAR");
}

TEST_CASE("the Kubernetes recipe's node config loads and each pod's hostname names its node",
          "[node]") {
  // The ConfigMap's cluster.toml, as the pods read it.
  std::ifstream in{UNDERSTUDY_SOURCE_DIR "/examples/kubernetes/understudy.yaml"};
  REQUIRE(in);
  std::string line, toml;
  bool inside = false;
  while (std::getline(in, line)) {
    if (line.find("cluster.toml: |") != std::string::npos) {
      inside = true;
      continue;
    }
    if (inside && line.rfind("---", 0) == 0)
      break;
    if (inside)
      toml += (line.size() >= 4 ? line.substr(4) : std::string{}) + "\n";
  }
  REQUIRE_FALSE(toml.empty());
  test::temp_dir dir{"k8s"};
  std::ofstream{dir.path + "/cluster.toml"} << toml;
  auto nc = load_config(dir.path + "/cluster.toml", {actors::training_component()});
  INFO(toml);
  REQUIRE(nc);
  const char* names[] = {"n1", "n2", "n3", "s1"};
  for (int i = 0; i < 4; ++i) {
    auto host = "understudy-" + std::to_string(i) + ".understudy.default.svc.cluster.local";
    auto name = node_name_from(*nc, "hostname", host, [](const char*) { return nullptr; });
    REQUIRE(name);
    CHECK(*name == names[i]);
    CHECK(nc->find_node(*name)->host == host);
  }
}
