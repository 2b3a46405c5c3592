#include "understudy/serving/service.hpp"

#include <algorithm>
#include <cctype>
#include <utility>

#include <caf/actor_system_config.hpp>

#include "tree.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy::serving {

std::string to_string(balance_policy x) {
  switch (x) {
    case balance_policy::power_of_two:
      return "power_of_two";
    case balance_policy::round_robin:
      return "round_robin";
    case balance_policy::least_outstanding:
      return "least_outstanding";
  }
  return "unknown";
}

caf::expected<balance_policy> parse_balance_policy(const std::string& name) {
  if (name == "power_of_two" || name == "p2c")
    return balance_policy::power_of_two;
  if (name == "round_robin")
    return balance_policy::round_robin;
  if (name == "least_outstanding")
    return balance_policy::least_outstanding;
  return make_error(
      config_errc::invalid_value,
      "unknown balancing policy \"" + name + "\" (power_of_two, round_robin or least_outstanding)");
}

caf::error validate(const serve_config& cfg) {
  auto bad = [](const std::string& what) { return make_error(config_errc::invalid_value, what); };
  if (cfg.model.empty() || cfg.model.size() > 128 ||
      !std::all_of(cfg.model.begin(), cfg.model.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
      }))
    return bad("serve: the model name \"" + cfg.model +
               "\" must be 1 to 128 letters, digits, '_', '-' or '.'");
  if (cfg.replicas == 0)
    return bad("serve: replicas must be at least 1");
  if (cfg.replicas + cfg.standbys > 1024)
    return bad("serve: at most 1024 replicas and standbys");
  if (cfg.max_batch == 0)
    return bad("serve: max_batch must be at least 1");
  if (cfg.max_outstanding == 0)
    return bad("serve: max_outstanding must be at least 1");
  if (cfg.max_attempts == 0)
    return bad("serve: max_attempts must be at least 1");
  if (cfg.request_timeout.count() <= 0)
    return bad("serve: request_timeout must be positive");
  if (cfg.max_delay.count() < 0 || cfg.watch_interval.count() < 0)
    return bad("serve: max_delay and watch_interval cannot be negative");
  if (cfg.max_sessions == 0)
    return bad("serve: max_sessions must be at least 1");
  return {};
}

caf::actor router_handle::get() const {
  std::lock_guard<std::mutex> guard{mtx_};
  return router_;
}

void router_handle::set(caf::actor a) {
  std::lock_guard<std::mutex> guard{mtx_};
  router_ = std::move(a);
}

child_spec serving_tree(serve_config cfg, std::shared_ptr<model_source> source,
                        std::shared_ptr<router_handle> router,
                        std::shared_ptr<serving_metrics> metrics, replica_placement where) {
  supervisor_spec replicas;
  replicas.name = "replicas";
  replicas.strategy = restart_strategy::one_for_one;
  // A crashing replica is routine here (its requests go elsewhere); a burst
  // of crashes, e.g. a poisonous request, must not take the tree down.
  replicas.intensity = restart_intensity{static_cast<int>(20 + 10 * (cfg.replicas + cfg.standbys)),
                                         std::chrono::seconds(10)};
  for (size_t i = 0; i < cfg.replicas + cfg.standbys; ++i) {
    auto spec = detail::replica_spec(cfg, source, "replica-" + std::to_string(i));
    if (where.start) {
      spec.start = nullptr;
      spec.start_async = where.start(i);
    }
    replicas.children.push_back(std::move(spec));
  }
  auto replicas_handle = std::make_shared<router_handle>();
  auto replicas_child = supervisor_child(std::move(replicas));
  auto inner = replicas_child.start;
  replicas_child.start = [inner, replicas_handle](child_context& ctx) -> caf::expected<caf::actor> {
    auto r = inner(ctx);
    if (r)
      replicas_handle->set(*r);
    return r;
  };
  supervisor_spec top;
  top.name = cfg.model;
  top.strategy = restart_strategy::one_for_one;
  top.children.push_back(std::move(replicas_child));
  top.children.push_back(detail::router_spec(cfg, source, replicas_handle, std::move(router),
                                             std::move(metrics), std::move(where.node_of)));
  return supervisor_child(std::move(top));
}

caf::expected<caf::actor> start_replica(child_context& ctx, const serve_config& cfg,
                                        std::shared_ptr<model_source> source) {
  return detail::replica_spec(cfg, std::move(source), ctx.id).start(ctx);
}

size_t active_replicas(const serving_status& st) {
  return static_cast<size_t>(
      std::count_if(st.replicas.begin(), st.replicas.end(),
                    [](const replica_view& r) { return r.state == "active"; }));
}

void register_serving_types(caf::actor_system_config& cfg) {
  register_error_category<serving_errc>(cfg);
  cfg.add_message_type<instances>("understudy::serving::instances");
  cfg.add_message_type<predict_request>("understudy::serving::predict_request");
  cfg.add_message_type<prediction>("understudy::serving::prediction");
  cfg.add_message_type<replica_view>("understudy::serving::replica_view");
  cfg.add_message_type<serving_status>("understudy::serving::serving_status");
  // The name the training component gives the same type (actors' slice_ptr).
  cfg.add_message_type<shared_value<std::vector<float>>>("understudy::slice_ptr");
}

} // namespace understudy::serving
