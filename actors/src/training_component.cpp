#include "understudy/actors/training_component.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>

#include <caf/sec.hpp>
#include <nlohmann/json.hpp>

#include "understudy/actors/cluster_training.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/actors/snapshot_shipping.hpp"
#include "understudy/actors/training_metrics.hpp"
#include "understudy/metrics/metrics.hpp"

namespace understudy::actors {

namespace {

using clock_type = std::chrono::steady_clock;

std::string accuracy_text(double accuracy) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%.4f", accuracy);
  return buf;
}

/// One node's share of the training job (see cluster_training).
class training_part : public node_part {
public:
  training_part(std::unique_ptr<cluster_training> ct, std::unique_ptr<training_metrics> metrics,
                std::unique_ptr<node_part> shipping)
      : ct_(std::move(ct)), metrics_(std::move(metrics)), shipping_(std::move(shipping)) {}

  std::string takeover_reason() const override { return "the trainer's node is lost"; }

  void before_tree(leader_context& ctx) override {
    auto& job = ct_->job();
    const auto steps = job.config().steps;
    const uint64_t every = std::max<uint64_t>(1, steps / 20);
    {
      std::lock_guard<std::mutex> guard{mtx_};
      started_ = clock_type::now();
    }
    auto* out = &ctx.out;
    job.on_start([this, out](uint64_t committed) {
      {
        std::lock_guard<std::mutex> guard{mtx_};
        started_ = clock_type::now();
        first_step_ = committed;
      }
      out->say(committed == 0 ? "job: fresh start"
                              : "job: resuming from committed step " + std::to_string(committed));
    });
    job.on_progress([this, out, mp = metrics_.get(), steps, every,
                     last = uint64_t{0}](const training_progress& p) mutable {
      double rate = 0;
      {
        std::lock_guard<std::mutex> guard{mtx_};
        latest_ = p;
        rate = steps_per_s_locked(p.step);
      }
      if (mp != nullptr) {
        mp->on_step(p.step);
        mp->on_worker_ratio(p.slowest_worker_ratio);
        mp->on_worker_ratios(p.worker_ratios);
        mp->on_goodput(p.goodput);
      }
      // The last step once, when it is evaluated; the others every twentieth of the job.
      if (p.step == steps ? !p.finished : p.step / every == last / every)
        return;
      last = p.step;
      char tail[64];
      std::snprintf(tail, sizeof tail, " (%.0f steps/s, goodput %.1f%%)", rate, 100.0 * p.goodput);
      out->say("progress: " + describe_progress(p) + tail);
    });
  }

  std::optional<child_spec> make_child(const tree_child& c,
                                       const std::shared_ptr<event_sink>& events) override {
    if (c.type != "training_job")
      return std::nullopt;
    return supervisor_child(ct_->spec(events, c.name), c.restart);
  }

  bool has_end() const override { return true; }

  void stop() override {
    // Stopped before the end (Ctrl-C, SIGTERM): the steps in flight are
    // committed and no new one starts, so that the note below is exact.
    auto& job = ct_->job();
    job.request_stop();
    job.wait(std::chrono::seconds(3));
  }

  std::string status() const override {
    std::lock_guard<std::mutex> guard{mtx_};
    if (!latest_)
      return "job: not started yet\n";
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "job: step %" PRIu64 "/%" PRIu64 " (committed %" PRIu64
                  "), %.0f steps/s, loss %.4g"
                  ", accuracy %s, restarts %" PRIu64 ", lost steps %" PRIu64
                  ", goodput %.1f%% (share of the wall time in committed steps)\n",
                  latest_->step, latest_->steps, ct_->job().committed_step(),
                  steps_per_s_locked(latest_->step), static_cast<double>(latest_->loss),
                  latest_->accuracy < 0 ? "-" : accuracy_text(latest_->accuracy).c_str(),
                  latest_->restarts, latest_->lost_steps, 100.0 * latest_->goodput);
    return buf;
  }

  std::string status_json() const override {
    using nlohmann::json;
    std::lock_guard<std::mutex> guard{mtx_};
    if (!latest_)
      return json{{"job", {{"started", false}}}}.dump();
    const auto& p = *latest_;
    return json{{"job",
                 {{"started", true},
                  {"step", p.step},
                  {"steps", p.steps},
                  {"committed", ct_->job().committed_step()},
                  {"steps_per_s", steps_per_s_locked(p.step)},
                  {"loss", p.loss},
                  {"accuracy", p.accuracy < 0 ? json(nullptr) : json(p.accuracy)},
                  {"restarts", p.restarts},
                  {"lost_steps", p.lost_steps},
                  {"goodput", p.goodput}}}}
        .dump();
  }

  std::string stopped_note() const override {
    const auto& job = ct_->job();
    return "job: stopped at committed step " + std::to_string(job.committed_step()) + " of " +
           std::to_string(job.config().steps) +
           "; it resumes from there when the cluster starts again";
  }

  std::optional<work_end> await_end(std::chrono::milliseconds timeout) override {
    auto result = ct_->job().wait(timeout);
    if (!result && result.error() == caf::sec::request_timeout)
      return std::nullopt;
    work_end end;
    if (!result) {
      end.error = std::move(result.error());
      return end;
    }
    // The node prints "final: " and the summary.
    end.summary = describe_final(*result).substr(std::string{"final: "}.size());
    end.after.push_back(describe_goodput(*result));
    return end;
  }

private:
  /// Steps per second up to `step`, counting only the steps this run computed
  /// (not those it resumed from). Needs mtx_.
  double steps_per_s_locked(uint64_t step) const {
    double secs = std::chrono::duration<double>(clock_type::now() - started_).count();
    double run = step > first_step_ ? static_cast<double>(step - first_step_) : 0.0;
    return secs > 0 ? run / secs : 0.0;
  }

  std::unique_ptr<cluster_training> ct_;
  /// The job's metrics, registered at zero on every node that serves metrics.
  std::unique_ptr<training_metrics> metrics_;
  /// The latest progress, for the status report, and when and where this run
  /// started.
  /// [snapshots] on the node that ships them.
  std::unique_ptr<node_part> shipping_;
  mutable std::mutex mtx_;
  clock_type::time_point started_ = clock_type::now();
  uint64_t first_step_ = 0;
  std::optional<training_progress> latest_;
};

class training_node_component : public node_component {
public:
  void prepare_loading(node_config_options& opts) const override {
    opts.sections.push_back(job_section());
    opts.sections.push_back(snapshots_section());
  }

  void register_types(caf::actor_system_config& cfg) const override {
    register_training_types(cfg);
  }

  std::vector<std::string> leader_candidates(const node_config& nc) const override {
    if (job_of(nc) == nullptr)
      return {}; // no preference without a job
    return actors::leader_candidates(nc);
  }

  caf::error check(const node_config& nc) const override {
    if (auto err = check_not_superseded(nc))
      return err;
    if (job_of(nc) == nullptr) {
      if (const auto* sc = snapshots_of(nc))
        return make_error(config_errc::missing_key,
                          nc.origin + ":" + std::to_string(sc->line) +
                              ": [snapshots] ships a training job's committed steps; the file "
                              "has no [job]");
      return {};
    }
    // Loads the data and builds the model, as the leader will.
    auto tc = make_training_config(nc);
    if (!tc)
      return std::move(tc.error());
    return validate(*tc);
  }

  caf::expected<std::unique_ptr<node_part>> attach(cluster_node& node, const node_config& nc,
                                                   node_metrics* metrics) const override {
    // A cluster without a [job] (e.g. one that only serves) has no part of it.
    if (job_of(nc) == nullptr)
      return std::make_unique<node_part>();
    auto ct = cluster_training::create(node, nc);
    if (!ct)
      return ct.error();
    std::unique_ptr<training_metrics> tm;
    if (metrics != nullptr && job_of(nc) != nullptr)
      tm = std::make_unique<training_metrics>(*metrics, std::chrono::seconds(10),
                                              job_of(nc)->training.workers);
    auto shipping = attach_snapshot_shipping(node, nc, metrics);
    if (!shipping)
      return shipping.error();
    return std::unique_ptr<node_part>{
        std::make_unique<training_part>(std::move(*ct), std::move(tm), std::move(*shipping))};
  }
};

} // namespace

std::shared_ptr<const node_component> training_component() {
  return std::make_shared<training_node_component>();
}

} // namespace understudy::actors
