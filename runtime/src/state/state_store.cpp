// The state store's LMDB environment: open, reader check, map growth, sharing read-only opens.

#include "understudy/state/state_store.hpp"

#include <fcntl.h>
#include <lmdb.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <map>
#include <mutex>
#include <shared_mutex>

#include "store_impl.hpp"
#include "understudy/core/errors.hpp"

namespace understudy {

using state_detail::mdb_error;

// -- LMDB errors --------------------------------------------------------------

namespace state_detail {

caf::error mdb_error(int rc, const std::string& what) {
  if (rc == ENOSPC)
    return make_error(state_errc::disk_full, what + ": " + mdb_strerror(rc));
  return make_error(state_errc::io_error,
                    what + ": " + mdb_strerror(rc) + " (code " + std::to_string(rc) + ")");
}

} // namespace state_detail

// -- the environment -----------------------------------------------------------

state_store::impl::~impl() {
  if (env != nullptr)
    mdb_env_close(env);
  if (lock_fd >= 0)
    ::close(lock_fd);
}

void state_store::impl::refresh_map_info() {
  MDB_envinfo info;
  mdb_env_info(env, &info);
  map_size = info.me_mapsize;
  MDB_stat st;
  mdb_env_stat(env, &st);
  page_size = st.ms_psize;
}

caf::error state_store::impl::grow() {
  std::unique_lock<std::shared_mutex> guard{resize_mtx};
  auto cur = map_size.load();
  if (cur >= cfg.max_map_size)
    return make_error(state_errc::map_size_limit, cfg.directory + ": map is full at max_map_size " +
                                                      std::to_string(cur) + " bytes");
  auto next = std::min(cfg.max_map_size, cur * 2);
  if (auto rc = mdb_env_set_mapsize(env, next))
    return mdb_error(rc, "mdb_env_set_mapsize(" + std::to_string(next) + ")");
  refresh_map_info();
  ++map_growths;
  return {};
}

caf::error state_store::impl::begin_read(reader& r) const {
  for (int attempt = 0;; ++attempt) {
    auto rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &r.txn);
    if (rc == 0)
      return {};
    r.txn = nullptr;
    if (rc != MDB_MAP_RESIZED || attempt > 0)
      return mdb_error(rc, "mdb_txn_begin(read) in " + cfg.directory);
    // The writer (another process) grew the map: adopt its size, which
    // LMDB allows only with no transaction open here.
    r.guard.unlock();
    {
      std::unique_lock<std::shared_mutex> resize{resize_mtx};
      if (auto rc2 = mdb_env_set_mapsize(env, 0))
        return mdb_error(rc2, "mdb_env_set_mapsize(0) in " + cfg.directory);
      const_cast<impl*>(this)->refresh_map_info();
    }
    r.guard.lock();
  }
}

// -- state_store ----------------------------------------------------------------

state_store::state_store(std::unique_ptr<impl> ptr) : impl_(std::move(ptr)) {
  // Nothing to do.
}

state_store::~state_store() = default;

const state_store_config& state_store::config() const noexcept {
  return impl_->cfg;
}

namespace {

/// The stores this process has open, by canonical directory: a read-only open
/// of one of them shares it, because LMDB must not open an environment twice
/// in one process (closing the second would drop the first's file locks).
/// Process-wide for that reason: LMDB's rule is per process, not per runtime.
struct open_stores {
  std::mutex mtx;
  std::map<std::string, std::weak_ptr<state_store>> by_dir;

  static open_stores& get() {
    static open_stores instance;
    return instance;
  }

  static std::string key(const std::string& directory) {
    std::error_code ec;
    auto canonical = std::filesystem::weakly_canonical(directory, ec);
    return ec ? directory : canonical.string();
  }
};

} // namespace

namespace {

/// `state_errc::corrupt_record` if the data file behind `fd` is shorter than
/// the pages its newest committed transaction uses.
caf::error check_file_size(MDB_env* env, int fd, const std::string& directory) {
  struct stat file {};
  if (::fstat(fd, &file) != 0)
    return mdb_error(errno, "fstat " + directory + "/data.mdb");
  MDB_envinfo info;
  mdb_env_info(env, &info);
  MDB_stat st;
  mdb_env_stat(env, &st);
  auto needed = (static_cast<uint64_t>(info.me_last_pgno) + 1) * st.ms_psize;
  auto size = static_cast<uint64_t>(file.st_size);
  if (size >= needed)
    return {};
  return make_error(state_errc::corrupt_record,
                    directory + "/data.mdb is truncated: it has " + std::to_string(size) +
                        " bytes, but its last committed transaction uses " +
                        std::to_string(needed) + " (" + std::to_string(info.me_last_pgno + 1) +
                        " pages of " + std::to_string(st.ms_psize) + " bytes)");
}

} // namespace

caf::expected<std::shared_ptr<state_store>> state_store::open(state_store_config cfg) {
  if (cfg.directory.empty())
    return make_error(state_errc::invalid_config, "state directory is empty");
  auto& registry = open_stores::get();
  const auto dir_key = open_stores::key(cfg.directory);
  if (cfg.read_only) {
    std::lock_guard<std::mutex> guard{registry.mtx};
    if (auto i = registry.by_dir.find(dir_key); i != registry.by_dir.end())
      if (auto existing = i->second.lock())
        return existing;
  }
  if (cfg.chunk_size == 0 || cfg.chunk_size % 4096 != 0)
    return make_error(
        state_errc::invalid_config,
        "chunk_size must be a positive multiple of 4096, got " + std::to_string(cfg.chunk_size));
  if (cfg.retention.keep_last == 0)
    return make_error(state_errc::invalid_config, "retention.keep_last must be at least 1");
  if (cfg.initial_map_size < (size_t{1} << 20) || cfg.initial_map_size > cfg.max_map_size)
    return make_error(state_errc::invalid_config,
                      "initial_map_size must be at least 1 MiB and at most max_map_size");
  if (cfg.mode == durability::periodic && cfg.sync_interval.count() <= 0)
    return make_error(state_errc::invalid_config, "sync_interval must be positive");
  auto st = std::make_unique<impl>();
  st->cfg = cfg;
  std::error_code ec;
  if (!cfg.read_only) {
    std::filesystem::create_directories(cfg.directory, ec);
    if (ec)
      return make_error(state_errc::io_error,
                        "cannot create state directory " + cfg.directory + ": " + ec.message());
    // One writer per directory: an exclusive lock held while the store is open.
    // flock locks belong to the open file, so a second open in this process fails too.
    auto lock_path = cfg.directory + "/understudy.lock";
    st->lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (st->lock_fd < 0)
      return mdb_error(errno, "open " + lock_path);
    if (::flock(st->lock_fd, LOCK_EX | LOCK_NB) != 0) {
      char buf[32] = {0};
      auto n = ::pread(st->lock_fd, buf, sizeof(buf) - 1, 0);
      std::string holder = n > 0 ? std::string{" (held by pid "} + buf + ")" : std::string{};
      return make_error(state_errc::locked, "state directory " + cfg.directory +
                                                " is already open for writing" + holder);
    }
    auto pid = std::to_string(::getpid());
    if (::ftruncate(st->lock_fd, 0) == 0 && ::pwrite(st->lock_fd, pid.data(), pid.size(), 0) < 0) {
      // The pid is informational only.
    }
  } else if (!std::filesystem::exists(cfg.directory + "/data.mdb", ec)) {
    return make_error(state_errc::not_found,
                      "no state store in " + cfg.directory + " (data.mdb is missing)");
  }
  if (auto rc = mdb_env_create(&st->env))
    return mdb_error(rc, "mdb_env_create");
  mdb_env_set_maxdbs(st->env, 4);
  mdb_env_set_maxreaders(st->env, 256);
  if (!cfg.read_only) {
    if (auto rc = mdb_env_set_mapsize(st->env, cfg.initial_map_size))
      return mdb_error(rc, "mdb_env_set_mapsize");
  }
  unsigned flags = MDB_NOTLS;
  if (cfg.read_only)
    flags |= MDB_RDONLY;
  else if (cfg.write_map)
    flags |= MDB_WRITEMAP;
  if (cfg.mode != durability::sync_each_commit && !cfg.read_only)
    flags |= MDB_NOSYNC;
  if (auto rc = mdb_env_open(st->env, cfg.directory.c_str(), flags, 0644)) {
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH)
      return make_error(
          state_errc::corrupt_record,
          cfg.directory + "/data.mdb is not a usable LMDB environment: " + mdb_strerror(rc));
    return mdb_error(rc, "mdb_env_open(" + cfg.directory + ")");
  }
  mdb_env_get_fd(st->env, &st->data_fd);
  // LMDB reads pages through its map: a page past the end of a truncated
  // file faults (SIGBUS) instead of failing. The newest meta page (read
  // with read(2) by mdb_env_open) names the last page in use; refuse a file
  // shorter than that before any other page is touched.
  if (auto err = check_file_size(st->env, st->data_fd, cfg.directory))
    return err;
  int dead = 0;
  mdb_reader_check(st->env, &dead);
  st->refresh_map_info();
  st->direct = cfg.write_map && !cfg.read_only;
  MDB_txn* txn = nullptr;
  if (auto rc = mdb_txn_begin(st->env, nullptr, cfg.read_only ? MDB_RDONLY : 0, &txn))
    return mdb_error(rc, "mdb_txn_begin(open)");
  unsigned dbflags = cfg.read_only ? 0 : MDB_CREATE;
  int rc = mdb_dbi_open(txn, "records", dbflags, &st->records);
  if (rc == 0)
    rc = mdb_dbi_open(txn, "chunks", dbflags, &st->chunks);
  if (rc == 0) {
    rc = mdb_dbi_open(txn, "senders", dbflags, &st->senders);
    st->has_senders = rc == 0;
    if (rc == MDB_NOTFOUND && cfg.read_only)
      rc = 0; // written before replicas carried epochs: none recorded
  }
  if (rc != 0) {
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND)
      return make_error(state_errc::not_found, cfg.directory + " holds no understudy state");
    return mdb_error(rc, "mdb_dbi_open in " + cfg.directory);
  }
  if ((rc = mdb_txn_commit(txn)) != 0)
    return mdb_error(rc, "mdb_txn_commit(open)");
  std::shared_ptr<state_store> result{new state_store(std::move(st))};
  std::lock_guard<std::mutex> guard{registry.mtx};
  auto& slot = registry.by_dir[dir_key];
  if (slot.expired() || !cfg.read_only)
    slot = result;
  return result;
}

caf::error state_store::sync() {
  if (impl_->cfg.read_only)
    return {};
  if (auto rc = mdb_env_sync(impl_->env, 1))
    return mdb_error(rc, "mdb_env_sync in " + impl_->cfg.directory);
  return {};
}

} // namespace understudy
