#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include <caf/message.hpp>

#include "config_parser.hpp"

namespace understudy {

// -- durations -------------------------------------------------------------------------

caf::expected<caf::timespan> parse_duration(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return make_error(config_errc::invalid_value,
                      "bad duration '" + std::string{text} + "': " + why);
  };
  size_t i = 0;
  if (i < text.size() && text[i] == '-')
    return bad("durations are not negative");
  uint64_t whole = 0;
  size_t digits = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, ++digits) {
    if (whole > (std::numeric_limits<uint64_t>::max() - 9) / 10)
      return bad("too large");
    whole = whole * 10 + static_cast<uint64_t>(text[i] - '0');
  }
  double fraction = 0, scale = 0.1;
  if (i < text.size() && text[i] == '.') {
    ++i;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, ++digits) {
      fraction += (text[i] - '0') * scale;
      scale /= 10;
    }
  }
  if (digits == 0)
    return bad("expected a number with a unit, e.g. \"100ms\"");
  auto unit = text.substr(i);
  double ns_per_unit = 0;
  if (unit == "ns")
    ns_per_unit = 1;
  else if (unit == "us")
    ns_per_unit = 1e3;
  else if (unit == "ms")
    ns_per_unit = 1e6;
  else if (unit == "s")
    ns_per_unit = 1e9;
  else if (unit == "m" || unit == "min")
    ns_per_unit = 60e9;
  else if (unit == "h")
    ns_per_unit = 3600e9;
  else if (unit.empty())
    return bad("missing unit (ns, us, ms, s, m or h), e.g. \"100ms\"");
  else
    return bad("unknown unit '" + std::string{unit} + "' (expected ns, us, ms, s, m or h)");
  double ns = (static_cast<double>(whole) + fraction) * ns_per_unit;
  if (ns > 1e18)
    return bad("too large");
  return caf::timespan{static_cast<int64_t>(std::llround(ns))};
}

namespace config_detail {

int line_too_deep(std::string_view text) {
  size_t depth = 0;
  int line = 1;
  size_t i = 0;
  auto starts = [&](std::string_view s) { return text.substr(i, s.size()) == s; };
  while (i < text.size()) {
    char c = text[i];
    if (c == '\n') {
      ++line;
      ++i;
    } else if (c == '#') {
      while (i < text.size() && text[i] != '\n')
        ++i;
    } else if (starts("\"\"\"") || starts("'''")) {
      auto quote = text.substr(i, 3);
      bool basic = quote[0] == '"';
      i += 3;
      while (i < text.size() && !starts(quote)) {
        if (text[i] == '\n')
          ++line;
        i += basic && text[i] == '\\' ? 2 : 1;
      }
      i += 3;
      // Up to two more quotes belong to the string ("""a"""" ends in a quote).
      while (i < text.size() && text[i] == quote[0])
        ++i;
    } else if (c == '"' || c == '\'') {
      ++i;
      while (i < text.size() && text[i] != c && text[i] != '\n')
        i += c == '"' && text[i] == '\\' ? 2 : 1;
      if (i < text.size() && text[i] == c)
        ++i;
    } else {
      if (c == '[' || c == '{') {
        if (++depth > max_toml_nesting)
          return line;
      } else if ((c == ']' || c == '}') && depth > 0) {
        --depth;
      }
      ++i;
    }
  }
  return 0;
}

/// Renders a duration for messages: "250ms", "1.5s".
std::string show(caf::timespan d) {
  auto ns = d.count();
  std::ostringstream out;
  if (ns != 0 && ns % 1000000000 == 0)
    out << ns / 1000000000 << "s";
  else if (ns >= 1000000000)
    out << static_cast<double>(ns) / 1e9 << "s";
  else if (ns % 1000000 == 0)
    out << ns / 1000000 << "ms";
  else if (ns % 1000 == 0)
    out << ns / 1000 << "us";
  else
    out << ns << "ns";
  return out.str();
}

/// The context text of one of our errors.
std::string context_of(const caf::error& err) {
  auto details = error_context(err);
  return details.empty() ? describe(err) : details;
}

int line_of(const tvalue& v) {
  return static_cast<int>(v.location().line());
}

std::string type_name(const tvalue& v) {
  switch (v.type()) {
    case toml::value_t::boolean:
      return "a boolean";
    case toml::value_t::integer:
      return "an integer";
    case toml::value_t::floating:
      return "a float";
    case toml::value_t::string:
      return "a string";
    case toml::value_t::array:
      return "an array";
    case toml::value_t::table:
      return "a table";
    case toml::value_t::empty:
      return "empty";
    default:
      return "a date or time";
  }
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// " (did you mean 'x'?)" for the closest of `candidates`, or "".
std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates) {
  const std::string* best = nullptr;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    auto d = edit_distance(word, c);
    if (d < best_distance) {
      best_distance = d;
      best = &c;
    }
  }
  auto limit = std::max<size_t>(1, std::min<size_t>(3, word.size() / 3 + 1));
  if (best == nullptr || best_distance > limit)
    return {};
  return " (did you mean '" + *best + "'?)";
}

std::string join(const std::vector<std::string>& xs, const char* sep) {
  std::string out;
  for (const auto& x : xs) {
    if (!out.empty())
      out += sep;
    out += x;
  }
  return out;
}

bool valid_name(const std::string& s, bool allow_dot) {
  if (s.empty() || s.size() > 64)
    return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || (allow_dot && c == '.');
    if (!ok)
      return false;
  }
  return true;
}

// -- table_reader --------------------------------------------------------------------

table_reader::table_reader(parser& p, const tvalue& v, std::string display,
                           const std::string& section)
    : p_(&p), display_(std::move(display)), label_(display_), line_(config_detail::line_of(v)) {
  if (!v.is_table()) {
    p.fail(config_errc::wrong_type, line_, display_ + " must be a table, not " + type_name(v));
    return;
  }
  table_ = &v.as_table();
  auto known = p.keys_of(section);
  // Settings that once existed: why they went, rather than "unknown key".
  struct retired_key {
    const char* section;
    const char* key;
    const char* why;
  };
  static constexpr retired_key retired[] = {
      {"cluster.failure_detection", "quorum",
       "is no longer a setting: the coordination service (etcd, [cluster.coordination]) decides "
       "who is dead and who leads; remove it"},
  };
  for (const auto& [key, line] : keys_in_order()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      for (const auto& r : retired)
        if (section == r.section && key == r.key) {
          p.fail(config_errc::unknown_key, line, "'" + key + "' in " + display_ + " " + r.why);
          return;
        }
      p.fail(config_errc::unknown_key, line,
             "unknown key '" + key + "' in " + display_ + did_you_mean(key, known));
      return;
    }
  }
}

std::vector<std::pair<std::string, int>> table_reader::keys_in_order() const {
  std::vector<std::pair<std::string, int>> out;
  if (table_ == nullptr)
    return out;
  for (const auto& [key, value] : *table_)
    out.emplace_back(key, config_detail::line_of(value));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second < b.second : a.first < b.first;
  });
  return out;
}

void table_reader::wrong_type(const std::string& key, const tvalue& v,
                              const std::string& expected) {
  p_->fail(config_errc::wrong_type, config_detail::line_of(v),
           "'" + key + "' in " + display_ + " must be " + expected + ", not " + type_name(v));
}

void table_reader::bad_name(const std::string& key, const std::string& value,
                            const std::vector<std::string>& allowed) {
  p_->fail(config_errc::invalid_value, line_of(key),
           "'" + key + "' in " + display_ + " is '" + value + "'; expected one of " +
               join(allowed) + did_you_mean(value, allowed));
}

std::optional<std::string> table_reader::str(const std::string& key, bool required,
                                             bool allow_empty) {
  auto* v = find(key);
  if (v == nullptr) {
    if (required)
      p_->fail(config_errc::missing_key, line_, label_ + " lacks required key '" + key + "'");
    return std::nullopt;
  }
  if (!v->is_string()) {
    wrong_type(key, *v, "a string");
    return std::nullopt;
  }
  const std::string& s = v->as_string().str;
  if (s.empty() && !allow_empty) {
    p_->fail(config_errc::invalid_value, line_of(key),
             "'" + key + "' in " + display_ + " must not be empty");
    return std::nullopt;
  }
  return s;
}

std::optional<int64_t> table_reader::integer(const std::string& key, int64_t lo, int64_t hi,
                                             bool required) {
  auto* v = find(key);
  if (v == nullptr) {
    if (required)
      p_->fail(config_errc::missing_key, line_, label_ + " lacks required key '" + key + "'");
    return std::nullopt;
  }
  if (!v->is_integer()) {
    wrong_type(key, *v, "an integer");
    return std::nullopt;
  }
  auto x = v->as_integer();
  if (x < lo || x > hi) {
    std::string range = hi == std::numeric_limits<int64_t>::max()
                            ? "at least " + std::to_string(lo)
                            : "from " + std::to_string(lo) + " to " + std::to_string(hi);
    p_->fail(config_errc::invalid_value, line_of(key),
             "'" + key + "' in " + display_ + " must be " + range + ", not " + std::to_string(x));
    return std::nullopt;
  }
  return x;
}

std::optional<double> table_reader::real(const std::string& key) {
  auto* v = find(key);
  if (v == nullptr)
    return std::nullopt;
  if (v->is_integer())
    return static_cast<double>(v->as_integer());
  if (!v->is_floating()) {
    wrong_type(key, *v, "a number");
    return std::nullopt;
  }
  auto x = v->as_floating();
  if (!std::isfinite(x)) {
    p_->fail(config_errc::invalid_value, line_of(key),
             "'" + key + "' in " + display_ + " must be finite");
    return std::nullopt;
  }
  return x;
}

std::optional<bool> table_reader::boolean(const std::string& key) {
  auto* v = find(key);
  if (v == nullptr)
    return std::nullopt;
  if (!v->is_boolean()) {
    wrong_type(key, *v, "true or false");
    return std::nullopt;
  }
  return v->as_boolean();
}

std::optional<caf::timespan> table_reader::duration(const std::string& key, bool positive) {
  auto* v = find(key);
  if (v == nullptr)
    return std::nullopt;
  if (!v->is_string()) {
    wrong_type(key, *v, "a duration string such as \"100ms\"");
    return std::nullopt;
  }
  auto d = parse_duration(v->as_string().str);
  if (!d) {
    p_->fail(config_errc::invalid_value, line_of(key),
             "'" + key + "' in " + display_ + ": " + context_of(d.error()));
    return std::nullopt;
  }
  if (positive && d->count() <= 0) {
    p_->fail(config_errc::invalid_value, line_of(key),
             "'" + key + "' in " + display_ + " must be longer than zero");
    return std::nullopt;
  }
  return *d;
}

std::optional<std::vector<int64_t>> table_reader::int_list(const std::string& key, int64_t lo,
                                                           int64_t hi, bool required) {
  auto* v = find(key);
  if (v == nullptr) {
    if (required)
      p_->fail(config_errc::missing_key, line_, label_ + " lacks required key '" + key + "'");
    return std::nullopt;
  }
  if (!v->is_array()) {
    wrong_type(key, *v, "a list of integers");
    return std::nullopt;
  }
  std::vector<int64_t> out;
  for (const auto& x : v->as_array()) {
    if (!x.is_integer()) {
      p_->fail(config_errc::wrong_type, config_detail::line_of(x),
               "'" + key + "' in " + display_ + " must list integers, not " + type_name(x));
      return std::nullopt;
    }
    auto i = x.as_integer();
    if (i < lo || i > hi) {
      p_->fail(config_errc::invalid_value, config_detail::line_of(x),
               "'" + key + "' in " + display_ + ": " + std::to_string(i) + " is not from " +
                   std::to_string(lo) + " to " + std::to_string(hi));
      return std::nullopt;
    }
    out.push_back(i);
  }
  return out;
}

const tvalue* table_reader::sub_table(const std::string& key) {
  auto* v = find(key);
  if (v == nullptr)
    return nullptr;
  if (!v->is_table()) {
    wrong_type(key, *v, "a table");
    return nullptr;
  }
  return v;
}

const toml::array* table_reader::table_list(const std::string& key) {
  auto* v = find(key);
  if (v == nullptr)
    return nullptr;
  if (!v->is_array()) {
    wrong_type(key, *v, "a list of tables ([[...]])");
    return nullptr;
  }
  for (const auto& x : v->as_array())
    if (!x.is_table()) {
      wrong_type(key, x, "a list of tables ([[...]])");
      return nullptr;
    }
  return &v->as_array();
}

} // namespace config_detail

// -- config_table ----------------------------------------------------------------------

config_table::config_table(std::unique_ptr<impl> ptr) : impl_(std::move(ptr)) {}

config_table::config_table(config_table&&) noexcept = default;

config_table& config_table::operator=(config_table&&) noexcept = default;

config_table::~config_table() = default;

config_context& config_table::context() const {
  return impl_->p;
}

int config_table::line() const {
  return impl_->reader.line();
}

const std::string& config_table::display() const {
  return impl_->reader.display();
}

void config_table::name_it(const std::string& name) {
  impl_->reader.name_it(name);
}

bool config_table::has(const std::string& key) const {
  return impl_->reader.has(key);
}

bool config_table::is_table(const std::string& key) const {
  auto* v = impl_->reader.find(key);
  return v != nullptr && v->is_table();
}

bool config_table::is_integer(const std::string& key) const {
  auto* v = impl_->reader.find(key);
  return v != nullptr && v->is_integer();
}

bool config_table::is_string(const std::string& key) const {
  auto* v = impl_->reader.find(key);
  return v != nullptr && v->is_string();
}

int config_table::line_of(const std::string& key) const {
  return impl_->reader.line_of(key);
}

std::vector<std::pair<std::string, int>> config_table::keys_in_order() const {
  return impl_->reader.keys_in_order();
}

std::optional<std::string> config_table::str(const std::string& key, bool required,
                                             bool allow_empty) {
  return impl_->reader.str(key, required, allow_empty);
}

std::optional<int64_t> config_table::integer(const std::string& key, int64_t lo, int64_t hi,
                                             bool required) {
  return impl_->reader.integer(key, lo, hi, required);
}

std::optional<double> config_table::real(const std::string& key) {
  return impl_->reader.real(key);
}

std::optional<bool> config_table::boolean(const std::string& key) {
  return impl_->reader.boolean(key);
}

std::optional<caf::timespan> config_table::duration(const std::string& key, bool positive) {
  return impl_->reader.duration(key, positive);
}

std::optional<std::vector<int64_t>> config_table::int_list(const std::string& key, int64_t lo,
                                                           int64_t hi, bool required) {
  return impl_->reader.int_list(key, lo, hi, required);
}

std::optional<config_table> config_table::sub_table(const std::string& key, std::string display,
                                                    const std::string& section) {
  auto* v = impl_->reader.sub_table(key);
  if (failed() || v == nullptr)
    return std::nullopt;
  auto& p = impl_->p;
  return config_table{std::make_unique<impl>(
      impl{p, config_detail::table_reader{p, *v, std::move(display), section}})};
}

std::optional<restart_strategy> config_table::strategy(const std::string& key) {
  return impl_->reader.enumerated(key, config_detail::all_strategies);
}

restart_intensity config_table::intensity(restart_intensity def) {
  return impl_->p.parse_intensity(impl_->reader, def);
}

backoff_policy config_table::backoff() {
  return impl_->p.parse_backoff(impl_->reader);
}

placement_spec config_table::placement(const std::string& what, placement_policy def) {
  return impl_->p.parse_placement(impl_->reader, what, def);
}

void config_table::bad_name(const std::string& key, const std::string& value,
                            const std::vector<std::string>& allowed) {
  impl_->reader.bad_name(key, value, allowed);
}

} // namespace understudy
