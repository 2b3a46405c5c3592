#pragma once

// The HTTP front end of a served model, with a JSON API:
//
//   POST /v1/models/NAME:predict  {"instances": [[...], ...], "key": "session"}
//        200 {"model": NAME, "version": 300, "predictions": [7, 1], "replica": "replica-1"}
//        400 malformed JSON, no instances, a wrong input size; 404 unknown model;
//        503 overloaded or no replica (with Retry-After); 502 the retry budget
//        was spent on failing replicas; 504 no answer in time. Error bodies are
//        {"error": "...", "cause": "<serving_errc name>"}.
//   GET  /v1/models/NAME          the model's status (version, replicas)
//   GET  /healthz                 200 while the process serves HTTP (liveness)
//   GET  /readyz                  200 when a replica in rotation holds a version
//   GET  /metrics                 Prometheus text: requests by outcome, latency
//                                 histogram, replicas by state and version
//
// Threads: the HTTP server's own (http/server.hpp); each request is handed to
// the router by a short-lived actor of the given actor system, so no HTTP
// thread ever waits for an answer. A slow or malicious client cannot stall
// others (the server's deadlines and limits).

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

#include "understudy/http/server.hpp"
#include "understudy/serving/service.hpp"

namespace understudy::serving {

/// Settings of a front end.
struct front_end_config {
  http::server_config http;
  /// The served model's name and its input size (floats per instance).
  std::string model;
  size_t input_dim = 0;
  /// Instances per request at most (more: 400).
  size_t max_instances = 256;
  /// How long the front end waits for the router's answer (then 504).
  std::chrono::milliseconds timeout{10000};
};

/// A running front end; destroying it stops serving HTTP.
class front_end {
public:
  /// Starts serving. `router` names the router as it runs now; `metrics` (may
  /// be null) is served at /metrics and counts the front end's answers.
  static caf::expected<std::unique_ptr<front_end>> start(caf::actor_system& sys,
                                                         front_end_config cfg,
                                                         std::shared_ptr<router_handle> router,
                                                         std::shared_ptr<serving_metrics> metrics);
  ~front_end();
  front_end(const front_end&) = delete;
  front_end& operator=(const front_end&) = delete;

  uint16_t port() const noexcept;
  /// "http://host:port".
  std::string url() const;

  struct impl;

private:
  explicit front_end(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// Counts of a served model for Prometheus, thread-safe: requests by outcome
/// (`understudy_serving_requests_total{model,outcome}`: ok, bad_request,
/// unknown_model, overloaded, no_replica, replica_failed, timeout), a latency
/// histogram of answered requests (`understudy_serving_request_seconds`),
/// retries (`understudy_serving_retries_total`), and replicas by state and
/// version (`understudy_serving_replicas{state}`,
/// `understudy_serving_replica_version{replica}`).
class serving_metrics {
public:
  explicit serving_metrics(std::string model);
  ~serving_metrics();
  serving_metrics(const serving_metrics&) = delete;
  serving_metrics& operator=(const serving_metrics&) = delete;

  /// Counts one request's outcome ("ok" or a serving_errc name) and, for
  /// "ok", its latency.
  void on_request(const std::string& outcome, std::chrono::nanoseconds latency);
  void on_retry();
  /// Replaces the replicas' gauges with `st`'s.
  void on_status(const serving_status& st);
  /// The Prometheus text exposition of everything.
  std::string text() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace understudy::serving
