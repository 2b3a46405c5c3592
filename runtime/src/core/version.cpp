#include "understudy/core/version.hpp"

namespace understudy {

std::string_view version() noexcept {
  return version_string;
}

} // namespace understudy
