// supervision_demo: what `make demo` runs. Embeds the understudy runtime, starts a small
// training-shaped supervision tree, injects four different failures and shows every
// supervision event live: who failed, why, what the supervisor did and how long recovery took.
//
//   /job            one_for_one, exponential backoff 50..400 ms (+/-20% jitter), 10 restarts / 10 s
//   +- data_loader  permanent worker
//   +- trainers     nested supervisor, one_for_all
//   |  +- worker-0
//   |  +- worker-1
//   +- checkpointer persistent worker with a 500 ms liveness deadline: every tick advances its
//                   cumulative step count, reports progress and checkpoints its state to the
//                   node's state store (LMDB under .understudy/demo-state, sync_each_commit)
//
// The state directory is wiped at the start, so the first checkpointer starts fresh. When it
// hangs and is restarted, its new incarnation loads the newest durable checkpoint from the
// store (never the dead incarnation's memory); the demo checks that it resumes at or after the
// last step acknowledged as durable before the fault.
//
// Exits 0 when every fault was recovered from, the checkpointer's state was restored and the
// tree shut down cleanly; 1 otherwise.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include "understudy/schema/state.capnp.h"
#include "understudy/state/persistent.hpp"
#include "understudy/state/runtime.hpp"

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

using durable_atom = caf::atom_constant<caf::atom("durable")>;

/// The checkpointer's persisted state: the cumulative step count over all
/// incarnations and a small stand-in for model weights (a tensor). Each step
/// adds 1 to one weight, so the weights always sum to the step count.
struct checkpointer_state {
  static constexpr size_t weight_count = 256;
  uint64_t steps = 0;
  std::vector<float> weights = std::vector<float>(weight_count, 0.0f);
};

} // namespace

/// Stores checkpointer_state as the generic TensorState: `step` holds the step
/// count, the weights go in the tensor "weights".
template <>
struct understudy::state_codec<checkpointer_state> {
  using schema = understudy::schema::TensorState;
  static constexpr uint32_t version = 1;

  static void save(const checkpointer_state& st, understudy::state_encoder& enc) {
    auto root = enc.init_root<schema>();
    root.setStep(st.steps);
    root.setNote("supervision_demo checkpointer");
    enc.add_tensor(
        understudy::tensor_data::copy_of("weights", understudy::element_type::f32, st.weights));
  }

  static caf::error load(understudy::state_decoder& dec, checkpointer_state& st) {
    st.steps = dec.root<schema>().getStep();
    if (auto err = dec.read_tensor("weights", st.weights))
      return err;
    double sum = 0;
    for (auto w : st.weights)
      sum += w;
    if (st.weights.size() != checkpointer_state::weight_count ||
        sum != static_cast<double>(st.steps))
      return understudy::make_error(
          understudy::state_errc::corrupt_record,
          "checkpointer weights do not match step " + std::to_string(st.steps));
    return {};
  }
};

namespace {

/// The checkpointer: one step every `period`, each a progress report for the
/// liveness deadline and an asynchronous checkpoint of the whole state. Its
/// state comes from the store (persistent_child loads it before this runs).
/// Answers `get_atom` with the cumulative steps and `durable_atom` with the
/// newest step this incarnation had acknowledged as durable (0 for none).
/// `hang_atom` makes it go quiet; a failed checkpoint ends it with the error.
caf::behavior checkpointer(caf::event_based_actor* self,
                           std::shared_ptr<understudy::persistent<checkpointer_state>> st,
                           caf::timespan period) {
  auto hung = std::make_shared<bool>(false);
  self->send(self, step_atom::value);
  return {
      [=](step_atom) {
        if (*hung)
          return;
        auto& s = st->value();
        ++s.steps;
        s.weights[s.steps % s.weights.size()] += 1.0f;
        understudy::report_progress(st->identity().token);
        st->checkpoint(s.steps, [self](caf::expected<uint64_t> durable) {
          if (!durable)
            self->quit(durable.error());
        });
        self->delayed_send(self, period, step_atom::value);
      },
      [=](caf::get_atom) { return st->value().steps; },
      [=](durable_atom) { return st->durable_step().value_or(0); },
      [=](hang_atom) { *hung = true; },
  };
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
    case event_kind::straggler_detected:
      what = "straggler";
      detail = ev.reason + "  -> " + ev.action;
      break;
    case event_kind::job_resumed:
      what = "resumed";
      detail = ev.reason + ", the incident cost " + pretty(ev.duration);
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
    case event_kind::state_restored:
      what = "state restored";
      detail = ev.action + " from the store, loaded in " + pretty(ev.duration);
      break;
    case event_kind::state_fallback:
      what = "STATE FALLBACK";
      detail = ev.action + " in " + pretty(ev.duration) + " (" + ev.reason + ")";
      break;
    case event_kind::state_fresh:
      what = "fresh state";
      detail = ev.reason + "  -> starting from step 0";
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

/// Asks `h` for a step count (`get_atom`: steps made; `durable_atom`: last durable step).
template <class Atom = caf::get_atom>
uint64_t steps_of(caf::actor_system& sys, const caf::actor& h, Atom what = caf::get_atom::value) {
  caf::scoped_actor self{sys};
  uint64_t steps = 0;
  self->request(h, 1s, what).receive([&](uint64_t n) { steps = n; }, [](caf::error&) {});
  return steps;
}

/// The step loaded according to a state_restored or state_fallback event.
uint64_t restored_step_of(const supervision_event& ev) {
  return ev.state_step.value_or(0);
}

bool is_state_event(const supervision_event& ev) {
  return ev.kind == event_kind::state_restored || ev.kind == event_kind::state_fallback ||
         ev.kind == event_kind::state_fresh;
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

  // Every run starts from an empty store; the checkpointer's versions live here.
  const std::string state_dir = ".understudy/demo-state";
  std::error_code wipe_err;
  std::filesystem::remove_all(state_dir, wipe_err);
  if (wipe_err) {
    std::fprintf(stderr, "demo: cannot wipe %s: %s\n", state_dir.c_str(),
                 wipe_err.message().c_str());
    return 1;
  }
  understudy::state_store_config store_cfg;
  store_cfg.directory = state_dir;
  store_cfg.mode = understudy::durability::sync_each_commit;
  auto persistence = rt.open_state(store_cfg);
  if (!persistence) {
    std::fprintf(stderr, "demo: cannot open the state store in %s: %s\n", state_dir.c_str(),
                 rt.render(persistence.error()).c_str());
    return 1;
  }

  auto backoff = understudy::backoff_policy::exponential(50ms, 400ms, 0.2);

  understudy::supervisor_spec trainers;
  trainers.name = "trainers";
  trainers.strategy = understudy::restart_strategy::one_for_all;
  trainers.intensity = {10, 10s};
  trainers.backoff = backoff;
  trainers.children = {stepping_worker("worker-0", 20ms), stepping_worker("worker-1", 20ms)};

  // Loads its newest valid version on every (re)start, then runs checkpointer().
  const std::string persistent_id = "checkpointer";
  auto checkpointer_spec = understudy::persistent_child<checkpointer_state>(
      persistent_id, *persistence,
      [](caf::event_based_actor* self,
         std::shared_ptr<understudy::persistent<checkpointer_state>> st) {
        return checkpointer(self, std::move(st), caf::timespan{100ms});
      });
  checkpointer_spec.liveness_deadline = 500ms;

  understudy::supervisor_spec job;
  job.name = "job";
  job.strategy = understudy::restart_strategy::one_for_one;
  job.intensity = {10, 10s};
  job.backoff = backoff;
  job.children = {stepping_worker("data_loader", 10ms), understudy::supervisor_child(trainers),
                  checkpointer_spec};

  out.line("understudy supervision demo");
  out.line("  A small training job runs as a supervision tree; main() injects four different");
  out.line("  failures and the supervisors bring the failed actors back. Each event line shows");
  out.line("  time since start, supervisor path/child#incarnation, what happened and why.");
  out.line("  The checkpointer persists its state in " + state_dir + " (LMDB, synced on every");
  out.line("  commit), wiped first so each run starts fresh; after its restart it must resume");
  out.line("  from its last durable checkpoint, not from the dead incarnation's memory.");
  out.line("");
  out.line("  /job             one_for_one, backoff 50..400 ms +/-20%, max 10 restarts in 10 s");
  out.line("  +- data_loader   worker, 1 batch / 10 ms");
  out.line("  +- trainers      supervisor, one_for_all");
  out.line("  |  +- worker-0   worker, 1 step / 20 ms");
  out.line("  |  +- worker-1   worker, 1 step / 20 ms");
  out.line("  +- checkpointer  persistent worker, 1 step + durable checkpoint / 100 ms,");
  out.line("                   liveness deadline 500 ms");
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
  std::string state_fact; // For the summary line, once the state was restored.
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
    const bool persistent = f.child == persistent_id;
    auto at = "at step " + std::to_string(steps_of(rt.system(), *victim));
    // The newest step the victim had acknowledged as durable before the fault.
    uint64_t durable_before = 0;
    if (persistent) {
      durable_before = steps_of(rt.system(), *victim, durable_atom::value);
      at += ", durable through step " + std::to_string(durable_before);
      if (durable_before == 0) {
        failure = f.child + " had no durable checkpoint before the fault";
        break;
      }
    }
    out.line("");
    out.line("fault " + std::to_string(n) + "/" + std::to_string(faults.size()) + ": " + f.child +
             "#" + std::to_string(victim_inc) + " (" + at + ") " + f.kind);
    out.line("  expected: " + f.expect);
    auto injected_at = clock_type::now();
    f.inject(*victim);

    // Recovered once every child of the group serves a newer incarnation (a
    // persistent child loads its state before it serves).
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
    if (persistent) {
      auto evs = log->snapshot();
      auto ev = std::find_if(evs.begin(), evs.end(), [&](const supervision_event& e) {
        return is_state_event(e) && e.supervisor == path && e.child == f.child &&
               e.incarnation > victim_inc;
      });
      if (ev == evs.end() || ev->kind != event_kind::state_restored) {
        failure = f.child + " restarted without restoring its state (" +
                  (ev == evs.end() ? std::string{"no state event"}
                                   : understudy::to_string(ev->kind) + ": " + ev->reason) +
                  ")";
        break;
      }
      auto restored = restored_step_of(*ev);
      auto h = sup->resolve(f.child);
      if (!h) {
        failure = "cannot resolve " + f.child + " after its restart: " + rt.render(h.error());
        break;
      }
      auto now = steps_of(rt.system(), *h);
      out.line("  state: " + f.child + "#" + std::to_string(ev->incarnation) + " resumed at step " +
               std::to_string(restored) + " from its last durable checkpoint (load " +
               pretty(ev->duration) + "), not from 0");
      if (restored < durable_before || now < durable_before) {
        failure = f.child + " went back: restored step " + std::to_string(restored) +
                  ", now at step " + std::to_string(now) + ", but step " +
                  std::to_string(durable_before) + " was durable before the fault";
        break;
      }
      out.line("  verified: now at step " + std::to_string(now) + " >= step " +
               std::to_string(durable_before) + ", the last durable step before the fault");
      state_fact = ", state restored at step " + std::to_string(restored);
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
           state_fact + ", clean shutdown");
  return recoveries.size() == faults.size() && !state_fact.empty() ? 0 : 1;
}
