#include "understudy/state/step_commit.hpp"

#include <algorithm>
#include <limits>

namespace understudy {

bool step_commit::applied(uint64_t step) {
  auto i = pending_.find(step);
  if (i == pending_.end())
    return false;
  i->second.applied = true;
  return maybe_commit(i);
}

bool step_commit::durable(uint64_t step, size_t index) {
  auto i = pending_.find(step);
  if (i == pending_.end() || index >= participants_)
    return false;
  auto& a = i->second;
  if (a.durable.empty())
    a.durable.resize(participants_);
  if (a.durable[index])
    return false;
  a.durable[index] = true;
  ++a.count;
  return maybe_commit(i);
}

bool step_commit::maybe_commit(std::map<uint64_t, acks>::iterator i) {
  const auto& a = i->second;
  if (!a.applied || a.count != participants_)
    return false;
  // Every participant holds this step: older steps still waiting are superseded (resuming
  // picks the newest step all hold), so the committed step only ever grows.
  committed_ = std::max(committed_, i->first);
  pending_.erase(pending_.begin(), std::next(i));
  return true;
}

step_commit::resume_point step_commit::resume(const std::vector<std::optional<uint64_t>>& newest,
                                              uint64_t recorded, uint64_t checkpoint_every,
                                              uint64_t last_step) {
  resume_point r;
  uint64_t lowest = std::numeric_limits<uint64_t>::max();
  for (const auto& n : newest)
    if (n) {
      r.highest = std::max(r.highest, *n);
      lowest = std::min(lowest, *n);
    }
  r.step = lowest == std::numeric_limits<uint64_t>::max() ? 0 : lowest;
  if (recorded != 0 || r.highest > 2 * checkpoint_every)
    for (size_t i = 0; i < newest.size(); ++i)
      if (newest[i] && *newest[i] == 0) {
        r.lost = i;
        break;
      }
  r.past_last = r.step > last_step;
  return r;
}

} // namespace understudy
