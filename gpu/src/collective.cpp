// The collective group: all-reduce and broadcast over GPU actors, locally
// through their own protocol or with NCCL, each collective under a deadline.

#include "understudy/gpu/collective.hpp"

#include <algorithm>
#include <deque>
#include <memory>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/message.hpp>
#include <caf/send.hpp>
#include <caf/skip.hpp>

#include "understudy/gpu/errors.hpp"
#include "understudy/gpu/gpu_actor.hpp"
#include "understudy/supervision/supervisor.hpp"

namespace understudy::gpu {

// -- errors -------------------------------------------------------------------------------

void register_collective_types(caf::actor_system_config& cfg) {
  register_error_category<collective_errc>(cfg);
  cfg.add_message_type<slice>("understudy::gpu::slice");
  cfg.add_message_type<std::vector<slice>>("std::vector<understudy::gpu::slice>");
}

// -- plan ---------------------------------------------------------------------------------

std::string to_string(collective_path x) {
  switch (x) {
    case collective_path::local:
      return "local";
    case collective_path::nccl:
      return "nccl";
  }
  return "unknown";
}

bool nccl_compiled() noexcept {
  return UNDERSTUDY_GPU_HAS_NCCL != 0;
}

collective_plan plan_collective(const collective_options& opts) {
  collective_plan plan;
  if (opts.path == collective_path::local)
    return plan;
  if (!nccl_compiled()) {
    plan.fallback_reason = "NCCL requested, but understudy was built without NCCL";
    return plan;
  }
  if (opts.devices.empty()) {
    plan.fallback_reason = "NCCL requested, but the ranks have no CUDA devices";
    return plan;
  }
  auto devices = opts.devices;
  std::sort(devices.begin(), devices.end());
  if (std::adjacent_find(devices.begin(), devices.end()) != devices.end()) {
    plan.fallback_reason = "NCCL requested, but ranks share a device";
    return plan;
  }
  plan.path = collective_path::nccl;
  return plan;
}

// -- the group actor ----------------------------------------------------------------------

namespace {

/// `(coll_deadline_atom, uint64_t seq)`: collective `seq` is due.
using coll_deadline_atom = caf::atom_constant<caf::atom("us_cdline")>;

/// `(coll_join_deadline_atom)`: the ranks had the deadline's time to join.
using coll_join_deadline_atom = caf::atom_constant<caf::atom("us_cjdline")>;

enum class coll_kind : uint8_t { all_reduce, broadcast };

const char* name_of(coll_kind k) {
  return k == coll_kind::all_reduce ? "all_reduce" : "broadcast";
}

/// A request waiting for its turn, or running.
struct coll_request {
  coll_kind kind = coll_kind::all_reduce;
  uint32_t root = 0;
  std::vector<slice> slices;
  caf::response_promise rp;
};

/// Where the running collective is.
enum class coll_phase : uint8_t {
  /// Reading the ranks' slices.
  gather,
  /// The ranks run the NCCL op in place on their streams.
  reduce,
  /// Writing the result back to the ranks.
  scatter,
};

const char* name_of(coll_phase p) {
  switch (p) {
    case coll_phase::gather:
      return "reading the ranks' slices";
    case coll_phase::reduce:
      return "in NCCL on the ranks' streams";
    case coll_phase::scatter:
      return "writing the result back";
  }
  return "?";
}

class group_actor {
public:
  group_actor(caf::event_based_actor* self, collective_options opts)
      : self_(self), opts_(std::move(opts)), plan_(plan_collective(opts_)) {
    // nop
  }

  caf::behavior start() {
    capture_exceptions(self_);
    self_->set_down_handler([this](caf::down_msg& dm) { on_down(dm); });
    if (!opts_.ranks.empty()) {
      ranks_ = opts_.ranks;
      return ready();
    }
    // Requests wait in the mailbox until every rank is resolved.
    self_->set_default_handler(caf::skip);
    ranks_.resize(opts_.rank_ids.size());
    auto left = std::make_shared<size_t>(ranks_.size());
    for (size_t r = 0; r < ranks_.size(); ++r)
      self_->request(opts_.rank_supervisor, caf::infinite, resolve_atom::value, opts_.rank_ids[r])
          .then(
              [this, r, left](const caf::actor& h) {
                ranks_[r] = h;
                if (--*left == 0) {
                  self_->set_default_handler(caf::print_and_drop);
                  self_->become(ready());
                }
              },
              [this, r](caf::error& err) {
                fail(make_error(collective_errc::rank_failed,
                                "cannot resolve rank " + std::to_string(r) + " (" +
                                    opts_.rank_ids[r] + "): " + self_->system().render(err)));
              });
    return {};
  }

private:
  size_t size() const { return ranks_.size(); }

  caf::behavior ready() {
    for (auto& r : ranks_)
      self_->monitor(r);
    if (plan_.path == collective_path::nccl)
      join_ranks();
    else
      joined_ = true;
    return {
        [this](all_reduce_atom, std::vector<slice>& slices) {
          return submit(coll_kind::all_reduce, 0, std::move(slices));
        },
        [this](broadcast_atom, uint32_t root, std::vector<slice>& slices) {
          return submit(coll_kind::broadcast, root, std::move(slices));
        },
        [this](collective_info_atom) { return describe_group(); },
        [this](coll_deadline_atom, uint64_t seq) { on_deadline(seq); },
        [this](coll_join_deadline_atom) { on_join_deadline(); },
    };
  }

  // -- the NCCL path: every rank joins one communicator --------------------------------

  /// Has every rank join a fresh communicator, under the deadline;
  /// collectives wait until all have.
  void join_ranks() {
    auto id = make_comm_id();
    if (!id)
      return fail(id.error());
    waiting_.assign(size(), true);
    self_->delayed_send(self_, opts_.deadline, coll_join_deadline_atom::value);
    for (size_t r = 0; r < size(); ++r)
      self_
          ->request(ranks_[r], caf::infinite, gpu_comm_join_atom::value, *id,
                    static_cast<uint32_t>(size()), static_cast<uint32_t>(r))
          .then(
              [this, r](caf::ok_atom) {
                if (failed_)
                  return;
                waiting_[r] = false;
                if (outstanding() != 0)
                  return;
                joined_ = true;
                start_next();
              },
              [this, r](caf::error& err) {
                fail(make_error(collective_errc::rank_failed,
                                "rank " + std::to_string(r) + " could not join the group's NCCL " +
                                    "communicator: " + self_->system().render(err)));
              });
  }

  void on_join_deadline() {
    if (joined_ || failed_)
      return;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(opts_.deadline).count();
    fail(make_error(collective_errc::deadline_exceeded,
                    "the ranks did not join the NCCL communicator within " + std::to_string(ms) +
                        " ms (waiting for " + waiting_for() + ")"));
  }

  /// Sends rank r its batch of the current collective's last phase: the
  /// collective succeeds once every rank it waits for has answered.
  void send_last(size_t r, op_batch b) {
    auto seq = seq_;
    auto phase = phase_;
    self_->request(ranks_[r], caf::infinite, gpu_run_atom::value, std::move(b))
        .then(
            [this, seq, phase, r](batch_result&) {
              if (!is_current(seq, phase))
                return;
              waiting_[r] = false;
              if (outstanding() != 0)
                return;
              current_.rp.deliver(caf::ok_atom::value);
              finish_current();
            },
            [this, seq, phase, r](caf::error& err) {
              if (is_current(seq, phase))
                fail(rank_error(r, self_->system().render(err)));
            });
  }

  /// Runs the current collective in place on every rank: one batch each with
  /// the NCCL op on its own stream.
  void reduce_in_place() {
    phase_ = coll_phase::reduce;
    waiting_.assign(size(), true);
    for (size_t r = 0; r < size(); ++r) {
      op_batch b;
      if (current_.kind == coll_kind::all_reduce)
        b.all_reduce(current_.slices[r]);
      else
        b.broadcast(current_.slices[r], current_.root);
      send_last(r, std::move(b));
    }
  }

  std::string describe_group() const {
    std::string ranks = std::to_string(size()) + (size() == 1 ? " rank" : " ranks");
    if (plan_.path == collective_path::nccl) {
      std::string devices;
      for (auto d : opts_.devices)
        devices += (devices.empty() ? "" : ", ") + std::to_string(d);
      return "nccl: in place on the ranks' buffers and streams, one communicator over " + ranks +
             " on devices " + devices;
    }
    std::string result = "local: host copies and axpy in rank order over " + ranks;
    if (!plan_.fallback_reason.empty())
      result += " (" + plan_.fallback_reason + ")";
    return result;
  }

  caf::response_promise submit(coll_kind kind, uint32_t root, std::vector<slice> slices) {
    auto rp = self_->make_response_promise();
    auto bad = [&](const std::string& why) {
      rp.deliver(
          make_error(collective_errc::invalid_argument, std::string{name_of(kind)} + ": " + why));
      return rp;
    };
    if (slices.size() != size())
      return bad("expected one slice per rank (" + std::to_string(size()) + "), got " +
                 std::to_string(slices.size()));
    for (auto& s : slices)
      if (s.count != slices.front().count)
        return bad("slices differ in size (" + std::to_string(slices.front().count) + " and " +
                   std::to_string(s.count) + " elements)");
    if (kind == coll_kind::broadcast && root >= size())
      return bad("root " + std::to_string(root) + " is no rank (" + std::to_string(size()) +
                 " ranks)");
    if (slices.front().count == 0) {
      rp.deliver(caf::ok_atom::value);
      return rp;
    }
    queue_.push_back(coll_request{kind, root, std::move(slices), rp});
    start_next();
    return rp;
  }

  // -- running one collective -------------------------------------------------------------

  void start_next() {
    if (running_ || queue_.empty() || failed_ || !joined_)
      return;
    running_ = true;
    current_ = std::move(queue_.front());
    queue_.pop_front();
    ++seq_;
    self_->delayed_send(self_, opts_.deadline, coll_deadline_atom::value, seq_);
    if (plan_.path == collective_path::nccl)
      return reduce_in_place();
    parts_.assign(size(), {});
    waiting_.assign(size(), false);
    phase_ = coll_phase::gather;
    for (size_t r = 0; r < size(); ++r)
      if (current_.kind == coll_kind::all_reduce || r == current_.root)
        gather(r);
  }

  /// Downloads rank r's slice.
  void gather(size_t r) {
    waiting_[r] = true;
    op_batch b;
    b.download(current_.slices[r]);
    auto seq = seq_;
    self_->request(ranks_[r], caf::infinite, gpu_run_atom::value, std::move(b))
        .then(
            [this, seq, r](batch_result& res) {
              if (!is_current(seq, coll_phase::gather))
                return;
              waiting_[r] = false;
              if (res.downloads.size() != 1 || res.downloads[0].size() != current_.slices[r].count)
                return fail(rank_error(r, "answered a download with the wrong number of values"));
              parts_[r] = std::move(res.downloads[0]);
              if (outstanding() == 0)
                combine();
            },
            [this, seq, r](caf::error& err) {
              if (!is_current(seq, coll_phase::gather))
                return;
              // Nothing changed yet: a slice the rank rejects fails this request only.
              if (is(err, gpu_errc::invalid_argument)) {
                current_.rp.deliver(
                    make_error(collective_errc::invalid_argument,
                               std::string{name_of(current_.kind)} + ": rank " + std::to_string(r) +
                                   " rejected its slice: " + self_->system().render(err)));
                finish_current();
                return;
              }
              fail(rank_error(r, self_->system().render(err)));
            });
  }

  void combine() {
    const size_t n = current_.slices.front().count;
    if (current_.kind == coll_kind::broadcast) {
      auto values = std::make_shared<const std::vector<float>>(std::move(parts_[current_.root]));
      scatter([&](size_t r) { return r == current_.root ? nullptr : values; });
      return;
    }
    // Rank order, whatever order the answers came in: bit-identical sums.
    auto sum = std::make_shared<std::vector<float>>(std::move(parts_[0]));
    for (size_t r = 1; r < size(); ++r)
      if (auto err = cpu_->axpy(n, 1.0f, parts_[r].data(), sum->data()))
        return fail(err);
    std::shared_ptr<const std::vector<float>> result = std::move(sum);
    scatter([&](size_t) { return result; });
  }

  /// Uploads `values_for(r)` into every rank's slice (skipping null ones).
  template <class F>
  void scatter(F values_for) {
    phase_ = coll_phase::scatter;
    std::fill(waiting_.begin(), waiting_.end(), false);
    for (size_t r = 0; r < size(); ++r) {
      auto values = values_for(r);
      if (!values)
        continue;
      waiting_[r] = true;
      op_batch b;
      b.upload(current_.slices[r], *values);
      send_last(r, std::move(b));
    }
    if (outstanding() == 0) {
      current_.rp.deliver(caf::ok_atom::value);
      finish_current();
    }
  }

  void finish_current() {
    running_ = false;
    current_ = coll_request{};
    start_next();
  }

  bool is_current(uint64_t seq, coll_phase phase) const {
    return running_ && !failed_ && seq == seq_ && phase == phase_;
  }

  size_t outstanding() const {
    return static_cast<size_t>(std::count(waiting_.begin(), waiting_.end(), true));
  }

  caf::error rank_error(size_t r, const std::string& what) const {
    return make_error(collective_errc::rank_failed, std::string{name_of(current_.kind)} + " #" +
                                                        std::to_string(seq_) + ": rank " +
                                                        std::to_string(r) + ": " + what);
  }

  /// "rank 2" or "ranks 0, 3": the ranks the current phase still waits for.
  std::string waiting_for() const {
    std::string silent;
    for (size_t r = 0; r < size(); ++r)
      if (waiting_[r])
        silent += (silent.empty() ? "" : ", ") + std::to_string(r);
    if (silent.empty())
      return silent;
    return (silent.find(',') == std::string::npos ? "rank " : "ranks ") + silent;
  }

  void on_deadline(uint64_t seq) {
    if (!running_ || failed_ || seq != seq_)
      return;
    auto silent = waiting_for();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(opts_.deadline).count();
    fail(make_error(collective_errc::deadline_exceeded,
                    std::string{name_of(current_.kind)} + " #" + std::to_string(seq) + " over " +
                        std::to_string(size()) + " ranks not finished within " +
                        std::to_string(ms) + " ms (" + name_of(phase_) +
                        (silent.empty() ? std::string{} : "; waiting for " + silent) + ")"));
  }

  void on_down(const caf::down_msg& dm) {
    for (size_t r = 0; r < size(); ++r)
      if (ranks_[r] && ranks_[r].address() == dm.source) {
        fail(make_error(collective_errc::rank_failed, "rank " + std::to_string(r) + " exited: " +
                                                          self_->system().render(dm.reason)));
        return;
      }
  }

  /// Fails every pending request with `err` and ends the group with it.
  void fail(const caf::error& err) {
    if (failed_)
      return;
    failed_ = true;
    // Collectives stuck on a dead peer return; the ranks' buffers are
    // restored before the next step uses them.
    if (plan_.path == collective_path::nccl)
      for (auto& r : ranks_)
        if (r)
          self_->send(r, gpu_comm_abort_atom::value);
    if (running_)
      current_.rp.deliver(err);
    for (auto& q : queue_)
      q.rp.deliver(err);
    queue_.clear();
    self_->quit(err);
  }

  caf::event_based_actor* self_;
  collective_options opts_;
  collective_plan plan_;
  std::vector<caf::actor> ranks_;
  std::deque<coll_request> queue_;
  bool running_ = false;
  bool failed_ = false;
  /// Whether collectives may run: every rank has joined (always on the local path).
  bool joined_ = false;
  coll_request current_;
  uint64_t seq_ = 0;
  coll_phase phase_ = coll_phase::gather;
  std::vector<std::vector<float>> parts_;
  /// Ranks whose answer the current phase (or the join) waits for.
  std::vector<bool> waiting_;
  std::unique_ptr<backend> cpu_ = make_cpu_backend();
};

caf::behavior group_behavior(caf::event_based_actor* self, collective_options opts) {
  auto g = std::make_shared<group_actor>(self, std::move(opts));
  self->attach_functor([g](const caf::error&) {});
  return g->start();
}

} // namespace

caf::expected<caf::actor> spawn_collective_group(caf::actor_system& sys, collective_options opts) {
  const size_t n = opts.ranks.empty() ? opts.rank_ids.size() : opts.ranks.size();
  if (n == 0)
    return make_error(collective_errc::invalid_argument, "a collective group needs ranks");
  if (opts.ranks.empty() && !opts.rank_supervisor)
    return make_error(collective_errc::invalid_argument,
                      "ranks given by id need the supervisor to resolve them");
  auto plan = plan_collective(opts);
  if (plan.path == collective_path::nccl) {
    if (opts.devices.size() != n)
      return make_error(collective_errc::invalid_argument,
                        "the NCCL path needs one device per rank (" + std::to_string(n) +
                            " ranks, " + std::to_string(opts.devices.size()) + " devices)");
  }
  return caf::actor{sys.spawn(group_behavior, std::move(opts))};
}

child_spec collective_child(std::string id, collective_options opts) {
  child_spec spec;
  spec.id = std::move(id);
  spec.start = [opts](child_context& ctx) {
    auto o = opts;
    if (o.ranks.empty() && !o.rank_supervisor)
      o.rank_supervisor = ctx.token.supervisor; // siblings of the group
    return spawn_collective_group(ctx.system, std::move(o));
  };
  return spec;
}

} // namespace understudy::gpu
