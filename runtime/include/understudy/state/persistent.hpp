#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/expected.hpp>
#include <caf/timespan.hpp>
#include <caf/typed_response_promise.hpp>
#include <capnp/generated-header-support.h>

#include "understudy/core/errors.hpp"
#include "understudy/state/state_store.hpp"
#include "understudy/state/state_writer.hpp"
#include "understudy/supervision/child_spec.hpp"
#include "understudy/supervision/supervision_event.hpp"

namespace understudy {

/// Limits for reading a state payload, which is untrusted input (it came from
/// disk): at most `traversal_words` words visited and `nesting` levels deep.
struct payload_limits {
  uint64_t traversal_words = uint64_t{8} << 20;
  int nesting = 64;
};

/// Builds one checkpoint of a state: its Cap'n Proto message and its tensors.
/// Used by state_codec<State>::save; one per checkpoint, on the actor's thread.
class state_encoder {
public:
  /// The message whose root is the state's schema struct.
  capnp::MessageBuilder& message() noexcept { return message_; }
  template <class T>
  typename T::Builder init_root() {
    return message_.initRoot<T>();
  }
  /// Adds a tensor; its bytes go in chunks and are not limited in size.
  void add_tensor(tensor_data t) { tensors_.push_back(std::move(t)); }

  /// Finishes the checkpoint (for persistent<>; users do not call it).
  checkpoint finish(std::string path, uint64_t step, uint64_t schema_id, uint32_t schema_version,
                    uint64_t incarnation);

private:
  capnp::MallocMessageBuilder message_;
  std::vector<tensor_data> tensors_;
};

/// Reads one stored version of a state, for state_codec<State>::load. The
/// payload is read with explicit traversal and nesting limits; tensors are
/// verified chunk by chunk as they are copied out.
class state_decoder {
public:
  state_decoder(const record_view& rec, payload_limits limits, tensor_recycler* recycler = nullptr);

  const record_view& record() const noexcept { return rec_; }

  /// The payload's root as `T`. Throws kj::Exception on malformed data, which
  /// the caller (persistent<>) turns into corrupt_record.
  template <class T>
  typename T::Reader root() {
    return reader().getRoot<T>();
  }

  /// Copies tensor `name` into `dst` of exactly its size.
  caf::error copy_tensor(std::string_view name, void* dst, size_t size) const;

  /// Resizes `out` to tensor `name`'s size and copies it in.
  template <class T>
  caf::error read_tensor(std::string_view name, std::vector<T>& out) const {
    auto idx = rec_.find_tensor(name);
    if (!idx)
      return missing_tensor(name);
    auto bytes = rec_.info().tensors[*idx].size;
    if (bytes % sizeof(T) != 0)
      return make_error(state_errc::corrupt_record,
                        "tensor " + std::string{name} + " size is not a multiple of the element");
    if (out.capacity() * sizeof(T) < bytes) {
      // A dead incarnation's buffer is already mapped: no page faults. Its
      // stale elements are all overwritten below (or the load fails).
      if (recycler_ != nullptr)
        out = recycler_->take<T>(bytes / sizeof(T));
      if (out.capacity() * sizeof(T) < bytes) {
        std::vector<T>{}.swap(out);
        out.reserve(bytes / sizeof(T));
        advise_fresh_buffer(out.data(), bytes);
      }
    }
    out.resize(bytes / sizeof(T));
    return rec_.copy_tensor(*idx, out.data(), bytes);
  }

private:
  /// Asks for huge pages on a fresh buffer of `bytes` (>= 4 MiB), which cuts
  /// its page faults by 512x; a no-op for smaller buffers.
  static void advise_fresh_buffer(void* data, size_t bytes);
  capnp::MessageReader& reader();
  caf::error missing_tensor(std::string_view name) const;
  const record_view& rec_;
  payload_limits limits_;
  tensor_recycler* recycler_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
};

/// Maps a state type to its Cap'n Proto schema. Specialize it per state type:
///
///     template <> struct state_codec<my_state> {
///       using schema = my::schema::MyState;          // root struct
///       static constexpr uint32_t version = 1;
///       static void save(const my_state&, state_encoder&);
///       static caf::error load(state_decoder&, my_state&);
///     };
///
/// `load` fills a default-constructed state; an error (or a Cap'n Proto
/// exception) rejects the version, and the previous one is tried. Optional:
///
///       static void recycle(my_state&& dead, tensor_recycler& bin);
///
/// hands a dead incarnation's tensor vectors to `bin.give(...)`, so that the
/// next incarnation's `read_tensor` restores into memory already mapped.
template <class State>
struct state_codec;

namespace detail {

template <class Codec, class State, class = void>
struct has_recycle : std::false_type {};

template <class Codec, class State>
struct has_recycle<Codec, State,
                   std::void_t<decltype(Codec::recycle(std::declval<State&&>(),
                                                       std::declval<tensor_recycler&>()))>>
    : std::true_type {};

} // namespace detail

/// Who a persistent state belongs to (for keys and events).
struct persistent_identity {
  /// The actor's path in the tree: the key of its versions.
  std::string path;
  /// The supervisor's path and the child's id, for supervision events.
  std::string supervisor;
  std::string child;
  uint64_t incarnation = 0;
  std::shared_ptr<event_sink> events;
  child_token token;

  /// The identity of the child being started in `ctx`.
  static persistent_identity of(const child_context& ctx);
};

namespace detail {

/// Emits the event describing `report` (restored, fell back, or fresh start).
void report_restore(const persistent_identity& id, const caf::expected<restore_report>& report);

/// Turns a Cap'n Proto exception while loading into corrupt_record.
caf::error load_exception(const std::string& path, uint64_t step, const char* what);

} // namespace detail

/// A persistent actor's state: loaded from the store on (re)start, checkpointed
/// asynchronously through the writer. Lives on its actor's thread; not
/// thread-safe. `State` must be default-constructible and have a state_codec.
template <class State>
class persistent {
public:
  using codec = state_codec<State>;

  persistent(caf::event_based_actor* self, persistence p, persistent_identity id,
             payload_limits limits = {})
      : self_(self), p_(std::move(p)), id_(std::move(id)), limits_(limits) {}

  ~persistent() { release(); }

  persistent(const persistent&) = delete;
  persistent& operator=(const persistent&) = delete;

  /// Hands the state's buffers to the recycler when the codec supports it (see
  /// state_codec); value() is left empty. For when the actor exits: the next
  /// incarnation then restores into memory that is already mapped.
  void release() {
    if constexpr (detail::has_recycle<codec, State>::value) {
      if (p_.recycler && !released_) {
        released_ = true;
        codec::recycle(std::move(value_), *p_.recycler);
        value_ = State{};
      }
    }
  }

  /// Loads the newest valid version with step <= `max_step` into value()
  /// (replacing it only on success) and reports it as a supervision event:
  /// state_restored, state_fallback (a newer version was corrupt) or
  /// state_fresh (none valid; value() stays default). Errors: I/O only.
  /// `rejected`: newer versions the caller already found corrupt (e.g. while
  /// copying tensors it loaded lazily), reported as skipped before the others.
  caf::expected<restore_report> restore(
      uint64_t max_step = UINT64_MAX, std::vector<std::pair<uint64_t, caf::error>> rejected = {}) {
    auto report = p_.store->restore_newest(
        id_.path,
        [this](const record_view& rec) -> caf::error {
          if (rec.info().schema_id != capnp::typeId<typename codec::schema>() ||
              rec.info().schema_version != codec::version)
            return make_error(state_errc::schema_mismatch,
                              id_.path + "@" + std::to_string(rec.info().step) +
                                  ": stored schema does not match the state type");
          State fresh{};
          state_decoder dec{rec, limits_, p_.recycler.get()};
          try {
            if (auto err = codec::load(dec, fresh))
              return err;
          } catch (const kj::Exception& e) {
            return detail::load_exception(id_.path, rec.info().step, e.getDescription().cStr());
          }
          value_ = std::move(fresh);
          return {};
        },
        max_step);
    if (report) {
      restored_step_ = report->step;
      report->skipped.insert(report->skipped.begin(), std::make_move_iterator(rejected.begin()),
                             std::make_move_iterator(rejected.end()));
    }
    detail::report_restore(id_, report);
    return report;
  }

  State& value() noexcept { return value_; }
  const State& value() const noexcept { return value_; }

  /// The step restore() loaded, or none after a fresh start.
  std::optional<uint64_t> restored_step() const noexcept { return restored_step_; }

  /// The newest step acknowledged as durable by the writer in this incarnation.
  std::optional<uint64_t> durable_step() const noexcept { return durable_step_; }

  /// Checkpoints at `step` now: encodes value() (state_codec::save) and hands
  /// it to the writer. `done` runs on this actor once the checkpoint is
  /// durable, with the step or the error; the actor keeps working meanwhile.
  void checkpoint(uint64_t step, std::function<void(caf::expected<uint64_t>)> done = {}) {
    state_encoder enc;
    codec::save(value_, enc);
    auto cp = std::make_shared<const understudy::checkpoint>(enc.finish(
        id_.path, step, capnp::typeId<typename codec::schema>(), codec::version, id_.incarnation));
    ++in_flight_;
    self_->request(p_.writer, caf::infinite, put_state_atom::value, checkpoint_ptr{std::move(cp)})
        .then(
            [this, done](uint64_t s) {
              --in_flight_;
              if (!durable_step_ || s > *durable_step_)
                durable_step_ = s;
              if (done)
                done(s);
            },
            [this, done](caf::error& err) {
              --in_flight_;
              if (done)
                done(std::move(err));
            });
  }

  /// Checkpoints not yet acknowledged.
  size_t in_flight() const noexcept { return in_flight_; }

  /// Answers with the newest step of this state on disk that verifies as a
  /// restore verifies it (header and every tensor chunk; 0 if none) once the
  /// writer has made durable every checkpoint sent to it before, also those of
  /// a dead incarnation. For recovery protocols that must know what survived a
  /// crash: a damaged newest version makes them fall back to an older step.
  caf::result<uint64_t> newest_durable_step() {
    auto rp = self_->make_response_promise<uint64_t>();
    auto store = p_.store;
    auto path = id_.path;
    self_->request(p_.writer, caf::infinite, sync_state_atom::value)
        .then(
            [rp, store, path](uint64_t) mutable {
              auto newest = store->newest_intact(path);
              if (newest)
                rp.deliver(*newest);
              else
                rp.deliver(std::move(newest.error()));
            },
            [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
    return rp;
  }

  const persistent_identity& identity() const noexcept { return id_; }
  const persistence& store() const noexcept { return p_; }

private:
  caf::event_based_actor* self_;
  persistence p_;
  persistent_identity id_;
  payload_limits limits_;
  State value_{};
  bool released_ = false;
  std::optional<uint64_t> restored_step_;
  std::optional<uint64_t> durable_step_;
  size_t in_flight_ = 0;
};

/// A child spec for a persistent actor: on every (re)start the actor's newest
/// valid state is loaded before it handles its first message, then
/// `init(self, state)` returns its behavior. `state` (a shared_ptr to
/// persistent<State>) is owned by the actor. An I/O error while loading fails
/// the start.
template <class State, class Init>
child_spec persistent_child(std::string id, persistence p, Init init) {
  child_spec spec;
  spec.id = std::move(id);
  spec.start = [p, init](child_context& ctx) -> caf::expected<caf::actor> {
    auto ident = persistent_identity::of(ctx);
    return caf::actor{ctx.system.spawn([p, init, ident](caf::event_based_actor* self) {
      capture_exceptions(self);
      auto st = std::make_shared<persistent<State>>(self, p, ident);
      // Pending checkpoint callbacks refer to `st`: keep it as long as the
      // actor; when it exits, its buffers go to the recycler right away.
      self->attach_functor([st](const caf::error&) { st->release(); });
      if (auto report = st->restore(); !report)
        throw std::runtime_error("cannot load the state of " + ident.path + ": " +
                                 describe(report.error()));
      return init(self, st);
    })};
  };
  return spec;
}

} // namespace understudy
