#include "etcd_http.hpp"

#include <curl/curl.h>
#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <stdexcept>
#include <vector>

namespace understudy::detail {

namespace {

/// What the write callback of one request sees.
struct sink {
  std::string* body;
  const std::function<bool(std::string_view)>* on_data;
};

extern "C" size_t on_curl_write(char* data, size_t size, size_t count, void* user) {
  auto* s = static_cast<sink*>(user);
  auto n = size * count;
  if (s->on_data != nullptr && *s->on_data)
    return (*s->on_data)(std::string_view{data, n}) ? n : 0;
  s->body->append(data, n);
  return n;
}

} // namespace

http_client::http_client(http_tls tls) : tls_(std::move(tls)) {
  // Thread-safe and counted since libcurl 7.84; paired with the cleanup below.
  curl_global_init(CURL_GLOBAL_DEFAULT);
  easy_ = curl_easy_init();
  multi_ = curl_multi_init();
  if (easy_ == nullptr || multi_ == nullptr)
    throw std::bad_alloc();
}

http_client::~http_client() {
  curl_multi_cleanup(multi_);
  curl_easy_cleanup(easy_);
  curl_global_cleanup();
}

void http_client::interrupt() {
  interrupted_ = true;
  curl_multi_wakeup(multi_);
}

http_result http_client::request(const std::string& url, const std::optional<std::string>& body,
                                 std::chrono::milliseconds timeout,
                                 std::function<bool(std::string_view)> on_data) {
  http_result out;
  if (interrupted_) {
    out.curl_code = CURLE_ABORTED_BY_CALLBACK;
    out.not_sent = true;
    out.error = "the coordinator is stopping";
    return out;
  }
  auto ms = std::max<long>(1, static_cast<long>(timeout.count()));
  sink s{&out.body, &on_data};
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_reset(easy_);
  curl_easy_setopt(easy_, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy_, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(easy_, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy_, CURLOPT_TIMEOUT_MS, ms);
  curl_easy_setopt(easy_, CURLOPT_CONNECTTIMEOUT_MS, ms);
  curl_easy_setopt(easy_, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy_, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(easy_, CURLOPT_WRITEFUNCTION, on_curl_write);
  curl_easy_setopt(easy_, CURLOPT_WRITEDATA, &s);
  curl_easy_setopt(easy_, CURLOPT_PROTOCOLS_STR, "http,https");
  if (body) {
    curl_easy_setopt(easy_, CURLOPT_POST, 1L);
    curl_easy_setopt(easy_, CURLOPT_POSTFIELDSIZE, static_cast<long>(body->size()));
    curl_easy_setopt(easy_, CURLOPT_POSTFIELDS, body->data());
  }
  if (!tls_.ca.empty())
    curl_easy_setopt(easy_, CURLOPT_CAINFO, tls_.ca.c_str());
  if (!tls_.cert.empty()) {
    curl_easy_setopt(easy_, CURLOPT_SSLCERT, tls_.cert.c_str());
    curl_easy_setopt(easy_, CURLOPT_SSLKEY, tls_.key.c_str());
  }
  CURLcode result = CURLE_OK;
  bool done = false;
  curl_multi_add_handle(multi_, easy_);
  while (!done) {
    int running = 0;
    if (curl_multi_perform(multi_, &running) != CURLM_OK) {
      result = CURLE_FAILED_INIT;
      break;
    }
    int queued = 0;
    while (auto* msg = curl_multi_info_read(multi_, &queued))
      if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy_) {
        result = msg->data.result;
        done = true;
      }
    if (done)
      break;
    if (interrupted_) {
      result = CURLE_ABORTED_BY_CALLBACK;
      std::snprintf(errbuf, sizeof errbuf, "the coordinator is stopping");
      break;
    }
    // libcurl's own timeouts end the request; this wait only bounds how long
    // a wakeup can go unnoticed.
    curl_multi_poll(multi_, nullptr, 0, 1000, nullptr);
  }
  curl_multi_remove_handle(multi_, easy_);
  curl_slist_free_all(headers);
  out.curl_code = result;
  if (result == CURLE_OK || result == CURLE_WRITE_ERROR)
    curl_easy_getinfo(easy_, CURLINFO_RESPONSE_CODE, &out.status);
  if (result != CURLE_OK)
    out.error = errbuf[0] != '\0' ? std::string{errbuf} : curl_easy_strerror(result);
  out.not_sent = result == CURLE_COULDNT_CONNECT || result == CURLE_COULDNT_RESOLVE_HOST ||
                 result == CURLE_COULDNT_RESOLVE_PROXY;
  return out;
}

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  auto n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                           reinterpret_cast<const unsigned char*>(bytes.data()),
                           static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0)
    return std::nullopt;
  if (text.empty())
    return std::string{};
  std::string out(text.size() / 4 * 3 + 1, '\0');
  auto n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                           reinterpret_cast<const unsigned char*>(text.data()),
                           static_cast<int>(text.size()));
  if (n < 0)
    return std::nullopt;
  // EVP_DecodeBlock counts the padding as zero bytes.
  size_t pad = 0;
  for (auto i = text.rbegin(); i != text.rend() && *i == '=' && pad < 2; ++i)
    ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string prefix_range_end(std::string prefix) {
  while (!prefix.empty()) {
    auto& last = prefix.back();
    if (static_cast<unsigned char>(last) < 0xff) {
      last = static_cast<char>(static_cast<unsigned char>(last) + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  // Every key: etcd's "\0" range end.
  return std::string(1, '\0');
}

std::optional<uint64_t> json_u64(const nlohmann::json& obj, const char* field) {
  if (!obj.is_object())
    return std::nullopt;
  auto i = obj.find(field);
  if (i == obj.end() || i->is_null())
    return uint64_t{0};
  if (i->is_number_unsigned())
    return i->get<uint64_t>();
  if (i->is_number_integer()) {
    auto v = i->get<int64_t>();
    return v < 0 ? std::nullopt : std::optional<uint64_t>{static_cast<uint64_t>(v)};
  }
  if (!i->is_string())
    return std::nullopt;
  return parse_u64(i->get_ref<const std::string&>());
}

std::optional<uint64_t> parse_u64(std::string_view text) {
  uint64_t out = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size())
    return std::nullopt;
  return out;
}

} // namespace understudy::detail
