#pragma once
// --report FILE.html for the training examples: their lines, from any thread,
// into a run_report (understudy/node/run_report.hpp), written when they end.

#include <cstdio>
#include <mutex>
#include <optional>
#include <string>

#include "understudy/core/errors.hpp"
#include "understudy/node/run_report.hpp"

namespace understudy::examples {

class report_feed {
public:
  /// Does nothing if `path` is empty.
  report_feed(std::string path, const std::string& title) : path_(std::move(path)) {
    if (!path_.empty())
      report_.emplace(title);
  }

  /// One line the program printed (or could have): progress, a fault, a recovery.
  void add(const std::string& line) {
    if (!report_)
      return;
    std::lock_guard<std::mutex> guard{mtx_};
    report_->add_line(line);
  }

  /// Writes the page and says where, or why not (naming `program`).
  void write(const char* program) {
    if (!report_)
      return;
    std::lock_guard<std::mutex> guard{mtx_};
    if (auto err = report_->write(path_))
      std::fprintf(stderr, "%s: %s\n", program, describe(err).c_str());
    else
      std::printf("report: %s\n", path_.c_str());
  }

private:
  std::string path_;
  std::mutex mtx_;
  std::optional<run_report> report_;
};

} // namespace understudy::examples
