#include "understudy/actors/recovery.hpp"

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>

#include <caf/event_based_actor.hpp>
#include <caf/sec.hpp>

#include "understudy/core/errors.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy::actors {

recovery_protocol::recovery_protocol(caf::event_based_actor* self, std::vector<participant> parts,
                                     hooks h, uint64_t first_attempt, size_t max_recoveries)
    : self_(self),
      parts_(std::move(parts)),
      hooks_(std::move(h)),
      max_recoveries_(max_recoveries),
      attempt_(first_attempt) {
  // nop
}

void recovery_protocol::recover() {
  if (stopped_)
    return;
  if (++recoveries_since_commit_ > max_recoveries_)
    return fail(caf::make_error(
        caf::sec::runtime_error,
        std::to_string(max_recoveries_) + " recoveries in a row without a committed step"));
  recovering_ = true;
  ++attempt_;
  if (hooks_.round_started)
    hooks_.round_started();
  for (size_t i = 0; i < parts_.size(); ++i)
    if (parts_[i].down && !parts_[i].resolving)
      resolve(i);
  maybe_probe();
}

void recovery_protocol::resolve(size_t i) {
  auto& p = parts_[i];
  p.resolving = true;
  self_->request(p.supervisor, caf::infinite, resolve_atom::value, p.id, p.incarnation + 1)
      .then(
          [this, i](const caf::actor& h) {
            auto& q = parts_[i];
            q.resolving = false;
            q.handle = h;
            q.incarnation += 1;
            q.down = false;
            self_->monitor(h);
            maybe_probe();
          },
          [this, i](caf::error& err) {
            if (stopped_)
              return;
            if (hooks_.unresolved)
              return hooks_.unresolved(i, err);
            fail(caf::make_error(caf::sec::runtime_error,
                                 "cannot resolve a restarted actor: " + describe(err)));
          });
}

void recovery_protocol::maybe_probe() {
  if (stopped_ || !recovering_ || probed_ == attempt_)
    return;
  for (const auto& p : parts_)
    if (p.down || p.resolving)
      return;
  probed_ = attempt_;
  probe_all();
}

void recovery_protocol::probe_all() {
  auto att = attempt_;
  size_t stateful = 0;
  for (const auto& p : parts_)
    stateful += p.stateful ? 1 : 0;
  auto left = std::make_shared<size_t>(stateful);
  auto lowest = std::make_shared<uint64_t>(std::numeric_limits<uint64_t>::max());
  auto newest = std::make_shared<std::vector<std::optional<uint64_t>>>(parts_.size());
  if (stateful == 0)
    return rewind_all(0);
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (!parts_[i].stateful)
      continue;
    hooks_.probe(i, parts_[i].handle,
                 [this, att, i, left, lowest, newest](caf::expected<uint64_t> r) {
                   if (!r)
                     return on_error(att, i, r.error());
                   *lowest = std::min(*lowest, *r);
                   (*newest)[i] = *r;
                   if (att != attempt_ || stopped_ || --*left != 0)
                     return;
                   if (hooks_.probed)
                     if (auto err = hooks_.probed(*lowest, *newest))
                       return fail(std::move(err));
                   rewind_all(*lowest);
                 });
  }
}

void recovery_protocol::rewind_all(uint64_t step) {
  auto att = attempt_;
  size_t stateful = 0;
  for (const auto& p : parts_)
    stateful += p.stateful ? 1 : 0;
  auto done = [this, step] {
    recovering_ = false;
    hooks_.resume(step);
  };
  if (stateful == 0)
    return done();
  auto left = std::make_shared<size_t>(stateful);
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (!parts_[i].stateful)
      continue;
    hooks_.rewind(
        i, parts_[i].handle, step, [this, att, i, left, step, done](caf::expected<uint64_t> r) {
          if (!r)
            return on_error(att, i, r.error());
          if (att != attempt_ || stopped_)
            return;
          if (*r != step)
            return fail(make_error(state_errc::not_found,
                                   parts_[i].id + " restored step " + std::to_string(*r) +
                                       ", not the committed step " + std::to_string(step)));
          if (--*left == 0)
            done();
        });
  }
}

void recovery_protocol::on_error(uint64_t att, size_t i, const caf::error& err) {
  if (att != attempt_ || stopped_)
    return;
  if (hooks_.fails_job && hooks_.fails_job(err))
    return fail(err);
  auto& p = parts_.at(i);
  if (!p.down) {
    p.down = true;
    if (!hooks_.exits_by_itself || !hooks_.exits_by_itself(err))
      self_->send_exit(p.handle, err ? err : caf::make_error(caf::sec::runtime_error));
  }
  recover();
}

void recovery_protocol::on_down(const caf::down_msg& dm) {
  for (auto& p : parts_)
    if (!p.down && p.handle && p.handle.address() == dm.source) {
      p.down = true;
      recover();
      return;
    }
}

void recovery_protocol::fail(caf::error err) {
  if (stopped_)
    return;
  stopped_ = true;
  hooks_.failed(std::move(err));
}

} // namespace understudy::actors
