// The supervisor's restart intensity (restarts within a period), backoff delays and escalation.

#include <algorithm>
#include <cmath>
#include <random>

#include "supervisor_actor.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::supervision_detail {

bool supervisor_actor::count_restart() {
  auto t = now();
  restart_times_.push_back(t);
  while (!restart_times_.empty() && t - restart_times_.front() > spec_.intensity.period)
    restart_times_.pop_front();
  return static_cast<int>(restart_times_.size()) <= spec_.intensity.max_restarts;
}

caf::timespan supervisor_actor::next_backoff(child_rec& rec, time_point crash_time) {
  const auto& b = spec_.backoff;
  if (!b.enabled())
    return caf::timespan{0};
  if (rec.started_at != time_point{} && crash_time - rec.started_at >= b.reset_after)
    rec.backoff_attempt = 0;
  double d = static_cast<double>(b.min.count()) *
             std::pow(b.multiplier, static_cast<double>(rec.backoff_attempt));
  auto cap = static_cast<double>(std::max(b.max, b.min).count());
  d = std::min(d, cap);
  if (b.jitter > 0) {
    std::uniform_real_distribution<double> dist(-b.jitter, b.jitter);
    d = std::min(cap, d * (1.0 + dist(rng_)));
  }
  ++rec.backoff_attempt;
  return caf::timespan{static_cast<caf::timespan::rep>(d)};
}

void supervisor_actor::escalate(child_rec* rec, const caf::error& reason) {
  auto err = make_error(supervision_errc::intensity_exceeded,
                        path_ + ": more than " + std::to_string(spec_.intensity.max_restarts) +
                            " restarts within " +
                            std::to_string(spec_.intensity.period.count() / 1000000) +
                            " ms; last: " + rec->spec.id + " " + describe(reason));
  record(event_kind::intensity_exceeded, rec, describe(reason), "escalate");
  replace_with_stop_all(err, true);
}

} // namespace understudy::supervision_detail
