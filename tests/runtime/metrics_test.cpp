// Node metrics: what a Prometheus scrape of /metrics shows after supervision
// events, state store counters, training steps and peer health, fetched over
// real HTTP on loopback; binding errors; and the Grafana dashboard in step
// with the exposed metric names.

#include "understudy/runtime/metrics.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <caf/sec.hpp>
#include <catch2/catch.hpp>

#include "understudy/runtime/errors.hpp"

using namespace understudy;
using namespace std::chrono_literals;

namespace {

/// A minimal blocking HTTP/1.0 client: GET `path` from 127.0.0.1:`port`, return
/// the whole response (status line, headers, body). Fails the test on socket errors.
std::string http_get(uint16_t port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  timeval tv{10, 0}; // A server that never answers fails the test instead of hanging it.
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    FAIL("cannot connect to 127.0.0.1:" << port);
  }
  std::string request = "GET " + path +
                        " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                        "Accept: text/plain\r\n\r\n";
  size_t sent = 0;
  while (sent < request.size()) {
    auto n = ::send(fd, request.data() + sent, request.size() - sent, 0);
    if (n <= 0) {
      ::close(fd);
      FAIL("send failed");
    }
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[4096];
  for (;;) {
    auto n = ::recv(fd, buf, sizeof(buf), 0);
    if (n == 0)
      break;
    if (n < 0) {
      ::close(fd);
      FAIL("recv failed or timed out after " << response.size() << " bytes");
    }
    response.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return response;
}

/// The body of a scrape over HTTP; checks the status and the content type.
std::string fetch_metrics(uint16_t port) {
  auto response = http_get(port, "/metrics");
  auto header_end = response.find("\r\n\r\n");
  REQUIRE(header_end != std::string::npos);
  auto head = response.substr(0, header_end);
  INFO(head);
  CHECK(head.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(head.find("text/plain") != std::string::npos);
  return response.substr(header_end + 4);
}

/// One sample line of the text format: `name{k="v",...} value`.
struct sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

std::vector<sample> parse_exposition(const std::string& text) {
  std::vector<sample> out;
  std::istringstream in{text};
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    sample s;
    auto brace = line.find('{');
    auto space = line.rfind(' ');
    REQUIRE(space != std::string::npos);
    if (brace != std::string::npos && brace < space) {
      s.name = line.substr(0, brace);
      auto close = line.rfind('}');
      REQUIRE(close != std::string::npos);
      // Label values here never contain '"' or ','; split on `",`.
      std::string body = line.substr(brace + 1, close - brace - 1);
      size_t pos = 0;
      while (pos < body.size()) {
        auto eq = body.find("=\"", pos);
        REQUIRE(eq != std::string::npos);
        auto end = body.find('"', eq + 2);
        REQUIRE(end != std::string::npos);
        s.labels[body.substr(pos, eq - pos)] = body.substr(eq + 2, end - eq - 2);
        pos = end + 1;
        if (pos < body.size() && body[pos] == ',')
          ++pos;
      }
    } else {
      s.name = line.substr(0, space);
    }
    auto value = line.substr(space + 1);
    s.value = value == "+Inf" ? INFINITY : std::stod(value);
    out.push_back(std::move(s));
  }
  return out;
}

/// The samples named `name` whose labels include `labels`.
std::vector<sample> find_all(const std::vector<sample>& xs, const std::string& name,
                             const std::map<std::string, std::string>& labels = {}) {
  std::vector<sample> out;
  for (const auto& x : xs) {
    if (x.name != name)
      continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto i = x.labels.find(k);
      match = match && i != x.labels.end() && i->second == v;
    }
    if (match)
      out.push_back(x);
  }
  return out;
}

/// The value of the one sample named `name` with `labels`.
double value_of(const std::vector<sample>& xs, const std::string& name,
                const std::map<std::string, std::string>& labels = {}) {
  auto found = find_all(xs, name, labels);
  INFO(name);
  REQUIRE(found.size() == 1);
  return found.front().value;
}

/// The count of histogram `name`'s bucket with upper bound `le`.
double bucket_of(const std::vector<sample>& xs, const std::string& name, double le) {
  for (const auto& x : find_all(xs, name + "_bucket")) {
    auto i = x.labels.find("le");
    REQUIRE(i != x.labels.end());
    double bound = i->second == "+Inf" ? INFINITY : std::stod(i->second);
    if (bound == le || std::abs(bound - le) < 1e-12)
      return x.value;
  }
  FAIL("no bucket le=" << le << " in " << name);
  return -1;
}

std::unique_ptr<node_metrics> start_metrics(const std::string& node) {
  metrics_config cfg;
  cfg.node = node;
  cfg.host = "127.0.0.1";
  cfg.port = 0;
  auto m = node_metrics::start(cfg);
  if (!m)
    FAIL("node_metrics::start: " << describe(m.error()));
  return std::move(*m);
}

supervision_event event(event_kind kind, std::string child, std::string reason, std::string action,
                        caf::timespan duration = caf::timespan{0}) {
  supervision_event ev;
  ev.kind = kind;
  ev.supervisor = "/root/job";
  ev.child = std::move(child);
  ev.incarnation = 1;
  ev.reason = std::move(reason);
  ev.action = std::move(action);
  ev.duration = duration;
  ev.time = std::chrono::steady_clock::now();
  ev.wall_time = std::chrono::system_clock::now();
  return ev;
}

/// Feeds one of everything, so that every metric family has a sample.
void feed_everything(node_metrics& m) {
  auto sink = m.sink();
  sink->on_event(event(event_kind::child_exited, "worker-1", "runtime_error: boom at step 7",
                       "restart one_for_one"));
  sink->on_event(event(event_kind::child_restarted, "worker-1", "", "serving", 3ms));
  sink->on_event(event(event_kind::child_exited, "loader-0", "normal", "ignore"));
  sink->on_event(event(event_kind::hang_detected, "worker-2",
                       "liveness_deadline_missed: no progress for 1s", "kill"));
  sink->on_event(event(event_kind::start_failed, "worker-2", "start_failed: no", ""));
  sink->on_event(event(event_kind::intensity_exceeded, "worker-2",
                       "intensity_exceeded: 3 restarts in 1s", "escalate"));
  sink->on_event(event(event_kind::state_restored, "shard-0", "", "restored step 4", 2ms));
  sink->on_event(event(event_kind::state_fresh, "shard-1", "no saved state", "fresh start"));
  m.update_from({3, 5, 4096, 1, 2});
  m.observe_commit_latency(1500us);
  auto t0 = std::chrono::steady_clock::now() - 2s;
  m.on_step(10, t0);
  m.on_step(20, t0 + 1s);
  m.on_step(30, t0 + 2s);
  m.set_peer_health("n2", peer_health::alive);
  m.set_peer_health("n3", peer_health::suspected);
  m.set_peer_health("n4", peer_health::dead);
  m.on_failover("n4");
}

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  REQUIRE(in.good());
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

/// Whether something accepts connections on 127.0.0.1:`port`.
bool accepts_connections(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

} // namespace

TEST_CASE("node metrics serve restarts recovery checkpoints steps and peer health over http",
          "[metrics]") {
  auto m = start_metrics("n1");
  REQUIRE(m->port() != 0);
  CHECK(m->node() == "n1");
  CHECK(m->url() == "http://127.0.0.1:" + std::to_string(m->port()) + "/metrics");

  // The metrics sink combines with other sinks.
  auto log = std::make_shared<event_log>();
  fanout_sink both{{log, m->sink()}};
  both.on_event(event(event_kind::child_exited, "worker-1", "runtime_error: boom at step 7",
                      "restart one_for_one"));
  both.on_event(event(event_kind::child_restarted, "worker-1", "", "serving", 3ms));
  both.on_event(event(event_kind::child_exited, "loader-0", "normal", "ignore"));
  CHECK(log->total() == 3);

  m->update_from({3, 5, 4096, 1, 2});
  m->update_from({4, 7, 6144, 1, 3});
  m->observe_commit_latency(1500us);
  m->observe_commit_latency(20ms);
  auto t0 = std::chrono::steady_clock::now() - 2s;
  m->on_step(10, t0);
  m->on_step(20, t0 + 1s);
  m->on_step(30, t0 + 2s);
  m->set_peer_health("n2", peer_health::alive);
  m->set_peer_health("n3", peer_health::suspected);
  m->set_peer_health("n4", 0.0);
  m->on_failover("n4");

  auto body = fetch_metrics(m->port());
  INFO(body);
  auto xs = parse_exposition(body);

  const std::string worker = "/root/job/worker-1";
  CHECK(value_of(xs, "understudy_restarts_total",
                 {{"node", "n1"}, {"child", worker}, {"reason", "runtime_error"}}) == 1);
  CHECK(find_all(xs, "understudy_restarts_total", {{"child", "/root/job/loader-0"}}).empty());
  CHECK(value_of(xs, "understudy_child_exits_total",
                 {{"child", worker}, {"reason", "runtime_error"}, {"action", "restart"}}) == 1);
  CHECK(value_of(xs, "understudy_child_exits_total",
                 {{"child", "/root/job/loader-0"}, {"reason", "normal"}, {"action", "ignore"}}) ==
        1);

  // 3 ms of recovery: above the 2.5 ms bucket, inside the 5 ms one.
  CHECK(bucket_of(xs, "understudy_recovery_seconds", 0.0001) == 0);
  CHECK(bucket_of(xs, "understudy_recovery_seconds", 0.0025) == 0);
  CHECK(bucket_of(xs, "understudy_recovery_seconds", 0.005) == 1);
  CHECK(bucket_of(xs, "understudy_recovery_seconds", 10.0) == 1);
  CHECK(bucket_of(xs, "understudy_recovery_seconds", INFINITY) == 1);
  CHECK(find_all(xs, "understudy_recovery_seconds_bucket").size() ==
        metrics_duration_buckets().size() + 1);
  CHECK(value_of(xs, "understudy_recovery_seconds_count") == 1);
  CHECK(value_of(xs, "understudy_recovery_seconds_sum") == Approx(0.003));

  // Counters follow the store's cumulative counters.
  CHECK(value_of(xs, "understudy_checkpoint_commits_total") == 4);
  CHECK(value_of(xs, "understudy_checkpoints_written_total") == 7);
  CHECK(value_of(xs, "understudy_checkpoint_bytes_total") == 6144);
  CHECK(value_of(xs, "understudy_state_map_growths_total") == 1);
  CHECK(value_of(xs, "understudy_checkpoint_versions_deleted_total") == 3);
  CHECK(bucket_of(xs, "understudy_checkpoint_commit_seconds", 0.001) == 0);
  CHECK(bucket_of(xs, "understudy_checkpoint_commit_seconds", 0.0025) == 1);
  CHECK(bucket_of(xs, "understudy_checkpoint_commit_seconds", 0.025) == 2);
  CHECK(value_of(xs, "understudy_checkpoint_commit_seconds_count") == 2);

  CHECK(value_of(xs, "understudy_training_steps_total") == 30);
  CHECK(value_of(xs, "understudy_training_step") == 30);
  CHECK(value_of(xs, "understudy_training_step_rate") == Approx(10.0));

  CHECK(value_of(xs, "understudy_node_health", {{"peer", "n2"}}) == 1.0);
  CHECK(value_of(xs, "understudy_node_health", {{"peer", "n3"}}) == 0.5);
  CHECK(value_of(xs, "understudy_node_health", {{"peer", "n4"}}) == 0.0);
  CHECK(value_of(xs, "understudy_node_up", {{"node", "n1"}}) == 1);
  CHECK(value_of(xs, "understudy_failovers_total", {{"peer", "n4"}}) == 1);

  // Every sample is ours and names its node.
  std::vector<std::string> strays;
  for (const auto& x : xs) {
    auto node = x.labels.find("node");
    if (x.name.rfind("understudy_", 0) != 0 || node == x.labels.end() || node->second != "n1")
      strays.push_back(x.name);
  }
  CHECK(strays.empty());

  // A peer that recovers, and a node going down.
  m->set_peer_health("n3", peer_health::alive);
  m->set_up(false);
  auto again = parse_exposition(fetch_metrics(m->port()));
  CHECK(value_of(again, "understudy_node_health", {{"peer", "n3"}}) == 1.0);
  CHECK(value_of(again, "understudy_node_up") == 0);
}

TEST_CASE("node metrics on an address in use fail with an error naming the address", "[metrics]") {
  auto first = start_metrics("n1");
  metrics_config cfg;
  cfg.node = "n2";
  cfg.host = "127.0.0.1";
  cfg.port = first->port();
  auto second = node_metrics::start(cfg);
  REQUIRE_FALSE(second);
  const auto& err = second.error();
  CHECK(err.category() == caf::atom("system"));
  CHECK(err.code() == static_cast<uint8_t>(caf::sec::cannot_open_port));
  auto text = describe(err);
  INFO(text);
  CHECK(text.find("127.0.0.1:" + std::to_string(first->port())) != std::string::npos);
  CHECK(text.find("in use") != std::string::npos);
  // The first endpoint still serves.
  CHECK(fetch_metrics(first->port()).find("understudy_node_up") != std::string::npos);
}

TEST_CASE("the metrics endpoint answers other paths with not found and stops with its owner",
          "[metrics]") {
  auto m = start_metrics("n1");
  auto port = m->port();
  CHECK(http_get(port, "/").rfind("HTTP/1.1 404", 0) == 0);
  CHECK(http_get(port, "/metrics?x=1").rfind("HTTP/1.1 200", 0) == 0);
  CHECK(http_get(port, "/metrics").find("Content-Length: ") != std::string::npos);
  auto sink = m->sink();
  m.reset();
  CHECK_FALSE(accepts_connections(port));
  // A supervisor may still hold the sink: it keeps working.
  sink->on_event(event(event_kind::child_exited, "w", "runtime_error: late", "restart"));
}

TEST_CASE("node metrics without a node name are refused", "[metrics]") {
  auto m = node_metrics::start(metrics_config{});
  REQUIRE_FALSE(m);
  CHECK(m.error().code() == static_cast<uint8_t>(caf::sec::invalid_argument));
}

TEST_CASE("the state source is read at every scrape and a reopened store counts on", "[metrics]") {
  auto m = start_metrics("n1");
  state_store_stats stats;
  stats.commits = 2;
  stats.puts = 2;
  stats.bytes_written = 1000;
  std::mutex mtx;
  m->set_state_source([&] {
    std::lock_guard<std::mutex> guard{mtx};
    return stats;
  });
  auto xs = parse_exposition(fetch_metrics(m->port()));
  CHECK(value_of(xs, "understudy_checkpoint_bytes_total") == 1000);
  {
    std::lock_guard<std::mutex> guard{mtx};
    stats.bytes_written = 1500;
    stats.puts = 3;
  }
  xs = parse_exposition(fetch_metrics(m->port()));
  CHECK(value_of(xs, "understudy_checkpoint_bytes_total") == 1500);
  CHECK(value_of(xs, "understudy_checkpoints_written_total") == 3);
  {
    // A new store counts from zero: the counter adds what it wrote.
    std::lock_guard<std::mutex> guard{mtx};
    stats.bytes_written = 200;
  }
  xs = parse_exposition(m->scrape());
  CHECK(value_of(xs, "understudy_checkpoint_bytes_total") == 1700);
  m->set_state_source({});
  xs = parse_exposition(m->scrape());
  CHECK(value_of(xs, "understudy_checkpoint_bytes_total") == 1700);
}

TEST_CASE("training steps count once across a rollback and a stale step rate reads zero",
          "[metrics]") {
  auto m = start_metrics("n1");
  auto now = std::chrono::steady_clock::now();
  m->on_step(10, now - 3s);
  m->on_step(20, now - 2s);
  auto xs = parse_exposition(m->scrape());
  CHECK(value_of(xs, "understudy_training_steps_total") == 20);
  CHECK(value_of(xs, "understudy_training_step_rate") == Approx(10.0));
  // Resuming from the last globally committed step 15: nothing counts until step 20 passes.
  m->on_step(15, now - 1s);
  xs = parse_exposition(m->scrape());
  CHECK(value_of(xs, "understudy_training_steps_total") == 20);
  CHECK(value_of(xs, "understudy_training_step") == 15);
  CHECK(value_of(xs, "understudy_training_step_rate") == 0);
  m->on_step(25, now);
  xs = parse_exposition(m->scrape());
  CHECK(value_of(xs, "understudy_training_steps_total") == 25);
  CHECK(value_of(xs, "understudy_training_step_rate") == Approx(10.0));

  // No step within the window (10 s by default): the rate reads zero.
  auto idle = start_metrics("n2");
  idle->on_step(1, now - 60s);
  idle->on_step(11, now - 59s);
  xs = parse_exposition(idle->scrape());
  CHECK(value_of(xs, "understudy_training_steps_total") == 11);
  CHECK(value_of(xs, "understudy_training_step_rate") == 0);
}

TEST_CASE("every metric name in the grafana dashboard is exposed", "[metrics]") {
  auto m = start_metrics("n1");
  feed_everything(*m);
  std::set<std::string> exposed;
  for (const auto& x : parse_exposition(fetch_metrics(m->port())))
    exposed.insert(x.name);

  auto dashboard = read_file(UNDERSTUDY_DASHBOARD_PATH);
  std::regex name_re{"understudy_[a-zA-Z0-9_:]+"};
  std::set<std::string> used;
  for (std::sregex_iterator i{dashboard.begin(), dashboard.end(), name_re}, end; i != end; ++i)
    used.insert(i->str());
  REQUIRE_FALSE(used.empty());
  for (const auto& name : used) {
    INFO(name << " is used by the dashboard");
    CHECK(exposed.count(name) == 1);
  }
  // The panels the issue asks for.
  for (const char* name :
       {"understudy_restarts_total", "understudy_recovery_seconds_bucket",
        "understudy_checkpoint_bytes_total", "understudy_checkpoint_commit_seconds_bucket",
        "understudy_training_step_rate", "understudy_node_health"}) {
    INFO(name);
    CHECK(used.count(name) == 1);
  }
}
