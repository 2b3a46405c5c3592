#pragma once
// What the training examples print while they run.

#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>

#include "understudy/actors/training.hpp"

namespace understudy::examples {

using clock_type = std::chrono::steady_clock;

/// One updating line on a terminal, plain lines otherwise.
class progress_printer {
public:
  explicit progress_printer(bool tty) : tty_(tty) {}

  void update(const actors::training_progress& p) {
    std::lock_guard<std::mutex> guard{mtx_};
    auto now = clock_type::now();
    if (!first_) {
      first_ = p.step;
      first_time_ = now;
    }
    double secs = std::chrono::duration<double>(now - first_time_).count();
    double rate = secs > 0 ? static_cast<double>(p.step - *first_) / secs : 0.0;
    char tail[32];
    std::snprintf(tail, sizeof tail, " (%.0f steps/s)", rate);
    auto line = actors::describe_progress(p) + tail;
    // The last step once: when it is evaluated.
    if (p.step == p.steps && !p.finished)
      return;
    if (tty_) {
      if (now - last_ < std::chrono::milliseconds(100) && p.step != p.steps)
        return;
      std::printf("\r\033[K%s", line.c_str());
      dirty_ = true;
    } else {
      // Plain lines: every tenth of the job and the end.
      uint64_t tenth = p.steps >= 10 ? p.steps / 10 : 1;
      if ((p.step % tenth != 0 && p.step != p.steps) || p.step == printed_)
        return;
      printed_ = p.step;
      std::printf("%s\n", line.c_str());
    }
    last_ = now;
    std::fflush(stdout);
  }

  /// A line of its own (an event), without breaking the progress line.
  void note(const std::string& text) {
    std::lock_guard<std::mutex> guard{mtx_};
    if (dirty_)
      std::printf("\r\033[K");
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
    dirty_ = false;
  }

  void end() {
    std::lock_guard<std::mutex> guard{mtx_};
    if (dirty_)
      std::printf("\n");
    dirty_ = false;
  }

private:
  std::mutex mtx_;
  bool tty_;
  bool dirty_ = false;
  clock_type::time_point last_{};
  std::optional<uint64_t> first_;
  /// The step of the last plain line.
  uint64_t printed_ = 0;
  clock_type::time_point first_time_{};
};

} // namespace understudy::examples
