// What child_spec.hpp offers children: exception capture, progress and readiness reports.

#include "understudy/supervision/child_spec.hpp"

#include <exception>
#include <string>

#include <caf/scheduled_actor.hpp>
#include <caf/sec.hpp>
#include <caf/send.hpp>

#include "understudy/supervision/supervisor.hpp"

namespace understudy {

void capture_exceptions(caf::scheduled_actor* self) {
  self->set_exception_handler([](caf::scheduled_actor*, std::exception_ptr& eptr) -> caf::error {
    try {
      std::rethrow_exception(eptr);
    } catch (const std::exception& e) {
      return caf::make_error(caf::sec::runtime_error, std::string{"exception: "} + e.what());
    } catch (...) {
      return caf::make_error(caf::sec::runtime_error, std::string{"unknown exception"});
    }
  });
}

void report_progress(const child_token& token) {
  if (token)
    caf::anon_send(token.supervisor, progress_atom::value, token.slot, token.incarnation);
}

void announce_ready(const child_token& token) {
  if (token)
    caf::anon_send(token.supervisor, ready_atom::value, token.slot, token.incarnation);
}

} // namespace understudy
