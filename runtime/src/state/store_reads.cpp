// Reads of the state store: paths, versions, a record, restoring the newest, verify, stats.

#include <lmdb.h>

#include <chrono>

#include "record_codec.hpp"
#include "store_impl.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/state/state_store.hpp"

namespace understudy {

using state_detail::as_view;
using state_detail::mdb_error;

caf::expected<std::vector<std::string>> state_store::paths() const {
  auto& st = *impl_;
  impl::reader r{st};
  if (auto err = st.begin_read(r))
    return err;
  MDB_cursor* cur = nullptr;
  if (auto rc = mdb_cursor_open(r.txn, st.records, &cur))
    return mdb_error(rc, "mdb_cursor_open");
  std::vector<std::string> result;
  MDB_val k;
  MDB_val v;
  std::string path;
  uint64_t step = 0;
  int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
  while (rc == 0) {
    if (detail::parse_record_key(as_view(k), path, step) &&
        (result.empty() || result.back() != path))
      result.push_back(path);
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  if (rc != MDB_NOTFOUND)
    return mdb_error(rc, "mdb_cursor_get");
  return result;
}

caf::expected<std::vector<version_info>> state_store::versions(const std::string& path) const {
  auto& st = *impl_;
  impl::reader r{st};
  if (auto err = st.begin_read(r))
    return err;
  std::vector<uint64_t> steps;
  if (auto rc = st.steps_of(r.txn, path, steps))
    return mdb_error(rc, "listing versions of " + path);
  std::vector<version_info> result;
  for (auto s : steps) {
    record_view view;
    if (auto err = record_view::access::fetch(view, this, r.txn, path, s)) {
      if (!is(err, state_errc::corrupt_record))
        return err;
      // Unreadable header: report what the key says.
      version_info info;
      info.path = path;
      info.step = s;
      info.problem = describe(err);
      result.push_back(std::move(info));
    } else {
      result.push_back(view.info_);
    }
  }
  return result;
}

caf::error state_store::read(const std::string& path, uint64_t step,
                             const std::function<caf::error(const record_view&)>& fn) const {
  auto& st = *impl_;
  impl::reader r{st};
  if (auto err = st.begin_read(r))
    return err;
  record_view view;
  if (auto err = record_view::access::fetch(view, this, r.txn, path, step))
    return err;
  return fn(view);
}

caf::expected<restore_report> state_store::restore_newest(
    const std::string& path, const std::function<caf::error(const record_view&)>& load,
    uint64_t max_step) const {
  auto t0 = std::chrono::steady_clock::now();
  auto& st = *impl_;
  restore_report report;
  impl::reader r{st};
  if (auto err = st.begin_read(r))
    return err;
  std::vector<uint64_t> steps;
  if (auto rc = st.steps_of(r.txn, path, steps))
    return mdb_error(rc, "listing versions of " + path);
  for (auto i = steps.rbegin(); i != steps.rend(); ++i) {
    if (*i > max_step)
      continue;
    record_view view;
    auto err = record_view::access::fetch(view, this, r.txn, path, *i);
    if (!err)
      err = load(view);
    if (!err) {
      report.step = *i;
      break;
    }
    if (is(err, state_errc::io_error) || is(err, state_errc::disk_full))
      return err;
    report.skipped.emplace_back(*i, std::move(err));
  }
  report.duration = std::chrono::steady_clock::now() - t0;
  return report;
}

caf::error state_store::verify(const std::string& path, uint64_t step) const {
  return read(path, step, [](const record_view& view) { return view.verify_tensors(); });
}

caf::expected<uint64_t> state_store::newest_intact(const std::string& path,
                                                   uint64_t max_step) const {
  // What a restore would load, verifying every chunk without decoding.
  auto report = restore_newest(
      path, [](const record_view& view) { return view.verify_tensors(); }, max_step);
  if (!report)
    return report.error();
  return report->step.value_or(0);
}

caf::expected<uint64_t> state_store::replica_epoch(const std::string& sender) const {
  auto& st = *impl_;
  impl::reader r{st};
  if (auto err = st.begin_read(r))
    return err;
  uint64_t epoch = 0;
  if (auto rc = st.sender_epoch(r.txn, sender, epoch))
    return mdb_error(rc, "reading the epoch of " + sender + " in " + st.cfg.directory);
  return epoch;
}

size_t state_store::map_size() const {
  return impl_->map_size.load();
}

state_store_stats state_store::stats() const {
  state_store_stats s;
  s.commits = impl_->commits;
  s.puts = impl_->puts;
  s.bytes_written = impl_->bytes_written;
  s.map_growths = impl_->map_growths;
  s.versions_deleted = impl_->versions_deleted;
  return s;
}

} // namespace understudy
