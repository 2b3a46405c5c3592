// http::server over real sockets on loopback: requests and answers (now, later,
// from other threads), keep-alive, limits, deadlines against slow clients, the
// connection limit, responders that outlive their connection or their server,
// and binding errors. The clients are blocking sockets with timeouts: a test
// waits for what the server sends, never for time to pass.

#include "understudy/http/server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <caf/sec.hpp>
#include <catch2/catch.hpp>

#include "understudy/core/errors.hpp"

using namespace understudy;
using namespace std::chrono_literals;

namespace {

using clock_type = std::chrono::steady_clock;

/// A blocking client socket on 127.0.0.1 whose reads and writes give up after
/// a timeout, so that a server that never answers fails the test instead of
/// hanging it.
class client {
public:
  explicit client(uint16_t port, std::chrono::milliseconds timeout = 10s, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    if (rcvbuf > 0)
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    set_timeout(timeout);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }

  ~client() { close(); }
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  int fd() const { return fd_; }

  void set_timeout(std::chrono::milliseconds t) {
    timeval tv{static_cast<time_t>(t.count() / 1000),
               static_cast<suseconds_t>(t.count() % 1000 * 1000)};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }

  /// Sends all of `data`; false if the connection refused it.
  bool send(const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      auto n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0)
        return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }

  /// Reads more into the buffer: > 0 bytes read, 0 the server closed, -1 an
  /// error (errno set; EAGAIN when the timeout passed).
  ssize_t fill() {
    char buf[65536];
    auto n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n > 0)
      in_.append(buf, static_cast<size_t>(n));
    return n;
  }

  /// Whether the server closes the connection before the timeout: reads (and
  /// keeps) whatever still comes until the end of the stream or a reset.
  bool closed_by_server() {
    for (;;) {
      auto n = fill();
      if (n == 0 || (n < 0 && errno == ECONNRESET))
        return true;
      if (n < 0)
        return false;
    }
  }

  void close() {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = -1;
  }

  /// What was read and not yet taken by read_reply.
  std::string& buffered() { return in_; }

private:
  int fd_ = -1;
  std::string in_;
};

/// One response as a client reads it.
struct reply {
  unsigned status = 0;
  /// Header names in lower case.
  std::map<std::string, std::string> headers;
  std::string body;

  bool has(const std::string& name) const { return headers.count(name) != 0; }
  std::string operator[](const std::string& name) const {
    auto i = headers.find(name);
    return i == headers.end() ? "" : i->second;
  }
};

std::string lower(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// Reads one response from `c` (its body as Content-Length says; none for a
/// response to HEAD); nullopt if the connection ended or timed out first.
std::optional<reply> read_reply(client& c, bool head = false) {
  auto& in = c.buffered();
  size_t end;
  while ((end = in.find("\r\n\r\n")) == std::string::npos)
    if (c.fill() <= 0)
      return std::nullopt;
  reply r;
  auto line_end = in.find("\r\n");
  auto status_line = in.substr(0, line_end);
  REQUIRE(status_line.rfind("HTTP/1.1 ", 0) == 0);
  r.status = static_cast<unsigned>(std::stoul(status_line.substr(9, 3)));
  size_t pos = line_end + 2;
  while (pos < end) {
    auto next = in.find("\r\n", pos);
    auto line = in.substr(pos, next - pos);
    auto colon = line.find(':');
    REQUIRE(colon != std::string::npos);
    auto value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(' '));
    r.headers[lower(line.substr(0, colon))] = value;
    pos = next + 2;
  }
  size_t length = 0;
  if (!head && r.has("content-length"))
    length = std::stoul(r["content-length"]);
  while (in.size() < end + 4 + length)
    if (c.fill() <= 0)
      return std::nullopt;
  r.body = in.substr(end + 4, length);
  in.erase(0, end + 4 + length);
  return r;
}

std::string get(const std::string& path, const std::string& extra = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: test\r\n" + extra + "\r\n";
}

std::unique_ptr<http::server> start_server(http::handler fn, http::server_config cfg = {}) {
  auto srv = http::server::start(std::move(cfg), std::move(fn));
  if (!srv)
    FAIL(describe(srv.error()));
  return std::move(*srv);
}

/// Requests that handlers pass on, with their responders, to be answered by
/// the test (from its own thread).
class mailbox {
public:
  struct letter {
    http::request req;
    http::responder reply;
  };

  /// A handler that posts each request here and returns.
  http::handler handler() {
    return [this](http::request req, http::responder reply) {
      std::lock_guard<std::mutex> guard{mtx_};
      letters_.push_back({std::move(req), std::move(reply)});
      cv_.notify_all();
    };
  }

  /// The next request; fails the test after 10 s without one.
  letter take() {
    std::unique_lock<std::mutex> guard{mtx_};
    REQUIRE(cv_.wait_for(guard, 10s, [this] { return !letters_.empty(); }));
    auto out = std::move(letters_.front());
    letters_.pop_front();
    return out;
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  std::deque<letter> letters_;
};

/// Counts SIGPIPEs while it lives (instead of dying of one).
class sigpipe_counter {
public:
  sigpipe_counter() {
    count().store(0);
    struct sigaction sa {};
    sa.sa_handler = [](int) { count().fetch_add(1); };
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGPIPE, &sa, &old_);
  }
  ~sigpipe_counter() { ::sigaction(SIGPIPE, &old_, nullptr); }
  static std::atomic<int>& count() {
    static std::atomic<int> n{0};
    return n;
  }

private:
  struct sigaction old_ {};
};

} // namespace

TEST_CASE("a GET is answered with its status, type, length and extra headers", "[http]") {
  auto srv = start_server([](http::request req, http::responder reply) {
    auto r = http::response::json(201, "{\"method\":\"" + req.method + "\",\"path\":\"" + req.path +
                                           "\",\"query\":\"" + req.query + "\",\"thing\":\"" +
                                           req.header("x-thing") + "\"}");
    r.headers.emplace_back("X-Peer", req.peer);
    r.headers.emplace_back("Retry-After", "1");
    reply(std::move(r));
  });
  CHECK(srv->address() == "127.0.0.1:" + std::to_string(srv->port()));
  client c{srv->port()};
  REQUIRE(c.send(get("/v1/models/m:predict?x=1&y=2", "X-Thing: hello\r\nConnection: close\r\n")));
  auto r = read_reply(c);
  REQUIRE(r);
  CHECK(r->status == 201);
  CHECK((*r)["content-type"] == "application/json");
  CHECK((*r)["content-length"] == std::to_string(r->body.size()));
  CHECK(r->body ==
        R"({"method":"GET","path":"/v1/models/m:predict","query":"x=1&y=2","thing":"hello"})");
  CHECK((*r)["x-peer"].rfind("127.0.0.1:", 0) == 0);
  CHECK((*r)["retry-after"] == "1");
  CHECK(lower((*r)["connection"]) == "close");
  CHECK(c.closed_by_server());
  CHECK(c.buffered().empty());
}

TEST_CASE("a HEAD request gets the headers of its GET without the body", "[http]") {
  auto srv = start_server([](http::request, http::responder reply) {
    reply(http::response::text(200, "hello world"));
  });
  client c{srv->port()};
  REQUIRE(c.send("HEAD /x HTTP/1.1\r\nHost: test\r\n\r\n"));
  auto head = read_reply(c, true);
  REQUIRE(head);
  CHECK(head->status == 200);
  CHECK((*head)["content-length"] == "11");
  CHECK((*head)["content-type"] == "text/plain; charset=utf-8");
  // Had a body followed, the next response would not start where it must.
  REQUIRE(c.send(get("/x")));
  auto body = read_reply(c);
  REQUIRE(body);
  CHECK(body->status == 200);
  CHECK(body->body == "hello world");
}

TEST_CASE("a handler may answer later from another thread", "[http]") {
  mailbox box;
  std::atomic<bool> returned{false};
  std::thread::id server_thread;
  auto srv = start_server([&](http::request req, http::responder reply) {
    server_thread = std::this_thread::get_id();
    box.handler()(std::move(req), std::move(reply));
    returned = true;
  });
  client c{srv->port()};
  REQUIRE(c.send(get("/later")));
  std::thread answerer{[&] {
    auto letter = box.take();
    letter.reply(http::response::text(202, "answered from elsewhere: " + letter.req.path));
  }};
  auto r = read_reply(c);
  answerer.join();
  REQUIRE(r);
  CHECK(returned);
  CHECK(server_thread != answerer.get_id());
  CHECK(r->status == 202);
  CHECK(r->body == "answered from elsewhere: /later");
}

TEST_CASE("a POST body is delivered whole however the client splits it", "[http]") {
  http::server_config cfg;
  cfg.max_body_bytes = 1 << 20;
  auto srv = start_server(
      [](http::request req, http::responder reply) {
        reply(http::response::text(200, req.method + " " + std::to_string(req.body.size()) + " " +
                                            std::to_string(std::hash<std::string>{}(req.body))));
      },
      cfg);
  std::string body(300 * 1024, '\0');
  for (size_t i = 0; i < body.size(); ++i)
    body[i] = static_cast<char>('a' + i * 7 % 26);
  auto expected =
      "POST " + std::to_string(body.size()) + " " + std::to_string(std::hash<std::string>{}(body));
  client c{srv->port()};
  REQUIRE(c.send("POST /in HTTP/1.1\r\nHost: test\r\nContent-Length: " +
                 std::to_string(body.size()) + "\r\n\r\n"));
  for (size_t at = 0; at < body.size(); at += 7001)
    REQUIRE(c.send(body.substr(at, 7001)));
  auto r = read_reply(c);
  REQUIRE(r);
  CHECK(r->body == expected);
  // The same body in chunks, on the same connection.
  std::string chunked = "POST /in HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (size_t at = 0; at < body.size(); at += 50000) {
    auto part = body.substr(at, 50000);
    char size[32];
    std::snprintf(size, sizeof(size), "%zx\r\n", part.size());
    chunked += size + part + "\r\n";
  }
  chunked += "0\r\n\r\n";
  REQUIRE(c.send(chunked));
  r = read_reply(c);
  REQUIRE(r);
  CHECK(r->body == expected);
}

TEST_CASE("a client that expects 100-continue is told to go on before it sends its body",
          "[http]") {
  auto srv = start_server(
      [](http::request req, http::responder reply) { reply(http::response::text(200, req.body)); });
  client c{srv->port()};
  REQUIRE(
      c.send("POST /in HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
             "Expect: 100-continue\r\n\r\n"));
  auto go_on = read_reply(c);
  REQUIRE(go_on);
  CHECK(go_on->status == 100);
  REQUIRE(c.send("hello"));
  auto r = read_reply(c);
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->body == "hello");
}

TEST_CASE("keep-alive serves two requests on one connection", "[http]") {
  int calls = 0;
  auto srv = start_server([&](http::request req, http::responder reply) {
    ++calls;
    reply(http::response::text(200, req.path + " from " + req.peer));
  });
  client c{srv->port()};
  REQUIRE(c.send(get("/one")));
  auto first = read_reply(c);
  REQUIRE(first);
  CHECK_FALSE(first->has("connection"));
  REQUIRE(c.send(get("/two")));
  auto second = read_reply(c);
  REQUIRE(second);
  CHECK(first->body.rfind("/one from 127.0.0.1:", 0) == 0);
  CHECK(second->body == "/two" + first->body.substr(4));
  CHECK(calls == 2);
  CHECK(srv->connections() == 1);
  // HTTP/1.0 asking for keep-alive is told it has it.
  client asks{srv->port()};
  REQUIRE(asks.send("GET /four HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  auto fourth = read_reply(asks);
  REQUIRE(fourth);
  CHECK(lower((*fourth)["connection"]) == "keep-alive");
  REQUIRE(asks.send("GET /five HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  auto fifth = read_reply(asks);
  REQUIRE(fifth);
  CHECK(fifth->body.rfind("/five", 0) == 0);
  // HTTP/1.0 without keep-alive: answered, then closed.
  client old{srv->port()};
  REQUIRE(old.send("GET /three HTTP/1.0\r\n\r\n"));
  auto third = read_reply(old);
  REQUIRE(third);
  CHECK(lower((*third)["connection"]) == "close");
  CHECK(old.closed_by_server());
}

TEST_CASE("a header over the limit is answered 431 and a body over the limit 413", "[http]") {
  http::server_config cfg;
  cfg.max_header_bytes = 1024;
  cfg.max_body_bytes = 1000;
  std::atomic<int> calls{0};
  auto srv = start_server(
      [&](http::request, http::responder reply) {
        ++calls;
        reply(http::response::text(200, "ok"));
      },
      cfg);
  {
    client c{srv->port()};
    REQUIRE(c.send(get("/", "X-Big: " + std::string(2000, 'a') + "\r\n")));
    auto r = read_reply(c);
    REQUIRE(r);
    CHECK(r->status == 431);
    CHECK(lower((*r)["connection"]) == "close");
    CHECK(c.closed_by_server());
  }
  {
    client c{srv->port()};
    REQUIRE(c.send("POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n" +
                   std::string(5000, 'b')));
    auto r = read_reply(c);
    REQUIRE(r);
    CHECK(r->status == 413);
    CHECK(lower((*r)["connection"]) == "close");
    CHECK(c.closed_by_server());
  }
  {
    // A chunked body is counted as it comes.
    client c{srv->port()};
    REQUIRE(
        c.send("POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
               "258\r\n" +
               std::string(600, 'c') + "\r\n258\r\n" + std::string(600, 'c') + "\r\n0\r\n\r\n"));
    auto r = read_reply(c);
    REQUIRE(r);
    CHECK(r->status == 413);
    CHECK(c.closed_by_server());
  }
  CHECK(calls == 0);
  // Within the limits all is well.
  client c{srv->port()};
  REQUIRE(c.send(get("/", "X-Small: " + std::string(200, 'a') + "\r\n")));
  auto r = read_reply(c);
  REQUIRE(r);
  CHECK(r->status == 200);
}

TEST_CASE("an exception escaping the handler is answered 500 with its message", "[http]") {
  auto srv = start_server([](http::request req, http::responder reply) {
    if (req.path == "/throw")
      throw std::runtime_error("the model is not loaded");
    if (req.path == "/drop")
      return; // drops its responder unanswered
    reply(http::response::text(200, "fine"));
  });
  client c{srv->port()};
  REQUIRE(c.send(get("/throw")));
  auto r = read_reply(c);
  REQUIRE(r);
  CHECK(r->status == 500);
  CHECK(r->body == "the model is not loaded\n");
  REQUIRE(c.send(get("/drop")));
  r = read_reply(c);
  REQUIRE(r);
  CHECK(r->status == 500);
  // The connection goes on.
  REQUIRE(c.send(get("/ok")));
  r = read_reply(c);
  REQUIRE(r);
  CHECK(r->status == 200);
}

TEST_CASE("a slowloris client is closed at the request deadline while others are served",
          "[http]") {
  http::server_config cfg;
  cfg.threads = 1;
  cfg.request_deadline = 1s;
  auto srv = start_server(
      [](http::request, http::responder reply) { reply(http::response::text(200, "fast")); }, cfg);
  client slow{srv->port()};
  auto connected = clock_type::now();
  REQUIRE(slow.send("G"));
  // The slow client sends a byte each time 300 ms pass without the server
  // closing: well within any per-read timeout, so only a deadline on the whole
  // request (1 s) closes it. After its second byte, another client asks.
  bool closed = false;
  int trickled = 0;
  std::optional<clock_type::duration> other_latency;
  while (!closed && clock_type::now() - connected < 10s) {
    pollfd p{slow.fd(), POLLIN, 0};
    if (::poll(&p, 1, 300) == 0) {
      closed = !slow.send("E");
      if (++trickled == 2) {
        auto asked = clock_type::now();
        client fast{srv->port()};
        REQUIRE(fast.send(get("/")));
        auto r = read_reply(fast);
        other_latency = clock_type::now() - asked;
        REQUIRE(r);
        CHECK(r->body == "fast");
      }
      continue;
    }
    closed = slow.fill() <= 0;
  }
  auto open_for = clock_type::now() - connected;
  CHECK(closed);
  CHECK(slow.buffered().empty()); // no answer to a request that never completed
  CHECK(open_for >= 900ms);
  CHECK(open_for < 2500ms);
  REQUIRE(other_latency);
  CHECK(*other_latency < 300ms);
}

TEST_CASE("a client that never reads a large response does not block others", "[http]") {
  http::server_config cfg;
  cfg.threads = 1;
  cfg.request_deadline = 1s;
  cfg.reply_deadline = 1s;
  const size_t big_size = 32u << 20;
  mailbox asked;
  auto srv = start_server(
      [&](http::request req, http::responder reply) {
        if (req.path == "/big") {
          reply(http::response::text(200, std::string(big_size, 'x')));
          asked.handler()(std::move(req), [](http::response) {});
          return;
        }
        reply(http::response::text(200, "small"));
      },
      cfg);
  client stuck{srv->port(), 10s, 4096};
  REQUIRE(stuck.send(get("/big")));
  asked.take(); // the server is writing 32 MiB that nobody reads
  auto start = clock_type::now();
  {
    client other{srv->port()};
    REQUIRE(other.send(get("/small")));
    auto r = read_reply(other);
    REQUIRE(r);
    CHECK(r->body == "small");
  }
  CHECK(clock_type::now() - start < 300ms);
  // An idle client connected now is closed at its request deadline, which
  // ends after the stuck client's reply deadline (the same length, begun
  // earlier, on the same single server thread): once it is closed, so is the
  // stuck one, short of its response.
  client idle{srv->port()};
  CHECK(idle.closed_by_server());
  CHECK(stuck.closed_by_server());
  CHECK(stuck.buffered().size() < big_size);
}

TEST_CASE("at most max_connections are served and a further one waits for a slot", "[http]") {
  http::server_config cfg;
  cfg.max_connections = 2;
  cfg.request_deadline = 10s;
  auto srv = start_server(
      [](http::request req, http::responder reply) { reply(http::response::text(200, req.path)); },
      cfg);
  auto c1 = std::make_unique<client>(srv->port());
  client c2{srv->port()};
  REQUIRE(c1->send(get("/1")));
  REQUIRE(read_reply(*c1));
  REQUIRE(c2.send(get("/2")));
  REQUIRE(read_reply(c2));
  CHECK(srv->connections() == 2);
  // The third connects (the listen backlog takes it) but is not served ...
  client c3{srv->port(), 300ms};
  REQUIRE(c3.send(get("/3")));
  auto none = read_reply(c3);
  int why = errno;
  CHECK_FALSE(none);
  CHECK(why == EAGAIN); // timed out, not closed
  CHECK(c3.buffered().empty());
  CHECK(srv->connections() == 2);
  // ... until one of the two closes.
  c1.reset();
  c3.set_timeout(10s);
  auto r = read_reply(c3);
  REQUIRE(r);
  CHECK(r->body == "/3");
  CHECK(srv->connections() == 2);
}

TEST_CASE("a client that hangs up before its answer neither stops the server nor raises SIGPIPE",
          "[http]") {
  sigpipe_counter pipes;
  mailbox box;
  http::server_config cfg;
  cfg.threads = 1;
  auto srv = start_server(box.handler(), cfg);
  client gone{srv->port()};
  REQUIRE(gone.send(get("/big")));
  auto letter = box.take();
  // Closed with a FIN: the server's first writes go out, the client's kernel
  // answers them with a reset, and the next write meets EPIPE.
  gone.close();
  letter.reply(http::response::text(200, std::string(8u << 20, 'x')));
  letter.reply(http::response::text(200, "twice")); // a second answer: nothing
  // The server lives on and serves others.
  client next{srv->port()};
  REQUIRE(next.send(get("/next")));
  auto second = box.take();
  CHECK(second.req.path == "/next");
  second.reply(http::response::text(200, "still here"));
  auto r = read_reply(next);
  REQUIRE(r);
  CHECK(r->body == "still here");
  CHECK(sigpipe_counter::count() == 0);
}

TEST_CASE("a responder called after the server is destroyed does nothing", "[http]") {
  mailbox box;
  auto srv = start_server(box.handler());
  client c{srv->port()};
  REQUIRE(c.send(get("/pending")));
  auto letter = box.take();
  auto copy = letter.reply;
  CHECK(srv->connections() == 1);
  srv.reset();
  // Destroying the server closed the connection.
  CHECK(c.closed_by_server());
  CHECK(c.buffered().empty());
  letter.reply(http::response::text(200, "too late"));
  std::thread other{[copy] { copy(http::response::text(200, "too late, elsewhere")); }};
  other.join();
  // Dropping the last copies unanswered does nothing either.
  mailbox::letter dropped{std::move(letter)};
}

TEST_CASE("binding an address in use fails with an error naming the address", "[http]") {
  auto first = start_server(
      [](http::request, http::responder reply) { reply(http::response::text(200, "first")); });
  http::server_config cfg;
  cfg.port = first->port();
  auto second = http::server::start(cfg, [](http::request, http::responder) {});
  REQUIRE_FALSE(second);
  const auto& err = second.error();
  CHECK(err.code() == static_cast<uint8_t>(caf::sec::cannot_open_port));
  auto text = describe(err);
  INFO(text);
  CHECK(text.find("http server cannot bind 127.0.0.1:" + std::to_string(first->port())) !=
        std::string::npos);
  CHECK(text.find("in use") != std::string::npos);
  // An address this host does not have (TEST-NET-1) fails with its name too.
  cfg.host = "192.0.2.1";
  cfg.port = 0;
  auto third = http::server::start(cfg, [](http::request, http::responder) {});
  REQUIRE_FALSE(third);
  CHECK(describe(third.error()).find("cannot bind 192.0.2.1:0") != std::string::npos);
  // The first still serves.
  client c{first->port()};
  REQUIRE(c.send(get("/")));
  auto r = read_reply(c);
  REQUIRE(r);
  CHECK(r->body == "first");
}
