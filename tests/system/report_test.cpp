// --report FILE.html: digits_mlp's and a launched cluster's runs as one page,
// opened in headless Chromium, which must lay out the loss and accuracy curves
// and render the page (a screenshot of the window's size), with every fault
// and recovery in the incident table.

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/cli_test_util.hpp"
#include "support/cluster_test_util.hpp"
#include "support/daemon_test_util.hpp"
#include "support/temp_dir.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/node/run_report.hpp"

using namespace understudy::testing;
using cli_test::slurp;

namespace {

/// What headless Chromium made of a page.
struct browsed {
  std::string dom;
  uint32_t png_width = 0;
  uint32_t png_height = 0;
  size_t png_bytes = 0;
};

uint32_t big_endian(const std::string& s, size_t at) {
  return (static_cast<uint32_t>(static_cast<unsigned char>(s[at])) << 24) |
         (static_cast<uint32_t>(static_cast<unsigned char>(s[at + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<unsigned char>(s[at + 2])) << 8) |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 3]));
}

/// Opens `page` in `browser`: its DOM after the page's scripts ran, and a
/// 1100x900 screenshot's size (from the PNG header).
browsed browse(const std::string& browser, const std::string& page, const std::string& dir) {
  browsed b;
  const std::vector<std::string> common{browser, "--no-sandbox", "--disable-gpu",
                                        "--window-size=1100,900"};
  auto args = common;
  args.push_back("--dump-dom");
  args.push_back("file://" + page);
  daemon_test::run_to_end(args, dir, dir + "/dom.html");
  b.dom = slurp(dir + "/dom.html");
  args = common;
  args.push_back("--screenshot=" + dir + "/shot.png");
  args.push_back("file://" + page);
  daemon_test::run_to_end(args, dir, dir + "/shot.log");
  auto png = slurp(dir + "/shot.png");
  b.png_bytes = png.size();
  if (png.size() > 24 && png.compare(1, 3, "PNG") == 0 && png.compare(12, 4, "IHDR") == 0) {
    b.png_width = big_endian(png, 16);
    b.png_height = big_endian(png, 20);
  }
  return b;
}

/// The drawn length in pixels of curve `id`, as the page's script measured it.
long drawn_length(const std::string& dom, const std::string& id) {
  const std::regex attribute{"data-" + id + R"re(-length="(\d+)")re"};
  std::smatch m;
  return std::regex_search(dom, m, attribute) ? std::stol(m[1]) : -1;
}

/// Checks what Chromium shows of `page`, or says why it cannot.
void check_in_browser(const std::string& page, const std::string& dir) {
  auto browser = daemon_test::find_program("chromium-headless-shell");
  if (browser.empty())
    browser = daemon_test::find_program("chromium");
  if (browser.empty()) {
    WARN(
        "skipped: the page was not opened: no headless Chromium (Debian's "
        "chromium-headless-shell)");
    return;
  }
  auto b = browse(browser, page, dir);
  INFO(b.dom.substr(0, 2000));
  // The browser laid out both curves, the loss over the whole run.
  CHECK(drawn_length(b.dom, "loss") > 500);
  CHECK(drawn_length(b.dom, "accuracy") > 50);
  // A screenshot of the window's size with something on it (a blank page
  // compresses to a few KB).
  CHECK(b.png_width == 1100);
  CHECK(b.png_height == 900);
  CHECK(b.png_bytes > 30000);
}

} // namespace

TEST_CASE(
    "digits_mlp --report writes a page with the curves, each fault and recovery, and "
    "the goodput, which Chromium renders",
    "[report]") {
  test::temp_dir dir{"report"};
  const auto page = dir.path + "/run.html";
  int status = 0;
  auto out = run_program(UNDERSTUDY_DIGITS_MLP_PATH,
                         "--steps 1000 --fault worker:1@300,shard:0@600 --state-dir " + dir.path +
                             "/state --report " + page,
                         status);
  INFO(out);
  REQUIRE(status == 0);
  CHECK_THAT(out, Catch::Contains("report: " + page));
  auto html = slurp(page);
  // Self-contained: nothing is fetched from elsewhere.
  CHECK(html.find("src=\"http") == std::string::npos);
  CHECK(html.find("href=\"http") == std::string::npos);
  std::smatch m;
  REQUIRE(
      std::regex_search(out, m, std::regex{R"(final: steps=1000 .*params_digest=([0-9a-f]+))"}));
  CHECK_THAT(html, Catch::Contains("params_digest=" + m[1].str()));
  CHECK_THAT(html, Catch::Contains("goodput: "));
  // Each crash is marked; a recovery that rewound the job is an incident (a
  // worker that crashed between steps may need none).
  CHECK(std::regex_search(html, std::regex{R"(Faults and recoveries \([12] incidents\))"}));
  CHECK(std::regex_search(
      html,
      std::regex{
          R"(<tr class="fault"><td>\d+</td><td>\d+</td><td>crash: /digits_mlp/workers/worker-1: )"}));
  CHECK(std::regex_search(
      html,
      std::regex{
          R"(<tr class="fault"><td>\d+</td><td>\d+</td><td>crash: /digits_mlp/shards/shard-0: )"}));
  CHECK(std::regex_search(
      html,
      std::regex{
          R"(<tr class="recovery"><td>\d+</td><td>\d+</td><td>resumed from committed step \d+</td><td>[\d.]+ ms</td><td>\d+</td></tr>)"}));
  check_in_browser(page, dir.path);
}

TEST_CASE("understudy launch --report marks a killed node and the recovery on the curves",
          "[report][cluster]") {
  test::temp_dir dir{"report-launch"};
  auto file = dir.path + "/cluster.toml";
  auto text = cluster_config(dir.path + "/state", 300);
  replace_once(text, "eval_every = 0", "eval_every = 50"); // an accuracy curve to draw
  std::ofstream{file} << text;
  const auto page = dir.path + "/run.html";
  auto out = launch_expecting(file, dir.path, "--kill n2@150 --report " + page, 300, "n1");
  CHECK_THAT(out, Catch::Contains("launch: report in " + page));
  auto html = slurp(page);
  CHECK_THAT(html, Catch::Contains("<title>understudy launch " + file + "</title>"));
  CHECK(std::regex_search(html, std::regex{R"(chaos: SIGKILL n2 at step 15\d)"}));
  CHECK(std::regex_search(
      html,
      std::regex{
          R"(<tr class="recovery"><td>\d+</td><td>\d+</td><td>resumed from committed step \d+</td>)"}));
  check_in_browser(page, dir.path);
}

TEST_CASE(
    "a run report takes progress, faults and recoveries from output lines, and names a "
    "page it cannot write",
    "[report]") {
  understudy::run_report r{"a <run>"};
  r.add_line("[n1] progress: step 10/100 loss 0.5 accuracy - restarts 0 lost 0 (9 steps/s)");
  // The same step again (its evaluation): one point, the later report.
  r.add_line("[n1] progress: step 10/100 loss 0.5 accuracy 0.9125 restarts 0 lost 0");
  r.add_line("crash: /job/workers/worker-1: boom <here>");
  r.add_line(
      "[n1] [2026-12-07 04:00:00.000] [understudy] [info] job_resumed "
      "/root/job/trainer#1 cost=45000.0us reason=\"resumed from committed step 8; 2 "
      "steps lost\"");
  // Two actors a lost node took at once: one mark.
  for (const char* who : {"shard-1", "loader-1"})
    r.add_line(std::string{"[n1] [t] [understudy] [warning] child_exited /root/job/"} + who +
               "#1 action=restart reason=\"remote_link_unreachable\"");
  r.add_line("ignored: not a line the report knows");
  r.add_line("final: steps=100 accuracy=0.95 params_digest=0123456789abcdef");
  REQUIRE(r.points().size() == 1);
  CHECK(r.points()[0].step == 10);
  CHECK(r.points()[0].accuracy == Approx(0.9125));
  REQUIRE(r.marks().size() == 3);
  CHECK(r.marks()[0].what == "crash: /job/workers/worker-1: boom <here>");
  CHECK_FALSE(r.marks()[0].recovery());
  CHECK(r.marks()[1].recovery());
  CHECK(r.marks()[1].step == 8);
  CHECK(r.marks()[1].cost_ms == Approx(45.0));
  CHECK(r.marks()[1].steps_lost == 2);
  CHECK(r.marks()[2].what == "crash: /root/job/shard-1: remote_link_unreachable");
  CHECK(r.marks()[2].also == 1);
  REQUIRE(r.summary().size() == 1);
  auto html = r.html();
  CHECK_THAT(html, Catch::Contains("<title>a &lt;run&gt;</title>"));
  CHECK_THAT(html, Catch::Contains("boom &lt;here&gt;"));
  CHECK(html.find("<here>") == std::string::npos);
  auto err = r.write("/nonexistent-dir/run.html");
  REQUIRE(err);
  CHECK_THAT(understudy::describe(err),
             Catch::Contains("cannot write the report /nonexistent-dir/run.html"));
}
