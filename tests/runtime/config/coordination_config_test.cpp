// [cluster.coordination]: the etcd endpoints, TLS files, session time to live
// and key prefix; defaults and the errors of bad values.

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/config_test_util.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"

using namespace understudy;
using namespace std::chrono_literals;
using namespace config_test;

TEST_CASE("without [cluster.coordination] a cluster has no endpoints and the defaults",
          "[config][coordination]") {
  auto cfg = parse_node_config(base, "ok.toml");
  REQUIRE(cfg);
  const auto& c = cfg->cluster.coordination;
  CHECK(c.endpoints.empty());
  CHECK(c.session_ttl == 3s);
  CHECK(c.prefix == "/understudy");
  CHECK(c.ca.empty());
  CHECK(c.cert.empty());
  CHECK(c.key.empty());
}

TEST_CASE("[cluster.coordination] reads endpoints, TLS files, time to live and prefix",
          "[config][coordination]") {
  auto text = base + lines({"[cluster.coordination]",
                            "endpoints = [\"https://10.0.0.1:2379\", \"https://etcd2:2379/\"]",
                            "ca = \"certs/etcd-ca.pem\"", "cert = \"certs/client.pem\"",
                            "key = \"certs/client.key\"", "session_ttl = \"1500ms\"",
                            "prefix = \"/jobs/understudy\""});
  auto cfg = parse_node_config(text, "ok.toml");
  REQUIRE(cfg);
  const auto& c = cfg->cluster.coordination;
  CHECK(c.endpoints == std::vector<std::string>{"https://10.0.0.1:2379", "https://etcd2:2379/"});
  CHECK(c.ca == "certs/etcd-ca.pem");
  CHECK(c.cert == "certs/client.pem");
  CHECK(c.key == "certs/client.key");
  CHECK(c.session_ttl == 1500ms);
  CHECK(c.prefix == "/jobs/understudy");
}

TEST_CASE("bad [cluster.coordination] values are errors naming the key and line",
          "[config][coordination]") {
  struct bad_case {
    std::string text;
    config_errc code;
    const char* expected;
  };
  const std::vector<bad_case> cases = {
      {lines({"endpoints = \"http://127.0.0.1:2379\""}), config_errc::wrong_type,
       "bad.toml:10: 'endpoints' in [cluster.coordination] must be a list of URLs, not a string"},
      {lines({"endpoints = [2379]"}), config_errc::wrong_type,
       "bad.toml:10: 'endpoints' in [cluster.coordination] must list URL strings, not an "
       "integer"},
      {lines({"endpoints = []"}), config_errc::invalid_value,
       "bad.toml:10: 'endpoints' in [cluster.coordination] is empty"},
      {lines({"endpoints = [\"etcd:2379\"]"}), config_errc::invalid_value,
       "bad.toml:10: endpoint 'etcd:2379' in [cluster.coordination] is"},
      {lines({"endpoints = [\"ftp://etcd:2379\"]"}), config_errc::invalid_value,
       "bad.toml:10: endpoint 'ftp://etcd:2379' in [cluster.coordination] is neither http:// "
       "nor https://"},
      {lines({"endpoints = [\"http://etcd:2379/v3\"]"}), config_errc::invalid_value,
       "bad.toml:10: endpoint 'http://etcd:2379/v3' in [cluster.coordination] has a path"},
      {lines({"endpoints = [\"http://etcd:2379\"]", "ca = \"ca.pem\""}), config_errc::invalid_value,
       "bad.toml:10: endpoint 'http://etcd:2379' in [cluster.coordination] is not https:// "
       "although TLS files (ca, cert, key) are set"},
      {lines({"endpoints = [\"https://etcd:2379\"]", "cert = \"c.pem\""}), config_errc::missing_key,
       "bad.toml:11: 'cert' in [cluster.coordination] needs 'key' too"},
      {lines({"session_ttl = \"500ms\""}), config_errc::invalid_value,
       "bad.toml:10: 'session_ttl' in [cluster.coordination] (500ms) must be at least 1s"},
      {lines({"session_ttl = 2"}), config_errc::wrong_type,
       "bad.toml:10: 'session_ttl' in [cluster.coordination] must be a duration string"},
      {lines({"prefix = \"understudy/\""}), config_errc::invalid_value,
       "bad.toml:10: 'prefix' in [cluster.coordination] ('understudy/') must start with '/' and "
       "not end with '/'"},
      {lines({"endpoint = [\"http://etcd:2379\"]"}), config_errc::unknown_key,
       "bad.toml:10: unknown key 'endpoint' in [cluster.coordination] (did you mean "
       "'endpoints'?)"},
  };
  for (const auto& c : cases) {
    auto text = base + "[cluster.coordination]\n" + c.text;
    INFO(text);
    auto cfg = parse_node_config(text, "bad.toml");
    REQUIRE_FALSE(cfg);
    INFO("error: " << describe(cfg.error()));
    CHECK(is(cfg.error(), c.code));
    CHECK(message_of(cfg.error()).find(c.expected) != std::string::npos);
  }
}
