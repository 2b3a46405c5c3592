#pragma once
// Scraping node_metrics in tests: a small HTTP client, a parser of the
// Prometheus text format, and supervision events to feed.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "understudy/core/errors.hpp"
#include "understudy/metrics/metrics.hpp"

namespace metrics_test {

using namespace understudy;
using namespace std::chrono_literals;

/// A minimal blocking HTTP/1.0 client: GET `path` from 127.0.0.1:`port`, return
/// the whole response (status line, headers, body). Fails the test on socket errors.
inline std::string http_get(uint16_t port, const std::string& path) {
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
inline std::string fetch_metrics(uint16_t port) {
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

inline std::vector<sample> parse_exposition(const std::string& text) {
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
inline std::vector<sample> find_all(const std::vector<sample>& xs, const std::string& name,
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
inline double value_of(const std::vector<sample>& xs, const std::string& name,
                       const std::map<std::string, std::string>& labels = {}) {
  auto found = find_all(xs, name, labels);
  INFO(name);
  REQUIRE(found.size() == 1);
  return found.front().value;
}

/// The count of histogram `name`'s bucket with upper bound `le`.
inline double bucket_of(const std::vector<sample>& xs, const std::string& name, double le) {
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

inline std::unique_ptr<node_metrics> start_metrics(const std::string& node) {
  metrics_config cfg;
  cfg.node = node;
  cfg.host = "127.0.0.1";
  cfg.port = 0;
  auto m = node_metrics::start(cfg);
  if (!m)
    FAIL("node_metrics::start: " << describe(m.error()));
  return std::move(*m);
}

inline supervision_event event(event_kind kind, std::string child, std::string reason,
                               std::string action, caf::timespan duration = caf::timespan{0}) {
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
inline void feed_everything(node_metrics& m) {
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
  m.set_peer_health("n2", peer_health::alive);
  m.set_peer_health("n3", peer_health::suspected);
  m.set_peer_health("n4", peer_health::dead);
  m.on_failover("n4");
}

inline std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  REQUIRE(in.good());
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

} // namespace metrics_test
