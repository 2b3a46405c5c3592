#pragma once
// A training run as one self-contained HTML page (`--report FILE.html` of
// digits_mlp, gpu_mlp and `understudy launch`): the loss and accuracy curves
// over the steps, each fault and recovery marked on them with its duration,
// the goodput, and the incident table.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/error.hpp>

namespace understudy {

/// What a run printed, gathered line by line (add_line) and rendered as HTML.
class run_report {
public:
  /// One progress report.
  struct point {
    uint64_t step = 0;
    double loss = 0;
    /// Negative before the first evaluation.
    double accuracy = -1;
  };

  /// A fault, or a recovery that ended an incident.
  struct mark {
    uint64_t step = 0;
    /// e.g. "crash: /root/job/workers/worker-1: runtime_error" or "chaos: SIGKILL n2".
    std::string what;
    /// A recovery: what it cost (crash to the job running again), in ms, and the
    /// steps it threw away; a fault has neither (cost_ms < 0).
    double cost_ms = -1;
    uint64_t steps_lost = 0;
    /// Other crashes at the same step that this mark stands for.
    size_t also = 0;
    bool recovery() const { return cost_ms >= 0; }
  };

  explicit run_report(std::string title) : title_(std::move(title)) {}

  /// Takes what it recognises in one output line (a node's lines may carry a
  /// "[n1] " prefix): progress ("step S/M loss L accuracy A"), faults
  /// ("crash: ", "hang: ", "straggler: ", "chaos: "), recoveries (the
  /// trainer's job_resumed event: "cost=...us reason=\"resumed from committed
  /// step N; K steps lost\""), and the "final:" and "goodput:" lines.
  void add_line(const std::string& line);

  const std::vector<point>& points() const { return points_; }
  const std::vector<mark>& marks() const { return marks_; }
  const std::vector<std::string>& summary() const { return summary_; }

  /// The page: no external resources, the curves as inline SVG.
  std::string html() const;

  /// Writes html() to `path` (replacing it); an error naming the path if it cannot.
  caf::error write(const std::string& path) const;

private:
  std::string title_;
  uint64_t steps_ = 0;
  std::vector<point> points_;
  std::vector<mark> marks_;
  std::vector<std::string> summary_;
};

} // namespace understudy
