// http::server on Boost.Beast and Asio. Beast stays in this file: the public
// header does not include Boost, so only this translation unit pays for it.
//
// Shape: one acceptor on a strand of its own; `threads` std::threads run one
// io_context; each connection is a `session` on a strand of its own, owned by
// its pending operation (or, while its handler works, by the server's `held`
// map). A responder reaches its session through a weak_ptr and a `lifeline`
// that the server cuts (under its lock) before it stops, so a responder called
// from any thread after the connection or the server went does nothing.

#include "understudy/http/server.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <caf/error.hpp>
#include <caf/sec.hpp>

namespace understudy::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

/// Whether the comma-separated list `value` holds `token` (case-insensitive).
bool has_token(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    auto comma = value.find(',');
    auto item = value.substr(0, comma);
    auto first = item.find_first_not_of(" \t");
    auto last = item.find_last_not_of(" \t");
    if (first != std::string_view::npos && iequals(item.substr(first, last - first + 1), token))
      return true;
    if (comma == std::string_view::npos)
      break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

std::string_view view(boost::string_view s) {
  return {s.data(), s.size()};
}

/// `host:port`, IPv6 addresses in brackets.
std::string host_port(const std::string& host, uint16_t port) {
  bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

/// How long a connection closed after an error may take to send what it still
/// sends, so that it reads our answer before the close resets it.
constexpr std::chrono::milliseconds drain_limit{1000};

/// How long accepting pauses after an error such as EMFILE.
constexpr std::chrono::milliseconds accept_backoff{100};

/// What lets responders reach the server: the server clears `alive` under an
/// exclusive lock before it stops; responders post while holding it shared.
struct lifeline {
  std::shared_mutex mtx;
  bool alive = true;
};

class session;

} // namespace

std::string request::header(const std::string& name) const {
  for (const auto& [key, value] : headers)
    if (iequals(key, name))
      return value;
  return {};
}

response response::text(unsigned status, std::string body) {
  response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

response response::json(unsigned status, std::string body) {
  response r;
  r.status = status;
  r.content_type = "application/json";
  r.body = std::move(body);
  return r;
}

struct server::impl {
  impl(server_config c, handler f) : cfg(std::move(c)), fn(std::move(f)) {}
  ~impl();

  /// Runs the io context on one of the server's threads.
  void run();
  /// Accepts the next connection unless at the limit (acceptor strand).
  void do_accept();
  void on_accept(error_code ec, tcp::socket sock);
  /// Accepts again after a connection closed at the limit (acceptor strand).
  void resume_accept();
  /// A session ends (any thread).
  void connection_closed();
  /// Keeps `s` alive while its handler works on a request.
  void hold(const std::shared_ptr<session>& s);
  void release(session* s);

  const server_config cfg;
  const handler fn;
  const std::shared_ptr<lifeline> life = std::make_shared<lifeline>();
  std::atomic<bool> stopping{false};
  std::atomic<size_t> open{0};
  std::mutex held_mtx;
  std::unordered_map<session*, std::shared_ptr<session>> held;
  uint16_t port = 0;
  std::unique_ptr<asio::io_context> ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::optional<tcp::acceptor> acceptor;
  std::optional<asio::steady_timer> backoff;
  /// Acceptor strand only: accepting stopped at max_connections.
  bool accept_paused = false;
  std::vector<std::thread> threads;
};

namespace {

/// One answer to one request: what a responder holds. Answering twice does
/// nothing; dropping every copy unanswered answers 500.
class reply_state {
public:
  reply_state(std::shared_ptr<lifeline> life, std::weak_ptr<session> target, uint64_t seq)
      : life_(std::move(life)), target_(std::move(target)), seq_(seq) {}

  ~reply_state() {
    if (answered_.load())
      return;
    try {
      answer(response::text(500, "the handler dropped the request without answering\n"));
    } catch (...) {
      // Nobody to tell: the connection closes with its server.
    }
  }

  reply_state(const reply_state&) = delete;
  reply_state& operator=(const reply_state&) = delete;

  void answer(response r);

private:
  std::shared_ptr<lifeline> life_;
  std::weak_ptr<session> target_;
  uint64_t seq_;
  std::atomic<bool> answered_{false};
};

/// One connection: reads a request, hands it to the handler, writes its answer,
/// and reads the next one while the client keeps the connection alive.
class session : public std::enable_shared_from_this<session> {
public:
  session(server::impl& srv, tcp::socket&& sock) : srv_(srv), stream_(std::move(sock)) {
    srv_.open.fetch_add(1);
    error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec)
      peer_ = host_port(ep.address().to_string(), ep.port());
  }

  ~session() { srv_.connection_closed(); }

  session(const session&) = delete;
  session& operator=(const session&) = delete;

  void start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_request(); });
  }

  auto executor() { return stream_.get_executor(); }

  /// Sends the answer to request `seq` (on the strand); a stale one is dropped.
  void answer(uint64_t seq, response r) {
    if (!awaiting_ || seq != seq_)
      return;
    awaiting_ = false;
    srv_.release(this);
    write_response(std::move(r), !keep_alive_, false);
  }

private:
  void read_request() {
    if (srv_.stopping.load())
      return close();
    head_ = false;
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(
        std::min<size_t>(srv_.cfg.max_header_bytes, std::numeric_limits<std::uint32_t>::max())));
    parser_->body_limit(srv_.cfg.max_body_bytes);
    // One deadline for the whole request, however its bytes are spread over reads.
    stream_.expires_after(srv_.cfg.request_deadline);
    header_seen_ = false;
    read_more();
  }

  void read_more() {
    bhttp::async_read_some(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(error_code ec) {
    if (ec)
      return on_read_error(ec);
    if (!header_seen_ && parser_->is_header_done()) {
      header_seen_ = true;
      const auto& req = parser_->get();
      if (req.version() >= 11 && !parser_->is_done() &&
          iequals(view(req[bhttp::field::expect]), "100-continue")) {
        static constexpr std::string_view go_on = "HTTP/1.1 100 Continue\r\n\r\n";
        asio::async_write(stream_, asio::buffer(go_on.data(), go_on.size()),
                          [self = shared_from_this()](error_code ec, size_t) {
                            if (ec)
                              return self->close();
                            self->read_more();
                          });
        return;
      }
    }
    if (parser_->is_done())
      return on_request();
    read_more();
  }

  void on_read_error(error_code ec) {
    if (ec == bhttp::error::header_limit)
      return refuse(431, "request header fields too large\n");
    if (ec == bhttp::error::body_limit)
      return refuse(413, "request body too large\n");
    // The client left, went idle or was too slow: nothing to answer.
    if (ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message ||
        ec.category() != bhttp::make_error_code(bhttp::error::bad_method).category())
      return close();
    refuse(400, "bad request: " + ec.message() + "\n");
  }

  /// Answers a request that could not be read, then closes.
  void refuse(unsigned status, std::string text) {
    head_ = false;
    version_ = 11;
    write_response(response::text(status, std::move(text)), true, true);
  }

  void on_request() {
    auto msg = parser_->release();
    parser_.reset();
    request req;
    req.method = std::string{view(msg.method_string())};
    auto target = view(msg.target());
    auto q = target.find('?');
    req.path = std::string{target.substr(0, q)};
    if (q != std::string_view::npos)
      req.query = std::string{target.substr(q + 1)};
    for (const auto& f : msg)
      req.headers.emplace_back(std::string{view(f.name_string())}, std::string{view(f.value())});
    req.body = std::move(msg.body());
    req.peer = peer_;
    keep_alive_ = msg.keep_alive();
    version_ = msg.version();
    head_ = msg.method() == bhttp::verb::head;
    ++seq_;
    awaiting_ = true;
    auto self = shared_from_this();
    srv_.hold(self);
    auto st = std::make_shared<reply_state>(srv_.life, self, seq_);
    responder reply = [st](response r) { st->answer(std::move(r)); };
    try {
      srv_.fn(std::move(req), std::move(reply));
    } catch (const std::exception& e) {
      st->answer(response::text(500, std::string{e.what()} + "\n"));
    } catch (...) {
      st->answer(response::text(500, "unknown exception\n"));
    }
  }

  void write_response(response r, bool close_after, bool drain_after) {
    if (r.status < 200 || r.status > 999)
      r = response::text(500,
                         "the handler answered with status " + std::to_string(r.status) + "\n");
    res_ = {};
    res_.version(11);
    res_.result(r.status);
    res_.set(bhttp::field::content_type, r.content_type);
    for (const auto& [name, value] : r.headers) {
      // Fields that would split the header (CR, LF) or that the server sets are left out.
      if (name.empty() || name.find_first_of("\r\n:") != std::string::npos ||
          value.find_first_of("\r\n") != std::string::npos || iequals(name, "content-length"))
        continue;
      if (iequals(name, "connection")) {
        close_after = close_after || has_token(value, "close");
        continue;
      }
      res_.insert(name, value);
    }
    res_.keep_alive(!close_after);
    if (!close_after && version_ < 11)
      res_.set(bhttp::field::connection, "keep-alive"); // an HTTP/1.0 client needs to be told
    if (r.status != 204 && r.status != 304) {
      auto size = r.body.size();
      if (!head_)
        res_.body() = std::move(r.body);
      // After the body: HEAD answers the length a GET would have had.
      res_.content_length(size);
    }
    close_after_ = close_after;
    drain_after_ = drain_after;
    stream_.expires_after(srv_.cfg.reply_deadline);
    bhttp::async_write(stream_, res_,
                       [self = shared_from_this()](error_code ec, size_t) { self->on_write(ec); });
  }

  void on_write(error_code ec) {
    res_ = {};
    if (ec)
      return close();
    if (!close_after_)
      return read_request();
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (drain_after_)
      return drain();
    close();
  }

  /// Reads and drops what the client still sends, until it closes or a short
  /// deadline passes, so that closing does not reset the answer away.
  void drain() {
    if (srv_.stopping.load())
      return close();
    buffer_.consume(buffer_.size());
    stream_.expires_after(
        std::min<std::chrono::milliseconds>(srv_.cfg.reply_deadline, drain_limit));
    drain_more();
  }

  void drain_more() {
    stream_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this()](error_code ec, size_t) {
                              if (ec)
                                return self->close();
                              self->drain_more();
                            });
  }

  void close() { stream_.close(); }

  server::impl& srv_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bhttp::response<bhttp::string_body> res_;
  std::string peer_;
  uint64_t seq_ = 0;
  bool awaiting_ = false;
  bool keep_alive_ = false;
  unsigned version_ = 11;
  bool head_ = false;
  bool header_seen_ = false;
  bool close_after_ = false;
  bool drain_after_ = false;
};

void reply_state::answer(response r) {
  if (answered_.exchange(true))
    return;
  std::shared_lock<std::shared_mutex> guard{life_->mtx};
  if (!life_->alive)
    return;
  auto s = target_.lock();
  if (!s)
    return;
  auto ex = s->executor();
  // The session travels inside the handler, so it never ends on this thread.
  asio::post(ex, [s = std::move(s), seq = seq_, r = std::move(r)]() mutable {
    s->answer(seq, std::move(r));
  });
}

} // namespace

server::impl::~impl() {
  {
    std::unique_lock<std::shared_mutex> guard{life->mtx};
    life->alive = false;
  }
  stopping.store(true);
  if (ioc)
    ioc->stop();
  for (auto& t : threads)
    if (t.joinable())
      t.join();
  // No thread runs handlers now: end the sessions that wait for their handler,
  // then the acceptor, then (with the io context) every other session.
  std::unordered_map<session*, std::shared_ptr<session>> waiting;
  {
    std::lock_guard<std::mutex> guard{held_mtx};
    waiting.swap(held);
  }
  waiting.clear();
  backoff.reset();
  acceptor.reset();
  work.reset();
  ioc.reset();
}

void server::impl::run() {
  for (;;) {
    try {
      ioc->run();
      return;
    } catch (...) {
      // A handler of ours threw (e.g. bad_alloc): keep serving the others.
    }
  }
}

void server::impl::do_accept() {
  if (stopping.load())
    return;
  if (open.load() >= cfg.max_connections) {
    accept_paused = true;
    return;
  }
  acceptor->async_accept(asio::make_strand(*ioc), [this](error_code ec, tcp::socket sock) {
    on_accept(ec, std::move(sock));
  });
}

void server::impl::on_accept(error_code ec, tcp::socket sock) {
  if (stopping.load() || ec == asio::error::operation_aborted)
    return;
  if (ec == asio::error::connection_aborted || ec == asio::error::connection_reset)
    return do_accept();
  if (ec) {
    // Out of descriptors or memory: back off instead of spinning on a ready socket.
    backoff->expires_after(accept_backoff);
    backoff->async_wait([this](error_code e) {
      if (!e)
        do_accept();
    });
    return;
  }
  error_code ignored;
  sock.set_option(tcp::no_delay(true), ignored);
  try {
    std::make_shared<session>(*this, std::move(sock))->start();
  } catch (const std::exception&) {
    // Out of memory: the connection closes.
  }
  do_accept();
}

void server::impl::resume_accept() {
  if (accept_paused && !stopping.load()) {
    accept_paused = false;
    do_accept();
  }
}

void server::impl::connection_closed() {
  auto before = open.fetch_sub(1);
  if (before >= cfg.max_connections && !stopping.load())
    asio::post(acceptor->get_executor(), [this] { resume_accept(); });
}

void server::impl::hold(const std::shared_ptr<session>& s) {
  std::lock_guard<std::mutex> guard{held_mtx};
  held.emplace(s.get(), s);
}

void server::impl::release(session* s) {
  std::shared_ptr<session> last;
  std::lock_guard<std::mutex> guard{held_mtx};
  auto i = held.find(s);
  if (i != held.end()) {
    last = std::move(i->second);
    held.erase(i);
  }
}

caf::expected<std::unique_ptr<server>> server::start(server_config cfg, handler fn) {
  const auto where = host_port(cfg.host, cfg.port);
  auto fail = [&](const std::string& why) {
    return caf::make_error(caf::sec::cannot_open_port,
                           cfg.name + " cannot bind " + where + ": " + why);
  };
  if (!fn)
    return caf::make_error(caf::sec::invalid_argument, cfg.name + " on " + where + ": no handler");
  cfg.threads = std::max<size_t>(cfg.threads, 1);
  cfg.max_connections = std::max<size_t>(cfg.max_connections, 1);
  auto p = std::make_unique<impl>(cfg, std::move(fn));
  p->ioc = std::make_unique<asio::io_context>(static_cast<int>(cfg.threads));
  error_code ec;
  tcp::resolver resolver{*p->ioc};
  auto found = resolver.resolve(cfg.host, std::to_string(cfg.port),
                                tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec)
    return fail(ec.message());
  if (found.empty())
    return fail("no such address");
  auto ep = found.begin()->endpoint();
  p->acceptor.emplace(asio::make_strand(*p->ioc));
  auto& acc = *p->acceptor;
  if (acc.open(ep.protocol(), ec); ec)
    return fail(ec.message());
  // Lets a restarted server take its port back from connections in TIME_WAIT;
  // a port another socket listens on stays refused.
  if (acc.set_option(tcp::acceptor::reuse_address(true), ec); ec)
    return fail(ec.message());
  if (acc.bind(ep, ec); ec)
    return fail(ec.message());
  if (acc.listen(asio::socket_base::max_listen_connections, ec); ec)
    return fail(ec.message());
  auto local = acc.local_endpoint(ec);
  if (ec)
    return fail(ec.message());
  p->port = local.port();
  p->backoff.emplace(acc.get_executor());
  p->work.emplace(p->ioc->get_executor());
  asio::post(acc.get_executor(), [raw = p.get()] { raw->do_accept(); });
  try {
    for (size_t i = 0; i < cfg.threads; ++i)
      p->threads.emplace_back([raw = p.get()] { raw->run(); });
  } catch (const std::system_error& e) {
    return fail(std::string{"cannot start its threads: "} + e.what());
  }
  return std::unique_ptr<server>{new server(std::move(p))};
}

server::server(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

server::~server() = default;

uint16_t server::port() const noexcept {
  return impl_->port;
}

std::string server::address() const {
  return host_port(impl_->cfg.host, impl_->port);
}

size_t server::connections() const noexcept {
  return impl_->open.load();
}

} // namespace understudy::http
