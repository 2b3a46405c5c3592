#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/sec.hpp>
#include <caf/skip.hpp>
#include <caf/typed_response_promise.hpp>

#include "tree.hpp"

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

child_spec replica_spec(const serve_config& cfg, std::shared_ptr<model_source> source,
                        std::string id) {
  auto spec = worker(id, [cfg, source, id](caf::event_based_actor* self) {
    auto a = std::make_shared<replica_actor>();
    a->self = self;
    a->cfg = cfg;
    a->source = source;
    a->id = id;
    self->attach_functor([a](const caf::error&) {});
    return a->make();
  });
  spec.shutdown = shutdown_spec::after(std::chrono::seconds(1));
  return spec;
}

} // namespace understudy::serving::detail
