// Node metrics: what a Prometheus scrape of /metrics shows after supervision
// events, state store counters and peer health, fetched over real HTTP on
// loopback; metrics a component registers; binding errors. The training
// metrics and the Grafana dashboard: tests/actors/training_metrics_test.cpp.

#include "understudy/metrics/metrics.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
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

#include "support/metrics_test_util.hpp"
#include "understudy/core/errors.hpp"

using namespace understudy;
using namespace std::chrono_literals;

namespace {

using namespace metrics_test;

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

/// Sends `request` to 127.0.0.1:`port` and returns all the server sends until it closes.
std::string exchange(uint16_t port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0)
    out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

} // namespace

TEST_CASE("node metrics serve restarts recovery checkpoints and peer health over http",
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

  CHECK(value_of(xs, "understudy_node_health", {{"peer", "n2"}}) == 1.0);
  CHECK(value_of(xs, "understudy_node_health", {{"peer", "n3"}}) == 0.5);
  CHECK(value_of(xs, "understudy_node_health", {{"peer", "n4"}}) == 0.0);
  CHECK(value_of(xs, "understudy_node_up", {{"node", "n1"}}) == 1);
  CHECK(value_of(xs, "understudy_cluster_leader", {{"node", "n1"}}) == 0);
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
  m->set_leader(true);
  auto again = parse_exposition(fetch_metrics(m->port()));
  CHECK(value_of(again, "understudy_cluster_leader") == 1);
  CHECK(value_of(again, "understudy_node_health", {{"peer", "n3"}}) == 1.0);
  CHECK(value_of(again, "understudy_node_up") == 0);
}

TEST_CASE("a supervisor's escalations and a child's hangs are exposed at zero from their start",
          "[metrics]") {
  auto m = start_metrics("n1");
  auto xs = parse_exposition(fetch_metrics(m->port()));
  CHECK(find_all(xs, "understudy_escalations_total").empty());
  CHECK(find_all(xs, "understudy_hangs_detected_total").empty());
  m->sink()->on_event(event(event_kind::supervisor_started, "", "", "serving"));
  m->sink()->on_event(event(event_kind::child_started, "worker-1", "", "serving"));
  xs = parse_exposition(fetch_metrics(m->port()));
  CHECK(value_of(xs, "understudy_escalations_total", {{"supervisor", "/root/job"}}) == 0);
  CHECK(value_of(xs, "understudy_hangs_detected_total", {{"child", "/root/job/worker-1"}}) == 0);
  m->sink()->on_event(event(event_kind::intensity_exceeded, "worker-1", "too many", "escalate"));
  m->sink()->on_event(event(event_kind::hang_detected, "worker-1", "hang", "restart"));
  xs = parse_exposition(fetch_metrics(m->port()));
  CHECK(value_of(xs, "understudy_escalations_total", {{"supervisor", "/root/job"}}) == 1);
  CHECK(value_of(xs, "understudy_hangs_detected_total", {{"child", "/root/job/worker-1"}}) == 1);
  CHECK(find_all(xs, "understudy_escalations_total").size() == 1);
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

TEST_CASE("the metrics endpoint answers HEAD without a body and other methods with 405",
          "[metrics]") {
  auto m = start_metrics("n1");
  auto head = exchange(m->port(), "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  INFO(head);
  CHECK(head.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(head.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n") !=
        std::string::npos);
  CHECK(head.find("Content-Length: ") != std::string::npos);
  CHECK(head.size() == head.find("\r\n\r\n") + 4); // no body
  auto post = exchange(m->port(),
                       "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                       "Connection: close\r\n\r\n");
  INFO(post);
  CHECK(post.rfind("HTTP/1.1 405", 0) == 0);
  CHECK(post.find("Allow: GET, HEAD\r\n") != std::string::npos);
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

TEST_CASE("a component's counters and gauges are exposed at zero from registration", "[metrics]") {
  auto m = start_metrics("n1");
  auto done = m->add_counter("understudy_probe_done_total", "Probes done");
  auto level = m->add_gauge("understudy_probe_level", "The probe's level");
  int scrapes = 0;
  m->on_scrape([&scrapes, level] {
    ++scrapes;
    level->set(level->value() + 1);
  });
  auto xs = parse_exposition(fetch_metrics(m->port()));
  CHECK(scrapes == 1);
  CHECK(value_of(xs, "understudy_probe_done_total", {{"node", "n1"}}) == 0);
  CHECK(value_of(xs, "understudy_probe_level", {{"node", "n1"}}) == 1);
  done->increment();
  done->increment(2.5);
  CHECK(done->value() == 3.5);
  // The same name again is the same counter.
  auto again = m->add_counter("understudy_probe_done_total", "Probes done");
  again->increment();
  xs = parse_exposition(m->scrape());
  CHECK(scrapes == 2);
  CHECK(value_of(xs, "understudy_probe_done_total") == 4.5);
  CHECK(value_of(xs, "understudy_probe_level") == 2);
  // A metric outlives its node_metrics.
  m.reset();
  done->increment();
  CHECK(done->value() == 5.5);
}

TEST_CASE("a client that trickles its request neither blocks other scrapes nor stays open",
          "[metrics]") {
  using clock_type = std::chrono::steady_clock;
  auto m = start_metrics("n1");
  int slow = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(slow >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(m->port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(slow, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  auto connected = clock_type::now();
  REQUIRE(::send(slow, "G", 1, MSG_NOSIGNAL) == 1);
  // A normal scrape meanwhile is answered at once, not after the slow client.
  auto asked = clock_type::now();
  CHECK(fetch_metrics(m->port()).find("understudy_node_up") != std::string::npos);
  CHECK(clock_type::now() - asked < 1s);
  // The slow client sends a byte each time 300 ms pass without the server
  // closing: well within any per-read timeout, so only a deadline on the
  // whole request (2 s) closes it.
  bool closed = false;
  while (!closed && clock_type::now() - connected < 10s) {
    pollfd p{slow, POLLIN, 0};
    if (::poll(&p, 1, 300) == 0) {
      if (::send(slow, "E", 1, MSG_NOSIGNAL) != 1)
        closed = true;
      continue;
    }
    char buf[256];
    auto n = ::recv(slow, buf, sizeof buf, 0);
    closed = n <= 0;
    CHECK(n <= 0); // no response to a request that never completed
  }
  auto open_for = clock_type::now() - connected;
  ::close(slow);
  CHECK(closed);
  CHECK(open_for >= 1500ms);
  CHECK(open_for < 5s);
}
