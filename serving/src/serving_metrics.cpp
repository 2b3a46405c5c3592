#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <mutex>
#include <sstream>
#include <utility>

#include "understudy/metrics/metrics.hpp"
#include "understudy/serving/front_end.hpp"

namespace understudy::serving {

struct serving_metrics::impl {
  std::string model;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>* requests = nullptr;
  prometheus::Histogram* latency = nullptr;
  prometheus::Counter* retries = nullptr;
  prometheus::Family<prometheus::Gauge>* replicas = nullptr;
  prometheus::Family<prometheus::Gauge>* versions = nullptr;
  prometheus::Gauge* target = nullptr;
  std::mutex mtx;
  std::map<std::string, prometheus::Gauge*> version_gauges;
};

serving_metrics::serving_metrics(std::string model) : impl_(std::make_unique<impl>()) {
  auto& m = *impl_;
  m.model = std::move(model);
  const std::map<std::string, std::string> labels{{"model", m.model}};
  m.requests = &prometheus::BuildCounter()
                    .Name("understudy_serving_requests_total")
                    .Help("Prediction requests by outcome: ok, or why they were not answered")
                    .Register(*m.registry);
  for (const char* outcome : {"ok", "bad_request", "unknown_model", "overloaded", "no_replica",
                              "replica_failed", "timeout"})
    m.requests->Add({{"model", m.model}, {"outcome", outcome}});
  m.latency = &prometheus::BuildHistogram()
                   .Name("understudy_serving_request_seconds")
                   .Help("Latency of answered prediction requests, from arrival to answer")
                   .Register(*m.registry)
                   .Add(labels, metrics_duration_buckets());
  m.retries = &prometheus::BuildCounter()
                   .Name("understudy_serving_retries_total")
                   .Help("Requests re-sent to another replica after theirs failed or timed out")
                   .Register(*m.registry)
                   .Add(labels);
  m.replicas =
      &prometheus::BuildGauge()
           .Name("understudy_serving_replicas")
           .Help("Replicas by state: active (in rotation), standby, loading, draining, down")
           .Register(*m.registry);
  for (const char* state : {"active", "standby", "loading", "draining", "down"})
    m.replicas->Add({{"model", m.model}, {"state", state}});
  m.versions = &prometheus::BuildGauge()
                    .Name("understudy_serving_replica_version")
                    .Help("The model version each replica holds (0: none)")
                    .Register(*m.registry);
  m.target = &prometheus::BuildGauge()
                  .Name("understudy_serving_target_version")
                  .Help("The model version the replicas are rolled to")
                  .Register(*m.registry)
                  .Add(labels);
}

serving_metrics::~serving_metrics() = default;

void serving_metrics::on_request(const std::string& outcome, std::chrono::nanoseconds latency) {
  impl_->requests->Add({{"model", impl_->model}, {"outcome", outcome}}).Increment();
  if (outcome == "ok")
    impl_->latency->Observe(std::chrono::duration<double>(latency).count());
}

void serving_metrics::on_retry() {
  impl_->retries->Increment();
}

void serving_metrics::on_status(const serving_status& st) {
  auto& m = *impl_;
  std::map<std::string, double> by_state{
      {"active", 0}, {"standby", 0}, {"loading", 0}, {"draining", 0}, {"down", 0}};
  std::lock_guard<std::mutex> guard{m.mtx};
  for (const auto& r : st.replicas) {
    by_state[r.state] += 1;
    auto& g = m.version_gauges[r.id];
    if (g == nullptr)
      g = &m.versions->Add({{"model", m.model}, {"replica", r.id}});
    g->Set(static_cast<double>(r.version));
  }
  for (const auto& [state, n] : by_state)
    m.replicas->Add({{"model", m.model}, {"state", state}}).Set(n);
  m.target->Set(static_cast<double>(st.target));
}

std::string serving_metrics::text() const {
  std::ostringstream out;
  prometheus::TextSerializer{}.Serialize(out, impl_->registry->Collect());
  return out.str();
}

} // namespace understudy::serving
