#include "node.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <caf/sec.hpp>

#include "understudy/actors/cluster_training.hpp"
#include "understudy/runtime/cluster.hpp"
#include "understudy/runtime/errors.hpp"
#include "understudy/runtime/metrics.hpp"
#include "understudy/runtime/runtime.hpp"
#include "understudy/runtime/security.hpp"
#include "understudy/runtime/supervision_event.hpp"

namespace understudy::cli {

namespace {

using clock_type = std::chrono::steady_clock;

caf::expected<node_config> load(const std::string& file) {
  node_config_options opts;
  opts.check_job = check_training_job;
  return load_node_config(file, opts);
}

void say(const std::string& line) {
  static std::mutex mtx;
  std::lock_guard<std::mutex> guard{mtx};
  std::cout << line << std::endl;
}

} // namespace

// -- understudy node -------------------------------------------------------------------

CLI::App* add_node_command(CLI::App& app, node_options& opts) {
  auto* sub =
      app.add_subcommand("node", "run one node of a cluster (for real multi-host clusters)");
  sub->add_option("FILE", opts.file, "the cluster's node config file (TOML)")->required();
  sub->add_option("--name", opts.name, "which [[node]] of FILE this is")->required();
  return sub;
}

int run_node(const node_options& opts, const char*) {
  // Signals go to one thread that asks the node to stop.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  auto nc = load(opts.file);
  if (!nc) {
    std::cerr << "understudy node: " << describe(nc.error()) << '\n';
    return 2;
  }
  if (nc->find_node(opts.name) == nullptr) {
    std::cerr << "understudy node: " << opts.file << ": no node named '" << opts.name << "'\n";
    return 2;
  }
  for (const auto& note : nc->notes)
    std::cerr << "note: " << note << '\n';
  runtime_config rc;
  caf::expected<std::vector<std::string>> prepared{std::vector<std::string>{}};
  rc.configure = [&nc, &opts, &prepared](caf::actor_system_config& cfg) {
    prepared = cluster_node::configure(cfg, *nc, opts.name);
    register_training_types(cfg);
  };
  runtime rt{rc};
  if (!prepared) {
    std::cerr << "understudy node: " << describe(prepared.error()) << '\n';
    return 2;
  }
  for (const auto& note : *prepared)
    std::cerr << "note: " << note << '\n';
  // Prometheus metrics where the config gives the node a metrics port. A port
  // that cannot be bound costs the metrics, not the node.
  std::unique_ptr<node_metrics> metrics;
  const auto* spec = nc->find_node(opts.name);
  if (spec->metrics_port != 0) {
    metrics_config mc;
    mc.node = spec->name;
    mc.host = spec->host;
    mc.port = spec->metrics_port;
    if (auto m = node_metrics::start(mc))
      metrics = std::move(*m);
    else
      std::cerr << "warning: node " << spec->name << ": no metrics: " << describe(m.error())
                << '\n';
  }
  std::function<void(std::chrono::nanoseconds)> on_commit;
  if (metrics)
    on_commit = [mp = metrics.get()](std::chrono::nanoseconds d) { mp->observe_commit_latency(d); };
  auto node = cluster_node::start(rt, *nc, opts.name, nullptr, on_commit);
  if (!node) {
    std::cerr << "understudy node: " << describe(node.error()) << '\n';
    return 2;
  }
  std::atomic<bool> signalled{false};
  std::thread waiter{[&] {
    int sig = 0;
    if (sigwait(&sigs, &sig) == 0 && sig != 0) {
      signalled = true;
      (*node)->request_stop();
    }
  }};
  auto cleanup = [&](int code) {
    if (!signalled) {
      // Wake the signal thread so that it can be joined.
      signalled = true;
      ::kill(::getpid(), SIGTERM);
    }
    waiter.join();
    // Everything this node acknowledged is durable (LMDB, synced per commit)
    // and its tree is stopped; actors that peers started here may still be
    // referenced from the network, and CAF would wait for them: end the
    // process instead of tearing the actor system down.
    std::cout.flush();
    std::cerr.flush();
    std::_Exit(code);
    return code;
  };
  const auto& me = (*node)->self();
  say("node " + me.name + ": listening on " + me.host + ":" + std::to_string(me.port) +
      ", state in " + me.state_dir + (me.buddy.empty() ? "" : ", replicating to " + me.buddy) +
      ", generation " + std::to_string((*node)->generation()));
  if (metrics) {
    auto store = (*node)->state_store().store;
    metrics->set_state_source([store] { return store->stats(); });
    say("node " + me.name + ": metrics on " + metrics->url());
  }
  auto* mp = metrics.get();
  (*node)->on_note(
      [name = me.name](const std::string& text) { say("node " + name + ": " + text); });
  (*node)->on_peer_change([name = me.name, mp](const peer_view& p) {
    say("node " + name + ": peer " + p.name + " is " + to_string(p.state) +
        (p.reason.empty() ? "" : " (" + p.reason + ")"));
    if (mp != nullptr)
      mp->set_peer_health(p.name, p.state == peer_state::alive       ? peer_health::alive
                                  : p.state == peer_state::suspected ? peer_health::suspected
                                                                     : peer_health::dead);
  });
  auto ct = cluster_training::create(**node, *nc);
  if (!ct) {
    std::cerr << "understudy node: " << describe(ct.error()) << '\n';
    return cleanup(2);
  }
  // Follow until this node leads: at once for the first of the trainer's
  // candidates, or when the leader dies and this node is next.
  const auto& candidates = (*ct)->candidates();
  const bool first = !candidates.empty() && candidates.front() == me.name;
  bool waited = false;
  bool followed = false;
  for (;;) {
    if ((*node)->await_leadership(std::chrono::seconds(1))) {
      if (first && !waited) {
        // A cold start: wait for every node (a node that restarts while
        // another leads hears so from its peers meanwhile).
        waited = true;
        auto wait_for = std::chrono::duration_cast<std::chrono::milliseconds>(
                            nc->cluster.failure_detection.connection_timeout) *
                        5;
        if (!(*node)->await_peers(std::max(wait_for, std::chrono::milliseconds(10000))) &&
            (*node)->leader() == me.name) {
          std::string missing;
          for (auto& p : (*node)->peers())
            if (p.state != peer_state::alive)
              missing += " " + p.name;
          std::cerr << "understudy node: nodes not reachable:" << missing << '\n';
          return cleanup(2);
        }
      }
      if ((*node)->claim_leadership())
        break;
      continue;
    }
    followed = true;
    if (!(*node)->await_stop_request(std::chrono::milliseconds(0)))
      continue;
    if ((*node)->fenced()) {
      say("node " + me.name + ": fenced: the cluster declared this node dead; exiting");
      return cleanup(3);
    }
    say("node " + me.name + ": stopping");
    return cleanup(0);
  }
  if (!first || followed)
    say("node " + me.name + ": taking over the job's tree (the trainer's node is lost)");
  auto& job = (*ct)->job();
  const auto steps = job.config().steps;
  const uint64_t every = std::max<uint64_t>(1, steps / 20);
  auto started = clock_type::now();
  job.on_start([&](uint64_t committed) {
    started = clock_type::now();
    say(committed == 0 ? "job: fresh start"
                       : "job: resuming from committed step " + std::to_string(committed));
  });
  job.on_progress([&, last = uint64_t{0}](const training_progress& p) mutable {
    if (mp != nullptr)
      mp->on_step(p.step);
    if (p.step != steps && p.step / every == last / every)
      return;
    last = p.step;
    double secs = std::chrono::duration<double>(clock_type::now() - started).count();
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "progress: step %" PRIu64 "/%" PRIu64 " loss %.4f accuracy %.4f restarts %" PRIu64
                  " lost %" PRIu64 " (%.0f steps/s)",
                  p.step, p.steps, p.loss, p.accuracy < 0 ? 0.0 : p.accuracy, p.restarts,
                  p.lost_steps, secs > 0 ? static_cast<double>(p.step) / secs : 0.0);
    say(buf);
  });
  // Recent supervision events for `understudy status` (also logged by the runtime).
  auto recent = std::make_shared<event_log>(64);
  std::shared_ptr<event_sink> sink = recent;
  if (mp != nullptr) {
    sink =
        std::make_shared<fanout_sink>(std::vector<std::shared_ptr<event_sink>>{recent, mp->sink()});
    (*node)->on_peer_change([mp](const peer_view& p) {
      if (p.state == peer_state::dead)
        mp->on_failover(p.name); // the leader restarts its actors elsewhere
    });
  }
  // The tree the config declares ([tree]); its training_job child is the
  // job's own tree, whose actors it places over the nodes.
  auto* ctp = ct->get();
  // The job's supervisor keeps its own sink (it counts restarts): it logs too.
  std::shared_ptr<event_sink> job_sink = sink;
  if (auto log = rt.log_sink())
    job_sink = std::make_shared<fanout_sink>(std::vector<std::shared_ptr<event_sink>>{sink, log});
  auto declared = (*node)->tree(nc->tree, sink, [ctp, job_sink](const tree_child& c) {
    std::optional<child_spec> out;
    if (c.type == "training_job")
      out = supervisor_child(ctp->spec(job_sink, c.name), c.restart);
    return out;
  });
  if (!declared) {
    std::cerr << "understudy node: cannot start the tree: " << describe(declared.error()) << '\n';
    (*node)->stop_peers();
    return cleanup(2);
  }
  const auto root_path = "/" + declared->name;
  auto tree = rt.start(std::move(*declared));
  if (tree) {
    auto* nodep = node->get();
    auto root = *tree;
    (*node)->set_status_provider([nodep, root, recent, root_path] {
      std::string out = "  supervision tree:\n";
      std::function<void(const supervisor_ref&, const std::string&, int)> walk =
          [&](const supervisor_ref& sup, const std::string& path, int depth) {
            auto kids = sup.which_children(std::chrono::seconds(2));
            if (!kids) {
              out += std::string(depth * 2 + 4, ' ') + "(" + describe(kids.error()) + ")\n";
              return;
            }
            for (const auto& c : *kids) {
              auto where = nodep->node_of(c.handle);
              out += std::string(depth * 2 + 4, ' ') + path + "/" + c.id + "  " +
                     to_string(c.status) + ", incarnation " + std::to_string(c.incarnation) +
                     ", restarts " + std::to_string(c.restarts) +
                     (where.empty() ? "" : ", on " + where) + "\n";
              if (c.kind == child_kind::supervisor)
                if (auto sub = sup.nested(c.id, std::chrono::seconds(2)))
                  walk(*sub, path + "/" + c.id, depth + 1);
            }
          };
      walk(root, root_path, 0);
      auto events = recent->snapshot();
      out += "  recent events:\n";
      auto first = events.size() > 12 ? events.size() - 12 : 0;
      for (size_t i = first; i < events.size(); ++i) {
        const auto& ev = events[i];
        out += "    " + to_string(ev.kind) + " " + ev.supervisor +
               (ev.child.empty() ? "" : "/" + ev.child) + "#" + std::to_string(ev.incarnation) +
               (ev.action.empty() ? "" : " " + ev.action) +
               (ev.reason.empty() ? "" : " (" + ev.reason + ")") + "\n";
      }
      return out;
    });
  }
  if (!tree) {
    std::cerr << "understudy node: cannot start the job: " << describe(tree.error()) << '\n';
    (*node)->stop_peers();
    return cleanup(4);
  }
  auto timed_out = [](const caf::error& err) { return err == caf::sec::request_timeout; };
  caf::expected<training_result> result = job.wait(std::chrono::milliseconds(0));
  for (;;) {
    result = job.wait(std::chrono::milliseconds(200));
    if (result || !timed_out(result.error()))
      break;
    if ((*node)->await_stop_request(std::chrono::milliseconds(0)))
      break;
  }
  int code = 0;
  if ((*node)->fenced()) {
    // Declared dead while it ran the tree (a pause past the deadline): its
    // successor runs the job; this node's view of it is void.
    say("node " + me.name +
        ": fenced: the cluster declared this node dead and another node runs "
        "the job; exiting");
    return cleanup(3); // its tree's work is void: no orderly stop
  }
  if (result) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "final: steps=%" PRIu64 " accuracy=%.4f params_digest=%016" PRIx64
                  " restarts=%" PRIu64 " lost_steps=%" PRIu64,
                  result->steps, result->accuracy, result->params_digest, result->restarts,
                  result->lost_steps);
    say(buf);
  } else if (!timed_out(result.error())) {
    std::cerr << "understudy node: the job failed: " << describe(result.error()) << '\n';
    code = 4;
  } else {
    say("node " + me.name + ": stopping (job not finished)");
  }
  // The tree first, so that its actors on other nodes stop as its children
  // (not as the victims of their nodes ending), then the other nodes.
  rt.stop(*tree, std::chrono::seconds(10));
  (*node)->stop_peers();
  return cleanup(code);
}

// -- understudy status ---------------------------------------------------------------

CLI::App* add_status_command(CLI::App& app, status_options& opts) {
  auto* sub =
      app.add_subcommand("status", "print every node's health and the live supervision tree");
  sub->add_option("FILE", opts.file, "the cluster's node config file (TOML)")->required();
  sub->add_option("--as", opts.as,
                  "the node whose certificate to present (default: the first node)");
  return sub;
}

int run_status(const status_options& opts) {
  auto nc = load(opts.file);
  if (!nc) {
    std::cerr << "understudy status: " << describe(nc.error()) << '\n';
    return 2;
  }
  auto as = opts.as.empty() ? nc->nodes.front().name : opts.as;
  runtime_config rc;
  rc.log_events = false;
  caf::expected<std::vector<std::string>> prepared{std::vector<std::string>{}};
  rc.configure = [&](caf::actor_system_config& cfg) {
    prepared = prepare_node_system_config(cfg, *nc, as);
  };
  runtime rt{rc};
  if (!prepared) {
    std::cerr << "understudy status: " << describe(prepared.error()) << '\n';
    return 2;
  }
  int unreachable = 0;
  for (const auto& n : nc->nodes) {
    auto text = cluster_node::query_status(rt.system(), n.host, n.port,
                                           nc->cluster.failure_detection.connection_timeout);
    if (!text) {
      ++unreachable;
      std::cout << "node " << n.name << " at " << n.host << ":" << n.port << ": unreachable ("
                << describe(text.error()) << ")\n";
      continue;
    }
    std::cout << *text;
  }
  return unreachable == static_cast<int>(nc->nodes.size()) ? 1 : 0;
}

// -- understudy launch -----------------------------------------------------------------

namespace {

volatile sig_atomic_t launch_signal = 0;

extern "C" void on_launch_signal(int sig) {
  launch_signal = sig;
}

struct chaos {
  std::string node;
  uint64_t step = 0;
  bool freeze = false;
  std::chrono::milliseconds duration{0};
  bool done = false;
  clock_type::time_point resume_at{};
  bool resumed = false;
};

std::optional<std::chrono::milliseconds> parse_span(const std::string& s) {
  std::smatch m;
  static const std::regex re{R"(^(\d+)(ms|s)$)"};
  if (!std::regex_match(s, m, re))
    return std::nullopt;
  auto n = std::stoull(m[1]);
  return std::chrono::milliseconds(m[2] == "s" ? n * 1000 : n);
}

struct child {
  std::string name;
  pid_t pid = -1;
  int fd = -1;
  std::string pending;
  bool running = false;
  int status = 0;
  /// It printed the job's final line.
  bool finished = false;
};

} // namespace

CLI::App* add_launch_command(CLI::App& app, launch_options& opts) {
  auto* sub = app.add_subcommand("launch", "start every node of a cluster on this machine");
  sub->add_option("FILE", opts.file, "the cluster's node config file (TOML)")->required();
  sub->add_option("--kill", opts.kills, "NODE@STEP: SIGKILL the node's process at that step");
  sub->add_option("--freeze", opts.freezes,
                  "NODE@STEP:DURATION: SIGSTOP the node at that step, SIGCONT after DURATION");
  return sub;
}

int run_launch(const launch_options& opts, const char* argv0_in) {
  // The nodes run this very program.
  std::error_code ec;
  auto self_exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::string exe = ec ? std::string{argv0_in} : self_exe.string();
  const char* argv0 = exe.c_str();
  auto nc = load(opts.file);
  if (!nc) {
    std::cerr << "understudy launch: " << describe(nc.error()) << '\n';
    return 2;
  }
  std::vector<chaos> plan;
  static const std::regex kill_re{R"(^([A-Za-z0-9_-]+)@(\d+)$)"};
  static const std::regex freeze_re{R"(^([A-Za-z0-9_-]+)@(\d+):(\w+)$)"};
  for (const auto& k : opts.kills) {
    std::smatch m;
    if (!std::regex_match(k, m, kill_re) || nc->find_node(m[1].str()) == nullptr) {
      std::cerr << "understudy launch: bad --kill '" << k << "' (expected NODE@STEP with a node of "
                << opts.file << ")\n";
      return 2;
    }
    plan.push_back({m[1], std::stoull(m[2]), false, {}, false, {}, false});
  }
  for (const auto& f : opts.freezes) {
    std::smatch m;
    std::optional<std::chrono::milliseconds> span;
    if (!std::regex_match(f, m, freeze_re) || nc->find_node(m[1].str()) == nullptr ||
        !(span = parse_span(m[3]))) {
      std::cerr << "understudy launch: bad --freeze '" << f
                << "' (expected NODE@STEP:DURATION such as n2@500:3s)\n";
      return 2;
    }
    plan.push_back({m[1], std::stoull(m[2]), true, *span, false, {}, false});
  }
  // The trainer's node runs the tree; when it is lost, the next candidate alive.
  auto candidates = leader_candidates(*nc);
  auto leader = candidates.empty() ? std::string{} : candidates.front();
  struct sigaction sa {};
  sa.sa_handler = on_launch_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::vector<child> kids;
  for (const auto& n : nc->nodes) {
    int fds[2];
    if (::pipe(fds) != 0) {
      std::perror("understudy launch: pipe");
      return 2;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      ::close(fds[0]);
      ::close(fds[1]);
      signal(SIGINT, SIG_IGN); // Ctrl-C reaches the launcher; it stops the nodes
      ::execl(argv0, argv0, "node", opts.file.c_str(), "--name", n.name.c_str(),
              static_cast<char*>(nullptr));
      std::perror("understudy launch: exec");
      ::_exit(127);
    }
    ::close(fds[1]);
    kids.push_back(child{n.name, pid, fds[0], {}, true, 0});
    say("launch: started node " + n.name + " (pid " + std::to_string(pid) + ")" +
        (n.name == leader ? ", the leader" : ""));
  }
  auto find = [&](const std::string& name) -> child* {
    for (auto& k : kids)
      if (k.name == name)
        return &k;
    return nullptr;
  };
  bool stopping = false;
  clock_type::time_point stop_deadline{};
  auto stop_all = [&](int sig) {
    for (auto& k : kids)
      if (k.running) {
        ::kill(k.pid, sig);
        ::kill(k.pid, SIGCONT);
      }
  };
  static const std::regex step_re{R"(step (\d+)/(\d+))"};
  // The exit status of the node that ended the job; 1 if none did.
  int result = 1;
  // Reads what node `k` wrote, if anything; true if it read something.
  auto read_from = [&](child& k) {
    if (k.fd < 0)
      return false;
    pollfd probe{k.fd, POLLIN, 0};
    if (::poll(&probe, 1, 0) <= 0)
      return false;
    char buf[4096];
    auto n = ::read(k.fd, buf, sizeof buf);
    if (n <= 0) {
      if (n == 0 || errno != EINTR) {
        ::close(k.fd);
        k.fd = -1;
      }
      return false;
    }
    k.pending.append(buf, static_cast<size_t>(n));
    size_t pos;
    while ((pos = k.pending.find('\n')) != std::string::npos) {
      auto line = k.pending.substr(0, pos);
      k.pending.erase(0, pos + 1);
      say("[" + k.name + "] " + line);
      if (line.rfind("final:", 0) == 0)
        k.finished = true;
      // Progress comes from the leader, whichever node that is now.
      std::smatch m;
      if (line.rfind("progress:", 0) != 0 || !std::regex_search(line, m, step_re))
        continue;
      auto step = std::stoull(m[1]);
      for (auto& c : plan) {
        if (c.done || step < c.step)
          continue;
        c.done = true;
        auto* target = find(c.node);
        if (!target || !target->running)
          continue;
        if (c.freeze) {
          ::kill(target->pid, SIGSTOP);
          c.resume_at = clock_type::now() + c.duration;
          say("chaos: SIGSTOP " + c.node + " at step " + std::to_string(step) + " for " +
              std::to_string(c.duration.count()) + " ms");
        } else {
          ::kill(target->pid, SIGKILL);
          say("chaos: SIGKILL " + c.node + " at step " + std::to_string(step));
        }
      }
    }
    return true;
  };
  for (;;) {
    if (launch_signal != 0 && !stopping) {
      say("launch: stopping every node");
      stopping = true;
      stop_deadline = clock_type::now() + std::chrono::seconds(10);
      stop_all(SIGTERM);
    }
    // Chaos timers.
    auto now = clock_type::now();
    for (auto& c : plan)
      if (c.freeze && c.done && !c.resumed && now >= c.resume_at) {
        c.resumed = true;
        if (auto* k = find(c.node); k && k->running) {
          ::kill(k->pid, SIGCONT);
          say("chaos: SIGCONT " + c.node);
        }
      }
    std::vector<pollfd> pfds;
    for (auto& k : kids)
      if (k.fd >= 0)
        pfds.push_back({k.fd, POLLIN, 0});
    if (pfds.empty() && std::none_of(kids.begin(), kids.end(), [](auto& k) { return k.running; }))
      break;
    ::poll(pfds.data(), pfds.size(), 50);
    for (auto& k : kids)
      read_from(k);
    // Reap.
    for (auto& k : kids) {
      if (!k.running)
        continue;
      int status = 0;
      if (::waitpid(k.pid, &status, WNOHANG) != k.pid)
        continue;
      k.running = false;
      k.status = status;
      while (read_from(k)) {
        // What it wrote before it ended (its final line) counts.
      }
      std::string how = WIFEXITED(status)
                            ? "exited with status " + std::to_string(WEXITSTATUS(status))
                            : "killed by signal " + std::to_string(WTERMSIG(status));
      say("launch: node " + k.name + " " + how);
      // The job ends with the node that finished it, or with one that could
      // not run it (a bad config: 2, a failed job: 4). A node lost otherwise
      // (killed, fenced: 3) is the cluster's to survive, as long as a node
      // that can take over the tree runs.
      int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      bool ends = k.finished || code == 2 || code == 4;
      bool successor = std::any_of(kids.begin(), kids.end(), [&](const child& c) {
        return c.running &&
               std::find(candidates.begin(), candidates.end(), c.name) != candidates.end();
      });
      if (!ends && !successor && !stopping) {
        say("launch: no node left that can run the job's tree; stopping");
        code = 1;
        ends = true;
      }
      if (ends && !stopping) {
        result = code < 0 ? 1 : code;
        stopping = true;
        stop_deadline = clock_type::now() + std::chrono::seconds(10);
        stop_all(SIGTERM);
      }
    }
    if (stopping && clock_type::now() > stop_deadline) {
      stop_all(SIGKILL);
      stop_deadline = clock_type::now() + std::chrono::hours(1);
    }
  }
  return result;
}

} // namespace understudy::cli
