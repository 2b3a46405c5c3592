// The failover figures of bench_serving: child processes (digits_serving,
// serving_loadgen, nginx), the windows of load around a kill, and their figures.

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "child_groups.hpp"
#include "serving_bench.hpp"

namespace serving_bench {

namespace {

using bench::figure;
using bench::fixed;
using bench::make_figure;
using bench::median;
using bench::spread;
using json = nlohmann::json;

// -- child processes -----------------------------------------------------------------------

/// The scratch directory, for the signal handler to remove ("" when none).
char scratch_path[256];

extern "C" void on_fatal_signal(int sig) {
  bench::kill_child_groups();
  // Reap them (the bench is their subreaper), so that no zombie is left to an init.
  for (int i = 0; i < 1000; ++i) {
    auto r = ::waitpid(-1, nullptr, WNOHANG);
    if (r < 0)
      break;
    if (r == 0) {
      timespec ts{0, 1000000};
      ::nanosleep(&ts, nullptr);
    }
  }
  if (scratch_path[0] != '\0') {
    pid_t rm = ::fork();
    if (rm == 0) {
      ::execl("/bin/rm", "rm", "-rf", scratch_path, static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (rm > 0)
      ::waitpid(rm, nullptr, 0);
  }
  ::_exit(128 + sig);
}

/// One line of a child's stdout and when the bench read it.
struct timed_line {
  clock_type::time_point at;
  std::string text;
};

/// A child process in a process group of its own (nginx's workers die with it), killed
/// with its group when this goes. Its stdout is read line by line into a list (each
/// line timestamped) or goes to a file; stderr goes to `log_file`. Owned by one thread.
class child_process {
public:
  /// Starts `argv` (argv[0] a path). `out_file` empty: stdout is read into lines().
  child_process(const std::vector<std::string>& argv, const std::string& out_file,
                const std::string& log_file) {
    int out[2] = {-1, -1};
    if (out_file.empty() && ::pipe2(out, O_CLOEXEC) != 0)
      throw bench_failure(std::string{"pipe: "} + std::strerror(errno));
    int out_fd = out_file.empty()
                     ? out[1]
                     : ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0 || log_fd < 0)
      throw bench_failure("cannot open " + log_file + ": " + std::strerror(errno));
    std::vector<char*> args;
    for (const auto& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls from here to exec.
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) // the bench died before the line above
        ::_exit(1);
      ::dup2(out_fd, STDOUT_FILENO);
      ::dup2(log_fd, STDERR_FILENO);
      int null_fd = ::open("/dev/null", O_RDONLY);
      if (null_fd >= 0)
        ::dup2(null_fd, STDIN_FILENO);
      ::syscall(SYS_close_range, 3U, ~0U, 0U);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    int fork_errno = errno;
    ::close(log_fd);
    ::close(out_fd);
    if (pid_ < 0) {
      if (out[0] >= 0)
        ::close(out[0]);
      throw bench_failure(std::string{"fork: "} + std::strerror(fork_errno));
    }
    ::setpgid(pid_, pid_); // also here: no race with a kill of the group right away
    bench::add_child_group(pid_);
    if (out[0] >= 0)
      reader_ = std::thread([this, fd = out[0]] { read_lines(fd); });
  }

  ~child_process() {
    kill_group();
    if (reader_.joinable())
      reader_.join();
  }

  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  pid_t pid() const noexcept { return pid_; }

  /// Sends `sig` to the child only.
  void signal(int sig) const {
    if (!reaped_)
      ::kill(pid_, sig);
  }

  /// SIGKILLs the whole group and reaps it. Returns when it was killed.
  clock_type::time_point kill_group() {
    auto at = clock_type::now();
    if (!reaped_) {
      ::kill(-pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      reaped_ = true;
      status_ = status;
      reap_group();
      bench::remove_child_group(pid_);
    }
    return at;
  }

  /// Sends `sig` to the child and waits up to `timeout` for it to exit; then kills
  /// what is left of its group.
  void stop(int sig, std::chrono::milliseconds timeout) {
    signal(sig);
    wait_for(timeout);
    kill_group();
  }

  /// Waits up to `timeout` for the child to exit; its wait status, or none.
  std::optional<int> wait_for(std::chrono::milliseconds timeout) {
    auto deadline = clock_type::now() + timeout;
    while (!reaped_) {
      int status = 0;
      auto rc = ::waitpid(pid_, &status, WNOHANG);
      if (rc == pid_) {
        reaped_ = true;
        status_ = status;
        ::kill(-pid_, SIGKILL); // anything it left in its group
        reap_group();
        bench::remove_child_group(pid_);
        break;
      }
      if (clock_type::now() >= deadline)
        return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return status_;
  }

  /// The first line from `from` on that starts with `prefix`, waiting up to `timeout`.
  std::optional<timed_line> wait_line(const std::string& prefix, std::chrono::milliseconds timeout,
                                      size_t from = 0) {
    std::unique_lock<std::mutex> guard{mtx_};
    auto deadline = clock_type::now() + timeout;
    for (;;) {
      for (size_t i = from; i < lines_.size(); ++i)
        if (lines_[i].text.rfind(prefix, 0) == 0)
          return lines_[i];
      if (eof_ || cv_.wait_until(guard, deadline) == std::cv_status::timeout) {
        for (size_t i = from; i < lines_.size(); ++i)
          if (lines_[i].text.rfind(prefix, 0) == 0)
            return lines_[i];
        return std::nullopt;
      }
    }
  }

  /// Waits until its stdout is closed (up to `timeout`); all lines read.
  std::vector<timed_line> lines(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> guard{mtx_};
    cv_.wait_for(guard, timeout, [this] { return eof_; });
    return lines_;
  }

private:
  /// Reaps what the child left in its group (nginx's workers), which the bench, as the
  /// subreaper, inherits: waits (up to 2 s) until the killed group is gone.
  void reap_group() {
    auto deadline = clock_type::now() + std::chrono::seconds(2);
    while (::kill(-pid_, 0) == 0 && clock_type::now() < deadline) {
      int status = 0;
      if (::waitpid(-pid_, &status, WNOHANG) <= 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  void read_lines(int fd) {
    std::string pending;
    char buf[4096];
    for (;;) {
      auto n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      auto now = clock_type::now();
      pending.append(buf, static_cast<size_t>(n));
      size_t nl = 0;
      std::lock_guard<std::mutex> guard{mtx_};
      while ((nl = pending.find('\n')) != std::string::npos) {
        lines_.push_back({now, pending.substr(0, nl)});
        pending.erase(0, nl + 1);
      }
      cv_.notify_all();
    }
    ::close(fd);
    std::lock_guard<std::mutex> guard{mtx_};
    if (!pending.empty())
      lines_.push_back({clock_type::now(), pending});
    eof_ = true;
    cv_.notify_all();
  }

  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::thread reader_;
  std::mutex mtx_;
  std::condition_variable cv_;
  std::vector<timed_line> lines_;
  bool eof_ = false;
};

// -- helpers -------------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1 (bound and released: a small race, fine on loopback).
uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw bench_failure(std::string{"no free port: "} + std::strerror(errno));
  ::close(fd);
  return ntohs(addr.sin_port);
}

size_t append_body(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

/// GET `url`: the status (0: no answer) and the body.
std::pair<long, std::string> http_get(const std::string& url) {
  std::pair<long, std::string> out{0, {}};
  CURL* c = curl_easy_init();
  if (c == nullptr)
    return out;
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 2000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, append_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &out.second);
  if (curl_easy_perform(c) == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out.first);
  curl_easy_cleanup(c);
  return out;
}

/// "http://127.0.0.1:PORT" of a "serving: ... on http://...:PORT/v1/models/digits:predict" line.
std::string base_url_of(const std::string& line) {
  auto at = line.find("http://");
  auto end = line.find("/v1/models/", at);
  if (at == std::string::npos || end == std::string::npos)
    throw bench_failure("no URL in digits_serving's line: " + line);
  return line.substr(at, end - at);
}

uint16_t port_of(const std::string& base_url) {
  return static_cast<uint16_t>(std::stoi(base_url.substr(base_url.rfind(':') + 1)));
}

/// The number after `key` in `line` ("retried 3" -> 3), or -1.
long long number_after(const std::string& line, const std::string& key) {
  auto at = line.find(key);
  if (at == std::string::npos)
    return -1;
  return std::atoll(line.c_str() + at + key.size());
}

std::string read_file(const std::string& path) {
  std::ifstream in{path};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// The last `n` lines of `text`, joined by " | ".
std::string tail_of(const std::string& text, size_t n) {
  std::vector<std::string> lines;
  std::stringstream in{text};
  for (std::string l; std::getline(in, l);)
    if (!l.empty())
      lines.push_back(l);
  std::string out;
  for (size_t i = lines.size() > n ? lines.size() - n : 0; i < lines.size(); ++i)
    out += (out.empty() ? "" : " | ") + lines[i];
  return out;
}

std::string find_nginx() {
  for (const char* p : {"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"})
    if (::access(p, X_OK) == 0)
      return p;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream in{path};
    for (std::string dir; std::getline(in, dir, ':');) {
      auto p = dir + "/nginx";
      if (!dir.empty() && ::access(p.c_str(), X_OK) == 0)
        return p;
    }
  }
  return {};
}

/// The bench's scratch directory under /tmp, removed at the end.
class scratch_dir {
public:
  scratch_dir() {
    char templ[] = "/tmp/bench-serving-XXXXXX";
    if (::mkdtemp(templ) == nullptr)
      throw bench_failure(std::string{"mkdtemp: "} + std::strerror(errno));
    path_ = templ;
    std::snprintf(scratch_path, sizeof scratch_path, "%s", templ);
  }
  ~scratch_dir() {
    scratch_path[0] = '\0';
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
  std::string sub(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const noexcept { return path_; }

private:
  std::string path_;
};

// -- load windows ----------------------------------------------------------------------------

/// What serving_loadgen reported for one window (its JSON line).
struct window {
  uint64_t sent = 0;
  uint64_t ok = 0;
  uint64_t overloaded = 0;
  uint64_t failed = 0;
  uint64_t timeouts = 0;
  uint64_t dropped = 0;
  std::string causes;
  double p50_ms = 0;
  double p99_ms = 0;
  double max_ms = 0;
  /// When serving_loadgen was started.
  clock_type::time_point started;
};

/// Runs serving_loadgen against `url` at `rate` for `seconds`; `at_offset`, if set, is
/// called `offset_s` after the start (the kill).
window run_loadgen(const std::string& loadgen, const std::string& url, double rate, double seconds,
                   const std::string& log_file, const std::function<void()>& at_offset = {},
                   double offset_s = 0) {
  char rate_text[32];
  std::snprintf(rate_text, sizeof rate_text, "%g", rate);
  auto duration = std::to_string(static_cast<long>(std::lround(seconds * 1000))) + "ms";
  window w;
  w.started = clock_type::now();
  child_process gen{{loadgen, "--url", url, "--rate", rate_text, "--duration", duration, "--json",
                     "--quiet", "--timeout", "5s"},
                    "",
                    log_file};
  if (at_offset) {
    std::this_thread::sleep_until(
        w.started + std::chrono::microseconds(static_cast<long>(std::lround(offset_s * 1e6))));
    at_offset();
  }
  auto status = gen.wait_for(std::chrono::milliseconds(static_cast<long>(seconds * 1000) + 15000));
  if (!status)
    throw bench_failure("serving_loadgen did not finish: " + tail_of(read_file(log_file), 3));
  auto lines = gen.lines(std::chrono::seconds(2));
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (it->text.empty() || it->text.front() != '{')
      continue;
    auto doc = json::parse(it->text, nullptr, false);
    if (doc.is_discarded())
      break;
    auto num = [&](const char* key) {
      const auto& v = doc[key];
      return v.is_number() ? v.get<double>() : 0.0;
    };
    w.sent = static_cast<uint64_t>(num("sent"));
    w.ok = static_cast<uint64_t>(num("ok"));
    w.overloaded = static_cast<uint64_t>(num("overloaded"));
    w.timeouts = static_cast<uint64_t>(num("timeouts"));
    w.dropped = static_cast<uint64_t>(num("dropped"));
    for (auto& [cause, n] : doc["failed"].items()) {
      w.failed += n.get<uint64_t>();
      w.causes += (w.causes.empty() ? "" : ", ") + cause + " " + std::to_string(n.get<uint64_t>());
    }
    w.p50_ms = num("p50_ms");
    w.p99_ms = num("p99_ms");
    w.max_ms = num("max_ms");
    return w;
  }
  throw bench_failure("no JSON line from serving_loadgen (exit status " + std::to_string(*status) +
                      "): " + tail_of(read_file(log_file), 3));
}

/// One round of one side: a steady window and a window with a kill in its middle.
struct round_result {
  window steady;
  window killed;
  /// Seconds from the killed window's start to the kill.
  double kill_offset_s = 0;
  /// What was killed, and what the deployment said about it.
  std::string victim;
  std::string detail;
  /// Whether the victim took requests when it was killed (a replica in rotation).
  bool victim_serving = true;
  /// Requests the router re-sent to another replica (understudy; -1: not known).
  long long retried = -1;
};

/// Fixed timings of every round: unrecorded warm-up, the windows, the kill's offset.
constexpr double warmup_s = 0.5;
constexpr double window_s = 1.0;
constexpr double kill_offset_s = 0.5;
/// digits_serving's --crash-every: its first kill comes this long after it serves.
constexpr double crash_period_s = 3.0;

struct programs {
  std::string digits_serving;
  std::string loadgen;
  std::string nginx;
};

/// digits_serving's first fault victim for `seed`: it picks "replica-<mt19937_64(seed)() % n>"
/// of its n replicas and standbys.
size_t first_victim(uint64_t seed, size_t n) {
  std::mt19937_64 rng{seed};
  return static_cast<size_t>(rng() % n);
}

/// The smallest seed above `after` whose first victim is `victim` of 3.
uint64_t seed_for(size_t victim, uint64_t after) {
  uint64_t s = after + 1;
  while (first_victim(s, 3) != victim)
    ++s;
  return s;
}

/// The replicas' states ("replica-0" -> "standby", ...) from GET /v1/models/digits.
std::vector<std::string> replica_states(const std::string& base) {
  std::vector<std::string> out;
  auto doc = json::parse(http_get(base + "/v1/models/digits").second, nullptr, false);
  if (!doc.is_object() || !doc["replicas"].is_array())
    return out;
  for (const auto& rep : doc["replicas"]) {
    auto id = rep["id"].get<std::string>();
    auto i = static_cast<size_t>(std::atoi(id.c_str() + std::string{"replica-"}.size()));
    if (out.size() <= i)
      out.resize(i + 1);
    out[i] = rep["state"].get<std::string>();
  }
  return out;
}

/// Starts digits_serving with `args` and waits until it serves; returns its base URL.
std::string start_serving(child_process& p, const std::string& log) {
  auto line = p.wait_line("serving:", std::chrono::seconds(30));
  if (!line)
    throw bench_failure("digits_serving did not start serving (log " + log +
                        "): " + tail_of(read_file(log), 3));
  return base_url_of(line->text);
}

// -- understudy ------------------------------------------------------------------------------

round_result understudy_round(const programs& prog, const scratch_dir& dir, size_t r,
                              uint64_t& seed, double rate) {
  round_result out;
  auto log = dir.sub("understudy-" + std::to_string(r) + ".log");
  // digits_serving kills a random one of its 3 replicas, the standby too, whose loss no
  // request would see. Its victim follows from --seed and is known here; who is the
  // standby is known once it serves (replica-0 in every start seen). So: a seed whose
  // first victim is in rotation, checked, and a new start with another seed if not.
  size_t victim = 1 + r % 2;
  std::unique_ptr<child_process> srv;
  std::optional<timed_line> first;
  std::vector<std::string> states;
  for (int attempt = 0; attempt < 4; ++attempt) {
    seed = seed_for(victim, seed);
    srv = std::make_unique<child_process>(
        std::vector<std::string>{prog.digits_serving, "--state-dir", dir.sub("state"),
                                 "--train-steps", "200", "--port", "0", "--replicas", "2",
                                 "--standbys", "1", "--crash-every",
                                 std::to_string(static_cast<long>(crash_period_s * 1000)) + "ms",
                                 "--for", "30s", "--seed", std::to_string(seed)},
        "", log);
    first = srv->wait_line("serving:", std::chrono::seconds(30));
    if (!first)
      throw bench_failure("digits_serving did not start serving (log " + log +
                          "): " + tail_of(read_file(log), 3));
    auto base = base_url_of(first->text);
    // Ready: 2 in rotation and the standby loaded (milliseconds after it serves).
    for (int i = 0; i < 200; ++i) {
      states = replica_states(base);
      if (std::count(states.begin(), states.end(), "active") == 2 &&
          std::count(states.begin(), states.end(), "standby") == 1)
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (victim < states.size() && states[victim] == "active")
      break;
    for (size_t i = 0; i < states.size(); ++i)
      if (states[i] == "active")
        victim = i;
    srv.reset();
  }
  if (!srv)
    throw bench_failure("digits_serving: no start with its first victim in rotation");
  auto t0 = first->at;
  auto base = base_url_of(first->text);
  auto url = base + "/v1/models/digits:predict";
  auto gen_log = dir.sub("loadgen-understudy-" + std::to_string(r) + ".log");
  run_loadgen(prog.loadgen, url, rate, warmup_s, gen_log);
  out.steady = run_loadgen(prog.loadgen, url, rate, window_s, gen_log);
  // Who is in rotation now, to tell whether the coming kill hits one.
  states = replica_states(base);
  std::this_thread::sleep_until(
      t0 + std::chrono::milliseconds(static_cast<long>((crash_period_s - kill_offset_s) * 1000)));
  out.killed = run_loadgen(prog.loadgen, url, rate, window_s, gen_log);
  auto kill = srv->wait_line("fault: killed ", std::chrono::seconds(3));
  srv->signal(SIGINT);
  auto served = srv->wait_line("served:", std::chrono::seconds(10));
  srv->wait_for(std::chrono::seconds(5));
  if (!kill) {
    out.victim = "none";
    out.victim_serving = false;
    out.detail = "no kill seen";
    return out;
  }
  out.victim = kill->text.substr(std::string{"fault: killed "}.size());
  out.kill_offset_s = seconds_between(out.killed.started, kill->at);
  auto i = static_cast<size_t>(std::atoi(out.victim.c_str() + std::string{"replica-"}.size()));
  auto state = i < states.size() ? states[i] : "unknown";
  out.victim_serving = state == "active";
  out.detail = out.victim + " (" + state + ")";
  if (served) {
    out.retried = number_after(served->text, "retried ");
    out.detail += ", router: retried " + std::to_string(out.retried) + ", failed " +
                  std::to_string(number_after(served->text, "failed "));
  }
  return out;
}

// -- nginx -----------------------------------------------------------------------------------

std::string nginx_conf(const scratch_dir& dir, uint16_t listen, const std::vector<uint16_t>& ups) {
  std::string servers;
  for (auto p : ups)
    servers += "    server 127.0.0.1:" + std::to_string(p) + " max_fails=1 fail_timeout=10s;\n";
  auto d = dir.path() + "/nginx";
  return std::string{::geteuid() == 0 ? "user root;\n" : ""} +
         "worker_processes 1;\n"
         "pid " +
         d + "/nginx.pid;\n" + "error_log " + d +
         "/error.log warn;\n"
         "events { worker_connections 1024; }\n"
         "http {\n"
         "  access_log off;\n"
         "  client_body_temp_path " +
         d + "/body;\n  proxy_temp_path " + d + "/proxy;\n  fastcgi_temp_path " + d +
         "/fastcgi;\n  uwsgi_temp_path " + d + "/uwsgi;\n  scgi_temp_path " + d +
         "/scgi;\n"
         "  keepalive_requests 1000000;\n"
         "  upstream digits {\n" +
         servers +
         "    keepalive 32;\n"
         "    keepalive_requests 1000000;\n"
         "  }\n"
         "  server {\n"
         "    listen 127.0.0.1:" +
         std::to_string(listen) +
         ";\n"
         "    location / {\n"
         "      proxy_pass http://digits;\n"
         "      proxy_http_version 1.1;\n"
         "      proxy_set_header Connection \"\";\n"
         "      proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n"
         "      proxy_connect_timeout 1s;\n"
         "      proxy_read_timeout 5s;\n"
         "    }\n"
         "  }\n"
         "}\n";
}

round_result nginx_round(const programs& prog, const scratch_dir& dir, size_t r, double rate) {
  round_result out;
  std::vector<std::unique_ptr<child_process>> ups;
  std::vector<uint16_t> ports;
  std::vector<std::string> logs;
  for (size_t i = 0; i < 2; ++i) {
    logs.push_back(dir.sub("upstream-" + std::to_string(i) + "-" + std::to_string(r) + ".log"));
    ups.push_back(std::make_unique<child_process>(
        std::vector<std::string>{prog.digits_serving, "--state-dir",
                                 dir.sub("state-u" + std::to_string(i)), "--train-steps", "200",
                                 "--port", "0", "--replicas", "1", "--standbys", "0", "--for",
                                 "30s"},
        "", logs.back()));
  }
  for (size_t i = 0; i < ups.size(); ++i)
    ports.push_back(port_of(start_serving(*ups[i], logs[i])));
  auto nd = dir.path() + "/nginx";
  std::filesystem::create_directories(nd);
  auto listen = free_port();
  {
    std::ofstream conf{nd + "/nginx.conf"};
    conf << nginx_conf(dir, listen, ports);
  }
  std::filesystem::remove(nd + "/error.log");
  child_process nginx{{prog.nginx, "-p", nd, "-e", nd + "/error.log", "-c", nd + "/nginx.conf",
                       "-g", "daemon off;"},
                      nd + "/stdout.log",
                      nd + "/stderr.log"};
  auto base = "http://127.0.0.1:" + std::to_string(listen);
  bool ready = false;
  for (int i = 0; i < 500 && !ready; ++i) {
    ready = http_get(base + "/healthz").first == 200;
    if (!ready) {
      if (nginx.wait_for(std::chrono::milliseconds(0)))
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  if (!ready)
    throw bench_failure("nginx did not answer on " + base + ": " +
                        tail_of(read_file(nd + "/stderr.log"), 3) + " " +
                        tail_of(read_file(nd + "/error.log"), 3));
  auto url = base + "/v1/models/digits:predict";
  auto gen_log = dir.sub("loadgen-nginx-" + std::to_string(r) + ".log");
  run_loadgen(prog.loadgen, url, rate, warmup_s, gen_log);
  out.steady = run_loadgen(prog.loadgen, url, rate, window_s, gen_log);
  clock_type::time_point killed_at;
  out.killed = run_loadgen(
      prog.loadgen, url, rate, window_s, gen_log, [&] { killed_at = ups[0]->kill_group(); },
      kill_offset_s);
  out.kill_offset_s = seconds_between(out.killed.started, killed_at);
  out.victim = "upstream 0 (digits_serving pid " + std::to_string(ups[0]->pid()) + ")";
  // What nginx made of it: the lines its error log got (connect refused, upstream gone).
  auto errors = read_file(nd + "/error.log");
  size_t n = 0;
  for (size_t at = errors.find('\n'); at != std::string::npos; at = errors.find('\n', at + 1))
    ++n;
  // "... [warn] 1#1: *6 upstream server temporarily disabled while connecting to
  // upstream, client: ..." -> "connecting to upstream". "reading response header": a
  // request was in flight on the killed upstream (nginx sent it to the other one).
  auto at = errors.rfind("disabled while ");
  out.detail = "upstream 0, nginx: " + std::to_string(n) + " error.log lines";
  if (at != std::string::npos) {
    auto what = errors.substr(at + std::string{"disabled while "}.size());
    out.detail += ", disabled while " + what.substr(0, what.find_first_of(",\n"));
  }
  nginx.stop(SIGTERM, std::chrono::seconds(3)); // its master stops and reaps its workers
  ups[1]->stop(SIGINT, std::chrono::seconds(5));
  return out;
}

// -- figures ---------------------------------------------------------------------------------

void add_side_figures(const std::string& side, const std::vector<round_result>& rounds,
                      std::vector<figure>& figs) {
  std::vector<double> p99_kill, p99_steady, max_kill, max_steady;
  uint64_t failed = 0, timeouts = 0, steady_failed = 0, overloaded = 0, sent = 0;
  size_t serving_victims = 0;
  std::string causes, victims, offsets;
  std::map<std::string, size_t> details;
  long long retried = -1;
  for (const auto& r : rounds) {
    if (r.retried >= 0)
      retried = std::max(retried, 0LL) + r.retried;
    p99_kill.push_back(r.killed.p99_ms);
    p99_steady.push_back(r.steady.p99_ms);
    max_kill.push_back(r.killed.max_ms);
    max_steady.push_back(r.steady.max_ms);
    failed += r.killed.failed;
    timeouts += r.killed.timeouts;
    overloaded += r.killed.overloaded + r.steady.overloaded;
    steady_failed += r.steady.failed + r.steady.timeouts;
    sent += r.killed.sent;
    serving_victims += r.victim_serving ? 1 : 0;
    if (!r.killed.causes.empty())
      causes += (causes.empty() ? "" : "; ") + r.killed.causes;
    ++details[r.detail];
    offsets += (offsets.empty() ? "" : ", ") + fixed(r.kill_offset_s, 2);
  }
  for (const auto& [detail, count] : details)
    victims +=
        (victims.empty() ? "" : "; ") + detail + (count > 1 ? " x" + std::to_string(count) : "");
  figure f;
  f.name = "failover_failed_" + side;
  f.unit = "requests";
  f.value = static_cast<double>(failed + timeouts);
  f.has_baseline = false;
  f.decimals = 0;
  f.target = "0";
  f.met = failed + timeouts == 0;
  f.notes.push_back(std::to_string(rounds.size()) + " windows with a kill, " +
                    std::to_string(sent) + " requests sent: " + std::to_string(failed) +
                    " failed, " + std::to_string(timeouts) + " timed out" +
                    (causes.empty() ? "" : " (" + causes + ")") +
                    "; the steady windows: " + std::to_string(steady_failed) +
                    " failed or timed out; overloaded (503, "
                    "admission control) in all windows: " +
                    std::to_string(overloaded));
  f.notes.push_back("killed: " + std::to_string(serving_victims) + " of " +
                    std::to_string(rounds.size()) + " kills hit a replica taking requests" +
                    (retried >= 0 ? " (requests in flight there, re-sent by the router: " +
                                        std::to_string(retried) + ")"
                                  : "") +
                    "; " + victims);
  f.notes.push_back("kill at " + offsets + " s into its 1-s window");
  figs.push_back(f);
  auto p99 = make_figure("failover_p99_" + side, "ms", median(p99_kill), median(p99_steady), 3);
  p99.target = "<= 2x steady p99";
  p99.met = p99.value <= 2 * p99.baseline;
  p99.notes.push_back("p99 of the 1-s window with the kill, median of " +
                      std::to_string(rounds.size()) + " rounds (runs " + spread(p99_kill, 3) +
                      "); baseline: the steady 1-s window just before, same deployment (runs " +
                      spread(p99_steady, 3) + ")");
  figs.push_back(p99);
  auto mx = make_figure("failover_max_" + side, "ms", median(max_kill), median(max_steady), 3);
  mx.notes.push_back("max of the window with the kill (runs " + spread(max_kill, 3) +
                     ") vs the steady window (runs " + spread(max_steady, 3) + ")");
  figs.push_back(mx);
}

} // namespace

void init_child_handling() {
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP})
    ::sigaction(sig, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  // Orphans of a killed child (nginx's workers) come to the bench to be reaped, not to
  // an init that may never reap them.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
}

void bench_failover(const options& opts, std::vector<figure>& figs) {
#if defined(UNDERSTUDY_DIGITS_SERVING_PATH) && defined(UNDERSTUDY_LOADGEN_PATH)
  programs prog{UNDERSTUDY_DIGITS_SERVING_PATH, UNDERSTUDY_LOADGEN_PATH, find_nginx()};
#else
  programs prog;
#endif
  if (prog.digits_serving.empty() || ::access(prog.digits_serving.c_str(), X_OK) != 0 ||
      ::access(prog.loadgen.c_str(), X_OK) != 0) {
    std::printf("failover: digits_serving or serving_loadgen not built: skipped\n");
    return;
  }
  if (prog.nginx.empty())
    std::printf("failover: nginx not found: its side is skipped (apt-get install nginx-light)\n");
  curl_global_init(CURL_GLOBAL_DEFAULT);
  scratch_dir dir;
  // The model, trained once and copied for each nginx upstream (a state directory
  // has one writer).
  auto train_log = dir.sub("train.log");
  auto t0 = clock_type::now();
  {
    child_process train{{prog.digits_serving, "--state-dir", dir.sub("state"), "--train-steps",
                         "200", "--port", "0", "--for", "1ms"},
                        "",
                        train_log};
    auto status = train.wait_for(std::chrono::seconds(120));
    if (!status || !WIFEXITED(*status) || WEXITSTATUS(*status) != 0)
      throw bench_failure("training digits_serving failed: " + tail_of(read_file(train_log), 3));
  }
  double train_s = seconds_between(t0, clock_type::now());
  for (int i = 0; i < 2; ++i) {
    auto to = dir.sub("state-u" + std::to_string(i));
    std::filesystem::create_directories(to);
    std::filesystem::copy_file(dir.sub("state/data.mdb"), to + "/data.mdb");
  }
  uint64_t seed = 0;
  std::vector<round_result> ours, theirs;
  for (size_t r = 0; r < opts.failover_rounds; ++r) {
    auto run_ours = [&] { ours.push_back(understudy_round(prog, dir, r, seed, opts.rate)); };
    auto run_theirs = [&] {
      if (!prog.nginx.empty())
        theirs.push_back(nginx_round(prog, dir, r, opts.rate));
    };
    bench::in_order(r, run_ours, run_theirs);
  }
  curl_global_cleanup();
  size_t first = figs.size();
  add_side_figures("understudy", ours, figs);
  figs[first].notes.push_back(
      "understudy: one digits_serving, --replicas 2 --standbys 1 --crash-every " +
      fixed(crash_period_s, 0) +
      "s (its --seed picked so that its first kill hits a replica in rotation, not the "
      "standby, checked through GET /v1/models/digits, else started again); nginx: 2 "
      "digits_serving --replicas 1 --standbys 0 as upstreams "
      "(max_fails=1 fail_timeout=10s, proxy_next_upstream error timeout http_502 http_503 "
      "non_idempotent, keepalive 32), one SIGKILLed (nginx's \"disabled while reading "
      "response header\": a request was in flight on it and went to the other upstream)");
  figs[first].notes.push_back(
      "each round, each side on a fresh deployment: serving_loadgen at " + fixed(opts.rate, 0) +
      "/s (open loop, latency from the due time): " + fixed(warmup_s, 1) +
      " s warm-up, a steady 1-s window, then a 1-s window with the kill " +
      fixed(kill_offset_s, 1) + " s in; p99 of a window is its 5th-worst of " +
      fixed(opts.rate * window_s, 0) + " answers; sides alternate first; 2 cores shared by " +
      "everything; model trained once (200 steps, " + fixed(train_s, 1) + " s) and reused");
  if (!theirs.empty()) {
    add_side_figures("nginx", theirs, figs);
    std::vector<double> ours_p99, theirs_p99;
    for (const auto& r : ours)
      ours_p99.push_back(r.steady.p99_ms);
    for (const auto& r : theirs)
      theirs_p99.push_back(r.steady.p99_ms);
    auto f = make_figure("steady_p99_understudy_vs_nginx", "ms", median(ours_p99),
                         median(theirs_p99), 3);
    f.notes.push_back(
        "p99 of the steady windows: one understudy process (router + 2 replicas) vs nginx in "
        "front of 2 one-replica processes (one more HTTP hop)");
    figs.push_back(f);
  }
}

} // namespace serving_bench
