#include "understudy/serving/model_source.hpp"

#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "understudy/actors/committed_model.hpp"
#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/serving/errors.hpp"

namespace understudy::serving {

namespace {

class committed_source : public model_source {
public:
  committed_source(std::shared_ptr<const actors::model> net, std::shared_ptr<state_store> store,
                   std::string job_path)
      : net_(std::move(net)), store_(std::move(store)), job_path_(std::move(job_path)) {}

  const actors::model& net() const override { return *net_; }

  std::map<std::string, std::string> process_role() const override {
    const auto* m = dynamic_cast<const actors::mlp*>(net_.get());
    if (m == nullptr)
      return {};
    std::string layers;
    for (auto n : m->layer_sizes())
      layers += (layers.empty() ? "" : ",") + std::to_string(n);
    return {{"source", "committed_steps"},
            {"state_dir", store_->config().directory},
            {"job", job_path_},
            {"layers", layers}};
  }

  caf::expected<uint64_t> newest() const override {
    // Verifying a step reads all of it: only a trainer record newer than the
    // step verified last is worth it (the router asks every watch_interval).
    auto versions = store_->versions(job_path_ + "/trainer");
    if (!versions)
      return std::move(versions.error());
    uint64_t newest_record = versions->empty() ? 0 : versions->back().step;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      if (newest_record != 0 && newest_record == verified_record_)
        return verified_;
    }
    auto step = actors::newest_committed_step(*store_, job_path_);
    if (!step)
      return step;
    std::lock_guard<std::mutex> guard{mtx_};
    verified_record_ = newest_record;
    verified_ = *step;
    return step;
  }

  caf::expected<model_version> load(uint64_t step) const override {
    if (step == 0) {
      auto newest = actors::newest_committed_step(*store_, job_path_);
      if (!newest)
        return make_error(serving_errc::no_model,
                          "cannot read " + job_path_ + ": " + describe(newest.error()));
      if (*newest == 0)
        return make_error(serving_errc::no_model,
                          "the state store holds no committed step of " + job_path_ + " yet");
      step = *newest;
    }
    {
      std::lock_guard<std::mutex> guard{mtx_};
      if (last_.params && last_.step == step)
        return last_;
    }
    auto params = actors::read_committed_parameters(*store_, job_path_, *net_, step);
    if (!params)
      return make_error(serving_errc::no_model, "cannot load committed step " +
                                                    std::to_string(step) + " of " + job_path_ +
                                                    ": " + describe(params.error()));
    model_version v;
    v.step = params->step;
    v.params = std::make_shared<const std::vector<float>>(std::move(params->params));
    std::lock_guard<std::mutex> guard{mtx_};
    last_ = v;
    return v;
  }

private:
  std::shared_ptr<const actors::model> net_;
  std::shared_ptr<state_store> store_;
  std::string job_path_;
  mutable std::mutex mtx_;
  mutable model_version last_;
  /// The newest trainer record seen by newest(), and the committed step it found then.
  mutable uint64_t verified_record_ = 0;
  mutable uint64_t verified_ = 0;
};

} // namespace

std::shared_ptr<model_source> committed_steps(std::shared_ptr<const actors::model> net,
                                              std::shared_ptr<state_store> store,
                                              std::string job_path) {
  if (!net || !store)
    throw std::invalid_argument("committed_steps: a model and a state store are required");
  return std::make_shared<committed_source>(std::move(net), std::move(store), std::move(job_path));
}

struct memory_source::impl {
  std::shared_ptr<const actors::model> net;
  mutable std::mutex mtx;
  std::map<uint64_t, std::shared_ptr<const std::vector<float>>> versions;
};

memory_source::memory_source(std::shared_ptr<const actors::model> net)
    : impl_(std::make_unique<impl>()) {
  if (!net)
    throw std::invalid_argument("memory_source: a model is required");
  impl_->net = std::move(net);
}

memory_source::~memory_source() = default;

void memory_source::add(uint64_t step, std::vector<float> params) {
  if (step == 0)
    throw std::invalid_argument("memory_source::add: versions start at 1");
  if (params.size() != impl_->net->parameter_count())
    throw std::invalid_argument("memory_source::add: " + std::to_string(params.size()) +
                                " parameters for a model of " +
                                std::to_string(impl_->net->parameter_count()));
  auto p = std::make_shared<const std::vector<float>>(std::move(params));
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->versions[step] = std::move(p);
}

const actors::model& memory_source::net() const {
  return *impl_->net;
}

caf::expected<uint64_t> memory_source::newest() const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  return impl_->versions.empty() ? uint64_t{0} : impl_->versions.rbegin()->first;
}

caf::expected<model_version> memory_source::load(uint64_t step) const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  if (impl_->versions.empty())
    return make_error(serving_errc::no_model, "no version of the model is held yet");
  auto i = step == 0 ? std::prev(impl_->versions.end()) : impl_->versions.find(step);
  if (i == impl_->versions.end())
    return make_error(serving_errc::no_model, "no version " + std::to_string(step));
  return model_version{i->first, i->second};
}

} // namespace understudy::serving
