#include "inspect.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <ostream>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "understudy/core/errors.hpp"
#include "understudy/state/state_store.hpp"

namespace understudy::cli {

namespace {

/// What verifying one version found.
enum class outcome {
  /// Header and every chunk verified.
  ok,
  /// A checksum mismatch, malformed data or a missing/short chunk.
  corrupt,
  /// The version disappeared between listing and verifying (a running writer's
  /// retention deleted it).
  deleted,
  /// The store could not be read (an I/O error, not a verdict on the record).
  failed,
};

std::string to_string(outcome x) {
  switch (x) {
    case outcome::ok:
      return "ok";
    case outcome::corrupt:
      return "corrupt";
    case outcome::deleted:
      return "deleted";
    case outcome::failed:
      return "error";
  }
  return "unknown";
}

/// One listed version and its verdict.
struct version_row {
  version_info info;
  /// Whether `info` was read from the header (else only path and step are set).
  bool has_header = false;
  outcome result = outcome::ok;
  /// Why it is not ok, without the repeated "path@step" (empty when ok).
  std::string reason;
};

std::string versioned(const std::string& path, uint64_t step) {
  return path + "@" + std::to_string(step);
}

/// Renders `err` without the record name the store puts into its context, as
/// the record is named next to it anyway.
std::string reason_of(const caf::error& err, const std::string& name) {
  auto text = describe(err);
  auto pos = text.find(": " + name);
  if (pos == std::string::npos)
    return text;
  auto begin = pos + 2;
  auto end = begin + name.size();
  if (end == text.size())
    return text.substr(0, pos);
  if (text.compare(end, 2, ": ") == 0)
    end += 2;
  else if (text[end] == ' ')
    end += 1;
  else
    return text; // `name` is only the prefix of a longer name ("/a@1" in "/a@10").
  return text.erase(begin, end - begin);
}

/// Replaces control characters by \xNN so that a path cannot garble the table.
std::string printable(std::string_view s) {
  std::string result;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      result += buf;
    } else {
      result.push_back(static_cast<char>(c));
    }
  }
  return result;
}

/// Lists and verifies every version of `path` in one read transaction each,
/// so that a version's header and its verdict belong together.
caf::error inspect_path(const state_store& store, const std::string& path,
                        std::vector<version_row>& rows) {
  auto versions = store.versions(path);
  if (!versions)
    return std::move(versions.error());
  for (auto& listed : *versions) {
    version_row row;
    row.info = listed;
    auto err = store.read(path, listed.step, [&](const record_view& view) -> caf::error {
      row.info = view.info();
      row.has_header = true;
      return view.verify_tensors();
    });
    if (!err) {
      row.result = outcome::ok;
    } else if (is(err, state_errc::corrupt_record) || is(err, state_errc::truncated_chunk)) {
      row.result = outcome::corrupt;
    } else if (is(err, state_errc::not_found)) {
      row.result = outcome::deleted;
    } else {
      row.result = outcome::failed;
    }
    if (err)
      row.reason = reason_of(err, versioned(path, listed.step));
    rows.push_back(std::move(row));
  }
  return {};
}

std::string format_created(std::chrono::system_clock::time_point t) {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  auto secs = static_cast<std::time_t>(ns / 1'000'000'000);
  auto millis = static_cast<int>((ns % 1'000'000'000) / 1'000'000);
  if (millis < 0) {
    secs -= 1;
    millis += 1000;
  }
  std::tm tm{};
  if (gmtime_r(&secs, &tm) == nullptr)
    return "";
  char buf[64];
  auto n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof(buf) - n, ".%03dZ", millis);
  return buf;
}

void print_json_row(std::ostream& out, const version_row& row,
                    std::chrono::system_clock::time_point now) {
  auto& info = row.info;
  out << "{\"type\":\"version\",\"path\":" << json_string(info.path) << ",\"step\":" << info.step;
  if (row.has_header) {
    char id[32];
    std::snprintf(id, sizeof(id), "0x%016" PRIx64, info.schema_id);
    auto age = std::chrono::duration_cast<std::chrono::milliseconds>(now - info.created);
    char age_s[32];
    std::snprintf(age_s, sizeof(age_s), "%.3f", static_cast<double>(age.count()) / 1000.0);
    out << ",\"schema_id\":\"" << id << "\",\"schema_version\":" << info.schema_version
        << ",\"incarnation\":" << info.incarnation << ",\"payload_bytes\":" << info.payload_size
        << ",\"tensor_bytes\":" << info.tensor_size << ",\"tensors\":[";
    for (size_t i = 0; i < info.tensors.size(); ++i) {
      auto& t = info.tensors[i];
      out << (i == 0 ? "" : ",") << "{\"name\":" << json_string(t.name)
          << ",\"type\":" << json_string(to_string(t.type)) << ",\"shape\":[";
      for (size_t d = 0; d < t.shape.size(); ++d)
        out << (d == 0 ? "" : ",") << t.shape[d];
      out << "],\"bytes\":" << t.size << ",\"chunks\":" << t.chunks << "}";
    }
    out << "],\"created\":" << json_string(format_created(info.created)) << ",\"age_s\":" << age_s;
  } else {
    out << ",\"schema_id\":null,\"schema_version\":null,\"incarnation\":null"
           ",\"payload_bytes\":null,\"tensor_bytes\":null,\"tensors\":null,\"created\":null"
           ",\"age_s\":null";
  }
  out << ",\"status\":" << json_string(to_string(row.result));
  if (row.result != outcome::ok)
    out << ",\"error\":" << json_string(row.reason);
  out << "}\n";
}

/// Prints rows as an aligned table (numbers right-aligned).
void print_table(std::ostream& out, const std::vector<version_row>& rows,
                 std::chrono::system_clock::time_point now) {
  using cells = std::vector<std::string>;
  std::vector<cells> table;
  table.push_back({"PATH", "STEP", "SCHEMA", "PAYLOAD", "TENSORS", "AGE", "STATUS"});
  for (auto& row : rows) {
    auto& info = row.info;
    auto status =
        row.result == outcome::ok ? std::string{"ok"} : to_string(row.result) + ": " + row.reason;
    if (row.has_header)
      table.push_back(
          {printable(info.path), std::to_string(info.step), std::to_string(info.schema_version),
           format_bytes(info.payload_size), format_bytes(info.tensor_size),
           format_age(std::chrono::duration_cast<std::chrono::nanoseconds>(now - info.created)),
           printable(status)});
    else
      table.push_back(
          {printable(info.path), std::to_string(info.step), "-", "-", "-", "-", printable(status)});
  }
  constexpr size_t columns = 7;
  const bool right_aligned[columns] = {false, true, true, true, true, true, false};
  size_t width[columns] = {};
  for (auto& line : table)
    for (size_t c = 0; c < columns; ++c)
      width[c] = std::max(width[c], line[c].size());
  for (auto& line : table) {
    std::string text;
    for (size_t c = 0; c < columns; ++c) {
      auto pad = std::string(width[c] - line[c].size(), ' ');
      if (c + 1 == columns) {
        text += line[c];
      } else if (right_aligned[c]) {
        text += pad + line[c] + "  ";
      } else {
        text += line[c] + pad + "  ";
      }
    }
    out << text << '\n';
  }
}

/// Appends one UTF-8 code point as \uXXXX escapes (a surrogate pair above U+FFFF).
void append_unicode_escape(std::string& out, uint32_t cp) {
  char buf[16];
  if (cp >= 0x10000) {
    cp -= 0x10000;
    std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
  } else {
    std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
  }
  out += buf;
}

/// Length of the valid UTF-8 sequence at `s[i]`, or 0 if it is not one.
size_t utf8_sequence(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  auto c = at(i);
  size_t n = 0;
  uint32_t min = 0;
  uint32_t cp = 0;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    min = 0x80;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    min = 0x800;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    min = 0x10000;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size())
    return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((at(i + k) & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (at(i + k) & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

} // namespace

std::string format_bytes(uint64_t n) {
  if (n < 1024)
    return std::to_string(n) + " B";
  static constexpr const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  auto value = static_cast<double>(n) / 1024.0;
  size_t unit = 0;
  while (value >= 1023.95 && unit + 1 < std::size(units)) {
    value /= 1024.0;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", value, units[unit]);
  return buf;
}

std::string format_age(std::chrono::nanoseconds age) {
  if (age.count() < 0)
    return "-" + format_age(-age);
  auto total = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(age).count());
  auto days = total / 86400;
  auto hours = total % 86400 / 3600;
  auto minutes = total % 3600 / 60;
  auto seconds = total % 60;
  char buf[48];
  if (days > 0)
    std::snprintf(buf, sizeof(buf), "%" PRIu64 "d%02" PRIu64 "h", days, hours);
  else if (hours > 0)
    std::snprintf(buf, sizeof(buf), "%" PRIu64 "h%02" PRIu64 "m", hours, minutes);
  else if (minutes > 0)
    std::snprintf(buf, sizeof(buf), "%" PRIu64 "m%02" PRIu64 "s", minutes, seconds);
  else
    std::snprintf(buf, sizeof(buf), "%" PRIu64 "s", seconds);
  return buf;
}

std::string json_string(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        default:
          if (c < 0x20 || c == 0x7f)
            append_unicode_escape(out, c);
          else
            out.push_back(static_cast<char>(c));
      }
      ++i;
    } else if (auto n = utf8_sequence(s, i); n > 0) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      append_unicode_escape(out, 0xfffd);
      ++i;
    }
  }
  out.push_back('"');
  return out;
}

namespace {

/// Totals over the inspected versions.
struct inspect_summary {
  size_t paths = 0;
  uint64_t bytes = 0;
  size_t corrupt = 0;
  size_t deleted = 0;
  size_t failed = 0;
};

inspect_summary summarize(const std::vector<version_row>& rows, size_t paths,
                          size_t unreadable_paths) {
  inspect_summary sum;
  sum.paths = paths;
  sum.failed = unreadable_paths;
  for (const auto& row : rows) {
    if (row.has_header)
      sum.bytes += row.info.payload_size + row.info.tensor_size;
    sum.corrupt += row.result == outcome::corrupt ? 1 : 0;
    sum.deleted += row.result == outcome::deleted ? 1 : 0;
    sum.failed += row.result == outcome::failed ? 1 : 0;
  }
  return sum;
}

/// The summary object (--json) or the table and its summary line.
void print_summary(std::ostream& out, const inspect_options& opts,
                   const std::vector<version_row>& rows, const inspect_summary& sum,
                   std::chrono::system_clock::time_point now) {
  if (opts.json) {
    out << "{\"type\":\"summary\",\"directory\":" << json_string(opts.directory)
        << ",\"paths\":" << sum.paths << ",\"versions\":" << rows.size()
        << ",\"bytes\":" << sum.bytes << ",\"corrupt\":" << sum.corrupt
        << ",\"deleted\":" << sum.deleted << ",\"errors\":" << sum.failed << "}\n";
    return;
  }
  if (!rows.empty())
    print_table(out, rows, now);
  out << sum.paths << (sum.paths == 1 ? " path, " : " paths, ") << rows.size()
      << (rows.size() == 1 ? " version, " : " versions, ") << format_bytes(sum.bytes) << ", "
      << sum.corrupt << " corrupt";
  if (sum.deleted > 0)
    out << ", " << sum.deleted << " deleted while inspecting";
  if (sum.failed > 0)
    out << ", " << sum.failed << " unreadable";
  out << '\n';
}

} // namespace

CLI::App* add_inspect_command(CLI::App& app, inspect_options& opts) {
  auto* sub = app.add_subcommand(
      "inspect",
      "list the actors, versions, sizes and ages in a node's state directory and verify every "
      "checksum");
  sub->footer(
      "Exits 0 when every record verifies, 1 when a record is corrupt (each is named "
      "on stderr), 2 when the directory cannot be opened or read.");
  sub->add_option("STATE_DIR", opts.directory, "a node's state directory (holding data.mdb)")
      ->required();
  sub->add_flag("--json", opts.json,
                "one JSON object per version and a summary object instead of a table");
  sub->add_option("--path", opts.path_prefix, "only actor paths starting with PREFIX")
      ->type_name("PREFIX");
  return sub;
}

int run_inspect(const inspect_options& opts, std::ostream& out, std::ostream& err,
                std::chrono::system_clock::time_point now) {
  const std::string prog = "understudy inspect: ";
  std::error_code ec;
  if (!std::filesystem::exists(opts.directory, ec)) {
    err << prog << "cannot open state directory '" << opts.directory
        << "': no such file or directory\n";
    return exit_failure;
  }
  if (!std::filesystem::is_directory(opts.directory, ec)) {
    err << prog << "cannot open state directory '" << opts.directory << "': not a directory\n";
    return exit_failure;
  }
  state_store_config cfg;
  cfg.directory = opts.directory;
  cfg.read_only = true;
  auto store = state_store::open(cfg);
  if (!store) {
    err << prog << "cannot open state directory '" << opts.directory
        << "': " << describe(store.error()) << '\n';
    return exit_failure;
  }
  auto paths = (*store)->paths();
  if (!paths) {
    err << prog << "cannot list the actor paths in '" << opts.directory
        << "': " << describe(paths.error()) << '\n';
    return exit_failure;
  }
  std::vector<version_row> rows;
  size_t path_count = 0;
  size_t unreadable_paths = 0;
  for (auto& path : *paths) {
    if (path.compare(0, opts.path_prefix.size(), opts.path_prefix) != 0)
      continue;
    ++path_count;
    auto first = rows.size();
    if (auto e = inspect_path(**store, path, rows)) {
      err << "error: " << printable(path) << ": cannot list versions: " << describe(e) << '\n';
      ++unreadable_paths;
      continue;
    }
    for (auto i = first; i < rows.size(); ++i) {
      auto& row = rows[i];
      if (row.result == outcome::corrupt)
        err << "corrupt: " << printable(versioned(path, row.info.step)) << ": " << row.reason
            << '\n';
      else if (row.result == outcome::failed)
        err << "error: " << printable(versioned(path, row.info.step)) << ": " << row.reason << '\n';
      if (opts.json)
        print_json_row(out, rows[i], now);
    }
    if (opts.json)
      out.flush();
  }
  auto sum = summarize(rows, path_count, unreadable_paths);
  print_summary(out, opts, rows, sum, now);
  out.flush();
  if (sum.failed > 0)
    return exit_failure;
  return sum.corrupt > 0 ? exit_corrupt : exit_ok;
}

} // namespace understudy::cli
