#include "understudy/supervision/supervision_event.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

namespace understudy {

std::string to_string(event_kind x) {
  switch (x) {
    case event_kind::child_started:
      return "child_started";
    case event_kind::child_exited:
      return "child_exited";
    case event_kind::child_restarted:
      return "child_restarted";
    case event_kind::start_failed:
      return "start_failed";
    case event_kind::hang_detected:
      return "hang_detected";
    case event_kind::straggler_detected:
      return "straggler_detected";
    case event_kind::shutdown_timeout:
      return "shutdown_timeout";
    case event_kind::child_stopped:
      return "child_stopped";
    case event_kind::intensity_exceeded:
      return "intensity_exceeded";
    case event_kind::supervisor_started:
      return "supervisor_started";
    case event_kind::supervisor_stopped:
      return "supervisor_stopped";
    case event_kind::state_restored:
      return "state_restored";
    case event_kind::state_fallback:
      return "state_fallback";
    case event_kind::state_fresh:
      return "state_fresh";
    case event_kind::job_resumed:
      return "job_resumed";
  }
  return "unknown";
}

std::string to_string(const supervision_event& ev) {
  std::string line = to_string(ev.kind);
  line += ' ';
  line += ev.supervisor;
  if (!ev.child.empty()) {
    line += '/';
    line += ev.child;
    line += '#';
    line += std::to_string(ev.incarnation);
  }
  if (!ev.action.empty()) {
    line += " action=";
    line += ev.action;
  }
  if (ev.duration.count() > 0) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), " %s=%.1fus",
                  ev.kind == event_kind::child_restarted      ? "recovery"
                  : ev.kind == event_kind::hang_detected      ? "waited"
                  : ev.kind == event_kind::straggler_detected ? "delivered_after"
                  : ev.kind == event_kind::job_resumed        ? "cost"
                  : ev.kind == event_kind::state_restored ||
                          ev.kind == event_kind::state_fallback ||
                          ev.kind == event_kind::state_fresh
                      ? "load"
                      : "backoff",
                  static_cast<double>(ev.duration.count()) / 1000.0);
    line += buf;
  }
  if (!ev.reason.empty()) {
    line += " reason=\"";
    line += ev.reason;
    line += '"';
  }
  return line;
}

event_sink::~event_sink() = default;

event_log::event_log(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {
  // Nothing to do.
}

void event_log::on_event(const supervision_event& ev) {
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (events_.size() == capacity_)
      events_.pop_front();
    events_.push_back(ev);
    ++total_;
  }
  cv_.notify_all();
}

std::vector<supervision_event> event_log::snapshot() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return {events_.begin(), events_.end()};
}

uint64_t event_log::total() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return total_;
}

bool event_log::wait_for(const std::function<bool(const std::vector<supervision_event>&)>& pred,
                         std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> guard{mtx_};
  return cv_.wait_for(guard, timeout, [&] {
    std::vector<supervision_event> copy{events_.begin(), events_.end()};
    return pred(copy);
  });
}

size_t event_log::count(event_kind kind, const std::string& child) const {
  std::lock_guard<std::mutex> guard{mtx_};
  return static_cast<size_t>(std::count_if(events_.begin(), events_.end(), [&](const auto& ev) {
    return ev.kind == kind && (child.empty() || ev.child == child);
  }));
}

callback_sink::callback_sink(std::function<void(const supervision_event&)> fn)
    : fn_(std::move(fn)) {
  // Nothing to do.
}

void callback_sink::on_event(const supervision_event& ev) {
  fn_(ev);
}

fanout_sink::fanout_sink(std::vector<std::shared_ptr<event_sink>> sinks)
    : sinks_(std::move(sinks)) {
  sinks_.erase(std::remove(sinks_.begin(), sinks_.end(), nullptr), sinks_.end());
}

void fanout_sink::on_event(const supervision_event& ev) {
  for (auto& s : sinks_)
    s->on_event(ev);
}

namespace {

class log_sink : public event_sink {
public:
  explicit log_sink(std::shared_ptr<spdlog::logger> logger) : logger_(std::move(logger)) {
    // Nothing to do.
  }

  void on_event(const supervision_event& ev) override {
    auto level = spdlog::level::info;
    switch (ev.kind) {
      case event_kind::child_exited:
        level = ev.action == "ignore" || ev.action == "remove" ? spdlog::level::info
                                                               : spdlog::level::warn;
        break;
      case event_kind::start_failed:
      case event_kind::hang_detected:
      case event_kind::straggler_detected:
      case event_kind::state_fallback:
      case event_kind::shutdown_timeout:
        level = spdlog::level::warn;
        break;
      case event_kind::intensity_exceeded:
        level = spdlog::level::err;
        break;
      default:
        break;
    }
    logger_->log(level, "{}", to_string(ev));
  }

private:
  std::shared_ptr<spdlog::logger> logger_;
};

} // namespace

bool valid_log_level(const std::string& level) {
  return level == "debug" || level == "info" || level == "warn" || level == "error" ||
         level == "off";
}

std::shared_ptr<event_sink> make_log_sink(const std::string& logger_name,
                                          const std::string& level) {
  // A logger of its own, not registered in spdlog's global registry.
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(logger_name, std::move(sink));
  logger->set_level(valid_log_level(level) ? spdlog::level::from_str(level) : spdlog::level::info);
  return std::make_shared<log_sink>(std::move(logger));
}

} // namespace understudy
