// Serving under load while replicas are killed and versions roll in:
// digits_serving against serving_loadgen, both as a user runs them.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/cli_test_util.hpp"
#include "support/cluster_test_util.hpp"
#include "support/daemon_test_util.hpp"
#include "support/free_port.hpp"
#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/actors/numerics/dataset.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/serving/serving_component.hpp"
#include "understudy/state/runtime.hpp"

using namespace understudy;
using json = nlohmann::json;

namespace {

/// Waits (bounded) until `file` holds `text`; the file's contents.
std::string wait_for_line(const std::string& file, const std::string& text,
                          std::chrono::seconds limit = std::chrono::seconds(60)) {
  auto until = std::chrono::steady_clock::now() + limit;
  std::string s;
  while (std::chrono::steady_clock::now() < until) {
    s = cli_test::slurp(file);
    if (s.find(text) != std::string::npos)
      return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(20)); // polling a file, not a sync
  }
  FAIL("no \"" << text << "\" in " << file << ":\n" << s);
  return s;
}

/// The URL digits_serving printed.
std::string served_url(const std::string& log) {
  auto s = wait_for_line(log, "/v1/models/digits:predict");
  auto at = s.find("http://");
  REQUIRE(at != std::string::npos);
  auto end = s.find(":predict", at);
  REQUIRE(end != std::string::npos);
  return s.substr(at, end + 8 - at);
}

/// Runs the load generator against `url`; its JSON summary.
json load(const std::string& url, const std::string& dir, const std::vector<std::string>& extra,
          int* status) {
  std::vector<std::string> args{UNDERSTUDY_LOADGEN_PATH, "--url",  url,      "--data",
                                UNDERSTUDY_DIGITS_PATH,  "--json", "--quiet"};
  args.insert(args.end(), extra.begin(), extra.end());
  *status = daemon_test::run_to_end(args, dir, dir + "/loadgen.log");
  auto out = cli_test::slurp(dir + "/loadgen.log");
  auto brace = out.rfind("\n{");
  INFO("loadgen:\n" << out);
  REQUIRE(brace != std::string::npos);
  return json::parse(out.substr(brace + 1));
}

/// How often `needle` occurs in `text`.
size_t occurrences(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
    ++n;
  return n;
}

/// Checks a load generator's summary: every request sent was answered.
void check_all_answered(const json& summary) {
  CHECK(summary["failed"].dump() == "{}");
  CHECK(summary["timeouts"] == 0);
  CHECK(summary["ok"] == summary["sent"]);
}

/// Checks the answers recorded in `answers` (row, label and version per line)
/// against the model's own prediction for the row at the answer's version, as
/// committed step of job `job` in `store`; the answers of versions the store
/// no longer holds are skipped. Returns how many were checked.
size_t check_predictions(const state_store& store, const std::string& job,
                         const std::string& answers) {
  actors::mlp net{{64, 128, 10}};
  auto data =
      actors::load_csv(UNDERSTUDY_DIGITS_PATH,
                       actors::csv_options{actors::csv_options::last_column, 1.0f / 16.0f, 10});
  REQUIRE(data);
  std::map<uint64_t, std::optional<actors::committed_parameters>> versions;
  std::ifstream in{answers};
  size_t row = 0;
  uint32_t label = 0;
  uint64_t version = 0;
  size_t checked = 0;
  size_t wrong = 0;
  while (in >> row >> label >> version) {
    REQUIRE(row < data->size());
    auto [at, fresh] = versions.try_emplace(version);
    if (fresh)
      if (auto p = actors::read_committed_parameters(store, job, net, version))
        at->second = std::move(*p);
    if (!at->second)
      continue;
    uint32_t own = 0;
    net.predict(at->second->params.data(), data->inputs.data() + row * 64, 1, &own);
    wrong += own != label;
    ++checked;
  }
  CHECK(wrong == 0);
  return checked;
}

/// Checks that every answer in `dir`/answers came from committed step `step`
/// of the state in `dir`/state, its newest, and equals the model's own
/// prediction there for its input.
void check_answers(const std::string& dirpath, const json& summary, uint64_t step) {
  state_store_config sc;
  sc.directory = dirpath + "/state";
  sc.read_only = true;
  auto store = state_store::open(sc);
  REQUIRE(store);
  auto newest = actors::newest_committed_step(**store, "/digits_mlp");
  REQUIRE(newest);
  CHECK(*newest == step);
  CHECK(summary["versions"].size() == 1);
  CHECK(summary["versions"].contains(std::to_string(step)));
  CHECK(check_predictions(**store, "/digits_mlp", dirpath + "/answers") ==
        summary["ok"].get<size_t>());
}

} // namespace

TEST_CASE(
    "under load with replicas killed every 150 ms no request fails and every answer is "
    "the model's own prediction",
    "[serving][system]") {
  cli_test::scratch_dir dir;
  auto log = dir.path + "/serving.log";
  daemon_test::background server{
      {UNDERSTUDY_DIGITS_SERVING_PATH, "--state-dir", dir.path + "/state", "--data",
       UNDERSTUDY_DIGITS_PATH, "--train-steps", "200", "--port", "0", "--replicas", "2",
       "--standbys", "1", "--crash-every", "150ms", "--for", "60s"},
      log};
  auto url = served_url(log);
  int status = -1;
  auto summary =
      load(url, dir.path, {"--rate", "400", "--duration", "4s", "--answers", dir.path + "/answers"},
           &status);
  auto served = cli_test::slurp(log);
  UNSCOPED_INFO("digits_serving:\n" << served);
  CHECK(status == 0);
  check_all_answered(summary);
  CHECK(summary["overloaded"] == 0); // 400/s is far below the replicas' capacity
  CHECK(summary["sent"].get<int>() >= 1500);
  // Replicas were killed while the load ran (about 25 in 4 s).
  CHECK(occurrences(served, "fault: killed") >= 10);

  check_answers(dir.path, summary, 200);
}

TEST_CASE(
    "with each replica in a process of its own, replica processes SIGKILLed every 200 ms "
    "fail no request and every answer is the model's own prediction",
    "[serving][system]") {
  cli_test::scratch_dir dir;
  auto log = dir.path + "/serving.log";
  daemon_test::background server{
      {UNDERSTUDY_DIGITS_SERVING_PATH, "--state-dir", dir.path + "/state", "--data",
       UNDERSTUDY_DIGITS_PATH, "--train-steps", "200", "--port", "0", "--isolated", "--crash-every",
       "200ms", "--for", "60s"},
      log};
  auto url = served_url(log);
  int status = -1;
  auto summary =
      load(url, dir.path, {"--rate", "300", "--duration", "4s", "--answers", dir.path + "/answers"},
           &status);
  auto served = cli_test::slurp(log);
  UNSCOPED_INFO("digits_serving:\n" << served);
  CHECK(status == 0);
  check_all_answered(summary);
  CHECK(occurrences(served, "'s process") >= 10);
  check_answers(dir.path, summary, 200);
}

TEST_CASE("versions roll in under load with no failed request and no session going back",
          "[serving][system]") {
  cli_test::scratch_dir dir;
  auto log = dir.path + "/serving.log";
  daemon_test::background server{
      {UNDERSTUDY_DIGITS_SERVING_PATH, "--state-dir", dir.path + "/state", "--data",
       UNDERSTUDY_DIGITS_PATH, "--train-steps", "50", "--train-while-serving", "100000", "--watch",
       "200ms", "--port", "0", "--for", "60s"},
      log};
  auto url = served_url(log);
  int status = -1;
  auto summary =
      load(url, dir.path, {"--rate", "300", "--duration", "4s", "--sessions", "8"}, &status);
  UNSCOPED_INFO("digits_serving:\n" << cli_test::slurp(log));
  CHECK(status == 0);
  check_all_answered(summary);
  CHECK(summary["regressions"] == 0);
  CHECK(summary["versions"].size() >= 5); // a new version every 200 ms or so
}

namespace {

/// Every process now: its pid and the contents of its /proc/PID/`file`.
std::vector<std::pair<pid_t, std::string>> processes(const char* file) {
  std::vector<std::pair<pid_t, std::string>> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    std::ifstream in{e.path() / file};
    out.emplace_back(
        static_cast<pid_t>(std::stoi(name)),
        std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
  }
  return out;
}

/// The pid of the process whose command line holds every one of `parts` (0: none).
pid_t find_process(const std::vector<std::string>& parts) {
  for (auto& [pid, cmd] : processes("cmdline")) {
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    bool all = !cmd.empty();
    for (const auto& p : parts)
      all = all && cmd.find(p) != std::string::npos;
    if (all)
      return pid;
  }
  return 0;
}

/// The processes whose parent is `parent`.
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& [pid, stat] : processes("stat")) {
    // pid (comm) state ppid ...: the comm may hold spaces, so from its ')'.
    auto close = stat.rfind(')');
    if (close == std::string::npos)
      continue;
    std::istringstream rest{stat.substr(close + 1)};
    std::string state;
    long ppid = 0;
    if (rest >> state >> ppid && ppid == parent)
      out.push_back(pid);
  }
  return out;
}

/// The first of `n` consecutive ports on 127.0.0.1 that are free now, below
/// the kernel's ephemeral range (where free_port's node ports come from), and
/// apart for tests running at once (by their pid).
uint16_t free_port_run(int n) {
  for (int base = 20000 + static_cast<int>(::getpid() % 1000) * 10; base < 32000; base += 10) {
    bool free = true;
    for (int i = 0; i < n && free; ++i) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(base + i));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      free = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
      if (fd >= 0)
        ::close(fd);
    }
    if (free)
      return static_cast<uint16_t>(base);
  }
  FAIL("no run of " << n << " free ports below 32000");
  return 0;
}

/// Trains digits_mlp for `steps` into `dir`/trained and writes `dir`/serve.toml:
/// a cluster of `nodes` nodes on loopback serving it from every node, the
/// first on `port`. Returns the file's path.
std::string serving_cluster(const std::string& dir, int nodes, uint64_t steps, uint16_t port,
                            const std::string& serve_extra = "") {
  REQUIRE(
      daemon_test::run_to_end({UNDERSTUDY_DIGITS_MLP_PATH, "--steps", std::to_string(steps),
                               "--state-dir", dir + "/trained", "--data", UNDERSTUDY_DIGITS_PATH},
                              dir, dir + "/train.log") == 0);
  auto file = dir + "/serve.toml";
  std::ofstream{file} << "[cluster]\nname = \"serve\"\n"
                      << "[cluster.failure_detection]\nheartbeat_interval = \"100ms\"\n"
                      << "deadline = \"1s\"\n";
  for (int i = 1; i <= nodes; ++i)
    std::ofstream{file, std::ios::app} << "[[node]]\nname = \"n" << i
                                       << "\"\nhost = \"127.0.0.1\"\nport = " << test::free_port()
                                       << "\nstate_dir = \"" << dir << "/n" << i << "\"\n";
  std::ofstream{file, std::ios::app}
      << "[serve]\nmodel = \"digits\"\nlayers = [64, 128, 10]\nstate_dir = \"" << dir
      << "/trained\"\nreplicas = 2\nstandbys = 1\nport = " << port << "\n"
      << serve_extra;
  return file;
}

} // namespace

/// The replicas each node's router shows in `understudy status FILE --json`
/// (the nodes that answer): node name -> [(replica id, node it runs on, state)];
/// `downs` (if given) adds up the times the routers saw a replica go down.
std::map<std::string, std::vector<std::array<std::string, 3>>> replicas_by_router(
    const std::string& file, uint64_t* downs = nullptr) {
  cli_test::scratch_dir sdir;
  auto js = cli_test::run_cli({"status", file, "--json"}, sdir.path);
  std::map<std::string, std::vector<std::array<std::string, 3>>> out;
  std::istringstream lines{js.out};
  for (std::string line; std::getline(lines, line);) {
    auto doc = json::parse(line, nullptr, false);
    if (!doc.is_object() || !doc.contains("serve") || !doc["serve"].contains("replicas"))
      continue;
    auto& rs = out[doc.value("node", doc.value("name", std::string{"?"}))];
    for (auto& r : doc["serve"]["replicas"]) {
      if (downs != nullptr)
        *downs += r["downs"].get<uint64_t>();
      rs.push_back({r["id"].get<std::string>(), r["node"].get<std::string>(),
                    r["state"].get<std::string>()});
    }
  }
  return out;
}

/// Polls `understudy status` (bounded) until every router's replicas are
/// active or standby and none runs on `gone`; whether they got there.
bool replicas_settle(const std::string& file, size_t routers, const std::string& gone = "") {
  for (int tries = 0; tries < 100; ++tries) {
    auto now = replicas_by_router(file);
    bool settled = now.size() == routers;
    for (auto& [router, rs] : now)
      settled = settled && router != gone && std::all_of(rs.begin(), rs.end(), [&](const auto& r) {
                  return r[1] != gone && (r[2] == "active" || r[2] == "standby");
                });
    if (settled)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100)); // polling a status, not a sync
  }
  return false;
}

/// The load generator running in the background against the serving nodes
/// whose HTTP ports are `ports`, at `rate` requests a second for `duration`.
struct background_load {
  background_load(const std::string& dir, const std::vector<uint16_t>& ports, const char* rate,
                  const char* duration, const std::vector<std::string>& extra = {})
      : log(dir + "/loadgen-" + std::to_string(ports.front()) + "-" + rate + ".log") {
    std::vector<std::string> args{UNDERSTUDY_LOADGEN_PATH,
                                  "--data",
                                  UNDERSTUDY_DIGITS_PATH,
                                  "--json",
                                  "--quiet",
                                  "--rate",
                                  rate,
                                  "--duration",
                                  duration};
    args.insert(args.end(), extra.begin(), extra.end());
    for (auto p : ports) {
      args.push_back("--url");
      args.push_back("http://127.0.0.1:" + std::to_string(p) + "/v1/models/digits:predict");
    }
    pid = daemon_test::spawn(args, dir, log, false);
  }

  /// Waits for its end: its JSON summary (a failed check if it did not exit
  /// normally or wrote none).
  json finish() {
    int wstatus = 0;
    ::waitpid(pid, &wstatus, 0);
    auto out = cli_test::slurp(log);
    INFO("loadgen:\n" << out);
    CHECK(WIFEXITED(wstatus));
    CHECK(WEXITSTATUS(wstatus) == 0);
    auto brace = out.rfind("\n{");
    REQUIRE(brace != std::string::npos);
    return json::parse(out.substr(brace + 1));
  }

  std::string log;
  pid_t pid = -1;
};

TEST_CASE(
    "a launched cluster serves on every node with each router's replicas spread over the "
    "nodes: one node's death moves its replicas and leaves no failed request",
    "[serving][system][cluster]") {
  cli_test::scratch_dir dir;
  auto port = free_port_run(2);
  auto file = serving_cluster(dir.path, 2, 150, port);
  auto log = dir.path + "/launch.log";
  daemon_test::background cluster{{UNDERSTUDY_CLI_PATH, "launch", file}, log};
  wait_for_line(log, "node n1: serving digits");
  auto text = wait_for_line(log, "node n2: serving digits");
  std::vector<std::string> urls;
  for (int i = 0; i < 2; ++i)
    urls.push_back("http://127.0.0.1:" + std::to_string(port + i) + "/v1/models/digits:predict");
  int status = -1;
  auto both =
      load(urls[0], dir.path, {"--url", urls[1], "--rate", "200", "--duration", "2s"}, &status);
  CHECK(status == 0);
  check_all_answered(both);
  CHECK(both["versions"].contains("150"));
  // Every node's status shows the replicas its router balances over: replica
  // j of the i-th node's router runs on node i + j (cyclically).
  cli_test::scratch_dir sdir;
  auto st = cli_test::run_cli({"status", file}, sdir.path);
  CHECK(st.status == 0);
  for (int i = 0; i < 2; ++i)
    CHECK_THAT(st.out, Catch::Contains("serve: digits version 150 on " + urls[i]));
  CHECK_THAT(st.out, Catch::Contains(": standby, version 150"));
  auto spread = replicas_by_router(file);
  REQUIRE(spread.size() == 2);
  for (auto& [router, rs] : spread) {
    INFO("router " << router);
    REQUIRE(rs.size() == 3);
    auto other = router == "n1" ? "n2" : "n1";
    CHECK(rs[0][1] == router);
    CHECK(rs[1][1] == other);
    CHECK(rs[2][1] == router);
  }
  // n1 dies while clients of n2 send requests: n2's replica on n1 goes with
  // it, its requests are answered elsewhere, and it starts again on n2.
  auto n1 = find_process({UNDERSTUDY_CLI_PATH, "node", file, "--name n1"});
  REQUIRE(n1 > 0);
  background_load after{dir.path, {static_cast<uint16_t>(port + 1)}, "300", "3s"};
  // The fault schedule (not a synchronisation): n1 killed 1 s in.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  ::kill(n1, SIGKILL);
  auto summary = after.finish();
  INFO("launch:\n" << cli_test::slurp(log));
  check_all_answered(summary);
  wait_for_line(log, "moved /serve-n2/digits/replicas/replica-1 from n1 (lost) to n2");
  // Every replica of n2's router runs on n2 now, and each is serving again
  // (bounded: the status is polled until the restarted one has loaded).
  CHECK(replicas_settle(file, 1, "n1"));
}

TEST_CASE(
    "a cluster's isolated replicas run in processes of their own: SIGKILLed under load, they "
    "cost no request and come back",
    "[serving][system][cluster]") {
  cli_test::scratch_dir dir;
  auto port = free_port_run(2);
  auto file = serving_cluster(dir.path, 2, 150, port, "isolated = true\n");
  auto log = dir.path + "/launch.log";
  daemon_test::background cluster{{UNDERSTUDY_CLI_PATH, "launch", file}, log};
  wait_for_line(log, "node n1: serving digits");
  wait_for_line(log, "node n2: serving digits");
  REQUIRE(replicas_settle(file, 2));
  // Each node hosts 3 replica processes: its router's replicas 0 and 2 and
  // the other's replica 1.
  std::vector<pid_t> nodes;
  for (auto name : {"--name n1", "--name n2"}) {
    nodes.push_back(find_process({UNDERSTUDY_CLI_PATH, "node", file, name}));
    REQUIRE(nodes.back() > 0);
    CHECK(children_of(nodes.back()).size() == 3);
  }
  background_load load{dir.path, {port, static_cast<uint16_t>(port + 1)}, "300", "3s"};
  // The fault schedule (not a synchronisation): 1 s in, every replica process
  // of n1 SIGKILLed; 1 s later, one of n2's.
  size_t killed = 0;
  std::this_thread::sleep_for(std::chrono::seconds(1));
  for (auto pid : children_of(nodes[0]))
    killed += ::kill(pid, SIGKILL) == 0;
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto theirs = children_of(nodes[1]);
  REQUIRE(!theirs.empty());
  killed += ::kill(theirs.front(), SIGKILL) == 0;
  auto summary = load.finish();
  INFO("launch:\n" << cli_test::slurp(log));
  CHECK(killed == 4);
  check_all_answered(summary);
  // The routers saw each killed replica go down, and every replica is back
  // in a fresh process.
  CHECK(replicas_settle(file, 2));
  uint64_t downs = 0;
  replicas_by_router(file, &downs);
  CHECK(downs >= killed);
  for (auto pid : nodes)
    CHECK(children_of(pid).size() == 3);
}

TEST_CASE(
    "clients failing over between a cluster's routers see no failed request while one "
    "node is frozen and another killed",
    "[serving][system][cluster]") {
  cli_test::scratch_dir dir;
  auto port = free_port_run(3);
  auto file = serving_cluster(dir.path, 3, 100, port);
  auto log = dir.path + "/launch.log";
  daemon_test::background cluster{{UNDERSTUDY_CLI_PATH, "launch", file}, log};
  for (int i = 1; i <= 3; ++i)
    wait_for_line(log, "node n" + std::to_string(i) + ": serving digits");
  background_load load{dir.path,
                       {port, static_cast<uint16_t>(port + 1), static_cast<uint16_t>(port + 2)},
                       "300",
                       "5s",
                       {"--failover", "--try-timeout", "300ms"}};
  auto n1 = find_process({UNDERSTUDY_CLI_PATH, "node", file, "--name n1"});
  auto n3 = find_process({UNDERSTUDY_CLI_PATH, "node", file, "--name n3"});
  REQUIRE(n1 > 0);
  REQUIRE(n3 > 0);
  // The fault schedule (not a synchronisation): n3 frozen for 1.5 s from 1 s
  // in, past the 1 s deadline; n1 killed at 3 s.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  ::kill(n3, SIGSTOP);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ::kill(n3, SIGCONT);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ::kill(n1, SIGKILL);
  auto summary = load.finish();
  INFO("launch:\n" << cli_test::slurp(log));
  check_all_answered(summary);
  CHECK(summary["failed_over"].get<int>() > 0);
}

TEST_CASE(
    "a cluster serves its own training job while it trains: versions roll in from the steps "
    "its nodes hold, and a served version is bit-exact the job's step",
    "[serving][system][cluster]") {
  cli_test::scratch_dir dir;
  auto port = free_port_run(2);
  auto file = dir.path + "/trainserve.toml";
  std::ofstream{file} << "[cluster]\nname = \"trainserve\"\n"
                      << "[cluster.failure_detection]\nheartbeat_interval = \"100ms\"\n"
                      << "deadline = \"1s\"\n";
  for (int i = 1; i <= 3; ++i)
    std::ofstream{file, std::ios::app} << "[[node]]\nname = \"n" << i
                                       << "\"\nhost = \"127.0.0.1\"\nport = " << test::free_port()
                                       << "\nstate_dir = \"" << dir.path << "/n" << i << "\"\n";
  // The job's shards on every node; served from n2 and n3, without a state
  // directory: each gathers the committed steps the nodes hold.
  std::ofstream{file, std::ios::app}
      << "[job]\nmodel = \"mlp\"\nlayers = [64, 128, 10]\ndata = \"" << UNDERSTUDY_DIGITS_PATH
      << "\"\ndata_scale = 0.0625\nworkers = 2\nshards = 3\nloaders = 1\nsteps = 1000000\n"
      << "checkpoint_every = 100\neval_every = 0\n[job.shard]\nplacement = \"spread\"\n"
      << "[serve]\nmodel = \"digits\"\nlayers = [64, 128, 10]\nreplicas = 2\nstandbys = 1\n"
      << "port = " << port << "\nplacement = [\"n2\", \"n3\"]\nwatch_interval = \"100ms\"\n";
  auto log = dir.path + "/launch.log";
  json summary;
  {
    daemon_test::background cluster{{UNDERSTUDY_CLI_PATH, "launch", file}, log};
    wait_for_line(log,
                  "node n2: serving digits (mlp 64-128-10, /root/job as the cluster's "
                  "nodes hold it)");
    wait_for_line(log, "node n3: serving digits");
    REQUIRE(replicas_settle(file, 2));
    background_load load{dir.path,
                         {port, static_cast<uint16_t>(port + 1)},
                         "300",
                         "3s",
                         {"--sessions", "8", "--answers", dir.path + "/answers"}};
    summary = load.finish();
  }
  auto out = cli_test::slurp(log);
  INFO("launch:\n" << out);
  check_all_answered(summary);
  CHECK(summary["regressions"] == 0);
  CHECK(summary["versions"].size() >= 2); // a commit every 100 steps, several a second
  CHECK(out.find("sent a version of another actor") == std::string::npos);
  // n2's copy of the job's committed steps (pieced together from what the
  // nodes hold: n2 runs one shard and holds one other's copies).
  state_store_config sc;
  sc.directory = dir.path + "/n2/served/digits";
  sc.read_only = true;
  auto copy = state_store::open(sc);
  REQUIRE(copy);
  // Every answer whose version the copy still holds (the last 16) is the
  // model's own prediction at that version.
  CHECK(check_predictions(**copy, "/root/job", dir.path + "/answers") * 2 >=
        summary["ok"].get<size_t>());
  // The newest version served is the job's own step, bit for bit: the same
  // job run in this process to that step ends with the same parameters.
  auto newest = actors::newest_committed_step(**copy, "/root/job");
  REQUIRE(newest);
  REQUIRE(*newest > 0);
  actors::mlp net{{64, 128, 10}};
  auto served = actors::read_committed_parameters(**copy, "/root/job", net, *newest);
  REQUIRE(served);
  node_config_options opts;
  opts.sections.push_back(actors::job_section());
  opts.sections.push_back(serving::serve_section());
  auto nc = load_node_config(file, opts);
  REQUIRE(nc);
  auto expected = testing::fault_free_digest(*nc, dir.path + "/single", *newest);
  CHECK(actors::params_digest(served->params.data(), served->params.size()) == expected);
}
