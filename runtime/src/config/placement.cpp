#include "config_parser.hpp"

namespace understudy::config_detail {

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
  if (const auto* sec = section_of(c.type)) {
    if (auto it = cfg_.sections.find(sec->name); it != cfg_.sections.end() && sec->place)
      sec->place(it->second, *this, here);
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

} // namespace understudy::config_detail
