#pragma once

// An HTTP/1.1 server on Boost.Beast and Asio, for the node's metrics endpoint and
// the serving front end.
//
// Promises: a slow or malicious client never stalls others. Every connection is
// served asynchronously on the server's own threads; a request must arrive
// whole (headers and body) within `request_deadline` of its first byte being
// awaited, and its response must be taken within `reply_deadline`, or the
// connection is closed; requests over `max_header_bytes` / `max_body_bytes` are
// answered 431 / 413 and the connection closed; at most `max_connections` are
// open at once (more wait in the listen backlog). Keep-alive is supported, an
// idle keep-alive connection counts against `request_deadline` like a slow one.
//
// Threads: `threads` threads of the server's own run the io context; handlers
// are called on them and must not block (answer later through the responder).
// Errors: start() fails with caf::sec::cannot_open_port naming the address.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <caf/expected.hpp>

namespace understudy::http {

/// A complete request as received.
struct request {
  /// "GET", "POST", ...
  std::string method;
  /// The target without its query, e.g. "/v1/models/digits:predict".
  std::string path;
  /// The query string after '?', without it ("" when none).
  std::string query;
  /// Header fields in arrival order (names as sent).
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  /// The peer's address, e.g. "127.0.0.1:53122".
  std::string peer;

  /// The value of the first header named `name` (case-insensitive), "" if none.
  std::string header(const std::string& name) const;
};

/// A response to send.
struct response {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  /// Extra header fields, e.g. {"Retry-After", "1"}.
  std::vector<std::pair<std::string, std::string>> headers;

  /// A response with `status` and `body` (text/plain).
  static response text(unsigned status, std::string body);
  /// A response with `status` and `body` (application/json).
  static response json(unsigned status, std::string body);
};

/// Answers one request. Call it exactly once, from any thread; calling it after
/// the connection closed (deadline passed, server stopped) does nothing.
using responder = std::function<void(response)>;

/// Handles one request: answers now or later through `reply`. Called on a server
/// thread; must not block. An exception escaping it is answered 500.
using handler = std::function<void(request req, responder reply)>;

struct server_config {
  /// What errors call the server, e.g. "metrics endpoint cannot bind ...".
  std::string name = "http server";
  /// The address to bind; IPv6 without brackets.
  std::string host = "127.0.0.1";
  /// 0 picks a free port (see server::port).
  uint16_t port = 0;
  /// Threads running the io context (>= 1).
  size_t threads = 1;
  /// How long a request may take to arrive whole, counted from when the server
  /// starts waiting for it (also bounds an idle keep-alive connection).
  std::chrono::milliseconds request_deadline{5000};
  /// How long a client may take to read its whole response.
  std::chrono::milliseconds reply_deadline{5000};
  size_t max_header_bytes = 8192;
  size_t max_body_bytes = 1 << 20;
  size_t max_connections = 256;
};

/// A running server. Destroying it stops accepting, closes every connection and
/// joins its threads (so not from a handler); responders of requests still in
/// flight then do nothing.
class server {
public:
  /// Binds, listens and starts the threads.
  static caf::expected<std::unique_ptr<server>> start(server_config cfg, handler fn);

  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// The bound port.
  uint16_t port() const noexcept;
  /// "host:port" ("[::1]:port" for IPv6).
  std::string address() const;
  /// Connections open now.
  size_t connections() const noexcept;

  struct impl;

private:
  explicit server(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace understudy::http
