// digits_mlp: trains a 64-128-10 MLP on the handwritten digits as a supervision
// tree of parameter shards, data loaders, workers and a trainer, while crashing
// any of them on request, and ends with the same parameters as a run without
// crashes.
//
//   digits_mlp [--workers 2] [--shards 2] [--loaders 1] [--steps 3000] [--batch 64]
//              [--micro-batches 8]
//              [--lr 0.1] [--optimizer sgd|momentum|adam] [--seed 1]
//              [--checkpoint-every 1] [--state-dir .understudy/digits_mlp]
//              [--data examples/data/digits.csv.gz] [--fault SPEC]
//
// SPEC: worker:1@120,shard:0@300,loader:0@450,trainer@600 or random:K.
// It ends with `final: steps=S accuracy=A params_digest=HEX restarts=R lost_steps=L`
// and a `goodput:` line (the share of wall time in committed steps, and each incident's cost).
// Exit codes: 0 done, 1 the job failed, 2 bad options or input.

#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "../common/digits_path.hpp"
#include "../common/interrupt.hpp"
#include "../common/progress_printer.hpp"
#include "../common/report_feed.hpp"
#include "understudy/actors/numerics/dataset.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/state/runtime.hpp"

namespace {

using namespace understudy;
using namespace understudy::actors;
using understudy::examples::interrupt_watch;
using understudy::examples::progress_printer;
using understudy::examples::report_feed;
using clock_type = std::chrono::steady_clock;

} // namespace

int main(int argc, char** argv) {
  // Before any thread starts: Ctrl-C stops the job in order (below).
  interrupt_watch interrupt;
  CLI::App app{"digits_mlp: fault-tolerant data-parallel training of an MLP on handwritten digits",
               "digits_mlp"};
  size_t workers = 2, shards = 2, loaders = 1, batch = 64, micro_batches = 8, hidden = 128;
  uint64_t steps = 3000, seed = 1, checkpoint_every = 1, eval_every = 250;
  double lr = 0.1;
  std::string optimizer_name = "sgd", state_dir = ".understudy/digits_mlp", data_path, fault_spec;
  std::string report_path;
  app.add_option("--workers", workers, "workers (at most one per micro-batch)")
      ->capture_default_str();
  app.add_option("--shards", shards, "parameter shards")->capture_default_str();
  app.add_option("--loaders", loaders, "data loaders (at most one per micro-batch)")
      ->capture_default_str();
  app.add_option("--steps", steps, "synchronous steps")->capture_default_str();
  app.add_option("--batch", batch, "samples per step (the global batch)")->capture_default_str();
  app.add_option("--micro-batches", micro_batches,
                 "the batch's split; with these fixed, any counts of workers, shards and "
                 "loaders give the same result")
      ->capture_default_str();
  app.add_option("--hidden", hidden, "units of the hidden layer")->capture_default_str();
  app.add_option("--lr", lr, "learning rate")->capture_default_str();
  app.add_option("--optimizer", optimizer_name, "sgd, momentum or adam")->capture_default_str();
  app.add_option("--seed", seed, "seeds the split, initialisation, shuffles and random faults")
      ->capture_default_str();
  app.add_option("--checkpoint-every", checkpoint_every,
                 "commit every this many steps (a crash loses at most these)")
      ->capture_default_str();
  app.add_option("--eval-every", eval_every, "held-out evaluation interval (0: at the end)")
      ->capture_default_str();
  app.add_option("--state-dir", state_dir, "where shards, loaders and the trainer persist state")
      ->capture_default_str();
  app.add_option("--data", data_path, "digits CSV (gzip or plain): 64 pixels 0..16, then the label")
      ->default_str("examples/data/digits.csv.gz");
  app.add_option("--report", report_path,
                 "FILE.html: write the run as one page (loss and accuracy curves with each fault "
                 "and recovery marked, goodput, incidents) when it ends");
  app.add_option("--fault", fault_spec,
                 "crash actors: worker:I@S,shard:I@S,loader:I@S,trainer@S or random:K; "
                 "hang:ROLE:I@S makes one stop answering, slow:worker:I@S:F slows one F times, "
                 "lose:worker:I@S loses its gradients");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto usage = [](const std::string& what) {
    std::fprintf(stderr, "digits_mlp: %s\n", what.c_str());
    return 2;
  };

  if (data_path.empty())
    data_path = understudy::examples::default_digits_path();
  auto data = load_csv(data_path, csv_options{csv_options::last_column, 1.0f / 16.0f, 10});
  if (!data)
    return usage("cannot load the data set: " + describe(data.error()));
  if (data->input_dim != 64)
    return usage(data_path + ": expected 64 pixel columns and a label, found " +
                 std::to_string(data->input_dim) + " inputs");
  auto [train, test] = split(*data, 0.2, seed);

  auto kind = parse_optimizer_kind(optimizer_name);
  if (!kind)
    return usage(describe(kind.error()));
  auto faults = parse_faults(fault_spec, workers, shards, loaders, steps, seed);
  if (!faults)
    return usage(describe(faults.error()));
  if (hidden == 0 || hidden > 65536)
    return usage("--hidden must be from 1 to 65536");

  training_config cfg;
  cfg.net = std::make_shared<mlp>(std::vector<size_t>{64, hidden, 10});
  cfg.train = std::make_shared<dataset>(std::move(train));
  cfg.test = std::make_shared<dataset>(std::move(test));
  cfg.workers = workers;
  cfg.shards = shards;
  cfg.loaders = loaders;
  cfg.batch = batch;
  cfg.micro_batches = micro_batches;
  cfg.steps = steps;
  cfg.seed = seed;
  cfg.checkpoint_every = checkpoint_every;
  cfg.eval_every = eval_every;
  cfg.optimizer.kind = *kind;
  cfg.optimizer.lr = lr;
  cfg.faults = std::move(*faults);
  if (auto err = validate(cfg))
    return usage(describe(err));

  progress_printer printer{isatty(STDOUT_FILENO) != 0};
  report_feed report{report_path, "digits_mlp: " + cfg.net->describe() + ", batch " +
                                      std::to_string(batch) + ", seed " + std::to_string(seed) +
                                      (fault_spec.empty() ? "" : ", faults " + fault_spec)};
  runtime_config rcfg;
  rcfg.log_events = false;
  runtime rt{rcfg};
  state_store_config scfg;
  scfg.directory = state_dir;
  auto p = rt.open_state(scfg);
  if (!p)
    return usage("cannot open the state directory " + state_dir + ": " + rt.render(p.error()));
  auto job = training_job::create(cfg, *p);
  if (!job)
    return usage(rt.render(job.error()));

  std::printf(
      "digits_mlp: %s, %zu train / %zu held-out samples, %zu workers, %zu shards, "
      "%zu loaders, batch %zu in %zu micro-batches, %s lr %g, seed %" PRIu64 "\n",
      cfg.net->describe().c_str(), cfg.train->size(), cfg.test->size(), workers, shards, loaders,
      batch, micro_batches, optimizer_name.c_str(), lr, seed);
  if (!cfg.faults.empty()) {
    std::string list;
    for (const auto& f : cfg.faults)
      list += (list.empty() ? "" : ",") + to_string(f);
    std::printf("faults: %s\n", list.c_str());
  }
  std::fflush(stdout);
  job->on_start([&](uint64_t committed) {
    if (committed == 0)
      printer.note("state: " + state_dir + " holds no committed step of this job: fresh start");
    else
      printer.note("state: resuming from committed step " + std::to_string(committed) + " in " +
                   state_dir);
  });
  // --report: every line worth a mark or a point, also into the page.
  auto feed = [&](const std::string& line) { report.add(line); };
  auto say = [&](const std::string& line) {
    printer.note(line);
    feed(line);
  };
  auto write_report = [&] { report.write("digits_mlp"); };
  job->on_progress([&](const training_progress& pr) {
    printer.update(pr);
    feed(describe_progress(pr));
  });

  // Crashes and recoveries as lines of their own.
  auto crashes = std::make_shared<std::map<std::string, clock_type::time_point>>();
  auto events = std::make_shared<callback_sink>([&, crashes](const supervision_event& ev) {
    auto who = ev.supervisor + "/" + ev.child;
    if (ev.kind == event_kind::child_exited && ev.reason != "normal") {
      (*crashes)[who] = ev.time;
      say("crash: " + who + ": " + ev.reason);
    } else if (ev.kind == event_kind::hang_detected) {
      say("hang: " + who + " " + ev.reason + ": killed");
    } else if (ev.kind == event_kind::straggler_detected) {
      say("straggler: " + who + " " + ev.reason + ": restarted");
    } else if (ev.kind == event_kind::child_restarted) {
      say("restart: " + who + " incarnation " + std::to_string(ev.incarnation));
    } else if (ev.kind == event_kind::job_resumed) {
      feed(to_string(ev)); // the incident's cost and the steps it lost, for the report
    } else if (ev.kind == event_kind::state_fallback || ev.kind == event_kind::intensity_exceeded ||
               ev.kind == event_kind::start_failed) {
      say(to_string(ev));
    }
  });

  auto tree = rt.start(job->spec("digits_mlp", events));
  if (!tree) {
    std::fprintf(stderr, "digits_mlp: cannot start the job: %s\n", rt.render(tree.error()).c_str());
    return 1;
  }
  auto result = job->wait(std::chrono::milliseconds(0));
  while (!result && result.error() == caf::sec::request_timeout && interrupt.signal() == 0)
    result = job->wait(std::chrono::milliseconds(100));
  if (interrupt.signal() != 0 && !result) {
    // The steps in flight are committed, no new one starts; then the job ends
    // at the step the same command resumes from.
    job->request_stop();
    result = job->wait(std::chrono::seconds(30));
  }
  printer.end();
  rt.stop(*tree);
  if (interrupt.signal() != 0 && (!result || result->stopped)) {
    std::printf("interrupted: stopped at committed step %" PRIu64 " of %" PRIu64
                "; run the same command again to resume from it\n",
                result ? result->steps : job->committed_step(), steps);
    write_report();
    return 128 + interrupt.signal();
  }
  if (!result && is(result.error(), config_errc::invalid_job))
    return usage(rt.render(result.error()));
  if (!result) {
    std::fprintf(stderr, "digits_mlp: the job failed: %s\n", rt.render(result.error()).c_str());
    return 1;
  }
  if (result->stalls > 0)
    std::printf("stalls: %" PRIu64 " steps redone after a lost message\n", result->stalls);
  if (result->stragglers > 0)
    std::printf("stragglers: %" PRIu64 " workers restarted for staying behind the others\n",
                result->stragglers);
  if (result->hangs > 0)
    std::printf("hangs: %" PRIu64
                " actors stopped answering and were killed; the longest took %lld "
                "ms to find\n",
                result->hangs, static_cast<long long>(result->longest_hang_detection.count()));
  const auto final_line = describe_final(*result);
  std::printf("%s\n", final_line.c_str());
  std::printf("%s\n", describe_goodput(*result).c_str());
  feed(final_line);
  feed(describe_goodput(*result));
  write_report();
  return 0;
}
