#include "understudy/state/runtime.hpp"

#include <algorithm>
#include <mutex>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/after.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/sec.hpp>
#include <caf/system_messages.hpp>

#include "understudy/core/errors.hpp"

namespace understudy {

namespace {

caf::error translate(caf::error err) {
  if (err == caf::sec::request_timeout)
    return make_error(supervision_errc::timeout, "no answer from the supervisor in time");
  return err;
}

/// One blocking request from a non-actor thread.
template <class T, class... Ts>
caf::expected<T> call(caf::actor_system& sys, const caf::actor& dest,
                      std::chrono::milliseconds timeout, Ts&&... xs) {
  if (!dest)
    return make_error(supervision_errc::child_not_running, "no supervisor");
  caf::scoped_actor self{sys};
  caf::expected<T> result{make_error(supervision_errc::timeout)};
  self->request(dest, timeout, std::forward<Ts>(xs)...)
      .receive([&](T& x) { result = std::move(x); },
               [&](caf::error& err) { result = translate(std::move(err)); });
  return result;
}

template <class... Ts>
caf::error call_ok(caf::actor_system& sys, const caf::actor& dest,
                   std::chrono::milliseconds timeout, Ts&&... xs) {
  auto res = call<caf::ok_atom>(sys, dest, timeout, std::forward<Ts>(xs)...);
  return res ? caf::error{} : res.error();
}

} // namespace

// -- supervisor_ref ----------------------------------------------------------------------

supervisor_ref::supervisor_ref(caf::actor_system& sys, caf::actor handle)
    : sys_(&sys), handle_(std::move(handle)) {
  // Nothing to do.
}

caf::expected<std::vector<child_info>> supervisor_ref::which_children(
    std::chrono::milliseconds timeout) const {
  return call<std::vector<child_info>>(*sys_, handle_, timeout, which_children_atom::value);
}

caf::expected<child_counts> supervisor_ref::count_children(
    std::chrono::milliseconds timeout) const {
  return call<child_counts>(*sys_, handle_, timeout, count_children_atom::value);
}

caf::expected<caf::actor> supervisor_ref::resolve(const std::string& id,
                                                  std::chrono::milliseconds timeout) const {
  return call<caf::actor>(*sys_, handle_, timeout, resolve_atom::value, id);
}

caf::expected<supervisor_ref> supervisor_ref::nested(const std::string& id,
                                                     std::chrono::milliseconds timeout) const {
  auto h = resolve(id, timeout);
  if (!h)
    return h.error();
  return supervisor_ref{*sys_, std::move(*h)};
}

caf::expected<caf::actor> supervisor_ref::start_child(const std::string& id, caf::message args,
                                                      std::chrono::milliseconds timeout) const {
  return call<caf::actor>(*sys_, handle_, timeout, start_child_atom::value, id, std::move(args));
}

caf::expected<caf::actor> supervisor_ref::add_child(child_spec spec,
                                                    std::chrono::milliseconds timeout) const {
  return call<caf::actor>(*sys_, handle_, timeout, add_child_atom::value, std::move(spec));
}

caf::error supervisor_ref::terminate_child(const std::string& id,
                                           std::chrono::milliseconds timeout) const {
  return call_ok(*sys_, handle_, timeout, terminate_child_atom::value, id);
}

caf::expected<caf::actor> supervisor_ref::restart_child(const std::string& id,
                                                        std::chrono::milliseconds timeout) const {
  return call<caf::actor>(*sys_, handle_, timeout, start_child_atom::value, id);
}

caf::error supervisor_ref::delete_child(const std::string& id,
                                        std::chrono::milliseconds timeout) const {
  return call_ok(*sys_, handle_, timeout, delete_child_atom::value, id);
}

// -- runtime -----------------------------------------------------------------------------

struct runtime::impl {
  static caf::actor_system_config& prepare(caf::actor_system_config& cfg,
                                           const runtime_config& rc) {
    register_error_categories(cfg);
    cfg.add_message_type<child_info>("understudy::child_info");
    cfg.add_message_type<std::vector<child_info>>("std::vector<understudy::child_info>");
    cfg.add_message_type<child_counts>("understudy::child_counts");
    if (rc.worker_threads > 0)
      cfg.set("scheduler.max-threads", rc.worker_threads);
    // After a short spin, an idle thread polls every 50 us for idle_poll, then
    // waits on its queue (woken when work is queued for it).
    constexpr auto interval = std::chrono::microseconds(50);
    cfg.set("work-stealing.moderate-sleep-duration", caf::timespan{interval});
    cfg.set("work-stealing.moderate-poll-attempts",
            static_cast<size_t>(std::max<int64_t>(1, rc.idle_poll / interval)));
    if (rc.configure)
      rc.configure(cfg);
    return cfg;
  }

  explicit impl(runtime_config rc) : conf(std::move(rc)), sys(prepare(cfg, conf)) {
    if (conf.log_events)
      log = make_log_sink("understudy", conf.log_level);
  }

  runtime_config conf;
  std::shared_ptr<event_sink> log;
  caf::actor_system_config cfg;
  caf::actor_system sys;
  std::mutex mtx;
  std::vector<caf::actor> trees;
  persistence state;
};

runtime::runtime(runtime_config cfg) : impl_(std::make_unique<impl>(std::move(cfg))) {
  // Nothing to do.
}

runtime::~runtime() {
  shutdown();
}

std::shared_ptr<event_sink> runtime::log_sink() const noexcept {
  return impl_->log;
}

caf::actor_system& runtime::system() noexcept {
  return impl_->sys;
}

caf::expected<supervisor_ref> runtime::start(supervisor_spec spec,
                                             std::chrono::milliseconds timeout) {
  if (!spec.events)
    spec.events = impl_->conf.events;
  if (impl_->log)
    spec.events = std::make_shared<fanout_sink>(
        std::vector<std::shared_ptr<event_sink>>{spec.events, impl_->log});
  auto sup = spawn_supervisor(impl_->sys, std::move(spec));
  if (!sup)
    return sup.error();
  caf::scoped_actor self{impl_->sys};
  self->monitor(*sup);
  caf::error failure;
  bool ready = false;
  self->request(*sup, timeout, await_ready_atom::value)
      .receive([&](caf::ok_atom) { ready = true; },
               [&](caf::error& err) { failure = translate(std::move(err)); });
  if (!ready) {
    // Prefer the supervisor's own exit reason (it names the failed child).
    auto wait = failure == caf::sec::request_receiver_down ? std::chrono::seconds(5)
                                                           : std::chrono::seconds(0);
    self->receive(
        [&](caf::down_msg& dm) {
          if (dm.reason)
            failure = std::move(dm.reason);
        },
        caf::after(wait) >> [] {});
    if (is(failure, supervision_errc::timeout))
      self->send_exit(*sup, caf::exit_reason::user_shutdown);
    return failure;
  }
  self->demonitor(*sup);
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->trees.push_back(*sup);
  return supervisor_ref{impl_->sys, *sup};
}

caf::error runtime::stop(const supervisor_ref& tree, std::chrono::milliseconds timeout) {
  if (!tree)
    return caf::none;
  caf::scoped_actor self{impl_->sys};
  self->monitor(tree.handle());
  self->send_exit(tree.handle(), caf::exit_reason::user_shutdown);
  caf::error result = make_error(supervision_errc::timeout, "tree did not stop in time");
  self->receive([&](caf::down_msg&) { result = caf::none; }, caf::after(timeout) >> [] {});
  if (!result) {
    std::lock_guard<std::mutex> guard{impl_->mtx};
    auto& ts = impl_->trees;
    ts.erase(std::remove(ts.begin(), ts.end(), tree.handle()), ts.end());
  }
  return result;
}

void runtime::shutdown(std::chrono::milliseconds timeout) {
  std::vector<caf::actor> trees;
  {
    std::lock_guard<std::mutex> guard{impl_->mtx};
    trees.swap(impl_->trees);
  }
  for (auto i = trees.rbegin(); i != trees.rend(); ++i)
    stop(supervisor_ref{impl_->sys, *i}, timeout);
  persistence state;
  {
    std::lock_guard<std::mutex> guard{impl_->mtx};
    std::swap(state, impl_->state);
  }
  if (state.writer) {
    caf::scoped_actor self{impl_->sys};
    self->monitor(state.writer);
    self->send_exit(state.writer, caf::exit_reason::user_shutdown);
    self->receive([](caf::down_msg&) {}, caf::after(timeout) >> [] {});
  }
}

caf::expected<persistence> runtime::open_state(state_store_config cfg, state_writer_config writer) {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  auto& state = impl_->state;
  if (state) {
    if (state.store->config().directory != cfg.directory)
      return make_error(state_errc::invalid_config, "this runtime's state store is " +
                                                        state.store->config().directory + ", not " +
                                                        cfg.directory + " (one store per node)");
    return state;
  }
  auto store = state_store::open(std::move(cfg));
  if (!store)
    return store.error();
  state.store = std::move(*store);
  state.writer = spawn_state_writer(impl_->sys, state.store, std::move(writer));
  state.recycler = std::make_shared<tensor_recycler>();
  return state;
}

std::string runtime::render(const caf::error& err) const {
  return describe(err);
}

} // namespace understudy
