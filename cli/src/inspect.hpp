#pragma once
// `understudy inspect STATE_DIR`: lists the versions in a state store and
// verifies every checksum, without writing to the store.

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>

namespace CLI {
class App;
} // namespace CLI

namespace understudy::cli {

/// Exit codes of `understudy inspect` (and of the other subcommands).
enum exit_code : int {
  /// Every version verified.
  exit_ok = 0,
  /// At least one record is corrupt (each is named on stderr).
  exit_corrupt = 1,
  /// Wrong usage, or the store could not be opened or read.
  exit_failure = 2,
};

/// Options of `understudy inspect`.
struct inspect_options {
  /// The state directory (holding data.mdb).
  std::string directory;
  /// Print one JSON object per version (and a summary object) instead of a table.
  bool json = false;
  /// Only actor paths that start with this prefix.
  std::string path_prefix;
};

/// Adds the `inspect` subcommand to `app`, filling `opts` when it is parsed.
/// Returns the subcommand (test it with `*sub` after parsing).
CLI::App* add_inspect_command(CLI::App& app, inspect_options& opts);

/// Opens the store in `opts.directory` read-only, lists and verifies every
/// version, writes the listing to `out` and each problem to `err`. Ages are
/// measured against `now`. Returns an `exit_code`.
int run_inspect(const inspect_options& opts, std::ostream& out, std::ostream& err,
                std::chrono::system_clock::time_point now);

/// Renders `n` bytes in binary units: "512 B", "4.0 KiB", "1.5 GiB".
std::string format_bytes(uint64_t n);

/// Renders a duration compactly: "42s", "3m12s", "2h05m", "3d04h".
std::string format_age(std::chrono::nanoseconds age);

/// Renders `s` as a JSON string literal (quoted, escaped; invalid UTF-8 bytes
/// become U+FFFD).
std::string json_string(std::string_view s);

} // namespace understudy::cli
