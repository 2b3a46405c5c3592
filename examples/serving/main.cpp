// digits_serving: serves the digits model that digits_mlp trains, over HTTP,
// from replicas behind a router with hot standbys, while faults are injected.
//
//   digits_serving [--state-dir .understudy/digits_mlp] [--train-steps 1000]
//                  [--train-while-serving STEPS] [--host 127.0.0.1] [--port 8080]
//                  [--replicas 2] [--standbys 1] [--policy power_of_two]
//                  [--crash-every 0] [--poison VALUE] [--for 0]
//
// It serves the newest committed step of the digits job in --state-dir (the
// directory digits_mlp writes). Where that holds fewer than --train-steps
// committed steps it trains first (digits_mlp's defaults, so either program
// may resume the other's state); with --train-while-serving it goes on training
// to that step while it serves, and every newer committed step rolls into the
// replicas through the standbys. --crash-every kills a replica at that
// interval. Point serving_loadgen at it:
//
//   serving_loadgen --url http://127.0.0.1:8080/v1/models/digits:predict --rate 500
//
// One line, updated each second, shows the version served, the replicas by
// state and the requests answered, failed, refused as overloaded and retried.

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>

#include "../common/digits_path.hpp"
#include "../common/interrupt.hpp"
#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/numerics/dataset.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/process/process_host.hpp"
#include "understudy/serving/front_end.hpp"
#include "understudy/state/runtime.hpp"

namespace {

using namespace understudy;
using namespace understudy::actors;
using understudy::examples::interrupt_watch;
using clock_type = std::chrono::steady_clock;

/// "2s", "500ms", "0" -> milliseconds; -1 when malformed.
int64_t parse_ms(const std::string& s) {
  try {
    size_t end = 0;
    auto v = std::stoll(s, &end);
    auto unit = s.substr(end);
    if (v < 0)
      return -1;
    if (unit.empty() || unit == "ms")
      return v;
    if (unit == "s")
      return v * 1000;
    if (unit == "m")
      return v * 60000;
  } catch (const std::exception&) {
  }
  return -1;
}

/// The pid of this process's child hosting replica `id` (--isolated), or 0.
pid_t replica_process(const std::string& id) {
  const std::string title = "understudy-actor: " + id;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    std::ifstream cmd{e.path() / "cmdline"};
    std::string argv0;
    std::getline(cmd, argv0, '\0');
    if (argv0 != title)
      continue;
    std::ifstream stat{e.path() / "stat"};
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    auto close = text.rfind(')');
    std::istringstream rest{close == std::string::npos ? "" : text.substr(close + 2)};
    std::string state;
    long ppid = 0;
    rest >> state >> ppid;
    if (ppid == static_cast<long>(::getpid()))
      return static_cast<pid_t>(std::stol(name));
  }
  return 0;
}

/// The replicas by state, e.g. "2 active, 1 standby".
std::string describe_replicas(const serving::serving_status& st) {
  std::map<std::string, int> n;
  for (const auto& r : st.replicas)
    ++n[r.state];
  std::string out;
  for (const char* s : {"active", "standby", "loading", "draining", "down"})
    if (n[s] > 0)
      out += (out.empty() ? "" : ", ") + std::to_string(n[s]) + " " + s;
  return out;
}

} // namespace

int main(int argc, char** argv) {
  // A replica's own process (--isolated) runs that and nothing else.
  if (auto status = serving::run_replica_process_if_requested())
    return *status;
  interrupt_watch interrupt;
  CLI::App app{"digits_serving: serves the digits model over HTTP from supervised replicas",
               "digits_serving"};
  std::string state_dir = ".understudy/digits_mlp", data_path, host = "127.0.0.1";
  std::string policy_name = "power_of_two", crash_every = "0", run_for = "0", watch = "500ms";
  uint64_t train_steps = 1000, train_while = 0;
  size_t hidden = 128, replicas = 2, standbys = 1, max_batch = 64, max_outstanding = 32;
  uint16_t port = 8080;
  double poison = 0;
  uint64_t seed = 1;
  bool isolated = false;
  bool hedge = false;
  app.add_option("--state-dir", state_dir, "the digits job's state directory (digits_mlp's)")
      ->capture_default_str();
  app.add_option("--train-steps", train_steps,
                 "train first until this step is committed (0: serve only what is there)")
      ->capture_default_str();
  app.add_option("--train-while-serving", train_while,
                 "go on training to this step while serving; each newer step rolls in");
  app.add_option("--hidden", hidden, "units of the model's hidden layer (as trained)")
      ->capture_default_str();
  app.add_option("--data", data_path, "digits CSV for training (gzip or plain)");
  app.add_option("--host", host, "address the HTTP front end binds")->capture_default_str();
  app.add_option("--port", port, "its port (0: any free one)")->capture_default_str();
  app.add_option("--replicas", replicas, "replicas in rotation")->capture_default_str();
  app.add_option("--standbys", standbys, "hot standbys beside them")->capture_default_str();
  app.add_option("--policy", policy_name, "power_of_two, round_robin or least_outstanding")
      ->capture_default_str();
  app.add_option("--max-batch", max_batch, "inputs a replica computes at once")
      ->capture_default_str();
  app.add_option("--max-outstanding", max_outstanding,
                 "requests per replica before the router answers overloaded")
      ->capture_default_str();
  app.add_option("--watch", watch, "how often to look for a newer committed step")
      ->capture_default_str();
  app.add_flag("--hedge", hedge,
               "send a request unanswered after the recent p95 latency to a second replica too");
  app.add_flag("--isolated", isolated,
               "each replica in an OS process of its own (--crash-every then SIGKILLs one)");
  app.add_option("--crash-every", crash_every,
                 "kill a random replica in rotation at this interval (0: never)")
      ->capture_default_str();
  auto* poison_opt = app.add_option("--poison", poison,
                                    "a request whose first value equals this crashes its replica");
  app.add_option("--for", run_for, "stop after this long (0: at Ctrl-C)")->capture_default_str();
  app.add_option("--seed", seed, "seeds the training job and the faults")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto usage = [](const std::string& what) {
    std::fprintf(stderr, "digits_serving: %s\n", what.c_str());
    return 2;
  };
  auto crash_ms = parse_ms(crash_every);
  auto for_ms = parse_ms(run_for);
  auto watch_ms = parse_ms(watch);
  if (crash_ms < 0 || for_ms < 0 || watch_ms < 0)
    return usage("durations are like 500ms, 2s or 1m");
  auto policy = serving::parse_balance_policy(policy_name);
  if (!policy)
    return usage(describe(policy.error()));
  if (hidden == 0 || hidden > 65536)
    return usage("--hidden must be from 1 to 65536");
  auto net = std::make_shared<mlp>(std::vector<size_t>{64, hidden, 10});

  serving::serve_config scfg;
  scfg.model = "digits";
  scfg.replicas = replicas;
  scfg.standbys = standbys;
  scfg.policy = *policy;
  scfg.max_batch = max_batch;
  scfg.max_outstanding = max_outstanding;
  scfg.watch_interval = std::chrono::milliseconds(watch_ms);
  scfg.seed = seed;
  scfg.isolated = isolated;
  scfg.hedge = hedge;
  if (poison_opt->count() > 0)
    scfg.poison = static_cast<float>(poison);
  if (auto err = serving::validate(scfg))
    return usage(describe(err));

  runtime_config rcfg;
  rcfg.log_events = false;
  // Latency first: an idle scheduler thread waits to be woken by new work at
  // once instead of polling for it every 50 us (which leaves a request
  // arriving meanwhile waiting for the poll).
  rcfg.idle_poll = std::chrono::microseconds(0);
  rcfg.configure = [isolated](caf::actor_system_config& cfg) {
    serving::register_serving_types(cfg);
    if (isolated) {
      cfg.load<caf::io::middleman>(); // reaches the replicas' processes
      register_process_types(cfg);
    }
  };
  runtime rt{rcfg};
  state_store_config stcfg;
  stcfg.directory = state_dir;
  auto p = rt.open_state(stcfg);
  if (!p)
    return usage("cannot open the state directory " + state_dir + ": " + rt.render(p.error()));
  const std::string job_path = "/digits_mlp";

  // Training: first up to --train-steps, then (in the background) to
  // --train-while-serving.
  std::unique_ptr<training_job> job;
  caf::expected<supervisor_ref> job_tree{caf::sec::invalid_argument};
  auto start_training = [&](uint64_t steps) -> caf::error {
    if (data_path.empty())
      data_path = understudy::examples::default_digits_path();
    auto data = load_csv(data_path, csv_options{csv_options::last_column, 1.0f / 16.0f, 10});
    if (!data)
      return data.error();
    auto [train, test] = split(*data, 0.2, seed);
    training_config cfg;
    cfg.net = net;
    cfg.train = std::make_shared<dataset>(std::move(train));
    cfg.test = std::make_shared<dataset>(std::move(test));
    cfg.steps = steps;
    cfg.seed = seed;
    if (auto err = validate(cfg))
      return err;
    auto created = training_job::create(cfg, *p);
    if (!created)
      return created.error();
    job = std::make_unique<training_job>(std::move(*created));
    job_tree = rt.start(job->spec("digits_mlp", nullptr));
    if (!job_tree)
      return job_tree.error();
    return {};
  };
  auto committed = newest_committed_step(*p->store, job_path);
  if (!committed)
    return usage("cannot read " + state_dir + ": " + rt.render(committed.error()));
  if (*committed < train_steps) {
    std::printf("training: %s has committed step %" PRIu64 "; training to step %" PRIu64 "\n",
                state_dir.c_str(), *committed, train_steps);
    std::fflush(stdout);
    if (auto err = start_training(train_steps))
      return usage("cannot train: " + rt.render(err));
    auto result = job->wait(std::chrono::milliseconds(100));
    while (!result && result.error() == caf::sec::request_timeout && interrupt.signal() == 0)
      result = job->wait(std::chrono::milliseconds(100));
    if (!result) {
      if (interrupt.signal() != 0)
        return 128 + interrupt.signal();
      return usage("training failed: " + rt.render(result.error()));
    }
    std::printf("training: %s\n", describe_final(*result).c_str());
    rt.stop(*job_tree);
    job.reset();
  }
  if (train_while > 0) {
    if (auto err = start_training(train_while))
      return usage("cannot train while serving: " + rt.render(err));
  }

  // Serving.
  auto source = serving::committed_steps(net, p->store, job_path);
  auto router = std::make_shared<serving::router_handle>();
  auto metrics = std::make_shared<serving::serving_metrics>("digits");
  supervisor_spec spec;
  spec.name = "serve";
  spec.children.push_back(serving::serving_tree(scfg, source, router, metrics));
  auto tree = rt.start(std::move(spec));
  if (!tree)
    return usage("cannot start serving: " + rt.render(tree.error()));
  serving::front_end_config fcfg;
  fcfg.http.host = host;
  fcfg.http.port = port;
  fcfg.http.threads = 2;
  fcfg.model = "digits";
  fcfg.input_dim = net->input_dim();
  auto fe = serving::front_end::start(rt.system(), fcfg, router, metrics);
  if (!fe)
    return usage(rt.render(fe.error()));
  std::printf(
      "serving: model digits (%s) on %s/v1/models/digits:predict, %zu replicas and %zu "
      "standbys, %s\n",
      net->describe().c_str(), (*fe)->url().c_str(), replicas, standbys,
      to_string(*policy).c_str());
  std::fflush(stdout);

  // The live line, faults, and the end.
  caf::scoped_actor self{rt.system()};
  auto status = [&]() -> caf::expected<serving::serving_status> {
    caf::expected<serving::serving_status> out{caf::sec::request_timeout};
    auto r = router->get();
    if (!r)
      return out;
    self->request(r, std::chrono::seconds(2), serving::status_atom::value)
        .receive([&](serving::serving_status& st) { out = std::move(st); },
                 [&](caf::error& err) { out = std::move(err); });
    return out;
  };
  const bool tty = isatty(STDOUT_FILENO) != 0;
  std::mt19937_64 rng{seed};
  auto start = clock_type::now();
  auto next_crash = start + std::chrono::milliseconds(crash_ms);
  auto next_line = start + std::chrono::seconds(1);
  uint64_t crashes = 0;
  uint64_t shown_version = 0;
  while (interrupt.signal() == 0) {
    auto now = clock_type::now();
    if (for_ms > 0 && now - start >= std::chrono::milliseconds(for_ms))
      break;
    if (crash_ms > 0 && now >= next_crash) {
      next_crash += std::chrono::milliseconds(crash_ms);
      auto reps = tree->nested("digits");
      auto reps2 = reps ? reps->nested("replicas") : reps;
      // A replica in rotation, the one whose requests the router must save.
      std::vector<std::string> active;
      if (auto st = status())
        for (const auto& r : st->replicas)
          if (r.state == "active")
            active.push_back(r.id);
      if (reps2 && !active.empty()) {
        auto id = active[rng() % active.size()];
        if (isolated) {
          if (auto pid = replica_process(id); pid > 0 && ::kill(pid, SIGKILL) == 0) {
            ++crashes;
            std::printf("%sfault: SIGKILLed %s's process %d\n", tty ? "\r\033[K" : "", id.c_str(),
                        static_cast<int>(pid));
          }
        } else if (auto victim = reps2->resolve(id, std::chrono::milliseconds(200))) {
          self->send_exit(*victim, caf::exit_reason::kill);
          ++crashes;
          std::printf("%sfault: killed %s\n", tty ? "\r\033[K" : "", id.c_str());
        }
      }
    }
    if (now >= next_line) {
      next_line += std::chrono::seconds(1);
      if (auto st = status()) {
        if (st->target != shown_version && !tty)
          std::printf("version: %" PRIu64 "\n", st->target);
        shown_version = st->target;
        std::printf("%sversion %" PRIu64 " | %s | answered %" PRIu64 " failed %" PRIu64
                    " overloaded %" PRIu64 " retried %" PRIu64 "%s",
                    tty ? "\r\033[K" : "", st->target, describe_replicas(*st).c_str(), st->answered,
                    st->failed, st->overloaded, st->retried, tty ? "" : "\n");
      }
      std::fflush(stdout);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto st = status();
  fe->reset();
  if (job)
    job->request_stop();
  rt.shutdown();
  if (st)
    std::printf("%sserved: version %" PRIu64 ", answered %" PRIu64 ", failed %" PRIu64
                ", overloaded %" PRIu64 ", retried %" PRIu64 ", replicas killed %" PRIu64 "\n",
                tty ? "\r\033[K" : "", st->target, st->answered, st->failed, st->overloaded,
                st->retried, crashes);
  return interrupt.signal() != 0 ? 128 + interrupt.signal() : 0;
}
