#pragma once

#include <cstdint>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

#include "understudy/core/errors.hpp"

namespace understudy::serving {

/// Failures of serving (router, replicas, front end). The context names the
/// model, the request's problem or the replicas tried, e.g. "replica-1 and
/// replica-2 failed: ...". Sorted by what the client does next: a bad request
/// or unknown model gives up, overload and missing replicas back off, a
/// request whose replicas failed may be retried now.
enum class serving_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// The request is malformed: not JSON, no instances, a wrong input size.
  bad_request,
  /// No model of that name is served here.
  unknown_model,
  /// Every replica in rotation is at its limit of outstanding requests: the
  /// request was refused at once instead of queued (HTTP 503, Retry-After).
  overloaded,
  /// No replica holds a model version yet (none loaded, or all restarting).
  no_replica,
  /// The request's replicas failed (crashed or timed out) as often as its
  /// retry budget allows; the replicas are being restarted.
  replica_failed,
  /// The model version cannot be loaded from its source (none committed, or
  /// its records do not fit the model).
  no_model,
  /// The request crashed the replica that computed it alone: it is not
  /// retried (the router answers replica_failed).
  poisonous,
};

} // namespace understudy::serving

namespace understudy {

/// Declares `serving::serving_errc`.
template <>
struct error_traits<serving::serving_errc> {
  using serving_errc = serving::serving_errc;
  static constexpr caf::atom_value category = caf::atom("us_serve");
  static constexpr error_value<serving_errc> values[] = {
      {serving_errc::none, "none", "not an error", next_step::give_up},
      {serving_errc::bad_request, "bad_request", "the request is malformed", next_step::give_up},
      {serving_errc::unknown_model, "unknown_model", "no model of that name is served here",
       next_step::give_up},
      {serving_errc::overloaded, "overloaded", "every replica in rotation is at its limit",
       next_step::back_off},
      {serving_errc::no_replica, "no_replica", "no replica holds a model version",
       next_step::back_off},
      {serving_errc::replica_failed, "replica_failed",
       "the request's replicas failed as often as its retry budget allows", next_step::retry_now},
      {serving_errc::no_model, "no_model", "the model version cannot be loaded",
       next_step::back_off},
      {serving_errc::poisonous, "poisonous",
       "the request crashed the replica that computed it alone", next_step::give_up},
  };
};

} // namespace understudy
