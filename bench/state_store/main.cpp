// Benchmark: the state store, next to raw baselines measured in the same run.
//
//   checkpoint_write_100mib   a prepared 100 MiB checkpoint (tensor_data::share of an
//                             existing buffer) handed to the writer actor, until its
//                             durable acknowledgement; steady state (LMDB reuses freed
//                             pages). Baseline: the faster of a raw write() of the same
//                             bytes to a new file + fdatasync and a raw pwrite() over an
//                             existing file + fdatasync, in the same directory.
//   checkpoint_write_100mib_plain_lmdb
//                             the same through a store opened with write_map = false
//                             (LMDB's default write path), against the same baseline.
//   restore_100mib            state_store::restore_newest + record_view::copy_tensor
//                             (checksums verified) into a caller-owned std::vector<float>,
//                             page cache warm. Baseline: memcpy of 100 MiB into the same
//                             already-allocated vector.
//   group_commit_64x4kib      64 event-based actors, each putting 4 KiB checkpoints through
//                             the writer and waiting for the ack before the next:
//                             acknowledged puts per second. Baseline: state_store::commit
//                             of a batch of one put per transaction (sync_each_commit) in a
//                             loop, on a second store in the same directory tree.
//   restart_with_state_*      a persistent child (1 MiB or 100 MiB of floats, checkpointed
//                             once) crashes; time from the crash request until its restarted
//                             incarnation, resolved through the supervisor, answered a request
//                             with its state restored (the codec recycles: the restore
//                             reuses the dead incarnation's buffer, see tensor_recycler).
//                             Baseline: the same restart of a sibling without state.
//
// The sides of each figure run in alternating order round after round (after warm-up
// rounds), so that drift on a noisy machine hits them alike; every figure is a median.
// The state lives under --dir (default ./.bench-state, which must be on the disk to
// measure, not a tmpfs) in a directory of its own, removed at the end.
//
// Usage: bench_state_store [--quick] [--only write|group|restart] [--dir PATH]

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/system_messages.hpp>

#include "report.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/schema/state.capnp.h"
#include "understudy/state/persistent.hpp"
#include "understudy/state/runtime.hpp"
#include "understudy/state/state_store.hpp"
#include "understudy/state/state_writer.hpp"
#include "understudy/supervision/supervision_event.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace {

using bench::figure;
using bench::fixed;
using bench::make_figure;
using bench::median;
using bench::rotated;
using bench::spread;

using clock_type = std::chrono::steady_clock;

using crash_atom = caf::atom_constant<caf::atom("b_crash")>;
using save_atom = caf::atom_constant<caf::atom("b_save")>;

constexpr size_t mib = size_t{1} << 20;
/// Bytes of the large state of the write, restore and restart figures.
constexpr size_t big_bytes = 100 * mib;
/// Bytes of one group-commit checkpoint's tensor.
constexpr size_t small_bytes = 4096;
constexpr size_t group_actors = 64;

/// Requests from the main thread; a longer wait means the benchmark hangs.
constexpr auto request_timeout = std::chrono::seconds(120);
/// A group-commit round that takes longer failed.
constexpr auto round_deadline = std::chrono::seconds(120);

/// A failure of the benchmark itself (main thread only; never crosses a message).
struct bench_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct crash_error : std::runtime_error {
  crash_error() : std::runtime_error("crash requested") {}
};

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double to_ms(caf::timespan x) {
  return std::chrono::duration<double, std::milli>(x).count();
}

/// Keeps the compiler from dropping writes to `p` it could prove unused.
void do_not_optimize(const void* p) {
  asm volatile("" : : "g"(p) : "memory");
}

/// `n` pseudo-random floats (no zero pages, nothing a file system could elide).
std::vector<float> make_values(size_t n, uint64_t seed) {
  std::vector<float> out(n);
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (auto& v : out) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = static_cast<float>(static_cast<uint32_t>(x >> 40)) * 0x1p-24f;
  }
  return out;
}

using shared_floats = std::shared_ptr<const std::vector<float>>;

/// A TensorState message for `step`, as a flat array.
std::vector<uint64_t> tensor_state_payload(uint64_t step) {
  capnp::MallocMessageBuilder msg;
  auto root = msg.initRoot<understudy::schema::TensorState>();
  root.setStep(step);
  root.setNote("bench_state_store");
  auto words = capnp::messageToFlatArray(msg);
  auto bytes = words.asBytes();
  std::vector<uint64_t> out(bytes.size() / sizeof(uint64_t));
  std::memcpy(out.data(), bytes.begin(), bytes.size());
  return out;
}

/// A checkpoint of `path` at `step` whose tensor "w" shares `w` (no copy).
understudy::checkpoint_ptr make_checkpoint(std::string path, uint64_t step,
                                           const shared_floats& w) {
  auto cp = std::make_shared<understudy::checkpoint>();
  cp->path = std::move(path);
  cp->step = step;
  cp->schema_id = capnp::typeId<understudy::schema::TensorState>();
  cp->schema_version = 1;
  cp->payload = tensor_state_payload(step);
  cp->tensors.push_back(understudy::tensor_data::share("w", understudy::element_type::f32, w));
  return cp;
}

// -- files -------------------------------------------------------------------------------

std::string errno_text(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

void write_all(int fd, const std::byte* data, size_t n, off_t offset, bool positional) {
  size_t done = 0;
  while (done < n) {
    auto rc = positional ? ::pwrite(fd, data + done, n - done, offset + static_cast<off_t>(done))
                         : ::write(fd, data + done, n - done);
    if (rc < 0) {
      if (errno == EINTR)
        continue;
      throw bench_failure(errno_text("write"));
    }
    done += static_cast<size_t>(rc);
  }
}

/// The benchmark's own directory and the file system it is on.
class bench_dir {
public:
  explicit bench_dir(const std::string& base) {
    std::error_code ec;
    std::filesystem::create_directories(base, ec);
    if (ec)
      throw bench_failure("cannot create " + base + ": " + ec.message());
    path_ = base + "/run-" + std::to_string(::getpid());
    std::filesystem::remove_all(path_, ec);
    std::filesystem::create_directories(path_, ec);
    if (ec)
      throw bench_failure("cannot create " + path_ + ": " + ec.message());
    base_ = base;
    fd_ = ::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_ < 0)
      throw bench_failure(errno_text("open " + path_));
    struct statfs fs {};
    if (::fstatfs(fd_, &fs) == 0)
      tmpfs_ = fs.f_type == 0x01021994; // TMPFS_MAGIC
  }

  ~bench_dir() {
    ::close(fd_);
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
    // The base directory goes too if nothing else lives there.
    std::filesystem::remove(base_, ec);
  }

  bench_dir(const bench_dir&) = delete;
  bench_dir& operator=(const bench_dir&) = delete;

  const std::string& path() const noexcept { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }
  bool on_tmpfs() const noexcept { return tmpfs_; }

  /// Writes back everything dirty on this file system (untimed), so that no
  /// side pays for what an earlier one left behind (dirty pages, discards of
  /// freed blocks, a pending journal commit).
  void settle() const { ::syncfs(fd_); }

private:
  std::string base_;
  std::string path_;
  int fd_ = -1;
  bool tmpfs_ = false;
};

/// Raw baseline: write() to a new file, then fdatasync. Seconds.
double raw_write_new(const bench_dir& dir, const std::string& path, const std::byte* data,
                     size_t n) {
  ::unlink(path.c_str());
  dir.settle();
  auto t0 = clock_type::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw bench_failure(errno_text("open " + path));
  write_all(fd, data, n, 0, false);
  if (::fdatasync(fd) != 0)
    throw bench_failure(errno_text("fdatasync " + path));
  ::close(fd);
  return seconds_since(t0);
}

/// Raw baseline: pwrite() over an existing file of the same size, then fdatasync.
double raw_overwrite(const bench_dir& dir, const std::string& path, const std::byte* data,
                     size_t n) {
  dir.settle();
  auto t0 = clock_type::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    throw bench_failure(errno_text("open " + path));
  write_all(fd, data, n, 0, true);
  if (::fdatasync(fd) != 0)
    throw bench_failure(errno_text("fdatasync " + path));
  ::close(fd);
  return seconds_since(t0);
}

// -- stores and writers ------------------------------------------------------------------

std::shared_ptr<understudy::state_store> open_store(const std::string& dir, bool write_map) {
  understudy::state_store_config cfg;
  cfg.directory = dir;
  cfg.mode = understudy::durability::sync_each_commit;
  cfg.retention.keep_last = 2;
  cfg.write_map = write_map;
  auto st = understudy::state_store::open(cfg);
  if (!st)
    throw bench_failure("open store " + dir + ": " + understudy::describe(st.error()));
  return *st;
}

/// A writer actor that is told to stop when this handle goes (also on a
/// failure), so that the actor system can shut down.
class writer_handle {
public:
  writer_handle(caf::actor_system& sys, std::shared_ptr<understudy::state_store> store)
      : actor_(understudy::spawn_state_writer(sys, std::move(store))) {}
  ~writer_handle() {
    if (actor_)
      caf::anon_send_exit(actor_, caf::exit_reason::user_shutdown);
  }
  writer_handle(const writer_handle&) = delete;
  writer_handle& operator=(const writer_handle&) = delete;

  const caf::actor& get() const noexcept { return actor_; }

private:
  caf::actor actor_;
};

/// Hands `cp` to `writer` and waits for its durable acknowledgement. Seconds.
double timed_put(caf::scoped_actor& self, const caf::actor& writer, understudy::checkpoint_ptr cp) {
  auto step = cp->step;
  uint64_t acked = 0;
  caf::error err;
  auto t0 = clock_type::now();
  self->request(writer, request_timeout, understudy::put_state_atom::value, std::move(cp))
      .receive([&](uint64_t s) { acked = s; }, [&](caf::error& e) { err = std::move(e); });
  auto dt = seconds_since(t0);
  if (err)
    throw bench_failure("put: " + understudy::describe(err));
  if (acked != step)
    throw bench_failure("put of step " + std::to_string(step) + " acknowledged as " +
                        std::to_string(acked));
  return dt;
}

// -- options -----------------------------------------------------------------------------

struct options {
  bool quick = false;
  std::string dir = "./.bench-state";
  /// One group of figures ("write": write and restore, "group", "restart"); empty: all.
  std::string only;
  /// Measured rounds of the write and restore figures.
  size_t write_reps = 10;
  size_t restore_reps = 15;
  /// Group-commit rounds, puts per actor per round, baseline puts per round.
  size_t group_rounds = 5;
  size_t puts_per_actor = 32;
  size_t single_puts = 160;
  /// Measured restarts per state size.
  size_t restarts = 20;
  /// Unrecorded rounds first. The write figures need more: the first versions
  /// grow the data file (fresh blocks); from about the fifth on, LMDB reuses
  /// the pages that retention freed.
  size_t warmup = 3;
  size_t write_warmup = 6;

  bool runs(const std::string& group) const { return only.empty() || only == group; }

  void make_quick() {
    quick = true;
    write_reps = 3;
    restore_reps = 3;
    group_rounds = 2;
    puts_per_actor = 8;
    single_puts = 48;
    restarts = 5;
    warmup = 2;
    write_warmup = 5;
  }
};

// -- figure 1: checkpoint write ----------------------------------------------------------

void bench_write(caf::actor_system& sys, const bench_dir& dir, const options& opts,
                 const shared_floats& data, std::shared_ptr<understudy::state_store>& store_out,
                 uint64_t& newest_step, std::vector<figure>& figs) {
  auto store = open_store(dir.sub("write"), true);
  auto plain = open_store(dir.sub("plain"), false);
  writer_handle writer{sys, store};
  writer_handle plain_writer{sys, plain};
  auto* bytes = reinterpret_cast<const std::byte*>(data->data());
  auto n = data->size() * sizeof(float);
  auto new_path = dir.sub("raw-new.bin");
  auto over_path = dir.sub("raw-over.bin");
  raw_write_new(dir, over_path, bytes, n); // The file to overwrite.
  const std::string path = "/bench/checkpoint";
  uint64_t step = 0;
  uint64_t plain_step = 0;
  std::vector<double> ours;
  std::vector<double> plain_lmdb;
  std::vector<double> raw_new;
  std::vector<double> raw_over;
  caf::scoped_actor self{sys};
  auto mbps = [n](double s) { return static_cast<double>(n) / 1e6 / s; };
  for (size_t r = 0; r < opts.write_warmup + opts.write_reps; ++r) {
    bool record = r >= opts.write_warmup;
    rotated(r, {
                   [&] {
                     auto cp = make_checkpoint(path, ++step, data);
                     dir.settle();
                     auto s = timed_put(self, writer.get(), std::move(cp));
                     if (record)
                       ours.push_back(mbps(s));
                   },
                   [&] {
                     auto s = raw_write_new(dir, new_path, bytes, n);
                     if (record)
                       raw_new.push_back(mbps(s));
                   },
                   [&] {
                     auto cp = make_checkpoint(path, ++plain_step, data);
                     dir.settle();
                     auto s = timed_put(self, plain_writer.get(), std::move(cp));
                     if (record)
                       plain_lmdb.push_back(mbps(s));
                   },
                   [&] {
                     auto s = raw_overwrite(dir, over_path, bytes, n);
                     if (record)
                       raw_over.push_back(mbps(s));
                   },
               });
  }
  auto base_new = median(raw_new);
  auto base_over = median(raw_over);
  auto base = std::max(base_new, base_over);
  const char* base_name = base_new >= base_over ? "write() to a new file" : "pwrite() over a file";
  auto f = make_figure("checkpoint_write_100mib", "MB/s", median(ours), base, 1);
  f.target = "ratio >= 0.8";
  f.met = f.ratio() >= 0.8;
  f.notes.push_back("baseline = the faster raw side: " + std::string{base_name} +
                    "; raw write()+fdatasync to a new file " + fixed(base_new, 1) + " MB/s (runs " +
                    spread(raw_new, 0) + "), raw pwrite()+fdatasync over a file " +
                    fixed(base_over, 1) + " MB/s (runs " + spread(raw_over, 0) + ")");
  f.notes.push_back("write_map store, sync_each_commit, keep_last 2; " +
                    std::to_string(ours.size()) + " runs after " +
                    std::to_string(opts.write_warmup) + " warm-up versions: " + spread(ours, 0) +
                    " MB/s; map " + std::to_string(store->map_size() / mib) + " MiB, " +
                    std::to_string(store->stats().map_growths) + " growths");
  f.notes.push_back(
      "the store starts writeback of each 8 MiB chunk (sync_file_range) while it "
      "copies the next and syncs at commit (msync of data, then of the meta page); "
      "the raw sides leave all I/O to fdatasync, so a ratio above 1 is possible");
  auto pf = make_figure("checkpoint_write_100mib_plain_lmdb", "MB/s", median(plain_lmdb), base, 1);
  pf.notes.push_back("write_map = false (LMDB's default write path), otherwise the same: runs " +
                     spread(plain_lmdb, 0) + " MB/s");
  figs.push_back(f);
  figs.push_back(pf);
  ::unlink(new_path.c_str());
  ::unlink(over_path.c_str());
  store_out = store;
  newest_step = step;
}

// -- figure 2: restore -------------------------------------------------------------------

void bench_restore(const understudy::state_store& store, uint64_t newest_step, const options& opts,
                   const shared_floats& data, std::vector<figure>& figs) {
  const std::string path = "/bench/checkpoint";
  auto n = data->size() * sizeof(float);
  std::vector<float> dst(data->size()); // Allocated and touched.
  auto gbps = [n](double s) { return static_cast<double>(n) / 1e9 / s; };
  std::vector<double> ours;
  std::vector<double> base;
  std::vector<double> load_ms;
  for (size_t r = 0; r < opts.warmup + opts.restore_reps; ++r) {
    bool record = r >= opts.warmup;
    rotated(r, {
                   [&] {
                     if (!record) // Garbage in the target, for the check below.
                       std::memset(dst.data(), 0xff, n);
                     auto t0 = clock_type::now();
                     auto report = store.restore_newest(
                         path, [&](const understudy::record_view& rec) -> caf::error {
                           auto idx = rec.find_tensor("w");
                           if (!idx)
                             return understudy::make_error(understudy::state_errc::not_found,
                                                           "no tensor w");
                           return rec.copy_tensor(*idx, dst.data(), n);
                         });
                     auto s = seconds_since(t0);
                     if (!report)
                       throw bench_failure("restore: " + understudy::describe(report.error()));
                     if (report->step != newest_step || !report->skipped.empty())
                       throw bench_failure("restore loaded another version than the newest");
                     // Checked in the warm-up rounds only, so that the measured
                     // rounds leave the caches alike for both sides.
                     if (!record && std::memcmp(dst.data(), data->data(), n) != 0)
                       throw bench_failure("restored bytes differ from the checkpoint");
                     if (record) {
                       ours.push_back(gbps(s));
                       load_ms.push_back(
                           std::chrono::duration<double, std::milli>(report->duration).count());
                     }
                   },
                   [&] {
                     auto t0 = clock_type::now();
                     std::memcpy(dst.data(), data->data(), n);
                     do_not_optimize(dst.data());
                     auto s = seconds_since(t0);
                     if (record)
                       base.push_back(gbps(s));
                   },
               });
  }
  auto f = make_figure("restore_100mib", "GB/s", median(ours), median(base), 2);
  f.target = "ratio >= 0.5";
  f.met = f.ratio() >= 0.5;
  f.notes.push_back(
      "restore_newest + copy_tensor (XXH3 per chunk verified) into a caller's "
      "std::vector<float>; runs " +
      spread(ours, 2) + " GB/s (store's own duration, median " + fixed(median(load_ms), 2) +
      " ms); memcpy runs " + spread(base, 2) + " GB/s");
  figs.push_back(f);
}

// -- figure 3: group commit --------------------------------------------------------------

/// Shared by the putters of one round and the main thread.
struct group_round {
  std::atomic<size_t> actors_left{0};
  std::atomic<uint64_t> acked{0};
  std::mutex mtx;
  std::string error;
  clock_type::time_point t_end;
  std::promise<void> done;

  void fail(std::string what) {
    std::lock_guard<std::mutex> guard{mtx};
    if (error.empty())
      error = std::move(what);
  }

  void finish_one() {
    if (--actors_left == 0) {
      t_end = clock_type::now();
      done.set_value();
    }
  }
};

struct putter_state {
  caf::actor writer;
  std::string path;
  shared_floats w;
  group_round* round = nullptr;
  uint64_t step = 0;
  size_t remaining = 0;
};

using putter_actor = caf::stateful_actor<putter_state>;

/// Puts the next checkpoint, or finishes.
void put_next(putter_actor* self) {
  auto& st = self->state;
  if (st.remaining == 0) {
    st.round->finish_one();
    self->quit();
    return;
  }
  --st.remaining;
  auto cp = make_checkpoint(st.path, ++st.step, st.w);
  self->request(st.writer, caf::infinite, understudy::put_state_atom::value, std::move(cp))
      .then(
          [self](uint64_t s) {
            auto& st = self->state;
            if (s != st.step)
              st.round->fail(st.path + ": put of step " + std::to_string(st.step) +
                             " acknowledged as " + std::to_string(s));
            ++st.round->acked;
            put_next(self);
          },
          [self](caf::error& err) {
            auto& st = self->state;
            st.round->fail(st.path + ": put: " + understudy::describe(err));
            st.round->finish_one();
            self->quit();
          });
}

/// Puts `n` checkpoints of `path` one after the other, from step `first_step` + 1.
caf::behavior putter(putter_actor* self, caf::actor writer, std::string path, uint64_t first_step,
                     size_t n, shared_floats w, group_round* round) {
  auto& st = self->state;
  st.writer = std::move(writer);
  st.path = std::move(path);
  st.w = std::move(w);
  st.round = round;
  st.step = first_step;
  st.remaining = n;
  put_next(self);
  return {
      [](caf::ok_atom) {
        // Never sent; keeps the putter alive between acknowledgements.
      },
  };
}

std::string group_path(const char* prefix, size_t i) {
  return std::string{prefix} + std::to_string(i);
}

/// One round of 64 putters with `per_actor` puts each; acked puts per second.
double group_round_once(caf::actor_system& sys, const caf::actor& writer, size_t per_actor,
                        uint64_t first_step, const shared_floats& w) {
  group_round round;
  round.actors_left = group_actors;
  auto fut = round.done.get_future();
  auto t0 = clock_type::now();
  for (size_t i = 0; i < group_actors; ++i)
    sys.spawn(putter, writer, group_path("/bench/group/a", i), first_step, per_actor, w, &round);
  if (fut.wait_for(round_deadline) != std::future_status::ready) {
    std::fprintf(stderr, "bench_state_store: error: a group-commit round did not finish\n");
    std::fflush(nullptr);
    std::_Exit(EXIT_FAILURE);
  }
  if (!round.error.empty())
    throw bench_failure("group commit: " + round.error);
  auto total = group_actors * per_actor;
  if (round.acked != total)
    throw bench_failure("group commit: " + std::to_string(round.acked.load()) + " of " +
                        std::to_string(total) + " puts acknowledged");
  return static_cast<double>(total) / std::chrono::duration<double>(round.t_end - t0).count();
}

/// One round of `n` puts, one durable transaction each; puts per second.
double single_round_once(understudy::state_store& store, size_t n, std::vector<uint64_t>& steps,
                         const shared_floats& w) {
  std::vector<caf::error> results;
  auto t0 = clock_type::now();
  for (size_t i = 0; i < n; ++i) {
    auto a = i % group_actors;
    auto cp = make_checkpoint(group_path("/bench/single/a", a), ++steps[a], w);
    if (auto err = store.commit({cp.get()}, results))
      throw bench_failure("single commit: " + understudy::describe(err));
    if (results.front())
      throw bench_failure("single commit: " + understudy::describe(results.front()));
  }
  return static_cast<double>(n) / seconds_since(t0);
}

void bench_group(caf::actor_system& sys, const bench_dir& dir, const options& opts,
                 std::vector<figure>& figs) {
  auto store = open_store(dir.sub("group"), true);
  auto single = open_store(dir.sub("single"), true);
  writer_handle writer{sys, store};
  auto w = std::make_shared<const std::vector<float>>(make_values(small_bytes / sizeof(float), 3));
  uint64_t group_step = 0;
  std::vector<uint64_t> single_steps(group_actors, 0);
  std::vector<double> ours;
  std::vector<double> base;
  understudy::state_store_stats before;
  // One warm-up round per side, then the measured ones.
  for (size_t r = 0; r <= opts.group_rounds; ++r) {
    bool record = r > 0;
    auto per_actor = record ? opts.puts_per_actor : std::max<size_t>(opts.puts_per_actor / 4, 2);
    auto single_n = record ? opts.single_puts : group_actors;
    rotated(r, {
                   [&] {
                     dir.settle();
                     if (record && ours.empty())
                       before = store->stats();
                     auto x = group_round_once(sys, writer.get(), per_actor, group_step, w);
                     group_step += per_actor;
                     if (record)
                       ours.push_back(x);
                   },
                   [&] {
                     dir.settle();
                     auto x = single_round_once(*single, single_n, single_steps, w);
                     if (record)
                       base.push_back(x);
                   },
               });
  }
  auto after = store->stats();
  auto commits = after.commits - before.commits;
  auto puts = after.puts - before.puts;
  auto f = make_figure("group_commit_64x4kib", "commits/s", median(ours), median(base), 0);
  f.target = "ratio >= 10";
  f.met = f.ratio() >= 10.0;
  f.notes.push_back(
      std::to_string(group_actors) + " actors x " + std::to_string(opts.puts_per_actor) +
      " puts of a 4 KiB tensor per round, " + std::to_string(opts.group_rounds) + " rounds: runs " +
      spread(ours, 0) + " acked puts/s; average batch " +
      fixed(commits > 0 ? static_cast<double>(puts) / static_cast<double>(commits) : 0.0, 1) +
      " puts per transaction (" + std::to_string(puts) + " puts in " + std::to_string(commits) +
      " commits)");
  f.notes.push_back(
      "baseline: state_store::commit of one put per transaction "
      "(sync_each_commit, same checkpoints, 64 paths round-robin), " +
      std::to_string(opts.single_puts) + " puts per round: runs " + spread(base, 0) + " puts/s");
  figs.push_back(f);
}

// -- figure 4: restart with state --------------------------------------------------------

/// The state of the persistent children: a step and a float vector.
struct held_state {
  uint64_t step = 0;
  std::vector<float> w;
};

} // namespace

namespace understudy {

template <>
struct state_codec<held_state> {
  using schema = understudy::schema::TensorState;
  static constexpr uint32_t version = 1;

  static void save(const held_state& x, state_encoder& enc) {
    auto root = enc.init_root<schema>();
    root.setStep(x.step);
    enc.add_tensor(tensor_data::copy_of("w", element_type::f32, x.w));
  }

  static caf::error load(state_decoder& dec, held_state& x) {
    x.step = dec.root<schema>().getStep();
    return dec.read_tensor("w", x.w);
  }

  /// The dead incarnation's vector goes back to the node's recycler, so the
  /// restarted one restores into memory that is already mapped.
  static void recycle(held_state&& x, tensor_recycler& bin) { bin.give(std::move(x.w)); }
};

} // namespace understudy

namespace {

using held_ptr = std::shared_ptr<understudy::persistent<held_state>>;

/// A persistent child: answers an int with (the int, its state's size);
/// throws on crash_atom; checkpoints on save_atom and answers when durable.
/// A fresh start fills the state with `n` floats.
caf::behavior holder(caf::event_based_actor* self, held_ptr st, size_t n) {
  if (!st->restored_step())
    st->value().w = make_values(n, 5);
  return {
      [st](int probe) { return std::make_tuple(probe, uint64_t{st->value().w.size()}); },
      [](crash_atom) { throw crash_error{}; },
      [self, st](save_atom, uint64_t step) -> caf::result<uint64_t> {
        auto rp = self->make_response_promise<uint64_t>();
        st->value().step = step;
        st->checkpoint(step, [rp](caf::expected<uint64_t> res) mutable {
          if (res)
            rp.deliver(*res);
          else
            rp.deliver(std::move(res.error()));
        });
        return rp;
      },
  };
}

/// The baseline child: the same protocol without state.
caf::behavior stateless(caf::event_based_actor*) {
  return {
      [](int probe) { return std::make_tuple(probe, uint64_t{0}); },
      [](crash_atom) { throw crash_error{}; },
  };
}

struct tracked_child {
  tracked_child(std::string name, size_t n) : id(std::move(name)), floats(n) {}

  std::string id;
  size_t floats = 0;
  caf::actor handle;
  uint64_t incarnation = 1;
  size_t restarts = 0;
  int probe = 0;
  /// Crash request to the new incarnation's answer, ms (measured restarts only).
  std::vector<double> samples;
};

/// Crashes `c` and waits for its next incarnation to answer; ms.
double restart_once(caf::scoped_actor& self, const caf::actor& sup,
                    const understudy::event_log& log, tracked_child& c) {
  caf::actor fresh;
  caf::error err;
  int answer = 0;
  uint64_t size = 0;
  auto probe = ++c.probe;
  auto t0 = clock_type::now();
  self->send(c.handle, crash_atom::value);
  self->request(sup, request_timeout, understudy::resolve_atom::value, c.id, c.incarnation + 1)
      .receive([&](caf::actor& x) { fresh = std::move(x); },
               [&](caf::error& e) { err = std::move(e); });
  if (!err)
    self->request(fresh, request_timeout, probe)
        .receive(
            [&](int a, uint64_t s) {
              answer = a;
              size = s;
            },
            [&](caf::error& e) { err = std::move(e); });
  auto ms = seconds_since(t0) * 1e3;
  if (err)
    throw bench_failure(c.id + ": restart: " + understudy::describe(err));
  if (!fresh || fresh == c.handle)
    throw bench_failure(c.id + ": resolve returned the crashed incarnation");
  if (answer != probe || size != c.floats)
    throw bench_failure(c.id + ": the new incarnation has " + std::to_string(size) +
                        " floats of state, expected " + std::to_string(c.floats));
  c.handle = std::move(fresh);
  ++c.incarnation;
  ++c.restarts;
  // The supervisor counts the new incarnation as serving once it has seen it
  // answer; a crash before that would be a failed start, not a restart.
  auto id = c.id;
  auto want = c.restarts;
  bool ok = log.wait_for(
      [&](const std::vector<understudy::supervision_event>& evs) {
        size_t k = 0;
        for (auto& ev : evs)
          if (ev.kind == understudy::event_kind::child_restarted && ev.child == id)
            ++k;
        return k >= want;
      },
      std::chrono::seconds(60));
  if (!ok)
    throw bench_failure(c.id + ": no child_restarted event");
  return ms;
}

/// The last `n` durations of events of `kind` for `child`, ms.
std::vector<double> last_durations(const std::vector<understudy::supervision_event>& evs,
                                   understudy::event_kind kind, const std::string& child,
                                   size_t n) {
  std::vector<double> out;
  for (auto& ev : evs)
    if (ev.kind == kind && ev.child == child)
      out.push_back(to_ms(ev.duration));
  if (out.size() > n)
    out.erase(out.begin(), out.end() - static_cast<std::ptrdiff_t>(n));
  return out;
}

void bench_restart(understudy::runtime& rt, const std::shared_ptr<understudy::event_log>& log,
                   const bench_dir& dir, const options& opts, std::vector<figure>& figs) {
  auto& sys = rt.system();
  auto store = open_store(dir.sub("restart"), true);
  writer_handle writer{sys, store};
  // As runtime::open_state does: dead incarnations' buffers are reused.
  auto recycler = std::make_shared<understudy::tensor_recycler>();
  understudy::persistence p{store, writer.get(), recycler};
  tracked_child small{"state_1mib", mib / sizeof(float)};
  tracked_child large{"state_100mib", big_bytes / sizeof(float)};
  tracked_child empty{"empty", 0};
  understudy::supervisor_spec spec;
  spec.name = "bench";
  spec.strategy = understudy::restart_strategy::one_for_one;
  spec.intensity.max_restarts = INT_MAX;
  spec.intensity.period = std::chrono::seconds(1);
  spec.backoff = understudy::backoff_policy{}; // Disabled: restarts at once.
  spec.events = log;
  for (auto* c : {&small, &large}) {
    auto floats = c->floats;
    spec.children.push_back(understudy::persistent_child<held_state>(
        c->id, p,
        [floats](caf::event_based_actor* self, held_ptr st) { return holder(self, st, floats); }));
  }
  spec.children.push_back(understudy::worker(empty.id, stateless));
  if (spec.backoff.enabled())
    throw bench_failure("backoff must be disabled");
  auto tree = rt.start(spec);
  if (!tree)
    throw bench_failure("start tree: " + rt.render(tree.error()));
  caf::scoped_actor self{sys};
  for (auto* c : {&small, &large, &empty}) {
    auto h = tree->resolve(c->id);
    if (!h)
      throw bench_failure("resolve " + c->id + ": " + rt.render(h.error()));
    c->handle = *h;
  }
  // Checkpoint once.
  for (auto* c : {&small, &large}) {
    caf::error err;
    uint64_t acked = 0;
    self->request(c->handle, request_timeout, save_atom::value, uint64_t{1})
        .receive([&](uint64_t s) { acked = s; }, [&](caf::error& e) { err = std::move(e); });
    if (err || acked != 1)
      throw bench_failure(c->id + ": checkpoint: " + rt.render(err));
  }
  // Warm-up restarts, then pairs (state, empty) in alternating order.
  for (size_t r = 0; r < opts.warmup + opts.restarts; ++r) {
    bool record = r >= opts.warmup;
    for (auto* c : {&small, &large}) {
      rotated(r, {
                     [&] {
                       auto ms = restart_once(self, tree->handle(), *log, *c);
                       if (record)
                         c->samples.push_back(ms);
                     },
                     [&] {
                       auto ms = restart_once(self, tree->handle(), *log, empty);
                       if (record)
                         empty.samples.push_back(ms);
                     },
                 });
    }
  }
  auto evs = log->snapshot();
  auto n = opts.restarts;
  auto empty_ev = last_durations(evs, understudy::event_kind::child_restarted, empty.id, 2 * n);
  for (auto* c : {&small, &large}) {
    auto name = c == &small ? "restart_with_state_1mib" : "restart_with_state_100mib";
    auto limit = c == &small ? 1.0 : 50.0;
    auto f = make_figure(name, "ms", median(c->samples), median(empty.samples), 3);
    f.target = "median <= " + fixed(limit, 0) + " ms";
    f.met = f.value <= limit;
    auto restarted = last_durations(evs, understudy::event_kind::child_restarted, c->id, n);
    auto loads = last_durations(evs, understudy::event_kind::state_restored, c->id, n);
    f.notes.push_back(
        "crash request -> restarted incarnation resolved and answering with its state, " +
        std::to_string(c->samples.size()) + " restarts: runs " + spread(c->samples, 3) +
        " ms; baseline: the stateless sibling, runs " + spread(empty.samples, 3) + " ms");
    f.notes.push_back("child_restarted event (crash observed -> serving): median " +
                      fixed(median(restarted), 3) + " ms (stateless sibling " +
                      fixed(median(empty_ev), 3) +
                      " ms); state_restored load time (read_tensor: copy with XXH3 "
                      "into the buffer the dead incarnation gave back, else a fresh one): "
                      "median " +
                      fixed(median(loads), 3) + " ms");
    figs.push_back(f);
  }
  auto [given, taken] = recycler->counts();
  figs.back().notes.push_back("tensor_recycler: " + std::to_string(given) +
                              " buffers given back by dead incarnations, " + std::to_string(taken) +
                              " restored into (the rest were fresh)");
  if (auto err = rt.stop(*tree))
    throw bench_failure("stop tree: " + rt.render(err));
}

// -- main --------------------------------------------------------------------------------

int run(const options& opts) {
  std::vector<figure> figs;
  bench_dir dir{opts.dir};
  auto log = std::make_shared<understudy::event_log>();
  understudy::runtime_config rc;
  rc.log_events = false;
  rc.events = log;
  std::shared_ptr<understudy::state_store> write_store;
  try {
    understudy::runtime rt{rc};
    auto& sys = rt.system();
    auto data =
        std::make_shared<const std::vector<float>>(make_values(big_bytes / sizeof(float), 1));
    uint64_t newest = 0;
    if (opts.runs("write")) {
      bench_write(sys, dir, opts, data, write_store, newest, figs);
      bench_restore(*write_store, newest, opts, data, figs);
      write_store.reset();
    }
    if (opts.runs("group"))
      bench_group(sys, dir, opts, figs);
    if (opts.runs("restart"))
      bench_restart(rt, log, dir, opts, figs);
  } catch (const bench_failure& e) {
    std::fprintf(stderr, "bench_state_store: error: %s\n", e.what());
    return EXIT_FAILURE;
  }
  if (dir.on_tmpfs())
    figs.front().notes.push_back("WARNING: " + dir.path() +
                                 " is on a tmpfs: the write figures measure no disk");
  figs.front().notes.push_back("state directory " + dir.path() + " (removed at the end)" +
                               (opts.quick ? "; --quick: few repetitions, figures are rough" : ""));
  bench::print_report("state_store", figs);
  return EXIT_SUCCESS;
}

} // namespace

int main(int argc, char** argv) {
  options opts;
  if (auto status = bench::parse_command_line(
          argc, argv,
          {
              bench::flag_option("--quick", [&] { opts.make_quick(); }),
              bench::string_option("--dir", opts.dir),
              {"--only", true,
               [&](const char* value) {
                 opts.only = value;
                 return opts.only == "write" || opts.only == "group" || opts.only == "restart";
               }},
          },
          "usage: %s [--quick] [--only write|group|restart] [--dir PATH]\n"
          "  --quick     few repetitions (a smoke run)\n"
          "  --only X    only the write and restore figures, the group commit or the\n"
          "              restarts\n"
          "  --dir PATH  where the state directories go, on the disk to measure (default %s);\n"
          "              the run uses PATH/run-<pid> and removes it at the end\n",
          argv[0], options{}.dir.c_str()))
    return *status;
  return run(opts);
}
