// The HTTP front end on a real actor system: predictions, bad input, unknown
// models, readiness, metrics, a poisonous request and a slow client.

#include "understudy/serving/front_end.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "understudy/actors/numerics/mlp.hpp"
#include "understudy/state/runtime.hpp"

using namespace understudy;
using namespace understudy::serving;
using json = nlohmann::json;

namespace {

struct http_answer {
  long status = 0;
  std::string body;
  std::string headers;
};

size_t append(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

/// `method` `url` with `body` (POST when not empty), through libcurl.
http_answer call(const std::string& url, const std::string& body = {}, bool post = false) {
  http_answer a;
  CURL* c = curl_easy_init();
  REQUIRE(c != nullptr);
  curl_slist* hdrs = curl_slist_append(nullptr, "Content-Type: application/json");
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, append);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &a.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, append);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &a.headers);
  if (post || !body.empty()) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  }
  auto rc = curl_easy_perform(c);
  REQUIRE(rc == CURLE_OK);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a.status);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(c);
  return a;
}

constexpr size_t dim = 4;

struct served {
  std::shared_ptr<actors::mlp> net = std::make_shared<actors::mlp>(std::vector<size_t>{dim, 6, 3});
  std::shared_ptr<memory_source> source = std::make_shared<memory_source>(net);
  std::vector<float> params;
  std::unique_ptr<runtime> rt;
  std::shared_ptr<router_handle> router = std::make_shared<router_handle>();
  std::shared_ptr<serving_metrics> metrics = std::make_shared<serving_metrics>("tiny");
  std::unique_ptr<front_end> fe;
  std::string base;

  explicit served(serve_config cfg = {}) {
    params.resize(net->parameter_count());
    net->init_parameters(params.data(), 7);
    source->add(3, params);
    runtime_config rc;
    rc.log_events = false;
    rc.configure = [](caf::actor_system_config& c) { register_serving_types(c); };
    rt = std::make_unique<runtime>(rc);
    cfg.model = "tiny";
    cfg.watch_interval = std::chrono::milliseconds(20);
    supervisor_spec spec;
    spec.name = "serve";
    spec.children.push_back(serving_tree(cfg, source, router, metrics));
    REQUIRE(rt->start(std::move(spec)));
    front_end_config fc;
    fc.model = "tiny";
    fc.input_dim = dim;
    fc.max_instances = 8;
    fc.http.request_deadline = std::chrono::milliseconds(1000);
    auto started = front_end::start(rt->system(), fc, router, metrics);
    REQUIRE(started);
    fe = std::move(*started);
    base = fe->url();
    // Ready once a replica in rotation holds the version (the router loads it
    // as it starts; the wait ends on the answer, not on a timer).
    for (int i = 0; i < 500 && call(base + "/readyz").status != 200; ++i)
      std::this_thread::yield();
    REQUIRE(call(base + "/readyz").status == 200);
  }

  ~served() {
    fe.reset();
    rt->shutdown();
  }

  std::vector<uint32_t> expected(const std::vector<float>& in) const {
    std::vector<uint32_t> out(in.size() / dim);
    net->predict(params.data(), in.data(), out.size(), out.data());
    return out;
  }
};

std::string predict_body(const std::vector<float>& in, const std::string& key = {}) {
  json rows = json::array();
  for (size_t i = 0; i < in.size(); i += dim)
    rows.push_back(std::vector<float>(in.begin() + static_cast<long>(i),
                                      in.begin() + static_cast<long>(i + dim)));
  json body{{"instances", rows}};
  if (!key.empty())
    body["key"] = key;
  return body.dump();
}

} // namespace

TEST_CASE("the front end answers with the model's own predictions and names its version",
          "[serving]") {
  served s;
  std::vector<float> in{0.5f, -1.0f, 2.0f, 0.25f, -3.0f, 1.0f, 0.0f, 4.0f};
  auto a = call(s.base + "/v1/models/tiny:predict", predict_body(in, "k1"));
  REQUIRE(a.status == 200);
  auto doc = json::parse(a.body);
  CHECK(doc["model"] == "tiny");
  CHECK(doc["version"] == 3);
  CHECK(doc["predictions"].get<std::vector<uint32_t>>() == s.expected(in));
  auto st = json::parse(call(s.base + "/v1/models/tiny").body);
  CHECK(st["version"] == 3);
  CHECK(st["active"] == 2);
  CHECK(call(s.base + "/healthz").status == 200);
  auto metrics = call(s.base + "/metrics").body;
  CHECK_THAT(metrics,
             Catch::Contains(R"(understudy_serving_requests_total{model="tiny",outcome="ok"} 1)"));
  CHECK_THAT(metrics,
             Catch::Contains(R"(understudy_serving_replicas{model="tiny",state="standby"} 1)"));
}

TEST_CASE("bad requests get 400, unknown models and paths 404, each naming the problem",
          "[serving]") {
  served s;
  auto url = s.base + "/v1/models/tiny:predict";
  struct bad {
    std::string body;
    std::string says;
  };
  for (const auto& b : std::vector<bad>{
           {"{\"instances\": [[1,2,3,4]", "not valid JSON"},
           {"[1,2]", "JSON object"},
           {"{\"instances\": []}", "non-empty array"},
           {"{\"instances\": [[1,2,3]]}", "array of 4 numbers (it has 3)"},
           {"{\"instances\": [[1,2,3,\"x\"]]}", "not a number"},
           {"{\"instances\": [[1,2,3,1e300]]}", "out of range"},
           {"{\"instances\": [[1,2,3,4]], \"key\": 5}", "must be a string of at most 256"},
           {"{\"instances\": [" + std::string(9 * 10, ' ') + "[1,2,3,4],[1,2,3,4],[1,2,3,4]," +
                "[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]}",
            "at most 8"},
       }) {
    auto a = call(url, b.body, true);
    CHECK(a.status == 400);
    CHECK_THAT(a.body, Catch::Contains(b.says));
    CHECK_THAT(a.body, Catch::Contains("bad_request"));
  }
  // Deep nesting is refused as malformed, not by a crash.
  auto deep = call(url, std::string(100000, '[') + std::string(100000, ']'), true);
  CHECK(deep.status == 400);
  auto unknown = call(s.base + "/v1/models/other:predict", predict_body({1, 2, 3, 4}));
  CHECK(unknown.status == 404);
  CHECK_THAT(unknown.body, Catch::Contains("no model named \\\"other\\\""));
  CHECK(call(s.base + "/nowhere").status == 404);
  CHECK(call(url).status == 405);
  auto metrics = call(s.base + "/metrics").body;
  CHECK_THAT(metrics,
             Catch::Contains(
                 R"(understudy_serving_requests_total{model="tiny",outcome="bad_request"} 9)"));
}

TEST_CASE("a poisonous request gets 502 after crashing two replicas, and the others are served",
          "[serving]") {
  serve_config cfg;
  cfg.replicas = 2;
  cfg.standbys = 1;
  cfg.poison = 42.0f;
  served s{cfg};
  auto url = s.base + "/v1/models/tiny:predict";
  auto a = call(url, predict_body({42, 0, 0, 0}));
  CHECK(a.status == 502);
  CHECK_THAT(a.body, Catch::Contains("poisonous"));
  CHECK_THAT(a.body, Catch::Contains("replica_failed"));
  for (int i = 0; i < 20; ++i) {
    std::vector<float> in{static_cast<float>(i), 1, 2, 3};
    auto ok = call(url, predict_body(in));
    REQUIRE(ok.status == 200);
    CHECK(json::parse(ok.body)["predictions"].get<std::vector<uint32_t>>() == s.expected(in));
  }
  auto st = json::parse(call(s.base + "/v1/models/tiny").body);
  uint64_t downs = 0;
  for (const auto& r : st["replicas"])
    downs += r["downs"].get<uint64_t>();
  CHECK(downs <= 2);
  CHECK(downs >= 1);
}

TEST_CASE("a client that trickles its request does not hold up another's prediction", "[serving]") {
  served s;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(s.fe->port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  std::string part = "POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n";
  REQUIRE(::send(fd, part.data(), part.size(), MSG_NOSIGNAL) > 0);
  auto start = std::chrono::steady_clock::now();
  auto a = call(s.base + "/v1/models/tiny:predict", predict_body({1, 2, 3, 4}));
  auto took = std::chrono::steady_clock::now() - start;
  CHECK(a.status == 200);
  CHECK(took < std::chrono::milliseconds(500)); // well under the 1 s request deadline
  // The trickler is cut at its deadline: the server closes the connection.
  char buf[64];
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  auto n = ::recv(fd, buf, sizeof(buf), 0);
  CHECK(n <= 0);
  ::close(fd);
}
