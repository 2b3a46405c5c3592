// Checks of supervisor and child specs before anything starts.

#include <string>
#include <unordered_set>

#include "supervisor_actor.hpp"
#include "understudy/core/errors.hpp"

namespace understudy {

namespace supervision_detail {

namespace {

caf::error validate_timespan(const std::string& what, const std::string& id, caf::timespan t,
                             bool zero_ok) {
  if (t.count() < 0 || (!zero_ok && t.count() == 0))
    return make_error(supervision_errc::invalid_timeout,
                      id + ": " + what + " must be " + (zero_ok ? "zero or " : "") +
                          "positive, got " + std::to_string(t.count()) + " ns");
  return caf::none;
}

} // namespace

caf::error validate_child_spec(const child_spec& spec) {
  if (spec.id.empty())
    return make_error(supervision_errc::invalid_child_spec, "child without an id");
  if (spec.id.find('/') != std::string::npos)
    return make_error(supervision_errc::invalid_child_spec,
                      spec.id + ": a child id must not contain '/'");
  if (!spec.start && !spec.start_async)
    return make_error(supervision_errc::invalid_child_spec, spec.id + ": no start function");
  if (spec.start && spec.start_async)
    return make_error(supervision_errc::invalid_child_spec,
                      spec.id + ": both a start function and an asynchronous one; set one");
  if (spec.shutdown.mode == shutdown_mode::timeout)
    if (auto err = validate_timespan("shutdown timeout", spec.id, spec.shutdown.timeout, false))
      return err;
  if (auto err = validate_timespan("liveness deadline", spec.id, spec.liveness_deadline, true))
    return err;
  if (auto err = validate_timespan("start timeout", spec.id, spec.start_timeout, true))
    return err;
  if (spec.significant && spec.restart == restart_type::permanent)
    return make_error(supervision_errc::invalid_child_spec,
                      spec.id + ": a permanent child cannot be significant");
  return caf::none;
}

} // namespace supervision_detail

using supervision_detail::validate_child_spec;

caf::error validate(const supervisor_spec& spec) {
  if (spec.name.empty() || spec.name.find('/') != std::string::npos)
    return make_error(supervision_errc::invalid_child_spec,
                      "supervisor name must be non-empty and contain no '/': '" + spec.name + "'");
  if (spec.intensity.max_restarts < 0)
    return make_error(supervision_errc::invalid_intensity,
                      spec.name + ": max_restarts must be >= 0, got " +
                          std::to_string(spec.intensity.max_restarts));
  if (spec.intensity.period.count() <= 0)
    return make_error(supervision_errc::invalid_intensity,
                      spec.name + ": period must be positive, got " +
                          std::to_string(spec.intensity.period.count()) + " ns");
  const auto& b = spec.backoff;
  if (b.min.count() < 0 || b.max.count() < 0 || b.reset_after.count() < 0)
    return make_error(supervision_errc::invalid_backoff,
                      spec.name + ": backoff durations must not be negative");
  if (b.enabled() && b.max.count() > 0 && b.max < b.min)
    return make_error(supervision_errc::invalid_backoff,
                      spec.name + ": backoff max (" + std::to_string(b.max.count()) +
                          " ns) is below min (" + std::to_string(b.min.count()) + " ns)");
  if (b.multiplier < 1.0)
    return make_error(supervision_errc::invalid_backoff,
                      spec.name + ": backoff multiplier must be >= 1");
  if (b.jitter < 0.0 || b.jitter > 1.0)
    return make_error(supervision_errc::invalid_backoff,
                      spec.name + ": backoff jitter must be within [0, 1]");
  if (spec.strategy == restart_strategy::simple_one_for_one && spec.children.size() != 1)
    return make_error(supervision_errc::invalid_child_spec,
                      spec.name + ": simple_one_for_one needs exactly one template child, got " +
                          std::to_string(spec.children.size()));
  std::unordered_set<std::string> ids;
  for (const auto& c : spec.children) {
    if (auto err = validate_child_spec(c))
      return err;
    if (!ids.insert(c.id).second)
      return make_error(supervision_errc::duplicate_child_id,
                        spec.name + ": duplicate child id '" + c.id + "'");
  }
  return caf::none;
}

} // namespace understudy
