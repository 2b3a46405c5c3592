#pragma once

// Private to runtime/src/cluster (and src/node/local_etcd.cpp): the HTTP and
// JSON plumbing of the etcd coordinator. libcurl moves the bytes (TLS
// included), nlohmann::json reads and writes them, OpenSSL's EVP_EncodeBlock
// and EVP_DecodeBlock do etcd's base64 of keys and values.
//
// Threads: an http_client belongs to one thread at a time; only `interrupt`
// may be called from another one.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

typedef void CURL;
typedef void CURLM;

namespace understudy::detail {

/// TLS settings of a client: the CA to trust ("" for the system's) and the
/// client certificate and key ("" for none).
struct http_tls {
  std::string ca;
  std::string cert;
  std::string key;
};

/// What a request got.
struct http_result {
  /// libcurl's result (CURLE_OK when an answer arrived, whatever its status).
  int curl_code = 0;
  /// Whether the request never reached the server (no connection could be
  /// made): another endpoint may be tried without risk of doing it twice.
  bool not_sent = false;
  /// The HTTP status, 0 without an answer.
  long status = 0;
  std::string body;
  /// libcurl's explanation when curl_code is not CURLE_OK.
  std::string error;
};

/// One libcurl easy handle driven through a multi handle, so that another
/// thread can cut a request short (interrupt) instead of waiting for its
/// timeout. Each call keeps the connection for the next.
class http_client {
public:
  explicit http_client(http_tls tls = {});
  ~http_client();

  http_client(const http_client&) = delete;
  http_client& operator=(const http_client&) = delete;

  /// POSTs the JSON `body` to `url` (or GETs `url` when `body` is none),
  /// giving up after `timeout`. With `on_data`, the answer's bytes go to it
  /// as they arrive (and not into the result's body); it returns false to end
  /// the request (then curl_code is CURLE_WRITE_ERROR).
  http_result request(const std::string& url, const std::optional<std::string>& body,
                      std::chrono::milliseconds timeout,
                      std::function<bool(std::string_view)> on_data = {});

  /// Makes the running request, and every later one, end at once with an
  /// error. Thread-safe.
  void interrupt();

  /// Whether interrupt was called.
  bool interrupted() const noexcept { return interrupted_.load(); }

private:
  http_tls tls_;
  CURL* easy_ = nullptr;
  CURLM* multi_ = nullptr;
  std::atomic<bool> interrupted_{false};
};

/// etcd's base64 of `bytes`.
std::string base64_encode(std::string_view bytes);

/// The bytes of etcd's base64 `text`; none if it is not base64.
std::optional<std::string> base64_decode(std::string_view text);

/// The end of the range of every key that starts with `prefix` (etcd's
/// range_end: the prefix with its last byte incremented).
std::string prefix_range_end(std::string prefix);

/// The decimal number `text` (digits only, at most 2^64 - 1); none otherwise.
std::optional<uint64_t> parse_u64(std::string_view text);

/// An int64 or uint64 field of etcd's JSON (the gateway writes them as
/// strings and leaves out zeros): 0 if absent, none if it is no number.
std::optional<uint64_t> json_u64(const nlohmann::json& obj, const char* field);

} // namespace understudy::detail
