#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "config_parser.hpp"

namespace understudy::config_detail {

namespace {

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

} // namespace

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
  parse_coordination(*this, r, cfg_.cluster.coordination);
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
  if (auto m = r.integer("monitors", 1, 64))
    fd.monitors = static_cast<size_t>(*m);
  if (failed())
    return;
  // Heartbeats faster than 1 ms flood every peer; a deadline shorter than
  // two intervals declares a peer dead for one late heartbeat.
  if (fd.heartbeat_interval < std::chrono::milliseconds(1))
    fail(config_errc::invalid_value, r.line_of("heartbeat_interval"),
         "'heartbeat_interval' in [cluster.failure_detection] (" + show(fd.heartbeat_interval) +
             ") must be at least 1ms");
  else if (fd.deadline <= fd.heartbeat_interval)
    fail(config_errc::invalid_value, r.line_of("deadline"),
         "'deadline' in [cluster.failure_detection] (" + show(fd.deadline) +
             ") must be longer than heartbeat_interval (" + show(fd.heartbeat_interval) + ")");
  else if (fd.heartbeat_interval > fd.deadline / 2)
    fail(config_errc::invalid_value, r.line_of("heartbeat_interval"),
         "'heartbeat_interval' in [cluster.failure_detection] (" + show(fd.heartbeat_interval) +
             ") must be at most half the deadline (" + show(fd.deadline) + ")");
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
    // (`understudy launch` makes certificates for a file without the section,
    // and drops this note.)
    if (nodes.size() > 1)
      note(0,
           "no [cluster.security]: without TLS a cluster of several nodes does not start; "
           "`understudy launch` makes certificates for it, or add the section and run "
           "`understudy certs`");
    else
      note(0,
           "no [cluster.security]: the node talks without TLS, which is allowed on "
           "loopback only");
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

} // namespace understudy::config_detail
