#pragma once
// Ctrl-C (SIGINT) and SIGTERM for the training examples: noticed on a thread of
// their own, so that the program stops its job in order and says where it can
// resume, instead of dying mid-step.

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <thread>

namespace understudy::examples {

/// Blocks SIGINT and SIGTERM and waits for them on a thread of its own. Make it
/// first in main, before any thread starts, so that every thread inherits the
/// mask and none dies of the signal.
class interrupt_watch {
public:
  interrupt_watch() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread{[this] {
      int sig = 0;
      if (sigwait(&set_, &sig) == 0 && !closing_)
        signal_ = sig;
    }};
  }

  ~interrupt_watch() {
    closing_ = true;
    // Wakes the waiting thread with a signal meant for it alone.
    pthread_kill(thread_.native_handle(), SIGTERM);
    thread_.join();
  }

  interrupt_watch(const interrupt_watch&) = delete;
  interrupt_watch& operator=(const interrupt_watch&) = delete;

  /// The signal received (SIGINT or SIGTERM), 0 while none was.
  int signal() const { return signal_; }

private:
  sigset_t set_{};
  std::atomic<bool> closing_{false};
  std::atomic<int> signal_{0};
  std::thread thread_;
};

} // namespace understudy::examples
