#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "understudy/actors/numerics/batch_view.hpp"
#include "understudy/core/errors.hpp"

namespace understudy::actors {

/// Failures of loading a data set. Every error's context is one message that
/// names the file and, for a problem inside it, the line: `PATH:LINE: problem`.
/// A bad data file must be fixed, so every failure is `give_up`.
enum class data_errc : uint8_t {
  /// Not an error.
  none = 0,
  /// The file cannot be opened (missing, unreadable); the context has the OS reason.
  cannot_open,
  /// Reading or decompressing the file failed (I/O error, truncated gzip stream).
  read_failed,
  /// The file holds no data rows.
  empty_file,
  /// A row has a different number of columns than the first row, or the first
  /// row has fewer than two columns.
  wrong_column_count,
  /// A cell is not a finite number (or a label is not an integer).
  not_a_number,
  /// A label is negative or not below the class count.
  label_out_of_range,
  /// The load options do not fit the file (e.g. the label column does not exist).
  invalid_options,
};

} // namespace understudy::actors

namespace understudy {

/// Declares `data_errc`.
template <>
struct error_traits<actors::data_errc> {
  using data_errc = actors::data_errc;
  static constexpr caf::atom_value category = caf::atom("us_data");
  static constexpr error_value<data_errc> values[] = {
      {data_errc::none, "none", "not an error", next_step::give_up},
      {data_errc::cannot_open, "cannot_open", "the data file cannot be opened", next_step::give_up},
      {data_errc::read_failed, "read_failed", "reading or decompressing the data file failed",
       next_step::give_up},
      {data_errc::empty_file, "empty_file", "the data file holds no data rows", next_step::give_up},
      {data_errc::wrong_column_count, "wrong_column_count",
       "a row's column count differs from the first row's", next_step::give_up},
      {data_errc::not_a_number, "not_a_number", "a cell is not a finite number",
       next_step::give_up},
      {data_errc::label_out_of_range, "label_out_of_range",
       "a label is negative or not below the class count", next_step::give_up},
      {data_errc::invalid_options, "invalid_options", "the load options do not fit the file",
       next_step::give_up},
  };
};

} // namespace understudy

namespace understudy::actors {

// The generic error plumbing (core/errors.hpp), found from this namespace too.
using understudy::description;
using understudy::is;
using understudy::make_error;
using understudy::next_step_for;
using understudy::to_string;

/// Error category atom for `data_errc`, as carried in `caf::error`.
constexpr caf::atom_value data_category = error_traits<data_errc>::category;

/// A labelled data set held in memory: `size()` samples of `input_dim` floats
/// each, with one class index per sample.
///
/// A plain value: it owns its arrays; copy or move it freely. Invariants (kept
/// by `load_csv`, `subset` and `split`): `inputs.size() == size() * input_dim`
/// and every label is below `class_count`.
struct dataset {
  /// The number of input features per sample.
  size_t input_dim = 0;
  /// The number of classes; labels lie in [0, class_count).
  size_t class_count = 0;
  /// The samples, row-major: sample `r`, feature `i` at `inputs[r * input_dim + i]`.
  std::vector<float> inputs;
  /// The class index of each sample.
  std::vector<uint32_t> labels;

  /// Returns the number of samples.
  size_t size() const noexcept { return labels.size(); }

  /// Returns a view of all samples; valid while this data set is alive and unchanged.
  batch_view view() const noexcept {
    return batch_view{inputs.data(), labels.data(), labels.size(), input_dim};
  }
};

/// How `load_csv` interprets a file.
struct csv_options {
  /// Marks the last column in `label_column`.
  static constexpr size_t last_column = std::numeric_limits<size_t>::max();

  /// The 0-based column that holds the label; every other column is an input.
  size_t label_column = last_column;
  /// Every input value is multiplied by this (1/16 maps the digits' 0..16 pixels to [0, 1]).
  float scale = 1.0f / 16.0f;
  /// The number of classes; labels must be below it. 0 infers it as the largest label + 1.
  size_t class_count = 0;
};

/// Reads a data set from a CSV file, plain or gzip-compressed (detected from
/// the content, not the name): one sample per line, comma-separated numbers,
/// no header. Blank lines are skipped; spaces around cells and a trailing CR
/// are ignored. Safe to call from any thread.
///
/// Errors (`data_errc`, the context naming the file and line): `cannot_open`,
/// `read_failed`, `empty_file`, `wrong_column_count`, `not_a_number`,
/// `label_out_of_range`, `invalid_options`.
caf::expected<dataset> load_csv(const std::string& path, const csv_options& options = {});

/// Returns the samples of `data` at `indices`, in that order (repeats allowed),
/// with the same input_dim and class_count. Throws `std::out_of_range` if an
/// index is not below `data.size()`.
dataset subset(const dataset& data, const std::vector<uint32_t>& indices);

/// Splits `data` into (train, test) by `seed`: a Fisher-Yates shuffle driven by
/// `splitmix64{seed}` picks round(size * test_fraction) samples for the test
/// part, the rest train. Both parts keep the original order of their samples.
/// The result depends only on (data, test_fraction, seed), on every platform.
/// Throws `std::invalid_argument` unless 0 <= test_fraction <= 1, and
/// `std::length_error` if `data` has more than 2^32 - 1 samples.
std::pair<dataset, dataset> split(const dataset& data, double test_fraction, uint64_t seed);

/// Returns a permutation of [0, n) that depends only on (n, seed, epoch), on
/// every platform: the visiting order of the samples in one epoch. Throws
/// `std::length_error` if n exceeds 2^32 - 1.
std::vector<uint32_t> epoch_order(size_t n, uint64_t seed, uint64_t epoch);

} // namespace understudy::actors
