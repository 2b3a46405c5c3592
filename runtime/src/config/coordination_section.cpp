#include <curl/curl.h>

#include <memory>

#include "config_parser.hpp"

namespace understudy::config_detail {

namespace {

struct url_deleter {
  void operator()(CURLU* u) const { curl_url_cleanup(u); }
};

/// Why `url` is no etcd client URL ("" if it is one); libcurl's URL parser reads it.
std::string url_problem(const std::string& url) {
  std::unique_ptr<CURLU, url_deleter> u{curl_url()};
  if (!u)
    return "cannot be checked (out of memory)";
  if (curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK)
    return "is not a URL (expected e.g. http://10.0.0.1:2379)";
  char* scheme = nullptr;
  std::string problem;
  if (curl_url_get(u.get(), CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      (std::string{scheme} != "http" && std::string{scheme} != "https"))
    problem = "is neither http:// nor https://";
  curl_free(scheme);
  char* path = nullptr;
  if (problem.empty() && curl_url_get(u.get(), CURLUPART_PATH, &path, 0) == CURLUE_OK &&
      std::string{path} != "/" && std::string{path} != "")
    problem = "has a path (give the client URL only, e.g. http://10.0.0.1:2379)";
  curl_free(path);
  return problem;
}

} // namespace

void parse_coordination(parser& p, table_reader& cluster, coordination_spec& out) {
  auto* v = cluster.sub_table("coordination");
  if (p.failed() || v == nullptr)
    return;
  table_reader r{p, *v, "[cluster.coordination]", "cluster.coordination"};
  const std::string where = " in [cluster.coordination]";
  if (auto* e = r.find("endpoints")) {
    if (!e->is_array()) {
      r.wrong_type("endpoints", *e, "a list of URLs");
      return;
    }
    for (const auto& x : e->as_array()) {
      if (!x.is_string()) {
        p.fail(config_errc::wrong_type, line_of(x),
               "'endpoints'" + where + " must list URL strings, not " + type_name(x));
        return;
      }
      const std::string& url = x.as_string().str;
      if (auto problem = url_problem(url); !problem.empty()) {
        p.fail(config_errc::invalid_value, line_of(x),
               "endpoint '" + url + "'" + where + " " + problem);
        return;
      }
      out.endpoints.push_back(url);
    }
    if (out.endpoints.empty()) {
      p.fail(config_errc::invalid_value, r.line_of("endpoints"),
             "'endpoints'" + where +
                 " is empty: list etcd's client URLs, or leave the key out to let "
                 "`understudy launch` start a local etcd");
      return;
    }
  }
  out.ca = r.str("ca").value_or("");
  out.cert = r.str("cert").value_or("");
  out.key = r.str("key").value_or("");
  if (auto d = r.duration("session_ttl", true))
    out.session_ttl = std::chrono::duration_cast<std::chrono::milliseconds>(*d);
  if (auto s = r.str("prefix"))
    out.prefix = *s;
  if (p.failed())
    return;
  if (out.cert.empty() != out.key.empty()) {
    p.fail(config_errc::missing_key, r.line_of(out.cert.empty() ? "key" : "cert"),
           std::string{"'"} + (out.cert.empty() ? "key" : "cert") + "'" + where + " needs '" +
               (out.cert.empty() ? "cert" : "key") + "' too (the client certificate and its key)");
    return;
  }
  if (!out.ca.empty() || !out.cert.empty()) {
    for (const auto& url : out.endpoints)
      if (url.rfind("https://", 0) != 0 && url.rfind("HTTPS://", 0) != 0) {
        p.fail(config_errc::invalid_value, r.line_of("endpoints"),
               "endpoint '" + url + "'" + where +
                   " is not https:// although TLS files (ca, cert, key) are set");
        return;
      }
  }
  if (out.session_ttl < std::chrono::seconds(1)) {
    p.fail(config_errc::invalid_value, r.line_of("session_ttl"),
           "'session_ttl'" + where + " (" + show(out.session_ttl) +
               ") must be at least 1s (etcd's leases count in whole seconds)");
    return;
  }
  if (out.prefix.front() != '/' || out.prefix.back() == '/' ||
      out.prefix.find("//") != std::string::npos) {
    p.fail(config_errc::invalid_value, r.line_of("prefix"),
           "'prefix'" + where + " ('" + out.prefix +
               "') must start with '/' and not end with '/', e.g. \"/understudy\"");
    return;
  }
}

} // namespace understudy::config_detail
