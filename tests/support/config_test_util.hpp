#pragma once
// Shared by the node config tests (tests/runtime/config/) and the [job]
// section's tests (tests/actors/): file fragments with known line numbers, and
// the `FILE:LINE: problem` text of a config error.

#include <initializer_list>
#include <string>

#include <caf/error.hpp>

#include "understudy/core/errors.hpp"

namespace config_test {

/// The context of a config error (`FILE:LINE: problem`).
inline std::string message_of(const caf::error& err) {
  auto details = understudy::error_context(err);
  return details.empty() ? understudy::describe(err) : details;
}

/// Joins lines with newlines (each line of a case is one line of the file).
inline std::string lines(std::initializer_list<const char*> xs) {
  std::string out;
  for (const auto* x : xs) {
    out += x;
    out += '\n';
  }
  return out;
}

/// Lines 1-8 of most cases: a cluster of one loopback node.
inline const std::string base = lines({
    "[cluster]",            // 1
    "name = \"t\"",         // 2
    "",                     // 3
    "[[node]]",             // 4
    "name = \"a\"",         // 5
    "host = \"127.0.0.1\"", // 6
    "port = 7001",          // 7
    "state_dir = \"s/a\"",  // 8
});

/// A second loopback node, "b", as lines 9-13 after `base`.
inline const std::string node_b = lines({
    "[[node]]",             // 9
    "name = \"b\"",         // 10
    "host = \"127.0.0.1\"", // 11
    "port = 7002",          // 12
    "state_dir = \"s/b\"",  // 13
});

} // namespace config_test
