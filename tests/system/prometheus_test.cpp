// The shipped Prometheus alert rules (examples/prometheus): promtool's unit
// tests, and a real Prometheus scraping a launched cluster while a node is
// killed and a worker hangs.

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/cli_test_util.hpp"
#include "support/cluster_test_util.hpp"
#include "support/daemon_test_util.hpp"
#include "support/free_port.hpp"
#include "support/temp_dir.hpp"

using namespace understudy::testing;
using cli_test::slurp;
using daemon_test::background;
using daemon_test::find_program;
using daemon_test::run_to_end;

namespace {

const std::string rules_dir = UNDERSTUDY_SOURCE_DIR "/examples/prometheus";

size_t append(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

/// GET `url` with libcurl: the body of a 200 answer, none otherwise.
std::optional<std::string> get(const std::string& url) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr)
    return std::nullopt;
  std::string body;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
  auto rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK || status != 200)
    return std::nullopt;
  return body;
}

} // namespace

TEST_CASE("the shipped alert rules load and pass promtool's unit tests", "[prometheus]") {
  auto promtool = find_program("promtool");
  if (promtool.empty()) {
    WARN("skipped: promtool is not installed (Debian's prometheus package has it)");
    return;
  }
  test::temp_dir dir{"promtool"};
  CHECK(run_to_end({promtool, "check", "rules", "understudy-alerts.yml"}, rules_dir,
                   dir.path + "/check.log") == 0);
  INFO(slurp(dir.path + "/check.log"));
  CHECK_THAT(slurp(dir.path + "/check.log"), Catch::Contains("SUCCESS: 8 rules found"));
  auto status = run_to_end({promtool, "test", "rules", "understudy-alerts.test.yml"}, rules_dir,
                           dir.path + "/test.log");
  INFO(slurp(dir.path + "/test.log"));
  CHECK(status == 0);
  CHECK_THAT(slurp(dir.path + "/test.log"), Catch::Contains("SUCCESS"));
}

TEST_CASE(
    "a real Prometheus scraping a launched cluster fires the node-down alert for a killed "
    "node, the hang alert for a hung worker and the recovery-point alert for snapshots that "
    "cannot be shipped",
    "[prometheus][cluster]") {
  auto prometheus = find_program("prometheus");
  if (prometheus.empty()) {
    WARN("skipped: Prometheus is not installed (Debian's prometheus package)");
    return;
  }
  test::temp_dir dir{"prometheus-test"};
  // The cluster of the cluster tests, with metrics on four free ports and a
  // worker that hangs at step 100; n3 is killed at step 300.
  auto text = cluster_config(dir.path + "/state", 4000);
  std::vector<uint16_t> metrics_ports;
  for (const char* node : {"n1", "n2", "n3", "s1"}) {
    auto port = test::free_port();
    metrics_ports.push_back(port);
    auto name = "name = \"" + std::string{node} + "\"\n";
    replace_once(text, name, name + "metrics_port = " + std::to_string(port) + "\n");
  }
  replace_once(text, "faults = \"worker:0@30\"", "faults = \"hang:worker:1@100\"");
  // n2 ships snapshots with a recovery point of one second to a "directory"
  // that is a file (as a mount gone bad): nothing ships, the copy falls behind.
  const auto blocked = dir.path + "/dr-blocked";
  std::ofstream{blocked} << "not a directory\n";
  text += "[snapshots]\ndir = \"" + blocked + "\"\nnode = \"n2\"\nrpo = \"1s\"\n";
  auto file = dir.path + "/cluster.toml";
  std::ofstream{file} << text;
  // The shipped rules, with their `for:` durations cut to a second so that the
  // test waits seconds, not minutes (promtool checks the real ones above).
  auto rules = slurp(rules_dir + "/understudy-alerts.yml");
  rules = std::regex_replace(rules, std::regex{R"(for: \d+[smh])"}, "for: 1s");
  std::ofstream{dir.path + "/rules.yml"} << rules;
  std::string targets;
  for (auto p : metrics_ports)
    targets += std::string{targets.empty() ? "" : ", "} + "'127.0.0.1:" + std::to_string(p) + "'";
  std::ofstream{dir.path + "/prometheus.yml"}
      << "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n"
         "rule_files:\n  - "
      << dir.path
      << "/rules.yml\n"
         "scrape_configs:\n  - job_name: understudy\n    static_configs:\n      - targets: ["
      << targets << "]\n";
  auto web_port = test::free_port();
  auto api = "http://127.0.0.1:" + std::to_string(web_port);
  background prom{{prometheus, "--config.file=" + dir.path + "/prometheus.yml",
                   "--storage.tsdb.path=" + dir.path + "/tsdb",
                   "--web.listen-address=127.0.0.1:" + std::to_string(web_port)},
                  dir.path + "/prometheus.log"};
  // Waits on the daemon's own readiness endpoint, up to 30 s.
  bool ready = false;
  for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
       !ready && prom.running() && std::chrono::steady_clock::now() < until;) {
    ready = get(api + "/-/ready").has_value();
    if (!ready)
      std::this_thread::sleep_for(std::chrono::milliseconds(100)); // polls a daemon
  }
  if (!ready) {
    WARN("skipped: Prometheus did not start: " << slurp(dir.path + "/prometheus.log"));
    return;
  }
  background launch{{UNDERSTUDY_CLI_PATH, "launch", file, "--kill", "n3@300"},
                    dir.path + "/launch.log"};
  // Until the three alerts fire (up to 90 s), asking Prometheus's API twice a second.
  const auto n3 = "127.0.0.1:" + std::to_string(metrics_ports[2]);
  std::set<std::string> firing;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (firing.size() < 3 && std::chrono::steady_clock::now() < until) {
    if (auto body = get(api + "/api/v1/alerts")) {
      auto j = nlohmann::json::parse(*body, nullptr, false);
      if (!j.is_discarded() && j.contains("data"))
        for (const auto& a : j["data"]["alerts"]) {
          if (a.value("state", "") != "firing")
            continue;
          const auto& labels = a["labels"];
          auto name = labels.value("alertname", "");
          if (name == "UnderstudyNodeDown" && labels.value("instance", "") == n3)
            firing.insert(name);
          if (name == "UnderstudyHangDetected" &&
              labels.value("child", "") == "/root/job/workers/worker-1")
            firing.insert(name);
          if (name == "UnderstudyRecoveryPointBehind" && labels.value("node", "") == "n2")
            firing.insert(name);
        }
    }
    if (firing.size() < 3)
      std::this_thread::sleep_for(std::chrono::milliseconds(500)); // polls a daemon
  }
  INFO(slurp(dir.path + "/launch.log"));
  CHECK(firing.count("UnderstudyNodeDown") == 1);
  CHECK(firing.count("UnderstudyHangDetected") == 1);
  CHECK(firing.count("UnderstudyRecoveryPointBehind") == 1);
  CHECK_THAT(slurp(dir.path + "/launch.log"),
             Catch::Contains("the recovery point is behind its rpo"));
  // Every expression of the Grafana dashboard is valid PromQL for a real
  // Prometheus and finds its series on the live cluster: the metrics it needs
  // exist (from the start, at zero, where no event has happened yet).
  if (launch.running()) {
    auto dashboard = nlohmann::json::parse(slurp(UNDERSTUDY_DASHBOARD_PATH));
    size_t checked = 0;
    for (const auto& panel : dashboard["panels"])
      for (const auto& target : panel.value("targets", nlohmann::json::array())) {
        auto expr = std::regex_replace(target.value("expr", ""), std::regex{R"(\$node)"}, ".*");
        char* escaped = curl_easy_escape(nullptr, expr.c_str(), static_cast<int>(expr.size()));
        auto body = get(api + "/api/v1/query?query=" + escaped);
        curl_free(escaped);
        INFO(panel.value("title", "") << ": " << expr);
        REQUIRE(body);
        auto j = nlohmann::json::parse(*body, nullptr, false);
        REQUIRE_FALSE(j.is_discarded());
        CHECK(j.value("status", "") == "success");
        CHECK_FALSE(j["data"]["result"].empty());
        ++checked;
      }
    CHECK(checked >= 15);
    // Each of the job's 3 workers has a straggler score of its own on the leader.
    auto scores = get(api + "/api/v1/query?query=understudy_training_worker_step_ratio");
    REQUIRE(scores);
    auto sj = nlohmann::json::parse(*scores, nullptr, false);
    REQUIRE_FALSE(sj.is_discarded());
    std::set<std::string> workers;
    for (const auto& r : sj["data"]["result"])
      workers.insert(r["metric"].value("worker", ""));
    CHECK(workers == std::set<std::string>{"worker-0", "worker-1", "worker-2"});
  }
  // No false alarm for the nodes that were never lost (while they still run).
  auto body = launch.running() ? get(api + "/api/v1/alerts") : std::nullopt;
  if (body) {
    auto j = nlohmann::json::parse(*body, nullptr, false);
    REQUIRE_FALSE(j.is_discarded());
    for (const auto& a : j["data"]["alerts"]) {
      const auto& labels = a["labels"];
      if (labels.value("alertname", "") == "UnderstudyNodeDown")
        CHECK(labels.value("instance", "") == n3);
      CHECK(labels.value("alertname", "") != "UnderstudyNoLeader");
    }
  }
}
