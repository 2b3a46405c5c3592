// A node's persisted event log, and `understudy events`: the incident timeline.

#include "understudy/node/event_journal.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <optional>
#include <ostream>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "understudy/core/errors.hpp"

namespace understudy {

namespace {

using json = nlohmann::json;

double unix_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(t.time_since_epoch()).count();
}

class journal_sink : public event_sink {
public:
  explicit journal_sink(std::weak_ptr<event_journal> j) : j_(std::move(j)) {}
  void on_event(const supervision_event& ev) override {
    if (auto j = j_.lock())
      j->record(ev);
  }

private:
  std::weak_ptr<event_journal> j_;
};

} // namespace

caf::expected<std::shared_ptr<event_journal>> event_journal::open(const std::string& dir,
                                                                  std::string node,
                                                                  uint64_t max_bytes) {
  auto path = dir + "/events.jsonl";
  std::shared_ptr<event_journal> j{new event_journal(path, std::move(node), max_bytes)};
  j->fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (j->fd_ < 0)
    return make_error(config_errc::invalid_value,
                      "cannot open the event log " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(j->fd_, &st) == 0)
    j->size_ = static_cast<uint64_t>(st.st_size);
  return j;
}

event_journal::event_journal(std::string path, std::string node, uint64_t max_bytes)
    : path_(std::move(path)), node_(std::move(node)), max_bytes_(max_bytes) {}

event_journal::~event_journal() {
  if (fd_ >= 0)
    ::close(fd_);
}

void event_journal::append(const std::string& line) {
  std::lock_guard<std::mutex> guard{mtx_};
  if (fd_ < 0)
    return;
  if (size_ + line.size() > max_bytes_ && size_ > 0) {
    // The current file becomes the older one; a new one starts.
    ::close(fd_);
    std::rename(path_.c_str(), (path_ + ".1").c_str());
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    size_ = 0;
    if (fd_ < 0)
      return;
  }
  // One write per line: O_APPEND keeps lines whole for a reader.
  auto n = ::write(fd_, line.data(), line.size());
  if (n > 0)
    size_ += static_cast<uint64_t>(n);
}

void event_journal::record(const supervision_event& ev) {
  json j;
  auto wall = ev.wall_time.time_since_epoch().count() != 0 ? ev.wall_time
                                                           : std::chrono::system_clock::now();
  j["t"] = unix_ms(wall);
  j["node"] = node_;
  j["kind"] = to_string(ev.kind);
  j["child"] = ev.child.empty() ? ev.supervisor : ev.supervisor + "/" + ev.child;
  if (ev.incarnation != 0)
    j["incarnation"] = ev.incarnation;
  if (!ev.action.empty())
    j["action"] = ev.action;
  if (!ev.reason.empty())
    j["reason"] = ev.reason;
  if (ev.duration.count() > 0)
    j["duration_ms"] = std::chrono::duration<double, std::milli>(ev.duration).count();
  if (ev.state_step)
    j["step"] = *ev.state_step;
  append(j.dump() + "\n");
}

void event_journal::note(const std::string& text) {
  json j{{"t", unix_ms(std::chrono::system_clock::now())},
         {"node", node_},
         {"kind", "note"},
         {"text", text}};
  append(j.dump() + "\n");
}

void event_journal::peer(const std::string& peer, const std::string& state,
                         const std::string& reason) {
  json j{{"t", unix_ms(std::chrono::system_clock::now())},
         {"node", node_},
         {"kind", "peer"},
         {"peer", peer},
         {"state", state}};
  if (!reason.empty())
    j["reason"] = reason;
  append(j.dump() + "\n");
}

void event_journal::job(const std::string& text) {
  json j{{"t", unix_ms(std::chrono::system_clock::now())},
         {"node", node_},
         {"kind", "job"},
         {"text", text}};
  append(j.dump() + "\n");
}

std::shared_ptr<event_sink> event_journal::sink() {
  // Weak: the node owns the journal; a sink that outlives it records nothing.
  return std::make_shared<journal_sink>(weak_from_this());
}

// -- understudy events -----------------------------------------------------------------

namespace {

struct entry {
  double t = 0;
  json j;
};

std::string clock_of(double ms) {
  auto secs = static_cast<std::time_t>(ms / 1000.0);
  std::tm tm{};
  ::localtime_r(&secs, &tm);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(static_cast<int64_t>(ms) % 1000));
  return buf;
}

std::string str(const json& j, const char* key) {
  auto i = j.find(key);
  return i != j.end() && i->is_string() ? i->get<std::string>() : std::string{};
}

/// One line of the timeline for an event.
std::string render(const json& j) {
  auto kind = str(j, "kind");
  std::string line = kind;
  if (kind == "note" || kind == "job")
    return line + " " + str(j, "text");
  if (kind == "peer")
    return line + " " + str(j, "peer") + " is " + str(j, "state") +
           (j.contains("reason") ? " (" + str(j, "reason") + ")" : "");
  line += " " + str(j, "child");
  if (j.contains("incarnation"))
    line += "#" + std::to_string(j["incarnation"].get<uint64_t>());
  if (j.contains("action"))
    line += " action=" + str(j, "action");
  if (j.contains("duration_ms")) {
    char buf[64];
    std::snprintf(buf, sizeof buf, " %s=%.1fms",
                  kind == "job_resumed"       ? "cost"
                  : kind == "child_restarted" ? "recovery"
                  : kind == "hang_detected"   ? "waited"
                                              : "took",
                  j["duration_ms"].get<double>());
    line += buf;
  }
  if (j.contains("reason"))
    line += " reason=\"" + str(j, "reason") + "\"";
  return line;
}

/// Groups events into incidents as they come, oldest first.
class incidents {
public:
  incidents(std::ostream& out, bool as_json) : out_(out), json_(as_json) {}

  void feed(const entry& e) {
    const auto& j = e.j;
    auto kind = str(j, "kind");
    auto state = str(j, "state");
    bool trouble = (kind == "child_exited" && str(j, "action").rfind("restart", 0) == 0) ||
                   kind == "hang_detected" || kind == "straggler_detected" ||
                   (kind == "peer" && (state == "dead" || state == "suspected"));
    if (!open_ && trouble) {
      open_ = true;
      start_ = e.t;
      stages_.clear();
      add("detected", e);
      return;
    }
    if (!open_)
      return;
    if (kind == "peer" && state == "dead")
      add("fenced", e);
    else if (kind == "note" && str(j, "text").rfind("moved ", 0) == 0)
      add("moved", e);
    else if (kind == "state_restored" || kind == "state_fallback")
      add("restored", e);
    else if (kind == "job_resumed") {
      add("resumed", e);
      close(e);
    }
  }

  size_t count() const noexcept { return number_; }

private:
  void add(const char* stage, const entry& e) {
    for (const auto& s : stages_)
      if (s["stage"] == stage)
        return; // the first of each stage
    stages_.push_back(json{{"stage", stage},
                           {"after_ms", e.t - start_},
                           {"node", str(e.j, "node")},
                           {"what", render(e.j)}});
  }

  void close(const entry& e) {
    open_ = false;
    ++number_;
    json inc{{"type", "incident"},
             {"number", number_},
             {"start", start_},
             {"duration_ms", e.t - start_},
             {"stages", stages_}};
    if (auto steps = lost_steps(str(e.j, "reason")))
      inc["steps_lost"] = *steps;
    if (json_) {
      out_ << inc.dump() << "\n";
      return;
    }
    char head[128];
    std::snprintf(head, sizeof head, "incident %zu at %s, %.1f ms until resumed", number_,
                  clock_of(start_).c_str(), e.t - start_);
    out_ << head;
    if (inc.contains("steps_lost")) {
      auto n = inc["steps_lost"].get<uint64_t>();
      out_ << ", " << n << (n == 1 ? " step lost" : " steps lost");
    }
    out_ << ":\n";
    for (const auto& s : stages_) {
      char at[64];
      std::snprintf(at, sizeof at, "  +%9.1f ms  %-9s", s["after_ms"].get<double>(),
                    s["stage"].get<std::string>().c_str());
      out_ << at << "[" << s["node"].get<std::string>() << "] " << s["what"].get<std::string>()
           << "\n";
    }
  }

  static std::optional<uint64_t> lost_steps(const std::string& reason) {
    // "resumed from committed step C; N steps lost"
    auto semi = reason.find("; ");
    if (semi == std::string::npos)
      return std::nullopt;
    try {
      return std::stoull(reason.substr(semi + 2));
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }

  std::ostream& out_;
  bool json_;
  bool open_ = false;
  double start_ = 0;
  json stages_ = json::array();
  size_t number_ = 0;
};

/// Reads the lines of `path` from `offset` on (complete lines only); moves
/// `offset` past them. Lines that are not JSON objects count in `bad`.
void read_lines(const std::string& path, uint64_t& offset, std::vector<entry>& out, size_t& bad) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    return;
  in.seekg(0, std::ios::end);
  auto size = static_cast<uint64_t>(in.tellg());
  if (size < offset)
    offset = 0; // rotated: a new file
  in.seekg(static_cast<std::streamoff>(offset));
  std::string line;
  while (std::getline(in, line)) {
    if (in.eof())
      break; // no newline yet: a line still being written
    offset += line.size() + 1;
    auto j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("t") || !j["t"].is_number()) {
      ++bad;
      continue;
    }
    out.push_back({j["t"].get<double>(), std::move(j)});
  }
}

} // namespace

exit_code run_events(const events_options& opts, std::ostream& out, std::ostream& err) {
  auto nc = load_config(opts.file, opts.components);
  if (!nc) {
    err << opts.label << ": " << describe(nc.error()) << "\n";
    return exit_code::bad_config;
  }
  // Each node's older file first, then its current one.
  std::vector<std::pair<std::string, uint64_t>> files;
  for (const auto& n : nc->nodes) {
    files.emplace_back(n.state_dir + "/events.jsonl.1", 0);
    files.emplace_back(n.state_dir + "/events.jsonl", 0);
  }
  incidents inc{out, opts.json};
  size_t bad = 0;
  size_t seen = 0;
  auto print = [&](std::vector<entry>& batch) {
    std::stable_sort(batch.begin(), batch.end(),
                     [](const entry& a, const entry& b) { return a.t < b.t; });
    for (const auto& e : batch) {
      ++seen;
      if (opts.json) {
        auto j = e.j;
        j["type"] = "event";
        out << j.dump() << "\n";
      } else {
        out << clock_of(e.t) << " [" << str(e.j, "node") << "] " << render(e.j) << "\n";
      }
      inc.feed(e);
    }
    out.flush();
  };
  std::vector<entry> batch;
  for (auto& [path, offset] : files)
    read_lines(path, offset, batch, bad);
  print(batch);
  if (bad > 0)
    err << opts.label << ": skipped " << bad << " lines that are not events\n";
  if (!opts.follow) {
    if (seen == 0) {
      err << opts.label << ": no node of " << opts.file
          << " has an event log (events.jsonl in its state directory)\n";
      return exit_code::failure;
    }
    if (!opts.json)
      out << seen << " events from " << nc->nodes.size() << " nodes, " << inc.count()
          << (inc.count() == 1 ? " incident\n" : " incidents\n");
    return exit_code::ok;
  }
  for (;;) {
    if (opts.stop && opts.stop())
      return exit_code::ok;
    std::this_thread::sleep_for(opts.poll);
    std::vector<entry> more;
    // The current files only: an older one is complete.
    for (size_t i = 1; i < files.size(); i += 2)
      read_lines(files[i].first, files[i].second, more, bad);
    print(more);
  }
}

} // namespace understudy
