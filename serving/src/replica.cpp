#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <utility>
#include <vector>

#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/sec.hpp>
#include <caf/skip.hpp>
#include <caf/typed_response_promise.hpp>

#include "tree.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/node/node.hpp"
#include "understudy/process/process_host.hpp"

namespace understudy::serving::detail {

namespace {

/// A replica's note to itself: compute the queued batch of generation `gen`.
using flush_atom = caf::atom_constant<caf::atom("sv_flush")>;
/// Names the one message a hung replica would take (none is ever sent).
using hang_atom = caf::atom_constant<caf::atom("sv_hang")>;

struct queued {
  caf::typed_response_promise<prediction> rp;
  instances in;
};

struct replica_actor {
  caf::event_based_actor* self;
  serve_config cfg;
  std::shared_ptr<model_source> source;
  std::string id;
  model_version version;
  std::vector<queued> queue;
  size_t queued_rows = 0;
  uint64_t generation = 0;
  bool flush_pending = false;
  std::vector<float> scratch;
  std::vector<uint32_t> labels;

  caf::behavior make() {
    return {
        [this](predict_atom, instances& in, bool alone) -> caf::result<prediction> {
          auto rp = self->make_response_promise<prediction>();
          const size_t dim = source->net().input_dim();
          if (!version.params) {
            rp.deliver(make_error(serving_errc::no_replica, id + " holds no model version yet"));
            return rp;
          }
          if (in.count == 0 || !in.values || in.values->size() != size_t{in.count} * dim) {
            rp.deliver(make_error(serving_errc::bad_request,
                                  "expected " + std::to_string(in.count) + " inputs of " +
                                      std::to_string(dim) + " values"));
            return rp;
          }
          if (alone) {
            // A suspect of a crash: computed at once, by itself, so that a
            // crash now is its own.
            std::vector<queued> one;
            one.push_back(queued{rp, std::move(in)});
            try {
              compute(one, in_rows(one));
            } catch (const std::exception& e) {
              rp.deliver(make_error(serving_errc::poisonous,
                                    id + " crashed computing it alone: " + e.what()));
              self->quit(caf::make_error(caf::sec::runtime_error,
                                         id + ": a request crashed it: " + e.what()));
            }
            return rp;
          }
          queued_rows += in.count;
          queue.push_back(queued{rp, std::move(in)});
          if (queued_rows >= cfg.max_batch)
            flush();
          else if (!flush_pending) {
            flush_pending = true;
            if (cfg.max_delay.count() == 0)
              self->send(self, flush_atom::value, generation);
            else
              self->delayed_send(self, cfg.max_delay, flush_atom::value, generation);
          }
          return rp;
        },
        [this](flush_atom, uint64_t gen) {
          if (gen == generation)
            flush();
        },
        [this](load_atom, uint64_t step) -> caf::result<uint64_t> {
          if (version.params && step == version.step)
            return version.step;
          auto v = source->load(step);
          if (!v)
            return std::move(v.error());
          version = std::move(*v);
          warm_up();
          return version.step;
        },
        [this](status_atom) { return version.params ? version.step : uint64_t{0}; },
    };
  }

  /// Computes every queued request in one batch.
  void flush() {
    ++generation;
    flush_pending = false;
    if (queue.empty())
      return;
    compute(queue, queued_rows);
    queue.clear();
    queued_rows = 0;
  }

  static size_t in_rows(const std::vector<queued>& batch) {
    size_t n = 0;
    for (const auto& q : batch)
      n += q.in.count;
    return n;
  }

  /// Computes `batch` (`rows` inputs) in one call of the model and answers each.
  void compute(std::vector<queued>& batch, size_t rows) {
    const auto& net = source->net();
    const size_t dim = net.input_dim();
    scratch.resize(rows * dim);
    labels.resize(rows);
    size_t row = 0;
    for (auto& q : batch) {
      if (cfg.poison && (*q.in.values)[0] == *cfg.poison)
        throw std::runtime_error(id + ": a poisonous request (fault injection)");
      if (cfg.stall && (*q.in.values)[0] == *cfg.stall) {
        // Hangs: answers nothing from now on (fault injection).
        self->set_default_handler(caf::skip);
        self->become([](hang_atom) {});
        return;
      }
      std::memcpy(scratch.data() + row * dim, q.in.values->data(),
                  sizeof(float) * q.in.count * dim);
      row += q.in.count;
    }
    net.predict(version.params->data(), scratch.data(), rows, labels.data());
    row = 0;
    for (auto& q : batch) {
      prediction p;
      p.labels.assign(labels.begin() + static_cast<long>(row),
                      labels.begin() + static_cast<long>(row + q.in.count));
      p.version = version.step;
      p.replica = id;
      row += q.in.count;
      q.rp.deliver(std::move(p));
    }
  }

  /// Runs one prediction on the new version, so that the first request does
  /// not pay for cold caches.
  void warm_up() {
    const auto& net = source->net();
    std::vector<float> in(net.input_dim(), 0.0f);
    uint32_t label = 0;
    net.predict(version.params->data(), in.data(), 1, &label);
  }
};

} // namespace

caf::behavior replica_behavior(caf::event_based_actor* self, const serve_config& cfg,
                               std::shared_ptr<model_source> source, std::string id) {
  capture_exceptions(self);
  auto a = std::make_shared<replica_actor>();
  a->self = self;
  a->cfg = cfg;
  a->source = std::move(source);
  a->id = std::move(id);
  self->attach_functor([a](const caf::error&) {});
  return a->make();
}

namespace {

/// Whether `text` may travel as a process role value.
bool role_safe(const std::string& text) {
  return text.find_first_of(";=") == std::string::npos;
}

} // namespace

child_spec replica_spec(const serve_config& cfg, std::shared_ptr<model_source> source,
                        std::string id) {
  child_spec spec;
  spec.id = id;
  if (!cfg.isolated) {
    spec.start = [cfg, source, id](child_context& ctx) -> caf::expected<caf::actor> {
      return caf::actor{ctx.system.spawn(replica_behavior, cfg, source, id)};
    };
  } else {
    spec.start = [cfg, source, id](child_context& ctx) -> caf::expected<caf::actor> {
      auto role = source->process_role();
      if (role.empty())
        return make_error(config_errc::invalid_value,
                          "serve: isolated replicas need a source that a process of its own can "
                          "open (a training job's state directory and an MLP)");
      role["actor"] = "serving_replica";
      role["id"] = id;
      role["max_batch"] = std::to_string(cfg.max_batch);
      role["max_delay_us"] = std::to_string(cfg.max_delay.count());
      if (cfg.poison)
        role["poison"] = std::to_string(*cfg.poison);
      if (cfg.stall)
        role["stall"] = std::to_string(*cfg.stall);
      process_spec ps;
      ps.name = id;
      ps.role = std::move(role);
      if (cfg.prepare_process)
        cfg.prepare_process(ps);
      for (const auto& [key, value] : ps.role)
        if (!role_safe(value))
          return make_error(config_errc::invalid_value,
                            "serve: " + key + " \"" + value +
                                "\" cannot reach a replica's process (no ';' or '=')");
      return spawn_process_actor(ctx.system, std::move(ps));
    };
  }
  spec.shutdown = shutdown_spec::after(std::chrono::seconds(1));
  return spec;
}

} // namespace understudy::serving::detail

namespace understudy::serving {

std::optional<int> run_replica_process_if_requested(
    const std::vector<std::shared_ptr<const node_component>>& components) {
  auto role = actor_host_role_from_env();
  if (!role || role->get("actor") != "serving_replica")
    return std::nullopt;
  // A cluster node's replica: its node's config says how the two talk.
  std::optional<node_config> nc;
  const auto node = role->get("node");
  if (auto file = role->get("config"); !file.empty()) {
    auto fail = [&](const caf::error& err) {
      std::fprintf(stderr, "serving replica %s of node %s: %s\n", role->get("id").c_str(),
                   node.c_str(), describe(err).c_str());
      return host_status::failed;
    };
    auto loaded = load_config(file, components);
    if (!loaded)
      return fail(loaded.error());
    if (loaded->cluster.security)
      if (auto err = check_node_certificate(*loaded, node))
        return fail(err);
    nc = std::move(*loaded);
  }
  auto configure = [&nc, &node](caf::actor_system_config& cfg) {
    register_serving_types(cfg);
    if (!nc)
      return;
    // The node closes connections that stay silent past its deadline: this
    // process beats like a node. Mutual TLS with the node when it has
    // security (its certificate checked above).
    cfg.set("middleman.heartbeat-interval",
            caf::timespan{nc->cluster.failure_detection.heartbeat_interval});
    (void)prepare_hosted_process_tls(cfg, *nc, node);
  };
  auto make = [&role](caf::actor_system& sys) -> caf::expected<caf::actor> {
    std::vector<size_t> layers;
    std::string text = role->get("layers");
    for (size_t at = 0; at < text.size();) {
      auto comma = text.find(',', at);
      layers.push_back(static_cast<size_t>(std::stoull(text.substr(at, comma - at))));
      at = comma == std::string::npos ? text.size() : comma + 1;
    }
    std::shared_ptr<actors::mlp> net;
    try {
      net = std::make_shared<actors::mlp>(layers);
    } catch (const std::exception& e) {
      return make_error(config_errc::invalid_value,
                        "replica process: layers \"" + text + "\": " + e.what());
    }
    state_store_config sc;
    sc.directory = role->get("state_dir");
    sc.read_only = true;
    auto store = state_store::open(sc);
    if (!store)
      return std::move(store.error());
    serve_config cfg;
    cfg.max_batch = std::stoull(role->get("max_batch", "64"));
    cfg.max_delay = std::chrono::microseconds(std::stoll(role->get("max_delay_us", "0")));
    if (auto p = role->get("poison"); !p.empty())
      cfg.poison = std::stof(p);
    if (auto p = role->get("stall"); !p.empty())
      cfg.stall = std::stof(p);
    auto source = committed_steps(net, *store, role->get("job"));
    return caf::actor{sys.spawn(detail::replica_behavior, cfg, source, role->get("id"))};
  };
  return run_actor_host(*role, configure, make, {});
}

} // namespace understudy::serving
