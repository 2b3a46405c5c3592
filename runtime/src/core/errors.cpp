#include "understudy/core/errors.hpp"

#include <optional>
#include <utility>

#include <caf/actor_system_config.hpp>
#include <caf/exit_reason.hpp>
#include <caf/make_message.hpp>
#include <caf/message.hpp>
#include <caf/pec.hpp>
#include <caf/sec.hpp>

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

namespace {

/// Whether `x` can be the name of an error value (lower case, digits, `_`).
bool is_name(const std::string& x) {
  if (x.empty())
    return false;
  for (char c : x)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
      return false;
  return true;
}

/// Whether `cat` is one of CAF's own categories, whose contexts are CAF's.
bool is_caf_category(caf::atom_value cat) {
  return cat == caf::atom("exit") || cat == caf::atom("system") || cat == caf::atom("parser");
}

/// The name a self-naming context `(name)` or `(name, context)` holds.
std::optional<std::string> name_in(const caf::message& ctx) {
  if ((ctx.match_elements<std::string>() || ctx.match_elements<std::string, std::string>()) &&
      is_name(ctx.get_as<std::string>(0)))
    return ctx.get_as<std::string>(0);
  return std::nullopt;
}

/// The details of a context: a self-naming one's without its name.
std::string details_of(caf::atom_value cat, const caf::message& ctx) {
  if (ctx.empty())
    return {};
  if (!is_caf_category(cat) && name_in(ctx))
    return ctx.size() == 2 ? ctx.get_as<std::string>(1) : std::string{};
  if (ctx.size() == 1 && ctx.match_element<std::string>(0))
    return ctx.get_as<std::string>(0);
  return to_string(ctx);
}

/// Joins a name and the details.
std::string with_details(std::string name, const std::string& details) {
  if (!details.empty()) {
    name += ": ";
    name += details;
  }
  return name;
}

/// The name of `code` in the core's category `cat`, if `cat` is one.
std::optional<std::string> core_name(caf::atom_value cat, uint8_t code) {
  if (cat == supervision_category)
    return to_string(static_cast<supervision_errc>(code));
  if (cat == state_category)
    return to_string(static_cast<state_errc>(code));
  if (cat == config_category)
    return to_string(static_cast<config_errc>(code));
  return std::nullopt;
}

} // namespace

namespace detail {

caf::error make_named_error(uint8_t code, caf::atom_value category, std::string_view name) {
  return caf::error{code, category, caf::make_message(std::string{name})};
}

caf::error make_named_error(uint8_t code, caf::atom_value category, std::string_view name,
                            std::string context) {
  return caf::error{code, category, caf::make_message(std::string{name}, std::move(context))};
}

void add_error_renderer(caf::actor_system_config& cfg, caf::atom_value category,
                        std::string (*name_of)(uint8_t)) {
  cfg.add_error_category(category,
                         [name_of](uint8_t code, caf::atom_value cat, const caf::message& ctx) {
                           return with_details(name_of(code), details_of(cat, ctx));
                         });
}

} // namespace detail

std::string describe(const caf::error& err) {
  if (!err)
    return "normal";
  auto cat = err.category();
  const auto& ctx = err.context();
  std::string name;
  if (cat == caf::atom("exit")) {
    name = to_string(static_cast<caf::exit_reason>(err.code()));
  } else if (cat == caf::atom("system")) {
    name = to_string(static_cast<caf::sec>(err.code()));
  } else if (cat == caf::atom("parser")) {
    name = to_string(static_cast<caf::pec>(err.code()));
  } else if (auto core = core_name(cat, err.code())) {
    name = std::move(*core);
  } else if (auto own = name_in(ctx)) {
    name = std::move(*own);
  } else {
    // Not made by make_error: its category and code, then the context,
    // which by convention says what went wrong.
    name = to_string(cat) + " code " + std::to_string(err.code());
  }
  return with_details(std::move(name), details_of(cat, ctx));
}

std::string error_context(const caf::error& err) {
  if (!err)
    return {};
  return details_of(err.category(), err.context());
}

caf::error with_context(const caf::error& err, const std::string& prefix) {
  if (!err)
    return err;
  auto cat = err.category();
  const auto& ctx = err.context();
  if (!is_caf_category(cat))
    if (auto name = name_in(ctx))
      return detail::make_named_error(err.code(), cat, *name,
                                      with_details(prefix, details_of(cat, ctx)));
  return caf::error{err.code(), cat, caf::make_message(with_details(prefix, error_context(err)))};
}

void register_error_categories(caf::actor_system_config& cfg) {
  register_error_category<supervision_errc>(cfg);
  register_error_category<state_errc>(cfg);
  register_error_category<config_errc>(cfg);
}

} // namespace understudy
