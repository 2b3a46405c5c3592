// The in-process coordination service and its per-node coordinators.

#include "understudy/cluster/memory_coordinator.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <thread>
#include <utility>

#include "understudy/core/errors.hpp"

namespace understudy {

// -- the service -----------------------------------------------------------------------------

memory_coordination_service::memory_coordination_service(std::chrono::milliseconds ttl,
                                                         clock_function clock)
    : ttl_(std::max(ttl, std::chrono::milliseconds(1))), clock_(std::move(clock)) {
  if (!clock_)
    clock_ = [] { return clock_type::now(); };
}

bool memory_coordination_service::usable_locked(const std::string& node) const {
  return available_ && unreachable_.count(node) == 0;
}

bool memory_coordination_service::live_locked(const std::string& node, uint64_t epoch) const {
  auto s = sessions_.find(node);
  auto m = view_.members.find(node);
  return epoch != 0 && s != sessions_.end() && s->second.epoch == epoch &&
         m != view_.members.end() && m->second == epoch;
}

void memory_coordination_service::remove_locked(const std::string& node) {
  view_.members.erase(node);
  sessions_.erase(node);
  if (view_.leader == node) {
    view_.leader.clear();
    view_.leader_term = 0;
  }
}

void memory_coordination_service::expire_locked(std::vector<delivery>& out) {
  if (!available_)
    return;
  auto now = clock_();
  std::vector<std::string> overdue;
  for (auto& [name, s] : sessions_)
    if (s.expires < now)
      overdue.push_back(name);
  if (overdue.empty())
    return;
  // Like an etcd lease: its keys go, and nothing records the node fenced.
  for (auto& name : overdue)
    remove_locked(name);
  ++view_.revision;
  changed_locked(out);
}

void memory_coordination_service::changed_locked(std::vector<delivery>& out) {
  watchers_.erase(std::remove_if(watchers_.begin(), watchers_.end(),
                                 [](const watcher& w) { return w.to.expired(); }),
                  watchers_.end());
  if (!shared_view_ || shared_view_->revision != view_.revision ||
      shared_view_->members.size() != view_.members.size())
    shared_view_ = std::make_shared<const coordination_view>(view_);
  for (auto& w : watchers_) {
    auto c = w.to.lock();
    if (!c || !usable_locked(c->name_) || (w.any && w.sent >= view_.revision))
      continue;
    w.sent = view_.revision;
    w.any = true;
    std::lock_guard<std::mutex> guard{w.pending->mtx};
    w.pending->latest = shared_view_;
    if (w.pending->posted)
      continue; // the delivery on its way takes this newer view
    w.pending->posted = true;
    out.push_back({c, [f = w.f, pending = w.pending] {
                     std::shared_ptr<const coordination_view> v;
                     {
                       std::lock_guard<std::mutex> guard{pending->mtx};
                       v = std::move(pending->latest);
                       pending->posted = false;
                     }
                     if (v)
                       f(*v);
                   }});
  }
}

void memory_coordination_service::deliver(std::vector<delivery>& ds) {
  for (auto& d : ds)
    d.to->post(std::move(d.run));
  ds.clear();
}

void memory_coordination_service::set_available(bool on) {
  std::lock_guard<std::mutex> post{post_mtx_};
  std::vector<delivery> ds;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (on && !available_) {
      auto now = clock_();
      for (auto& [name, s] : sessions_)
        s.expires = now + ttl_;
    }
    available_ = on;
    if (on)
      changed_locked(ds);
  }
  deliver(ds);
}

void memory_coordination_service::set_reachable(const std::string& name, bool on) {
  std::lock_guard<std::mutex> post{post_mtx_};
  std::vector<delivery> ds;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    if (on)
      unreachable_.erase(name);
    else
      unreachable_.insert(name);
    expire_locked(ds);
    if (on)
      changed_locked(ds);
  }
  deliver(ds);
}

void memory_coordination_service::poll() {
  std::lock_guard<std::mutex> post{post_mtx_};
  std::vector<delivery> ds;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    expire_locked(ds);
  }
  deliver(ds);
}

coordination_view memory_coordination_service::view() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return view_;
}

bool memory_coordination_service::gave(const std::string& node, uint64_t epoch) const {
  std::lock_guard<std::mutex> guard{mtx_};
  auto i = given_.find(node);
  return i != given_.end() && i->second.count(epoch) != 0;
}

void memory_coordination_service::watch(std::shared_ptr<memory_coordinator> c,
                                        std::function<void(const coordination_view&)> f) {
  std::lock_guard<std::mutex> post{post_mtx_};
  std::vector<delivery> ds;
  {
    std::lock_guard<std::mutex> guard{mtx_};
    expire_locked(ds);
    watchers_.push_back({c, std::move(f), 0, false});
    changed_locked(ds);
  }
  deliver(ds);
}

// -- the per-node coordinator ----------------------------------------------------------------

/// The coordinator's own thread: runs its callbacks in order and, while idle, expires
/// overdue sessions.
struct memory_coordinator::worker {
  explicit worker(std::shared_ptr<memory_coordination_service> svc) : svc_(std::move(svc)) {}

  /// The thread owns `self` too, so that a worker detached by stop() outlives its last run.
  static void start(const std::shared_ptr<worker>& self) {
    self->thread_ = std::thread([self] { self->run(); });
  }

  void post(std::function<void()> f) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      queue_.push_back(std::move(f));
    }
    cv_.notify_one();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      stop_ = true;
    }
    cv_.notify_one();
    if (!thread_.joinable())
      return;
    if (thread_.get_id() == std::this_thread::get_id())
      thread_.detach(); // the last owner let go from one of its own callbacks
    else
      thread_.join();
  }

private:
  void run() {
    auto idle = std::max<std::chrono::milliseconds>(svc_->ttl() / 4, std::chrono::milliseconds(1));
    std::unique_lock<std::mutex> lock{mtx_};
    while (!stop_) {
      if (queue_.empty()) {
        if (!cv_.wait_for(lock, idle, [this] { return stop_ || !queue_.empty(); })) {
          lock.unlock();
          svc_->poll();
          lock.lock();
        }
        continue;
      }
      auto f = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      f();
      lock.lock();
    }
  }

  std::shared_ptr<memory_coordination_service> svc_;
  std::mutex mtx_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

memory_coordinator::memory_coordinator(std::shared_ptr<memory_coordination_service> service,
                                       executor ex)
    : service_(std::move(service)), ex_(std::move(ex)) {}

std::shared_ptr<memory_coordinator> memory_coordinator::make(
    std::shared_ptr<memory_coordination_service> service, executor ex) {
  std::shared_ptr<memory_coordinator> c{new memory_coordinator(std::move(service), std::move(ex))};
  if (!c->ex_) {
    c->worker_ = std::make_shared<worker>(c->service_);
    worker::start(c->worker_);
  }
  return c;
}

memory_coordinator::~memory_coordinator() {
  if (worker_)
    worker_->stop();
}

void memory_coordinator::post(std::function<void()> f) {
  if (ex_)
    ex_(std::move(f));
  else
    worker_->post(std::move(f));
}

std::chrono::milliseconds memory_coordinator::session_ttl() const {
  return service_->ttl();
}

namespace {

caf::error unavailable(const std::string& node) {
  return make_error(coordination_errc::unavailable,
                    "the in-process coordination service is off" +
                        (node.empty() ? std::string{} : " for node " + node));
}

caf::error session_lost(const std::string& node) {
  return make_error(coordination_errc::session_lost,
                    "node " + node + " has no live session: it expired or it was declared dead");
}

} // namespace

template <class T, class F>
void memory_coordinator::transact(callback<T> done, F decide, bool changes_view) {
  auto& svc = *service_;
  std::lock_guard<std::mutex> post{svc.post_mtx_};
  std::vector<memory_coordination_service::delivery> ds;
  {
    std::lock_guard<std::mutex> guard{svc.mtx_};
    svc.expire_locked(ds);
    caf::expected<T> r = decide(svc);
    ds.push_back({shared_from_this(), [done, r] { done(r); }});
    if (changes_view)
      svc.changed_locked(ds);
  }
  svc.deliver(ds);
}

caf::error memory_coordinator::session_error_locked() const {
  const auto& svc = *service_;
  if (!svc.usable_locked(name_))
    return unavailable(name_);
  if (!svc.live_locked(name_, epoch_))
    return session_lost(name_);
  return {};
}

void memory_coordinator::join(const std::string& name, callback<uint64_t> done) {
  transact(std::move(done), [&](memory_coordination_service& svc) -> caf::expected<uint64_t> {
    if (name.empty())
      return make_error(coordination_errc::invalid_config, "a node joins with an empty name");
    if (!svc.usable_locked(name))
      return unavailable(name);
    auto& v = svc.view_;
    if (auto old = v.members.find(name); old != v.members.end()) {
      // The node restarted: its older incarnation is fenced.
      v.fenced[name] = std::max(v.fenced[name], old->second);
      svc.remove_locked(name);
    }
    auto epoch = ++svc.next_epoch_;
    svc.given_[name].insert(epoch);
    v.members[name] = epoch;
    svc.sessions_[name] = {epoch, svc.clock_() + svc.ttl_};
    ++v.revision;
    name_ = name;
    epoch_ = epoch;
    return epoch;
  });
}

void memory_coordinator::keep_alive(callback<caf::unit_t> done) {
  transact(
      std::move(done),
      [&](memory_coordination_service& svc) -> caf::expected<caf::unit_t> {
        if (auto err = session_error_locked())
          return err;
        svc.sessions_[name_].expires = svc.clock_() + svc.ttl_;
        return caf::unit;
      },
      false);
}

void memory_coordinator::declare_dead(const std::string& name, uint64_t epoch,
                                      callback<bool> done) {
  transact(std::move(done), [&](memory_coordination_service& svc) -> caf::expected<bool> {
    if (auto err = session_error_locked())
      return err;
    auto& v = svc.view_;
    auto m = v.members.find(name);
    if (m == v.members.end() || m->second != epoch)
      return false;
    v.fenced[name] = std::max(v.fenced[name], epoch);
    svc.remove_locked(name);
    ++v.revision;
    return true;
  });
}

void memory_coordinator::campaign(callback<uint64_t> done) {
  transact(std::move(done), [&](memory_coordination_service& svc) -> caf::expected<uint64_t> {
    if (auto err = session_error_locked())
      return err;
    auto& v = svc.view_;
    if (!v.leader.empty())
      return uint64_t{0};
    v.leader = name_;
    v.leader_term = ++svc.next_epoch_;
    v.led_before = true;
    ++v.revision;
    return v.leader_term;
  });
}

void memory_coordinator::leave(callback<caf::unit_t> done) {
  transact(std::move(done), [&](memory_coordination_service& svc) -> caf::expected<caf::unit_t> {
    if (!svc.usable_locked(name_))
      return unavailable(name_);
    if (svc.live_locked(name_, epoch_)) {
      svc.remove_locked(name_);
      ++svc.view_.revision;
    }
    return caf::unit;
  });
}

void memory_coordinator::watch(std::function<void(const coordination_view&)> f) {
  service_->watch(shared_from_this(), std::move(f));
}

caf::expected<bool> memory_coordination_service::leader_raise(const std::string& node,
                                                              uint64_t term, const std::string& key,
                                                              uint64_t value) {
  std::lock_guard<std::mutex> post{post_mtx_};
  std::vector<delivery> ds;
  caf::expected<bool> result{false};
  {
    std::lock_guard<std::mutex> guard{mtx_};
    expire_locked(ds);
    if (!usable_locked(node)) {
      result = unavailable(node);
    } else if (view_.leader == node && view_.leader_term == term && term != 0) {
      auto& v = numbers_[key];
      v = std::max(v, value);
      result = true;
    }
  }
  deliver(ds);
  return result;
}

caf::expected<uint64_t> memory_coordination_service::read(const std::string& node,
                                                          const std::string& key) const {
  std::lock_guard<std::mutex> guard{mtx_};
  if (!usable_locked(node))
    return unavailable(node);
  auto i = numbers_.find(key);
  return i == numbers_.end() ? uint64_t{0} : i->second;
}

} // namespace understudy
