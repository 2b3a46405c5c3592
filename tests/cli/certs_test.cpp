// `understudy certs`: runs the built program on config files written here and
// checks the files it writes, its refusal to overwrite them, and its errors.

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/cli_test_util.hpp"
#include "support/state_test_util.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/config/node_config.hpp"

namespace {

using namespace understudy;
using namespace cli_test;

/// Writes a config of three loopback nodes with certificates under `cert_dir`
/// (none without `with_security`) and returns its path.
std::string write_config(const std::string& dir, const std::string& cert_dir,
                         bool with_security = true) {
  std::string text = "[cluster]\nname = \"cli\"\nstate_root = \"" + dir + "/state\"\n";
  if (with_security)
    text += "[cluster.security]\ndir = \"" + cert_dir + "\"\n";
  for (int i = 1; i <= 3; ++i)
    text += "[[node]]\nname = \"n" + std::to_string(i) +
            "\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(4830 + i) + "\n";
  auto path = dir + "/cluster.toml";
  std::ofstream{path} << text;
  return path;
}

const std::vector<std::string> cert_files{"ca.key", "ca.pem", "n1.key", "n1.pem",     "n2.key",
                                          "n2.pem", "n3.key", "n3.pem", "status.key", "status.pem"};

} // namespace

TEST_CASE("understudy certs writes a CA and a certificate per node and keeps them",
          "[security][cli]") {
  scratch_dir dir;
  auto certs = dir.path + "/certs";
  auto file = write_config(dir.path, certs);
  auto first = run_cli({"certs", file}, dir.path);
  REQUIRE(first.status == 0);
  std::map<std::string, std::string> before;
  for (const auto& f : cert_files) {
    CHECK_THAT(first.out, Catch::Contains("wrote " + certs + "/" + f));
    before[f] = slurp(certs + "/" + f);
    CHECK_FALSE(before[f].empty());
  }
  struct stat st {};
  REQUIRE(::stat((certs + "/n3.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto cfg = load_node_config(file);
  REQUIRE(cfg);
  for (const auto* node : {"n1", "n2", "n3"})
    CHECK_FALSE(check_node_certificate(*cfg, node));

  // A second run refuses and names the file; nothing changes.
  auto second = run_cli({"certs", file}, dir.path);
  CHECK(second.status == 2);
  CHECK_THAT(second.err, Catch::Contains(certs + "/ca.key") && Catch::Contains("exists") &&
                             Catch::Contains("--force"));
  CHECK(second.out.empty());
  for (const auto& f : cert_files)
    CHECK(slurp(certs + "/" + f) == before[f]);

  // --force replaces every file.
  auto forced = run_cli({"certs", file, "--force"}, dir.path);
  CHECK(forced.status == 0);
  for (const auto& f : cert_files)
    CHECK(slurp(certs + "/" + f) != before[f]);
  for (const auto* node : {"n1", "n2", "n3"})
    CHECK_FALSE(check_node_certificate(*cfg, node));
}

TEST_CASE("understudy certs without a security section fails with a clear error",
          "[security][cli]") {
  scratch_dir dir;
  auto file = write_config(dir.path, "", false);
  auto run = run_cli({"certs", file}, dir.path);
  CHECK(run.status == 2);
  CHECK_THAT(run.err, Catch::Contains("understudy certs: ") &&
                          Catch::Contains("has no [cluster.security] section"));
  CHECK(run.out.empty());
}

TEST_CASE("understudy certs reports a config it cannot read and a missing argument",
          "[security][cli]") {
  scratch_dir dir;
  auto missing = run_cli({"certs", dir.path + "/nope.toml"}, dir.path);
  CHECK(missing.status == 2);
  CHECK_THAT(missing.err, Catch::Contains("nope.toml"));
  auto usage = run_cli({"certs"}, dir.path);
  CHECK(usage.status == 2);
  CHECK_THAT(usage.err, Catch::Contains("FILE"));
}
