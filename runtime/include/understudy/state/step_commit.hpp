#pragma once

// The commit rule of a synchronous job whose participants checkpoint one step at a time (the
// training job's trainer, and the whole-cluster simulator's stand-in job: one code for both).
//
// A checkpoint step is committed once the driver saw it applied and every stateful participant
// (each shard, each loader) said that its state after the step is durable; steps commit in
// order, and at most two are uncommitted at once (the one applied last and the one in flight),
// so that every participant holds the committed step among its last three versions. After a
// failure the job resumes from the newest step every stateful participant holds on disk (the
// lowest of their newest ones): a checkpoint still on its way when a participant failed counts,
// so a crash loses only the step in flight; an acknowledged (committed) step is never above it.
//
// Threads: a plain object; one owner. Errors: none thrown; resume() reports what it refuses.

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace understudy {

class step_commit {
public:
  /// `participants` stateful participants must say each checkpoint step is durable.
  explicit step_commit(size_t participants) : participants_(participants) {}

  /// Checkpoint step `step` is started: it waits for its acknowledgements.
  void open(uint64_t step) { pending_[step]; }

  /// Whether `step` waits to be committed.
  bool pending(uint64_t step) const { return pending_.count(step) != 0; }

  /// Whether no step waits to be committed.
  bool idle() const noexcept { return pending_.empty(); }

  /// Whether the driver may start the step after `done` (the last step every participant
  /// applied): no checkpoint step older than `done` still waits, so that at most two steps
  /// are ever uncommitted.
  bool may_start_after(uint64_t done) const {
    return pending_.empty() || pending_.begin()->first == done;
  }

  /// Every participant applied `step`. True when that committed it (then committed() == step).
  bool applied(uint64_t step);

  /// Stateful participant `index` has its state after `step` durable (again: counted once).
  /// True when that committed `step`.
  bool durable(uint64_t step, size_t index);

  /// The newest committed step.
  uint64_t committed() const noexcept { return committed_; }

  /// A recovery round: every waiting step is abandoned (it is redone), and the job resumes
  /// from `step` (what resume() chose).
  void resumed(uint64_t step) {
    pending_.clear();
    committed_ = step;
  }

  /// Where a recovery resumes, from the newest step each stateful participant holds on disk
  /// (none: it holds nothing at all).
  struct resume_point {
    /// The step to rewind every stateful participant to: the lowest of the newest.
    uint64_t step = 0;
    /// The highest of the newest.
    uint64_t highest = 0;
    /// A participant that holds nothing although the job has committed steps (it restarted
    /// where its checkpoints are not): resuming would roll the job back to its start.
    std::optional<size_t> lost;
    /// The step is past the job's last step (the state belongs to a longer run).
    bool past_last = false;
    bool ok() const noexcept { return !lost && !past_last; }
  };

  /// Decides where to resume. `recorded`: the driver's own record of its committed step (0:
  /// none); `checkpoint_every`: steps between checkpoints; `last_step`: the job's last step.
  /// Without a record a participant may be up to two checkpoints ahead of one that has
  /// nothing (the job never committed); beyond that a participant with nothing lost its state.
  static resume_point resume(const std::vector<std::optional<uint64_t>>& newest, uint64_t recorded,
                             uint64_t checkpoint_every, uint64_t last_step);

private:
  struct acks {
    bool applied = false;
    std::vector<bool> durable;
    size_t count = 0;
  };
  bool maybe_commit(std::map<uint64_t, acks>::iterator i);

  size_t participants_;
  std::map<uint64_t, acks> pending_;
  uint64_t committed_ = 0;
};

} // namespace understudy
