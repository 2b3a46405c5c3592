// `understudy snapshot` as a user runs it on digits_mlp's state directory:
// export committed steps, list and verify them, import one into a fresh
// directory and resume to the digest of a run never interrupted; a damaged
// snapshot or another job's is refused and nothing is written.

#include "understudy/state/snapshot.hpp"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/cli_test_util.hpp"
#include "support/cluster_test_util.hpp"
#include "support/daemon_test_util.hpp"
#include "support/metrics_test_util.hpp"
#include "support/netns_lab.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/state/state_store.hpp"

using understudy::testing::run_program;

namespace {

/// Runs digits_mlp to `steps` in `state` (more args after); its output.
std::string train(const std::string& state, uint64_t steps, const std::string& more = "") {
  int status = -1;
  auto out = run_program(UNDERSTUDY_DIGITS_MLP_PATH,
                         "--steps " + std::to_string(steps) + " --checkpoint-every 10 --data " +
                             UNDERSTUDY_DIGITS_PATH + " --state-dir " + state + " " + more,
                         status);
  INFO(out);
  REQUIRE(status == 0);
  return out;
}

std::string digest_of(const std::string& out) {
  std::smatch m;
  REQUIRE(std::regex_search(out, m, std::regex{R"(final: steps=\d+ .*params_digest=([0-9a-f]+))"}));
  return m[1].str();
}

} // namespace

TEST_CASE(
    "a snapshot exported at a step and imported into a fresh directory resumes to the "
    "digest of a run never interrupted",
    "[snapshot][system]") {
  cli_test::scratch_dir dir;
  auto whole = digest_of(train(dir.path + "/whole", 300));
  // A job trained in three legs, a snapshot after each.
  const auto state = dir.path + "/state";
  const auto snaps = dir.path + "/snaps";
  for (uint64_t s : {100, 200, 300}) {
    train(state, s);
    auto ex = cli_test::run_cli({"snapshot", "export", state, snaps}, dir.path);
    REQUIRE(ex.status == 0);
    CHECK_THAT(ex.out, Catch::Contains("snapshot step-" + std::to_string(s) + " of /digits_mlp"));
  }
  auto ls = cli_test::run_cli({"snapshot", "list", snaps, "--json"}, dir.path);
  REQUIRE(ls.status == 0);
  std::vector<uint64_t> steps;
  std::istringstream lines{ls.out};
  for (std::string line; std::getline(lines, line);) {
    auto doc = nlohmann::json::parse(line);
    steps.push_back(doc["step"].get<uint64_t>());
    CHECK(doc["records"] == 4); // the trainer, 2 shards, 1 loader
  }
  CHECK(steps == std::vector<uint64_t>{100, 200, 300});
  CHECK(cli_test::run_cli({"snapshot", "verify", snaps}, dir.path).status == 0);
  // Step 100 into a fresh directory; the job resumes there and ends as the
  // run never interrupted.
  const auto fresh = dir.path + "/fresh";
  auto im = cli_test::run_cli({"snapshot", "import", snaps, fresh, "--step", "100"}, dir.path);
  REQUIRE(im.status == 0);
  CHECK_THAT(im.out, Catch::Contains("imported step-100 of /digits_mlp (4 records, every "
                                     "checksum verified)"));
  auto resumed = train(fresh, 300);
  CHECK_THAT(resumed, Catch::Contains("resuming from committed step 100"));
  CHECK(digest_of(resumed) == whole);
}

TEST_CASE(
    "a damaged snapshot is named by verify and refused by import, and another job's is "
    "refused: nothing is written",
    "[snapshot][system]") {
  cli_test::scratch_dir dir;
  const auto state = dir.path + "/state";
  const auto snaps = dir.path + "/snaps";
  train(state, 100);
  REQUIRE(cli_test::run_cli({"snapshot", "export", state, snaps}, dir.path).status == 0);
  SECTION("a flipped byte") {
    // The first tensor chunk of the first shard, as the manifest names it.
    std::ifstream in{snaps + "/manifests/step-100.json"};
    auto top = nlohmann::json::parse(in);
    std::string id;
    for (auto& r : top["manifest"]["records"])
      if (r["path"] == "/digits_mlp/shards/shard-0")
        id = r["tensors"][0]["chunks"][0]["object"].get<std::string>();
    REQUIRE(id.size() == 64);
    auto file = snaps + "/objects/" + id.substr(0, 2) + "/" + id;
    {
      std::fstream f{file, std::ios::in | std::ios::out | std::ios::binary};
      f.seekp(17);
      f.put('\x7f');
    }
    auto ve = cli_test::run_cli({"snapshot", "verify", snaps}, dir.path);
    CHECK(ve.status == 1);
    CHECK_THAT(ve.err, Catch::Contains("/digits_mlp/shards/shard-0@100") && Catch::Contains(id) &&
                           Catch::Contains("does not match its checksum"));
    auto im = cli_test::run_cli({"snapshot", "import", snaps, dir.path + "/fresh"}, dir.path);
    CHECK(im.status == 1);
    CHECK_THAT(im.err, Catch::Contains("nothing imported"));
    CHECK_FALSE(std::filesystem::exists(dir.path + "/fresh"));
  }
  SECTION("another job") {
    // The same program with another hidden layer: another fingerprint.
    const auto other = dir.path + "/other";
    train(other, 50, "--hidden 32");
    // Its versions as inspect lists them, ages aside.
    auto versions = [&] {
      auto out = cli_test::run_cli({"inspect", other, "--json"}, dir.path).out;
      return std::regex_replace(out, std::regex{R"("age_s":[0-9.e+-]+)"}, "");
    };
    auto before = versions();
    auto im = cli_test::run_cli({"snapshot", "import", snaps, other}, dir.path);
    CHECK(im.status == 2);
    CHECK_THAT(im.err, Catch::Contains("holds another job at /digits_mlp") &&
                           Catch::Contains("nothing imported"));
    CHECK(versions() == before);
    // Nor does its step join the first job's snapshots.
    auto ex = cli_test::run_cli({"snapshot", "export", other, snaps}, dir.path);
    CHECK(ex.status == 2);
    CHECK_THAT(ex.err, Catch::Contains("holds snapshots of another job"));
    auto ls = cli_test::run_cli({"snapshot", "list", snaps, "--json"}, dir.path);
    CHECK(std::count(ls.out.begin(), ls.out.end(), '\n') == 1);
  }
}

TEST_CASE(
    "a training cluster ships snapshots of its committed steps while it trains and a node "
    "dies: a shipped step is bit-exact the job's",
    "[snapshot][system][cluster]") {
  cli_test::scratch_dir dir;
  const auto snaps = dir.path + "/dr";
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << understudy::testing::cluster_config(dir.path + "/state", 600)
                      << "[snapshots]\ndir = \"" << snaps
                      << "\"\nevery = \"100ms\"\nnode = \"n2\"\nkeep_last = 3\n";
  auto out = understudy::testing::launch_expecting(file, dir.path, "--kill n3@300", 600, "n1");
  CHECK_THAT(out, Catch::Contains("node n2: ships snapshots of /root/job to " + snaps));
  CHECK_THAT(out, Catch::Contains("shipped to " + snaps));
  auto ls = cli_test::run_cli({"snapshot", "list", snaps, "--json"}, dir.path);
  REQUIRE(ls.status == 0);
  auto shipped = std::count(ls.out.begin(), ls.out.end(), '\n');
  CHECK(shipped >= 1);
  CHECK(shipped <= 3); // pruned to the last 3
  CHECK(cli_test::run_cli({"snapshot", "verify", snaps}, dir.path).status == 0);
  // The newest, imported, holds the job's parameters at its step bit for bit.
  const auto fresh = dir.path + "/restored";
  REQUIRE(cli_test::run_cli({"snapshot", "import", snaps, fresh}, dir.path).status == 0);
  understudy::state_store_config sc;
  sc.directory = fresh;
  sc.read_only = true;
  auto store = understudy::state_store::open(sc);
  REQUIRE(store);
  understudy::actors::mlp net{{64, 32, 10}};
  auto params = understudy::actors::read_committed_parameters(**store, "/root/job", net);
  REQUIRE(params);
  understudy::node_config_options opts = understudy::actors::job_config_options();
  auto nc = understudy::load_node_config(file, opts);
  REQUIRE(nc);
  CHECK(understudy::actors::params_digest(params->params.data(), params->params.size()) ==
        understudy::testing::fault_free_digest(
            *nc, dir.path + "/single-" + std::to_string(params->step), params->step));
  // The oldest kept snapshot, imported into a fresh cluster of the same job,
  // resumes there and ends with the digest of a run never interrupted.
  auto all = understudy::list_snapshots(snaps);
  REQUIRE(all);
  REQUIRE_FALSE(all->empty());
  const auto oldest = all->front().step;
  auto file2 = dir.path + "/cluster2.toml";
  std::ofstream{file2} << understudy::testing::cluster_config(dir.path + "/state2", 600);
  auto imported = cli_test::run_cli(
      {"snapshot", "import", snaps, "--cluster", file2, "--step", std::to_string(oldest)},
      dir.path);
  INFO(imported.err);
  REQUIRE(imported.status == 0);
  CHECK_THAT(imported.out, Catch::Contains("into every active node of " + file2));
  auto resumed = understudy::testing::launch_expecting(file2, dir.path, "", 600, "n1");
  CHECK_THAT(resumed,
             Catch::Contains("job: resuming from committed step " + std::to_string(oldest)));
  // Into a cluster of the same job with other counts of shards and loaders
  // (2 and 2 instead of 3 and 3): every node reshards the step alike, and the
  // job resumes there with the same digest (the counts are no part of the maths).
  auto file4 = dir.path + "/cluster4.toml";
  auto fewer = understudy::testing::cluster_config(dir.path + "/state4", 600);
  understudy::testing::replace_once(fewer, "shards = 3\nloaders = 3", "shards = 2\nloaders = 2");
  std::ofstream{file4} << fewer;
  auto resharded = cli_test::run_cli(
      {"snapshot", "import", snaps, "--cluster", file4, "--step", std::to_string(oldest)},
      dir.path);
  INFO(resharded.err);
  REQUIRE(resharded.status == 0);
  CHECK_THAT(resharded.out,
             Catch::Contains("resharded step " + std::to_string(oldest) + " on every node"));
  auto resumed4 = understudy::testing::launch_expecting(file4, dir.path, "", 600, "n1");
  CHECK_THAT(resumed4,
             Catch::Contains("job: resuming from committed step " + std::to_string(oldest)));
  // Another job's cluster (another seed) is refused, and nothing is written.
  auto file3 = dir.path + "/cluster3.toml";
  auto other = understudy::testing::cluster_config(dir.path + "/state3", 600);
  understudy::testing::replace_once(other, "seed = 5", "seed = 6");
  std::ofstream{file3} << other;
  auto refused = cli_test::run_cli({"snapshot", "import", snaps, "--cluster", file3}, dir.path);
  CHECK(refused.status == 2);
  CHECK_THAT(refused.err, Catch::Contains("holds snapshots of another job"));
  CHECK_FALSE(std::filesystem::exists(dir.path + "/state3"));
}

TEST_CASE(
    "a restore drill replays the shipped steps bit for bit, and catches a damaged or a "
    "wrong shipped step",
    "[snapshot][system][cluster]") {
  cli_test::scratch_dir dir;
  const auto snaps = dir.path + "/dr";
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << understudy::testing::cluster_config(dir.path + "/state", 400)
                      << "[snapshots]\ndir = \"" << snaps << "\"\nevery = \"100ms\"\n";
  understudy::testing::launch_expecting(file, dir.path, "", 400, "n1");
  auto ls = cli_test::run_cli({"snapshot", "list", snaps, "--json"}, dir.path);
  REQUIRE(ls.status == 0);
  std::vector<nlohmann::json> shipped;
  std::istringstream lines{ls.out};
  for (std::string line; std::getline(lines, line);)
    shipped.push_back(nlohmann::json::parse(line));
  REQUIRE(shipped.size() >= 2);
  auto drill = cli_test::run_cli({"drill", file}, dir.path);
  CHECK(drill.status == 0);
  CHECK_THAT(drill.out, Catch::Contains("bit-exact, passed"));
  // Again: it reuses its own scratch directory, and refuses one that holds
  // anything else, leaving it as it was.
  CHECK(cli_test::run_cli({"drill", file}, dir.path).status == 0);
  const auto other = dir.path + "/precious";
  std::filesystem::create_directories(other);
  std::ofstream{other + "/keep.txt"} << "mine\n";
  auto refused = cli_test::run_cli({"drill", file, "--scratch", other}, dir.path);
  CHECK(refused.status == 2);
  CHECK_THAT(refused.err, Catch::Contains("holds keep.txt, which a drill did not write"));
  CHECK(cli_test::slurp(other + "/keep.txt") == "mine\n");
  // The newest step's first shard chunk, and the one before it.
  auto manifest_file = [&](const nlohmann::json& s) {
    return snaps + "/manifests/" + s["name"].get<std::string>() + ".json";
  };
  auto shard_chunk = [&](const nlohmann::json& top) -> std::string {
    for (auto& r : top["manifest"]["records"])
      if (r["path"] == "/root/job/shards/shard-0")
        return r["tensors"][0]["chunks"][0]["object"].get<std::string>();
    return "";
  };
  auto newest_file = manifest_file(shipped.back());
  auto newest = nlohmann::json::parse(cli_test::slurp(newest_file));
  auto before = nlohmann::json::parse(cli_test::slurp(manifest_file(shipped[shipped.size() - 2])));
  auto id = shard_chunk(newest);
  auto older_id = shard_chunk(before);
  REQUIRE(id.size() == 64);
  REQUIRE(older_id.size() == 64);
  REQUIRE(id != older_id);
  SECTION("a flipped byte in the newest step: named, the drill fails") {
    {
      std::fstream f{snaps + "/objects/" + id.substr(0, 2) + "/" + id,
                     std::ios::in | std::ios::out | std::ios::binary};
      f.seekp(9);
      f.put('\x55');
    }
    auto failed = cli_test::run_cli({"drill", file}, dir.path);
    CHECK(failed.status == 1);
    CHECK_THAT(failed.err, Catch::Contains(id) && Catch::Contains("does not match its checksum"));
  }
  SECTION("a wrong step with valid checksums: the replay differs, the drill fails") {
    // The newest manifest made to name the older step's shard chunk (a valid
    // object of the same size), its own checksum made right again.
    for (auto& r : newest["manifest"]["records"])
      if (r["path"] == "/root/job/shards/shard-0")
        r["tensors"][0]["chunks"][0]["object"] = older_id;
    auto body = dir.path + "/body";
    std::ofstream{body} << newest["manifest"].dump();
    int status = -1;
    auto sum = run_program("/usr/bin/sha256sum", body, status);
    REQUIRE(status == 0);
    newest["sha256"] = sum.substr(0, 64);
    std::ofstream{newest_file} << newest.dump(1);
    CHECK(cli_test::run_cli({"snapshot", "verify", snaps}, dir.path).status == 0);
    auto failed = cli_test::run_cli({"drill", file}, dir.path);
    CHECK(failed.status == 1);
    CHECK_THAT(failed.err, Catch::Contains("DIFFERENT, failed"));
    // A standby site drilling on a schedule reports it as a metric (which
    // the UnderstudyDrillFailed alert reads) and a line.
    auto standby_file = dir.path + "/standby.toml";
    auto text = understudy::testing::cluster_config(dir.path + "/standby", 400);
    understudy::testing::replace_once(text, "name = \"test\"", "name = \"site-b\"");
    std::ofstream{standby_file} << text << "[snapshots]\ndir = \"" << snaps
                                << "\"\nstandby = true\ndrill_every = \"100ms\"\n";
    const auto log = dir.path + "/standby.log";
    auto pid = daemon_test::spawn(
        {UNDERSTUDY_CLI_PATH, "standby", standby_file, "--metrics", "127.0.0.1:0", "--no-launch"},
        dir.path, log, true);
    std::smatch m;
    double drill_failed = 0, failures = 0;
    for (int i = 0; i < 600 && drill_failed != 1; ++i) {
      auto out = cli_test::slurp(log);
      if (std::regex_search(out, m, std::regex{R"(metrics at http://127.0.0.1:(\d+)/metrics)"}) &&
          out.find("DIFFERENT, failed") != std::string::npos) {
        auto xs = metrics_test::parse_exposition(
            metrics_test::fetch_metrics(static_cast<uint16_t>(std::stoi(m[1].str()))));
        drill_failed = metrics_test::value_of(xs, "understudy_dr_last_drill_failed");
        failures = metrics_test::value_of(xs, "understudy_dr_drills_failed_total");
      }
      if (drill_failed != 1)
        std::this_thread::sleep_for(std::chrono::milliseconds(50)); // polling a daemon
    }
    ::kill(pid, SIGTERM);
    int wstatus = 0;
    ::waitpid(pid, &wstatus, 0);
    auto out = cli_test::slurp(log);
    INFO(out);
    CHECK(drill_failed == 1);
    CHECK(failures >= 1);
    CHECK_THAT(out,
               Catch::Contains("standby: drill of step") && Catch::Contains("DIFFERENT, failed"));
    CHECK_THAT(out, Catch::Contains("standby: stopped, not promoted (0 drills passed"));
    CHECK(WIFEXITED(wstatus));
    CHECK(WEXITSTATUS(wstatus) == 0);
    // Nothing was promoted or written to the standby's nodes but its journal.
    CHECK_FALSE(std::filesystem::exists(snaps + "/PROMOTED"));
    CHECK_FALSE(std::filesystem::exists(dir.path + "/standby/n1/data.mdb"));
  }
}

TEST_CASE(
    "a second site promoted after the first is destroyed finishes the job with the "
    "fault-free digest, and the first, back, drives nothing",
    "[snapshot][system][cluster]") {
  cli_test::scratch_dir dir;
  const auto dr = dir.path + "/dr";
  const auto file_a = dir.path + "/site-a.toml";
  const auto file_b = dir.path + "/site-b.toml";
  auto site = [&](const std::string& name, const std::string& state) {
    auto text = understudy::testing::cluster_config(state, 3000);
    understudy::testing::replace_once(text, "name = \"test\"", "name = \"" + name + "\"");
    return text + "[snapshots]\ndir = \"" + dr + "\"\nevery = \"100ms\"\n";
  };
  // A declares a recovery point of 150 steps: what B resumes from may be at
  // most that far behind what A had committed when it was destroyed.
  const uint64_t rpo = 150;
  std::ofstream{file_a} << site("site-a", dir.path + "/a") << "rpo = " << rpo << "\n";
  std::ofstream{file_b} << site("site-b", dir.path + "/b");
  // Site A trains and ships; once it shipped twice, every one of its
  // processes is killed and its state directories deleted.
  const auto log_a = dir.path + "/a.log";
  auto a = daemon_test::spawn({UNDERSTUDY_CLI_PATH, "launch", file_a}, dir.path, log_a, true);
  std::string seen;
  for (int i = 0; i < 600; ++i) {
    seen = cli_test::slurp(log_a);
    size_t shipped = 0;
    for (auto at = seen.find("shipped to " + dr); at != std::string::npos;
         at = seen.find("shipped to " + dr, at + 1))
      ++shipped;
    if (shipped >= 2)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50)); // polling a log, not a sync
  }
  // While A runs, a promotion is refused: nothing imported, nothing recorded.
  auto early = cli_test::run_cli({"promote", file_b, "--primary", file_a}, dir.path);
  CHECK(early.status == 2);
  CHECK_THAT(early.err, Catch::Contains("the primary is alive and reachable"));
  CHECK_FALSE(std::filesystem::exists(dr + "/PROMOTED"));
  CHECK_FALSE(std::filesystem::exists(dir.path + "/b"));
  ::kill(-a, SIGKILL);
  int wstatus = 0;
  ::waitpid(a, &wstatus, 0);
  INFO("site A:\n" << cli_test::slurp(log_a));
  REQUIRE(seen.find("shipped to " + dr) != std::string::npos);
  // What A had committed: the newest trainer record (written once a step is
  // committed) that any of its stores holds.
  uint64_t committed_a = 0;
  for (const char* n : {"n1", "n2", "n3", "s1"}) {
    understudy::state_store_config sc;
    sc.directory = dir.path + "/a/" + n;
    sc.read_only = true;
    if (!std::filesystem::exists(sc.directory + "/data.mdb"))
      continue;
    auto store = understudy::state_store::open(sc);
    REQUIRE(store);
    if (auto c = (*store)->newest_intact("/root/job/trainer"))
      committed_a = std::max(committed_a, *c);
  }
  REQUIRE(committed_a > 0);
  std::filesystem::remove_all(dir.path + "/a");
  // Without --primary (or --force) a promotion is refused.
  CHECK(cli_test::run_cli({"promote", file_b}, dir.path).status == 2);
  auto promoted = cli_test::run_cli({"promote", file_b, "--primary", file_a}, dir.path);
  REQUIRE(promoted.status == 0);
  std::smatch m;
  REQUIRE(std::regex_search(
      promoted.out, m,
      std::regex{R"(cluster site-b takes /root/job over at committed step (\d+))"}));
  auto step = m[1].str();
  INFO("A had committed step " << committed_a << "; B took over at step " << step);
  CHECK(std::stoull(step) + rpo >= committed_a);
  // B resumes from that step and ends with the digest of a run never
  // interrupted.
  auto out_b = understudy::testing::launch_expecting(file_b, dir.path, "", 3000, "n1");
  CHECK_THAT(out_b, Catch::Contains("[n1] job: resuming from committed step " + step));
  // A, started again, learns it was superseded and starts nothing.
  int status = -1;
  auto again = understudy::testing::run_cli("launch " + file_a, status);
  CHECK(status != 0);
  CHECK_THAT(again, Catch::Contains("cluster site-a is superseded: its job moved to cluster "
                                    "site-b at step " +
                                    step));
  CHECK(again.find("job: ") == std::string::npos);
}

TEST_CASE(
    "a standby site in a network of its own drills on a schedule, promotes itself once the "
    "primary's network is cut, and finishes with the fault-free digest: the primary, still "
    "running, learns it was superseded and stops",
    "[snapshot][system][cluster][netns]") {
  if (!test::netns_lab::available()) {
    WARN(test::netns_skip_message);
    return;
  }
  test::netns_lab lab;
  const auto& host_a = lab.add("a", 1);
  const auto& host_b = lab.add("b", 2);
  cli_test::scratch_dir dir;
  const auto dr = dir.path + "/dr";
  const auto file_a = dir.path + "/site-a.toml";
  const auto file_b = dir.path + "/site-b.toml";
  const uint64_t steps = 6000;
  auto site = [&](const std::string& name, const std::string& ip, const std::string& state) {
    auto text = understudy::testing::cluster_config(state, steps);
    understudy::testing::replace_once(text, "name = \"test\"", "name = \"" + name + "\"");
    for (auto at = text.find("127.0.0.1"); at != std::string::npos; at = text.find("127.0.0.1"))
      text.replace(at, 9, ip);
    // Off loopback, mutual TLS: each site its own certificates.
    understudy::testing::replace_once(text, "[cluster.failure_detection]",
                                      "[cluster.security]\ndir = \"" + dir.path + "/certs-" + name +
                                          "\"\n\n[cluster.failure_detection]");
    return text + "[snapshots]\ndir = \"" + dr + "\"\nevery = \"100ms\"\n";
  };
  // Each site's nodes on its own host (and each launch with its own local
  // etcd); they share only the snapshot directory.
  std::ofstream{file_a} << site("site-a", host_a.ip, dir.path + "/a") << "rpo = 150\n";
  std::ofstream{file_b} << site("site-b", host_b.ip, dir.path + "/b")
                        << "standby = true\nprimary = \"site-a.toml\"\npromote_after = "
                           "\"1s\"\ndrill_every = \"200ms\"\n";
  for (const auto& f : {file_a, file_b})
    REQUIRE(std::system(
                (std::string{UNDERSTUDY_CLI_PATH} + " certs " + f + " >/dev/null 2>&1").c_str()) ==
            0);
  // A standby site does not start before it is promoted.
  int status = -1;
  auto refused = understudy::testing::run_cli("launch " + file_b, status);
  CHECK(status != 0);
  CHECK_THAT(refused, Catch::Contains("cluster site-b is a standby site"));
  const auto log_a = dir.path + "/a.log";
  const auto log_b = dir.path + "/b.log";
  auto a = lab.start("a", {UNDERSTUDY_CLI_PATH, "launch", file_a}, log_a);
  auto b = lab.start("b", {UNDERSTUDY_CLI_PATH, "standby", file_b}, log_b);
  auto count = [](const std::string& text, const std::string& what) {
    size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
      ++n;
    return n;
  };
  // A ships; B drills what it ships.
  for (int i = 0; i < 1200; ++i) {
    if (count(cli_test::slurp(log_a), "shipped to " + dr) >= 3 &&
        count(cli_test::slurp(log_b), "bit-exact, passed") >= 1)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50)); // polling logs, not a sync
  }
  INFO("site A:\n" << cli_test::slurp(log_a) << "\nstandby B:\n" << cli_test::slurp(log_b));
  REQUIRE(count(cli_test::slurp(log_b), "bit-exact, passed") >= 1);
  CHECK(cli_test::slurp(log_b).find("job: ") == std::string::npos);
  // A's network is cut: A runs on, unreachable. B promotes itself after a
  // second, launches, and finishes the job.
  lab.cut("a");
  CHECK(lab.wait_exit(b, std::chrono::minutes(3)) == 0);
  auto out_b = cli_test::slurp(log_b);
  INFO("standby B, to its end:\n" << out_b);
  CHECK_THAT(out_b, Catch::Contains("standby: no node of the primary accepts connections"));
  std::smatch m;
  REQUIRE(std::regex_search(
      out_b, m, std::regex{R"(cluster site-b takes /root/job over at committed step (\d+))"}));
  auto step = m[1].str();
  CHECK_THAT(out_b, Catch::Contains("job: resuming from committed step " + step));
  REQUIRE(std::regex_search(out_b, m,
                            std::regex{R"(\] final: steps=(\d+) .*params_digest=([0-9a-f]+))"}));
  CHECK(m[1] == std::to_string(steps));
  CHECK(m[2] ==
        understudy::testing::hex(understudy::testing::config_digest(file_a, dir.path + "/single")));
  // A stopped on its own once the directory recorded the promotion, before
  // its end, and says why.
  CHECK(lab.wait_exit(a, std::chrono::seconds(30)) != -1);
  auto out_a = cli_test::slurp(log_a);
  CHECK_THAT(out_a, Catch::Contains("was promoted to cluster site-b at step " + step + " ("));
  CHECK_THAT(out_a, Catch::Contains("this cluster is superseded; it ships nothing more and stops"));
  CHECK(out_a.find("final: ") == std::string::npos);
  // A, started again (its network back), drives nothing: it refuses as superseded.
  lab.heal("a");
  const auto again_log = dir.path + "/a-again.log";
  auto again = lab.start("a", {UNDERSTUDY_CLI_PATH, "launch", file_a}, again_log);
  CHECK(lab.wait_exit(again, std::chrono::seconds(60)) != 0);
  auto out_again = cli_test::slurp(again_log);
  CHECK_THAT(out_again, Catch::Contains("cluster site-a is superseded: its job moved to cluster "
                                        "site-b at step " +
                                        step));
  CHECK(out_again.find("job: ") == std::string::npos);
  // The drills are events of the standby node's journal.
  CHECK_THAT(cli_test::slurp(dir.path + "/b/n1/events.jsonl"),
             Catch::Contains("bit-exact, passed"));
}
