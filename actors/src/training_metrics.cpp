#include "understudy/actors/training_metrics.hpp"

#include <chrono>
#include <deque>
#include <mutex>
#include <utility>

namespace understudy::actors {

struct training_metrics::state {
  std::chrono::steady_clock::duration rate_window;
  std::shared_ptr<metric_counter> steps;
  std::shared_ptr<metric_gauge> step;
  std::shared_ptr<metric_gauge> step_rate;
  std::shared_ptr<metric_gauge> slowest_worker;
  std::vector<std::shared_ptr<metric_gauge>> worker_ratio;
  std::shared_ptr<metric_gauge> last_commit;
  std::shared_ptr<metric_gauge> goodput;

  std::mutex mtx;
  uint64_t high_step = 0;
  std::deque<std::pair<std::chrono::steady_clock::time_point, uint64_t>> samples;

  void on_step(uint64_t committed, std::chrono::steady_clock::time_point now) {
    std::lock_guard<std::mutex> guard{mtx};
    if (committed > high_step) {
      steps->increment(static_cast<double>(committed - high_step));
      high_step = committed;
    }
    step->set(static_cast<double>(committed));
    last_commit->set(
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
    if (!samples.empty() && (committed < samples.back().second || now < samples.back().first))
      samples.clear(); // A rollback (or a clock going back) starts a new rate.
    samples.emplace_back(now, committed);
    // Keep one sample at or before the window's start as the base.
    while (samples.size() > 2 && samples[1].first <= now - rate_window)
      samples.pop_front();
    if (samples.size() < 2) {
      step_rate->set(0);
      return;
    }
    auto dt = std::chrono::duration<double>(samples.back().first - samples.front().first).count();
    auto ds = static_cast<double>(samples.back().second - samples.front().second);
    step_rate->set(dt > 0 ? ds / dt : 0.0);
  }

  /// At each scrape: a rate with no step inside the window reads zero.
  void zero_stale_rate() {
    std::lock_guard<std::mutex> guard{mtx};
    if (!samples.empty() && samples.back().first < std::chrono::steady_clock::now() - rate_window)
      step_rate->set(0);
  }
};

training_metrics::training_metrics(node_metrics& metrics,
                                   std::chrono::steady_clock::duration rate_window, size_t workers)
    : st_(std::make_shared<state>()) {
  for (size_t i = 0; i < workers; ++i)
    st_->worker_ratio.push_back(metrics.add_gauge(
        "understudy_training_worker_step_ratio",
        "Each worker's time to deliver its gradients over the workers' median, last step "
        "every worker delivered (0: not measured)",
        {{"worker", "worker-" + std::to_string(i)}}));
  st_->rate_window = rate_window;
  st_->steps = metrics.add_counter("understudy_training_steps_total",
                                   "Training steps committed (the highest committed step)");
  st_->step = metrics.add_gauge("understudy_training_step", "The last committed training step");
  st_->last_commit =
      metrics.add_gauge("understudy_training_last_commit_timestamp_seconds",
                        "Unix time of the last committed training step (0 before the first)");
  st_->step_rate = metrics.add_gauge("understudy_training_step_rate",
                                     "Training steps committed per second over the rate window");
  st_->slowest_worker = metrics.add_gauge(
      "understudy_training_slowest_worker_ratio",
      "The slowest worker's time to deliver its gradients over the workers' median, last step");
  st_->goodput = metrics.add_gauge(
      "understudy_training_goodput_ratio",
      "Share of the job's wall time on this leader spent in steps committed and kept");
  // Weak: the metrics keep their hooks, and the state keeps the metrics' registry.
  metrics.on_scrape([weak = std::weak_ptr<state>{st_}] {
    if (auto st = weak.lock())
      st->zero_stale_rate();
  });
}

void training_metrics::on_step(uint64_t committed_step, std::chrono::steady_clock::time_point now) {
  st_->on_step(committed_step, now);
}

void training_metrics::on_worker_ratio(double slowest) {
  st_->slowest_worker->set(slowest);
}

void training_metrics::on_worker_ratios(const std::vector<double>& ratios) {
  for (size_t i = 0; i < ratios.size() && i < st_->worker_ratio.size(); ++i)
    st_->worker_ratio[i]->set(ratios[i]);
}

void training_metrics::on_goodput(double share) {
  st_->goodput->set(share);
}

} // namespace understudy::actors
