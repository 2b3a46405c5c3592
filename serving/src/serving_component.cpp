#include "understudy/serving/serving_component.hpp"

#include <algorithm>
#include <any>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <nlohmann/json.hpp>

#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/job_config.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/cluster/cluster.hpp"
#include "understudy/cluster/errors.hpp"
#include "understudy/process/process_host.hpp"
#include "understudy/serving/front_end.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy::serving {

namespace {

std::vector<config_key> serve_keys() {
  std::vector<config_key> keys;
  for (const auto& [name, type] :
       std::vector<std::pair<const char*, const char*>>{{"model", "string"},
                                                        {"layers", "integer list"},
                                                        {"state_dir", "string"},
                                                        {"job", "string"},
                                                        {"replicas", "integer"},
                                                        {"standbys", "integer"},
                                                        {"port", "integer"},
                                                        {"placement", "placement"},
                                                        {"policy", "string"},
                                                        {"max_batch", "integer"},
                                                        {"max_outstanding", "integer"},
                                                        {"max_attempts", "integer"},
                                                        {"request_timeout", "duration"},
                                                        {"watch_interval", "duration"},
                                                        {"hedge", "boolean"},
                                                        {"replica_placement", "string"},
                                                        {"isolated", "boolean"}})
    keys.push_back(config_key{"serve", name, type});
  return keys;
}

caf::expected<std::any> parse_serve(config_table& r) {
  serve_section_config c;
  c.line = r.line();
  auto& s = c.serve;
  if (auto m = r.str("model", true))
    s.model = *m;
  if (auto layers = r.int_list("layers", 1, 65536, true)) {
    if (layers->size() < 2)
      r.fail(config_errc::invalid_value, r.line_of("layers"),
             "'layers' in [serve] needs at least two sizes: inputs and classes");
    for (auto x : *layers)
      c.layers.push_back(static_cast<size_t>(x));
  }
  if (auto d = r.str("state_dir"))
    c.state_dir = *d;
  if (auto j = r.str("job")) {
    if (j->empty() || j->front() != '/')
      r.fail(config_errc::invalid_value, r.line_of("job"),
             "'job' in [serve] is the job's path in its state directory, e.g. \"/digits_mlp\"");
    c.job = *j;
  }
  if (auto x = r.integer("replicas", 1, 1024))
    s.replicas = static_cast<size_t>(*x);
  if (auto x = r.integer("standbys", 0, 1024))
    s.standbys = static_cast<size_t>(*x);
  if (auto x = r.integer("port", 1, 65535))
    c.port = static_cast<uint16_t>(*x);
  if (auto p = r.str("policy")) {
    if (auto pol = parse_balance_policy(*p))
      s.policy = *pol;
    else
      r.bad_name("policy", *p, {"power_of_two", "round_robin", "least_outstanding"});
  }
  if (auto x = r.integer("max_batch", 1, 65536))
    s.max_batch = static_cast<size_t>(*x);
  if (auto x = r.integer("max_outstanding", 1, 1 << 20))
    s.max_outstanding = static_cast<size_t>(*x);
  if (auto x = r.integer("max_attempts", 1, 64))
    s.max_attempts = static_cast<size_t>(*x);
  if (auto x = r.duration("request_timeout", true))
    s.request_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(*x);
  if (auto x = r.duration("watch_interval", false))
    s.watch_interval = std::chrono::duration_cast<std::chrono::milliseconds>(*x);
  if (auto h = r.boolean("hedge"))
    s.hedge = *h;
  if (auto iso = r.boolean("isolated"))
    s.isolated = *iso;
  if (auto p = r.str("replica_placement")) {
    if (*p == "spread" || *p == "local")
      c.spread = *p == "spread";
    else
      r.bad_name("replica_placement", *p, {"spread", "local"});
  }
  auto placement = r.placement("[serve]", placement_policy::any);
  if (placement.policy == placement_policy::nodes)
    c.nodes = placement.nodes;
  else
    for (const auto& n : r.context().nodes())
      if (n.role == node_role::active)
        c.nodes.push_back(n.name);
  if (!r.failed() && c.port + c.nodes.size() - 1 > 65535)
    r.fail(config_errc::invalid_value, r.line_of("port"),
           "[serve] serves on port " + std::to_string(c.port) + " and the next " +
               std::to_string(c.nodes.size() - 1) + ", beyond 65535");
  if (!r.failed())
    if (auto err = validate(s))
      r.fail(config_errc::invalid_value, r.line(), describe(err));
  return std::any{std::move(c)};
}

/// The type of the replicas a node starts for the routers of the cluster.
constexpr const char* replica_type = "understudy.serving.replica";

/// The node, for the serving tree's actors while the node's serving part
/// lives (they ask from their own threads, and may run a little after it).
class node_ref {
public:
  explicit node_ref(const cluster_node* node) : node_(node) {}

  /// The node `a` runs on ("" once the part is gone).
  std::string of(const caf::actor& a) const {
    std::lock_guard<std::mutex> guard{mtx_};
    return node_ == nullptr ? std::string{} : node_->node_of(a);
  }

  void forget() {
    std::lock_guard<std::mutex> guard{mtx_};
    node_ = nullptr;
  }

private:
  mutable std::mutex mtx_;
  const cluster_node* node_;
};

/// The job a [serve] section serves: its `job`, else "/digits_mlp" in a state
/// directory, else the path of the cluster's own training job ("" if none).
std::string served_job(const node_config& nc, const serve_section_config& c) {
  if (!c.job.empty())
    return c.job;
  return c.state_dir.empty() ? actors::training_job_path(nc) : std::string{"/digits_mlp"};
}

/// One node's serving unit: its tree, its front end.
class serving_part : public node_part {
public:
  serving_part(caf::actor_system& sys, caf::actor tree, std::unique_ptr<front_end> fe,
               std::shared_ptr<router_handle> router, std::string model, std::string url,
               std::shared_ptr<node_ref> where)
      : sys_(sys),
        tree_(std::move(tree)),
        fe_(std::move(fe)),
        router_(std::move(router)),
        model_(std::move(model)),
        url_(std::move(url)),
        where_(std::move(where)) {}

  ~serving_part() override {
    where_->forget();
    fe_.reset();
    caf::anon_send_exit(tree_, caf::exit_reason::user_shutdown);
  }

  std::string node_status() const override {
    auto st = current();
    if (!st)
      return "serve: " + model_ + " on " + url_ + ": the router does not answer\n";
    std::string out = "serve: " + model_ + " version " + std::to_string(st->target) + " on " +
                      url_ + ", answered " + std::to_string(st->answered) + ", failed " +
                      std::to_string(st->failed) + ", overloaded " +
                      std::to_string(st->overloaded) + ", retried " + std::to_string(st->retried) +
                      "\n";
    for (const auto& r : st->replicas)
      out += "  " + r.id + (r.node.empty() ? std::string{} : " on " + r.node) + ": " + r.state +
             ", version " + std::to_string(r.version) + "\n";
    return out;
  }

  std::string node_status_json() const override {
    using nlohmann::json;
    auto st = current();
    json serve{{"model", model_}, {"url", url_}};
    if (st) {
      json replicas = json::array();
      for (const auto& r : st->replicas)
        replicas.push_back({{"id", r.id},
                            {"state", r.state},
                            {"version", r.version},
                            {"node", r.node},
                            {"downs", r.downs}});
      serve["version"] = st->target;
      serve["replicas"] = replicas;
      serve["answered"] = st->answered;
      serve["failed"] = st->failed;
      serve["overloaded"] = st->overloaded;
      serve["retried"] = st->retried;
    }
    return json{{"serve", serve}}.dump();
  }

private:
  caf::expected<serving_status> current() const {
    caf::expected<serving_status> out{caf::sec::request_timeout};
    auto r = router_->get();
    if (!r)
      return out;
    caf::scoped_actor self{sys_};
    self->request(r, std::chrono::seconds(2), status_atom::value)
        .receive([&](serving_status& st) { out = std::move(st); },
                 [&](caf::error& err) { out = std::move(err); });
    return out;
  }

  caf::actor_system& sys_;
  caf::actor tree_;
  std::unique_ptr<front_end> fe_;
  std::shared_ptr<router_handle> router_;
  std::string model_;
  std::string url_;
  std::shared_ptr<node_ref> where_;
};

/// A part for a node that does not serve.
class idle_part : public node_part {};

class serving_node_component : public node_component {
public:
  void prepare_loading(node_config_options& opts) const override {
    opts.sections.push_back(serve_section());
  }

  void register_types(caf::actor_system_config& cfg) const override { register_serving_types(cfg); }

  /// Any serving node may lead a cluster that only serves (another
  /// component's preference comes first).
  std::vector<std::string> leader_candidates(const node_config& nc) const override {
    const auto* c = serve_of(nc);
    return c == nullptr ? std::vector<std::string>{} : c->nodes;
  }

  caf::error check(const node_config& nc) const override {
    const auto* c = serve_of(nc);
    if (c == nullptr)
      return {};
    if (c->state_dir.empty()) {
      if (served_job(nc, *c).empty())
        return make_error(config_errc::missing_key,
                          nc.origin + ":" + std::to_string(c->line) +
                              ": [serve] has no state_dir and the file runs no training job: "
                              "name the state directory of the job to serve");
      return {};
    }
    std::error_code ec;
    if (!std::filesystem::is_directory(c->state_dir, ec))
      return make_error(config_errc::invalid_value,
                        "[serve] state_dir " + c->state_dir + " is not a directory");
    for (const auto& n : nc.nodes)
      if (std::filesystem::equivalent(n.state_dir, c->state_dir, ec))
        return make_error(config_errc::invalid_value,
                          "[serve] state_dir " + c->state_dir + " is node " + n.name +
                              "'s own state directory; serve from a training job's");
    return {};
  }

  caf::expected<std::unique_ptr<node_part>> attach(cluster_node& node, const node_config& nc,
                                                   node_metrics*) const override {
    const auto* c = serve_of(nc);
    const auto& me = node.self().name;
    if (c == nullptr)
      return std::unique_ptr<node_part>{std::make_unique<idle_part>()};
    auto at = std::find(c->nodes.begin(), c->nodes.end(), me);
    if (at == c->nodes.end())
      return std::unique_ptr<node_part>{std::make_unique<idle_part>()};
    if (auto err = check(nc))
      return err;
    auto port = static_cast<uint16_t>(c->port + (at - c->nodes.begin()));
    // A state directory is served as it is (read-only); the cluster's own
    // job from a copy of its committed steps that this node gathers.
    const auto job = served_job(nc, *c);
    const bool gathered = c->state_dir.empty();
    state_store_config sc;
    sc.directory =
        gathered
            ? (std::filesystem::path{node.self().state_dir} / "served" / c->serve.model).string()
            : c->state_dir;
    sc.read_only = !gathered;
    sc.mode = durability::none; // a copy: gathered again after a restart
    // Replicas on other serving nodes load the version their router rolls to
    // from their own node's copy: keep enough for the copies to overlap.
    sc.retention.keep_last = 16;
    auto store = state_store::open(sc);
    if (!store)
      return make_error(config_errc::invalid_value,
                        "[serve] cannot open " + sc.directory + ": " + describe(store.error()));
    auto net = std::make_shared<actors::mlp>(c->layers);
    auto source = committed_steps(net, *store, job);
    auto router = std::make_shared<router_handle>();
    auto metrics = std::make_shared<serving_metrics>(c->serve.model);
    auto& sys = node.agent().home_system();
    const size_t count = c->serve.replicas + c->serve.standbys;
    auto cfg = c->serve;
    if (cfg.isolated)
      // Each replica process reads this node's file and talks to it as the
      // node talks to its peers (mutual TLS when the cluster has it).
      cfg.prepare_process = [file = nc.origin, me,
                             tls = sys.has_openssl_manager()](process_spec& ps) {
        ps.name += " (isolated, on " + me + ")";
        ps.role["config"] = file;
        ps.role["node"] = me;
        ps.tls = tls;
      };
    // Replicas this node runs for the routers of the cluster (its own among them).
    node.add_factory(replica_type,
                     [cfg, source, count](child_context& ctx,
                                          const caf::message& args) -> caf::expected<caf::actor> {
                       if (args.size() != 1 || !args.match_element<uint64_t>(0) ||
                           args.get_as<uint64_t>(0) >= count ||
                           ctx.id != "replica-" + std::to_string(args.get_as<uint64_t>(0)))
                         return make_error(cluster_errc::malformed_message,
                                           "spawn of a serving replica for " + ctx.path +
                                               " refused: [serve] has " + std::to_string(count) +
                                               " replicas and standbys per router, named "
                                               "replica-0 to replica-" +
                                               std::to_string(count - 1));
                       return start_replica(ctx, cfg, source);
                     });
    auto where = std::make_shared<node_ref>(&node);
    replica_placement placement;
    if (c->spread && c->nodes.size() > 1) {
      // The replicas start on the other serving nodes once those are up (or
      // known dead) and connected to each other, not on this one because
      // they have not connected yet.
      const auto wait =
          std::max<std::chrono::milliseconds>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  nc.cluster.failure_detection.connection_timeout) *
                                                  5,
                                              std::chrono::seconds(10));
      if (!node.await_decided(c->nodes, wait) || !node.await_mesh(wait).empty())
        std::printf(
            "node %s: not every serving node is up after %lld ms; the replicas that "
            "cannot start on theirs start on the next live ones\n",
            me.c_str(), static_cast<long long>(wait.count()));
      const auto first = static_cast<size_t>(at - c->nodes.begin());
      placement.start = [&node, nodes = c->nodes, first](size_t j) {
        // Replica j's home is serving node first + j (cyclically); when it is
        // lost, the next serving nodes in turn.
        std::vector<std::string> failover;
        for (size_t k = 1; k < nodes.size(); ++k)
          failover.push_back(nodes[(first + j + k) % nodes.size()]);
        return node.placed(replica_type, caf::make_message(static_cast<uint64_t>(j)),
                           nodes[(first + j) % nodes.size()], std::move(failover), false);
      };
      placement.node_of = [where](const caf::actor& a) { return where->of(a); };
    }
    supervisor_spec spec;
    // Unique across the cluster: replicas are known by their paths.
    spec.name = "serve-" + me;
    if (gathered) {
      auto every =
          cfg.watch_interval.count() > 0 ? cfg.watch_interval : std::chrono::milliseconds(500);
      spec.children.push_back(
          worker("gather", node.gatherer(*store, job, every, [store = *store, job] {
            // The versions newer than the copy's newest committed step.
            auto newest = actors::newest_committed_step(*store, job);
            return newest ? *newest : uint64_t{0};
          })));
    }
    spec.children.push_back(serving_tree(cfg, source, router, metrics, placement));
    auto tree = spawn_supervisor(sys, std::move(spec));
    if (!tree)
      return std::move(tree.error());
    front_end_config fc;
    fc.http.host = node.self().host;
    fc.http.port = port;
    fc.http.threads = 2;
    fc.model = c->serve.model;
    fc.input_dim = net->input_dim();
    auto fe = front_end::start(sys, fc, router, metrics);
    if (!fe) {
      caf::anon_send_exit(*tree, caf::exit_reason::user_shutdown);
      return std::move(fe.error());
    }
    auto url = (*fe)->url() + "/v1/models/" + c->serve.model + ":predict";
    const auto from =
        gathered ? job + " as the cluster's nodes hold it" : job + " in " + c->state_dir;
    std::printf("node %s: serving %s (%s, %s) on %s, %zu replicas and %zu standbys%s%s\n",
                me.c_str(), c->serve.model.c_str(), net->describe().c_str(), from.c_str(),
                url.c_str(), c->serve.replicas, c->serve.standbys,
                placement.start ? " spread over the serving nodes" : "",
                cfg.isolated ? ", each in a process of its own" : "");
    std::fflush(stdout);
    return std::unique_ptr<node_part>{std::make_unique<serving_part>(
        sys, *tree, std::move(*fe), router, c->serve.model, url, where)};
  }
};

} // namespace

config_section serve_section() {
  config_section s;
  s.name = "serve";
  s.keys = serve_keys();
  s.parse = parse_serve;
  return s;
}

const serve_section_config* serve_of(const node_config& nc) {
  return nc.section<serve_section_config>("serve");
}

std::shared_ptr<const node_component> serving_component() {
  return std::make_shared<serving_node_component>();
}

} // namespace understudy::serving
