#pragma once

// Private to the config parser: the parser's state, the table reader and the
// helpers its parts share (node_config.cpp: the run and registered sections;
// config_reading.cpp: durations, the table reader and config_table;
// cluster_sections.cpp: [cluster] and [[node]]; tree_section.cpp: [tree];
// placement.cpp; config_keys.cpp: the key list).

#include <cstddef>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <toml.hpp>

#include "understudy/config/node_config.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::config_detail {

using tvalue = toml::value;

/// Renders a duration for messages: "250ms", "1.5s".
std::string show(caf::timespan d);

/// The context text of one of our errors.
std::string context_of(const caf::error& err);

/// The deepest nesting of arrays and inline tables that a file may have:
/// toml11 parses them recursively, so a deeper file would overflow the stack.
constexpr size_t max_toml_nesting = 128;

/// The 1-based line where the TOML `text` first nests arrays and inline
/// tables deeper than `max_toml_nesting`, or 0 if it never does. Brackets in
/// strings and comments do not count; table headers count as one or two.
int line_too_deep(std::string_view text);

/// The line of `v` in its file.
int line_of(const tvalue& v);

/// What `v` is, for messages: "a string", "an integer", ...
std::string type_name(const tvalue& v);

/// " (did you mean 'x'?)" for the closest of `candidates`, or "".
std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates);

std::string join(const std::vector<std::string>& xs, const char* sep = ", ");

/// Whether `s` is a name of letters, digits, '_', '-' (and '.' if `allow_dot`).
bool valid_name(const std::string& s, bool allow_dot);

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

class parser;
class table_reader;

/// Parses `[cluster.coordination]` of `cluster` (coordination_section.cpp) into
/// `out`, recording the first problem in `p`.
void parse_coordination(parser& p, table_reader& cluster, coordination_spec& out);

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
    return v != nullptr ? config_detail::line_of(*v) : line_;
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

/// Parses one file; the sections see it as their config_context.
class parser final : public config_context {
public:
  parser(std::string origin, const node_config_options& options)
      : origin_(std::move(origin)), options_(options), keys_(node_config_keys(options)) {
    cfg_.origin = origin_;
  }

  caf::expected<node_config> run(std::string_view text);

  const std::string& origin() const override { return origin_; }

  const std::vector<node_spec>& nodes() const override { return cfg_.nodes; }

  bool failed() const override { return static_cast<bool>(err_); }

  void fail(config_errc code, int line, const std::string& problem) override {
    if (!err_)
      err_ = make_error(code, origin_ + ":" + std::to_string(line) + ": " + problem);
  }

  void note(int line, const std::string& text) override {
    cfg_.notes.push_back(origin_ + (line > 0 ? ":" + std::to_string(line) : std::string{}) + ": " +
                         text);
  }

  void place(placement_spec& p, const std::string& parent_node, size_t instances,
             size_t spread_base, const std::string& what, int line) override;

  std::vector<std::string> keys_of(const std::string& section) const {
    std::vector<std::string> out;
    for (const auto& k : keys_)
      if (k.section == section)
        out.push_back(k.name);
    return out;
  }

  restart_intensity parse_intensity(table_reader& r, restart_intensity def);
  backoff_policy parse_backoff(table_reader& r);
  placement_spec parse_placement(table_reader& r, const std::string& what, placement_policy def);

private:
  void parse_cluster(const tvalue& root);
  void parse_nodes(const tvalue& root);
  void check_nodes();
  void parse_security(table_reader& cluster);
  void parse_metrics(table_reader& cluster);
  void parse_failure_detection(table_reader& cluster);
  void parse_sections(table_reader& top);
  tree_child parse_child(const tvalue& v, const std::string& parent_path, bool root,
                         std::set<std::string>& sibling_names);
  /// The registered section whose child type is `type`, or null.
  const config_section* section_of(const std::string& type) const;
  void resolve_placements();
  void resolve_child(tree_child& c, const std::string& parent_node, size_t spread_index);

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
  /// Line of each present section's header, by name.
  std::map<std::string, int> section_lines_;
  /// How many tree children each section's child type has, by section name.
  std::map<std::string, size_t> section_children_;
};

} // namespace understudy::config_detail

namespace understudy {

/// What a config_table wraps: a table_reader of the parser.
struct config_table::impl {
  config_detail::parser& p;
  config_detail::table_reader reader;
};

} // namespace understudy
