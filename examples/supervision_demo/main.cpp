// supervision_demo: what `make demo` runs. Embeds the understudy runtime, starts a small
// training-shaped supervision tree, injects four different failures and shows every
// supervision event live: who failed, why, what the supervisor did and how long recovery took.
//
//   /job            one_for_one, exponential backoff 50..400 ms (+/-20% jitter), 10 restarts / 10 s
//   +- data_loader  permanent worker
//   +- trainers     nested supervisor, one_for_all
//   |  +- worker-0
//   |  +- worker-1
//   +- checkpointer worker with a 500 ms liveness deadline (reports progress on every tick)
//
// Exits 0 when every fault was recovered from and the tree shut down cleanly; 1 otherwise.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include "understudy/runtime/runtime.hpp"

namespace {

using namespace std::chrono_literals;
using understudy::event_kind;
using understudy::supervision_event;
using clock_type = std::chrono::steady_clock;

// -- the children ------------------------------------------------------------------------

using step_atom = caf::atom_constant<caf::atom("step")>;
using crash_atom = caf::atom_constant<caf::atom("crash")>;
using fail_atom = caf::atom_constant<caf::atom("fail")>;
using hang_atom = caf::atom_constant<caf::atom("hang")>;

struct step_state {
  uint64_t steps = 0;
  bool hung = false;
};

/// A stand-in for a training actor: makes one "step" every `period` and answers
/// `get_atom` with the steps made by this incarnation. On request it fails:
/// `crash_atom` throws out of the handler, `fail_atom` exits with an error, and
/// `hang_atom` makes it go quiet (no more steps, no more progress reports).
/// With a non-empty `token` every step is also a progress report for the
/// supervisor's liveness deadline.
caf::behavior stepper(caf::stateful_actor<step_state>* self, caf::timespan period,
                      understudy::child_token token) {
  // Keep what() in the exit reason so the supervisor's event says why.
  understudy::capture_exceptions(self);
  self->send(self, step_atom::value);
  return {
      [=](step_atom) {
        if (self->state.hung)
          return;
        ++self->state.steps;
        understudy::report_progress(token);
        self->delayed_send(self, period, step_atom::value);
      },
      [=](caf::get_atom) { return self->state.steps; },
      [=](crash_atom) { throw std::runtime_error("injected: loss became NaN"); },
      [=](fail_atom) {
        self->quit(caf::make_error(caf::sec::runtime_error, std::string{"input shard unreadable"}));
      },
      [=](hang_atom) { self->state.hung = true; },
  };
}

/// A permanent worker running `stepper` without liveness checks.
understudy::child_spec stepping_worker(std::string id, caf::timespan period) {
  return understudy::worker(std::move(id), stepper, period, understudy::child_token{});
}

// -- output ------------------------------------------------------------------------------

/// Serializes lines from main() and from the supervisors' event callbacks.
class console {
public:
  explicit console(clock_type::time_point t0) : t0_(t0) {}

  void line(const std::string& text) {
    std::lock_guard<std::mutex> guard{mtx_};
    std::fputs(text.c_str(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }

  /// Seconds since the demo began, e.g. "  1.234s".
  std::string stamp(clock_type::time_point t) const {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%7.3fs", std::chrono::duration<double>(t - t0_).count());
    return buf;
  }

private:
  std::mutex mtx_;
  clock_type::time_point t0_;
};

std::string pretty(caf::timespan d) {
  char buf[32];
  auto us = std::chrono::duration<double, std::micro>(d).count();
  if (us < 1000.0)
    std::snprintf(buf, sizeof(buf), "%.0f us", us);
  else
    std::snprintf(buf, sizeof(buf), "%.1f ms", us / 1000.0);
  return buf;
}

std::string pad(std::string s, size_t width) {
  if (s.size() < width)
    s.append(width - s.size(), ' ');
  return s;
}

/// One readable line per supervision event.
std::string render(const supervision_event& ev, const console& out, bool shutting_down) {
  std::string who = ev.supervisor;
  if (!ev.child.empty())
    who += "/" + ev.child + "#" + std::to_string(ev.incarnation);
  std::string what;
  std::string detail;
  switch (ev.kind) {
    case event_kind::child_started:
      what = "started";
      break;
    case event_kind::child_exited:
      what = "exited";
      detail = ev.reason + "  -> " + ev.action;
      if (ev.duration.count() > 0)
        detail += " after " + pretty(ev.duration) + " backoff";
      break;
    case event_kind::child_restarted:
      what = "restarted";
      detail = "serving again, recovery " + pretty(ev.duration) + " (crash -> serving)";
      break;
    case event_kind::start_failed:
      what = "START FAILED";
      detail = ev.reason;
      break;
    case event_kind::hang_detected:
      what = "hang";
      detail = ev.reason + "  -> " + ev.action;
      break;
    case event_kind::shutdown_timeout:
      what = "shutdown timeout";
      detail = ev.reason + "  -> " + ev.action;
      break;
    case event_kind::child_stopped:
      what = "stopped";
      detail = shutting_down ? "shutdown (" + ev.reason + ")"
                             : "stopped by its supervisor to restart the group";
      break;
    case event_kind::intensity_exceeded:
      what = "GAVE UP";
      detail = "restart intensity exceeded: " + ev.reason + "  -> " + ev.action;
      break;
    case event_kind::supervisor_started:
      what = "supervisor up";
      detail = "all children serving";
      break;
    case event_kind::supervisor_stopped:
      what = "supervisor down";
      detail = ev.reason;
      break;
  }
  auto line = "  " + out.stamp(ev.time) + "  " + pad(who, 30) + pad(what, 17) + detail;
  line.erase(line.find_last_not_of(' ') + 1);
  return line;
}

// -- fault injection ---------------------------------------------------------------------

/// One injected failure and what the tree should do about it.
struct fault {
  /// Printed before injecting, e.g. "exception escaping a handler".
  std::string kind;
  /// Where the victim lives: "job" or "trainers".
  std::string supervisor;
  std::string child;
  /// What the supervisor should do, for the reader.
  std::string expect;
  /// Children (of `supervisor`) that must be serving a new incarnation afterwards.
  std::vector<std::string> restarted;
  /// Does the damage.
  std::function<void(const caf::actor&)> inject;
};

uint64_t steps_of(caf::actor_system& sys, const caf::actor& h) {
  caf::scoped_actor self{sys};
  uint64_t steps = 0;
  self->request(h, 1s, caf::get_atom::value)
      .receive([&](uint64_t n) { steps = n; }, [](caf::error&) {});
  return steps;
}

uint64_t incarnation_of(const std::vector<understudy::child_info>& kids, const std::string& id) {
  for (auto& k : kids)
    if (k.id == id)
      return k.incarnation;
  return 0;
}

} // namespace

int main() {
  const auto t0 = clock_type::now();
  console out{t0};
  std::atomic<bool> shutting_down{false};

  // Every event goes to the console (live) and to a log main() can wait on.
  auto log = std::make_shared<understudy::event_log>();
  auto printer = std::make_shared<understudy::callback_sink>(
      [&](const supervision_event& ev) { out.line(render(ev, out, shutting_down.load())); });

  understudy::runtime_config cfg;
  cfg.worker_threads = 2;
  cfg.events = std::make_shared<understudy::fanout_sink>(
      std::vector<std::shared_ptr<understudy::event_sink>>{printer, log});
  cfg.log_events = false; // The demo prints its own lines; no second copy on stderr.
  understudy::runtime rt{cfg};

  auto backoff = understudy::backoff_policy::exponential(50ms, 400ms, 0.2);

  understudy::supervisor_spec trainers;
  trainers.name = "trainers";
  trainers.strategy = understudy::restart_strategy::one_for_all;
  trainers.intensity = {10, 10s};
  trainers.backoff = backoff;
  trainers.children = {stepping_worker("worker-0", 20ms), stepping_worker("worker-1", 20ms)};

  understudy::child_spec checkpointer;
  checkpointer.id = "checkpointer";
  checkpointer.liveness_deadline = 500ms;
  checkpointer.start = [](understudy::child_context& ctx) -> caf::expected<caf::actor> {
    return caf::actor{ctx.system.spawn(stepper, caf::timespan{100ms}, ctx.token)};
  };

  understudy::supervisor_spec job;
  job.name = "job";
  job.strategy = understudy::restart_strategy::one_for_one;
  job.intensity = {10, 10s};
  job.backoff = backoff;
  job.children = {stepping_worker("data_loader", 10ms), understudy::supervisor_child(trainers),
                  checkpointer};

  out.line("understudy supervision demo");
  out.line("  A small training job runs as a supervision tree; main() injects four different");
  out.line("  failures and the supervisors bring the failed actors back. Each event line shows");
  out.line("  time since start, supervisor path/child#incarnation, what happened and why.");
  out.line("");
  out.line("  /job             one_for_one, backoff 50..400 ms +/-20%, max 10 restarts in 10 s");
  out.line("  +- data_loader   worker, 1 batch / 10 ms");
  out.line("  +- trainers      supervisor, one_for_all");
  out.line("  |  +- worker-0   worker, 1 step / 20 ms");
  out.line("  |  +- worker-1   worker, 1 step / 20 ms");
  out.line("  +- checkpointer  worker, 1 checkpoint / 100 ms, liveness deadline 500 ms");
  out.line("");
  out.line("starting the tree:");

  auto root = rt.start(job);
  if (!root) {
    std::fprintf(stderr, "demo: the tree did not start: %s\n", rt.render(root.error()).c_str());
    return 1;
  }
  std::this_thread::sleep_for(1s); // Let the job make some progress.

  auto supervisor = [&](const std::string& name) -> caf::expected<understudy::supervisor_ref> {
    if (name == "job")
      return *root;
    auto h = root->resolve(name);
    if (!h)
      return h.error();
    return understudy::supervisor_ref{rt.system(), *h};
  };

  std::vector<fault> faults;
  faults.push_back({"an exception escapes a message handler",
                    "trainers",
                    "worker-0",
                    "one_for_all: trainers stops worker-1 and restarts both",
                    {"worker-0", "worker-1"},
                    [](const caf::actor& h) { caf::anon_send(h, crash_atom::value); }});
  faults.push_back({"exits with an error (quit(sec::runtime_error))",
                    "job",
                    "data_loader",
                    "one_for_one: only data_loader restarts",
                    {"data_loader"},
                    [](const caf::actor& h) { caf::anon_send(h, fail_atom::value); }});
  faults.push_back({"is killed (exit_reason::kill)",
                    "job",
                    "data_loader",
                    "second crash in a row: the backoff doubles",
                    {"data_loader"},
                    [](const caf::actor& h) { caf::anon_send_exit(h, caf::exit_reason::kill); }});
  faults.push_back({"hangs (stops reporting progress)",
                    "job",
                    "checkpointer",
                    "liveness deadline passes: the supervisor kills and restarts it",
                    {"checkpointer"},
                    [](const caf::actor& h) { caf::anon_send(h, hang_atom::value); }});

  std::vector<caf::timespan> recoveries;
  std::string failure;
  int n = 0;
  for (auto& f : faults) {
    ++n;
    auto sup = supervisor(f.supervisor);
    if (!sup) {
      failure = "cannot reach supervisor " + f.supervisor + ": " + rt.render(sup.error());
      break;
    }
    auto kids = sup->which_children();
    auto victim = sup->resolve(f.child);
    if (!kids || !victim) {
      failure =
          "cannot resolve " + f.child + ": " + rt.render(kids ? victim.error() : kids.error());
      break;
    }
    std::vector<uint64_t> before;
    for (auto& id : f.restarted)
      before.push_back(incarnation_of(*kids, id));
    auto victim_inc = incarnation_of(*kids, f.child);
    auto path = f.supervisor == "job" ? std::string{"/job"} : "/job/" + f.supervisor;
    out.line("");
    out.line("fault " + std::to_string(n) + "/" + std::to_string(faults.size()) + ": " + f.child +
             "#" + std::to_string(victim_inc) + " (at step " +
             std::to_string(steps_of(rt.system(), *victim)) + ") " + f.kind);
    out.line("  expected: " + f.expect);
    auto injected_at = clock_type::now();
    f.inject(*victim);

    // Recovered once every child of the group serves a newer incarnation.
    auto recovered = [&](const std::vector<supervision_event>& evs) {
      for (size_t i = 0; i < f.restarted.size(); ++i) {
        bool found = std::any_of(evs.begin(), evs.end(), [&](const supervision_event& ev) {
          return ev.kind == event_kind::child_restarted && ev.supervisor == path &&
                 ev.child == f.restarted[i] && ev.incarnation > before[i];
        });
        if (!found)
          return false;
      }
      return true;
    };
    if (!log->wait_for(recovered, 5s)) {
      failure =
          "fault " + std::to_string(n) + ", " + f.child + " " + f.kind + ": no recovery within 5 s";
      break;
    }
    caf::timespan backoff_delay{0};
    for (auto& ev : log->snapshot()) {
      if (ev.supervisor != path || ev.child != f.child)
        continue;
      if (ev.kind == event_kind::hang_detected && ev.incarnation == victim_inc)
        out.line("  hang detected " + pretty(ev.time - injected_at) +
                 " after the injection (deadline: 500 ms without a progress report)");
      if (ev.kind == event_kind::child_exited && ev.incarnation == victim_inc)
        backoff_delay = ev.duration;
      if (ev.kind == event_kind::child_restarted && ev.incarnation > victim_inc) {
        recoveries.push_back(ev.duration);
        out.line("  recovered: " + f.child + "#" + std::to_string(ev.incarnation) + " serving " +
                 pretty(ev.duration) + " after the crash (" + pretty(backoff_delay) +
                 " backoff + " + pretty(ev.duration - backoff_delay) + " restart)");
      }
    }
    std::this_thread::sleep_for(1s); // Pace the demo so the reader can follow.
  }

  int rc = 0;
  if (failure.empty()) {
    out.line("");
    out.line("children after " + std::to_string(faults.size()) + " faults:");
    out.line("  " + pad("child", 24) + pad("kind", 12) + pad("status", 12) +
             pad("incarnation", 13) + "restarts");
    for (const char* name : {"job", "trainers"}) {
      auto sup = supervisor(name);
      if (!sup) {
        failure = std::string{"cannot reach supervisor "} + name + ": " + rt.render(sup.error());
        break;
      }
      auto kids = sup->which_children();
      if (!kids) {
        failure = std::string{"which_children failed for "} + name + ": " + rt.render(kids.error());
        break;
      }
      std::string prefix = std::string{name} == "job" ? "/job/" : "/job/trainers/";
      for (auto& k : *kids)
        out.line("  " + pad(prefix + k.id, 24) +
                 pad(k.kind == understudy::child_kind::supervisor ? "supervisor" : "worker", 12) +
                 pad(understudy::to_string(k.status), 12) + pad(std::to_string(k.incarnation), 13) +
                 std::to_string(k.restarts));
    }
  }
  if (!failure.empty()) {
    std::fprintf(stderr, "demo: FAILED: %s\n", failure.c_str());
    rc = 1;
  }

  out.line("");
  out.line("shutting down (children stop in reverse start order):");
  shutting_down = true;
  auto stop_err = rt.stop(*root, 10s);
  if (stop_err) {
    std::fprintf(stderr, "demo: FAILED: shutdown: %s\n", rt.render(stop_err).c_str());
    return 1;
  }
  if (rc != 0)
    return rc;

  std::sort(recoveries.begin(), recoveries.end());
  caf::timespan median{0};
  if (!recoveries.empty()) {
    auto k = recoveries.size();
    median = k % 2 == 1 ? recoveries[k / 2] : (recoveries[k / 2 - 1] + recoveries[k / 2]) / 2;
  }
  out.line("");
  out.line("demo: " + std::to_string(faults.size()) + " faults injected, " +
           std::to_string(recoveries.size()) + " recoveries, median recovery " + pretty(median) +
           ", clean shutdown");
  return recoveries.size() == faults.size() ? 0 : 1;
}
