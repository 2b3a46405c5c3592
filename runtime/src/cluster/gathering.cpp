// Reading versions that the cluster's nodes hold: export requests to every
// live node, and an actor that keeps a copy of a prefix up to date.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <caf/event_based_actor.hpp>

#include "agent.hpp"
#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/core/errors.hpp"

namespace understudy {

namespace cluster_detail {

namespace {

using gather_tick_atom = caf::atom_constant<caf::atom("us_ngath")>;

} // namespace

std::vector<std::string> request_versions(
    const state_ptr& st, caf::event_based_actor* self, const std::string& prefix, uint64_t after,
    std::function<void(const std::string& node, caf::expected<checkpoint_batch> batch)> each,
    const std::vector<std::string>& skip) {
  auto skipped = [&](const std::string& name) {
    return std::find(skip.begin(), skip.end(), name) != skip.end();
  };
  std::vector<std::pair<std::string, caf::actor>> ask;
  if (!skipped(st->self.name))
    ask.emplace_back(st->self.name, st->agent);
  {
    std::lock_guard<std::mutex> guard{st->mtx};
    for (auto& [name, e] : st->peers)
      if (e.state != peer_state::dead && st->connected_locked(name) &&
          !e.agent->getf(caf::abstract_actor::is_terminated_flag) && !skipped(name))
        ask.emplace_back(name, e.agent);
  }
  auto shared = std::make_shared<decltype(each)>(std::move(each));
  for (auto& [name, agent] : ask)
    self->request(agent, st->fd().connection_timeout + std::chrono::seconds(30),
                  cluster_detail::export_atom::value, prefix, after)
        .then(
            [shared, name = name](checkpoint_batch& batch) {
              auto why = "node " + name + " sent versions that are refused: " + batch.problem;
              if (batch.corrupt)
                (*shared)(name, make_error(state_errc::corrupt_record, why));
              else if (!batch.problem.empty())
                (*shared)(name, make_error(cluster_errc::malformed_message, why));
              else
                (*shared)(name, std::move(batch));
            },
            [shared, name = name](caf::error& err) { (*shared)(name, std::move(err)); });
  std::vector<std::string> asked;
  for (auto& a : ask)
    asked.push_back(a.first);
  return asked;
}

} // namespace cluster_detail

std::vector<std::string> cluster_node::request_versions(
    caf::event_based_actor* self, const std::string& prefix, uint64_t after,
    std::function<void(const std::string& node, caf::expected<checkpoint_batch> batch)> each,
    const std::vector<std::string>& skip) const {
  return cluster_detail::request_versions(st_, self, prefix, after, std::move(each), skip);
}

std::function<caf::behavior(caf::event_based_actor*)> cluster_node::gatherer(
    std::shared_ptr<::understudy::state_store> into, std::string prefix, caf::timespan interval,
    std::function<uint64_t()> after) const {
  return [st = st_, into, prefix, interval, after](caf::event_based_actor* self) {
    return cluster_detail::gather(st, self, into, prefix, interval, after);
  };
}

namespace cluster_detail {

caf::behavior gather(const state_ptr& st, caf::event_based_actor* self,
                     std::shared_ptr<state_store> into, const std::string& prefix,
                     caf::timespan interval, std::function<uint64_t()> after) {
  auto busy = std::make_shared<std::vector<std::string>>();
  auto store_batch = [into, prefix](const std::string& from, const checkpoint_batch& batch) {
    std::string problems;
    std::vector<const checkpoint*> puts;
    for (const auto& cp : batch.items)
      if (cp && (cp->path == prefix || cp->path.rfind(prefix + "/", 0) == 0))
        puts.push_back(cp.get());
      else
        problems += " " + from + " sent a version outside " + prefix + ";";
    std::vector<caf::error> results;
    if (auto err = into->commit(puts, results, std::vector<bool>(puts.size(), true)))
      problems += " storing what " + from + " sent: " + describe(err) + ";";
    for (auto& e : results)
      if (e)
        problems += " " + from + ": " + describe(e) + ";";
    return problems;
  };
  self->send(self, gather_tick_atom::value);
  return {
      [=](gather_tick_atom) {
        auto asked = request_versions(
            st, self, prefix, after(),
            [=](const std::string& from, caf::expected<checkpoint_batch> batch) {
              busy->erase(std::remove(busy->begin(), busy->end(), from), busy->end());
              auto problems =
                  batch ? store_batch(from, *batch) : " " + from + ": " + describe(batch.error());
              if (!problems.empty())
                std::fprintf(stderr, "node %s: copying the versions of %s:%s\n",
                             st->self.name.c_str(), prefix.c_str(), problems.c_str());
            },
            *busy);
        busy->insert(busy->end(), asked.begin(), asked.end());
        self->delayed_send(self, interval, gather_tick_atom::value);
      },
  };
}

} // namespace cluster_detail

} // namespace understudy
