#include "understudy/runtime/errors.hpp"

#include <caf/actor_system_config.hpp>
#include <caf/exit_reason.hpp>
#include <caf/make_message.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

#include "understudy/runtime/process_host.hpp"

namespace understudy {

std::string to_string(next_step x) {
  switch (x) {
    case next_step::retry_now:
      return "retry_now";
    case next_step::back_off:
      return "back_off";
    case next_step::reconnect:
      return "reconnect";
    case next_step::give_up:
      return "give_up";
  }
  return "unknown";
}

std::string to_string(supervision_errc x) {
  switch (x) {
    case supervision_errc::none:
      return "none";
    case supervision_errc::duplicate_child_id:
      return "duplicate_child_id";
    case supervision_errc::unknown_child:
      return "unknown_child";
    case supervision_errc::start_failed:
      return "start_failed";
    case supervision_errc::start_timeout:
      return "start_timeout";
    case supervision_errc::invalid_intensity:
      return "invalid_intensity";
    case supervision_errc::invalid_timeout:
      return "invalid_timeout";
    case supervision_errc::invalid_backoff:
      return "invalid_backoff";
    case supervision_errc::invalid_child_spec:
      return "invalid_child_spec";
    case supervision_errc::intensity_exceeded:
      return "intensity_exceeded";
    case supervision_errc::liveness_deadline_missed:
      return "liveness_deadline_missed";
    case supervision_errc::wrong_strategy:
      return "wrong_strategy";
    case supervision_errc::child_running:
      return "child_running";
    case supervision_errc::child_not_running:
      return "child_not_running";
    case supervision_errc::supervisor_stopping:
      return "supervisor_stopping";
    case supervision_errc::timeout:
      return "timeout";
  }
  return "unknown";
}

next_step next_step_for(supervision_errc x) {
  switch (x) {
    case supervision_errc::none:
    case supervision_errc::start_timeout:
    case supervision_errc::timeout:
      return next_step::retry_now;
    case supervision_errc::start_failed:
    case supervision_errc::intensity_exceeded:
    case supervision_errc::child_not_running:
      return next_step::back_off;
    case supervision_errc::liveness_deadline_missed:
    case supervision_errc::supervisor_stopping:
      return next_step::reconnect;
    case supervision_errc::duplicate_child_id:
    case supervision_errc::unknown_child:
    case supervision_errc::invalid_intensity:
    case supervision_errc::invalid_timeout:
    case supervision_errc::invalid_backoff:
    case supervision_errc::invalid_child_spec:
    case supervision_errc::wrong_strategy:
    case supervision_errc::child_running:
      return next_step::give_up;
  }
  return next_step::give_up;
}

caf::error make_error(supervision_errc x) {
  return caf::error{static_cast<uint8_t>(x), supervision_category};
}

caf::error make_error(supervision_errc x, std::string context) {
  return caf::error{static_cast<uint8_t>(x), supervision_category,
                    caf::make_message(std::move(context))};
}

bool is(const caf::error& err, supervision_errc x) {
  return err.category() == supervision_category && err.code() == static_cast<uint8_t>(x);
}

std::string to_string(state_errc x) {
  switch (x) {
    case state_errc::none:
      return "none";
    case state_errc::io_error:
      return "io_error";
    case state_errc::disk_full:
      return "disk_full";
    case state_errc::map_size_limit:
      return "map_size_limit";
    case state_errc::locked:
      return "locked";
    case state_errc::invalid_config:
      return "invalid_config";
    case state_errc::invalid_path:
      return "invalid_path";
    case state_errc::payload_too_large:
      return "payload_too_large";
    case state_errc::corrupt_record:
      return "corrupt_record";
    case state_errc::truncated_chunk:
      return "truncated_chunk";
    case state_errc::not_found:
      return "not_found";
    case state_errc::schema_mismatch:
      return "schema_mismatch";
    case state_errc::read_only:
      return "read_only";
    case state_errc::writer_stopped:
      return "writer_stopped";
  }
  return "unknown";
}

next_step next_step_for(state_errc x) {
  switch (x) {
    case state_errc::none:
    case state_errc::io_error:
      return next_step::retry_now;
    case state_errc::disk_full:
    case state_errc::map_size_limit:
    case state_errc::locked:
      return next_step::back_off;
    case state_errc::writer_stopped:
      return next_step::reconnect;
    case state_errc::invalid_config:
    case state_errc::invalid_path:
    case state_errc::payload_too_large:
    case state_errc::corrupt_record:
    case state_errc::truncated_chunk:
    case state_errc::not_found:
    case state_errc::schema_mismatch:
    case state_errc::read_only:
      return next_step::give_up;
  }
  return next_step::give_up;
}

caf::error make_error(state_errc x) {
  return caf::error{static_cast<uint8_t>(x), state_category};
}

caf::error make_error(state_errc x, std::string context) {
  return caf::error{static_cast<uint8_t>(x), state_category, caf::make_message(std::move(context))};
}

bool is(const caf::error& err, state_errc x) {
  return err.category() == state_category && err.code() == static_cast<uint8_t>(x);
}

std::string to_string(config_errc x) {
  switch (x) {
    case config_errc::none:
      return "none";
    case config_errc::cannot_read:
      return "cannot_read";
    case config_errc::syntax:
      return "syntax";
    case config_errc::unknown_key:
      return "unknown_key";
    case config_errc::wrong_type:
      return "wrong_type";
    case config_errc::missing_key:
      return "missing_key";
    case config_errc::invalid_value:
      return "invalid_value";
    case config_errc::duplicate:
      return "duplicate";
    case config_errc::unknown_node:
      return "unknown_node";
    case config_errc::unsatisfiable_placement:
      return "unsatisfiable_placement";
    case config_errc::insecure:
      return "insecure";
    case config_errc::invalid_job:
      return "invalid_job";
  }
  return "unknown";
}

next_step next_step_for(config_errc) {
  return next_step::give_up;
}

caf::error make_error(config_errc x, std::string context) {
  return caf::error{static_cast<uint8_t>(x), config_category,
                    caf::make_message(std::move(context))};
}

bool is(const caf::error& err, config_errc x) {
  return err.category() == config_category && err.code() == static_cast<uint8_t>(x);
}

namespace {

std::string context_text(const caf::message& ctx) {
  if (ctx.empty())
    return {};
  if (ctx.size() == 1 && ctx.match_element<std::string>(0))
    return ctx.get_as<std::string>(0);
  return to_string(ctx);
}

} // namespace

std::string describe(const caf::error& err) {
  if (!err)
    return "normal";
  std::string result;
  auto cat = err.category();
  if (cat == supervision_category) {
    result = to_string(static_cast<supervision_errc>(err.code()));
  } else if (cat == state_category) {
    result = to_string(static_cast<state_errc>(err.code()));
  } else if (cat == config_category) {
    result = to_string(static_cast<config_errc>(err.code()));
  } else if (cat == process_category) {
    result = to_string(static_cast<process_errc>(err.code()));
  } else if (cat == caf::atom("exit")) {
    result = to_string(static_cast<caf::exit_reason>(err.code()));
  } else if (cat == caf::atom("system")) {
    result = to_string(static_cast<caf::sec>(err.code()));
  } else {
    // Another component's category: its name and code, then the context,
    // which by convention says what went wrong.
    result = to_string(cat) + " error " + std::to_string(err.code());
  }
  auto ctx = context_text(err.context());
  if (!ctx.empty()) {
    result += ": ";
    result += ctx;
  }
  return result;
}

namespace {

/// Renders errors of category enum `E` by name, with their context.
template <class E>
auto renderer() {
  return [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    auto result = to_string(static_cast<E>(code));
    auto text = context_text(ctx);
    if (!text.empty())
      result += ": " + text;
    return result;
  };
}

} // namespace

void register_error_categories(caf::actor_system_config& cfg) {
  cfg.add_error_category(supervision_category, renderer<supervision_errc>());
  cfg.add_error_category(state_category, renderer<state_errc>());
  cfg.add_error_category(config_category, renderer<config_errc>());
  cfg.add_error_category(process_category, renderer<process_errc>());
}

} // namespace understudy
