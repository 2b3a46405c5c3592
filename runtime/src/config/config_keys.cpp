#include "understudy/config/node_config.hpp"

namespace understudy {

// -- the keys --------------------------------------------------------------------------

std::vector<config_key> node_config_keys(const node_config_options& options) {
  std::vector<config_key> keys;
  auto add = [&keys](const char* section,
                     std::initializer_list<std::pair<const char*, const char*>> entries) {
    for (const auto& [name, type] : entries)
      keys.push_back(config_key{section, name, type});
  };
  add("", {{"cluster", "table"}, {"node", "table list"}, {"tree", "table"}});
  for (const auto& sec : options.sections)
    keys.push_back(config_key{"", sec.name, "table"});
  add("cluster", {{"name", "string"},
                  {"state_root", "string"},
                  {"security", "table"},
                  {"metrics", "table"},
                  {"failure_detection", "table"},
                  {"coordination", "table"}});
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
                                    {"monitors", "integer"}});
  add("cluster.coordination", {{"endpoints", "string list"},
                               {"ca", "string"},
                               {"cert", "string"},
                               {"key", "string"},
                               {"session_ttl", "duration"},
                               {"prefix", "string"}});
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
  for (const auto& sec : options.sections)
    keys.insert(keys.end(), sec.keys.begin(), sec.keys.end());
  return keys;
}

} // namespace understudy
