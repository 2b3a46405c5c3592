#include "understudy/actors/numerics/dataset.hpp"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string_view>

#include "understudy/actors/numerics/splitmix64.hpp"

namespace understudy::actors {

namespace {

/// Closes a gzFile on scope exit.
struct gz_closer {
  gzFile file;
  ~gz_closer() { gzclose(file); }
};

/// Reads the whole (decompressed) content of `path` into `out`. gzread passes
/// a file without the gzip magic through unchanged, so plain CSV works too.
caf::error read_all(const std::string& path, std::string& out) {
  errno = 0;
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) {
    auto reason = errno != 0 ? std::string{std::strerror(errno)} : std::string{"out of memory"};
    return make_error(data_errc::cannot_open, path + ": cannot open: " + reason);
  }
  gz_closer closer{file};
  gzbuffer(file, 1u << 16);
  char buf[1 << 16];
  for (;;) {
    int n = gzread(file, buf, sizeof(buf));
    if (n < 0) {
      int code = 0;
      const char* msg = gzerror(file, &code);
      std::string reason = code == Z_ERRNO ? std::strerror(errno) : msg;
      return make_error(data_errc::read_failed, path + ": read failed: " + reason);
    }
    if (n == 0)
      break;
    out.append(buf, static_cast<size_t>(n));
  }
  // A gzip stream cut short reads as end of file; gzerror tells them apart.
  int code = 0;
  const char* msg = gzerror(file, &code);
  if (code != Z_OK)
    return make_error(data_errc::read_failed, path + ": read failed: " + msg);
  return caf::none;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

/// Splits `line` at commas into trimmed cells (overwrites `cells`).
void split_cells(std::string_view line, std::vector<std::string_view>& cells) {
  cells.clear();
  for (;;) {
    auto comma = line.find(',');
    cells.push_back(trim(line.substr(0, comma)));
    if (comma == std::string_view::npos)
      return;
    line.remove_prefix(comma + 1);
  }
}

/// Parses all of `cell` as a finite float.
bool parse_float(std::string_view cell, float& out) {
  if (!cell.empty() && cell.front() == '+')
    cell.remove_prefix(1);
  auto [end, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), out);
  return !cell.empty() && ec == std::errc{} && end == cell.data() + cell.size() &&
         std::isfinite(out);
}

/// Parses all of `cell` as an integer.
bool parse_integer(std::string_view cell, int64_t& out) {
  if (!cell.empty() && cell.front() == '+')
    cell.remove_prefix(1);
  auto [end, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), out);
  return !cell.empty() && ec == std::errc{} && end == cell.data() + cell.size();
}

std::string quoted(std::string_view cell) {
  return "'" + std::string{cell} + "'";
}

} // namespace

caf::expected<dataset> load_csv(const std::string& path, const csv_options& options) {
  std::string text;
  if (auto err = read_all(path, text))
    return err;
  dataset result;
  std::vector<std::string_view> cells;
  size_t columns = 0;
  size_t label_col = 0;
  size_t first_row_line = 0;
  size_t line_no = 0;
  uint64_t max_label = 0;
  std::string_view rest{text};
  while (!rest.empty()) {
    ++line_no;
    auto newline = rest.find('\n');
    auto line = rest.substr(0, newline);
    rest.remove_prefix(newline == std::string_view::npos ? rest.size() : newline + 1);
    if (trim(line).empty())
      continue;
    auto where = path + ":" + std::to_string(line_no) + ": ";
    split_cells(line, cells);
    if (columns == 0) {
      columns = cells.size();
      first_row_line = line_no;
      if (columns < 2)
        return make_error(data_errc::wrong_column_count,
                          where + "found " + std::to_string(columns) +
                              " column, need at least two (inputs and a label)");
      label_col =
          options.label_column == csv_options::last_column ? columns - 1 : options.label_column;
      if (label_col >= columns)
        return make_error(data_errc::invalid_options, where + "label column " +
                                                          std::to_string(label_col) +
                                                          " does not exist (the row has " +
                                                          std::to_string(columns) + " columns)");
      result.input_dim = columns - 1;
    } else if (cells.size() != columns) {
      return make_error(data_errc::wrong_column_count,
                        where + "expected " + std::to_string(columns) + " columns (as on line " +
                            std::to_string(first_row_line) + "), found " +
                            std::to_string(cells.size()));
    }
    for (size_t c = 0; c < columns; ++c) {
      auto cell = cells[c];
      if (c == label_col) {
        int64_t label = 0;
        if (!parse_integer(cell, label)) {
          float unused = 0;
          auto what = parse_float(cell, unused) ? " is not an integer" : " is not a number";
          return make_error(data_errc::not_a_number, where + "column " + std::to_string(c) +
                                                         ": label " + quoted(cell) + what);
        }
        bool too_big = options.class_count != 0
                           ? static_cast<uint64_t>(label) >= options.class_count
                           : label > int64_t{std::numeric_limits<uint32_t>::max()} - 1;
        if (label < 0 || too_big) {
          auto range = options.class_count != 0
                           ? "0.." + std::to_string(options.class_count - 1) + " (class_count " +
                                 std::to_string(options.class_count) + ")"
                           : "0.." + std::to_string(std::numeric_limits<uint32_t>::max() - 1);
          return make_error(data_errc::label_out_of_range, where + "column " + std::to_string(c) +
                                                               ": label " + std::string{cell} +
                                                               " is out of range " + range);
        }
        max_label = std::max(max_label, static_cast<uint64_t>(label));
        result.labels.push_back(static_cast<uint32_t>(label));
      } else {
        float value = 0;
        if (!parse_float(cell, value))
          return make_error(data_errc::not_a_number, where + "column " + std::to_string(c) + ": " +
                                                         quoted(cell) + " is not a finite number");
        result.inputs.push_back(value * options.scale);
      }
    }
  }
  if (result.labels.empty())
    return make_error(
        data_errc::empty_file,
        path + ":" + std::to_string(line_no == 0 ? 1 : line_no) + ": empty file: no data rows");
  result.class_count = options.class_count != 0 ? options.class_count : max_label + 1;
  return result;
}

dataset subset(const dataset& data, const std::vector<uint32_t>& indices) {
  dataset result;
  result.input_dim = data.input_dim;
  result.class_count = data.class_count;
  result.inputs.reserve(indices.size() * data.input_dim);
  result.labels.reserve(indices.size());
  for (auto i : indices) {
    if (i >= data.size())
      throw std::out_of_range("subset: index " + std::to_string(i) + " is not below the size " +
                              std::to_string(data.size()));
    auto first = data.inputs.begin() + static_cast<ptrdiff_t>(i * data.input_dim);
    result.inputs.insert(result.inputs.end(), first,
                         first + static_cast<ptrdiff_t>(data.input_dim));
    result.labels.push_back(data.labels[i]);
  }
  return result;
}

namespace {

/// Returns 0..n-1 shuffled by Fisher-Yates with `gen` (the same on every platform).
std::vector<uint32_t> shuffled_indices(size_t n, splitmix64& gen, const char* caller) {
  if (n > std::numeric_limits<uint32_t>::max())
    throw std::length_error(std::string{caller} + ": " + std::to_string(n) +
                            " samples exceed 2^32 - 1");
  std::vector<uint32_t> order(n);
  for (size_t i = 0; i < n; ++i)
    order[i] = static_cast<uint32_t>(i);
  for (size_t i = n; i > 1; --i) {
    auto j = static_cast<size_t>(gen.below(i));
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

} // namespace

std::pair<dataset, dataset> split(const dataset& data, double test_fraction, uint64_t seed) {
  if (!(test_fraction >= 0.0 && test_fraction <= 1.0))
    throw std::invalid_argument("split: test_fraction " + std::to_string(test_fraction) +
                                " is not in [0, 1]");
  splitmix64 gen{seed};
  auto order = shuffled_indices(data.size(), gen, "split");
  auto test_count =
      static_cast<size_t>(std::llround(static_cast<double>(data.size()) * test_fraction));
  std::vector<uint32_t> test(order.begin(), order.begin() + static_cast<ptrdiff_t>(test_count));
  std::vector<uint32_t> train(order.begin() + static_cast<ptrdiff_t>(test_count), order.end());
  std::sort(test.begin(), test.end());
  std::sort(train.begin(), train.end());
  return {subset(data, train), subset(data, test)};
}

std::vector<uint32_t> epoch_order(size_t n, uint64_t seed, uint64_t epoch) {
  // One independent stream per (seed, epoch): the epoch-th output of seed's sequence.
  splitmix64 gen{splitmix64::at(seed, epoch)};
  return shuffled_indices(n, gen, "epoch_order");
}

} // namespace understudy::actors
