#include "understudy/node/local_etcd.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "understudy/cluster/coordination.hpp"

namespace understudy {

namespace {

using steady = std::chrono::steady_clock;

/// A port on 127.0.0.1 that was free a moment ago (its socket stays open, so
/// that a second call picks another one, until `close`).
struct probe_port {
  int fd = -1;
  uint16_t port = 0;

  probe_port() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      return;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
      port = ntohs(addr.sin_port);
  }

  void close() {
    if (fd >= 0)
      ::close(fd);
    fd = -1;
  }

  ~probe_port() { close(); }
};

extern "C" size_t discard_body(char*, size_t size, size_t count, void*) {
  return size * count;
}

/// Whether etcd at `url` answers GET /health with HTTP 200 within `timeout`.
bool healthy(const std::string& url, std::chrono::milliseconds timeout) {
  CURL* easy = curl_easy_init();
  if (easy == nullptr)
    return false;
  auto target = url + "/health";
  curl_easy_setopt(easy, CURLOPT_URL, target.c_str());
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard_body);
  long status = 0;
  bool ok = curl_easy_perform(easy) == CURLE_OK &&
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200;
  curl_easy_cleanup(easy);
  return ok;
}

/// The last `n` lines of the file at `path`.
std::string tail_of(const std::string& path, size_t n) {
  std::ifstream in{path};
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
    if (lines.size() > n)
      lines.erase(lines.begin());
  }
  std::string out;
  for (const auto& l : lines)
    out += "\n  " + l;
  return out;
}

} // namespace

caf::expected<std::string> find_etcd_binary() {
  if (const char* path = std::getenv("PATH")) {
    std::stringstream dirs{path};
    for (std::string dir; std::getline(dirs, dir, ':');) {
      auto candidate = (dir.empty() ? std::string{"."} : dir) + "/etcd";
      if (::access(candidate.c_str(), X_OK) == 0)
        return candidate;
    }
  }
  if (::access("/usr/bin/etcd", X_OK) == 0)
    return std::string{"/usr/bin/etcd"};
  return make_error(coordination_errc::invalid_config,
                    "no etcd binary on PATH or at /usr/bin/etcd: install Debian's package "
                    "etcd-server (scripts/install-deps.sh), or name etcd endpoints in "
                    "[cluster.coordination]");
}

local_etcd::local_etcd(pid_t pid, std::string client_url, std::string log_file)
    : pid_(pid), client_url_(std::move(client_url)), log_file_(std::move(log_file)) {
  // nop
}

local_etcd::~local_etcd() {
  stop();
}

void local_etcd::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0)
    return;
  ::kill(pid_, SIGTERM);
  auto until = steady::now() + grace;
  int status = 0;
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (steady::now() >= until) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  pid_ = -1;
}

caf::expected<std::unique_ptr<local_etcd>> local_etcd::start(const local_etcd_options& opts) {
  auto binary = opts.binary;
  if (binary.empty()) {
    auto found = find_etcd_binary();
    if (!found)
      return std::move(found.error());
    binary = *found;
  } else if (::access(binary.c_str(), X_OK) != 0) {
    return make_error(coordination_errc::invalid_config,
                      "etcd binary '" + binary + "' cannot be run (Debian's package: etcd-server)");
  }
  std::error_code ec;
  std::filesystem::create_directories(opts.data_dir, ec);
  if (ec)
    return make_error(coordination_errc::invalid_config,
                      "cannot create etcd's data directory " + opts.data_dir + ": " + ec.message());
  const auto log_file = opts.data_dir + "/etcd.log";
  curl_global_init(CURL_GLOBAL_DEFAULT);
  struct curl_guard {
    ~curl_guard() { curl_global_cleanup(); }
  } curl_cleanup;
  std::string last_problem;
  // A port found free can be taken before etcd binds it: try again with others.
  for (int attempt = 0; attempt < 3; ++attempt) {
    probe_port client;
    probe_port peer;
    if (client.port == 0 || peer.port == 0)
      return make_error(coordination_errc::unavailable, "no free port on 127.0.0.1 for etcd");
    const auto client_url = "http://127.0.0.1:" + std::to_string(client.port);
    const auto peer_url = "http://127.0.0.1:" + std::to_string(peer.port);
    std::vector<std::string> args{binary,
                                  "--name",
                                  "local",
                                  "--data-dir",
                                  opts.data_dir + "/data",
                                  "--listen-client-urls",
                                  client_url,
                                  "--advertise-client-urls",
                                  client_url,
                                  "--listen-peer-urls",
                                  peer_url,
                                  "--initial-advertise-peer-urls",
                                  peer_url,
                                  "--initial-cluster",
                                  "local=" + peer_url,
                                  "--initial-cluster-state",
                                  "new",
                                  "--heartbeat-interval",
                                  "10",
                                  "--election-timeout",
                                  "100"};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    int log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0)
      return make_error(coordination_errc::invalid_config,
                        "cannot write etcd's log " + log_file + ": " + std::strerror(errno));
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    client.close();
    peer.close();
    const pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid == 0) {
      // Only async-signal-safe calls until exec. etcd dies with us; every
      // other descriptor of ours is close-on-exec.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent)
        ::_exit(127);
      ::dup2(null_fd, 0);
      ::dup2(log_fd, 1);
      ::dup2(log_fd, 2);
      ::setpgid(0, 0); // a Ctrl-C in the terminal goes to the launcher, which stops etcd last
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(log_fd);
    if (null_fd >= 0)
      ::close(null_fd);
    if (pid < 0)
      return make_error(coordination_errc::unavailable,
                        std::string{"cannot start etcd: fork: "} + std::strerror(errno));
    std::unique_ptr<local_etcd> etcd{new local_etcd(pid, client_url, log_file)};
    const auto until = steady::now() + opts.start_timeout;
    bool exited = false;
    while (steady::now() < until) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        etcd->pid_ = -1;
        exited = true;
        last_problem = "etcd exited (" +
                       (WIFEXITED(status) ? "status " + std::to_string(WEXITSTATUS(status))
                                          : "signal " + std::to_string(WTERMSIG(status))) +
                       ")";
        break;
      }
      if (healthy(client_url, std::chrono::milliseconds(200)))
        return etcd;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!exited) {
      etcd->stop();
      return make_error(coordination_errc::unavailable,
                        "etcd did not become healthy at " + client_url + " within " +
                            std::to_string(opts.start_timeout.count()) + " ms; see its log " +
                            log_file + ":" + tail_of(log_file, 5));
    }
    std::ifstream in{log_file};
    std::string text{std::istreambuf_iterator<char>{in}, {}};
    if (text.find("address already in use") == std::string::npos)
      break;
  }
  return make_error(coordination_errc::unavailable, last_problem +
                                                        " before it became healthy; see its log " +
                                                        log_file + ":" + tail_of(log_file, 5));
}

} // namespace understudy
