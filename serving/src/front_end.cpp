#include "understudy/serving/front_end.hpp"

#include <chrono>
#include <cmath>
#include <utility>

#include <caf/event_based_actor.hpp>
#include <caf/sec.hpp>
#include <nlohmann/json.hpp>

namespace understudy::serving {

namespace {

using json = nlohmann::json;
using steady = std::chrono::steady_clock;

http::response error_response(unsigned status, const std::string& cause, const std::string& msg) {
  auto r = http::response::json(status, json{{"error", msg}, {"cause", cause}}.dump() + "\n");
  if (status == 503)
    r.headers.emplace_back("Retry-After", "1");
  return r;
}

/// The HTTP status and cause for a failed prediction.
std::pair<unsigned, std::string> status_of(const caf::error& err) {
  if (err.category() == error_traits<serving_errc>::category) {
    auto code = static_cast<serving_errc>(err.code());
    switch (code) {
      case serving_errc::bad_request:
        return {400, "bad_request"};
      case serving_errc::unknown_model:
        return {404, "unknown_model"};
      case serving_errc::overloaded:
        return {503, "overloaded"};
      case serving_errc::no_replica:
      case serving_errc::no_model:
        return {503, "no_replica"};
      case serving_errc::replica_failed:
      case serving_errc::poisonous:
        return {502, "replica_failed"};
      case serving_errc::none:
        break;
    }
  }
  if (err == caf::sec::request_timeout)
    return {504, "timeout"};
  if (err == caf::sec::request_receiver_down)
    return {503, "no_replica"};
  return {500, "replica_failed"};
}

json status_json(const std::string& model, const serving_status& st) {
  json replicas = json::array();
  for (const auto& r : st.replicas)
    replicas.push_back({{"id", r.id},
                        {"state", r.state},
                        {"version", r.version},
                        {"outstanding", r.outstanding},
                        {"latency_ms", r.latency_ms},
                        {"downs", r.downs}});
  return {{"model", model},
          {"version", st.target},
          {"replicas", replicas},
          {"answered", st.answered},
          {"failed", st.failed},
          {"overloaded", st.overloaded},
          {"retried", st.retried},
          {"hedged", st.hedged},
          {"hedges_won", st.hedges_won},
          {"active", active_replicas(st)}};
}

} // namespace

struct front_end::impl {
  caf::actor_system* sys = nullptr;
  front_end_config cfg;
  std::shared_ptr<router_handle> router;
  std::shared_ptr<serving_metrics> metrics;
  std::unique_ptr<http::server> server;

  void count(const std::string& outcome, steady::time_point start) const {
    if (metrics)
      metrics->on_request(outcome, steady::now() - start);
  }

  void handle(http::request req, http::responder reply) {
    const std::string prefix = "/v1/models/";
    if (req.path == "/healthz")
      return reply(http::response::text(200, "ok\n"));
    if (req.path == "/metrics") {
      auto r = http::response::text(200, metrics ? metrics->text() : std::string{});
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      return reply(std::move(r));
    }
    if (req.path == "/readyz")
      return ask_status([reply](const serving_status* st) {
        bool ready = st != nullptr && st->target != 0 && active_replicas(*st) > 0;
        reply(http::response::text(ready ? 200 : 503, ready ? "ready\n" : "not ready\n"));
      });
    if (req.path.rfind(prefix, 0) != 0)
      return reply(error_response(
          404, "not_found",
          "no such path; predictions are at POST " + prefix + cfg.model + ":predict"));
    auto rest = req.path.substr(prefix.size());
    auto colon = rest.find(':');
    auto name = rest.substr(0, colon);
    if (name != cfg.model)
      return reply(error_response(
          404, "unknown_model",
          "no model named \"" + name + "\" is served here (only \"" + cfg.model + "\")"));
    if (colon == std::string::npos) {
      if (req.method != "GET" && req.method != "HEAD")
        return reply(error_response(405, "bad_request", "GET the model's status"));
      auto model = cfg.model;
      return ask_status([reply, model](const serving_status* st) {
        if (st == nullptr)
          return reply(error_response(503, "no_replica", "the router is restarting"));
        reply(http::response::json(200, status_json(model, *st).dump() + "\n"));
      });
    }
    if (rest.substr(colon) != ":predict")
      return reply(error_response(404, "not_found",
                                  "unknown verb \"" + rest.substr(colon + 1) + "\" (predict)"));
    if (req.method != "POST")
      return reply(error_response(405, "bad_request", "predictions are POSTed"));
    predict(std::move(req), std::move(reply));
  }

  /// Parses and checks a predict request's body into `out`; "" or the problem.
  std::string parse(const std::string& body, predict_request& out) const {
    auto doc = json::parse(body, nullptr, false);
    if (doc.is_discarded())
      return "the body is not valid JSON";
    if (!doc.is_object())
      return "the body must be a JSON object with \"instances\"";
    auto it = doc.find("instances");
    if (it == doc.end() || !it->is_array() || it->empty())
      return "\"instances\" must be a non-empty array of inputs";
    if (it->size() > cfg.max_instances)
      return std::to_string(it->size()) + " instances; at most " +
             std::to_string(cfg.max_instances) + " per request";
    auto values = std::make_shared<std::vector<float>>();
    values->reserve(it->size() * cfg.input_dim);
    for (size_t i = 0; i < it->size(); ++i) {
      const auto& row = (*it)[i];
      if (!row.is_array() || row.size() != cfg.input_dim)
        return "instance " + std::to_string(i) + " must be an array of " +
               std::to_string(cfg.input_dim) + " numbers" +
               (row.is_array() ? " (it has " + std::to_string(row.size()) + ")" : "");
      for (const auto& x : row) {
        if (!x.is_number())
          return "instance " + std::to_string(i) + " holds a value that is not a number";
        auto v = x.get<double>();
        if (!std::isfinite(v) || std::fabs(v) > 3.0e38)
          return "instance " + std::to_string(i) + " holds a value out of range";
        values->push_back(static_cast<float>(v));
      }
    }
    if (auto key = doc.find("key"); key != doc.end()) {
      if (!key->is_string() || key->get_ref<const std::string&>().size() > 256)
        return "\"key\" must be a string of at most 256 characters";
      out.key = key->get<std::string>();
    }
    out.in.count = static_cast<uint32_t>(it->size());
    out.in.values = std::move(values);
    return {};
  }

  void predict(http::request req, http::responder reply) {
    auto start = steady::now();
    predict_request pr;
    if (auto problem = parse(req.body, pr); !problem.empty()) {
      count("bad_request", start);
      return reply(error_response(400, "bad_request", problem));
    }
    auto router = this->router->get();
    if (!router) {
      count("no_replica", start);
      return reply(error_response(503, "no_replica", "the router is restarting"));
    }
    auto model = cfg.model;
    auto m = metrics;
    auto timeout = cfg.timeout;
    sys->spawn([router, pr, reply, model, m, timeout, start](caf::event_based_actor* self) {
      self->request(router, timeout, predict_atom::value, pr)
          .then(
              [reply, model, m, start](prediction& p) {
                if (m)
                  m->on_request("ok", steady::now() - start);
                reply(http::response::json(200, json{{"model", model},
                                                     {"version", p.version},
                                                     {"predictions", p.labels},
                                                     {"replica", p.replica},
                                                     {"attempts", p.attempts}}
                                                        .dump() +
                                                    "\n"));
              },
              [reply, m, start](caf::error& err) {
                auto [status, cause] = status_of(err);
                if (m)
                  m->on_request(cause, steady::now() - start);
                reply(error_response(status, cause, describe(err)));
              });
    });
  }

  /// Calls `fn` with the router's status, or with nullptr when it cannot be had.
  void ask_status(std::function<void(const serving_status*)> fn) {
    auto router = this->router->get();
    if (!router)
      return fn(nullptr);
    sys->spawn([router, fn](caf::event_based_actor* self) {
      self->request(router, std::chrono::seconds(2), status_atom::value)
          .then([fn](serving_status& st) { fn(&st); }, [fn](caf::error&) { fn(nullptr); });
    });
  }
};

caf::expected<std::unique_ptr<front_end>> front_end::start(
    caf::actor_system& sys, front_end_config cfg, std::shared_ptr<router_handle> router,
    std::shared_ptr<serving_metrics> metrics) {
  if (!router)
    return make_error(config_errc::invalid_value, "front_end: a router handle is required");
  if (cfg.input_dim == 0 || cfg.max_instances == 0)
    return make_error(config_errc::invalid_value,
                      "front_end: the input size and max_instances must be positive");
  auto p = std::make_unique<impl>();
  p->sys = &sys;
  p->cfg = std::move(cfg);
  p->router = std::move(router);
  p->metrics = std::move(metrics);
  auto* raw = p.get();
  auto srv = http::server::start(p->cfg.http, [raw](http::request req, http::responder reply) {
    raw->handle(std::move(req), std::move(reply));
  });
  if (!srv)
    return std::move(srv.error());
  p->server = std::move(*srv);
  return std::unique_ptr<front_end>{new front_end(std::move(p))};
}

front_end::front_end(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

front_end::~front_end() {
  // The server goes first: no handler runs on a half-destroyed front end.
  impl_->server.reset();
}

uint16_t front_end::port() const noexcept {
  return impl_->server->port();
}

std::string front_end::url() const {
  return "http://" + impl_->server->address();
}

} // namespace understudy::serving
