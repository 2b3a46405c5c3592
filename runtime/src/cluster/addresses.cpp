#include "addresses.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

namespace understudy::detail {

std::string strip_brackets(const std::string& host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    return host.substr(1, host.size() - 2);
  return host;
}

bool is_loopback(const std::string& host) {
  auto h = strip_brackets(host);
  if (h == "localhost")
    return true;
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1)
    return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&v6) != 0;
  return false;
}

bool is_wildcard(const std::string& host) {
  auto h = strip_brackets(host);
  if (h.empty() || h == "*")
    return true;
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1)
    return v4.s_addr == htonl(INADDR_ANY);
  in6_addr v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1)
    return IN6_IS_ADDR_UNSPECIFIED(&v6) != 0;
  return false;
}

bool is_ip_address(const std::string& host) {
  auto h = strip_brackets(host);
  in_addr v4{};
  in6_addr v6{};
  return inet_pton(AF_INET, h.c_str(), &v4) == 1 || inet_pton(AF_INET6, h.c_str(), &v6) == 1;
}

std::string canonical_ip(const std::string& host) {
  auto h = strip_brackets(host);
  unsigned char buf[sizeof(in6_addr)];
  char out[INET6_ADDRSTRLEN];
  if (::inet_pton(AF_INET, h.c_str(), buf) == 1 && ::inet_ntop(AF_INET, buf, out, sizeof out))
    return out;
  if (::inet_pton(AF_INET6, h.c_str(), buf) == 1 && ::inet_ntop(AF_INET6, buf, out, sizeof out))
    return out;
  return h;
}

} // namespace understudy::detail
