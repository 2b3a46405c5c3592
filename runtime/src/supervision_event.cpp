#include "understudy/runtime/supervision_event.hpp"

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
                  ev.kind == event_kind::child_restarted ? "recovery" : "backoff",
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

} // namespace understudy
