#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>

namespace understudy::actors {

/// The recovery protocol of a synchronous job's driver (its trainer), for
/// participants of any kind (CPU roles, GPU ranks, a collective group).
///
/// Promises: after a participant fails (it goes down, or a request to it
/// fails), a recovery round resolves every participant that is down again by
/// its id under its supervisor (a newer incarnation, monitored), asks every
/// stateful participant for the newest step it has on disk, takes the lowest
/// as the committed step, rewinds every stateful participant to it, and only
/// then lets the driver run on (`hooks::resume`). Each round has a new
/// attempt number; the driver stamps its requests with `attempt()` and drops
/// answers of older attempts (`current`). A participant that answered an
/// error and lives on is stopped, so that its supervisor restarts it.
/// Optional hooks let a driver veto the committed step before the rewind
/// (`probed`), end the job on an error instead (`fails_job`), and handle a
/// participant its supervisor cannot resolve (`unresolved`).
///
/// Threads: owned by one actor and used from its handlers only.
///
/// Errors (through `hooks::failed`, after which it does nothing more): a
/// participant that cannot be resolved (`caf::sec::runtime_error`, unless
/// `hooks::unresolved` is set), one that restored another step than the
/// committed one (`state_errc::not_found`), `max_recoveries` rounds without a
/// commit in between (`caf::sec::runtime_error`), the error of `hooks::probed`,
/// and an error for which `hooks::fails_job` holds.
class recovery_protocol {
public:
  /// One participant, named `id` under `supervisor`.
  struct participant {
    std::string id;
    caf::actor supervisor;
    /// Probed and rewound (holds state); otherwise only resolved.
    bool stateful = true;
    caf::actor handle;
    uint64_t incarnation = 0;
    bool down = true;
    bool resolving = false;
  };

  /// Answers the protocol's question to one participant: a step, or the error.
  using step_callback = std::function<void(caf::expected<uint64_t>)>;

  struct hooks {
    /// Asks stateful participant `index` for the newest step it has on disk.
    std::function<void(size_t index, const caf::actor& handle, step_callback done)> probe;
    /// Rewinds stateful participant `index` to `step`; it answers the step restored.
    std::function<void(size_t index, const caf::actor& handle, uint64_t step, step_callback done)>
        rewind;
    /// Every participant is up and every stateful one holds `committed`: run on.
    std::function<void(uint64_t committed)> resume;
    /// The job cannot go on.
    std::function<void(caf::error)> failed;
    /// Whether a participant that answered `err` exits by itself (is not stopped).
    std::function<bool(const caf::error&)> exits_by_itself;
    /// Optional: every stateful participant answered the probe; `newest[i]` is
    /// the step participant i holds (none for a stateless one) and `lowest`
    /// the step all hold. An error fails the job instead of the rewind.
    std::function<caf::error(uint64_t lowest, const std::vector<std::optional<uint64_t>>& newest)>
        probed;
    /// Optional: whether `err`, answered by a participant, ends the job (it
    /// goes to `failed`) rather than restarting the participant.
    std::function<bool(const caf::error&)> fails_job;
    /// Optional: the supervisor of participant `index` could not resolve it
    /// (e.g. the supervisor is gone); unset, the job fails.
    std::function<void(size_t index, const caf::error& err)> unresolved;
    /// Optional: a round begins (before anything is resolved), e.g. for a
    /// driver that times its incidents.
    std::function<void()> round_started;
  };

  /// `self` owns the protocol; attempts count from `first_attempt` + 1 (e.g.
  /// the driver's incarnation << 32, so that a restarted driver's attempts are new).
  recovery_protocol(caf::event_based_actor* self, std::vector<participant> parts, hooks h,
                    uint64_t first_attempt, size_t max_recoveries = 200);

  /// Starts a recovery round, abandoning the step in flight and any earlier round.
  void recover();

  /// A request to participant `index` of attempt `att` failed with `err`.
  void on_error(uint64_t att, size_t index, const caf::error& err);

  /// Call from the owner's down handler: a participant that went down starts a round.
  void on_down(const caf::down_msg& dm);

  /// The driver committed a step: the count of rounds without a commit restarts.
  void committed() noexcept { recoveries_since_commit_ = 0; }

  /// The driver is done (or failed): no more rounds.
  void stop() noexcept { stopped_ = true; }

  /// Returns the attempt number of the current round.
  uint64_t attempt() const noexcept { return attempt_; }

  /// Returns whether `att` is the current attempt and no round is under way.
  bool current(uint64_t att) const noexcept { return att == attempt_ && !recovering_; }

  /// Returns whether a round is under way.
  bool recovering() const noexcept { return recovering_; }

  /// Returns participant `index`'s serving incarnation.
  const caf::actor& handle(size_t index) const { return parts_.at(index).handle; }

  /// Returns participant `index`'s id.
  const std::string& id(size_t index) const { return parts_.at(index).id; }

  /// Returns the incarnation of participant `index`'s serving handle (0 before
  /// it was resolved).
  uint64_t incarnation(size_t index) const { return parts_.at(index).incarnation; }

  size_t size() const noexcept { return parts_.size(); }

private:
  void resolve(size_t index);
  void maybe_probe();
  void probe_all();
  void rewind_all(uint64_t step);
  void fail(caf::error err);

  caf::event_based_actor* self_;
  std::vector<participant> parts_;
  hooks hooks_;
  size_t max_recoveries_;
  uint64_t attempt_;
  uint64_t probed_ = 0;
  size_t recoveries_since_commit_ = 0;
  bool recovering_ = false;
  bool stopped_ = false;
};

} // namespace understudy::actors
