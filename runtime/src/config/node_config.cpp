#include "understudy/config/node_config.hpp"

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <system_error>
#include <utility>

#include "config_parser.hpp"

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

std::string to_string(process_mode x) {
  switch (x) {
    case process_mode::shared:
      return "shared";
    case process_mode::isolated:
      return "isolated";
  }
  return "unknown";
}

const node_spec* node_config::find_node(std::string_view name) const {
  for (const auto& n : nodes)
    if (n.name == name)
      return &n;
  return nullptr;
}

std::vector<std::string> node_config::preferred_nodes(const placement_spec& p) const {
  std::vector<std::string> out;
  auto add = [&](const std::string& n) {
    if (!n.empty() && std::find(out.begin(), out.end(), n) == out.end())
      out.push_back(n);
  };
  for (const auto& n : p.start)
    add(n);
  for (const auto& n : p.failover)
    add(n);
  if (out.empty())
    for (const auto& n : nodes)
      if (n.role == node_role::active) {
        add(n.name);
        break;
      }
  return out;
}

namespace config_detail {

// -- parser --------------------------------------------------------------------------

/// The message of a syntax error from toml11, on one line.
static std::string syntax_message(const std::string& what) {
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
  if (auto line = line_too_deep(text); line != 0)
    return make_error(config_errc::syntax, origin_ + ":" + std::to_string(line) +
                                               ": arrays and inline tables nested more than " +
                                               std::to_string(max_toml_nesting) + " deep");
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
  if (!failed())
    parse_sections(top);
  if (!failed()) {
    if (auto* tree = top.sub_table("tree")) {
      std::set<std::string> names;
      cfg_.tree = parse_child(*tree, "", true, names);
      for (const auto& sec : options_.sections)
        if (!failed() && !sec.child_type.empty() && cfg_.sections.count(sec.name) != 0 &&
            section_children_[sec.name] == 0)
          fail(config_errc::missing_key, section_lines_[sec.name],
               "[" + sec.name +
                   "] is not started by the tree: add a [[tree.child]] with type = \"" +
                   sec.child_type + "\"");
    } else {
      cfg_.tree.name = "root";
      cfg_.tree.path = "/root";
      cfg_.tree.line = 1;
      for (const auto& sec : options_.sections) {
        if (sec.child_type.empty() || cfg_.sections.count(sec.name) == 0)
          continue;
        tree_child c;
        c.name = sec.name;
        c.type = sec.child_type;
        c.path = "/root/" + sec.name;
        c.restart = sec.child_restart;
        c.line = section_lines_[sec.name];
        cfg_.tree.children.push_back(std::move(c));
      }
    }
  }
  // A section without a tree child of its own (e.g. [serve]) runs beside the tree.
  if (!failed() && cfg_.tree.children.empty() && cfg_.sections.empty())
    note(0, "nothing to run: the tree has no children");
  if (!failed())
    resolve_placements();
  for (const auto& sec : options_.sections) {
    if (failed())
      break;
    if (auto it = cfg_.sections.find(sec.name); it != cfg_.sections.end() && sec.check)
      sec.check(it->second, *this);
  }
  if (failed())
    return err_;
  return std::move(cfg_);
}

void parser::parse_sections(table_reader& top) {
  for (const auto& sec : options_.sections) {
    const tvalue* v = top.sub_table(sec.name);
    if (failed())
      return;
    if (v == nullptr)
      continue;
    config_table table{std::make_unique<config_table::impl>(
        config_table::impl{*this, table_reader{*this, *v, "[" + sec.name + "]", sec.name}})};
    if (failed())
      return;
    section_lines_[sec.name] = table.line();
    caf::expected<std::any> value{std::any{}};
    if (sec.parse)
      value = sec.parse(table);
    if (failed())
      return;
    if (!value) {
      err_ = std::move(value.error());
      return;
    }
    cfg_.sections[sec.name] = std::move(*value);
  }
}

const config_section* parser::section_of(const std::string& type) const {
  for (const auto& sec : options_.sections)
    if (!sec.child_type.empty() && sec.child_type == type)
      return &sec;
  return nullptr;
}

} // namespace config_detail

using config_detail::parser;

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
