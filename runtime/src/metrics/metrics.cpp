#include "understudy/metrics/metrics.hpp"

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
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

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
        registry(std::make_shared<prometheus::Registry>()),
        restarts(family<Counter>(prometheus::BuildCounter(), "understudy_restarts_total",
                                 "Children restarted, by child path and exit reason")),
        exits(family<Counter>(prometheus::BuildCounter(), "understudy_child_exits_total",
                              "Children that exited, by child path, reason and the "
                              "supervisor's action (restart, ignore, remove, escalate)")),
        hangs(family<Counter>(prometheus::BuildCounter(), "understudy_hangs_detected_total",
                              "Children killed for missing their liveness deadline")),
        stragglers(family<Counter>(prometheus::BuildCounter(),
                                   "understudy_stragglers_restarted_total",
                                   "Training workers restarted for staying far behind the others")),
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
        health(family<Gauge>(prometheus::BuildGauge(), "understudy_node_health",
                             "Health of each peer node: 1 alive, 0.5 suspected, 0 dead")),
        up(family<Gauge>(prometheus::BuildGauge(), "understudy_node_up",
                         "1 while this node is serving")
               .Add({})),
        leader(family<Gauge>(prometheus::BuildGauge(), "understudy_cluster_leader",
                             "1 while this node leads the cluster (runs the tree)")
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
      case event_kind::supervisor_started:
        // At zero from the start, so that a dashboard or an alert finds the series
        // before the first escalation.
        escalations.Add({{"supervisor", ev.supervisor}});
        break;
      case event_kind::child_started:
        hangs.Add({{"child", child_path(ev)}});
        break;
      case event_kind::child_restarted:
        recovery.Observe(seconds_of(ev.duration));
        break;
      case event_kind::hang_detected:
        hangs.Add({{"child", child_path(ev)}}).Increment();
        break;
      case event_kind::straggler_detected:
        stragglers.Add({{"child", child_path(ev)}}).Increment();
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

  /// Called at each scrape: pulls the store's counters, runs the components' hooks.
  void refresh() {
    std::function<state_store_stats()> fn;
    std::vector<std::function<void()>> hooks;
    {
      std::lock_guard<std::mutex> guard{source_mtx};
      fn = state_source;
      hooks = scrape_hooks;
    }
    if (fn)
      update_from(fn());
    for (const auto& hook : hooks)
      hook();
  }

  std::vector<prometheus::MetricFamily> collect() {
    refresh();
    return registry->Collect();
  }

  const std::string node;
  std::shared_ptr<prometheus::Registry> registry;
  Family<Counter>& restarts;
  Family<Counter>& exits;
  Family<Counter>& hangs;
  Family<Counter>& stragglers;
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
  Family<Gauge>& health;
  Gauge& up;
  Gauge& leader;
  Family<Counter>& failovers;

  std::mutex stats_mtx;
  state_store_stats last_stats;

  std::mutex source_mtx;
  std::function<state_store_stats()> state_source;
  std::vector<std::function<void()>> scrape_hooks;
};

/// A counter a component registered; keeps the registry it lives in.
class registered_counter final : public metric_counter {
public:
  registered_counter(std::shared_ptr<metrics_state> st, Counter& c) : st_(std::move(st)), c_(&c) {}
  void increment(double by) override { c_->Increment(by); }
  double value() const override { return c_->Value(); }

private:
  std::shared_ptr<metrics_state> st_;
  Counter* c_;
};

/// A gauge a component registered; keeps the registry it lives in.
class registered_gauge final : public metric_gauge {
public:
  registered_gauge(std::shared_ptr<metrics_state> st, Gauge& g) : st_(std::move(st)), g_(&g) {}
  void set(double x) override { g_->Set(x); }
  double value() const override { return g_->Value(); }

private:
  std::shared_ptr<metrics_state> st_;
  Gauge* g_;
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

using server_clock = std::chrono::steady_clock;

/// How long a client may take to send its whole request, however it spreads
/// the bytes: a client that trickles them is closed when this runs out.
constexpr auto request_deadline = std::chrono::seconds(2);

/// How long a client may take to read its whole response.
constexpr auto reply_deadline = std::chrono::seconds(5);

/// Requests larger than this are refused.
constexpr size_t max_request_size = 8192;

/// Connections served at once; more wait in the listen backlog.
constexpr size_t max_connections = 32;

/// A minimal HTTP/1.1 server for `/metrics`: one thread of its own that
/// serves up to `max_connections` clients at once (one poll loop), each with a
/// deadline for its request and one for its response, `Connection: close`.
/// Not civetweb (prometheus-cpp's Exposer): civetweb creates its threads with
/// 100 KiB stacks, which cannot hold the static TLS of a process that links
/// cuBLAS (pthread_create fails with EINVAL), and our node processes do.
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
  /// One client: its request as far as it came, then the response being sent.
  struct connection {
    int fd;
    server_clock::time_point deadline;
    std::string in;
    std::string out;
    size_t sent = 0;
    bool replying = false;
  };

  http_endpoint(int listen_fd, int wake_fd, uint16_t port, body_fn body)
      : listen_fd_(listen_fd), wake_fd_(wake_fd), port_(port), body_(std::move(body)) {}

  void run() {
    std::vector<connection> conns;
    auto accept_paused_until = server_clock::time_point{};
    std::vector<pollfd> fds;
    for (;;) {
      auto now = server_clock::now();
      bool accepting = conns.size() < max_connections && now >= accept_paused_until;
      fds.clear();
      fds.push_back({wake_fd_, POLLIN, 0});
      fds.push_back({accepting ? listen_fd_ : -1, POLLIN, 0});
      auto wake_at = server_clock::time_point::max();
      if (!accepting && conns.size() < max_connections)
        wake_at = accept_paused_until;
      for (const auto& c : conns) {
        fds.push_back({c.fd, static_cast<short>(c.replying ? POLLOUT : POLLIN), 0});
        wake_at = std::min(wake_at, c.deadline);
      }
      int timeout_ms = -1;
      if (wake_at != server_clock::time_point::max())
        timeout_ms = static_cast<int>(std::max<int64_t>(
            0, std::chrono::ceil<std::chrono::milliseconds>(wake_at - now).count()));
      int rc = ::poll(fds.data(), fds.size(), timeout_ms);
      if (rc < 0 && errno != EINTR)
        break;
      if (rc > 0 && fds[0].revents != 0)
        break;
      now = server_clock::now();
      for (size_t i = 0; i < conns.size(); ++i)
        if (rc > 0 && fds[i + 2].revents != 0)
          step(conns[i], now);
      // Closed connections and those past their deadline go.
      auto done = [&](connection& c) {
        if (c.fd >= 0 && now < c.deadline)
          return false;
        if (c.fd >= 0)
          ::close(c.fd);
        return true;
      };
      conns.erase(std::remove_if(conns.begin(), conns.end(), done), conns.end());
      if (rc > 0 && fds[1].revents != 0) {
        int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (client >= 0)
          conns.push_back(connection{client, now + request_deadline, {}, {}, 0, false});
        // Out of descriptors: back off instead of spinning on a ready socket.
        else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
          accept_paused_until = now + std::chrono::milliseconds(100);
      }
    }
    for (auto& c : conns)
      if (c.fd >= 0)
        ::close(c.fd);
  }

  /// Reads from or writes to `c`, which poll found ready; sets `c.fd` to -1
  /// after closing it when it is done.
  void step(connection& c, server_clock::time_point now) {
    if (c.replying) {
      auto n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
        return;
      if (n > 0)
        c.sent += static_cast<size_t>(n);
      if (n > 0 && c.sent < c.out.size())
        return;
      if (n > 0)
        ::shutdown(c.fd, SHUT_WR);
      ::close(c.fd);
      c.fd = -1;
      return;
    }
    char buf[2048];
    auto n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (n <= 0) {
      ::close(c.fd);
      c.fd = -1;
      return;
    }
    c.in.append(buf, static_cast<size_t>(n));
    if (c.in.find("\r\n\r\n") != std::string::npos || c.in.find("\n\n") != std::string::npos)
      c.out = respond(c.in);
    else if (c.in.size() > max_request_size)
      c.out = reply("431 Request Header Fields Too Large", "request too large\n", true);
    else
      return;
    c.replying = true;
    c.deadline = now + reply_deadline;
  }

  /// The response to the complete request `request`.
  std::string respond(const std::string& request) {
    auto line = request.substr(0, request.find_first_of("\r\n"));
    auto sp1 = line.find(' ');
    auto sp2 = line.find(' ', sp1 == std::string::npos ? sp1 : sp1 + 1);
    if (sp1 == std::string::npos || sp2 == std::string::npos)
      return reply("400 Bad Request", "bad request\n", true);
    auto method = line.substr(0, sp1);
    auto target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    bool head = method == "HEAD";
    if (method != "GET" && !head)
      return reply("405 Method Not Allowed", "only GET and HEAD\n", !head);
    if (target != "/metrics")
      return reply("404 Not Found", "metrics are at /metrics\n", !head);
    std::string body;
    try {
      body = body_();
    } catch (const std::exception& e) {
      return reply("500 Internal Server Error", std::string{e.what()} + "\n", !head);
    }
    return reply("200 OK", body, !head, "text/plain; version=0.0.4; charset=utf-8");
  }

  static std::string reply(const std::string& status, const std::string& body, bool with_body,
                           const char* type = "text/plain; charset=utf-8") {
    std::string out = "HTTP/1.1 " + status + "\r\nContent-Type: " + type +
                      "\r\nContent-Length: " + std::to_string(body.size()) +
                      "\r\nConnection: close\r\n\r\n";
    if (with_body)
      out += body;
    return out;
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

std::shared_ptr<metric_counter> node_metrics::add_counter(const std::string& name,
                                                          const std::string& help) {
  auto& st = *impl_->st;
  auto& c = st.family<Counter>(prometheus::BuildCounter(), name.c_str(), help.c_str()).Add({});
  return std::make_shared<registered_counter>(impl_->st, c);
}

std::shared_ptr<metric_gauge> node_metrics::add_gauge(const std::string& name,
                                                      const std::string& help) {
  auto& st = *impl_->st;
  auto& g = st.family<Gauge>(prometheus::BuildGauge(), name.c_str(), help.c_str()).Add({});
  return std::make_shared<registered_gauge>(impl_->st, g);
}

std::shared_ptr<metric_gauge> node_metrics::add_gauge(
    const std::string& name, const std::string& help,
    const std::map<std::string, std::string>& labels) {
  auto& st = *impl_->st;
  auto& g = st.family<Gauge>(prometheus::BuildGauge(), name.c_str(), help.c_str()).Add(labels);
  return std::make_shared<registered_gauge>(impl_->st, g);
}

void node_metrics::on_scrape(std::function<void()> fn) {
  std::lock_guard<std::mutex> guard{impl_->st->source_mtx};
  impl_->st->scrape_hooks.push_back(std::move(fn));
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

void node_metrics::set_leader(bool leads) {
  impl_->st->leader.Set(leads ? 1 : 0);
}

std::string node_metrics::scrape() const {
  return serialize(impl_->st->collect());
}

} // namespace understudy
