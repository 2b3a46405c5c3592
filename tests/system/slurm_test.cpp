// The Slurm recipe (examples/slurm): its batch script run by a real Slurm on
// this machine (slurmctld and slurmd on localhost, authenticated by munge), a
// task's node killed mid-job, and the whole job requeued mid-job.

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "support/cli_test_util.hpp"
#include "support/cluster_test_util.hpp"
#include "support/daemon_test_util.hpp"
#include "support/temp_dir.hpp"

using namespace understudy::testing;
using cli_test::slurp;
using daemon_test::background;
using daemon_test::find_program;
using daemon_test::run_to_end;

namespace {

const std::string recipe_dir = UNDERSTUDY_SOURCE_DIR "/examples/slurm";

/// The text of `/proc/PID/FILE` split at NULs (cmdline, environ).
std::vector<std::string> proc_strings(const std::string& pid, const char* file) {
  std::vector<std::string> out;
  std::ifstream in{"/proc/" + pid + "/" + file, std::ios::binary};
  std::string s;
  while (std::getline(in, s, '\0'))
    out.push_back(s);
  return out;
}

/// The pids of the processes whose environment holds `entry`, with their command lines.
std::vector<std::pair<pid_t, std::vector<std::string>>> processes_with(const std::string& entry) {
  std::vector<std::pair<pid_t, std::vector<std::string>>> found;
  DIR* d = ::opendir("/proc");
  if (d == nullptr)
    return found;
  while (auto* e = ::readdir(d)) {
    std::string pid = e->d_name;
    if (pid.find_first_not_of("0123456789") != std::string::npos || std::stoi(pid) == ::getpid())
      continue;
    for (const auto& v : proc_strings(pid, "environ"))
      if (v == entry) {
        found.emplace_back(std::stoi(pid), proc_strings(pid, "cmdline"));
        break;
      }
  }
  ::closedir(d);
  return found;
}

/// Waits up to `limit` for `ready`, asking every 100 ms (it polls daemons and files).
template <class F>
bool poll_until(std::chrono::seconds limit, F ready) {
  for (auto until = std::chrono::steady_clock::now() + limit;
       std::chrono::steady_clock::now() < until;) {
    if (ready())
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100)); // polls a daemon
  }
  return ready();
}

/// munged, slurmctld and one slurmd on localhost, in a directory of their own;
/// `skipped` says why not when they could not start. Jobs and every process
/// they started are gone when this goes.
class slurm_lab {
public:
  test::temp_dir dir{"slurm"};
  std::string skipped;
  std::string conf;
  /// The ports of the recipe's nodes, their metrics and etcd: 10 from here.
  unsigned port_base = 0;

  slurm_lab() {
    const char* programs[] = {"munged",   "slurmctld", "slurmd", "sbatch", "squeue",
                              "scontrol", "scancel",   "etcd",   "etcdctl"};
    for (const char* p : programs)
      if (find_program(p).empty()) {
        skipped = std::string{p} +
                  " is not installed (Debian's munge, slurmctld, slurmd, "
                  "slurm-client, etcd-server and etcd-client packages)";
        return;
      }
    ::chmod(dir.path.c_str(), 0755); // munged's socket must be reachable
    unsigned base = 10000 + (static_cast<unsigned>(::getpid()) % 800) * 12;
    port_base = base + 2;
    // munge: a fresh key, a socket of its own.
    {
      std::random_device rd;
      std::ofstream key{dir.path + "/munge.key", std::ios::binary};
      for (int i = 0; i < 1024; ++i)
        key.put(static_cast<char>(rd()));
    }
    ::chmod((dir.path + "/munge.key").c_str(), 0400);
    const auto sock = dir.path + "/munge.sock";
    munged_ = std::make_unique<background>(
        std::vector<std::string>{
            find_program("munged"), "-F", "--force", "-S", sock,
            "--key-file=" + dir.path + "/munge.key", "--pid-file=" + dir.path + "/munged.pid",
            "--seed-file=" + dir.path + "/munged.seed", "--log-file=" + dir.path + "/munged.log"},
        dir.path + "/munged.out");
    if (!poll_until(std::chrono::seconds(10), [&] { return ::access(sock.c_str(), F_OK) == 0; })) {
      skipped = "munged did not start: " + slurp(dir.path + "/munged.out");
      return;
    }
    // Slurm: this machine is the controller and its only compute node,
    // "localhost", with room for the recipe's tasks.
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    std::string controller = host;
    controller = controller.substr(0, controller.find('.'));
    conf = dir.path + "/slurm.conf";
    std::filesystem::create_directories(dir.path + "/ctld");
    std::filesystem::create_directories(dir.path + "/spool");
    std::ofstream{conf} << "ClusterName=understudy\n"
                        << "SlurmctldHost=" << controller << "(127.0.0.1)\n"
                        << "SlurmctldPort=" << base << "\nSlurmdPort=" << base + 1 << "\n"
                        << "AuthType=auth/munge\nCredType=cred/munge\n"
                        << "AuthInfo=socket=" << sock << "\n"
                        << "SlurmUser=root\nSlurmdUser=root\n"
                        << "StateSaveLocation=" << dir.path << "/ctld\n"
                        << "SlurmdSpoolDir=" << dir.path << "/spool\n"
                        << "SlurmctldPidFile=" << dir.path << "/slurmctld.pid\n"
                        << "SlurmdPidFile=" << dir.path << "/slurmd.pid\n"
                        << "SlurmctldLogFile=" << dir.path << "/slurmctld.log\n"
                        << "SlurmdLogFile=" << dir.path << "/slurmd.log\n"
                        << "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
                        << "JobAcctGatherType=jobacct_gather/none\n"
                        << "AccountingStorageType=accounting_storage/none\n"
                        << "JobCompType=jobcomp/none\nSchedulerType=sched/builtin\n"
                        << "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n"
                        << "MpiDefault=none\nReturnToService=2\nJobRequeue=1\n"
                        << "SlurmdParameters=config_overrides\nPlugStackConfig=/dev/null\n"
                        << "NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN\n"
                        << "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP "
                           "OverSubscribe=YES\n";
    env_ = {"SLURM_CONF=" + conf};
    ctld_ = std::make_unique<background>(
        std::vector<std::string>{find_program("slurmctld"), "-D", "-i", "-f", conf},
        dir.path + "/slurmctld.out", env_);
    slurmd_ = std::make_unique<background>(
        std::vector<std::string>{find_program("slurmd"), "-D", "-N", "localhost", "-f", conf},
        dir.path + "/slurmd.out", env_);
    if (!poll_until(std::chrono::seconds(30), [&] { return node_state() == "idle"; }))
      skipped = "slurmctld and slurmd did not start (node state '" + node_state() +
                "'): " + slurp(dir.path + "/slurmctld.out") + slurp(dir.path + "/slurmd.out");
  }

  ~slurm_lab() {
    if (conf.empty())
      return;
    for (const auto& id : jobs_)
      run_to_end({find_program("scancel"), "--full", id}, dir.path, dir.path + "/scancel.log",
                 env_);
    // Whatever a job left (it inherited SLURM_CONF): the nodes, etcd, steps.
    poll_until(std::chrono::seconds(10), [&] { return job_processes().empty(); });
    for (auto& [pid, cmd] : job_processes())
      ::kill(pid, SIGKILL);
    slurmd_.reset();
    ctld_.reset();
    munged_.reset();
  }

  /// Runs a Slurm command; its output.
  std::string slurm(std::vector<std::string> args) {
    args[0] = find_program(args[0]);
    run_to_end(args, dir.path, dir.path + "/command.log", env_);
    return slurp(dir.path + "/command.log");
  }

  /// The compute node's state as sinfo says it ("idle" when ready).
  std::string node_state() {
    auto s = slurm({"scontrol", "show", "node", "localhost", "--oneliner"});
    std::smatch m;
    if (!std::regex_search(s, m, std::regex{R"(State=([A-Z]+))"}))
      return s.substr(0, 200);
    std::string state = m[1];
    std::transform(state.begin(), state.end(), state.begin(), ::tolower);
    return state;
  }

  /// Submits the recipe's batch script with `cluster` as its cluster file;
  /// the job's id.
  std::string submit(const std::string& cluster) {
    auto out = slurm(
        {"sbatch", "--parsable", "--chdir=" + dir.path, "--output=" + output(),
         "--export=ALL,UNDERSTUDY=" UNDERSTUDY_CLI_PATH ",UNDERSTUDY_CONFIG=" + cluster +
             ",UNDERSTUDY_STATE=" + state() + ",UNDERSTUDY_PORT=" + std::to_string(port_base) +
             ",UNDERSTUDY_METRICS_PORT=" + std::to_string(port_base + 4) +
             ",ETCD_PORT=" + std::to_string(port_base + 8),
         recipe_dir + "/understudy.sbatch"});
    std::smatch m;
    REQUIRE(std::regex_search(out, m, std::regex{R"(^(\d+))"}));
    jobs_.push_back(m[1]);
    return m[1];
  }

  /// The job's state in squeue ("" once it has left the queue, "?" when squeue
  /// could not say, e.g. the controller was slow to answer).
  std::string job_state(const std::string& id) {
    auto s = slurm({"squeue", "-h", "-j", id, "-o", "%T"});
    if (s.find_first_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 0)
      return s.substr(0, s.find('\n'));
    // Without -h, an empty queue is the header line alone.
    auto all = slurm({"squeue", "-j", id, "-o", "%T"});
    return all == "STATE\n" || all.find("Invalid job id") != std::string::npos ? "" : "?";
  }

  /// Whether the job's output has the batch script's last line after `from`
  /// (e.g. after a requeued run's first line) and the job left the queue.
  bool ended(const std::string& id, const std::string& from = "") {
    auto out = slurp(output());
    auto start = from.empty() ? 0 : out.find(from);
    return start != std::string::npos &&
           out.find("understudy: job " + id + " ends", start) != std::string::npos &&
           job_state(id).empty();
  }

  std::string output() const { return dir.path + "/job.out"; }
  std::string state() const { return dir.path + "/state"; }

  /// The highest step the job's progress lines reached so far.
  uint64_t progress() const {
    auto text = slurp(output());
    uint64_t step = 0;
    std::regex re{R"(progress: step (\d+)/)"};
    for (std::sregex_iterator it{text.begin(), text.end(), re}, end; it != end; ++it)
      step = std::max<uint64_t>(step, std::stoull((*it)[1]));
    return step;
  }

  /// The processes Slurm started for this lab's jobs.
  std::vector<std::pair<pid_t, std::vector<std::string>>> job_processes() const {
    return processes_with("SLURM_CONF=" + conf);
  }

private:
  std::vector<std::string> env_;
  std::vector<std::string> jobs_;
  std::unique_ptr<background> munged_, ctld_, slurmd_;
};

/// The shipped cluster file with `steps` and the data's absolute path.
std::string recipe_cluster(slurm_lab& lab, uint64_t steps) {
  auto text = slurp(recipe_dir + "/cluster.toml");
  replace_once(text, "steps = 3000", "steps = " + std::to_string(steps));
  replace_once(text, "data = \"examples/data/digits.csv.gz\"",
               "data = \"" UNDERSTUDY_DIGITS_PATH "\"");
  auto file = lab.dir.path + "/cluster.toml";
  std::ofstream{file} << text;
  return file;
}

/// The final line's digest in the job's output ("" if none).
std::string final_digest(const std::string& out, uint64_t steps) {
  std::smatch m;
  if (!std::regex_search(out, m,
                         std::regex{R"(\d+: final: steps=(\d+) .*params_digest=([0-9a-f]+))"}) ||
      m[1] != std::to_string(steps))
    return "";
  return m[2];
}

/// Submits the recipe with `steps` and waits until the job is well under way
/// (past step 300); the job's id.
std::string submit_under_way(slurm_lab& lab, uint64_t steps) {
  auto id = lab.submit(recipe_cluster(lab, steps));
  REQUIRE(poll_until(std::chrono::seconds(90), [&] { return lab.progress() >= 300; }));
  return id;
}

} // namespace

TEST_CASE(
    "slurm: a task's node killed mid-job costs nothing, and the job ends with the "
    "fault-free digest",
    "[slurm][cluster]") {
  slurm_lab lab;
  if (!lab.skipped.empty()) {
    WARN("skipped: " << lab.skipped);
    return;
  }
  const uint64_t steps = 1500;
  auto id = submit_under_way(lab, steps);
  // Task 1's node.
  pid_t victim = 0;
  for (auto& [pid, cmd] : lab.job_processes()) {
    bool node = cmd.size() >= 2 && cmd[0] == UNDERSTUDY_CLI_PATH && cmd[1] == "node";
    if (node && [&, pid = pid] {
          for (const auto& v : proc_strings(std::to_string(pid), "environ"))
            if (v == "SLURM_PROCID=1")
              return true;
          return false;
        }())
      victim = pid;
  }
  REQUIRE(victim != 0);
  REQUIRE(::kill(victim, SIGKILL) == 0);
  REQUIRE(poll_until(std::chrono::seconds(120), [&] { return lab.ended(id); }));
  auto out = slurp(lab.output());
  INFO(out);
  // The nodes and their hosts came from the allocation.
  auto config = slurp(lab.state() + "/cluster.toml");
  INFO(config);
  CHECK_THAT(config, Catch::Contains("name = \"n3\"\nhost = \"localhost\"\nport = " +
                                     std::to_string(lab.port_base + 3)));
  CHECK_THAT(config, Catch::Contains("role = \"spare\""));
  // n1 was declared dead, its actors moved, and the job ended where the
  // fault-free run ends.
  CHECK(std::regex_search(out, std::regex{R"(0: node n0: peer n1 is dead)"}));
  CHECK(std::regex_search(out, std::regex{R"(0: node n0: moved /root/job/\S+ from n1 \(lost\))"}));
  auto expected = hex(config_digest(lab.state() + "/cluster.toml", lab.dir.path + "/single"));
  CHECK(final_digest(out, steps) == expected);
  CHECK_THAT(out, Catch::Contains("understudy: node n1 (task 1) ended with status 137 (signal 9)"));
  CHECK_THAT(out, Catch::Contains("understudy: job " + id + " ends with status 0"));
  CHECK_THAT(lab.slurm({"scontrol", "show", "job", id}), Catch::Contains("JobState=COMPLETED"));
  // The nodes' event logs are in the job's state directory, which every host
  // sees: one command turns them into the incident's timeline.
  int status = 0;
  auto timeline = run_cli("events " + lab.state() + "/cluster.toml", status);
  INFO(timeline);
  CHECK(status == 0);
  CHECK(std::regex_search(timeline, std::regex{R"(fenced   \[\w+\] peer n1 is dead)"}));
  CHECK(std::regex_search(timeline,
                          std::regex{R"(resumed  \[n0\] job_resumed /root/job/trainer#\d+)"}));
}

TEST_CASE(
    "slurm: a job requeued mid-job resumes from its last committed step with the "
    "fault-free digest",
    "[slurm][cluster]") {
  slurm_lab lab;
  if (!lab.skipped.empty()) {
    WARN("skipped: " << lab.skipped);
    return;
  }
  const uint64_t steps = 1500;
  auto id = submit_under_way(lab, steps);
  // As a preemption or a failed host would: Slurm ends every task and queues
  // the job again, to run when its begin time (Slurm holds it a while) comes.
  lab.slurm({"scontrol", "requeue", id});
  REQUIRE(poll_until(std::chrono::seconds(30), [&] { return lab.job_state(id) == "PENDING"; }));
  lab.slurm({"scontrol", "update", "jobid=" + id, "StartTime=now"});
  // The second run's end (the first, killed, may have printed one too).
  REQUIRE(poll_until(std::chrono::seconds(120),
                     [&] { return lab.ended(id, "understudy: job " + id + " (restart 1)"); }));
  auto out = slurp(lab.output());
  INFO(out);
  CHECK_THAT(out, Catch::Contains("understudy: job " + id + " (restart 1)"));
  std::smatch m;
  REQUIRE(std::regex_search(out, m, std::regex{R"(\d+: job: resuming from committed step (\d+))"}));
  CHECK(std::stoull(m[1]) >= 300);
  auto expected = hex(config_digest(lab.state() + "/cluster.toml", lab.dir.path + "/single"));
  CHECK(final_digest(out, steps) == expected);
  CHECK_THAT(out, Catch::Contains("understudy: job " + id + " ends with status 0"));
}
