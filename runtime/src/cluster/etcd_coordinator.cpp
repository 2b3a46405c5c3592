#include "understudy/cluster/etcd_coordinator.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "etcd_http.hpp"

namespace understudy {

using json = nlohmann::json;
using detail::base64_decode;
using detail::base64_encode;
using detail::json_u64;

namespace {

using steady = std::chrono::steady_clock;

caf::error unavailable(std::string what) {
  return make_error(coordination_errc::unavailable, std::move(what));
}

caf::error bad_answer(std::string what) {
  return make_error(coordination_errc::bad_answer, std::move(what));
}

caf::error session_lost(std::string what) {
  return make_error(coordination_errc::session_lost, std::move(what));
}

/// One key-value pair of etcd's answer, decoded.
struct kv {
  std::string key;
  std::string value;
  uint64_t create_revision = 0;
  uint64_t mod_revision = 0;
  uint64_t lease = 0;
};

caf::expected<kv> read_kv(const json& j) {
  kv out;
  auto key = j.is_object() && j.contains("key") && j["key"].is_string()
                 ? base64_decode(j["key"].get_ref<const std::string&>())
                 : std::nullopt;
  auto value = !j.contains("value")     ? std::optional<std::string>{""}
               : j["value"].is_string() ? base64_decode(j["value"].get_ref<const std::string&>())
                                        : std::nullopt;
  auto cr = json_u64(j, "create_revision");
  auto mr = json_u64(j, "mod_revision");
  auto lease = json_u64(j, "lease");
  if (!key || !value || !cr || !mr || !lease)
    return bad_answer("etcd sent a key-value pair without key or with bad fields: " + j.dump());
  out.key = std::move(*key);
  out.value = std::move(*value);
  out.create_revision = *cr;
  out.mod_revision = *mr;
  out.lease = *lease;
  return out;
}

/// The pairs of a range response (absent "kvs": none).
caf::expected<std::vector<kv>> read_kvs(const json& range_response) {
  std::vector<kv> out;
  if (!range_response.is_object())
    return bad_answer("etcd sent a range response that is no object");
  auto i = range_response.find("kvs");
  if (i == range_response.end())
    return out;
  if (!i->is_array())
    return bad_answer("etcd sent 'kvs' that is no list");
  for (const auto& x : *i) {
    auto p = read_kv(x);
    if (!p)
      return std::move(p.error());
    out.push_back(std::move(*p));
  }
  return out;
}

/// The header revision of an answer.
caf::expected<uint64_t> header_revision(const json& answer) {
  auto h = answer.is_object() ? answer.find("header") : answer.end();
  if (!answer.is_object() || h == answer.end())
    return bad_answer("etcd's answer has no header: " + answer.dump());
  auto rev = json_u64(*h, "revision");
  if (!rev || *rev == 0)
    return bad_answer("etcd's answer has no revision: " + answer.dump());
  return *rev;
}

json put_op(const std::string& key, const std::string& value, uint64_t lease = 0) {
  json put{{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease != 0)
    put["lease"] = std::to_string(lease);
  return json{{"request_put", std::move(put)}};
}

json delete_op(const std::string& key) {
  return json{{"request_delete_range", {{"key", base64_encode(key)}}}};
}

json range_op(const std::string& key) {
  return json{{"request_range", {{"key", base64_encode(key)}}}};
}

/// Compares `target` ("MOD", "CREATE") of `key` with `value`.
json compare_rev(const std::string& key, const char* target, uint64_t value) {
  std::string field = std::string{target} == "MOD" ? "mod_revision" : "create_revision";
  return json{{"key", base64_encode(key)},
              {"target", target},
              {"result", "EQUAL"},
              {field, std::to_string(value)}};
}

json compare_value(const std::string& key, const std::string& value) {
  return json{{"key", base64_encode(key)},
              {"target", "VALUE"},
              {"result", "EQUAL"},
              {"value", base64_encode(value)}};
}

/// The range response at `index` of a txn answer's responses.
caf::expected<std::vector<kv>> txn_range(const json& answer, size_t index) {
  auto r = answer.find("responses");
  if (r == answer.end() || !r->is_array() || r->size() <= index ||
      !(*r)[index].contains("response_range"))
    return bad_answer("etcd's txn answer lacks range response " + std::to_string(index) + ": " +
                      answer.dump());
  return read_kvs((*r)[index]["response_range"]);
}

} // namespace

// -- the implementation -------------------------------------------------------------------

struct etcd_coordinator::impl {
  coordination_spec spec;
  std::string cluster;
  std::string node;
  /// PREFIX/CLUSTER/
  std::string root;
  std::chrono::milliseconds deadline;

  /// The endpoint tried first; moves on when one cannot be reached.
  std::atomic<size_t> endpoint{0};
  /// HTTP requests sent to etcd (each attempt, and each watch stream opened).
  std::atomic<uint64_t> requests{0};

  // The worker: its queue and its client.
  std::mutex mtx;
  std::condition_variable cv;
  std::deque<std::function<void()>> queue;
  bool stopping = false;
  detail::http_client worker_http;
  std::thread worker;

  /// Session state, of the worker thread only.
  uint64_t epoch = 0;
  uint64_t lease = 0;

  /// Held while a request is answered and its callback or view delivered
  /// (recursive: a callback may call watch).
  std::recursive_mutex deliver_mtx;
  struct watcher {
    std::function<void(const coordination_view&)> f;
    uint64_t delivered = 0;
  };
  std::vector<watcher> watchers;
  std::optional<coordination_view> last_view;

  // The watch thread and its clients (the stream's, and the re-reads').
  detail::http_client stream_http;
  detail::http_client read_http;
  std::thread watch_thread;
  bool watching = false;

  impl(const coordination_spec& s, std::string c, std::string n)
      : spec(s),
        cluster(std::move(c)),
        node(std::move(n)),
        root(s.prefix + "/" + cluster + "/"),
        deadline(std::max(std::chrono::milliseconds(100), s.session_ttl / 2)),
        worker_http(detail::http_tls{s.ca, s.cert, s.key}),
        stream_http(detail::http_tls{s.ca, s.cert, s.key}),
        read_http(detail::http_tls{s.ca, s.cert, s.key}) {
    worker = std::thread{[this] { run_worker(); }};
  }

  ~impl() {
    {
      std::lock_guard<std::mutex> guard{mtx};
      stopping = true;
    }
    cv.notify_all();
    worker_http.interrupt();
    stream_http.interrupt();
    read_http.interrupt();
    worker.join();
    if (watch_thread.joinable())
      watch_thread.join();
  }

  std::string member_key(const std::string& name) const { return root + "members/" + name; }
  std::string fenced_key(const std::string& name) const { return root + "fenced/" + name; }
  std::string leader_key() const { return root + "leader"; }
  std::string led_key() const { return root + "led"; }

  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> guard{mtx};
      queue.push_back(std::move(task));
    }
    cv.notify_one();
  }

  void run_worker() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> guard{mtx};
        cv.wait(guard, [this] { return stopping || !queue.empty(); });
        if (queue.empty())
          return;
        task = std::move(queue.front());
        queue.pop_front();
      }
      // Once stopping, the client is interrupted: queued calls end at once
      // with `unavailable`.
      task();
    }
  }

  /// POSTs `body` to `path` of the first endpoint that can be reached,
  /// before `until`; etcd's answer or the error it maps to.
  caf::expected<json> call(detail::http_client& http, const std::string& path, const json& body,
                           steady::time_point until) {
    const auto text = body.dump();
    const auto n = spec.endpoints.size();
    std::string failures;
    for (size_t attempt = 0; attempt < n; ++attempt) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - steady::now());
      if (left.count() <= 0)
        break;
      const size_t index = (endpoint.load() + attempt) % n;
      const auto& url = spec.endpoints[index];
      std::string line;
      requests.fetch_add(1, std::memory_order_relaxed);
      auto res = http.request(url + path, text, left, [&line](std::string_view data) {
        // Streaming endpoints (lease keepalive) answer one JSON object a
        // line; the first is the answer.
        line.append(data);
        return line.find('\n') == std::string::npos;
      });
      if (res.curl_code != 0 &&
          !(res.curl_code == 23 /* CURLE_WRITE_ERROR */ && line.find('\n') != std::string::npos)) {
        if (http.interrupted())
          return unavailable("the coordinator is stopping");
        failures += (failures.empty() ? "" : "; ") + url + ": " + res.error;
        if (res.not_sent) {
          endpoint = (index + 1) % n;
          continue;
        }
        return unavailable("etcd " + path + " failed: " + failures);
      }
      if (auto eol = line.find('\n'); eol != std::string::npos)
        line.resize(eol);
      auto answer = json::parse(line, nullptr, false);
      if (answer.is_discarded())
        return bad_answer("etcd at " + url + " answered " + path + " with no JSON (HTTP " +
                          std::to_string(res.status) + "): " + line.substr(0, 200));
      // Streaming answers wrap the message in "result" (or "error").
      if (answer.is_object() && answer.contains("result") && answer.size() == 1)
        answer = answer["result"];
      if (answer.is_object() && answer.contains("error")) {
        auto err = answer["error"];
        if (err.is_object()) // a stream's error: {"error": {"grpc_code": ..., "message": ...}}
          answer = err;
        return map_error(url, path, answer);
      }
      if (res.status != 200)
        return bad_answer("etcd at " + url + " answered " + path + " with HTTP " +
                          std::to_string(res.status) + ": " + line.substr(0, 200));
      return answer;
    }
    return unavailable("no etcd endpoint answered " + path + " in time" +
                       (failures.empty() ? "" : " (" + failures + ")"));
  }

  /// The error etcd's gateway reported ({"error", "code", "message"}).
  static caf::error map_error(const std::string& url, const std::string& path, const json& e) {
    std::string message =
        e.contains("message") && e["message"].is_string() ? e["message"].get<std::string>()
        : e.contains("error") && e["error"].is_string()   ? e["error"].get<std::string>()
                                                          : e.dump();
    int code = 0;
    for (const char* field : {"code", "grpc_code"})
      if (e.contains(field) && e[field].is_number_integer())
        code = e[field].get<int>();
    auto what = "etcd at " + url + " refused " + path + ": " + message;
    // gRPC codes: 1 canceled, 4 deadline exceeded, 14 unavailable (no leader,
    // timed out); 5 not found (the lease).
    if (message.find("lease not found") != std::string::npos)
      return session_lost(what + " (the session expired)");
    if (code == 1 || code == 4 || code == 14 || code == 8 || code == 10)
      return unavailable(what);
    return bad_answer(what);
  }

  /// A txn of `compare`, `success` and `failure` operations.
  caf::expected<json> txn(detail::http_client& http, json compare, json success, json failure,
                          steady::time_point until) {
    json body{{"compare", std::move(compare)},
              {"success", std::move(success)},
              {"failure", std::move(failure)}};
    return call(http, "/v3/kv/txn", body, until);
  }

  steady::time_point op_deadline() const { return steady::now() + deadline; }

  // -- the calls (worker thread) --

  caf::expected<uint64_t> do_join(const std::string& name) {
    if (name != node)
      return make_error(coordination_errc::invalid_config,
                        "this coordinator serves node '" + node + "', not '" + name + "'");
    const auto until = op_deadline();
    const auto ttl_s = (spec.session_ttl.count() + 999) / 1000;
    auto granted = call(worker_http, "/v3/lease/grant", json{{"TTL", ttl_s}}, until);
    if (!granted)
      return std::move(granted.error());
    auto id = json_u64(*granted, "ID");
    if (!id || *id == 0)
      return bad_answer("etcd granted no lease: " + granted->dump());
    const auto me = member_key(node);
    // Read the older incarnation and the leader, then replace the one and
    // drop the other if it was that incarnation, unless either changed.
    for (int attempt = 0; attempt < 8; ++attempt) {
      auto seen = txn(worker_http, json::array(),
                      json::array({range_op(me), range_op(leader_key())}), json::array(), until);
      if (!seen)
        return std::move(seen.error());
      auto old = txn_range(*seen, 0);
      auto lead = txn_range(*seen, 1);
      if (!old)
        return std::move(old.error());
      if (!lead)
        return std::move(lead.error());
      const uint64_t old_epoch = old->empty() ? 0 : old->front().mod_revision;
      const uint64_t lead_mod = lead->empty() ? 0 : lead->front().mod_revision;
      json success = json::array({put_op(me, node, *id)});
      if (old_epoch != 0)
        success.push_back(put_op(fenced_key(node), std::to_string(old_epoch)));
      if (!lead->empty() && lead->front().value == node)
        success.push_back(delete_op(leader_key()));
      auto done = txn(worker_http,
                      json::array({compare_rev(me, "MOD", old_epoch),
                                   compare_rev(leader_key(), "MOD", lead_mod)}),
                      std::move(success), json::array(), until);
      if (!done)
        return std::move(done.error());
      if (done->value("succeeded", false)) {
        auto rev = header_revision(*done);
        if (!rev)
          return std::move(rev.error());
        epoch = *rev;
        lease = *id;
        return epoch;
      }
    }
    return unavailable("joining as '" + node + "' raced with other changes 8 times");
  }

  caf::expected<caf::unit_t> do_keep_alive() {
    if (lease == 0)
      return session_lost("node '" + node + "' has no session (it did not join, or left)");
    const auto until = op_deadline();
    auto renewed =
        call(worker_http, "/v3/lease/keepalive", json{{"ID", std::to_string(lease)}}, until);
    if (!renewed)
      return std::move(renewed.error());
    auto ttl = json_u64(*renewed, "TTL");
    if (!ttl)
      return bad_answer("etcd's keepalive answer has a bad TTL: " + renewed->dump());
    if (*ttl == 0)
      return session_lost("the session of node '" + node + "' (lease " + std::to_string(lease) +
                          ") expired");
    auto read =
        call(worker_http, "/v3/kv/range", json{{"key", base64_encode(member_key(node))}}, until);
    if (!read)
      return std::move(read.error());
    auto kvs = read_kvs(*read);
    if (!kvs)
      return std::move(kvs.error());
    if (kvs->empty() || kvs->front().mod_revision != epoch)
      return session_lost("node '" + node + "' at epoch " + std::to_string(epoch) +
                          " was declared dead (or replaced by a newer incarnation)");
    return caf::unit;
  }

  /// session_lost unless `self_kvs` shows this node's current incarnation.
  caf::error check_member(const caf::expected<std::vector<kv>>& self_kvs) const {
    if (!self_kvs)
      return self_kvs.error();
    if (self_kvs->empty() || self_kvs->front().mod_revision != epoch)
      return session_lost("node '" + node + "' at epoch " + std::to_string(epoch) +
                          " is no member any more");
    return {};
  }

  caf::expected<bool> do_declare_dead(const std::string& name, uint64_t dead_epoch) {
    if (epoch == 0)
      return session_lost("node '" + node + "' has no session (it did not join, or left)");
    const auto until = op_deadline();
    json clear_leader{{"request_txn",
                       {{"compare", json::array({compare_value(leader_key(), name)})},
                        {"success", json::array({delete_op(leader_key())})},
                        {"failure", json::array()}}}};
    auto done = txn(worker_http,
                    json::array({compare_rev(member_key(name), "MOD", dead_epoch),
                                 compare_rev(member_key(node), "MOD", epoch)}),
                    json::array({delete_op(member_key(name)),
                                 put_op(fenced_key(name), std::to_string(dead_epoch)),
                                 std::move(clear_leader)}),
                    json::array({range_op(member_key(node))}), until);
    if (!done)
      return std::move(done.error());
    if (done->value("succeeded", false))
      return true;
    if (auto err = check_member(txn_range(*done, 0)))
      return err;
    return false;
  }

  caf::expected<uint64_t> do_campaign() {
    if (epoch == 0)
      return session_lost("node '" + node + "' has no session (it did not join, or left)");
    const auto until = op_deadline();
    auto done = txn(worker_http,
                    json::array({compare_rev(leader_key(), "CREATE", 0),
                                 compare_rev(member_key(node), "MOD", epoch)}),
                    json::array({put_op(leader_key(), node, lease), put_op(led_key(), "1")}),
                    json::array({range_op(leader_key()), range_op(member_key(node))}), until);
    if (!done)
      return std::move(done.error());
    if (done->value("succeeded", false))
      return header_revision(*done);
    if (auto err = check_member(txn_range(*done, 1)))
      return err;
    auto lead = txn_range(*done, 0);
    if (!lead)
      return std::move(lead.error());
    if (!lead->empty() && lead->front().value == node && lead->front().lease == lease)
      return lead->front().create_revision;
    return uint64_t{0};
  }

  caf::expected<caf::unit_t> do_leave() {
    if (lease == 0)
      return caf::unit;
    auto done =
        call(worker_http, "/v3/lease/revoke", json{{"ID", std::to_string(lease)}}, op_deadline());
    if (!done && !is(done.error(), coordination_errc::session_lost))
      return std::move(done.error());
    lease = 0;
    epoch = 0;
    return caf::unit;
  }

  template <class T>
  void run_call(std::function<caf::expected<T>()> op, coordinator::callback<T> done) {
    post([this, op = std::move(op), done = std::move(done)] {
      std::lock_guard<std::recursive_mutex> guard{deliver_mtx};
      auto result = op();
      if (done)
        done(std::move(result));
    });
  }

  // -- the watch (watch thread) --

  /// Reads every key of the cluster into a view.
  caf::expected<coordination_view> read_view(steady::time_point until) {
    json body{{"key", base64_encode(root)},
              {"range_end", base64_encode(detail::prefix_range_end(root))}};
    auto read = call(read_http, "/v3/kv/range", body, until);
    if (!read)
      return std::move(read.error());
    auto rev = header_revision(*read);
    if (!rev)
      return std::move(rev.error());
    auto kvs = read_kvs(*read);
    if (!kvs)
      return std::move(kvs.error());
    coordination_view v;
    v.revision = *rev;
    for (const auto& p : *kvs) {
      if (p.key.compare(0, root.size(), root) != 0)
        continue;
      auto rel = p.key.substr(root.size());
      if (rel.rfind("members/", 0) == 0) {
        v.members[rel.substr(8)] = p.mod_revision;
      } else if (rel.rfind("fenced/", 0) == 0) {
        auto e = detail::parse_u64(p.value);
        if (!e)
          return bad_answer("key " + p.key + " holds no epoch: '" + p.value + "'");
        v.fenced[rel.substr(7)] = *e;
      } else if (rel == "leader") {
        v.leader = p.value;
        v.leader_term = p.create_revision;
      } else if (rel == "led") {
        v.led_before = true;
      }
    }
    return v;
  }

  /// Delivers `v` to every watcher that has not seen it or a newer one.
  void deliver(const coordination_view& v) {
    if (last_view && last_view->revision >= v.revision)
      return;
    last_view = v;
    flush();
  }

  /// Delivers the last view to watchers that lack it (deliver_mtx held).
  void flush() {
    if (!last_view)
      return;
    for (size_t i = 0; i < watchers.size(); ++i) {
      if (watchers[i].delivered >= last_view->revision)
        continue;
      watchers[i].delivered = last_view->revision;
      auto f = watchers[i].f; // a watcher may add watchers
      f(*last_view);
    }
  }

  /// Reads the view and delivers it; false if the read failed.
  bool refresh() {
    std::lock_guard<std::recursive_mutex> guard{deliver_mtx};
    auto v = read_view(op_deadline());
    if (!v)
      return false;
    deliver(*v);
    return true;
  }

  bool is_stopping() {
    std::lock_guard<std::mutex> guard{mtx};
    return stopping;
  }

  /// Waits `d` or until the coordinator stops.
  void pause(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> guard{mtx};
    cv.wait_for(guard, d, [this] { return stopping; });
  }

  void run_watch() {
    const auto retry = std::min(std::chrono::milliseconds(200), deadline / 2);
    while (!is_stopping()) {
      uint64_t from = 0;
      {
        std::lock_guard<std::recursive_mutex> guard{deliver_mtx};
        if (!refresh()) {
          pause(retry);
          continue;
        }
        from = last_view->revision + 1;
      }
      json create{{"key", base64_encode(root)},
                  {"range_end", base64_encode(detail::prefix_range_end(root))},
                  {"start_revision", std::to_string(from)}};
      json body{{"create_request", std::move(create)}};
      std::string pending;
      bool failed = false;
      auto on_data = [&](std::string_view data) {
        pending.append(data);
        for (size_t pos; (pos = pending.find('\n')) != std::string::npos;) {
          auto msg = json::parse(pending.substr(0, pos), nullptr, false);
          pending.erase(0, pos + 1);
          if (msg.is_discarded() || !msg.is_object() || !msg.contains("result"))
            return false; // an error or a message we cannot read: start over
          const auto& r = msg["result"];
          if (r.value("canceled", false) || json_u64(r, "compact_revision").value_or(0) != 0)
            return false;
          auto rev = json_u64(r.value("header", json::object()), "revision").value_or(0);
          std::lock_guard<std::recursive_mutex> guard{deliver_mtx};
          bool newer = !last_view || rev > last_view->revision;
          if (r.contains("events") && newer && !refresh()) {
            failed = true;
            return false;
          }
        }
        return true;
      };
      // The stream ends now and then, so that a connection lost silently
      // (a partition) is noticed: it reconnects and reads again.
      requests.fetch_add(1, std::memory_order_relaxed);
      stream_http.request(spec.endpoints[endpoint.load() % spec.endpoints.size()] + "/v3/watch",
                          body.dump(),
                          std::max(spec.session_ttl * 5, std::chrono::milliseconds(5000)), on_data);
      if (failed || !is_stopping())
        pause(failed ? retry : std::chrono::milliseconds(10));
    }
  }
};

// -- the coordinator ----------------------------------------------------------------------

caf::expected<std::shared_ptr<etcd_coordinator>> etcd_coordinator::create(
    const coordination_spec& spec, std::string cluster, std::string node) {
  auto bad = [](std::string what) {
    return make_error(coordination_errc::invalid_config, std::move(what));
  };
  if (spec.endpoints.empty())
    return bad(
        "no etcd endpoint: list etcd's client URLs in 'endpoints' of "
        "[cluster.coordination], or run the cluster with `understudy launch`");
  for (const auto& url : spec.endpoints)
    if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0)
      return bad("etcd endpoint '" + url + "' is neither http:// nor https://");
  if (spec.cert.empty() != spec.key.empty())
    return bad("TLS to etcd needs both a client certificate and its key (cert and key)");
  for (const auto* path : {&spec.ca, &spec.cert, &spec.key})
    if (!path->empty() && ::access(path->c_str(), R_OK) != 0)
      return bad("cannot read TLS file '" + *path + "' of [cluster.coordination]");
  if (spec.session_ttl < std::chrono::seconds(1))
    return bad("the session's time to live (" + std::to_string(spec.session_ttl.count()) +
               "ms) must be at least 1s");
  if (spec.prefix.empty() || spec.prefix.front() != '/' || spec.prefix.back() == '/')
    return bad("the key prefix '" + spec.prefix + "' must start with '/' and not end with '/'");
  if (cluster.empty() || cluster.find('/') != std::string::npos)
    return bad("the cluster name '" + cluster + "' must be non-empty and hold no '/'");
  if (node.empty() || node.find('/') != std::string::npos)
    return bad("the node name '" + node + "' must be non-empty and hold no '/'");
  auto p = std::make_unique<impl>(spec, std::move(cluster), std::move(node));
  return std::shared_ptr<etcd_coordinator>{new etcd_coordinator(std::move(p))};
}

etcd_coordinator::etcd_coordinator(std::unique_ptr<impl> p) : impl_(std::move(p)) {
  // nop
}

etcd_coordinator::~etcd_coordinator() = default;

void etcd_coordinator::join(const std::string& name, callback<uint64_t> done) {
  impl_->run_call<uint64_t>([p = impl_.get(), name] { return p->do_join(name); }, std::move(done));
}

void etcd_coordinator::keep_alive(callback<caf::unit_t> done) {
  impl_->run_call<caf::unit_t>([p = impl_.get()] { return p->do_keep_alive(); }, std::move(done));
}

void etcd_coordinator::declare_dead(const std::string& name, uint64_t epoch, callback<bool> done) {
  impl_->run_call<bool>([p = impl_.get(), name, epoch] { return p->do_declare_dead(name, epoch); },
                        std::move(done));
}

void etcd_coordinator::campaign(callback<uint64_t> done) {
  impl_->run_call<uint64_t>([p = impl_.get()] { return p->do_campaign(); }, std::move(done));
}

void etcd_coordinator::leave(callback<caf::unit_t> done) {
  impl_->run_call<caf::unit_t>([p = impl_.get()] { return p->do_leave(); }, std::move(done));
}

void etcd_coordinator::watch(std::function<void(const coordination_view&)> f) {
  auto* p = impl_.get();
  {
    std::lock_guard<std::recursive_mutex> guard{p->deliver_mtx};
    p->watchers.push_back({std::move(f), 0});
    if (!p->watching) {
      p->watching = true;
      p->watch_thread = std::thread{[p] { p->run_watch(); }};
      return;
    }
  }
  // A later watcher gets the last view on the worker thread.
  p->post([p] {
    std::lock_guard<std::recursive_mutex> guard{p->deliver_mtx};
    p->flush();
  });
}

std::chrono::milliseconds etcd_coordinator::session_ttl() const {
  return impl_->spec.session_ttl;
}

caf::error etcd_coordinator::begin_cold_start() {
  detail::http_client http{detail::http_tls{impl_->spec.ca, impl_->spec.cert, impl_->spec.key}};
  auto answer =
      impl_->call(http, "/v3/kv/deleterange",
                  json{{"key", detail::base64_encode(impl_->led_key())}}, impl_->op_deadline());
  return answer ? caf::error{} : answer.error();
}

uint64_t etcd_coordinator::requests_sent() const {
  return impl_->requests.load(std::memory_order_relaxed);
}

const std::string& etcd_coordinator::key_root() const {
  return impl_->root;
}

} // namespace understudy
