// serving_loadgen: an open-loop load generator for any understudy serving deployment.
//
// It POSTs {"instances": [[64 floats], ...], "key": "s<i % K>"} (the key only with --sessions)
// to one or more routers at a fixed rate: request i is due at t0 + i/R whether or not earlier ones
// have answered, so a slow deployment shows up as latency (measured from the due time, so
// coordinated omission is not hidden) rather than as a lower request rate. The inputs are the
// rows of a digits CSV (64 values, then the label, per line; gzip or plain), cycled in order and
// multiplied by --scale (1/16 by default, as load_csv does for training).
//
//   serving_loadgen --url http://127.0.0.1:8080/v1/models/digits:predict [--url URL2 ...]
//                   [--rate 100] [--duration 10s | --requests N] [--batch 1] [--sessions K]
//                   [--data examples/data/digits.csv.gz] [--scale 0.0625] [--timeout 5s]
//                   [--max-in-flight 4096] [--answers FILE] [--quiet | --live] [--json] [--spin]
//                   [--failover [--try-timeout 500ms]]
//
// It sleeps between sends on a timerfd; --spin polls without sleeping instead (a whole core) where
// wake-ups are slow. The summary's "send lag" shows how late the generator itself sent.
// Every request ends as one of: ok (200 with predictions and a version); overloaded (503 whose
// cause is "overloaded": admission control, not a failure); timeout (no answer within --timeout
// of its due time); failed, by cause (another HTTP status with the answer's cause, or curl's
// transport error). A request due while --max-in-flight are outstanding is not sent: it is
// counted as dropped by the generator. With --sessions, a session whose answer carries a version
// lower than one it already saw counts a version regression. With --failover and several --url, a
// try whose router is unreachable, does not answer within --try-timeout, is overloaded or has no
// replica (503, 502) is sent to the next URL, as a client of several routers should; the summary
// counts such tries apart.
//
// While it runs, stderr shows one line updated each second (on a terminal, or with --live). At the
// end stdout gets a table and, with --json, one JSON line. Latency figures are of ok answers.
// --answers FILE writes `<row> <predicted label> <version>` per answered instance, in the order
// the answers came; <row> counts the data file's rows from 0.
// Exit codes: 0 nothing failed, 1 a request failed or timed out or a version regressed, 2 bad
// options, an unreadable data file or a bad URL.

#include <curl/curl.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "../common/digits_path.hpp"
#include "../common/interrupt.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
using nlohmann::json;
using understudy::examples::interrupt_watch;

constexpr const char* program_name = "serving_loadgen";

/// An answer body longer than this fails the request (memory stays bounded).
constexpr size_t max_answer_bytes = size_t{1} << 20;

/// Distinct failure causes kept apart; more are counted under "other causes".
constexpr size_t max_causes = 64;

/// Parses "10s", "500ms", "250us", "2m", "1h" or a bare number of seconds.
std::optional<std::chrono::nanoseconds> parse_duration(std::string_view text) {
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end == text.data())
    return std::nullopt;
  std::string_view unit{end, static_cast<size_t>(text.data() + text.size() - end)};
  double scale = 0;
  if (unit.empty() || unit == "s")
    scale = 1e9;
  else if (unit == "ms")
    scale = 1e6;
  else if (unit == "us")
    scale = 1e3;
  else if (unit == "ns")
    scale = 1;
  else if (unit == "m" || unit == "min")
    scale = 60e9;
  else if (unit == "h")
    scale = 3600e9;
  else
    return std::nullopt;
  double ns = value * scale;
  if (!std::isfinite(ns) || ns < 0 || ns > 1e18)
    return std::nullopt;
  return std::chrono::nanoseconds{std::llround(ns)};
}

/// The inputs to send: `size()` rows of `width` values, each with its label.
struct data_rows {
  size_t width = 0;
  std::vector<double> values;
  std::vector<int64_t> labels;

  size_t size() const { return labels.size(); }
};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

/// Parses one CSV line into `out` (values scaled, last cell the label); "" or what is wrong.
std::string parse_row(std::string_view line, double scale, data_rows& out) {
  std::vector<std::string_view> cells;
  for (;;) {
    auto comma = line.find(',');
    cells.push_back(trim(line.substr(0, comma)));
    if (comma == std::string_view::npos)
      break;
    line.remove_prefix(comma + 1);
  }
  if (cells.size() < 2)
    return "found 1 column, need the inputs and a label";
  if (out.width == 0)
    out.width = cells.size() - 1;
  else if (cells.size() - 1 != out.width)
    return "expected " + std::to_string(out.width + 1) + " columns (as on the first row), found " +
           std::to_string(cells.size());
  for (size_t c = 0; c < cells.size(); ++c) {
    auto cell = cells[c];
    if (!cell.empty() && cell.front() == '+')
      cell.remove_prefix(1);
    const char* first = cell.data();
    const char* last = cell.data() + cell.size();
    if (c + 1 == cells.size()) {
      int64_t label = 0;
      auto [end, ec] = std::from_chars(first, last, label);
      if (cell.empty() || ec != std::errc{} || end != last)
        return "column " + std::to_string(c) + ": label '" + std::string{cells[c]} +
               "' is not an integer";
      out.labels.push_back(label);
    } else {
      double value = 0;
      auto [end, ec] = std::from_chars(first, last, value);
      if (cell.empty() || ec != std::errc{} || end != last || !std::isfinite(value))
        return "column " + std::to_string(c) + ": '" + std::string{cells[c]} +
               "' is not a finite number";
      out.values.push_back(value * scale);
    }
  }
  return {};
}

/// Reads the rows of `path`, gzip-compressed or plain (gzgets reads both); "" or an error naming
/// the file (and the line).
std::string load_rows(const std::string& path, double scale, data_rows& out) {
  errno = 0;
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr)
    return path + ": cannot open: " + (errno != 0 ? std::strerror(errno) : "out of memory");
  std::unique_ptr<gzFile_s, int (*)(gzFile)> closer{file, gzclose};
  char buf[1 << 14];
  std::string line;
  size_t line_no = 0;
  auto take = [&]() -> std::string {
    ++line_no;
    auto text = trim(line);
    std::string err = text.empty() ? std::string{} : parse_row(text, scale, out);
    line.clear();
    return err.empty() ? err : path + ":" + std::to_string(line_no) + ": " + err;
  };
  while (gzgets(file, buf, sizeof buf) != nullptr) {
    line += buf;
    if (line.back() != '\n') {
      int code = Z_OK;
      const char* message = gzerror(file, &code);
      if (code != Z_OK) // a truncated gzip stream: not a short last line
        return path + ": read failed: " + (code == Z_ERRNO ? std::strerror(errno) : message);
      if (!gzeof(file))
        continue; // a line longer than the buffer
    }
    if (auto err = take(); !err.empty())
      return err;
  }
  int code = Z_OK;
  const char* message = gzerror(file, &code);
  if (code != Z_OK)
    return path + ": read failed: " + (code == Z_ERRNO ? std::strerror(errno) : message);
  if (!line.empty())
    if (auto err = take(); !err.empty())
      return err;
  if (out.size() == 0)
    return path + ": no data rows";
  return {};
}

/// Counts of latencies in nanoseconds in fixed memory (58 KiB): values below 256 exactly, larger
/// ones in buckets 1/128 of their power of two wide (log-linear, like HdrHistogram), so a quantile
/// is off by at most 0.4% (the middle of its bucket).
class latency_histogram {
public:
  latency_histogram() : counts_(bucket_count, 0) {}

  void record(uint64_t ns) {
    ++counts_[index_of(ns)];
    ++count_;
    max_ = std::max(max_, ns);
  }

  uint64_t count() const { return count_; }
  uint64_t max() const { return max_; }

  /// The value at quantile `q` (0..1): the middle of its bucket, at most the largest value.
  uint64_t quantile(double q) const {
    if (count_ == 0)
      return 0;
    auto rank =
        std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_))));
    uint64_t seen = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= rank)
        return std::min(max_, middle_of(i));
    }
    return max_;
  }

  void clear() {
    std::fill(counts_.begin(), counts_.end(), 0);
    count_ = 0;
    max_ = 0;
  }

private:
  static constexpr unsigned sub_bits = 7;
  static constexpr uint64_t half = uint64_t{1} << sub_bits;
  static constexpr uint64_t linear = half * 2;
  static constexpr size_t bucket_count = linear + (64 - sub_bits - 1) * half;

  static size_t index_of(uint64_t v) {
    if (v < linear)
      return v;
    unsigned shift = 63 - static_cast<unsigned>(__builtin_clzll(v)) - sub_bits;
    return linear + (shift - 1) * half + ((v >> shift) - half);
  }

  static uint64_t middle_of(size_t i) {
    if (i < linear)
      return i;
    unsigned shift = static_cast<unsigned>((i - linear) / half) + 1;
    uint64_t low = ((i - linear) % half + half) << shift;
    return low + (uint64_t{1} << (shift - 1));
  }

  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
  uint64_t max_ = 0;
};

/// "87us", "1.23ms", "45.6ms", "789ms", "1.23s".
std::string format_ms(uint64_t ns) {
  double ms = static_cast<double>(ns) / 1e6;
  char buf[32];
  if (ms < 1)
    std::snprintf(buf, sizeof buf, "%.0fus", ms * 1000);
  else if (ms < 10)
    std::snprintf(buf, sizeof buf, "%.2fms", ms);
  else if (ms < 100)
    std::snprintf(buf, sizeof buf, "%.1fms", ms);
  else if (ms < 1000)
    std::snprintf(buf, sizeof buf, "%.0fms", ms);
  else
    std::snprintf(buf, sizeof buf, "%.2fs", ms / 1000);
  return buf;
}

/// A latency in milliseconds rounded to the microsecond, for the JSON line.
double json_ms(uint64_t ns) {
  return std::round(static_cast<double>(ns) / 1e3) / 1e3;
}

/// Keeps a server-supplied cause printable on one line and short.
std::string printable(std::string_view text) {
  std::string out{text.substr(0, 80)};
  for (auto& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      c = '?';
  return out;
}

struct options {
  std::vector<std::string> urls;
  double rate = 100;
  uint64_t total = 0; ///< requests due, from --requests or --duration x --rate
  size_t batch = 1;
  uint64_t sessions = 0; ///< 0: no key
  std::chrono::nanoseconds timeout{std::chrono::seconds{5}};
  /// With --failover: a try unanswered this long goes to the next URL.
  std::chrono::nanoseconds try_timeout{0};
  bool failover = false;
  size_t max_in_flight = 4096;
  bool live = false;
  bool spin = false; ///< never sleep between sends
};

/// Outcomes so far, over the whole run.
struct tally {
  uint64_t sent = 0;
  uint64_t ok = 0;
  uint64_t overloaded = 0;
  uint64_t failed = 0;
  uint64_t timeouts = 0;
  uint64_t dropped = 0;
  uint64_t regressions = 0;
  /// Tries sent again to the next URL (--failover): its router was unreachable,
  /// did not answer in time, or had no replica.
  uint64_t failed_over = 0;
  std::map<std::string, uint64_t> failed_by_cause;
  std::map<int64_t, uint64_t> versions;
  /// Answered instances, and those whose prediction equals the row's label.
  uint64_t predicted = 0;
  uint64_t matching = 0;
};

/// One request in flight, reused with its easy handle (and so its connection) for later ones.
struct transfer {
  CURL* easy = nullptr;
  uint64_t index = 0;
  /// The URL of its current try, and its tries so far.
  size_t url = 0;
  size_t tries = 0;
  clock_type::time_point due;
  std::string body;
  std::string answer;
  bool answer_too_large = false;
  char error[CURL_ERROR_SIZE] = {};

  transfer() = default;
  transfer(const transfer&) = delete;
  transfer& operator=(const transfer&) = delete;
  ~transfer() {
    if (easy != nullptr)
      curl_easy_cleanup(easy);
  }
};

size_t on_answer_data(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<transfer*>(user);
  size_t bytes = size * count;
  if (t->answer.size() + bytes > max_answer_bytes) {
    t->answer_too_large = true;
    return 0; // aborts the transfer with CURLE_WRITE_ERROR
  }
  t->answer.append(data, bytes);
  return bytes;
}

/// Runs one load test on the calling thread: a libcurl multi handle with up to
/// `max_in_flight` transfers, issued on schedule and completed through curl_multi_poll.
class generator {
public:
  generator(const options& opt, const data_rows& rows, std::FILE* answers)
      : opt_(opt), rows_(rows), answers_(answers), highest_(opt.sessions, no_version) {
    multi_ = curl_multi_init();
    // Keep a connection for every transfer that may be in flight, for reuse.
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(opt.max_in_flight));
    headers_ = curl_slist_append(headers_, "Content-Type: application/json");
    // Larger bodies would otherwise wait for a "100 Continue" the server need not send.
    headers_ = curl_slist_append(headers_, "Expect:");
    timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  }

  ~generator() {
    for (auto& t : transfers_)
      if (t->easy != nullptr)
        curl_multi_remove_handle(multi_, t->easy);
    transfers_.clear();
    curl_multi_cleanup(multi_);
    curl_slist_free_all(headers_);
    if (timer_ >= 0)
      close(timer_);
  }

  generator(const generator&) = delete;
  generator& operator=(const generator&) = delete;

  bool ready() const { return multi_ != nullptr && headers_ != nullptr && timer_ >= 0; }

  /// Sends every request on schedule and waits for their answers (or a signal).
  void run(const interrupt_watch& interrupt) {
    using namespace std::chrono_literals;
    t0_ = clock_type::now();
    tick_start_ = t0_;
    auto next_tick = t0_ + 1s;
    uint64_t next = 0;
    for (;;) {
      if (interrupt.signal() != 0) {
        interrupted_ = true;
        not_sent_ = opt_.total - next;
        abandoned_ = in_flight_;
        break;
      }
      auto now = clock_type::now();
      for (; next < opt_.total && due(next) <= now; ++next)
        issue(next, now);
      int running = 0;
      curl_multi_perform(multi_, &running);
      collect();
      now = clock_type::now();
      if (now >= next_tick) {
        tick(now);
        next_tick += 1s;
        if (next_tick <= now)
          next_tick = now + 1s;
      }
      if (next >= opt_.total && in_flight_ == 0)
        break;
      auto wake = next_tick;
      if (next < opt_.total)
        wake = std::min(wake, due(next));
      if (opt_.spin)
        curl_multi_poll(multi_, nullptr, 0, 0, nullptr);
      else if (wake > now)
        wait_until(wake);
    }
    end_ = clock_type::now();
    clear_live();
  }

  const tally& result() const { return tally_; }
  const latency_histogram& latencies() const { return run_hist_; }
  /// How late each request was sent after its due time (the generator's own delay).
  const latency_histogram& send_lags() const { return lag_hist_; }
  double elapsed_s() const { return std::chrono::duration<double>(end_ - t0_).count(); }
  bool interrupted() const { return interrupted_; }
  uint64_t not_sent() const { return not_sent_; }
  uint64_t abandoned() const { return abandoned_; }

private:
  static constexpr int64_t no_version = std::numeric_limits<int64_t>::min();

  clock_type::time_point due(uint64_t i) const {
    auto offset = std::chrono::nanoseconds{std::llround(static_cast<double>(i) * 1e9 / opt_.rate)};
    return t0_ + offset;
  }

  /// Waits for network events, libcurl's own timeouts or `wake`, whichever comes first, at most
  /// 100ms (a signal is noticed soon). A timerfd wakes it to the microsecond, where poll's
  /// millisecond timeout would send late or spin.
  void wait_until(clock_type::time_point wake) {
    // libstdc++'s steady_clock is CLOCK_MONOTONIC.
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wake.time_since_epoch()).count();
    itimerspec spec{};
    spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    spec.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    timerfd_settime(timer_, TFD_TIMER_ABSTIME, &spec, nullptr);
    curl_waitfd extra{timer_, CURL_WAIT_POLLIN, 0};
    curl_multi_poll(multi_, &extra, 1, 100, nullptr);
    // Drains the expiry (EAGAIN when something else woke the poll first).
    uint64_t expirations = 0;
    [[maybe_unused]] auto drained = read(timer_, &expirations, sizeof expirations);
  }

  transfer* take_transfer() {
    if (!idle_.empty()) {
      auto* t = idle_.back();
      idle_.pop_back();
      return t;
    }
    auto t = std::make_unique<transfer>();
    t->easy = curl_easy_init();
    if (t->easy == nullptr)
      return nullptr;
    CURL* e = t->easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, t.get());
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_answer_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t.get());
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers_);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, program_name);
    transfers_.push_back(std::move(t));
    return transfers_.back().get();
  }

  void issue(uint64_t i, clock_type::time_point now) {
    auto when = due(i);
    if (in_flight_ >= opt_.max_in_flight) {
      ++tally_.dropped;
      return;
    }
    auto* t = take_transfer();
    if (t == nullptr) {
      fail("curl_easy_init failed");
      return;
    }
    lag_hist_.record(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(now - when).count()));
    t->index = i;
    t->due = when;
    auto instances = json::array();
    auto first = static_cast<size_t>((i * opt_.batch) % rows_.size());
    for (size_t k = 0; k < opt_.batch; ++k) {
      auto row =
          rows_.values.begin() + static_cast<ptrdiff_t>(((first + k) % rows_.size()) * rows_.width);
      instances.push_back(json::array_t(row, row + static_cast<ptrdiff_t>(rows_.width)));
    }
    json body = {{"instances", std::move(instances)}};
    if (opt_.sessions != 0)
      body["key"] = "s" + std::to_string(i % opt_.sessions);
    t->body = body.dump();
    t->url = static_cast<size_t>(i % opt_.urls.size());
    t->tries = 0;
    if (send(*t, now))
      ++tally_.sent;
  }

  /// Sends `t` (again) to its current URL; false when it could not.
  bool send(transfer& t, clock_type::time_point now) {
    // The timeout counts from the due time, like the latency; with
    // --failover a try gets at most --try-timeout of it.
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(opt_.timeout - (now - t.due));
    if (opt_.failover && opt_.try_timeout.count() > 0)
      left =
          std::min(left, std::chrono::duration_cast<std::chrono::milliseconds>(opt_.try_timeout));
    ++t.tries;
    t.answer.clear();
    t.answer_too_large = false;
    t.error[0] = '\0';
    CURL* e = t.easy;
    curl_easy_setopt(e, CURLOPT_URL, opt_.urls[t.url].c_str());
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, t.body.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(t.body.size()));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(std::max<int64_t>(1, left.count())));
    if (curl_multi_add_handle(multi_, e) != CURLM_OK) {
      idle_.push_back(&t);
      fail("curl_multi_add_handle failed");
      return false;
    }
    ++in_flight_;
    return true;
  }

  /// Whether a finished try of `t` goes to the next URL (--failover): its
  /// router was unreachable, did not answer within --try-timeout, was
  /// overloaded or had no replica (503, 502), and time and URLs are left.
  bool fails_over(const transfer& t, CURLcode result, clock_type::time_point now) const {
    if (!opt_.failover || t.tries >= opt_.urls.size() || now - t.due >= opt_.timeout ||
        t.answer_too_large)
      return false;
    if (result != CURLE_OK)
      return true;
    long status = 0;
    curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
    // A router at its limit (503 overloaded) or without a replica (503, 502):
    // another router may well have room.
    return status == 502 || status == 503;
  }

  void fail(const std::string& cause) {
    ++tally_.failed;
    auto& causes = tally_.failed_by_cause;
    if (causes.count(cause) != 0 || causes.size() < max_causes)
      ++causes[cause];
    else
      ++causes["other causes"];
  }

  /// Takes every finished transfer out of the multi handle and counts its outcome.
  void collect() {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      CURL* e = msg->easy_handle;
      CURLcode result = msg->data.result; // msg is gone after remove_handle
      transfer* t = nullptr;
      curl_easy_getinfo(e, CURLINFO_PRIVATE, &t);
      curl_multi_remove_handle(multi_, e);
      --in_flight_;
      auto now = clock_type::now();
      if (fails_over(*t, result, now)) {
        t->url = (t->url + 1) % opt_.urls.size();
        ++tally_.failed_over;
        send(*t, now);
        continue;
      }
      finish(*t, result, now);
      idle_.push_back(t);
    }
  }

  void finish(const transfer& t, CURLcode result, clock_type::time_point now) {
    if (result == CURLE_OPERATION_TIMEDOUT) {
      ++tally_.timeouts;
      return;
    }
    if (result != CURLE_OK) {
      fail(transport_cause(t, result));
      return;
    }
    long status = 0;
    curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
    json answer = json::parse(t.answer, nullptr, false);
    if (status != 200) {
      std::string cause;
      if (answer.is_object()) {
        auto it = answer.find("cause");
        if (it != answer.end() && it->is_string())
          cause = printable(it->get_ref<const std::string&>());
      }
      if (status == 503 && cause == "overloaded")
        ++tally_.overloaded;
      else
        fail("HTTP " + std::to_string(status) + (cause.empty() ? "" : " " + cause));
      return;
    }
    if (!answer.is_object()) {
      fail("HTTP 200 without a JSON object");
      return;
    }
    auto version = answer.find("version");
    auto predictions = answer.find("predictions");
    if (version == answer.end() || !version->is_number_integer() || predictions == answer.end() ||
        !predictions->is_array() || predictions->size() != opt_.batch ||
        !std::all_of(predictions->begin(), predictions->end(),
                     [](const json& p) { return p.is_number_integer(); })) {
      fail("HTTP 200 without a version and " + std::to_string(opt_.batch) + " predictions");
      return;
    }
    auto v = version->get<int64_t>();
    ++tally_.ok;
    ++tick_ok_;
    auto latency = static_cast<uint64_t>(std::max<int64_t>(
        0, std::chrono::duration_cast<std::chrono::nanoseconds>(now - t.due).count()));
    run_hist_.record(latency);
    tick_hist_.record(latency);
    ++tally_.versions[v];
    if (opt_.sessions != 0) {
      auto& highest = highest_[t.index % opt_.sessions];
      if (v < highest)
        ++tally_.regressions;
      else
        highest = v;
    }
    auto first = static_cast<size_t>((t.index * opt_.batch) % rows_.size());
    for (size_t k = 0; k < opt_.batch; ++k) {
      size_t row = (first + k) % rows_.size();
      auto label = (*predictions)[k].get<int64_t>();
      ++tally_.predicted;
      if (label == rows_.labels[row])
        ++tally_.matching;
      if (answers_ != nullptr)
        std::fprintf(answers_, "%zu %" PRId64 " %" PRId64 "\n", row, label, v);
    }
  }

  static std::string transport_cause(const transfer& t, CURLcode result) {
    if (t.answer_too_large)
      return "answer over " + std::to_string(max_answer_bytes >> 20) + " MiB";
    if (result == CURLE_COULDNT_CONNECT) {
      long os_errno = 0;
      curl_easy_getinfo(t.easy, CURLINFO_OS_ERRNO, &os_errno);
      if (os_errno != 0)
        return std::string{"connect: "} + std::strerror(static_cast<int>(os_errno));
    }
    // These name the OS reason ("Recv failure: Connection reset by peer") and nothing variable.
    if ((result == CURLE_RECV_ERROR || result == CURLE_SEND_ERROR) && t.error[0] != '\0')
      return printable(t.error);
    return curl_easy_strerror(result);
  }

  /// Once a second: the live line, and the last second's figures start again.
  void tick(clock_type::time_point now) {
    if (opt_.live)
      print_live(now);
    tick_hist_.clear();
    tick_ok_ = 0;
    tick_start_ = now;
  }

  void print_live(clock_type::time_point now) {
    double elapsed = std::chrono::duration<double>(now - t0_).count();
    double interval = std::chrono::duration<double>(now - tick_start_).count();
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%.0fs  sent %" PRIu64 "  ok %" PRIu64 "  overloaded %" PRIu64
                  "  failed %" PRIu64,
                  elapsed, tally_.sent, tally_.ok, tally_.overloaded, tally_.failed);
    std::string line = buf;
    if (tally_.failed != 0) {
      // The two commonest causes.
      std::vector<std::pair<uint64_t, std::string>> causes;
      for (auto& [cause, n] : tally_.failed_by_cause)
        causes.emplace_back(n, cause);
      std::sort(causes.rbegin(), causes.rend());
      line += " (";
      for (size_t i = 0; i < causes.size() && i < 2; ++i)
        line += (i == 0 ? "" : ", ") + causes[i].second + " " + std::to_string(causes[i].first);
      line += causes.size() > 2 ? ", ...)" : ")";
    }
    if (tally_.timeouts != 0)
      line += "  timeouts " + std::to_string(tally_.timeouts);
    if (tally_.dropped != 0)
      line += "  dropped " + std::to_string(tally_.dropped);
    std::snprintf(buf, sizeof buf, "  rps %.0f/%.0f",
                  interval > 0 ? static_cast<double>(tick_ok_) / interval : 0.0, opt_.rate);
    line += buf;
    if (tick_hist_.count() != 0)
      line += "  p50 " + format_ms(tick_hist_.quantile(0.5)) + " p99 " +
              format_ms(tick_hist_.quantile(0.99)) + " max " + format_ms(tick_hist_.max());
    else
      line += "  p50 - p99 - max -";
    // A wrapped line could not be cleared with \r.
    winsize ws{};
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 && line.size() >= ws.ws_col)
      line.resize(ws.ws_col - 1u);
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    std::fflush(stderr);
    live_shown_ = true;
  }

  void clear_live() {
    if (live_shown_) {
      std::fprintf(stderr, "\r\033[K");
      std::fflush(stderr);
      live_shown_ = false;
    }
  }

  const options& opt_;
  const data_rows& rows_;
  std::FILE* answers_;
  CURLM* multi_ = nullptr;
  curl_slist* headers_ = nullptr;
  int timer_ = -1;
  std::vector<std::unique_ptr<transfer>> transfers_;
  std::vector<transfer*> idle_;
  size_t in_flight_ = 0;
  /// The highest version each session has seen in an answer.
  std::vector<int64_t> highest_;
  tally tally_;
  latency_histogram run_hist_;
  latency_histogram tick_hist_;
  latency_histogram lag_hist_;
  uint64_t tick_ok_ = 0;
  clock_type::time_point t0_;
  clock_type::time_point tick_start_;
  clock_type::time_point end_;
  bool live_shown_ = false;
  bool interrupted_ = false;
  uint64_t not_sent_ = 0;
  uint64_t abandoned_ = 0;
};

/// "" for an http(s) URL, else what is wrong with it.
std::string check_url(const std::string& url) {
  std::unique_ptr<CURLU, void (*)(CURLU*)> handle{curl_url(), curl_url_cleanup};
  if (!handle)
    return "out of memory";
  CURLUcode rc = curl_url_set(handle.get(), CURLUPART_URL, url.c_str(), 0);
  if (rc != CURLUE_OK) {
#if LIBCURL_VERSION_NUM >= 0x075000
    return std::string{"not a URL: "} + curl_url_strerror(rc);
#else
    return "not a URL (curl_url_set error " + std::to_string(static_cast<int>(rc)) + ")";
#endif
  }
  char* scheme = nullptr;
  if (curl_url_get(handle.get(), CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
    return "not a URL: no scheme";
  std::string s = scheme;
  curl_free(scheme);
  if (s != "http" && s != "https")
    return "scheme " + s + " is not http or https";
  return {};
}

/// Lets every transfer in flight hold a socket: raises the soft open-file limit toward the hard
/// one.
void raise_open_file_limit(size_t wanted) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= wanted)
    return;
  limit.rlim_cur =
      limit.rlim_max == RLIM_INFINITY ? wanted : std::min<rlim_t>(wanted, limit.rlim_max);
  setrlimit(RLIMIT_NOFILE, &limit);
}

void print_summary(const options& opt, const generator& gen, double duration_s) {
  const auto& r = gen.result();
  const auto& h = gen.latencies();
  double elapsed = gen.elapsed_s();
  std::printf("%s: %" PRIu64 " requests due at %g/s", program_name, opt.total, opt.rate);
  if (duration_s > 0)
    std::printf(" for %gs", duration_s);
  std::printf(", batch %zu, %zu URL%s%s\n", opt.batch, opt.urls.size(),
              opt.urls.size() == 1 ? "" : "s",
              opt.sessions != 0 ? (", " + std::to_string(opt.sessions) + " sessions").c_str() : "");
  auto row = [](const char* name, uint64_t n) { std::printf("  %-24s %10" PRIu64 "\n", name, n); };
  row("requests sent", r.sent);
  row("answered ok", r.ok);
  row("overloaded", r.overloaded);
  row("failed", r.failed);
  for (auto& [cause, n] : r.failed_by_cause)
    std::printf("    %-40s %" PRIu64 "\n", cause.c_str(), n);
  row("timeouts", r.timeouts);
  row("dropped by the generator", r.dropped);
  if (opt.failover)
    row("failed over (tries)", r.failed_over);
  row("version regressions", r.regressions);
  std::printf("  %-24s %10.1f ok/s over %.2fs\n", "throughput",
              elapsed > 0 ? static_cast<double>(r.ok) / elapsed : 0.0, elapsed);
  if (h.count() != 0)
    std::printf("  %-24s p50 %s  p90 %s  p99 %s  max %s\n", "latency (ok answers)",
                format_ms(h.quantile(0.5)).c_str(), format_ms(h.quantile(0.9)).c_str(),
                format_ms(h.quantile(0.99)).c_str(), format_ms(h.max()).c_str());
  else
    std::printf("  %-24s -\n", "latency (ok answers)");
  std::printf("  %-24s", "versions seen");
  if (r.versions.empty())
    std::printf(" -");
  const char* separator = " ";
  for (auto& [version, n] : r.versions) {
    std::printf("%s%" PRId64 ": %" PRIu64, separator, version, n);
    separator = ", ";
  }
  std::printf("\n");
  if (r.predicted != 0)
    std::printf("  %-24s %.1f%% of %" PRIu64 " predictions\n", "label agreement",
                100.0 * static_cast<double>(r.matching) / static_cast<double>(r.predicted),
                r.predicted);
  const auto& lag = gen.send_lags();
  if (lag.count() != 0)
    std::printf("  %-24s p50 %s  p99 %s  max %s (the generator's own delay)\n", "send lag",
                format_ms(lag.quantile(0.5)).c_str(), format_ms(lag.quantile(0.99)).c_str(),
                format_ms(lag.max()).c_str());
  if (gen.interrupted())
    std::printf("  interrupted: %" PRIu64 " in flight abandoned, %" PRIu64 " not sent\n",
                gen.abandoned(), gen.not_sent());
}

void print_json(const generator& gen) {
  const auto& r = gen.result();
  const auto& h = gen.latencies();
  auto ms_or_null = [&](uint64_t ns) { return h.count() != 0 ? json(json_ms(ns)) : json(nullptr); };
  nlohmann::ordered_json failed = nlohmann::ordered_json::object();
  for (auto& [cause, n] : r.failed_by_cause)
    failed[cause] = n;
  nlohmann::ordered_json versions = nlohmann::ordered_json::object();
  for (auto& [version, n] : r.versions)
    versions[std::to_string(version)] = n;
  double elapsed = gen.elapsed_s();
  nlohmann::ordered_json line;
  line["sent"] = r.sent;
  line["ok"] = r.ok;
  line["overloaded"] = r.overloaded;
  line["failed"] = std::move(failed);
  line["timeouts"] = r.timeouts;
  line["dropped"] = r.dropped;
  line["failed_over"] = r.failed_over;
  line["regressions"] = r.regressions;
  line["p50_ms"] = ms_or_null(h.quantile(0.5));
  line["p90_ms"] = ms_or_null(h.quantile(0.9));
  line["p99_ms"] = ms_or_null(h.quantile(0.99));
  line["max_ms"] = ms_or_null(h.max());
  line["versions"] = std::move(versions);
  line["elapsed_s"] = std::round(elapsed * 1e3) / 1e3;
  line["ok_per_s"] = elapsed > 0 ? std::round(static_cast<double>(r.ok) / elapsed * 10) / 10 : 0.0;
  if (gen.interrupted())
    line["interrupted"] = true;
  std::printf("%s\n", line.dump().c_str());
}

} // namespace

int main(int argc, char** argv) {
  // Before any thread starts (curl's resolver threads too): Ctrl-C ends the run with its summary.
  interrupt_watch interrupt;
  std::signal(SIGPIPE, SIG_IGN);

  CLI::App app{"serving_loadgen: open-loop load for a serving deployment's JSON API", program_name};
  options opt;
  std::string duration_text, timeout_text = "5s", try_timeout_text = "500ms", data_path,
                             answers_path;
  uint64_t requests = 0;
  double scale = 1.0 / 16;
  bool quiet = false, live = false, print_json_line = false;
  app.add_option("--url", opt.urls,
                 "where to POST (repeat it to send round-robin to several routers)")
      ->required();
  app.add_option("--rate", opt.rate, "requests per second, sent on schedule (open loop)")
      ->capture_default_str();
  auto* duration_opt =
      app.add_option("--duration", duration_text, "how long to send: 10s, 500ms, 2m (default 10s)");
  auto* requests_opt = app.add_option("--requests", requests, "how many requests to send")
                           ->check(CLI::PositiveNumber);
  duration_opt->excludes(requests_opt);
  app.add_option("--data", data_path,
                 "inputs: CSV, gzip or plain, each line the values then the label")
      ->default_str("examples/data/digits.csv.gz");
  app.add_option("--scale", scale, "multiplies every input value (1/16 maps pixels 0..16 to 0..1)")
      ->capture_default_str();
  app.add_option("--batch", opt.batch, "instances per request")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  app.add_option("--sessions", opt.sessions,
                 "send key \"s<i % K>\" with request i, and count version regressions per key")
      ->check(CLI::Range(uint64_t{1}, uint64_t{10'000'000}));
  app.add_option("--timeout", timeout_text,
                 "a request unanswered this long after its due time "
                 "counts as a timeout")
      ->capture_default_str();
  app.add_flag("--failover", opt.failover,
               "as a client of several routers should: a try whose router is unreachable, does "
               "not answer within --try-timeout, is overloaded or has no replica goes to the "
               "next --url");
  app.add_option("--try-timeout", try_timeout_text,
                 "with --failover: how long one try may take before the next URL gets it")
      ->capture_default_str();
  app.add_option("--max-in-flight", opt.max_in_flight,
                 "requests outstanding at most; one due beyond is dropped by the generator")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--answers", answers_path,
                 "FILE: one line per answered instance: <row> <predicted label> <version>");
  auto* quiet_opt = app.add_flag("--quiet", quiet, "no live line");
  app.add_flag("--live", live, "the live line even when stderr is not a terminal")
      ->excludes(quiet_opt);
  app.add_flag("--json", print_json_line, "end with the summary as one JSON line");
  app.add_flag("--spin", opt.spin,
               "never sleep (takes a core): sends on time to the microsecond where waking from "
               "sleep is slow");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto usage = [](const std::string& what) {
    std::fprintf(stderr, "%s: %s\n", program_name, what.c_str());
    return 2;
  };

  if (!std::isfinite(opt.rate) || opt.rate <= 0)
    return usage("--rate must be a positive number of requests per second");
  double duration_s = 0;
  if (requests != 0) {
    opt.total = requests;
  } else {
    auto d = parse_duration(duration_text.empty() ? "10s" : duration_text);
    if (!d || d->count() <= 0)
      return usage("--duration " + duration_text +
                   ": not a positive duration (e.g. 10s, 500ms, 2m)");
    duration_s = std::chrono::duration<double>(*d).count();
    double count = std::ceil(duration_s * opt.rate - 1e-9);
    if (count > 1e15)
      return usage("--duration x --rate: too many requests");
    opt.total = std::max<uint64_t>(1, static_cast<uint64_t>(count));
  }
  auto timeout = parse_duration(timeout_text);
  if (!timeout || timeout->count() <= 0)
    return usage("--timeout " + timeout_text + ": not a positive duration (e.g. 5s, 500ms)");
  opt.timeout = *timeout;
  auto try_timeout = parse_duration(try_timeout_text);
  if (!try_timeout || try_timeout->count() <= 0)
    return usage("--try-timeout " + try_timeout_text + ": not a positive duration (e.g. 500ms)");
  opt.try_timeout = *try_timeout;
  if (!std::isfinite(scale))
    return usage("--scale must be a finite number");
  for (auto& url : opt.urls)
    if (auto err = check_url(url); !err.empty())
      return usage("--url " + url + ": " + std::move(err));

  if (data_path.empty())
    data_path = understudy::examples::default_digits_path();
  data_rows rows;
  if (auto err = load_rows(data_path, scale, rows); !err.empty())
    return usage(err);

  std::unique_ptr<std::FILE, int (*)(std::FILE*)> answers{nullptr, std::fclose};
  if (!answers_path.empty()) {
    answers.reset(std::fopen(answers_path.c_str(), "w"));
    if (!answers)
      return usage(answers_path + ": cannot write: " + std::strerror(errno));
  }

  opt.live = !quiet && (live || isatty(STDERR_FILENO) != 0);
  raise_open_file_limit(opt.max_in_flight + 64);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    std::fprintf(stderr, "%s: curl_global_init failed\n", program_name);
    return 1;
  }
  int status = 0;
  {
    generator gen{opt, rows, answers.get()};
    if (!gen.ready()) {
      std::fprintf(stderr, "%s: cannot set up libcurl\n", program_name);
      status = 1;
    } else {
      gen.run(interrupt);
      print_summary(opt, gen, duration_s);
      if (print_json_line)
        print_json(gen);
      std::fflush(stdout);
      const auto& r = gen.result();
      status = r.failed != 0 || r.timeouts != 0 || r.regressions != 0 ? 1 : 0;
    }
  }
  curl_global_cleanup();
  if (answers && (std::fflush(answers.get()) != 0 || std::ferror(answers.get()) != 0)) {
    std::fprintf(stderr, "%s: %s: write failed: %s\n", program_name, answers_path.c_str(),
                 std::strerror(errno));
    status = std::max(status, 1);
  }
  return status;
}
