#include "understudy/actors/numerics/dataset.hpp"

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <caf/message.hpp>
#include <catch2/catch.hpp>

using namespace understudy;
using namespace understudy::actors;

namespace {

/// A fresh directory under /tmp, removed with its content on destruction.
struct temp_dir {
  std::string path;
  temp_dir() {
    std::string tmpl = "/tmp/understudy-data-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed for " + tmpl);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  /// Writes `content` to the file `name` in this directory and returns its path.
  std::string write(const std::string& name, const std::string& content) const {
    auto file = path + "/" + name;
    std::ofstream out{file, std::ios::binary};
    out << content;
    return file;
  }
};

/// Returns the context message of a data error.
std::string message_of(const caf::error& err) {
  REQUIRE(err.category() == data_category);
  return error_context(err);
}

/// A data set of `n` samples with two features each, sample i holding (i, -i)
/// and label i % 3, so every sample is recognisable.
dataset numbered(size_t n) {
  dataset d;
  d.input_dim = 2;
  d.class_count = 3;
  for (size_t i = 0; i < n; ++i) {
    d.inputs.push_back(static_cast<float>(i));
    d.inputs.push_back(-static_cast<float>(i));
    d.labels.push_back(static_cast<uint32_t>(i % 3));
  }
  return d;
}

/// Returns the sample numbers (first feature) of a data set made by `numbered`.
std::vector<uint32_t> sample_ids(const dataset& d) {
  std::vector<uint32_t> ids;
  for (size_t r = 0; r < d.size(); ++r) {
    auto id = static_cast<uint32_t>(d.inputs[r * d.input_dim]);
    CHECK(d.inputs[r * d.input_dim + 1] == -static_cast<float>(id));
    CHECK(d.labels[r] == id % 3);
    ids.push_back(id);
  }
  return ids;
}

bool is_permutation_of_range(std::vector<uint32_t> v) {
  std::sort(v.begin(), v.end());
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != i)
      return false;
  return true;
}

} // namespace

TEST_CASE("the digits data set loads with 1797 samples of 64 scaled pixels and ten labels",
          "[actors][data]") {
  auto data = load_csv(UNDERSTUDY_DIGITS_PATH);
  REQUIRE(data);
  CHECK(data->size() == 1797);
  CHECK(data->input_dim == 64);
  CHECK(data->class_count == 10);
  REQUIRE(data->inputs.size() == 1797 * 64);
  CHECK(std::all_of(data->inputs.begin(), data->inputs.end(),
                    [](float x) { return x >= 0.0f && x <= 1.0f; }));
  CHECK(*std::max_element(data->inputs.begin(), data->inputs.end()) == 1.0f);
  std::set<uint32_t> classes(data->labels.begin(), data->labels.end());
  CHECK(classes == std::set<uint32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  // First row of the file: 0,0,5,13,9,1,0,0,... label 0.
  CHECK(data->inputs[2] == 5.0f / 16.0f);
  CHECK(data->inputs[3] == 13.0f / 16.0f);
  CHECK(data->labels[0] == 0);
  auto v = data->view();
  CHECK(v.size == 1797);
  CHECK(v.input_dim == 64);
  CHECK(v.inputs == data->inputs.data());
  CHECK(v.labels == data->labels.data());
}

TEST_CASE("a plain csv file loads with the chosen label column, scale and class count",
          "[actors][data]") {
  temp_dir dir;
  auto path = dir.write("plain.csv", "1, 2, 4\r\n\n2,+3,8\r\n3,0,0.5\n");
  csv_options opts;
  opts.label_column = 0;
  opts.scale = 0.5f;
  opts.class_count = 5;
  auto data = load_csv(path, opts);
  REQUIRE(data);
  CHECK(data->size() == 3);
  CHECK(data->input_dim == 2);
  CHECK(data->class_count == 5);
  CHECK(data->labels == std::vector<uint32_t>{1, 2, 3});
  CHECK(data->inputs == std::vector<float>{1.0f, 2.0f, 1.5f, 4.0f, 0.0f, 0.25f});
  // Inferred class count: the largest label plus one.
  auto inferred = load_csv(dir.write("inferred.csv", "0.5,4\n0.25,1\n"));
  REQUIRE(inferred);
  CHECK(inferred->class_count == 5);
  CHECK(inferred->inputs == std::vector<float>{0.5f / 16.0f, 0.25f / 16.0f});
}

TEST_CASE("a missing data file gives an error naming the file", "[actors][data]") {
  temp_dir dir;
  auto path = dir.path + "/no-such-file.csv.gz";
  auto data = load_csv(path);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::cannot_open));
  auto msg = message_of(data.error());
  CHECK_THAT(msg, Catch::Contains(path));
  CHECK_THAT(msg, Catch::Contains("No such file"));
}

TEST_CASE("an empty data file gives an error naming the file and line", "[actors][data]") {
  temp_dir dir;
  auto empty = dir.write("empty.csv", "");
  auto data = load_csv(empty);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::empty_file));
  CHECK_THAT(message_of(data.error()), Catch::StartsWith(empty + ":1: empty file"));
  auto blank = dir.write("blank.csv", "\n  \n\n");
  data = load_csv(blank);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::empty_file));
  CHECK_THAT(message_of(data.error()), Catch::StartsWith(blank + ":3: empty file"));
}

TEST_CASE("a row with the wrong number of columns gives an error naming the file and line",
          "[actors][data]") {
  temp_dir dir;
  auto path = dir.write("ragged.csv", "1,2,3\n4,5,6\n\n7,8\n");
  auto data = load_csv(path);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::wrong_column_count));
  CHECK(message_of(data.error()) == path + ":4: expected 3 columns (as on line 1), found 2");
  auto single = dir.write("single.csv", "1\n2\n");
  data = load_csv(single);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::wrong_column_count));
  CHECK_THAT(message_of(data.error()), Catch::StartsWith(single + ":1: "));
}

TEST_CASE("a non-numeric cell gives an error naming the file, line and cell", "[actors][data]") {
  temp_dir dir;
  auto path = dir.write("text.csv", "1,2,3\n4,abc,6\n");
  auto data = load_csv(path);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::not_a_number));
  CHECK(message_of(data.error()) == path + ":2: column 1: 'abc' is not a finite number");
  for (auto bad : {"1,,3\n", "1,nan,3\n", "1,2x,3\n", "1,2,three\n", "1,2,1.5\n"}) {
    auto file = dir.write("bad.csv", bad);
    data = load_csv(file);
    REQUIRE_FALSE(data);
    CHECK(is(data.error(), data_errc::not_a_number));
    CHECK_THAT(message_of(data.error()), Catch::StartsWith(file + ":1: column "));
  }
}

TEST_CASE("a label out of range gives an error naming the file, line and label", "[actors][data]") {
  temp_dir dir;
  auto path = dir.write("labels.csv", "1,2,3\n4,5,10\n");
  csv_options opts;
  opts.class_count = 10;
  auto data = load_csv(path, opts);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::label_out_of_range));
  CHECK(message_of(data.error()) ==
        path + ":2: column 2: label 10 is out of range 0..9 (class_count 10)");
  auto negative = dir.write("negative.csv", "1,2,-1\n");
  data = load_csv(negative);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::label_out_of_range));
  CHECK_THAT(message_of(data.error()), Catch::StartsWith(negative + ":1: column 2: label -1"));
}

TEST_CASE("a label column beyond the row and a truncated gzip file give clear errors",
          "[actors][data]") {
  temp_dir dir;
  auto path = dir.write("small.csv", "1,2,3\n");
  csv_options opts;
  opts.label_column = 3;
  auto data = load_csv(path, opts);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::invalid_options));
  CHECK_THAT(message_of(data.error()), Catch::StartsWith(path + ":1: label column 3"));
  std::ifstream in{UNDERSTUDY_DIGITS_PATH, std::ios::binary};
  std::string bytes{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  REQUIRE(bytes.size() > 1000);
  auto cut = dir.write("cut.csv.gz", bytes.substr(0, bytes.size() / 2));
  data = load_csv(cut);
  REQUIRE_FALSE(data);
  CHECK(is(data.error(), data_errc::read_failed));
  CHECK_THAT(message_of(data.error()), Catch::StartsWith(cut + ": read failed"));
}

TEST_CASE("split is deterministic by seed, disjoint, covers every sample and holds out 20%",
          "[actors][data]") {
  auto data = numbered(1797);
  auto [train, test] = split(data, 0.2, 42);
  CHECK(test.size() == 359);
  CHECK(train.size() == 1797 - 359);
  CHECK(train.input_dim == 2);
  CHECK(test.class_count == 3);
  auto train_ids = sample_ids(train);
  auto test_ids = sample_ids(test);
  CHECK(std::is_sorted(train_ids.begin(), train_ids.end()));
  CHECK(std::is_sorted(test_ids.begin(), test_ids.end()));
  std::vector<uint32_t> all = train_ids;
  all.insert(all.end(), test_ids.begin(), test_ids.end());
  CHECK(is_permutation_of_range(all));

  auto [train2, test2] = split(data, 0.2, 42);
  CHECK(sample_ids(test2) == test_ids);
  CHECK(train2.inputs == train.inputs);
  auto [train3, test3] = split(data, 0.2, 43);
  CHECK(sample_ids(test3) != test_ids);

  // Pinned, so that a change of the algorithm (or a platform difference) shows.
  auto [small_train, small_test] = split(numbered(10), 0.2, 7);
  CHECK(sample_ids(small_test) == std::vector<uint32_t>{1, 8});
  CHECK(sample_ids(small_train) == std::vector<uint32_t>{0, 2, 3, 4, 5, 6, 7, 9});

  CHECK(split(data, 0.0, 1).second.size() == 0);
  CHECK(split(data, 1.0, 1).first.size() == 0);
  CHECK_THROWS_AS(split(data, 1.5, 1), std::invalid_argument);
  CHECK_THROWS_AS(split(data, -0.1, 1), std::invalid_argument);
}

TEST_CASE("epoch_order is a permutation fixed by seed and epoch that changes across epochs",
          "[actors][data]") {
  auto order = epoch_order(1797, 42, 0);
  CHECK(order.size() == 1797);
  CHECK(is_permutation_of_range(order));
  CHECK(epoch_order(1797, 42, 0) == order);
  CHECK(epoch_order(1797, 42, 1) != order);
  CHECK(epoch_order(1797, 43, 0) != order);
  CHECK(is_permutation_of_range(epoch_order(1797, 42, 1)));
  // Pinned (checked against an independent SplitMix64 + Fisher-Yates implementation).
  CHECK(epoch_order(10, 42, 0) == std::vector<uint32_t>{4, 6, 7, 0, 9, 5, 1, 2, 3, 8});
  CHECK(epoch_order(10, 42, 1) == std::vector<uint32_t>{5, 7, 3, 1, 8, 2, 9, 4, 0, 6});
  CHECK(epoch_order(0, 1, 1).empty());
  CHECK(epoch_order(1, 1, 1) == std::vector<uint32_t>{0});
}

TEST_CASE("data errors have names and tell the caller to give up", "[actors][data]") {
  CHECK(to_string(data_errc::wrong_column_count) == "wrong_column_count");
  CHECK(to_string(data_errc::label_out_of_range) == "label_out_of_range");
  CHECK(next_step_for(data_errc::cannot_open) == next_step::give_up);
  auto err = make_error(data_errc::empty_file, "x:1: empty file");
  CHECK(is(err, data_errc::empty_file));
  CHECK_FALSE(is(err, data_errc::cannot_open));
}
