// own_model: trains a model that is not understudy's MLP, a small convolutional
// network (small_cnn.hpp), through the public API only: the data set, the
// model interface, training_job and the runtime. Actors crash on request
// (--fault) and the job still ends with the parameters of a run without them.
//
//   own_model [--steps 1500] [--fault worker:1@300,shard:0@700] [--state-dir DIR]
//             [--data digits.csv.gz] [--filters 8] [--workers 2] [--shards 2]
//
// It ends with `final: steps=S accuracy=A params_digest=HEX restarts=R`.
// Exit codes: 0 done, 1 the job failed, 2 bad options or input.
// docs/guide.md walks through it.

#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <understudy/actors/numerics/dataset.hpp>
#include <understudy/actors/training.hpp>
#include <understudy/core/errors.hpp>
#include <understudy/state/runtime.hpp>

#include "small_cnn.hpp"

using namespace understudy;
using namespace understudy::actors;

int main(int argc, char** argv) {
  CLI::App app{"own_model: a convolutional network of its own, trained fault-tolerantly",
               "own_model"};
  size_t workers = 2, shards = 2, filters = 8;
  uint64_t steps = 1500, seed = 1;
  double lr = 0.05;
  std::string state_dir = ".understudy/own_model", data_path, fault_spec;
#ifdef OWN_MODEL_DIGITS_DEFAULT
  data_path = OWN_MODEL_DIGITS_DEFAULT;
#endif
  app.add_option("--steps", steps, "synchronous steps")->capture_default_str();
  app.add_option("--workers", workers, "workers")->capture_default_str();
  app.add_option("--shards", shards, "parameter shards")->capture_default_str();
  app.add_option("--filters", filters, "convolution filters")->capture_default_str();
  app.add_option("--lr", lr, "learning rate")->capture_default_str();
  app.add_option("--state-dir", state_dir, "where the job persists its state")
      ->capture_default_str();
  app.add_option("--data", data_path, "digits CSV (gzip or plain): 64 pixels 0..16, then the label")
      ->capture_default_str();
  app.add_option("--fault", fault_spec, "crash actors: worker:I@S,shard:I@S,loader:I@S,trainer@S");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto usage = [](const std::string& what) {
    std::fprintf(stderr, "own_model: %s\n", what.c_str());
    return 2;
  };
  if (data_path.empty())
    return usage("--data is required (the digits CSV)");

  // The data: any dataset whose inputs fit the model's input_dim().
  auto data = load_csv(data_path, csv_options{csv_options::last_column, 1.0f / 16.0f, 10});
  if (!data)
    return usage("cannot load the data set: " + describe(data.error()));
  auto [train, test] = split(*data, 0.2, seed);

  // The job: the model is the only thing that is ours.
  training_config cfg;
  try {
    cfg.net = std::make_shared<own_model::small_cnn>(filters, 10);
  } catch (const std::invalid_argument& e) {
    return usage(e.what());
  }
  cfg.train = std::make_shared<dataset>(std::move(train));
  cfg.test = std::make_shared<dataset>(std::move(test));
  cfg.workers = workers;
  cfg.shards = shards;
  cfg.loaders = 1;
  cfg.batch = 64;
  cfg.micro_batches = 8;
  cfg.steps = steps;
  cfg.seed = seed;
  cfg.eval_every = 0;
  cfg.optimizer.lr = lr;
  auto faults = parse_faults(fault_spec, workers, shards, 1, steps, seed);
  if (!faults)
    return usage(describe(faults.error()));
  cfg.faults = std::move(*faults);
  if (auto err = validate(cfg))
    return usage(describe(err));

  // The runtime, the state store and the job's supervision tree.
  runtime_config rc;
  rc.log_events = false;
  runtime rt{rc};
  state_store_config sc;
  sc.directory = state_dir;
  auto store = rt.open_state(sc);
  if (!store)
    return usage("cannot open " + state_dir + ": " + rt.render(store.error()));
  auto job = training_job::create(cfg, *store);
  if (!job)
    return usage(rt.render(job.error()));
  std::printf("own_model: %s, %zu workers, %zu shards, %" PRIu64 " steps\n",
              cfg.net->describe().c_str(), workers, shards, steps);
  job->on_start([&](uint64_t committed) {
    std::printf("state: %s\n",
                committed == 0
                    ? "fresh start"
                    : ("resuming from committed step " + std::to_string(committed)).c_str());
  });
  auto tree = rt.start(job->spec("own_model"));
  if (!tree)
    return usage(rt.render(tree.error()));
  auto result = job->wait(std::chrono::hours(1));
  rt.stop(*tree);
  if (!result) {
    std::fprintf(stderr, "own_model: the job failed: %s\n", rt.render(result.error()).c_str());
    return 1;
  }
  std::printf("final: steps=%" PRIu64 " accuracy=%.4f params_digest=%016" PRIx64
              " restarts=%" PRIu64 "\n",
              result->steps, result->accuracy, result->params_digest, result->restarts);
  return 0;
}
