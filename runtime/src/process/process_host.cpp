// Actors in child processes: the keeper on the parent's side and the host on
// the child's side.

#include "understudy/process/process_host.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/make_message.hpp>
#include <caf/message.hpp>
#include <caf/message_view.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/skip.hpp>

#include "understudy/supervision/child_spec.hpp"

extern char** environ;

namespace understudy {

// -- errors ---------------------------------------------------------------------------

void register_process_types(caf::actor_system_config& cfg) {
  register_error_category<process_errc>(cfg);
}

namespace {

/// The environment variable that carries a child's role.
constexpr const char* role_variable = "UNDERSTUDY_ACTOR_HOST";

/// The child's end of the report pipe.
constexpr int child_report_fd = 3;

// Reports of the helper thread to the keeper.
/// `(proc_port_atom, uint16_t port)`: the child's actor is published there.
using proc_port_atom = caf::atom_constant<caf::atom("us_pport")>;
/// `(proc_exit_atom, int32_t wait_status, std::string reason)`: the child was reaped.
using proc_exit_atom = caf::atom_constant<caf::atom("us_pexit")>;
/// `(proc_spawnerr_atom, std::string)`: the child could not be started.
using proc_spawnerr_atom = caf::atom_constant<caf::atom("us_pspawn")>;
/// `(proc_timeout_atom, uint64_t which)`: 1 the start timeout, 2 the exit timeout.
using proc_timeout_atom = caf::atom_constant<caf::atom("us_ptime")>;

/// The child process, shared by the keeper and the helper thread.
struct child_process {
  std::mutex mtx;
  pid_t pid = 0;
  bool reaped = false;

  /// Kills the child unless it was reaped (its pid could be another's then).
  void kill_now() {
    std::lock_guard<std::mutex> guard{mtx};
    if (pid > 0 && !reaped)
      ::kill(pid, SIGKILL);
  }

  pid_t get_pid() {
    std::lock_guard<std::mutex> guard{mtx};
    return pid;
  }
};

std::string errno_text(int code) {
  return std::string{std::strerror(code)} + " (errno " + std::to_string(code) + ")";
}

/// Makes `text` one line (reports are line-based).
std::string one_line(std::string text) {
  for (auto& c : text)
    if (c == '\n' || c == '\r')
      c = ' ';
  return text;
}

std::string encode_role(const process_spec& spec, int fd) {
  std::string out = "fd=" + std::to_string(fd) + ";parent=" + std::to_string(getpid());
  for (const auto& [key, value] : spec.role)
    out += ";" + key + "=" + value;
  return out;
}

/// The helper thread of one child: starts it, passes its reports to the
/// keeper, and reaps it. Ends when the child has been reaped.
void watch_child(std::shared_ptr<child_process> cp, process_spec spec, caf::weak_actor_ptr keeper) {
  auto post = [&keeper](auto&&... xs) {
    if (auto hdl = caf::actor_cast<caf::actor>(keeper))
      caf::anon_send(hdl, std::forward<decltype(xs)>(xs)...);
  };
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    post(proc_spawnerr_atom::value, "pipe2: " + errno_text(errno));
    return;
  }
  // dup2 onto the same number would keep close-on-exec: keep the write end elsewhere.
  if (fds[1] == child_report_fd) {
    int moved = fcntl(fds[1], F_DUPFD_CLOEXEC, child_report_fd + 1);
    close(fds[1]);
    fds[1] = moved;
  }
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::strncmp(*e, role_variable, std::strlen(role_variable)) != 0)
      env_storage.emplace_back(*e);
  env_storage.push_back(std::string{role_variable} + "=" + encode_role(spec, child_report_fd));
  std::vector<char*> envp;
  for (auto& s : env_storage)
    envp.push_back(s.data());
  envp.push_back(nullptr);
  // `ps` shows the actor the process hosts, not /proc/self/exe (the program
  // to run is the path given to posix_spawn, not argv[0]).
  std::vector<std::string> arg_storage{spec.name.empty() ? spec.program
                                                         : "understudy-actor: " + spec.name};
  arg_storage.insert(arg_storage.end(), spec.args.begin(), spec.args.end());
  std::vector<char*> argv;
  for (auto& s : arg_storage)
    argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], child_report_fd);
  pid_t pid = 0;
  int rc = 0;
  {
    // Under the lock: the keeper may not kill a pid it has not seen yet.
    std::lock_guard<std::mutex> guard{cp->mtx};
    rc = posix_spawn(&pid, spec.program.c_str(), &actions, nullptr, argv.data(), envp.data());
    if (rc == 0)
      cp->pid = pid;
  }
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    post(proc_spawnerr_atom::value, "posix_spawn " + spec.program + ": " + errno_text(rc));
    return;
  }
  // Reports until the child exits (its end of the pipe closes with it).
  std::string pending;
  std::string reason;
  char chunk[512];
  for (;;) {
    auto n = read(fds[0], chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    pending.append(chunk, static_cast<size_t>(n));
    for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
      auto line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      if (line.rfind("port ", 0) == 0) {
        auto port = std::strtoul(line.c_str() + 5, nullptr, 10);
        if (port > 0 && port < 65536)
          post(proc_port_atom::value, static_cast<uint16_t>(port));
      } else if (line.rfind("reason ", 0) == 0) {
        reason = line.substr(7);
      }
    }
  }
  close(fds[0]);
  // Wait without reaping, then reap under the lock, so that kill_now never
  // signals a pid that was reaped (and might be reused).
  siginfo_t info{};
  while (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
  }
  int status = 0;
  {
    std::lock_guard<std::mutex> guard{cp->mtx};
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    cp->reaped = true;
  }
  post(proc_exit_atom::value, static_cast<int32_t>(status), std::move(reason));
}

/// What an exit status means.
std::string meaning_of(int status) {
  switch (status) {
    case host_status::poisoned:
      return "poisoned: the process is unusable";
    case host_status::failed:
      return "its actor failed";
    case host_status::orphaned:
      return "its parent was gone";
    default:
      return "unexpected status";
  }
}

/// The keeper: stands for the child's actor in this process.
class keeper_actor {
public:
  keeper_actor(caf::event_based_actor* self, process_spec spec, std::shared_ptr<child_process> cp)
      : self_(self), spec_(std::move(spec)), cp_(std::move(cp)) {
    // nop
  }

  caf::behavior start() {
    capture_exceptions(self_);
    auto cp = cp_;
    self_->attach_functor([cp](const caf::error&) { cp->kill_now(); });
    // Everything but our own reports waits until the remote actor is connected.
    self_->set_default_handler(caf::skip);
    self_->set_down_handler([this](caf::down_msg& dm) { on_down(dm); });
    self_->delayed_send(self_, spec_.start_timeout, proc_timeout_atom::value, uint64_t{1});
    return {
        [this](proc_port_atom, uint16_t port) { connect(port); },
        [this](proc_exit_atom, int32_t status, std::string& reason) {
          on_exit(status, std::move(reason));
        },
        [this](proc_spawnerr_atom, std::string& what) {
          self_->quit(make_error(process_errc::spawn_failed, spec_.name + ": " + what));
        },
        [this](proc_timeout_atom, uint64_t which) { on_timeout(which); },
    };
  }

private:
  std::string who() const { return spec_.name + " (pid " + std::to_string(cp_->get_pid()) + ")"; }

  void connect(uint16_t port) {
    if (connected_ || exited_)
      return;
    auto mm = spec_.tls ? self_->system().openssl_manager().actor_handle()
                        : self_->system().middleman().actor_handle();
    self_->request(mm, caf::infinite, caf::connect_atom::value, std::string{"127.0.0.1"}, port)
        .then(
            [this](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>&) {
              if (!ptr) {
                cp_->kill_now();
                self_->quit(make_error(process_errc::start_failed,
                                       who() + ": no actor published at its port"));
                return;
              }
              remote_ = caf::actor_cast<caf::actor>(std::move(ptr));
              connected_ = true;
              self_->monitor(remote_);
              auto remote = remote_;
              // From now on every other message goes to the remote actor; the
              // ones that waited are retried after this handler, in order.
              self_->set_default_handler(
                  [remote](caf::scheduled_actor* ptr,
                           caf::message_view& x) -> caf::result<caf::message> {
                    auto rp = ptr->make_response_promise();
                    rp.delegate(remote, x.move_content_to_message());
                    return rp;
                  });
            },
            [this, port](caf::error& err) {
              // CAF's middleman can close a connection whose handshake is
              // still under way when its heartbeat tick comes (the
              // connection was never seen: connection_timeout), more often
              // over TLS: try again while the child lives.
              if (++connect_attempts_ < max_connect_attempts && !exited_) {
                self_->delayed_send(self_, std::chrono::milliseconds(20), proc_port_atom::value,
                                    port);
                return;
              }
              cp_->kill_now();
              self_->quit(make_error(
                  process_errc::start_failed,
                  who() + ": cannot connect to its actor on 127.0.0.1:" + std::to_string(port) +
                      ": " + self_->system().render(err)));
            });
  }

  void on_down(const caf::down_msg& dm) {
    if (!remote_ || dm.source != remote_.address())
      return;
    remote_down_ = true;
    down_reason_ = dm.reason;
    // The process ends with its actor; give it time to exit, then kill it.
    self_->delayed_send(self_, spec_.exit_timeout, proc_timeout_atom::value, uint64_t{2});
  }

  void on_timeout(uint64_t which) {
    if (which == 1 && !connected_ && !exited_) {
      cp_->kill_now();
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(spec_.start_timeout).count();
      self_->quit(
          make_error(process_errc::start_failed,
                     who() + ": did not report its actor within " + std::to_string(ms) + " ms"));
    } else if (which == 2 && !exited_) {
      lost_ = true;
      cp_->kill_now(); // the helper thread reports the exit
    }
  }

  void on_exit(int status, std::string reason) {
    exited_ = true;
    std::string what;
    if (WIFEXITED(status))
      what = "exited with status " + std::to_string(WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
      what = "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
             strsignal(WTERMSIG(status)) + ")" +
             (lost_ ? " after its connection was lost" : std::string{});
    else
      what = "ended with wait status " + std::to_string(status);
    std::string context = who() + " " + what;
    if (!connected_) {
      self_->quit(make_error(process_errc::start_failed,
                             context + " before it reported its actor" +
                                 (reason.empty() ? std::string{} : ": " + reason)));
      return;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      self_->quit();
      return;
    }
    auto code = process_errc::crashed;
    if (WIFEXITED(status)) {
      context += " (" + meaning_of(WEXITSTATUS(status)) + ")";
      if (WEXITSTATUS(status) == host_status::poisoned)
        code = process_errc::poisoned;
      else if (WEXITSTATUS(status) == host_status::failed)
        code = process_errc::actor_failed;
    }
    if (!reason.empty())
      context += ": " + reason;
    else if (remote_down_ && down_reason_)
      context += ": its actor: " + self_->system().render(down_reason_);
    self_->quit(make_error(code, std::move(context)));
  }

  caf::event_based_actor* self_;
  process_spec spec_;
  std::shared_ptr<child_process> cp_;
  caf::actor remote_;
  bool connected_ = false;
  /// Connection attempts to the child's port so far (see connect()).
  int connect_attempts_ = 0;
  static constexpr int max_connect_attempts = 5;
  bool remote_down_ = false;
  bool exited_ = false;
  bool lost_ = false;
  caf::error down_reason_;
};

caf::behavior keeper_behavior(caf::event_based_actor* self, process_spec spec,
                              std::shared_ptr<child_process> cp) {
  auto k = std::make_shared<keeper_actor>(self, std::move(spec), std::move(cp));
  self->attach_functor([k](const caf::error&) {});
  return k->start();
}

/// Closes every inherited descriptor but stdio and `keep`.
void close_inherited_fds(int keep) {
  std::vector<int> fds;
  if (DIR* dir = opendir("/proc/self/fd")) {
    const int own = dirfd(dir);
    while (auto* entry = readdir(dir)) {
      char* end = nullptr;
      long fd = std::strtol(entry->d_name, &end, 10);
      if (end != entry->d_name && *end == '\0' && fd > 2 && fd != keep && fd != own)
        fds.push_back(static_cast<int>(fd));
    }
    closedir(dir);
  }
  for (int fd : fds)
    close(fd);
}

/// The exit status for `reason` when the host was given no `status_of`.
int default_host_status(const caf::error& reason) {
  if (!reason || reason == caf::exit_reason::normal)
    return 0;
  return host_status::failed;
}

void write_line(int fd, std::string line) {
  line.push_back('\n');
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    auto n = write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

} // namespace

// -- the parent's side ----------------------------------------------------------------

caf::expected<caf::actor> spawn_process_actor(caf::actor_system& sys, process_spec spec) {
  if (!sys.has_middleman())
    return make_error(process_errc::no_middleman,
                      spec.name + ": the actor system has no middleman (load caf::io::middleman)");
  if (spec.tls && !sys.has_openssl_manager())
    return make_error(process_errc::no_middleman,
                      spec.name +
                          ": TLS to the child needs CAF's openssl module in the actor "
                          "system (load caf::openssl::manager)");
  auto cp = std::make_shared<child_process>();
  auto hdl = sys.spawn(keeper_behavior, spec, cp);
  caf::weak_actor_ptr weak = hdl->ctrl();
  std::thread{watch_child, cp, std::move(spec), std::move(weak)}.detach();
  return caf::actor{hdl};
}

// -- the child's side -----------------------------------------------------------------

std::string actor_host_role::get(const std::string& key, const std::string& fallback) const {
  auto i = values.find(key);
  return i == values.end() ? fallback : i->second;
}

std::optional<actor_host_role> actor_host_role_from_env() {
  const char* text = std::getenv(role_variable);
  if (text == nullptr)
    return std::nullopt;
  actor_host_role role;
  std::string all = text;
  size_t pos = 0;
  while (pos <= all.size()) {
    auto end = all.find(';', pos);
    if (end == std::string::npos)
      end = all.size();
    auto item = all.substr(pos, end - pos);
    pos = end + 1;
    auto eq = item.find('=');
    if (eq == std::string::npos)
      continue;
    auto key = item.substr(0, eq);
    auto value = item.substr(eq + 1);
    if (key == "fd")
      role.report_fd = std::atoi(value.c_str());
    else if (key == "parent")
      role.parent = std::atoi(value.c_str());
    else
      role.values[key] = value;
  }
  if (role.report_fd < 0)
    return std::nullopt;
  return role;
}

int run_actor_host(const actor_host_role& role,
                   const std::function<void(caf::actor_system_config&)>& configure,
                   const std::function<caf::expected<caf::actor>(caf::actor_system&)>& make,
                   const std::function<int(const caf::error&)>& status_of) {
  unsetenv(role_variable);
  close_inherited_fds(role.report_fd);
  // Die with the parent; if it is gone already, do not start at all.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (role.parent != 0 && getppid() != role.parent)
    return host_status::orphaned;
  signal(SIGPIPE, SIG_IGN);
  const int fd = role.report_fd;
  auto fail = [fd](const std::string& why) {
    write_line(fd, "reason " + one_line(why));
    std::fflush(nullptr);
    std::_Exit(host_status::failed);
  };
  caf::actor_system_config cfg;
  cfg.load<caf::io::middleman>();
  cfg.set("logger.console-verbosity", caf::atom("quiet"));
  cfg.set("logger.file-verbosity", caf::atom("quiet"));
  cfg.set("scheduler.max-threads", 2);
  register_error_categories(cfg);
  register_process_types(cfg);
  if (configure)
    configure(cfg);
  caf::actor_system sys{cfg};
  auto hosted = make(sys);
  if (!hosted)
    fail("cannot start the hosted actor: " + sys.render(hosted.error()));
  // Over TLS when `configure` loaded CAF's openssl module (process_spec::tls).
  auto port = sys.has_openssl_manager() ? caf::openssl::publish(*hosted, 0, "127.0.0.1")
                                        : sys.middleman().publish(*hosted, 0, "127.0.0.1");
  if (!port)
    fail("cannot publish the hosted actor on 127.0.0.1: " + sys.render(port.error()));
  caf::error reason;
  {
    caf::scoped_actor self{sys};
    self->monitor(*hosted);
    write_line(fd, "port " + std::to_string(*port));
    self->receive([&](caf::down_msg& dm) { reason = dm.reason; });
  }
  const int status = status_of ? status_of(reason) : default_host_status(reason);
  write_line(fd, "reason " + (reason ? one_line(sys.render(reason)) : std::string{"normal exit"}));
  std::fflush(nullptr);
  // No orderly shutdown: a poisoned CUDA context or a parent still connected
  // must not hold up the exit.
  std::_Exit(status);
}

} // namespace understudy
