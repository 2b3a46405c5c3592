// Helpers shared by the benchmarks under bench/: statistics, figures, the table and the
// JSON lines they print, the alternating order of the sides of a comparison, and the
// command line. Header-only; every bench target has bench/common on its include path.

#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace bench {

// -- statistics --------------------------------------------------------------------------

/// Returns the median of `xs` (the mean of the middle two for an even count); 0 when empty.
inline double median(std::vector<double> xs) {
  if (xs.empty())
    return 0;
  std::sort(xs.begin(), xs.end());
  auto n = xs.size();
  return n % 2 == 1 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
}

/// Returns the nearest-rank `p` quantile (0 < p <= 1) of `xs`; 0 when empty.
inline double percentile(std::vector<double> xs, double p) {
  if (xs.empty())
    return 0;
  std::sort(xs.begin(), xs.end());
  auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(xs.size())));
  return xs[std::min(xs.size(), std::max<size_t>(rank, 1)) - 1];
}

// -- figures and output ------------------------------------------------------------------

/// Formats `x` with `decimals` digits after the point.
inline std::string fixed(double x, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, x);
  return buf;
}

/// Returns "min .. max" of `xs` with `decimals` digits; "-" when empty.
inline std::string spread(const std::vector<double>& xs, int decimals) {
  if (xs.empty())
    return "-";
  auto [lo, hi] = std::minmax_element(xs.begin(), xs.end());
  return fixed(*lo, decimals) + " .. " + fixed(*hi, decimals);
}

/// One measured figure next to its baseline, with an optional target and notes.
struct figure {
  /// The figure's name in the table and the JSON line.
  std::string name;
  /// The unit of value and baseline.
  std::string unit;
  /// Our side.
  double value = 0;
  /// The baseline side.
  double baseline = 0;
  /// False: no baseline (printed as "-" and null).
  bool has_baseline = true;
  /// Digits after the point of value and baseline.
  int decimals = 1;
  /// The target in words; empty: none.
  std::string target;
  /// Whether the target was met (meaningful only with a target).
  bool met = true;
  /// Lines printed under the table.
  std::vector<std::string> notes;

  /// Returns value / baseline; 0 without a positive baseline.
  [[nodiscard]] double ratio() const { return baseline > 0 ? value / baseline : 0; }
};

/// Returns a figure with a baseline, printed with `decimals` digits.
inline figure make_figure(std::string name, std::string unit, double value, double baseline,
                          int decimals = 1) {
  figure f;
  f.name = std::move(name);
  f.unit = std::move(unit);
  f.value = value;
  f.baseline = baseline;
  f.decimals = decimals;
  return f;
}

/// Prints `figs` as a table (the target column as wide as the longest target), then the notes.
inline void print_table(const std::vector<figure>& figs) {
  int target_width = 22;
  for (const auto& f : figs)
    target_width = std::max(target_width, static_cast<int>(f.target.size()));
  std::printf("%-36s %-9s %12s %12s %9s  %-*s %s\n", "figure", "unit", "value", "baseline", "ratio",
              target_width, "target", "met?");
  for (const auto& f : figs) {
    std::printf("%-36s %-9s %12s %12s %9s  %-*s %s\n", f.name.c_str(), f.unit.c_str(),
                fixed(f.value, f.decimals).c_str(),
                f.has_baseline ? fixed(f.baseline, f.decimals).c_str() : "-",
                f.has_baseline ? fixed(f.ratio(), 3).c_str() : "-", target_width,
                f.target.empty() ? "-" : f.target.c_str(),
                f.target.empty() ? "-" : (f.met ? "yes" : "NO"));
  }
  for (const auto& f : figs)
    for (const auto& n : f.notes)
      std::printf("  %s: %s\n", f.name.c_str(), n.c_str());
}

/// Prints the JSON line of `f`, a figure of the benchmark `bench_name`.
inline void print_json(const std::string& bench_name, const figure& f) {
  std::printf(
      "{\"bench\":\"%s\",\"figure\":\"%s\",\"unit\":\"%s\",\"value\":%s,"
      "\"baseline\":%s,\"ratio\":%s}\n",
      bench_name.c_str(), f.name.c_str(), f.unit.c_str(), fixed(f.value, f.decimals).c_str(),
      f.has_baseline ? fixed(f.baseline, f.decimals).c_str() : "null",
      f.has_baseline ? fixed(f.ratio(), 3).c_str() : "null");
}

/// Prints the table of `figs`, then one JSON line per figure.
inline void print_report(const std::string& bench_name, const std::vector<figure>& figs) {
  print_table(figs);
  for (const auto& f : figs)
    print_json(bench_name, f);
}

// -- selection ---------------------------------------------------------------------------

/// Whether `name` is one of the comma-separated `list` (an empty list names everything): a
/// benchmark's --only.
inline bool in_list(const std::string& list, const std::string& name) {
  if (list.empty())
    return true;
  size_t at = 0;
  while (at <= list.size()) {
    auto comma = list.find(',', at);
    auto end = comma == std::string::npos ? list.size() : comma;
    if (list.compare(at, end - at, name) == 0 && end - at == name.size())
      return true;
    at = end + 1;
  }
  return false;
}

// -- alternating order -------------------------------------------------------------------

/// Runs both sides of round `r`: A first in even rounds, B first in odd ones.
template <class A, class B>
void in_order(size_t r, A run_a, B run_b) {
  if (r % 2 == 0) {
    run_a();
    run_b();
  } else {
    run_b();
    run_a();
  }
}

/// Runs every side, starting at `round % sides.size()`, so each runs first equally often.
inline void rotated(size_t round, const std::vector<std::function<void()>>& sides) {
  for (size_t i = 0; i < sides.size(); ++i)
    sides[(round + i) % sides.size()]();
}

// -- command line ------------------------------------------------------------------------

/// The outcome of parsing the command line: run, print the usage, or fail with it.
enum class parse_result { run, help, bad };

/// One command-line option: a flag, or one that takes the next argument as its value.
struct option {
  /// The option as typed, e.g. "--rounds".
  std::string name;
  /// True: the next argument is its value.
  bool takes_value = false;
  /// Applies the option (its value, or nullptr for a flag); false: a bad value.
  std::function<bool(const char*)> apply;
};

/// Parses `text` as a positive decimal number into `out`; false if it is none.
inline bool parse_size(const char* text, size_t& out) {
  char* end = nullptr;
  errno = 0;
  auto x = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || x == 0)
    return false;
  out = static_cast<size_t>(x);
  return true;
}

/// Returns a flag option that calls `set` when given.
inline option flag_option(std::string name, std::function<void()> set) {
  return {std::move(name), false, [set = std::move(set)](const char*) {
            set();
            return true;
          }};
}

/// Returns an option whose value, a positive number, goes to `out`.
inline option size_option(std::string name, size_t& out) {
  return {std::move(name), true, [&out](const char* value) { return parse_size(value, out); }};
}

/// Returns an option whose value goes to `out` as it is.
inline option string_option(std::string name, std::string& out) {
  return {std::move(name), true, [&out](const char* value) {
            out = value;
            return true;
          }};
}

/// Applies the arguments to `opts`; --help/-h asks for help; a bad one is named on stderr.
inline parse_result parse_args(int argc, char** argv, const std::vector<option>& opts) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h")
      return parse_result::help;
    auto opt =
        std::find_if(opts.begin(), opts.end(), [&](const option& o) { return o.name == arg; });
    if (opt == opts.end() || (opt->takes_value && i + 1 >= argc)) {
      std::fprintf(stderr, "bad argument: %s\n", arg.c_str());
      return parse_result::bad;
    }
    const char* value = opt->takes_value ? argv[++i] : nullptr;
    if (!opt->apply(value)) {
      std::fprintf(stderr, "bad argument: %s %s\n", arg.c_str(), value != nullptr ? value : "");
      return parse_result::bad;
    }
  }
  return parse_result::run;
}

/// Parses argv; on help or a bad argument prints `usage` (printf) and returns the exit status.
[[gnu::format(printf, 4, 5)]] inline std::optional<int> parse_command_line(
    int argc, char** argv, const std::vector<option>& opts, const char* usage, ...) {
  auto parsed = parse_args(argc, argv, opts);
  if (parsed == parse_result::run)
    return std::nullopt;
  bool help = parsed == parse_result::help;
  std::va_list args;
  va_start(args, usage);
  std::vfprintf(help ? stdout : stderr, usage, args);
  va_end(args);
  return help ? EXIT_SUCCESS : EXIT_FAILURE;
}

} // namespace bench
