#include "understudy/runtime/node_config.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <system_error>
#include <utility>

#include <caf/message.hpp>
#include <toml.hpp>

#include "understudy/runtime/errors.hpp"

namespace understudy {

// -- enums ---------------------------------------------------------------------------

std::string to_string(node_role x) {
  switch (x) {
    case node_role::active:
      return "active";
    case node_role::spare:
      return "spare";
  }
  return "unknown";
}

std::string to_string(placement_policy x) {
  switch (x) {
    case placement_policy::inherit:
      return "inherit";
    case placement_policy::nodes:
      return "nodes";
    case placement_policy::any:
      return "any";
    case placement_policy::spread:
      return "spread";
  }
  return "unknown";
}

std::string to_string(quorum_policy x) {
  switch (x) {
    case quorum_policy::none:
      return "none";
    case quorum_policy::majority:
      return "majority";
  }
  return "unknown";
}

std::string to_string(process_mode x) {
  switch (x) {
    case process_mode::shared:
      return "shared";
    case process_mode::isolated:
      return "isolated";
  }
  return "unknown";
}

int job_spec::line_of(const std::string& key) const {
  if (auto i = lines.find(key); i != lines.end())
    return i->second;
  if (auto i = lines.find(""); i != lines.end())
    return i->second;
  return 1;
}

const node_spec* node_config::find_node(std::string_view name) const {
  for (const auto& n : nodes)
    if (n.name == name)
      return &n;
  return nullptr;
}

// -- the keys --------------------------------------------------------------------------

std::vector<config_key> node_config_keys() {
  std::vector<config_key> keys;
  auto add = [&keys](const char* section,
                     std::initializer_list<std::pair<const char*, const char*>> entries) {
    for (const auto& [name, type] : entries)
      keys.push_back(config_key{section, name, type});
  };
  add("", {{"cluster", "table"}, {"node", "table list"}, {"tree", "table"}, {"job", "table"}});
  add("cluster", {{"name", "string"},
                  {"state_root", "string"},
                  {"security", "table"},
                  {"metrics", "table"},
                  {"failure_detection", "table"}});
  add("cluster.security", {{"dir", "string"},
                           {"ca", "string"},
                           {"ca_key", "string"},
                           {"cert", "string"},
                           {"key", "string"}});
  add("cluster.metrics", {{"enabled", "boolean"}, {"port_base", "integer"}});
  add("cluster.failure_detection", {{"heartbeat_interval", "duration"},
                                    {"phi_threshold", "float"},
                                    {"deadline", "duration"},
                                    {"connection_timeout", "duration"},
                                    {"quorum", "string"}});
  add("node", {{"name", "string"},
               {"host", "string"},
               {"port", "integer"},
               {"state_dir", "string"},
               {"gpus", "integer list"},
               {"role", "string"},
               {"metrics_port", "integer"},
               {"buddy", "string"},
               {"cert", "string"},
               {"key", "string"}});
  add("tree", {{"name", "string"},
               {"strategy", "string"},
               {"intensity", "table"},
               {"backoff", "table"},
               {"placement", "placement"},
               {"child", "table list"}});
  add("tree.child", {{"name", "string"},
                     {"type", "string"},
                     {"restart", "string"},
                     {"shutdown", "duration or string"},
                     {"liveness_deadline", "duration"},
                     {"start_timeout", "duration"},
                     {"placement", "placement"},
                     {"process", "string"},
                     {"gpus", "integer"},
                     {"strategy", "string"},
                     {"intensity", "table"},
                     {"backoff", "table"},
                     {"child", "table list"}});
  add("intensity", {{"max_restarts", "integer"}, {"period", "duration"}});
  add("backoff", {{"min", "duration"},
                  {"max", "duration"},
                  {"multiplier", "float"},
                  {"jitter", "float"},
                  {"reset_after", "duration"}});
  add("job",
      {{"model", "string"},       {"layers", "integer list"}, {"data", "string"},
       {"data_scale", "float"},   {"test_fraction", "float"}, {"workers", "integer"},
       {"shards", "integer"},     {"loaders", "integer"},     {"batch", "integer"},
       {"steps", "integer"},      {"seed", "integer"},        {"checkpoint_every", "integer"},
       {"eval_every", "integer"}, {"prefetch", "integer"},    {"optimizer", "string"},
       {"lr", "float"},           {"momentum", "float"},      {"beta1", "float"},
       {"beta2", "float"},        {"epsilon", "float"},       {"weight_decay", "float"},
       {"faults", "string"},      {"worker", "table"},        {"shard", "table"},
       {"loader", "table"},       {"trainer", "table"}});
  add("job.<role>", {{"strategy", "string"},
                     {"intensity", "table"},
                     {"backoff", "table"},
                     {"placement", "placement"},
                     {"process", "string"},
                     {"gpus", "integer"}});
  return keys;
}

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

namespace {

using tvalue = toml::value;

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
  const auto& ctx = err.context();
  if (ctx.size() == 1 && ctx.match_element<std::string>(0))
    return ctx.get_as<std::string>(0);
  return describe(err);
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

std::string join(const std::vector<std::string>& xs, const char* sep = ", ") {
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

bool is_loopback(const std::string& host) {
  if (host == "localhost" || host == "::1" || host == "[::1]")
    return true;
  // 127.0.0.0/8 in dotted-quad form.
  if (host.rfind("127.", 0) != 0)
    return false;
  int parts = 0;
  size_t i = 0;
  while (i <= host.size()) {
    size_t j = host.find('.', i);
    if (j == std::string::npos)
      j = host.size();
    auto part = host.substr(i, j - i);
    if (part.empty() || part.size() > 3 ||
        part.find_first_not_of("0123456789") != std::string::npos || std::stoi(part) > 255)
      return false;
    ++parts;
    i = j + 1;
  }
  return parts == 4;
}

/// The address a host string binds, for duplicate checks.
std::string normal_host(std::string host) {
  std::transform(host.begin(), host.end(), host.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (host == "localhost")
    return "127.0.0.1";
  if (host == "[::1]")
    return "::1";
  return host;
}

std::string replace_all(std::string s, const std::string& what, const std::string& with) {
  for (size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + with.size()))
    s.replace(i, what.size(), with);
  return s;
}

/// Names of an enum's values in declaration order (via its to_string).
template <class E, size_t N>
std::vector<std::string> names_of(const E (&values)[N]) {
  std::vector<std::string> out;
  for (auto v : values)
    out.push_back(to_string(v));
  return out;
}

constexpr restart_strategy all_strategies[] = {
    restart_strategy::one_for_one, restart_strategy::one_for_all, restart_strategy::rest_for_one,
    restart_strategy::simple_one_for_one};
constexpr restart_type all_restart_types[] = {restart_type::permanent, restart_type::transient,
                                              restart_type::temporary};
constexpr node_role all_roles[] = {node_role::active, node_role::spare};
constexpr process_mode all_process_modes[] = {process_mode::shared, process_mode::isolated};
constexpr quorum_policy all_quorum_policies[] = {quorum_policy::none, quorum_policy::majority};

const char* const role_names[] = {"shard", "loader", "worker", "trainer"};

class parser;

/// Reads one TOML table: checks its keys against the catalogue and converts
/// values, recording the first problem in the parser.
class table_reader {
public:
  table_reader(parser& p, const tvalue& v, std::string display, const std::string& section);

  int line() const { return line_; }
  const std::string& display() const { return display_; }

  /// Names the table in messages about missing keys, e.g. "[[node]] 'n2'".
  void name_it(const std::string& name) { label_ = display_ + " '" + name + "'"; }

  const tvalue* find(const std::string& key) const {
    if (table_ == nullptr)
      return nullptr;
    auto i = table_->find(key);
    return i == table_->end() ? nullptr : &i->second;
  }

  bool has(const std::string& key) const { return find(key) != nullptr; }

  /// The line of `key`'s value, or of the table if it is not set.
  int line_of(const std::string& key) const {
    auto* v = find(key);
    return v != nullptr ? ::understudy::line_of(*v) : line_;
  }

  /// Keys set in this table, in file order.
  std::vector<std::pair<std::string, int>> keys_in_order() const;

  std::optional<std::string> str(const std::string& key, bool required = false,
                                 bool allow_empty = false);
  std::optional<int64_t> integer(const std::string& key, int64_t lo, int64_t hi,
                                 bool required = false);
  std::optional<double> real(const std::string& key);
  std::optional<bool> boolean(const std::string& key);
  std::optional<caf::timespan> duration(const std::string& key, bool positive);
  std::optional<std::vector<int64_t>> int_list(const std::string& key, int64_t lo, int64_t hi,
                                               bool required = false);
  const tvalue* sub_table(const std::string& key);
  const toml::array* table_list(const std::string& key);

  template <class E, size_t N>
  std::optional<E> enumerated(const std::string& key, const E (&values)[N]) {
    auto s = str(key);
    if (!s)
      return std::nullopt;
    for (auto v : values)
      if (to_string(v) == *s)
        return v;
    bad_name(key, *s, names_of(values));
    return std::nullopt;
  }

  void bad_name(const std::string& key, const std::string& value,
                const std::vector<std::string>& allowed);

  void wrong_type(const std::string& key, const tvalue& v, const std::string& expected);

private:
  parser* p_;
  const toml::table* table_ = nullptr;
  std::string display_;
  /// display_, with the entry's name once known.
  std::string label_;
  int line_;
};

class parser {
public:
  parser(std::string origin, const node_config_options& options)
      : origin_(std::move(origin)), options_(options), keys_(node_config_keys()) {
    cfg_.origin = origin_;
  }

  caf::expected<node_config> run(std::string_view text);

  bool failed() const { return static_cast<bool>(err_); }

  void fail(config_errc code, int line, const std::string& problem) {
    if (!err_)
      err_ = make_error(code, origin_ + ":" + std::to_string(line) + ": " + problem);
  }

  void note(int line, const std::string& text) {
    cfg_.notes.push_back(origin_ + (line > 0 ? ":" + std::to_string(line) : std::string{}) + ": " +
                         text);
  }

  std::vector<std::string> keys_of(const std::string& section) const {
    std::vector<std::string> out;
    for (const auto& k : keys_)
      if (k.section == section)
        out.push_back(k.name);
    return out;
  }

private:
  void parse_cluster(const tvalue& root);
  void parse_nodes(const tvalue& root);
  void check_nodes();
  void parse_security(table_reader& cluster);
  void parse_metrics(table_reader& cluster);
  void parse_failure_detection(table_reader& cluster);
  restart_intensity parse_intensity(table_reader& r, restart_intensity def);
  backoff_policy parse_backoff(table_reader& r);
  placement_spec parse_placement(table_reader& r, const std::string& what, placement_policy def);
  tree_child parse_child(const tvalue& v, const std::string& parent_path, bool root,
                         std::set<std::string>& sibling_names);
  void parse_job(const tvalue& v);
  void parse_role(table_reader& job, const std::string& role, job_role_spec& out);
  void check_job_values(table_reader& r);
  void resolve_placements();
  void resolve_child(tree_child& c, const std::string& parent_node, size_t spread_index);
  void place(placement_spec& p, const std::string& parent_node, size_t instances,
             size_t spread_base, const std::string& what, int line);

  std::string origin_;
  const node_config_options& options_;
  std::vector<config_key> keys_;
  node_config cfg_;
  caf::error err_;
  std::map<std::string, size_t> used_gpus_;
  std::map<std::string, int> node_cert_line_;
  std::map<std::string, int> buddy_line_;
  std::map<std::string, std::pair<std::string, std::string>> node_tls_override_;
  std::map<std::string, uint16_t> explicit_metrics_port_;
  /// Whether [cluster.metrics] is present, and its line.
  bool metrics_section_ = false;
  int metrics_line_ = 0;
  size_t job_children_ = 0;
};

// -- table_reader --------------------------------------------------------------------

table_reader::table_reader(parser& p, const tvalue& v, std::string display,
                           const std::string& section)
    : p_(&p), display_(std::move(display)), label_(display_), line_(::understudy::line_of(v)) {
  if (!v.is_table()) {
    p.fail(config_errc::wrong_type, line_, display_ + " must be a table, not " + type_name(v));
    return;
  }
  table_ = &v.as_table();
  auto known = p.keys_of(section);
  for (const auto& [key, line] : keys_in_order()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
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
    out.emplace_back(key, ::understudy::line_of(value));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second < b.second : a.first < b.first;
  });
  return out;
}

void table_reader::wrong_type(const std::string& key, const tvalue& v,
                              const std::string& expected) {
  p_->fail(config_errc::wrong_type, ::understudy::line_of(v),
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
      p_->fail(config_errc::wrong_type, ::understudy::line_of(x),
               "'" + key + "' in " + display_ + " must list integers, not " + type_name(x));
      return std::nullopt;
    }
    auto i = x.as_integer();
    if (i < lo || i > hi) {
      p_->fail(config_errc::invalid_value, ::understudy::line_of(x),
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

// -- parser --------------------------------------------------------------------------

/// The message of a syntax error from toml11, on one line.
std::string syntax_message(const std::string& what) {
  std::istringstream in{what};
  std::string first, line, hint;
  std::getline(in, first);
  while (std::getline(in, line)) {
    auto mark = line.find("^--- ");
    if (mark == std::string::npos)
      mark = line.find("~~~ ");
    if (mark != std::string::npos) {
      auto text = line.substr(line.find(' ', mark) + 1);
      if (!text.empty() && text != "here")
        hint = text;
    }
  }
  for (const char* prefix : {"[error] "})
    if (first.rfind(prefix, 0) == 0)
      first = first.substr(std::string{prefix}.size());
  if (first.rfind("toml::", 0) == 0) {
    auto colon = first.find(": ");
    if (colon != std::string::npos)
      first = first.substr(colon + 2);
  }
  while (!first.empty() && (first.back() == '.' || first.back() == ' '))
    first.pop_back();
  return hint.empty() ? first : first + " (" + hint + ")";
}

caf::expected<node_config> parser::run(std::string_view text) {
  tvalue root;
  try {
    std::istringstream in{std::string{text}};
    root = toml::parse(in, origin_);
  } catch (const toml::exception& e) {
    return make_error(config_errc::syntax, origin_ + ":" + std::to_string(e.location().line()) +
                                               ": invalid TOML: " + syntax_message(e.what()));
  } catch (const std::exception& e) {
    return make_error(config_errc::syntax, origin_ + ":1: invalid TOML: " + e.what());
  }
  table_reader top{*this, root, "the file", ""};
  if (failed())
    return err_;
  if (!top.has("cluster"))
    fail(config_errc::missing_key, 1, "missing [cluster] table");
  else
    parse_cluster(root);
  if (!failed())
    parse_nodes(root);
  if (!failed())
    check_nodes();
  const tvalue* job = top.sub_table("job");
  if (!failed() && job != nullptr)
    parse_job(*job);
  if (!failed()) {
    if (auto* tree = top.sub_table("tree")) {
      std::set<std::string> names;
      cfg_.tree = parse_child(*tree, "", true, names);
      if (!failed() && cfg_.job && job_children_ == 0)
        fail(config_errc::missing_key, cfg_.job->line_of(""),
             "[job] is not started by the tree: add a [[tree.child]] with type = "
             "\"training_job\"");
    } else {
      cfg_.tree.name = "root";
      cfg_.tree.path = "/root";
      cfg_.tree.line = 1;
      if (cfg_.job) {
        tree_child c;
        c.name = "job";
        c.type = "training_job";
        c.path = "/root/job";
        c.restart = restart_type::transient;
        c.line = cfg_.job->line_of("");
        cfg_.tree.children.push_back(std::move(c));
      }
    }
  }
  if (!failed() && !cfg_.job && cfg_.tree.children.empty())
    note(0, "nothing to run: no [job] and no children in [tree]");
  if (!failed())
    resolve_placements();
  if (!failed() && cfg_.job && options_.check_job) {
    if (auto problem = options_.check_job(*cfg_.job))
      fail(config_errc::invalid_job, cfg_.job->line_of(problem->key), problem->problem);
  }
  if (failed())
    return err_;
  return std::move(cfg_);
}

void parser::parse_cluster(const tvalue& root) {
  table_reader r{*this, root.as_table().at("cluster"), "[cluster]", "cluster"};
  if (failed())
    return;
  if (auto name = r.str("name", true)) {
    if (!valid_name(*name, true))
      fail(config_errc::invalid_value, r.line_of("name"),
           "cluster name '" + *name + "' may hold only letters, digits, '_', '-' and '.'");
    cfg_.cluster.name = *name;
  }
  if (auto s = r.str("state_root"))
    cfg_.cluster.state_root = *s;
  parse_security(r);
  parse_metrics(r);
  parse_failure_detection(r);
}

void parser::parse_security(table_reader& cluster) {
  auto* v = cluster.sub_table("security");
  if (failed() || v == nullptr)
    return;
  table_reader r{*this, *v, "[cluster.security]", "cluster.security"};
  security_spec s;
  auto dir = r.str("dir");
  auto in_dir = [&](const char* file) { return dir ? (*dir + "/" + file) : std::string{}; };
  s.ca = r.str("ca").value_or(in_dir("ca.pem"));
  s.ca_key = r.str("ca_key").value_or(in_dir("ca.key"));
  s.cert = r.str("cert").value_or(in_dir("{node}.pem"));
  s.key = r.str("key").value_or(in_dir("{node}.key"));
  if (failed())
    return;
  if (s.ca.empty())
    fail(config_errc::missing_key, r.line(),
         "[cluster.security] needs 'ca' (the CA certificate) or 'dir'");
  cfg_.cluster.security = std::move(s);
}

void parser::parse_metrics(table_reader& cluster) {
  auto* v = cluster.sub_table("metrics");
  if (failed() || v == nullptr)
    return;
  table_reader r{*this, *v, "[cluster.metrics]", "cluster.metrics"};
  metrics_section_ = true;
  metrics_line_ = r.line();
  cfg_.cluster.metrics.enabled = r.boolean("enabled").value_or(true);
  if (auto base = r.integer("port_base", 1, 65535))
    cfg_.cluster.metrics.port_base = static_cast<uint16_t>(*base);
}

void parser::parse_failure_detection(table_reader& cluster) {
  auto* v = cluster.sub_table("failure_detection");
  if (failed() || v == nullptr)
    return;
  table_reader r{*this, *v, "[cluster.failure_detection]", "cluster.failure_detection"};
  auto& fd = cfg_.cluster.failure_detection;
  if (auto d = r.duration("heartbeat_interval", true))
    fd.heartbeat_interval = *d;
  if (auto x = r.real("phi_threshold")) {
    if (*x <= 0 || *x > 1000)
      fail(config_errc::invalid_value, r.line_of("phi_threshold"),
           "'phi_threshold' in [cluster.failure_detection] must be above 0 and at most 1000");
    fd.phi_threshold = *x;
  }
  if (auto d = r.duration("deadline", true))
    fd.deadline = *d;
  if (auto d = r.duration("connection_timeout", true))
    fd.connection_timeout = *d;
  if (auto q = r.enumerated("quorum", all_quorum_policies))
    fd.quorum = *q;
  if (failed())
    return;
  if (fd.deadline <= fd.heartbeat_interval)
    fail(config_errc::invalid_value, r.line_of("deadline"),
         "'deadline' in [cluster.failure_detection] (" + show(fd.deadline) +
             ") must be longer than heartbeat_interval (" + show(fd.heartbeat_interval) + ")");
  else if (fd.connection_timeout <= fd.heartbeat_interval)
    fail(config_errc::invalid_value, r.line_of("connection_timeout"),
         "'connection_timeout' in [cluster.failure_detection] (" + show(fd.connection_timeout) +
             ") must be longer than heartbeat_interval (" + show(fd.heartbeat_interval) + ")");
}

void parser::parse_nodes(const tvalue& root) {
  const auto& top = root.as_table();
  auto i = top.find("node");
  if (i == top.end()) {
    fail(config_errc::missing_key, 1, "no [[node]] entries: a cluster needs at least one node");
    return;
  }
  if (!i->second.is_array()) {
    fail(config_errc::wrong_type, line_of(i->second),
         "'node' must be a list of tables ([[node]]), not " + type_name(i->second));
    return;
  }
  std::map<std::string, int> names;
  for (const auto& v : i->second.as_array()) {
    if (!v.is_table()) {
      fail(config_errc::wrong_type, line_of(v),
           "'node' must be a list of tables ([[node]]), not " + type_name(v));
      return;
    }
    table_reader r{*this, v, "[[node]]", "node"};
    if (failed())
      return;
    node_spec n;
    n.line = r.line();
    n.name = r.str("name", true).value_or("");
    if (failed())
      return;
    r.name_it(n.name);
    if (!valid_name(n.name, false)) {
      fail(config_errc::invalid_value, r.line_of("name"),
           "node name '" + n.name + "' may hold only letters, digits, '_' and '-'");
      return;
    }
    if (n.name == "any" || n.name == "spread") {
      fail(config_errc::invalid_value, r.line_of("name"),
           "node name '" + n.name + "' is reserved for a placement policy");
      return;
    }
    if (auto [it, fresh] = names.emplace(n.name, r.line_of("name")); !fresh) {
      fail(config_errc::duplicate, r.line_of("name"),
           "duplicate node name '" + n.name + "' (first at line " + std::to_string(it->second) +
               ")");
      return;
    }
    n.host = r.str("host", true).value_or("");
    n.port = static_cast<uint16_t>(r.integer("port", 1, 65535, true).value_or(0));
    if (auto s = r.str("state_dir")) {
      n.state_dir = *s;
    } else if (!failed()) {
      if (cfg_.cluster.state_root.empty())
        fail(config_errc::missing_key, r.line(),
             "[[node]] '" + n.name +
                 "' lacks required key 'state_dir' (or set state_root in "
                 "[cluster])");
      else
        n.state_dir = cfg_.cluster.state_root + "/" + n.name;
    }
    if (auto gpus = r.int_list("gpus", 0, 1023)) {
      std::set<int64_t> seen;
      for (auto g : *gpus) {
        if (!seen.insert(g).second) {
          fail(config_errc::duplicate, r.line_of("gpus"),
               "'gpus' of node '" + n.name + "' lists device " + std::to_string(g) + " twice");
          break;
        }
        n.gpus.push_back(static_cast<int>(g));
      }
    }
    n.role = r.enumerated("role", all_roles).value_or(node_role::active);
    if (auto p = r.integer("metrics_port", 1, 65535))
      explicit_metrics_port_[n.name] = static_cast<uint16_t>(*p);
    n.buddy = r.str("buddy").value_or("");
    buddy_line_[n.name] = r.line_of("buddy");
    auto cert = r.str("cert");
    auto key = r.str("key");
    if ((cert || key) && !cfg_.cluster.security) {
      fail(config_errc::invalid_value, r.line_of(cert ? "cert" : "key"),
           "'" + std::string{cert ? "cert" : "key"} + "' of node '" + n.name +
               "' needs a [cluster.security] section");
    }
    node_tls_override_[n.name] = {cert.value_or(""), key.value_or("")};
    node_cert_line_[n.name] = r.line_of("cert");
    if (failed())
      return;
    cfg_.nodes.push_back(std::move(n));
  }
  if (cfg_.nodes.empty())
    fail(config_errc::missing_key, line_of(i->second), "no [[node]] entries");
}

void parser::check_nodes() {
  auto& nodes = cfg_.nodes;
  if (std::none_of(nodes.begin(), nodes.end(),
                   [](const node_spec& n) { return n.role == node_role::active; })) {
    fail(config_errc::invalid_value, nodes.front().line,
         "every node is a spare: at least one node must have role = \"active\"");
    return;
  }
  // Metrics ports.
  const auto& m = cfg_.cluster.metrics;
  for (size_t i = 0; i < nodes.size(); ++i) {
    auto& n = nodes[i];
    auto e = explicit_metrics_port_.find(n.name);
    if (e != explicit_metrics_port_.end())
      n.metrics_port = e->second;
    else if (m.enabled && m.port_base != 0) {
      if (m.port_base + i > 65535) {
        fail(config_errc::invalid_value, n.line,
             "port_base in [cluster.metrics] leaves node '" + n.name + "' no port below 65536");
        return;
      }
      n.metrics_port = static_cast<uint16_t>(m.port_base + i);
    }
  }
  if (metrics_section_ && m.enabled && m.port_base == 0 && explicit_metrics_port_.empty()) {
    fail(config_errc::missing_key, metrics_line_,
         "[cluster.metrics] needs 'port_base' (or a metrics_port on the nodes)");
    return;
  }
  if (metrics_section_ && !m.enabled)
    for (auto& n : nodes)
      n.metrics_port = 0;
  cfg_.cluster.metrics.enabled =
      std::any_of(nodes.begin(), nodes.end(), [](const node_spec& n) { return n.metrics_port; });
  // Addresses and state directories.
  std::map<std::pair<std::string, uint16_t>, std::string> addresses;
  std::map<std::pair<std::string, std::string>, std::string> dirs;
  for (const auto& n : nodes) {
    auto host = normal_host(n.host);
    for (auto [port, what] : {std::pair<uint16_t, const char*>{n.port, "port"},
                              std::pair<uint16_t, const char*>{n.metrics_port, "metrics port"}}) {
      if (port == 0)
        continue;
      auto [it, fresh] = addresses.emplace(std::make_pair(host, port), n.name);
      if (!fresh) {
        fail(config_errc::duplicate, n.line,
             "node '" + n.name + "': " + what + " " + n.host + ":" + std::to_string(port) +
                 " is already used by node '" + it->second + "'");
        return;
      }
    }
    auto dir = std::filesystem::path{n.state_dir}.lexically_normal().string();
    auto [it, fresh] = dirs.emplace(std::make_pair(host, dir), n.name);
    if (!fresh) {
      fail(config_errc::duplicate, n.line,
           "node '" + n.name + "' has the state_dir of node '" + it->second + "' on host " +
               n.host + " (" + n.state_dir + ")");
      return;
    }
  }
  // Buddies: as given, or the next node in file order.
  for (size_t i = 0; i < nodes.size(); ++i) {
    auto& n = nodes[i];
    if (n.buddy.empty()) {
      if (nodes.size() > 1)
        n.buddy = nodes[(i + 1) % nodes.size()].name;
      continue;
    }
    if (n.buddy == n.name) {
      fail(config_errc::invalid_value, buddy_line_[n.name],
           "node '" + n.name + "' cannot be its own buddy");
      return;
    }
    if (cfg_.find_node(n.buddy) == nullptr) {
      std::vector<std::string> names;
      for (const auto& x : nodes)
        names.push_back(x.name);
      fail(config_errc::unknown_node, buddy_line_[n.name],
           "buddy of node '" + n.name + "' names no node '" + n.buddy + "'" +
               did_you_mean(n.buddy, names));
      return;
    }
  }
  if (nodes.size() == 1)
    note(nodes.front().line, "a cluster of one node: checkpoints are not replicated");
  // Security.
  if (!cfg_.cluster.security) {
    for (const auto& n : nodes) {
      if (!is_loopback(n.host)) {
        fail(config_errc::insecure, n.line,
             "node '" + n.name + "' binds " + n.host +
                 ", which is not loopback: a cluster off loopback needs a [cluster.security] "
                 "section (mutual TLS)");
        return;
      }
    }
    note(0, "no [cluster.security]: nodes talk without TLS, which is allowed on loopback only");
    return;
  }
  const auto& sec = *cfg_.cluster.security;
  std::map<std::string, std::string> certs;
  for (auto& n : nodes) {
    const auto& [cert, key] = node_tls_override_[n.name];
    n.cert = !cert.empty() ? cert : replace_all(sec.cert, "{node}", n.name);
    n.key = !key.empty() ? key : replace_all(sec.key, "{node}", n.name);
    if (n.cert.empty() || n.key.empty()) {
      fail(config_errc::missing_key, n.line,
           "node '" + n.name + "' has no TLS " + (n.cert.empty() ? "certificate" : "key") +
               ": set " + (n.cert.empty() ? "cert" : "key") +
               " (or dir) in [cluster.security], or in its [[node]]");
      return;
    }
    if (auto [it, fresh] = certs.emplace(n.cert, n.name); !fresh) {
      fail(config_errc::duplicate, node_cert_line_[n.name],
           "node '" + n.name + "' uses the certificate of node '" + it->second + "' (" + n.cert +
               "); give each node its own, e.g. cert = \"certs/{node}.pem\"");
      return;
    }
  }
}

restart_intensity parser::parse_intensity(table_reader& owner, restart_intensity def) {
  auto* v = owner.sub_table("intensity");
  if (failed() || v == nullptr)
    return def;
  table_reader r{*this, *v, "intensity of " + owner.display(), "intensity"};
  if (auto x = r.integer("max_restarts", 0, 1000000))
    def.max_restarts = static_cast<int>(*x);
  if (auto d = r.duration("period", true))
    def.period = *d;
  return def;
}

backoff_policy parser::parse_backoff(table_reader& owner) {
  backoff_policy b;
  auto* v = owner.sub_table("backoff");
  if (failed() || v == nullptr)
    return b;
  table_reader r{*this, *v, "backoff of " + owner.display(), "backoff"};
  if (auto d = r.duration("min", false))
    b.min = *d;
  if (auto d = r.duration("max", false))
    b.max = *d;
  if (auto x = r.real("multiplier")) {
    if (*x < 1.0 || *x > 1000.0)
      fail(config_errc::invalid_value, r.line_of("multiplier"),
           "'multiplier' in " + r.display() + " must be from 1 to 1000");
    b.multiplier = *x;
  }
  if (auto x = r.real("jitter")) {
    if (*x < 0.0 || *x > 1.0)
      fail(config_errc::invalid_value, r.line_of("jitter"),
           "'jitter' in " + r.display() + " must be from 0 to 1");
    b.jitter = *x;
  }
  if (auto d = r.duration("reset_after", false))
    b.reset_after = *d;
  if (!failed() && b.max.count() > 0 && b.max < b.min)
    fail(config_errc::invalid_value, r.line_of("max"),
         "'max' in " + r.display() + " (" + show(b.max) + ") is below 'min' (" + show(b.min) + ")");
  return b;
}

placement_spec parser::parse_placement(table_reader& r, const std::string& what,
                                       placement_policy def) {
  placement_spec p;
  p.policy = def;
  p.process = r.enumerated("process", all_process_modes).value_or(process_mode::shared);
  if (auto g = r.integer("gpus", 0, 64))
    p.gpus = static_cast<size_t>(*g);
  auto* v = r.find("placement");
  if (failed() || v == nullptr)
    return p;
  std::vector<std::string> names;
  for (const auto& n : cfg_.nodes)
    names.push_back(n.name);
  int line = line_of(*v);
  auto add_node = [&](const std::string& name) {
    if (cfg_.find_node(name) == nullptr) {
      std::vector<std::string> choices = names;
      choices.push_back("any");
      choices.push_back("spread");
      fail(config_errc::unknown_node, line,
           "placement of " + what + " names no node '" + name + "'" + did_you_mean(name, choices));
      return;
    }
    if (std::find(p.nodes.begin(), p.nodes.end(), name) != p.nodes.end()) {
      fail(config_errc::duplicate, line,
           "placement of " + what + " lists node '" + name + "' twice");
      return;
    }
    p.nodes.push_back(name);
  };
  if (v->is_string()) {
    const auto& s = v->as_string().str;
    if (s == "any") {
      p.policy = placement_policy::any;
    } else if (s == "spread") {
      p.policy = placement_policy::spread;
    } else {
      p.policy = placement_policy::nodes;
      add_node(s);
    }
  } else if (v->is_array()) {
    p.policy = placement_policy::nodes;
    for (const auto& x : v->as_array()) {
      if (!x.is_string()) {
        fail(config_errc::wrong_type, line_of(x),
             "placement of " + what + " must list node names, not " + type_name(x));
        return p;
      }
      add_node(x.as_string().str);
      if (failed())
        return p;
    }
    if (p.nodes.empty())
      fail(config_errc::invalid_value, line,
           "placement of " + what + " is an empty list; name at least one node");
  } else {
    r.wrong_type("placement", *v, "a node name, a list of node names, \"any\" or \"spread\"");
  }
  return p;
}

tree_child parser::parse_child(const tvalue& v, const std::string& parent_path, bool root,
                               std::set<std::string>& sibling_names) {
  tree_child c;
  table_reader r{*this, v, root ? "[tree]" : "[[tree.child]]", root ? "tree" : "tree.child"};
  c.line = r.line();
  if (failed())
    return c;
  if (root) {
    c.name = r.str("name").value_or("root");
  } else {
    c.name = r.str("name", true).value_or("");
  }
  if (failed())
    return c;
  if (!valid_name(c.name, true)) {
    fail(config_errc::invalid_value, r.line_of("name"),
         "child name '" + c.name + "' may hold only letters, digits, '_', '-' and '.'");
    return c;
  }
  if (!sibling_names.insert(c.name).second) {
    fail(
        config_errc::duplicate, r.line_of("name"),
        "duplicate child name '" + c.name + "' under " + (parent_path.empty() ? "/" : parent_path));
    return c;
  }
  c.path = parent_path + "/" + c.name;
  if (!root)
    r.name_it(c.name);
  const std::string what = "'" + c.path + "'";
  if (!root) {
    auto type = r.str("type", true);
    if (!type)
      return c;
    std::vector<std::string> known{"supervisor", "training_job"};
    known.insert(known.end(), options_.child_types.begin(), options_.child_types.end());
    if (std::find(known.begin(), known.end(), *type) == known.end()) {
      r.bad_name("type", *type, known);
      return c;
    }
    c.type = *type;
    if (!c.is_supervisor())
      for (const char* key : {"strategy", "intensity", "backoff", "child"})
        if (r.has(key)) {
          fail(config_errc::invalid_value, r.line_of(key),
               "'" + std::string{key} + "' applies to supervisors only, and " + what +
                   " has type = \"" + c.type + "\"");
          return c;
        }
    bool is_sup = c.is_supervisor() || c.type == "training_job";
    c.restart =
        r.enumerated("restart", all_restart_types)
            .value_or(c.type == "training_job" ? restart_type::transient : restart_type::permanent);
    c.shutdown = is_sup ? shutdown_spec::infinite() : shutdown_spec::after(std::chrono::seconds(5));
    if (auto* s = r.find("shutdown")) {
      if (s->is_string() && s->as_string().str == "brutal_kill")
        c.shutdown = shutdown_spec::brutal();
      else if (s->is_string() && s->as_string().str == "infinity")
        c.shutdown = shutdown_spec::infinite();
      else if (s->is_string()) {
        auto d = parse_duration(s->as_string().str);
        if (!d || d->count() <= 0) {
          fail(config_errc::invalid_value, line_of(*s),
               "'shutdown' of " + what +
                   " must be a positive duration, \"brutal_kill\" or "
                   "\"infinity\", not '" +
                   s->as_string().str + "'");
          return c;
        }
        c.shutdown = shutdown_spec::after(*d);
      } else {
        r.wrong_type("shutdown", *s, "a duration, \"brutal_kill\" or \"infinity\"");
      }
    }
    c.liveness_deadline = r.duration("liveness_deadline", false).value_or(caf::timespan{0});
    c.start_timeout = r.duration("start_timeout", false).value_or(caf::timespan{0});
    if (c.type == "training_job") {
      ++job_children_;
      if (job_children_ > 1) {
        fail(config_errc::duplicate, c.line,
             "a second child of type training_job (" + what + "); the file has one [job]");
        return c;
      }
      if (!cfg_.job) {
        fail(config_errc::missing_key, r.line_of("type"),
             what + " has type = \"training_job\" but the file has no [job]");
        return c;
      }
    }
  }
  c.placement = parse_placement(r, what, placement_policy::inherit);
  if (failed() || !c.is_supervisor())
    return c;
  c.strategy = r.enumerated("strategy", all_strategies).value_or(restart_strategy::one_for_one);
  c.intensity = parse_intensity(r, restart_intensity{});
  c.backoff = parse_backoff(r);
  if (failed())
    return c;
  std::set<std::string> names;
  if (auto* kids = r.table_list("child")) {
    for (const auto& k : *kids) {
      c.children.push_back(parse_child(k, c.path, false, names));
      if (failed())
        return c;
    }
  } else if (failed()) {
    return c;
  }
  if (c.strategy == restart_strategy::simple_one_for_one && c.children.size() != 1)
    fail(config_errc::invalid_value, r.line_of("strategy"),
         "supervisor " + what +
             " uses simple_one_for_one and needs exactly one child (the "
             "template), not " +
             std::to_string(c.children.size()));
  return c;
}

void parser::parse_role(table_reader& job, const std::string& role, job_role_spec& out) {
  out.placement.policy = role == "trainer" ? placement_policy::inherit : placement_policy::spread;
  auto* v = job.sub_table(role);
  if (failed() || v == nullptr)
    return;
  table_reader r{*this, *v, "[job." + role + "]", "job.<role>"};
  if (failed())
    return;
  auto& lines = cfg_.job->lines;
  lines[role] = r.line();
  for (const auto& [key, line] : r.keys_in_order())
    lines[role + "." + key] = line;
  out.strategy = r.enumerated("strategy", all_strategies).value_or(out.strategy);
  if (out.strategy == restart_strategy::simple_one_for_one) {
    fail(config_errc::invalid_value, r.line_of("strategy"),
         "'strategy' in [job." + role +
             "] cannot be simple_one_for_one: a job role has static children");
    return;
  }
  out.intensity = parse_intensity(r, out.intensity);
  out.backoff = parse_backoff(r);
  out.placement = parse_placement(r, "[job." + role + "]", out.placement.policy);
}

void parser::parse_job(const tvalue& v) {
  cfg_.job.emplace();
  table_reader r{*this, v, "[job]", "job"};
  if (failed())
    return;
  auto& j = *cfg_.job;
  j.lines[""] = r.line();
  for (const auto& [key, line] : r.keys_in_order())
    j.lines[key] = line;
  constexpr int64_t max_i64 = std::numeric_limits<int64_t>::max();
  for (const char* key : {"workers", "shards", "loaders"}) {
    if (auto* x = r.find(key); x != nullptr && x->is_table()) {
      std::string role{key, std::strlen(key) - 1};
      fail(config_errc::wrong_type, line_of(*x),
           "'" + std::string{key} + "' in [job] is the number of " + key +
               "; the role's own table is [job." + role + "]");
      return;
    }
  }
  if (auto m = r.str("model")) {
    if (*m != "mlp")
      r.bad_name("model", *m, {"mlp"});
    j.model = *m;
  }
  if (auto layers = r.int_list("layers", 1, 65536, true)) {
    if (layers->size() < 2)
      fail(config_errc::invalid_job, r.line_of("layers"),
           "'layers' in [job] needs at least two sizes: inputs and classes");
    for (auto x : *layers)
      j.layers.push_back(static_cast<size_t>(x));
  }
  j.data = r.str("data", true).value_or("");
  if (auto x = r.real("data_scale")) {
    if (*x <= 0)
      fail(config_errc::invalid_job, r.line_of("data_scale"),
           "'data_scale' in [job] must be above 0");
    j.data_scale = *x;
  }
  if (auto x = r.real("test_fraction")) {
    if (*x <= 0 || *x >= 1)
      fail(config_errc::invalid_job, r.line_of("test_fraction"),
           "'test_fraction' in [job] must be above 0 and below 1 (the job evaluates on "
           "held-out data)");
    j.test_fraction = *x;
  }
  auto count = [&](const char* key, size_t& out, int64_t lo, int64_t hi) {
    if (auto x = r.integer(key, lo, hi))
      out = static_cast<size_t>(*x);
  };
  auto count64 = [&](const char* key, uint64_t& out, int64_t lo) {
    if (auto x = r.integer(key, lo, max_i64))
      out = static_cast<uint64_t>(*x);
  };
  count("workers", j.workers, 1, 1024);
  count("shards", j.shards, 1, 1024);
  count("loaders", j.loaders, 1, 1024);
  count("batch", j.batch, 1, 1 << 20);
  count64("steps", j.steps, 1);
  count64("seed", j.seed, 0);
  count64("checkpoint_every", j.checkpoint_every, 1);
  count64("eval_every", j.eval_every, 0);
  count("prefetch", j.prefetch, 0, 64);
  if (auto o = r.str("optimizer")) {
    std::vector<std::string> kinds{"sgd", "momentum", "adam"};
    if (std::find(kinds.begin(), kinds.end(), *o) == kinds.end())
      r.bad_name("optimizer", *o, kinds);
    j.optimizer = *o;
  }
  auto hyper = [&](const char* key, double& out, double lo, bool lo_open, double hi, bool hi_open,
                   const char* range) {
    auto x = r.real(key);
    if (!x)
      return;
    bool ok = (lo_open ? *x > lo : *x >= lo) && (hi_open ? *x < hi : *x <= hi);
    if (!ok)
      fail(config_errc::invalid_job, r.line_of(key),
           "'" + std::string{key} + "' in [job] must be " + range);
    out = *x;
  };
  const double inf = std::numeric_limits<double>::infinity();
  hyper("lr", j.lr, 0, true, inf, false, "above 0");
  hyper("momentum", j.momentum, 0, false, 1, true, "at least 0 and below 1");
  hyper("beta1", j.beta1, 0, false, 1, true, "at least 0 and below 1");
  hyper("beta2", j.beta2, 0, false, 1, true, "at least 0 and below 1");
  hyper("epsilon", j.epsilon, 0, true, inf, false, "above 0");
  hyper("weight_decay", j.weight_decay, 0, false, inf, false, "at least 0");
  j.faults = r.str("faults", false, true).value_or("");
  if (failed())
    return;
  check_job_values(r);
  parse_role(r, "shard", j.shard);
  parse_role(r, "loader", j.loader);
  parse_role(r, "worker", j.worker);
  parse_role(r, "trainer", j.trainer);
}

void parser::check_job_values(table_reader& r) {
  const auto& j = *cfg_.job;
  size_t params = 0;
  for (size_t l = 0; l + 1 < j.layers.size(); ++l)
    params += j.layers[l] * j.layers[l + 1] + j.layers[l + 1];
  if (j.shards > params)
    fail(config_errc::invalid_job, r.line_of("shards"),
         "'shards' in [job] is " + std::to_string(j.shards) + ", but the model has only " +
             std::to_string(params) + " parameters (at least one per shard)");
  else if (j.loaders > j.workers)
    fail(config_errc::invalid_job, r.line_of("loaders"),
         "'loaders' in [job] is " + std::to_string(j.loaders) + ", more than the " +
             std::to_string(j.workers) + " workers (each loader serves at least one worker)");
}

// -- placement -----------------------------------------------------------------------

void parser::resolve_placements() {
  // The root runs where it is placed, or on the first active node.
  std::string first_active;
  for (const auto& n : cfg_.nodes)
    if (n.role == node_role::active) {
      first_active = n.name;
      break;
    }
  resolve_child(cfg_.tree, first_active, 0);
}

void parser::resolve_child(tree_child& c, const std::string& parent_node, size_t spread_index) {
  place(c.placement, parent_node, 1, spread_index, "'" + c.path + "'", c.line);
  if (failed())
    return;
  const auto& here = c.placement.start.front();
  if (c.type == "training_job" && cfg_.job) {
    auto& j = *cfg_.job;
    std::pair<job_role_spec*, size_t> roles[] = {
        {&j.shard, j.shards}, {&j.loader, j.loaders}, {&j.worker, j.workers}, {&j.trainer, 1}};
    for (size_t i = 0; i < 4; ++i) {
      std::string role = role_names[i];
      int line = j.line_of(role);
      for (const char* key : {".gpus", ".placement"})
        if (auto it = j.lines.find(role + key); it != j.lines.end())
          line = it->second;
      place(roles[i].first->placement, here, roles[i].second, 0, "[job." + role + "]", line);
      if (failed())
        return;
    }
    return;
  }
  size_t spread = 0;
  for (auto& k : c.children) {
    resolve_child(k, here, k.placement.policy == placement_policy::spread ? spread++ : 0);
    if (failed())
      return;
  }
}

void parser::place(placement_spec& p, const std::string& parent_node, size_t instances,
                   size_t spread_base, const std::string& what, int line) {
  std::vector<std::string> candidates;
  std::vector<std::string> actives, spares;
  for (const auto& n : cfg_.nodes)
    (n.role == node_role::active ? actives : spares).push_back(n.name);
  switch (p.policy) {
    case placement_policy::inherit:
      candidates = {parent_node};
      break;
    case placement_policy::any:
      candidates = {parent_node};
      for (const auto& a : actives)
        if (a != parent_node)
          candidates.push_back(a);
      break;
    case placement_policy::spread:
      candidates = actives;
      break;
    case placement_policy::nodes: {
      for (const auto& name : p.nodes)
        if (cfg_.find_node(name)->role == node_role::active)
          candidates.push_back(name);
      if (candidates.empty()) {
        fail(config_errc::unsatisfiable_placement, line,
             "placement of " + what + " names only spare nodes (" + join(p.nodes) +
                 "): a spare starts nothing until a node fails; name an active node too");
        return;
      }
      break;
    }
  }
  auto free_gpus = [this](const std::string& name) {
    return cfg_.find_node(name)->gpus.size() - used_gpus_[name];
  };
  p.start.clear();
  for (size_t i = 0; i < instances; ++i) {
    // Round-robin for spread and node lists; the first that fits otherwise.
    size_t first = (p.policy == placement_policy::spread || p.policy == placement_policy::nodes)
                       ? (spread_base + i) % candidates.size()
                       : 0;
    std::string chosen;
    for (size_t k = 0; k < candidates.size(); ++k) {
      const auto& name = candidates[(first + k) % candidates.size()];
      if (free_gpus(name) >= p.gpus) {
        chosen = name;
        break;
      }
    }
    if (chosen.empty()) {
      std::vector<std::string> have;
      for (const auto& name : candidates)
        have.push_back(name + " has " + std::to_string(free_gpus(name)) + " of " +
                       std::to_string(cfg_.find_node(name)->gpus.size()));
      fail(config_errc::unsatisfiable_placement, line,
           "placement of " + what + " cannot be satisfied: " +
               (instances > 1 ? "instance " + std::to_string(i) + " needs " : "it needs ") +
               std::to_string(p.gpus) + " GPU" + (p.gpus == 1 ? "" : "s") +
               " and no candidate node has them free (" + join(have) + ")");
      return;
    }
    used_gpus_[chosen] += p.gpus;
    p.start.push_back(chosen);
  }
  // Where an instance may go when its node is lost.
  auto fits = [&](const std::string& name) { return cfg_.find_node(name)->gpus.size() >= p.gpus; };
  p.failover.clear();
  switch (p.policy) {
    case placement_policy::inherit:
      break;
    case placement_policy::nodes:
      for (const auto& name : p.nodes)
        if (fits(name))
          p.failover.push_back(name);
      if (p.failover.size() <= 1) {
        p.failover.clear();
        note(line, what + " is pinned to node '" + p.nodes.front() +
                       "': it cannot restart elsewhere if that node is lost");
      }
      break;
    case placement_policy::any:
    case placement_policy::spread:
      // Spares first, so that survivors keep their load.
      for (const auto* group : {&spares, &actives})
        for (const auto& name : *group)
          if (fits(name))
            p.failover.push_back(name);
      break;
  }
}

} // namespace

caf::expected<node_config> parse_node_config(std::string_view text, std::string origin,
                                             const node_config_options& options) {
  parser p{std::move(origin), options};
  return p.run(text);
}

caf::expected<node_config> load_node_config(const std::string& path,
                                            const node_config_options& options) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    return make_error(config_errc::cannot_read,
                      path + ": cannot open: " + std::generic_category().message(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    return make_error(config_errc::cannot_read, path + ": read failed");
  return parse_node_config(text.str(), path, options);
}

} // namespace understudy
