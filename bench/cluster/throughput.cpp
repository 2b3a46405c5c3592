// Figure 5 of bench_cluster: cross-node message throughput.
//
// Two actor systems in this process talk over loopback TCP, as two nodes would: one
// publishes a sink actor, the other connects to it and streams std::string payloads of
// 64 B and 64 KiB at it. Four sides, each a pair of fresh systems per round, in rotated
// order:
//   raw   CAF alone: default actor_system_config with the middleman, middleman().publish
//         and middleman().remote_actor; no understudy code (the baseline).
//   plain understudy nodes without [cluster.security] (each a cluster of one: a cluster of
//         several talks TLS only): runtimes whose configure calls
//         cluster_node::configure (heartbeats and connection timeout on), publish_at and
//         connect_to_peer.
//   tls   the same with [cluster.security]: certificates from create_cluster_certificates,
//         CAF's openssl module, mutual TLS.
//   raw_polling  raw CAF again, with the idle polling understudy::runtime configures (an
//         idle thread polls every 50 us for 500 us, CAF's default for 25 ms): on a machine
//         with few cores that alone moves throughput, so the notes show it, to tell the
//         scheduler's share of a ratio from the node code's. Not a figure of its own.
// The sender keeps two windows of messages in flight: each window ends with a sync
// message the sink acknowledges, so the sender never runs more than two windows ahead
// and the time covers delivery, not just queueing. Connecting and one warm-up window
// are not timed.

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "cluster_bench.hpp"
#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/state/runtime.hpp"

namespace cluster_bench {

namespace {

using namespace understudy;

using sync_atom = caf::atom_constant<caf::atom("bc_sync")>;
using ack_atom = caf::atom_constant<caf::atom("bc_ack")>;

/// Counts nothing, copies nothing: receiving (deserializing) the payload is the work.
caf::behavior sink_actor(caf::event_based_actor* self) {
  return {
      [](const std::string&) {
        // Received.
      },
      [self](sync_atom, uint64_t seq) {
        // An explicit send: the sender is a blocking actor on the other node waiting for it.
        self->send(caf::actor_cast<caf::actor>(self->current_sender()), ack_atom::value, seq);
      },
  };
}

/// One payload size of the comparison.
struct load_shape {
  std::string name;
  size_t bytes;
  size_t per_window;
  size_t windows;
};

/// Streams `shape` at `sink` from `sys`; the seconds it took, or an error.
std::optional<double> pump(caf::actor_system& sys, const caf::actor& sink, const load_shape& shape,
                           std::string& error) {
  std::string payload(shape.bytes, 'x');
  caf::scoped_actor self{sys};
  auto send_window = [&](uint64_t seq) {
    for (size_t i = 0; i < shape.per_window; ++i)
      self->send(sink, payload);
    self->send(sink, sync_atom::value, seq);
  };
  auto await_ack = [&](uint64_t seq) {
    bool ok = false;
    self->receive([&](ack_atom, uint64_t got) { ok = got == seq; },
                  caf::after(std::chrono::seconds(30)) >> [] {});
    if (!ok)
      error = "no acknowledgement of window " + std::to_string(seq) + " within 30 s";
    return ok;
  };
  send_window(0);
  if (!await_ack(0))
    return std::nullopt;
  auto t0 = clock_type::now();
  send_window(1);
  if (shape.windows > 1)
    send_window(2);
  for (uint64_t k = 1; k <= shape.windows; ++k) {
    if (!await_ack(k))
      return std::nullopt;
    if (k + 2 <= shape.windows)
      send_window(k + 2);
  }
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// A connected pair of systems: the client's proxy of the server's sink.
struct connection {
  virtual ~connection() = default;
  virtual caf::actor_system& client() = 0;
  caf::actor sink;
  caf::actor proxy;
};

/// Raw CAF: nothing but the middleman, CAF's defaults.
struct raw_connection : connection {
  caf::actor_system_config server_cfg, client_cfg;
  std::unique_ptr<caf::actor_system> server_sys, client_sys;

  /// With `runtime_polling`, the scheduler settings of understudy::runtime's default
  /// runtime_config (idle_poll 500 us, polled every 50 us; see runtime.cpp).
  bool open(bool runtime_polling, std::string& error) {
    for (auto* cfg : {&server_cfg, &client_cfg}) {
      cfg->load<caf::io::middleman>();
      if (runtime_polling) {
        cfg->set("work-stealing.moderate-sleep-duration",
                 caf::timespan{std::chrono::microseconds(50)});
        cfg->set("work-stealing.moderate-poll-attempts", size_t{10});
      }
    }
    server_sys = std::make_unique<caf::actor_system>(server_cfg);
    client_sys = std::make_unique<caf::actor_system>(client_cfg);
    sink = server_sys->spawn(sink_actor);
    auto port = server_sys->middleman().publish(sink, 0, "127.0.0.1", true);
    if (!port) {
      error = "raw publish: " + server_sys->render(port.error());
      return false;
    }
    auto p = client_sys->middleman().remote_actor("127.0.0.1", *port);
    if (!p) {
      error = "raw remote_actor: " + client_sys->render(p.error());
      return false;
    }
    proxy = *p;
    return true;
  }
  caf::actor_system& client() override { return *client_sys; }
  ~raw_connection() override {
    proxy = nullptr;
    if (sink)
      caf::anon_send_exit(sink, caf::exit_reason::user_shutdown);
    sink = nullptr;
    client_sys.reset();
    server_sys.reset();
  }
};

/// Two understudy nodes ("a" of `server_nc` serves, "b" of `client_nc` connects), as
/// `understudy node` builds them.
struct node_connection : connection {
  std::unique_ptr<runtime> server_rt, client_rt;

  bool open(const node_config& server_nc, const node_config& client_nc, std::string& error) {
    auto make = [&](const node_config& nc, const char* name) -> std::unique_ptr<runtime> {
      runtime_config rc;
      rc.log_events = false;
      caf::expected<std::vector<std::string>> prepared{std::vector<std::string>{}};
      rc.configure = [&](caf::actor_system_config& cfg) {
        prepared = cluster_node::configure(cfg, nc, name);
      };
      auto rt = std::make_unique<runtime>(rc);
      if (!prepared) {
        error = std::string{"node "} + name + ": " + describe(prepared.error());
        return nullptr;
      }
      return rt;
    };
    server_rt = make(server_nc, "a");
    client_rt = server_rt ? make(client_nc, "b") : nullptr;
    if (!client_rt)
      return false;
    sink = server_rt->system().spawn(sink_actor);
    auto port = publish_at(server_rt->system(), sink, "127.0.0.1", 0);
    if (!port) {
      error = "publish_at: " + describe(port.error());
      return false;
    }
    auto p = connect_to_peer(client_rt->system(), "127.0.0.1", *port, std::chrono::seconds(10));
    if (!p) {
      error = "connect_to_peer: " + describe(p.error());
      return false;
    }
    proxy = *p;
    return true;
  }
  caf::actor_system& client() override { return client_rt->system(); }
  ~node_connection() override {
    proxy = nullptr;
    if (sink)
      caf::anon_send_exit(sink, caf::exit_reason::user_shutdown);
    sink = nullptr;
    client_rt.reset();
    server_rt.reset();
  }
};

/// Two loopback nodes "a" and "b"; with `cert_dir`, a [cluster.security] section. With
/// `only`, that node alone: a cluster of several nodes talks TLS only, so the plain side is
/// two clusters of one.
std::string pair_config(const std::string& dir, const std::string& cert_dir,
                        const std::vector<uint16_t>& ports, const std::string& only = "") {
  std::string text = "[cluster]\nname = \"bench\"\nstate_root = \"" + dir + "/state\"\n";
  if (!cert_dir.empty())
    text += "[cluster.security]\ndir = \"" + cert_dir + "\"\n";
  if (only != "b")
    text +=
        "[[node]]\nname = \"a\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(ports[0]) + "\n";
  if (only != "a")
    text +=
        "[[node]]\nname = \"b\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(ports[1]) + "\n";
  return text;
}

std::optional<node_config> load_pair(const std::string& path, const std::string& text,
                                     std::string& error) {
  if (!write_file(path, text)) {
    error = "cannot write " + path;
    return std::nullopt;
  }
  auto nc = load_node_config(path);
  if (!nc) {
    error = describe(nc.error());
    return std::nullopt;
  }
  return std::move(*nc);
}

} // namespace

group_result measure_throughput(const options& opts, watchdog& dog) {
  group_result out;
  scratch_dir dir{"throughput"};
  auto ports = free_ports(2);
  if (dir.path.empty() || ports.empty()) {
    out.error = "no scratch directory or no free ports";
    return out;
  }
  std::string error;
  auto plain_a =
      load_pair(dir.path + "/plain-a.toml", pair_config(dir.path, "", ports, "a"), error);
  auto plain_b =
      plain_a ? load_pair(dir.path + "/plain-b.toml", pair_config(dir.path, "", ports, "b"), error)
              : std::nullopt;
  auto tls_nc = plain_b ? load_pair(dir.path + "/tls.toml",
                                    pair_config(dir.path, dir.path + "/certs", ports), error)
                        : std::nullopt;
  if (!tls_nc) {
    out.error = error;
    return out;
  }
  if (auto certs = create_cluster_certificates(*tls_nc, true); !certs) {
    out.error = "certificates: " + describe(certs.error());
    return out;
  }
  const std::vector<load_shape> shapes{
      // About a second per side and size on a 2-core machine (0.1-0.3 s in quick mode).
      {"64b", 64, 1000, opts.quick ? size_t{50} : size_t{200}},
      {"64kib", 64 * 1024, 16, opts.quick ? size_t{150} : size_t{600}},
  };
  const std::vector<std::string> sides{"raw", "plain", "tls", "raw_polling"};
  // seconds[side][shape], one entry per round.
  std::map<std::string, std::map<std::string, std::vector<double>>> seconds;
  auto run_side = [&](const std::string& side, size_t round) {
    if (!out.error.empty())
      return;
    dog.arm("throughput, " + side + " side, round " + std::to_string(round + 1),
            std::chrono::seconds(180));
    std::unique_ptr<connection> conn;
    bool ok = false;
    if (side == "raw" || side == "raw_polling") {
      auto c = std::make_unique<raw_connection>();
      ok = c->open(side == "raw_polling", error);
      conn = std::move(c);
    } else {
      auto c = std::make_unique<node_connection>();
      ok = side == "tls" ? c->open(*tls_nc, *tls_nc, error) : c->open(*plain_a, *plain_b, error);
      conn = std::move(c);
    }
    if (!ok) {
      out.error = side + ": " + error;
      return;
    }
    for (auto& shape : shapes) {
      auto secs = pump(conn->client(), conn->proxy, shape, error);
      if (!secs) {
        out.error = side + " " + shape.name + ": " + error;
        return;
      }
      seconds[side][shape.name].push_back(*secs);
    }
    conn.reset();
  };
  for (size_t round = 0; round < opts.rounds; ++round) {
    std::vector<std::function<void()>> runs;
    for (auto& side : sides)
      runs.push_back([&, side, round] { run_side(side, round); });
    bench::rotated(round, runs);
  }
  dog.disarm();
  if (!out.error.empty())
    return out;
  for (auto& shape : shapes) {
    // Messages/s per round, then the median over rounds.
    auto rates = [&](const std::string& side) {
      std::vector<double> r;
      for (double s : seconds[side][shape.name])
        r.push_back(static_cast<double>(shape.per_window * shape.windows) / s);
      return r;
    };
    auto raw = rates("raw");
    auto raw_polling = rates("raw_polling");
    for (const std::string side : {"plain", "tls"}) {
      auto ours = rates(side);
      // Small messages are counted, large ones weighed.
      bool by_bytes = shape.bytes >= 1024;
      double scale = by_bytes ? static_cast<double>(shape.bytes) / 1e6 : 1.0;
      auto f = bench::make_figure("throughput_" + shape.name + "_" + side,
                                  by_bytes ? "MB/s" : "msg/s", bench::median(ours) * scale,
                                  bench::median(raw) * scale, by_bytes ? 1 : 0);
      auto mbps = [&](const std::vector<double>& r) {
        return bench::fixed(bench::median(r) * static_cast<double>(shape.bytes) / 1e6, 1);
      };
      auto rounds_of = [&](const std::vector<double>& r) {
        return bench::fixed(bench::median(r), 0) + " msg/s = " + mbps(r) + " MB/s (rounds " +
               bench::spread(r, 0) + " msg/s)";
      };
      f.notes.push_back(std::to_string(shape.per_window * shape.windows) + " messages of " +
                        std::to_string(shape.bytes) + " B per round, " +
                        std::to_string(ours.size()) + " rounds: " + side + " " + rounds_of(ours));
      // The baselines once per size, under its first figure.
      if (side == "plain")
        f.notes.push_back("raw CAF " + rounds_of(raw) +
                          "; raw CAF with the runtime's idle polling " + rounds_of(raw_polling));
      out.figures.push_back(f);
    }
  }
  return out;
}

} // namespace cluster_bench
