#include "understudy/runtime/metrics.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <sstream>
#include <system_error>
#include <thread>
#include <utility>

#include <caf/error.hpp>
#include <caf/sec.hpp>

namespace understudy {

std::string to_string(peer_health x) {
  switch (x) {
    case peer_health::dead:
      return "dead";
    case peer_health::suspected:
      return "suspected";
    case peer_health::alive:
      return "alive";
  }
  return "unknown";
}

const std::vector<double>& metrics_duration_buckets() {
  static const std::vector<double> buckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                           0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                           1.0,    2.5,     5.0,    10.0};
  return buckets;
}

namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

double seconds_of(std::chrono::nanoseconds d) {
  return std::chrono::duration<double>(d).count();
}

/// A bounded label value for a rendered error: its name, the text before the
/// first ':' (describe() renders "name: context"), e.g. "runtime_error".
std::string reason_label(const std::string& reason) {
  auto end = reason.find(':');
  std::string name = reason.substr(0, end);
  auto first = name.find_first_not_of(" \t");
  auto last = name.find_last_not_of(" \t");
  if (first == std::string::npos)
    return "unknown";
  name = name.substr(first, last - first + 1);
  if (name.size() > 64)
    name.resize(64);
  return name;
}

/// The first word of a supervisor's action ("restart one_for_all" → "restart").
std::string action_label(const std::string& action) {
  auto word = action.substr(0, action.find(' '));
  return word.empty() ? "none" : word;
}

/// The child's path in the tree, e.g. "/root/job/worker-1".
std::string child_path(const supervision_event& ev) {
  if (ev.child.empty())
    return ev.supervisor;
  return ev.supervisor + "/" + ev.child;
}

/// Brings counter `c` from the source value `last` to `now` (a source value
/// that went down restarted from zero).
void advance(Counter& c, uint64_t& last, uint64_t now) {
  c.Increment(static_cast<double>(now >= last ? now - last : now));
  last = now;
}

/// Everything the metrics count, shared by node_metrics, its sinks and its
/// HTTP endpoint.
struct metrics_state {
  explicit metrics_state(const metrics_config& cfg)
      : node(cfg.node),
        rate_window(cfg.rate_window),
        registry(std::make_shared<prometheus::Registry>()),
        restarts(family<Counter>(prometheus::BuildCounter(), "understudy_restarts_total",
                                 "Children restarted, by child path and exit reason")),
        exits(family<Counter>(prometheus::BuildCounter(), "understudy_child_exits_total",
                              "Children that exited, by child path, reason and the "
                              "supervisor's action (restart, ignore, remove, escalate)")),
        hangs(family<Counter>(prometheus::BuildCounter(), "understudy_hangs_detected_total",
                              "Children killed for missing their liveness deadline")),
        start_failures(family<Counter>(prometheus::BuildCounter(),
                                       "understudy_start_failures_total",
                                       "Failed start or restart attempts, by child path")),
        escalations(family<Counter>(prometheus::BuildCounter(), "understudy_escalations_total",
                                    "Supervisors that exceeded their restart intensity")),
        recovery(family<Histogram>(prometheus::BuildHistogram(), "understudy_recovery_seconds",
                                   "Crash to the new incarnation serving, in seconds")
                     .Add({}, metrics_duration_buckets())),
        restores(family<Counter>(prometheus::BuildCounter(), "understudy_state_restores_total",
                                 "State loads of persistent children, by outcome "
                                 "(restored, fallback, fresh)")),
        restore_time(family<Histogram>(prometheus::BuildHistogram(),
                                       "understudy_state_restore_seconds",
                                       "Time to load a persistent child's state, in seconds")
                         .Add({}, metrics_duration_buckets())),
        checkpoints(family<Counter>(prometheus::BuildCounter(),
                                    "understudy_checkpoints_written_total",
                                    "Checkpoints (puts) committed to the state store")
                        .Add({})),
        commits(family<Counter>(prometheus::BuildCounter(), "understudy_checkpoint_commits_total",
                                "State store transactions (group commits)")
                    .Add({})),
        checkpoint_bytes(family<Counter>(prometheus::BuildCounter(),
                                         "understudy_checkpoint_bytes_total",
                                         "Bytes written to the state store")
                             .Add({})),
        versions_deleted(family<Counter>(prometheus::BuildCounter(),
                                         "understudy_checkpoint_versions_deleted_total",
                                         "Old state versions deleted by retention")
                             .Add({})),
        map_growths(family<Counter>(prometheus::BuildCounter(),
                                    "understudy_state_map_growths_total",
                                    "Times the state store's LMDB map grew")
                        .Add({})),
        commit_latency(family<Histogram>(prometheus::BuildHistogram(),
                                         "understudy_checkpoint_commit_seconds",
                                         "Checkpoint put to durable, in seconds")
                           .Add({}, metrics_duration_buckets())),
        steps(family<Counter>(prometheus::BuildCounter(), "understudy_training_steps_total",
                              "Training steps committed (the highest committed step)")
                  .Add({})),
        step(family<Gauge>(prometheus::BuildGauge(), "understudy_training_step",
                           "The last committed training step")
                 .Add({})),
        step_rate(family<Gauge>(prometheus::BuildGauge(), "understudy_training_step_rate",
                                "Training steps committed per second over the rate window")
                      .Add({})),
        health(family<Gauge>(prometheus::BuildGauge(), "understudy_node_health",
                             "Health of each peer node: 1 alive, 0.5 suspected, 0 dead")),
        up(family<Gauge>(prometheus::BuildGauge(), "understudy_node_up",
                         "1 while this node is serving")
               .Add({})),
        failovers(family<Counter>(prometheus::BuildCounter(), "understudy_failovers_total",
                                  "Failovers this node performed, by the failed peer")) {
    up.Set(1);
  }

  template <class T, class Builder>
  Family<T>& family(Builder&& b, const char* name, const char* help) {
    return b.Name(name).Help(help).Labels({{"node", node}}).Register(*registry);
  }

  void on_event(const supervision_event& ev) {
    switch (ev.kind) {
      case event_kind::child_exited: {
        auto path = child_path(ev);
        auto reason = reason_label(ev.reason);
        auto action = action_label(ev.action);
        exits.Add({{"child", path}, {"reason", reason}, {"action", action}}).Increment();
        if (action == "restart")
          restarts.Add({{"child", path}, {"reason", reason}}).Increment();
        break;
      }
      case event_kind::child_restarted:
        recovery.Observe(seconds_of(ev.duration));
        break;
      case event_kind::hang_detected:
        hangs.Add({{"child", child_path(ev)}}).Increment();
        break;
      case event_kind::start_failed:
        start_failures.Add({{"child", child_path(ev)}}).Increment();
        break;
      case event_kind::intensity_exceeded:
        escalations.Add({{"supervisor", ev.supervisor}}).Increment();
        break;
      case event_kind::state_restored:
        restores.Add({{"outcome", "restored"}}).Increment();
        restore_time.Observe(seconds_of(ev.duration));
        break;
      case event_kind::state_fallback:
        restores.Add({{"outcome", "fallback"}}).Increment();
        restore_time.Observe(seconds_of(ev.duration));
        break;
      case event_kind::state_fresh:
        restores.Add({{"outcome", "fresh"}}).Increment();
        break;
      default:
        break;
    }
  }

  void update_from(const state_store_stats& s) {
    std::lock_guard<std::mutex> guard{stats_mtx};
    advance(checkpoints, last_stats.puts, s.puts);
    advance(commits, last_stats.commits, s.commits);
    advance(checkpoint_bytes, last_stats.bytes_written, s.bytes_written);
    advance(versions_deleted, last_stats.versions_deleted, s.versions_deleted);
    advance(map_growths, last_stats.map_growths, s.map_growths);
  }

  void on_step(uint64_t committed, std::chrono::steady_clock::time_point now) {
    std::lock_guard<std::mutex> guard{step_mtx};
    if (committed > high_step) {
      steps.Increment(static_cast<double>(committed - high_step));
      high_step = committed;
    }
    step.Set(static_cast<double>(committed));
    if (!samples.empty() && (committed < samples.back().second || now < samples.back().first))
      samples.clear(); // A rollback (or a clock going back) starts a new rate.
    samples.emplace_back(now, committed);
    // Keep one sample at or before the window's start as the base.
    while (samples.size() > 2 && samples[1].first <= now - rate_window)
      samples.pop_front();
    if (samples.size() < 2) {
      step_rate.Set(0);
      return;
    }
    auto dt = std::chrono::duration<double>(samples.back().first - samples.front().first).count();
    auto ds = static_cast<double>(samples.back().second - samples.front().second);
    step_rate.Set(dt > 0 ? ds / dt : 0.0);
  }

  /// Called at each scrape: pulls the store's counters, zeroes a stale rate.
  void refresh() {
    std::function<state_store_stats()> fn;
    {
      std::lock_guard<std::mutex> guard{source_mtx};
      fn = state_source;
    }
    if (fn)
      update_from(fn());
    std::lock_guard<std::mutex> guard{step_mtx};
    if (!samples.empty() && samples.back().first < std::chrono::steady_clock::now() - rate_window)
      step_rate.Set(0);
  }

  std::vector<prometheus::MetricFamily> collect() {
    refresh();
    return registry->Collect();
  }

  const std::string node;
  const std::chrono::steady_clock::duration rate_window;
  std::shared_ptr<prometheus::Registry> registry;
  Family<Counter>& restarts;
  Family<Counter>& exits;
  Family<Counter>& hangs;
  Family<Counter>& start_failures;
  Family<Counter>& escalations;
  Histogram& recovery;
  Family<Counter>& restores;
  Histogram& restore_time;
  Counter& checkpoints;
  Counter& commits;
  Counter& checkpoint_bytes;
  Counter& versions_deleted;
  Counter& map_growths;
  Histogram& commit_latency;
  Counter& steps;
  Gauge& step;
  Gauge& step_rate;
  Family<Gauge>& health;
  Gauge& up;
  Family<Counter>& failovers;

  std::mutex stats_mtx;
  state_store_stats last_stats;

  std::mutex step_mtx;
  uint64_t high_step = 0;
  std::deque<std::pair<std::chrono::steady_clock::time_point, uint64_t>> samples;

  std::mutex source_mtx;
  std::function<state_store_stats()> state_source;
};

/// The event sink node_metrics hands out.
class metrics_sink : public event_sink {
public:
  explicit metrics_sink(std::shared_ptr<metrics_state> st) : st_(std::move(st)) {}
  void on_event(const supervision_event& ev) override { st_->on_event(ev); }

private:
  std::shared_ptr<metrics_state> st_;
};

/// `host:port`, IPv6 addresses in brackets.
std::string host_port(const std::string& host, uint16_t port) {
  bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string errno_text(int code) {
  return std::strerror(code);
}

/// How long a client may take to send its request.
constexpr int request_timeout_ms = 5000;

/// Requests larger than this are refused.
constexpr size_t max_request_size = 8192;

/// A minimal HTTP/1.1 server for `/metrics`: one thread of its own, one
/// connection at a time, `Connection: close`. Not civetweb (prometheus-cpp's
/// Exposer): civetweb creates its threads with 100 KiB stacks, which cannot
/// hold the static TLS of a process that links cuBLAS (pthread_create fails
/// with EINVAL), and our node processes do.
class http_endpoint {
public:
  using body_fn = std::function<std::string()>;

  /// Binds `host:port`, listens and starts the server thread.
  static caf::expected<std::unique_ptr<http_endpoint>> start(const std::string& host, uint16_t port,
                                                             body_fn body) {
    auto where = host_port(host, port);
    auto fail = [&](const std::string& why) {
      return caf::make_error(caf::sec::cannot_open_port,
                             "metrics endpoint cannot bind " + where + ": " + why);
    };
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    auto service = std::to_string(port);
    if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0)
      return fail(::gai_strerror(rc));
    std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard{res, ::freeaddrinfo};
    int fd = ::socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
    if (fd < 0)
      return fail(errno_text(errno));
    // Lets a restarted node take its port back from connections in TIME_WAIT;
    // a port another socket listens on stays refused.
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 16) != 0) {
      int code = errno;
      ::close(fd);
      return fail(errno_text(code));
    }
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      int code = errno;
      ::close(fd);
      return fail(errno_text(code));
    }
    uint16_t bound = addr.ss_family == AF_INET6
                         ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                         : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) {
      int code = errno;
      ::close(fd);
      return fail(errno_text(code));
    }
    std::unique_ptr<http_endpoint> ep{new http_endpoint(fd, wake, bound, std::move(body))};
    try {
      ep->thread_ = std::thread{[p = ep.get()] { p->run(); }};
    } catch (const std::system_error& e) {
      return fail(std::string{"cannot start the server thread: "} + e.what());
    }
    return ep;
  }

  ~http_endpoint() {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof(one));
    if (thread_.joinable())
      thread_.join();
    ::close(listen_fd_);
    ::close(wake_fd_);
  }

  http_endpoint(const http_endpoint&) = delete;
  http_endpoint& operator=(const http_endpoint&) = delete;

  uint16_t port() const noexcept { return port_; }

private:
  http_endpoint(int listen_fd, int wake_fd, uint16_t port, body_fn body)
      : listen_fd_(listen_fd), wake_fd_(wake_fd), port_(port), body_(std::move(body)) {}

  /// Waits until `fd` has `events` or the endpoint stops; false when stopping,
  /// on timeout or on a poll error.
  bool wait_for(int fd, short events, int timeout_ms) {
    pollfd fds[2] = {{fd, events, 0}, {wake_fd_, POLLIN, 0}};
    for (;;) {
      int rc = ::poll(fds, 2, timeout_ms);
      if (rc < 0 && errno == EINTR)
        continue;
      return rc > 0 && fds[1].revents == 0 && fds[0].revents != 0;
    }
  }

  bool stopping() {
    pollfd p{wake_fd_, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }

  void run() {
    while (!stopping()) {
      if (!wait_for(listen_fd_, POLLIN, -1))
        continue;
      int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) {
        // Out of descriptors: back off instead of spinning on a ready socket.
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
          wait_for(wake_fd_, POLLIN, 100);
        continue;
      }
      serve(client);
      ::close(client);
    }
  }

  void serve(int client) {
    std::string request;
    char buf[2048];
    while (request.find("\r\n\r\n") == std::string::npos &&
           request.find("\n\n") == std::string::npos) {
      if (request.size() > max_request_size) {
        reply(client, "431 Request Header Fields Too Large", "request too large\n", true);
        return;
      }
      if (!wait_for(client, POLLIN, request_timeout_ms))
        return;
      auto n = ::recv(client, buf, sizeof(buf), 0);
      if (n <= 0)
        return;
      request.append(buf, static_cast<size_t>(n));
    }
    auto line = request.substr(0, request.find_first_of("\r\n"));
    auto sp1 = line.find(' ');
    auto sp2 = line.find(' ', sp1 == std::string::npos ? sp1 : sp1 + 1);
    if (sp1 == std::string::npos || sp2 == std::string::npos) {
      reply(client, "400 Bad Request", "bad request\n", true);
      return;
    }
    auto method = line.substr(0, sp1);
    auto target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    bool head = method == "HEAD";
    if (method != "GET" && !head) {
      reply(client, "405 Method Not Allowed", "only GET and HEAD\n", !head);
      return;
    }
    if (target != "/metrics") {
      reply(client, "404 Not Found", "metrics are at /metrics\n", !head);
      return;
    }
    std::string body;
    try {
      body = body_();
    } catch (const std::exception& e) {
      reply(client, "500 Internal Server Error", std::string{e.what()} + "\n", !head);
      return;
    }
    reply(client, "200 OK", body, !head, "text/plain; version=0.0.4; charset=utf-8");
  }

  void reply(int client, const std::string& status, const std::string& body, bool with_body,
             const char* type = "text/plain; charset=utf-8") {
    std::string out = "HTTP/1.1 " + status + "\r\nContent-Type: " + type +
                      "\r\nContent-Length: " + std::to_string(body.size()) +
                      "\r\nConnection: close\r\n\r\n";
    if (with_body)
      out += body;
    size_t sent = 0;
    while (sent < out.size()) {
      if (!wait_for(client, POLLOUT, request_timeout_ms))
        return;
      auto n = ::send(client, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return;
      sent += static_cast<size_t>(n);
    }
    ::shutdown(client, SHUT_WR);
  }

  int listen_fd_;
  int wake_fd_;
  uint16_t port_;
  body_fn body_;
  std::thread thread_;
};

std::string serialize(const std::vector<prometheus::MetricFamily>& families) {
  std::ostringstream out;
  prometheus::TextSerializer{}.Serialize(out, families);
  return out.str();
}

} // namespace

struct node_metrics::impl {
  metrics_config cfg;
  std::shared_ptr<metrics_state> st;
  /// Declared last: stops serving before the rest goes.
  std::unique_ptr<http_endpoint> endpoint;
};

caf::expected<std::unique_ptr<node_metrics>> node_metrics::start(metrics_config cfg) {
  if (cfg.node.empty())
    return caf::make_error(caf::sec::invalid_argument,
                           std::string{"node_metrics: the node name is empty"});
  auto ptr = std::make_unique<impl>();
  ptr->st = std::make_shared<metrics_state>(cfg);
  auto ep =
      http_endpoint::start(cfg.host, cfg.port, [st = ptr->st] { return serialize(st->collect()); });
  if (!ep)
    return std::move(ep.error());
  ptr->endpoint = std::move(*ep);
  ptr->cfg = std::move(cfg);
  return std::unique_ptr<node_metrics>{new node_metrics(std::move(ptr))};
}

node_metrics::node_metrics(std::unique_ptr<impl> ptr) : impl_(std::move(ptr)) {}

node_metrics::~node_metrics() = default;

uint16_t node_metrics::port() const noexcept {
  return impl_->endpoint->port();
}

std::string node_metrics::url() const {
  return "http://" + host_port(impl_->cfg.host, port()) + "/metrics";
}

const std::string& node_metrics::node() const noexcept {
  return impl_->cfg.node;
}

std::shared_ptr<event_sink> node_metrics::sink() const {
  return std::make_shared<metrics_sink>(impl_->st);
}

void node_metrics::on_event(const supervision_event& ev) {
  impl_->st->on_event(ev);
}

void node_metrics::update_from(const state_store_stats& s) {
  impl_->st->update_from(s);
}

void node_metrics::set_state_source(std::function<state_store_stats()> fn) {
  std::lock_guard<std::mutex> guard{impl_->st->source_mtx};
  impl_->st->state_source = std::move(fn);
}

void node_metrics::observe_commit_latency(std::chrono::nanoseconds latency) {
  impl_->st->commit_latency.Observe(seconds_of(latency));
}

void node_metrics::on_step(uint64_t committed_step, std::chrono::steady_clock::time_point now) {
  impl_->st->on_step(committed_step, now);
}

void node_metrics::set_peer_health(const std::string& peer, peer_health level) {
  switch (level) {
    case peer_health::dead:
      set_peer_health(peer, 0.0);
      break;
    case peer_health::suspected:
      set_peer_health(peer, 0.5);
      break;
    case peer_health::alive:
      set_peer_health(peer, 1.0);
      break;
  }
}

void node_metrics::set_peer_health(const std::string& peer, double level) {
  impl_->st->health.Add({{"peer", peer}}).Set(std::clamp(level, 0.0, 1.0));
}

void node_metrics::on_failover(const std::string& peer) {
  impl_->st->failovers.Add({{"peer", peer}}).Increment();
}

void node_metrics::set_up(bool up) {
  impl_->st->up.Set(up ? 1 : 0);
}

std::string node_metrics::scrape() const {
  return serialize(impl_->st->collect());
}

} // namespace understudy
