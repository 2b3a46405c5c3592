#include "understudy/state/persistent.hpp"

#include <kj/exception.h>
#include <sys/mman.h>

#include <cstdint>

namespace understudy {

checkpoint state_encoder::finish(std::string path, uint64_t step, uint64_t schema_id,
                                 uint32_t schema_version, uint64_t incarnation) {
  checkpoint cp;
  cp.path = std::move(path);
  cp.step = step;
  cp.schema_id = schema_id;
  cp.schema_version = schema_version;
  cp.incarnation = incarnation;
  auto words = capnp::messageToFlatArray(message_);
  auto bytes = words.asBytes();
  cp.payload.resize(bytes.size() / sizeof(uint64_t));
  std::memcpy(cp.payload.data(), bytes.begin(), bytes.size());
  cp.tensors = std::move(tensors_);
  return cp;
}

state_decoder::state_decoder(const record_view& rec, payload_limits limits,
                             tensor_recycler* recycler)
    : rec_(rec), limits_(limits), recycler_(recycler) {
  // Nothing to do.
}

capnp::MessageReader& state_decoder::reader() {
  if (!reader_) {
    capnp::ReaderOptions opts;
    opts.traversalLimitInWords = limits_.traversal_words;
    opts.nestingLimit = limits_.nesting;
    reader_ = std::make_unique<capnp::FlatArrayMessageReader>(
        kj::arrayPtr(reinterpret_cast<const capnp::word*>(rec_.payload_words()),
                     rec_.payload_word_count()),
        opts);
  }
  return *reader_;
}

void state_decoder::advise_fresh_buffer(void* data, size_t bytes) {
  constexpr uintptr_t huge = uintptr_t{2} << 20;
  if (bytes < 2 * huge)
    return;
  auto begin = (reinterpret_cast<uintptr_t>(data) + huge - 1) & ~(huge - 1);
  auto end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(huge - 1);
  if (end > begin)
    ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

caf::error state_decoder::copy_tensor(std::string_view name, void* dst, size_t size) const {
  auto idx = rec_.find_tensor(name);
  if (!idx)
    return missing_tensor(name);
  return rec_.copy_tensor(*idx, dst, size);
}

caf::error state_decoder::missing_tensor(std::string_view name) const {
  return make_error(state_errc::schema_mismatch, rec_.info().path + "@" +
                                                     std::to_string(rec_.info().step) +
                                                     " has no tensor " + std::string{name});
}

persistent_identity persistent_identity::of(const child_context& ctx) {
  persistent_identity id;
  id.path = ctx.path;
  id.child = ctx.id;
  auto pos = ctx.path.rfind('/');
  id.supervisor = pos == std::string::npos ? std::string{} : ctx.path.substr(0, pos);
  id.incarnation = ctx.incarnation;
  id.events = ctx.events;
  id.token = ctx.token;
  return id;
}

namespace detail {

void report_restore(const persistent_identity& id, const caf::expected<restore_report>& report) {
  if (!id.events || !report)
    return;
  supervision_event ev;
  ev.supervisor = id.supervisor;
  ev.child = id.child;
  ev.incarnation = id.incarnation;
  ev.duration = std::chrono::duration_cast<caf::timespan>(report->duration);
  ev.time = std::chrono::steady_clock::now();
  ev.wall_time = std::chrono::system_clock::now();
  std::string skipped;
  for (auto& [step, err] : report->skipped) {
    if (!skipped.empty())
      skipped += "; ";
    skipped += "skipped step " + std::to_string(step) + ": " + describe(err);
  }
  if (report->step) {
    ev.kind = report->skipped.empty() ? event_kind::state_restored : event_kind::state_fallback;
    ev.action = "restored step " + std::to_string(*report->step);
    ev.state_step = report->step;
    ev.reason = skipped;
  } else {
    ev.kind = event_kind::state_fresh;
    ev.action = "fresh start";
    ev.reason = report->skipped.empty() ? "no saved state" : "no valid version: " + skipped;
  }
  id.events->on_event(ev);
}

caf::error load_exception(const std::string& path, uint64_t step, const char* what) {
  return make_error(state_errc::corrupt_record,
                    path + "@" + std::to_string(step) + ": malformed state payload: " + what);
}

} // namespace detail

} // namespace understudy
