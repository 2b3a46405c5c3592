#include <algorithm>
#include <set>

#include "config_parser.hpp"

namespace understudy::config_detail {

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
    std::vector<std::string> known{"supervisor"};
    for (const auto& sec : options_.sections)
      if (!sec.child_type.empty())
        known.push_back(sec.child_type);
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
    const config_section* owner = section_of(c.type);
    bool is_sup = c.is_supervisor() || owner != nullptr;
    c.restart = r.enumerated("restart", all_restart_types)
                    .value_or(owner != nullptr ? owner->child_restart : restart_type::permanent);
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
    if (owner != nullptr) {
      if (++section_children_[owner->name] > 1) {
        fail(config_errc::duplicate, c.line,
             "a second child of type " + c.type + " (" + what + "); the file has one [" +
                 owner->name + "]");
        return c;
      }
      if (cfg_.sections.count(owner->name) == 0) {
        fail(config_errc::missing_key, r.line_of("type"),
             what + " has type = \"" + c.type + "\" but the file has no [" + owner->name + "]");
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

} // namespace understudy::config_detail
