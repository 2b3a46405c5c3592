// Serving under load while replicas are killed and versions roll in:
// digits_serving against serving_loadgen, both as a user runs them.

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/cli_test_util.hpp"
#include "support/daemon_test_util.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/numerics/dataset.hpp"
#include "understudy/actors/numerics/mlp.hpp"

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
  CHECK(summary["failed"].dump() == "{}");
  CHECK(summary["timeouts"] == 0);
  CHECK(summary["overloaded"] == 0); // 400/s is far below the replicas' capacity
  CHECK(summary["ok"] == summary["sent"]);
  CHECK(summary["sent"].get<int>() >= 1500);
  // Replicas were killed while the load ran (about 25 in 4 s).
  auto kills = 0;
  for (size_t at = served.find("fault: killed"); at != std::string::npos;
       at = served.find("fault: killed", at + 1))
    ++kills;
  CHECK(kills >= 10);

  // Every answer equals the model's own prediction for its input.
  state_store_config sc;
  sc.directory = dir.path + "/state";
  sc.read_only = true;
  auto store = state_store::open(sc);
  REQUIRE(store);
  actors::mlp net{{64, 128, 10}};
  auto params = actors::read_committed_parameters(**store, "/digits_mlp", net);
  REQUIRE(params);
  CHECK(params->step == 200);
  auto data =
      actors::load_csv(UNDERSTUDY_DIGITS_PATH,
                       actors::csv_options{actors::csv_options::last_column, 1.0f / 16.0f, 10});
  REQUIRE(data);
  std::ifstream answers{dir.path + "/answers"};
  size_t row = 0;
  uint32_t label = 0;
  uint64_t version = 0;
  size_t checked = 0;
  size_t wrong = 0;
  while (answers >> row >> label >> version) {
    REQUIRE(row < data->size());
    uint32_t own = 0;
    net.predict(params->params.data(), data->inputs.data() + row * 64, 1, &own);
    wrong += own != label || version != 200;
    ++checked;
  }
  CHECK(checked == summary["ok"].get<size_t>());
  CHECK(wrong == 0);
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
  CHECK(summary["failed"].dump() == "{}");
  CHECK(summary["timeouts"] == 0);
  CHECK(summary["regressions"] == 0);
  CHECK(summary["ok"] == summary["sent"]);
  CHECK(summary["versions"].size() >= 5); // a new version every 200 ms or so
}
