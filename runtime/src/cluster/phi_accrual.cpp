// The phi-accrual failure detector and the names of peer states.

#include <algorithm>
#include <chrono>
#include <cmath>

#include "understudy/cluster/cluster.hpp"

namespace understudy {

phi_accrual::phi_accrual(caf::timespan expected_interval, size_t window)
    // A floor on the spread: with a tight one, a loaded machine's scheduling
    // jitter alone looks like a failing peer (half the interval: phi 8 after
    // a silence of about 3.3 intervals).
    : min_stddev_(std::max(
          1.0, std::chrono::duration<double, std::milli>(expected_interval).count() / 2.0)),
      window_(std::max<size_t>(window, 2)) {
  // Seed with the expected interval, so that phi means something from the
  // second heartbeat on.
  auto ms = std::chrono::duration<double, std::milli>(expected_interval).count();
  for (int i = 0; i < 2; ++i) {
    intervals_.push_back(ms);
    sum_ += ms;
    sum_sq_ += ms * ms;
  }
}

void phi_accrual::heartbeat(clock::time_point t) {
  if (last_) {
    double ms = std::chrono::duration<double, std::milli>(t - *last_).count();
    intervals_.push_back(ms);
    sum_ += ms;
    sum_sq_ += ms * ms;
    while (intervals_.size() > window_) {
      auto old = intervals_.front();
      intervals_.pop_front();
      sum_ -= old;
      sum_sq_ -= old * old;
    }
  }
  last_ = t;
}

double phi_accrual::phi(clock::time_point now) const {
  if (!last_)
    return 0;
  double n = static_cast<double>(intervals_.size());
  double mean = sum_ / n;
  double var = std::max(0.0, sum_sq_ / n - mean * mean);
  double stddev = std::max(std::sqrt(var), min_stddev_);
  double elapsed = std::chrono::duration<double, std::milli>(now - *last_).count();
  // P(interval > elapsed) for a normal distribution, via the logistic
  // approximation of its CDF (as Akka and Cassandra do).
  double y = (elapsed - mean) / stddev;
  double e = std::exp(-y * (1.5976 + 0.070566 * y * y));
  double p_later = elapsed > mean ? e / (1.0 + e) : 1.0 - 1.0 / (1.0 + e);
  return -std::log10(std::max(p_later, 1e-300));
}

std::string to_string(peer_state x) {
  switch (x) {
    case peer_state::unknown:
      return "unknown";
    case peer_state::alive:
      return "alive";
    case peer_state::suspected:
      return "suspected";
    case peer_state::dead:
      return "dead";
  }
  return "?";
}

} // namespace understudy
