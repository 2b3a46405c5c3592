#pragma once

// Private to runtime/src/cluster: what kind of address a configured host is.

#include <string>

namespace understudy::detail {

/// "[::1]" -> "::1"; anything else as is.
std::string strip_brackets(const std::string& host);

/// Whether `host` is "localhost" or a loopback IPv4 or IPv6 address.
bool is_loopback(const std::string& host);

/// Whether binding `host` would bind every interface.
bool is_wildcard(const std::string& host);

/// Whether `host` is an IP address literal (for subjectAltName IP vs DNS).
bool is_ip_address(const std::string& host);

/// Normalises a textual IP address (e.g. "::1" vs "0:0:0:0:0:0:0:1"); any
/// other host as `strip_brackets` leaves it.
std::string canonical_ip(const std::string& host);

} // namespace understudy::detail
