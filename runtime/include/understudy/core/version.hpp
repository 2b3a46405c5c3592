#pragma once

#include <string_view>

#include "understudy/core/version_config.hpp"

namespace understudy {

/// Returns the version of the linked understudy library as "major.minor.patch".
///
/// Compare it with `version_string` (the version of the headers a caller was compiled against)
/// to detect a header/library mismatch. Callable from any thread; the returned view refers to
/// static storage and stays valid for the life of the process.
std::string_view version() noexcept;

} // namespace understudy
