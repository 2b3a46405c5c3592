#include "understudy/supervision/restart_policy.hpp"

namespace understudy {

std::string to_string(restart_strategy x) {
  switch (x) {
    case restart_strategy::one_for_one:
      return "one_for_one";
    case restart_strategy::one_for_all:
      return "one_for_all";
    case restart_strategy::rest_for_one:
      return "rest_for_one";
    case restart_strategy::simple_one_for_one:
      return "simple_one_for_one";
  }
  return "unknown";
}

std::string to_string(restart_type x) {
  switch (x) {
    case restart_type::permanent:
      return "permanent";
    case restart_type::transient:
      return "transient";
    case restart_type::temporary:
      return "temporary";
  }
  return "unknown";
}

std::string to_string(shutdown_mode x) {
  switch (x) {
    case shutdown_mode::timeout:
      return "timeout";
    case shutdown_mode::brutal_kill:
      return "brutal_kill";
    case shutdown_mode::infinity:
      return "infinity";
  }
  return "unknown";
}

} // namespace understudy
