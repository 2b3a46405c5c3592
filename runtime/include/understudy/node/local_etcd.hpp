#pragma once
// A single-member etcd for a cluster on this machine: what `understudy launch`
// starts when the config names no etcd endpoints, and what tests use.
//
// Promises. `start` runs the `etcd` binary (Debian's etcd-server) on
// 127.0.0.1 with free client and peer ports, its data in the given
// directory, tuned for short leases (10 ms heartbeats, 100 ms elections), its
// output in DATA_DIR/etcd.log; it returns once etcd answers /health. The
// process dies with the thread that started it (PR_SET_PDEATHSIG) and holds
// none of this process's descriptors; the destructor stops it (SIGTERM, then
// SIGKILL after a grace period) and reaps it.
//
// Threads: one object is used by one thread at a time; start it from a thread
// that outlives it (the death signal follows the starting thread).
//
// Errors (coordination_errc): no etcd binary: invalid_config naming the
// package; etcd does not come up in time or exits: unavailable naming its log.

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>

#include <caf/expected.hpp>

namespace understudy {

/// What local_etcd::start runs.
struct local_etcd_options {
  /// etcd's data directory (created if missing); its log goes there too.
  std::string data_dir;
  /// The etcd binary; empty: `etcd` on PATH, then /usr/bin/etcd.
  std::string binary;
  /// How long etcd may take to answer /health.
  std::chrono::milliseconds start_timeout = std::chrono::seconds(20);
};

/// A running local etcd (see the top of this file).
class local_etcd {
public:
  /// Starts etcd and waits until it is healthy.
  static caf::expected<std::unique_ptr<local_etcd>> start(const local_etcd_options& opts);

  /// Stops etcd if it still runs.
  ~local_etcd();

  local_etcd(const local_etcd&) = delete;
  local_etcd& operator=(const local_etcd&) = delete;

  /// The URL clients use, e.g. "http://127.0.0.1:40123".
  const std::string& client_url() const noexcept { return client_url_; }

  /// Where etcd writes its output.
  const std::string& log_file() const noexcept { return log_file_; }

  /// etcd's process id (-1 once stopped).
  pid_t pid() const noexcept { return pid_; }

  /// Stops etcd: SIGTERM, SIGKILL after `grace`; waits for it to end.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(5));

private:
  local_etcd(pid_t pid, std::string client_url, std::string log_file);

  pid_t pid_;
  std::string client_url_;
  std::string log_file_;
};

/// The etcd binary `start` would run: `etcd` on PATH, else /usr/bin/etcd;
/// invalid_config naming the Debian package etcd-server if there is none.
caf::expected<std::string> find_etcd_binary();

} // namespace understudy
